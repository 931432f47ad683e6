"""Peak memory of one call: the manual kernels need no more than their torch references.

Measured on the CPU by ``handgrad.benchmark.timing.cpu_peak_bytes`` (torch.profiler's allocator
events, the figure the benchmarks record on a CPU; on a GPU they record
``torch.cuda.max_memory_allocated``). Both sides are measured the same way, inputs
already allocated; what a call returns counts for both (every gradient, or the Jacobian).
The reference is what a user writes: ``torch.autograd.grad`` of the loss written with
``F.linear`` and the activation, for every weight, bias and the input.
"""

from __future__ import annotations

import pytest
import torch

from bench.specs import jacobian as bj
from handgrad.benchmark.timing import cpu_peak_bytes
from handgrad.kernels import backprop as bp
from handgrad.kernels import mlp
from handgrad.testing.references import torch_loss

# torch wraps a Python scalar argument (``a.add_(1)``) in a 0-d tensor for the length of
# the op: 8 bytes, 12 in float32. The kernel's derivative formulas take scalars where
# autograd's fused tanh_backward takes none, so a peak may differ by those bytes alone.
SCALAR_SLACK = 64  # bytes: far below one row of any buffer measured here


def _peak(fn) -> int:
    fn()  # a first call outside the measurement (lazy initialisations, caches)
    return cpu_peak_bytes(fn)


def test_the_cpu_peak_is_the_allocators_running_sum():
    """The measurer itself, on a call whose peak is known: two 4000-byte buffers alive at
    once (a temporary and the result), then a smaller one after the temporary is freed."""
    def call():
        a = torch.ones(1000, dtype=torch.float32)
        b = a.clone()
        del a
        c = torch.ones(100, dtype=torch.float32)
        return b, c

    assert cpu_peak_bytes(call) == 8000
    assert cpu_peak_bytes(lambda: torch.ones(10, dtype=torch.float64)) == 80
    assert cpu_peak_bytes(lambda: None) == 0


def _backprop_calls(sizes, n, activation, loss, dtype):
    g = torch.Generator().manual_seed(0)
    net = mlp.init_mlp(sizes, activation, generator=g, dtype=dtype)
    x = torch.randn(n, sizes[0], generator=g).to(dtype)
    y = (torch.randint(0, sizes[-1], (n,), generator=g) if loss == "cross_entropy"
         else torch.randn(n, sizes[-1], generator=g).to(dtype))
    ws = [w.clone().requires_grad_() for w in net.weights]
    bs = [b.clone().requires_grad_() for b in net.biases]
    xx = x.clone().requires_grad_()

    def autograd():
        J = torch_loss(ws, bs, xx, y, activation=activation, loss=loss)
        return J.detach(), torch.autograd.grad(J, ws + bs + [xx])

    return (lambda: bp.backprop(net, x, y, loss=loss)), autograd


SHAPES = {  # id: (layer sizes, batch)
    "L3-K256-N512": ([13, 256, 256, 1], 512),
    "L5-K128-N256": ([13, 128, 128, 128, 128, 1], 256),
    "L2-K512-N1024": ([64, 512, 10], 1024),
    "L4-wide-out": ([32, 256, 256, 256, 128], 128),
    "L3-classes": ([784, 128, 128, 10], 256),
}


