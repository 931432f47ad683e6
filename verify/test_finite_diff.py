"""The hand-written central differences against analytic derivatives and autograd."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from handgrad.kernels import finite_diff
from handgrad.testing.compare import assert_close, record_sweep, unrecorded
from handgrad.testing.tolerances import Tol, tol_for

FD_TOL = tol_for(torch.float64, "finite_diff")


def test_gradient_of_known_function(device: str) -> None:
    x = torch.linspace(-2, 3, 11, dtype=torch.float64, device=device)
    # f = sum x^2 sin x  ->  f' = 2x sin x + x^2 cos x
    expected = 2 * x * torch.sin(x) + x**2 * torch.cos(x)
    got = finite_diff.gradient(lambda t: (t**2 * torch.sin(t)).sum(), x)
    assert_close(got, expected, kernel="finite_diff.gradient", reference="analytic", tol=FD_TOL)


def test_jacobian_of_known_map_and_shape(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64).to(device)
    x = torch.randn(3, generator=g, dtype=torch.float64).to(device)
    # f = A tanh(x)  ->  J = A diag(1 - tanh^2 x)
    expected = a * (1 - torch.tanh(x) ** 2)
    got = finite_diff.jacobian(lambda t: a @ torch.tanh(t), x)
    assert got.shape == (4, 3)
    assert_close(got, expected, kernel="finite_diff.jacobian", reference="analytic", tol=FD_TOL)


def test_jacobian_matrix_input_against_autograd() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)

    def f(t):
        return torch.stack([torch.sin(t).sum(0), (t**3).prod(0)])  # (2, 3)

    expected = torch.autograd.functional.jacobian(f, x)  # (2, 3, 2, 3)
    got = finite_diff.jacobian(f, x)
    assert got.shape == (2, 3, 2, 3)
    assert_close(got, expected, kernel="finite_diff.jacobian",
                 reference="autograd_jacobian", tol=FD_TOL)


@pytest.mark.parametrize("f", [lambda t: t[:, 0], lambda t: t.t(), lambda t: t.reshape(-1),
                               lambda t: t.mul_(2)],
                         ids=["column view", "transpose view", "reshape view", "in place"])
def test_jacobian_of_an_f_returning_a_view_of_or_writing_into_its_argument(f) -> None:
    # the perturbed point is written again after f returns: a view of it would have read
    # 0 (f(x + h) overwritten by x - h), an f writing into it would move the point
    x = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)
    exact = torch.func.jacrev(lambda t: f(t.clone()).clone())(x)
    assert_close(finite_diff.jacobian(f, x), exact, kernel="finite_diff.jacobian",
                 reference="torch_func_jacrev", tol=Tol(rtol=0.0, atol=1e-9))
    assert_close(finite_diff.gradient(lambda t: t[0, 1], x), exact.new_tensor(
        [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), kernel="finite_diff.gradient",
        reference="by hand", tol=Tol(rtol=0.0, atol=1e-9))


def test_default_eps_is_cube_root_of_machine_eps() -> None:
    assert finite_diff.default_eps(torch.float64) == pytest.approx((2.0**-52) ** (1 / 3))
    assert finite_diff.default_eps(torch.float32) == pytest.approx((2.0**-23) ** (1 / 3))
    assert finite_diff.default_eps(torch.float32) > finite_diff.default_eps(torch.float64)


def test_step_sweep_shows_truncation_rounding_v_curve() -> None:
    x = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    exact = torch.diag(torch.cos(x))
    sweep = finite_diff.step_sweep(torch.sin, x, exact)
    err = dict(zip(sweep.eps, sweep.error))
    # truncation dominates at large steps (error ~ h^2/6), rounding at tiny ones (~eps/h)
    assert err[1e-1] > 1e3 * err[sweep.best_eps]
    assert err[1e-13] > 1e3 * err[sweep.best_eps]
    assert 1e-7 <= sweep.best_eps <= 1e-3
    # truncation error of a central difference shrinks as h^2: 100x per decade
    assert err[1e-1] / err[1e-2] == pytest.approx(100, rel=0.05)
    frame = sweep.to_frame()
    assert list(frame.columns) == ["eps", "max_abs_error", "truncation_branch"]
    assert len(frame) == 13


def test_default_step_is_cube_root_eps_times_max_one_abs_x() -> None:
    # zero, small, unit and large coordinates, both signs
    x = torch.tensor([0.0, 1e-3, -0.5, 1.0, -3.0, 1e6, -1e8], dtype=torch.float64)
    points = []

    def f(t):
        points.append(t.clone())
        return t.sum()

    finite_diff.jacobian(f, x)
    # calls 2i and 2i + 1 evaluate f at x + h_i e_i and x - h_i e_i: read the steps back
    plus, minus = torch.stack(points[0::2]), torch.stack(points[1::2])
    taken = (plus - minus).diagonal() / 2
    # float64 eps = 2^-52; eps^(1/3) = 6.06e-6, scaled by max(1, |x_i|) per coordinate
    expected = (2.0**-52) ** (1 / 3) * torch.tensor(
        [1.0, 1.0, 1.0, 1.0, 3.0, 1e6, 1e8], dtype=torch.float64)
    # x_i +- h_i is rounded to float64: at most ulp(x_i) / h_i ~ 4e-11 off, relatively
    assert_close(taken, expected, kernel="finite_diff default step",
                 reference="eps^(1/3) * max(1, |x_i|)", tol=Tol(rtol=1e-9, atol=0.0))
    # the other coordinates are left where they were
    off = ~torch.eye(len(x), dtype=torch.bool)
    assert torch.equal(plus[off], x.expand(len(x), -1)[off])


LARGE = [
    # element-wise maps, so each output sees one coordinate only; coordinates of magnitude
    # 1e6 .. 1e8. With an unscaled step of eps^(1/3) = 6e-6 the two values f(x +- h) agree in
    # all but their last few digits (f(1e8) = 1e24 for the cube) and their difference is
    # rounding noise: errors of 1e-4 .. 1 relative; scaled, about 1e-10
    ("cube", lambda t: t**3, lambda x: 3 * x**2, [1e6, -3e7, 1e8]),
    ("x_log_x", lambda t: t * torch.log(t), lambda x: torch.log(x) + 1, [1e6, 3e7, 1e8]),
    ("slow_sine", lambda t: 1e7 * torch.sin(t * 1e-7), lambda x: torch.cos(x * 1e-7),
     [1e6, -3e7, 1e8]),
]


@pytest.mark.parametrize("f,df,x", [c[1:] for c in LARGE], ids=[c[0] for c in LARGE])
def test_jacobian_at_large_coordinates(f, df, x) -> None:
    x = torch.tensor(x, dtype=torch.float64)
    got = finite_diff.jacobian(f, x)
    assert_close(got, torch.diag(df(x)), kernel="finite_diff.jacobian", reference="analytic",
                 what="|x| 1e6 .. 1e8", tol=FD_TOL)
    # and the gradient of the sum, one coordinate at a time (the other coordinates' terms
    # would swamp a sum: 1e24 next to 1e18)
    for i in range(len(x)):
        g = finite_diff.gradient(lambda t, i=i: f(t)[i], x)
        assert_close(g[i], df(x)[i], kernel="finite_diff.gradient", reference="analytic",
                     what=f"x_{i} = {float(x[i]):g}", tol=FD_TOL)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"f: gradient needs a scalar function.*shape \(3,\)"):
        finite_diff.gradient(torch.sin, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"eps: expected a positive finite step, got 0.0"):
        finite_diff.gradient(lambda t: t.sum(), torch.ones(3), eps=0.0)
    with pytest.raises(TypeError, match=r"x: expected a floating-point tensor"):
        finite_diff.gradient(lambda t: t.sum(), torch.ones(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"f: f must return a torch.Tensor, got float"):
        finite_diff.jacobian(lambda t: 1.0, torch.ones(3))
    with pytest.raises(ValueError, match=r"exact: expected shape \(3, 3\)"):
        finite_diff.step_sweep(torch.sin, torch.ones(3, dtype=torch.float64), torch.ones(3))


# --- step sweep: fitted order and predicted optimal step ------------------------------------


def test_step_sweep_fits_order_two_and_predicts_the_optimal_step() -> None:
    x = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    sweep = finite_diff.step_sweep(torch.sin, x, torch.diag(torch.cos(x)))
    assert sweep.order == pytest.approx(2.0, abs=0.02)
    # by hand: entry i has truncation error (h s_i)^2 |cos x_i| / 6 with s_i = max(1, |x_i|),
    # largest at x = 2.1: a = 2.1^2 |cos 2.1| / 6; rounding u max|sin x| / h, u = 2^-53;
    # the minimum of a h^2 + u |f| / h is at h* = (u |f| / (2 a))^(1/3), about 5.2e-6
    a = 2.1**2 * abs(math.cos(2.1)) / 6
    expected = (2.0**-53 * abs(math.sin(-1.3)) / (2 * a)) ** (1 / 3)
    assert sweep.predicted_eps == pytest.approx(expected, rel=0.02)
    assert sweep.dtype == "float64" and sweep.value_scale == pytest.approx(abs(math.sin(-1.3)))
    # the sweep only samples decades: the measured best lies within one of the prediction
    assert abs(math.log10(sweep.predicted_eps / sweep.best_eps)) <= 1
    frame = sweep.to_frame()
    assert list(frame["truncation_branch"]) == [True] * 4 + [False] * 9
    record_sweep(sweep, kernel="finite_diff.jacobian", reference="analytic", what="sin")


@pytest.mark.parametrize("xv", [100.0, 1e4])
def test_predicted_eps_is_in_the_step_taken_at_a_large_x(xv) -> None:
    """The step taken is eps * max(1, |x|): f's rounding over it is u |f| / (eps |x|), so
    the prediction falls with |x| as the measured optimum does. Fitted in eps with the
    rounding of h = eps it was 9x (x = 100) and 33x (x = 1e4) above the measured optimum
    (the median of the 5 best of 97 steps); now within 2x."""
    x = torch.tensor([xv], dtype=torch.float64)
    exact = (torch.cos(x) * torch.exp(torch.sin(x))).reshape(1, 1)
    eps = [float(10 ** (-1 - 12 * i / 96)) for i in range(97)]
    sweep = finite_diff.step_sweep(lambda t: torch.exp(torch.sin(t)), x, exact, eps_values=eps)
    best5 = sorted(range(len(eps)), key=sweep.error.__getitem__)[:5]
    measured = 10 ** statistics.median(math.log10(eps[i]) for i in best5)
    assert 0.5 <= measured / sweep.predicted_eps <= 2


def test_step_sweep_order_is_fitted_not_assumed() -> None:
    # at x = 0 the central difference of t^5 is off by exactly h^4 (its h^2 term is
    # 10 x^3 h^2 = 0), and f(+-h) is so small that rounding never shows: order 4
    x = torch.zeros(2, dtype=torch.float64)
    sweep = finite_diff.step_sweep(lambda t: t**5, x, torch.zeros(2, 2, dtype=torch.float64),
                                   eps_values=[0.1, 0.05, 0.02, 0.01, 1e-3])
    assert sweep.order == pytest.approx(4.0, abs=0.02)
    # f(x) = 0: there is no rounding error to balance, hence no predicted optimum
    assert math.isnan(sweep.predicted_eps)
    # no truncation branch at all (too few steps above the best): nan, not a made-up 2
    flat = finite_diff.step_sweep(lambda t: 3 * t, x, 3 * torch.eye(2, dtype=torch.float64),
                                  eps_values=[1e-1, 1e-2])
    assert math.isnan(flat.order) and math.isnan(flat.predicted_eps)
    # the verify report keeps them as null (JSON has no NaN)
    with unrecorded():
        record = record_sweep(flat, kernel="finite_diff.jacobian", reference="analytic")
    assert record.order is None and record.predicted_eps is None and record.best_eps == 1e-2


# --- the Taylor test ---------------------------------------------------------------------------


def _taylor_f(t):
    return (t**2 * torch.sin(t)).sum()


def _taylor_grad(x):
    return 2 * x * torch.sin(x) + x**2 * torch.cos(x)


def test_taylor_test_order_two_for_the_gradient_and_one_for_a_wrong_one() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.linspace(-2, 3, 7, dtype=torch.float64)
    right = finite_diff.taylor_test(_taylor_f, _taylor_grad(x), x, generator=g)
    assert right.order == pytest.approx(2.0, abs=0.05) and right.consistent
    wrong = _taylor_grad(x)
    wrong[3] *= 1.01  # one coordinate 1% off
    bad = finite_diff.taylor_test(_taylor_f, wrong, x, generator=g)
    assert bad.order == pytest.approx(1.0, abs=0.1) and not bad.consistent
    frame = right.to_frame()
    assert list(frame.columns) == ["h", "remainder", "local_order", "noise", "fitted"]
    assert len(frame) == 21 and frame["fitted"].sum() == 5
    # each halving of h quarters the remainder of the right gradient
    assert frame["local_order"].iloc[-5:].between(1.95, 2.05).all()
    assert list(frame["h"]) == pytest.approx([right.h[0] / 2**k for k in range(21)])


def test_taylor_test_on_several_tensors_with_a_given_direction() -> None:
    a = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    b = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def f(p):  # f(A, b) = sum tanh(A 1 + b)^2 ... a function of two tensors
        return (torch.tanh(p[0].sum(1) + p[1]) ** 2).sum()

    s = torch.tanh(a.sum(1) + b)
    d = 2 * s * (1 - s**2)
    grads = [d[:, None].expand(2, 2).clone(), d]
    v = [torch.ones(2, 2, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)]
    assert finite_diff.taylor_test(f, grads, [a, b], v).order == pytest.approx(2.0, abs=0.05)
    assert finite_diff.taylor_test(f, [grads[0], -grads[1]], [a, b], v).order == pytest.approx(
        1.0, abs=0.1)


def test_taylor_test_of_a_linear_function_is_inconclusive() -> None:
    # the remainder of the right gradient of a linear f is rounding noise at every step
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    w = torch.tensor([0.5, -2.0, 4.0], dtype=torch.float64)
    t = finite_diff.taylor_test(lambda z: (w * z).sum(), w, x, generator=torch.Generator())
    assert math.isnan(t.order) and not t.consistent and t.fitted == ()


# --- directional checks ----------------------------------------------------------------------


def test_directional_derivative_is_j_v_from_one_pair_of_evaluations() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = torch.randn(3, generator=g, dtype=torch.float64)
    v = torch.randn(3, generator=g, dtype=torch.float64)
    calls = []

    def f(t):
        calls.append(t.clone())
        return a @ torch.tanh(t)

    got = finite_diff.directional_derivative(f, x, v)
    assert len(calls) == 2
    expected = (a * (1 - torch.tanh(x) ** 2)) @ v
    assert_close(got, expected, kernel="finite_diff.directional_derivative", reference="analytic",
                 tol=FD_TOL)


def test_richardson_cancels_the_central_differences_h_squared_error() -> None:
    """At a coarse step (eps = 1e-2) one pair of sin's central difference is off by
    ~h^2/6 of J v; two pairs extrapolated are off by O(h^4): ~1e-10 here. The check of
    the argument comes before any evaluation."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, generator=g, dtype=torch.float64)
    v = torch.randn(50, generator=g, dtype=torch.float64)
    calls = []

    def f(t):
        calls.append(1)
        return torch.sin(t)

    exact = torch.cos(x) * v
    one = finite_diff.directional_derivative(f, x, v, 1e-2)
    two = finite_diff.directional_derivative(f, x, v, 1e-2, richardson=True)
    assert len(calls) == 2 + 4
    err_one = float(((one - exact).abs() / exact.abs().max()).max())
    err_two = float(((two - exact).abs() / exact.abs().max()).max())
    assert err_one > 1e-6 and err_two < 1e-8, (err_one, err_two)
    d = finite_diff.directional_check(f, x, jvp=lambda w: torch.cos(x) * w, eps=1e-2,
                                      richardson=True, generator=g)[0]
    assert d.errors()["forward"] < 1e-8
    calls.clear()
    with pytest.raises(TypeError, match="richardson: expected True or False, got 1"):
        finite_diff.directional_derivative(f, x, v, richardson=1)
    assert not calls


