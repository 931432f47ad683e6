"""Wrong verdicts a walkthrough found in the gates, each built here from the fixtures:
several shapes of one (group, method), a kernel whose reference is itself, a kernel
interval that straddles its limit, and one run given as both sides."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest

from handgrad.reports.__main__ import main
from handgrad.reports.gate import gate, instruction_gate
from handgrad.reports.load import ReportInputError
from handgrad.reports.noise import gate_runs
from verify.runs import FIXTURES, as_schema4, scaled_run

RUN1 = FIXTURES / "bench_run1.json"
COUNTED = FIXTURES / "bench_instructions.json"
BACKPROP = "backprop"  # the fixture's three backprop groups (L=3, 5, 10), made one


def _run(factors: dict | None = None, when: str = "base", one_group: bool = True) -> dict:
    """bench_run1 in schema 4, its kernels scaled by ``factors`` (``scaled_run``), with
    every backprop benchmark in one group "backprop" (the README's parametrised pattern
    with one group for every size) when ``one_group``."""
    data = scaled_run(factors or {}, run=as_schema4(json.loads(RUN1.read_text())))
    data["datetime"] = when
    if one_group:
        for b in data["benchmarks"]:
            if b["group"].startswith("backprop "):
                b["group"] = BACKPROP
    return data


def _write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


L10 = "backprop L=10 K=64 N=256 cpu :: manual"  # scaled_run's key, before the regroup
SHAPE10 = "L=10 D=13 K=64 P=1 N=256"


# ------------------------------------------------------------ shapes of one group


def test_the_gate_tells_the_shapes_of_one_group_apart(tmp_path):
    base = _write(tmp_path / "base.json", _run())
    cur = _write(tmp_path / "cur.json", _run({L10: 2.0}, "cur"))
    r = gate(base, cur)
    rows = r.table[r.table["kernel"] == "backprop"]
    # one row a shape, each against its own baseline (not 3 x 3 against each other)
    assert sorted(rows["benchmark"]) == [
        f"{BACKPROP} [L=10 D=13 K=64 P=1 N=256] :: manual",
        f"{BACKPROP} [L=3 D=13 K=64 P=1 N=256] :: manual",
        f"{BACKPROP} [L=5 D=13 K=64 P=1 N=256] :: manual"]
    slow = rows.set_index("benchmark").loc[f"{BACKPROP} [{SHAPE10}] :: manual"]
    assert slow["change"] == pytest.approx(2.0) and slow["verdict"] == "REGRESSION"
    assert int(r.kernels.set_index("kernel").loc["backprop", "benchmarks"]) == 3
    assert not r.passed
    assert main(["gate", "--baseline", base, "--current", cur]) == 1


def test_a_group_of_one_shape_keeps_its_short_name(tmp_path):
    base = _write(tmp_path / "base.json", _run(one_group=False))
    cur = _write(tmp_path / "cur.json", _run({}, "cur", one_group=False))
    names = set(gate(base, cur).table["benchmark"])
    assert "backprop L=10 K=64 N=256 cpu :: manual" in names
    assert not any("[" in n for n in names)


def test_the_gate_over_runs_tells_the_shapes_of_one_group_apart(tmp_path):
    base = [_write(tmp_path / f"b{i}.json", _run({}, f"b{i}")) for i in (1, 2)]
    cur = [_write(tmp_path / f"c{i}.json", _run({L10: 2.0}, f"c{i}")) for i in (1, 2)]
    r = gate_runs(base, cur)
    rows = r.table[r.table["kernel"] == "backprop"].set_index("benchmark")
    assert len(rows) == 3
    assert rows.loc[f"{BACKPROP} [{SHAPE10}] :: manual", "verdict"] == "REGRESSION"
    assert rows.loc[f"{BACKPROP} [{SHAPE10}] :: manual", "change"] == pytest.approx(2.0)
    others = rows.drop(index=f"{BACKPROP} [{SHAPE10}] :: manual")
    assert list(others["change"]) == pytest.approx([1.0, 1.0])


def _duplicated() -> dict:
    """A run with two benchmarks of the same group, method and shape."""
    data = _run()
    first = next(b for b in data["benchmarks"] if b["group"] == BACKPROP
                 and b["extra_info"]["method"] == "manual")
    twin = copy.deepcopy(first)
    twin["name"] = first["name"] + "_again"
    data["benchmarks"].append(twin)
    return data


def test_two_benchmarks_of_one_group_method_and_shape_are_refused(tmp_path):
    dup = _write(tmp_path / "dup.json", _duplicated())
    other = _write(tmp_path / "other.json", _run({}, "other"))
    third = _write(tmp_path / "third.json", _run({}, "third"))
    for call in (lambda: gate(other, dup), lambda: gate_runs([other, dup], [third])):
        with pytest.raises(ReportInputError, match=r"dup\.json: benchmarks '.*' and "
                           r"'.*_again' have the same group 'backprop', method 'manual' and "
                           r"shape \(L=3 D=13 K=64 P=1 N=256\)"):
            call()


# ------------------------------------------------------------ a kernel with no reference


def _self_referenced(factors=None, when="base") -> dict:
    """A run whose control benchmark (matmul_512, its own reference) is marked a kernel."""
    data = _run(factors, when, one_group=False)
    for b in data["benchmarks"]:
        if b["extra_info"]["method"] == "matmul_512":
            b["extra_info"]["role"] = "kernel"
    return data


SOLO = "control matmul 512 cpu :: matmul_512"


def test_the_gate_lists_a_kernel_whose_reference_is_itself(tmp_path):
    base = _write(tmp_path / "base.json", _self_referenced())
    cur = _write(tmp_path / "cur.json", _self_referenced({}, "cur"))
    r = gate(base, cur)
    said = [s for s in r.skipped if s.startswith(SOLO)]
    assert said == [f"{SOLO}: a kernel (role kernel) whose reference is itself: no reference "
                    "to time it against, not gated (name the method it is measured against "
                    "as its reference, and time that too: measure(..., reference=..., "
                    "reference_fn=...))"]
    assert SOLO in r.markdown()
    # one side only: still said, once
    one = gate(_write(tmp_path / "plain.json", _run({}, "plain", one_group=False)), cur)
    assert [s for s in one.skipped if s.startswith(SOLO)] == said


def test_the_gate_over_runs_lists_a_kernel_whose_reference_is_itself(tmp_path):
    base = [_write(tmp_path / f"b{i}.json", _self_referenced({}, f"b{i}")) for i in (1, 2)]
    cur = [_write(tmp_path / f"c{i}.json", _self_referenced({}, f"c{i}")) for i in (1, 2)]
    r = gate_runs(base, cur)
    said = [s for s in r.skipped if s.startswith(SOLO)]
    assert len(said) == 1 and "whose reference is itself" in said[0]
    assert SOLO in r.markdown()


# ------------------------------------------------------------ an interval over the limit


BACKPROP_KEYS = [f"backprop L={n} K=64 N=256 cpu :: manual" for n in (3, 5, 10)]


@pytest.mark.parametrize("factors, verdict", [
    ((1.0, 1.05, 1.18), "inconclusive"),  # mean 1.07, interval about 0.87 to 1.32
    ((1.02, 1.03, 1.04), "ok"),  # interval wholly under 1.10
])
def test_a_kernel_interval_over_the_limit_is_inconclusive_not_ok(tmp_path, factors, verdict):
    base = _write(tmp_path / "base.json", _run(one_group=False))
    cur = _write(tmp_path / "cur.json",
                 _run(dict(zip(BACKPROP_KEYS, factors)), "cur", one_group=False))
    r = gate(base, cur)
    row = r.kernels.set_index("kernel").loc["backprop"]
    assert row["verdict"] == verdict
    assert (row["ci_low"] < 1.10 < row["ci_high"]) == (verdict == "inconclusive")
    assert r.passed  # not a regression: no benchmark, no kernel, lies wholly above
    assert set(r.table.loc[r.table["kernel"] == "backprop", "verdict"]) == {"ok"}
    if verdict == "inconclusive":
        assert r.inconclusive == 1 and r.undecided() == {"backprop.manual"}
        assert "gate over runs" in row["decide"]
        assert r.markdown().startswith(
            "### handgrad benchmark gate: INCONCLUSIVE: 1 undecided in backprop.manual; no "
            "regression")
        assert main(["gate", "--baseline", base, "--current", cur]) == 3
    else:
        assert r.inconclusive == 0 and row["decide"] == ""
        assert main(["gate", "--baseline", base, "--current", cur]) == 0


# ------------------------------------------------------------ one run on both sides


def test_the_gate_refuses_one_run_as_both_sides(tmp_path, capsys):
    base = _write(tmp_path / "base.json", _run())
    with pytest.raises(ReportInputError, match="given twice"):
        gate(base, base)
    gz = tmp_path / "base.json.gz"
    gz.write_bytes(gzip.compress(Path(base).read_bytes()))
    with pytest.raises(ReportInputError, match="holds the same run as"):
        gate(base, str(gz))
    assert main(["gate", "--baseline", base, "--current", str(gz)]) == 2
    assert "holds the same run as" in capsys.readouterr().err
    with pytest.raises(ReportInputError, match="given twice"):
        instruction_gate(str(COUNTED), str(COUNTED))


def _failed(data: dict, group: str, shape_l: int) -> dict:
    """``data`` with the manual benchmark of ``group`` and L=``shape_l`` marked as of a test
    that failed after it measured."""
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if (b["group"] == group and info["method"] == "manual"
                and info["shape"]["L"] == shape_l):
            info["test_failed"] = True
    return data


def test_a_failed_test_of_one_shape_is_named_with_its_shape(tmp_path):
    name = f"{BACKPROP} [{SHAPE10}] :: manual"
    base = _write(tmp_path / "base.json", _run())
    cur = _write(tmp_path / "cur.json", _failed(_run({L10: 3.0}, "cur"), BACKPROP, 10))
    r = gate(base, cur)
    assert r.passed and name not in set(r.table["benchmark"])
    assert [s for s in r.skipped if "backprop" in s] == [
        f"{name}: its test failed (the current run): not gated"]
    bases = [_write(tmp_path / f"b{i}.json", _run({}, f"b{i}")) for i in (1, 2)]
    curs = [cur, _write(tmp_path / "c2.json", _run({}, "c2"))]
    runs = gate_runs(bases, curs)
    assert f"{name}: its test failed (current run 1, {cur}): left out of that run" in (
        runs.skipped)


def test_a_reference_timed_once_for_a_group_of_several_shapes_times_each(tmp_path):
    """Without paired rounds, each shape's kernel is normalised by its reference of the same
    shape, or by the group's one reference where it was timed once (any shape)."""
    def plain(factors, when, one_reference):
        data = _run(factors, when)
        for b in data["benchmarks"]:
            b["extra_info"].pop("reference_data", None)
        if one_reference:  # the group's reference only once, with no shape of its own
            refs = [b for b in data["benchmarks"] if b["group"] == BACKPROP
                    and b["extra_info"]["role"] == "reference"]
            for b in refs[1:]:
                data["benchmarks"].remove(b)
            refs[0]["extra_info"]["shape"] = {}
        return data

    for one in (False, True):
        base = _write(tmp_path / f"base{one}.json", plain({}, "base", one))
        cur = _write(tmp_path / f"cur{one}.json", plain({L10: 2.0}, "cur", one))
        rows = gate(base, cur).table.set_index("benchmark")
        assert set(rows.loc[rows["kernel"] == "backprop", "ratio_kind"]) == {"medians"}
        assert rows.loc[f"{BACKPROP} [{SHAPE10}] :: manual", "change"] == pytest.approx(2.0)
        assert rows.loc[f"{BACKPROP} [{SHAPE10}] :: manual", "verdict"] == "REGRESSION"


