"""What a new user's walkthrough of ``measure`` found: the rounds sized from one timed call
(one slow call cut a benchmark to its minimum rounds), and the errors of setting it up
(no pytest-benchmark, a keyword missing or misspelt, ``measure`` called twice) said by
pytest-benchmark or the record's constructor instead of by measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handgrad.benchmark import (
    CALIBRATION_CALLS,
    REQUIRED_KEYWORDS,
    check_keywords,
    measure_keywords,
    round_seconds,
    warm_up,
)
from handgrad.benchmark.fixture import missing_message
from verify.runs import drop_worker_env

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ the round's size

class _Calls:
    """Stand-ins for ``run`` and ``ref`` with a time per call (``time_call`` reads them)."""

    def __init__(self, **times: list[float]) -> None:
        self.times = {name: list(t) for name, t in times.items()}
        self.made = {name: 0 for name in times}

    def fn(self, name: str):
        def call():
            self.made[name] += 1
        call.__name__ = name
        return call

    def time_call(self, fn) -> float:
        fn()
        return self.times[fn.__name__].pop(0)


def test_one_slow_calibration_call_does_not_size_the_rounds():
    # the walkthrough: 3 warm-up calls of 10 us, then one of 100 ms
    c = _Calls(run=[0.1], ref=[5e-6])
    got = round_seconds(c.fn("run"), c.fn("ref"), [1e-3, 1e-5, 1e-5], [2e-3, 5e-6, 5e-6],
                        budget=0.25, time_call=c.time_call)
    assert got == pytest.approx(1e-5 + 5e-6)
    assert c.made == {"run": 1, "ref": 1}  # after a full warm-up: one pair, as before


def test_a_short_warm_up_is_followed_by_more_calibration_calls_within_the_budget():
    # warmup=1: the first (cold) call only; the first calibration call is slow
    c = _Calls(run=[0.1, 1e-5, 1e-5], ref=[5e-6, 5e-6, 5e-6])
    got = round_seconds(c.fn("run"), c.fn("ref"), [1e-3], [1e-3], budget=0.25,
                        time_call=c.time_call)
    assert got == pytest.approx(1e-5 + 5e-6)
    assert c.made == {"run": CALIBRATION_CALLS, "ref": CALIBRATION_CALLS}


def test_the_reference_short_of_calls_is_calibrated_too():
    c = _Calls(run=[1e-5, 1e-5, 1e-5], ref=[0.1, 5e-6, 5e-6])
    got = round_seconds(c.fn("run"), c.fn("ref"), [1e-5] * 4, [1e-3], budget=0.25,
                        time_call=c.time_call)
    assert got == pytest.approx(1e-5 + 5e-6)
    assert c.made["ref"] == CALIBRATION_CALLS


def test_the_calibration_of_a_slow_call_stops_at_its_budget():
    # a 200 ms call, warmed up once (over 50 ms): one pair more only while under budget
    c = _Calls(run=[0.2, 0.2, 0.2], ref=[0.2, 0.2, 0.2])
    assert round_seconds(c.fn("run"), c.fn("ref"), [0.3], [0.3], budget=0.25,
                         time_call=c.time_call) == pytest.approx(0.4)
    assert c.made == {"run": 1, "ref": 1}
    c = _Calls(run=[0.05, 0.05, 0.05], ref=[0.05, 0.05, 0.05])
    round_seconds(c.fn("run"), c.fn("ref"), [0.3], [0.3], budget=0.25,
                  time_call=c.time_call)
    assert c.made == {"run": 3, "ref": 3}  # 0.1 then 0.2 s: under the budget both times


def test_without_a_reference_the_round_is_the_call():
    c = _Calls(run=[0.1, 2e-5, 3e-5])
    assert round_seconds(c.fn("run"), None, [1e-3], [], budget=1.0,
                         time_call=c.time_call) == pytest.approx(2e-5)


def test_warm_up_returns_its_times_and_stops_after_a_slow_call(monkeypatch):
    import handgrad.benchmark as hb

    times = iter([1e-3, 2e-4, 1e-4])
    monkeypatch.setattr(hb, "_time", lambda fn: next(times))
    assert warm_up(lambda: None, 3) == [1e-3, 2e-4, 1e-4]
    times = iter([0.06, 1e-4])
    assert warm_up(lambda: None, 3) == [0.06]


# ------------------------------------------------------------------ measure's keywords

MEASURE = {"group": "g", "kernel": "k", "method": "m", "reference": "m",
           "role": "reference", "device": "cpu", "dtype": None}


def test_the_keywords_measure_takes():
    assert check_keywords(MEASURE) is None
    assert check_keywords({**MEASURE, "flops": 1, "shape": {}, "compile_mode": "x",
                           "reference_fn": None, "warmup": 1, "peak": 0}) is None
    words = measure_keywords()
    assert words[:len(REQUIRED_KEYWORDS)] == list(REQUIRED_KEYWORDS)
    assert {"flops", "bytes", "shape", "reference_fn", "warmup", "peak",
            "reference_peak", "compile_mode", "compile_s"} <= set(words)
    assert not {"threads", "timer", "reference_data", "instructions"} & set(words)


def test_a_misspelt_keyword_is_named_with_the_nearest_and_the_accepted():
    with pytest.raises(TypeError, match=r"^measure: unexpected keyword 'flop' \(did you "
                                        r"mean 'flops'\?\); the keywords: group, kernel, "):
        check_keywords({**MEASURE, "flop": 3})
    with pytest.raises(TypeError, match=r"^measure: unexpected keyword 'zzz'; the keywords"):
        check_keywords({**MEASURE, "zzz": 3})


def test_a_missing_keyword_is_named_with_what_the_required_ones_mean():
    given = {k: v for k, v in MEASURE.items() if k not in ("reference", "role")}
    with pytest.raises(TypeError) as e:
        check_keywords(given)
    text = str(e.value)
    assert text.startswith("measure: missing keywords 'reference', 'role'; every measure "
                           "gives group (")
    assert "reference (the method fn is measured against; a reference names itself)" in text
    assert "role ('kernel': measured against its reference, judged by the gate" in text
    with pytest.raises(TypeError, match=r"^measure: missing keyword 'group';"):
        check_keywords({k: v for k, v in MEASURE.items() if k != "group"})


def test_a_field_measure_writes_itself_is_refused_as_a_keyword():
    with pytest.raises(TypeError, match=r"^measure: 'threads' is written by measure itself "
                                        r"\(the session's torch thread count"):
        check_keywords({**MEASURE, "threads": 1})
    with pytest.raises(TypeError, match=r"'peak_bytes' is written by measure itself "
                                        r"\(measured: give peak= to set it\)"):
        check_keywords({**MEASURE, "peak_bytes": 1})


def test_without_pytest_benchmark_the_message_says_how_to_get_it():
    assert "pip install 'handgrad[test]' (or pytest-benchmark>=4.0)" in missing_message(None)
    loaded = missing_message("5.3.1")
    assert "installed (5.3.1) but not loaded" in loaded and "-p no:benchmark" in loaded


# ------------------------------------------------------------------ in a user's project

@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # handgrad from this checkout
    drop_worker_env(monkeypatch)  # pytest-benchmark turns itself off in an xdist worker
    return pytester


def _run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_subprocess("-p", "handgrad.plugin", "-p", "no:cacheprovider", *args)


HICCUP = '''
import time, torch
x = torch.randn(8, 8)
calls = {"n": 0}

def kernel():
    calls["n"] += 1
    if calls["n"] == 4:  # one slow call, right after the 3 warm-up calls
        time.sleep(0.3)
    return x * 2

def test_hiccup(measure):
    measure(kernel, reference_fn=lambda: x + x, group="hiccup", kernel="k", method="hand",
            reference="torch", role="kernel", device="cpu", dtype=torch.float32)
'''


def test_one_slow_call_after_the_warm_up_does_not_cut_the_rounds(project, tmp_path):
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(test_hiccup=HICCUP)
    out = tmp_path / "hic.json"
    result = _run(project, "test_hiccup.py", f"--benchmark-json={out}",
                  "--benchmark-max-time=0.3", "--bench-threads=1")
    result.assert_outcomes(passed=1)
    (bench,) = json.loads(out.read_text())["benchmarks"]
    # sized from that call: max(5 min-rounds, 0.3 s / 0.3 s) = 5 rounds; from the
    # minimum: thousands (a call of x * 2 takes microseconds)
    assert bench["stats"]["rounds"] > 100


SETUP = '''
import torch
K = dict(group="g", kernel="k", method="m", device="cpu", dtype=torch.float32)

def test_missing(measure):
    measure(lambda: None, **K)

def test_typo(measure):
    measure(lambda: None, reference="m", role="reference", flop=3, **K)

def test_twice(measure):
    measure(lambda: None, reference="m", role="reference", **K)
    measure(lambda: None, reference="m", role="reference", **{**K, "group": "h"})

def test_two_positional(measure):
    measure(lambda: None, lambda: None, reference="m", role="reference", **K)

def test_fn_by_keyword(measure):
    measure(fn=lambda: None, reference="m", role="reference", **K)
'''


def test_setting_up_measure_wrong_is_said_by_measure(project):
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(test_setup=SETUP)
    result = _run(project, "test_setup.py", "--benchmark-disable")
    result.assert_outcomes(failed=4, passed=1)
    out = result.stdout.str()
    assert "TypeError: measure: missing keywords 'reference', 'role'; every measure" in out
    assert "TypeError: measure: unexpected keyword 'flop' (did you mean 'flops'?)" in out
    assert ("RuntimeError: measure: called a second time in this test (group 'h'; the "
            "first: group 'g'): one measure a test") in out
    assert "Parametrize the test" in out
    assert "FixtureAlreadyUsed" not in out and "BenchRecord.__init__" not in out
    assert ("TypeError: measure: expected the callable to time (fn) as its one positional "
            "argument, the rest by keyword (reference_fn=..., group=...); got 2") in out


def test_the_second_measure_is_refused_while_timed_too(project, tmp_path):
    """Not only under --benchmark-disable: the first one's row is written, marked as of a
    failed test."""
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(test_setup=SETUP)
    out = tmp_path / "twice.json"
    result = _run(project, "test_setup.py", "-k", "twice", f"--benchmark-json={out}",
                  "--benchmark-max-time=0.01")
    result.assert_outcomes(failed=1)
    assert "measure: called a second time in this test" in result.stdout.str()
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert bench["group"] == "g" and bench["extra_info"]["test_failed"] is True


def test_without_pytest_benchmark_measure_says_how_to_get_it(project):
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(test_setup=SETUP)
    result = _run(project, "test_setup.py", "-k", "fn_by_keyword", "-p", "no:benchmark")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "measure times with pytest-benchmark, installed (" in out
    assert "but not loaded in this session (-p no:benchmark" in out
    assert "fixture 'benchmark' not found" not in out


def test_pytest_benchmarks_own_options_still_see_measure(project):
    """measure's benchmark is pytest-benchmark's fixture, in the test's fixture closure:
    --benchmark-skip skips a test using measure, --benchmark-only keeps it."""
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(test_setup=SETUP, test_plain="def test_plain():\n    pass\n")
    skipped = _run(project, "test_setup.py", "test_plain.py", "-k", "fn_by_keyword or plain",
                   "--benchmark-skip")
    skipped.assert_outcomes(passed=1, skipped=1)
    only = _run(project, "test_setup.py", "test_plain.py", "-k", "fn_by_keyword or plain",
                "--benchmark-only", "--benchmark-max-time=0.01")
    only.assert_outcomes(passed=1, skipped=1)
