"""CPU vs GPU (docs/architecture.md, §5): when the inputs hold both devices, from one machine or
several, the GPU's speedup over the CPU per method and shape, and per method the
crossover: the smallest problem size at which the GPU is faster.

Rows of a CPU run and a GPU run are matched on kernel, method, dtype, shape (every
parameter) and model; speedup = CPU median / GPU median (above 1: the GPU is faster).

Problem size (``SIZE_DEFINITION``): the analytic FLOPs of one call of the costliest method
timed on that shape, i.e. the largest ``extra_info.flops`` over the benchmarks of the same
kernel, dtype and shape in any input. One number per shape, so that every method of a
shape sits at the same size: for the Jacobians the reverse-mode count (it grows with
L K^2 N), for gradient descent the k-step loop, for counting the model's own FLOPs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from handgrad.reports import figures
from handgrad.reports.figures import legend_below, plain_log, plt
from handgrad.reports.load import on_gpu as is_gpu
from handgrad.reports.load import shape_columns
from handgrad.reports.tables import with_ratios

KEYS = ["kernel", "method", "dtype", "shape", "model"]
NEVER = "never within the grid"
SIZE_DEFINITION = (
    "Problem size is the analytic FLOP count of one call of the costliest method timed on "
    "that shape: the largest `extra_info.flops` among the benchmarks of the same kernel, "
    "dtype and shape (for the Jacobians the reverse-mode count, which grows with L·K²·N; "
    "for gradient descent the k-step loop; for counting the model's FLOPs), so every "
    "method of a shape sits at the same size."
)


def has_both(df: pd.DataFrame) -> bool:
    return any(map(is_gpu, df["device"])) and not all(map(is_gpu, df["device"]))


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    """The match keys with their missing values made comparable."""
    df = df.copy()
    df["model"] = df["model"].fillna("").astype(str)
    return df


def shape_text(row) -> str:
    parts = [row["shape"]] if row["shape"] else []
    if row["model"]:
        parts.append(row["model"])
    return " ".join(parts)


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """A row per (CPU run, GPU run, method, dtype, shape) measured on both: the two medians
    (ms), ``speedup`` = CPU median / GPU median, ``size_flop`` (SIZE_DEFINITION), the
    reference's speedup on that shape, and ``disturbed`` when either side is flagged
    (reports.tables.DISTURBED_RULE). Empty when the inputs do not hold both devices."""
    df = _keyed(with_ratios(df[df["kernel"] != "ceiling"]))
    df["size_flop"] = pd.to_numeric(df["flops"]).groupby(
        [df[c] for c in ["kernel", "dtype", "shape", "model"]]).transform("max")
    df.loc[df["size_flop"] <= 0, "size_flop"] = np.nan
    dims = shape_columns(df)  # the parameters, a column each, taken from the CPU's side
    cols = [*KEYS, "run", "device", "role", "reference", "median", "size_flop", "disturbed"]
    cpu = df[~df["device"].map(is_gpu)][[*cols, *dims]]
    gpu = df[df["device"].map(is_gpu)][cols]
    out = []
    for (cpu_run, _cpu_dev), c in cpu.groupby(["run", "device"]):
        for (gpu_run, gpu_dev), g in gpu.groupby(["run", "device"]):
            m = c.merge(g.drop(columns=["role", "reference", "size_flop"]), on=KEYS,
                        suffixes=("_cpu", "_gpu"))
            if m.empty:
                continue
            m["cpu_run"], m["gpu_run"], m["gpu"] = cpu_run, gpu_run, gpu_dev
            out.append(m)
    if not out:
        return pd.DataFrame()
    m = pd.concat(out, ignore_index=True)
    m["cpu_ms"] = m["median_cpu"] * 1e3
    m["gpu_ms"] = m["median_gpu"] * 1e3
    m["speedup"] = m["median_cpu"] / m["median_gpu"]
    m["disturbed"] = [" / ".join(f"{side}: {w}" for side, w in (("cpu", a), ("gpu", b)) if w)
                      for a, b in zip(m["disturbed_cpu"], m["disturbed_gpu"])]
    m["shape"] = [shape_text(r) for _, r in m.iterrows()]
    m["model"] = m["model"].where(m["model"] != "")
    return m.sort_values(["cpu_run", "gpu_run", "kernel", "role", "method", "dtype",
                          "size_flop", *dims, "model"]).reset_index(drop=True)


def _size(row) -> str:
    return f"{row['size_flop']:.3g} FLOP ({row['shape']}: {row['speedup']:.2f}x)"


def crossovers(sp: pd.DataFrame) -> pd.DataFrame:
    """A row per (CPU run, GPU run, method, dtype): how many shapes, the speedups' range,
    ``crossover`` (the smallest size at which the GPU is faster, with its shape, or
    "never within the grid") and ``faster_from`` (the size from which the GPU is faster at
    every larger size of the grid too)."""
    rows = []
    sized = sp[sp["size_flop"].notna()]
    for key, g in sized.groupby(["cpu_run", "gpu_run", "kernel", "role", "method", "dtype"]):
        g = g.sort_values("size_flop")
        faster = g["speedup"].to_numpy() > 1
        first = g[faster].iloc[0] if faster.any() else None
        # the suffix of the size-sorted shapes where the GPU wins throughout
        tail = len(faster) - int(np.argmin(faster[::-1])) if not faster.all() else 0
        from_on = g.iloc[tail] if tail < len(faster) else None
        rows.append({
            **dict(zip(["cpu_run", "gpu_run", "kernel", "role", "method", "dtype"], key)),
            "shapes": len(g),
            "speedup_min": float(g["speedup"].min()),
            "speedup_max": float(g["speedup"].max()),
            "crossover": NEVER if first is None else _size(first),
            "faster_from": NEVER if first is None else (
                "not at the largest size" if from_on is None
                else _size(from_on)),
            "crossover_flop": np.nan if first is None else float(first["size_flop"]),
            "faster_from_flop": np.nan if from_on is None else float(from_on["size_flop"]),
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["cpu_run", "gpu_run", "role", "kernel", "method"],
                           key=lambda s: s.map(lambda v: (v != "kernel", v))
                           if s.name == "role" else s).reset_index(drop=True)


DEVICE_COLOURS = {"cpu": "tab:blue", "gpu": "tab:orange"}


def _said(c) -> str:
    """The crossover in a panel's title."""
    if not np.isfinite(c["crossover_flop"]):
        return "GPU never faster within the grid"
    said = f"GPU first faster at {c['crossover_flop']:.3g} FLOP"
    if not np.isfinite(c["faster_from_flop"]):
        return said + ",\nbut not at the largest size"
    if c["faster_from_flop"] != c["crossover_flop"]:
        return said + f",\nat every larger size from {c['faster_from_flop']:.3g}"
    return said + " and above"