@pytest.mark.parametrize("loss", ["squared", "log_cosh", "cross_entropy"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["float32", "float64", "bfloat16"])
def test_backprop_needs_no_more_memory_than_autograd(shape, activation, loss, dtype):
    sizes, n = SHAPES[shape]
    manual, autograd = _backprop_calls(sizes, n, activation, loss, dtype)
    m, a = _peak(manual), _peak(autograd)
    # activations alone: the kernel keeps one (N, K) buffer per hidden layer
    hidden = n * sum(sizes[1:-1]) * torch.finfo(dtype).bits // 8
    assert m >= hidden, (m, hidden)  # the measurer sees the kernel's buffers at all
    assert m <= a + SCALAR_SLACK, (f"manual backprop peaks at {m} bytes, autograd at {a} "
                    f"({m / a:.3f}x) for sizes {sizes}, N={n}, {activation}, {loss}, {dtype}")


@pytest.mark.parametrize("target", ["squared", "log_cosh", "indices", "probabilities"])
@pytest.mark.parametrize("sizes", [[5, 3], [5, 7, 7, 3]], ids=["L1", "L3"])
def test_backprop_leaves_its_inputs_untouched(sizes, target):
    """The kernel writes in place into its own buffers only: never into x, y (labels and
    probabilities included) or the net."""
    loss = target if target in ("squared", "log_cosh") else "cross_entropy"
    for activation in ("tanh", "sigmoid", "relu", "identity"):
        g = torch.Generator().manual_seed(1)
        net = mlp.init_mlp(sizes, activation, generator=g, dtype=torch.float64)
        x = torch.randn(4, 5, generator=g, dtype=torch.float64)
        y = {"indices": torch.tensor([0, 2, 1, 2]),
             "probabilities": torch.softmax(torch.randn(4, 3, generator=g,
                                                        dtype=torch.float64), 1)
             }.get(target, torch.randn(4, 3, generator=g, dtype=torch.float64))
        before = [t.clone() for t in (x, y, *net.weights, *net.biases)]
        first = bp.backprop(net, x, y, loss=loss)
        for t, b in zip((x, y, *net.weights, *net.biases), before):
            assert torch.equal(t, b), activation
        again = bp.backprop(net, x, y, loss=loss)  # and a second call agrees
        for u, v in zip(first.weights + (first.input,), again.weights + (again.input,)):
            assert torch.equal(u, v), activation


@pytest.mark.parametrize("L,K,N", [(3, 256, 1), (3, 256, 512), (5, 512, 256)])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_jacobian_kernels_need_no_more_memory_than_torch_func(mode, L, K, N):
    ws, x = bj.make_input(L, K, N, "cpu")
    manual = bj.make_call(f"manual_{mode}", ws, x)
    reference = bj.make_call("torch_func_jacfwd" if mode == "forward" else
                             "torch_func_jacrev", ws, x)
    m, r = _peak(manual), _peak(reference)
    assert m >= N * bj.P * bj.D * 4  # at least the Jacobian it returns
    assert m <= r, f"manual {mode} peaks at {m} bytes, torch.func at {r} ({m / r:.3f}x)"


# -- the order of the backward pass, for the GPU ----------------------------------------
# What the GPU run showed (H200, torch 2.11, L=3 K=1024 N=4096, float32): CUDA's column
# sum of an (N, K) tensor takes a 32 MiB temporary; made after dh it put manual backprop
# 4% above autograd's peak there, so on CUDA the bias gradient comes first
# (verify/test_cuda.py checks the peak on the GPU itself); and a host read of the loss
# before the backward pass left the device idle while the host queued the pass. On the
# CPU the order of the ops dispatched is checked here.

class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        self.ops.append((func.overloadpacket.__name__, shape))
        return out


def _backprop_ops(n=6, K=5):
    g = torch.Generator().manual_seed(0)
    net = mlp.init_mlp([3, K, K, 1], "tanh", generator=g)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)
    with _OpLog() as log:
        bp.backprop(net, x, y, loss="log_cosh")
    return log.ops


def test_on_the_cpu_each_layers_bias_gradient_is_summed_after_its_dh_is_made():
    """The CPU's column sum takes no temporary: made after dh, the bias gradient is not
    alive when dh is made (made first, it put the peak a bias vector above autograd's in
    bfloat16). On CUDA the order is the other way round (verify/test_cuda.py checks the
    GPU's peak)."""
    ops, n, K = _backprop_ops(), 6, 5
    # layers (backward order): 2 = (1, K), 1 = (K, K), 0 = (K, 3); dh of 2 and 1 is (n, K)
    sums = [i for i, (name, shape) in enumerate(ops) if name == "sum" and shape in
            ((1,), (K,))]
    dhs = [i for i, (name, shape) in enumerate(ops) if name == "mm" and shape == (n, K)]
    assert len(sums) == 3 and len(dhs) == 2, ops
    assert dhs[0] < sums[0] < dhs[1] < sums[1] < sums[2], ops


def test_the_host_reads_once_after_the_whole_pass_is_queued():
    ops = _backprop_ops()
    reads = [i for i, (name, _) in enumerate(ops) if name == "_local_scalar_dense"]
    last_product = max(i for i, (name, _) in enumerate(ops) if name in ("mm", "addmm"))
    assert len(reads) == 2 and min(reads) > last_product, ops