def test_calibrate_keeps_the_shapes_of_one_group_apart(tmp_path):
    from handgrad.reports.noise import calibrate

    runs = [_write(tmp_path / f"a{i}.json", _run({}, f"a{i}")) for i in (1, 2, 3)]
    names = set(calibrate(runs)["benchmarks"])
    assert {f"{BACKPROP} [L={n} D=13 K=64 P=1 N=256] :: manual" for n in (3, 5, 10)} <= names
    assert f"{BACKPROP} :: manual" not in names


# ------------------------------------------------------------ the history and the report too


def test_history_add_stores_each_shape_of_one_group_as_its_own_benchmark(tmp_path):
    import sqlite3

    from handgrad.reports import history as H

    con = H.connect(str(tmp_path / "h.sqlite"))
    H.add_run(con, _write(tmp_path / "base.json", _run()), commit="a" * 40,
              date="2026-12-01T00:00:00+00:00")
    stored = sorted(r[0] for r in sqlite3.connect(tmp_path / "h.sqlite").execute(
        "SELECT benchmark FROM results WHERE kernel = 'backprop'"))
    assert stored == [f"{BACKPROP} [L=10 D=13 K=64 P=1 N=256] :: manual",
                      f"{BACKPROP} [L=3 D=13 K=64 P=1 N=256] :: manual",
                      f"{BACKPROP} [L=5 D=13 K=64 P=1 N=256] :: manual"]


