"""Manual backprop timed beside torch.autograd.grad on the same network and batch: the
regression loss (log-cosh, one output) and softmax cross-entropy (10 classes, class
indices), in the same groups. The spec (grids, methods, callables): bench/specs/backprop.py."""

from __future__ import annotations

import pytest
import torch

from bench.specs.backprop import (
    CE_FAMILY,
    CLASSES,
    FAMILY,
    D,
    P,
    backprop_bytes,
    backprop_flops,
    ce_grid_params,
    grid_params,
    make_calls,
)
from handgrad.benchmark.methods import method_params, peers


@pytest.mark.parametrize("method", method_params(FAMILY))
@pytest.mark.parametrize("L,K,n,dtype", grid_params())
def test_backprop(measure, method: str, L: int, K: int, n: int, dtype: torch.dtype,
                  device: str) -> None:
    calls, sizes = make_calls(L, K, n, dtype, device)
    measure(
        **peers(FAMILY, method, calls, device).measure_kwargs(),
        group=f"backprop L={L} K={K} N={n} {device}"
              + ("" if dtype == torch.float32 else f" {str(dtype).removeprefix('torch.')}"),
        flops=backprop_flops(sizes, n),
        bytes=backprop_bytes(sizes, n, torch.finfo(dtype).bits // 8),
        shape=dict(L=L, D=D, K=K, P=P, N=n), device=device, dtype=dtype,
    )


@pytest.mark.parametrize("method", method_params(CE_FAMILY))
@pytest.mark.parametrize("L,K,n,dtype", ce_grid_params())
def test_backprop_cross_entropy(measure, method: str, L: int, K: int, n: int,
                                dtype: torch.dtype, device: str) -> None:
    """Softmax cross-entropy (CLASSES logits, class indices) in the same groups as the
    log-cosh benchmarks: manual backprop against torch.autograd.grad of F.cross_entropy."""
    calls, sizes = make_calls(L, K, n, dtype, device, loss="cross_entropy")
    measure(
        **peers(CE_FAMILY, method, calls, device).measure_kwargs(),
        group=f"backprop L={L} K={K} N={n} {device}",
        flops=backprop_flops(sizes, n),
        bytes=backprop_bytes(sizes, n, torch.finfo(dtype).bits // 8),
        shape=dict(L=L, D=D, K=K, P=CLASSES, N=n), device=device, dtype=dtype,
    )
