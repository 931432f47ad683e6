"""Jacobian kernels timed beside torch.func, torch.autograd.functional and the plain
forward pass (the floor), for L = 3, 5, 10, narrow and memory-bound widths, single and
batched inputs, on every device present. The spec (grids, methods, callables):
bench/specs/jacobian.py."""

from __future__ import annotations

import pytest
import torch

from bench.specs.jacobian import (
    FAMILY,
    D,
    P,
    flops_of,
    grid_params,
    make_calls,
    make_input,
    method_name,
)
from handgrad.benchmark.methods import method_params, peers
from handgrad.kernels import jacobian as jm


@pytest.mark.parametrize("method", method_params(FAMILY))
@pytest.mark.parametrize("L,K,N", grid_params())
def test_jacobian(measure, grid: str, method: str, L: int, K: int, N: int,
                  device: str) -> None:
    dtype = torch.float32
    ws, x = make_input(L, K, N, device, dtype)
    batched = N > 1
    counts = jm.op_counts(D, K, P, L, N)
    itemsize = torch.finfo(dtype).bits // 8
    tangent_bytes = N * D * N * K * itemsize
    if method == "autograd_jacobian_forward_mode" and batched and grid != "full":
        pytest.skip("full benchmark grid only (--bench-grid=full): batched, this reference "
                    "pushes N*D tangents through the whole batch, ~10 s per call at N=1024")
    if method == "autograd_jacobian_forward_mode" and batched and tangent_bytes > 2**30:
        pytest.skip(
            "autograd.functional.jacobian(forward-mode) does not know the samples are "
            f"independent: it pushes N*D = {N * D} tangents through the whole batch, "
            f"{tangent_bytes / 2**30:.0f} GiB per layer here"
        )
    n_params = sum(w.numel() for w in ws.values())
    # batched, torch.func's transforms are recorded as torch_func_vmap_*
    found = peers(FAMILY, method, make_calls(ws, x), device,
                  label=lambda m: method_name(m, batched))
    measure(
        **found.measure_kwargs(),
        group=f"jacobian L={L} K={K} N={N} {device}",
        flops=flops_of(method, L, K, N),
        # compulsory traffic: read the weights and x once, write the (N, P, D) Jacobian
        bytes=itemsize * (n_params + N * D + N * P * D),
        model_forward=counts["forward"],
        model_reverse=counts["reverse"],
        shape=dict(L=L, D=D, K=K, P=P, N=N), device=device, dtype=dtype,
    )
