"""Matplotlib figures for the report. Each function writes one PNG and returns its path;
every figure goes through ``_save`` (tests capture it there). The roofline is in
``reports.roofline``, the CPU-vs-GPU figure in ``reports.devices``.

Conventions shared by all figures: a run (one input file, ``run`` = "machine · file") is
never drawn on the same line as another; kernels stand apart from their
references (``ROLE_STYLE``: thick solid lines and filled markers against thin dashed lines
and hollow markers)."""

from __future__ import annotations

import textwrap
import weakref
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

ROLE_STYLE = {
    "kernel": {"ls": "-", "lw": 2.4, "filled": True},
    "reference": {"ls": "--", "lw": 1.0, "filled": False},
}
ROLE_TEXT = {"kernel": "kernel (thick solid line, filled markers)",
             "reference": "reference (thin dashed line, hollow markers)"}


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_title(run: str, device: str) -> str:
    """Two lines for a panel: the machine, then the file and the device."""
    machine, _, source = run.partition(" · ")
    return f"{machine}\n{source} · {device}" if source else f"{run} · {device}"


def role_handles(roles) -> list[Line2D]:
    """Legend entries that say which style is a kernel's and which a reference's."""
    present = set(roles)
    return [Line2D([], [], color="k", ls=ROLE_STYLE[o]["ls"], lw=ROLE_STYLE[o]["lw"],
                   marker="o", ms=5, markerfacecolor="k" if ROLE_STYLE[o]["filled"]
                   else "none", label=ROLE_TEXT[o]) for o in ROLE_TEXT if o in present]


def line_style(role: str, colour) -> dict:
    """Keyword arguments of ``ax.plot`` for a method of this role."""
    st = ROLE_STYLE.get(role, ROLE_STYLE["reference"])
    return {"color": colour, "ls": st["ls"], "lw": st["lw"], "marker": "o", "ms": 4,
            "markerfacecolor": colour if st["filled"] else "none", "markeredgecolor": colour}


