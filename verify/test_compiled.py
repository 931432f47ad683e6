"""Every compiled callable the bench times returns the eager result
(handgrad/benchmark/compiled.py).

The callables are built by the bench's specs (``bench/specs``: ``backprop.make_calls``,
``jacobian.make_calls``, ``least_squares.gd_calls``) and the one driver that builds every
eager, compiled and captured peer (``handgrad.benchmark.methods.peers``), at a tiny size on
the CPU. They are compiled with
``backend="aot_eager"``: Dynamo and AOTAutograd trace the same graph as the real
compile (where torch.compile of torch.func fails, it fails there), without inductor's code
generation, which takes 2 to 20 s per graph on 2 cores (measured: ~0.3 to 1 s per graph
with aot_eager, 3 to 20 s with inductor). One test compiles the smallest backprop case with
the real default backend (inductor), as the bench does on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from bench.specs import backprop as bb
from bench.specs import families
from bench.specs import jacobian as bj
from bench.specs import least_squares as bl
from handgrad.benchmark import compiled as bc
from handgrad.benchmark import methods as bm
from handgrad.kernels import backprop as bp
from handgrad.reports.record import BenchRecord
from handgrad.testing.compare import assert_close

BACKEND = "aot_eager"
ROOT = Path(__file__).resolve().parent.parent


def _compiled(family) -> dict:
    """A family's compiled methods: name -> the eager callable it compiles."""
    return {name: m.source for name, m in family.methods.items() if m.build == "compiled"}


def _compile(fn, name, backend=BACKEND, fullgraph=False):
    bc.reset()
    out, seconds, mode = bc.compile_call(fn, "cpu", name=name, backend=backend,
                                         fullgraph=fullgraph)
    assert seconds > 0 and mode == (backend or "default")
    return out


def _check_backprop(method: str, backend: str | None, L: int = 3, K: int = 8, n: int = 5):
    calls, _ = bb.make_calls(L, K, n, torch.float32, "cpu")
    eager = _compiled(bb.FAMILY)[method]
    fn = _compile(calls[eager], method, backend,
                  fullgraph=bb.FAMILY.methods[method].role == "kernel")
    got, want = bb.gradients(fn()), bb.gradients(calls[eager]())
    assert len(got) == len(want) == 2 * L + 1
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, kernel=method, reference=eager, what=f"gradient {i}", kind="grad")


@pytest.mark.parametrize("method", sorted(_compiled(bb.FAMILY)))
def test_compiled_backprop_returns_the_eager_gradients(method):
    _check_backprop(method, BACKEND)


def test_the_default_backend_compiles_the_smallest_backprop():
    """Inductor itself (the bench's CPU compile), once: ~10 to 20 s on 2 cores. The manual
    kernel must compile: a skip here (torch's reason) would hide a broken bench, so it
    fails."""
    try:
        _check_backprop("manual_compiled", None, L=3, K=4, n=3)
    except pytest.skip.Exception as exc:
        pytest.fail(f"the bench's CPU compile of the manual kernel failed: {exc}")


def test_the_default_backend_compiles_a_torch_func_jacobian(monkeypatch):
    """Inductor on torch.func.jacfwd (~7 s): its lowering raises warnings of its own that
    pyproject's filter must let through (as errors they skipped every compiled torch.func
    Jacobian of the bench, which aot_eager does not lower and so cannot show)."""
    # lower for real: a hit in inductor's on-disk caches would skip the lowering
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    ws, x = bj.make_input(3, 4, 1, "cpu")
    call = bj.make_call("torch_func_jacfwd", ws, x)
    try:
        got = _compile(call, "torch_func_jacfwd_compiled", backend=None)()
    except pytest.skip.Exception as exc:
        pytest.fail(f"the bench's CPU compile of torch.func.jacfwd failed: {exc}")
    assert_close(got, call(), kernel="torch_func_jacfwd_compiled",
                 reference="torch_func_jacfwd", kind="grad")


