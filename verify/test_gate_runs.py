"""The wall-clock gate over several runs a side (handgrad.reports.noise): between-process
spread, three verdicts, the A/A calibration and its file, and the command line.

Runs are made from one real timed run (``verify/fixtures/bench_run1.json``) by scaling a
kernel's rounds: its paired ratio to the reference then moves by exactly that factor, so
each run's log ratio is known and the expected intervals are computed here from scipy's
own two-sample t-test, not from the code under test."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from handgrad.reports.__main__ import main
from handgrad.reports.load import ReportInputError
from handgrad.reports.noise import (
    BENCHMARK_THRESHOLD,
    KERNEL_THRESHOLD,
    calibrate,
    gate_runs,
    read_noise,
    run_ratios,
    runs_to_decide,
)
from verify.runs import write_runs

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FWD = "jacobian.manual_forward"


def _row(result, name):
    k = result.kernels
    return k[(k["kernel"] + "." + k["method"]) == name].iloc[0]


def test_a_change_of_every_benchmark_of_one_kernel_is_a_regression_of_that_kernel(tmp_path):
    noise = [1.00, 1.01, 0.99]
    base = write_runs(tmp_path, "b", [{FWD: n} for n in noise])
    cur = write_runs(tmp_path, "c", [{FWD: 1.10 * n} for n in reversed(noise)])
    r = gate_runs(base, cur)
    assert r.flagged() == {FWD}
    row = _row(r, FWD)
    assert row["verdict"] == "REGRESSION" and row["change"] == pytest.approx(1.10)
    others = r.kernels[(r.kernels["kernel"] + "." + r.kernels["method"]) != FWD]
    assert set(others["verdict"]) <= {"ok"}
    assert main(["gate", "--baseline", *base, "--current", *cur]) == 1


def test_the_interval_is_students_t_over_the_runs_spread(tmp_path):
    b_noise, c_noise = [1.00, 1.03, 0.98], [1.06, 1.01, 1.04, 1.02]
    base = write_runs(tmp_path, "b", [{FWD: n} for n in b_noise])
    cur = write_runs(tmp_path, "c", [{FWD: n} for n in c_noise])
    r = gate_runs(base, cur, confidence=0.9)
    # the textbook pooled two-sample interval (scipy >= 1.11 computes it too: compared)
    b, c = np.log(b_noise), np.log(c_noise)
    sp = math.sqrt((((b - b.mean()) ** 2).sum() + ((c - c.mean()) ** 2).sum()) / 5)
    half = stats.t.ppf(0.95, 5) * sp * math.sqrt(1 / 3 + 1 / 4)
    expect = type("CI", (), {"low": c.mean() - b.mean() - half,
                             "high": c.mean() - b.mean() + half})
    scipy_t = stats.ttest_ind(c, b, equal_var=True)
    if hasattr(scipy_t, "confidence_interval"):
        assert scipy_t.confidence_interval(0.9).low == pytest.approx(expect.low, rel=1e-9)
    for _, g in r.table[r.table["method"] == "manual_forward"].iterrows():
        assert g["ci_low"] == pytest.approx(math.exp(expect.low), rel=1e-9)
        assert g["ci_high"] == pytest.approx(math.exp(expect.high), rel=1e-9)
        assert g["runs"] == "3/4"
    # the kernel's value per run is the mean of its benchmarks' log ratios: the same here
    row = _row(r, FWD)
    assert row["ci_low"] == pytest.approx(math.exp(expect.low), rel=1e-9)


def test_unchanged_runs_with_process_noise_pass(tmp_path):
    base = write_runs(tmp_path, "b", [{FWD: n} for n in (1.0, 1.02, 0.99)])
    cur = write_runs(tmp_path, "c", [{FWD: n} for n in (1.01, 0.98, 1.0)])
    r = gate_runs(base, cur)
    assert r.passed and not r.inconclusive
    assert main(["gate", "--baseline", *base, "--current", *cur]) == 0


@pytest.mark.parametrize("c_noise, decided", [
    ([1.02, 1.24], "ok"),  # no change, too wide a spread to exclude one beyond the limit
    ([1.45, 1.75], "REGRESSION"),  # 1.4x, beyond the limit, not yet significant
])
def test_a_spread_too_wide_to_decide_is_inconclusive_and_says_how_many_runs_would(
        tmp_path, capsys, c_noise, decided):
    # one benchmark of the kernel swings 25% between processes
    name = "jacobian L=3 K=30 N=1024 cpu :: manual_forward"
    b_noise = [1.0, 1.25]
    base = write_runs(tmp_path, "b", [{name: n} for n in b_noise])
    cur = write_runs(tmp_path, "c", [{name: n} for n in c_noise])
    r = gate_runs(base, cur)
    row = r.table[r.table["benchmark"] == name].iloc[0]
    assert row["verdict"] == "inconclusive" and r.passed and r.inconclusive >= 1
    assert FWD in r.undecided()
    k = runs_to_decide(math.log(row["change"]), row["spread"], row["limit"], 0.95)
    assert row["decide"] == f"about {k} runs a side ({k - 2} more)"
    # k runs a side with the same change and spread decide it (ok); k - 1 do not
    d, s = math.log(row["change"]), row["spread"]
    for runs, verdict in ((k, decided), (k - 1, "inconclusive")):
        folder = tmp_path / f"k{runs}"
        folder.mkdir()
        # deviations of mean 0 whose pooled spread over both sides is s
        p = np.arange(runs) - (runs - 1) / 2
        dev = p * math.sqrt(s * s * (runs - 1) / float((p * p).sum()))
        br = write_runs(folder, "b", [{name: math.exp(v)} for v in dev])
        cr = write_runs(folder, "c", [{name: math.exp(d + v)} for v in dev])
        got = gate_runs(br, cr).table
        got = got[got["benchmark"] == name].iloc[0]
        assert got["spread"] == pytest.approx(s, rel=1e-6)
        assert got["change"] == pytest.approx(row["change"], rel=1e-9)
        assert got["verdict"] == verdict, (runs, got.to_dict())
    assert main(["gate", "--baseline", *base, "--current", *cur]) == 3
    assert "INCONCLUSIVE" in capsys.readouterr().out
    assert k > 2


def test_one_run_a_side_without_a_calibration_has_no_spread_to_judge_by(tmp_path):
    base = write_runs(tmp_path, "b", [{}])
    cur = write_runs(tmp_path, "c", [{FWD: 1.5}])
    r = gate_runs(base, cur)
    assert r.passed and set(r.kernels["verdict"]) == {"inconclusive"}
    assert set(r.kernels["decide"]) == {"2 runs a side or a calibration"}


def _calibration(tmp_path, noise_by_run):
    runs = write_runs(tmp_path, "a", noise_by_run)
    out = tmp_path / "noise.json"
    assert main(["calibrate", *runs, "--out", str(out)]) == 0
    return runs, out


def test_calibration_derives_each_threshold_from_its_spread(tmp_path):
    wild = "jacobian L=3 K=30 N=1024 cpu :: manual_forward"
    levels = [1.0, 1.3, 0.95, 1.25, 1.02, 1.28]
    runs, out = _calibration(tmp_path, [{wild: v} for v in levels])
    data = json.loads(out.read_text())
    sigma = float(np.std(np.log(levels), ddof=1))
    z = stats.norm.ppf(0.999)
    entry = data["benchmarks"][wild]
    assert entry["sigma"] == pytest.approx(sigma, abs=1e-6) and entry["dof"] == 5
    assert entry["threshold"] == pytest.approx(math.exp(z * math.sqrt(2) * sigma) - 1, abs=1e-3)
    quiet = data["benchmarks"]["jacobian L=3 K=30 N=1 cpu :: manual_forward"]
    assert quiet["sigma"] == 0 and quiet["threshold"] == BENCHMARK_THRESHOLD
    # the kernel's value per run is the mean log ratio of its benchmarks (here four, one wild)
    kern = data["kernels"]["jacobian.manual_forward@cpu"]
    n = kern["benchmarks"]
    assert kern["sigma"] == pytest.approx(sigma / n, abs=1e-6)
    assert kern["threshold"] == pytest.approx(
        max(KERNEL_THRESHOLD, math.exp(z * math.sqrt(2) * sigma / n) - 1), abs=1e-3)
    noise = read_noise(out)
    assert noise.benchmarks[wild].threshold == entry["threshold"] and noise.runs == 6


def test_the_calibrated_limit_and_spread_replace_the_defaults(tmp_path):
    wild = "jacobian L=3 K=30 N=1024 cpu :: manual_forward"
    _, out = _calibration(tmp_path, [{wild: v} for v in (1.0, 1.3, 0.95, 1.25, 1.02, 1.28)])
    # this benchmark 1.3x slower in three quiet runs a side: beyond the default 20% ...
    base = write_runs(tmp_path, "b", [{}, {}, {}])
    cur = write_runs(tmp_path, "c", [{wild: 1.3}, {wild: 1.31}, {wild: 1.29}])
    plain = gate_runs(base, cur)
    row = plain.table[plain.table["benchmark"] == wild].iloc[0]
    assert row["verdict"] == "REGRESSION" and row["limit"] == pytest.approx(1.2)
    # ... within what its own noise produces: the calibration's limit and pooled spread
    cal = gate_runs(base, cur, noise=read_noise(out))
    row = cal.table[cal.table["benchmark"] == wild].iloc[0]
    # the limit: what 3 runs against 3 show from the calibrated spread once in a thousand
    sigma = float(np.std(np.log([1.0, 1.3, 0.95, 1.25, 1.02, 1.28]), ddof=1))
    expect = math.exp(stats.norm.ppf(0.999) * sigma * math.sqrt(2 / 3))
    assert row["limit"] == pytest.approx(expect, abs=1e-3)
    assert row["verdict"] != "REGRESSION" and row["limit"] > 1.3
    # fewer runs, a wider limit: one run a side is the file's own threshold
    one_row = gate_runs(base[:1], cur[:1], noise=read_noise(out)).table
    one_row = one_row[one_row["benchmark"] == wild].iloc[0]
    assert one_row["limit"] == pytest.approx(1 + read_noise(out).benchmarks[wild].threshold,
                                             abs=1e-3)
    # the spread pools the calibration's (5 degrees of freedom) with the runs' own (4)
    levels = np.log([1.0, 1.3, 0.95, 1.25, 1.02, 1.28])
    runs_ss = ((np.log([1.3, 1.31, 1.29]) - np.log([1.3, 1.31, 1.29]).mean()) ** 2).sum()
    pooled = math.sqrt((np.var(levels, ddof=1) * 5 + runs_ss) / 9)
    assert row["spread"] == pytest.approx(pooled, rel=1e-4)
    # with one run a side the calibration's spread alone gives an interval
    one = gate_runs(base[:1], cur[:1], noise=read_noise(out))
    assert one.table["ci_low"].notna().all()
    assert main(["gate", "--baseline", *base, "--current", *cur, "--noise", str(out)]) in (0, 3)


def test_the_gate_warns_when_given_a_run_the_calibration_was_derived_from(tmp_path, capsys):
    """The calibration's limits were fitted on its own runs: gating one of them (either side,
    or a copy) is warned of on stderr, naming the file; the verdict is the same."""
    import shutil

    runs, out = _calibration(tmp_path, [{FWD: v} for v in (1.0, 1.01, 0.99, 1.02)])
    data = json.loads(out.read_text())
    assert len(data["run_fingerprints"]) == 4 == len(read_noise(out).fingerprints)
    fresh = write_runs(tmp_path, "c", [{FWD: 1.01}, {FWD: 0.99}])
    copy = str(tmp_path / "copy.json")
    shutil.copy(runs[3], copy)
    capsys.readouterr()
    for base, cur, named in [([runs[0], fresh[0]], [fresh[1]], [(runs[0], "baseline run 1")]),
                             ([fresh[0]], [fresh[1], copy], [(copy, "current run 2")])]:
        code = main(["gate", "--baseline", *base, "--current", *cur, "--noise", str(out)])
        assert code in (0, 3)
        stdout, err = capsys.readouterr()
        assert err.count("warning: ") == len(named), err
        assert stdout.count("- **warning**: ") == len(named), stdout
        for path, where in named:
            said = (f"{path} (the {where}) is one of the runs the calibration {out} "
                    "was derived from: its limits were fitted on that run, so their noise "
                    "estimate is optimistic")
            assert f"warning: {said}" in err
            assert f"- **warning**: {said}" in stdout  # the report says it as well
    # runs it was not derived from: no warning
    assert main(["gate", "--baseline", fresh[0], "--current", fresh[1], "--noise",
                 str(out)]) in (0, 3)
    assert "warning" not in capsys.readouterr().err
    # a calibration written before calibrate recorded its runs: read as before, no warning
    del data["run_fingerprints"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert read_noise(old).kernels == read_noise(out).kernels
    assert main(["gate", "--baseline", runs[0], fresh[0], "--current", fresh[1], "--noise",
                 str(old)]) in (0, 3)
    assert "warning" not in capsys.readouterr().err


def test_a_disturbed_run_is_left_out_and_named(tmp_path):
    base = write_runs(tmp_path, "b", [{}, {}, {}], reference={2: 3.0})
    cur = write_runs(tmp_path, "c", [{}, {}, {}])
    r = gate_runs(base, cur)
    assert any("baseline run 2 disturbed" in s for s in r.skipped)
    assert set(r.table["runs"]) == {"2/3"}
    # listed under "Not gated", but still judged on its other runs: the line says so
    line = next(s for s in r.skipped if "baseline run 2 disturbed" in s)
    assert line.endswith("its usual time): that run's value left out, the benchmark's "
                         "other runs kept")


@pytest.mark.parametrize("content, says", [
    ("not json", "is not JSON"),
    ('{"kind": "other"}', "not a calibration file"),
    ('{"kind": "handgrad-gate-noise", "version": 9}', "version 9"),
    ('{"kind": "handgrad-gate-noise", "version": 1, "kernels": {"a.b@cpu": {"sigma": 1}}}',
     "expected sigma, dof and threshold"),
    ('{"kind": "handgrad-gate-noise", "version": 1, "benchmarks": {"x": {"sigma": -1, '
     '"dof": 3, "threshold": 0.2}}}', "must be >= 0"),
    ('{"kind": "handgrad-gate-noise", "version": 1, "run_fingerprints": "abc"}',
     "run_fingerprints: expected a list of strings"),
    ('{"kind": "handgrad-gate-noise", "version": 1, "run_fingerprints": [1, 2]}',
     "run_fingerprints: expected a list of strings"),
])
def test_a_bad_calibration_file_is_refused_by_name(tmp_path, content, says):
    p = tmp_path / "noise.json"
    p.write_text(content)
    with pytest.raises(ReportInputError, match=says) as err:
        read_noise(p)
    assert str(p) in str(err.value)


def test_calibrate_needs_three_runs_and_the_cli_says_so(tmp_path, capsys):
    runs = write_runs(tmp_path, "a", [{}, {}])
    with pytest.raises(ReportInputError, match="at least 3"):
        calibrate(runs)
    assert main(["calibrate", *runs, "--out", str(tmp_path / "n.json")]) == 2
    assert "at least 3" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["calibrate", "--threshold", "1.05"], "--threshold: got '1.05': a threshold is a "
     "fraction or a percentage: write 5%, or 0.05"),
    (["calibrate", "--benchmark-threshold", "1.2"], "--benchmark-threshold: got '1.2'"),
    (["gate", "--threshold", "1.05"], "--threshold: got '1.05'"),  # over runs
    (["gate", "--benchmark-threshold", "1.2"], "--benchmark-threshold: got '1.2'"),
])
def test_a_factor_given_as_a_threshold_is_refused_by_every_option(tmp_path, capsys, argv,
                                                                  says):
    """1.05 is the --accept file's factor form of 5%: a threshold of 105% would pass nearly
    everything, so every threshold option refuses it (exit 2, one line) with how to write
    it, and the percentage it meant passes."""
    runs = write_runs(tmp_path, "a", [{}, {FWD: 1.01}, {FWD: 0.99}, {FWD: 1.0}])
    files = (runs if argv[0] == "calibrate" else
             ["--baseline", *runs[:2], "--current", *runs[2:]])
    out = tmp_path / "n.json"
    tail = ["--out", str(out)] if argv[0] == "calibrate" else []
    assert main([argv[0], *files, *argv[1:], *tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert not out.exists()
    value = argv[-1]
    fixed = f"{round((float(value) - 1) * 100)}%"
    assert main([argv[0], *files, argv[1], fixed, *tail]) in (0, 3)


def test_a_run_given_twice_is_refused_by_calibrate_and_the_gate(tmp_path, capsys):
    """Three copies of one run are no calibration (sigma 0), nor are a file and its copy
    two runs of a side: refused by name, the file and the copy."""
    import shutil

    runs = write_runs(tmp_path, "a", [{}, {FWD: 1.01}, {FWD: 0.99}])
    copy = str(tmp_path / "copy.json")
    shutil.copy(runs[1], copy)
    with pytest.raises(ReportInputError, match=re.escape(f"{runs[0]}: given twice")):
        calibrate([runs[0], runs[1], runs[0]])
    with pytest.raises(ReportInputError, match=re.escape(
            f"{copy}: holds the same run as {runs[1]}; calibrate takes separate runs")):
        calibrate([*runs, copy])
    assert main(["calibrate", runs[0], runs[0], runs[0], "--out",
                 str(tmp_path / "n.json")]) == 2
    assert "given twice" in capsys.readouterr().err and not (tmp_path / "n.json").exists()
    # the gate: a run on both sides, or twice on one
    assert main(["gate", "--baseline", runs[0], runs[1], "--current", runs[1], runs[2]]) == 2
    assert f"{runs[1]}: given twice" in capsys.readouterr().err
    with pytest.raises(ReportInputError, match="holds the same run"):
        gate_runs([runs[0], runs[1]], [copy, runs[2]])


def test_instruction_counts_take_no_calibration(tmp_path, capsys):
    counted = str(FIXTURES / "bench_instructions.json")
    _, out = _calibration(tmp_path, [{}, {FWD: 1.01}, {FWD: 0.99}])
    assert main(["gate", "--baseline", counted, "--current", counted, "--noise",
                 str(out)]) == 2
    assert "instruction counts" in capsys.readouterr().err


def test_run_ratios_reads_each_run_s_paired_ratio(tmp_path):
    base = write_runs(tmp_path, "b", [{FWD: 2.0}])
    plain = run_ratios([str(FIXTURES / "bench_run1.json")])
    doubled = run_ratios(base)
    merged = plain.merge(doubled, on="benchmark", suffixes=("", "_2"))
    fwd = merged[merged["method"] == "manual_forward"]
    assert len(fwd) >= 3
    assert np.allclose(fwd["ratio_2"] / fwd["ratio"], 2.0)
    rest = merged[merged["method"] != "manual_forward"]
    assert np.allclose(rest["ratio_2"], rest["ratio"])


def test_the_report_names_what_the_calibration_does_not_cover_and_another_machine(tmp_path):
    _, out = _calibration(tmp_path, [{}, {FWD: 1.01}, {FWD: 0.99}])
    data = json.loads(out.read_text())
    del data["kernels"]["jacobian.manual_reverse@cpu"]
    out.write_text(json.dumps(data))
    base = write_runs(tmp_path, "b", [{}, {}])
    cur = write_runs(tmp_path, "c", [{}, {}])
    r = gate_runs(base, cur, noise=read_noise(out))
    assert any("1 kernel(s) and 0 benchmark(s), e.g. `jacobian.manual_reverse@cpu`" in n
               for n in r.notes)
    assert not any("may not hold here" in n for n in r.notes)
    here = data["machine"]["cpu_count"]
    data["machine"]["cpu_count"] = 64
    out.write_text(json.dumps(data))
    r = gate_runs(base, cur, noise=read_noise(out))
    assert any("may not hold here" in n for n in r.notes)
    assert "may not hold here" in r.markdown()
    # it names what differs, not two dicts to compare, and what to do about it
    note = next(n for n in r.notes if "may not hold here" in n)
    assert f"(cpu_count 64 there, {here!r} here)" in note
    assert "torch_threads" not in note and "{" not in note
    assert "calibrate on this machine (python -m handgrad.reports calibrate" in note


def test_of_several_calibrations_the_gate_takes_the_current_runs_machines(tmp_path, capsys):
    # two calibrations of one grid: "wide" (a GD-loop-like spread, 0.2) from this fixture's
    # machine, "tight" (every sigma 0.001) recorded as another CPU's. A 15% slower
    # manual_forward over 3 runs a side passes under the wide one and fails under the tight
    _, out = _calibration(tmp_path, [{}, {FWD: 1.01}, {FWD: 0.99}])
    wide, tight = json.loads(out.read_text()), json.loads(out.read_text())
    for entries in (wide["kernels"], wide["benchmarks"]):
        for v in entries.values():
            v["sigma"], v["threshold"] = 0.2, 1.0
    for entries in (tight["kernels"], tight["benchmarks"]):
        for v in entries.values():
            v["sigma"] = 0.001
    tight["machine"]["cpu"] = "Intel(R) Xeon(R) Processor"
    here = wide["machine"]["cpu"]
    assert here != tight["machine"]["cpu"]
    files = {}
    for name, data in (("wide", wide), ("tight", tight)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(data))
    base = write_runs(tmp_path, "b", [{}, {}, {}])
    cur = write_runs(tmp_path, "c", [{FWD: 1.15}] * 3)

    def gate(*noise):
        capsys.readouterr()
        rc = main(["gate", "--baseline", *base, "--current", *cur,
                   "--noise", *map(str, noise)])
        return rc, capsys.readouterr().out

    # the runs' machine is wide's, whichever order the files come in
    for order in ((files["tight"], files["wide"]), (files["wide"], files["tight"])):
        rc, report = gate(*order)
        assert rc == 0, report
        assert str(files["wide"]) in report and str(files["tight"]) not in report
        assert "may not hold here" not in report
    # the runs made on the tight one's CPU take it, and regress
    for path in (*base, *cur):
        run = json.loads(Path(path).read_text())
        run["machine_info"]["cpu"]["brand_raw"] = tight["machine"]["cpu"]
        Path(path).write_text(json.dumps(run))
    rc, report = gate(files["wide"], files["tight"])
    assert rc == 1 and str(files["tight"]) in report and "may not hold here" not in report
    # an item the runs do not record (older runs: no torch_threads) agrees with any
    for path in (*base, *cur):
        run = json.loads(Path(path).read_text())
        del run["machine_info"]["torch_threads"]
        Path(path).write_text(json.dumps(run))
    rc, report = gate(files["wide"], files["tight"])
    assert rc == 1 and str(files["tight"]) in report
    # none agrees: the first given, and the report says the machine differs
    for path in (*base, *cur):
        run = json.loads(Path(path).read_text())
        run["machine_info"]["cpu"]["brand_raw"] = "ARM Neoverse"
        Path(path).write_text(json.dumps(run))
    rc, report = gate(files["tight"], files["wide"])
    assert rc == 1 and str(files["tight"]) in report
    assert f"cpu {tight['machine']['cpu']!r} there, 'ARM Neoverse' here" in report
    rc, report = gate(files["wide"], files["tight"])
    assert rc == 0 and f"cpu {here!r} there, 'ARM Neoverse' here" in report


def test_an_undecided_benchmark_of_a_kernel_judged_ok_is_shown_not_counted(tmp_path):
    # one of manual_forward's 4 benchmarks 8-18% slower: the kernel, over its benchmarks,
    # is ok; that benchmark's interval straddles its 1.20 limit. As in the gate of one run
    # a side, the kernel's verdict decides: the gate passes (exit 0), the row still shown
    wild = "jacobian L=3 K=30 N=1024 cpu :: manual_forward"
    base = write_runs(tmp_path, "b", [{}, {}, {}])
    cur = write_runs(tmp_path, "c", [{wild: f} for f in (1.08, 1.18, 1.12)])
    r = gate_runs(base, cur)
    assert _row(r, FWD)["verdict"] == "ok"
    row = r.table[r.table["benchmark"] == wild].iloc[0]
    assert row["verdict"] == "inconclusive" and row["ci_low"] < 1.2 < row["ci_high"]
    assert r.inconclusive == 0 and r.undecided() == set() and r.passed
    assert main(["gate", "--baseline", *base, "--current", *cur]) == 0
    # a kernel without a verdict of its own (no benchmark every run has: each current
    # run lacks another half of them): its benchmarks are its only verdicts, and an
    # undecided one counts
    cur = write_runs(tmp_path, "d", [{wild: f} for f in (1.08, 1.18, 1.12, 1.13)])
    for i, path in enumerate(cur):
        data = json.loads(Path(path).read_text())
        data["benchmarks"] = [b for j, b in enumerate(data["benchmarks"])
                              if b["group"] == wild.split(" :: ")[0] and i < 3
                              or b["group"] != wild.split(" :: ")[0] and j % 2 == i % 2]
        Path(path).write_text(json.dumps(data))
    r = gate_runs(base, cur)
    assert FWD not in {f"{k}.{m}" for k, m in zip(r.kernels["kernel"], r.kernels["method"])}
    row = r.table[r.table["benchmark"] == wild].iloc[0]
    assert row["verdict"] == "inconclusive"
    assert FWD in r.undecided() and r.inconclusive >= 1
    assert main(["gate", "--baseline", *base, "--current", *cur]) == 3


def test_a_kernel_is_judged_on_the_benchmarks_every_run_has(tmp_path):
    base = write_runs(tmp_path, "b", [{}, {}])
    cur = write_runs(tmp_path, "c", [{}, {}])
    full = _row(gate_runs(base, cur), FWD)["benchmarks"]
    # the second current run lacks one manual_forward benchmark, which is 3x slower in the
    # first: the kernel's mean leaves it out in every run, the benchmark table keeps it
    name = "jacobian L=3 K=30 N=1 cpu :: manual_forward"
    data = json.loads(Path(cur[1]).read_text())
    data["benchmarks"] = [b for b in data["benchmarks"]
                          if f"{b['group']} :: {b['extra_info']['method']}" != name]
    Path(cur[1]).write_text(json.dumps(data))
    (tmp_path / "slow").mkdir()
    slow = write_runs(tmp_path / "slow", "c", [{name: 3.0}])[0]
    Path(cur[0]).write_text(Path(slow).read_text())
    r = gate_runs(base, cur)
    row = _row(r, FWD)
    assert row["benchmarks"] == full - 1 and row["change"] == pytest.approx(1.0)
    assert r.table[r.table["benchmark"] == name]["runs"].iloc[0] == "2/1"


def test_a_kernel_faster_in_every_run_is_faster(tmp_path):
    base = write_runs(tmp_path, "b", [{FWD: n} for n in (1.0, 1.01, 0.99)])
    cur = write_runs(tmp_path, "c", [{FWD: 0.7 * n} for n in (1.0, 0.99, 1.01)])
    r = gate_runs(base, cur)
    assert _row(r, FWD)["verdict"] == "faster"
    assert set(r.table[r.table["method"] == "manual_forward"]["verdict"]) == {"faster"}


@pytest.mark.parametrize("factor, verdict", [(0.951, "faster"), (0.953, "ok")])
def test_faster_over_runs_is_under_one_over_the_limit(tmp_path, factor, verdict):
    """The rule of every gate (gate.is_faster): a kernel whose interval lies under 1 / limit
    (1/1.05 = 0.9524 by default) is faster; 0.951 is that, though not under 1 - 5%."""
    base = write_runs(tmp_path, "b", [{}, {}, {}])
    cur = write_runs(tmp_path, "c", [{FWD: factor}] * 3)
    row = _row(gate_runs(base, cur), FWD)
    assert row["ci_high"] == pytest.approx(factor) and row["verdict"] == verdict


def test_one_baseline_run_against_several_is_the_gate_over_runs(tmp_path, capsys):
    base = write_runs(tmp_path, "b", [{}])
    cur = write_runs(tmp_path, "c", [{}, {FWD: 1.01}])
    assert main(["gate", "--baseline", *base, "--current", *cur]) in (0, 3)
    assert "gate over runs" in capsys.readouterr().out


def test_every_planted_regression_still_applies_to_todays_kernels(tmp_path):
    # a refactor of kernels/jacobian.py that moves a plant's anchor would stop
    # .ci/power.py collect with an error: caught here instead, for each plant
    import ast
    import importlib.util
    import shutil

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("power", root / ".ci" / "power.py")
    power = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(power)
    assert {"copies2", "redtype", "clone", "copies", "recheck"} <= set(power.PLANTS)
    for name, (path, kernel, edits) in power.PLANTS.items():
        tree = tmp_path / name
        (tree / path).parent.mkdir(parents=True)
        shutil.copy(root / path, tree / path)
        assert power.plant(tree, name) == kernel
        text = (tree / path).read_text()
        ast.parse(text)  # still Python
        assert all(new in text for _, new in edits), name


def test_the_power_script_counts_false_failures_and_catches(tmp_path):
    # recorded runs (no live timing): 10 unchanged with 1% process noise, 5 with the
    # planted kernel 1.15x slower; the script's table must show every planted pair caught
    # and no unchanged pair failed, and its planted change near 1.15
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    write_runs(tmp_path, "a", [{FWD: float(np.exp(rng.normal(0, 0.01)))} for _ in range(10)])
    write_runs(tmp_path, "p", [{FWD: 1.15 * float(np.exp(rng.normal(0, 0.01)))}
                               for _ in range(5)])
    (tmp_path / "planted").write_text(f"clone {FWD}\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / ".ci" / "power.py"), "analyse",
                           str(tmp_path), "--pairs", "5", "--thresholds", "5%",
                           "--runs-per-side", "2", "--calibration-runs", "4"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr
    row = [ln for ln in proc.stdout.splitlines() if ln.startswith("| 2 | 5% | 0.999 |")]
    assert len(row) == 1, proc.stdout
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[3] == "0/5" and cells[5] == "5/5"
    assert float(cells[7]) == pytest.approx(1.15, rel=0.03)


@pytest.mark.parametrize("name", sorted(p.name for p in (
    Path(__file__).resolve().parents[1] / ".ci").glob("gate-noise*.json")))
def test_the_committed_calibration_covers_every_kernel_ci_gates(name):
    # .ci/gate judges the wall clock with these files (one a machine): every kernel the
    # default grid times on the CPU must have an entry measured from at least 6 unchanged
    # runs, each file of another machine
    root = Path(__file__).resolve().parents[1]
    noise = read_noise(root / ".ci" / name)
    assert noise.runs >= 6
    others = [read_noise(p).machine for p in (root / ".ci").glob("gate-noise*.json")
              if p.name != name]
    assert noise.machine and noise.machine not in others
    gated = {"backprop.manual", "jacobian.manual_forward", "jacobian.manual_reverse",
             "least_squares.gd_closed_form", "least_squares.gd_loop",
             "least_squares.momentum_form1", "least_squares.momentum_form2",
             "counting.count_model"}
    assert {f"{k}@cpu" for k in gated} <= set(noise.kernels)
    assert all(v.dof >= 5 for v in noise.kernels.values())
    # each limit is the spread's or the level's default, never under it
    assert all(v.threshold >= KERNEL_THRESHOLD for v in noise.kernels.values())
    assert all(v.threshold >= BENCHMARK_THRESHOLD for v in noise.benchmarks.values())


def test_the_gate_times_on_the_thread_count_its_calibration_was_measured_at():
    # a calibration from two-thread runs understates one-thread spreads and the other way
    # round (the two-speed processes of docs/reports-and-gate.md, "Measured power")
    root = Path(__file__).resolve().parents[1]
    gate = (root / ".ci" / "gate").read_text()
    (default,) = re.findall(r"threads=\$\{GATE_THREADS:-(\d+)\}", gate)
    assert '--bench-threads="$threads"' in gate
    for path in (root / ".ci").glob("gate-noise*.json"):
        assert read_noise(path).machine["torch_threads"] == int(default), path.name


def test_runs_with_no_benchmark_common_to_all_still_give_a_benchmark_verdict(tmp_path):
    # each current run lacks a different half of the benchmarks: no kernel has a benchmark
    # in every run, so there is no kernel row, and each benchmark is judged on its own
    base = write_runs(tmp_path, "b", [{}, {}])
    cur = write_runs(tmp_path, "c", [{}, {}])
    for i, path in enumerate(cur):
        data = json.loads(Path(path).read_text())
        data["benchmarks"] = [b for j, b in enumerate(data["benchmarks"]) if j % 2 == i]
        Path(path).write_text(json.dumps(data))
    r = gate_runs(base, cur)
    assert r.kernels.empty and not r.table.empty and r.passed
    assert "#### Kernels" in r.markdown()


def test_runs_of_part_of_the_grid_add_to_their_benchmarks_spreads_only(tmp_path):
    full = write_runs(tmp_path, "f", [{}, {FWD: 1.01}, {FWD: 0.99}, {FWD: 1.02}])
    (tmp_path / "part").mkdir()
    part = write_runs(tmp_path / "part", "p", [{FWD: 1.1}, {FWD: 0.9}, {FWD: 1.05}])
    lacking = "jacobian L=3 K=30 N=1 cpu :: manual_forward"
    for path in part:
        data = json.loads(Path(path).read_text())
        data["benchmarks"] = [b for b in data["benchmarks"]
                              if f"{b['group']} :: {b['extra_info']['method']}" != lacking]
        Path(path).write_text(json.dumps(data))
    data = calibrate(full + part)
    kern = data["kernels"]["jacobian.manual_forward@cpu"]
    assert kern["dof"] == 3  # the four runs that timed all its benchmarks
    assert kern["sigma"] == pytest.approx(np.std(np.log([1.0, 1.01, 0.99, 1.02]), ddof=1),
                                          abs=1e-6)
    other = "jacobian L=3 K=30 N=1024 cpu :: manual_forward"
    assert data["benchmarks"][other]["dof"] == 6 and data["benchmarks"][lacking]["dof"] == 3
    assert data["runs"] == 7


@pytest.mark.parametrize("field, value", [("dtype", "bfloat16"), ("threads", 7),
                                          ("reference", "torch_func_jvp")])
def test_a_benchmark_measured_otherwise_in_one_run_is_not_gated(tmp_path, field, value):
    name = "jacobian L=3 K=30 N=1 cpu :: manual_forward"
    base = write_runs(tmp_path, "b", [{}, {}])
    cur = write_runs(tmp_path, "c", [{name: 3.0}, {name: 3.0}])  # would be a regression
    data = json.loads(Path(cur[1]).read_text())
    for b in data["benchmarks"]:
        if f"{b['group']} :: {b['extra_info']['method']}" == name:
            b["extra_info"][field] = value
    Path(cur[1]).write_text(json.dumps(data))
    r = gate_runs(base, cur)
    assert name not in set(r.table["benchmark"])
    tail = "" if field == "reference" else ": another measurement, not a change of the kernel"
    assert r.skipped == (f"{name}: its {field} differs between the runs{tail}",)


def test_cpu_threads_do_not_set_gpu_benchmarks_apart(tmp_path):
    base = write_runs(tmp_path, "b", [{}, {}])
    cur = write_runs(tmp_path, "c", [{}, {}])
    for i, path in enumerate([*base, *cur]):
        data = json.loads(Path(path).read_text())
        for b in data["benchmarks"]:
            b["extra_info"]["device"], b["extra_info"]["threads"] = "cuda", 1 + i % 2
        Path(path).write_text(json.dumps(data))
    assert not gate_runs(base, cur).skipped


def _taken_at(paths: list[str], times: list[str]) -> None:
    for p, t in zip(paths, times):
        data = json.loads(Path(p).read_text())
        data["datetime"] = t
        Path(p).write_text(json.dumps(data))


@pytest.mark.parametrize("base_times, cur_times, warned", [
    # a CI job per commit: the baseline's runs an hour before the current's
    (["2026-12-05T10:00:00+00:00", "2026-12-05T10:01:00+00:00", "2026-12-05T10:02:00+00:00"],
     ["2026-12-05T11:00:00+00:00", "2026-12-05T11:01:00+00:00", "2026-12-05T11:02:00+00:00"],
     "every baseline run was taken before every current run"),
    # the other way round (a baseline rerun later)
    (["2026-12-05T11:00:00", "2026-12-05T11:01:00", "2026-12-05T11:02:00"],
     ["2026-12-05T10:00:00", "2026-12-05T10:01:00", "2026-12-05T10:02:00"],
     "every current run was taken before every baseline run"),
    # alternated: the sessions are shared
    (["2026-12-05T10:00:00+00:00", "2026-12-05T10:02:00+00:00", "2026-12-05T10:04:00+00:00"],
     ["2026-12-05T10:01:00+00:00", "2026-12-05T10:03:00+00:00", "2026-12-05T10:05:00+00:00"],
     None),
    # one run that does not say when: nothing is claimed
    (["2026-12-05T10:00:00+00:00", "2026-12-05T10:01:00+00:00", "not a time"],
     ["2026-12-05T11:00:00+00:00", "2026-12-05T11:01:00+00:00", "2026-12-05T11:02:00+00:00"],
     None),
])
def test_runs_taken_apart_without_a_calibration_are_warned(tmp_path, capsys, base_times,
                                                           cur_times, warned):
    # a walkthrough: three runs a side, a side per CI job, unchanged code: 1.054 against a
    # 5% limit, REGRESSION, with a spread of 0.005 that held no shift between the sessions
    base = write_runs(tmp_path, "b", [{FWD: n} for n in (1.00, 1.01, 0.99)])
    cur = write_runs(tmp_path, "c", [{FWD: n} for n in (1.00, 1.01, 0.99)])
    _taken_at(base, base_times)
    _taken_at(cur, cur_times)
    summary = tmp_path / "summary.md"
    main(["gate", "--baseline", *base, "--current", *cur, "--summary", str(summary)])
    out, err = capsys.readouterr()
    if warned:
        assert f"warning: {warned}, with no calibration (--noise)" in err
        assert "python -m handgrad.benchmark.alternate" in err
        # in the report too, under its verdict: CI's reader sees the step summary
        for text in (summary.read_text(), out):
            said = text.split("\n\n")[1]
            assert said.startswith(f"- **warning**: {warned}, with no calibration (--noise)")
            assert "python -m handgrad.benchmark.alternate" in said
    else:
        assert "taken before" not in err
        assert "taken before" not in summary.read_text() and "taken before" not in out
    # a calibration brings the spread between processes: no warning
    out = tmp_path / "noise.json"
    cal = write_runs(tmp_path, "aa", [{FWD: n} for n in (1.00, 1.02, 0.98, 1.01)])
    assert main(["calibrate", *cal, "--out", str(out)]) == 0
    capsys.readouterr()
    main(["gate", "--baseline", *base, "--current", *cur, "--noise", str(out)])
    assert "taken before" not in capsys.readouterr().err


def test_the_header_over_runs_explains_faster(tmp_path):
    """The header named REGRESSION, ok and inconclusive; `faster`, a verdict of its tables,
    was in no words of it."""
    base = write_runs(tmp_path, "b", [{FWD: n} for n in (1.00, 1.01, 0.99)])
    cur = write_runs(tmp_path, "c", [{FWD: 0.8 * n} for n in (1.00, 1.01, 0.99)])
    r = gate_runs(base, cur)
    assert _row(r, FWD)["verdict"] == "faster"
    head = r.markdown().split("\n\n")[1]
    assert ("ok: the interval's top at or under `limit`; faster: its top under 1 / `limit`. "
            "inconclusive: neither") in head
    assert r.markdown().splitlines()[0] == (
        "### handgrad benchmark gate over runs: PASS: no regression")
    slow = write_runs(tmp_path, "s", [{FWD: 1.3 * n} for n in (1.00, 1.01, 0.99)])
    assert gate_runs(base, slow).markdown().splitlines()[0] == (
        "### handgrad benchmark gate over runs: FAIL: 5 regression(s) in "
        "jacobian.manual_forward")


def test_the_benchmark_table_over_runs_leads_with_the_benchmark(tmp_path):
    """Its first column had been `device`, the benchmark's name second."""
    base = write_runs(tmp_path, "b", [{FWD: n} for n in (1.00, 1.01, 0.99)])
    cur = write_runs(tmp_path, "c", [{FWD: n} for n in (1.00, 1.01, 0.99)])
    text = gate_runs(base, cur).markdown().split("#### Benchmarks\n\n", 1)[1]
    assert text.splitlines()[0].startswith("| benchmark | device | runs | change |")


