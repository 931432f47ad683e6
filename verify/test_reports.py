"""`python -m handgrad.reports` on checked-in, real benchmark JSON: three small runs of the bench
suite made back to back on the 2-core development machine (verify/fixtures/README.md says
how). run1 and run2 are unchanged code; run_slow had ``--bench-slow
jacobian.manual_forward=1.25``."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handgrad.reports.__main__ import main
from handgrad.reports.gate import gate, parse_threshold
from handgrad.reports.load import ReportInputError, load_benchmarks
from handgrad.reports.render import render
from verify.runs import as_schema2, as_schema4

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).resolve().parent / "fixtures"
RUN1, RUN2, SLOW = FIX / "bench_run1.json", FIX / "bench_run2.json", FIX / "bench_run_slow.json"
SLOWED = "manual_forward"  # the kernel run_slow slowed


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _write(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def slow_down(data: dict, method: str, factor: float, group: str = "") -> dict:
    """A copy of a run with every round of ``method`` (in groups starting with ``group``)
    taking ``factor`` times as long."""
    data = copy.deepcopy(data)
    hit = 0
    for b in data["benchmarks"]:
        if b["extra_info"]["method"] == method and b["group"].startswith(group):
            b["stats"]["data"] = [t * factor for t in b["stats"]["data"]]
            for k in ("min", "max", "mean", "median", "q1", "q3", "iqr", "stddev"):
                b["stats"][k] *= factor
            hit += 1
    assert hit, f"no benchmark of {method} in the fixture"
    return data


# ----------------------------------------------------------------------------- fixtures


def test_fixtures_are_real_interleaved_runs():
    for path in (RUN1, RUN2, SLOW):
        data = _load(path)
        assert data["machine_info"]["torch"], path
        kernels = {b["extra_info"]["kernel"] for b in data["benchmarks"]}
        assert {"backprop", "jacobian", "counting", "least_squares", "control"} <= kernels, path
        paired = [b for b in data["benchmarks"] if b["extra_info"].get("interleaved")]
        assert paired, f"{path}: no interleaved benchmark"
        for b in paired:
            assert len(b["extra_info"]["reference_data"]) == len(b["stats"]["data"]), b["name"]
    assert _load(SLOW)["machine_info"]["bench_slow"] == {f"jacobian.{SLOWED}": 1.25}
    assert _load(RUN1)["machine_info"]["bench_slow"] == {}


# ------------------------------------------------------------------ a user's benchmarks


def user_run(seed: int, slow: float = 1.0) -> dict:
    """A schema-4 file of a project that is not handgrad: its own family, method names and
    shape parameters, a kernel timed interleaved with its reference at three shapes."""
    rng = np.random.default_rng(seed)
    benchmarks = []
    for batch in (64, 256, 1024):
        group = f"softplus_layer batch={batch} width=32 cpu"
        ref = list(batch * 1e-6 * (1 + 0.01 * rng.standard_normal(15)))
        mine = [0.8 * slow * t * (1 + 0.01 * e) for t, e in zip(ref, rng.standard_normal(15))]
        for method, role, data, paired in (("my_backward", "kernel", mine, ref),
                                           ("torch_autograd", "reference", ref, None)):
            info = {"kernel": "softplus_layer", "method": method,
                    "reference": "torch_autograd", "role": role, "flops": 6 * batch * 32,
                    "bytes": 0, "device": "cpu", "dtype": "float32", "threads": 1,
                    "shape": {"batch": batch, "width": 32}}
            if paired:
                info["reference_data"] = paired
            benchmarks.append({"name": f"test_layer[{batch}-{method}]", "group": group,
                               "extra_info": info,
                               "stats": {"median": float(np.median(data)),
                                         "iqr": float(np.subtract(*np.percentile(data, [75, 25]))),
                                         "rounds": len(data), "data": data}})
    return {"machine_info": {"node": "laptop", "handgrad_schema": 4}, "commit_info": {},
            "benchmarks": benchmarks, "datetime": f"2026-12-04T0{seed}:00:00"}


def test_render_and_gate_read_a_user_s_benchmarks(tmp_path):
    """Schema 4 is open: any family, method and shape names are rendered and gated."""
    base, same = _write(tmp_path, "a.json", user_run(1)), _write(tmp_path, "b.json", user_run(2))
    slow = _write(tmp_path, "c.json", user_run(3, slow=1.3))
    assert main(["render", str(base), "--out", str(tmp_path / "out")]) == 0
    import pandas as pd

    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    mine = csv[csv["method"] == "my_backward"]
    assert sorted(mine["batch"]) == [64, 256, 1024] and set(mine["width"]) == {32}
    assert set(mine["role"]) == {"kernel"} and set(mine["kernel"]) == {"softplus_layer"}
    assert mine["ratio_to_ref"].between(0.75, 0.85).all()
    assert gate(str(base), str(same)).passed
    result = gate(str(base), str(slow))
    assert result.flagged() == {"softplus_layer.my_backward"}, result.markdown()
    # no depth L and no byte count: the report says why it draws no figure
    md = (tmp_path / "out" / "report.md").read_text()
    assert not list((tmp_path / "out").glob("*.png"))
    assert "No time-against-depth figure: no timed benchmark of softplus_layer has a " \
           "depth (a shape parameter `L`)" in md
    assert "No roofline: no timed benchmark records both an analytic FLOP count and a " \
           "byte count" in md


# ----------------------------------------------------------------------------- render


def test_render_writes_report_csv_and_figures(tmp_path, capsys):
    assert main(["render", str(RUN1), str(RUN2), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    for kernel in ("backprop", "jacobian", "counting", "least_squares", "control"):
        assert f"### {kernel}" in md
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"backprop_time_vs_L.png", "jacobian_time_vs_L.png",
            "jacobian_modes_model_vs_measured.png", "roofline.png"} <= pngs
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md, f"{name} is written but not shown in the report"
    assert "No roofline" not in md and "No time-against-depth figure: no timed benchmark " \
        "of backprop" not in md
    import pandas as pd

    csv = pd.read_csv(tmp_path / "summary.csv")
    assert {"median_ms", "iqr_ms", "ratio_to_ref", "gflop_s", "machine"} <= set(csv.columns)
    # both files merged: every benchmark twice
    assert len(csv) == len(_load(RUN1)["benchmarks"]) + len(_load(RUN2)["benchmarks"])
    # a reference's ratio to itself is 1; the manual backprop's is its median over autograd's
    refs = csv[csv["method"] == csv["reference"]]
    assert np.allclose(refs["ratio_to_ref"], 1.0)
    err = capsys.readouterr().err
    assert "[1/" in err and "wrote" in err  # progress lines


def _steps(err: str) -> list[str]:
    """The counted progress lines of a render, after checking that they count 1 to n."""
    import re

    counted = re.findall(r"^\[(\d+)/(\d+)\] rendering (.*)$", err, flags=re.M)
    n = len(counted)
    assert [(int(i), int(t)) for i, t, _ in counted] == [(i, n) for i in range(1, n + 1)], err
    return [what for _, _, what in counted]


def test_render_announces_and_counts_only_the_steps_that_draw(tmp_path):
    """A figure step is counted only where it will draw; a skipped one says why, and the
    Jacobian's says nothing to a project without Jacobian benchmarks."""
    import io

    def rendered(name, keep):
        data = _load(RUN1)
        data["benchmarks"] = [b for b in data["benchmarks"] if keep(b["extra_info"])]
        err = io.StringIO()
        render([_write(tmp_path, name, data)], tmp_path / name.replace(".json", ""), err)
        return err.getvalue()

    kernels = ["backprop", "control", "counting", "jacobian", "least_squares"]
    err = rendered("all.json", lambda i: True)
    assert _steps(err) == [*kernels, "the Jacobian mode figure", "the roofline figure"]
    assert "skipping" not in err
    def uncounted(info):  # no FLOP or byte count but the control's: nothing to draw
        if info["kernel"] != "control":
            info.update(flops=0, bytes=0)
        return info["kernel"] != "jacobian"

    # no Jacobian benchmarks, and no FLOP or byte counts (the control's is a drift check,
    # drawn only on a roofline): no roofline either
    err = rendered("plain.json", uncounted)
    assert _steps(err) == ["backprop", "control", "counting", "least_squares"]
    assert "Jacobian" not in err
    assert ("skipping the roofline figure: no timed benchmark records both a FLOP and a byte "
            "count (flops= and bytes= of measure)") in err
    # Jacobian benchmarks without their reverse mode: nothing to pair, said
    err = rendered("forward.json", lambda i: i["method"] != "manual_reverse")
    assert _steps(err) == [*kernels, "the roofline figure"]
    assert ("skipping the Jacobian mode figure: no timed manual_forward and manual_reverse "
            "Jacobian benchmarks of one (L, K, N)") in err


