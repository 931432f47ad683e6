"""The verification report: `pytest verify --verify-report PATH` records every comparison's
worst error against its tolerance; this turns those records into a precision-headroom
table per kernel, reference and dtype.

headroom = 1 / worst_ratio, where worst_ratio = max |a - e| / (atol + rtol |e|) over a
comparison's elements: a comparison passes while worst_ratio < 1, and a headroom of 100
means its errors could grow 100-fold before it failed. A kernel's row reports its smallest
headroom over all its comparisons (the one nearest to failing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reports.load import ReportInputError, read_json_any
from reports.record import VERIFY_KIND, RecordError, VerifyRecord


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
