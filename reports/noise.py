"""The wall-clock gate over several runs a side: between-process noise in the verdict.

One run's per-round interval (``reports.gate.gate``) cannot see how far a benchmark's
ratio to its reference moves from one process to the next, and on a shared 2-core machine
that is the larger noise (a Jacobian kernel measured at 1.22 and 2.05 ms in two processes
of identical code). So here each run (a separate process) gives one value per benchmark,
its log ratio to the reference (``ratio_to_reference``), and each kernel (kernel family,
method, device) one value per run, the mean of its benchmarks' log ratios over the
benchmarks every run has. For each of these, with m baseline runs and n current ones,

    d  = mean(log ratio now) - mean(log ratio at baseline),  change = exp(d)
    s^2 = (nu_cal sigma_cal^2 + within-run-set sum of squares) / (nu_cal + m + n - 2)
    interval = d -+ t(nu, confidence) s sqrt(1/m + 1/n)

where sigma_cal is the between-process spread an A/A calibration measured on unchanged
runs (``calibrate``, its file read with ``read_noise``; nu_cal = its runs - 1) and the
runs at hand add their own. The verdict (``limit`` = 1 + the threshold, the calibration's
for that benchmark or kernel when it has one):

* **REGRESSION**: significant (the interval lies above 1) AND the change beyond the limit;
* **ok**: the interval's top lies at or under the limit (a regression beyond it is
  excluded); **faster** when it lies wholly under 1 / limit (``gate.is_faster``, the rule
  of every gate);
* **inconclusive**: neither; the row says how many runs a side would decide it, if the
  change and the spread stayed what they are (``runs_to_decide``).

A calibration's spread sets each limit: the change that m runs against n show from noise
alone about once in a thousand comparisons, exp(3.09 sigma sqrt(1/m + 1/n)) - 1
(``noise_threshold``), never under the level's default (5% for a kernel, 20% for a single
benchmark). The calibration file stores sigma, its degrees of freedom and, for a reader,
the threshold of one run a side; and the fingerprint of each run it was derived from, so
that the command line warns when the gate is given one of them (``calibration_runs_given``).
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from handgrad.reports.gate import (
    _SETTINGS,
    MAX_DISTURBED,
    _accept,
    _drop_empty,
    _footer,
    _numbers,
    headline,
    is_faster,
    next_steps,
)
from handgrad.reports.load import (
    BENCHMARK_KEY,
    TEST_FAILED,
    ReportInputError,
    benchmark_names,
    check_distinct_benchmarks,
    failed_gated,
    failed_line,
    find_row,
    gated,
    load_benchmarks,
    read_json,
    self_referenced,
    self_referenced_line,
)
from handgrad.reports.record import DISTURBED, _present, ratio_to_reference
from handgrad.reports.tables import to_markdown

KERNEL_THRESHOLD = 0.05  # a kernel: all its benchmarks moved together by this much
BENCHMARK_THRESHOLD = 0.20  # one benchmark alone
NOISE_KIND = "handgrad-gate-noise"  # the calibration file's "kind"
NOISE_VERSION = 1
MIN_CALIBRATION_RUNS = 3
# a threshold from a spread: the change the runs at hand show from noise alone about once in
# a thousand comparisons (one-sided quantile 0.999 of a difference of two means)
NOISE_QUANTILE = 0.999
MAX_RUNS_TO_DECIDE = 99  # beyond this the row says "more than 99"

KEY = ["kernel", "method", "device"]


def _key(kernel, method, device) -> str:
    return f"{kernel}.{method}@{device}"


# ---------------------------------------------------------------- per-run ratios


_COLUMNS = ["side", "run", "source", "kernel", "group", "method", "shape", "device", "dtype",
            "threads", "benchmark", "reference", "ratio", "log_ratio", "ref_median", "log_own"]


def distinct_runs(paths, command: str) -> None:
    """ReportInputError when a run is given twice: the same file, or two files holding the
    same run (a copy; x.json and x.json.gz). A run counted twice is noise that never was."""
    from handgrad.reports.load import check_given_once

    check_given_once(paths, f"{command} takes separate runs, each a process of its own")
    runs_seen: dict[str, object] = {}
    for p in paths:
        fp = _run_fingerprint(str(p), _stamp(p))
        if fp in runs_seen:
            raise ReportInputError(f"{p}: holds the same run as {runs_seen[fp]}; {command} "
                                   "takes separate runs, each a process of its own")
        runs_seen[fp] = p


def run_ratios(paths, side: str = "") -> pd.DataFrame:
    """A row per (run, gated benchmark): its ratio to its reference in that run.

    A run is one file (one process); a gated benchmark is a kernel (role ``kernel``)
    measured against another method. Columns: side, run, source, kernel, group, method,
    shape, device, dtype, threads, benchmark (its name over these runs,
    ``load.benchmark_names``), reference, ratio, log_ratio, ref_median."""
    frames = []
    for i, path in enumerate(paths, 1):
        one = _one_run(str(path), _stamp(path)).copy()
        one["side"], one["run"] = side, i
        frames.append(one)
    if not frames:
        return pd.DataFrame(columns=_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    benchmark_names(out, by_device=True)  # a group timed on two devices: one each
    return out


def timed_ratio(df: pd.DataFrame, row) -> tuple[float, object] | None:
    """A kernel record's ratio to its reference in its run (``load_benchmarks``' frame),
    and the reference's rounds it was taken against: the paired rounds when interleaved,
    else the reference's own benchmark in the same run, group and device
    (``load.find_row``); None when there is no reference to normalise by (one timed on
    another device only is none) or the ratio is not positive."""
    if _present(row["reference_data"]):
        ref_rounds = row["reference_data"]
        ratio = ratio_to_reference(row["data"], ref_rounds)[0]
    else:
        hit = find_row(df, row["group"], row["reference"], row["shape"], row["device"])
        if hit is None:
            return None
        ref_rounds = hit["data"]
        ratio = ratio_to_reference(row["data"], None, ref_rounds)[0]
    return (ratio, ref_rounds) if ratio > 0 else None


def _stamp(path) -> tuple[int, int] | None:
    """What the per-file caches key on beside the path: modification time and size."""
    st = Path(path).stat() if Path(path).is_file() else None
    return (st.st_mtime_ns, st.st_size) if st else None


@functools.lru_cache(maxsize=256)
def _run_fingerprint(path: str, stamp) -> str:
    """The run a file holds (``load._fingerprint``), cached as ``_one_run`` is: the power
    analysis gates the same files many times."""
    from handgrad.reports.load import _fingerprint

    return _fingerprint(read_json(path))


@functools.lru_cache(maxsize=256)
def _failed_tests(path: str, stamp) -> tuple[tuple[str, bool], ...]:
    """The benchmarks of one file whose test failed after it measured, that the gate would
    have read (``load.failed_gated``), by (group, method, shape, device): left out of its
    ratios (the loader's default), said by ``failed_tests``."""
    df = load_benchmarks([path], failed_tests=True)
    check_distinct_benchmarks(df, by_device=True)
    hit = failed_gated(df, by_shape=True)  # by (group, method, shape): no device
    failed = df[df[TEST_FAILED]]
    return tuple(sorted({(k, hit[k[:3]]) for k in zip(
        failed["group"], failed["method"], failed["shape"], failed["device"])
        if k[:3] in hit}))


def failed_tests(paths, side: str, names: dict | None = None) -> list[str]:
    """A line per benchmark of a failed test in ``paths`` (runs of one side), by run;
    ``names``: the name of each (group, method, shape, bench_device) in the report
    (``load.DEVICE_KEY``; else "group :: method", with the shape where the run has
    several)."""
    out = []
    for i, path in enumerate(paths, 1):
        failed = _failed_tests(str(path), _stamp(path))
        keys = {k[:3] for k, _kernel in failed}
        several = Counter((g, m) for g, m, _ in keys)
        devices = Counter(k[:3] for k, _kernel in failed)  # one key on several devices
        for (g, m, s, d), kernel in failed:
            name = (names or {}).get((g, m, s, "")) or (names or {}).get((g, m, s, d)) or (
                (f"{g} [{s or 'no shape'}] :: {m}" if several[g, m] > 1
                 else f"{g} :: {m}") + (f"@{d}" if devices[g, m, s] > 1 else ""))
            out.append(failed_line(name, kernel, f"{side} run {i}, {path}",
                                   "left out of that run"))
    return out


@functools.lru_cache(maxsize=256)
def _self_referenced(path: str, stamp) -> tuple[tuple[str, str, str], ...]:
    """The (group, method, shape) of one file's kernels whose reference is themselves
    (``load.self_referenced``): never gated, said by ``self_referenced_lines``."""
    df = load_benchmarks([path])
    hit = df[self_referenced(df)]
    return tuple(sorted(set(zip(*(hit[c] for c in BENCHMARK_KEY)))))


def self_referenced_lines(paths) -> list[str]:
    """A line per kernel of ``paths`` whose reference is itself, once however many runs
    hold it: nothing to time it against, so not gated."""
    keys = sorted({k for p in paths for k in _self_referenced(str(p), _stamp(p))})
    if not keys:
        return []
    names = benchmark_names(pd.DataFrame(keys, columns=BENCHMARK_KEY))
    return [self_referenced_line(names[k]) for k in keys]


@functools.lru_cache(maxsize=256)
def _other_device_only(path: str, stamp) -> tuple[tuple[str, str, str, str, str], ...]:
    """The (group, method, shape, device, reference) of one file's gated kernels without a
    ratio because their group timed their reference on other devices only (``timed_ratio``
    has none across devices): said by ``other_device_lines``."""
    df = load_benchmarks([path])
    out = set()
    for (_, r), is_gated in zip(df.iterrows(), gated(df)):
        if (not is_gated or _present(r["reference_data"])
                or find_row(df, r["group"], r["reference"], r["shape"], r["device"])
                is not None):
            continue
        if ((df["group"] == r["group"]) & (df["method"] == r["reference"])).any():
            out.add((r["group"], r["method"], r["shape"], r["device"], r["reference"]))
    return tuple(sorted(out))


def other_device_lines(paths) -> list[str]:
    """A line per kernel of ``paths`` whose group timed its reference on other devices only,
    once however many runs hold it: no ratio across devices, so not gated."""
    keys = sorted({k for p in paths for k in _other_device_only(str(p), _stamp(p))})
    shapes = Counter((g, m) for g, m, _s in {k[:3] for k in keys})
    return [(f"{g} [{s or 'no shape'}] :: {m}" if shapes[g, m] > 1 else f"{g} :: {m}")
            + f"@{d}: no reference timed on {d} (its group timed {ref} on other devices "
            "only: no ratio across devices): not gated" for g, m, s, d, ref in keys]


@functools.lru_cache(maxsize=256)
def _one_run(path: str, stamp) -> pd.DataFrame:
    """One file's rows of ``run_ratios`` (cached on the path, its modification time and
    size: the power analysis reads each run many times). The benchmarks of failed tests
    are left out (``failed_tests`` names them)."""
    rows = []
    df = load_benchmarks([path])
    check_distinct_benchmarks(df, by_device=True)
    for (_, r), is_gated in zip(df.iterrows(), gated(df)):
        if not is_gated:
            continue
        timed = timed_ratio(df, r)
        if timed is None:
            continue
        ratio, ref_rounds = timed
        rows.append({
            "side": "", "run": 0, "source": path, "kernel": r["kernel"],
            "group": r["group"], "method": r["method"], "shape": r["shape"],
            "device": r["device"], "dtype": r["dtype"],
            # torch's CPU threads do not time a GPU kernel
            "threads": r["threads"] if r["device"] == "cpu" else None,
            "benchmark": f"{r['group']} :: {r['method']}",
            "reference": r["reference"],
            "ratio": float(ratio), "log_ratio": math.log(ratio),
            "ref_median": float(np.median(np.asarray(ref_rounds, dtype=float))),
            # the kernel's own time (the log of its median): its reference's code is the
            # same on both sides, so a kernel that regressed takes longer itself
            "log_own": _log_median(r["data"]),
        })
    return pd.DataFrame(rows, columns=_COLUMNS)


def _log_median(rounds) -> float:
    m = float(np.median(np.asarray(rounds, dtype=float)))
    return math.log(m) if m > 0 else math.nan


def _drop_disturbed(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop a (benchmark, run) whose torch reference took over DISTURBED times (or under
    1/DISTURBED) the median of its times over all runs: the machine was disturbed."""
    typical = runs.groupby("benchmark")["ref_median"].transform("median")
    moved = runs["ref_median"] / typical
    bad = ~((1 / DISTURBED < moved) & (moved < DISTURBED))
    notes = [f"{r.benchmark}: {r.side} run {r.run} disturbed (its reference {r.reference} "
             f"took {m:.2f}x its usual time): that run's value left out, the benchmark's "
             "other runs kept" for r, m in zip(runs[bad].itertuples(), moved[bad])]
    return runs[~bad], notes


def _runs_per_benchmark(runs: pd.DataFrame) -> pd.Series:
    """How many runs (side, run) measured each benchmark."""
    return runs.drop_duplicates(["benchmark", "side", "run"]).groupby("benchmark").size()


def kernel_runs(runs: pd.DataFrame, benchmarks) -> pd.DataFrame:
    """A row per (side, run, kernel): the mean of the kernel's log ratios in that run over
    ``benchmarks``, and how many."""
    kept = runs[runs["benchmark"].isin(benchmarks)]
    out = kept.groupby(["side", "run", *KEY], dropna=False).agg(
        log_ratio=("log_ratio", "mean"), log_own=("log_own", "mean"),
        benchmarks=("benchmark", "nunique")).reset_index()
    return out


# ---------------------------------------------------------------- calibration


def machine_of(path) -> dict:
    """What a calibration's spreads depend on: the CPU's brand, its cores, torch's threads."""
    info = read_json(path).get("machine_info") or {}
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
    return {"cpu": cpu.get("brand_raw") or info.get("processor") or info.get("machine"),
            "cpu_count": info.get("cpu_count"), "torch_threads": info.get("torch_threads")}


@dataclass(frozen=True)
class Noise:
    """One benchmark's or kernel's between-process spread of its log ratio."""

    sigma: float
    dof: int  # runs - 1
    threshold: float  # the limit is 1 + this


@dataclass(frozen=True)
class NoiseFile:
    kernels: dict[str, Noise] = field(default_factory=dict)  # kernel.method@device
    benchmarks: dict[str, Noise] = field(default_factory=dict)  # group :: method
    runs: int = 0
    machine: dict = field(default_factory=dict)
    source: str = ""
    # the runs it was derived from (_run_fingerprint); empty for a file written before
    # calibrate recorded them
    fingerprints: frozenset[str] = frozenset()


def noise_threshold(sigma: float, floor: float, m: int = 1, n: int = 1,
                    quantile: float = NOISE_QUANTILE) -> float:
    """The change that m runs against n show from a between-process spread ``sigma`` with
    probability 1 - ``quantile`` (about once in a thousand comparisons by default), never
    under ``floor``; rounded up to 0.1%."""
    z = float(stats.norm.ppf(quantile))
    derived = math.exp(z * sigma * math.sqrt(1 / m + 1 / n)) - 1
    return math.ceil(max(floor, derived) * 1000) / 1000


def _spread(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def calibrate(paths, threshold: float = KERNEL_THRESHOLD,
              benchmark_threshold: float = BENCHMARK_THRESHOLD) -> dict:
    """The calibration file's content from unchanged runs (the same code, each a separate
    process): each benchmark's spread of its log ratio over the runs that timed it, each
    kernel's over the runs that timed all its benchmarks (so runs of a part of the grid
    sharpen the spreads of the benchmarks they time), and the threshold of one run a side.
    Raises ReportInputError with fewer than MIN_CALIBRATION_RUNS runs."""
    if len(paths) < MIN_CALIBRATION_RUNS:
        raise ReportInputError(f"calibrate: expected at least {MIN_CALIBRATION_RUNS} "
                               f"unchanged runs (separate processes), got {len(paths)}")
    distinct_runs(paths, "calibrate")
    runs, disturbed = _drop_disturbed(run_ratios(paths, side="a"))
    if runs.empty:
        raise ReportInputError("calibrate: the runs have no kernel benchmarks (role kernel) "
                               "with a timed reference")
    bench, kern = {}, {}
    for name, g in runs.groupby("benchmark"):
        if len(g) >= MIN_CALIBRATION_RUNS:
            s = _spread(g["log_ratio"].to_numpy())
            bench[name] = {"sigma": round(s, 6), "dof": len(g) - 1,
                           "threshold": noise_threshold(s, benchmark_threshold)}
    # a kernel's value per run: the mean over all its benchmarks, from the runs that timed
    # every one of them (runs of a subset of the grid add to the benchmarks' spreads only)
    for (k, m, dev), g in runs.groupby(KEY, dropna=False):
        names = set(g["benchmark"])
        values = np.array([float(r["log_ratio"].mean()) for _, r in g.groupby(["side", "run"])
                           if set(r["benchmark"]) == names])
        if len(values) >= MIN_CALIBRATION_RUNS:
            s = _spread(values)
            kern[_key(k, m, dev)] = {"sigma": round(s, 6), "dof": len(values) - 1,
                                     "threshold": noise_threshold(s, threshold),
                                     "benchmarks": len(names)}
    machine = machine_of(paths[0])
    # which runs these are, so that the gate can say when it is given one of them
    # (``calibration_runs_given``); a reader of version 1 without this key ignores it
    fingerprints = [_run_fingerprint(str(p), _stamp(p)) for p in paths]
    return {"kind": NOISE_KIND, "version": NOISE_VERSION, "runs": len(paths),
            "machine": machine, "floors": {"kernel": threshold,
                                           "benchmark": benchmark_threshold},
            "run_fingerprints": fingerprints,
            "disturbed": disturbed, "kernels": kern, "benchmarks": bench}


def read_noise(path: str | Path) -> NoiseFile:
    """A calibration file (``python -m handgrad.reports calibrate``); ReportInputError
    naming the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportInputError(f"--noise: cannot read {path} ({exc.strerror})") from None
    except ValueError as exc:
        raise ReportInputError(f"--noise: {path} is not JSON ({exc})") from None
    return noise_from(data, str(path))


def noise_from(data, path: str) -> NoiseFile:
    """A calibration's content (``calibrate``'s dict) as the gate reads it; ``path`` names
    it in errors and in the report."""
    if not isinstance(data, dict) or data.get("kind") != NOISE_KIND:
        raise ReportInputError(f"--noise: {path} is not a calibration file (expected kind "
                               f"{NOISE_KIND!r}; write one with python -m handgrad.reports "
                               "calibrate)")
    if data.get("version") != NOISE_VERSION:
        raise ReportInputError(f"--noise: {path} has version {data.get('version')!r}; this "
                               f"handgrad reads version {NOISE_VERSION}")

    def entries(name):
        out = {}
        for k, v in (data.get(name) or {}).items():
            try:
                out[k] = Noise(float(v["sigma"]), int(v["dof"]), float(v["threshold"]))
            except (KeyError, TypeError, ValueError):
                raise ReportInputError(f"--noise: {path}: {name} entry {k!r}: expected "
                                       "sigma, dof and threshold, got "
                                       f"{v!r}") from None
            if not (out[k].sigma >= 0 and out[k].dof >= 1 and out[k].threshold >= 0):
                raise ReportInputError(f"--noise: {path}: {name} entry {k!r}: sigma and "
                                       "threshold must be >= 0 and dof >= 1, got "
                                       f"{v!r}")
        return out

    prints = data.get("run_fingerprints", [])  # absent from files of handgrad <= 0.4.0
    if not isinstance(prints, list) or not all(isinstance(f, str) for f in prints):
        raise ReportInputError(f"--noise: {path}: run_fingerprints: expected a list of "
                               f"strings (one per calibration run), got {prints!r}")
    return NoiseFile(kernels=entries("kernels"), benchmarks=entries("benchmarks"),
                     runs=int(data.get("runs") or 0), machine=data.get("machine") or {},
                     source=str(path), fingerprints=frozenset(prints))


def choose_noise(files: list[NoiseFile], currents) -> NoiseFile | None:
    """Of several calibrations (one a machine: ``gate --noise A.json B.json``), the one
    measured on the machine and setting of the current runs: the first whose recorded
    ``machine`` (CPU, core count, torch threads) agrees with the first current run's on
    every item both record. None agreeing: the first given, whose note in the report then
    names what differs (a spread measured on one CPU may not hold on another: the GD loop's
    spread was 2 to 5 times an AMD EPYC's on an Intel Xeon)."""
    if not files:
        return None
    here = machine_of(currents[0])
    for f in files:
        if all(here.get(k) == v for k, v in f.machine.items() if here.get(k) is not None):
            return f
    return files[0]


def calibration_runs_given(noise: NoiseFile | None, baselines, currents) -> list[str]:
    """A warning per run given to the gate (either side) that is one of the runs
    ``noise`` was derived from (by ``_run_fingerprint``): the limits were fitted on that
    run, so their noise estimate is optimistic for it. Nothing for a calibration that
    does not record its runs (written before calibrate did)."""
    if noise is None or not noise.fingerprints:
        return []
    return [f"{p} (the {side} run {i}) is one of the runs the calibration {noise.source} "
            "was derived from: its limits were fitted on that run, so their noise estimate "
            "is optimistic; calibrate on unchanged runs the gate does not judge"
            for side, paths in (("baseline", baselines), ("current", currents))
            for i, p in enumerate(paths, 1)
            if _run_fingerprint(str(p), _stamp(p)) in noise.fingerprints]


@functools.lru_cache(maxsize=256)
def _run_time(path: str, stamp) -> datetime | None:
    """When a run was taken (pytest-benchmark's ``datetime``), None where it says not."""
    value = read_json(path).get("datetime")
    try:
        t = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return t.replace(tzinfo=t.tzinfo or timezone.utc) if t else None


def sides_run_apart(noise: NoiseFile | None, baselines, currents) -> list[str]:
    """A warning where, with no calibration, every run of one side was taken before every
    run of the other: the gate over runs measures the spread between the runs of a side,
    and a shift of the machine between the two sessions (another load, clock or thermal
    state) is in none of them, so the interval can be too narrow and call that shift a
    change. Alternated runs (``handgrad.benchmark.alternate``) share the sessions; a
    calibration (``--noise``) from unchanged runs brings the spread between processes.
    Nothing where a run does not say when it was taken."""
    if noise is not None or len(baselines) < 2 or len(currents) < 2:
        return []
    times = [[_run_time(str(p), _stamp(p)) for p in side] for side in (baselines, currents)]
    if any(t is None for side in times for t in side):
        return []
    (b, c) = times
    if not (max(b) < min(c) or max(c) < min(b)):
        return []
    first, then = ("baseline", "current") if max(b) < min(c) else ("current", "baseline")
    return [f"every {first} run was taken before every {then} run, with no calibration "
            "(--noise): a shift of the machine between the two sessions is in no run's "
            "spread, so a change near the limit may be that shift; alternate the runs "
            "(python -m handgrad.benchmark.alternate) or calibrate (calibrate) on unchanged "
            "runs taken apart"]


# ---------------------------------------------------------------- the verdict


def _t(confidence: float, dof: float) -> float:
    return float(stats.t.ppf(1 - (1 - confidence) / 2, dof))


def runs_to_decide(d: float, s: float, limit: float, confidence: float,
                   cal_dof: int = 0) -> int | None:
    """Runs a side (equal) after which an interval of the same change ``d`` and spread
    ``s`` would decide: its top under log(limit) when d is under it, else its bottom above
    0. None when no number up to MAX_RUNS_TO_DECIDE would."""
    bar = math.log(limit)
    margin = bar - d if d < bar else d
    if margin <= 0:
        return None
    for k in range(2, MAX_RUNS_TO_DECIDE + 1):
        dof = cal_dof + 2 * k - 2
        if _t(confidence, dof) * s * math.sqrt(2 / k) < margin:
            return k
    return None


def _decide(k: int | None, m: int, n: int) -> str:
    """The `decide` cell of an inconclusive row of m baseline runs and n current ones, for
    ``k`` runs a side (``runs_to_decide``): how many more of each side. It had said "more
    runs" wherever k did not exceed both sides (2 runs a side needed, against 2 baseline
    runs and 1 current): not how many, nor of which side."""
    if k is None:
        return f"more than {MAX_RUNS_TO_DECIDE} runs a side"
    more_b, more_c = max(0, k - m), max(0, k - n)
    if more_b == more_c > 0:
        return f"about {k} runs a side ({more_b} more)"
    if more_b or more_c:
        said = [f"{x} more {side}" for x, side in ((more_b, "baseline"), (more_c, "current"))
                if x]
        return f"about {k} runs a side ({', '.join(said)})"
    return "more runs"  # k runs a side are given: the unequal sides' interval is wider


def _difference(b: np.ndarray, c: np.ndarray, confidence: float, sigma: float = 0.0,
                cal_dof: int = 0) -> tuple[float, float, float]:
    """(mean c - mean b, the pooled spread, the Student-t half-width at ``confidence``):
    the runs' own spread pooled with a calibration's ``sigma`` of ``cal_dof`` degrees of
    freedom. Spread and half-width NaN where no degree of freedom is left."""
    m, n = len(b), len(c)
    d = float(c.mean() - b.mean())
    dof = cal_dof + m + n - 2
    if dof == 0:
        return d, math.nan, math.nan
    ss = float(((b - b.mean()) ** 2).sum() + ((c - c.mean()) ** 2).sum())
    s = math.sqrt((sigma ** 2 * cal_dof + ss) / dof)
    return d, s, _t(confidence, dof) * s * math.sqrt(1 / m + 1 / n)


def _verdict_row(b: np.ndarray, c: np.ndarray, limit: float, confidence: float,
                 noise: Noise | None) -> dict:
    m, n = len(b), len(c)
    cal_dof = noise.dof if noise is not None else 0
    d, s, half = _difference(b, c, confidence, noise.sigma if noise is not None else 0.0,
                             cal_dof)
    row = {"runs": f"{m}/{n}", "change": math.exp(d), "limit": limit}
    if cal_dof + m + n - 2 == 0:  # one run a side and no calibration: no spread known
        row.update(ci_low=math.nan, ci_high=math.nan, spread=math.nan,
                   verdict="inconclusive", decide="2 runs a side or a calibration")
        return row
    lo, hi = d - half, d + half
    bar = math.log(limit)
    if lo > 0 and d > bar:
        verdict, decide = "REGRESSION", ""
    elif is_faster(math.exp(hi), limit):
        verdict, decide = "faster", ""
    elif hi <= bar:
        verdict, decide = "ok", ""
    else:
        k = runs_to_decide(d, s, limit, confidence, cal_dof)
        verdict = "inconclusive"
        decide = _decide(k, m, n)
    row.update(ci_low=math.exp(lo), ci_high=math.exp(hi), spread=s, verdict=verdict,
               decide=decide)
    return row


def _own(g: pd.DataFrame, side: str) -> np.ndarray:
    return g[g["side"] == side]["log_own"].to_numpy(dtype=float)


def _unless_reference_moved(row: dict, b: np.ndarray, c: np.ndarray,
                            confidence: float) -> dict:
    """A REGRESSION of the ratio kernel / reference whose kernel did not itself take
    longer is the reference's move, not the kernel's: its own time over the runs (each
    side's log medians; a t interval on their own spread, no calibration) is not above 1,
    so the row reads inconclusive and says so. The reference is torch's code, the same on
    both sides, yet on one machine torch.optim.SGD ran at ~21 or ~27 ms by process, and
    momentum_form1, its own time 0.99x, read 1.114 [1.036, 1.198] over 5 runs a side.
    A kernel that regressed is slower itself: both hold."""
    if row.get("verdict") != "REGRESSION":
        return row
    b, c = b[np.isfinite(b)], c[np.isfinite(c)]
    m, n = len(b), len(c)
    if m < 2 or n < 2:  # no spread of its own time: the ratio's verdict stands
        return row
    d, _, half = _difference(b, c, confidence)  # the runs' own spread, no calibration
    if d - half > 0:  # the kernel itself took longer: the regression stands
        return row
    return {**row, "verdict": "inconclusive",
            "decide": (f"its reference moved, not the kernel: the kernel's own time "
                       f"{math.exp(d):.3f} [{math.exp(d - half):.3f}, "
                       f"{math.exp(d + half):.3f}]")}


@dataclass(frozen=True)
class RunsGateResult:
    gate_name: ClassVar[str] = "the timed gate over runs"  # in warnings
    kernels: pd.DataFrame
    table: pd.DataFrame  # a row per benchmark
    confidence: float
    threshold: float
    benchmark_threshold: float
    calibration: str = ""  # the calibration file used, if any
    skipped: tuple[str, ...] = ()
    accepted: tuple = ()
    notes: tuple[str, ...] = ()

    def _count(self, verdict: str) -> int:
        return int((self.kernels["verdict"] == verdict).sum()
                   + (self.table["verdict"] == verdict).sum())

    @property
    def regressions(self) -> int:
        return self._count("REGRESSION")

    @property
    def inconclusive(self) -> int:
        """Kernels whose interval straddles their limit, plus the inconclusive benchmarks of
        kernels with no verdict of their own (no benchmark every run has): as in the gate of
        one run a side, an inconclusive benchmark of a kernel with its own verdict is shown,
        not counted: its kernel, judged over all its benchmarks, decides (a kernel read ok
        with one of its three benchmarks inconclusive was exit 3)."""
        return int((self.kernels["verdict"] == "inconclusive").sum()
                   + len(self._undecided_benchmarks()))

    def _undecided_benchmarks(self) -> pd.DataFrame:
        """The inconclusive benchmarks of kernels without a kernel row."""
        judged = set(zip(self.kernels["kernel"], self.kernels["method"],
                         self.kernels["device"]))
        t = self.table
        alone = np.array([k not in judged for k in zip(t["kernel"], t["method"],
                                                         t["device"])], dtype=bool)
        return t[(t["verdict"] == "inconclusive") & alone]

    @property
    def passed(self) -> bool:
        return self.regressions == 0

    def flagged(self) -> set[str]:
        return self._names("REGRESSION")

    def undecided(self) -> set[str]:
        """``kernel.method`` of what ``inconclusive`` counts."""
        k = self.kernels[self.kernels["verdict"] == "inconclusive"]
        b = self._undecided_benchmarks()
        return {f"{r.kernel}.{r.method}" for r in pd.concat([k, b]).itertuples()}

    def _names(self, verdict: str) -> set[str]:
        k = self.kernels[self.kernels["verdict"] == verdict]
        b = self.table[self.table["verdict"] == verdict]
        return {f"{r.kernel}.{r.method}" for r in pd.concat([k, b]).itertuples()}

    def markdown(self, accept_file: str | None = None) -> str:
        """The report; ``accept_file``: the --accept file its next steps name."""
        verdict = headline(self)
        cal = (f"the calibration {self.calibration}" if self.calibration else
               "no calibration (the runs' own spread only)")
        head = (f"### handgrad benchmark gate over runs: {verdict}\n\n"
                f"Change = (kernel / reference) now over at baseline, from the mean log "
                f"ratio of each side's runs (each a separate process); interval "
                f"{self.confidence:.0%} (Student t over the between-process spread: {cal}). "
                f"REGRESSION: the interval lies above 1 and the change beyond `limit` "
                f"(default {1 + self.threshold:.2f} for a kernel, all its benchmarks "
                f"together; {1 + self.benchmark_threshold:.2f} for one benchmark; a "
                f"calibration's own where it has one), and the kernel's own time "
                f"significantly above its baseline's (else its reference moved: "
                f"inconclusive). ok: the interval's top at or under "
                f"`limit`; faster: its top under 1 / `limit`. inconclusive: neither (`decide`: how "
                f"many runs a side would settle it).\n")

        def fmt(df, cols):
            shown = _drop_empty(df)
            if "benchmark" in shown:  # the benchmark's name says its method: it leads
                shown = shown.drop(columns=["kernel", "method"])
                shown.insert(0, "benchmark", shown.pop("benchmark"))
            else:
                shown.insert(0, "kernel", shown.pop("kernel") + "." + shown.pop("method"))
            return to_markdown(_numbers(shown, [c for c in cols if c in shown]))

        cols = ("change", "ci_low", "ci_high", "limit", "spread", "accepted_bound")
        text = (head + next_steps((self.kernels, self.table), "ci_low", self.accepted,
                                  accept_file, timed=True)
                + "\n#### Kernels\n\n" + fmt(self.kernels, cols) + "\n"
                + "\n#### Benchmarks\n\n" + fmt(self.table, cols) + "\n")
        notes = "".join(f"\n{n}\n" for n in self.notes)
        return text + notes + _footer(self.table, self.accepted, self.skipped,
                                      "Declared regressions (`accepted` up to their bound)",
                                      "Not gated")


def gate_runs(baselines, currents, threshold: float = KERNEL_THRESHOLD,
              benchmark_threshold: float = BENCHMARK_THRESHOLD, confidence: float = 0.95,
              noise: NoiseFile | None = None, accepted: dict | None = None,
              quantile: float = NOISE_QUANTILE) -> RunsGateResult:
    """The between-process gate of several baseline runs against several current ones
    (each a pytest-benchmark JSON of one process); ReportInputError on unusable input."""
    distinct_runs([*baselines, *currents], "the gate over runs")
    base = run_ratios(baselines, "baseline")
    cur = run_ratios(currents, "current")
    both = pd.concat([base, cur], ignore_index=True)
    if base.empty or cur.empty:
        empty = baselines if base.empty else currents
        raise ReportInputError(f"{empty[0]}: no kernel benchmarks (role kernel) with a timed "
                               "reference")
    # over both sides: a shape on one side only is its own; a group, method and shape a run
    # timed on several devices, one a device (load.DEVICE_KEY)
    names = benchmark_names(both, by_device=True)
    skipped = (failed_tests(baselines, "baseline", names)
               + failed_tests(currents, "current", names)
               + self_referenced_lines([*baselines, *currents])
               + other_device_lines([*baselines, *currents]))
    # a ratio to one reference (or in another dtype, on another device, with another thread
    # count) says nothing about a ratio to another
    unlike = set()
    for col in ("reference", *_SETTINGS):
        values = both.groupby("benchmark")[col].nunique()
        for name in values[values > 1].index.difference(sorted(unlike)):
            unlike.add(name)
            skipped.append(f"{name}: its {col} differs between the runs" + (
                "" if col == "reference" else ": another measurement, not a change of the "
                "kernel"))
    both = both[~both["benchmark"].isin(unlike)]
    total = both["benchmark"].nunique()
    both, disturbed = _drop_disturbed(both)
    if len(disturbed) > MAX_DISTURBED * (len(both) + len(disturbed)):
        raise ReportInputError(f"{len(disturbed)} (benchmark, run) values of {total} "
                               f"benchmarks ran while the machine was disturbed; rerun")
    sides = both.groupby("benchmark")["side"].nunique()
    one_side = sides[sides < 2].index
    skipped += [f"{name}: measured on one side only" for name in sorted(one_side)]
    both = both[~both["benchmark"].isin(one_side)]
    if both.empty:
        raise ReportInputError("the baseline and current runs have no kernel benchmark in "
                               "common")
    noise = noise or NoiseFile()

    rows = []
    for name, g in both.groupby("benchmark", sort=False):
        first = g.iloc[0]
        cal = noise.benchmarks.get(name)
        b = g[g["side"] == "baseline"]["log_ratio"].to_numpy()
        c = g[g["side"] == "current"]["log_ratio"].to_numpy()
        limit = 1 + (noise_threshold(cal.sigma, benchmark_threshold, len(b), len(c), quantile)
                     if cal else benchmark_threshold)
        rows.append({"kernel": first["kernel"], "method": first["method"],
                     "device": first["device"], "benchmark": name,
                     **_unless_reference_moved(_verdict_row(b, c, limit, confidence, cal),
                                               _own(g, "baseline"), _own(g, "current"),
                                               confidence)})
    table = pd.DataFrame(rows).sort_values("change", ascending=False).reset_index(drop=True)

    # a kernel's value per run: its mean log ratio over the benchmarks every run has
    counts = _runs_per_benchmark(both)
    n_runs = len(baselines) + len(currents)
    complete = set(counts[counts == n_runs].index)
    krows = []
    for (k, m, dev), g in kernel_runs(both, complete).groupby(KEY, dropna=False):
        cal = noise.kernels.get(_key(k, m, dev))
        b = g[g["side"] == "baseline"]["log_ratio"].to_numpy()
        c = g[g["side"] == "current"]["log_ratio"].to_numpy()
        limit = 1 + (noise_threshold(cal.sigma, threshold, len(b), len(c), quantile)
                     if cal else threshold)
        krows.append({"kernel": k, "method": m, "device": dev,
                      "benchmarks": int(g["benchmarks"].iloc[0]),
                      **_unless_reference_moved(_verdict_row(b, c, limit, confidence, cal),
                                                _own(g, "baseline"), _own(g, "current"),
                                                confidence)})
    kernels = pd.DataFrame(krows, columns=None if krows else [
        *KEY, "benchmarks", "runs", "change", "limit", "ci_low", "ci_high", "spread",
        "verdict", "decide"])
    if not kernels.empty:
        kernels = kernels.sort_values("change", ascending=False).reset_index(drop=True)
    accepted = accepted or {}
    _accept(table, "ci_low", accepted)
    _accept(kernels, "ci_low", accepted)
    notes = []
    if noise.source:
        missing_b = sorted(set(table["benchmark"]) - set(noise.benchmarks))
        missing_k = sorted({_key(*k) for k in zip(kernels["kernel"], kernels["method"],
                                                  kernels["device"])} - set(noise.kernels))
        if missing_b or missing_k:
            notes.append(f"Not in the calibration {noise.source} (default limits, the runs' own "
                         f"spread): {len(missing_k)} kernel(s) and {len(missing_b)} "
                         f"benchmark(s)" + (f", e.g. `{(missing_k or missing_b)[0]}`" ) + "; "
                         "calibrate again to cover them.")
        here = machine_of(currents[0])
        moved = [k for k, v in here.items() if k in noise.machine
                 and noise.machine.get(k) != v]
        if moved:
            said = ", ".join(f"{k} {noise.machine[k]!r} there, {here[k]!r} here"
                             for k in moved)
            notes.append(f"The calibration was measured on another machine or setting "
                         f"({said}): its spreads may not hold here. Time the runs as the "
                         "calibration's were, or calibrate on this machine (python -m "
                         "handgrad.reports calibrate on unchanged runs, each a process) and "
                         "give that as --noise.")
    return RunsGateResult(kernels=kernels, table=table, confidence=confidence,
                          threshold=threshold, benchmark_threshold=benchmark_threshold,
                          calibration=noise.source, skipped=tuple(skipped + disturbed),
                          accepted=tuple(accepted.values()), notes=tuple(notes))
