"""``render``: benchmark JSON files -> report.md, summary.csv and figures in one folder."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from reports import figures
from reports.load import load_benchmarks
from reports.tables import summary, to_markdown


def render(paths: Sequence[str | Path], out: str | Path, progress=sys.stderr) -> Path:
    """Write the report for ``paths`` under ``out``; returns the markdown file's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_benchmarks(paths)
    table = summary(df)
    table.to_csv(out / "summary.csv", index=False)

    kernels = sorted(k for k in df["kernel"].dropna().unique())
    lines = [
        "# handgrad benchmark report",
        "",
        f"Sources: {', '.join(f'`{p}`' for p in paths)}; "
        f"{len(df)} benchmarks on {df['machine'].nunique()} machine(s).",
        "",
        "`ratio_to_ref` is this method's median over its reference's median in the same run "
        "and group (below 1: faster than the reference). `gflop_s` uses the analytic operation "
        "count in each benchmark's `extra_info.flops`.",
        "",
    ]
    for i, kernel in enumerate(kernels, 1):
        print(f"[{i}/{len(kernels)}] rendering {kernel}", file=progress, flush=True)
        lines += [f"## {kernel}", ""]
        fig = figures.time_vs_depth(df, kernel, out)
        if fig is not None:
            lines += [f"![{kernel}: time vs depth]({fig.name})", ""]
        sub = table[table["kernel"] == kernel].dropna(axis=1, how="all")
        lines += [to_markdown(sub), ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    print(f"wrote {md}, {out / 'summary.csv'} and {len(kernels)} figure(s)", file=progress)
    return md
