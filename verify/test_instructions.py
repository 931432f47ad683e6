"""Instruction counts: ``pytest bench --bench-instructions``
(handgrad/benchmark/callgrind.py), their record fields, their place in the report and
their gate (reports.gate.instruction_gate), declared regressions (``--accept``) and the
command line of the timed gate over several runs a side (its statistics:
verify/test_gate_runs.py).

``verify/fixtures/bench_instructions.json`` is a real counted run (see the fixtures'
README). The one test that runs valgrind itself is marked slow: it costs about 80 s of
the suite (pytest and torch start under callgrind, ~50x slower than natively) and is the
only end-to-end proof, inside ``pytest verify``, that a count comes back from callgrind.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from handgrad.benchmark import callgrind, not_counted
from handgrad.reports.__main__ import main
from handgrad.reports.gate import instruction_gate, read_accepted
from handgrad.reports.load import ReportInputError, load_benchmarks
from handgrad.reports.record import BenchRecord, RecordError, schema_of
from handgrad.reports.tables import summary
from verify.runs import pytest_env

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "verify" / "fixtures"
COUNTED = FIXTURES / "bench_instructions.json"
TIMED = FIXTURES / "bench_run1.json"

GOOD = {"kernel": "backprop", "method": "manual", "reference": "torch_autograd",
        "role": "kernel", "flops": 100, "bytes": 10, "device": "cpu",
        "dtype": "float32", "threads": 1, "timer": "callgrind", "instructions": 500_000,
        "reference_instructions": 900_000}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def _grow(data: dict, method: str, factor: float, field: str = "instructions",
          group: str = "") -> dict:
    """A copy of a counted run with ``field`` of every benchmark of ``method`` (in groups
    starting with ``group``) times ``factor``."""
    data = copy.deepcopy(data)
    hit = 0
    for b in data["benchmarks"]:
        if b["extra_info"]["method"] == method and b["group"].startswith(group):
            b["extra_info"][field] = round(b["extra_info"][field] * factor)
            hit += 1
    assert hit, f"no benchmark of {method}"
    data["datetime"] = f"{data.get('datetime')}-{method}-{factor}"  # another run
    return data


# ------------------------------------------------------------------------------ records


def test_the_fixture_is_a_real_counted_run():
    data = _load(COUNTED)
    assert data["machine_info"]["bench_mode"] == "instructions"
    infos = [b["extra_info"] for b in data["benchmarks"]]
    assert infos and all(i["timer"] == "callgrind" and i["threads"] == 1 for i in infos)
    schema = schema_of(data["machine_info"])  # written as schema 3: owner, not role
    kernels = [i for i in infos if BenchRecord.from_extra_info(i, schema).gated]
    assert kernels and all(i["instructions"] > 10_000 and i["reference_instructions"] > 10_000
                           for i in kernels)


def test_instruction_fields_round_trip_and_are_checked():
    rec = BenchRecord(**GOOD)
    assert BenchRecord.from_extra_info(rec.to_extra_info()) == rec
    # files written before the fields (schema 2) are still read
    old = {k: v for k, v in GOOD.items() if k not in ("timer", "instructions",
                                                      "reference_instructions", "role")}
    old["owner"] = "handgrad"
    assert BenchRecord.from_extra_info(old, schema=2).instructions is None
    for field, value, says in [
        ("instructions", 0, "instructions: expected an integer >= 1"),
        ("instructions", 1.5, "instructions: expected an integer"),
        ("reference_instructions", -3, "reference_instructions: expected an integer >= 1"),
    ]:
        with pytest.raises(RecordError, match=says):
            BenchRecord(**{**GOOD, field: value})
    with pytest.raises(RecordError, match="under callgrind"):  # counted, but not callgrind
        BenchRecord(**{**GOOD, "timer": "perf_counter"})
    with pytest.raises(RecordError, match="under callgrind"):  # callgrind, but no count
        BenchRecord(**{**GOOD, "instructions": None, "reference_instructions": None})
    with pytest.raises(RecordError, match="its own reference"):
        BenchRecord(**{**GOOD, "method": "torch_autograd", "role": "reference"})


# ---------------------------------------------------------- handgrad.benchmark.callgrind


class FakeCallgrind:
    """toggle / dump stand-ins: counts the calls made while collecting, and on dump writes
    a callgrind-like file ``callgrind.out.<pid>.<n>`` whose summary is 1000 per call."""

    def __init__(self, out: Path):
        self.out, self.on, self.calls, self.dumps = out, False, 0, 0

    def toggle(self):
        self.on = not self.on

    def dump(self):
        self.on = not self.on
        self.dumps += 1
        path = self.out / f"{callgrind.OUT_NAME}.{os.getpid()}.{self.dumps}"
        path.write_text(f"version: 1\ncmd: x\nevents: Ir\nsummary: {1000 * self.calls}\n"
                        f"totals: {1000 * self.calls}\n")
        self.calls = 0

    def fn(self):
        self.calls += self.on


def test_count_takes_only_the_collected_calls_per_call(tmp_path):
    fake = FakeCallgrind(tmp_path)
    assert callgrind.count(fake.fn, calls=7, warmup=3, out_dir=tmp_path, toggle=fake.toggle,
                           dump=fake.dump) == 1000  # 7000 over 7 calls; warm-up not counted
    assert not list(tmp_path.iterdir())  # the dump it read is gone
    assert gc.isenabled()  # paused inside the window only
    during = []

    def fn():
        if fake.on:
            during.append(gc.isenabled())
        fake.fn()

    callgrind.count(fn, calls=3, warmup=1, out_dir=tmp_path, toggle=fake.toggle,
                    dump=fake.dump)
    assert during == [False] * 3  # no collection inside the counted calls
    fake.calls = 0
    with pytest.raises(callgrind.CallgrindError, match="expected one new callgrind dump"):
        callgrind.count(fake.fn, calls=2, warmup=0, out_dir=tmp_path, toggle=fake.toggle,
                        dump=lambda: None)
    with pytest.raises(ValueError, match="calls: expected a positive integer"):
        callgrind.count(fake.fn, calls=0, out_dir=tmp_path)


@pytest.mark.parametrize("first_s, expected", [
    (0.001, (2, 10)),  # 13 calls fit in 10 s: the full plan
    (10 / 13, (2, 10)),  # exactly at the budget
    (0.9, (0, 10)),  # 11.7 s: one warm-up, then as many calls as fit: 11, at most calls
    (2.5, (0, 4)),
    (30.0, (0, 1)),  # slower than the budget: still one counted call
])
def test_plan_gives_a_slow_call_fewer_calls(first_s, expected):
    assert callgrind.plan(first_s, calls=10, warmup=3, budget_s=10.0) == expected


class FakeClock:
    """perf_counter stand-in: each fn() call advances it by ``per_call`` seconds."""

    def __init__(self, per_call):
        self.now, self.per_call = 0.0, per_call

    def __call__(self):
        return self.now


def test_count_times_the_first_warm_up_call_and_counts_a_slow_call_fewer_times(tmp_path):
    fake = FakeCallgrind(tmp_path)
    clock = FakeClock(4.0)
    made = []

    def fn():
        made.append(fake.on)
        clock.now += clock.per_call
        fake.fn()

    got = callgrind.count(fn, calls=10, warmup=3, out_dir=tmp_path, toggle=fake.toggle,
                          dump=fake.dump, budget_s=10.0, clock=clock)
    assert got == 1000
    # one timed warm-up call (4 s), then 10 // 4 = 2 counted calls, no more warm-up
    assert made == [False, True, True]
    made.clear()
    clock.per_call = 0.01  # fast: 3 warm-up calls, 10 counted
    callgrind.count(fn, calls=10, warmup=3, out_dir=tmp_path, toggle=fake.toggle,
                    dump=fake.dump, budget_s=10.0, clock=clock)
    assert made == [False] * 3 + [True] * 10
    with pytest.raises(ValueError, match="warmup: expected a non-negative integer"):
        callgrind.count(fn, warmup=-1, out_dir=tmp_path)


def test_count_refuses_to_run_outside_callgrind(monkeypatch):
    monkeypatch.delenv(callgrind.ENV_DIR, raising=False)
    with pytest.raises(callgrind.CallgrindError, match="--bench-instructions"):
        callgrind.count(lambda: None)


def test_read_dump(tmp_path):
    p = tmp_path / "d"
    p.write_text("events: Ir\nsummary: 123456\n")
    assert callgrind.read_dump(p) == 123456
    p.write_text("events: Ir\n")
    with pytest.raises(callgrind.CallgrindError, match="no 'summary:' line"):
        callgrind.read_dump(p)


def test_reexec_runs_this_interpreter_under_callgrind_collecting_nothing_at_start(tmp_path):
    cmd = callgrind.reexec_command("/usr/bin/valgrind", tmp_path, ["bench", "-k", "x"])
    assert cmd[:3] == ["/usr/bin/valgrind", "--tool=callgrind", "--collect-atstart=no"]
    assert cmd[-6:] == [sys.executable, "-m", "pytest", "bench", "-k", "x"]
    env = callgrind.reexec_env(tmp_path, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", callgrind.ENV_DIR: str(tmp_path), "PYTHONHASHSEED": "0"}


@pytest.mark.parametrize("info, says", [
    ({"kernel": "control", "device": "cpu", "flops": 1}, "measurement of the machine"),
    ({"kernel": "ceiling", "device": "cpu", "flops": 1}, "measurement of the machine"),
    ({"kernel": "backprop", "device": "cpu", "flops": 1, "compile_mode": "default"},
     "compiled or captured"),
    ({"kernel": "backprop", "device": "cuda", "flops": 1}, "on the CPU only"),
    ({"kernel": "backprop", "device": "cpu", "flops": callgrind.MAX_FLOPS + 1},
     "over handgrad.benchmark.callgrind.MAX_FLOPS"),
])
def test_what_the_instruction_mode_does_not_count(info, says):
    assert says in not_counted(info)
    assert not_counted({**info, "kernel": "backprop", "device": "cpu", "flops": 10,
                        "compile_mode": None}) is None


def _pytest(*args: str, env: dict) -> subprocess.CompletedProcess:
    """pytest in a subprocess; ``env`` from ``pytest_env`` (no pytest-xdist worker
    variables: under them pytest-benchmark turns itself off and writes no JSON)."""
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_without_valgrind_the_mode_says_so_in_one_line_and_exits_2(tmp_path):
    env = {**pytest_env(), "PATH": str(tmp_path)}  # no valgrind there
    env.pop(callgrind.ENV_DIR, None)
    out = _pytest("bench/test_control.py", "--bench-instructions", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "valgrind not found" in lines[0] and "apt-get install" in (
        lines[0])


def test_bench_slow_cannot_be_counted():
    env = {k: v for k, v in pytest_env().items() if k != callgrind.ENV_DIR}
    out = _pytest("bench/test_control.py", "--bench-instructions",
                  "--bench-slow", "backprop.manual=1.5", env=env)
    assert out.returncode == 4 and "plant a code change instead" in out.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_a_real_count_under_callgrind(tmp_path):
    """End to end: one backprop benchmark at the course's size counted under valgrind; its
    record holds the kernel's and the reference's instructions per call, and the report
    shows them."""
    target = tmp_path / "counted.json"
    env = {k: v for k, v in pytest_env().items() if k != callgrind.ENV_DIR}
    out = _pytest("bench/test_backprop.py", "-q", "-k", "test_backprop and L3-K30-N1- and "
                  "manual and not compiled and not captured", "--bench-instructions",
                  "--benchmark-json", str(target), env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = _load(target)
    (b,) = data["benchmarks"]
    info = b["extra_info"]
    assert info["timer"] == "callgrind" and info["threads"] == 1
    # the manual kernel does far less than a Python-level no-op loop of autograd: both
    # counts are real and the kernel's is below its reference's
    assert 50_000 < info["instructions"] < info["reference_instructions"] < 50_000_000
    assert data["machine_info"]["bench_mode"] == "instructions"
    table = summary(load_benchmarks([target]))
    assert table["kinstr"].iloc[0] == pytest.approx(info["instructions"] / 1e3)


# ------------------------------------------------------------------------------- report


def test_report_joins_counts_to_the_timed_rows_of_the_same_benchmark(tmp_path):
    counted = _load(COUNTED)
    timed = _load(TIMED)
    # the counted run's groups and methods, renamed to the timed fixture's jacobian groups
    jac = [b for b in timed["benchmarks"] if b["extra_info"]["kernel"] == "jacobian"
           and b["extra_info"]["method"] == "manual_forward"]
    assert jac
    counted["benchmarks"] = counted["benchmarks"][:1]
    counted["benchmarks"][0]["group"] = jac[0]["group"]
    c = _write(tmp_path, "counted.json", counted)
    table = summary(load_benchmarks([TIMED, c]))
    row = table[(table["method"] == "manual_forward") & table["kinstr"].notna()]
    # joined: one row, the timed one (its time kept), with the count beside it
    assert len(row) == 1 and row["median_ms"].notna().all()
    info = counted["benchmarks"][0]["extra_info"]
    assert row["kinstr"].iloc[0] == pytest.approx(info["instructions"] / 1e3)
    assert row["instr_ratio"].iloc[0] == pytest.approx(
        info["instructions"] / info["reference_instructions"])
    # the counted run alone: its valgrind times are not shown as times
    alone = summary(load_benchmarks([COUNTED]))
    assert alone["median_ms"].isna().all() and alone["kinstr"].notna().any()
    assert alone["ratio_to_ref"].isna().all()


def test_render_of_a_counted_run_writes_no_time_figure(tmp_path, capsys):
    assert main(["render", str(COUNTED), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "kinstr" in md and "thousands of instructions per call" in md
    assert not list((tmp_path / "r").glob("*.png"))
    # the figure steps are not counted, and say why they draw nothing
    err = capsys.readouterr().err
    assert "rendering the" not in err
    for figure in ("Jacobian mode", "roofline"):
        assert (f"skipping the {figure} figure: no timed benchmark (instruction counts "
                "only)") in err


# --------------------------------------------------------------------------------- gate


def test_instruction_gate_passes_the_same_counts(tmp_path):
    again = _write(tmp_path, "again.json", {**_load(COUNTED), "datetime": "another process"})
    result = instruction_gate(str(COUNTED), str(again))
    assert result.passed and result.metric == "own"
    assert (result.table["change"] == 1.0).all()


@pytest.mark.parametrize("factor, verdict", [(1.03, "REGRESSION"), (1.015, "ok"),
                                             (0.95, "faster"),
                                             # under 1/1.02 (0.9804), not under 1 - 2%
                                             (0.9802, "faster"), (0.981, "ok")])
def test_instruction_gate_flags_a_count_beyond_the_threshold(tmp_path, factor, verdict):
    cur = _write(tmp_path, "cur.json", _grow(_load(COUNTED), "manual_forward", factor))
    result = instruction_gate(str(COUNTED), str(cur))
    assert set(result.table["verdict"]) == {verdict}
    assert result.passed == (verdict != "REGRESSION")
    if verdict == "REGRESSION":
        assert result.flagged() == {"jacobian.manual_forward"}
        assert "FAIL" in result.markdown() and "jacobian.manual_forward" in result.markdown()


def test_instruction_gate_divides_by_the_reference_when_torch_differs(tmp_path):
    data = _grow(_load(COUNTED), "manual_forward", 1.10)  # kernel +10%
    data = _grow(data, "manual_forward", 1.10, field="reference_instructions")  # torch too
    data["machine_info"]["torch"] = "9.9.9"
    cur = _write(tmp_path, "cur.json", data)
    result = instruction_gate(str(COUNTED), str(cur))
    assert result.metric == "ratio" and result.passed  # the same ratio to torch
    same_torch = _write(tmp_path, "same.json", {**data, "machine_info": _load(COUNTED)[
        "machine_info"]})
    assert not instruction_gate(str(COUNTED), str(same_torch)).passed  # own count: +10%


def test_declared_regression_passes_within_its_bound_only(tmp_path):
    accept = tmp_path / "accepted"
    accept.write_text("# kernel.method bound reason\n\n"
                      "jacobian.manual_forward 1.05  one more finite check  # a comment\n")
    accepted = read_accepted(str(accept))
    assert accepted["jacobian.manual_forward"].reason == "one more finite check"
    within = _write(tmp_path, "within.json", _grow(_load(COUNTED), "manual_forward", 1.04))
    result = instruction_gate(str(COUNTED), str(within), accepted=accepted)
    assert result.passed and set(result.table["verdict"]) == {"accepted"}
    assert "one more finite check" in result.markdown()
    beyond = _write(tmp_path, "beyond.json", _grow(_load(COUNTED), "manual_forward", 1.06))
    assert not instruction_gate(str(COUNTED), str(beyond), accepted=accepted).passed
    # the CLI reads the same file
    assert main(["gate", "--baseline", str(COUNTED), "--current", str(within),
                 "--accept", str(accept)]) == 0
    assert main(["gate", "--baseline", str(COUNTED), "--current", str(beyond),
                 "--accept", str(accept)]) == 1


@pytest.mark.parametrize("text, says", [
    ("jacobian 1.05 no method\n", "expected 'kernel.method bound reason'"),
    ("jacobian.manual_forward 1.05\n", "expected 'kernel.method bound reason'"),
    ("jacobian.manual_forward 0.9 faster?\n", "expected a factor between 1 and 10"),
    ("jacobian.manual_forward x why\n", "expected a factor between 1 and 10"),
    ("a.b 1.1 r\na.b 1.2 r\n", "declared twice"),
    ("jacobian.manual_forward 0% free?\n", "or a percentage above 0%"),
    ("jacobian.manual_forward -4% faster?\n", "or a percentage above 0%"),
    ("jacobian.manual_forward 4 % a space\n", r"write the percentage without a space \(4%\)"),
])
def test_a_malformed_declaration_is_refused_by_line(tmp_path, text, says):
    p = tmp_path / "accepted"
    p.write_text(text)
    with pytest.raises(ReportInputError, match=says):
        read_accepted(str(p))


@pytest.mark.parametrize("bound", ["1.05", "5%", "+5%"])
def test_a_declared_bound_is_a_factor_or_a_percentage(tmp_path, bound):
    """5% and +5% are the factor 1.05, the spelling --threshold takes: a count 4% up is
    accepted under each, one 6% up under none."""
    accept = tmp_path / "accepted"
    accept.write_text(f"jacobian.manual_forward {bound} one more finite check\n")
    accepted = read_accepted(str(accept))
    assert accepted["jacobian.manual_forward"].bound == pytest.approx(1.05)
    within = _write(tmp_path, "within.json", _grow(_load(COUNTED), "manual_forward", 1.04))
    result = instruction_gate(str(COUNTED), str(within), accepted=accepted)
    assert set(result.table["verdict"]) == {"accepted"} and "up to 1.05x" in result.markdown()
    beyond = _write(tmp_path, "beyond.json", _grow(_load(COUNTED), "manual_forward", 1.06))
    assert not instruction_gate(str(COUNTED), str(beyond), accepted=accepted).passed


def test_cli_gate_exits_1_and_names_the_kernel(tmp_path, capsys):
    cur = _write(tmp_path, "cur.json", _grow(_load(COUNTED), "manual_forward", 1.05))
    assert main(["gate", "--baseline", str(COUNTED), "--current", str(cur)]) == 1
    out = capsys.readouterr().out
    assert "instruction-count gate: FAIL" in out and "jacobian.manual_forward" in out
    # a threshold above the growth passes it
    assert main(["gate", "--baseline", str(COUNTED), "--current", str(cur),
                 "--threshold", "6%"]) == 0
    capsys.readouterr()
    # a factor is refused (it read as 106%), with how to write it
    assert main(["gate", "--baseline", str(COUNTED), "--current", str(cur),
                 "--threshold", "1.06"]) == 2
    assert "--threshold: got '1.06': a threshold is a fraction or a percentage: write 6%, " \
           "or 0.06" in capsys.readouterr().err


def test_cli_gate_refuses_to_mix_timed_and_counted_runs(capsys):
    assert main(["gate", "--baseline", str(TIMED), "--current", str(COUNTED)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "runs of one kind" in err
    assert main(["gate", "--baseline", str(COUNTED), str(COUNTED), "--current",
                 str(COUNTED), str(COUNTED)]) == 2
    assert "no noise" in capsys.readouterr().err


def _another_run(path: Path, tmp_path: Path, tag: str) -> str:
    """A copy of the run in ``path`` under a datetime of its own: the gate over runs
    refuses one run given twice, and these tests reuse the three fixture runs."""
    data = json.loads(path.read_text())
    data["datetime"] = f"2026-12-05T00:00:00 {tag}"
    out = tmp_path / f"{tag}.json"
    out.write_text(json.dumps(data))
    return str(out)


def test_timed_gate_over_several_runs_a_side_judges_between_processes(capsys, tmp_path):
    # one run a side: the per-round gate of that pair flags the slowed kernel; two runs a
    # side (the slow one and an unchanged one against two unchanged): the between-process
    # gate sees the spread and does not call it a regression
    slow = FIXTURES / "bench_run_slow.json"
    base2 = FIXTURES / "bench_run2.json"
    assert main(["gate", "--baseline", str(TIMED), "--current", str(slow)]) == 1
    capsys.readouterr()
    assert main(["gate", "--baseline", str(TIMED), str(base2), "--current", str(slow),
                 _another_run(base2, tmp_path, "base2-again")]) in (0, 3)
    assert "gate over runs" in capsys.readouterr().out
    # unequal numbers of runs a side are fine
    assert main(["gate", "--baseline", str(TIMED), str(base2),
                 _another_run(TIMED, tmp_path, "timed-again"), "--current", str(slow),
                 _another_run(slow, tmp_path, "slow-again")]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_timed_gate_passes_a_declared_regression_within_its_bound(tmp_path, capsys):
    slow = FIXTURES / "bench_run_slow.json"
    accept = tmp_path / "accepted"
    accept.write_text("jacobian.manual_forward 1.5 a check that must cost time\n")
    assert main(["gate", "--baseline", str(TIMED), "--current", str(slow),
                 "--accept", str(accept)]) == 0
    out = capsys.readouterr().out
    assert "accepted" in out and "a check that must cost time" in out
    accept.write_text("jacobian.manual_forward 1.1 too small a bound\n")
    assert main(["gate", "--baseline", str(TIMED), "--current", str(slow),
                 "--accept", str(accept)]) == 1


def test_instruction_gate_names_one_side_and_other_settings(tmp_path):
    data = _load(COUNTED)
    one, two = data["benchmarks"][0], data["benchmarks"][1]
    name = f"{two['group']} :: {two['extra_info']['method']}"
    assert two["extra_info"]["dtype"] == "float32"
    dropped = {**data, "benchmarks": [b for b in data["benchmarks"] if b is not one]}
    result = instruction_gate(str(COUNTED), str(_write(tmp_path, "cur.json", dropped)))
    first = f"{one['group']} :: {one['extra_info']['method']}"
    assert result.skipped == (f"{first}: counted in the baseline only (missing from the "
                              "current run: did its test fail, or was it deselected or "
                              "renamed?)",)
    result = instruction_gate(str(_write(tmp_path, "cur.json", dropped)), str(COUNTED))
    assert result.skipped == (f"{first}: counted in the current run only (new, or missing "
                              "from the baseline)",)
    other = _grow(_load(COUNTED), "manual_forward", 1.5)  # would be a regression
    for b in other["benchmarks"]:
        if b["group"] == two["group"]:
            b["extra_info"]["dtype"] = "float64"
    result = instruction_gate(str(COUNTED), str(_write(tmp_path, "f64.json", other)))
    assert result.skipped == (f"{name}: dtype changed from float32 to float64: another "
                              "measurement, not a change of the kernel",)
    assert list(result.table["benchmark"]) == [first] and not result.passed


def test_instruction_gate_names_a_failed_test_and_does_not_gate_it(tmp_path):
    data = _load(COUNTED)
    first = data["benchmarks"][0]["extra_info"]
    first["test_failed"] = True
    first["instructions"] = int(first["instructions"] * 1.5)  # a regression, if gated
    name = f"{data['benchmarks'][0]['group']} :: {first['method']}"
    result = instruction_gate(str(COUNTED), str(_write(tmp_path, "cur.json", data)))
    assert result.skipped == (f"{name}: its test failed (the current run): not gated",)
    assert name not in set(result.table["benchmark"]) and result.passed
