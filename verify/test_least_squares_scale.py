"""Least squares at extreme scales: X of 2^-660 (~1e-199), where lam = sigma^2 underflows
to 0, and of 2^530 (~1e160), where it overflows to inf, while alpha lam and alpha b are
ordinary numbers. The oracles: GD's scale covariance (the iterates of (c X, y, w0 / c,
alpha / c^2) are those of (X, y, w0, alpha) divided by c, c a power of two, so exact),
exact rational iteration (fractions.Fraction), the loops, and plain matrix products."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import pytest
import torch

from handgrad.kernels import least_squares as ls
from handgrad.testing.compare import assert_close
from handgrad.testing.tolerances import Tol

F64 = torch.float64

# (exponent e of c = 2^e, alpha of the scaled problem): alpha / c^2 is the reference's
# step, 2^-320 and 2^-14 (alpha lam ~ 1e-95 and ~ 3e-3 there)
SCALES = [(-660, 2.0 ** 1000), (530, 2.0 ** -1074)]
SCALE_IDS = ["X_of_1e-199", "X_of_1e160"]


def _problem(seed: int = 0, n: int = 20, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, generator=g, dtype=F64)
    w0 = torch.randn(d, generator=g, dtype=F64)
    return X, y, w0


def _scaled(e: int, alpha_scaled: float, seed: int = 0):
    """(X, y, w0, alpha) and the same problem at scale c = 2^e: (c X, y, w0 / c,
    alpha / c^2), whose iterates are w_k / c."""
    X, y, w0 = _problem(seed)
    c = 2.0 ** e
    alpha = alpha_scaled * c * c  # exact: powers of two, inside float64's range
    return (X, y, w0, alpha), (X * c, y, w0 / c, alpha_scaled)


# --- scale covariance -----------------------------------------------------------------


@pytest.mark.parametrize("e,alpha_scaled", SCALES, ids=SCALE_IDS)
def test_gd_closed_form_is_scale_covariant(e, alpha_scaled):
    """Before: X of 2^-660 said "diverged" (lam = 0 with nonzero True: 0/0), X of 2^530
    warned of divergence and raised OverflowError (lam = inf) for a step that converges."""
    (X, y, w0, alpha), (Xs, ys, w0s, alpha_s) = _scaled(e, alpha_scaled)
    c = 2.0 ** e
    assert ls.spectrum(X).lam_max * alpha < 2  # the reference converges
    # k through the transient to the limit: for 2^-660, alpha lam ~ 1e-95
    ks = [0, 1, 10, 1000, 10**6] + ([10**94, 10**95, 10**96, 10**100] if e < 0 else [10**5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ls.DivergenceWarning)
        got = ls.gd_closed_form(Xs, ys, w0s, alpha_s, ks)
    ref = ls.gd_closed_form(X, y, w0, alpha, ks) / c
    assert_close(got, ref, kernel="gd_closed_form", reference="gd_closed_form at scale 1 / c",
                 what=f"c = 2^{e}", tol=Tol(rtol=1e-12, atol=1e-12 * ref.abs().max().item()),
                 kind="grad")
    # the loop (another code path: X^T (X w) as products) on the scaled problem itself
    loop = ls.gd_iterates(Xs, ys, w0s, alpha_s, 10)[-1]
    assert_close(got[2], loop, kernel="gd_closed_form", reference="gd_iterates",
                 what=f"k = 10, c = 2^{e}",
                 tol=Tol(rtol=1e-12, atol=1e-12 * loop.abs().max().item()), kind="grad")


def test_closed_forms_where_X_and_y_are_both_huge():
    """(c X, c y, w0, alpha / c^2) at c = 2^530 has the iterates of (X, y, w0, alpha):
    b = V^T X^T y ~ 2^1060 is inf, alpha b ~ 2^-14 is not (alpha b = (alpha sigma) U^T y)."""
    (X, y, w0, alpha), (Xs, _, _, alpha_s) = _scaled(530, 2.0 ** -1074)
    ys = y * 2.0 ** 530
    assert not torch.isfinite(Xs.t() @ ys).all()
    ks = [1, 10, 1000]
    for name, call in (("gd_closed_form", lambda *a: ls.gd_closed_form(*a, ks)),
                       ("heavy_ball_closed_form",
                        lambda *a: ls.heavy_ball_closed_form(*a, 0.5, ks))):
        ref = call(X, y, w0, alpha)
        assert_close(call(Xs, ys, w0, alpha_s), ref, kernel=name,
                     reference=f"{name} at scale 1", what="c = 2^530",
                     tol=Tol(rtol=1e-12, atol=1e-12 * ref.abs().max().item()), kind="grad")


@pytest.mark.parametrize("e,alpha_scaled", [(-80, 2.0 ** 100), (70, 2.0 ** -149)],
                         ids=["X_of_8e-25", "X_of_1e21"])
def test_closed_forms_in_float32_at_its_extreme_scales(e, alpha_scaled):
    """float32's lam = sigma^2 leaves its range at sigma ~ 1e-19 / 1e19: X of 2^-80 said
    "diverged", as in float64 at 2^-660. Against float64 at scale 1."""
    (X, y, w0, alpha), (Xs, ys, w0s, alpha_s) = _scaled(e, alpha_scaled)
    ks = [1, 10, 1000]
    f32 = (Xs.float(), ys.float(), w0s.float(), alpha_s)
    for name, call in (("gd_closed_form", lambda *a: ls.gd_closed_form(*a, ks)),
                       ("heavy_ball_closed_form",
                        lambda *a: ls.heavy_ball_closed_form(*a, 0.5, ks))):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ls.DivergenceWarning)
            got = call(*f32)
        ref = call(X, y, w0, alpha) / 2.0 ** e
        assert got.dtype == torch.float32
        assert_close(got.double(), ref, kernel=f"{name} (float32)",
                     reference=f"{name} (float64) at scale 1", what=f"c = 2^{e}",
                     tol=Tol(rtol=1e-5, atol=1e-5 * ref.abs().max().item()), kind="grad")


def test_gd_closed_form_reaches_the_minimiser_of_a_tiny_X():
    """At 2^-660 (alpha lam ~ 1e-95) k = 10^100 steps reach w*: against torch's pinv."""
    _, (Xs, ys, w0s, alpha_s) = _scaled(-660, 2.0 ** 1000)
    got = ls.gd_closed_form(Xs, ys, w0s, alpha_s, 10**100)
    ref = torch.linalg.pinv(Xs) @ ys
    assert ref.abs().max() > 1e190  # w* = pinv(X) y / c: the scale is real
    assert_close(got, ref, kernel="gd_closed_form", reference="pinv(X) y",
                 tol=Tol(rtol=1e-10, atol=1e-10 * ref.abs().max().item()), kind="grad")


