"""Closed-form gradient descent against the loop as k grows, and the momentum forms
against torch.optim.SGD, on the same least-squares problem. The spec (grids, methods,
callables): bench/specs/least_squares.py."""

from __future__ import annotations

import pytest
import torch

from bench.specs.least_squares import (
    GD_FAMILY,
    MOMENTUM_FAMILY,
    MOMENTUM_K,
    MOMENTUM_N,
    gd_calls,
    gd_flops,
    gd_params,
    gd_reference,
    gd_skip,
    momentum_calls,
    problem,
)
from handgrad.benchmark.methods import method_params, peers


@pytest.mark.parametrize("method", method_params(GD_FAMILY))
@pytest.mark.parametrize("k,n,d,dtype", gd_params())
def test_gd(measure, method: str, k: int, n: int, d: int, dtype: torch.dtype,
            device: str) -> None:
    why = gd_skip(method, k, n, d)
    if why:
        pytest.skip(why)
    X, y, w0, alpha = problem(device, dtype, n, d)
    itemsize = torch.finfo(dtype).bits // 8
    suffix = "" if dtype == torch.float64 else f" {str(dtype).removeprefix('torch.')}"
    found = peers(GD_FAMILY, method, gd_calls(X, y, w0, alpha, k, device), device,
                  reference=gd_reference(method, k))
    measure(
        **found.measure_kwargs(),
        group=f"least_squares gd k={k} N={n} D={d} {device}{suffix}",
        flops=gd_flops(method, k, n, d, device), bytes=itemsize * (n * d + n + d),
        shape=dict(N=n, D=d, k=k), device=device, dtype=dtype,
    )


@pytest.mark.parametrize("method", method_params(MOMENTUM_FAMILY))
def test_momentum(measure, method: str, device: str) -> None:
    k, n = MOMENTUM_K, MOMENTUM_N
    measure(
        **peers(MOMENTUM_FAMILY, method, momentum_calls(device), device).measure_kwargs(),
        group=f"least_squares momentum k={k} n={n} {device}",
        # per step: form I theta - a g + b (theta - prev) = 5 n; form II / SGD 4 n
        flops=(5 if method == "momentum_form1" else 4) * n * k,
        bytes=8 * k * n, shape=dict(N=n, k=k), device=device, dtype=torch.float64,
    )
