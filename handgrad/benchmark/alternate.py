"""Benchmark runs of two trees alternated, baseline/current/baseline/current, each run a
separate process, for the gate over runs (``python -m handgrad.reports gate`` with several
files a side) or, with one tree on both sides, for an A/A calibration (``calibrate``).

    python -m handgrad.benchmark.alternate --out DIR --runs N [--baseline-tree DIR]
        [--current-tree DIR] [--start 1] -- [pytest arguments ...]

Each run is ``python -m pytest ARGS --benchmark-json DIR/<side>-<i>.json`` in its tree,
with the tree first on PYTHONPATH (so that its ``handgrad`` is the one imported); trees
default to the working directory. ``--out`` and the trees are taken from the working
directory alternate is started in; the pytest arguments are read in each run's tree (its
own test paths). Alternating puts the machine's slow drift on both sides
alike; separate processes let the gate see the spread between processes, the larger noise
on a shared machine. A baseline run may exit 1 (a benchmark the old kernels cannot run is
absent from its file); any other failure, or a file not written, stops with status 2.
Prints one line per run (which, how long, the estimate of what is left).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SIDES = ("base", "head")


def run_command(pytest_args: list[str], out_file: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", *pytest_args, "--benchmark-json", str(out_file)]


def _env(tree: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    return env


def plan(runs: int, start: int = 1) -> list[tuple[str, int]]:
    """The order of the runs: (side, number), baseline first, alternated."""
    return [(side, i) for i in range(start, start + runs) for side in SIDES]


def alternate(out: Path, runs: int, baseline_tree: Path, current_tree: Path,
              pytest_args: list[str], start: int = 1, log=print) -> list[Path]:
    """Run the plan; returns the files written, in run order. A relative ``out`` or tree
    is taken from the working directory of the caller, not of the runs (each runs in its
    tree)."""
    out = Path(out).resolve()
    baseline_tree, current_tree = Path(baseline_tree).resolve(), Path(current_tree).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trees = {"base": baseline_tree, "head": current_tree}
    order = plan(runs, start)
    written, began = [], time.monotonic()
    for done, (side, i) in enumerate(order):
        target = out / f"{side}-{i}.json"
        target.unlink(missing_ok=True)
        t0 = time.monotonic()
        rc = subprocess.run(run_command(pytest_args, target),
                            cwd=trees[side], env=_env(trees[side]),
                            stdout=subprocess.DEVNULL).returncode
        took = time.monotonic() - t0
        allowed = (0, 1) if side == "base" else (0,)
        if rc not in allowed or not target.is_file():
            raise RuntimeError(f"run {side}-{i} in {trees[side]} exited {rc}"
                               + ("" if target.is_file() else f" without writing {target}"))
        written.append(target)
        left = (time.monotonic() - began) / (done + 1) * (len(order) - done - 1)
        log(f"alternate: run {done + 1}/{len(order)} {side}-{i} in {took:.0f} s"
            + (f" (exit {rc}: some benchmarks failed)" if rc else "")
            + f"; about {left:.0f} s left")
    return written


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handgrad.benchmark.alternate",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for base-<i>.json, head-<i>.json")
    parser.add_argument("--runs", required=True, type=_positive, help="runs a side")
    parser.add_argument("--baseline-tree", default=".", help="the baseline's tree (default .)")
    parser.add_argument("--current-tree", default=".", help="the current tree (default .)")
    parser.add_argument("--start", type=_positive, default=1,
                        help="number of the first run (to add runs to a folder; default 1)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="after --: the arguments of pytest (e.g. bench -q)")
    args = parser.parse_args(argv)
    rest = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    trees = []
    for name in ("baseline_tree", "current_tree"):
        tree = Path(getattr(args, name)).resolve()
        if not tree.is_dir():
            parser.exit(2, f"error: --{name.replace('_', '-')}: {tree} is not a folder\n")
        trees.append(tree)
    from handgrad.reports.load import ReportInputError, check_output_dir

    try:
        out = check_output_dir(args.out, "--out", what="the runs")  # (alternate resolves it)
    except ReportInputError as exc:
        parser.exit(2, f"error: {exc}\n")
    if any(a == "--benchmark-json" or a.startswith("--benchmark-json=") for a in rest):
        parser.exit(2, "error: --benchmark-json is set by alternate (one file a run)\n")
    try:
        alternate(out, args.runs, *trees, rest or ["bench", "-q"],
                  start=args.start)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