def test_gd_closed_form_of_a_tiny_X_moves_k_alpha_X_t_y():
    """X of 1e-200, y of 1, alpha = 1: alpha lam ~ 1e-399 is 0 in float64, and each step
    adds alpha X^T (y - X w) = alpha X^T y to within 1e-199 relative. Before: OverflowError
    ("the iterates diverged")."""
    X, y, _ = _problem(3)
    Xs, w0 = X * 1e-200, torch.zeros(5, dtype=F64)
    for k in (1, 10, 2**40):
        got = ls.gd_closed_form(Xs, y, w0, 1.0, k)
        ref = k * (Xs.t() @ y)
        assert_close(got, ref, kernel="gd_closed_form", reference="k alpha X^T y",
                     what=f"k = {k}", tol=Tol(rtol=1e-13, atol=0), kind="grad")


@pytest.mark.parametrize("e,alpha_scaled", SCALES, ids=SCALE_IDS)
def test_heavy_ball_closed_form_is_scale_covariant(e, alpha_scaled):
    (X, y, w0, alpha), (Xs, ys, w0s, alpha_s) = _scaled(e, alpha_scaled, seed=1)
    c = 2.0 ** e
    ks = [0, 1, 10, 1000, 10**6]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ls.DivergenceWarning)
        got = ls.heavy_ball_closed_form(Xs, ys, w0s, alpha_s, 0.5, ks)
    ref = ls.heavy_ball_closed_form(X, y, w0, alpha, 0.5, ks) / c
    assert_close(got, ref, kernel="heavy_ball_closed_form",
                 reference="heavy_ball_closed_form at scale 1 / c", what=f"c = 2^{e}",
                 tol=Tol(rtol=1e-12, atol=1e-12 * ref.abs().max().item()), kind="grad")
    loop = ls.heavy_ball_iterates(Xs, ys, w0s, alpha_s, 0.5, 10)[-1]
    assert_close(got[2], loop, kernel="heavy_ball_closed_form",
                 reference="heavy_ball_iterates", what=f"k = 10, c = 2^{e}",
                 tol=Tol(rtol=1e-12, atol=1e-12 * loop.abs().max().item()), kind="grad")