def _markers(side: str, filled: bool, size: float) -> dict:
    colour = DEVICE_COLOURS[side]
    return {"ls": "none", "marker": "o", "ms": size, "color": colour,
            "markeredgecolor": colour, "markerfacecolor": colour if filled else "none"}


def figure(sp: pd.DataFrame, cross: pd.DataFrame, out: Path, name: str) -> Path | None:
    """Time per call against problem size for one CPU run and one GPU run: a panel per
    kernel method, a point per shape (filled; its reference on that shape hollow),
    a colour per device, the crossover drawn and named in the panel's title. Points, not
    lines: neighbouring sizes are often unlike shapes (a batch against a width)."""
    ours = sp[(sp["role"] == "kernel") & sp["size_flop"].notna()]
    if ours.empty:
        return None
    (cpu_run, gpu_run), = set(zip(sp["cpu_run"], sp["gpu_run"]))
    panels = sorted(ours.groupby(["kernel", "method", "dtype"]).groups)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.9 * rows + 1.3),
                             squeeze=False)
    for ax, (kernel, method, dtype) in zip(axes.flat, panels):
        k = ours[(ours["kernel"] == kernel) & (ours["method"] == method)
                 & (ours["dtype"] == dtype)].sort_values("size_flop")
        # its reference on each of its shapes (the reference may change with the shape)
        ref = sp.merge(k[[*KEYS[2:], "reference"]].rename(columns={"reference": "method"}),
                       on=["method", *KEYS[2:]])
        ref = ref[ref["kernel"] == kernel]
        for side in ("cpu", "gpu"):
            if not ref.empty:
                ax.plot(ref["size_flop"], ref[f"{side}_ms"], gid=f"reference {side}",
                        **_markers(side, False, 5))
            ax.plot(k["size_flop"], k[f"{side}_ms"], gid=f"kernel {side}",
                    **_markers(side, True, 6))
        c = cross[(cross["kernel"] == kernel) & (cross["method"] == method)
                  & (cross["dtype"] == dtype)].iloc[0]
        if np.isfinite(c["crossover_flop"]):
            ax.axvline(c["crossover_flop"], color="k", ls=":", lw=1, gid="crossover")
        ax.set_title(f"{kernel}.{method} ({dtype})\n{_said(c)}", fontsize=8.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # a decade around the sizes, also when a method has one shape only
        ax.set_xlim(k["size_flop"].min() / 3, k["size_flop"].max() * 3)
        plain_log(ax)
        plain_log(ax, "x", minor_labels=False)
        ax.set_xlabel("problem size (FLOPs of the shape)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("median time per call (ms)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], label="CPU: kernel", **_markers("cpu", True, 6)),
               plt.Line2D([], [], label="GPU: kernel", **_markers("gpu", True, 6)),
               plt.Line2D([], [], label="CPU: its reference on the shape",
                          **_markers("cpu", False, 5)),
               plt.Line2D([], [], label="GPU: its reference on the shape",
                          **_markers("gpu", False, 5)),
               plt.Line2D([], [], color="k", ls=":", lw=1,
                          label="crossover: smallest size at which the GPU is faster")]
    legend_below(fig, handles, ncol=3)
    fig.suptitle(f"CPU vs GPU: time per call against problem size\nCPU: {cpu_run}   "
                 f"GPU: {gpu_run}", fontsize=10)
    return figures._save(fig, out / name)


