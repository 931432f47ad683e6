"""Command line of handgrad's reports.

    python -m handgrad.reports render BENCH.json [MORE.json ...] [VERIFY.json] --out DIR
    python -m handgrad.reports gate --baseline BASE.json [BASE2.json ...] --current NEW.json
        [NEW2.json ...] [--noise CALIBRATION.json ...] [--threshold T] [--benchmark-threshold 20%]
        [--confidence 0.95] [--accept FILE] [--summary FILE]
    python -m handgrad.reports calibrate RUN.json RUN2.json RUN3.json [...] --out FILE
    python -m handgrad.reports history add|report ...   (see history --help)
    python -m handgrad.reports init-study --out DIR [--seed 0]

The gate compares instruction counts when both files hold them (pytest bench
--bench-instructions; default threshold 2%), else times against each kernel's reference.
One timed run a side: the per-round intervals of that pair (default threshold 10%).
Several runs a side (separate processes, alternated, e.g. by python -m
handgrad.benchmark.alternate) or a calibration (--noise): the between-process verdict of
handgrad.reports.noise (default threshold 5% for a kernel), which can also be
inconclusive. calibrate derives that calibration from unchanged runs. --accept names a
file of declared regressions (kernel.method bound reason), passed up to their bound.

Exit codes: render, calibrate, history and init-study 0 done; gate 0 no regression, 1
regression, 3 no regression but some kernel or benchmark undecided (the report says how
many runs a side would decide it). All: 2 for any unusable input or option (missing, a
folder, corrupt, not handgrad's benchmark output, nothing in common, out of range, an
output path that cannot be written), with one line on stderr.
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
    """'0.95' or '95%' -> 0.95; a level outside (0, 1), e.g. 95 or 100%, is refused."""
    from handgrad.reports.gate import _percentage

    pct = _percentage(text)  # the percentage form, read as --threshold reads it
    try:
        value = pct / 100 if pct is not None else float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise ReportInputError(f"--confidence: expected a level between 0 and 1 or a "
                               f"percentage between 0% and 100% (e.g. 0.95 or 95%), got "
                               f"{text!r}")
    return value


# torch.Generator.manual_seed's range (a negative seed is taken as 2**64 plus it)
SEED_RANGE = (-2**63, 2**64 - 1)


def integer(low: int, high: int, what: str):
    """An argparse ``type`` for every integer option: an int from ``low`` to ``high``,
    else a usage error (exit 2, one line naming the option) saying the range; a number
    out of it had reached torch as an overflow traceback."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high} "
                                             f"({what}), got {text!r}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m handgrad.reports", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("render", help="markdown + figures + CSV from benchmark JSON files "
                       "and verify reports", description="Reads pytest-benchmark JSON files "
                       "(pytest --benchmark-json, .json or .json.gz; several merge, each row "
                       "labelled by its run) and verify reports (pytest --verify-report), and "
                       "writes into --out a report: report.md (tables of each kernel against "
                       "its reference, a verify report's headroom, the failed and disturbed "
                       "benchmarks named), the "
                       "figures it links (time against depth, roofline, CPU against GPU, "
                       "step sweeps) as PNG, and the tables as CSV (summary.csv and more). "
                       "Judges nothing: exit 0 done, 2 for an unusable input or --out.")
    p.add_argument("files", nargs="+", help="pytest-benchmark JSON files, .json or .json.gz "
                   "(several merge, each row labelled by its run: machine · file) and pytest "
                   "verify --verify-report files")
    p.add_argument("--out", required=True, help="folder to write the report into")
    g = sub.add_parser("gate", help="fail (exit 1) when a kernel regressed against baseline",
                       description="Reads the baseline's and the change's pytest-benchmark "
                       "JSON (one timed run a side, several, or instruction counts of "
                       "--bench-instructions), and a calibration (--noise) and declared "
                       "regressions (--accept) when given; compares each kernel against its "
                       "reference on both sides and writes a Markdown verdict to stdout (and "
                       "--summary or $GITHUB_STEP_SUMMARY), warnings on stderr. Exit 0 no "
                       "regression, 1 a regression, 3 some kernel undecided, 2 an unusable "
                       "input.")
    g.add_argument("--baseline", required=True, nargs="+",
                   help="pytest-benchmark JSON of the baseline (several: one per timed run)")
    g.add_argument("--current", required=True, nargs="+",
                   help="pytest-benchmark JSON of the change (several: one per timed run)")
    g.add_argument("--noise", metavar="FILE", nargs="+",
                   help="a calibration of the between-process noise (python -m "
                   "handgrad.reports calibrate): its per-kernel and per-benchmark spreads and "
                   "thresholds; several (one a machine): the one whose machine (CPU, cores, "
                   "torch threads) is the current runs', else the first")
    g.add_argument("--threshold", default=None,
                   help="timed runs: a kernel's limit, 1 + this, for all its benchmarks "
                   "together (default 10%% for one run a side, 5%% over several runs or with "
                   "--noise); instruction counts: a benchmark regresses when its count grows "
                   "beyond 1 + this (default 2%%)")
    g.add_argument("--accept", metavar="FILE",
                   help="declared regressions, one a line: kernel.method bound reason, the "
                   "bound a factor (1.04) or a percentage (4%%, +4%%); each passes up to its "
                   "bound and the report lists it")
    g.add_argument("--accept-elsewhere", metavar="RUN", nargs="+",
                   help="benchmark runs another gate judges with the same --accept file "
                   "(.ci/gate gives its timed gate the instruction counts' runs): a line "
                   "naming a kernel.method gated in them is not warned as matching nothing")
    g.add_argument("--accept-later", nargs="?", const=True, default=False, metavar="FILE",
                   help="another gate follows with the same --accept file (and this one's "
                   "runs as --accept-elsewhere): leave it the warning of lines this gate "
                   "compares nowhere, unless this gate fails (the later one does not run); "
                   "FILE: write those warnings there (empty when none is left), for a flow "
                   "to print should the later gate not reach its verdict")
    g.add_argument("--benchmark-threshold", default="20%",
                   help="a single benchmark regresses when its own interval lies above 1 + "
                   "this (default 20%%)")
    g.add_argument("--confidence", default="0.95",
                   help="interval level, between 0 and 1 (default 0.95)")
    g.add_argument("--summary", help="also append the markdown summary to this file "
                   "(default: $GITHUB_STEP_SUMMARY when set)")
    c = sub.add_parser("calibrate", help="the between-process noise of unchanged runs: a "
                       "spread and a threshold per kernel and benchmark, for gate --noise",
                       description="Reads three or more pytest-benchmark JSON files of the "
                       "same code, each from a separate process, and writes to --out a "
                       "calibration (JSON): the between-process spread of each kernel and "
                       "benchmark and the threshold that follows, which gate --noise reads; "
                       "prints the widest. Exit 0 done, 2 for an unusable input.")
    c.add_argument("files", nargs="+", help="pytest-benchmark JSON files of the same code, "
                   "each from a separate process (at least 3; 6 or more is better)")
    c.add_argument("--out", required=True, help="the calibration file to write (JSON)")
    c.add_argument("--threshold", default="5%", help="the least threshold of a kernel "
                   "(default 5%%)")
    c.add_argument("--benchmark-threshold", default="20%", help="the least threshold of "
                   "one benchmark (default 20%%)")
    from handgrad.reports.history import add_parser as add_history

    add_history(sub)
    s = sub.add_parser("init-study", help="the course's initialisation study: activations "
                       "and gradient norms per layer of a depth-8 tanh MLP for U(-d, d) "
                       "and Xavier weights (figures, CSV, markdown)",
                       description="Reads nothing: draws a batch and the weights from "
                       "--seed, runs a depth-8 tanh MLP under U(-d, d) and Xavier "
                       "initialisations, and writes into --out the activations and gradient "
                       "norms per layer as figures (PNG), CSV and a Markdown page.")
    s.add_argument("--out", required=True, help="folder to write the study into")
    s.add_argument("--seed", type=integer(*SEED_RANGE, "a torch seed"), default=0,
                   help="seed of the batch and the weights (default 0)")
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
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "history":
            from handgrad.reports.history import main as history_main

            return history_main(args)
        from handgrad.reports import gate as G

        bench_threshold = G.parse_threshold(args.benchmark_threshold, "--benchmark-threshold")
        confidence = parse_confidence(args.confidence)
        accepted = G.read_accepted(args.accept)
        warnings: list[str] = []
        target = args.summary or os.environ.get("GITHUB_STEP_SUMMARY")
        if target:
            check_output_file(target, "--summary" if args.summary else "$GITHUB_STEP_SUMMARY")
        later_file = args.accept_later if isinstance(args.accept_later, str) else None
        if later_file is not None:
            later_file = check_output_file(later_file, "--accept-later")
        files = [*args.baseline, *args.current]
        counted = [G.is_instruction_run(f) for f in files]
        if any(counted) and not all(counted):
            mixed = [f for f, c in zip(files, counted) if not c]
            raise ReportInputError(f"{mixed[0]}: a timed run, compared with instruction "
                                   "counts; give runs of one kind (both --bench-instructions "
                                   "or both timed)")
        if all(counted):
            if len(args.baseline) > 1 or len(args.current) > 1:
                raise ReportInputError("instruction counts have no noise to repeat away: "
                                       "give one --baseline and one --current")
            if args.noise:
                raise ReportInputError("--noise: a calibration of timed runs, given with "
                                       "instruction counts")
            threshold = G.parse_threshold(args.threshold or f"{G.INSTRUCTION_THRESHOLD}")
            results = [G.instruction_gate(args.baseline[0], args.current[0], threshold,
                                          accepted)]
        elif len(args.baseline) == len(args.current) == 1 and not args.noise:
            threshold = G.parse_threshold(args.threshold or "10%")
            results = [G.gate(args.baseline[0], args.current[0], threshold, confidence,
                              benchmark_threshold=bench_threshold, accepted=accepted)]
        else:
            from handgrad.reports import noise as N

            threshold = G.parse_threshold(args.threshold or f"{N.KERNEL_THRESHOLD}")
            calibration = N.choose_noise([N.read_noise(p) for p in args.noise or []],
                                         args.current)
            results = [N.gate_runs(args.baseline, args.current, threshold, bench_threshold,
                                   confidence, calibration, accepted)]
            warnings += (N.calibration_runs_given(calibration, args.baseline, args.current)
                         + N.sides_run_apart(calibration, args.baseline, args.current))
        result = results[0]
        elsewhere = (G.accepted_elsewhere(args.accept_elsewhere)
                     if args.accept_elsewhere else None)
        unmatched = G.unmatched_accepted(accepted, result.table, result.gate_name, elsewhere)
        left = bool(args.accept_later) and result.passed  # the later gate warns them
        if not left:
            warnings += unmatched
        if later_file is not None:  # what was left, for the flow to say if none follows
            later_file.write_text(G.left_to_later(unmatched if left else [],
                                                  result.gate_name), encoding="utf-8")
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    # the warnings in the report too: CI's reader sees the step summary, not stderr
    md = "\n".join(G.with_warnings(r.markdown(args.accept), warnings) for r in results)
    try:
        print(md)
    except BrokenPipeError:  # piped into head & co.: the reader has seen enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stdout for the interpreter's exit)
    if target:
        with open(target, "a") as fh:
            fh.write(md)
    if not result.passed:
        return 1
    return 3 if getattr(result, "inconclusive", 0) else 0


def _calibrate(args) -> int:
    import json

    from handgrad.reports import gate as G
    from handgrad.reports import noise as N

    out = check_output_file(args.out, "--out")
    data = N.calibrate(args.files, G.parse_threshold(args.threshold),
                       G.parse_threshold(args.benchmark_threshold, "--benchmark-threshold"))
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    wide = sorted(((v["threshold"], k) for k, v in data["kernels"].items()), reverse=True)
    print(f"calibration of {data['runs']} runs: {len(data['kernels'])} kernels, "
          f"{len(data['benchmarks'])} benchmarks -> {out}")
    for thr, name in wide[:5]:
        print(f"  {name}: limit {1 + thr:.3f}")
    for line in N.failed_tests(args.files, "calibration"):  # left out, said
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    if __spec__ is not None and __spec__.name == "reports.__main__":
        # the checkout's old spelling: deprecated in 0.2, gone in 0.3 as 0.2 said
        print("error: `python -m reports` was removed in handgrad 0.3.0 (deprecated in "
              "0.2); use `python -m handgrad.reports` with the same arguments",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