def test_the_report_joins_counts_to_timings_by_shape_too():
    import pandas as pd

    from handgrad.reports.tables import with_counts

    rows = []
    for shape, ins in (("L=3", 100.0), ("L=5", 500.0)):
        for timer in ("perf_counter", "callgrind"):
            rows.append({"group": BACKPROP, "method": "manual", "shape": shape,
                         "timer": timer, "median": 1.0, "iqr": 0.1, "ratio": 1.0,
                         "gflops": 1.0, "ratio_kind": "paired",
                         "instructions": ins if timer == "callgrind" else float("nan"),
                         "reference_instructions": 50.0})
    out = with_counts(pd.DataFrame(rows))
    assert dict(zip(out["shape"], out["instructions"])) == {"L=3": 100.0, "L=5": 500.0}


def test_the_report_pairs_each_shape_of_one_group_with_its_own_reference(tmp_path):
    from handgrad.reports.load import load_benchmarks
    from handgrad.reports.tables import with_ratios

    alone = load_benchmarks([_write(tmp_path / "apart.json", _run(one_group=False))])
    one = load_benchmarks([_write(tmp_path / "one.json", _run())])
    got, want = with_ratios(one), with_ratios(alone)
    assert len(got) == len(one)  # each row once, not once per shape's reference
    mine = got[got["group"] == BACKPROP]
    assert not mine["disturbed"].astype(bool).any(), list(mine["disturbed"])
    # the ratios are those of the same file with one group a shape
    assert sorted(mine["ratio"]) == pytest.approx(sorted(
        want[want["group"].str.startswith("backprop ")]["ratio"]))


