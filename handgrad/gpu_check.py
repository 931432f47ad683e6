"""One command that checks every GPU claim handgrad makes, inside a short GPU lease.

    python -m handgrad.gpu_check --out DIR [--budget SECONDS] [--stages A,B] [--plan]

Run from a checkout (it runs ``pytest verify`` and ``pytest bench``) on a machine with a
CUDA GPU. In order, each stage a separate pytest process:

1. ``verify``: ``pytest verify --device cuda -m cuda``: every test that runs on the GPU
   (the kernels against autograd on cuda, directional checks at GPU sizes, and
   ``verify/test_cuda.py``: capture replay and reduce-overhead compiles against eager, the
   event clock against the wall clock, the cold-L2 buffer against the L2, the allocator's
   peak, the Gram path against the SVD).
2. Four trimmed benchmark runs, each covering one group of claims once: the ceilings
   (matmul float32/bfloat16, copy); backprop at K=4096 (float32, bfloat16: time and peak
   memory against autograd); the least-squares closed form against lstsq at N=20000,
   D=2000 (float64, float32); captured kernels against compiled references at the default
   grid's sizes.
3. ``trace``, which judges nothing: a profiler trace of backprop against autograd at the
   claim's size, bfloat16 and float32 (``python -m handgrad.benchmark.trace``): the
   window, the GPU's busy and idle time and the GPU time per torch operation, side by
   side; its tables follow the claims table, its Chrome traces are in ``DIR/trace/``.
4. The report (``python -m handgrad.reports render``) of the benchmarks' JSON.

Then it prints one table (claim, target, measured, verdict) and writes ``claims.json``,
``claims.md``, ``bench.json`` (every stage's benchmarks in one file), ``verify.xml`` and
``report/`` under DIR. A stage starts only when its estimated time fits what is left of
``--budget`` (default 360 s: a 7-minute slot less the machine's start), and is stopped
when the budget runs out; the claims of a stage that did not run are listed as NOT RUN,
never dropped. Exit status: 0 every claim of the stages run passed (or is INFO), 1 a
claim failed, 3 none failed but some were not run or not measured (the run is
incomplete: a stage over the budget, a test skipped, a benchmark missing; claims of stages
left out by ``--stages`` do not count), 2 usage error or no GPU.

Verdicts: PASS, FAIL, NOT RUN (budget, or the stage failed to produce data), NOT
MEASURED (the data hold no benchmark for the claim), INFO (measured, no target: a GPU
without a datasheet entry). The logic is tested on the CPU with a stand-in runner
(``verify/test_gpu_check.py``), the table on the H100 runs in ``../shared/gpu-h100/``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PASS, FAIL, NOT_RUN, NOT_MEASURED, INFO = "PASS", "FAIL", "NOT RUN", "NOT MEASURED", "INFO"
VERDICTS = (PASS, FAIL, NOT_RUN, NOT_MEASURED, INFO)
DEFAULT_BUDGET_S = 360.0
REPORT_RESERVE_S = 25.0  # kept back for merging, rendering and the table

# Dense datasheet peaks (no sparsity): FP32 without tensor cores (torch's matmul default,
# TF32 off), BF16/FP16 tensor cores, HBM bandwidth. Matched by substring of the GPU's name,
# most specific first.
DATASHEET = (
    ("H100 PCIe", {"float32": 51.2e12, "bfloat16": 756e12, "float16": 756e12, "copy": 2.0e12}),
    ("H100 NVL", {"float32": 60e12, "bfloat16": 835e12, "float16": 835e12, "copy": 3.9e12}),
    ("H100", {"float32": 67e12, "bfloat16": 989.5e12, "float16": 989.5e12, "copy": 3.35e12}),
    ("H200", {"float32": 67e12, "bfloat16": 989.5e12, "float16": 989.5e12, "copy": 4.8e12}),
    ("A100-SXM4-80GB", {"float32": 19.5e12, "bfloat16": 312e12, "float16": 312e12,
                        "copy": 2.039e12}),
)
CEILING_FRACTION = 0.6  # a ceiling must reach this share of the datasheet to be one


@dataclass
class Stage:
    name: str
    what: str
    args: list[str]  # after `python -m pytest`
    estimate_s: float
    kind: str = "bench"  # "verify" writes junit XML, "bench" benchmark JSON (both after
    # `python -m pytest`), "script" a module's Markdown (args after `python`; its --out)


BACKPROP_BIG = [f"bench/test_backprop.py::test_backprop[cuda-L3-K4096-N16384-{dt}-manual]"
                for dt in ("float32", "bfloat16")]
LSQ_BIG = [f"bench/test_least_squares.py::test_gd[cuda-k10000-N20000-D2000-{dt}-closed_form]"
           for dt in ("float64", "float32")]
CEILINGS = ["bench/test_ceiling.py::test_ceiling_matmul[cuda-float32]",
            "bench/test_ceiling.py::test_ceiling_matmul[cuda-bfloat16]",
            "bench/test_ceiling.py::test_ceiling_copy[cuda]"]
CAPTURED_SHAPES = ((5, 256, 256), (5, 30, 1))  # (L, K, N): backprop, jacobian
CAPTURED = [f"bench/test_backprop.py::test_backprop[cuda-L{L}-K{K}-N{N}-manual_captured]"
            for L, K, N in CAPTURED_SHAPES[:1]] + [
    f"bench/test_jacobian.py::test_jacobian[cuda-L{L}-K{K}-N{N}-manual_forward_captured]"
    for L, K, N in CAPTURED_SHAPES[1:]]
BENCH_FLAGS = ["--device", "cuda", "--benchmark-max-time=0.5", "--benchmark-min-rounds=5",
               "-p", "no:cacheprovider", "-q"]


def stages() -> list[Stage]:
    """The plan, most important first."""
    return [
        Stage("verify", "pytest verify --device cuda -m cuda (every GPU test)",
              ["verify", "--device", "cuda", "-m", "cuda", "-p", "no:cacheprovider", "-q"],
              180, kind="verify"),
        Stage("ceilings", "matmul float32/bfloat16 and copy ceilings", CEILINGS + BENCH_FLAGS,
              30),
        Stage("backprop", "backprop L=3 K=4096 N=16384 float32/bfloat16 vs autograd",
              BACKPROP_BIG + ["--bench-grid", "gpu"] + BENCH_FLAGS, 40),
        Stage("least_squares", "closed form vs lstsq, N=20000 D=2000, float64/float32",
              LSQ_BIG + ["--bench-grid", "gpu"] + BENCH_FLAGS, 45),
        Stage("captured", "captured kernels vs compiled references, default grid sizes",
              CAPTURED + BENCH_FLAGS, 60),
        # judges nothing: where backprop's time goes against autograd's (the open claim)
        Stage("trace", "profiler trace: backprop vs autograd, L=3 K=4096 N=16384 "
              "bfloat16/float32", ["-m", "handgrad.benchmark.trace", "--calls", "5"], 30,
              kind="script"),
    ]


# ------------------------------------------------------------------------------ running


@dataclass
class StageResult:
    name: str
    status: str  # "ran", "failed" (pytest exit status other than 0), "cut" (stopped at
    # the budget), "not run" (did not fit), "not selected" (left out by --stages)
    seconds: float = 0.0
    returncode: int | None = None
    output: str = ""  # the file its data went to (JSON or XML), "" when none
    log: str = ""


Runner = Callable[[list[str], float, Path], int]
TIMED_OUT = -1000  # what a runner returns for a command it stopped at its timeout (a
# process killed by the system returns its own -9, a failure, not a cut)


def subprocess_runner(cmd: list[str], timeout: float, log: Path) -> int:
    """Run ``cmd`` with its output to ``log``; TIMED_OUT when stopped at ``timeout``."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return TIMED_OUT


