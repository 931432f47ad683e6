"""``render``: benchmark JSON files (and verify reports) -> report.md, CSV tables and
figures in one folder."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from handgrad.reports import devices, figures, roofline
from handgrad.reports.load import (
    TEST_FAILED,
    ReportInputError,
    check_given_once,
    check_output_dir,
    gaps,
    load_benchmarks,
    read_json_any,
)
from handgrad.reports.record import RATIO_DEFINITION
from handgrad.reports.tables import COUNT_RULE, DISTURBED_RULE, summary, to_markdown
from handgrad.reports.verification import (
    headroom_table,
    is_verify_report,
    load_records,
    load_sweeps,
    sweep_table,
    v_curve,
)

MEMORY_TEXT = (
    "`peak_mib` is the peak memory allocated during one call (`peak_bytes` / 2^20); "
    "`memory_ratio` is that peak over its reference's: the `reference_peak_bytes` written "
    "in the same record where there is one, else the peak of the reference's own benchmark "
    "in the same group and file."
)


def _split(paths: Sequence[str | Path]) -> tuple[list, list]:
    """Benchmark files and verify reports, told apart by their content."""
    bench, verify = [], []
    for p in paths:
        (verify if is_verify_report(read_json_any(p)) else bench).append(p)
    return bench, verify


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """A table as the markdown shows it: no column that is empty in every row, and no
    machine column (each run's label names its machine)."""
    t = table.drop(columns=[c for c in ("machine",) if c in table.columns])
    empty = [c for c in t.columns if t[c].isna().all() or (t[c].astype(str) == "").all()]
    return t.drop(columns=empty)


def _about_runs(df: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    lines = [f"{len(df)} benchmarks in {df['run'].nunique()} run(s) on "
             f"{df['machine'].nunique()} machine(s). A run is one input file; its label "
             "(column `run`) is the machine and the file's name:", ""]
    for (run, source), g in df.groupby(["run", "source"], sort=False):
        lines.append(f"- `{run}`: `{source}`, device(s) {', '.join(sorted(g['device'].unique()))}")
    lines += ["", "What these files lack:", ""]
    for source, lack in gaps(df).items():
        said = "; ".join(lack) if lack else "nothing today's bench suite records"
        lines.append(f"- `{Path(source).name}`: {said}.")
    flagged = int((table["disturbed"] != "").sum()) if "disturbed" in table.columns else 0
    memory = MEMORY_TEXT if "peak_mib" in table.columns else (
        "No run recorded peak memory, so the tables have no `peak_mib` or `memory_ratio` "
        "column.")
    counts = [COUNT_RULE, ""] if "kinstr" in table.columns else []
    return lines + [
        "",
        *counts,
        f"{RATIO_DEFINITION} `gflop_s` is the analytic operation count in each "
        "benchmark's `extra_info.flops` over its median time. Times are per call; "
        "`role` says what each method is (kernels are listed before the references they "
        "are timed against, within each shape).",
        "",
        f"{memory}",
        "",
        f"{DISTURBED_RULE} "
        + (f"**{flagged} benchmark(s) are flagged** (column `disturbed`): read their "
           "ratios with care, or rerun." if flagged else "No benchmark is flagged."),
        "",
    ]


FAILED_TESTS_RULE = (
    "A benchmark whose test failed after it measured (`extra_info.test_failed`, written by "
    "handgrad's plugin) is left out of every table, figure and gate: a failed test's timing "
    "is not a measurement of a right kernel. Fix the test and rerun it."
)


def _failed_tests(failed: pd.DataFrame) -> list[str]:
    """The benchmarks of failed tests, said first and listed (none: nothing said)."""
    if failed.empty:
        return []
    shown = failed[["run", "group", "kernel", "role", "method", "device", "dtype",
                    "shape"]].copy()
    shown["median_ms"] = failed["median"] * 1e3
    return [f"**{len(failed)} benchmark(s) of failed tests, left out:** "
            f"{FAILED_TESTS_RULE}", "", to_markdown(_shown(shown)), ""]


def _cpu_vs_gpu(df: pd.DataFrame, out: Path, written: list) -> list[str]:
    sp = devices.speedups(df)
    if sp.empty:
        return ["## CPU vs GPU", "",
                "The inputs hold both devices, but no method, dtype and shape was measured "
                "on both.", ""]
    cross = devices.crossovers(sp)
    sp.drop(columns=["crossover_flop"], errors="ignore").to_csv(out / "cpu_vs_gpu.csv",
                                                                index=False)
    written.append(out / "cpu_vs_gpu.csv")
    pairs = list(dict.fromkeys(zip(sp["cpu_run"], sp["gpu_run"])))
    lines = [
        "## CPU vs GPU",
        "",
        "Speedup = CPU median / GPU median of the same method, dtype and shape (kernel, "
        "method, dtype and L, D, K, P, N, k, model all equal); above 1 the GPU is faster. "
        f"{devices.SIZE_DEFINITION} Per method, `crossover` is the smallest problem size at "
        "which the GPU is faster (or \"never within the grid\"), and `faster_from` the size "
        "from which it stays faster at every larger size of the grid. A row is `disturbed` "
        "when the CPU or the GPU benchmark is flagged (above).",
        "",
    ]
    one = len(pairs) == 1
    for i, (cpu_run, gpu_run) in enumerate(pairs, 1):
        s = sp[(sp["cpu_run"] == cpu_run) & (sp["gpu_run"] == gpu_run)]
        c = cross[(cross["cpu_run"] == cpu_run) & (cross["gpu_run"] == gpu_run)]
        lines += [f"### CPU `{cpu_run}` against GPU `{gpu_run}`", "",
                  "Crossover per method (kernels first):", "",
                  to_markdown(c[["kernel", "role", "method", "dtype", "shapes",
                                 "speedup_min", "speedup_max", "crossover",
                                 "faster_from"]]), ""]
        suffix = "" if one else f"_{i}"
        fig = devices.figure(s, c, out, f"cpu_vs_gpu{suffix}.png")
        if fig is not None:
            written.append(fig)
            lines += ["Time per call against problem size, a panel per handgrad kernel with "
                      "its torch reference on each shape; the dotted line is the crossover.",
                      "", f"![CPU vs GPU]({fig.name})", ""]
        fig = devices.jacobian_figure(s, out, f"cpu_vs_gpu_jacobian{suffix}.png")
        if fig is not None:
            written.append(fig)
            lines += ["The manual Jacobians, forward and reverse mode, against depth on the "
                      "CPU and the GPU:", "", f"![Jacobian CPU vs GPU]({fig.name})", ""]
        shown = s[["kernel", "role", "method", "dtype", "shape", "size_flop", "cpu_ms",
                   "gpu_ms", "speedup", "disturbed"]]
        lines += ["Speedup per method and shape:", "", to_markdown(_shown(shown)), ""]
    return lines


def render(paths: Sequence[str | Path], out: str | Path, progress=None) -> Path:
    """Write the report for ``paths`` under ``out``; returns the markdown file's path.
    Progress lines go to ``progress`` (default: the current ``sys.stderr``). Every input is
    read and validated before anything is written (ReportInputError)."""
    progress = progress if progress is not None else sys.stderr
    if not paths:
        raise ReportInputError("no input files given")
    out = check_output_dir(out)
    bench_paths, verify_paths = _split(paths)
    check_given_once(verify_paths, "each verify report once, or the headroom table counts "
                     "its comparisons twice")
    df = failed = None
    if bench_paths:  # the benchmarks of failed tests: listed, in no table or figure
        loaded = load_benchmarks(bench_paths, failed_tests=True)
        failed = loaded[loaded[TEST_FAILED]]
        df = loaded[~loaded[TEST_FAILED]].reset_index(drop=True)
    records = load_records(verify_paths) if verify_paths else None
    sweeps = load_sweeps(verify_paths) if verify_paths else []
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportInputError(f"--out: cannot make {out} ({exc.strerror})") from None
    lines = ["# handgrad report", ""]
    written = []

    def say(step: str) -> None:
        print(step, file=progress, flush=True)

    if df is not None:
        lines += ["## Benchmarks", "", *_failed_tests(failed)]
    if df is not None and df.empty:
        lines += ["No benchmark of a passing test: no tables or figures.", ""]
    elif df is not None:
        table = summary(df)
        table.to_csv(out / "summary.csv", index=False)
        written.append(out / "summary.csv")
        kernels = sorted(k for k in df["kernel"].dropna().unique())
        # an instruction run's times were taken under valgrind: its counts are in the
        # tables, its times in no figure
        timed = df[df["timer"] != "callgrind"]
        both = devices.has_both(timed)
        lines += _about_runs(df, table)
        # a step is announced and counted only where it draws something
        jacobian = len(timed) > 0 and not figures.jacobian_pairs(timed).empty
        roof = len(timed) > 0 and not roofline.roofline_points(timed).empty
        steps = len(kernels) + jacobian + roof + both
        step = len(kernels)
        for i, kernel in enumerate(kernels, 1):
            say(f"[{i}/{steps}] rendering {kernel}")
            lines += [f"### {kernel}", ""]
            fig = figures.time_vs_depth(timed, kernel, out) if len(timed) else None
            if fig is not None:
                lines += [f"![{kernel}: time vs depth]({fig.name})", ""]
                written.append(fig)
            elif (timed["kernel"] == kernel).any():  # say why there is none
                lines += [f"No time-against-depth figure: no timed benchmark of {kernel} "
                          "has a depth (a shape parameter `L`) to draw time against.", ""]
            sub = table[table["kernel"] == kernel].drop(columns=["kernel"])
            lines += [to_markdown(_shown(sub)), ""]
        if jacobian:
            step += 1
            say(f"[{step}/{steps}] rendering the Jacobian mode figure")
        elif (df["kernel"] == "jacobian").any():  # a project without one hears nothing of it
            say("skipping the Jacobian mode figure: " + (
                "no timed benchmark (instruction counts only)" if not len(timed) else
                "no timed manual_forward and manual_reverse Jacobian benchmarks of one "
                "(L, K, N) with the op-count model's counts"))
        fig = figures.jacobian_modes(timed, out) if jacobian else None
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
        if roof:
            step += 1
            say(f"[{step}/{steps}] rendering the roofline figure")
        else:
            say("skipping the roofline figure: " + (
                "no timed benchmark (instruction counts only)" if not len(timed) else
                "no timed benchmark records both a FLOP and a byte count (flops= and "
                "bytes= of measure)"))
        fig = roofline.roofline(timed, out) if roof else None
        if fig is None and len(timed):
            lines += ["### Roofline", "", "No roofline: no timed benchmark records both an "
                      "analytic FLOP count and a byte count (`flops=` and `bytes=` of "
                      "`measure`, both above 0).", ""]
        if fig is not None:
            written.append(fig)
            lines += [
                "### Roofline",
                "",
                "Achieved GFLOP/s of every benchmark with an analytic FLOP and byte count, "
                "against its arithmetic intensity, a panel per run and device. Where a run "
                "measured its ceilings (kernel `ceiling`), the roofline is min(compute, "
                "bandwidth × intensity): compute from the `matmul` ceiling's achieved GFLOP/s, "
                "bandwidth from the `copy` ceiling's bytes over its median time.",
                "",
                *[f"- {n}" for n in roofline.notes(timed)],
                "",
                f"![roofline]({fig.name})",
                "",
            ]
        if both:
            say(f"[{steps}/{steps}] rendering CPU vs GPU")
            lines += _cpu_vs_gpu(timed, out, written)

    if records is not None:
        say("rendering the verification headroom table")
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
    if sweeps:
        say("rendering the step sweeps")
        table = sweep_table(sweeps)
        table.to_csv(out / "step_sweeps.csv", index=False)
        fig = v_curve(sweeps, out)
        written += [out / "step_sweeps.csv", fig]
        lines += [
            "## Verification: step sweeps",
            "",
            "The largest error of the central difference against a kernel at each step h: "
            "truncation error falls as h^order to the right, rounding error grows as 1/h to "
            "the left. `order` is the fitted slope of the truncation branch (2 for a central "
            "difference), `best_eps` the step with the smallest error, `predicted_eps` the "
            "step that minimises the fitted truncation plus the dtype's rounding error.",
            "",
            to_markdown(table),
            "",
            f"![step sweeps]({fig.name})",
            "",
        ]

    md = out / "report.md"
    md.write_text("\n".join(lines))
    names = ", ".join(p.name for p in written)
    print(f"wrote {md} and {names}", file=progress)
    return md
