"""Fixtures for `pytest bench`: device-correct timing, a fixed thread count, the grid.

Every benchmark goes through ``measure``: it warms the callable up, synchronises CUDA
inside the timed call, and writes the ``extra_info`` that reports and the gate read
(kernel, method, reference, flops, bytes, shapes, device, dtype, threads).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from conftest import bench_slow

EXTRA_INFO_REQUIRED = ("kernel", "method", "reference", "flops", "device", "dtype")


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
        missing = [k for k in EXTRA_INFO_REQUIRED if k not in info]
        if missing:
            raise ValueError(f"measure: extra_info is missing {missing} (DESIGN.md §2)")
        info["dtype"] = str(info["dtype"]).removeprefix("torch.")
        info["threads"] = torch.get_num_threads()
        info["grid"] = request.config.getoption("--bench-grid")
        benchmark.group = group
        benchmark.extra_info.update(info)
        run = synchronized(fn, info["device"])
        factor = bench_slow(request.config).get(f"{info['kernel']}.{info['method']}")
        if factor is not None:
            run = slowed(run, factor)
            benchmark.extra_info["slowed_by"] = factor
        if benchmark.disabled:
            return benchmark(run)
        warm_up(run, warmup)
        if reference_fn is None:
            return benchmark(run)
        ref = synchronized(reference_fn, info["device"])
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
        benchmark.extra_info["reference_data"] = ref_times
        benchmark.extra_info["interleaved"] = True
        return result

    return _measure
