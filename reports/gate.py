"""The CI regression gate: compare a current benchmark run with a baseline on same-run
ratios to each kernel's reference, with confidence intervals.

When the bench suite interleaved kernel and reference rounds (``extra_info.reference_data``,
the default), each round i gives a ratio k_i / r_i of two calls made moments apart, and
for each benchmark (a kernel in one group: shapes, device)

    change = median(k_i / r_i) now / median(k_i / r_i) at baseline

so drift of the machine, within a run as well as between runs, cancels out. Its interval
resamples the two sets of round ratios with scipy.stats.bootstrap. Files without paired
rounds fall back to ``(median k_cur / median r_cur) / (median k_base / median r_base)``
from the reference's own benchmark, resampling all four samples (``stats.data``).

Two verdicts, because the per-round interval cannot see one thing: a single benchmark's
ratio also moves between processes of unchanged code (measured on a 2-core machine: up to
~15% for small GEMM-bound shapes, from one process to the next, while the same kernel's
other shapes held still). So

* a **kernel** (kernel family, method, device) regresses when the geometric mean of its
  benchmarks' changes has a confidence interval (Student t over the benchmarks' log
  changes, scipy.stats.ttest_1samp; three benchmarks or more) wholly above
  ``1 + threshold`` (default 10%): a real regression moves all of a kernel's shapes,
  process noise moves one;
* a single **benchmark** regresses when its own interval lies wholly above
  ``1 + benchmark_threshold`` (default 20%), which catches a slowdown confined to one
  shape, and kernels timed in fewer than three groups. A benchmark that declares its
  between-process noise (``extra_info["gate_noise"]``) is held to
  ``1 + max(benchmark_threshold, gate_noise)`` instead. Like a kernel, it is ok when
  its interval's top lies at or under its limit, and inconclusive when the interval
  straddles it; an inconclusive benchmark counts towards exit 3 only for a kernel judged
  per benchmark only (fewer than three benchmarks), whose verdict it is.

Either is **faster** when its interval's top lies under ``1 / limit`` (``is_faster``, the
rule of every gate: 1/1.10 = 0.909 for a limit of 1.10).

Only kernels are gated (records whose ``role`` is ``kernel``, measured against another
method); references appear in the report, not in the gate. A kernel benchmark of one run
only, or one whose reference, dtype, device or threads changed, is listed, not gated. A
benchmark whose reference itself took over ``DISTURBED`` times (or under 1/``DISTURBED``) its
baseline time ran on a disturbed machine: it is listed, not gated; too many such
benchmarks make the input unusable (exit 2).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from handgrad.reports.load import (
    DEVICE_KEY,
    TEST_FAILED,
    ReportInputError,
    _fingerprint,
    benchmark_names,
    check_distinct_benchmarks,
    check_given_once,
    failed_gated,
    failed_line,
    find_row,
    gated,
    load_benchmarks,
    read_json,
    self_referenced,
    self_referenced_line,
)
from handgrad.reports.record import DISTURBED, paired_ratios, ratio_to_reference
from handgrad.reports.tables import to_markdown

MAX_ROUNDS = 400  # per sample; more rounds add little to the interval and cost time


MIN_BENCHMARKS = 3  # a kernel-level interval needs at least this many benchmarks
# a reference (torch, unchanged) whose median moved by more than reports.record.DISTURBED
# between the runs marks its benchmark as disturbed: not gated, listed. Over MAX_DISTURBED
# of them: the input is unusable.
MAX_DISTURBED = 0.25


@dataclass(frozen=True)
class GateResult:
    gate_name: ClassVar[str] = "the timed gate"  # in warnings, where several gates run
    table: pd.DataFrame  # a row per benchmark
    kernels: pd.DataFrame  # a row per kernel (kernel family, method, device)
    threshold: float
    benchmark_threshold: float
    confidence: float
    skipped: tuple[str, ...] = ()  # kernels in both runs that could not be compared, and why
    accepted: tuple = ()  # the declared regressions (Accepted) the gate was given

    @property
    def regressions(self) -> int:
        """Kernels plus single benchmarks that regressed."""
        return int((self.kernels["verdict"] == "REGRESSION").sum()
                   + (self.table["verdict"] == "REGRESSION").sum())

    @property
    def passed(self) -> bool:
        return self.regressions == 0

    @property
    def inconclusive(self) -> int:
        """Kernels whose interval straddles their limit: neither ok nor a regression
        (not a failure: the command line's exit 3, as the gate over runs'); plus the
        inconclusive benchmarks of kernels judged per benchmark only (fewer than
        MIN_BENCHMARKS), whose benchmarks are their only verdict. An inconclusive
        benchmark of a kernel with its own verdict is shown, not counted: its kernel
        decides."""
        return int((self.kernels["verdict"] == "inconclusive").sum()
                   + len(self._undecided_benchmarks()))

    def _undecided_benchmarks(self) -> pd.DataFrame:
        """The inconclusive benchmarks of kernels judged per benchmark only."""
        alone = self.kernels[self.kernels["verdict"] == "per benchmark only"]
        keys = set(zip(alone["kernel"], alone["method"], alone["device"]))
        t = self.table
        mine = np.array([k in keys for k in zip(t["kernel"], t["method"], t["device"])],
                        dtype=bool)
        return t[(t["verdict"] == "inconclusive") & mine]

    def flagged(self) -> set[str]:
        """``kernel.method`` of everything that regressed, at either level."""
        k = self.kernels[self.kernels["verdict"] == "REGRESSION"]
        b = self.table[self.table["verdict"] == "REGRESSION"]
        return {f"{r.kernel}.{r.method}" for r in pd.concat([k, b]).itertuples()}

    def undecided(self) -> set[str]:
        """``kernel.method`` of the inconclusive kernels, and of kernels judged per
        benchmark only with an inconclusive benchmark."""
        k = self.kernels[self.kernels["verdict"] == "inconclusive"]
        return {f"{r.kernel}.{r.method}"
                for r in pd.concat([k, self._undecided_benchmarks()]).itertuples()}

    def _benchmark_view(self) -> pd.DataFrame:
        # the verdict's bar, 1 + threshold: the shared one, or a benchmark's declared noise
        view = self.table.drop(columns=["kernel", "method", "device", "threshold"])
        verdict = view.pop("verdict")
        view["limit"] = 1 + self.table["threshold"]
        view["verdict"] = verdict
        return view

    def markdown(self, accept_file: str | None = None) -> str:
        """The report; ``accept_file``: the --accept file its next steps name."""
        head = (f"### handgrad benchmark gate: {headline(self)}\n\n"
                f"Change = (kernel / reference) now over (kernel / reference) at baseline. "
                f"A kernel regresses when the {self.confidence:.0%} interval of the geometric "
                f"mean of its benchmarks' changes lies above {1 + self.threshold:.2f}, and is "
                f"ok when it lies at or under it; inconclusive when it straddles it "
                f"(`decide`: more runs a side, judged by the gate over runs); with fewer "
                f"than {MIN_BENCHMARKS} benchmarks it has no interval: `per benchmark only`, "
                f"its benchmarks' verdicts decide. A single benchmark regresses when its "
                f"own interval lies above {1 + self.benchmark_threshold:.2f}, or the higher "
                f"limit of a benchmark that declares its own noise (column `limit`); it is "
                f"ok when its interval's top lies at or under its limit, and inconclusive "
                f"when the interval straddles it (undecided, exit 3, only where its kernel "
                f"is judged per benchmark only: a kernel with its own verdict decides). "
                f"Either is faster when its interval's top lies under 1 / its limit "
                f"({1 / (1 + self.threshold):.3f} for {1 + self.threshold:.2f}, "
                f"{1 / (1 + self.benchmark_threshold):.3f} for "
                f"{1 + self.benchmark_threshold:.2f}).\n")

        def fmt(df, cols):
            shown = _drop_empty(df)
            return to_markdown(_numbers(shown, [c for c in cols if c in shown]))

        text = (head + next_steps((self.kernels, self.table), "ci_low", self.accepted,
                                  accept_file, timed=True)
                + "\n#### Kernels\n\n"
                + fmt(self.kernels, ("change", "ci_low", "ci_high", "worst", "accepted_bound"))
                + "\n\n#### Benchmarks\n\n"
                + fmt(self._benchmark_view(),
                      ("ratio_base", "ratio_current", "change", "ci_low", "ci_high",
                       "accepted_bound", "limit"))
                + "\n")
        return text + _footer(self.table, self.accepted, self.skipped,
                              "Declared regressions (`accepted` up to their bound)", "Not gated")


def headline(result) -> str:
    """A timed gate's verdict for its report's first line, naming what decided it (the
    ``kernel.method`` of every regression, else of every undecided row): a CI reader
    sees which kernel failed before any table."""
    if result.regressions:
        return (f"FAIL: {result.regressions} regression(s) in "
                f"{', '.join(sorted(result.flagged()))}")
    if result.inconclusive:
        return (f"INCONCLUSIVE: {result.inconclusive} undecided in "
                f"{', '.join(sorted(result.undecided()))}; no regression")
    return "PASS: no regression"


def _numbers(df: pd.DataFrame, cols, digits: int = 3) -> pd.DataFrame:
    """A copy of ``df`` with the number columns ``cols`` as text of ``digits`` decimals
    (a missing value as an empty cell), for a markdown table."""
    shown = df.copy()
    for c in cols:
        shown[c] = shown[c].map(lambda v: "" if pd.isna(v) else f"{v:.{digits}f}")
    return shown


def _drop_empty(df: pd.DataFrame, cols=("accepted_bound",)) -> pd.DataFrame:
    """``df`` without those of ``cols`` that hold no value: an --accept file none of whose
    lines names a row of the table leaves its ``accepted_bound`` column empty, a column a
    reader can only wonder about."""
    return df.drop(columns=[c for c in cols if c in df and df[c].isna().all()])


def next_steps(frames, low_col: str, accepted, accept_file: str | None = None,
               timed: bool = True) -> str:
    """What the reader of a failed gate does next: a paragraph with a line per
    ``kernel.method`` that regressed in any of ``frames`` (rows with a ``verdict``, its
    ``kernel`` and ``method``, and ``low_col``: the interval's low end, or a count's
    change, the value a declared bound is held to): fix it, or declare it with the least
    bound that passes this run (the highest ``low_col`` of its REGRESSION rows, rounded up
    to 0.001); where it is declared already, that its bound is too low for this run.
    ``accepted``: the declarations (``Accepted``) the gate was given; ``accept_file``: the
    --accept file to name. Empty where nothing regressed."""
    worst: dict[str, float] = {}
    for df in frames:
        for r in df[df["verdict"] == "REGRESSION"].itertuples():
            name = f"{r.kernel}.{r.method}"
            worst[name] = max(worst.get(name, -math.inf), float(getattr(r, low_col)))
    if not worst:
        return ""
    declared = {a.name: a for a in accepted}
    where = f"`{accept_file}`" if accept_file else "the file given as --accept"
    what = "`ci_low`" if timed else "change"
    margin = ("; a timed change moves from run to run: leave it some room" if timed else
              "; a count moves by about 0.1% between runs")
    lines = []
    for name, low in sorted(worst.items()):
        need = math.ceil(round(low * 1000, 6)) / 1000  # at or above low, 3 decimals
        a = declared.get(name)
        if a is not None:
            lines.append(f"- `{name}`: declared up to {a.bound:g}x ({a.where or where}), "
                         f"under this run's {need:.3f} (the highest {what} of its "
                         f"REGRESSION rows): fix the kernel, or, if this much is meant, "
                         f"raise the bound there to {need:.3f} or more{margin}.\n")
        elif need >= 10:
            lines.append(f"- `{name}`: {need:.3f} (the highest {what} of its REGRESSION "
                         "rows) is beyond what a declaration accepts (under 10x): fix the "
                         "kernel.\n")
        else:
            lines.append(f"- `{name}`: not meant? Its REGRESSION rows below name the "
                         f"shapes; fix the kernel. Meant (a check that must cost "
                         f"something)? Declare it in {where}: `{name} {need:.3f} <reason>`, "
                         f"{need:.3f} being the least bound that passes this run (the highest "
                         f"{what} of its REGRESSION rows){margin}.\n")
    return "\n**Next**:\n\n" + "".join(lines)


def _footer(table: pd.DataFrame, accepted, skipped, accepted_title: str,
            skipped_title: str) -> str:
    """A gate report's tail: the declared regressions that name a gated kernel.method,
    then what was left out and why."""
    names = {f"{r.kernel}.{r.method}" for r in table.itertuples()}
    used = [a for a in accepted if a.name in names]
    text = ""
    if used:
        text += f"\n{accepted_title}:\n\n" + "".join(
            f"- `{a.name}` up to {a.bound:g}x: {a.reason}\n" for a in used)
    if skipped:
        text += f"\n{skipped_title}:\n\n" + "".join(f"- {s}\n" for s in skipped)
    return text


def _percentage(text: str) -> float | None:
    """'15%', '+15 %' -> 15.0 (in percent); None when ``text`` has no % sign or no number
    before it. The one reading of a percentage, for thresholds and declared bounds."""
    t = str(text).strip()
    if not t.endswith("%"):
        return None
    try:
        return float(t[:-1])
    except ValueError:
        return None


def _plain(x: float) -> str:
    """``x`` as short text, without float noise (1.15 - 1 -> '0.15')."""
    return f"{round(x, 9):g}"


def parse_threshold(text: str, option: str = "--threshold") -> float:
    """'10%' or '0.1' -> 0.1: a percentage (up to under 1000%: '150%' -> 1.5), or a bare
    fraction under 1. A bare number of 1 or more is refused, never read as a percentage
    beyond 100% (1.15 is the --accept file's factor form of 15%)."""
    t = str(text).strip()
    pct = _percentage(t)
    if pct is not None:
        value = pct / 100
    else:
        try:
            value = float(t)
        except ValueError:
            raise ReportInputError(f"{option}: expected e.g. 10% or 0.1, got {text!r}"
                                   ) from None
        if 1 <= value < 1000:  # beyond, no spelling is in range: the error below
            def spelt(fraction):  # a bare fraction is one only under 1
                return _plain(fraction * 100) + "%" + (
                    f", or {_plain(fraction)}" if fraction < 1 else "")

            if value == 1:  # no limit of 1x is meant: a percentage without its %
                how = f"write 1% for 1 percent, or {spelt(0)} for none"
            elif value < 10:  # a factor, 1 + the threshold (or a percentage without its %)
                how = (f"write {spelt(value - 1)}, for a limit of {_plain(value)}x ({t}% "
                       f"for {t} percent)")
            else:  # a percentage without its %
                how = f"write {spelt(value / 100)}"
            raise ReportInputError(f"{option}: got {text!r}: a threshold is a fraction or a "
                                   f"percentage: {how}")
    if not 0 <= value < 10:
        raise ReportInputError(f"{option}: expected a fraction from 0 to under 1 (e.g. 0.1) "
                               f"or a percentage from 0% to under 1000% (e.g. 10%), got "
                               f"{text!r}")
    return value


def is_faster(high: float, limit: float) -> bool:
    """Whether a change whose upper end (an interval's top, or a count's change) is
    ``high`` is "faster" against the regression limit ``limit`` (1 + the threshold): it lies
    under 1 / limit, as far under 1 in ratio terms as the limit is above it (0.909 for a
    limit of 1.10). The one rule of every gate: the one-pair gate's kernels and benchmarks,
    the instruction-count gate and the gate over runs (reports.noise)."""
    return high < 1 / limit


def _thin(rounds) -> np.ndarray:
    """At most MAX_ROUNDS evenly spaced rounds (drift within the run stays represented)."""
    a = np.asarray(rounds, dtype=float)
    if a.size > MAX_ROUNDS:
        a = a[np.linspace(0, a.size - 1, MAX_ROUNDS).astype(int)]
    return a


def _paired_change(ratios_c, ratios_b, axis=-1):
    return np.median(ratios_c, axis=axis) / np.median(ratios_b, axis=axis)


def _change(kc, rc, kb, rb, axis=-1):
    med = np.median
    return (med(kc, axis=axis) / med(rc, axis=axis)) / (med(kb, axis=axis) / med(rb, axis=axis))


def _interval_verdict(low: float, high: float, limit: float) -> str:
    """A kernel's or a single benchmark's verdict from its interval [low, high] against
    ``limit``: REGRESSION when the interval lies above the limit, faster when its top lies
    under 1 / limit (``is_faster``), ok when its top lies at or under the limit,
    inconclusive when it straddles the limit (a benchmark's shown, not counted in the exit
    status where its kernel has a verdict of its own: ``GateResult.inconclusive``)."""
    if low > limit:
        return "REGRESSION"
    if is_faster(high, limit):
        return "faster"
    if high <= limit:
        return "ok"
    return "inconclusive"


# what an inconclusive kernel of the one-pair gate says to do
UNDECIDED = ("more runs a side (separate processes), judged by the gate over runs: "
             "gate --baseline B1 B2 B3 --current C1 C2 C3")


def _kernel_rows(table: pd.DataFrame, threshold: float, confidence: float) -> pd.DataFrame:
    """A row per (kernel, method, device): geometric mean of its benchmarks' changes and a
    Student-t interval over their log changes (three benchmarks or more)."""
    rows = []
    for (kernel, method, device), g in table.groupby(["kernel", "method", "device"],
                                                         dropna=False):
        logs = np.log(g["change"].to_numpy())
        lo = hi = np.nan
        if len(logs) >= MIN_BENCHMARKS and np.ptp(logs) < 1e-12:  # identical: no spread
            lo = hi = float(np.exp(logs.mean()))
        elif len(logs) >= MIN_BENCHMARKS:
            ci = stats.ttest_1samp(logs, 0.0).confidence_interval(confidence)
            lo, hi = float(np.exp(ci.low)), float(np.exp(ci.high))
        # too few benchmarks for an interval: judged by each benchmark's own; else the
        # straddling interval is what this one pair of runs cannot tell
        verdict = ("per benchmark only" if len(logs) < MIN_BENCHMARKS
                   else _interval_verdict(lo, hi, 1 + threshold))
        decide = UNDECIDED if verdict == "inconclusive" else ""
        rows.append({
            "kernel": kernel, "method": method, "device": device, "benchmarks": len(logs),
            "change": float(np.exp(logs.mean())), "ci_low": lo, "ci_high": hi,
            "worst": float(g["change"].max()), "verdict": verdict, "decide": decide,
        })
    out = pd.DataFrame(rows)
    return out.sort_values("change", ascending=False).reset_index(drop=True)


# what a benchmark ran on: a ratio measured in another dtype, on another device or with
# another thread count is another measurement, not a change of the kernel
_SETTINGS = ("dtype", "device", "threads")


def _unlike(p, name: str) -> str | None:
    """Why the paired row ``p`` (``<column>_b``/``_c``) compares unlike measurements, or
    None: its reference, dtype, device or threads differ between the two runs."""
    if p["reference_b"] != p["reference_c"]:
        return f"{name}: reference changed from {p['reference_b']} to {p['reference_c']}"
    for col in _SETTINGS:  # each a field every record has (reports.record)
        if col == "threads" and p["device_c"] != "cpu":
            continue  # torch's CPU threads do not time a GPU kernel
        if p[f"{col}_b"] != p[f"{col}_c"]:
            return (f"{name}: {col} changed from {p[f'{col}_b']} to {p[f'{col}_c']}: "
                    "another measurement, not a change of the kernel")
    return None


def _load_passed(baseline: str, current: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str],
                                                      set]:
    """Both runs without the benchmarks of failed tests (``extra_info.test_failed``), which
    are listed by name and side (``load.failed_gated``): a failed test's timing is not a
    measurement of a right kernel. Each frame has a ``benchmark`` column, its name in the
    report (``load.benchmark_names``, over both runs). Returns the two frames, the lines
    (the failed tests, then the kernels whose reference is themselves) and the keys
    (``load.DEVICE_KEY``) of the failed kernels listed."""
    why = "give the baseline and the current run, two runs"
    check_given_once([baseline, current], why)
    if _fingerprint(read_json(baseline)) == _fingerprint(read_json(current)):
        raise ReportInputError(f"{current}: holds the same run as {baseline} (identical "
                               f"benchmarks); {why}")
    base = load_benchmarks([baseline], failed_tests=True)
    cur = load_benchmarks([current], failed_tests=True)
    for df in (base, cur):
        check_distinct_benchmarks(df, by_device=True)
    # a benchmark is its group, method and shape, and its device where a run timed those on
    # several (load.DEVICE_KEY): each device's compared with the same device's
    names = benchmark_names(base, cur, by_device=True)
    sides: dict[tuple, list[str]] = {}
    kinds: dict[tuple, bool] = {}
    for side, df in (("the baseline", base), ("the current run", cur)):
        hit = failed_gated(df, by_shape=True)  # by (group, method, shape): no device
        failed = df[df[TEST_FAILED]]
        for key in zip(*(failed[c] for c in DEVICE_KEY)):
            if key[:3] in hit:
                sides.setdefault(key, []).append(side)
                kinds[key] = hit[key[:3]]
    lines = [failed_line(names[k], kinds[k], " and ".join(sides[k]))
             for k in sorted(sides, key=names.get)]
    base, cur = base[~base[TEST_FAILED]], cur[~cur[TEST_FAILED]]
    alone = sorted(set(base.loc[self_referenced(base), "benchmark"])
                   | set(cur.loc[self_referenced(cur), "benchmark"]))
    lines += [self_referenced_line(n) for n in alone]
    return base, cur, lines, {k for k, kernel in kinds.items() if kernel}


