"""The Taylor remainder test, a step-free second opinion on every gradient kernel: the
remainder |f(x + h v) - f(x) - h <g, v>| falls as h^2 for the kernel's gradient (order 2)
and as h for each planted bug (order 1). f is always the reference written with plain
torch ops; g is the kernel's."""

from __future__ import annotations

import pytest
import torch

from handgrad.kernels import backprop as bp
from handgrad.kernels import finite_diff
from handgrad.kernels import jacobian as jm
from handgrad.kernels import least_squares as ls
from handgrad.testing.references import as_list, course_weights, deep_net, torch_loss
from verify.backprop_cases import CASES, Case, make_problem, problem
from verify.planted import BUG_IDS, BUGS, Bug, planted_backprop

ORDER_TOL = 0.1
# the Taylor test needs f twice differentiable at x. relu is not at z = 0, and the relu
# case has zero biases: a sample whose hidden units are all off feeds the next layer z = 0
# exactly, where the one-sided derivative along v differs from relu'(0) := 0, and the
# remainder is rightly order 1. The smooth cases are tested here; relu is verified by the
# other references.
SMOOTH = [c for c in CASES if c.activation != "relu"]


def backprop_taylor(net, x, y, grads: bp.Gradients, loss: str, reduction: str, generator):
    n = net.depth

    def f(p):
        return torch_loss(p[:n], p[n:2 * n], p[-1], y, activation=net.activation, loss=loss,
                          reduction=reduction)

    return finite_diff.taylor_test(f, [*grads.weights, *grads.biases, grads.input],
                                   [*net.weights, *net.biases, x], generator=generator)


@pytest.mark.parametrize("case", SMOOTH, ids=[c.name for c in SMOOTH])
def test_backprop_taylor_order_two(case: Case, generator) -> None:
    net, x, y = make_problem(case, torch.float64, "cpu", seed=5)
    grads = bp.backprop(net, x, y, loss=case.loss, reduction=case.reduction)
    t = backprop_taylor(net, x, y, grads, case.loss, case.reduction, generator)
    assert t.order == pytest.approx(2.0, abs=ORDER_TOL), t.to_frame().to_string()


@pytest.mark.parametrize("bug", BUGS, ids=BUG_IDS)
def test_each_planted_bug_has_taylor_order_one(bug: Bug, generator) -> None:
    net, x, y = problem()
    grads = planted_backprop(bug).backprop(net, x, y)
    t = backprop_taylor(net, x, y, grads, "squared", "mean", generator)
    assert t.order == pytest.approx(1.0, abs=ORDER_TOL), t.to_frame().to_string()
    assert not t.consistent


@pytest.mark.parametrize("kernel", ["jacobian_forward", "jacobian_reverse"])
@pytest.mark.parametrize("bug", [None, "swapped_columns"])
def test_jacobian_taylor_order(kernel: str, bug, generator) -> None:
    # f(x) = sum_n u_n . net(x_n), a scalar; its gradient is u_n^T J_n row by row
    ws, bs = course_weights(3, D=2, K=30, P=10, biases=True, seed=7)
    x = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    u = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    net = deep_net(as_list(ws), as_list(bs, "b"))
    J = getattr(jm, kernel)(ws, x, biases=bs)
    if bug:
        J = J.flip(-1)
    t = finite_diff.taylor_test(lambda z: (u * net(z)).sum(), torch.einsum("np,npd->nd", u, J),
                                x, generator=generator)
    assert t.order == pytest.approx(1.0 if bug else 2.0, abs=ORDER_TOL), t.to_frame().to_string()


@pytest.mark.parametrize("bug", [None, "missing_transpose_sign"])
def test_least_squares_gradient_taylor_order(bug, generator) -> None:
    X = torch.randn(20, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(20, generator=generator, dtype=torch.float64)
    w = torch.randn(4, generator=generator, dtype=torch.float64)
    g = ls.gradient(X, w, y)
    if bug:
        g = X.t() @ (y - X @ w)  # the residual the wrong way round
    t = finite_diff.taylor_test(lambda v: 0.5 * ((X @ v - y) ** 2).sum(), g, w,
                                generator=generator)
    assert t.order == pytest.approx(1.0 if bug else 2.0, abs=ORDER_TOL), t.to_frame().to_string()
