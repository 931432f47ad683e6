"""The benchmark suite's structure, on a tiny run: CI notices a broken benchmark, and the
records it writes are the ones reports/ reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.specs import families
from handgrad.benchmark import MACHINE_FAMILIES
from handgrad.reports.load import load_benchmarks
from handgrad.reports.record import SCHEMA, SCHEMA_KEY, BenchRecord
from verify.runs import pytest_env

ROOT = Path(__file__).resolve().parent.parent
# every family the specs declare (bench/specs), and the machine's own measurements, which
# time torch alone: no registry of their own here
FAMILIES = {f.kernel for f in families()} | set(MACHINE_FAMILIES)
TORCH_ONLY = set(MACHINE_FAMILIES)




def once(path: Path, make) -> None:
    """``make(path)`` exactly once across pytest-xdist workers sharing ``path``'s folder:
    the first to create the lock runs it, the others wait for its result."""
    lock = path.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        deadline = time.monotonic() + 900
        while not path.exists() and not path.with_suffix(".failed").exists():
            if time.monotonic() > deadline:
                pytest.fail(f"waited 900 s for another worker to write {path}")
            time.sleep(0.5)
        if path.with_suffix(".failed").exists():
            pytest.fail(path.with_suffix(".failed").read_text())
        return
    os.close(fd)
    try:
        make(path)
    except BaseException as exc:
        path.with_suffix(".failed").write_text(f"{path.name}: {exc}")
        raise


def _tiny(out: Path) -> None:
    # one round each, the slow shapes left out: this checks structure, not speed
    cmd = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider",
           "--device=cpu", f"--benchmark-json={out}.part", "--benchmark-min-rounds=1",
           "--benchmark-max-time=0", "--benchmark-warmup=off",
           "-k", "not K1024 and not 100000 and not large_conv_stack and not K256"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=pytest_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    Path(f"{out}.part").rename(out)  # whole, or not at all: other workers wait for it


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> Path:
    # the folder all pytest-xdist workers of this session share (each has its own below it)
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "bench_tiny.json"
    once(out, _tiny)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_path) -> dict:
    return json.loads(tiny_path.read_text())


def test_the_ceilings_are_measured(tiny_run):
    got = {b["extra_info"]["method"]: b for b in tiny_run["benchmarks"]
           if b["extra_info"]["kernel"] == "ceiling"}
    assert set(got) == {"matmul", "copy"}
    n = got["matmul"]["extra_info"]["shape"]["N"]
    assert got["matmul"]["extra_info"]["flops"] == 2 * n**3
    assert got["copy"]["extra_info"]["bytes"] == 2 * 4 * got["copy"]["extra_info"]["shape"]["N"]


def test_every_family_depth_and_device_is_present(tiny_run):
    infos = [b["extra_info"] for b in tiny_run["benchmarks"]]
    assert {i["kernel"] for i in infos} == FAMILIES
    for family in ("backprop", "jacobian"):
        assert {i["shape"]["L"] for i in infos if i["kernel"] == family} >= {3, 5, 10}
    assert {i["device"] for i in infos} == {"cpu"}


def test_every_benchmark_writes_a_valid_record(tiny_run):
    assert tiny_run["machine_info"][SCHEMA_KEY] == SCHEMA
    for b in tiny_run["benchmarks"]:
        record = BenchRecord.from_extra_info(b["extra_info"])  # raises on a bad field
        assert b["stats"]["data"], f"{b['name']}: no per-round data"
        # the reference it names is timed in the same group of the same run, and is torch's
        group = {x["extra_info"]["method"]: x["extra_info"]["role"]
                 for x in tiny_run["benchmarks"] if x["group"] == b["group"]}
        assert group.get(record.reference) == "reference", b["name"]
        # peak memory of one call, the kernel's and (interleaved) its reference's
        assert record.peak_bytes is not None, b["name"]
        assert (record.reference_peak_bytes is not None) == bool(record.reference_data), \
            b["name"]


def test_cpu_peak_memory_is_recorded_per_call(tiny_run):
    """A manual backprop call holds at least its gradients; the kernels' peaks are at most
    their references' (verify/test_memory.py checks that in depth)."""
    for b in tiny_run["benchmarks"]:
        r = BenchRecord.from_extra_info(b["extra_info"])
        if r.kernel == "backprop" and r.method == "manual":
            L, D, K, P = (r.shape[k] for k in "LDKP")
            params = D * K + (L - 2) * K * K + K * P + (L - 1) * K + P
            assert r.peak_bytes >= 4 * params, b["name"]
            assert r.peak_bytes <= r.reference_peak_bytes + 64, b["name"]


