"""The verification report: `pytest verify --verify-report PATH` records every comparison's
worst error against its tolerance; this turns those records into a precision-headroom
table per kernel, reference and dtype, and draws the step sweeps (the central difference's
truncation/rounding V-curve per kernel) with their fitted order and predicted best step.

headroom = 1 / worst_ratio, where worst_ratio = max |a - e| / (atol + rtol |e|) over a
comparison's elements: a comparison passes while worst_ratio < 1, and a headroom of 100
means its errors could grow 100-fold before it failed. A kernel's row reports its smallest
headroom over all its comparisons (the one nearest to failing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from handgrad.reports.load import ReportInputError, read_json_any
from handgrad.reports.record import VERIFY_KIND, RecordError, SweepRecord, VerifyRecord


def is_verify_report(data: dict) -> bool:
    return isinstance(data, dict) and data.get("handgrad") == VERIFY_KIND


def load_records(paths: list[str | Path]) -> pd.DataFrame:
    """A row per recorded comparison (every ``VerifyRecord`` field), with the file it came
    from; ReportInputError names the file and record that break the definition."""
    rows = []
    for path in paths:
        data = read_json_any(path)
        if not is_verify_report(data) or not isinstance(data.get("records"), list):
            raise ReportInputError(f"{path}: not a handgrad verify report "
                                   "(write one with pytest verify --verify-report PATH)")
        for i, raw in enumerate(data["records"]):
            try:
                record = VerifyRecord.from_dict(raw)
            except (RecordError, TypeError) as exc:
                raise ReportInputError(f"{path}: records[{i}]: {exc}") from None
            rows.append({**record.as_dict(), "source": str(path)})
    if not rows:
        raise ReportInputError(f"{', '.join(map(str, paths))}: no comparisons recorded")
    return pd.DataFrame(rows)


def headroom_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (kernel, reference, dtype): comparisons, failures, the worst ratio and
    its headroom, the largest absolute and relative errors, and the tolerance used."""
    rows = []
    for (kernel, reference, dtype), g in records.groupby(["kernel", "reference", "dtype"]):
        worst = g.loc[g["worst_ratio"].idxmax()]
        ratio = float(worst["worst_ratio"])
        rows.append({
            "kernel": kernel,
            "reference": reference,
            "dtype": dtype,
            "checks": len(g),
            "failed": int((~g["passed"]).sum()),
            "worst_ratio": ratio,
            "headroom": np.inf if ratio == 0 else 1.0 / ratio,
            "median_ratio": float(g["worst_ratio"].median()),
            "max_abs_err": float(g["max_abs_err"].max()),
            "max_rel_err": float(g["max_rel_err"].max()),
            "rtol": float(worst["rtol"]),
            "atol": float(worst["atol"]),
            "nearest_to_failing": str(worst.get("test", "") or worst.get("what", "")),
        })
    return pd.DataFrame(rows).sort_values("headroom").reset_index(drop=True)


def load_sweeps(paths: list[str | Path]) -> list[SweepRecord]:
    """Every step sweep in the verify reports (files written before sweeps existed have
    none); ReportInputError names the file and sweep that break the definition."""
    sweeps = []
    for path in paths:
        data = read_json_any(path)
        raw = data.get("sweeps", []) if isinstance(data, dict) else []
        if not isinstance(raw, list):
            raise ReportInputError(f"{path}: sweeps: expected a list, got {type(raw).__name__}")
        for i, d in enumerate(raw):
            try:
                sweeps.append(SweepRecord.from_dict(d))
            except (RecordError, TypeError) as exc:
                raise ReportInputError(f"{path}: sweeps[{i}]: {exc}") from None
    return sweeps


def sweep_table(sweeps: list[SweepRecord]) -> pd.DataFrame:
    """A row per sweep: kernel, reference, what, dtype, device, fitted order, best step
    measured, predicted best step, smallest error."""
    return pd.DataFrame([{
        "kernel": s.kernel, "reference": s.reference, "what": s.what, "dtype": s.dtype,
        "device": s.device, "order": s.order, "best_eps": s.best_eps,
        "predicted_eps": s.predicted_eps, "min_error": min(s.error),
    } for s in sweeps])


def v_curve(sweeps: list[SweepRecord], out: Path, name: str = "step_sweep.png") -> Path:
    """Error against step, log-log, a line per sweep; the predicted best step of each is a
    dotted vertical line of the same colour."""
    from handgrad.reports import figures

    plt = figures.plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("tab10")
    for i, s in enumerate(sweeps):
        colour = colours(i % 10)
        order = "n/a" if s.order is None else f"{s.order:.2f}"
        label = f"{s.kernel} {s.what} ({s.dtype}, {s.device}): order {order}"
        ax.loglog(s.eps, [max(e, 1e-300) for e in s.error], "o-", color=colour, label=label)
        if s.predicted_eps is not None:
            ax.axvline(s.predicted_eps, color=colour, linestyle=":", linewidth=1)
    ax.set_xlabel("step h (relative)")
    ax.set_ylabel("max |central difference - kernel|")
    ax.set_title("Step sweeps: truncation (right, slope = order) and rounding (left); "
                 "dotted: predicted best step", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)
    return figures._save(fig, out / name)