@pytest.mark.parametrize("N", [1, 4], ids=["single", "batched"])
@pytest.mark.parametrize("method", sorted(_compiled(bj.FAMILY)))
def test_compiled_jacobian_returns_the_eager_jacobian(method, N):
    ws, x = bj.make_input(3, 6, N, "cpu")
    eager = _compiled(bj.FAMILY)[method]
    call = bj.make_call(eager, ws, x)
    got = _compile(call, bj.method_name(method, N > 1))()
    want = call()
    assert got.shape == ((bj.P, bj.D) if N == 1 else (N, bj.P, bj.D))
    assert_close(got, want, kernel=bj.method_name(method, N > 1),
                 reference=bj.method_name(eager, N > 1), kind="grad")


@pytest.mark.parametrize("loss", ["log_cosh", "cross_entropy"])
def test_gradients_flattens_every_method_alike(loss):
    calls, sizes = bb.make_calls(2, 4, 3, torch.float64, "cpu", loss=loss)
    assert sizes[-1] == (bb.CLASSES if loss == "cross_entropy" else bb.P)
    flat = {m: bb.gradients(calls[m]()) for m in ("manual", "torch_autograd",
                                                  "torch_func_grad")}
    for m, grads in flat.items():
        assert len(grads) == 5, m
        for a, e in zip(grads, flat["torch_autograd"]):
            assert_close(a, e, kernel=m, reference="torch_autograd", kind="grad")


# -- the tables: every compiled method is timed against a compiled reference ---------------

@pytest.mark.parametrize("family", families(),
                         ids=lambda f: f"{f.kernel}-{'-'.join(sorted(f.methods))[:24]}")
def test_compiled_methods_are_full_or_gpu_grid_only(family):
    for p in bm.method_params(family):
        (method,) = p.values
        marks = {m.name for m in p.marks} & {"full", "gpu_grid", "every_grid"}  # grids
        assert marks == ({"full"} if method.endswith("_compiled") else set()), method
        assert (family.methods[method].build == "compiled") == method.endswith("_compiled")


def test_compiled_kernels_meet_compiled_references():
    B, G = bb.FAMILY.methods, bl.GD_FAMILY.methods
    assert B["manual_compiled"].reference == "torch_func_grad_compiled"
    assert B["manual_compiled"].role == "kernel"
    assert B["torch_func_grad_compiled"].role == "reference"
    for family in families():  # compiled or captured meets compiled
        for name, m in family.methods.items():
            if m.reference is not None:
                assert (m.build != "eager") == (
                    family.methods[m.reference].build == "compiled"), name
    assert B["manual_captured"].reference == "torch_func_grad_compiled"
    assert bj.reference_of("manual_reverse_captured", True) == "torch_func_vmap_jacrev_compiled"
    for m, spec in bj.FAMILY.methods.items():  # a compiled or captured peer does the
        if spec.build != "eager":              # work of its eager source
            assert bj.flops_of(m, 3, 30, 8) == bj.flops_of(spec.source, 3, 30, 8), m
    for batched in (False, True):
        pre = "torch_func_vmap_" if batched else "torch_func_"
        assert bj.reference_of("manual_forward_compiled", batched) == pre + "jacfwd_compiled"
        assert bj.reference_of("manual_reverse_compiled", batched) == pre + "jacrev_compiled"
        assert bj.reference_of("torch_func_jacfwd_compiled", batched) == bj.method_name(
            "torch_func_jacfwd_compiled", batched)
    assert bl.gd_reference("closed_form_compiled", 10) == "torch_lstsq_compiled"
    assert bl.gd_reference("torch_lstsq_compiled", 10) is None  # it names itself
    assert G["closed_form_compiled"].role == "kernel"
    assert G["torch_lstsq_compiled"].role == "reference"
    # compiled, the closed form takes the SVD path on every device: the CPU's FLOPs
    assert bl.gd_flops("closed_form_compiled", 50, 30, 6, "cuda") == bl.closed_form_flops(
        1, 30, 6) != bl.gd_flops("closed_form", 50, 30, 6, "cuda")


# -- the bench functions: compile outside the timing, record mode and seconds -------------

def _is_compiled(fn) -> bool:
    return getattr(fn, "_torchdynamo_orig_callable", None) is not None


