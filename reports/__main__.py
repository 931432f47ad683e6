"""Command line of handgrad's reports.

    python -m handgrad.reports render BENCH.json [MORE.json ...] [VERIFY.json] --out DIR
    python -m handgrad.reports gate --baseline BASE.json [BASE2.json ...] --current NEW.json
        [NEW2.json ...] [--threshold 10%] [--benchmark-threshold 20%] [--confidence 0.95]
        [--accept FILE] [--summary FILE]
    python -m handgrad.reports init-study --out DIR [--seed 0]

The gate compares instruction counts when both files hold them (pytest bench
--bench-instructions; default threshold 2%), else times against each kernel's reference
(default 10%). Several timed baseline/current pairs (separate runs, alternated): a kernel
fails only when every pair flags it. --accept names a file of declared regressions
(kernel.method bound reason), passed up to their bound.

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

from handgrad.reports.load import ReportInputError, check_output_dir, check_output_file


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
    parser = _Parser(prog="python -m handgrad.reports", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("render", help="markdown + figures + CSV from benchmark JSON files "
                       "and verify reports")
    p.add_argument("files", nargs="+", help="pytest-benchmark JSON files, .json or .json.gz "
                   "(several merge, each row labelled by its run: machine · file) and pytest "
                   "verify --verify-report files")
    p.add_argument("--out", required=True, help="folder to write the report into")
    g = sub.add_parser("gate", help="fail (exit 1) when a kernel regressed against baseline")
    g.add_argument("--baseline", required=True, nargs="+",
                   help="pytest-benchmark JSON of the baseline (several: one per timed run)")
    g.add_argument("--current", required=True, nargs="+",
                   help="pytest-benchmark JSON of the change, as many as --baseline, paired "
                   "in order")
    g.add_argument("--threshold", default=None,
                   help="timed runs: a kernel regresses when the interval of its mean change "
                   "over all its benchmarks lies above 1 + this (default 10%%); instruction "
                   "counts: a benchmark regresses when its count grows beyond 1 + this "
                   "(default 2%%)")
    g.add_argument("--accept", metavar="FILE",
                   help="declared regressions, one a line: kernel.method bound reason; "
                   "each passes up to its bound and the report lists it")
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
            from handgrad.reports.render import render

            render(args.files, check_output_dir(args.out))
            return 0
        if args.command == "init-study":
            from handgrad.reports.init_study import write_study

            write_study(check_output_dir(args.out), seed=args.seed)
            return 0
        from handgrad.reports import gate as G

        if len(args.baseline) != len(args.current):
            raise ReportInputError(f"--baseline and --current: expected as many files each "
                                   f"(pairs), got {len(args.baseline)} and "
                                   f"{len(args.current)}")
        bench_threshold = G.parse_threshold(args.benchmark_threshold, "--benchmark-threshold")
        confidence = parse_confidence(args.confidence)
        accepted = G.read_accepted(args.accept)
        target = args.summary or os.environ.get("GITHUB_STEP_SUMMARY")
        if target:
            check_output_file(target, "--summary" if args.summary else "$GITHUB_STEP_SUMMARY")
        files = [*args.baseline, *args.current]
        counted = [G.is_instruction_run(f) for f in files]
        if any(counted) and not all(counted):
            mixed = [f for f, c in zip(files, counted) if not c]
            raise ReportInputError(f"{mixed[0]}: a timed run, compared with instruction "
                                   "counts; give runs of one kind (both --bench-instructions "
                                   "or both timed)")
        if all(counted):
            if len(args.baseline) > 1:
                raise ReportInputError("instruction counts have no noise to repeat away: "
                                       "give one --baseline and one --current")
            threshold = G.parse_threshold(args.threshold or f"{G.INSTRUCTION_THRESHOLD}")
            results = [G.instruction_gate(args.baseline[0], args.current[0], threshold,
                                          accepted)]
        else:
            threshold = G.parse_threshold(args.threshold or "10%")
            results = [G.gate(b, c, threshold, confidence, benchmark_threshold=bench_threshold,
                              accepted=accepted)
                       for b, c in zip(args.baseline, args.current)]
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md = "\n".join(r.markdown() for r in results)
    # several pairs: a regression is confirmed only when every pair flags the kernel
    confirmed = set.intersection(*(r.flagged() for r in results))
    if len(results) > 1:
        md += (f"\n### Over {len(results)} pairs of runs: "
               + (f"FAIL: every pair flags {', '.join(sorted(confirmed))}" if confirmed else
                  "PASS: no kernel is flagged by every pair") + "\n")
    try:
        print(md)
    except BrokenPipeError:  # piped into head & co.: the reader has seen enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stdout for the interpreter's exit)
    if target:
        with open(target, "a") as fh:
            fh.write(md)
    return 1 if confirmed else 0


if __name__ == "__main__":
    if __spec__ is not None and __spec__.name == "reports.__main__":
        # the checkout's old spelling, kept for the 0.2 release only
        print("note: `python -m reports` is deprecated and goes in the next release; use "
              "`python -m handgrad.reports`", file=sys.stderr)
    sys.exit(main())
