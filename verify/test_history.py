"""Benchmark history (handgrad.reports.history): runs stored per commit in SQLite, each
kernel's series, change points by E-divisive means, the report and the command line.

Runs are made from real ones (the timed and the counted fixtures) by scaling a kernel, so
where a series steps, and by how much, is known here."""

from __future__ import annotations

import copy
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from handgrad.reports import history as H
from handgrad.reports.__main__ import main
from handgrad.reports.load import ReportInputError
from verify.runs import scaled_run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COUNTED = json.loads((FIXTURES / "bench_instructions.json").read_text())
FWD = "jacobian.manual_forward"


def _date(i: int) -> str:
    return f"2026-11-{10 + i:02d}T12:00:00+00:00"


def _timed_history(tmp_path: Path, levels: list[float], runs_per_commit: int = 2,
                   jitter: float = 0.01) -> tuple[Path, list[str]]:
    """A history of len(levels) commits; commit i's runs have manual_forward at
    levels[i] (times a small random jitter)."""
    db = tmp_path / "h.sqlite"
    con = H.connect(db)
    commits = []
    rng = np.random.default_rng(len(levels))
    for i, level in enumerate(levels):
        sha = f"{i:02d}" + "ab" * 19
        commits.append(sha)
        for j in range(runs_per_commit):
            f = tmp_path / f"t{i}-{j}.json"
            wobble = 1 + jitter * rng.uniform(-1, 1)
            f.write_text(json.dumps(scaled_run({FWD: level * wobble})))
            H.add_run(con, str(f), commit=sha, date=_date(i))
    con.close()
    return db, commits