class _Measure:
    """A stand-in for the bench's ``measure``: calls what it would time, keeps the record."""

    def __call__(self, fn, *, group, reference_fn=None, peak=None, reference_peak=None,
                 **info):
        self.peak, self.reference_peak = peak, reference_peak
        if info.get("compile_mode") == bc.CAPTURE_MODE:  # a replay against a compiled ref,
            assert not _is_compiled(fn)  # or the eager one where torch cannot compile it
            assert _is_compiled(reference_fn) == info["reference"].endswith("_compiled")
        elif info.get("compile_mode") is not None:  # what is timed is compiled, both sides
            assert _is_compiled(fn) and (reference_fn is None or _is_compiled(reference_fn))
        else:
            assert not _is_compiled(fn) and not _is_compiled(reference_fn)
        self.out, self.ref = fn(), None if reference_fn is None else reference_fn()
        self.record = BenchRecord(**{**info, "dtype": str(info["dtype"]).removeprefix(
            "torch."), "threads": 1})
        self.group = group


@pytest.fixture
def aot_eager_bench(monkeypatch):
    """The bench's compile with aot_eager; each compile must follow a reset (Dynamo's
    caches dropped once per benchmark, before the kernel and its reference compile)."""
    events = []

    def reset():
        events.append("reset")
        bc.reset()

    def compile_call(fn, device, *, name, backend=None, fullgraph=False, mode=None):
        MODES[name] = mode
        assert events and events[0] == "reset", "compiled before a reset"
        events.append(name)
        FULLGRAPH[name] = fullgraph
        return bc.compile_call(fn, device, name=name, backend=BACKEND, fullgraph=fullgraph)

    FULLGRAPH.clear()
    MODES.clear()

    monkeypatch.setattr(bm, "compile_call", compile_call)
    monkeypatch.setattr(bm, "reset", reset)
    return events


# what the bench compiled under aot_eager_bench -> whether with fullgraph=True; its mode
FULLGRAPH: dict = {}
MODES: dict = {}


def _time(m, family, method, calls, dtype, **kw):
    """What a benchmark of ``family`` does with its case's ``calls``: the driver builds the
    method's peers, ``m`` (a _Measure) gets them."""
    m(**bm.peers(family, method, calls, "cpu", **kw).measure_kwargs(), group="tiny",
      device="cpu", dtype=dtype, flops=0, bytes=0, shape={})


def _bench_backprop(m, method, L=3, K=4, n=3):
    calls, _ = bb.make_calls(L, K, n, torch.float32, "cpu")
    _time(m, bb.FAMILY, method, calls, torch.float32)


def _bench_jacobian(m, method, N, L=3, K=6):
    ws, x = bj.make_input(L, K, N, "cpu")
    _time(m, bj.FAMILY, method, bj.make_calls(ws, x), torch.float32,
          label=lambda name: bj.method_name(name, N > 1))


def _bench_gd(m, method, k=50, n=30, d=6):
    X, y, w0, alpha = bl.problem("cpu", torch.float64, n, d)
    _time(m, bl.GD_FAMILY, method, bl.gd_calls(X, y, w0, alpha, k, "cpu"), torch.float64,
          reference=bl.gd_reference(method, k))


def test_backprop_bench_records_compile_mode_and_seconds(aot_eager_bench):
    m = _Measure()
    _bench_backprop(m, "manual_compiled")
    assert aot_eager_bench == ["reset", "manual_compiled", "torch_func_grad_compiled"]
    r = m.record
    assert (r.method, r.reference, r.role) == ("manual_compiled", "torch_func_grad_compiled",
                                                 "kernel")
    assert r.compile_mode == BACKEND and r.compile_s > 0
    # the manual kernel (its Gradients) against torch.func.grad (a tuple)
    assert isinstance(m.out, bp.Gradients) and isinstance(m.ref, tuple)
    for a, e in zip(bb.gradients(m.out), bb.gradients(m.ref)):  # interleaved: the reference
        assert_close(a, e, kernel="manual_compiled", reference="torch_func_grad_compiled",
                     kind="grad")
    m = _Measure()
    _bench_backprop(m, "torch_func_grad_compiled")
    assert m.ref is None and m.record.compile_s > 0
    m = _Measure()
    _bench_backprop(m, "manual")
    assert m.record.compile_mode is None and m.record.compile_s is None


