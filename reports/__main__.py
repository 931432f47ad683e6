"""Command line of handgrad's reports.

    python -m reports render BENCH.json [MORE.json ...] --out DIR
    python -m reports gate --baseline BASE.json --current NEW.json [--threshold 10%]
        [--benchmark-threshold 20%]

Exit codes: render 0 done, 2 unusable input; gate 0 no regression, 1 regression,
2 unusable input (missing, corrupt, no common benchmarks), with a one-line message.
"""

from __future__ import annotations

import argparse
import os
import sys

from reports.load import ReportInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="markdown + figures + CSV from benchmark JSON files "
                       "and verify reports")
    p.add_argument("files", nargs="+", help="pytest-benchmark JSON files (several merge, "
                   "each labelled by machine) and pytest verify --verify-report files")
    p.add_argument("--out", required=True, help="folder to write the report into")
    g = sub.add_parser("gate", help="fail (exit 1) when a kernel regressed against baseline")
    g.add_argument("--baseline", required=True, help="pytest-benchmark JSON of the baseline")
    g.add_argument("--current", required=True, help="pytest-benchmark JSON of the change")
    g.add_argument("--threshold", default="10%",
                   help="a kernel regresses when the interval of its mean change over all its "
                   "benchmarks lies above 1 + this (default 10%%)")
    g.add_argument("--benchmark-threshold", default="20%",
                   help="a single benchmark regresses when its own interval lies above 1 + "
                   "this (default 20%%)")
    g.add_argument("--confidence", type=float, default=0.95, help="interval level (0.95)")
    g.add_argument("--summary", help="also append the markdown summary to this file "
                   "(default: $GITHUB_STEP_SUMMARY when set)")
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            from reports.render import render

            render(args.files, args.out)
            return 0
        from reports.gate import gate, parse_threshold

        result = gate(args.baseline, args.current, parse_threshold(args.threshold),
                      args.confidence,
                      benchmark_threshold=parse_threshold(args.benchmark_threshold,
                                                              "--benchmark-threshold"))
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md = result.markdown()
    try:
        print(md)
    except BrokenPipeError:  # piped into head & co.: the reader has seen enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stdout for the interpreter's exit)
    target = args.summary or os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a") as fh:
            fh.write(md)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