def _one_side(base: pd.DataFrame, cur: pd.DataFrame, pairs: pd.DataFrame, what: str,
              said: set = frozenset()) -> list[str]:
    """The gated benchmarks of one run that the other lacks, by name and side: a benchmark
    whose test failed, was deselected or was renamed looks like this, and is said (those in
    ``said``, keys listed already as failed tests, are not said again)."""
    def names(df):
        return {k: n for k, n in zip(zip(*(df[c] for c in DEVICE_KEY)), df["benchmark"])
                if k not in said}
    both = names(pairs)
    b, c = names(base), names(cur)
    out = [f"{b[k]}: {what} in the baseline only (missing from the current run: did "
           "its test fail, or was it deselected or renamed?)"
           for k in sorted(set(b) - set(both), key=b.get)]
    out += [f"{c[k]}: {what} in the current run only (new, or missing from the "
            "baseline)" for k in sorted(set(c) - set(both), key=c.get)]
    return out


def gate(baseline: str, current: str, threshold: float = 0.10, confidence: float = 0.95,
         n_resamples: int = 2000, seed: int = 0,
         benchmark_threshold: float = 0.20,
         accepted: dict | None = None) -> GateResult:
    """Compare two pytest-benchmark JSON files; raises ReportInputError on unusable input.
    ``accepted``: declared regressions (``read_accepted``), passed up to their bound."""
    base, cur, failed, failed_names = _load_passed(baseline, current)

    kb, kc = base[gated(base)], cur[gated(cur)]
    pairs = kb.merge(kc.drop(columns="benchmark"), on=DEVICE_KEY, suffixes=("_b", "_c"))
    if pairs.empty:
        raise ReportInputError(f"{baseline} and {current} have no kernel benchmarks "
                               "(role kernel) of passing tests in common")
    skipped = failed + _one_side(kb, kc, pairs, "measured", failed_names)
    # a ratio to one reference (or in another dtype, device, thread count) says nothing
    # about a ratio to another
    unlike = [_unlike(p, p["benchmark"]) for _, p in pairs.iterrows()]
    unlike_all = [u for u in unlike if u]
    skipped += unlike_all
    pairs = pairs[[u is None for u in unlike]]

    rng = np.random.default_rng(seed)
    rows, disturbed = [], []
    untimed: dict[tuple, set] = {}  # (group, reference) -> the sides that lack its timing
    for _, p in pairs.iterrows():
        kb = find_row(base, p["group"], p["method"], p["shape"], p["device_b"])
        kc = find_row(cur, p["group"], p["method"], p["shape"], p["device_c"])
        if kb["interleaved"] and kc["interleaved"]:
            samples = (_thin(paired_ratios(kc["data"], kc["reference_data"])),
                       _thin(paired_ratios(kb["data"], kb["reference_data"])))
            statistic = _paired_change
            ref_b, ref_c = kb["reference_data"], kc["reference_data"]
            ratio_b, kind = ratio_to_reference(kb["data"], ref_b)
            ratio_c, _ = ratio_to_reference(kc["data"], ref_c)
        else:
            # on the kernel's device: a time on another is no ratio of the kernel's
            rb = find_row(base, p["group"], p["reference_c"], p["shape"], p["device_b"])
            rc = find_row(cur, p["group"], p["reference_c"], p["shape"], p["device_c"])
            if rb is None or rc is None:  # nothing to normalise by
                skipped.append(f"{p['benchmark']}: its reference "
                               f"{p['reference_c']} was not timed in both runs"
                               + _elsewhere(base, cur, p))
                untimed.setdefault((p["group"], p["reference_c"]), set()).update(
                    side for side, r in (("the baseline", rb), ("the current run", rc))
                    if r is None)
                continue
            samples = tuple(_thin(r["data"]) for r in (kc, rc, kb, rb))
            statistic = _change
            ref_b, ref_c = rb["data"], rc["data"]
            # both runs by medians, even where one of them was interleaved: like with like
            ratio_b, kind = ratio_to_reference(kb["data"], None, ref_b)
            ratio_c, _ = ratio_to_reference(kc["data"], None, ref_c)
        # ratio_b and ratio_c are the ratios the report shows, by their one definition;
        # the change is their quotient
        # the reference is torch's code, the same in both runs: if its time moved by more
        # than DISTURBED, the machine was disturbed while this benchmark ran (another
        # process, throttling) and its ratio says nothing about the kernel
        moved = float(np.median(ref_c) / np.median(ref_b))
        if not 1 / DISTURBED < moved < DISTURBED:
            disturbed.append(f"{p['benchmark']}: disturbed, its reference "
                             f"{p['reference_c']} took {moved:.2f}x its baseline time: not "
                             "gated, a change of it unseen; run both sides again to gate it")
            continue
        change = ratio_c / ratio_b
        ci = stats.bootstrap(samples, statistic, n_resamples=n_resamples, vectorized=True,
                             paired=False, confidence_level=confidence, method="percentile",
                             random_state=rng).confidence_interval
        # a benchmark whose kernel and reference do unlike work can declare in extra_info
        # how far its ratio moves between processes of unchanged code (gate_noise); its own
        # verdict then uses that, never less than benchmark_threshold
        own = kc["gate_noise"]
        bench_thr = max(benchmark_threshold, 0.0 if pd.isna(own) else float(own))
        rows.append({
            "kernel": p["kernel_c"], "method": p["method"], "device": p["device_c"],
            "benchmark": p["benchmark"],
            "reference": p["reference_c"],
            "ratio_kind": kind,
            "ratio_base": ratio_b,
            "ratio_current": ratio_c,
            "change": change, "ci_low": float(ci.low), "ci_high": float(ci.high),
            "verdict": _interval_verdict(float(ci.low), float(ci.high), 1 + bench_thr),
            "threshold": bench_thr,
        })
    if len(disturbed) > MAX_DISTURBED * (len(rows) + len(disturbed)):
        raise ReportInputError(
            f"{current} against {baseline}: {len(disturbed)} of {len(rows) + len(disturbed)} "
            f"benchmarks ran while the machine was disturbed (their torch reference took over "
            f"{DISTURBED:g}x or under 1/{DISTURBED:g} of its baseline time); rerun both")
    skipped += disturbed
    if not rows:
        if len(unlike_all) == len(unlike):  # every pair measured otherwise: say how
            raise ReportInputError(
                f"{baseline} and {current}: no kernel benchmark was measured alike in both: "
                f"{unlike_all[0]}" + (f" (and {len(unlike_all) - 1} more)"
                                      if len(unlike_all) > 1 else ""))
        raise ReportInputError(f"{baseline} and {current}: no kernel has the same reference, "
                               "timed, in both" + _untimed_line(untimed))
    table = pd.DataFrame(rows).sort_values("change", ascending=False).reset_index(drop=True)
    kernels = _kernel_rows(table, threshold, confidence)
    accepted = accepted or {}
    _accept(table, "ci_low", accepted)
    _accept(kernels, "ci_low", accepted)
    return GateResult(table=table, kernels=kernels,
                      threshold=threshold, benchmark_threshold=benchmark_threshold,
                      confidence=confidence, skipped=tuple(skipped),
                      accepted=tuple(accepted.values()))