@pytest.mark.parametrize("e,alpha_scaled", SCALES, ids=SCALE_IDS)
def test_converges_and_spectral_radius_are_scale_covariant(e, alpha_scaled):
    """alpha lam is what decides. Before, at 2^530 (lam = inf) spectral_radius raised
    OverflowError and converges said False for a step that converges."""
    (X, _, _, alpha), (Xs, _, _, alpha_s) = _scaled(e, alpha_scaled)
    assert ls.converges(Xs, alpha_s) is ls.converges(X, alpha) is True
    radius = ls.spectral_radius(X, alpha)
    assert radius < 1 or e == -660  # 1 - 1e-95 is 1.0
    assert ls.spectral_radius(Xs, alpha_s) == pytest.approx(radius, rel=1e-15, abs=0)


def test_divergence_is_still_told_at_a_huge_scale():
    """X of 2^530 with alpha / c^2 = 2^-4 (alpha lam ~ 2.5): warned and refused as at
    scale 1."""
    (X, y, w0, _), (Xs, ys, w0s, _) = _scaled(530, 2.0 ** -1074)
    alpha_s = 2.0 ** -1064
    alpha = alpha_s * 2.0 ** 530 * 2.0 ** 530
    assert ls.spectrum(X).lam_max * alpha > 2
    assert not ls.converges(Xs, alpha_s)
    with pytest.warns(ls.DivergenceWarning, match="gradient descent does not converge"), \
            pytest.raises(OverflowError, match="diverged"):
        ls.gd_closed_form(Xs, ys, w0s, alpha_s, 10**6)
    with pytest.warns(ls.DivergenceWarning, match="momentum does not converge"):
        ls.heavy_ball_closed_form(Xs, ys, w0s, alpha_s, 0.1, 3)


# --- exact rational iteration ---------------------------------------------------------


def _exact_iterates(X, y, w0, alpha, beta, k):
    """w_k of heavy ball (GD at beta = 0) in exact rational arithmetic."""
    rows = [[Fraction(v) for v in r] for r in X.tolist()]
    yy = [Fraction(v) for v in y.tolist()]
    w = prev = [Fraction(v) for v in w0.tolist()]
    a, b = Fraction(alpha), Fraction(beta)
    for _ in range(k):
        r = [sum(x * wi for x, wi in zip(row, w)) - yi for row, yi in zip(rows, yy)]
        grad = [sum(row[j] * ri for row, ri in zip(rows, r)) for j in range(len(w))]
        w, prev = [wi - a * gi + b * (wi - pi) for wi, gi, pi in zip(w, grad, prev)], w
    return torch.tensor([float(v) for v in w], dtype=F64)


@pytest.mark.parametrize("e,alpha_scaled", SCALES, ids=SCALE_IDS)
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_closed_forms_against_exact_rational_iteration(e, alpha_scaled, beta):
    X, y, w0 = _problem(2, n=4, d=2)
    Xs, w0s = X * 2.0 ** e, w0 / 2.0 ** e
    k = 12
    ref = _exact_iterates(Xs, y, w0s, alpha_scaled, beta, k)
    got = (ls.gd_closed_form(Xs, y, w0s, alpha_scaled, k) if beta == 0 else
           ls.heavy_ball_closed_form(Xs, y, w0s, alpha_scaled, beta, k))
    assert_close(got, ref, kernel="closed form", reference="Fraction iteration",
                 what=f"c = 2^{e}, beta = {beta}",
                 tol=Tol(rtol=1e-12, atol=1e-12 * ref.abs().max().item()), kind="grad")


# --- the spectrum and the Gram path ---------------------------------------------------