def legend_below(fig, handles, ncol: int | None = None,
                 col_width: float = 3.6) -> tuple[float, float, float, float]:
    """A figure-level legend under the panels (as many columns of ``col_width`` inches as
    the figure's width holds, at most ``ncol``); returns the rect the panels may use."""
    fits = max(1, int(fig.get_figwidth() / col_width))
    ncol = min(fits, ncol or fits, len(handles))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    rows = -(-len(handles) // ncol)
    return reserve(fig, (0.22 * rows + 0.15) / fig.get_figheight())


# the part of each figure that tight_layout leaves to a legend below the panels
_RESERVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reserve(fig, bottom: float) -> tuple[float, float, float, float]:
    """Keep the bottom ``bottom`` fraction of ``fig`` free of panels (for a legend) when
    ``_save`` lays it out; returns the rect the panels may use."""
    rect = (0, min(0.45, bottom), 1, 1)
    _RESERVED[fig] = rect
    return rect


def plain_log(ax, which: str = "y", minor_labels: bool = True) -> None:
    """Log-axis tick labels as plain numbers (0.4, 2, 300), not 4x10^-1; minor ticks are
    labelled (2, 3, 5 of a decade) only when the axis spans less than a decade and a half,
    and never with ``minor_labels=False``."""
    axis = ax.yaxis if which == "y" else ax.xaxis

    def minor(v, _):
        lo, hi = sorted(axis.get_view_interval())
        lead = round(v / 10 ** np.floor(np.log10(v)), 6) if v > 0 else 0
        return _tick(v) if (minor_labels and lo > 0 and hi / lo < 30
                            and lead in (2, 3, 5)) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
    axis.set_minor_formatter(FuncFormatter(minor))


def _tick(v: float) -> str:
    if v <= 0 or 1e-3 <= v < 1e5:
        return f"{v:g}"
    exp = np.log10(v)
    return f"$10^{{{exp:.0f}}}$" if abs(exp - round(exp)) < 1e-9 else f"{v:.0e}"


def fit_title(fig, title) -> None:
    """Wrap ``title`` (a figure's suptitle) at spaces until it fits the figure's width: a
    title wider than a figure of one panel was cut off on both sides. Its lines as given
    stay lines; a line too long is split, as evenly as its words allow."""
    renderer = fig.canvas.get_renderer()
    room = 0.96 * fig.bbox.width
    width = title.get_window_extent(renderer).width
    if width <= room:
        return
    paragraphs = title.get_text().split("\n")
    chars = max(map(len, paragraphs))
    while chars > 8:
        chars = min(chars - 1, int(chars * room / width))
        title.set_text("\n".join(textwrap.fill(p, max(chars, 8)) or p for p in paragraphs))
        width = title.get_window_extent(renderer).width
        if width <= room:
            return


def _save(fig, path: Path) -> Path:
    """Lay the figure out (keeping the room ``reserve`` asked for below, and the
    suptitle's above, wrapped to the figure's width: ``fit_title``), write it, close it."""
    left, bottom, right, top = _RESERVED.pop(fig, (0, 0, 1, 1))
    title = getattr(fig, "_suptitle", None)
    if title is not None and title.get_text():
        fit_title(fig, title)
        lines = title.get_text().count("\n") + 1
        top = 1 - (0.12 + 0.2 * lines) / fig.get_figheight()
    fig.tight_layout(rect=(left, bottom, right, top))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def time_vs_depth(df: pd.DataFrame, kernel: str, out: Path) -> Path | None:
    """Median time against depth L: a row of panels per run, device and dtype (never two
    runs or dtypes on one line), a panel per (width K, batch N), a line per method, one
    colour per method in every panel, kernels apart from their references
    (ROLE_STYLE). A panel with a single depth is a point chart of the methods."""
    if "L" not in df.columns:
        return None
    sub = df[(df["kernel"] == kernel) & df["L"].notna()]
    if sub.empty:
        return None
    panel_keys = [c for c in ("K", "N") if c in sub.columns and sub[c].notna().any()]
    panels = sorted(sub.groupby(panel_keys, dropna=False).groups) if panel_keys else [()]
    panels = [p if isinstance(p, tuple) else (p,) for p in panels]
    places = sorted(sub.groupby(["run", "device", "dtype"]).groups)
    several = sub["dtype"].nunique() > 1  # then the rows say their dtype
    owners = sub.groupby("method")["role"].first()
    # kernels first, each method one colour throughout
    methods = sorted(owners.index, key=lambda m: (owners[m] != "kernel", m))
    # up to 20 methods (compiled peers double them) each keep a colour of their own
    cmap, n = (plt.cm.tab10, 10) if len(methods) <= 10 else (plt.cm.tab20, 20)
    colours = {m: cmap(i % n) for i, m in enumerate(methods)}
    cols, rows = len(panels), len(places)
    # the legend below (a line per method, and the role styles) gets room of its own
    ncol = min(4, max(1, int(4.3 * cols / 3.6)))
    legend_h = 0.22 * -(-(len(methods) + 2) // ncol) + 0.3
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.8 * rows + 0.8 + legend_h),
                             squeeze=False, sharey=True)
    for (run, device, dtype), axrow in zip(places, axes):
        for ax, key in zip(axrow, panels):
            g = sub[(sub["run"] == run) & (sub["device"] == device) & (sub["dtype"] == dtype)]
            for k, v in zip(panel_keys, key):
                g = g[g[k] == v]
            where = ", ".join([f"{k}={_num(v)}" for k, v in zip(panel_keys, key)]
                              + ([dtype] if several else []))
            ax.set_yscale("log")
            if g.empty:
                ax.set_title(f"{run_title(run, device)}\n{where}", fontsize=8)
                ax.text(0.5, 0.5, "not measured in this run", ha="center",
                        transform=ax.transAxes, fontsize=8, color="grey")
                ax.set_xticks([])
                continue
            depths = sorted(g["L"].unique())
            gid = f"{run} | {device}"
            if len(depths) == 1:
                _points(ax, g, methods, colours, gid)
                where += f": L={_num(depths[0])} only"
            else:
                for method in [m for m in methods if m in set(g["method"])]:
                    line = g[g["method"] == method].sort_values("L")
                    ax.plot(line["L"], line["median"] * 1e3, label=method, gid=gid,
                            **line_style(owners[method], colours[method]))
                ax.set_xticks(depths)
                ax.set_xticklabels([_num(d) for d in depths])
                ax.set_xlabel("depth L (layers)")
            ax.set_title(f"{run_title(run, device)}\n{where}", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            plain_log(ax)
    for ax in axes[:, 0]:
        ax.set_ylabel("median time per call (ms)")
    handles = [Line2D([], [], label=m, **line_style(owners[m], colours[m])) for m in methods]
    handles += role_handles(owners)
    legend_below(fig, handles, ncol=ncol)
    fig.suptitle(f"{kernel}: time per call against depth (a row of panels per run and "
                 f"device{', and dtype' if several else ''})", fontsize=11)
    return _save(fig, out / f"{kernel}_time_vs_L.png")


def _points(ax, g: pd.DataFrame, methods, colours, gid: str) -> None:
    """One depth only: a point per method along a categorical axis, no line."""
    present = [m for m in methods if m in set(g["method"])]
    for x, method in enumerate(present):
        r = g[g["method"] == method]
        st = line_style(r["role"].iloc[0], colours[method])
        st.update(ls="none", ms=7)
        ax.plot([x] * len(r), r["median"] * 1e3, label=method, gid=gid, **st)
    ax.set_xlim(-0.6, len(present) - 0.4)
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels(present, rotation=40, ha="right", fontsize=6.5)
    ax.set_xlabel("method (one depth measured)")


# K is shown by the marker's shape; the circle is kept for the fill legend (batched or
# single x), so no glyph of the legend means two things
K_MARKERS = "s^Dv<>ph"
FILL_MARKER = "o"


def jacobian_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """The manual Jacobian kernels' forward and reverse benchmarks of one (run, device,
    dtype, L, K, N), a row per pair (``median_fwd``, ``median_rev``, the op-count model's
    columns): what ``jacobian_modes`` draws; empty when there is nothing to draw."""
    need = {"model_forward", "model_reverse", "L", "K", "N"}
    jac = df[df["kernel"] == "jacobian"]
    if jac.empty or not need <= set(jac.columns):
        return pd.DataFrame()
    keys = ["source", "run", "device", "dtype", "L", "K", "N"]
    fwd = jac[jac["method"] == "manual_forward"]
    rev = jac[jac["method"] == "manual_reverse"]
    return fwd.merge(rev[[*keys, "median"]], on=keys, suffixes=("_fwd", "_rev"))


def jacobian_modes(df: pd.DataFrame, out: Path) -> Path | None:
    """Measured forward/reverse time ratio of the manual Jacobian kernels against the
    op-count model's forward/reverse ratio, one point per (L, K, N), a panel per run and
    device; None when ``jacobian_pairs`` finds none."""
    both = jacobian_pairs(df)
    if both.empty:
        return None
    both["measured"] = both["median_fwd"] / both["median_rev"]
    both["model"] = both["model_forward"] / both["model_reverse"]
    # colour = depth L, marker = width K, filled = batched, hollow = single x
    places = sorted(set(zip(both["run"], both["device"], both["dtype"])))
    several = len({p[2] for p in places}) > 1  # then a panel per dtype too
    cols = min(3, len(places))
    rows = -(-len(places) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.6 * rows + 0.8),
                             squeeze=False)
    for ax in list(axes.flat)[len(places):]:
        ax.remove()
    axes = [list(axes.flat)[:len(places)]]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = dict(zip(sorted(both["L"].unique()), cycle))
    markers = dict(zip(sorted(both["K"].unique()), K_MARKERS))
    lo = min(both["model"].min(), both["measured"].min()) / 1.5
    hi = max(both["model"].max(), both["measured"].max()) * 1.5
    for ax, (run, device, dtype) in zip(axes[0], places):
        g = both[(both["run"] == run) & (both["device"] == device) & (both["dtype"] == dtype)]
        for _, r in g.iterrows():
            c = colours[r["L"]]
            ax.scatter(r["model"], r["measured"], s=50, marker=markers[r["K"]],
                       facecolors=c if r["N"] > 1 else "none", edgecolors=c, linewidths=1.3)
        line = ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = model")
        ax.axhline(1, color="grey", lw=0.5)
        ax.axvline(1, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("op-count model: forward / reverse multiplies")
        ax.set_ylabel("measured: forward / reverse median time")
        ax.set_title(run_title(run, device) + (f", {dtype}" if several else ""), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    # colour swatches for L (a line, no marker), grey hollow shapes for K, a grey circle
    # filled or hollow for N: each entry a glyph of its own, a column per group
    groups = [
        [Line2D([], [], ls="-", lw=6, color=c, label=f"depth L = {L:.0f}")
         for L, c in colours.items()],
        [Line2D([], [], ls="", marker=m, color="grey", markerfacecolor="none", ms=8,
                label=f"width K = {K:.0f}") for K, m in markers.items()],
        [Line2D([], [], ls="", marker=FILL_MARKER, color="grey", ms=8,
                label="filled: batched (N > 1)"),
         Line2D([], [], ls="", marker=FILL_MARKER, markerfacecolor="none", color="grey",
                ms=8, label="hollow: single x (N = 1)")],
        line,
    ]
    tall = max(map(len, groups))
    handles = [h for g in groups for h in g + [_blank()] * (tall - len(g))]
    fig.legend(handles=handles, loc="lower center", ncol=len(groups), fontsize=8,
               frameon=False)
    for ax in axes[0]:
        plain_log(ax, "x")
        plain_log(ax, "y")
    fig.suptitle("Jacobian: forward vs reverse mode, model and measurement\n"
                 "(below 1: forward mode is cheaper)", fontsize=10)
    reserve(fig, (0.22 * tall + 0.2) / fig.get_figheight())
    return _save(fig, out / "jacobian_modes_model_vs_measured.png")


def _blank() -> Line2D:
    """An empty legend slot (keeps each group of entries in its own column)."""
    return Line2D([], [], ls="", label=" ")
