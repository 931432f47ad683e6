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

from bench import test_jacobian as bj
from kernels import backprop as bp
from kernels import jacobian as jm
from kernels import least_squares as ls
from kernels import mlp
from verify.compare import assert_close


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
    cases |= {
        "backprop-single-x": lambda: bp.backprop(nets["tanh"], x[0], y[0]),
        "jacobian_forward": lambda: jm.jacobian_forward(ws, xj),
        "jacobian_reverse": lambda: jm.jacobian_reverse(ws, xj),
        "jacobian_forward-single-x": lambda: jm.jacobian_forward(ws, x1),
        "jacobian_reverse-single-x": lambda: jm.jacobian_reverse(ws, x1),
        "gradient": lambda: ls.gradient(X, w0, yy),
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
    (README: compiled and captured kernels)."""
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
