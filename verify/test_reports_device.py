"""The reports pair a kernel with its reference on its own device. A user's benchmarks (the
plugin's ``measure`` over the ``device`` fixture) may time one group on several devices:
handgrad's bench gives each device its own group, a user's need not. Before, a CUDA kernel
whose group held only a CPU reference got a ratio across devices (kernel on cuda over
reference on cpu) in ``render`` and the gates, and a kernel timed on two devices in one
group and shape made the gates refuse the file as two benchmarks they could not tell
apart."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from handgrad.reports import tables as T
from handgrad.reports.gate import gate
from handgrad.reports.load import (
    ReportInputError,
    check_distinct_benchmarks,
    find_row,
    load_benchmarks,
)
from handgrad.reports.noise import gate_runs, timed_ratio
from handgrad.reports.render import render

GROUP = "softplus_layer batch=64"  # one group, one shape, for every device
SHAPE = "batch=64 width=32"
# per-call times (s) of each (method, device): the kernel 0.8x its reference on the cpu, 2x
# on cuda; across devices, cuda's kernel over the cpu's reference, 0.1x
TIMES = {("my_backward", "cpu"): 8e-4, ("torch_autograd", "cpu"): 1e-3,
         ("my_backward", "cuda"): 1e-4, ("torch_autograd", "cuda"): 5e-5}


def _run(timed: list[tuple[str, str]], seed: int = 0, slow: dict | None = None) -> dict:
    """A schema-4 file of a user's project: each (method, device) of ``timed`` in GROUP at
    SHAPE, not interleaved (the reference's own benchmark is the one to divide by);
    ``slow``: {(method, device): factor}."""
    rng = np.random.default_rng(seed)
    benchmarks = []
    for method, device in timed:
        t = TIMES[method, device] * (slow or {}).get((method, device), 1.0)
        data = list(t * (1 + 0.005 * rng.standard_normal(21)))
        role = "reference" if method == "torch_autograd" else "kernel"
        benchmarks.append({
            "name": f"test_layer[{device}-{method}]", "group": GROUP,
            "extra_info": {"kernel": "softplus_layer", "method": method,
                           "reference": "torch_autograd", "role": role, "flops": 6 * 64 * 32,
                           "bytes": 0, "device": device, "dtype": "float32", "threads": 1,
                           "shape": {"batch": 64, "width": 32}},
            "stats": {"median": float(np.median(data)),
                      "iqr": float(np.subtract(*np.percentile(data, [75, 25]))),
                      "rounds": len(data), "data": data}})
    return {"machine_info": {"node": "box", "handgrad_schema": 4}, "commit_info": {},
            "benchmarks": benchmarks, "datetime": f"2026-12-06T00:00:{seed:02d}"}


# the kernel on both devices, its reference on the cpu only
CPU_REFERENCE = [("my_backward", "cpu"), ("my_backward", "cuda"), ("torch_autograd", "cpu")]
# kernel and reference on both devices, one group and shape
BOTH = [("my_backward", "cpu"), ("torch_autograd", "cpu"),
        ("my_backward", "cuda"), ("torch_autograd", "cuda")]


def _write(tmp_path: Path, name: str, data: dict) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


def _ratios(path: str) -> dict[str, tuple[float, str]]:
    """The table's (ratio, ratio_kind) of each kernel row, by device."""
    df = T.summary(load_benchmarks([path]))
    kern = df[df["method"] == "my_backward"]
    return {d: (r, k) for d, r, k in zip(kern["device"], kern["ratio_to_ref"],
                                         kern["ratio_kind"])}


def test_a_kernel_is_not_divided_by_its_reference_on_another_device(tmp_path):
    path = _write(tmp_path, "run.json", _run(CPU_REFERENCE))
    got = _ratios(path)
    assert got["cpu"][0] == pytest.approx(0.8, rel=0.02) and got["cpu"][1] == "medians"
    # before: 0.1, cuda's kernel over the cpu's reference, shown as its ratio
    assert np.isnan(got["cuda"][0]) and got["cuda"][1] == "no reference timed on cuda"
    df = load_benchmarks([path])
    row = df[(df["method"] == "my_backward") & (df["device"] == "cuda")].iloc[0]
    assert timed_ratio(df, row) is None
    assert find_row(df, GROUP, "torch_autograd", SHAPE, "cuda") is None
    assert find_row(df, GROUP, "torch_autograd", SHAPE, "cpu")["device"] == "cpu"


def test_each_device_s_kernel_is_divided_by_that_device_s_reference(tmp_path):
    got = _ratios(_write(tmp_path, "run.json", _run(BOTH)))
    # before: both divided by the last reference read (cuda's): 16 and 2
    assert got["cpu"][0] == pytest.approx(0.8, rel=0.02)
    assert got["cuda"][0] == pytest.approx(2.0, rel=0.02)
    assert {k for _, k in got.values()} == {"medians"}


def test_the_report_says_why_a_kernel_has_no_ratio(tmp_path):
    out = tmp_path / "out"
    render([_write(tmp_path, "run.json", _run(CPU_REFERENCE))], out, progress=io.StringIO())
    md = (out / "report.md").read_text()
    assert "no reference timed on cuda" in md
    csv = pd.read_csv(out / "summary.csv")
    cuda = csv[(csv["method"] == "my_backward") & (csv["device"] == "cuda")]
    assert cuda["ratio_to_ref"].isna().all()
    assert list(cuda["ratio_kind"]) == ["no reference timed on cuda"]


def test_the_gate_compares_each_device_with_itself(tmp_path):
    base = _write(tmp_path, "base.json", _run(BOTH, 1))
    cur = _write(tmp_path, "cur.json", _run(BOTH, 2, slow={("my_backward", "cuda"): 1.5}))
    result = gate(base, cur)  # before: refused, two benchmarks of one group, method, shape
    rows = result.table.set_index("benchmark")
    assert set(rows.index) == {f"{GROUP} :: my_backward@cpu", f"{GROUP} :: my_backward@cuda"}
    assert rows.loc[f"{GROUP} :: my_backward@cuda", "change"] == pytest.approx(1.5, rel=0.02)
    assert rows.loc[f"{GROUP} :: my_backward@cuda", "verdict"] == "REGRESSION"
    assert rows.loc[f"{GROUP} :: my_backward@cpu", "change"] == pytest.approx(1.0, rel=0.02)
    assert rows.loc[f"{GROUP} :: my_backward@cpu", "device"] == "cpu"
    assert rows.loc[f"{GROUP} :: my_backward@cpu", "verdict"] == "ok"
    assert not result.passed and not result.skipped


def test_the_gate_over_runs_compares_each_device_with_itself(tmp_path):
    base = [_write(tmp_path, f"b{i}.json", _run(BOTH, i)) for i in (1, 2)]
    cur = [_write(tmp_path, f"c{i}.json", _run(BOTH, i, slow={("my_backward", "cuda"): 1.5}))
           for i in (3, 4)]
    result = gate_runs(base, cur)
    k = result.kernels.set_index("device")
    assert k.loc["cuda", "change"] == pytest.approx(1.5, rel=0.02)
    assert k.loc["cuda", "verdict"] == "REGRESSION"
    assert k.loc["cpu", "change"] == pytest.approx(1.0, rel=0.02)
    assert k.loc["cpu", "verdict"] != "REGRESSION"
    assert set(result.table["benchmark"]) == {f"{GROUP} :: my_backward@cpu",
                                              f"{GROUP} :: my_backward@cuda"}


def test_the_gate_skips_a_kernel_with_a_reference_on_another_device_only(tmp_path):
    base = _write(tmp_path, "base.json", _run(CPU_REFERENCE, 1))
    # a cuda slowdown a ratio across devices would have called a regression
    cur = _write(tmp_path, "cur.json",
                 _run(CPU_REFERENCE, 2, slow={("my_backward", "cuda"): 3.0}))
    result = gate(base, cur)  # before: refused, two benchmarks of one group, method, shape
    assert result.passed
    assert list(result.table["benchmark"]) == [f"{GROUP} :: my_backward@cpu"]
    assert result.skipped == (
        f"{GROUP} :: my_backward@cuda: its reference torch_autograd was not timed in both "
        "runs on cuda (no reference timed on cuda; its group timed it on 'cpu' only: no "
        "ratio across devices)",)
    # the gate over runs has no ratio of it either: only the cpu kernel is judged
    runs = gate_runs([base, _write(tmp_path, "base2.json", _run(CPU_REFERENCE, 3))],
                     [cur, _write(tmp_path, "cur2.json", _run(
                         CPU_REFERENCE, 4, slow={("my_backward", "cuda"): 3.0}))])
    assert list(runs.kernels["device"]) == ["cpu"] and runs.passed
    assert runs.skipped == (
        f"{GROUP} :: my_backward@cuda: no reference timed on cuda (its group timed "
        "torch_autograd on other devices only: no ratio across devices): not gated",)


def test_two_benchmarks_of_one_device_are_still_refused(tmp_path):
    data = _run(BOTH)
    twin = dict(data["benchmarks"][2], name="test_layer[cuda-my_backward]_again")
    data["benchmarks"].append(twin)
    path = _write(tmp_path, "dup.json", data)
    with pytest.raises(ReportInputError, match=r"benchmarks 'test_layer\[cuda-my_backward\]' "
                       r"and '.*_again' have the same group .* and shape \(batch=64 "
                       r"width=32\) on 'cuda': no gate can tell them apart"):
        gate(_write(tmp_path, "other.json", _run(BOTH, 5)), path)


def test_two_benchmarks_of_one_name_in_two_dtypes_are_refused_saying_so(tmp_path):
    # a test over the dtype fixture under one group and shape: the refusal says the dtype
    # is what differs, and what to do
    data = _run(BOTH)
    twin = dict(data["benchmarks"][2], name="test_layer[cuda-my_backward-float64]")
    twin["extra_info"] = dict(twin["extra_info"], dtype="float64")
    data["benchmarks"].append(twin)
    path = _write(tmp_path, "dup.json", data)
    with pytest.raises(ReportInputError, match=r"no gate can tell them apart; .* \(timed in "
                       r"float32 and float64: a benchmark's dtype is not part of its name; "
                       r"give each dtype its own group, group=f'\.\.\. \{dtype\}'\)$"):
        gate(_write(tmp_path, "other.json", _run(BOTH, 5)), path)
    data["benchmarks"][-1]["extra_info"]["dtype"] = "float32"  # one dtype: no such words
    with pytest.raises(ReportInputError) as err:
        gate(_write(tmp_path, "other2.json", _run(BOTH, 6)), _write(tmp_path, "dup2.json",
                                                                    data))
    assert "dtype" not in str(err.value)


def test_a_series_keyed_without_the_device_refuses_two_devices_by_name(tmp_path):
    """The history keys its series by group, method and shape: there two devices of one
    group and shape stay refused, and the line says that the device is what differs."""
    df = load_benchmarks([_write(tmp_path, "run.json", _run(BOTH))])
    check_distinct_benchmarks(df, by_device=True)
    with pytest.raises(ReportInputError, match=r"\(timed on 'cpu' and 'cuda': this report "
                       r"keys its series by group, method and shape only\)"):
        check_distinct_benchmarks(df)


def _failed(data: dict, method: str, device: str) -> dict:
    """``data`` with the test of (method, device) failed after it measured."""
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if (info["method"], info["device"]) == (method, device):
            info["test_failed"] = True
    return data


def test_a_failed_test_is_named_with_its_device(tmp_path):
    base = _write(tmp_path, "base.json", _run(BOTH, 1))
    cur = _write(tmp_path, "cur.json", _failed(_run(BOTH, 2), "my_backward", "cuda"))
    result = gate(base, cur)
    assert list(result.table["benchmark"]) == [f"{GROUP} :: my_backward@cpu"]
    assert result.skipped == (f"{GROUP} :: my_backward@cuda: its test failed (the current "
                              "run): not gated",)
    runs = gate_runs([base, _write(tmp_path, "base2.json", _run(BOTH, 3))],
                     [cur, _write(tmp_path, "cur2.json", _run(BOTH, 4))])
    assert [s for s in runs.skipped if "test failed" in s] == [
        f"{GROUP} :: my_backward@cuda: its test failed (current run 1, {cur}): left out of "
        "that run"]


def test_a_reference_disturbed_on_one_device_flags_that_device_s_only(tmp_path):
    data = _run(BOTH)
    for b in data["benchmarks"]:  # cuda's kernel interleaved with rounds 3x its reference's
        info = b["extra_info"]
        if (info["method"], info["device"]) == ("my_backward", "cuda"):
            info["reference_data"] = [3 * TIMES["torch_autograd", "cuda"]] * len(
                b["stats"]["data"])
    df = T.with_ratios(load_benchmarks([_write(tmp_path, "run.json", data)]))
    why = dict(zip(zip(df["method"], df["device"]), df["disturbed"]))
    assert why["my_backward", "cuda"].startswith("reference rounds 3x its own median")
    assert why["torch_autograd", "cuda"] == "its rounds interleaved with my_backward differ >2x"
    assert why["torch_autograd", "cpu"] == "" and why["my_backward", "cpu"] == ""


def test_a_calibration_keeps_each_device_s_spread(tmp_path):
    from handgrad.reports.noise import calibrate

    cal = calibrate([_write(tmp_path, f"a{i}.json", _run(BOTH, i)) for i in (1, 2, 3)])
    assert set(cal["benchmarks"]) == {f"{GROUP} :: my_backward@cpu",
                                      f"{GROUP} :: my_backward@cuda"}
    # each device's log ratio moves by its rounds' noise only, not by the 2.5x between them
    assert all(b["sigma"] < 0.05 for b in cal["benchmarks"].values()), cal["benchmarks"]


def test_a_failed_test_of_each_device_is_named_with_its_device(tmp_path):
    from handgrad.reports.noise import failed_tests

    data = _failed(_failed(_run(BOTH), "my_backward", "cuda"), "my_backward", "cpu")
    path = _write(tmp_path, "run.json", data)
    assert failed_tests([path], "current") == [
        f"{GROUP} :: my_backward@{d}: its test failed (current run 1, {path}): left out of "
        "that run" for d in ("cpu", "cuda")]


def test_history_add_names_a_kernel_without_a_reference_on_its_device(tmp_path, capsys):
    # the kernel on cuda, its reference on the cpu only (and a cpu kernel that has it): the
    # cuda kernel has no ratio to store, and history add says so (it skipped it in silence)
    from handgrad.reports import history as H

    run = _run([("my_backward", "cpu"), ("torch_autograd", "cpu")])
    other = _run([("my_backward", "cuda")], seed=1)
    run["benchmarks"] += [dict(b, group=GROUP + " cuda") for b in other["benchmarks"]]
    path = _write(tmp_path, "run.json", run)
    con = H.connect(tmp_path / "h.db")
    alone: list[str] = []
    assert H.add_run(con, path, commit="a" * 40, date="2026-12-06T00:00:00",
                     unpaired=alone) == 1
    assert alone == [f"{GROUP} cuda :: my_backward (no reference timed on cuda)"]
    # and the command says it
    from handgrad.reports.__main__ import main
    run["datetime"] = "2026-12-06T00:01:00"
    assert main(["history", "add", "--db", str(tmp_path / "cli.db"),
                 _write(tmp_path, "run2.json", run), "--commit", "c" * 40,
                 "--date", "2026-12-06T00:01:00"]) == 0
    assert (f"not stored, without a ratio: {GROUP} cuda :: my_backward (no reference timed "
            "on cuda)") in capsys.readouterr().out
    # a run whose only kernel has none: refused, naming it
    lone = _run([("my_backward", "cuda")], seed=2)
    with pytest.raises(ReportInputError, match=r"1 left out without a ratio: .*my_backward "
                                               r"\(no reference timed on cuda\)"):
        H.add_run(con, _write(tmp_path, "lone.json", lone), commit="b" * 40,
                  date="2026-12-06T00:00:01")
