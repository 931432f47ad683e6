"""handgrad.benchmark.timing on a CPU: the CUDA path's logic with a stand-in for
torch.cuda (a fake GPU clock that a call advances), and the hand-over of event times to
pytest-benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from handgrad.benchmark import timing as T
from verify.fake_cuda_timing import FakeCuda

ROOT = Path(__file__).resolve().parent.parent




def cuda_timing(cuda: FakeCuda, cold: bool = False) -> T.Timing:
    flushes = []

    class Buffer:
        def zero_(self):
            cuda.log.append("flush")
            flushes.append(1)

    return T.Timing(timer="cuda_event", cache="cold" if cold else "warm",
                    clock=T.EventClock(), cuda=cuda, _flush_buffer=Buffer() if cold else None)


def test_event_timing_hands_the_gpu_time_to_the_clock_with_no_sync_in_the_window():
    cuda = FakeCuda()
    timing = cuda_timing(cuda)
    run = timing.wrap(lambda: cuda.work(0.004) or "out")
    before = timing.clock()
    assert run() == "out"
    assert timing.clock() - before == pytest.approx(0.004)
    # start event, the work, end event; the host waits only after the end event
    assert cuda.log == ["record", "work", "record", "event.synchronize"]
    assert "synchronize" not in cuda.log
    assert timing.time_once(lambda: cuda.work(0.0025)) == pytest.approx(0.0025)


def test_cold_l2_is_flushed_before_the_start_event():
    cuda = FakeCuda()
    timing = cuda_timing(cuda, cold=True)
    timing.wrap(lambda: cuda.work(0.001))()
    assert cuda.log == ["flush", "record", "work", "record", "event.synchronize"]
    timing.time_once(lambda: cuda.work(0.001))
    assert cuda.log.count("flush") == 2  # the interleaved reference's rounds are cold too


def test_perf_counter_on_a_gpu_synchronises_inside_and_the_cpu_not_at_all():
    cuda = FakeCuda()
    t = T.Timing(timer="perf_counter", cache="warm", cuda=cuda)
    t.wrap(lambda: cuda.work(0.001))()
    assert cuda.log == ["work", "synchronize"]
    cpu = T.timing_for("cpu")
    assert (cpu.timer, cpu.cache, cpu.clock, cpu.cuda) == ("perf_counter", "warm", None, None)
    calls = []
    assert cpu.wrap(lambda: calls.append(1) or 7)() == 7 and calls == [1]
    assert cpu.time_once(lambda: None) >= 0
    with pytest.raises(ValueError, match="cold-L2 timing is for CUDA devices"):
        T.timing_for("cpu", cold=True)


def test_peak_bytes_is_what_one_call_adds_at_its_peak():
    cuda = FakeCuda()
    cuda.allocated = 1000  # already held before the call: not the call's
    cuda.peak = 5000  # an earlier call's peak: reset before this one
    assert T.peak_bytes(lambda: cuda.work(0.0, alloc=300), "cuda", cuda=cuda) == 300
    assert cuda.log[0] == "synchronize" and cuda.log[-1] == "synchronize"
    assert T.peak_bytes(lambda: None, "meta") is None  # a device with no count
    # the CPU's count: the allocator's events during the call (verify/test_memory.py)
    assert T.peak_bytes(lambda: torch.ones(250, dtype=torch.float32), "cpu") == 1000


def test_gpu_info_records_what_can_be_read():
    class Cuda:
        def is_available(self):
            return True

        def get_device_name(self, i):
            return "NVIDIA H100 80GB HBM3"

        def clock_rate(self, i):
            return 1980

    info = T.gpu_info(Cuda(), smi=lambda args: "580.65.06\n")
    assert info["gpu"] == "NVIDIA H100 80GB HBM3" and info["gpu_sm_clock_mhz"] == 1980
    assert info["gpu_driver"] == "580.65.06"

    class NoPynvml(Cuda):
        def clock_rate(self, i):
            raise ModuleNotFoundError("pynvml")

    def no_smi(args):
        raise FileNotFoundError("nvidia-smi")

    info = T.gpu_info(NoPynvml(), smi=no_smi)
    assert info["gpu_sm_clock_mhz"] is None and info["gpu_driver"] is None

    class NoGpu:
        def is_available(self):
            return False

    assert T.gpu_info(NoGpu()) == {}


def test_pytest_benchmark_keeps_the_event_times_as_its_rounds(tmp_path):
    """The installed pytest-benchmark, given the event clock, stores exactly the GPU time
    of each round in stats.data (a clock that moved by anything else would show)."""
    test = tmp_path / "test_clock.py"
    test.write_text(textwrap.dedent("""
        from handgrad.benchmark import _use_clock
        from handgrad.benchmark.timing import EventClock

        TIMES = [0.003, 0.001, 0.004, 0.0015, 0.009]

        def test_rounds(benchmark):
            clock = EventClock()
            _use_clock(benchmark, clock)
            left = list(TIMES)
            benchmark.pedantic(lambda: clock.advance(left.pop(0)), rounds=len(TIMES),
                               iterations=1)
    """))
    out = tmp_path / "out.json"
    (tmp_path / "none.ini").write_text("[pytest]\n")  # not the project's configuration
    from verify.runs import pytest_env

    env = {**pytest_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(test), "-q", "-p",
                           "no:cacheprovider", "-c", str(tmp_path / "none.ini"),
                           "--rootdir", str(tmp_path), f"--benchmark-json={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    stats = json.loads(out.read_text())["benchmarks"][0]["stats"]
    assert stats["data"] == pytest.approx([0.003, 0.001, 0.004, 0.0015, 0.009], abs=1e-15)
    assert stats["median"] == pytest.approx(0.003)