def test_directional_check_agrees_with_a_right_kernel_and_flags_a_wrong_one() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = torch.randn(3, generator=g, dtype=torch.float64)
    J = a * (1 - torch.tanh(x) ** 2)
    bad = J.clone()
    bad[2, 1] += 0.01

    def f(t):
        return a @ torch.tanh(t)

    right = finite_diff.directional_check(f, x, jvp=lambda v: J @ v, vjp=lambda u: u @ J,
                                          directions=3, generator=g)
    assert len(right) == 3
    for d in right:
        assert set(d.errors()) == {"forward", "reverse"}
        assert max(d.errors().values()) < 1e-9
        assert d.scale == pytest.approx(float((d.u * d.jv_fd).abs().sum()))
    wrong = finite_diff.directional_check(f, x, jvp=lambda v: bad @ v, directions=3, generator=g)
    for d in wrong:
        assert set(d.errors()) == {"forward"} and d.errors()["forward"] > 1e-4
    # reverse mode only, as for backprop
    only = finite_diff.directional_check(f, x, vjp=lambda u: u @ bad, generator=g)
    assert all(d.forward is None and d.errors()["reverse"] > 1e-4 for d in only)


BAD_NEW = [
    ("no kernel", lambda: finite_diff.directional_check(torch.sin, torch.ones(2)), ValueError,
     r"jvp, vjp: expected at least one of them"),
    ("directions", lambda: finite_diff.directional_check(
        torch.sin, torch.ones(2), jvp=torch.cos, directions=0), ValueError,
     r"directions: expected a positive integer, got 0"),
    ("jvp shape", lambda: finite_diff.directional_check(
        torch.sin, torch.ones(2), jvp=lambda v: v[:1]), ValueError,
     r"jvp: expected J v of shape \(2,\) \(f\(x\)'s\), got \(1,\)"),
    ("vjp structure", lambda: finite_diff.directional_check(
        lambda p: p[0] * p[1], [torch.ones(2), torch.ones(2)], vjp=lambda u: [u]), ValueError,
     r"vjp: expected a sequence of 2 tensors like x, got a sequence of 1 tensors"),
    ("not callable", lambda: finite_diff.directional_check(torch.sin, torch.ones(2), jvp=3),
     TypeError, r"jvp: expected a callable, got int"),
    ("zero direction", lambda: finite_diff.directional_derivative(
        torch.sin, torch.ones(2), torch.zeros(2)), ValueError,
     r"v: expected a finite direction with a nonzero entry"),
    ("v shape", lambda: finite_diff.directional_derivative(
        torch.sin, torch.ones(2), torch.ones(3)), ValueError,
     r"v: expected shape \(2,\) like x, got \(3,\)"),
    ("x type", lambda: finite_diff.directional_derivative(torch.sin, 1.0, 1.0), TypeError,
     r"x: expected a tensor or a non-empty sequence of tensors, got float"),
    ("grad shape", lambda: finite_diff.taylor_test(
        lambda t: t.sum(), torch.ones(3), torch.ones(2)), ValueError,
     r"grad: expected shape \(2,\) like x, got \(3,\)"),
    ("grad dtype", lambda: finite_diff.taylor_test(
        lambda t: t.sum(), torch.ones(2), torch.ones(2, dtype=torch.float64)), TypeError,
     r"grad: dtype torch.float32 does not match x"),
    ("not scalar", lambda: finite_diff.taylor_test(torch.sin, torch.ones(2), torch.ones(2)),
     ValueError, r"f: the Taylor test needs a scalar function, but f\(x\) has shape \(2,\)"),
    ("h0", lambda: finite_diff.taylor_test(
        lambda t: t.sum(), torch.ones(2), torch.ones(2), h0=-1.0), ValueError,
     r"h0: expected a positive finite step, got -1.0"),
    ("halvings", lambda: finite_diff.taylor_test(
        lambda t: t.sum(), torch.ones(2), torch.ones(2), halvings=1), ValueError,
     r"halvings: expected an integer >= 2, got 1"),
]


@pytest.mark.parametrize("call,error,pattern", [b[1:] for b in BAD_NEW],
                         ids=[b[0] for b in BAD_NEW])
def test_bad_input_to_directional_and_taylor(call, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        call()


def test_taylor_test_needs_three_steps_clear_of_rounding() -> None:
    # f = 1e6 + t^2 / 2 at 0, right gradient 0: the remainder h^2 / 2 clears 100 x the
    # rounding floor (~100 * 2e6 * 2.2e-16 = 4.4e-8) at h = 1e-3 and 5e-4 only, not at
    # 2.5e-4 (3.1e-8): two points make no fit, so the order is nan, not a slope of two
    x = torch.zeros(1, dtype=torch.float64)
    t = finite_diff.taylor_test(lambda z: 1e6 + 0.5 * (z**2).sum(), torch.zeros(1,
                                dtype=torch.float64), x, torch.ones(1, dtype=torch.float64),
                                h0=1e-3, halvings=2)
    assert t.fitted == (0, 1) and math.isnan(t.order) and not t.consistent