def jacobian_figure(sp: pd.DataFrame, out: Path, name: str) -> Path | None:
    """The course's question: the manual forward- and reverse-mode Jacobians against depth
    L on the CPU and the GPU, a panel per (width K, batch N), a row of them per dtype."""
    jac = sp[(sp["kernel"] == "jacobian")
             & sp["method"].isin(["manual_forward", "manual_reverse"])]
    if jac.empty or jac["L"].nunique() < 2:
        return None
    widths = sorted(jac.groupby(["K", "N"]).groups)
    dtypes = sorted(jac["dtype"].unique())  # a row of panels per dtype
    several = len(dtypes) > 1
    fig, axes = plt.subplots(len(dtypes), len(widths),
                             figsize=(4.2 * len(widths), 3.9 * len(dtypes) + 1),
                             squeeze=False, sharey=True, sharex=True)
    styles = {"manual_forward": ("-", "o"), "manual_reverse": ("--", "s")}
    depths = sorted(jac["L"].unique())
    for row, dtype in zip(axes, dtypes):
        for ax, (K, N) in zip(row, widths):
            g = jac[(jac["K"] == K) & (jac["N"] == N) & (jac["dtype"] == dtype)]
            for method, (ls, marker) in styles.items():
                line = g[g["method"] == method].sort_values("L")
                for side, colour in DEVICE_COLOURS.items():
                    ax.plot(line["L"], line[f"{side}_ms"], color=colour, ls=ls,
                            marker=marker, lw=2, gid=f"{method} {side}")
            ax.set_xticks(depths)
            ax.set_xticklabels([f"{d:g}" for d in depths])
            only = f": L={g['L'].iloc[0]:g} only" if g["L"].nunique() == 1 else ""
            ax.set_title(f"K={K:g}, N={N:g}{', ' + dtype if several else ''}{only}",
                         fontsize=9)
            ax.set_yscale("log")
            plain_log(ax)
            ax.set_xlabel("depth L (layers)")
            ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("median time per call (ms)")
    handles = [plt.Line2D([], [], color=DEVICE_COLOURS[s], ls=styles[m][0],
                          marker=styles[m][1], lw=2,
                          label=f"{m.replace('manual_', '')} mode, {s.upper()}")
               for m in styles for s in DEVICE_COLOURS]
    legend_below(fig, handles, ncol=4)
    (cpu_run, gpu_run), = set(zip(jac["cpu_run"], jac["gpu_run"]))
    fig.suptitle(f"Jacobian, forward and reverse mode on CPU and GPU\nCPU: {cpu_run}   "
                 f"GPU: {gpu_run}", fontsize=10)
    return figures._save(fig, out / name)
