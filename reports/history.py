"""Benchmark history across commits, in one SQLite file, with change points.

    python -m handgrad.reports history add --db H.sqlite RUN.json [...] [--commit SHA]
        [--date ISO-8601]
    python -m handgrad.reports history report --db H.sqlite --out DIR [--kernel SUBSTRING]

``add`` stores each run (one pytest-benchmark JSON, timed or ``--bench-instructions``)
under its commit, the commit's date, the machine and every gated benchmark's record
(ratio to its reference; instructions per call where counted), but for a benchmark whose
test failed (``extra_info.test_failed``) and, in a timed run, one the report flags
``disturbed`` (``reports.tables.DISTURBED_RULE``: an implausible ratio, a reference that
moved, rounds spread as no timing of one call is): each named, not stored. The commit and date come
from the file's ``commit_info`` (pytest-benchmark records the working tree's git commit)
unless given; a file already stored is refused (the hash of its JSON, so x.json and
x.json.gz are one run). An add refused before it stored a run leaves no history file it
created behind. Each benchmark is stored under its key, group, method and shape
(``load.BENCHMARK_KEY``), in columns of their own: one series whatever else a run holds (a
run of one shape, restricted by GATE_K, continues the series of a run of every shape). A
history of schema 1, which stored only each run's name for it, is read (``load_history``)
and upgraded by its next add.

``report`` orders the commits by date and gives, per benchmark (group, method, shape) and
metric (``ratio``: time over the reference's; ``instructions``: per call), its own series,
and per kernel (kernel family, method, device) the series of the geometric mean over the
benchmarks every commit of that series measured, with the change points found in each
(a step in one of three shapes moves the mean a third as far in log: it is found, and its
size read, in that shape's series; a kernel's benchmarks are tested as one family, ALPHA
over their number, and its mean as a series of its own) by E-divisive means (Matteson and James, "A
Nonparametric Approach for Multiple Change Point Analysis of Multivariate Data", JASA
2014) as Apache Otava and MongoDB's CI run it ("Change Point Detection in Software
Performance Testing", ICPE 2020): the split of a segment between two commits that
maximises the energy statistic (``scipy.stats.energy_distance``) is kept when a Student
t-test of the log values either side gives p < ``ALPHA`` over the number of splits the
segment offered (Bonferroni: the best of them was tested) and the medians differ by more
than the metric's least effect (5% for a ratio, 2% for instructions, as the gates); each
side is then searched again. A side of fewer than ``MIN_SIDE`` runs is not tested (unless
both sides are each one constant count): a run a noisy neighbour slowed moves a median only
where half a side is slowed, and two slowed runs of the last commit no longer read as a step.
Written here rather than imported: Otava pins numpy 2.2.0 and
pulls in BigQuery, Slack and Postgres clients, MongoDB's signal-processing-algorithms
pins numpy < 2 and Python 3.11; the search is some thirty lines over scipy.

Writes ``history.md`` (the change points, each naming its benchmark or the kernel's mean,
then each kernel's series), ``change_points.csv``, ``series.csv`` (the kernels'),
``benchmark_series.csv`` (each benchmark's) and ``history.png`` (each kernel's series
against the commit, change points marked, and dotted the own series of each benchmark a
change point names).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import re
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from handgrad.reports.load import (
    TEST_FAILED,
    ReportInputError,
    _read_bytes,
    benchmark_names,
    check_distinct_benchmarks,
    check_output_dir,
    failed_gated,
    gated,
    load_benchmarks,
    machine_label,
    read_json,
)
from handgrad.reports.noise import timed_ratio
from handgrad.reports.tables import with_ratios

# 2: each result has its benchmark's group and shape in columns of their own (the key, with
# the method: load.BENCHMARK_KEY). Schema 1 stored only a name, "group :: method" or, where
# that run had several shapes of it, "group [shape] :: method": one benchmark under two names
# as runs differed. A schema-1 file is read (``load_history``: its rows keyed from their
# records) and upgraded by the first add (its rows kept as they are)
SCHEMA_VERSION = 2
READS = ("1", "2")
# the shape of a schema-1 result whose record and name do not say it, where the history holds
# several shapes of its group and method: a series of its own ("shape not stored" has no "=",
# which a shape's text, "L=3 K=30" or "", never lacks unless empty)
UNKNOWN_SHAPE = "shape not stored"
ALPHA = 0.001  # a change point's t-test
# a split's shorter side: the fewest values (runs) it may have to be tested. Two runs of
# one commit that a noisy neighbour slowed (5% of runs 20% slow: 1 in 400 commits) read as a
# step the t-test finds; of four, the median moves only where half of them are slowed
MIN_SIDE = 4
MIN_EFFECT = {"ratio": 0.05, "instructions": 0.02}  # as the timed and instruction gates
METRICS = ("ratio", "instructions")
MIN_VALUES = 3  # a split's two sides together: fewer leave no spread to test a step against

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    commit_sha TEXT NOT NULL,
    commit_date TEXT NOT NULL,
    added TEXT NOT NULL,
    machine TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('time', 'instructions')),
    content_sha256 TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS results (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kernel TEXT NOT NULL,
    method TEXT NOT NULL,
    device TEXT NOT NULL,
    benchmark TEXT NOT NULL,
    reference TEXT NOT NULL,
    ratio REAL,
    instructions REAL,
    record TEXT NOT NULL,
    bench_group TEXT,
    shape TEXT
);
CREATE INDEX IF NOT EXISTS results_kernel ON results (kernel, method, device);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating) a history file; ReportInputError if it is not one."""
    path = Path(path)
    if path.is_dir():
        raise ReportInputError(f"--db: {path} is a folder; expected a file")
    if not path.parent.is_dir():
        raise ReportInputError(f"--db: the folder of {path} does not exist")
    try:
        con = sqlite3.connect(path)
        con.execute("PRAGMA foreign_keys = ON")
        con.executescript(_DDL)
        row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            con.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            con.commit()
        elif row[0] not in READS:
            raise ReportInputError(f"--db: {path} has history schema {row[0]}; this handgrad "
                                   f"reads schemas {' and '.join(READS)}")
    except sqlite3.DatabaseError as exc:
        raise ReportInputError(f"--db: {path} is not a handgrad history ({exc})") from None
    return con