def test_a_step_in_one_kernel_is_found_at_the_commit_that_made_it(tmp_path, capsys):
    db, commits = _timed_history(tmp_path, [1.0, 1.0, 1.0, 1.3, 1.3, 1.3, 1.3])
    out = tmp_path / "report"
    assert main(["history", "report", "--db", str(db), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pts = json.loads(json.dumps(
        __import__("pandas").read_csv(out / "change_points.csv").to_dict("records")))
    # the kernel's mean first, then each of its four benchmarks (every one stepped)
    assert {(p["commit"], p["previous"], p["kernel"], p["metric"]) for p in pts} == {
        (commits[3][:12], commits[2][:12], FWD, "ratio")}
    assert [p["benchmark"] for p in pts][0] == "geometric mean of 4 benchmarks"
    assert len(pts) == 5 and len({p["benchmark"] for p in pts}) == 5
    assert all(p["benchmark"].endswith(" :: manual_forward") for p in pts[1:])
    assert [p["change"] for p in pts] == pytest.approx([1.3] * 5, rel=0.02)
    assert f"{commits[3][:12]} {FWD}" in printed
    for name in ("history.md", "history.png", "series.csv"):
        assert (out / name).stat().st_size > 0
    md = (out / "history.md").read_text()
    assert "## Change points" in md and commits[3][:12] in md


def test_a_flat_noisy_series_has_no_change_point():
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(40):
        groups = [rng.normal(0, 0.03, size=2) for _ in range(8)]
        found += len(H.change_points(groups, H.MIN_EFFECT["ratio"]))
    assert found == 0


def test_two_steps_are_both_found_and_a_step_under_the_least_effect_is_not():
    rng = np.random.default_rng(1)
    levels = [0.0] * 4 + [0.2] * 4 + [-0.1] * 4
    groups = [lv + rng.normal(0, 0.01, size=3) for lv in levels]
    assert H.change_points(groups, 0.05) == [4, 8]
    small = [lv * 0.1 + rng.normal(0, 0.001, size=3) for lv in levels]  # 2% and 3% steps
    assert H.change_points(small, 0.05) == []


def test_constant_counts_step_is_found_without_a_spread():
    groups = [np.log(np.array([1000.0]))] * 4 + [np.log(np.array([1100.0]))] * 3
    assert H.change_points(groups, H.MIN_EFFECT["instructions"]) == [4]
    flat = [np.log(np.array([1000.0 + i])) for i in range(7)]  # 0.6% drift in all
    assert H.change_points(flat, H.MIN_EFFECT["instructions"]) == []


def test_the_split_maximises_matteson_and_james_energy_statistic():
    # the statistic by its definition (V-statistic form), written out here
    def q(x, y):
        m, n = len(x), len(y)
        xy = np.abs(x[:, None] - y[None, :]).mean()
        xx = np.abs(x[:, None] - x[None, :]).mean()
        yy = np.abs(y[:, None] - y[None, :]).mean()
        return m * n / (m + n) * (2 * xy - xx - yy)

    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 1, 7), rng.normal(0.5, 1, 5)
    assert H._energy(x, y) == pytest.approx(q(x, y), rel=1e-9)


def test_a_step_needs_significance_as_well_as_size():
    # a 10% step against a 20% spread between runs: large, but a t-test cannot tell it
    rng = np.random.default_rng(3)
    groups = [lv + rng.normal(0, 0.2, size=2) for lv in [0.0] * 3 + [0.1] * 3]
    left, right = np.concatenate(groups[:3]), np.concatenate(groups[3:])
    assert stats.ttest_ind(left, right).pvalue > H.ALPHA
    assert H._significant(left, right + 1.0, 0.05)  # the same spread, a 2.7x step: found
    assert H.change_points(groups, 0.05) == []


def test_instruction_counts_make_their_own_series(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    con = H.connect(db)
    for i, factor in enumerate([1.0, 1.0, 1.0, 1.8, 1.8]):
        data = copy.deepcopy(COUNTED)
        for b in data["benchmarks"]:
            if b["extra_info"]["method"] == "manual_forward":
                b["extra_info"]["instructions"] = round(b["extra_info"]["instructions"] * factor)
        data["datetime"] = _date(i)  # each run its own file
        data["commit_info"]["dirty"] = False  # recorded from a dirty tree; here commit i's
        f = tmp_path / f"c{i}.json"
        f.write_text(json.dumps(data))
        H.add_run(con, str(f), commit=f"{i:040d}", date=_date(i))
    con.close()
    rep = H.write_report(H.connect(db), tmp_path / "out")
    pts = rep.points  # the kernel's mean and each of its benchmarks (those the file counted)
    n = sum(b["extra_info"]["method"] == "manual_forward" for b in COUNTED["benchmarks"])
    assert set(zip(pts["commit"], pts["kernel"], pts["metric"])) == {
        (f"{3:040d}"[:12], FWD, "instructions")}
    assert list(pts["benchmark"])[0] == f"geometric mean of {n} benchmarks"
    assert len(pts) == 1 + n and n > 1
    assert pts["change"].to_numpy() == pytest.approx(1.8, rel=1e-3)
    assert set(rep.series["metric"]) == {"instructions"}


def test_series_keep_only_the_benchmarks_every_commit_measured(tmp_path):
    db = tmp_path / "h.sqlite"
    con = H.connect(db)
    for i in range(3):
        data = scaled_run({})
        data["datetime"] = _date(i)  # each run its own file
        data["commit_info"]["dirty"] = False  # recorded from a dirty tree; here commit i's
        if i == 0:  # the first commit lacks one manual_forward benchmark
            data["benchmarks"] = [b for b in data["benchmarks"] if not (
                b["extra_info"]["method"] == "manual_forward"
                and b["group"].startswith("jacobian L=3 K=30 N=1 "))]
        f = tmp_path / f"r{i}.json"
        f.write_text(json.dumps(data))
        H.add_run(con, str(f), commit=f"{i}" * 40, date=_date(i))
    s = H.series(H.load_history(con))
    fwd = s[(s["kernel"] == "jacobian") & (s["method"] == "manual_forward")]
    rev = s[(s["kernel"] == "jacobian") & (s["method"] == "manual_reverse")]
    assert fwd["benchmarks"].iloc[0] == rev["benchmarks"].iloc[0] - 1


def test_add_takes_the_commit_from_the_file_and_refuses_what_it_cannot_store(tmp_path,
                                                                             capsys):
    db = tmp_path / "h.sqlite"
    f = tmp_path / "run.json"
    f.write_text(json.dumps(scaled_run({})))
    assert main(["history", "add", "--db", str(db), str(f)]) == 0
    con = sqlite3.connect(db)
    sha, date = con.execute("SELECT commit_sha, commit_date FROM runs").fetchone()
    info = scaled_run({})["commit_info"]
    assert sha == info["id"] and date.startswith(info["time"][:19])
    capsys.readouterr()
    # the same file again
    assert main(["history", "add", "--db", str(db), str(f)]) == 2
    assert "already in the history" in capsys.readouterr().err
    # no commit recorded and none given
    bare = scaled_run({})
    del bare["commit_info"]
    g = tmp_path / "bare.json"
    g.write_text(json.dumps(bare))
    assert main(["history", "add", "--db", str(db), str(g)]) == 2
    assert "give --commit" in capsys.readouterr().err
    assert main(["history", "add", "--db", str(db), str(g), "--commit", "abc",
                 "--date", "yesterday"]) == 2
    assert "--date: expected an ISO-8601 date" in capsys.readouterr().err
    # not a history
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database " * 100)
    assert main(["history", "add", "--db", str(junk), str(f)]) == 2
    assert "is not a handgrad history" in capsys.readouterr().err
    assert main(["history", "report", "--db", str(tmp_path / "none.sqlite"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_refused_add_leaves_no_new_history_behind(tmp_path, capsys):
    """A refused add (exit 2) that stored nothing removes the file it created; an existing
    history stays as it was, and a new one keeps the runs stored before a refusal."""
    db = tmp_path / "h.sqlite"
    plain = tmp_path / "plain.json"  # pytest-benchmark output without handgrad records
    run = scaled_run({})
    plain.write_text(json.dumps({**run, "benchmarks": [
        {**b, "extra_info": {}} for b in run["benchmarks"]]}))
    assert main(["history", "add", "--db", str(db), str(plain)]) == 2
    assert "no handgrad benchmark records" in capsys.readouterr().err
    assert not db.exists()
    assert main(["history", "add", "--db", str(db), str(tmp_path / "missing.json")]) == 2
    assert not db.exists()
    good = tmp_path / "run.json"
    good.write_text(json.dumps(run))
    assert main(["history", "add", "--db", str(db), str(good)]) == 0
    before = db.read_bytes()
    assert main(["history", "add", "--db", str(db), str(plain)]) == 2
    assert db.read_bytes() == before  # an existing history: kept, unchanged
    other = tmp_path / "new.sqlite"
    good2 = tmp_path / "run2.json"
    good2.write_text(json.dumps(scaled_run({FWD: 1.1})))
    assert main(["history", "add", "--db", str(other), str(good2), str(plain)]) == 2
    con = sqlite3.connect(other)  # created, and a run stored in it before the refusal
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    con.close()


def test_a_history_of_another_schema_is_refused(tmp_path):
    db = tmp_path / "h.sqlite"
    H.connect(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '7' WHERE key = 'schema'")
    con.commit()
    con.close()
    with pytest.raises(ReportInputError, match="history schema 7"):
        H.connect(db)


def test_report_of_a_kernel_filter_that_matches_nothing_says_so(tmp_path):
    db, _ = _timed_history(tmp_path, [1.0, 1.0, 1.0])
    with pytest.raises(ReportInputError, match="no stored results for kernels matching"):
        H.write_report(H.connect(db), tmp_path / "o", kernel="nothing_like_this")
    rep = H.write_report(H.connect(db), tmp_path / "o", kernel="manual_forward")
    assert set(rep.series["method"]) == {"manual_forward"}
    assert math.isclose(rep.series["value"].std() / rep.series["value"].mean(), 0.0,
                        abs_tol=0.02)


def test_two_single_runs_have_no_spread_to_test_a_step_against():
    assert H.change_points([np.array([0.0]), np.array([0.3])], 0.05) == []
    # more points give the t-test a spread, but one run past the step may be one outlier
    # run (a noisy neighbour): not tested however clear its t-test
    assert H.change_points([np.array([0.0, 0.001, -0.001]), np.array([0.3])], 0.05) == []
    # MIN_SIDE runs a side: the same 30% step is then found
    assert H.MIN_SIDE == 4
    assert H.change_points([np.array([0.0, 0.001, -0.001, 0.002]),
                            np.array([0.3, 0.301, 0.299, 0.302])], 0.05) == [1]


def test_the_t_test_is_students_pooled_one():
    rng = np.random.default_rng(4)
    left, right = rng.normal(0, 0.05, 6), rng.normal(0.2, 0.05, 5)
    p = stats.ttest_ind(left, right, equal_var=True).pvalue
    assert p < H.ALPHA  # a clear step: scipy's pooled t-test rejects
    assert H._significant(left, right, 0.05)
    # tested as the best of more splits than p allows (ALPHA / candidates < p): not kept
    assert not H._significant(left, right, 0.05, candidates=math.ceil(H.ALPHA / p) + 1)
    assert H._significant(left, right, 0.05, candidates=max(1, math.floor(H.ALPHA / p) - 1))


def test_a_run_and_its_gzip_copy_are_one_run(tmp_path, capsys):
    import gzip
    import hashlib

    db = tmp_path / "h.sqlite"
    text = json.dumps(scaled_run({})).encode()
    plain, packed = tmp_path / "run.json", tmp_path / "run.json.gz"
    plain.write_bytes(text)
    packed.write_bytes(gzip.compress(text))
    assert main(["history", "add", "--db", str(db), str(plain)]) == 0
    capsys.readouterr()
    assert main(["history", "add", "--db", str(db), str(packed)]) == 2
    assert "already in the history (the same JSON, compressed or not)" in (
        capsys.readouterr().err)
    # the other way round, and a .gz stored before 0.4.0 (hashed compressed) refused again
    db2 = tmp_path / "h2.sqlite"
    assert main(["history", "add", "--db", str(db2), str(packed)]) == 0
    assert main(["history", "add", "--db", str(db2), str(plain)]) == 2
    con = sqlite3.connect(db2)
    with con:
        con.execute("UPDATE runs SET content_sha256 = ?",
                    (hashlib.sha256(packed.read_bytes()).hexdigest(),))
    con.close()
    capsys.readouterr()
    assert main(["history", "add", "--db", str(db2), str(packed)]) == 2
    assert "already in the history" in capsys.readouterr().err
    assert sqlite3.connect(db2).execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)


def _dirty_and_clean(tmp_path: Path, level: float,
                     runs: int = 3) -> tuple[list[str], list[str], str]:
    """``runs`` runs of one commit from a clean tree, as many from a dirty tree of the same
    commit (pytest-benchmark's commit_info.dirty) with manual_forward at ``level``."""
    rng = np.random.default_rng(7)
    clean, dirty = [], []
    for j in range(runs):
        for side, factor, out in (("clean", 1.0, clean), ("dirty", level, dirty)):
            run = scaled_run({FWD: factor * (1 + 0.01 * rng.uniform(-1, 1))})
            run["commit_info"]["dirty"] = side == "dirty"
            f = tmp_path / f"{side}-{j}.json"
            f.write_text(json.dumps(run))
            out.append(str(f))
    return clean, dirty, scaled_run({})["commit_info"]["id"]


def test_a_dirty_tree_run_is_refused_by_name_before_anything_is_stored(tmp_path, capsys):
    """A dirty tree's run is not its commit's code: stored under the commit, it blended a
    1.3x slowdown into the commit's level (a walkthrough's find)."""
    clean, dirty, sha = _dirty_and_clean(tmp_path, 1.3)
    db = tmp_path / "h.sqlite"
    assert main(["history", "add", "--db", str(db), *clean, *dirty]) == 2
    err = capsys.readouterr().err
    assert all(f in err for f in dirty) and not any(f in err for f in clean)
    assert "uncommitted changes (commit_info.dirty)" in err and "--allow-dirty" in err
    assert f"commit {sha[:12]}" in err
    assert not db.exists()  # refused before the clean runs listed first were stored
    con = H.connect(db)  # the API refuses it too
    with pytest.raises(ReportInputError, match="--allow-dirty"):
        H.add_run(con, dirty[0])
    con.close()


def test_a_dirty_run_given_its_commit_is_stored_as_that_commit(tmp_path, capsys):
    # --commit names the code measured: .ci/gate's baseline runs in an export of the
    # baseline commit inside a checkout whose own (dirty) state pytest-benchmark recorded
    clean, dirty, sha = _dirty_and_clean(tmp_path, 1.0)
    db = tmp_path / "h.sqlite"
    assert main(["history", "add", "--db", str(db), "--commit", "b" * 40, "--date",
                 _date(0), *dirty]) == 0
    con = H.connect(db)
    assert [r[0] for r in con.execute("SELECT DISTINCT commit_sha FROM runs")] == ["b" * 40]
    con.close()
    # with --allow-dirty too: a point of its own after that commit
    db2 = tmp_path / "h2.sqlite"
    assert main(["history", "add", "--db", str(db2), "--commit", "b" * 40, "--date",
                 _date(0), "--allow-dirty", *dirty]) == 0
    con = H.connect(db2)
    assert [r[0] for r in con.execute("SELECT DISTINCT commit_sha FROM runs")] == [
        "b" * 40 + H.DIRTY]
    con.close()


def test_allow_dirty_stores_a_point_of_its_own_after_its_commit(tmp_path, capsys):
    # four runs a side: a step's shorter side needs H.MIN_SIDE runs (three could be two
    # outlier runs and one more)
    clean, dirty, sha = _dirty_and_clean(tmp_path, 1.3, runs=H.MIN_SIDE)
    db = tmp_path / "h.sqlite"
    # the dirty runs added first: the point still follows its commit
    assert main(["history", "add", "--db", str(db), "--allow-dirty", *dirty, *clean]) == 0
    con = sqlite3.connect(db)
    assert sorted(con.execute("SELECT commit_sha, COUNT(*) FROM runs GROUP BY 1")) == [
        (sha, 4), (sha + H.DIRTY, 4)]
    con.close()
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["history", "report", "--db", str(db), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # the kernel's mean and each of its four benchmarks
    assert "2 commits, 5 change point(s)" in printed
    assert f"{sha[:12]}+dirty {FWD} (cpu, ratio)" in printed
    pts = __import__("pandas").read_csv(out / "change_points.csv")
    assert list(pts["commit"]) == [sha[:12] + "+dirty"] * 5
    assert list(pts["previous"]) == [sha[:12]] * 5
    assert pts["change"].to_numpy() == pytest.approx(1.3, rel=0.03)
    assert f"| {sha[:12]}+dirty |" in (out / "history.md").read_text()


def test_a_commits_dirty_point_is_shown_and_ordered_after_it():
    assert H.short("0123456789abcdef" * 2 + H.DIRTY) == "0123456789ab+dirty"
    assert H.short("0123456789abcdef", 7) == "0123456"
    order = H._in_order(__import__("pandas").DataFrame({
        "commit": ["bb+dirty", "bb", "aa", "cc"],
        "date": [_date(1), _date(1), _date(0), _date(1)]}))
    assert list(order["commit"]) == ["aa", "bb", "bb+dirty", "cc"]


def test_a_run_made_outside_git_is_stored_with_a_note_that_it_has_no_commit(tmp_path,
                                                                            capsys):
    """pytest-benchmark records commit_info.id 'unversioned' outside a git checkout (with
    no date: --date gives one); add stored it under that word, quietly, one point with
    every other such run. It says so on stderr, naming the run and --commit."""
    db = tmp_path / "h.sqlite"
    for i, (word, why) in enumerate([("unversioned", "made outside a git checkout"),
                                     ("unknown", "could not read its commit")]):
        data = scaled_run({})
        data["commit_info"] = {"id": word, "time": None, "dirty": False}
        data["benchmarks"][0]["stats"]["median"] *= 1 + i  # another run, not one again
        f = tmp_path / f"{word}.json"
        f.write_text(json.dumps(data))
        assert main(["history", "add", "--db", str(db), str(f), "--date",
                     "2026-12-01T10:00:00+00:00"]) == 0
        out, err = capsys.readouterr()
        assert f"{f}: " in out and "benchmarks added" in out
        assert err.startswith(f"note: {f}: no commit recorded (") and why in err
        assert f"commit_info.id {word!r}), so it was stored under the commit {word!r}" in err
        assert "give --commit SHA" in err
    # given a commit: stored under it, no note; a run with its commit: none either
    data = scaled_run({})
    data["commit_info"] = {"id": "unversioned", "time": None, "dirty": False}
    data["benchmarks"][0]["stats"]["median"] *= 3
    f = tmp_path / "given.json"
    f.write_text(json.dumps(data))
    assert main(["history", "add", "--db", str(db), str(f), "--commit", "abc123",
                 "--date", "2026-12-02T10:00:00+00:00"]) == 0
    assert capsys.readouterr().err == ""
    f = tmp_path / "run.json"
    f.write_text(json.dumps(scaled_run({})))
    assert main(["history", "add", "--db", str(db), str(f)]) == 0
    assert capsys.readouterr().err == ""
    shas = [r[0] for r in sqlite3.connect(db).execute("SELECT commit_sha FROM runs")]
    assert shas[:3] == ["unversioned", "unknown", "abc123"]
