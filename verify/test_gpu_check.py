"""``python -m handgrad.gpu_check``, the GPU acceptance command, on the CPU: its budget,
stages and claims with a stand-in runner that writes what pytest would, and its table on
the H100 runs in ``../shared/gpu-h100/`` (real GPU data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from handgrad import gpu_check as G
from handgrad.reports.record import SCHEMA, SCHEMA_KEY, BenchRecord

H100 = Path(__file__).resolve().parents[2] / "shared" / "gpu-h100" / "bench_default_cuda.json.gz"
needs_h100 = pytest.mark.skipif(not H100.exists(), reason=f"{H100} is not beside the checkout")


# -- stand-ins --------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bench(name, *, kernel, method, reference, role="kernel", flops=0, nbytes=0,
           dtype="float32", median=1e-3, ref_median=None, timer="cuda_event", **extra):
    rounds = 5
    shape = {k: extra.pop(k) for k in ("L", "D", "K", "P", "N", "k") if k in extra}
    rec = BenchRecord(kernel=kernel, method=method, reference=reference, role=role,
                      shape=shape,
                      flops=flops, bytes=nbytes, device="cuda", dtype=dtype, threads=8,
                      timer=timer,
                      reference_data=None if ref_median is None else (ref_median,) * rounds,
                      **extra)
    return {"name": name, "group": name, "extra_info": rec.to_extra_info(),
            "stats": {"median": median, "iqr": 0.0, "rounds": rounds,
                      "data": [median] * rounds}}


def _file(benchmarks, gpu="NVIDIA H200"):
    return {"machine_info": {SCHEMA_KEY: SCHEMA, "node": "gpu-box", "gpu": gpu,
                             "torch": "2.11.0+cu130"},
            "benchmarks": benchmarks, "commit_info": {}, "datetime": "2026-12-04",
            "version": "5.2.3"}


def good_benchmarks(*, memory=0.8, lsq_ratio=0.7, matmul_s=None):
    bp = [_bench(f"bp-{dt}", kernel="backprop", method="manual", reference="torch_autograd",
                 dtype=dt, L=3, D=13, K=4096, P=1, N=16384, flops=10**12, median=0.03,
                 ref_median=0.031, peak_bytes=int(memory * 1000), reference_peak_bytes=1000)
          for dt in ("float32", "bfloat16")]
    lsq = [_bench(f"lsq-{dt}", kernel="least_squares", method="gd_closed_form",
                  reference="gd_torch_lstsq", dtype=dt, N=20000, D=2000, k=10_000, flops=10**9,
                  median=lsq_ratio * 0.05, ref_median=0.05) for dt in ("float64", "float32")]
    cap = [_bench("cap-bp", kernel="backprop", method="manual_captured",
                  reference="torch_func_grad_compiled", L=5, D=13, K=256, P=1, N=256,
                  median=1e-4, ref_median=2e-4),
           _bench("cap-j", kernel="jacobian", method="manual_forward_captured",
                  reference="torch_func_jacfwd_compiled", L=5, D=2, K=30, P=10, N=1,
                  median=1e-4, ref_median=1.5e-4)]
    n = 8192
    ceil = [_bench(f"mm-{dt}", kernel="ceiling", method="matmul", reference="matmul",
                   role="reference", dtype=dt, flops=2 * n**3, N=n,
                   median=(matmul_s or {}).get(dt, 2 * n**3 / (0.8 * peak)))
            for dt, peak in (("float32", 67e12), ("bfloat16", 989.5e12))]
    ceil.append(_bench("copy", kernel="ceiling", method="copy", reference="copy",
                       role="reference", nbytes=8 * 2**30, N=2**30, median=8 * 2**30 / 4.3e12))
    return {"ceilings": ceil, "backprop": bp, "least_squares": lsq, "captured": cap}


CASES = [  # (module, test, outcome), as pytest's junit XML names them
    ("test_graph", "test_a_captured_kernel_replays_its_eager_result_on_new_inputs[backprop]",
     "passed"),
    ("test_cuda", "test_reduce_overhead_compile_returns_the_eager_result[backprop]", "passed"),
    ("test_cuda", "test_the_event_clock_times_the_gpu_not_the_launch", "passed"),
    ("test_cuda", "test_the_cold_l2_buffer_is_at_least_twice_the_devices_l2", "passed"),
    ("test_cuda", "test_cuda_peak_counts_what_one_call_allocates", "passed"),
    ("test_cuda", "test_backprop_reads_the_host_once_per_call", "passed"),
    ("test_cuda", "test_backprop_takes_the_one_pass_tanh_prime_on_cuda[torch.bfloat16]",
     "passed"),
    ("test_cuda", "test_auto_takes_the_gram_path_on_cuda_and_matches_the_svd[float64]",
     "passed"),
    ("test_directional", "test_backprop_directional_at_gpu_sizes[cuda-0]", "passed"),
    ("test_backprop", "test_gradcheck[cuda-x]", "passed"),
    ("test_backprop", "test_gradcheck[cuda-y]", "skipped"),
]
INNER = {"passed": "", "skipped": '<skipped message="s"/>', "failed": '<failure message="f"/>'}


def junit(cases=CASES, **outcome):
    """junit XML of ``cases``, with ``outcome`` (test name prefix -> outcome) changed."""
    rows = []
    for mod, name, kind in cases:
        kind = next((v for k, v in outcome.items() if name.startswith(k)), kind)
        rows.append(f'<testcase classname="verify.{mod}" name="{name}">{INNER[kind]}'
                    "</testcase>")
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
            + "".join(rows) + "</testsuite></testsuites>")


JUNIT_OK = junit()


TRACE_MD = "| | manual | torch_autograd | manual - torch_autograd |"


class Runner:
    """Writes what each stage would (junit XML, benchmark JSON, a script's Markdown under
    its --out) and records calls; ``seconds`` per stage advances the clock; a stage in
    ``cut`` is stopped (TIMED_OUT)."""

    def __init__(self, clock, files, seconds=None, cut=(), junit=JUNIT_OK, fail=()):
        self.clock, self.files, self.seconds = clock, files, seconds or {}
        self.cut, self.junit, self.fail, self.calls = set(cut), junit, set(fail), []

    def __call__(self, cmd, timeout, log):
        self.calls.append((cmd, timeout))
        name = Path(log).stem
        self.clock.now += self.seconds.get(name, 10)
        Path(log).write_text("log\n")
        if name in self.cut:
            return G.TIMED_OUT
        target = next((a.split("=", 1)[1] for a in cmd if a.startswith(
            ("--junitxml=", "--benchmark-json="))), None)
        if target and name == "verify":
            Path(target).write_text(self.junit)
        elif target and name in self.files:
            Path(target).write_text(json.dumps(_file(self.files[name])))
        elif "--out" in cmd and name not in self.fail:  # a script stage
            folder = Path(cmd[cmd.index("--out") + 1])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.md").write_text(TRACE_MD + "\n")
        return 1 if name in self.fail else 0


def _by_id(claims):
    return {c.id: c for c in claims}


# -- the budget -------------------------------------------------------------------------

def test_every_stage_runs_when_the_budget_allows(tmp_path):
    clock = Clock()
    runner = Runner(clock, good_benchmarks())
    results = G.run_stages(G.stages(), tmp_path, 600, runner=runner, clock=clock,
                           say=lambda s: None)
    assert [r.status for r in results] == ["ran"] * 6
    assert [Path(c[0][-1].split("=", 1)[-1]).name for c in runner.calls] == [
        "verify.xml", "bench_ceilings.json", "bench_backprop.json",
        "bench_least_squares.json", "bench_captured.json", "trace"]
    # each stage may run until the budget, less the report's reserve, is spent
    assert runner.calls[0][1] == 600 - G.REPORT_RESERVE_S
    assert runner.calls[1][1] == 600 - G.REPORT_RESERVE_S - 10
    assert all(c[0][:3] == [sys.executable, "-m", "pytest"] for c in runner.calls[:-1])
    # the script stage: its module, its Markdown in its own folder under --out
    assert runner.calls[-1][0][:3] == [sys.executable, "-m", "handgrad.benchmark.trace"]
    assert runner.calls[-1][0][-2:] == ["--out", str(tmp_path / "trace")]
    assert results[-1].output == str(tmp_path / "trace" / "trace.md")


def test_a_stage_that_does_not_fit_is_not_run_and_its_claims_say_so(tmp_path):
    clock = Clock()
    runner = Runner(clock, good_benchmarks(), seconds={"verify": 200, "ceilings": 30})
    budget = G.REPORT_RESERVE_S + 200 + 30 + 39  # verify, ceilings; 39 s < backprop's 40
    results = G.run_stages(G.stages(), tmp_path, budget, runner=runner, clock=clock,
                           say=lambda s: None)
    # the trace's 30 s still fit after the three that did not
    assert [r.status for r in results] == ["ran", "ran"] + ["not run"] * 3 + ["ran"]
    claims = _by_id(G.evaluate(tmp_path, results)[0])
    for cid in ("backprop.memory.float32", "backprop.time.bfloat16",
                "least_squares.closed_form.float64", "captured.backprop"):
        assert claims[cid].verdict == G.NOT_RUN
        assert "not run" in claims[cid].measured
    assert claims["ceiling.copy"].verdict == G.PASS


def test_a_stage_stopped_at_the_budget_is_cut_and_the_rest_not_run(tmp_path):
    clock = Clock()
    runner = Runner(clock, good_benchmarks(), cut={"backprop"},
                    seconds={"backprop": 10_000})
    results = G.run_stages(G.stages(), tmp_path, 400, runner=runner, clock=clock,
                           say=lambda s: None)
    status = {r.name: r.status for r in results}
    assert status == {"verify": "ran", "ceilings": "ran", "backprop": "cut",
                      "least_squares": "not run", "captured": "not run", "trace": "not run"}
    claims = _by_id(G.evaluate(tmp_path, results)[0])
    assert claims["backprop.time.float32"].verdict == G.NOT_RUN
    assert "stopped at the budget" in claims["backprop.time.float32"].measured


def test_a_failed_stage_without_data_is_not_run_not_passed(tmp_path):
    clock = Clock()
    files = good_benchmarks()
    del files["least_squares"]  # pytest failed before writing its JSON
    runner = Runner(clock, files, fail={"least_squares"})
    results = G.run_stages(G.stages(), tmp_path, 600, runner=runner, clock=clock,
                           say=lambda s: None)
    claims = _by_id(G.evaluate(tmp_path, results)[0])
    c = claims["least_squares.closed_form.float32"]
    assert c.verdict == G.NOT_RUN and "failed (exit 1)" in c.measured


# -- the claims -------------------------------------------------------------------------

def _evaluate(tmp_path, files, junit=JUNIT_OK):
    clock = Clock()
    results = G.run_stages(G.stages(), tmp_path, 600, runner=Runner(clock, files, junit=junit),
                           clock=clock, say=lambda s: None)
    return _by_id(G.evaluate(tmp_path, results)[0])


def test_good_measurements_pass_every_claim(tmp_path):
    claims = _evaluate(tmp_path, good_benchmarks())
    bench = {k: c for k, c in claims.items() if not k.startswith("verify.")}
    assert {c.verdict for c in bench.values()} == {G.PASS}, {
        k: (c.verdict, c.measured) for k, c in bench.items()}
    assert claims["backprop.memory.float32"].measured == "0.800"
    assert claims["least_squares.closed_form.float64"].measured == "0.700"
    assert claims["captured.backprop"].measured == "0.500 (vs torch_func_grad_compiled)"
    assert claims["ceiling.matmul.float32"].measured.startswith("53.6 TFLOP/s = 0.80 of 67.0")
    assert claims["ceiling.copy"].measured.startswith("4.3 TB/s = 0.90 of 4.8")
    assert claims["timer.events"].measured == "9 cuda_event"


@pytest.mark.parametrize("change,claim", [
    ({"memory": 1.2}, "backprop.memory.float32"),
    ({"lsq_ratio": 1.5}, "least_squares.closed_form.float32"),
    ({"matmul_s": {"float32": 2 * 8192**3 / (0.5 * 67e12)}}, "ceiling.matmul.float32"),
])
def test_a_measurement_past_its_target_fails_its_claim(tmp_path, change, claim):
    claims = _evaluate(tmp_path, good_benchmarks(**change))
    assert claims[claim].verdict == G.FAIL


def test_a_kernel_above_the_matmul_ceiling_fails_the_achieved_claim(tmp_path):
    # the ceiling itself launch-bound (the H100 default grid's 512 matmul): bf16 matmul
    # slower than backprop's bf16 FLOP rate
    slow = {"bfloat16": 2 * 8192**3 / 20e12}
    claims = _evaluate(tmp_path, good_benchmarks(matmul_s=slow))
    c = claims["ceiling.achieved"]
    assert c.verdict == G.FAIL and "bp-bfloat16" in c.measured


def test_a_perf_counter_timer_on_cuda_fails_the_event_claim(tmp_path):
    files = good_benchmarks()
    files["captured"][0] = _bench("cap-bp", kernel="backprop", method="manual_captured",
                                  reference="torch_func_grad_compiled", timer="perf_counter",
                                  median=1e-4, ref_median=2e-4)
    c = _evaluate(tmp_path, files)["timer.events"]
    assert c.verdict == G.FAIL and "1 perf_counter" in c.measured


def test_an_unknown_gpu_gets_its_ceilings_shown_without_a_verdict():
    assert G.datasheet("NVIDIA H100 PCIe")["float32"] == 51.2e12  # most specific first
    assert G.datasheet("NVIDIA H200")["copy"] == 4.8e12
    assert G.datasheet("Some Future GPU") is None
    assert G._share(50e12, None, "TFLOP/s", 1e12) == (
        "50.0 TFLOP/s (no datasheet entry for this GPU)", G.INFO)


def test_verify_claims_come_from_the_junit_outcomes(tmp_path):
    failing = junit(test_the_event_clock="failed")
    claims = _evaluate(tmp_path, good_benchmarks(), junit=failing)
    assert claims["verify.event_clock"].verdict == G.FAIL
    assert claims["verify.event_clock"].detail == [
        "verify/test_cuda.py::test_the_event_clock_times_the_gpu_not_the_launch"]
    assert claims["verify.capture"].verdict == G.PASS
    assert claims["verify.gpu_memory"].measured == "1 passed"
    # "other" holds every test no named claim took: a skip beside a pass is shown
    assert claims["verify.other"].measured == "1 passed, 1 skipped"
    assert claims["verify.other"].verdict == G.PASS


def test_a_verify_claim_with_no_passing_test_is_not_run(tmp_path):
    skipped = junit(test_auto_takes_the_gram_path="skipped")
    claims = _evaluate(tmp_path, good_benchmarks(), junit=skipped)
    assert claims["verify.gram"].verdict == G.NOT_RUN
    assert claims["verify.gram"].measured == "1 skipped"


# -- the command ------------------------------------------------------------------------

def test_main_writes_the_table_json_and_report_and_fails_on_a_failed_claim(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    clock = Clock()
    runner = Runner(clock, good_benchmarks(memory=1.3))
    out = tmp_path / "gpu"
    rc = G.main(["--out", str(out), "--budget", "600"], runner=runner,
                cuda_available=lambda: True)
    assert rc == 1
    text = capsys.readouterr().out
    assert "| backprop peak memory / autograd's, L=3 K=4096 N=16384 float32 | <= 1.00 | " \
           "1.300 | FAIL |" in text
    saved = json.loads((out / "claims.json").read_text())
    assert {c["id"] for c in saved["claims"]} >= {"backprop.memory.float32", "ceiling.copy"}
    md = (out / "claims.md").read_text()
    assert md.startswith("| claim | target | measured |")
    # the trace stage's tables after the claims table, under its heading; judged nothing
    head = "## trace: profiler trace: backprop vs autograd"
    assert head in md and md.index(TRACE_MD) > md.index(head) > md.index("Verdicts: ")
    assert md.count("\n## ") == 1  # the script stage's only: the others are claims
    assert TRACE_MD in text
    assert {c["stage"] for c in saved["claims"]}.isdisjoint({"trace"})
    merged = json.loads((out / "bench.json").read_text())
    assert len(merged["benchmarks"]) == 9  # every stage's benchmarks in one file
    render = runner.calls[-1][0]
    assert render[1:4] == ["-m", "handgrad.reports", "render"] and render[-1] == str(
        out / "report")


@pytest.mark.parametrize("how,budget,says", [
    ({"fail": {"trace"}}, "600", "failed (exit 1) and wrote nothing; its log: "),
    ({}, "50", "not run: over the budget"),  # 25 s left after the reserve: no stage fits
])
def test_a_trace_stage_without_tables_says_why_and_judges_nothing(tmp_path, monkeypatch,
                                                                 how, budget, says):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    runner = Runner(Clock(), good_benchmarks(), **how)
    rc = G.main(["--out", str(tmp_path), "--budget", budget], runner=runner,
                cuda_available=lambda: True)
    md = (tmp_path / "claims.md").read_text()
    section = md[md.index("## trace: "):]
    assert says in section and TRACE_MD not in md
    if "fail" in how:
        assert rc == 0  # every claim passed: the trace's failure is no claim's


def test_main_passes_when_every_claim_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    clock = Clock()
    rc = G.main(["--out", str(tmp_path)], runner=Runner(clock, good_benchmarks()),
                cuda_available=lambda: True)
    assert rc == 0


def test_main_refuses_without_a_gpu_or_a_checkout_or_a_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert G.main(["--out", str(tmp_path)], cuda_available=lambda: False) == 2
    assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        G.main(["--out", str(tmp_path), "--budget", "10"], cuda_available=lambda: True)
    assert e.value.code == 2 and "--budget: expected seconds above" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        G.main(["--out", str(tmp_path)], cuda_available=lambda: True)
    assert "run it from a handgrad checkout" in capsys.readouterr().err


def test_the_plan_names_every_node_that_exists(capsys):
    """Each benchmark node the stages name is one the bench suite collects (a renamed
    parameter would otherwise make a stage select nothing)."""
    assert G.main(["--plan"]) == 0  # no --out needed to list the stages
    assert "verify" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        G.main([], cuda_available=lambda: True)
    assert e.value.code == 2 and "--out: expected the folder" in capsys.readouterr().err
    import subprocess

    nodes = [a for st in G.stages() for a in st.args if "::" in a]
    root = Path(__file__).resolve().parents[1]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--device", "cuda",
         "-p", "no:cacheprovider", *nodes], cwd=root, capture_output=True, text=True)
    assert collected.returncode in (0, 5), collected.stdout[-2000:] + collected.stderr
    for n in nodes:
        assert n in collected.stdout, f"{n} is not collected"


@needs_h100
def test_the_table_on_the_h100_default_grid(tmp_path):
    """The H100 run of the default grid (schema 1, 21bd583): none of the gpu-grid claims
    is in it, and it recorded no timer, no ceiling and no peak memory; each such claim is
    listed as NOT MEASURED, none dropped, none passed."""
    import gzip

    data = json.loads(gzip.open(H100).read())
    res = G.StageResult("captured", "ran", 1.0, 0, str(tmp_path / "h100.json"))
    Path(res.output).write_text(json.dumps(data))
    claims, df = G.evaluate(tmp_path, [res])  # as one stage's output
    assert len(df) == 106
    by = _by_id(claims)
    assert all(c.verdict in G.VERDICTS for c in claims)
    assert by["timer.events"].verdict == G.NOT_MEASURED  # schema 1 wrote no timer
    assert by["ceiling.achieved"].verdict == G.NOT_MEASURED  # no ceiling measured
    assert by["captured.backprop"].verdict == G.NOT_MEASURED
    assert by["backprop.memory.float32"].verdict == G.NOT_MEASURED
    assert all(c.verdict == G.NOT_RUN for k, c in by.items() if k.startswith("verify."))
    text = G.table(claims)
    lines = text.splitlines()
    assert lines[0] == "| claim | target | measured | verdict |"
    assert len([ln for ln in lines if ln.startswith("| ") and ln.count(" | ") == 3]) == \
        len(claims) + 1
    assert lines[-1].startswith("Verdicts: ") and "NOT MEASURED" in lines[-1]


def test_stages_reruns_only_the_named_stages(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    clock = Clock()
    runner = Runner(clock, good_benchmarks())
    rc = G.main(["--out", str(tmp_path), "--stages", "captured, ceilings"], runner=runner,
                cuda_available=lambda: True)
    assert rc == 0
    ran = [Path(c[0][-1].split("=", 1)[1]).name for c in runner.calls[:-1]]
    assert ran == ["bench_ceilings.json", "bench_captured.json"]  # in the plan's order
    saved = {c["id"]: c for c in json.loads((tmp_path / "claims.json").read_text())["claims"]}
    assert saved["captured.backprop"]["verdict"] == G.PASS
    assert saved["backprop.time.float32"]["verdict"] == G.NOT_RUN
    assert saved["backprop.time.float32"]["measured"] == "stage not selected (--stages)"
    assert saved["verify.capture"]["measured"] == "stage not selected (--stages)"
    assert "## trace: " in (tmp_path / "claims.md").read_text().split("Verdicts: ")[1]
    assert (tmp_path / "claims.md").read_text().rstrip().endswith("not selected (--stages)")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        G.main(["--out", str(tmp_path), "--stages", "captured,bogus"],
               cuda_available=lambda: True)
    assert e.value.code == 2 and "--stages: expected names from" in capsys.readouterr().err


H200 = Path(__file__).resolve().parent / "fixtures" / "h200"


def test_every_benchmark_claim_finds_its_benchmark_in_a_real_h200_run(tmp_path):
    """What the stages wrote on an H200 (verify/fixtures/README.md): a claim whose
    selector no longer matches the record (a method renamed, a shape key) would read NOT
    MEASURED here; the run's verdicts, as the closing note of 2026-12-04 reports them."""
    results = [G.StageResult("verify", "ran", 1.0, 1, str(H200 / "verify.xml"))]
    results += [G.StageResult(n, "ran", 1.0, 0, str(H200 / f"bench_{n}.json.gz"))
                for n in ("ceilings", "backprop", "least_squares", "captured")]
    claims, df = G.evaluate(tmp_path, results)
    assert len(df) == 9
    by = _by_id(claims)
    bench = [c for k, c in by.items() if not k.startswith("verify.")]
    assert not [c.id for c in bench if c.verdict in (G.NOT_MEASURED, G.NOT_RUN)]
    assert by["backprop.time.bfloat16"].verdict == G.FAIL  # 1.093: see the closing note
    assert by["backprop.time.bfloat16"].measured == "1.093"
    assert by["backprop.memory.float32"].measured == "0.813"
    assert by["least_squares.closed_form.float64"].measured == "0.675"
    assert by["captured.backprop"].measured == "0.550 (vs torch_func_grad_compiled)"
    assert by["ceiling.copy"].measured.startswith("4.2 TB/s = 0.88 of 4.8")
    assert by["timer.events"].measured == "9 cuda_event"
    # the junit XML of that run: 182 passed, the 3 compile tests skipped
    assert by["verify.compiled"].verdict == G.NOT_RUN
    assert by["verify.compiled"].measured == "3 skipped"
    assert by["verify.directional"].measured == "6 passed"
    assert by["verify.other"].verdict == G.PASS


