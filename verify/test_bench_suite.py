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