def test_reports_read_what_the_bench_wrote(tiny_path, tmp_path):
    """The contract end to end: the bench's JSON loads, and renders, with no complaint."""
    df = load_benchmarks([tiny_path])
    assert len(df) == len(json.loads(tiny_path.read_text())["benchmarks"])
    # handgrad's kernels, by their role: at least one per family except the control
    ours = df[df["role"] == "kernel"]
    assert set(ours["kernel"]) == FAMILIES - TORCH_ONLY
    assert set(df.loc[df["kernel"].isin(TORCH_ONLY), "role"]) == {"reference"}
    # every record says how it was timed: the CPU path, warm
    assert set(df["timer"]) == {"perf_counter"} and set(df["cache"]) == {"warm"}
    assert df["peak_bytes"].notna().all()  # measured on the CPU too
    proc = subprocess.run([sys.executable, "-m", "handgrad.reports", "render", str(tiny_path),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "memory_ratio" in report and "No run recorded peak memory" not in report


def test_no_benchmark_declares_its_own_gate_noise(tiny_run):
    # each benchmark's between-process noise is measured (.ci/gate-noise.json, python -m
    # handgrad.reports calibrate), no longer declared by hand in the bench suite
    assert any(b["group"].startswith("jacobian") and "K=30 N=1024 cpu" in b["group"]
               for b in tiny_run["benchmarks"])  # the shapes that used to declare it ran
    assert not [b["name"] for b in tiny_run["benchmarks"] if "gate_noise" in b["extra_info"]]


def test_machine_info_records_torch_and_threads(tiny_run):
    mi = tiny_run["machine_info"]
    assert mi["torch"] and mi["torch_threads"] >= 1 and "gpu" in mi and "bench_grid" in mi
    import torch

    if torch.cuda.is_available():  # the GPU's name and CUDA version, driver where readable
        assert mi["gpu"] and mi["cuda"] and "gpu_driver" in mi and "gpu_sm_clock_mhz" in mi
    else:
        assert mi["gpu"] is None and mi["cuda"] is None


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_pytest_benchmark_compare_reads_the_json(tiny_run, tmp_path, cwd):
    path = tmp_path / "0001_tiny.json"
    path.write_text(json.dumps(tiny_run))
    # from the repository root too, whose pytest configuration turns warnings into errors
    proc = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(path)],
                          capture_output=True, text=True, timeout=120, env=pytest_env(),
                          cwd=ROOT if cwd == "root" else tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_control_matmul" in proc.stdout


def test_interleaved_benchmarks_pair_every_round(tiny_run):
    """Every handgrad kernel measured against a reference ran interleaved with it: one
    reference time per kernel round, which is what the gate's paired ratios need."""
    gated = 0
    for b in tiny_run["benchmarks"]:
        record = BenchRecord.from_extra_info(b["extra_info"])
        if not record.gated:
            continue
        gated += 1
        assert record.reference_data, b["name"]
        assert len(record.reference_data) == len(b["stats"]["data"]), b["name"]
    assert gated >= 10


def test_benchmark_json_path_reads_every_pytest_benchmark_version(tmp_path):
    """5.3 and newer give --benchmark-json as a path; 4.0 to 5.2 as a file already open."""
    from types import SimpleNamespace

    from handgrad.benchmark import benchmark_json_path

    target = tmp_path / "sub" / "b.json"
    as_path = SimpleNamespace(option=SimpleNamespace(benchmark_json=target))
    assert benchmark_json_path(as_path) == target
    (tmp_path / "sub").mkdir()
    with open(target, "wb") as fh:
        assert benchmark_json_path(SimpleNamespace(option=SimpleNamespace(
            benchmark_json=fh))) == target
    assert benchmark_json_path(SimpleNamespace(option=SimpleNamespace())) is None


def test_slowed_spins_for_the_extra_time(monkeypatch):
    """--bench-slow's wrapper, on a fake clock: the call takes 2 s, the wrapper must spin
    until 2 * 0.25 s more have passed, whatever the machine's speed."""
    import handgrad.benchmark as bc

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
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=pytest_env())
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "--bench-slow: expected KERNEL.METHOD=FACTOR" in proc.stderr


def _usage_error(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_control.py", "--collect-only", "-q",
         "-p", "no:cacheprovider", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=pytest_env())
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines  # one line, nothing around it
    return lines[0]


@pytest.mark.parametrize("bad, hint", [
    ("jacobain.manual_forward=1.25", "kernels: ['backprop', 'counting', 'jacobian'"),
    ("jacobian.manual_forwrd=1.25", "its methods: ["),
    ("control.matmul_512=1.25", "kernels: ["),
])
def test_bench_slow_refuses_a_name_no_benchmark_records(bad, hint):
    line = _usage_error(f"--bench-slow={bad}")
    assert f"--bench-slow: no benchmark records {bad.split('=')[0]!r}" in line
    assert hint in line


