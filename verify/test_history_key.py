"""The history's benchmark key (reports.history): a benchmark is its group, method and shape
(load.BENCHMARK_KEY) in every run, whatever else the run holds, so a run restricted to some
shapes (GATE_K) continues the series of a run of all of them; histories written before the
key had columns of its own (schema 1, ``fixtures/history_schema1.sqlite``) are read into it."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from handgrad.reports import history as H
from handgrad.reports.__main__ import main
from verify.runs import BACKPROP_GROUP, FIXTURES, backprop_run

OLD = FIXTURES / "history_schema1.sqlite"  # written by make_history_schema1.py at 73601a6
SHAPE = {n: f"L={n} D=13 K=64 P=1 N=256" for n in (3, 5, 10)}
KERNEL = "backprop.manual"


def _commit(i: int) -> str:  # as make_history_schema1.py
    return f"{i:02d}" + "cd" * 19


def _date(i: int) -> str:
    return f"2026-11-{10 + i:02d}T12:00:00+00:00"


def _add(con, tmp_path: Path, i: int, j: int, factors=None, only=None) -> None:
    f = tmp_path / f"run{i}-{j}.json"
    f.write_text(json.dumps(backprop_run(factors, f"{i}-{j}", only)))
    H.add_run(con, str(f), commit=_commit(i), date=_date(i))


def _manual(history):
    return history[history["method"] == "manual"]


def _runs_per_shape(history) -> dict[str, int]:
    return _manual(history).groupby("shape")["run"].nunique().to_dict()


# ---------------------------------------------------------------- today's key


def test_a_run_of_three_shapes_then_a_restricted_run_keep_one_series_per_shape(tmp_path):
    con = H.connect(tmp_path / "h.sqlite")
    _add(con, tmp_path, 0, 0)  # every shape: the run names them "backprop [L=..] :: manual"
    _add(con, tmp_path, 1, 0, only=(10,))  # L=10 alone (GATE_K): "backprop :: manual"
    stored = con.execute("SELECT bench_group, method, shape FROM results s JOIN runs r ON "
                         "r.id = s.run_id WHERE r.commit_sha = ?", (_commit(1),)).fetchall()
    assert stored == [(BACKPROP_GROUP, "manual", SHAPE[10])]
    h = H.load_history(con)
    assert _runs_per_shape(h) == {SHAPE[3]: 1, SHAPE[5]: 1, SHAPE[10]: 2}
    # the name is the history's: this (group, method) has three shapes in it
    assert set(_manual(h)["benchmark"]) == {
        f"{BACKPROP_GROUP} [{SHAPE[n]}] :: manual" for n in (3, 5, 10)}
    s = H.series(h)
    s = s[(s["kernel"] == "backprop") & (s["method"] == "manual")]
    assert list(s["commit"]) == [_commit(0), _commit(1)]  # L=10, in both commits
    assert set(s["benchmarks"]) == {1}


def test_one_shape_across_the_history_keeps_the_short_name(tmp_path):
    con = H.connect(tmp_path / "h.sqlite")
    for i in range(2):
        _add(con, tmp_path, i, 0, only=(10,))
    h = H.load_history(con)
    assert set(_manual(h)["benchmark"]) == {f"{BACKPROP_GROUP} :: manual"}
    assert set(_manual(h)["shape"]) == {SHAPE[10]}


def test_a_step_in_one_shape_across_restricted_runs_is_found(tmp_path):
    con = H.connect(tmp_path / "h.sqlite")
    levels = [1.0, 1.0, 1.0, 1.3, 1.3, 1.3]
    for i, level in enumerate(levels):
        for j in range(2):
            wobble = 1 + 0.01 * (-1) ** (i + j)
            only = (10,) if i in (2, 3, 5) else None  # as the fixture: runs of L=10 alone
            _add(con, tmp_path, i, j, {10: level * wobble}, only)
    rep = H.analyse(H.load_history(con))
    pts = rep.points
    assert list(zip(pts["commit"], pts["kernel"], pts["metric"])) == [
        (_commit(3)[:12], KERNEL, "ratio")]
    assert pts["change"].iloc[0] == pytest.approx(1.3, rel=0.03)


# ---------------------------------------------------------------- schema 1, read into it


@pytest.fixture
def old(tmp_path) -> Path:
    """A copy of the schema-1 history (the fixture stays as written)."""
    return Path(shutil.copy(OLD, tmp_path / "old.sqlite"))


def _strip_records(db: Path, where: str = "1") -> int:
    """Drop group and shape from the records of the results ``where`` selects (a history
    whose records do not say them: the key is then read from the stored name alone)."""
    con = sqlite3.connect(db)
    rows = con.execute(f"SELECT rowid, record FROM results WHERE {where}").fetchall()
    with con:
        for rowid, text in rows:
            record = json.loads(text)
            del record["group"], record["shape"]
            con.execute("UPDATE results SET record = ? WHERE rowid = ?",
                        (json.dumps(record), rowid))
    con.close()
    return len(rows)


def test_a_schema1_history_reads_each_shape_as_one_series_and_finds_the_step(old, capsys):
    before = old.read_bytes()
    con = H.connect(old)
    h = H.load_history(con)
    # six runs of every shape (commits 0, 1, 4), six of L=10 alone, named without the shape
    assert _runs_per_shape(h) == {SHAPE[3]: 6, SHAPE[5]: 6, SHAPE[10]: 12}
    assert set(_manual(h)["benchmark"]) == {
        f"{BACKPROP_GROUP} [{SHAPE[n]}] :: manual" for n in (3, 5, 10)}
    pts = H.analyse(h).points
    assert list(zip(pts["commit"], pts["kernel"])) == [(_commit(3)[:12], KERNEL)]
    assert pts["change"].iloc[0] == pytest.approx(1.3, rel=0.03)
    con.close()
    assert capsys.readouterr().err == ""  # every record says its key: nothing to guess
    assert old.read_bytes() == before  # read, not rewritten


def test_the_report_command_reads_a_schema1_history(old, tmp_path, capsys):
    assert main(["history", "report", "--db", str(old), "--out", str(tmp_path / "o")]) == 0
    assert f"{_commit(3)[:12]} {KERNEL}" in capsys.readouterr().out


def test_adding_to_a_schema1_history_upgrades_it_and_continues_its_series(old, tmp_path):
    con = H.connect(old)
    _add(con, tmp_path, 6, 0, {10: 1.3}, only=(10,))
    assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
    keys = con.execute("SELECT bench_group, shape FROM results").fetchall()
    assert keys.count((None, None)) == 24 and keys[-1] == (BACKPROP_GROUP, SHAPE[10])
    h = H.load_history(con)
    assert _runs_per_shape(h) == {SHAPE[3]: 6, SHAPE[5]: 6, SHAPE[10]: 13}


def test_a_refused_add_leaves_a_schema1_history_as_it_was(old, tmp_path):
    before = old.read_bytes()
    con = H.connect(old)
    bad = backprop_run(only=(10,))
    bad["benchmarks"] = [b for b in bad["benchmarks"] if b["extra_info"]["method"] != "manual"]
    f = tmp_path / "refs.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(Exception, match="no gated kernel benchmark"):
        H.add_run(con, str(f), commit=_commit(6), date=_date(6))
    con.close()
    assert old.read_bytes() == before


def test_an_unnamed_shape_joins_the_one_shape_the_history_has_of_its_benchmark(old, capsys):
    con = sqlite3.connect(old)
    with con:  # the history keeps L=10 alone
        con.execute("DELETE FROM results WHERE benchmark NOT LIKE '%L=10%' AND benchmark "
                    "!= 'backprop :: manual'")
    con.close()
    assert _strip_records(old, "benchmark = 'backprop :: manual'") == 6
    h = H.load_history(H.connect(old))
    assert _runs_per_shape(h) == {SHAPE[10]: 12}
    assert set(_manual(h)["benchmark"]) == {f"{BACKPROP_GROUP} :: manual"}
    assert capsys.readouterr().err == ""


def test_an_unnamed_shape_of_a_benchmark_of_several_is_kept_apart_said_once(old, capsys):
    assert _strip_records(old) == 24  # the shape is in the names of commits 0, 1 and 4 only
    h = H.load_history(H.connect(old))
    unknown = f"{BACKPROP_GROUP} [{H.UNKNOWN_SHAPE}] :: manual"
    assert _runs_per_shape(h) == {SHAPE[3]: 6, SHAPE[5]: 6, SHAPE[10]: 6, H.UNKNOWN_SHAPE: 6}
    assert unknown in set(_manual(h)["benchmark"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{BACKPROP_GROUP} :: manual" in err
    assert "6 stored results" in err and unknown in err


def test_unnamed_shapes_alone_are_one_series_without_a_word(old, capsys):
    con = sqlite3.connect(old)
    with con:
        con.execute("DELETE FROM results WHERE benchmark != 'backprop :: manual'")
    con.close()
    _strip_records(old)
    h = H.load_history(H.connect(old))
    assert _runs_per_shape(h) == {H.UNKNOWN_SHAPE: 6}
    assert set(_manual(h)["benchmark"]) == {f"{BACKPROP_GROUP} :: manual"}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name, key", [
    ("g [L=3 K=4] :: m", ("g", "L=3 K=4")),
    ("g [no shape] :: m", ("g", "")),
    ("g :: m", ("g", None)),
    ("g [cpu] :: m", ("g [cpu]", None)),  # brackets without a parameter: the group's own
])
def test_a_stored_name_gives_its_group_and_any_shape(name, key):
    assert H._name_key(name, "m") == key


class _FailingInsert:
    """A connection whose results insert fails: an add that fails inside its transaction."""

    def __init__(self, con):
        self._con = con

    def __getattr__(self, name):
        return getattr(self._con, name)

    def __enter__(self):
        return self._con.__enter__()

    def __exit__(self, *exc):
        return self._con.__exit__(*exc)

    def executemany(self, *args):
        raise sqlite3.OperationalError("disk I/O error (planted)")


def test_an_add_failing_after_the_upgrade_leaves_schema_1(old, tmp_path):
    con = H.connect(old)
    with pytest.raises(sqlite3.OperationalError, match="planted"):
        _add(_FailingInsert(con), tmp_path, 6, 0, only=(10,))
    assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("1",)
    assert not H._keyed(con)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (12,)


def test_a_record_says_the_key_before_the_name():
    # a group that reads as a name with a shape: its record tells them apart
    rec = json.dumps({"group": "b [x=1]", "shape": ""})
    assert H._old_key(rec, "b [x=1] :: m", "m") == ("b [x=1]", "")
    rec = json.dumps({"group": "b", "shape": "x=2"})
    assert H._old_key(rec, "b :: m", "m") == ("b", "x=2")
    for broken in ("not json", "[1, 2]", None):  # no record to read: the name alone
        assert H._old_key(broken, "b [x=1] :: m", "m") == ("b", "x=1")
    assert H._name_key("b", "m") == ("b", None)  # not "... :: m": all of it the group


def test_a_series_keys_benchmarks_by_group_and_shape_not_by_name():
    # group "b" of two shapes and group "b [x=1]" of none: both named "b [x=1] :: m"
    import pandas as pd

    from handgrad.reports.load import benchmark_names

    rows = []
    for run, sha in ((1, "a" * 40), (2, "b" * 40)):
        for group, shape, ratio in (("b", "x=1", 1.0), ("b", "x=2", 1.0),
                                    ("b [x=1]", "", 8.0)):
            rows.append({"run": run, "commit_sha": sha, "commit_date": _date(run),
                         "machine": "vm", "kind": "time", "kernel": "k", "method": "m",
                         "device": "cpu", "group": group, "shape": shape, "ratio": ratio,
                         "instructions": None})
    h = pd.DataFrame(rows)
    benchmark_names(h)
    assert h["benchmark"].nunique() == 3  # the names would collide: told apart (below)
    s = H.series(h)
    assert set(s["benchmarks"]) == {3}
    assert s["value"].tolist() == pytest.approx([2.0, 2.0])  # (1 * 1 * 8) ** (1 / 3)


# ---------------------------------------------------------------- names


def _keys(*keys):
    import pandas as pd

    return pd.DataFrame(keys, columns=["group", "method", "shape"])


def test_a_group_that_reads_as_another_groups_shape_gets_a_name_of_its_own():
    from handgrad.reports.load import benchmark_names

    # group "b" of two shapes, and group "b [x=1]" of none: both had been "b [x=1] :: m"
    frame = _keys(("b", "m", "x=1"), ("b", "m", "x=2"), ("b [x=1]", "m", ""))
    names = benchmark_names(frame)
    assert names == {("b", "m", "x=1"): "b [x=1] :: m", ("b", "m", "x=2"): "b [x=2] :: m",
                     ("b [x=1]", "m", ""): "b [x=1] [no shape] :: m"}
    assert list(frame["benchmark"]) == ["b [x=1] :: m", "b [x=2] :: m",
                                        "b [x=1] [no shape] :: m"]
    # across the two sides of a gate too, and a name no other takes stays short
    other = _keys(("b [x=1]", "m", ""), ("c", "m", ""))
    names = benchmark_names(_keys(("b", "m", "x=1"), ("b", "m", "x=2")), other)
    assert list(other["benchmark"]) == ["b [x=1] [no shape] :: m", "c :: m"]


def test_names_that_their_shapes_cannot_tell_apart_are_refused_naming_both():
    from handgrad.reports.load import ReportInputError, benchmark_names

    # a shape text written to read as a group's brackets: "a [x=1] [y=2] :: m" twice
    frame = _keys(("a [x=1]", "m", "y=2"), ("a [x=1]", "m", "y=3"),
                  ("a", "m", "x=1] [y=2"), ("a", "m", "z=1"))
    with pytest.raises(ReportInputError) as err:
        benchmark_names(frame)
    text = str(err.value)
    assert "'a [x=1] [y=2] :: m'" in text
    assert "group 'a [x=1]', method 'm', shape 'y=2'" in text
    assert "group 'a', method 'm', shape 'x=1] [y=2'" in text