@pytest.mark.parametrize("N", [1, 4])
def test_jacobian_bench_records_compile_mode_and_seconds(aot_eager_bench, N):
    m = _Measure()
    _bench_jacobian(m, "manual_reverse_compiled", N)
    assert aot_eager_bench[0] == "reset" and aot_eager_bench.count("reset") == 1
    r = m.record
    pre = "torch_func_vmap_" if N > 1 else "torch_func_"
    assert (r.method, r.reference) == ("manual_reverse_compiled", pre + "jacrev_compiled")
    assert r.compile_mode == BACKEND and r.compile_s > 0
    assert_close(m.out, m.ref, kernel=r.method, reference=r.reference, kind="grad")
    assert dataclasses.replace(r, compile_s=None).compile_s is None


# -- compile_call itself ------------------------------------------------------------------

def test_compile_mode_per_device():
    assert bc.compile_mode("cpu") == "default"
    assert bc.compile_mode("cuda") == bc.compile_mode("cuda:0") == "reduce-overhead"


def test_a_runtime_failure_of_a_whole_graph_skips_with_torchs_reason():
    """fullgraph=True fails on a graph break only: an error at run time (such as a CUDA
    graph that cannot record a host read) is torch's, and skips with its reason."""
    def backend(gm, example_inputs):  # the graph traced whole, then torch fails on it
        raise RuntimeError("cannot record a host read")

    x = torch.ones(3)
    with pytest.raises(pytest.skip.Exception,
                       match="torch.compile of ours fails .*BackendCompilerFailed"):
        bc.compile_call(lambda: x * 2, "cpu", name="ours", backend=backend, fullgraph=True)


def test_a_graph_break_in_one_of_our_kernels_fails_instead_of_skipping():
    t = torch.tensor([1.0, -2.0])

    def breaks():  # a branch on a value: a graph break, an error under fullgraph=True
        return t * 2 if t.sum() > 0 else t * 3

    with pytest.raises(Exception) as info:
        bc.compile_call(breaks, "cpu", name="ours", backend=BACKEND, fullgraph=True)
    assert not isinstance(info.value, pytest.skip.Exception)
    out, _, _ = bc.compile_call(breaks, "cpu", name="theirs", backend=BACKEND)  # torch's
    assert torch.equal(out(), breaks())


def test_the_bench_compiles_our_kernels_whole_and_torchs_as_torch_lets_it(aot_eager_bench):
    _bench_backprop(_Measure(), "manual_compiled")
    _bench_jacobian(_Measure(), "manual_forward_compiled", 4)
    _bench_gd(_Measure(), "closed_form_compiled")
    assert FULLGRAPH == {
        "manual_compiled": True, "torch_func_grad_compiled": False,
        "manual_forward_compiled": True, "torch_func_vmap_jacfwd_compiled": False,
        "gd_closed_form_compiled": True, "gd_torch_lstsq_compiled": False,
    }
    # torch.linalg reads its status on the host: no CUDA graph ("reduce-overhead") there
    assert MODES["gd_closed_form_compiled"] == MODES["gd_torch_lstsq_compiled"] == "default"
    assert MODES["manual_compiled"] is None  # the device's mode


def test_a_failing_compile_skips_with_torchs_reason():
    def broken():
        raise ValueError("boom\nsecond line")

    with pytest.raises(pytest.skip.Exception) as info:
        bc.compile_call(broken, "cpu", name="broken", backend=BACKEND)
    msg = str(info.value)
    assert "torch.compile of broken" in msg and "ValueError: boom" in msg
    assert torch.__version__ in msg and "second line" not in msg


def test_the_first_calls_are_made_before_it_returns():
    calls = []

    def fn():
        calls.append(1)
        return torch.ones(2) * 2

    compiled, seconds, _ = bc.compile_call(fn, "cpu", name="fn", backend=BACKEND)
    made = len(calls)
    assert made == bc.WARMUP_CALLS["default"] == 1 and seconds > 0
    assert torch.equal(compiled(), torch.full((2,), 2.0))