def test_render_table_numbers_match_the_json(tmp_path):
    """ratio_to_ref (paired rounds; the reference's rounds when not interleaved), iqr_ms
    and gflop_s, each computed here from the JSON by hand."""
    data = _load(RUN1)
    bench = data["benchmarks"]
    b = next(x for x in bench if x["extra_info"]["method"] == "manual"
             and x["extra_info"]["kernel"] == "backprop")
    # a second manual backprop benchmark without paired rounds: against the reference's own
    c = next(x for x in bench if x["extra_info"]["method"] == "manual" and x is not b)
    del c["extra_info"]["reference_data"]
    path = _write(tmp_path, "run.json", data)
    assert main(["render", str(path), "--out", str(tmp_path / "out")]) == 0
    import pandas as pd

    csv = pd.read_csv(tmp_path / "out" / "summary.csv")

    def row(x):
        hit = csv[(csv["method"] == "manual") & (csv["L"] == x["extra_info"]["L"])
                  & (csv["K"] == x["extra_info"]["K"])]
        assert len(hit) == 1
        return hit.iloc[0]

    rb, rc = row(b), row(c)
    paired = [k / r for k, r in zip(b["stats"]["data"], b["extra_info"]["reference_data"])]
    assert rb["ratio_to_ref"] == pytest.approx(float(np.median(paired)), rel=1e-12)
    assert rb["ratio_kind"] == "paired"
    ref_c = next(x for x in bench if x["group"] == c["group"]
                 and x["extra_info"]["method"] == "torch_autograd")
    want = np.median(c["stats"]["data"]) / np.median(ref_c["stats"]["data"])
    assert rc["ratio_to_ref"] == pytest.approx(float(want), rel=1e-12)
    assert rc["ratio_kind"] == "medians"
    assert rb["median_ms"] == pytest.approx(b["stats"]["median"] * 1e3)
    assert rb["iqr_ms"] == pytest.approx(b["stats"]["iqr"] * 1e3)
    assert b["stats"]["iqr"] != b["stats"]["median"]
    flops = b["extra_info"]["flops"]
    assert rb["gflop_s"] == pytest.approx(flops / b["stats"]["median"] / 1e9)
    # a method that does no counted work has no GFLOP/s, never 0 or inf
    assert csv.loc[csv["method"] == "count_model", "gflop_s"].isna().all()
    assert rb["threads"] == b["extra_info"]["threads"] and rb["role"] == "kernel"
    # counting rows are told apart by their model
    counted = next(x for x in bench if x["extra_info"]["method"] == "count_model")
    assert list(csv.loc[csv["method"] == "count_model", "model"]) == [
        counted["extra_info"]["model"]]
    assert "slowed_by" not in csv.columns  # nothing was slowed in this run
    md = (tmp_path / "out" / "report.md").read_text()
    assert "median over rounds of kernel_i / reference_i" in md  # the report says which


def test_render_says_which_benchmarks_were_slowed_on_purpose(tmp_path):
    assert main(["render", str(SLOW), "--out", str(tmp_path)]) == 0
    import pandas as pd

    csv = pd.read_csv(tmp_path / "summary.csv")
    slowed = csv[csv["slowed_by"].notna()]
    assert len(slowed) and set(slowed["method"]) == {SLOWED}
    assert set(slowed["slowed_by"]) == {1.25}


def _verify_record(kernel, reference, dtype, ratio, test, mismatched=0, abs_err=1e-7):
    return {"kernel": kernel, "reference": reference, "what": "dW1", "dtype": dtype,
            "device": "cpu", "numel": 10, "mismatched": mismatched, "max_abs_err": abs_err,
            "max_rel_err": 10 * abs_err, "rtol": 1e-5, "atol": 1e-6, "worst_ratio": ratio,
            "passed": mismatched == 0, "test": test}