def _keyed(con: sqlite3.Connection) -> bool:
    """Whether the results have the key columns (schema 2)."""
    return "shape" in {r[1] for r in con.execute("PRAGMA table_info(results)")}


def _upgrade(con: sqlite3.Connection) -> None:
    """A schema-1 history made schema 2, in the caller's transaction: the key columns added,
    empty in its rows (``load_history`` keys them from their records)."""
    if _keyed(con):
        return
    con.execute("ALTER TABLE results ADD COLUMN bench_group TEXT")
    con.execute("ALTER TABLE results ADD COLUMN shape TEXT")
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))


# what a run from a working tree with uncommitted changes (pytest-benchmark's
# ``commit_info.dirty``) is stored as, with ``--allow-dirty``: a point of its own, ordered
# right after its commit (the same date; "<sha>+dirty" sorts after "<sha>")
DIRTY = "+dirty"


def is_dirty(data: dict) -> bool:
    """Whether pytest-benchmark recorded the run's working tree as having uncommitted
    changes: its timings are not its commit's code."""
    return bool((data.get("commit_info") or {}).get("dirty"))


def dirty_refusal(paths: list[str], data: list[dict]) -> str:
    """The one line refusing runs from a dirty working tree, naming each with its commit."""
    named = ", ".join(f"{p} (commit {str((d.get('commit_info') or {}).get('id'))[:12]})"
                      for p, d in zip(paths, data))
    return (f"{named}: recorded from a working tree with uncommitted changes "
            "(commit_info.dirty), so not that commit's code; nothing was stored. Commit the "
            "changes and rerun, leave these runs out, or give --allow-dirty to store each as "
            f"a point of its own, '<commit>{DIRTY}', after its commit")


# what pytest-benchmark records as a run's commit where it read none: outside a git (or
# Mercurial) checkout, and where reading it failed
NO_COMMIT = ("unversioned", "unknown")


def no_commit_note(path: str, data: dict, sha: str) -> str | None:
    """The note on a run stored under pytest-benchmark's word for no commit (``NO_COMMIT``):
    every such run is one point of the series, whatever code each measured. None for a run
    with its commit."""
    recorded = str((data.get("commit_info") or {}).get("id"))
    if recorded not in NO_COMMIT:
        return None
    why = ("it was made outside a git checkout" if recorded == "unversioned" else
           "pytest-benchmark could not read its commit")
    return (f"{path}: no commit recorded ({why}: commit_info.id {recorded!r}), so it was "
            f"stored under the commit {sha!r}, one point with every other run stored so; give "
            "--commit SHA to store a run under the commit it measured")


