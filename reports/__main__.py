"""Command line of handgrad's reports.

    python -m reports render BENCH.json [MORE.json ...] [VERIFY.json] --out DIR
    python -m reports gate --baseline BASE.json --current NEW.json [--threshold 10%]
        [--benchmark-threshold 20%] [--confidence 0.95] [--summary FILE]
    python -m reports init-study --out DIR [--seed 0]

Exit codes: render and init-study 0 done; gate 0 no regression, 1 regression. All: 2 for
any unusable input or option (missing, a folder, corrupt, not handgrad's benchmark output,
nothing in common, out of range, an output path that cannot be written), with one line on
stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from reports.load import ReportInputError, check_output_dir, check_output_file


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2), like every other unusable input."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_confidence(text: str) -> float:
    """'0.95' -> 0.95; a level outside (0, 1), e.g. 95, is refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise ReportInputError(f"--confidence: expected a level between 0 and 1 "
                               f"(e.g. 0.95), got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m reports", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("render", help="markdown + figures + CSV from benchmark JSON files "
                       "and verify reports")
    p.add_argument("files", nargs="+", help="pytest-benchmark JSON files, .json or .json.gz "
                   "(several merge, each row labelled by its run: machine · file) and pytest "
                   "verify --verify-report files")
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
    g.add_argument("--confidence", default="0.95",
                   help="interval level, between 0 and 1 (default 0.95)")
    g.add_argument("--summary", help="also append the markdown summary to this file "
                   "(default: $GITHUB_STEP_SUMMARY when set)")
    s = sub.add_parser("init-study", help="the course's initialisation study: activations "
                       "and gradient norms per layer of a depth-8 tanh MLP for U(-d, d) "
                       "and Xavier weights (figures, CSV, markdown)")
    s.add_argument("--out", required=True, help="folder to write the study into")
    s.add_argument("--seed", type=int, default=0, help="seed of the batch and the weights "
                   "(default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "render":
            from reports.render import render

            render(args.files, check_output_dir(args.out))
            return 0
        if args.command == "init-study":
            from reports.init_study import write_study

            write_study(check_output_dir(args.out), seed=args.seed)
            return 0
        from reports.gate import gate, parse_threshold

        threshold = parse_threshold(args.threshold)
        bench_threshold = parse_threshold(args.benchmark_threshold, "--benchmark-threshold")
        confidence = parse_confidence(args.confidence)
        target = args.summary or os.environ.get("GITHUB_STEP_SUMMARY")
        if target:
            check_output_file(target, "--summary" if args.summary else "$GITHUB_STEP_SUMMARY")
        result = gate(args.baseline, args.current, threshold, confidence,
                      benchmark_threshold=bench_threshold)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md = result.markdown()
    try:
        print(md)
    except BrokenPipeError:  # piped into head & co.: the reader has seen enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stdout for the interpreter's exit)
    if target:
        with open(target, "a") as fh:
            fh.write(md)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