@pytest.mark.parametrize("k, m, n, said", [
    (2, 2, 1, "about 2 runs a side (1 more current)"),
    (3, 2, 1, "about 3 runs a side (1 more baseline, 2 more current)"),
    (4, 1, 3, "about 4 runs a side (3 more baseline, 1 more current)"),
    (5, 3, 3, "about 5 runs a side (2 more)"),
    (None, 2, 1, "more than 99 runs a side"),
    (2, 3, 2, "more runs"),
])
def test_decide_says_how_many_more_runs_of_which_side(k, m, n, said):
    """Two baseline runs against one current (or a side short of runs): `decide` had said
    "more runs" wherever the runs a side needed did not exceed both sides, and "(N more)"
    counted from the shorter side only."""
    from handgrad.reports.noise import _decide

    assert _decide(k, m, n) == said


def test_an_undecided_row_of_unequal_sides_says_which_side_needs_runs(tmp_path):
    base = write_runs(tmp_path, "b", [{FWD: n} for n in (1.00, 1.08)])
    cur = write_runs(tmp_path, "c", [{FWD: 1.04}])
    r = gate_runs(base, cur)
    undecided = r.table[r.table["verdict"] == "inconclusive"]
    assert len(undecided), r.markdown()
    assert not (undecided["decide"] == "more runs").any(), r.markdown()
    assert undecided["decide"].str.contains("more current").all(), r.markdown()