def stage_command(st: Stage, out: Path) -> tuple[list[str], Path]:
    """What a stage runs, after the interpreter (``python``), and the file its output goes
    to under ``out``: a script stage its module (``-m handgrad.benchmark.trace ...``) with
    ``--out``; the others ``-m pytest`` with their JUnit XML or benchmark JSON. The one
    source of both the run's command and the one ``--plan`` prints."""
    if st.kind == "script":
        target = out / st.name / f"{st.name}.md"
        return [*st.args, "--out", str(target.parent)], target
    target = out / (f"{st.name}.xml" if st.kind == "verify" else f"bench_{st.name}.json")
    return ["-m", "pytest", *st.args, f"--junitxml={target}" if st.kind == "verify"
            else f"--benchmark-json={target}"], target


def run_stages(plan: Sequence[Stage], out: Path, budget: float, *,
               runner: Runner = subprocess_runner,
               clock: Callable[[], float] = time.monotonic,
               say: Callable[[str], None] = print,
               started: float | None = None) -> list[StageResult]:
    """Each stage whose estimate fits what is left of ``budget`` (less the report's
    reserve; counted from ``started``, default now), stopped when the budget runs out;
    the rest are listed as not run. A stage's data file is removed before it runs: a file
    left in ``out`` by an earlier run is never read as this run's."""
    start, results = (clock() if started is None else started), []
    for st in plan:
        left = budget - REPORT_RESERVE_S - (clock() - start)
        if st.estimate_s > left:
            say(f"[gpu_check] {st.name}: not run (estimate {st.estimate_s:.0f} s, "
                f"{max(left, 0):.0f} s left of the budget)")
            results.append(StageResult(st.name, "not run"))
            continue
        args, target = stage_command(st, out)
        log = out / f"{st.name}.log"
        target.unlink(missing_ok=True)
        say(f"[gpu_check] {st.name}: {st.what} (estimate {st.estimate_s:.0f} s, "
            f"{left:.0f} s left)")
        t0 = clock()
        rc = runner([sys.executable, *args], left, log)
        seconds = clock() - t0
        status = "cut" if rc == TIMED_OUT else "ran" if rc == 0 else "failed"
        say(f"[gpu_check] {st.name}: {status} in {seconds:.0f} s (exit {rc})")
        results.append(StageResult(st.name, status, round(seconds, 1), rc,
                                   str(target) if target.exists() else "", str(log)))
    return results


