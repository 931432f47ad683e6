"""Matplotlib figures for the report. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def time_vs_depth(df: pd.DataFrame, kernel: str, out: Path) -> Path | None:
    """Median time against depth L, one line per (method, width, device, machine)."""
    sub = df[(df["kernel"] == kernel) & df.get("L", pd.Series(dtype=float)).notna()]
    if sub.empty or "L" not in sub:
        return None
    keys = [c for c in ("method", "K", "N", "device", "machine") if c in sub.columns]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, g in sub.groupby(keys, dropna=False):
        g = g.sort_values("L")
        name = ", ".join(f"{k}={v}" if k in ("K", "N") else str(v) for k, v in zip(keys, label))
        ax.plot(g["L"], g["median"] * 1e3, marker="o", label=name)
    ax.set_xlabel("depth L (layers)")
    ax.set_ylabel("median time per call (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{kernel}: time vs depth")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / f"{kernel}_time_vs_L.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
