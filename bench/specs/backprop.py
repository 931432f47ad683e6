"""The backprop family's benchmark spec: manual backprop beside torch.autograd.grad on the
same network and batch, for the regression loss (log-cosh, one output) and softmax
cross-entropy (10 classes, class indices), in the same groups. Its benchmarks are
``bench/test_backprop.py``; ``verify/test_compiled.py`` builds its callables here too."""

from __future__ import annotations

import pytest
import torch

from handgrad.benchmark.methods import Family, Method
from handgrad.kernels import backprop as bp
from handgrad.kernels import mlp
from handgrad.testing.references import torch_loss

QUICK = [(L, K, N) for L in (3, 5, 10) for K in (64, 256) for N in (256,)]
# the course's sizes, where per-call overhead (checks and dispatch), not arithmetic, is the
# cost: one sample at K=30, a batch of 256 at K=50 (the instruction-count gate's home)
COURSE = [(L, K, N) for L in (3, 5, 10) for K, N in ((30, 1), (50, 256))]
QUICK += COURSE
FULL = [(L, K, N) for L in (3, 5, 10, 20) for K in (64, 256, 1024) for N in (32, 256, 2048)]
# GPU-sized (--bench-grid=gpu): K up to 8192, N up to 16384, in float32 and bfloat16. The
# largest, L=10 K=4096 N=16384, holds ~5 GB of activations per method
GPU = [(3, 1024, 4096), (3, 4096, 16384), (10, 4096, 16384), (3, 8192, 16384)]
D, P = 13, 1
CLASSES = 10  # cross-entropy's outputs (P of its records)
# cross-entropy in the quick grid at the narrow width only, so the default grid grows by a
# quarter, not double; every other CPU shape in the full grid, and the gpu grid in float32
CE_QUICK = [(L, K, N) for L, K, N in QUICK if K == 64]


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


FAMILY = Family("backprop", {
    "manual": Method("kernel", reference="torch_autograd"),
    "torch_autograd": Method("reference"),
    # compiled, meeting torch.func.grad compiled (handgrad.benchmark.compiled)
    "manual_compiled": Method("kernel", reference="torch_func_grad_compiled",
                              build="compiled", source="manual"),
    "torch_func_grad_compiled": Method("reference", build="compiled",
                                       source="torch_func_grad"),
    # captured (kernels.capture, CUDA only, every grid): the eager kernel replayed, timed
    # against the compiled reference (reduce-overhead: CUDA graphs too)
    "manual_captured": Method("kernel", reference="torch_func_grad_compiled",
                              build="captured", source="manual"),
})
# softmax cross-entropy: its own method names in the same groups (a method is one loss),
# built from the cross-entropy case's eager callables
CE_FAMILY = Family("backprop", {
    "manual_cross_entropy": Method("kernel", reference="torch_autograd_cross_entropy",
                                   source="manual"),
    "torch_autograd_cross_entropy": Method("reference", source="torch_autograd"),
})
FAMILIES = (FAMILY, CE_FAMILY)


def make_calls(L: int, K: int, n: int, dtype: torch.dtype, device: str,
               loss: str = "log_cosh") -> tuple[dict, list]:
    """The eager callables of one shape, by name (``manual``, ``torch_autograd``,
    ``torch_func_grad``: torch.func.grad of the loss w.r.t. every weight, bias and x), and
    the layer sizes. ``loss``: "log_cosh" (P = 1 output, y (n, 1)) or "cross_entropy"
    (CLASSES outputs, y class indices (n,)). ``verify/test_compiled.py`` builds its
    callables here too."""
    p = CLASSES if loss == "cross_entropy" else P
    sizes = [D] + [K] * (L - 1) + [p]
    g = torch.Generator().manual_seed(0)
    net = mlp.init_mlp(sizes, "tanh", generator=g, dtype=dtype, device=device)
    x = torch.randn(n, D, generator=g).to(device, dtype)
    if loss == "cross_entropy":
        y = torch.randint(0, p, (n,), generator=g).to(device)
    else:
        y = torch.randn(n, p, generator=g).to(device, dtype)

    ws = [w.clone().requires_grad_() for w in net.weights]
    bs = [b.clone().requires_grad_() for b in net.biases]
    xx = x.clone().requires_grad_()

    def autograd():
        J = torch_loss(ws, bs, xx, y, activation="tanh", loss=loss)
        return torch.autograd.grad(J, ws + bs + [xx])

    def objective(ws_, bs_, x_):
        return torch_loss(ws_, bs_, x_, y, activation="tanh", loss=loss)

    grad = torch.func.grad(objective, argnums=(0, 1, 2))
    wd, bd = list(net.weights), list(net.biases)

    calls = {"manual": lambda: bp.backprop(net, x, y, loss=loss),
             "torch_autograd": autograd,
             "torch_func_grad": lambda: grad(wd, bd, x)}
    return calls, sizes


def gradients(out) -> list[torch.Tensor]:
    """Every gradient a method returns, flat: weights, biases, then x's."""
    if isinstance(out, bp.Gradients):
        return [*out.weights, *out.biases, out.input]
    if len(out) == 3 and isinstance(out[0], (list, tuple)):  # torch.func.grad's (ws, bs, x)
        return [*out[0], *out[1], out[2]]
    return list(out)



def ce_grid_params():
    """cross-entropy's shapes: CE_QUICK in the quick grid, the other CPU shapes in the full
    grid, the gpu grid's shapes in float32."""
    cpu = [pytest.param(L, K, N, torch.float32, id=f"L{L}-K{K}-N{N}",
                        marks=[] if (L, K, N) in CE_QUICK else [pytest.mark.full])
           for L, K, N in sorted(set(QUICK) | set(FULL))]
    gpu = [pytest.param(L, K, N, torch.float32, id=f"L{L}-K{K}-N{N}-float32",
                        marks=[pytest.mark.gpu_grid]) for L, K, N in GPU]
    return cpu + gpu
