"""A benchmark whose test failed after it measured: pytest-benchmark writes its row all the
same, so handgrad's plugin marks it (``extra_info["test_failed"]``), and the reports leave
it out of their tables, figures, gates and history, listed, never read as a right kernel's
timing."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch

# loaded before pytester's tests (see verify/test_plugin.py: a C extension first imported
# inside one cannot load again)
import handgrad.reports.gate  # noqa: F401
import handgrad.reports.render  # noqa: F401
from handgrad.reports.__main__ import main
from handgrad.reports.load import ReportInputError, load_benchmarks
from verify.runs import as_schema4, drop_worker_env, scaled_run

ROOT = Path(__file__).resolve().parent.parent
RUN1 = ROOT / "verify" / "fixtures" / "bench_run1.json"
# the kernel benchmark these tests mark as of a failed test
GROUP, METHOD = "backprop L=3 K=64 N=256 cpu", "manual"


def _marked(data: dict, groups=(GROUP,), method: str = METHOD, value=True) -> dict:
    """A copy of a run whose ``method`` benchmarks in ``groups`` say their test failed."""
    data = copy.deepcopy(data)
    hit = 0
    for b in data["benchmarks"]:
        if b["group"] in groups and b["extra_info"]["method"] == method:
            b["extra_info"]["test_failed"] = value
            hit += 1
    assert hit == len(groups)
    return data


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def run() -> dict:
    return as_schema4(json.loads(RUN1.read_text()))


# ------------------------------------------------------------------ the loader


def test_load_leaves_out_a_failed_tests_benchmark_unless_asked(tmp_path, run):
    f = _write(tmp_path / "run.json", _marked(run))
    total = len(run["benchmarks"])
    df = load_benchmarks([f])
    assert len(df) == total - 1
    assert not ((df["group"] == GROUP) & (df["method"] == METHOD)).any()
    assert not df["test_failed"].any()
    kept = load_benchmarks([f], failed_tests=True)
    assert len(kept) == total
    failed = kept[kept["test_failed"]]
    assert list(zip(failed["group"], failed["method"])) == [(GROUP, METHOD)]
    assert failed["test_failed"].dtype == bool
    # the mark is not part of the record: no field the file "wrote"
    assert all("test_failed" not in w for w in kept["fields_written"])
    unmarked = load_benchmarks([_write(tmp_path / "plain.json", run)], failed_tests=True)
    assert len(unmarked) == total and not unmarked["test_failed"].any()


def test_a_file_of_failed_tests_only_is_unusable_unless_asked(tmp_path, run):
    everything = copy.deepcopy(run)
    for b in everything["benchmarks"]:
        b["extra_info"]["test_failed"] = True
    f = _write(tmp_path / "all.json", everything)
    n = len(run["benchmarks"])
    with pytest.raises(ReportInputError) as exc:
        load_benchmarks([f])
    assert str(exc.value) == (f"{f}: every benchmark in the file ({n}) is of a test that "
                              "failed after it measured (extra_info test_failed): no timing "
                              "of a passing test to read")
    assert load_benchmarks([f], failed_tests=True)["test_failed"].all()


@pytest.mark.parametrize("value", [False, "yes", 1, None])
def test_a_malformed_test_failed_mark_is_refused_by_name(tmp_path, run, value):
    f = _write(tmp_path / "bad.json", _marked(run, value=value))
    name = next(b["name"] for b in run["benchmarks"]
                if b["group"] == GROUP and b["extra_info"]["method"] == METHOD)
    with pytest.raises(ReportInputError) as exc:
        load_benchmarks([f], failed_tests=True)
    assert str(exc.value) == (f"{f}: benchmark {name!r}: extra_info.test_failed: expected "
                              f"true (its test failed; handgrad's plugin writes it), got "
                              f"{value!r}")


def test_a_shape_parameter_named_test_failed_is_refused(tmp_path, run):
    run["benchmarks"][0]["extra_info"]["shape"]["test_failed"] = 3
    f = _write(tmp_path / "shape.json", run)
    with pytest.raises(ReportInputError, match="shape: parameter name 'test_failed' is taken "
                       r"by a record field or report column; rename it \(e\.g\. test_failed_\)"):
        load_benchmarks([f])
    # and measure refuses it before writing the record (the record's own check)
    from handgrad.reports.record import BenchRecord, RecordError

    info = dict(run["benchmarks"][0]["extra_info"])
    with pytest.raises(RecordError, match="parameter name 'test_failed' is taken"):
        BenchRecord.from_extra_info(info, 4)
    from handgrad.benchmark import bench_record  # the path measure's keywords take

    keywords = {k: v for k, v in info.items() if k not in ("threads", "interleaved")}
    keywords["dtype"] = torch.float32
    with pytest.raises(RecordError, match="parameter name 'test_failed' is taken"):
        bench_record(keywords, {})
    keywords["shape"] = {"N": 3}
    assert bench_record(keywords, {}).shape == {"N": 3}  # the same keywords, a fine shape


# ------------------------------------------------------------------ render


def test_render_lists_a_failed_tests_benchmark_in_no_table(tmp_path, run, capsys):
    f = _write(tmp_path / "run.json", _marked(run))
    out = tmp_path / "report"
    assert main(["render", str(f), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    head, rest = md.split("\n\n| run | group | kernel |", 1)
    assert head.endswith(
        "**1 benchmark(s) of failed tests, left out:** A benchmark whose test failed after it "
        "measured (`extra_info.test_failed`, written by handgrad's plugin) is left out of "
        "every table, figure and gate: a failed test's timing is not a measurement of a "
        "right kernel. Fix the test and rerun it.")
    failed_table = rest.split("\n\n", 1)[0]
    assert f"| {GROUP} | backprop | kernel | {METHOD} | cpu | float32 |" in failed_table
    assert failed_table.count("\n| ") == 1  # one row after the separator
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(run["benchmarks"]) - 1
    plain = _write(tmp_path / "plain.json", run)  # no test failed: nothing said
    assert main(["render", str(plain), "--out", str(tmp_path / "plain")]) == 0
    assert "failed tests" not in (tmp_path / "plain" / "report.md").read_text()


def test_render_of_failed_tests_only_says_so(tmp_path, run):
    everything = copy.deepcopy(run)
    for b in everything["benchmarks"]:
        b["extra_info"]["test_failed"] = True
    out = tmp_path / "report"
    assert main(["render", str(_write(tmp_path / "all.json", everything)), "--out",
                 str(out)]) == 0
    md = (out / "report.md").read_text()
    assert f"**{len(run['benchmarks'])} benchmark(s) of failed tests, left out:**" in md
    assert md.rstrip().endswith("No benchmark of a passing test: no tables or figures.")
    assert not (out / "summary.csv").exists()


def test_render_refuses_a_malformed_mark_in_one_line(tmp_path, run, capsys):
    f = _write(tmp_path / "bad.json", _marked(run, value="yes"))
    assert main(["render", str(f), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f}: benchmark ") and err.count("\n") == 1
    assert "extra_info.test_failed: expected true" in err
    assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------ history


def test_history_add_stores_no_failed_tests_benchmark(tmp_path, capsys):
    data = _marked(scaled_run({}))
    f = _write(tmp_path / "run.json", data)
    db = tmp_path / "h.sqlite"
    assert main(["history", "add", "--db", str(db), str(f)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"; not stored, their test failed: {GROUP} :: {METHOD}")
    con = sqlite3.connect(db)
    stored = {b for (b,) in con.execute("SELECT benchmark FROM results")}
    con.close()
    assert f"{GROUP} :: {METHOD}" not in stored and len(stored) > 1
    plain = _write(tmp_path / "plain.json", scaled_run({}))
    assert main(["history", "add", "--db", str(tmp_path / "p.sqlite"), str(plain)]) == 0
    con = sqlite3.connect(tmp_path / "p.sqlite")
    assert {b for (b,) in con.execute("SELECT benchmark FROM results")} == stored | {
        f"{GROUP} :: {METHOD}"}
    con.close()


def test_history_add_of_failed_kernels_only_is_refused_saying_so(tmp_path, capsys):
    data = as_schema4(scaled_run({}))
    kernels = [b for b in data["benchmarks"] if b["extra_info"]["role"] == "kernel"
               and b["extra_info"]["method"] != b["extra_info"]["reference"]]
    for b in kernels:
        b["extra_info"]["test_failed"] = True
    f = _write(tmp_path / "run.json", data)
    db = tmp_path / "h.sqlite"
    assert main(["history", "add", "--db", str(db), str(f)]) == 2
    assert capsys.readouterr().err == (
        f"error: {f}: no gated kernel benchmark (role kernel, a timed or counted reference) "
        f"to store; {len(kernels)} left out, their test failed\n")
    assert not db.exists()


# ------------------------------------------------------------------ the plugin

USER_BENCH = '''
import pytest
import torch


def _timed(measure, group):
    x = torch.ones(64)
    measure(lambda: x.sum(), reference_fn=lambda: torch.sum(x), group=group, kernel="toy",
            method="mine", reference="torch_sum", role="kernel", device="cpu",
            dtype=torch.float32, shape={"n": 64})


def test_passes(measure):
    _timed(measure, "passes")


def test_fails_after_measuring(measure):
    _timed(measure, "fails")
    assert False, "wrong result"


@pytest.mark.xfail(reason="known to be wrong", strict=True)
def test_expected_to_fail(measure):
    _timed(measure, "xfails")
    assert False


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")


def test_teardown_fails(measure, broken_teardown):
    _timed(measure, "teardown")


@pytest.mark.xfail(reason="not wrong after all", strict=False)
def test_passes_though_expected_to_fail(measure):
    _timed(measure, "xpasses")
'''


def test_the_plugin_marks_the_benchmark_of_a_test_that_failed(pytester, monkeypatch,
                                                               tmp_path):
    """In a user's project: a test that fails after measure (in the call, at teardown, or
    as an expected failure) keeps its row, marked; the reports leave it out."""
    pytest.importorskip("pytest_benchmark")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    drop_worker_env(monkeypatch)  # pytest-benchmark turns itself off in an xdist worker
    pytester.makepyfile(test_bench=USER_BENCH)
    out = tmp_path / "bench.json"
    result = pytester.runpytest_subprocess(
        "-p", "handgrad.plugin", "-p", "no:cacheprovider", f"--benchmark-json={out}",
        "--benchmark-min-rounds=3", "--benchmark-max-time=0.01", "--bench-threads=1")
    result.assert_outcomes(passed=2, failed=1, xfailed=1, xpassed=1, errors=1)
    marks = {b["group"]: b["extra_info"].get("test_failed")
             for b in json.loads(out.read_text())["benchmarks"]}
    assert marks == {"passes": None, "fails": True, "xfails": True, "teardown": True,
                     "xpasses": None}
    assert set(load_benchmarks([out])["group"]) == {"passes", "xpasses"}
    from handgrad.reports.gate import gate

    again = _write(tmp_path / "again.json",
                   {**json.loads(out.read_text()), "datetime": "another process"})
    assert set(gate(str(out), str(again)).table["benchmark"]) == {
        "passes :: mine", "xpasses :: mine"}


# ------------------------------------------------------------------ the gates say it


def test_the_gate_names_a_failed_test_by_side_and_does_not_gate_it(tmp_path, run):
    from handgrad.reports.gate import gate

    base = _write(tmp_path / "base.json", run)
    slow = scaled_run({f"{GROUP} :: {METHOD}": 3.0}, run=run)  # a regression, if gated
    cur = _write(tmp_path / "cur.json", _marked(slow))
    result = gate(str(base), str(cur))
    assert result.passed
    assert result.skipped == (f"{GROUP} :: {METHOD}: its test failed (the current run): "
                              "not gated",)  # said once, not again as "baseline only"
    both = gate(str(_write(tmp_path / "b2.json", _marked(run))), str(cur))
    assert both.skipped == (f"{GROUP} :: {METHOD}: its test failed (the baseline and the "
                            "current run): not gated",)
    assert f"{GROUP} :: {METHOD}" not in set(result.table["benchmark"])


def test_the_gate_over_runs_names_a_failed_test_by_run(tmp_path, run):
    from handgrad.reports.noise import gate_runs

    paths = []
    for side in ("b", "c"):
        for i in (1, 2):
            data = scaled_run({}, run=run)
            data["datetime"] = f"2026-12-05T00:00:0{i} {side}"
            if side == "c" and i == 2:
                data = _marked(data)
            paths.append(str(_write(tmp_path / f"{side}{i}.json", data)))
    r = gate_runs(paths[:2], paths[2:])
    assert r.skipped[0] == (f"{GROUP} :: {METHOD}: its test failed (current run 2, "
                            f"{paths[3]}): left out of that run")
    # a failed reference is said too: its kernels have nothing to be measured against
    data = _marked(json.loads(Path(paths[3]).read_text()), method="torch_autograd")
    Path(paths[3]).write_text(json.dumps(data))
    r = gate_runs(paths[:2], paths[2:])
    assert (f"{GROUP} :: torch_autograd: a reference whose test failed (current run 2, "
            f"{paths[3]}): the kernels measured against it are left out of that run"
            ) in r.skipped


def test_the_gate_names_a_failed_reference(tmp_path, run):
    from handgrad.reports.gate import gate

    base = _write(tmp_path / "base.json", run)
    cur = _write(tmp_path / "cur.json", _marked(run, method="torch_autograd"))
    result = gate(str(base), str(cur))
    assert result.skipped[0] == (f"{GROUP} :: torch_autograd: a reference whose test failed "
                                 "(the current run): the kernels measured against it are "
                                 "not gated")
    # a reference no gated kernel is measured against is not the gate's to list
    from handgrad.reports.load import failed_gated

    df = load_benchmarks([cur], failed_tests=True)
    assert failed_gated(df) == {(GROUP, "torch_autograd"): False}
    df.loc[df["group"] == GROUP, "role"] = "reference"  # no kernel in that group now
    assert failed_gated(df) == {}


def test_calibrate_says_which_benchmarks_of_failed_tests_it_left_out(tmp_path, run, capsys):
    paths = []
    for i in (1, 2, 3):
        data = scaled_run({}, run=run)
        data["datetime"] = f"2026-12-05T00:00:0{i}"
        paths.append(str(_write(tmp_path / f"a{i}.json", _marked(data) if i == 3 else data)))
    assert main(["calibrate", *paths, "--out", str(tmp_path / "noise.json")]) == 0
    assert (f"  {GROUP} :: {METHOD}: its test failed (calibration run 3, {paths[2]}): left "
            "out of that run") in capsys.readouterr().out.splitlines()
