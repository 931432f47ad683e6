"""The CI regression gate: compare a current benchmark run with a baseline on same-run
ratios to each kernel's reference, with a bootstrap confidence interval.

When the bench suite interleaved kernel and reference rounds (``extra_info.reference_data``,
the default), each round i gives a ratio k_i / r_i of two calls made moments apart, and

    change = median(k_i / r_i) now / median(k_i / r_i) at baseline

so drift of the machine, within a run as well as between runs, cancels out. The interval
resamples the two sets of round ratios with scipy.stats.bootstrap. Files without paired
rounds fall back to ``(median k_cur / median r_cur) / (median k_base / median r_base)``
from the reference's own benchmark, resampling all four samples (``stats.data``).

Only handgrad's kernels are gated; torch's own methods (``TORCH_METHOD_PREFIXES``) appear
in the report, not in the gate. A kernel regresses only when the whole interval lies above
``1 + threshold``: a slowdown must be both large and certain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from reports.load import ReportInputError, load_benchmarks
from reports.tables import to_markdown

# methods that are torch's, not handgrad's: timed for the report, never gated (a torch
# method measured against a handgrad kernel would gate torch, inverted)
TORCH_METHOD_PREFIXES = ("torch_", "gd_torch_", "autograd_", "plain_", "flop_counter",
                         "matmul_")

MAX_ROUNDS = 400  # per sample; more rounds add little to the interval and cost time


@dataclass(frozen=True)
class GateResult:
    table: pd.DataFrame
    regressions: int
    threshold: float
    confidence: float

    @property
    def passed(self) -> bool:
        return self.regressions == 0

    def markdown(self) -> str:
        verdict = "PASS: no regression" if self.passed else (
            f"FAIL: {self.regressions} regression(s)")
        head = (f"### handgrad benchmark gate: {verdict}\n\n"
                f"Change = (kernel / reference) now over (kernel / reference) at baseline; "
                f"regression when the {self.confidence:.0%} interval lies above "
                f"{1 + self.threshold:.2f}.\n")
        shown = self.table.copy()
        for c in ("ratio_base", "ratio_current", "change", "ci_low", "ci_high"):
            shown[c] = shown[c].map(lambda v: f"{v:.3f}")
        return head + "\n" + to_markdown(shown) + "\n"


def parse_threshold(text: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ReportInputError(f"--threshold: expected e.g. 10% or 0.1, got {text!r}") from None
    if not 0 <= value < 10:
        raise ReportInputError(f"--threshold: expected a fraction between 0 and 10, got {text!r}")
    return value


def _rounds(row) -> np.ndarray:
    data = row["data"]
    if not data:
        raise ReportInputError(
            f"{row['source']}: benchmark {row['name']!r} has no per-round data (stats.data); "
            "write the file with pytest --benchmark-json"
        )
    a = np.asarray(data, dtype=float)
    if a.size > MAX_ROUNDS:  # evenly spaced, keeping drift within the run represented
        a = a[np.linspace(0, a.size - 1, MAX_ROUNDS).astype(int)]
    return a


def _paired(row) -> np.ndarray | None:
    """Per-round ratios kernel / reference of an interleaved benchmark, else None."""
    ref = row.get("reference_data")
    if not isinstance(ref, list) or not row["data"] or len(ref) != len(row["data"]):
        return None
    a = np.asarray(row["data"], dtype=float) / np.asarray(ref, dtype=float)
    if a.size > MAX_ROUNDS:
        a = a[np.linspace(0, a.size - 1, MAX_ROUNDS).astype(int)]
    return a


def _paired_change(ratios_c, ratios_b, axis=-1):
    return np.median(ratios_c, axis=axis) / np.median(ratios_b, axis=axis)


def _change(kc, rc, kb, rb, axis=-1):
    med = np.median
    return (med(kc, axis=axis) / med(rc, axis=axis)) / (med(kb, axis=axis) / med(rb, axis=axis))


def gate(baseline: str, current: str, threshold: float = 0.10, confidence: float = 0.95,
         n_resamples: int = 2000, seed: int = 0) -> GateResult:
    """Compare two pytest-benchmark JSON files; raises ReportInputError on unusable input."""
    base, cur = load_benchmarks([baseline]), load_benchmarks([current])
    keys = ["group", "method"]
    for df, path in ((base, baseline), (cur, current)):
        if df[["method", "reference"]].isna().any().any():
            raise ReportInputError(f"{path}: benchmarks without extra_info method/reference; "
                                   "not a handgrad benchmark run")
    pairs = base.merge(cur, on=keys, suffixes=("_b", "_c"))
    pairs = pairs[(pairs["method"] != pairs["reference_c"])
                  & ~pairs["method"].str.startswith(TORCH_METHOD_PREFIXES)]
    if pairs.empty:
        raise ReportInputError(f"{baseline} and {current} have no kernel benchmarks in common")

    def ref_row(df, group, method):
        hit = df[(df["group"] == group) & (df["method"] == method)]
        return None if hit.empty else hit.iloc[0]

    rng = np.random.default_rng(seed)
    rows, regressions = [], 0
    for _, p in pairs.iterrows():
        kb = ref_row(base, p["group"], p["method"])
        kc = ref_row(cur, p["group"], p["method"])
        pb, pc = _paired(kb), _paired(kc)
        if pb is not None and pc is not None:
            samples, statistic, paired = (pc, pb), _paired_change, "rounds"
            ratio_b, ratio_c = float(np.median(pb)), float(np.median(pc))
        else:
            rb = ref_row(base, p["group"], p["reference_c"])
            rc = ref_row(cur, p["group"], p["reference_c"])
            if rb is None or rc is None:
                continue  # its reference is missing from one run: nothing to normalise by
            samples = (_rounds(kc), _rounds(rc), _rounds(kb), _rounds(rb))
            statistic, paired = _change, "medians"
            ratio_b = float(np.median(samples[2]) / np.median(samples[3]))
            ratio_c = float(np.median(samples[0]) / np.median(samples[1]))
        change = float(statistic(*samples))
        ci = stats.bootstrap(samples, statistic, n_resamples=n_resamples, vectorized=True,
                             paired=False, confidence_level=confidence, method="percentile",
                             random_state=rng).confidence_interval
        regressed = bool(ci.low > 1 + threshold)
        regressions += regressed
        rows.append({
            "benchmark": f"{p['group']} :: {p['method']}",
            "reference": p["reference_c"],
            "paired": paired,
            "ratio_base": ratio_b,
            "ratio_current": ratio_c,
            "change": change, "ci_low": float(ci.low), "ci_high": float(ci.high),
            "verdict": "REGRESSION" if regressed else (
                "faster" if ci.high < 1 - threshold else "ok"),
        })
    if not rows:
        raise ReportInputError(f"{baseline} and {current}: no kernel has its reference in both")
    table = pd.DataFrame(rows).sort_values("change", ascending=False).reset_index(drop=True)
    return GateResult(table=table, regressions=regressions, threshold=threshold,
                      confidence=confidence)