def test_bench_slow_accepts_every_recorded_name():
    from bench import slowable_methods

    names = slowable_methods()
    assert "torch_func_vmap_jacfwd" in names["jacobian"]  # the batched name is recorded
    assert "gd_closed_form" in names["least_squares"] and "manual" in names["backprop"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_control.py", "--collect-only", "-q",
         "-p", "no:cacheprovider", "--bench-slow=jacobian.torch_func_vmap_jacfwd=1.5",
         "--bench-slow=least_squares.momentum_form2=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=pytest_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_unknown_device_is_one_line():
    line = _usage_error("--device=gpu")
    assert line.startswith("ERROR: --device: unknown device(s) ['gpu']"), line


@pytest.mark.parametrize("pytest_version, benchmark_version, conflict", [
    ("9.2.0", "5.2.3", True),
    ("9.3.1", "4.0.0", True),
    ("9.2.0", "5.3.1", False),
    ("9.1.1", "5.2.3", False),
    ("7.4.0", "4.0.0", False),
    ("9.2.0", None, False),  # pytest-benchmark absent: pytest verify alone
])
def test_the_one_broken_pairing_in_the_declared_ranges_is_a_clear_error(
        pytest_version, benchmark_version, conflict):
    from handgrad.benchmark import plugin_conflict

    msg = plugin_conflict(pytest_version, benchmark_version)
    assert (msg is not None) == conflict
    if conflict:
        assert "install pytest-benchmark>=5.3.1 or pytest<9.2" in msg


def test_xdist_workers_share_the_cores(monkeypatch):
    from types import SimpleNamespace

    from handgrad.benchmark import bench_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    opts = {"--bench-threads": None}
    config = SimpleNamespace(getoption=opts.get)
    assert bench_threads(config) == 8
    config.workerinput = {"workercount": 4}
    assert bench_threads(config) == 2
    config.workerinput = {"workercount": 16}
    assert bench_threads(config) == 1
    opts["--bench-threads"] = 3  # asked for: as asked
    assert bench_threads(config) == 3
    opts["--bench-threads"] = 2147483647  # torch's largest (a C int)
    assert bench_threads(config) == 2147483647


@pytest.mark.parametrize("threads", [0, -1, 2147483648, 99999999999999999999])
def test_bench_threads_out_of_torchs_range_is_a_usage_error(threads):
    """Beyond a C int, torch.set_num_threads had ended the session in an INTERNALERROR
    (an overflow); below 1 there is no thread to run on."""
    from types import SimpleNamespace

    from handgrad.benchmark import bench_threads

    config = SimpleNamespace(getoption={"--bench-threads": threads,
                                        "--bench-instructions": False}.get)
    with pytest.raises(pytest.UsageError) as exc:
        bench_threads(config)
    assert str(exc.value) == ("--bench-threads: expected an integer from 1 to 2147483647 "
                              f"(torch's thread count), got {threads}")


def _bench_outcomes(*args: str) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench", "-q", "-rs",
                           "-p", "no:cacheprovider", "--benchmark-disable", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=pytest_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout, proc.stdout.strip().splitlines()[-1]


def test_the_gpu_grid_is_gpu_sized_and_only_that():
    # on a CPU the gpu grid runs the machine's ceilings and the control, nothing else
    out, last = _bench_outcomes("--bench-grid=gpu", "--device=cpu")
    assert last.startswith("3 passed"), last
    assert "gpu grid: GPU-sized, CUDA only" in out
    assert "not in the gpu grid" in out
    # and the default grid never runs a GPU-sized case (ids carry their sizes)
    out, last = _bench_outcomes("--device=cpu", "-k", "16384 or 65536 or N4096 or bfloat16")
    assert " passed" not in last and "skipped" in last, last
    assert "gpu grid only (--bench-grid=gpu)" in out


def test_the_gpu_grid_times_the_loops_at_small_k_and_the_closed_form_at_large_k():
    """The GD loops cost k steps: at k = 10^4 and N = 20000 one call is seconds and a
    benchmark minutes, which the gpu grid's 10 minutes cannot hold. The closed form is
    flat in k and is timed where it matters, at k = 10^4."""
    from bench.specs import least_squares as bl

    ran = set()
    for p in bl.gd_params():
        k, n, d, _ = p.values
        if {m.name for m in p.marks} != {"gpu_grid"}:
            continue
        ran |= {(method, k) for method in bl.GD_FAMILY.methods
                if bl.gd_skip(method, k, n, d) is None}
    loops = {(m, k) for m, k in ran if m in bl.LOOPS}
    assert loops == {(m, bl.GPU_LOOP_K) for m in bl.LOOPS}
    assert ran - loops == {(m, 10_000) for m in bl.GD_FAMILY.methods if m not in bl.LOOPS}


def test_cross_entropy_is_timed_in_the_log_cosh_groups(tiny_run):
    """Each cross-entropy benchmark shares its group with the log-cosh ones of its shape,
    and is measured against its own torch reference there."""
    groups: dict[str, set] = {}
    for b in tiny_run["benchmarks"]:
        if b["extra_info"]["kernel"] == "backprop":
            groups.setdefault(b["group"], set()).add(b["extra_info"]["method"])
    ce = {g: m for g, m in groups.items() if "manual_cross_entropy" in m}
    assert len(ce) >= 3, groups
    for group, methods in ce.items():
        assert {"manual", "torch_autograd", "torch_autograd_cross_entropy"} <= methods, group
    info = next(b["extra_info"] for b in tiny_run["benchmarks"]
                if b["extra_info"]["method"] == "manual_cross_entropy")
    assert info["reference"] == "torch_autograd_cross_entropy" and info["shape"]["P"] == 10
