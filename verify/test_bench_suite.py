"""The benchmark suite's structure, on a tiny run: CI notices a broken benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"backprop", "jacobian", "counting", "least_squares", "control"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    # one round each, the slow shapes left out: this checks structure, not speed
    cmd = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider",
           "--device=cpu", f"--benchmark-json={out}", "--benchmark-min-rounds=1",
           "--benchmark-max-time=0", "--benchmark-warmup=off",
           "-k", "not K1024 and not 100000 and not large_conv_stack and not K256"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_family_depth_and_device_is_present(tiny_run):
    infos = [b["extra_info"] for b in tiny_run["benchmarks"]]
    assert {i["kernel"] for i in infos} == FAMILIES
    for family in ("backprop", "jacobian"):
        assert {i["L"] for i in infos if i["kernel"] == family} >= {3, 5, 10}
    assert {i["device"] for i in infos} == {"cpu"}


def test_every_benchmark_explains_itself(tiny_run):
    for b in tiny_run["benchmarks"]:
        info = b["extra_info"]
        for key in ("kernel", "method", "reference", "flops", "device", "dtype", "threads"):
            assert key in info, f"{b['name']}: extra_info lacks {key!r}"
        assert isinstance(info["flops"], int) and info["flops"] >= 0
        # the reference it names is timed in the same group of the same run
        group = [x for x in tiny_run["benchmarks"] if x["group"] == b["group"]]
        assert info["reference"] in {x["extra_info"]["method"] for x in group}, b["name"]
        assert b["stats"]["data"], f"{b['name']}: no per-round data"


def test_only_the_gd_k10_loop_declares_gate_noise(tiny_run):
    # the README says which benchmark widens its own gate threshold, and why
    declared = {(b["group"], b["extra_info"]["method"]): b["extra_info"]["gate_noise"]
                for b in tiny_run["benchmarks"] if "gate_noise" in b["extra_info"]}
    assert declared == {("least_squares gd k=10 N=200 D=50 cpu", "gd_loop"): 0.5}


def test_machine_info_records_torch_and_threads(tiny_run):
    mi = tiny_run["machine_info"]
    assert mi["torch"] and mi["torch_threads"] >= 1 and "gpu" in mi and "bench_grid" in mi


def test_pytest_benchmark_compare_reads_the_json(tiny_run, tmp_path):
    path = tmp_path / "0001_tiny.json"
    path.write_text(json.dumps(tiny_run))
    # from a neutral folder: the compare CLI loads pytest's configuration from the current
    # one, and ours turns warnings into errors
    proc = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test_control_matmul" in proc.stdout


def test_interleaved_benchmarks_pair_every_round(tiny_run):
    """Every kernel that is not its own reference ran interleaved with its reference: one
    reference time per kernel round, which is what the gate's paired ratios need."""
    for b in tiny_run["benchmarks"]:
        info = b["extra_info"]
        if info["method"] == info["reference"] or info["kernel"] == "jacobian" and not (
                info["method"].startswith("manual")):
            continue
        assert info.get("interleaved") is True, b["name"]
        assert len(info["reference_data"]) == len(b["stats"]["data"]), b["name"]
        assert all(t > 0 for t in info["reference_data"]), b["name"]


def test_slowed_spins_for_the_extra_time(monkeypatch):
    """--bench-slow's wrapper, on a fake clock: the call takes 2 s, the wrapper must spin
    until 2 * 0.25 s more have passed, whatever the machine's speed."""
    from bench import conftest as bc

    clock = {"t": 100.0}

    def perf_counter():
        clock["t"] += 0.001  # every reading of the clock moves it a little
        return clock["t"]

    def call():
        clock["t"] += 2.0
        return "out"

    monkeypatch.setattr(bc.time, "perf_counter", perf_counter)
    run = bc.slowed(call, 1.25)
    start = clock["t"]
    assert run() == "out"
    assert 2.5 <= clock["t"] - start < 2.51


@pytest.mark.parametrize("bad", ["backprop.manual", "manual=1.25", "backprop.manual=0.5",
                                 "backprop.manual=fast"])
def test_bench_slow_rejects_malformed_entries(bad):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_control.py", "--collect-only", "-q",
         "-p", "no:cacheprovider", f"--bench-slow={bad}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "--bench-slow: expected KERNEL.METHOD=FACTOR" in proc.stderr


def test_gate_gates_exactly_handgrads_kernels(tiny_run):
    """The gate's name rule sorts every method the bench suite times: handgrad's kernels
    are gated, torch's methods are not."""
    from reports.gate import TORCH_METHOD_PREFIXES

    ours = {"manual", "manual_forward", "manual_reverse", "gd_closed_form", "gd_loop",
            "momentum_form1", "momentum_form2", "count_model"}
    methods = {b["extra_info"]["method"] for b in tiny_run["benchmarks"]}
    assert ours <= methods
    for m in methods:
        assert m.startswith(TORCH_METHOD_PREFIXES) == (m not in ours), m
