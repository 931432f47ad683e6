"""``render``: benchmark JSON files (and verify reports) -> report.md, CSV tables and
figures in one folder."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from reports import figures
from reports.load import ReportInputError, check_output_dir, load_benchmarks, read_json_any
from reports.record import RATIO_DEFINITION
from reports.tables import summary, to_markdown
from reports.verification import headroom_table, is_verify_report, load_records


def _split(paths: Sequence[str | Path]) -> tuple[list, list]:
    """Benchmark files and verify reports, told apart by their content."""
    bench, verify = [], []
    for p in paths:
        (verify if is_verify_report(read_json_any(p)) else bench).append(p)
    return bench, verify


def render(paths: Sequence[str | Path], out: str | Path, progress=None) -> Path:
    """Write the report for ``paths`` under ``out``; returns the markdown file's path.
    Progress lines go to ``progress`` (default: the current ``sys.stderr``). Every input is
    read and validated before anything is written (ReportInputError)."""
    progress = progress if progress is not None else sys.stderr
    if not paths:
        raise ReportInputError("no input files given")
    out = check_output_dir(out)
    bench_paths, verify_paths = _split(paths)
    df = load_benchmarks(bench_paths) if bench_paths else None
    records = load_records(verify_paths) if verify_paths else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportInputError(f"--out: cannot make {out} ({exc.strerror})") from None
    lines = ["# handgrad report", ""]
    written = []

    if df is not None:
        table = summary(df)
        table.to_csv(out / "summary.csv", index=False)
        written.append(out / "summary.csv")
        kernels = sorted(k for k in df["kernel"].dropna().unique())
        lines += [
            "## Benchmarks",
            "",
            f"Sources: {', '.join(f'`{p}`' for p in bench_paths)}; "
            f"{len(df)} benchmarks on {df['machine'].nunique()} machine(s): "
            f"{', '.join(sorted(df['machine'].unique()))}.",
            "",
            f"{RATIO_DEFINITION} `gflop_s` is the analytic operation count in each "
            "benchmark's `extra_info.flops` over its median time. Times are per call; "
            "`owner` says whose each method is (handgrad's kernels are listed before torch's "
            "references of the same shape).",
            "",
        ]
        steps = len(kernels) + 2
        for i, kernel in enumerate(kernels, 1):
            print(f"[{i}/{steps}] rendering {kernel}", file=progress, flush=True)
            lines += [f"### {kernel}", ""]
            fig = figures.time_vs_depth(df, kernel, out)
            if fig is not None:
                lines += [f"![{kernel}: time vs depth]({fig.name})", ""]
                written.append(fig)
            sub = table[table["kernel"] == kernel].dropna(axis=1, how="all")
            lines += [to_markdown(sub), ""]
        print(f"[{steps - 1}/{steps}] rendering the Jacobian mode figure", file=progress,
              flush=True)
        fig = figures.jacobian_modes(df, out)
        if fig is not None:
            written.append(fig)
            lines += [
                "### Jacobian: forward vs reverse, model and measurement",
                "",
                "Each point is one (L, K, N): across, the op-count model's forward/reverse "
                "ratio; up, the measured one. On the dashed line the model predicts the "
                "timing; small widths sit above it because per-layer dispatch overhead, "
                "not multiplies, dominates there.",
                "",
                f"![Jacobian modes]({fig.name})",
                "",
            ]
        print(f"[{steps}/{steps}] rendering the roofline figure", file=progress, flush=True)
        fig = figures.roofline(df, out)
        if fig is not None:
            written.append(fig)
            lines += [
                "### Throughput against the control",
                "",
                "Achieved GFLOP/s of every benchmark with an analytic FLOP count, against its "
                "arithmetic intensity; the dashed line is what a 512x512 matmul achieves on "
                "the same machine in the same run.",
                "",
                f"![roofline]({fig.name})",
                "",
            ]

    if records is not None:
        print("rendering the verification headroom table", file=progress, flush=True)
        head = headroom_table(records)
        head.to_csv(out / "headroom.csv", index=False)
        written.append(out / "headroom.csv")
        lines += [
            "## Verification: precision headroom",
            "",
            f"Sources: {', '.join(f'`{p}`' for p in verify_paths)}. "
            "`worst_ratio` is the largest |kernel - reference| / (atol + rtol |reference|) "
            "over a kernel's comparisons (below 1 passes); `headroom` = 1 / worst_ratio, "
            "how many times its error could grow before the check failed. Sorted nearest "
            "to failing first.",
            "",
            to_markdown(head),
            "",
        ]

    md = out / "report.md"
    md.write_text("\n".join(lines))
    names = ", ".join(p.name for p in written)
    print(f"wrote {md} and {names}", file=progress)
    return md
