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

from conftest import bench_slow
from reports.record import BenchRecord


@pytest.fixture
def grid(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--bench-grid")


def synchronized(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a CUDA synchronise when the work runs on a GPU: without it the
    timer measures only the kernel launch."""
    if torch.device(device).type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


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

    With ``reference_fn`` (the reference's callable, same inputs), rounds are interleaved:
    before each timed round of ``fn`` the reference runs once and is timed too, and its
    times go to ``extra_info["reference_data"]``, paired index by index with the kernel's
    ``stats.data``. A ratio of paired rounds cancels whatever drift the machine has between
    rounds, which is what the gate compares.
    """

    def _measure(fn: Callable[[], object], *, group: str, warmup: int = 3,
                 reference_fn: Callable[[], object] | None = None, **info) -> object:
        record = bench_record(info, bench_slow(request.config))
        benchmark.group = group
        benchmark.extra_info.update(record.to_extra_info())
        run = synchronized(fn, record.device)
        if record.slowed_by is not None:
            run = slowed(run, record.slowed_by)
        if benchmark.disabled:
            return benchmark(run)
        warm_up(run, warmup)
        if reference_fn is None:
            return benchmark(run)
        ref = synchronized(reference_fn, record.device)
        warm_up(ref, warmup)
        ref_times: list[float] = []
        # as many rounds as fit in --benchmark-max-time for the pair, at least min-rounds
        opts = request.config.option
        per_pair = _time(run) + _time(ref)
        min_rounds = int(getattr(opts, "benchmark_min_rounds", 5))
        max_time = float(getattr(opts, "benchmark_max_time", 1.0))
        rounds = int(max(min_rounds, min(10_000, max_time / per_pair)))
        result = benchmark.pedantic(run, setup=lambda: ref_times.append(_time(ref)),
                                    rounds=rounds, iterations=1)
        paired = dataclasses.replace(record, reference_data=tuple(ref_times))
        benchmark.extra_info.update(paired.to_extra_info())
        return result

    return _measure