# ------------------------------------------------------------------------------ claims


@dataclass
class Claim:
    id: str
    claim: str
    target: str
    stage: str
    measured: str = ""
    verdict: str = NOT_MEASURED
    detail: list[str] = field(default_factory=list)


def junit_outcomes(path: str | Path) -> dict[str, str]:
    """``{"verify/test_x.py::test_y[param]": "passed" | "failed" | "skipped"}`` from
    pytest's junit XML (an error counts as failed)."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        mod = case.get("classname", "").replace(".", "/")
        node = f"{mod}.py::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        out[node] = ("failed" if kinds & {"failure", "error"} else
                     "skipped" if "skipped" in kinds else "passed")
    return out


# claim id -> (text, node-id substrings that make it up); "other" takes every other test
VERIFY_CLAIMS = (
    ("capture", "a CUDA-graph replay returns the eager result (backprop, both Jacobians)",
     ("test_graph.py::test_a_captured_kernel_replays",)),
    ("compiled", "reduce-overhead compiles return the eager result (kernels, jacfwd)",
     ("test_cuda.py::test_reduce_overhead",)),
    ("event_clock", "CUDA events time the GPU's work, no sync inside the window",
     ("test_cuda.py::test_the_event_clock",)),
    ("cold_l2", "the cold-L2 flush buffer is at least twice the device's L2",
     ("test_cuda.py::test_the_cold_l2",)),
    ("gpu_memory", "the allocator's peak is exact; backprop peaks no higher than autograd",
     ("test_cuda.py::test_cuda_peak", "test_cuda.py::test_backprop_needs_no_more_gpu")),
    ("tanh_one_pass", "backprop's one-pass tanh' kernels compile, give autograd's gradients",
     ("test_cuda.py::test_backprop_takes_the_one_pass_tanh_prime",)),
    ("host_reads", "backprop makes the host wait for the GPU once per call",
     ("test_cuda.py::test_backprop_reads_the_host_once",)),
    ("gram", "the closed form takes the Gram path on CUDA and matches the SVD's",
     ("test_cuda.py::test_auto_takes_the_gram_path",)),
    ("directional", "directional checks at the gpu grid's largest sizes",
     ("test_directional.py::test_backprop_directional_at_gpu_sizes",
      "test_directional.py::test_jacobian_directional_at_gpu_sizes")),
    ("other", "every other verify test on cuda (kernels against autograd, dtypes, ...)", ()),
)


def verify_claims(outcomes: dict[str, str] | None, stage: StageResult | None) -> list[Claim]:
    claims, taken = [], set()
    for cid, text, parts in VERIFY_CLAIMS:
        c = Claim(f"verify.{cid}", text, "every test passes", "verify")
        if outcomes is None:
            c.verdict, c.measured = NOT_RUN, _why_not(stage)
            claims.append(c)
            continue
        nodes = [n for n in outcomes if any(p in n for p in parts)] if parts else \
            [n for n in outcomes if n not in taken]
        taken.update(nodes)
        counts = {k: sum(outcomes[n] == k for n in nodes) for k in ("passed", "failed",
                                                                    "skipped")}
        c.measured = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no test"
        c.detail = [n for n in nodes if outcomes[n] == "failed"]
        # a named claim passes only when every one of its tests ran and passed on the GPU
        # (a compile that torch refused skips its test: not evidence); the "other" tests
        # may skip where a test does not apply to the device (shown in `measured`)
        skipped_ok = not parts
        c.verdict = (FAIL if counts["failed"] else
                     PASS if counts["passed"] and (skipped_ok or not counts["skipped"]) else
                     NOT_RUN)
        claims.append(c)
    return claims


def _why_not(stage: StageResult | None) -> str:
    if stage is not None and stage.status == "not selected":
        return "stage not selected (--stages)"
    if stage is None or stage.status == "not run":
        return "stage not run: over the budget"
    if stage.status == "cut":
        return f"stage stopped at the budget after {stage.seconds:.0f} s"
    return f"stage {stage.status} (exit {stage.returncode}) and wrote no data"


def datasheet(gpu_name: str | None) -> dict[str, float] | None:
    for key, peaks in DATASHEET:
        if gpu_name and key in gpu_name:
            return peaks
    return None


def _rows(df, **match):
    if df is None or df.empty:
        return df
    sel = df
    for k, v in match.items():
        sel = sel[sel[k] == v]
    return sel


def _ratio(row) -> float:
    from handgrad.reports.record import ratio_to_reference

    return ratio_to_reference(row["data"], row["reference_data"])[0]


def bench_claims(df, gpu_name: str | None, stage_of: dict[str, StageResult]) -> list[Claim]:
    """The benchmark claims, each from the rows it needs; NOT RUN when its stage did not
    produce data, NOT MEASURED when the data lack its benchmark."""
    from handgrad.reports.record import achieved_gflops, memory_ratio

    claims: list[Claim] = []
    peaks = datasheet(gpu_name)

    def add(c: Claim, rows, measure: Callable[[object], tuple[str, str]]) -> None:
        st = stage_of.get(c.stage)
        if rows is None or rows.empty:
            if st is not None and (st.status != "ran" or not st.output):
                c.verdict, c.measured = NOT_RUN, _why_not(st)
            else:
                c.verdict, c.measured = NOT_MEASURED, "no such benchmark in the data"
        else:
            c.measured, c.verdict = measure(rows.iloc[0])
        claims.append(c)

    for dt in ("float32", "bfloat16"):
        rows = _rows(df, kernel="backprop", method="manual", K=4096, L=3, N=16384, dtype=dt)
        add(Claim(f"backprop.memory.{dt}", f"backprop peak memory / autograd's, L=3 K=4096 "
                  f"N=16384 {dt}", "<= 1.00", "backprop"), rows,
            lambda r: _leq(memory_ratio(r["peak_bytes"], r["reference_peak_bytes"]), 1.0))
        add(Claim(f"backprop.time.{dt}", f"backprop time / autograd's, L=3 K=4096 N=16384 "
                  f"{dt}", "<= 1.05", "backprop"), rows, lambda r: _leq(_ratio(r), 1.05))
    for dt in ("float64", "float32"):
        rows = _rows(df, kernel="least_squares", method="gd_closed_form", N=20000, D=2000,
                     dtype=dt)
        add(Claim(f"least_squares.closed_form.{dt}", f"GD closed form (k=10^4) / lstsq, "
                  f"N=20000 D=2000 {dt}", "<= 1.40", "least_squares"), rows,
            lambda r: _leq(_ratio(r), 1.40))
    for kernel, method, (L, K, N) in (("backprop", "manual_captured", CAPTURED_SHAPES[0]),
                                      ("jacobian", "manual_forward_captured",
                                       CAPTURED_SHAPES[1])):
        rows = _rows(df, kernel=kernel, method=method, L=L, K=K, N=N)
        add(Claim(f"captured.{kernel}", f"{kernel} {method} / its compiled reference, "
                  f"L={L} K={K} N={N}", "<= 1.00", "captured"), rows,
            lambda r: _leq(_ratio(r), 1.0, f" (vs {r['reference']})"))
    # ceilings against the datasheet
    for dt in ("float32", "bfloat16"):
        rows = _rows(df, kernel="ceiling", method="matmul", dtype=dt)
        if rows is not None and len(rows) > 1:  # the largest matmul is the ceiling
            rows = rows.sort_values("flops", ascending=False)
        add(Claim(f"ceiling.matmul.{dt}", f"matmul ceiling {dt}, share of the datasheet peak",
                  f">= {CEILING_FRACTION:.2f}", "ceilings"), rows,
            lambda r, dt=dt: _share(float(achieved_gflops(r["flops"], r["median"])) * 1e9,
                                    peaks and peaks[dt], "TFLOP/s", 1e12))
    rows = _rows(df, kernel="ceiling", method="copy")
    if rows is not None and len(rows) > 1:
        rows = rows.sort_values("bytes", ascending=False)
    add(Claim("ceiling.copy", "copy ceiling (bytes read + written), share of the datasheet "
              "bandwidth", f">= {CEILING_FRACTION:.2f}", "ceilings"), rows,
        lambda r: _share(float(r["bytes"]) / float(r["median"]), peaks and peaks["copy"],
                         "TB/s", 1e12))
    claims.append(_achieved(df, stage_of))
    claims.append(_event_timer(df))
    return claims


def _leq(value: float, bound: float, suffix: str = "") -> tuple[str, str]:
    if value is None or not math.isfinite(value):
        return "not recorded" + suffix, NOT_MEASURED
    return f"{value:.3f}{suffix}", PASS if value <= bound else FAIL


def _share(value: float, peak: float | None, unit: str, scale: float) -> tuple[str, str]:
    shown = f"{value / scale:.1f} {unit}"
    if not peak:
        return shown + " (no datasheet entry for this GPU)", INFO
    share = value / peak
    return f"{shown} = {share:.2f} of {peak / scale:.1f}", (
        PASS if share >= CEILING_FRACTION else FAIL)


def _achieved(df, stage_of) -> Claim:
    """No kernel beats the matmul ceiling of its dtype measured in the same run: a ceiling
    below a kernel is no ceiling (the H100 default grid's 512 control matmul was one)."""
    from handgrad.reports.record import achieved_gflops

    c = Claim("ceiling.achieved", "every timed benchmark's achieved FLOP/s / the matmul "
              "ceiling of its dtype", "<= 1.00", "ceilings")
    st = stage_of.get("ceilings")
    if df is None or df.empty or (st is not None and (st.status != "ran" or not st.output)):
        c.verdict, c.measured = NOT_RUN, _why_not(st)
        return c
    ceil = _rows(df, kernel="ceiling", method="matmul")
    work = df[(df["kernel"] != "ceiling") & (df["flops"] > 0)]
    if ceil.empty or work.empty:
        c.measured = "no ceiling or no counted work in the data"
        if any(r.status == "not selected" for r in stage_of.values()):
            c.verdict, c.measured = NOT_RUN, f"stage not selected (--stages): {c.measured}"
        return c
    best = {dt: float(np.nanmax(achieved_gflops(g["flops"], g["median"])))
            for dt, g in ceil.groupby("dtype")
            if np.isfinite(achieved_gflops(g["flops"], g["median"])).any()}
    worst, where, n = -1.0, "", 0
    for _, r in work.iterrows():
        rate = float(achieved_gflops(r["flops"], r["median"]))
        if r["dtype"] not in best or not math.isfinite(rate):
            continue
        n += 1
        frac = rate / best[r["dtype"]]
        if frac > worst:
            worst, where = frac, r["name"]
    if not n:
        c.measured = "no benchmark in a dtype whose ceiling was measured"
        return c
    c.measured = f"max {worst:.3f} ({where}), {n} benchmarks"
    c.verdict = PASS if worst <= 1.0 else FAIL
    return c


def _event_timer(df) -> Claim:
    c = Claim("timer.events", "every CUDA benchmark was timed by CUDA events",
              "all cuda_event", "ceilings")
    if df is None or df.empty:
        c.verdict, c.measured = NOT_RUN, "no benchmark data"
        return c
    cuda = df[df["device"].astype(str).str.startswith("cuda")]
    written = cuda[cuda["fields_written"].map(lambda f: "timer" in f)]
    if written.empty:
        c.measured = "no CUDA benchmark records its timer"
        return c
    timers = written["timer"].value_counts().to_dict()
    c.measured = ", ".join(f"{v} {k}" for k, v in timers.items())
    c.verdict = PASS if set(timers) == {"cuda_event"} else FAIL
    return c


# ------------------------------------------------------------------------------ output


def merge_bench(paths: Sequence[str | Path], target: Path) -> Path | None:
    """Every stage's benchmarks in one pytest-benchmark file (the first file's
    machine_info); None when there is none."""
    from handgrad.reports.load import read_json_any

    merged = None
    for p in paths:
        data = read_json_any(p)  # gzip or not
        if merged is None:
            merged = data
        else:
            merged["benchmarks"].extend(data.get("benchmarks", []))
    if merged is None or not merged.get("benchmarks"):
        return None
    target.write_text(json.dumps(merged))
    return target


def table(claims: Sequence[Claim]) -> str:
    head = ["claim", "target", "measured", "verdict"]
    rows = [[c.claim, c.target, c.measured, c.verdict] for c in claims]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)]
    return "\n".join(lines)


