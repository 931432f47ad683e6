"""Tensors with requires_grad=True given to the kernels that read values to the host
(least squares' spectrum and divergence checks, the finite differences, check_construction,
the value checks' error messages): no "Converting a tensor with requires_grad=True to a
scalar" UserWarning, and the same result as for the detached tensors.

torch warns that once per process (TORCH_WARN_ONCE): ``torch.set_warn_always(True)`` makes
every conversion warn here, whatever ran before; every warning is an error.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from handgrad.kernels import constructions as cs
from handgrad.kernels import finite_diff as fd
from handgrad.kernels import least_squares as ls
from handgrad.kernels import mlp

F64 = torch.float64


@pytest.fixture(autouse=True)
def _every_conversion_warns():
    was = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
    torch.set_warn_always(was)


def _rg(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def _problem(n: int = 8, d: int = 3):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, dtype=F64, generator=g)
    return X, torch.randn(n, dtype=F64, generator=g), torch.randn(d, dtype=F64, generator=g)


def test_the_warning_is_seen_here():
    """The fixture works: a plain conversion of a tensor requiring grad is an error."""
    with pytest.raises(UserWarning, match="requires_grad=True to a scalar"):
        float(_rg(torch.ones(())))


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_spectrum_and_its_reads(method):
    X, y, _ = _problem()
    sp = ls.spectrum(_rg(X), _rg(y), method=method)
    assert sp.method == method
    assert sp.lam_max == ls.spectrum(X, y, method=method).lam_max
    assert sp.lam.requires_grad  # the spectrum itself still carries the graph


@pytest.mark.parametrize("name,call", [
    ("spectral_radius", lambda X, y, w: ls.spectral_radius(X, 0.01)),
    ("converges", lambda X, y, w: ls.converges(X, 0.01)),
    ("minimizer", lambda X, y, w: ls.minimizer(X, y)),
    ("gd_iterates", lambda X, y, w: ls.gd_iterates(X, y, w, 0.01, 3)),
    ("gd_closed_form", lambda X, y, w: ls.gd_closed_form(X, y, w, 0.01, [0, 3, 10**30])),
    ("heavy_ball_iterates", lambda X, y, w: ls.heavy_ball_iterates(X, y, w, 0.01, 0.5, 3)),
    ("heavy_ball_closed_form",
     lambda X, y, w: ls.heavy_ball_closed_form(X, y, w, 0.01, 0.5, 3)),
    ("alpha and beta tensors", lambda X, y, w: ls.heavy_ball_closed_form(
        X, y, w, _rg(torch.tensor(0.01)), _rg(torch.tensor(0.5)), 3)),
])
def test_least_squares(name, call):
    X, y, w = _problem()
    got, want = call(_rg(X), _rg(y), _rg(w)), call(X, y, w)
    if isinstance(got, torch.Tensor):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=0)
    else:
        assert got == want, name


def test_probabilities_requiring_grad_are_refused_by_name():
    """check_probabilities' message reads the bad row and its sum."""
    logits = _rg(torch.zeros(2, 2, dtype=F64))
    target = _rg(torch.tensor([[0.5, 0.5], [0.7, 0.7]], dtype=F64))
    with pytest.raises(ValueError, match=r"row 1 holds \[0.7, 0.7\], summing to 1.4$"):
        mlp.cross_entropy(logits, target)


def _cube(t):
    return (t ** 3).sum()


@pytest.mark.parametrize("name,call", [
    ("gradient", lambda x: fd.gradient(_cube, x)),
    ("jacobian", lambda x: fd.jacobian(lambda t: t ** 2, x)),
    ("step_sweep", lambda x: fd.step_sweep(_cube, x, _rg(3 * x.detach() ** 2),
                                           eps_values=[1e-2, 1e-3, 1e-4]).error),
    ("directional_derivative", lambda x: fd.directional_derivative(_cube, x, _rg(x))),
    ("directional_check", lambda x: [d.errors() for d in fd.directional_check(
        lambda t: t ** 2, x, jvp=lambda v: 2 * x * v, vjp=lambda u: 2 * x * u,
        generator=torch.Generator().manual_seed(1))]),
    ("taylor_test", lambda x: fd.taylor_test(_cube, 3 * x ** 2, x,
                                             generator=torch.Generator().manual_seed(1)).order),
    ("taylor_test, a list", lambda x: fd.taylor_test(
        lambda ps: _cube(ps[0]) + _cube(ps[1]), [3 * x ** 2, 3 * x ** 2], [x, _rg(x)],
        generator=torch.Generator().manual_seed(1)).order),
])
def test_finite_differences(name, call):
    x = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    got, want = call(_rg(x)), call(x)
    if isinstance(got, torch.Tensor):
        assert not got.requires_grad
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    else:
        assert got == want, name


def test_check_construction_of_a_net_requiring_grad():
    w = _rg(torch.tensor(2.0, dtype=F64))
    points = torch.linspace(-1, 1, 5, dtype=F64)
    got = cs.check_construction(lambda p: w * p, lambda p: 2.5 * p, points)
    assert got.max_error == 0.5 and float(got.worst_input) in (-1.0, 1.0)