def test_a_file_left_by_an_earlier_run_is_never_read_as_this_runs(tmp_path):
    """Rerun into the same --out: the stage is stopped at the budget before pytest writes
    its JSON; the file the first run left must not be judged as the second run's."""
    clock = Clock()
    G.run_stages(G.stages(), tmp_path, 600, runner=Runner(clock, good_benchmarks()),
                 clock=clock, say=lambda s: None)
    assert (tmp_path / "bench_backprop.json").exists()
    again = G.run_stages(G.stages(), tmp_path, 600, clock=clock, say=lambda s: None,
                         runner=Runner(clock, good_benchmarks(), cut={"backprop"}))
    status = {r.name: (r.status, r.output) for r in again}
    assert status["backprop"] == ("cut", "")
    claims = _by_id(G.evaluate(tmp_path, again)[0])
    assert claims["backprop.time.float32"].verdict == G.NOT_RUN


def test_a_process_the_system_killed_failed_it_was_not_cut(tmp_path):
    class Killed(Runner):
        def __call__(self, cmd, timeout, log):
            super().__call__(cmd, timeout, log)
            return -9 if Path(log).stem == "ceilings" else 0

    clock = Clock()
    results = G.run_stages(G.stages(), tmp_path, 600, runner=Killed(clock, good_benchmarks()),
                           clock=clock, say=lambda s: None)
    assert {r.name: r.status for r in results}["ceilings"] == "failed"


