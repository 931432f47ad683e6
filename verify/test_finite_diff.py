"""The hand-written central differences against analytic derivatives and autograd."""

from __future__ import annotations

import pytest
import torch

from kernels import finite_diff
from verify.compare import assert_close
from verify.tolerances import Tol, tol_for

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
                 reference="torch.autograd.functional.jacobian", tol=FD_TOL)


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
    assert list(frame.columns) == ["eps", "max_abs_error"] and len(frame) == 13


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
    with pytest.raises(ValueError, match=r"eps: expected a positive step, got 0"):
        finite_diff.gradient(lambda t: t.sum(), torch.ones(3), eps=0.0)
    with pytest.raises(TypeError, match=r"x: expected a floating-point tensor"):
        finite_diff.gradient(lambda t: t.sum(), torch.ones(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"f: f must return a torch.Tensor, got float"):
        finite_diff.jacobian(lambda t: 1.0, torch.ones(3))
    with pytest.raises(ValueError, match=r"exact: expected shape \(3, 3\)"):
        finite_diff.step_sweep(torch.sin, torch.ones(3, dtype=torch.float64), torch.ones(3))
