"""Every manual kernel compiles whole (``torch.compile(fullgraph=True)``: no graph break)
and returns its eager result; ``kernels.capture`` replays a kernel from a CUDA graph.

Compiled with ``backend="aot_eager"``: Dynamo traces the whole graph (where a graph break
would raise under fullgraph=True) and AOTAutograd lowers it, without inductor's code
generation (seconds per graph on 2 cores); ``verify/test_compiled.py`` compiles backprop
with inductor itself, fullgraph as the bench does.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from bench.specs import jacobian as bj
from handgrad.kernels import backprop as bp
from handgrad.kernels import jacobian as jm
from handgrad.kernels import least_squares as ls
from handgrad.kernels import mlp
from handgrad.kernels.capture import capture
from handgrad.testing.compare import assert_close
from verify.fake_cuda_graph import FakeCuda


def _cases() -> dict:
    g = torch.Generator().manual_seed(0)
    nets = {a: mlp.init_mlp([5, 8, 8, 2], a, generator=g) for a in ("tanh", "sigmoid", "relu")}
    x = torch.randn(4, 5, generator=g)
    y = torch.randn(4, 2, generator=g)
    ws, xj = bj.make_input(3, 6, 4, "cpu")
    _, x1 = bj.make_input(3, 6, 1, "cpu")
    X = torch.randn(30, 6, generator=g, dtype=torch.float64)
    yy = torch.randn(30, generator=g, dtype=torch.float64)
    Xr = X.clone()
    Xr[:, -1] = Xr[:, 0]  # rank-deficient
    w0 = torch.randn(6, generator=g, dtype=torch.float64)
    grads = torch.randn(20, 6, generator=g, dtype=torch.float64)
    alpha = 0.5 / float(torch.linalg.eigvalsh(X.t() @ X).max())
    cases = {f"backprop-{a}-{loss}": (lambda n=n, loss=loss: bp.backprop(n, x, y, loss=loss))
             for a, n in nets.items() for loss in ("squared", "log_cosh")}
    labels = torch.tensor([0, 1, 1, 0])
    probs = torch.softmax(torch.randn(4, 2, generator=g), dim=1)
    cases |= {
        "backprop-single-x": lambda: bp.backprop(nets["tanh"], x[0], y[0]),
        "backprop-cross_entropy-indices": lambda: bp.backprop(nets["relu"], x, labels,
                                                              loss="cross_entropy"),
        "backprop-cross_entropy-probabilities": lambda: bp.backprop(
            nets["sigmoid"], x, probs, loss="cross_entropy"),
        "jacobian_forward": lambda: jm.jacobian_forward(ws, xj),
        "jacobian_reverse": lambda: jm.jacobian_reverse(ws, xj),
        "jacobian_forward-single-x": lambda: jm.jacobian_forward(ws, x1),
        "jacobian_reverse-single-x": lambda: jm.jacobian_reverse(ws, x1),
        "gradient": lambda: ls.gradient(X, w0, yy),
        "loss": lambda: ls.loss(X, w0, yy),
        "spectral_radius": lambda: torch.tensor(ls.spectral_radius(X, alpha)),
        "spectrum": lambda: ls.spectrum(X, yy).lam,
        "minimizer": lambda: ls.minimizer(X, yy),
        "minimizer-rank-deficient": lambda: ls.minimizer(Xr, yy),
        "gd_iterates": lambda: ls.gd_iterates(X, yy, w0, alpha, 5),
        "gd_closed_form": lambda: ls.gd_closed_form(X, yy, w0, alpha, 100),
        "gd_closed_form-many-k": lambda: ls.gd_closed_form(X, yy, w0, alpha, [0, 3, 1000]),
        "gd_closed_form-rank-deficient": lambda: ls.gd_closed_form(Xr, yy, w0, alpha, 100),
        "heavy_ball_iterates": lambda: ls.heavy_ball_iterates(X, yy, w0, alpha, 0.5, 5),
        "heavy_ball_closed_form": lambda: ls.heavy_ball_closed_form(X, yy, w0, alpha, 0.5,
                                                                    100),
        "momentum_form1": lambda: ls.momentum_form1(grads, w0, alpha, 0.5),
        "momentum_form2": lambda: ls.momentum_form2(grads, w0, alpha, 0.5),
    }
    return cases


CASES = _cases()


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, bp.Gradients):
        return [out.loss, *out.weights, *out.biases, out.input]
    return [out]


@pytest.mark.parametrize("case", list(CASES))
def test_every_manual_kernel_compiles_whole_and_returns_its_eager_result(case):
    torch._dynamo.reset()
    fn = CASES[case]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got, want = _flat(compiled()), _flat(fn())
    assert len(got) == len(want)
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, kernel=f"compiled {case}", reference=f"eager {case}",
                     what=f"output {i}", kind="grad")


def test_in_a_graph_the_value_checks_are_not_made_and_the_result_keeps_its_inf():
    """Eagerly, a divergent alpha warns and its overflow raises; inside a graph no value
    can reach the host, so neither happens there and the inf stays in the result
    (docs/kernels.md: compiled and captured kernels)."""
    X = torch.eye(3, dtype=torch.float64) * 10
    y = torch.ones(3, dtype=torch.float64)
    w0 = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(OverflowError), pytest.warns(ls.DivergenceWarning):
        ls.gd_closed_form(X, y, w0, 1.0, 10_000)
    torch._dynamo.reset()
    compiled = torch.compile(lambda: ls.gd_closed_form(X, y, w0, 1.0, 10_000),
                             fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ls.DivergenceWarning)
        out = compiled()
    assert not torch.isfinite(out).all()


# -- kernels.capture: the static-buffer logic on the CPU, the replay on a GPU ---------------



def _net_and_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = mlp.init_mlp([5, 8, 2], "tanh", generator=g)
    return net, torch.randn(4, 5, generator=g), torch.randn(4, 2, generator=g)


def test_capture_warms_up_on_a_side_stream_then_records_once_over_static_copies():
    cuda, seen = FakeCuda(), []

    def kernel(net, x, y, *, loss):
        seen.append((cuda.recording, net, x, loss))
        return bp.backprop(net, x, y, loss=loss)

    net, x, y = _net_and_data()
    step = capture(kernel, net, x, y, loss="log_cosh", warmup=2, cuda=cuda)
    assert cuda.log == [("wait", "side", "current"), ("enter", "side"), ("exit", "side"),
                        ("wait", "current", "side"), "record"]
    assert [rec for rec, *_ in seen] == [False, False, True]  # 2 warm-up calls, 1 recorded
    _, snet, sx, loss = seen[-1]
    assert loss == "log_cosh"
    assert sx is not x and torch.equal(sx, x)  # a static copy, not the caller's tensor
    assert all(s is not w and torch.equal(s, w) for s, w in zip(snet.weights, net.weights))
    assert len(step.static_inputs) == 2 + 2 + 2  # 2 weights, 2 biases, x, y


def test_a_captured_call_copies_new_arguments_into_the_buffers_and_replays():
    cuda = FakeCuda()
    net, x, y = _net_and_data()
    step = capture(bp.backprop, net, x, y, loss="squared", cuda=cuda)
    recorded = step.outputs
    net2, x2, y2 = _net_and_data(seed=1)
    out = step(net2, x2, y2, loss="squared")
    assert cuda.log[-1] == "replay" and out is recorded
    want = [*net2.weights, *net2.biases, x2, y2]
    for static, new in zip(step.static_inputs, want):
        assert torch.equal(static, new)
    assert step() is recorded and cuda.log.count("replay") == 2  # no arguments: replay only


@pytest.mark.parametrize("call, pattern", [
    (lambda s, n, x, y: s(n, x[:2], y[:2], loss="squared"), r"^x: expected shape"),
    (lambda s, n, x, y: s(n, x.double(), y, loss="squared"), r"float64"),
    (lambda s, n, x, y: s(n, x, y, loss="log_cosh"), r"structure and Python values"),
    (lambda s, n, x, y: s(n, x, loss="squared"), r"structure and Python values"),
    (lambda s, n, x, y: s(mlp.init_mlp([5, 8, 8, 2]), x, y, loss="squared"),
     r"6 tensors at .* got 8 tensors"),
], ids=["shape", "dtype", "python-value", "missing-tensor", "other-net"])
def test_a_captured_call_refuses_what_it_did_not_record(call, pattern):
    net, x, y = _net_and_data()
    step = capture(bp.backprop, net, x, y, loss="squared", cuda=FakeCuda())
    with pytest.raises(ValueError, match=pattern):
        call(step, net, x, y)


def test_capture_refuses_cpu_tensors_and_bad_arguments():
    net, x, y = _net_and_data()
    with pytest.raises(ValueError, match=r"^net\.weights\[0\]: a CUDA graph needs CUDA "
                                         r"tensors, got one on cpu$"):
        capture(bp.backprop, net, x, y)
    with pytest.raises(TypeError, match="kernel: expected a callable"):
        capture("backprop", net, x, y, cuda=FakeCuda())
    with pytest.raises(ValueError, match="warmup: expected an int >= 1"):
        capture(bp.backprop, net, x, y, warmup=0, cuda=FakeCuda())
    # a callable that closes over its tensors has no arguments to copy: it only replays
    step = capture(lambda: x * 2, cuda=FakeCuda())
    assert step.static_inputs == [] and torch.equal(step(), x * 2)
    with pytest.raises(ValueError, match="0 tensors at"):
        step(x)


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="CUDA graphs replay on a GPU only; no GPU here")


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ["backprop", "jacobian_forward", "jacobian_reverse"])
def test_a_captured_kernel_replays_its_eager_result_on_new_inputs(kernel):
    if kernel == "backprop":
        net, x, y = (t.to("cuda") for t in _net_and_data())
        net2, x2, y2 = (t.to("cuda") for t in _net_and_data(seed=1))
        args, args2 = (net, x, y), (net2, x2, y2)
        fn = bp.backprop
    else:
        ws, x = bj.make_input(3, 64, 32, "cuda")
        _, x2 = bj.make_input(3, 64, 32, "cuda")
        x2 = x2 * 0.5
        args, args2 = (ws, x), (ws, x2)
        fn = jm.jacobian_forward if kernel == "jacobian_forward" else jm.jacobian_reverse
    step = capture(fn, *args)
    for a in (args, args2):
        got, want = _flat(step(*a)), _flat(fn(*a))
        for i, (u, v) in enumerate(zip(got, want)):
            assert_close(u, v, kernel=f"captured {kernel}", reference=f"eager {kernel}",
                         what=f"output {i}", kind="grad")


def test_a_tensor_is_named_by_the_parameter_it_is_passed_as():
    """A message named a tensor by its place in capture's own (args, kwargs) pair,
    ``argument[0][0].weights[0]``; it is named as the call names it: its parameter where
    the kernel's signature binds the call, ``args[i]`` where it has none to bind."""
    net, x, y = _net_and_data()
    cases = [
        (lambda: capture(bp.backprop, net, x, y, loss="squared"), r"^net\.weights\[0\]:"),
        (lambda: capture(bp.backprop, [1], x, y, loss="squared"), r"^x:"),
        (lambda: capture(lambda *ts, scale: None, 2.0, [x], scale=y), r"^ts\[1\]\[0\]:"),
        (lambda: capture(lambda a: None, {"w": x}), r"^a\['w'\]:"),
        (lambda: capture(lambda: None, x), r"^args\[0\]:"),  # not a call it binds
        (lambda: capture(torch.add, 1.0, other=y), r"^other:"),  # a keyword by its name
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern + " a CUDA graph needs CUDA tensors"):
            call()
    step = capture(bp.backprop, net, x, y, loss="squared", cuda=FakeCuda())
    assert step._paths == ["net.weights[0]", "net.weights[1]", "net.biases[0]",
                           "net.biases[1]", "x", "y"]
    with pytest.raises(ValueError, match=r"^y: expected shape \(4, 2\), torch.float32 on "
                                         r"cpu \(as captured\), got shape \(3, 2\)"):
        step(net, x, y[:3], loss="squared")
    with pytest.raises(ValueError, match=r"6 tensors at \['net.weights\[0\]', .*'x', 'y'\]\), "
                                         r"got 5 tensors at \['net.weights\[0\]', .*'x'\] "):
        step(net, x, loss="squared")