def test_the_report_takes_a_groups_one_reference_for_every_shape(tmp_path):
    # a reference timed once (its own benchmark, one shape) for kernels of several shapes,
    # none interleaved: each kernel's ratio is against that one reference
    from handgrad.reports.load import load_benchmarks
    from handgrad.reports.tables import with_ratios

    data = _run()
    kept = []
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if b["group"] == BACKPROP and info["method"] == "torch_autograd" and info[
                "shape"]["L"] != 3:
            continue  # the reference's other shapes: not timed
        if b["group"] == BACKPROP:
            info.pop("reference_data", None)
        kept.append(b)
    data["benchmarks"] = kept
    got = with_ratios(load_benchmarks([_write(tmp_path / "once.json", data)]))
    mine = got[(got["group"] == BACKPROP) & (got["method"] == "manual")]
    assert len(mine) == 3 and mine["ratio"].notna().all(), list(mine["ratio"])
    assert set(mine["ratio_kind"]) == {"medians"}


def test_history_add_refuses_two_benchmarks_of_one_key(tmp_path):
    from handgrad.reports import history as H

    con = H.connect(str(tmp_path / "h.sqlite"))
    with pytest.raises(ReportInputError, match="have the same group 'backprop', method "
                                               "'manual' and shape"):
        H.add_run(con, _write(tmp_path / "dup.json", _duplicated()), commit="b" * 40,
                  date="2026-12-01T00:00:00+00:00")