def test_an_incomplete_run_exits_3_and_a_complete_one_0(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    # a budget no stage fits: every claim NOT RUN, none failed
    rc = G.main(["--out", str(tmp_path / "a"), "--budget", "40"], cuda_available=lambda: True,
                runner=Runner(Clock(), good_benchmarks()))
    assert rc == 3
    saved = json.loads((tmp_path / "a" / "claims.json").read_text())["claims"]
    assert {c["verdict"] for c in saved} == {G.NOT_RUN}
    # one of a named claim's tests skipped on the GPU (a compile torch refused)
    rc = G.main(["--out", str(tmp_path / "b")], cuda_available=lambda: True,
                runner=Runner(Clock(), good_benchmarks(),
                              junit=junit(test_reduce_overhead="skipped")))
    assert rc == 3
    saved = {c["id"]: c for c in json.loads((tmp_path / "b" / "claims.json").read_text())[
        "claims"]}
    assert saved["verify.compiled"]["verdict"] == G.NOT_RUN
    assert G.exit_status([G.Claim("x", "x", "t", "s", "1.0", G.PASS),
                          G.Claim("y", "y", "t", "s", "info", G.INFO)]) == 0


def test_a_named_claim_with_one_test_skipped_is_not_a_pass():
    outcomes = {"verify/test_cuda.py::test_cuda_peak_counts_what_one_call_allocates": "passed",
                "verify/test_cuda.py::test_backprop_needs_no_more_gpu_memory_than_autograd[a]":
                    "skipped"}
    by = _by_id(G.verify_claims(outcomes, G.StageResult("verify", "ran")))
    assert by["verify.gpu_memory"].verdict == G.NOT_RUN
    assert by["verify.gpu_memory"].measured == "1 passed, 1 skipped"


def test_a_ceiling_that_did_not_time_is_not_measured_not_passed(tmp_path):
    files = good_benchmarks()
    for b in files["ceilings"]:  # a matmul whose median is 0: no rate
        if b["extra_info"]["method"] == "matmul":
            b["stats"]["median"] = 0.0
    claims = _evaluate(tmp_path, files)
    assert claims["ceiling.achieved"].verdict == G.NOT_MEASURED
    assert claims["ceiling.achieved"].measured == "no benchmark in a dtype whose ceiling was " \
                                                  "measured"


def test_the_plan_prints_each_stages_own_command(tmp_path, monkeypatch, capsys):
    """--plan printed "pytest " before every stage's arguments: the trace stage read
    `pytest -m handgrad.benchmark.trace --calls 5`, a command that runs nothing of it. Each
    line is now the command the run gives the runner (the interpreter as `python`, OUT for
    --out when none is given)."""
    assert G.main(["--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [ln.strip() for ln in lines if ln.startswith(" ")]
    assert len(commands) == len(G.stages())
    assert "python -m handgrad.benchmark.trace --calls 5 --out OUT/trace" in commands
    assert not any("pytest -m handgrad" in c for c in commands)
    assert commands[0].startswith("python -m pytest verify --device cuda -m cuda")
    assert commands[0].endswith("--junitxml=OUT/verify.xml")
    # with --out, the very commands a run gives its runner
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert G.main(["--plan", "--out", str(tmp_path)]) == 0
    planned = [ln.strip() for ln in capsys.readouterr().out.splitlines()
               if ln.startswith(" ")]
    runner = Runner(Clock(), good_benchmarks())
    G.main(["--out", str(tmp_path)], runner=runner, cuda_available=lambda: True)
    ran = [" ".join(["python", *cmd[1:]]) for cmd, _ in runner.calls[:len(planned)]]
    assert ran == planned
