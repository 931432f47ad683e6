"""Fixtures for `pytest bench`: device-correct timing, a fixed thread count, the grid.

Every benchmark goes through ``measure``: it warms the callable up, synchronises CUDA
inside the timed call, and writes the ``extra_info`` that reports and the gate read
(kernel, method, reference, flops, bytes, shapes, device, dtype, threads).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

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


@pytest.fixture
def measure(benchmark, request: pytest.FixtureRequest):
    """``measure(fn, group=..., **extra_info)``: time ``fn`` (no arguments) and label it."""

    def _measure(fn: Callable[[], object], *, group: str, warmup: int = 3, **info) -> object:
        missing = [k for k in EXTRA_INFO_REQUIRED if k not in info]
        if missing:
            raise ValueError(f"measure: extra_info is missing {missing} (DESIGN.md §2)")
        info["dtype"] = str(info["dtype"]).removeprefix("torch.")
        info["threads"] = torch.get_num_threads()
        info["grid"] = request.config.getoption("--bench-grid")
        benchmark.group = group
        benchmark.extra_info.update(info)
        run = synchronized(fn, info["device"])
        for _ in range(0 if benchmark.disabled else warmup):
            run()
        return benchmark(run)

    return _measure