def test_spectrum_keeps_sigma_where_lam_underflows_and_refuses_an_overflow():
    X, y, _ = _problem()
    sp = ls.spectrum(X, y)
    tiny = ls.spectrum(X * 2.0 ** -660, y)
    assert tiny.rank == 5 and torch.equal(tiny.lam, torch.zeros(5, dtype=F64))
    assert_close(tiny.sigma, sp.sigma * 2.0 ** -660, kernel="spectrum.sigma",
                 reference="sigma(X) 2^-660", tol=Tol(rtol=1e-14, atol=0), kind="grad")
    assert_close(sp.sigma, torch.linalg.svdvals(X), kernel="spectrum.sigma",
                 reference="LAPACK singular values", tol=Tol(rtol=1e-14, atol=0), kind="grad")
    assert_close(sp.Xty_v, sp.sigma * sp.Uty, kernel="spectrum.Xty_v", reference="sigma Uty",
                 tol=Tol(rtol=0, atol=0), kind="grad")
    # before: lam = inf returned
    with pytest.raises(OverflowError, match=r"spectrum: lam overflows torch.float64 .*"
                                            r"sigma_max\(X\) = .*e\+16"):
        ls.spectrum(X * 2.0 ** 530)
    with pytest.raises(OverflowError, match=r"spectrum: Xty_v overflows"):
        ls.spectrum(X * 2.0 ** 400, y * 2.0 ** 700)  # lam ~ 2^805 finite, b ~ 2^1105


@pytest.mark.parametrize("e", [-520, 520])
def test_the_gram_path_gives_way_to_the_svd_outside_the_normal_range(monkeypatch, e):
    """X^T X of X at 2^-520 is subnormal (the Gram path was taken, eigenvalues to ~10
    digits), at 2^520 inf (eigh raised LinAlgError). Both take the SVD and give the
    closed forms of the SVD path."""
    X, y, w0 = _problem()
    alpha = 2.0 ** -30
    Xs, w0s, alpha_s = X * 2.0 ** e, w0 / 2.0 ** e, math.ldexp(alpha, -2 * e)
    if e < 0:
        assert ls.spectrum(Xs, y, method="gram").method == "svd"
    else:  # lam = inf: refused by name (the SVD's), not eigh's LinAlgError
        with pytest.raises(OverflowError, match="spectrum: lam overflows"):
            ls.spectrum(Xs, y, method="gram")
    svd = ls.gd_closed_form(Xs, y, w0s, alpha_s, 100)
    monkeypatch.setattr(ls, "_auto_method", lambda X: "gram")
    assert torch.equal(ls.gd_closed_form(Xs, y, w0s, alpha_s, 100), svd)
    # at scale 1 the Gram path is taken and agrees
    assert ls.spectrum(X, y).method == "gram"
    assert_close(ls.gd_closed_form(X, y, w0, alpha, 100) * 2.0 ** -e, svd,
                 kernel="gd_closed_form (svd, scaled)", reference="gd_closed_form (gram)",
                 tol=Tol(rtol=1e-12, atol=1e-12 * svd.abs().max().item()), kind="grad")


# --- momentum forms -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["momentum_form1", "momentum_form2"])
@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_momentum_forms_raise_overflow_naming_the_step(form, beta):
    """Gradients of 1e308 (finite) overflow theta at step 2 (theta_2 = -2e308 - ...):
    before, rows of inf (or NaN) were returned. Later gradients that pull back do not
    hide it (an inf coordinate stays inf or NaN)."""
    grads = torch.full((6, 3), 1e308, dtype=F64)
    grads[3:] = -1e308
    with pytest.raises(OverflowError, match=rf"{form}: the iterates overflow torch.float64 "
                                            r".* at step 2 of 6 though grads and theta0 are "
                                            r"finite"):
        getattr(ls, form)(grads, torch.zeros(3, dtype=F64), 1.0, beta)


@pytest.mark.parametrize("form", ["momentum_form1", "momentum_form2"])
def test_momentum_forms_keep_large_finite_iterates(form):
    """1e307 per step for 5 steps (beta = 0): -5e307, finite: returned, not refused."""
    grads = torch.full((5, 2), 1e307, dtype=F64)
    got = getattr(ls, form)(grads, torch.zeros(2, dtype=F64), 1.0, 0.0)
    ref = torch.cat([torch.zeros(1, 2, dtype=F64), -torch.cumsum(grads, 0)])
    assert torch.equal(got, ref)
