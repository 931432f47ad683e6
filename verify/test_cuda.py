"""The CUDA paths on a real GPU: what every other test checks on the CPU with a stand-in
for ``torch.cuda`` (``verify/test_timing.py``, ``verify/test_graph.py``,
``verify/test_compiled.py``, ``verify/test_least_squares.py``) is checked here against the
device itself. Each test is marked ``cuda`` and skips where no GPU is present (CI);
``python -m handgrad.gpu_check`` runs them first (``pytest verify --device cuda -m cuda``).

No speed target is asserted here: the event clock is checked against the wall clock of
the same work with a generous bound (it must measure the GPU's time, not the launch's);
the speed claims are the acceptance command's table, from benchmarks.
"""

from __future__ import annotations

import time

import pytest
import torch

from handgrad.benchmark import compiled as bc
from handgrad.benchmark import timing as T
from handgrad.kernels import backprop as bp
from handgrad.kernels import jacobian as jm
from handgrad.kernels import least_squares as ls
from handgrad.kernels import mlp
from handgrad.testing.compare import assert_close

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU; none is present"),
]


def _net(L: int, K: int, n: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = mlp.init_mlp([13] + [K] * L + [1], "tanh", generator=g).to("cuda", dtype)
    x = torch.randn(n, 13, generator=g).to("cuda", dtype)
    y = torch.randn(n, 1, generator=g).to("cuda", dtype)
    return net, x, y


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, bp.Gradients):
        return [out.loss, *out.weights, *out.biases, out.input]
    return [out]


def _clone(out) -> list[torch.Tensor]:  # a CUDA graph's outputs are overwritten by a replay
    return [t.detach().clone() for t in _flat(out)]


# -- compiled peers: reduce-overhead (CUDA graphs) returns the eager result -----------------

def _jacfwd_reference(ws, x):
    def f(v):
        h = v
        for w in ws[:-1]:
            h = torch.tanh(h @ w.t())
        return h @ ws[-1].t()

    return torch.vmap(torch.func.jacfwd(f))(x)


@pytest.mark.parametrize("which", ["backprop", "jacobian_forward", "torch_func_jacfwd"])
def test_reduce_overhead_compile_returns_the_eager_result(which):
    """The bench's compiled peers on CUDA (mode reduce-overhead: inductor and CUDA graphs),
    called twice so the second call is a replay, against the eager call."""
    bc.reset()
    if which == "backprop":
        net, x, y = _net(3, 256, 256)
        fn = lambda: bp.backprop(net, x, y, loss="log_cosh")  # noqa: E731
    else:
        g = torch.Generator().manual_seed(1)
        ws = [torch.randn(o, i, generator=g).div_(i ** 0.5).cuda()
              for i, o in ((2, 64), (64, 64), (64, 64), (64, 10))]
        x = torch.randn(32, 2, generator=g).cuda()
        kernel = {"jacobian_forward": jm.jacobian_forward,
                  "torch_func_jacfwd": _jacfwd_reference}[which]
        fn = lambda: kernel(ws, x)  # noqa: E731
    compiled, seconds, mode = bc.compile_call(fn, "cuda", name=which,
                                              fullgraph=which != "torch_func_jacfwd")
    assert mode == "reduce-overhead" and seconds > 0
    for _ in range(2):
        got = _clone(compiled())
        want = _flat(fn())
        assert len(got) == len(want)
        for i, (a, e) in enumerate(zip(got, want)):
            assert_close(a, e, kernel=f"{which} compiled", reference=f"eager {which}",
                         what=f"output {i}", kind="grad")


# -- the event clock measures the GPU's time, with no host synchronisation in the window ---

def _gpu_work(n: int = 4096, reps: int = 12):
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")

    def work():
        out = a
        for _ in range(reps):
            out = torch.mm(b, out).mul_(1.0 / n ** 0.5)
        return out

    return work


def test_the_event_clock_times_the_gpu_not_the_launch():
    work = _gpu_work()
    work()
    torch.cuda.synchronize()
    host = []

    def spied():
        t0 = time.perf_counter()
        out = work()
        host.append(time.perf_counter() - t0)
        return out

    timing = T.timing_for("cuda")
    assert timing.timer == "cuda_event"
    events = sorted(timing.time_once(spied) for _ in range(5))[2]
    wall = sorted(T._perf_counter_time(T.finished(work, torch.cuda)) for _ in range(5))[2]
    # the window holds no synchronisation: the host returned from the calls long before the
    # GPU finished them, yet the events saw the GPU's whole time
    assert max(host) < 0.5 * events, (host, events)
    assert 0.8 * wall <= events <= 1.05 * wall, (events, wall)
    # pytest-benchmark's clock moves by exactly the event time of each wrapped call
    run = timing.wrap(work)
    before = timing.clock()
    run()
    assert 0.8 * wall <= timing.clock() - before <= 1.05 * wall


def test_the_cold_l2_buffer_is_at_least_twice_the_devices_l2():
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    timing = T.timing_for("cuda", cold=True)
    assert timing.cache == "cold"
    assert timing._flush_buffer.device.type == "cuda"
    nbytes = timing._flush_buffer.numel() * timing._flush_buffer.element_size()
    assert l2 > 0 and nbytes >= 2 * l2, (nbytes, l2)


# -- peak memory from CUDA's caching allocator ---------------------------------------------