def test_a_ratio_moved_by_its_reference_alone_is_no_regression_of_the_kernel(tmp_path):
    """The reference is torch's code, the same on both sides: on one machine
    torch.optim.SGD ran at ~21 or ~27 ms by process, and momentum_form1, whose own time
    did not move (0.99x), read 1.114 [1.036, 1.198] over 5 runs a side. A ratio that
    rose while the kernel's own time did not is inconclusive, and says so; a kernel slower
    itself is still a regression (the test above)."""
    noise = [1.00, 1.01, 0.99]
    base = write_runs(tmp_path, "b", [{FWD: n} for n in noise])
    # every reference 10% faster in each current run, the kernels' own rounds as before
    cur = write_runs(tmp_path, "c", [{FWD: n} for n in reversed(noise)],
                     reference={1: 1 / 1.10, 2: 1 / 1.10, 3: 1 / 1.10})
    r = gate_runs(base, cur)
    row = _row(r, FWD)
    assert row["change"] == pytest.approx(1.10, rel=0.01)  # the ratio did rise
    assert row["verdict"] == "inconclusive", row.to_dict()
    assert row["decide"].startswith("its reference moved, not the kernel: the kernel's own "
                                    "time 1.000 [")
    assert r.flagged() == set() and "REGRESSION" not in set(r.table["verdict"])
    assert main(["gate", "--baseline", *base, "--current", *cur]) == 3
    # the same reference move with the kernel itself 10% slower: a regression
    slow = write_runs(tmp_path, "s", [{FWD: 1.10 * n} for n in reversed(noise)],
                      reference={1: 1 / 1.10, 2: 1 / 1.10, 3: 1 / 1.10})
    r = gate_runs(base, slow)
    assert _row(r, FWD)["verdict"] == "REGRESSION" and r.flagged() == {FWD}


def test_one_run_a_side_keeps_the_ratios_regression_no_spread_of_its_own_time(tmp_path):
    """With one run a side (a calibration gives the ratio's spread) the kernel's own time
    has no spread to judge by: the ratio's REGRESSION stands."""
    quiet = "jacobian L=3 K=30 N=1024 cpu :: manual_forward"
    _, out = _calibration(tmp_path, [{quiet: v} for v in (1.0, 1.01, 0.99, 1.0, 1.01, 0.99)])
    base = write_runs(tmp_path, "b", [{}])
    cur = write_runs(tmp_path, "c", [{FWD: 1.5}])
    r = gate_runs(base, cur, noise=read_noise(out))
    row = r.table[r.table["benchmark"] == quiet].iloc[0]
    assert row["runs"] == "1/1" and row["verdict"] == "REGRESSION", row.to_dict()
