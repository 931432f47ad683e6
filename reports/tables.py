"""Derived columns and the summary table: ratio to the same-run reference, GFLOP/s."""

from __future__ import annotations

import pandas as pd


def with_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``ratio`` (median / the median of this row's reference in the same file and
    group; 1.0 for a reference itself) and ``gflops`` (extra_info flops / median)."""
    df = df.copy()
    # a group can hold several references (GD: lstsq for the closed form, torch.optim.SGD
    # for the loop), so the join is on the reference's method name too
    ref = df[df["method"] == df["reference"]][["source", "group", "method", "median"]]
    ref = ref.rename(columns={"method": "reference", "median": "ref_median"})
    df = df.merge(ref, on=["source", "group", "reference"], how="left")
    df["ratio"] = df["median"] / df["ref_median"]
    df["gflops"] = pd.to_numeric(df["flops"], errors="coerce") / df["median"] / 1e9
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The report's main table: one row per benchmark, times in milliseconds."""
    df = with_ratios(df)
    shape_cols = [c for c in ("L", "D", "K", "P", "N", "k") if c in df.columns]
    out = df[["machine", "kernel", "method", "reference", "device", "dtype", *shape_cols]].copy()
    out["median_ms"] = df["median"] * 1e3
    out["iqr_ms"] = df["iqr"] * 1e3
    out["ratio_to_ref"] = df["ratio"]
    out["gflop_s"] = df["gflops"]
    out["rounds"] = df["rounds"]
    return out.sort_values(["kernel", "machine", "device", *shape_cols, "method"]).reset_index(
        drop=True
    )


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