# -- CUDA's one-pass tanh' (kernels.backprop._fused), on the CPU with stand-ins -------------

def _source_formula(name):
    """FUSED_CUDA[name]'s formula as a Python function of its parameters, in their order:
    the CUDA source's arithmetic (+, -, *, names) reads the same in Python."""
    import re

    src = bp.FUSED_CUDA[name]
    m = re.fullmatch(r"template <typename T> T (\w+)\(((?:T \w+, )*T \w+)\) "
                     r"\{ return ([\w\s*+-]+); \}", src)
    assert m, src
    params = ", ".join(p.removeprefix("T ") for p in m.group(2).split(", "))
    return eval(f"lambda {params}: {m.group(3)}")  # noqa: S307 - the project's own constant


def test_the_cuda_kernels_formulas_are_the_gradient_times_tanh_prime():
    """Called as the kernel calls them, (dh, a = tanh z) and (delta, w, a) with dh the
    outer product delta w, each formula is dh * d tanh(z)/dz, autograd's."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g, dtype=torch.float64).mul_(2).requires_grad_()
    d = torch.randn(8, 1, generator=g, dtype=torch.float64)
    w = torch.randn(1, 5, generator=g, dtype=torch.float64)
    dh = d * w
    (want,) = torch.autograd.grad(torch.tanh(z), z, dh)
    a = torch.tanh(z).detach()
    # float64: the forms round differently where tanh z is near +-1 (dh - dh a a against
    # autograd's dh (1 - a a)), by up to ~4e-12 relative here
    for got in (_source_formula("tanh_grad")(dh, a), _source_formula("tanh_grad_outer")(d, w, a)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)
    assert set(bp.FUSED_CUDA) == {"tanh_grad", "tanh_grad_outer"}


def test_torchs_jiterator_takes_each_kernel_source():
    """torch's own parser of a jiterator source (it runs on the CPU too: only the compile
    and the launch need a GPU) reads each formula's entry function."""
    for name in bp.FUSED_CUDA:
        assert bp._jit(name).kernel_name == f"handgrad_{name}"


class _Jit:
    """Stand-ins for the jitted CUDA functions on the CPU: each formula into one new
    buffer, as jiterator's result is (no temporary beside it); ``fail`` raises as NVRTC
    would. ``calls``: (name, shape of the result, dtype)."""

    def __init__(self, fail=False):
        self.fail, self.calls = fail, []

    def __call__(self, name):
        def run(*t):
            out = torch.empty_like(t[-1])
            self.calls.append((name, tuple(out.shape), out.dtype))
            if self.fail:
                raise RuntimeError("nvrtc: error: a stand-in's compile failure")
            if name == "tanh_grad":
                dh, a = t
                torch.mul(dh, a, out=out)
                return torch.sub(dh, out.mul_(a), out=out)
            d, w, a = t  # (d w) - (d w) a a, without an (N, K) temporary
            torch.mul(a, a, out=out).mul_(-1).add_(1)
            return out.mul_(d).mul_(w)
        return run


def _switch_on(monkeypatch, jit):
    monkeypatch.setattr(bp, "_fuses", lambda t: True)
    monkeypatch.setattr(bp, "_fused_state", {})
    monkeypatch.setattr(bp, "_jit", jit)


@pytest.fixture
def fused(monkeypatch):
    """The one-pass path switched on for the CPU, with a fresh per-dtype state."""
    jit = _Jit()
    _switch_on(monkeypatch, jit)
    return jit


def _grads_match_autograd(sizes, n, dtype=torch.float64, activation="tanh",
                          loss="log_cosh"):
    manual, autograd = _backprop_calls(sizes, n, activation, loss, dtype)
    g = manual()
    J, want = autograd()
    for got, ref in zip([*g.weights, *g.biases, g.input], want):
        torch.testing.assert_close(got, ref)
    torch.testing.assert_close(g.loss, J)