def test_reset_drops_the_compiled_code():
    """Between benchmarks: the bench's callables come from the same source lines for every
    shape, so without reset Dynamo's per-code cache would fill and fall back to eager."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.ones(3)
    compiled, _, _ = bc.compile_call(lambda: x * 2, "cpu", name="x2", backend=counting)
    compiled()
    assert len(graphs) == 1
    bc.reset()
    assert torch.equal(compiled(), x * 2) and len(graphs) == 2


@pytest.mark.parametrize("family", families(),
                         ids=lambda f: f"{f.kernel}-{'-'.join(sorted(f.methods))[:24]}")
def test_a_compiled_method_compiles_the_eager_method_of_its_name(family):
    """X_compiled is torch.compile of X (X_captured a replay of X): the
    compiled-against-eager checks here compare whatever a spec's ``source`` names, so a
    wrong name there would compare the wrong call."""
    for method, m in family.methods.items():
        if m.build != "eager":
            assert m.source == method.removesuffix(f"_{m.build}"), method


@pytest.mark.parametrize("method", sorted(_compiled(bl.GD_FAMILY)))
def test_compiled_least_squares_returns_the_eager_result(method):
    X, y, w0, alpha = bl.problem("cpu", torch.float64, 30, 6)
    calls = bl.gd_calls(X, y, w0, alpha, 50, "cpu")
    eager = _compiled(bl.GD_FAMILY)[method]
    got, want = _compile(calls[eager], method)(), calls[eager]()
    assert got.shape == want.shape
    assert_close(got, want, kernel=method, reference=eager, kind="forward")


def test_least_squares_bench_records_compile_mode_and_seconds(aot_eager_bench):
    m = _Measure()
    _bench_gd(m, "closed_form_compiled")
    assert aot_eager_bench == ["reset", "gd_closed_form_compiled", "gd_torch_lstsq_compiled"]
    r = m.record
    assert (r.method, r.reference, r.role) == ("gd_closed_form_compiled",
                                                 "gd_torch_lstsq_compiled", "kernel")
    assert r.compile_mode == BACKEND and r.compile_s > 0
    # the closed form at k = 50 and lstsq's minimiser: both solve the same problem
    assert m.out.shape == (6,) and m.ref.shape == (6, 1)
    m = _Measure()
    _bench_gd(m, "closed_form")
    assert m.record.compile_mode is None and m.record.compile_s is None


# -- captured methods (CUDA graphs; kernels.capture): the bench's plumbing on the CPU -------

@pytest.fixture
def fake_capture(monkeypatch, aot_eager_bench):
    """capture_call as on a GPU, with the eager callable standing in for its replay."""
    captured = []

    def capture_call(fn, device, *, name):
        captured.append(name)
        return fn, 0.25, 12345

    monkeypatch.setattr(bm, "capture_call", capture_call)
    return captured


def test_backprop_bench_times_the_replay_against_the_compiled_reference(fake_capture,
                                                                       monkeypatch):
    monkeypatch.setattr(bm, "peak_while", lambda make, device: (make(), 777))
    m = _Measure()
    _bench_backprop(m, "manual_captured")
    assert fake_capture == ["manual_captured"]
    r = m.record
    assert (r.method, r.reference, r.role) == ("manual_captured", "torch_func_grad_compiled",
                                                 "kernel")
    assert (r.compile_mode, r.compile_s, m.peak) == (bc.CAPTURE_MODE, 0.25, 12345)
    assert m.reference_peak == 777  # the reference's compile-and-record peak, alike
    for a, e in zip(bb.gradients(m.out), bb.gradients(m.ref)):
        assert_close(a, e, kernel="manual_captured", reference="torch_func_grad_compiled",
                     kind="grad")


@pytest.mark.parametrize("compiles", [True, False], ids=["compiled-ref", "eager-fallback"])
def test_jacobian_bench_times_the_replay_against_the_compiled_or_eager_reference(
        fake_capture, monkeypatch, compiles):
    if not compiles:  # torch 2.11 cannot compile vmap(jacfwd): the eager reference stands in
        def refuse(fn, device, *, name, **kw):
            pytest.skip(f"torch.compile of {name} fails")
        monkeypatch.setattr(bm, "compile_call", refuse)
    m = _Measure()
    _bench_jacobian(m, "manual_forward_captured", 4)
    r = m.record
    want = "torch_func_vmap_jacfwd_compiled" if compiles else "torch_func_vmap_jacfwd"
    assert (r.method, r.reference, r.compile_mode, m.peak) == (
        "manual_forward_captured", want, bc.CAPTURE_MODE, 12345)
    assert_close(m.out, m.ref, kernel=r.method, reference=r.reference, kind="grad")


def test_capture_call_skips_off_cuda():
    with pytest.raises(pytest.skip.Exception, match="CUDA graphs replay on a GPU only"):
        bc.capture_call(lambda: None, "cpu", name="manual_captured")


def test_capture_call_records_the_captures_peak_and_seconds():
    from verify.fake_cuda_graph import FakeCuda as GraphCuda
    from verify.fake_cuda_timing import FakeCuda as TimingCuda

    class Cuda(GraphCuda, TimingCuda):  # kernels.capture's graph API, the allocator's
        def __init__(self):              # counters and synchronize of handgrad.benchmark.timing's
            TimingCuda.__init__(self)
            GraphCuda.__init__(self)
            self.allocated = 1000

    cuda = Cuda()

    def kernel():  # each call allocates 300 bytes at its peak; recording keeps 200 (pool)
        cuda.peak = max(cuda.peak, cuda.allocated + 300)
        if cuda.recording:
            cuda.allocated += 200
        return "out"

    # capture_call refuses a non-CUDA device before anything else; the stand-in is CUDA
    replay, seconds, peak = bc.capture_call(kernel, "cuda", name="k", cuda=cuda)
    assert peak == 300 and seconds > 0
    assert cuda.log[0] == "synchronize" and "record" in cuda.log
    assert replay() == "out" and cuda.log[-1] == "replay"
    # the compiled reference's peak is taken the same way: around its compile and recording
    cuda.peak = 10**9  # an earlier peak, reset first

    def compile_and_record():
        cuda.peak = max(cuda.peak, cuda.allocated + 500)
        return "compiled"

    assert bc.peak_while(compile_and_record, "cuda", cuda=cuda) == ("compiled", 500)
    assert bc.peak_while(lambda: "x", "cpu") == ("x", None)


@contextlib.contextmanager
def _pyproject_filters(config: pytest.Config):
    """pyproject's warning filters alone, as a run without -W applies them: a -W on the
    command line, which pytest applies after them (``-W error``), does not decide what
    the tests below check, which is pyproject's list. pytest's own parser of its lines."""
    from _pytest.config import parse_warning_filter

    with warnings.catch_warnings():
        warnings.resetwarnings()
        for line in config.getini("filterwarnings"):
            warnings.filterwarnings(*parse_warning_filter(line, escape=False))
        yield


def test_pyproject_makes_warnings_errors(pytestconfig):  # what the two below rely on
    with _pyproject_filters(pytestconfig), pytest.raises(UserWarning):
        warnings.warn("any other warning", UserWarning, stacklevel=1)


def test_inductors_tf32_advice_is_not_an_error(pytestconfig):
    """pyproject turns warnings into errors; inductor's advice to use TF32 (raised on any
    GPU with tensor cores) made every compile on the H200 fail until it was let through.
    float32 stays exact: the advice is not taken."""
    with _pyproject_filters(pytestconfig):
        try:
            warnings.warn("TensorFloat32 tensor cores for float32 matrix multiplication "
                          "available but not enabled. Consider setting `torch.set_float32_"
                          "matmul_precision('high')` for better performance.", UserWarning,
                          stacklevel=1)
        except UserWarning as exc:
            pytest.fail(f"raised as an error: {exc}")
    assert torch.get_float32_matmul_precision() == "highest"


def test_inductors_empty_cuda_graph_warning_is_not_an_error(pytestconfig):
    """torch 2.11's reduce-overhead records an empty CUDA graph for a partition without
    compute and warns (pytorch/pytorch#149653): on the H200 that warning, as an error,
    made every CUDA compile skip. The compiled results are checked against eager on the
    GPU (verify/test_cuda.py)."""
    with _pyproject_filters(pytestconfig):
        try:
            warnings.warn("The CUDA Graph is empty. This usually means that the graph was "
                          "attempted to be captured on wrong device or stream.", UserWarning,
                          stacklevel=1)
        except UserWarning as exc:
            pytest.fail(f"raised as an error: {exc}")


# torch's own warnings that compile_call silences while they can arise (-W error): each by
# its message and category only
SCRIPT_METHOD = ("`torch.jit.script_method` is deprecated. Please switch to `torch.compile` "
                 "or `torch.export`.")
SCRIPT_METHOD_314 = ("`torch.jit.script_method` is not supported in Python 3.14+ and may "
                     "break. Please switch to `torch.compile` or `torch.export`.")
PRIMS_CHECK = ("`torch._prims_common.check` is deprecated and will be removed in the "
               "future. Please use `torch._check*` functions instead.")
OTHERS = [("handgrad: some other deprecation", DeprecationWarning),
          ("`torch.jit.script_method` is deprecated (but a UserWarning)", UserWarning),
          ("`torch._prims_common.check` is deprecated (but a DeprecationWarning)",
           DeprecationWarning)]


def _warns(messages):
    def call():
        for message, category in messages:
            warnings.warn(message, category, stacklevel=2)
    return call


def test_load_inductor_silences_only_torchs_script_method_warning(monkeypatch):
    imported = []

    def import_module(name):  # stands in for the import: torch's warnings and others
        imported.append(name)
        _warns([(SCRIPT_METHOD, DeprecationWarning), (SCRIPT_METHOD_314, DeprecationWarning),
                (PRIMS_CHECK, FutureWarning), *OTHERS])()

    monkeypatch.setattr(bc.importlib, "import_module", import_module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bc.load_inductor()
        warnings.warn(SCRIPT_METHOD, DeprecationWarning, stacklevel=1)  # the filter is gone
    assert imported == ["torch._inductor.compile_fx"]
    assert [(w.category, str(w.message)) for w in caught] == [
        (FutureWarning, PRIMS_CHECK), *((c, m) for m, c in OTHERS),
        (DeprecationWarning, SCRIPT_METHOD)]


@pytest.mark.parametrize("backend", [None, "inductor", "aot_eager"])
def test_compile_call_silences_only_torchs_compile_warnings(monkeypatch, backend):
    """The first calls (the compile) let every warning through but inductor's deprecated
    prims check; inductor's import is loaded first (through load_inductor) for inductor
    only."""
    loaded = []
    monkeypatch.setattr(bc, "load_inductor", lambda: loaded.append(True))
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bc.compile_call(_warns([(PRIMS_CHECK, FutureWarning),
                                (SCRIPT_METHOD, DeprecationWarning), *OTHERS]),
                        "cpu", name="k", backend=backend)
        warnings.warn(PRIMS_CHECK, FutureWarning, stacklevel=1)  # the filter is gone
    assert loaded == ([True] if backend != "aot_eager" else [])
    assert [(w.category, str(w.message)) for w in caught] == [
        (DeprecationWarning, SCRIPT_METHOD), *((c, m) for m, c in OTHERS),
        (FutureWarning, PRIMS_CHECK)]


def test_the_first_inductor_compile_passes_under_w_error():
    """The command line's ``-W error`` (after pyproject's filters): the first inductor
    compile of a fresh process, which imports inductor (torch.utils.mkldnn's script
    methods warn), returns the compiled result instead of skipping (before: skipped with
    BackendCompilerFailed: DeprecationWarning: `torch.jit.script_method` is deprecated)."""
    script = (
        "import torch\n"
        "from handgrad.benchmark import compiled as bc\n"
        "x = torch.arange(3.0)\n"
        "fn, _, mode = bc.compile_call(lambda: x * 2, 'cpu', name='double')\n"
        "assert mode == 'default' and torch.equal(fn(), x * 2)\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
