"""Derived columns and the summary table: ratio to the same-run reference and achieved
GFLOP/s, each by its one definition in ``reports.record``."""

from __future__ import annotations

import pandas as pd

from reports.record import SHAPES, achieved_gflops, ratio_to_reference

# the columns that tell one benchmark from another beside its method (model: counting)
KEY_COLUMNS = (*SHAPES, "model")


def with_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``ratio`` and ``ratio_kind`` (``reports.record.ratio_to_reference``: paired
    rounds when timed interleaved, else against the rounds of the row's reference in the
    same file and group) and ``gflops`` (``reports.record.achieved_gflops``)."""
    df = df.copy()
    # a group can hold several references (GD: lstsq for the closed form, torch.optim.SGD
    # for the loop), so the join is on the reference's method name too
    ref = df[df["method"] == df["reference"]][["source", "group", "method", "data"]]
    ref = ref.rename(columns={"method": "reference", "data": "ref_rounds"})
    df = df.merge(ref, on=["source", "group", "reference"], how="left")
    ratios = [ratio_to_reference(r.data, r.reference_data, r.ref_rounds)
              for r in df.itertuples(index=False)]
    df["ratio"] = [r for r, _ in ratios]
    df["ratio_kind"] = [k for _, k in ratios]
    df["gflops"] = achieved_gflops(df["flops"], df["median"])
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The report's main table: one row per benchmark, times in milliseconds, handgrad's
    kernels before torch's references within each shape."""
    df = with_ratios(df)
    keys = [c for c in KEY_COLUMNS if c in df.columns and df[c].notna().any()]
    out = df[["machine", "kernel", "owner", "method", "reference", "device", "dtype",
              "threads", *keys]].copy()
    out["median_ms"] = df["median"] * 1e3
    out["iqr_ms"] = df["iqr"] * 1e3
    out["ratio_to_ref"] = df["ratio"]
    out["ratio_kind"] = df["ratio_kind"]
    out["gflop_s"] = df["gflops"]
    out["rounds"] = df["rounds"]
    if df["slowed_by"].notna().any():  # a run slowed on purpose (--bench-slow) says so
        out["slowed_by"] = df["slowed_by"]
    return out.sort_values(["kernel", "machine", "device", *keys, "owner", "method"],
                           na_position="first").reset_index(drop=True)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured markdown table (pandas' own needs the tabulate package)."""

    def cell(v) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else format(v, floatfmt)
        return "" if v is None else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