def test_cuda_peak_counts_what_one_call_allocates():
    keep = torch.empty(2**20, device="cuda")  # allocated before: not part of the peak
    out, peak = T.cuda_peak(lambda: torch.empty(3 * 2**20, device="cuda"))
    assert out.numel() == 3 * 2**20
    assert peak == 12 * 2**20
    assert T.peak_bytes(lambda: torch.empty(2**18, device="cuda"), "cuda") == 2**20
    del keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backprop_needs_no_more_gpu_memory_than_autograd(dtype):
    """The CPU memory contract (verify/test_memory.py) on the GPU's allocator, at a size
    where activations dominate (three hidden layers of K=1024, N=4096)."""
    net, x, y = _net(3, 1024, 4096, dtype)

    def autograd():
        ws = [w.detach().requires_grad_() for w in net.weights]
        bs = [b.detach().requires_grad_() for b in net.biases]
        xx = x.detach().requires_grad_()
        h = xx
        for w, b in zip(ws[:-1], bs[:-1]):
            h = torch.tanh(h @ w.t() + b)
        r = h @ ws[-1].t() + bs[-1] - y
        J = (torch.logaddexp(r, -r) - torch.log(torch.tensor(2.0, device="cuda"))).mean()
        return torch.autograd.grad(J, ws + bs + [xx])

    manual = lambda: bp.backprop(net, x, y, loss="log_cosh")  # noqa: E731
    manual(), autograd()  # allocator warmed
    m, a = T.peak_bytes(manual, "cuda"), T.peak_bytes(autograd, "cuda")
    assert m <= a, f"manual backprop peaks at {m} bytes on the GPU, autograd at {a}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_backprop_takes_the_one_pass_tanh_prime_on_cuda(dtype):
    """``kernels.backprop``'s one-pass tanh' kernels (jiterator) compile for each dtype, run
    (no warning of a fallback: warnings are errors here), and give autograd's gradients;
    its two-pass fallback is tested on the CPU (verify/test_memory.py)."""
    import warnings

    net, x, y = _net(3, 64, 32, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        g = bp.backprop(net, x, y, loss="log_cosh")
    assert bp._fused_state.get(("tanh_grad", dtype)) is True
    assert bp._fused_state.get(("tanh_grad_outer", dtype)) is True
    # the reference in float64 from the same values (a bfloat16 autograd has its own error)
    ws = [w.detach().double().requires_grad_() for w in net.weights]
    bs = [b.detach().double().requires_grad_() for b in net.biases]
    xx = x.detach().double().requires_grad_()
    h = xx
    for w, b in zip(ws[:-1], bs[:-1]):
        h = torch.tanh(h @ w.t() + b)
    r = h @ ws[-1].t() + bs[-1] - y.double()
    J = (torch.logaddexp(r, -r) - torch.log(torch.tensor(2.0, device=r.device,
                                                         dtype=r.dtype))).mean()
    want = torch.autograd.grad(J, ws + bs + [xx])
    for got, ref, what in zip([*g.weights, *g.biases, g.input], want,
                              ["W1", "W2", "W3", "W4", "b1", "b2", "b3", "b4", "x"]):
        assert_close(got, ref, kernel=f"backprop {what} ({dtype}, one-pass tanh')",
                     reference="torch_autograd", kind="grad")


# -- least squares: the Gram path on CUDA ----------------------------------------------------

@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-3)],
                         ids=["float64", "float32"])
def test_auto_takes_the_gram_path_on_cuda_and_matches_the_svd(monkeypatch, dtype, rtol):
    """At the gpu grid's largest size (N=20000, D=2000): ``auto`` picks eigh of the Gram
    matrix on CUDA, and the closed form at k = 10^4 agrees with the SVD path's in float64."""
    g = torch.Generator().manual_seed(0)
    X64 = torch.randn(20_000, 2000, generator=g, dtype=torch.float64)
    y64 = torch.randn(20_000, generator=g, dtype=torch.float64)
    X, y = X64.to("cuda", dtype), y64.to("cuda", dtype)
    assert ls.spectrum(X, y).method == "gram"
    w0 = torch.zeros(2000, device="cuda", dtype=dtype)
    Xc64 = X64.cuda()
    alpha = 1.0 / float(torch.linalg.eigvalsh(Xc64.t() @ Xc64).max())
    got = ls.gd_closed_form(X, y, w0, alpha, 10_000)
    monkeypatch.setattr(ls, "_auto_method", lambda X: "svd")
    want = ls.gd_closed_form(Xc64, y64.cuda(), w0.double(), alpha, 10_000)
    assert got.dtype == dtype and torch.isfinite(got).all()
    err = float((got.double() - want).norm() / want.norm())
    assert err <= rtol, f"Gram-path closed form ({dtype}) is {err:.2e} from the SVD path's"


# -- host reads: backprop waits for the GPU once per call ------------------------------------

def test_backprop_reads_the_host_once_per_call():
    """torch's sync debug mode warns at every operation that makes the host wait for the
    GPU: backprop's finiteness check reads the loss and x's sum in one read, at the end."""
    import warnings

    net, x, y = _net(3, 64, 32)
    bp.backprop(net, x, y, loss="log_cosh")
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # torch also warns that the mode is a prototype
        torch.cuda.set_sync_debug_mode("warn")
        try:
            bp.backprop(net, x, y, loss="log_cosh")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in seen if "called a synchronizing" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in seen]
