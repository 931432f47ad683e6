"""Manual backprop timed beside torch.autograd.grad on the same network and batch."""

from __future__ import annotations

import pytest
import torch

from kernels import backprop as bp
from kernels import mlp
from verify.references import torch_loss

QUICK = [(L, K, N) for L in (3, 5, 10) for K in (64, 256) for N in (256,)]
FULL = [(L, K, N) for L in (3, 5, 10, 20) for K in (64, 256, 1024) for N in (32, 256, 2048)]
# GPU-sized (--bench-grid=gpu): K up to 8192, N up to 16384, in float32 and bfloat16. The
# largest, L=10 K=4096 N=16384, holds ~5 GB of activations per method
GPU = [(3, 1024, 4096), (3, 4096, 16384), (5, 4096, 16384), (10, 4096, 16384),
       (3, 8192, 16384)]
D, P = 13, 1


def grid_params():
    cpu = [pytest.param(L, K, N, torch.float32, id=f"L{L}-K{K}-N{N}",
                        marks=[] if (L, K, N) in QUICK else [pytest.mark.full])
           for L, K, N in sorted(set(QUICK) | set(FULL))]
    gpu = [pytest.param(L, K, N, dt, id=f"L{L}-K{K}-N{N}-{str(dt).removeprefix('torch.')}",
                        marks=[pytest.mark.gpu_grid])
           for L, K, N in GPU for dt in (torch.float32, torch.bfloat16)]
    return cpu + gpu


def backprop_flops(sizes: list[int], n: int) -> int:
    """Matmul FLOPs of one forward + backward pass (2 per multiply-add): the forward
    product, dW and dh each cost 2 N in out per layer (dh of the first layer too, since
    the kernel returns dJ/dx). Element-wise work is left out."""
    return sum(6 * n * i * o for i, o in zip(sizes[:-1], sizes[1:]))


def backprop_bytes(sizes: list[int], n: int, itemsize: int) -> int:
    """Least memory traffic: read every parameter and write its gradient, write and re-read
    every activation."""
    params = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
    acts = n * sum(sizes)
    return itemsize * (2 * params + 2 * acts)


OWNERS = {"manual": "handgrad", "torch_autograd": "torch"}


@pytest.mark.parametrize("method", list(OWNERS))
@pytest.mark.parametrize("L,K,n,dtype", grid_params())
def test_backprop(measure, method: str, L: int, K: int, n: int, dtype: torch.dtype,
                  device: str) -> None:
    sizes = [D] + [K] * (L - 1) + [P]
    g = torch.Generator().manual_seed(0)
    net = mlp.init_mlp(sizes, "tanh", generator=g, dtype=dtype, device=device)
    x = torch.randn(n, D, generator=g).to(device, dtype)
    y = torch.randn(n, P, generator=g).to(device, dtype)

    ws = [w.clone().requires_grad_() for w in net.weights]
    bs = [b.clone().requires_grad_() for b in net.biases]
    xx = x.clone().requires_grad_()

    def autograd():
        J = torch_loss(ws, bs, xx, y, activation="tanh", loss="log_cosh")
        return torch.autograd.grad(J, ws + bs + [xx])

    calls = {"manual": lambda: bp.backprop(net, x, y, loss="log_cosh"),
             "torch_autograd": autograd}
    measure(
        calls[method],
        reference_fn=None if method == "torch_autograd" else autograd,
        group=f"backprop L={L} K={K} N={n} {device}"
              + ("" if dtype == torch.float32 else f" {str(dtype).removeprefix('torch.')}"),
        kernel="backprop", method=method, reference="torch_autograd", owner=OWNERS[method],
        flops=backprop_flops(sizes, n),
        bytes=backprop_bytes(sizes, n, torch.finfo(dtype).bits // 8),
        L=L, D=D, K=K, P=P, N=n, device=device, dtype=dtype,
    )