def evaluate(out: Path, results: Sequence[StageResult], gpu_name: str | None = None):
    """(claims, bench DataFrame or None) from what the stages wrote under ``out``."""
    from handgrad.reports.load import load_benchmarks

    stage_of = {r.name: r for r in results}
    v = stage_of.get("verify")
    outcomes = junit_outcomes(v.output) if v is not None and v.output else None
    scripts = {st.name for st in stages() if st.kind == "script"}  # Markdown, not data
    benches = [r.output for r in results
               if r.name != "verify" and r.name not in scripts and r.output]
    merged = merge_bench(benches, out / "bench.json") if benches else None
    df = load_benchmarks([merged]) if merged else None
    if gpu_name is None and merged:
        info = json.loads(merged.read_text()).get("machine_info") or {}
        gpu_name = info.get("gpu")
    return verify_claims(outcomes, v) + bench_claims(df, gpu_name, stage_of), df


def main(argv: Sequence[str] | None = None, *, runner: Runner = subprocess_runner,
         cuda_available: Callable[[], bool] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m handgrad.gpu_check", description=__doc__
                                .split("\n\n")[0])
    p.add_argument("--out", help="folder for the table, JSON and report (required but "
                   "with --plan)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f})")
    p.add_argument("--stages", default=None, metavar="NAME[,NAME...]",
                   help="run only these stages (to rerun what failed); the other stages' "
                   "claims are listed as NOT RUN")
    p.add_argument("--plan", action="store_true", help="print the stages and exit")
    args = p.parse_args(argv)
    if not math.isfinite(args.budget) or args.budget <= REPORT_RESERVE_S:
        p.error(f"--budget: expected seconds above {REPORT_RESERVE_S:.0f} (the report's "
                f"reserve), got {args.budget}")
    plan = stages()
    if args.stages is not None:
        names = [n.strip() for n in args.stages.split(",") if n.strip()]
        known = [st.name for st in plan]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            p.error(f"--stages: expected names from {known}, got {unknown or args.stages!r}")
        plan = [st for st in plan if st.name in names]
    if args.out is None and not args.plan:
        p.error("--out: expected the folder for the table, JSON and report (only --plan "
                "runs without it)")
    if args.plan:  # each stage's own command, as run_stages runs it (OUT: --out)
        for st in plan:
            command, _ = stage_command(st, Path(args.out or "OUT"))
            print(f"{st.name:14s} ~{st.estimate_s:4.0f} s  {st.what}\n"
                  f"{'':20s}python {' '.join(command)}")
        return 0
    t0 = time.monotonic()  # the budget counts everything from here, CUDA's start too
    root = Path.cwd()
    if not (root / "verify").is_dir() or not (root / "bench").is_dir():
        p.error(f"run it from a handgrad checkout (no verify/ and bench/ in {root})")
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available
    if not cuda_available():
        print("[gpu_check] no CUDA device here: the GPU claims cannot be checked",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_stages(plan, out, args.budget, runner=runner, started=t0)
    results += [StageResult(st.name, "not selected") for st in stages() if st not in plan]
    claims, df = evaluate(out, results)
    if df is not None and time.monotonic() - t0 < args.budget:
        rc = runner([sys.executable, "-m", "handgrad.reports", "render", str(out /
                     "bench.json"), "--out", str(out / "report")],
                    max(args.budget - (time.monotonic() - t0), 1.0), out / "render.log")
        print(f"[gpu_check] report: {out / 'report'} (exit {rc})")
    text = table(claims) + findings(results)
    (out / "claims.md").write_text(text + "\n")
    (out / "claims.json").write_text(json.dumps({
        "budget_s": args.budget, "elapsed_s": round(time.monotonic() - t0, 1),
        "stages": [asdict(r) for r in results], "claims": [asdict(c) for c in claims]},
        indent=1))
    print(text)
    for c in claims:
        for d in c.detail:
            print(f"  {c.id}: failed: {d}")
    return exit_status(claims)


def findings(results: Sequence[StageResult]) -> str:
    """The Markdown the script stages wrote (they judge nothing: no claim, no effect on
    the exit status), each under its own heading after the table; a line saying why for
    one that wrote none."""
    parts = []
    for st in stages():
        if st.kind != "script":
            continue
        r = next((r for r in results if r.name == st.name), None)
        head = f"\n\n## {st.name}: {st.what}\n\n"
        if r is not None and r.output:
            parts.append(head + Path(r.output).read_text().strip())
        elif r is None or r.status in ("not run", "not selected"):
            parts.append(head + ("not selected (--stages)" if r is not None and
                                 r.status == "not selected" else "not run: over the budget"))
        else:
            parts.append(head + f"{r.status} (exit {r.returncode}) and wrote nothing; its "
                         f"log: {r.log}")
    return "".join(parts)


def exit_status(claims: Sequence[Claim]) -> int:
    """1 a claim failed; 3 none failed but one of the stages run left a claim unjudged
    (not run, not measured); 0 every claim of the stages run passed or is INFO."""
    if any(c.verdict == FAIL for c in claims):
        return 1
    if any(c.verdict in (NOT_RUN, NOT_MEASURED) and "not selected" not in c.measured
           for c in claims):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