def _commit_of(path: str, data: dict, commit: str | None,
               date: str | None, allow_dirty: bool = False) -> tuple[str, str]:
    info = data.get("commit_info") or {}
    # --commit names the code the run measured (.ci/gate's baseline runs in an export of
    # that commit, inside a checkout whose own state pytest-benchmark recorded)
    if is_dirty(data) and not allow_dirty and commit is None:
        raise ReportInputError(dirty_refusal([path], [data]))
    sha = commit or info.get("id")
    when = date or info.get("time")
    if not sha:
        raise ReportInputError(f"{path}: no commit recorded in the file (commit_info); give "
                               "--commit")
    if not when:
        raise ReportInputError(f"{path}: no commit date recorded in the file; give --date")
    try:
        parsed = dt.datetime.fromisoformat(str(when))
    except ValueError:
        raise ReportInputError(f"--date: expected an ISO-8601 date (e.g. "
                               f"2026-12-04T10:00:00+00:00), got {when!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return str(sha) + (DIRTY if allow_dirty and is_dirty(data) else ""), \
        parsed.astimezone(dt.timezone.utc).isoformat()


def add_run(con: sqlite3.Connection, path: str, commit: str | None = None,
            date: str | None = None, failed: list[str] | None = None,
            disturbed: list[str] | None = None, allow_dirty: bool = False,
            unpaired: list[str] | None = None, notes: list[str] | None = None) -> int:
    """Store one benchmark file under its commit; returns how many benchmarks it added.
    A benchmark whose test failed is not stored (its timing is not of a right kernel);
    ``failed``, when given, gets each one's "group :: method". Nor is a timed benchmark the
    report flags disturbed (``reports.tables.with_ratios``, DISTURBED_RULE: its ratio is not
    the kernel's); ``disturbed``, when given, gets "group :: method (why)" of each. Nor is
    a timed kernel without a reference on its own device in the run (no ratio to store);
    ``unpaired``, when given, gets "group :: method (no reference timed on <device>)".
    A run from a dirty working tree (``commit_info.dirty``) is refused unless
    ``allow_dirty``, then stored as "<commit>+dirty" (``DIRTY``): not its commit's code.
    A run pytest-benchmark recorded without a commit (outside a git checkout: its
    ``commit_info.id`` is "unversioned", or "unknown" where git failed) is stored under that
    word, with every other such run, unless ``commit`` is given; ``notes``, when given,
    gets a line saying so (``no_commit_note``)."""
    df = load_benchmarks([path], failed_tests=True)  # the refusals of a bad file, by name
    # a benchmark is its group, method and shape, stored as such (its series' key); its name
    # here, in what this add says, is the run's: "group [rows=64] :: method" where this run has
    # several shapes of one group and method (a parametrised test under one group)
    check_distinct_benchmarks(df)  # two rows of one key: no series could tell them apart
    names = benchmark_names(df)
    left_out = [names[k] for k in sorted(failed_gated(df, by_shape=True))]  # not stored
    df = df[~df[TEST_FAILED]]
    data = read_json(path)
    sha, when = _commit_of(path, data, commit, date, allow_dirty)
    note = no_commit_note(path, data, sha) if commit is None else None
    # the hash of the JSON itself, decompressed: x.json and its x.json.gz are one run. A run
    # stored from a .gz before 0.4.0 was hashed compressed: that hash is refused too
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(_read_bytes(Path(path))).hexdigest()
    for known in {digest, hashlib.sha256(raw).hexdigest()}:
        if con.execute("SELECT 1 FROM runs WHERE content_sha256 = ?", (known,)).fetchone():
            raise ReportInputError(f"{path}: this run is already in the history (the same "
                                   "JSON, compressed or not)")
    counted = bool((df["timer"] == "callgrind").any())
    # the report's flag, by its one rule; a count (valgrind's) is not disturbed by the machine
    flags = {} if counted else {
        (g, m, sh): why for g, m, sh, why in with_ratios(df.reset_index(drop=True))[
            ["group", "method", "shape", "disturbed"]].itertuples(index=False) if why}
    rows, shaken, alone = [], [], []
    for (_, r), is_gated in zip(df.iterrows(), gated(df)):
        if not is_gated:
            continue
        name = names[(r["group"], r["method"], r["shape"])]
        why = flags.get((r["group"], r["method"], r["shape"]))
        if why:  # kept as measured, without a value: its series fills it (``series``)
            shaken.append(f"{name} ({why})")
        ratio = ins = None
        if why:
            pass
        elif counted:
            if pd.isna(r["instructions"]):
                continue
            ins = float(r["instructions"])
            if not pd.isna(r["reference_instructions"]):
                ratio = ins / float(r["reference_instructions"])
        else:
            timed = timed_ratio(df, r)
            if timed is None:  # no reference on its device (or a ratio not positive)
                alone.append(f"{name} (no reference timed on {r['device']})")
                continue
            ratio = timed[0]
        record = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                  for k, v in r.items() if k not in ("data", "reference_data")}
        if why:
            record["disturbed"] = why
        rows.append((r["kernel"], r["method"], r["device"], name,
                     r["reference"], ratio, ins, json.dumps(record, default=str),
                     r["group"], r["shape"]))
    stored = sum(row[5] is not None or row[6] is not None for row in rows)
    if not stored:
        raise ReportInputError(f"{path}: no gated kernel benchmark (role kernel, a timed or "
                               "counted reference) to store" + (
                                   f"; {len(left_out)} left out, their test failed"
                                   if left_out else "") + (
                                   f"; {len(shaken)} left out, disturbed: "
                                   f"{', '.join(shaken)}" if shaken else "") + (
                                   f"; {len(alone)} left out without a ratio: "
                                   f"{', '.join(alone)}" if alone else ""))
    if failed is not None:
        failed += left_out
    if disturbed is not None:
        disturbed += shaken
    if unpaired is not None:
        unpaired += alone
    if notes is not None and note:
        notes.append(note)
    with con:  # one transaction: a schema-1 file is upgraded only with the run it stores
        if not con.in_transaction:
            con.execute("BEGIN")
        _upgrade(con)
        cur = con.execute(
            "INSERT INTO runs (commit_sha, commit_date, added, machine, source, kind, "
            "content_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sha, when, dt.datetime.now(dt.timezone.utc).isoformat(),
             machine_label(data.get("machine_info") or {}), str(path),
             "instructions" if counted else "time", digest))
        con.executemany("INSERT INTO results (run_id, kernel, method, device, benchmark, "
                        "reference, ratio, instructions, record, bench_group, shape) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(cur.lastrowid, *row) for row in rows])
    return stored


def load_history(con: sqlite3.Connection) -> pd.DataFrame:
    """Every stored result with its run's commit, date, machine and kind, and its
    benchmark's key: ``group``, ``method``, ``shape`` (its text, "" for none). ``benchmark``
    names it for the whole history: "group :: method", with the shape, "group [rows=64] ::
    method", where the history holds several shapes of that group and method.

    A row of schema 1 (no key columns) takes its group and shape from its record (every
    record handgrad wrote holds both), else from its name ("group [shape] :: method"); a
    name without the shape joins the one shape the history holds of its group and method.
    Where it holds several, the row keeps a series of its own (shape ``UNKNOWN_SHAPE``), and
    stderr says so once."""
    # a row's record is read only where its key is not stored (schema 1)
    key = ("s.bench_group, s.shape, CASE WHEN s.shape IS NULL THEN s.record END" if
           _keyed(con) else "NULL AS bench_group, NULL AS shape, s.record")
    h = pd.read_sql_query(
        "SELECT r.id AS run, r.commit_sha, r.commit_date, r.machine, r.kind, s.kernel, "
        f"s.method, s.device, s.benchmark AS stored_name, {key} AS record, s.ratio, "
        "s.instructions FROM results s JOIN runs r ON r.id = s.run_id ORDER BY "
        "r.commit_date, r.id", con)
    h = h.rename(columns={"bench_group": "group"}).astype({"group": object, "shape": object})
    _key_old_rows(h)
    h = h.drop(columns=["stored_name", "record"])
    benchmark_names(h)  # sets h["benchmark"]: over the whole history, not a run
    return h


def _key_old_rows(h: pd.DataFrame) -> None:
    """The group and shape of the rows without them (schema 1), in place: ``load_history``."""
    old = np.flatnonzero(h["shape"].isna().to_numpy())
    if not len(old):
        return
    groups, shapes = h["group"].to_numpy(copy=True), h["shape"].to_numpy(copy=True)
    for i in old:
        groups[i], shapes[i] = _old_key(h["record"].iat[i], h["stored_name"].iat[i],
                                        h["method"].iat[i])
    unsaid = [i for i in old if shapes[i] is None]
    known: dict[tuple[str, str], set[str]] = {}
    for g, m, sh in zip(groups, h["method"], shapes):
        if sh is not None:
            known.setdefault((g, m), set()).add(sh)
    apart: dict[tuple[str, str], int] = {}
    for i in unsaid:
        have = known.get((groups[i], h["method"].iat[i]), set())
        if len(have) == 1:  # the one shape of its benchmark in the history: its series
            shapes[i] = next(iter(have))
        else:  # none (all unsaid: one series) or several (which one: not known)
            shapes[i] = UNKNOWN_SHAPE
            if have:
                k = (groups[i], h["method"].iat[i])
                apart[k] = apart.get(k, 0) + 1
    h["group"], h["shape"] = groups, shapes
    if apart:
        print(f"history: {sum(apart.values())} stored results of schema 1 name no shape "
              "(nor their records) for a group and method the history holds several shapes "
              "of; each kept as a series of its own: " + ", ".join(
                  f"{g} :: {m} ({n}) as {g} [{UNKNOWN_SHAPE}] :: {m}"
                  for (g, m), n in sorted(apart.items())), file=sys.stderr)


def _old_key(record, name: str, method: str) -> tuple[str, str | None]:
    """A schema-1 row's (group, shape): its record's, else its name's (``_name_key``)."""
    try:
        rec = json.loads(record)
    except (TypeError, ValueError):
        rec = None
    if not isinstance(rec, dict):
        rec = {}
    group, shape = _name_key(name, method)
    if isinstance(rec.get("group"), str):
        group = rec["group"]
    if isinstance(rec.get("shape"), str):
        shape = rec["shape"]
    return group, shape


def _name_key(name: str, method: str) -> tuple[str, str | None]:
    """(group, shape) of a stored name, "group [shape] :: method" ("no shape": ""); the
    shape None where the name has none ("group :: method")."""
    tail = f" :: {method}"
    head = name[:-len(tail)] if name.endswith(tail) else name
    m = re.fullmatch(r"(.*?) \[(no shape|.*=.*)\]", head)
    if m:
        return m[1], "" if m[2] == "no shape" else m[2]
    return head, None


# ---------------------------------------------------------------- series and change points


def series(history: pd.DataFrame) -> pd.DataFrame:
    """A row per (kernel, method, device, metric, run): the geometric mean of the metric over
    the benchmarks (group and shape: ``load_history``'s key) that every commit of that series
    measured (``benchmarks``: how many).
    A timed benchmark stored without a ratio (left out as disturbed) still counts as
    measured; in its run it takes the level of the others: the run's value is the mean of
    its benchmarks' log values, each less the benchmark's median over the series, plus the
    mean of those medians (with no benchmark left out, the plain geometric mean)."""
    out = []
    for metric in METRICS:
        if metric == "ratio":  # a ratio from a timed run; counted runs give their own below
            h = history[history["kind"] == "time"]
        else:
            h = history[history["kind"] == "instructions"].dropna(subset=[metric])
        for (k, m, dev, machine), g in h.groupby(["kernel", "method", "device", "machine"]):
            commits = g["commit_sha"].nunique()
            # a benchmark of the series: its group and shape (the method is the series')
            per = g.groupby(["group", "shape"])["commit_sha"].nunique()
            common = per[per == commits].index
            if not len(common):
                continue
            kept = g[pd.MultiIndex.from_frame(g[["group", "shape"]]).isin(common)].dropna(
                subset=[metric])
            if kept.empty:
                continue
            agg = kept.groupby(["run", "commit_sha", "commit_date"]).size().reset_index()
            agg["log"] = _run_levels(kept, metric, ["group", "shape"]).reindex(
                agg["run"]).to_numpy()
            for r in agg.itertuples():
                out.append({"kernel": k, "method": m, "device": dev, "machine": machine,
                            "metric": metric, "run": r.run, "commit": r.commit_sha,
                            "date": r.commit_date, "value": math.exp(r.log),
                            "benchmarks": len(common)})
    cols = ["kernel", "method", "device", "machine", "metric", "run", "commit", "date",
            "value", "benchmarks"]
    df = pd.DataFrame(out, columns=cols)
    return df.sort_values(["kernel", "method", "device", "metric", "date", "run"]) \
        .reset_index(drop=True)


def _run_levels(kept: pd.DataFrame, metric: str, by: str | list[str] = "benchmark",
                sweeps: int = 100) -> pd.Series:
    """Each run's mean log value over the benchmarks, where a benchmark a run lacks (left
    out as disturbed) is filled from the others: the additive fit log value = run level +
    benchmark offset (least squares, alternating), and a run's value the mean over the
    benchmarks of its level plus their offsets. With no value missing, the plain mean.
    ``by``: the column(s) that tell the benchmarks apart."""
    y = np.log(kept.pivot_table(index="run", columns=by, values=metric,
                                aggfunc="first").astype(float))
    seen = y.notna().to_numpy()
    v = y.to_numpy()
    level = np.nanmean(v, axis=1)
    offset = np.zeros(v.shape[1])
    for _ in range(sweeps if not seen.all() else 1):
        offset = np.nanmean(v - level[:, None], axis=0)
        level = np.nanmean(v - offset[None, :], axis=1)
    return pd.Series(level + offset.mean(), index=y.index)


def _energy(left: np.ndarray, right: np.ndarray) -> float:
    """Matteson and James's divergence of a split, scaled by m n / (m + n)."""
    m, n = len(left), len(right)
    return m * n / (m + n) * float(stats.energy_distance(left, right)) ** 2


def _significant(left: np.ndarray, right: np.ndarray, min_effect: float,
                 candidates: int = 1) -> bool:
    """Whether a split's two sides (log values) differ: their medians (``_level``) by more
    than ``min_effect``, and by Student's pooled t-test with p < ALPHA over ``candidates``.
    A side of fewer than ``MIN_SIDE`` values is not tested: its few runs may all be
    outliers (a noisy neighbour), which no test can tell from a step. Where both sides are
    constant (counts), the effect alone decides."""
    effect = abs(math.expm1(_level(right) - _level(left)))
    if effect <= min_effect:
        return False
    if len(left) + len(right) < MIN_VALUES:
        return False  # no spread to test against
    pooled = (((left - left.mean()) ** 2).sum() + ((right - right.mean()) ** 2).sum())
    if pooled <= 1e-24:  # both sides constant (counts): the effect alone decides
        return True
    if min(len(left), len(right)) < MIN_SIDE:
        return False  # a side its outlier runs alone could make
    # Student's two-sample t-test from the pooled spread above (scipy's ttest_ind warns of
    # precision loss on near-constant samples, which counts are, in scipy < 1.11)
    dof = len(left) + len(right) - 2
    se = math.sqrt(pooled / dof * (1 / len(left) + 1 / len(right)))
    p = 2 * float(stats.t.sf(abs(right.mean() - left.mean()) / se, dof))
    return bool(p < ALPHA / candidates)  # the best of `candidates` splits was tested


def _level(logs: np.ndarray) -> float:
    """A side's level (log values): their median, which a minority of outlier runs does
    not move (one run 20% slow among five moves their mean 4%)."""
    return float(np.median(logs))


def change_points(groups: list[np.ndarray], min_effect: float, tests: int = 1) -> list[int]:
    """E-divisive means over values grouped by commit (in commit order): the indices of
    the commits where a new level starts, ascending. ``tests``: how many series the caller
    searches as one family (a kernel's benchmarks): each split's t-test is held to ALPHA
    over the splits tried times that (Bonferroni), so the family's false alarms stay
    those of one series."""
    found: list[int] = []

    def search(lo: int, hi: int) -> None:
        if hi - lo < 2:
            return
        best, best_q = None, -1.0
        for j in range(lo + 1, hi):
            left = np.concatenate(groups[lo:j])
            right = np.concatenate(groups[j:hi])
            q = _energy(left, right)
            if q > best_q:
                best, best_q = j, q
        left = np.concatenate(groups[lo:best])
        right = np.concatenate(groups[best:hi])
        if best_q > 0 and _significant(left, right, min_effect,
                                       candidates=(hi - lo - 1) * tests):
            found.append(best)
            search(lo, best)
            search(best, hi)

    search(0, len(groups))
    return sorted(found)


def short(commit: str, n: int = 12) -> str:
    """A commit as shown: its first ``n`` characters, and "+dirty" where it is a dirty
    tree's point (``DIRTY``)."""
    dirty = commit.endswith(DIRTY)
    return commit[:len(commit) - len(DIRTY) if dirty else None][:n] + (DIRTY if dirty else "")


def _in_order(commits: pd.DataFrame) -> pd.DataFrame:
    """Commits by date, then name: "<sha>+dirty" (a dirty tree's run, stored with its
    commit's date) right after "<sha>"."""
    return commits.sort_values(["date", "commit"], kind="stable")


# the benchmark column of a change point of a kernel's series (``series``): the geometric
# mean of its benchmarks, not one of them
MEAN_OF = "geometric mean of {n} benchmarks"
POINT_COLUMNS = ["commit", "previous", "kernel", "benchmark", "device", "machine", "metric",
                 "before", "after", "change"]


@dataclass(frozen=True)
class HistoryReport:
    series: pd.DataFrame  # a kernel's geometric mean (``series``)
    points: pd.DataFrame  # POINT_COLUMNS: a step of a benchmark, or of a kernel's mean
    benchmarks: pd.DataFrame | None = None  # each benchmark's own (``benchmark_series``)


def benchmark_series(history: pd.DataFrame) -> pd.DataFrame:
    """A row per benchmark (``load_history``'s key: group, method, shape), metric and run
    that measured it: its value (``ratio`` of a timed run, ``instructions`` of a counted
    one), by kernel, method, device and machine as ``series``, and ``benchmark``, its
    name. A run that stored no value for it (left out as disturbed) is not a point of it:
    a benchmark's series is its own runs, whatever its kernel's other benchmarks did."""
    cols = ["kernel", "method", "device", "machine", "metric", "group", "shape",
            "benchmark", "run", "commit", "date", "value"]
    out = []
    for metric, kind in (("ratio", "time"), ("instructions", "instructions")):
        h = history[history["kind"] == kind].dropna(subset=[metric])
        out.append(pd.DataFrame({
            "kernel": h["kernel"], "method": h["method"], "device": h["device"],
            "machine": h["machine"], "metric": metric, "group": h["group"],
            "shape": h["shape"], "benchmark": h["benchmark"], "run": h["run"],
            "commit": h["commit_sha"], "date": h["commit_date"],
            "value": h[metric].astype(float)}, columns=cols))
    df = pd.concat(out, ignore_index=True)
    return df.sort_values(["kernel", "method", "device", "metric", "benchmark", "date",
                           "run"]).reset_index(drop=True)


def _steps(g: pd.DataFrame, metric: str, tests: int = 1) -> list[dict]:
    """The change points of one series (rows: commit, date, value; runs of a commit
    together), each its commit, the commit before it, the date, and the level either
    side (``_level``: the median of its runs, as the test compares them)."""
    order = _in_order(g.drop_duplicates("commit")[["commit", "date"]])
    commits, dates = list(order["commit"]), list(order["date"])
    groups = [np.log(g[g["commit"] == c]["value"].to_numpy(dtype=float)) for c in commits]
    cuts = change_points(groups, MIN_EFFECT[metric], tests)
    edges = [0, *cuts, len(commits)]
    rows = []
    for i, cut in enumerate(cuts):
        before = np.concatenate(groups[edges[i]:cut])
        after = np.concatenate(groups[cut:edges[i + 2]])
        rows.append({"commit": short(commits[cut]), "previous": short(commits[cut - 1]),
                     "date": dates[cut], "before": math.exp(_level(before)),
                     "after": math.exp(_level(after)),
                     "change": math.exp(_level(after) - _level(before))})
    return rows


def analyse(history: pd.DataFrame) -> HistoryReport:
    """The change points of each benchmark's own series (``benchmark_series``), the
    benchmarks of one kernel searched as a family (``change_points``' ``tests``), and of
    each kernel's geometric mean (``series``) where it has several benchmarks (with one, it
    is that benchmark's series). A step in one shape is found, and its size read, in that
    shape's series: the mean of three moves a third as far in log."""
    s = series(history)
    per = benchmark_series(history)
    rows = []
    family = ["kernel", "method", "device", "machine", "metric"]
    for (k, m, dev, machine, metric), fam in per.groupby(family, sort=False):
        names = fam["benchmark"].unique()
        for name in names:
            for p in _steps(fam[fam["benchmark"] == name], metric, tests=len(names)):
                rows.append({**p, "kernel": f"{k}.{m}", "benchmark": name, "device": dev,
                             "machine": machine, "metric": metric, "mean": False})
    for (k, m, dev, machine, metric), g in s.groupby(family, sort=False):
        n = int(g["benchmarks"].iloc[0])
        if n < 2:
            continue  # the series of its one benchmark, searched above
        for p in _steps(g, metric):
            rows.append({**p, "kernel": f"{k}.{m}", "benchmark": MEAN_OF.format(n=n),
                         "device": dev, "machine": machine, "metric": metric, "mean": True})
    points = pd.DataFrame(rows, columns=[*POINT_COLUMNS, "date", "mean"])
    # by kernel, then commit; at a commit the kernel's mean first, then its benchmarks
    points = points.sort_values(["kernel", "device", "machine", "metric", "date", "mean",
                                 "benchmark"], ascending=[True] * 5 + [False, True],
                                kind="stable")
    return HistoryReport(series=s, points=points[POINT_COLUMNS].reset_index(drop=True),
                         benchmarks=per)


def _figure(report: HistoryReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = _draw(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_commit(values: pd.DataFrame, order: list[str]) -> pd.Series:
    """The geometric mean of each commit's runs' values, for the commits of ``order`` that
    have one, in that order."""
    per = values.groupby("commit")["value"].apply(lambda v: math.exp(np.log(v).mean()))
    return per.reindex([c for c in order if c in per.index])


def _draw(report: HistoryReport):
    """The history figure: per metric, each kernel's series against the commit, dashed at
    its change points and its benchmarks'; and, dotted in its colour, the own series of
    each benchmark of it that a change point names (where the kernel has several: its
    step is not the mean's line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if (report.series["metric"] == m).any()]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(10, 3.6 * len(metrics)), squeeze=False)
    per_benchmark = report.benchmarks
    for ax, metric in zip(axes[:, 0], metrics):
        s = report.series[report.series["metric"] == metric]
        order = _in_order(s.drop_duplicates("commit"))["commit"].tolist()
        pos = {c: i for i, c in enumerate(order)}

        for (k, m, dev), g in s.groupby(["kernel", "method", "device"]):
            per = _by_commit(g, order)
            first = per.iloc[0]
            ys = per / first if metric == "instructions" else per
            line, = ax.plot([pos[c] for c in per.index], ys.to_numpy(), marker="o",
                            label=f"{k}.{m} ({dev})")
            pts = report.points[(report.points["kernel"] == f"{k}.{m}")
                                & (report.points["device"] == dev)
                                & (report.points["metric"] == metric)]
            at = {short(x): pos[x] for x in per.index}
            # a benchmark's step at a commit its kernel's mean has no value for (each
            # benchmark the mean holds left out there as disturbed): in the table, not drawn
            for c in pts["commit"].drop_duplicates():
                if c in at:
                    ax.axvline(at[c] - 0.5, color=line.get_color(), linestyle="--", alpha=0.7)
            if per_benchmark is None or int(g["benchmarks"].iloc[0]) < 2:
                continue  # its one benchmark's series is the line drawn
            mine = per_benchmark[(per_benchmark["kernel"] == k) & (per_benchmark["method"] == m)
                                 & (per_benchmark["device"] == dev)
                                 & (per_benchmark["metric"] == metric)]
            for name in pts["benchmark"].unique():
                own = _by_commit(mine[mine["benchmark"] == name], order)
                if own.empty:  # the kernel's mean (no benchmark's name), or a benchmark
                    continue  # with no value at a commit drawn
                ys = own / own.iloc[0] if metric == "instructions" else own
                ax.plot([pos[c] for c in own.index], ys.to_numpy(), marker="x",
                        linestyle=":", linewidth=1, color=line.get_color(), label=name)
        ax.set_xticks(range(len(order)), [short(c, 7) for c in order], rotation=45, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("time / reference" if metric == "ratio" else
                      "instructions / first commit's")
        ax.set_title(f"{metric}: change points dashed (E-divisive means, p < {ALPHA}); a "
                     "benchmark that stepped dotted", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _none_found() -> str:
    """What a change point needs, said where none was found."""
    return (f"None found. A change point needs at least {MIN_VALUES} runs in a series (over 2 "
            f"commits or more) and a split whose two sides' medians differ by more than the "
            f"least effect, each side of {MIN_SIDE} runs or more (fewer may all be runs a "
            f"noisy neighbour slowed; two sides of one constant count each need no more), with "
            f"a t-test p < {ALPHA} over the number of splits the series offers. With one run a "
            f"commit and a few percent noise that is some 8 commits, {MIN_SIDE} of them on the "
            f"shorter side of a step ({MIN_SIDE // 2} with two runs a commit): a step in the "
            f"last commits shows once later commits, or more runs of the same commits, are "
            f"added.")


def write_report(con: sqlite3.Connection, out: Path, kernel: str | None = None) -> HistoryReport:
    from handgrad.reports.tables import to_markdown

    history = load_history(con)
    if kernel:
        history = history[(history["kernel"] + "." + history["method"]).str.contains(
            kernel, regex=False)]
    if history.empty:
        raise ReportInputError("history: no stored results" + (
            f" for kernels matching {kernel!r}" if kernel else ""))
    report = analyse(history)
    out.mkdir(parents=True, exist_ok=True)
    report.points.to_csv(out / "change_points.csv", index=False)
    report.series.to_csv(out / "series.csv", index=False)
    report.benchmarks.to_csv(out / "benchmark_series.csv", index=False)
    _figure(report, out / "history.png")
    pts = report.points.copy()
    for c in ("before", "after", "change"):
        pts[c] = pts[c].map(lambda v: f"{v:.4g}")
    commits = _in_order(report.series.drop_duplicates("commit"))
    text = (f"# Benchmark history\n\n{len(commits)} commits, "
            f"{history['run'].nunique()} runs. Change points by E-divisive means (p < "
            f"{ALPHA}, least effect {MIN_EFFECT['ratio']:.0%} for a ratio, "
            f"{MIN_EFFECT['instructions']:.0%} for instructions, between the medians "
            f"either side, each side of {MIN_SIDE} runs or more) in each benchmark's own "
            f"series (a kernel's benchmarks tested as one family) and in each kernel's "
            f"geometric mean over its benchmarks: the commit where the new level starts, "
            f"and the benchmark, or the kernel's mean, that stepped.\n\n## Change points\n\n"
            + (to_markdown(pts) if len(pts) else _none_found()) + "\n\n## Series\n\n"
            + "![history](history.png)\n\n")
    wide = report.series.groupby(["kernel", "method", "device", "metric", "commit", "date"])[
        "value"].apply(lambda v: math.exp(np.log(v).mean())).reset_index()
    wide["name"] = wide["kernel"] + "." + wide["method"] + " " + wide["metric"]
    table = wide.pivot_table(index=["date", "commit"], columns="name", values="value")
    table = table.reset_index().drop(columns="date")
    table["commit"] = table["commit"].map(short)
    for c in table.columns[1:]:  # Series.map: DataFrame.map is pandas >= 2.1
        table[c] = table[c].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    text += to_markdown(table) + "\n"
    (out / "history.md").write_text(text, encoding="utf-8")
    return report


# ---------------------------------------------------------------- command line


def add_parser(sub) -> None:
    h = sub.add_parser("history", help="benchmark runs per commit in SQLite, and their "
                       "change points", description="A history of benchmark runs across "
                       "commits in one SQLite file: add stores pytest-benchmark JSON runs "
                       "under their commit; report reads the file and writes each kernel's "
                       "series and its change points. See each one's --help.")
    hs = h.add_subparsers(dest="history_command", required=True, parser_class=type(h))
    a = hs.add_parser("add", help="store benchmark runs under their commit",
                      description="Reads pytest-benchmark JSON files (timed, or counted with "
                      "--bench-instructions) and stores each run's gated kernel benchmarks "
                      "(ratio to the reference; instructions per call where counted) in the "
                      "SQLite file --db, created if absent, under the commit and date the "
                      "file records (commit_info) or --commit and --date give. A benchmark "
                      "whose test failed, one the report flags disturbed and one without a "
                      "ratio are named, not stored; a run already stored, or recorded from a "
                      "dirty tree (without --allow-dirty), is refused; a run recorded "
                      "without a commit is stored with a note on stderr. Prints a line per "
                      "run.")
    a.add_argument("files", nargs="+", help="pytest-benchmark JSON files (timed or "
                   "--bench-instructions)")
    a.add_argument("--db", required=True, help="the history file (SQLite; created if absent)")
    a.add_argument("--commit", help="the commit the runs measured (default: the file's "
                   "commit_info); a run recorded from a dirty tree is then taken as that "
                   "commit's code, as the caller says")
    a.add_argument("--date", help="that commit's date, ISO-8601 (default: the file's "
                   "commit_info)")
    a.add_argument("--allow-dirty", action="store_true", help="store a run recorded from a "
                   "working tree with uncommitted changes (commit_info.dirty) as a point of "
                   "its own, '<commit>+dirty', after its commit (default: refused)")
    r = hs.add_parser("report", help="each kernel's series and its change points",
                      description="Reads the history file --db and writes into --out "
                      "history.md with its figures and CSV: per benchmark and per kernel "
                      "(the geometric mean of its benchmarks) the series over the commits, "
                      "in date order, with the change points E-divisive means finds; prints "
                      "each change point. --kernel keeps the kernels whose kernel.method "
                      "contains it.")
    r.add_argument("--db", required=True, help="the history file")
    r.add_argument("--out", required=True, help="folder to write the report into")
    r.add_argument("--kernel", help="only kernels whose kernel.method contains this")


def _peek(path: str) -> dict:
    """A file's JSON for a look at its commit_info; {} where it is unreadable (``add_run``
    then refuses it by its own rule)."""
    try:
        data = read_json(path)
    except ReportInputError:
        return {}
    return data if isinstance(data, dict) else {}


def main(args: argparse.Namespace) -> int:
    if args.history_command == "add":
        db = Path(args.db)
        new = not db.exists() and not db.is_symlink()
        if not args.allow_dirty and args.commit is None:  # refused before any is stored
            dirty = [(f, d) for f in args.files if Path(f).is_file()
                     for d in [_peek(f)] if is_dirty(d)]
            if dirty:
                raise ReportInputError(dirty_refusal(*map(list, zip(*dirty))))
        con = connect(db)
        added = 0
        try:
            for f in args.files:
                left_out: list[str] = []
                shaken: list[str] = []
                alone: list[str] = []
                notes: list[str] = []
                n = add_run(con, f, args.commit, args.date, left_out, shaken,
                            args.allow_dirty, alone, notes)
                added += 1
                print(f"history: {f}: {n} benchmarks added to {args.db}" + (
                    f"; not stored, their test failed: {', '.join(left_out)}"
                    if left_out else "") + (
                    f"; not stored, disturbed (the report's flag: rerun them): "
                    f"{', '.join(shaken)}" if shaken else "") + (
                    f"; not stored, without a ratio: {', '.join(alone)}" if alone else ""))
                for line in notes:
                    print(f"note: {line}", file=sys.stderr)
        finally:
            con.close()
            if new and not added:  # refused before anything was stored: a history this
                db.unlink(missing_ok=True)  # add created holds nothing, so it goes
        return 0
    if not Path(args.db).is_file():
        raise ReportInputError(f"--db: {args.db} does not exist")
    con = connect(args.db)
    try:
        report = write_report(con, check_output_dir(args.out), args.kernel)
    finally:
        con.close()
    print(f"history: {report.series['commit'].nunique()} commits, "
          f"{len(report.points)} change point(s) -> {Path(args.out) / 'history.md'}")
    for p in report.points.itertuples():
        print(f"  {p.commit} {p.kernel} ({p.device}, {p.metric}): {p.before:.4g} -> "
              f"{p.after:.4g} ({p.change:.3f}x): {p.benchmark}")
    return 0
