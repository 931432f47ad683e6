"""Manual backprop timed beside torch.autograd.grad on the same network and batch: the
regression loss (log-cosh, one output) and softmax cross-entropy (10 classes, class
indices), in the same groups."""

from __future__ import annotations

import pytest
import torch

from handgrad.benchmark.compiled import CAPTURE_MODE, capture_call, compile_call, peak_while, reset
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


ROLES = {  # method: its role
    "manual": "kernel",
    "torch_autograd": "reference",
    "manual_compiled": "kernel",
    "torch_func_grad_compiled": "reference",
    "manual_captured": "kernel",
}
REFERENCE = {  # method: what it is measured against (a reference names itself)
    "manual": "torch_autograd",
    "torch_autograd": "torch_autograd",
    "manual_compiled": "torch_func_grad_compiled",
    "torch_func_grad_compiled": "torch_func_grad_compiled",
    "manual_captured": "torch_func_grad_compiled",
}
# softmax cross-entropy: its own method names in the same groups (a method is one loss)
CE_ROLES = {"manual_cross_entropy": "kernel", "torch_autograd_cross_entropy": "reference"}
CE_REFERENCE = {"manual_cross_entropy": "torch_autograd_cross_entropy",
                "torch_autograd_cross_entropy": "torch_autograd_cross_entropy"}
# compiled method: the eager callable of make_calls it compiles (handgrad.benchmark.compiled)
COMPILED_FROM = {"manual_compiled": "manual", "torch_func_grad_compiled": "torch_func_grad"}
# captured method (kernels.capture, CUDA only, every grid): the eager method it replays,
# timed against the compiled reference (reduce-overhead: CUDA graphs too)
CAPTURED_FROM = {"manual_captured": "manual"}


def method_params():
    """The eager methods in every grid; the compiled ones (compile time is tens of seconds
    per graph on 2 cores) in the full grid on CPU-sized params and in the gpu grid."""
    return [pytest.param(m, marks=[pytest.mark.full] if m in COMPILED_FROM else [])
            for m in ROLES]


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


@pytest.mark.parametrize("method", method_params())
@pytest.mark.parametrize("L,K,n,dtype", grid_params())
def test_backprop(measure, method: str, L: int, K: int, n: int, dtype: torch.dtype,
                  device: str) -> None:
    calls, sizes = make_calls(L, K, n, dtype, device)
    reference = REFERENCE[method]
    compiled = {}
    peak = ref_peak = None
    if method in CAPTURED_FROM:
        fn, capture_s, peak = capture_call(calls[CAPTURED_FROM[method]], device, name=method)
        compiled = {"compile_mode": CAPTURE_MODE, "compile_s": capture_s}
        reset()
        (ref_fn, _, _), ref_peak = peak_while(
            lambda: compile_call(calls[COMPILED_FROM[reference]], device, name=reference),
            device)
    elif method in COMPILED_FROM:
        reset()
        fn, compile_s, mode = compile_call(calls[COMPILED_FROM[method]], device, name=method,
                                           fullgraph=ROLES[method] == "kernel")
        compiled = {"compile_mode": mode, "compile_s": compile_s}
        ref_fn = None
        if reference != method:
            ref_fn, _, _ = compile_call(calls[COMPILED_FROM[reference]], device,
                                        name=reference)
    else:
        fn = calls[method]
        ref_fn = None if reference == method else calls[reference]
    measure(
        fn,
        reference_fn=ref_fn,
        peak=peak, reference_peak=ref_peak,
        group=f"backprop L={L} K={K} N={n} {device}"
              + ("" if dtype == torch.float32 else f" {str(dtype).removeprefix('torch.')}"),
        kernel="backprop", method=method, reference=reference, role=ROLES[method],
        flops=backprop_flops(sizes, n),
        bytes=backprop_bytes(sizes, n, torch.finfo(dtype).bits // 8),
        shape=dict(L=L, D=D, K=K, P=P, N=n), device=device, dtype=dtype, **compiled,
    )


def ce_grid_params():
    """cross-entropy's shapes: CE_QUICK in the quick grid, the other CPU shapes in the full
    grid, the gpu grid's shapes in float32."""
    cpu = [pytest.param(L, K, N, torch.float32, id=f"L{L}-K{K}-N{N}",
                        marks=[] if (L, K, N) in CE_QUICK else [pytest.mark.full])
           for L, K, N in sorted(set(QUICK) | set(FULL))]
    gpu = [pytest.param(L, K, N, torch.float32, id=f"L{L}-K{K}-N{N}-float32",
                        marks=[pytest.mark.gpu_grid]) for L, K, N in GPU]
    return cpu + gpu


@pytest.mark.parametrize("method", list(CE_ROLES))
@pytest.mark.parametrize("L,K,n,dtype", ce_grid_params())
def test_backprop_cross_entropy(measure, method: str, L: int, K: int, n: int,
                                dtype: torch.dtype, device: str) -> None:
    """Softmax cross-entropy (CLASSES logits, class indices) in the same groups as the
    log-cosh benchmarks: manual backprop against torch.autograd.grad of F.cross_entropy."""
    calls, sizes = make_calls(L, K, n, dtype, device, loss="cross_entropy")
    base = method.removesuffix("_cross_entropy")
    reference = CE_REFERENCE[method]
    measure(
        calls[base],
        reference_fn=None if reference == method else calls["torch_autograd"],
        group=f"backprop L={L} K={K} N={n} {device}",
        kernel="backprop", method=method, reference=reference, role=CE_ROLES[method],
        flops=backprop_flops(sizes, n),
        bytes=backprop_bytes(sizes, n, torch.finfo(dtype).bits // 8),
        shape=dict(L=L, D=D, K=K, P=CLASSES, N=n), device=device, dtype=dtype,
    )