def test_render_verification_headroom(tmp_path):
    records = [_verify_record("backprop", "autograd", "float32", r, f"t{i}")
               for i, r in enumerate((0.01, 0.25, 0.05))]
    records += [_verify_record("jacobian", "jacfwd", "float64", 0.5, "j0"),
                _verify_record("jacobian", "jacfwd", "float64", 3.0, "j1", mismatched=2,
                               abs_err=1e-3),
                _verify_record("jacobian", "jacfwd", "float64", 0.1, "j2"),
                _verify_record("jacobian", "jacfwd", "float64", 0.2, "j3")]
    path = _write(tmp_path, "verify.json", {"handgrad": "verify-report", "records": records})
    assert main(["render", str(path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "precision headroom" in md
    import pandas as pd

    head = pd.read_csv(tmp_path / "out" / "headroom.csv").set_index("kernel")
    assert list(head.index) == ["jacobian", "backprop"]  # nearest to failing first
    bp, jac = head.loc["backprop"], head.loc["jacobian"]
    assert bp["checks"] == 3 and bp["failed"] == 0
    assert bp["worst_ratio"] == 0.25 and bp["headroom"] == 4.0
    assert bp["median_ratio"] == pytest.approx(0.05)
    assert bp["nearest_to_failing"] == "t1"
    assert jac["checks"] == 4 and jac["failed"] == 1
    assert jac["worst_ratio"] == 3.0 and jac["headroom"] == pytest.approx(1 / 3)
    assert jac["median_ratio"] == pytest.approx(0.35)  # of 0.1, 0.2, 0.5, 3.0
    assert jac["max_abs_err"] == pytest.approx(1e-3)
    assert jac["nearest_to_failing"] == "j1"


def _sweep(kernel: str, order, predicted, errors=(1e-3, 1e-5, 1e-7, 1e-9, 3e-10, 4e-9)):
    eps = [10.0**-k for k in range(1, len(errors) + 1)]
    return {"kernel": kernel, "reference": "finite_diff.step_sweep", "what": "dW1",
            "dtype": "float64", "device": "cpu", "eps": eps, "error": list(errors),
            "order": order, "predicted_eps": predicted,
            "best_eps": eps[list(errors).index(min(errors))], "test": "t"}


def test_render_step_sweeps_draws_the_v_curve(tmp_path, monkeypatch):
    from handgrad.reports import figures

    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (drawn.append(fig), save(fig, path))[1])
    sweeps = [_sweep("backprop", 2.0, 6e-6), _sweep("jacobian_forward", None, None)]
    records = [_verify_record("backprop", "autograd", "float64", 0.1, "t")]
    path = _write(tmp_path, "verify.json", {"handgrad": "verify-report", "records": records,
                                            "sweeps": sweeps})
    assert main(["render", str(path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Verification: step sweeps" in md and "![step sweeps](step_sweep.png)" in md
    assert (tmp_path / "out" / "step_sweep.png").read_bytes()[:4] == b"\x89PNG"
    import pandas as pd

    table = pd.read_csv(tmp_path / "out" / "step_sweeps.csv")
    assert list(table["kernel"]) == ["backprop", "jacobian_forward"]
    assert table["order"].iloc[0] == 2.0 and pd.isna(table["order"].iloc[1])
    assert list(table["best_eps"]) == [1e-5, 1e-5] and table["min_error"].iloc[0] == 3e-10
    # one V-curve per sweep on a log-log axis, the predicted step drawn where there is one
    (ax,) = drawn[-1].axes
    assert len(ax.get_lines()) == 2 + 1 and ax.get_xscale() == ax.get_yscale() == "log"
    assert list(ax.get_lines()[0].get_xdata()) == sweeps[0]["eps"]
    assert "order 2.00" in ax.get_legend().get_texts()[0].get_text()
    assert "order n/a" in ax.get_legend().get_texts()[1].get_text()
    # a verify report from before sweeps existed renders without the section
    old = _write(tmp_path, "old.json", {"handgrad": "verify-report", "records": records})
    assert main(["render", str(old), "--out", str(tmp_path / "old")]) == 0
    assert "step sweeps" not in (tmp_path / "old" / "report.md").read_text()


def test_render_refuses_a_verify_report_given_twice(tmp_path, capsys, monkeypatch):
    """The same verify report twice (by two names too) would count each comparison
    twice (checks 2 for one check): refused, as a benchmark file given twice is; two
    reports are read, one after the other."""
    records = [_verify_record("backprop", "autograd", "float64", 0.1, "t")]
    path = _write(tmp_path, "verify.json", {"handgrad": "verify-report", "records": records})
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main(["render", str(path), "verify.json", "--out", str(out)]) == 2
    assert _one_line_error(capsys) == (
        f"error: verify.json: given twice (as {path}); each verify report once, or the "
        "headroom table counts its comparisons twice")
    assert not out.exists()
    other = _write(tmp_path, "other.json", {"handgrad": "verify-report", "records": records})
    assert main(["render", str(path), str(other), "--out", str(out)]) == 0
    import pandas as pd

    assert list(pd.read_csv(out / "headroom.csv")["checks"]) == [2]


def test_verify_report_rejects_a_malformed_sweep(tmp_path, capsys):
    bad = _sweep("backprop", 2.0, 6e-6)
    bad["error"] = bad["error"][:-1]
    records = [_verify_record("backprop", "autograd", "float64", 0.1, "t")]
    path = _write(tmp_path, "verify.json", {"handgrad": "verify-report", "records": records,
                                            "sweeps": [bad]})
    assert main(["render", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "sweeps[0]: eps: expected one positive step per error" in capsys.readouterr().err


def test_verify_report_rejects_a_malformed_record(tmp_path, capsys):
    rec = _verify_record("backprop", "autograd", "float32", 0.1, "t")
    rec["passed"] = False  # contradicts mismatched = 0
    path = _write(tmp_path, "verify.json", {"handgrad": "verify-report", "records": [rec]})
    assert main(["render", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "records[0]: passed" in capsys.readouterr().err


def _run_verify(tmp_path: Path, name: str, *args: str) -> dict:
    from verify.runs import pytest_env

    out = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "verify/test_compare.py", "verify/test_finite_diff.py",
         "-q", "-p", "no:cacheprovider", f"--verify-report={out}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=pytest_env())
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "step sweeps written to" in proc.stdout
    return _load(out)


def test_pytest_verify_writes_the_report_serial_and_with_xdist(tmp_path):
    serial = _run_verify(tmp_path, "serial.json")
    records = serial["records"]
    assert serial["handgrad"] == "verify-report" and records
    assert all(r["test"].startswith("verify/test_finite_diff.py::") for r in records), (
        "the comparison helper's self-tests are not checks of a kernel")
    assert all(r["passed"] for r in records)  # a green run has no failed check
    # pytest-xdist: every worker's comparisons reach the one report
    spread = _run_verify(tmp_path, "xdist.json", "-n", "2")
    assert len(spread["records"]) == len(records)
    key = sorted((r["test"], r["what"], r["worst_ratio"]) for r in records)
    assert sorted((r["test"], r["what"], r["worst_ratio"]) for r in spread["records"]) == key
    # and every step sweep, from whichever worker ran it
    assert serial["sweeps"] and all(s["kernel"] for s in serial["sweeps"])
    assert sorted(s["test"] for s in spread["sweeps"]) == sorted(
        s["test"] for s in serial["sweeps"])



# ----------------------------------------------------------------------------- gate


def test_gate_passes_two_unchanged_runs():
    result = gate(str(RUN1), str(RUN2))
    assert result.passed, result.markdown()
    assert set(result.table["ratio_kind"]) == {"paired"}  # interleaved rounds were used
    assert len(result.table) >= 5


def test_gate_catches_the_real_bench_slow_run():
    result = gate(str(RUN1), str(SLOW))
    assert result.flagged() == {f"jacobian.{SLOWED}"}, result.markdown()
    row = result.kernels[result.kernels["method"] == SLOWED].iloc[0]
    # the measured change is near the injected factor; single benchmarks' ratios also move
    # by up to ~15% between processes (closing note of issue 7), hence the band
    assert 1.1 < row["change"] < 1.5, result.markdown()


@pytest.mark.parametrize(("kernel", "method"), [("backprop", "manual"),
                                                ("jacobian", "manual_reverse")])
def test_gate_catches_an_injected_slowdown_of_one_kernel(tmp_path, kernel, method):
    slow = _write(tmp_path, "slow.json", slow_down(_load(RUN2), method, 1.25))
    result = gate(str(RUN1), str(slow))
    assert result.flagged() == {f"{kernel}.{method}"}, result.markdown()
    row = result.kernels[result.kernels["method"] == method].iloc[0]
    assert row["verdict"] == "REGRESSION", result.markdown()  # caught as a kernel
    assert main(["gate", "--baseline", str(RUN1), "--current", str(slow),
                 "--summary", str(tmp_path / "summary.md")]) == 1
    summary = (tmp_path / "summary.md").read_text()
    assert "FAIL" in summary and "REGRESSION" in summary and summary.count("|") > 20


def test_gate_catches_a_slowdown_of_one_shape(tmp_path):
    # 1.5x on one benchmark only: the kernel's mean barely moves, the benchmark is caught
    slow = slow_down(_load(RUN2), "manual_reverse", 1.5, group="jacobian L=10 K=30 N=1 ")
    result = gate(str(RUN1), str(_write(tmp_path, "slow.json", slow)))
    bad = result.table[result.table["verdict"] == "REGRESSION"]
    assert list(bad["benchmark"]) == ["jacobian L=10 K=30 N=1 cpu :: manual_reverse"], (
        result.markdown())


def test_gate_does_not_flag_one_shape_drifting_like_process_noise(tmp_path):
    # 1.15x on one benchmark, as seen between processes of unchanged code: not a regression
    slow = slow_down(_load(RUN2), "manual_forward", 1.15, group="jacobian L=3 K=30 N=1 ")
    result = gate(str(RUN1), str(_write(tmp_path, "slow.json", slow)))
    assert result.passed, result.markdown()


def _with_gate_noise(data: dict, group: str, method: str, noise: float) -> dict:
    for b in data["benchmarks"]:
        if b["group"].startswith(group) and b["extra_info"]["method"] == method:
            b["extra_info"]["gate_noise"] = noise
    return data


@pytest.mark.parametrize("noise, factor, flagged", [
    (None, 1.35, True),   # the shared 20% per-benchmark threshold flags it
    (0.5, 1.35, False),   # declared noise: a 1.35x swing is within it
    (0.5, 1.8, True),     # and a real 1.8x regression of that shape still fails
    (0.05, 1.35, True),   # a declared noise below the shared threshold never loosens less
])
def test_gate_uses_a_benchmarks_declared_noise(tmp_path, noise, factor, flagged):
    group = "least_squares gd k=10 "
    cur = slow_down(_load(RUN2), "gd_loop", factor, group=group)
    if noise is not None:
        cur = _with_gate_noise(cur, group, "gd_loop", noise)
    # against the same run, so that the change is exactly the injected factor
    result = gate(str(RUN2), str(_write(tmp_path, "cur.json", cur)))
    row = result.table[result.table["benchmark"].str.startswith(group)
                       & (result.table["method"] == "gd_loop")].iloc[0]
    assert row["change"] == pytest.approx(factor), result.markdown()
    assert (row["verdict"] == "REGRESSION") is flagged, result.markdown()
    assert row["threshold"] == max(0.2, noise or 0), result.markdown()
    # the summary shows each benchmark's bar beside its interval
    line = next(x for x in result.markdown().splitlines()
                if x.startswith(f"| {row['benchmark']} |"))
    assert f"| {1 + max(0.2, noise or 0):.3f} | {row['verdict']} |" in line, line


def disturb(data: dict, group: str, factor: float) -> dict:
    """A copy of a run where everything in groups starting with ``group`` (kernels and
    their references) took ``factor`` times as long: another process took the cores."""
    data = copy.deepcopy(data)
    for b in data["benchmarks"]:
        if b["group"].startswith(group):
            b["stats"]["data"] = [t * factor for t in b["stats"]["data"]]
            b["stats"]["median"] *= factor
            if b["extra_info"].get("reference_data"):
                b["extra_info"]["reference_data"] = [
                    t * factor * 1.5 for t in b["extra_info"]["reference_data"]]
    return data


def test_gate_sets_aside_benchmarks_that_ran_on_a_disturbed_machine(tmp_path, capsys):
    # one group 30x slower, its reference more so (seen when another process took the
    # cores): its ratio is meaningless; it is listed, not gated
    cur = disturb(_load(RUN2), "jacobian L=3 K=30 N=1 ", 30.0)
    result = gate(str(RUN1), str(_write(tmp_path, "cur.json", cur)))
    assert result.passed, result.markdown()
    assert not result.table["benchmark"].str.startswith("jacobian L=3 K=30 N=1 ").any()
    assert sum("disturbed" in s for s in result.skipped) == 2, result.skipped
    # but a kernel slowed with its reference unchanged is never "disturbed"
    slow = slow_down(_load(RUN2), "manual_reverse", 3.0, group="jacobian L=3 K=30 N=1 ")
    assert not gate(str(RUN1), str(_write(tmp_path, "slow.json", slow))).passed
    # most of a run disturbed: unusable input, exit 2
    cur = disturb(_load(RUN2), "", 30.0)
    assert main(["gate", "--baseline", str(RUN1), "--current",
                 str(_write(tmp_path, "all.json", cur))]) == 2
    assert "disturbed" in capsys.readouterr().err


def test_gate_does_not_flag_a_slowdown_under_the_threshold(tmp_path):
    slow = _write(tmp_path, "slow.json", slow_down(_load(RUN1), "manual", 1.02))
    assert gate(str(RUN1), str(slow)).passed


def test_gate_does_not_compare_ratios_to_different_references(tmp_path):
    # the head measures the manual backprop against another reference (and is 1.5x slower
    # against it): a ratio to one reference says nothing about a ratio to another
    cur = slow_down(_load(RUN2), "manual", 1.5)
    for b in cur["benchmarks"]:
        if b["extra_info"]["method"] == "manual":
            b["extra_info"]["reference"] = "torch_func_grad"
    result = gate(str(RUN1), str(_write(tmp_path, "cur.json", cur)))
    assert result.passed, result.markdown()
    assert not result.table["benchmark"].str.endswith(":: manual").any()
    n_manual = sum(b["extra_info"]["method"] == "manual" for b in cur["benchmarks"])
    assert len(result.skipped) == n_manual and all(
        "reference changed from torch_autograd to torch_func_grad" in s for s in result.skipped)
    assert "Not gated:" in result.markdown()


def test_gate_names_the_benchmarks_of_one_run_only(tmp_path, capsys):
    # the current run lost a kernel benchmark (its test failed, say), and one group was
    # renamed: lost under its old name, new under its new one
    gone, old = "backprop L=3 K=64 N=256 cpu", "jacobian L=3 K=30 N=1 cpu"
    cur = _load(RUN2)
    kept = [b for b in cur["benchmarks"]
            if not (b["group"] == gone and b["extra_info"]["method"] == "manual")]
    assert len(kept) == len(cur["benchmarks"]) - 1
    for b in kept:
        if b["group"] == old:
            b["group"] = "jacobian renamed"
    result = gate(str(RUN1), str(_write(tmp_path, "cur.json", {**cur, "benchmarks": kept})))
    assert result.passed  # listed, not failed: the test run fails the build on its own
    assert f"{gone} :: manual: measured in the baseline only (missing from the current run: " \
        "did its test fail, or was it deselected or renamed?)" in result.skipped
    assert f"{old} :: manual_forward: measured in the baseline only (" in " ".join(
        result.skipped)
    assert "jacobian renamed :: manual_forward: measured in the current run only (new, or " \
        "missing from the baseline)" in result.skipped
    assert "Not gated:" in result.markdown() and gone in result.markdown()
    # references are not gated, so they are not missed either
    assert not any(":: torch_autograd:" in s for s in result.skipped)
    assert not gate(str(RUN1), str(RUN2)).skipped  # and two like runs list nothing


@pytest.mark.parametrize("field, value, said", [
    ("dtype", "bfloat16", "dtype changed from float32 to bfloat16"),
    ("threads", 1, "threads changed from 2 to 1"),
    ("device", "cuda", "device changed from cpu to cuda"),
])
def test_gate_does_not_compare_runs_of_other_settings(tmp_path, field, value, said):
    cur = slow_down(_load(RUN2), "manual", 1.5)  # would fail if compared
    for b in cur["benchmarks"]:
        b["extra_info"][field] = value
    with pytest.raises(ReportInputError, match=f"no kernel benchmark was measured alike in "
                       f"both: .* :: .*: {said}: another measurement, not a change of the "
                       r"kernel \(and \d+ more\)"):
        gate(str(RUN1), str(_write(tmp_path, "cur.json", cur)))
    # one benchmark in another setting: that one is listed, the rest gated
    cur = slow_down(_load(RUN2), "manual", 1.5, group="backprop L=3 K=64 N=256 cpu")
    for b in cur["benchmarks"]:
        if b["group"] == "backprop L=3 K=64 N=256 cpu":
            b["extra_info"][field] = value
    result = gate(str(RUN1), str(_write(tmp_path, "one.json", cur)))
    assert result.passed
    assert result.skipped == (f"backprop L=3 K=64 N=256 cpu :: manual: {said}: another "
                              "measurement, not a change of the kernel",)


def test_gate_does_not_compare_cpu_threads_of_gpu_benchmarks(tmp_path):
    runs = []
    for name, threads in (("base.json", 2), ("cur.json", 1)):
        data = _load(RUN2)
        for b in data["benchmarks"]:
            b["extra_info"]["device"], b["extra_info"]["threads"] = "cuda", threads
        runs.append(str(_write(tmp_path, name, data)))
    result = gate(*runs)
    assert result.passed and not result.skipped and len(result.table)


def test_gate_falls_back_to_medians_without_paired_rounds(tmp_path):
    plain = _load(RUN1)
    for b in plain["benchmarks"]:
        b["extra_info"].pop("reference_data", None)
    base = _write(tmp_path, "base.json", plain)
    again = _write(tmp_path, "again.json", {**plain, "datetime": "another process"})
    same = gate(str(base), str(again))
    assert same.passed and set(same.table["ratio_kind"]) == {"medians"}
    assert np.allclose(same.table["change"], 1.0)
    slow = _write(tmp_path, "slow.json", slow_down(plain, "manual", 1.5))
    assert not gate(str(base), str(slow)).passed


def test_gate_writes_the_job_summary(tmp_path, monkeypatch, capsys):
    target = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    # two runs of unchanged code: no regression, but one pair of runs leaves two jacobian
    # kernels' intervals straddling their limit (exit 3, as the gate over runs)
    assert main(["gate", "--baseline", str(RUN1), "--current", str(RUN2)]) == 3
    text = target.read_text()
    assert text.startswith("### handgrad benchmark gate: INCONCLUSIVE: 2 undecided")
    assert "| benchmark | reference |" in text
    assert text in capsys.readouterr().out


def _edited(tmp_path: Path, name: str, edit) -> Path:
    """A copy of RUN1 changed by ``edit(data)``, written to ``tmp_path / name``."""
    data = copy.deepcopy(_load(RUN1))
    edit(data)
    return _write(tmp_path, name, data)


def _first(key: str, value):
    def edit(data):
        data["benchmarks"][0][key] = value
    return edit


def _drop_stat(stat: str):
    def edit(data):
        del data["benchmarks"][0]["stats"][stat]
    return edit


def _foreign(data):
    """pytest-benchmark output of some other project: no handgrad record in it."""
    for b in data["benchmarks"]:
        b["extra_info"] = {}


def _renamed_groups(data):
    for b in data["benchmarks"]:
        b["group"] = "renamed " + b["group"]


def _schema4_without_role(data):
    today = as_schema4(data)  # today's layout, then one record without its role
    del today["benchmarks"][0]["extra_info"]["role"]
    data.update(today)


def _bad_file(tmp_path: Path, case: str) -> Path:
    """One unusable benchmark file per case (given where a benchmark file is expected)."""
    return {
        "missing": lambda: tmp_path / "nope.json",
        "folder": lambda: tmp_path,
        "corrupt": lambda: _write(tmp_path, "corrupt.json", '{"benchmarks": ['),
        "truncated": lambda: _write(tmp_path, "half.json", RUN2.read_text()[:5000]),
        "not_benchmarks": lambda: _write(tmp_path, "list.json", [1, 2, 3]),
        "empty": lambda: _write(tmp_path, "empty.json", {"benchmarks": []}),
        "no_stats": lambda: _edited(tmp_path, "nostats.json", _first("stats", None)),
        "no_iqr": lambda: _edited(tmp_path, "noiqr.json", _drop_stat("iqr")),
        "no_data": lambda: _edited(tmp_path, "nodata.json", _drop_stat("data")),
        "extra_info_null": lambda: _edited(tmp_path, "null.json", _first("extra_info", None)),
        "foreign": lambda: _edited(tmp_path, "foreign.json", _foreign),
        "no_role": lambda: _edited(tmp_path, "norole.json", _schema4_without_role),
        "future_schema": lambda: _edited(
            tmp_path, "future.json",
            lambda d: d["machine_info"].__setitem__("handgrad_schema", 99)),
        "unknown_field": lambda: _edited(
            tmp_path, "unknown.json",
            lambda d: d["benchmarks"][0]["extra_info"].__setitem__("colour", "red")),
        "bad_reference_data": lambda: _edited(
            tmp_path, "refdata.json",
            lambda d: next(b for b in d["benchmarks"] if "reference_data" in b["extra_info"])[
                "extra_info"].__setitem__("reference_data", [1e-3])),
    }[case]()


BAD_FILES = {  # case: what the one line says
    "missing": "no such file",
    "folder": "is a folder; expected a JSON file",
    "corrupt": "not valid JSON",
    "truncated": "not valid JSON",
    "not_benchmarks": "not pytest-benchmark output",
    "empty": "no benchmarks in the file",
    "no_stats": "has no stats",
    "no_iqr": "stats lack ['iqr']",
    "no_data": "stats lack ['data']",
    "extra_info_null": "extra_info: expected an object, got NoneType",
    "foreign": "no handgrad benchmark records",
    "no_role": "missing field(s) ['role']",
    "future_schema": "handgrad_schema: expected one of [1, 2, 3, 4], got 99",
    "unknown_field": "unknown field(s) ['colour']",
    "bad_reference_data": "reference_data: expected one time per round",
}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("side", ["baseline", "current"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_gate_exits_2_with_one_line_on_unusable_input(tmp_path, capsys, case, side):
    bad = _bad_file(tmp_path, case)
    files = {"baseline": str(RUN1), "current": str(RUN2), side: str(bad)}
    assert main(["gate", "--baseline", files["baseline"], "--current", files["current"]]) == 2
    err = _one_line_error(capsys)
    assert str(bad) in err and BAD_FILES[case] in err


@pytest.mark.parametrize("case", BAD_FILES)
def test_render_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    bad = _bad_file(tmp_path, case)
    out = tmp_path / "report"
    assert main(["render", str(RUN1), str(bad), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert str(bad) in err and BAD_FILES[case] in err
    assert not out.exists()  # every input is read before the output folder is made


def test_a_file_without_handgrad_records_points_a_users_project_at_measure(tmp_path, capsys):
    """Plain pytest-benchmark output (a project timing with ``benchmark``): the one line
    names what writes handgrad's records in any project, the measure fixture, not only
    handgrad's own suite."""
    foreign = _edited(tmp_path, "foreign.json", _foreign)
    assert main(["render", str(foreign), "--out", str(tmp_path / "report")]) == 2
    assert _one_line_error(capsys) == (
        f"error: {foreign}: no handgrad benchmark records (no extra_info "
        "kernel/method/reference): time each kernel with the measure fixture of handgrad's "
        "pytest plugin, not pytest-benchmark's benchmark alone, and write the file with "
        "pytest --benchmark-json PATH (handgrad's own suite: pytest bench --benchmark-json "
        "PATH)")


def test_gate_exits_2_when_the_runs_have_nothing_in_common(tmp_path, capsys):
    other = _edited(tmp_path, "other.json", _renamed_groups)
    assert main(["gate", "--baseline", str(RUN1), "--current", str(other)]) == 2
    assert "in common" in _one_line_error(capsys)


@pytest.mark.parametrize("option, value, says", [
    ("--confidence", "95", "--confidence: expected a level between 0 and 1"),
    ("--confidence", "0", "--confidence"),
    ("--confidence", "1", "--confidence"),
    ("--confidence", "nan", "--confidence"),
    ("--confidence", "high", "--confidence"),
    ("--threshold", "-5%", "--threshold"),
    ("--threshold", "1000%", "--threshold"),
    ("--threshold", "inf", "--threshold"),
    ("--benchmark-threshold", "fast", "--benchmark-threshold"),
    ("--benchmark-threshold", "nan", "--benchmark-threshold"),
    ("--threshold", "1.15", "--threshold: got '1.15': a threshold is a fraction or a "
                            "percentage: write 15%, or 0.15"),
    ("--benchmark-threshold", "1.2", "--benchmark-threshold: got '1.2': a threshold is a "
                                     "fraction or a percentage: write 20%, or 0.2"),
    ("--summary", "{tmp}", "--summary: {tmp} is a folder"),
    ("--summary", "{tmp}/no/such/folder/s.md", "--summary: the folder of"),
    ("--summary", "{tmp}/afile/s.md", "--summary: the folder of"),
])
def test_gate_exits_2_on_a_bad_option(tmp_path, capsys, option, value, says):
    (tmp_path / "afile").write_text("")
    value, says = value.format(tmp=tmp_path), says.format(tmp=tmp_path)
    assert main(["gate", "--baseline", str(RUN1), "--current", str(RUN2),
                 f"{option}={value}"]) == 2
    assert says in _one_line_error(capsys)
    assert capsys.readouterr().out == ""  # no verdict printed before the refusal


def test_gate_exits_2_when_the_job_summary_cannot_be_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))
    assert main(["gate", "--baseline", str(RUN1), "--current", str(RUN2)]) == 2
    assert "$GITHUB_STEP_SUMMARY" in _one_line_error(capsys)


@pytest.mark.parametrize("where, says", [("existing_file", "afile is a file"),
                                         ("under_a_file", "lies under")])
def test_render_exits_2_on_an_unwritable_out(tmp_path, capsys, where, says):
    (tmp_path / "afile").write_text("keep")
    out = tmp_path / "afile" if where == "existing_file" else tmp_path / "afile" / "sub"
    assert main(["render", str(RUN1), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: --out: ") and says in err, err
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize("argv", [
    ["gate", "--baseline", "{run1}"],  # --current missing
    ["render", "{run1}"],  # --out missing
    ["frobnicate"],
    ["gate", "--baseline", "{run1}", "--current", "{run1}", "--threshhold", "5%"],
])
def test_cli_usage_errors_are_one_line_exit_2(argv):
    """The real command line: argparse's own refusals are one line as well."""
    argv = [a.format(run1=RUN1) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "handgrad.reports", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert proc.stdout == ""


def test_gate_cli_never_prints_a_traceback(tmp_path):
    """The real command line, as CI calls it."""
    bad = _write(tmp_path, "corrupt.json", "{")
    proc = subprocess.run([sys.executable, "-m", "handgrad.reports", "gate", "--baseline",
                           str(RUN1), "--current", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(bad) in proc.stderr


@pytest.mark.parametrize("text,value", [("10%", 0.10), ("0.1", 0.1), ("25 %", 0.25),
                                        ("0", 0.0), ("+15%", 0.15), ("0.99", 0.99),
                                        ("150%", 1.5), ("999%", 9.99)])
def test_threshold_parses(text, value):
    assert parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["ten", "-5%", "", "%", "1000%", "1500", "nan", "inf"])
def test_threshold_rejects(text):
    with pytest.raises(ReportInputError, match="--threshold"):
        parse_threshold(text)


@pytest.mark.parametrize("text, says", [
    # the --accept file's factor form: refused, never read as 115%
    ("1.15", "got '1.15': a threshold is a fraction or a percentage: write 15%, or 0.15, "
             "for a limit of 1.15x (1.15% for 1.15 percent)"),
    ("1", "got '1': a threshold is a fraction or a percentage: write 1% for 1 percent, or "
          "0%, or 0 for none"),
    ("2", "write 100%, for a limit of 2x (2% for 2 percent)"),  # 1, bare, is refused too
    ("15", "got '15': a threshold is a fraction or a percentage: write 15%, or 0.15"),
    ("250", "write 250%"),
])
def test_a_bare_threshold_of_one_or_more_is_refused_with_how_to_write_it(text, says):
    with pytest.raises(ReportInputError) as err:
        parse_threshold(text, "--benchmark-threshold")
    assert str(err.value).startswith("--benchmark-threshold: ")
    assert says in str(err.value), str(err.value)


def test_faster_is_under_one_over_the_limit_in_the_one_pair_gate(tmp_path):
    """"faster" is one rule in every gate (gate.is_faster): the interval's top under
    1 / (1 + threshold), as far under 1 in ratio terms as the regression limit is above."""
    def manual_reverse(factor):
        fast = _write(tmp_path, f"fast{factor}.json",
                      slow_down(_load(RUN2), "manual_reverse", factor))
        result = gate(str(RUN2), str(fast))
        rows = result.table[result.table["method"] == "manual_reverse"]
        return result.kernels.set_index("method").loc["manual_reverse"], rows, result
    # the kernel (10%): 0.905, under 1/1.10 (0.909) though not under 1 - 10%
    k, rows, result = manual_reverse(0.905)
    assert 0.9 < k["ci_high"] < 1 / 1.1 and k["verdict"] == "faster", result.markdown()
    assert set(rows["verdict"]) == {"ok"}, result.markdown()
    # each benchmark (20%): tops of 0.81 to 0.82, under 1/1.20 (0.833), not under 1 - 20%
    k, rows, result = manual_reverse(0.80)
    assert ((rows["ci_high"] > 0.8) & (rows["ci_high"] < 1 / 1.2)).all(), result.markdown()
    assert len(rows) == 4 and set(rows["verdict"]) == {"faster"}, result.markdown()


def test_load_labels_each_file_with_its_machine():
    df = load_benchmarks([RUN1, RUN2])
    assert set(df["source"]) == {str(RUN1), str(RUN2)}
    assert df["machine"].notna().all()
    paired = df[df["reference_data"].notna()]
    assert len(paired) and all(len(a) == len(b) for a, b in
                               zip(paired["data"], paired["reference_data"]))


def test_gate_calls_a_kernel_that_got_faster_faster(tmp_path):
    # the manual reverse Jacobian 0.6x as slow in every shape: faster, as a kernel and in
    # each benchmark (against the same run, so that the change is exactly 0.6)
    fast = _write(tmp_path, "fast.json", slow_down(_load(RUN2), "manual_reverse", 0.6))
    result = gate(str(RUN2), str(fast))
    assert result.passed, result.markdown()
    k = result.kernels.set_index("method")
    assert k.loc["manual_reverse", "verdict"] == "faster", result.markdown()
    assert k.loc["manual_reverse", "change"] == pytest.approx(0.6)
    assert k.loc["manual_forward", "verdict"] == "ok"
    rows = result.table[result.table["method"] == "manual_reverse"]
    assert len(rows) == 4 and set(rows["verdict"]) == {"faster"}, result.markdown()
    assert set(result.table.loc[result.table["method"] != "manual_reverse", "verdict"]) == {
        "ok"}




def test_gate_decides_by_role_never_by_name(tmp_path):
    base = as_schema4(_load(RUN1))
    cur = as_schema4(_load(RUN2))
    # handgrad's manual backprop renamed to a torch-looking name, and slowed: still gated
    renamed = slow_down(cur, "manual", 1.5)
    for data in (base, renamed):
        for b in data["benchmarks"]:
            if b["extra_info"]["method"] == "manual":
                b["extra_info"]["method"] = "torch_like_name"
    result = gate(str(_write(tmp_path, "b.json", base)),
                  str(_write(tmp_path, "c.json", renamed)))
    assert result.flagged() == {"backprop.torch_like_name"}, result.markdown()
    # the same slowdown of a method whose record says it is a reference: reported, never
    # gated (a reference names itself)
    theirs = slow_down(cur, "manual", 1.5)
    base2 = as_schema4(_load(RUN1))
    for data in (base2, theirs):
        for b in data["benchmarks"]:
            if b["extra_info"]["method"] == "manual":
                b["extra_info"].update(role="reference", reference="manual")
                b["extra_info"].pop("reference_data", None)
    result = gate(str(_write(tmp_path, "b2.json", base2)),
                  str(_write(tmp_path, "c2.json", theirs)))
    assert result.passed and "manual" not in set(result.table["method"]), result.markdown()


def test_schema2_schema4_and_legacy_files_read_alike(tmp_path):
    legacy = load_benchmarks([RUN1])
    cols = ["group", "method", "role", "reference", "median", "shape", "L", "K", "N"]
    for name, convert in (("s2.json", as_schema2), ("s4.json", as_schema4)):
        today = load_benchmarks([_write(tmp_path, name, convert(_load(RUN1)))])
        assert legacy[cols].equals(today[cols]), name
    assert set(legacy.loc[legacy["method"] == "manual", "role"]) == {"kernel"}
    assert set(legacy.loc[legacy["method"] == "torch_autograd", "role"]) == {"reference"}
    assert "L=3 D=13 K=64 P=1 N=256" in set(legacy["shape"])


def test_legacy_file_with_an_unknown_method_is_refused(tmp_path, capsys):
    data = _load(RUN1)
    data["benchmarks"][0]["extra_info"]["method"] = "mystery"
    path = _write(tmp_path, "legacy.json", data)
    assert main(["render", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "never timed" in capsys.readouterr().err


def test_the_real_h100_runs_render_and_gate(tmp_path):
    """The GPU runs in ../shared/gpu-h100 (schema 1) are read as they are."""
    import gzip

    shared = ROOT.parent / "shared" / "gpu-h100"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not beside the checkout")
    paths = []
    for name in ("gate_cuda_A", "gate_cuda_B", "gate_cuda_S", "bench_default_cuda"):
        p = tmp_path / f"{name}.json"
        p.write_bytes(gzip.decompress((shared / f"{name}.json.gz").read_bytes()))
        paths.append(p)
    a, b, s, full = paths
    assert gate(str(a), str(b)).passed
    assert gate(str(a), str(s)).flagged() == {"jacobian.manual_forward"}
    df = load_benchmarks([full])
    assert set(df["device"]) == {"cuda"} and len(df) == 106


def test_jacobian_figure_plots_model_across_and_measurement_up(tmp_path, monkeypatch):
    from handgrad.reports import figures

    shown = {}
    real_save = figures._save

    def keep(fig, path):
        shown["fig"] = fig
        shown["axes"] = [(ax.get_xlabel(), ax.get_ylabel(),
                          [c.get_offsets().data.tolist() for c in ax.collections])
                         for ax in fig.axes]
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    df = load_benchmarks([RUN1])
    assert figures.jacobian_modes(df, tmp_path) is not None
    (xlabel, ylabel, collections), = shown["axes"]
    assert "model" in xlabel and "measured" in ylabel
    points = {tuple(np.round(p, 9)) for c in collections for p in c}
    # each (L, K, N): across, the model's forward/reverse ratio (from extra_info), up the
    # measured ratio of medians, both computed here from the JSON
    jac = [b for b in _load(RUN1)["benchmarks"] if b["extra_info"]["kernel"] == "jacobian"]
    want = set()
    for f in (b for b in jac if b["extra_info"]["method"] == "manual_forward"):
        r = next(b for b in jac if b["group"] == f["group"]
                 and b["extra_info"]["method"] == "manual_reverse")
        info = f["extra_info"]
        want.add((round(info["model_forward"] / info["model_reverse"], 9),
                  round(f["stats"]["median"] / r["stats"]["median"], 9)))
    assert len(want) == 4 and points == want


def test_gate_compares_like_with_like_when_one_run_was_not_interleaved(tmp_path):
    plain = _load(RUN2)
    for b in plain["benchmarks"]:
        b["extra_info"].pop("reference_data", None)
    result = gate(str(RUN1), str(_write(tmp_path, "plain.json", plain)))
    assert set(result.table["ratio_kind"]) == {"medians"}
    row = result.table[result.table["benchmark"].str.startswith("backprop L=5 ")].iloc[0]

    def ratio(data, group):
        k = next(b for b in data["benchmarks"] if b["group"] == group
                 and b["extra_info"]["method"] == "manual")
        r = next(b for b in data["benchmarks"] if b["group"] == group
                 and b["extra_info"]["method"] == "torch_autograd")
        return np.median(k["stats"]["data"]) / np.median(r["stats"]["data"])

    group = row["benchmark"].split(" :: ")[0]
    base = ratio(_load(RUN1), group)  # the baseline by medians too, though it has pairs
    assert row["ratio_base"] == pytest.approx(base, rel=1e-12)
    assert row["change"] == pytest.approx(ratio(plain, group) / base, rel=1e-12)


def test_an_accept_line_naming_no_compared_kernel_is_warned_with_the_closest(tmp_path,
                                                                               capsys):
    """A typo in the --accept file (swiglu.hand_vj) had accepted nothing, silently. Warned,
    not refused: one file serves runs of a subset of the kernels (GATE_K, CPU-only runs)."""
    accept = tmp_path / "accept.txt"
    accept.write_text("# kernel.method bound reason\n"
                      "jacobian.manual_forward 1.04 kept\n"
                      "jacobian.manual_forwrd 1.2 typo\n"
                      "swiglu.hand_vjp 1.2 a kernel these runs do not hold\n")
    assert main(["gate", "--baseline", str(RUN1), "--current", str(RUN2),
                 "--accept", str(accept)]) in (0, 1, 3)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: {accept}:3: jacobian.manual_forwrd matches no kernel.method compared by "
        "the timed gate, so it accepts nothing (did you mean jacobian.manual_forward?)",
        f"warning: {accept}:4: swiglu.hand_vjp matches no kernel.method compared by the "
        "timed gate, so it accepts nothing"]


@pytest.mark.parametrize("text, value", [("0.95", 0.95), ("95%", 0.95), ("+99 %", 0.99),
                                         ("50%", 0.5)])
def test_confidence_takes_a_level_or_a_percentage_as_threshold_does(text, value):
    from handgrad.reports.__main__ import parse_confidence

    assert parse_confidence(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["100%", "0%", "-5%", "%", "95", "150%"])
def test_confidence_out_of_range_names_both_forms(text):
    from handgrad.reports.__main__ import parse_confidence

    with pytest.raises(ReportInputError) as err:
        parse_confidence(text)
    assert str(err.value) == ("--confidence: expected a level between 0 and 1 or a "
                              "percentage between 0% and 100% (e.g. 0.95 or 95%), got "
                              f"{text!r}")


def _bimodal(data: dict, method: str, group: str, factor: float = 1.6,
             share: float = 0.45) -> dict:
    """A copy of a run in which ``share`` of the rounds of ``method`` (in groups starting
    with ``group``) take ``factor`` times as long: a median ratio near 1, an interval up to
    ``factor`` (rounds at one of two speeds)."""
    data = copy.deepcopy(data)
    for b in data["benchmarks"]:
        if b["extra_info"]["method"] == method and b["group"].startswith(group):
            d = b["stats"]["data"]
            slow = set(np.random.default_rng(0).choice(len(d), int(share * len(d)),
                                                       replace=False))
            b["stats"]["data"] = [t * (factor if i in slow else 1) for i, t in enumerate(d)]
    return data


def test_a_benchmark_interval_straddling_its_limit_is_inconclusive_not_ok(tmp_path):
    """A benchmark reads as a kernel does: its interval across 1.20 is inconclusive, not
    ok. Its kernel has a verdict of its own (ok): that decides the exit status (0)."""
    cur = _write(tmp_path, "cur.json", _bimodal(_load(RUN2), "manual_reverse",
                                                "jacobian L=10 K=30 N=1 "))
    result = gate(str(RUN2), str(cur))
    row = result.table.set_index("benchmark").loc[
        "jacobian L=10 K=30 N=1 cpu :: manual_reverse"]
    assert row["ci_low"] <= 1.2 < row["ci_high"], result.markdown()
    assert row["verdict"] == "inconclusive", result.markdown()
    assert set(result.table["verdict"]) == {"ok", "inconclusive"}, result.markdown()
    kernel = result.kernels.set_index("method").loc["manual_reverse"]
    assert kernel["verdict"] == "ok", result.markdown()
    assert result.passed and result.inconclusive == 0 and not result.undecided()
    assert main(["gate", "--baseline", str(RUN2), "--current", str(cur)]) == 0


def test_an_inconclusive_benchmark_of_a_kernel_judged_per_benchmark_exits_3(tmp_path):
    """A kernel of one benchmark has no verdict but its benchmark's: that benchmark's
    inconclusive is the kernel's (exit 3, named undecided), as in the gate over runs."""
    cur = _write(tmp_path, "cur.json", _bimodal(_load(RUN2), "gd_closed_form",
                                                "least_squares gd"))
    result = gate(str(RUN2), str(cur))
    row = result.table.set_index("method").loc["gd_closed_form"]
    assert row["ci_low"] <= 1.2 < row["ci_high"] and row["verdict"] == "inconclusive"
    assert result.kernels.set_index("method").loc["gd_closed_form", "verdict"] == (
        "per benchmark only")
    assert result.passed and result.inconclusive == 1, result.markdown()
    assert result.undecided() == {"least_squares.gd_closed_form"}
    assert "INCONCLUSIVE: 1 undecided" in result.markdown()
    assert main(["gate", "--baseline", str(RUN2), "--current", str(cur)]) == 3


def _unreferenced(path: Path, keep_reference: bool = False) -> dict:
    """A run of kernels measured with reference='...' but no reference_fn (no paired
    rounds) and, unless ``keep_reference``, no benchmark of that reference in the group."""
    data = as_schema4(_load(path))
    for b in data["benchmarks"]:
        b["extra_info"].pop("reference_data", None)
        b["extra_info"].pop("interleaved", None)
    if not keep_reference:
        data["benchmarks"] = [b for b in data["benchmarks"]
                              if b["extra_info"]["role"] != "reference"]
    return data


@pytest.mark.parametrize("keep_in_base, where", [(False, "in either run"),
                                                  (True, "in the current run")])
def test_a_kernel_whose_reference_was_timed_nowhere_is_named_with_what_to_do(
        tmp_path, capsys, keep_in_base, where):
    base = _write(tmp_path, "base.json", _unreferenced(RUN1, keep_in_base))
    cur = _write(tmp_path, "cur.json", _unreferenced(RUN2))
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 2
    err = _one_line_error(capsys)
    assert "no kernel has the same reference, timed, in both" in err
    assert (f"group 'backprop L=10 K=64 N=256 cpu' has no benchmark of its reference "
            f"'torch_autograd' {where}") in err, err
    assert "(and 12 more)" in err and "pass reference_fn= to measure" in err, err
    assert "in the same group with measure(..., role='reference')" in err, err


# ------------------------------------------------------------ what a CI reader is told


def test_the_one_pair_header_explains_every_verdict_of_kernels_and_benchmarks(tmp_path):
    """The header had explained a kernel's verdicts only: a benchmark row's `faster` and
    `inconclusive`, and a kernel's `per benchmark only`, were in no words of the report.
    Its numbers follow the options (1 / 1.25 = 0.800, 1 / 1.5 = 0.667)."""
    summary = tmp_path / "summary.md"
    assert main(["gate", "--baseline", str(RUN1), "--current", str(SLOW), "--threshold",
                 "25%", "--benchmark-threshold", "50%", "--summary", str(summary)]) in (0, 3)
    head = summary.read_text().split("\n\n")[1]
    assert ("with fewer than 3 benchmarks it has no interval: `per benchmark only`, its "
            "benchmarks' verdicts decide.") in head
    assert ("A single benchmark regresses when its own interval lies above 1.50, or the "
            "higher limit of a benchmark that declares its own noise (column `limit`); it "
            "is ok when its interval's top lies at or under its limit, and inconclusive when "
            "the interval straddles it (undecided, exit 3, only where its kernel is judged "
            "per benchmark only: a kernel with its own verdict decides).") in head
    assert ("Either is faster when its interval's top lies under 1 / its limit (0.800 for "
            "1.25, 0.667 for 1.50).") in head


def test_the_verdict_line_names_the_kernels_that_decided_it(tmp_path):
    """"FAIL: 3 regression(s)" counted a kernel and two of its benchmarks and named none:
    a CI reader had to find them in the tables."""
    r = gate(str(RUN1), str(SLOW))
    assert r.markdown().splitlines()[0] == (
        "### handgrad benchmark gate: FAIL: 3 regression(s) in jacobian.manual_forward")
    r = gate(str(RUN1), str(RUN2))
    assert r.markdown().splitlines()[0] == (
        "### handgrad benchmark gate: INCONCLUSIVE: 2 undecided in jacobian.manual_forward, "
        "jacobian.manual_reverse; no regression")
    slow = _write(tmp_path, "slow.json", slow_down(_load(RUN1), "manual", 1.5))
    assert gate(str(RUN1), str(slow)).markdown().splitlines()[0] == (
        "### handgrad benchmark gate: FAIL: 4 regression(s) in backprop.manual")


COUNTED = FIX / "bench_instructions.json"


def _counted(tmp_path: Path, factor: float) -> Path:
    """The counted fixture with jacobian.manual_forward's instructions times ``factor``."""
    data = _load(COUNTED)
    for b in data["benchmarks"]:
        if b["extra_info"]["method"] == "manual_forward":
            b["extra_info"]["instructions"] = round(b["extra_info"]["instructions"] * factor)
    data["datetime"] = f"{data.get('datetime')}-{factor}"  # another run
    return _write(tmp_path, f"counted-{factor}.json", data)


def test_one_accept_file_for_both_gates_is_warned_of_only_where_neither_compares(tmp_path,
                                                                                 capsys):
    """.ci/gate gives one accept file to the instruction gate and the timed gate. A line
    naming a kernel only the timed gate compares (here backprop.manual: the counted run
    holds jacobian.manual_forward only) had been warned as matching nothing by the
    instruction gate. Now the instruction gate leaves the warning to the timed gate
    (--accept-later), which warns a line only where neither gate compares it
    (--accept-elsewhere the counted runs); every warning names the gate."""
    accept = tmp_path / "accept.txt"
    accept.write_text("backprop.manual 1.1 timed only\n"
                      "jacobian.manual_forward 1.01 counted and timed\n"
                      "jacobian.manual_forwrd 1.1 a typo\n")
    same = _counted(tmp_path, 1.0)
    counted = ["--baseline", str(COUNTED), "--current", str(same), "--accept", str(accept)]
    # alone (GATE_TIMED=0), the instruction gate warns what it compared not, by its name
    assert main(["gate", *counted]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {accept}:1: backprop.manual matches no kernel.method compared by the "
        "instruction-count gate, so it accepts nothing",
        f"warning: {accept}:3: jacobian.manual_forwrd matches no kernel.method compared by "
        "the instruction-count gate, so it accepts nothing (did you mean "
        "jacobian.manual_forward?)"]
    # a timed gate follows: nothing here
    assert main(["gate", *counted, "--accept-later"]) == 0
    assert capsys.readouterr().err == ""
    # ... unless this gate fails: then no timed gate runs to say it
    grown = _counted(tmp_path, 1.05)
    assert main(["gate", "--baseline", str(COUNTED), "--current", str(grown), "--accept",
                 str(accept), "--accept-later"]) == 1
    assert "jacobian.manual_forwrd matches no kernel.method compared by the " \
        "instruction-count gate" in capsys.readouterr().err
    # the timed gate, given the counted runs: only the line that matches in neither
    assert main(["gate", "--baseline", str(RUN1), "--current", str(RUN2), "--accept",
                 str(accept), "--accept-elsewhere", str(COUNTED), str(same)]) in (0, 1, 3)
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {accept}:3: jacobian.manual_forwrd matches no kernel.method compared by "
        "the timed gate or gated in the --accept-elsewhere runs, so it accepts nothing (did "
        "you mean jacobian.manual_forward?)"]


def test_a_name_only_the_other_gate_compares_is_not_warned(tmp_path, capsys):
    """--accept-elsewhere adds the other gate's names, its gated kernels only: a line the
    timed runs lack (a kernel.method of the counted runs only) is not warned; without it,
    it is."""
    data = _load(RUN2)
    data["benchmarks"] = [b for b in data["benchmarks"]
                          if b["extra_info"]["method"] != "manual_forward"]
    cur = _write(tmp_path, "cur.json", data)
    accept = tmp_path / "accept.txt"
    accept.write_text("jacobian.manual_forward 1.01 counted only here\n"
                      "jacobian.torch_func_jacfwd 1.1 a reference: gated by no gate\n")
    argv = ["gate", "--baseline", str(RUN1), "--current", str(cur), "--accept", str(accept)]
    main(argv)
    assert "jacobian.manual_forward matches no kernel.method" in capsys.readouterr().err
    main([*argv, "--accept-elsewhere", str(COUNTED), str(RUN1)])
    err = capsys.readouterr().err
    assert "jacobian.manual_forward matches" not in err
    # a method timed in the other runs as a reference is gated there by no gate: warned
    assert f"{accept}:2: jacobian.torch_func_jacfwd matches no kernel.method" in err


def test_ci_gate_gives_one_accept_file_to_both_gates_with_each_others_runs():
    """.ci/gate's wiring of the above: the instruction gate defers (unless GATE_TIMED=0),
    the timed gate is given the counted runs. (The shell branch itself runs in CI only.)"""
    gate_sh = (Path(__file__).resolve().parents[1] / ".ci" / "gate").read_text()
    assert '[ "${GATE_TIMED:-1}" = 0 ] || later=(--accept-later)' in gate_sh
    counted_gate = gate_sh.split('gate --baseline "$out/base-instructions.json"', 1)[1]
    assert counted_gate.split("| tee", 1)[0].count('"${later[@]}"') == 1
    timed_gate = gate_sh.split("timed_gate() {", 1)[1].split("\n}", 1)[0]
    assert ('--accept-elsewhere "$out/base-instructions.json" '
            '"$out/head-instructions.json"') in timed_gate


def test_warnings_are_in_the_report_not_only_on_stderr(tmp_path, capsys):
    """A CI reader reads the step summary (--summary, $GITHUB_STEP_SUMMARY) or the report
    file .ci/gate keeps (stdout): each warning is there, right under the verdict, as on
    stderr."""
    accept = tmp_path / "accept.txt"
    accept.write_text("swiglu.hand_vjp 1.2 a kernel these runs do not hold\n")
    summary = tmp_path / "summary.md"
    assert main(["gate", "--baseline", str(RUN1), "--current", str(SLOW), "--accept",
                 str(accept), "--summary", str(summary)]) == 1
    said = (f"{accept}:1: swiglu.hand_vjp matches no kernel.method compared by the timed "
            "gate, so it accepts nothing")
    out, err = capsys.readouterr()
    assert err == f"warning: {said}\n"
    for text in (summary.read_text(), out):
        lines = text.splitlines()
        assert lines[0].startswith("### handgrad benchmark gate: FAIL")
        assert lines[1:4] == ["", f"- **warning**: {said}", ""]
        assert lines[4].startswith("Change = ")
    # no warning: the report as before, the explanation right under the verdict
    assert main(["gate", "--baseline", str(RUN1), "--current", str(SLOW)]) == 1
    assert capsys.readouterr().out.splitlines()[2].startswith("Change = ")


ACCEPTED = Path(__file__).resolve().parents[1] / ".ci" / "accepted-regressions"


def test_the_accept_files_header_shows_every_form_the_parser_takes(tmp_path):
    """The header of .ci/accepted-regressions described the factor form only; the parser
    also takes 4%, +4% and 2.5%. Its example lines, uncommented, are a file the gate reads
    to the bounds they say (written here, not computed by the parser)."""
    from handgrad.reports.gate import read_accepted

    header = [ln for ln in ACCEPTED.read_text().splitlines() if ln.startswith("#")]
    examples = [ln[1:] for ln in header if re.match(r"#\s+\w+\.\w+\s+[+\d]\S*\s+\w", ln)]
    assert [e.split()[1] for e in examples] == ["1.04", "4%", "+4%", "2.5%"]
    f = tmp_path / "examples"
    f.write_text("\n".join(examples) + "\n")
    bounds = {k: a.bound for k, a in read_accepted(str(f)).items()}
    assert bounds == pytest.approx({"backprop.manual": 1.04, "jacobian.manual_forward": 1.04,
                                    "jacobian.manual_reverse": 1.04,
                                    "counting.count_model": 1.025})
    text = " ".join(ln.lstrip("# ") for ln in header)
    for said in ("a factor, a number above 1 and under 10 (1.04)",
                 "a percentage, a number above 0 and under 900 followed by % with no space "
                 "before it, with or without a + (4%, +4%, 2.5%), read as the factor 1 + it / "
                 "100",
                 "reason: the rest of the line, required; it cannot hold a #, which starts a "
                 "comment anywhere on a line"):
        assert said in text


@pytest.mark.parametrize("line, taken", [
    # the edges the header states, each side of them
    ("a.b 9.99 r", 9.99), ("a.b 10 r", None), ("a.b 1 r", None), ("a.b 1.0001 r", 1.0001),
    ("a.b 899% r", 9.99), ("a.b 900% r", None), ("a.b 0.5% r", 1.005), ("a.b 0% r", None),
    ("a.b +2.5% r", 1.025), ("a.b -2% r", None), ("a.b 4 % r", None), ("a.b 1.1", None),
    ("a.b.c 1.1 r", None), ("ab 1.1 r", None), ("a.b 1.1 r # not the reason", 1.1),
    ("a.b 1.1 r\na.b 1.2 r", None),
])
def test_the_accept_file_takes_exactly_what_its_header_says(tmp_path, line, taken):
    from handgrad.reports.gate import read_accepted

    f = tmp_path / "accept"
    f.write_text(line + "\n")
    if taken is None:
        with pytest.raises(ReportInputError, match=f"{f}:"):
            read_accepted(str(f))
    else:
        a = read_accepted(str(f))["a.b"]
        assert a.bound == pytest.approx(taken) and a.reason == "r"


def test_the_instruction_gate_header_explains_faster(tmp_path, capsys):
    """Its rows read `faster` with no word of it above them: under 1 / (1 + threshold)."""
    shrunk = _counted(tmp_path, 0.7)
    assert main(["gate", "--baseline", str(COUNTED), "--current", str(shrunk), "--threshold",
                 "25%"]) == 0
    out = capsys.readouterr().out
    assert "| faster |" in out
    assert ("A benchmark regresses when its change exceeds 1.250, unless a declared "
            "regression covers it (`accepted`, up to its bound); it is faster under 0.800 "
            "(1 / 1.250), else ok.") in out


def test_a_figure_title_wider_than_its_figure_is_wrapped_to_fit(tmp_path, monkeypatch):
    """A run whose shape has L at one (K, N): one panel, 4.3 inches, and the suptitle
    "...time per call against depth (a row of panels per run and device)" was cut off on
    both sides. It is wrapped at spaces to the figure's width, every word kept."""
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from handgrad.reports import figures

    rows = [dict(kernel="deep", L=L, K=64, N=32, run="laptop · run1.json", device="cpu",
                 dtype="float32", method=m, role=role, median=1e-3 * L)
            for L in (2, 4, 8) for m, role in (("manual", "kernel"),
                                                ("torch_autograd", "reference"))]
    saved = []
    real = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (saved.append(fig),
                                                             real(fig, path))[1])
    assert figures.time_vs_depth(pd.DataFrame(rows), "deep", tmp_path).exists()
    (fig,) = saved
    FigureCanvasAgg(fig)  # closed by _save: drawn again, as written (120 dpi)
    fig.set_dpi(120)
    fig.canvas.draw()
    title = fig._suptitle
    box = title.get_window_extent(fig.canvas.get_renderer())
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (box, fig.bbox)
    assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, (box, fig.bbox)
    assert "\n" in title.get_text()  # wrapped, every word kept
    assert title.get_text().replace("\n", " ") == (
        "deep: time per call against depth (a row of panels per run and device)")
    # one that fits is left as it is
    fig2 = figures.plt.figure(figsize=(8, 3))
    fig2.suptitle("short")
    figures.fit_title(fig2, fig2._suptitle)
    assert fig2._suptitle.get_text() == "short"
    figures.plt.close(fig2)
