"""Fixtures for `pytest bench`: device-correct timing, a fixed thread count, the grid.

Every benchmark goes through ``measure``: it warms the callable up, synchronises CUDA
inside the timed call, and writes its ``extra_info`` as a ``reports.record.BenchRecord``
(validated here; ``reports`` validates it again when it reads the JSON).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
import torch

from bench.timing import finished, peak_bytes, timing_for
from conftest import bench_slow
from handgrad.reports.record import BenchRecord


@pytest.fixture
def grid(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--bench-grid")


def slowed(fn: Callable[[], object], factor: float) -> Callable[[], object]:
    """``fn`` made ``factor`` times as slow by spinning for (factor - 1) x its own time after
    each call: a stand-in for a regression, for testing the gate (``--bench-slow``)."""

    def run() -> object:
        t0 = time.perf_counter()
        out = fn()
        until = time.perf_counter() + (factor - 1) * (time.perf_counter() - t0)
        while time.perf_counter() < until:
            pass
        return out

    return run


def warm_up(fn: Callable[[], object], times: int) -> None:
    """Call ``fn`` up to ``times`` times before timing; one call is enough warm-up for a
    call that takes over 50 ms (caches, allocator and dispatch are warm after it)."""
    for _ in range(times):
        if _time(fn) > 0.05:
            return


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_record(info: dict, slow: dict[str, float]) -> BenchRecord:
    """The record of one benchmark from ``measure``'s keywords: the dtype as its name, the
    session's thread count, the ``--bench-slow`` factor that applies. A missing, unknown or
    malformed field raises here (TypeError / reports.record.RecordError, by name)."""
    info = {**info, "dtype": str(info.get("dtype")).removeprefix("torch."),
            "threads": torch.get_num_threads()}
    factor = slow.get(f"{info.get('kernel')}.{info.get('method')}")
    if factor is not None:
        info["slowed_by"] = factor
    return BenchRecord(**info)


@pytest.fixture
def measure(benchmark, request: pytest.FixtureRequest):
    """``measure(fn, group=..., reference_fn=None, **extra_info)``: time ``fn`` and label it.

    The device's timing (``bench.timing``): perf_counter on the CPU; CUDA events on a GPU,
    where the L2 is flushed before each call with ``--bench-cold-l2``. With
    ``reference_fn`` (the reference's callable, same inputs), rounds are interleaved:
    before each timed round of ``fn`` the reference runs once and is timed the same way,
    and its times go to ``extra_info["reference_data"]``, paired index by index with the
    kernel's ``stats.data``. A ratio of paired rounds cancels whatever drift the machine
    has between rounds, which is what the gate compares. On a GPU the peak memory of one
    call of ``fn`` (and of the reference) is recorded too, unless ``peak`` and
    ``reference_peak`` give them: a captured method's is its capture's peak
    (bench.compiled.capture_call), and its compiled reference's the peak of its compile and
    CUDA-graph recording (``bench.compiled.peak_while``), so that both are taken alike.
    """

    def _measure(fn: Callable[[], object], *, group: str, warmup: int = 3,
                 reference_fn: Callable[[], object] | None = None, peak: int | None = None,
                 reference_peak: int | None = None, **info) -> object:
        if request.config.getoption("--bench-instructions"):
            return _count_instructions(benchmark, fn, reference_fn, group, info)
        device = str(info.get("device"))
        cold = bool(request.config.getoption("--bench-cold-l2")) and _is_cuda(device)
        timing = timing_for(device, cold=cold)
        record = bench_record({**info, "timer": timing.timer, "cache": timing.cache},
                              bench_slow(request.config))
        benchmark.group = group
        benchmark.extra_info.update(record.to_extra_info())
        target = fn
        if record.slowed_by is not None:  # spun inside the timed window, device finished
            target = slowed(finished(fn, timing.cuda), record.slowed_by)
        run = timing.wrap(target)
        if benchmark.disabled:
            return benchmark(run)
        warm_up(run, warmup)
        if timing.clock is not None:
            _use_clock(benchmark, timing.clock)
        if reference_fn is not None:
            warm_up(timing.wrap(reference_fn), warmup)
        ref_times: list[float] = []
        if reference_fn is None and timing.clock is None:
            result = benchmark(run)  # pytest-benchmark's own calibration and rounds
        else:
            # as many rounds as fit in --benchmark-max-time (for the pair, when
            # interleaved), at least min-rounds
            opts = request.config.option
            per_round = _time(run) + (_time(timing.wrap(reference_fn)) if reference_fn
                                      else 0.0)
            min_rounds = int(getattr(opts, "benchmark_min_rounds", 5))
            max_time = float(getattr(opts, "benchmark_max_time", 1.0))
            rounds = int(max(min_rounds, min(10_000, max_time / max(per_round, 1e-9))))
            setup = None if reference_fn is None else (
                lambda: ref_times.append(timing.time_once(reference_fn)))
            result = benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
        extra = {}
        if reference_fn is not None:
            extra["reference_data"] = tuple(ref_times)
        if peak is None:  # given for a captured method: its replay allocates nothing
            peak = peak_bytes(fn, device)
        if peak is not None:
            extra["peak_bytes"] = peak
            if reference_fn is not None:
                extra["reference_peak_bytes"] = (reference_peak if reference_peak is not None
                                                 else peak_bytes(reference_fn, device))
        if extra:
            benchmark.extra_info.update(dataclasses.replace(record, **extra).to_extra_info())
        return result

    return _measure


def not_counted(info: dict) -> str | None:
    """Why ``--bench-instructions`` does not count a benchmark (None: it counts it)."""
    from bench import callgrind

    if info.get("kernel") in ("control", "ceiling"):
        return ("a measurement of the machine, for the wall clock: not counted under "
                "--bench-instructions")
    if info.get("compile_mode") is not None:
        return ("compiled or captured: compiling under callgrind takes hours; not counted "
                "under --bench-instructions")
    if torch.device(str(info.get("device"))).type != "cpu":
        return "instructions are counted on the CPU only (--bench-instructions)"
    flops = info.get("flops") or 0
    if flops > callgrind.MAX_FLOPS:
        return (f"{flops:.3g} FLOPs a call, over bench.callgrind.MAX_FLOPS "
                f"({callgrind.MAX_FLOPS:.3g}): arithmetic-bound, left to the wall-clock gate")
    return None


def _count_instructions(benchmark, fn, reference_fn, group: str, info: dict) -> object:
    """--bench-instructions: instructions per call of ``fn`` and of its reference
    (bench.callgrind.count), recorded with timer 'callgrind'; pytest-benchmark times one
    call under valgrind, a time no report reads as wall clock."""
    from bench import callgrind

    why = not_counted(info)
    if why:
        pytest.skip(why)
    counts = {"instructions": callgrind.count(fn)}
    if reference_fn is not None:
        counts["reference_instructions"] = callgrind.count(reference_fn)
    record = bench_record({**info, "timer": "callgrind", "cache": "warm", **counts}, {})
    benchmark.group = group
    benchmark.extra_info.update(record.to_extra_info())
    if benchmark.disabled:
        return benchmark(fn)
    return benchmark.pedantic(fn, rounds=1, iterations=1)


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def _use_clock(benchmark, clock) -> None:
    """pytest-benchmark reads its timer before and after each call; give it the event
    clock (the attribute every version from 4.0 to 5.3 has)."""
    if not hasattr(benchmark, "_timer"):
        raise RuntimeError("this pytest-benchmark has no BenchmarkFixture._timer: CUDA event "
                           "timing cannot hand it its times")
    benchmark._timer = clock