def test_the_one_pass_tanh_prime_gives_autograds_gradients(fused):
    _grads_match_autograd([13, 32, 32, 32, 1], 16)
    # the output layer's (one output: dh never made) and one per hidden layer below it
    assert fused.calls == [("tanh_grad_outer", (16, 32), torch.float64)] + [
        ("tanh_grad", (16, 32), torch.float64)] * 2
    assert bp._fused_state == {("tanh_grad_outer", torch.float64): True,
                               ("tanh_grad", torch.float64): True}
    # several outputs: the output layer's dh is a product, made; the rest one pass
    fused.calls.clear()
    _grads_match_autograd([13, 32, 32, 10], 16, loss="cross_entropy")
    assert fused.calls == [("tanh_grad", (16, 32), torch.float64)]
    # a batch of one sample
    fused.calls.clear()
    _grads_match_autograd([13, 8, 8, 1], 1)
    assert fused.calls == [("tanh_grad_outer", (1, 8), torch.float64),
                           ("tanh_grad", (1, 8), torch.float64)]


@pytest.mark.parametrize("sizes", [[13, 256, 256, 256, 1], [13, 256, 256, 256, 10]],
                         ids=["one-output", "ten-outputs"])
def test_the_one_pass_tanh_prime_holds_no_buffer_more_than_two_passes(fused, monkeypatch,
                                                                      sizes):
    """Its result is a new (N, K) buffer: the kernel lets delta_i go before and dh after
    (and at a one-output layer never makes dh), so the call peaks no higher than with the
    two in-place passes."""
    loss = "log_cosh" if sizes[-1] == 1 else "cross_entropy"
    manual, _ = _backprop_calls(sizes, 512, "tanh", loss, torch.float32)
    one_pass = _peak(manual)
    monkeypatch.setattr(bp, "_fuses", lambda t: t.is_cuda)
    two_passes = _peak(manual)
    assert fused.calls and one_pass <= two_passes + SCALAR_SLACK, (one_pass, two_passes)


def test_the_one_pass_tanh_prime_is_for_tanh_only(fused):
    for activation in ("sigmoid", "relu", "identity"):
        _grads_match_autograd([13, 16, 16, 1], 8, activation=activation)
    assert fused.calls == []


def test_a_one_pass_kernel_that_does_not_compile_warns_once_and_two_passes_serve(
        monkeypatch):
    jit = _Jit(fail=True)
    _switch_on(monkeypatch, jit)
    with pytest.warns(RuntimeWarning) as seen:
        _grads_match_autograd([13, 16, 16, 16, 1], 8)
    assert sorted(str(w.message).split(" did not")[0] for w in seen) == [
        "backprop: the one-pass CUDA kernel tanh_grad",
        "backprop: the one-pass CUDA kernel tanh_grad_outer"]
    assert all("compile for torch.float64 (nvrtc: error: a stand-in's compile failure); "
               "two element-wise passes are used instead" in str(w.message) for w in seen)
    assert len(jit.calls) == 2 and set(bp._fused_state.values()) == {False}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second try
        _grads_match_autograd([13, 16, 16, 16, 1], 8)
    assert len(jit.calls) == 2


def test_a_graph_capture_takes_the_one_pass_kernels_only_once_they_have_compiled(
        fused, monkeypatch):
    """Their first call compiles them (NVRTC): never inside a capture, where the capture's
    warm-up has run them eagerly first; inside torch.compile's trace, never (Dynamo cannot
    trace them, and Inductor fuses the two passes itself)."""
    monkeypatch.setattr(bp, "in_graph", lambda: True)
    monkeypatch.setattr(bp, "_check_finite_result", lambda *a: None)  # no reads in a graph
    _grads_match_autograd([13, 16, 16, 16, 1], 8)
    assert fused.calls == []  # not compiled yet: two passes
    for name in bp.FUSED_CUDA:  # the warm-up compiled them
        bp._fused_state[(name, torch.float64)] = True
    _grads_match_autograd([13, 16, 16, 16, 1], 8)
    assert len(fused.calls) == 3
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    _grads_match_autograd([13, 16, 16, 16, 1], 8)
    assert len(fused.calls) == 3


def test_the_cpu_keeps_the_two_in_place_passes(monkeypatch):
    jit = _Jit()
    monkeypatch.setattr(bp, "_jit", jit)
    _grads_match_autograd([13, 16, 16, 16, 1], 8)
    assert jit.calls == [] and bp._fuses(torch.zeros(1)) is False