def _elsewhere(base: pd.DataFrame, cur: pd.DataFrame, p) -> str:
    """What a skipped kernel's line adds where its group timed its reference on other
    devices only: " on cuda (no reference timed on cuda; its group timed it on 'cpu'
    only: no ratio across devices)". Empty where the reference was timed on no device."""
    dev = p["device_c"]
    other = sorted({d for df in (base, cur) for d in df.loc[
        (df["group"] == p["group"]) & (df["method"] == p["reference_c"]), "device"]} - {dev})
    if not other:
        return ""
    return (f" on {dev} (no reference timed on {dev}; its group timed it on "
            f"{' and '.join(map(repr, other))} only: no ratio across devices)")


def _untimed_line(untimed: dict[tuple, set]) -> str:
    """What the gate's 'no kernel has the same reference' error adds: the groups whose
    kernel names a reference that no benchmark of the group timed (and where), and how to
    time it. Empty when ``untimed`` is."""
    if not untimed:
        return ""
    both = {"the baseline", "the current run"}
    said = [f"group {g!r} has no benchmark of its reference {ref!r} in "
            + (" or ".join(sorted(sides)) if sides != both else "either run")
            for (g, ref), sides in sorted(untimed.items())]
    more = f" (and {len(said) - 3} more)" if len(said) > 3 else ""
    return (": " + "; ".join(said[:3]) + more + ". A kernel's measure(..., "
            "role='kernel', reference=...) needs its reference timed: pass reference_fn= to "
            "measure (interleaved rounds), or time the reference in the same group with "
            "measure(..., role='reference')")


