"""The roofline figure (docs/architecture.md §5): achieved GFLOP/s against arithmetic intensity,
a panel per run and device, under the roofs that run measured.

A run measures its machine's ceilings per device and dtype with two benchmarks of kernel
``ceiling``: method ``matmul`` (the compute roof: its achieved GFLOP/s, by
``reports.record.achieved_gflops``) and method ``copy`` (the bandwidth roof: its bytes over
its median time, GB/s). The roofline is min(compute, bandwidth x intensity). A run without
them (every file written before the ceiling benchmarks, such as the H100 runs) gets the
control matmul as a dashed line labelled a drift check: a 512x512 matmul is no ceiling
(on a GPU it is launch-bound and real kernels plot above it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from handgrad.reports import figures
from handgrad.reports.figures import ROLE_TEXT, legend_below, plain_log, plt, run_title
from handgrad.reports.record import achieved_gflops

ROOF_STYLES = ("-", "-.", ":")


def ceilings(df: pd.DataFrame) -> pd.DataFrame:
    """A row per (source, run, device, dtype) that measured a ceiling: ``compute_gflops``
    (the best ``matmul`` ceiling of that dtype: its achieved GFLOP/s) and
    ``bandwidth_gbs`` (the best ``copy`` ceiling of the device, any dtype: bytes / median;
    bytes are bytes whatever the dtype), NaN where that ceiling was not measured."""
    place = ["source", "run", "device"]
    cols = [*place, "dtype", "compute_gflops", "bandwidth_gbs"]
    c = df[df["kernel"] == "ceiling"]
    mm, cp = c[c["method"] == "matmul"].copy(), c[c["method"] == "copy"].copy()
    if mm.empty and cp.empty:
        return pd.DataFrame(columns=cols)
    mm["compute_gflops"] = achieved_gflops(pd.to_numeric(mm["flops"]), mm["median"])
    nbytes = pd.to_numeric(cp["bytes"])
    with np.errstate(divide="ignore", invalid="ignore"):
        cp["bandwidth_gbs"] = np.where(nbytes > 0, nbytes / cp["median"] / 1e9, np.nan)
    compute = mm.groupby([*place, "dtype"], as_index=False)["compute_gflops"].max()
    bandwidth = cp.groupby(place, as_index=False)["bandwidth_gbs"].max()
    out = compute.merge(bandwidth, on=place, how="outer")
    out["dtype"] = out["dtype"].fillna("any dtype")  # a device with a copy ceiling only
    return out[cols]


def roof(compute: float, bandwidth: float, lo: float, hi: float):
    """Vertices of min(compute, bandwidth x intensity) over [lo, hi]: the ends and the
    ridge point where the two meet (when it lies inside)."""
    xs = [lo, hi]
    if np.isfinite(compute) and np.isfinite(bandwidth) and lo < compute / bandwidth < hi:
        xs.insert(1, compute / bandwidth)
    xs = np.asarray(xs, dtype=float)
    ys = np.fmin(np.full_like(xs, compute if np.isfinite(compute) else np.inf),
                 bandwidth * xs if np.isfinite(bandwidth) else np.inf)
    return xs, ys


def notes(df: pd.DataFrame) -> list[str]:
    """A line per input file: its measured ceilings, or that it has none and what the
    figure shows instead."""
    ceil = ceilings(df)
    out = []
    for source in dict.fromkeys(df["source"]):
        name = Path(source).name
        mine = ceil[ceil["source"] == source]
        if mine.empty:
            control = ((df["source"] == source) & (df["kernel"] == "control")).any()
            out.append(f"No measured ceiling in `{name}` (no `ceiling` benchmark)" + (
                ": its panels show the control matmul as a dashed line, a drift check "
                "between runs, not a ceiling; kernels may plot above it." if control else
                ", and no control matmul either: its panels have no line."))
            continue
        parts = []
        for r in mine.itertuples(index=False):
            compute = (f"compute {r.compute_gflops:.4g} GFLOP/s" if np.isfinite(
                r.compute_gflops) else "no matmul ceiling")
            bandwidth = (f"bandwidth {r.bandwidth_gbs:.4g} GB/s" if np.isfinite(
                r.bandwidth_gbs) else "no copy ceiling")
            parts.append(f"{r.device} {r.dtype}: {compute}, {bandwidth}")
        out.append(f"Measured ceilings in `{name}`: " + "; ".join(parts) + " (the bandwidth "
                   "roof is the device's copy, whatever the dtype).")
    return out


def _counted(df: pd.DataFrame) -> pd.DataFrame:
    """The benchmarks with a FLOP and a byte count both above 0 (``flops_n``, ``bytes_n``)."""
    d = df.copy()
    d["flops_n"] = pd.to_numeric(d["flops"], errors="coerce")
    d["bytes_n"] = pd.to_numeric(d["bytes"], errors="coerce")
    return d[(d["flops_n"] > 0) & (d["bytes_n"] > 0)]


def roofline_points(df: pd.DataFrame) -> pd.DataFrame:
    """The benchmarks the roofline draws: counted (``_counted``), not the control or the
    ceilings; empty when it has nothing to draw."""
    d = _counted(df)
    return d[~d["kernel"].isin(["control", "ceiling"])].copy()


def roofline(df: pd.DataFrame, out: Path) -> Path | None:
    """Achieved GFLOP/s against arithmetic intensity (FLOPs per byte of compulsory traffic),
    a panel per run and device, under that run's measured roofs (or the control matmul as
    a drift check when it measured none); kernels filled, references hollow. None when
    ``roofline_points`` finds none."""
    d = _counted(df)  # the control's rows too, drawn as a drift check below
    pts = roofline_points(df)
    if pts.empty:
        return None
    pts["gflops"] = achieved_gflops(pts["flops_n"], pts["median"])
    pts["intensity"] = pts["flops_n"] / pts["bytes_n"]
    ceil = ceilings(df)
    places = sorted(pts.groupby(["run", "device"]).groups)
    fig, axes = plt.subplots(1, len(places), figsize=(7 * len(places), 6.2), squeeze=False,
                             sharey=True)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {k: cycle[i % len(cycle)] for i, k in enumerate(sorted(pts["kernel"].unique()))}
    top = pts["gflops"].max()
    for ax, (run, device) in zip(axes[0], places):
        p = pts[(pts["run"] == run) & (pts["device"] == device)]
        for (kernel, role), h in p.groupby(["kernel", "role"]):
            c = colours[kernel]
            ax.scatter(h["intensity"], h["gflops"], s=24, alpha=0.85, edgecolors=c,
                       facecolors=c if role == "kernel" else "none")
        mine = ceil[(ceil["run"] == run) & (ceil["device"] == device)]
        lo, hi = p["intensity"].min() / 3, p["intensity"].max() * 3
        title = None
        if not mine.empty:
            for style, r in zip(ROOF_STYLES * 3, mine.itertuples(index=False)):
                xs, ys = roof(r.compute_gflops, r.bandwidth_gbs, lo, hi)
                ax.plot(xs, ys, color="k", ls=style, lw=1.6, gid="roof",
                        label=f"measured roof, {r.dtype}: "
                              f"{_or_none(r.compute_gflops, 'GFLOP/s')}, "
                              f"{_or_none(r.bandwidth_gbs, 'GB/s')}")
                top = max(top, np.nanmax(ys))
        else:
            title = "no measured ceiling in this run"
            control = d[(d["kernel"] == "control") & (d["run"] == run)
                        & (d["device"] == device)]
            if not control.empty:
                peak = float(np.nanmax(achieved_gflops(control["flops_n"], control["median"])))
                ax.axhline(peak, ls="--", lw=1.2, color="k", gid="control",
                           label=f"control matmul: {peak:.4g} GFLOP/s\n"
                                 "(a drift check, not a ceiling)")
                top = max(top, peak)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (analytic FLOPs / compulsory bytes)")
        ax.set_title(run_title(run, device), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        plain_log(ax, "x")
        plain_log(ax, "y")
        if ax.get_legend_handles_labels()[0]:
            leg = ax.legend(fontsize=7.5, loc="upper left", title=title,
                            title_fontsize=8, framealpha=0.9)
            leg.get_title().set_color("firebrick")
        elif title:
            ax.text(0.02, 0.98, f"{title} (and no control matmul)", transform=ax.transAxes,
                    va="top", fontsize=8, color="firebrick")
    # room above the highest point or roof for the legend of the roofs
    axes[0][0].set_ylim(top=top * 30)
    axes[0][0].set_ylabel("achieved GFLOP/s (analytic FLOPs / median time)")
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[k],
                          markerfacecolor=colours[k] if o == "kernel" else "none",
                          label=f"{k}: {ROLE_TEXT[o].split(' (')[0]}")
               for k in colours for o in ("kernel", "reference")
               if ((pts["kernel"] == k) & (pts["role"] == o)).any()]
    legend_below(fig, handles, ncol=4, col_width=2.6)
    fig.suptitle("Roofline: achieved throughput under the measured roofs\n(kernels "
                 "filled, their references hollow)", fontsize=11)
    return figures._save(fig, out / "roofline.png")


def _or_none(v: float, unit: str) -> str:
    if not np.isfinite(v):
        return f"no {unit} roof"
    return f"{v:,.0f} {unit}" if v >= 1000 else f"{v:.3g} {unit}"

