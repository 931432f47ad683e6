"""The hand-written central differences against analytic derivatives and autograd."""

from __future__ import annotations

import pytest
import torch

from kernels import finite_diff
from verify.compare import assert_close
from verify.tolerances import tol_for

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