# ---------------------------------------------------------------- declared regressions


@dataclass(frozen=True)
class Accepted:
    """A regression taken on purpose: ``kernel.method`` may cost up to ``bound`` times its
    baseline (instructions, or time over its reference), for ``reason``."""

    name: str
    bound: float
    reason: str
    where: str = field(default="", compare=False)  # "file:line" that declared it


def read_accepted(path: str | None) -> dict[str, Accepted]:
    """The declared regressions of a versioned file, one a line::

        # kernel.method  bound  reason
        backprop.manual  1.04   every y checked for NaN/inf: one more reduction a call
        jacobian.manual_forward  +4%  the same bound, as a percentage

    ``kernel.method`` has exactly one dot (every device and shape of that kernel). A bound
    is a factor above 1 and under 10 (1.04) or a percentage above 0% and under 900%, no
    space before the %, with or without a + (4%, +4%, 2.5%: 1 + it / 100; 4% is the limit
    a ``--threshold`` of 4% sets). The reason is the rest of the line, required.

    ``#`` starts a comment anywhere on a line; blank lines are skipped; a malformed line
    (or a kernel.method declared twice) is a ReportInputError that names the file, the
    line and what was expected. .ci/accepted-regressions' header says the same: keep them
    in step (verify/test_reports.py reads its examples)."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ReportInputError(f"--accept: cannot read {path} ({exc.strerror})") from None
    out: dict[str, Accepted] = {}
    for no, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        where = f"{path}:{no}"
        if len(parts) < 3 or parts[0].count(".") != 1:
            raise ReportInputError(f"{where}: expected 'kernel.method bound reason', got "
                                   f"{line!r}")
        name, bound, reason = parts
        if reason.startswith("%"):  # '4 %': the bound would be read as the factor 4
            raise ReportInputError(f"{where}: bound of {name}: write the percentage without "
                                   f"a space ({bound}%), got {bound!r} then {reason!r}")
        value = _bound(bound)
        if not 1 < value < 10:
            raise ReportInputError(f"{where}: bound of {name}: expected a factor between 1 "
                                   f"and 10 (e.g. 1.05) or a percentage above 0% (e.g. 5%, "
                                   f"+5%), got {bound!r}")
        if name in out:
            raise ReportInputError(f"{where}: {name} declared twice")
        out[name] = Accepted(name, value, reason.strip(), where)
    return out


def unmatched_accepted(accepted: dict[str, Accepted], table: pd.DataFrame,
                       gate_name: str = "this gate",
                       elsewhere: set[str] | None = None) -> list[str]:
    """A line per declared regression that names no kernel.method the gate ``gate_name``
    compared (a typo accepted nothing, silently), with the closest name it did compare.
    ``elsewhere``: the kernel.method names another gate given the same file compares
    (``accepted_elsewhere``; .ci/gate gives its timed gate the instruction counts' runs): a
    line naming one of them is not warned, and the warning says both were searched.
    Warned, not refused: one versioned file serves runs of a subset of the kernels
    (GATE_K, a CPU run of a file declaring a CUDA kernel)."""
    names = {f"{k}.{m}" for k, m in zip(table["kernel"], table["method"])} if len(
        table) else set()
    known = sorted(names | (elsewhere or set()))
    where = f"compared by {gate_name}" + (" or gated in the --accept-elsewhere runs"
                                          if elsewhere is not None else "")
    out = []
    for a in accepted.values():
        if a.name in known:
            continue
        close = difflib.get_close_matches(a.name, known, n=1)
        out.append(f"{a.where or '--accept'}: {a.name} matches no kernel.method {where}, "
                   "so it accepts nothing" + (
                       f" (did you mean {close[0]}?)" if close else ""))
    return out


def left_to_later(unmatched: list[str], gate_name: str) -> str:
    """What ``--accept-later FILE`` writes: the warnings ``unmatched`` (``unmatched_accepted``
    of the gate ``gate_name``) that it left to the gate that follows, each a line
    ``warning: ...`` saying that no gate checked it, for a flow to print where that gate
    ends before its verdict (.ci/gate prints it on exit then: its timed stage can die
    before its gate runs). Empty when nothing was left."""
    return "".join(
        f"warning: {w}; {gate_name} left it to the gate that follows (--accept-later), "
        "which ended before its verdict, so no gate checked it: right only if it names a "
        "kernel that gate alone compares (a compiled or captured method), else fix the "
        "name or remove the line\n" for w in unmatched)


def accepted_elsewhere(paths) -> set[str]:
    """The ``kernel.method`` of every gated kernel (role kernel, measured against another
    method) in the benchmark runs ``paths``: what another gate given the same --accept
    file compares (``unmatched_accepted``). ReportInputError on an unusable file."""
    names: set[str] = set()
    for path in paths:
        df = load_benchmarks([path])
        kept = df[gated(df)]
        names |= {f"{k}.{m}" for k, m in zip(kept["kernel"], kept["method"])}
    return names


def with_warnings(markdown: str, warnings) -> str:
    """A gate's report with ``warnings`` (the lines the command line also prints on stderr)
    right under its first line, the verdict: a CI reader of the step summary or the report
    file sees them there, not only in the job's log. ``markdown`` as it is without any."""
    if not warnings:
        return markdown
    first, _, rest = markdown.partition("\n\n")
    said = "".join(f"- **warning**: {w}\n" for w in warnings)
    return f"{first}\n\n{said}\n{rest}"


def _bound(text: str) -> float:
    """A declared bound as a factor: '1.04', '4%' or '+4%' -> 1.04; NaN when it is
    neither a number nor a percentage."""
    pct = _percentage(text)
    if pct is not None:
        return 1 + pct / 100  # 0% or below: a factor of 1 or less, refused as 0.9 is
    try:
        return float(text)
    except ValueError:
        return math.nan


def _accept(verdicts: pd.DataFrame, low_col: str, accepted: dict[str, Accepted]) -> None:
    """Turn REGRESSION into 'accepted' where a declared bound covers it (in place): a
    regression whose ``low_col`` (the interval's low end, or the count's change) lies at
    or under its declared bound passes, and the row names the bound."""
    if not accepted or verdicts.empty:
        return
    bounds, notes = [], []
    for r in verdicts.itertuples(index=False):
        a = accepted.get(f"{r.kernel}.{r.method}")
        bounds.append(np.nan if a is None else a.bound)
        covered = (a is not None and r.verdict == "REGRESSION"
                   and getattr(r, low_col) <= a.bound)
        notes.append("accepted" if covered else r.verdict)
    verdicts["accepted_bound"] = bounds
    verdicts["verdict"] = notes


# ---------------------------------------------------------------- instruction counts

INSTRUCTION_THRESHOLD = 0.02  # counts are deterministic to ~0.1%: 2% is far above noise


@dataclass(frozen=True)
class InstructionGateResult:
    gate_name: ClassVar[str] = "the instruction-count gate"
    table: pd.DataFrame  # a row per counted handgrad benchmark in both runs
    metric: str  # "own": the kernel's own count; "ratio": kernel over reference
    threshold: float
    accepted: tuple[Accepted, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def regressions(self) -> int:
        return int((self.table["verdict"] == "REGRESSION").sum())

    @property
    def passed(self) -> bool:
        return self.regressions == 0

    def flagged(self) -> set[str]:
        t = self.table[self.table["verdict"] == "REGRESSION"]
        return {f"{r.kernel}.{r.method}" for r in t.itertuples()}

    def markdown(self, accept_file: str | None = None) -> str:
        """The report; ``accept_file``: the --accept file its next steps name."""
        verdict = "PASS: no regression" if self.passed else (
            f"FAIL: {self.regressions} regression(s) in {', '.join(sorted(self.flagged()))}")
        what = ("each kernel's own instructions per call (both runs: the same torch and "
                "Python)" if self.metric == "own" else
                "instructions per call over the reference's (the runs' torch or Python "
                "differ, so each count is normalised by its torch reference's)")
        head = (f"### handgrad instruction-count gate: {verdict}\n\n"
                f"Change = {what}, now over baseline. A benchmark regresses when its change "
                f"exceeds {1 + self.threshold:.3f}, unless a declared regression covers it "
                f"(`accepted`, up to its bound); it is faster under "
                f"{1 / (1 + self.threshold):.3f} (1 / {1 + self.threshold:.3f}), else ok.\n")
        shown = _drop_empty(self.table.drop(columns=["kernel", "method"]))
        for c in ("change", "accepted_bound"):
            if c in shown:
                shown[c] = shown[c].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
        text = (head + next_steps((self.table,), "change", self.accepted, accept_file,
                                  timed=False)
                + "\n" + to_markdown(shown) + "\n")
        return text + _footer(self.table, self.accepted, self.skipped,
                              "Declared regressions", "Not compared")


def _run_info(path: str) -> dict:
    from handgrad.reports.load import read_json

    info = read_json(path).get("machine_info") or {}
    return {"torch": info.get("torch"), "python": info.get("python_version")}


def is_instruction_run(path: str) -> bool:
    """Whether a benchmark file holds instruction counts (--bench-instructions)."""
    df = load_benchmarks([path])
    return bool((df["timer"] == "callgrind").any())


def instruction_gate(baseline: str, current: str, threshold: float = INSTRUCTION_THRESHOLD,
                     accepted: dict[str, Accepted] | None = None) -> InstructionGateResult:
    """Compare the instruction counts of two ``--bench-instructions`` runs. The metric is
    each handgrad kernel's own count when both runs used the same torch and Python (a
    count has no noise to cancel), else its count over its torch reference's."""
    accepted = accepted or {}
    base, cur, failed, failed_names = _load_passed(baseline, current)
    for path, df in ((baseline, base), (current, cur)):
        if not (df["timer"] == "callgrind").any():
            raise ReportInputError(f"{path}: no instruction counts of passing tests (write "
                                   "it with pytest --bench-instructions: handgrad's own "
                                   "suite, pytest bench --bench-instructions)")
    same = _run_info(baseline) == _run_info(current)
    metric = "own" if same else "ratio"

    def counted(df):
        keep = gated(df) & df["instructions"].notna()
        return df[keep]

    b, c = counted(base), counted(cur)
    pairs = b.merge(c.drop(columns="benchmark"), on=DEVICE_KEY, suffixes=("_b", "_c"))
    skipped = failed + _one_side(b, c, pairs, "counted", failed_names)
    rows = []
    for p in pairs.itertuples(index=False):
        unlike = _unlike(p._asdict(), p.benchmark)
        if unlike:
            skipped.append(unlike)
            continue
        if metric == "ratio" and (pd.isna(p.reference_instructions_b)
                                  or pd.isna(p.reference_instructions_c)):
            skipped.append(f"{p.benchmark}: its reference was not counted in both")
            continue
        vb = float(p.instructions_b) / (1.0 if metric == "own" else
                                        float(p.reference_instructions_b))
        vc = float(p.instructions_c) / (1.0 if metric == "own" else
                                        float(p.reference_instructions_c))
        change = vc / vb
        rows.append({
            "kernel": p.kernel_c, "method": p.method,
            "benchmark": p.benchmark,
            "instructions_base": int(p.instructions_b),
            "instructions_current": int(p.instructions_c),
            "reference_base": (None if pd.isna(p.reference_instructions_b)
                               else int(p.reference_instructions_b)),
            "reference_current": (None if pd.isna(p.reference_instructions_c)
                                  else int(p.reference_instructions_c)),
            "change": change,
            "verdict": "REGRESSION" if change > 1 + threshold else (
                "faster" if is_faster(change, 1 + threshold) else "ok"),
        })
    if not rows:
        raise ReportInputError(f"{baseline} and {current} have no counted handgrad kernel "
                               "benchmarks in common")
    table = pd.DataFrame(rows).sort_values("change", ascending=False).reset_index(drop=True)
    _accept(table, "change", accepted)
    return InstructionGateResult(table=table, metric=metric, threshold=threshold,
                                 accepted=tuple(accepted.values()), skipped=tuple(skipped))
