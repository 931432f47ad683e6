"""Matplotlib figures for the report. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from reports.record import achieved_gflops  # noqa: E402


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def time_vs_depth(df: pd.DataFrame, kernel: str, out: Path) -> Path | None:
    """Median time against depth L: a panel per (width K, batch N), a line per method
    (one colour per method in every panel), a line style per device and machine."""
    if "L" not in df.columns:
        return None
    sub = df[(df["kernel"] == kernel) & df["L"].notna()]
    if sub.empty:
        return None
    panel_keys = [c for c in ("K", "N") if c in sub.columns and sub[c].notna().any()]
    panels = sorted(sub.groupby(panel_keys, dropna=False).groups) if panel_keys else [()]
    methods = sorted(sub["method"].unique())
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    where = sorted(sub.groupby(["device", "machine"]).groups)
    styles = {w: ("-", "--", ":", "-.")[i % 4] for i, w in enumerate(where)}
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows + 1.2),
                             squeeze=False, sharey=True)
    for ax, panel in zip(axes.flat, panels):
        key = panel if isinstance(panel, tuple) else (panel,)
        g = sub
        for k, v in zip(panel_keys, key):
            g = g[g[k] == v]
        for (method, device, machine), line in g.groupby(["method", "device", "machine"]):
            line = line.sort_values("L")
            ax.plot(line["L"], line["median"] * 1e3, marker="o", ms=3,
                    color=colours[method], ls=styles[(device, machine)])
        ax.set_title(", ".join(f"{k}={_num(v)}" for k, v in zip(panel_keys, key)), fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("depth L (layers)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("median time per call (ms)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[m], marker="o", ms=3, label=m) for m in methods]
    if len(where) > 1:
        handles += [plt.Line2D([], [], color="k", ls=styles[w], label=f"{w[0]} on {w[1]}")
                    for w in where]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8,
               frameon=False)
    fig.suptitle(f"{kernel}: time per call against depth", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(handles) // 4), 1, 1))
    path = out / f"{kernel}_time_vs_L.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def jacobian_modes(df: pd.DataFrame, out: Path) -> Path | None:
    """Measured forward/reverse time ratio of the manual Jacobian kernels against the
    op-count model's forward/reverse ratio, one point per (L, K, N, device, machine)."""
    need = {"model_forward", "model_reverse", "L", "K", "N"}
    jac = df[df["kernel"] == "jacobian"]
    if jac.empty or not need <= set(jac.columns):
        return None
    keys = ["source", "machine", "device", "L", "K", "N"]
    fwd = jac[jac["method"] == "manual_forward"]
    rev = jac[jac["method"] == "manual_reverse"]
    both = fwd.merge(rev[[*keys, "median"]], on=keys, suffixes=("_fwd", "_rev"))
    if both.empty:
        return None
    both["measured"] = both["median_fwd"] / both["median_rev"]
    both["model"] = both["model_forward"] / both["model_reverse"]
    # colour = depth L, marker = width K, filled = batched, hollow = single x; one panel
    # per machine and device
    places = sorted({(m, d) for m, d in zip(both["machine"], both["device"])})
    fig, axes = plt.subplots(1, len(places), figsize=(6.5 * len(places), 5), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = dict(zip(sorted(both["L"].unique()), cycle))
    markers = dict(zip(sorted(both["K"].unique()), "os^Dv<>p"))
    lo = min(both["model"].min(), both["measured"].min()) / 1.5
    hi = max(both["model"].max(), both["measured"].max()) * 1.5
    for ax, (machine, device) in zip(axes[0], places):
        g = both[(both["machine"] == machine) & (both["device"] == device)]
        for _, r in g.iterrows():
            c = colours[r["L"]]
            ax.scatter(r["model"], r["measured"], s=45, marker=markers[r["K"]],
                       facecolors=c if r["N"] > 1 else "none", edgecolors=c, linewidths=1.2)
        line = ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = model")
        ax.axhline(1, color="grey", lw=0.5)
        ax.axvline(1, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("op-count model: forward / reverse multiplies")
        ax.set_ylabel("measured: forward / reverse median time")
        ax.set_title(f"{device}, {machine}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=c, label=f"L = {L:.0f}")
               for L, c in colours.items()]
    handles += [Line2D([], [], ls="", marker=m, color="grey", label=f"K = {K:.0f}")
                for K, m in markers.items()]
    handles += [Line2D([], [], ls="", marker="o", color="grey", label="batched (N > 1)"),
                Line2D([], [], ls="", marker="o", markerfacecolor="none", color="grey",
                       label="single x (N = 1)"), *line]
    axes[0][0].legend(handles=handles, fontsize=7, loc="upper left", ncol=2)
    fig.suptitle("Jacobian: forward vs reverse mode, model and measurement\n"
                 "(below 1: forward mode is cheaper)", fontsize=10)
    return _save(fig, out / "jacobian_modes_model_vs_measured.png")


def roofline(df: pd.DataFrame, out: Path) -> Path | None:
    """Achieved GFLOP/s against arithmetic intensity (FLOPs per byte of compulsory traffic),
    with the control matmul's achieved GFLOP/s as the machine's practical ceiling."""
    d = df.copy()
    d["flops_n"] = pd.to_numeric(d["flops"], errors="coerce")
    d["bytes_n"] = pd.to_numeric(d["bytes"], errors="coerce")
    d = d[(d["flops_n"] > 0) & (d["bytes_n"] > 0)]
    if d.empty:
        return None
    d["gflops"] = achieved_gflops(d["flops_n"], d["median"])
    d["intensity"] = d["flops_n"] / d["bytes_n"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    # a colour per kernel family; handgrad's kernels filled, torch's references hollow
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (kernel, g) in enumerate(d[d["kernel"] != "control"].groupby("kernel")):
        for owner, h in g.groupby("owner"):
            c = cycle[i % len(cycle)]
            ax.scatter(h["intensity"], h["gflops"], s=18, alpha=0.8, edgecolors=c,
                       facecolors=c if owner == "handgrad" else "none",
                       label=f"{kernel} ({'handgrad' if owner == 'handgrad' else 'torch'})")
    for (machine, device), g in d[d["kernel"] == "control"].groupby(["machine", "device"]):
        peak = float(g["gflops"].max())
        ax.axhline(peak, ls="--", lw=1, color="k")
        ax.annotate(f"control matmul: {peak:.0f} GFLOP/s ({device}, {machine})",
                    (d["intensity"].min(), peak), fontsize=7, xytext=(0, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (analytic FLOPs / compulsory bytes)")
    ax.set_ylabel("achieved GFLOP/s (analytic FLOPs / median time)")
    ax.set_title("Achieved throughput against the control benchmark (roofline view)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "roofline.png")
