"""Least squares, closed-form gradient descent and momentum against autograd, linear
algebra, iteration and torch.optim.SGD."""

from __future__ import annotations

import math
import os
import re
import types
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from handgrad.kernels import finite_diff
from handgrad.kernels import least_squares as ls
from handgrad.testing.compare import assert_close
from handgrad.testing.tolerances import Tol, tol_for

F64 = torch.float64


def problem(n: int, d: int, rank: int | None = None, *, seed: int = 0, cond: float | None = None,
            device: str = "cpu"):
    """X (n, d) of the given rank (or condition number), y (n,), w0 (d,)."""
    g = torch.Generator().manual_seed(seed)
    rank = min(n, d) if rank is None else rank
    if cond is not None:
        u, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=F64))
        v, _ = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=F64))
        s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), rank, dtype=F64)
        X = u @ torch.diag(s) @ v.t()
    else:
        X = torch.randn(n, rank, generator=g, dtype=F64) @ torch.randn(rank, d, generator=g,
                                                                       dtype=F64)
    y = torch.randn(n, generator=g, dtype=F64)
    w0 = torch.randn(d, generator=g, dtype=F64)
    return X.to(device), y.to(device), w0.to(device)


def lam_max(X):
    return torch.linalg.eigvalsh(X.t() @ X).max().item()


def limit(X, y, w0):
    """Where convergent GD ends: the least-norm minimiser plus w0's null-space part."""
    pinv = torch.linalg.pinv(X)
    return pinv @ y + (torch.eye(X.shape[1], dtype=X.dtype, device=X.device) - pinv @ X) @ w0


# --- gradient and minimiser -----------------------------------------------------------


def test_gradient_against_autograd_and_finite_differences(device):
    X, y, w = problem(12, 5, device=device)
    wr = w.clone().requires_grad_()
    (expected,) = torch.autograd.grad(0.5 * ((X @ wr - y) ** 2).sum(), wr)
    assert_close(ls.gradient(X, w, y), expected, kernel="least_squares.gradient",
                 reference="torch_autograd", kind="grad")
    fd = finite_diff.gradient(lambda t: ls.loss(X, t, y), w)
    assert_close(ls.gradient(X, w, y), fd, kernel="least_squares.gradient",
                 reference="finite_diff.gradient", tol=tol_for(F64, "finite_diff"))


@pytest.mark.parametrize("n,d,rank", [(20, 5, 5), (20, 5, 2), (4, 9, 4), (30, 6, 1)],
                         ids=["full_rank", "rank_deficient", "wide", "rank_one"])
def test_minimizer_against_lstsq_and_pinv(n, d, rank, device):
    X, y, _ = problem(n, d, rank, device=device)
    w = ls.minimizer(X, y)
    assert_close(w, torch.linalg.pinv(X) @ y, kernel="least_squares.minimizer",
                 reference="torch_pinv", kind="grad")
    if device == "cpu":  # gelsd (rank-revealing) is CPU-only
        ref = torch.linalg.lstsq(X, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        assert_close(w, ref, kernel="least_squares.minimizer",
                     reference="torch_lstsq", kind="grad")
    # a minimiser: the gradient vanishes there
    grad = ls.gradient(X, w, y)
    assert_close(grad, torch.zeros_like(grad), kernel="gradient at minimizer", reference="0",
                 tol=Tol(rtol=0, atol=1e-10))


def test_minimizer_of_ill_conditioned_X():
    # condition number 1e6: the normal equations would square it to 1e12
    X, y, _ = problem(40, 8, cond=1e6, seed=3)
    ref = torch.linalg.lstsq(X, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    assert_close(ls.minimizer(X, y), ref, kernel="least_squares.minimizer",
                 reference="torch_lstsq", tol=Tol(rtol=1e-8, atol=1e-8))


# --- gradient descent ---------------------------------------------------------------


def test_first_two_iterates_match_the_explicit_formulas(device):
    X, y, w0 = problem(15, 4, device=device)
    alpha = 0.5 / lam_max(X)
    A, b = X.t() @ X, X.t() @ y
    eye = torch.eye(4, dtype=F64, device=device)
    w1 = w0 - alpha * (A @ w0 - b)
    # w2 = (I - aA)^2 w0 + a (I + (I - aA)) X^T y
    w2 = (eye - alpha * A) @ (eye - alpha * A) @ w0 + alpha * (2 * eye - alpha * A) @ b
    kw = dict(kernel="gd", reference="explicit formula", kind="grad")
    assert_close(ls.gd_closed_form(X, y, w0, alpha, 1), w1, what="closed form w1", **kw)
    assert_close(ls.gd_closed_form(X, y, w0, alpha, 2), w2, what="closed form w2", **kw)
    assert_close(ls.gd_iterates(X, y, w0, alpha, 2)[1:], torch.stack([w1, w2]),
                 what="loop w1, w2", **kw)
    assert_close(ls.gd_closed_form(X, y, w0, alpha, 0), w0, what="w0", **kw)


@given(
    n=st.integers(1, 12), d=st.integers(1, 8), rank_frac=st.floats(0.2, 1.0),
    alpha_frac=st.floats(0.05, 1.95), seed=st.integers(0, 2**16),
)
def test_closed_form_equals_loop_for_many_k(n, d, rank_frac, alpha_frac, seed):
    rank = max(1, round(rank_frac * min(n, d)))
    X, y, w0 = problem(n, d, rank, seed=seed)
    alpha = alpha_frac / lam_max(X)
    loop = ls.gd_iterates(X, y, w0, alpha, 60)
    closed = ls.gd_closed_form(X, y, w0, alpha, list(range(61)))
    assert_close(closed, loop, kernel="gd_closed_form", reference="gd_iterates",
                 what=f"n={n} d={d} rank={rank} alpha*lmax={alpha_frac:.3g}",
                 tol=Tol(rtol=1e-8, atol=1e-9 * (1 + loop.abs().max().item())))


@pytest.mark.parametrize("n,d,rank", [(30, 6, 6), (30, 6, 3), (5, 9, 5)],
                         ids=["full_rank", "rank_deficient", "wide"])
def test_huge_k_reaches_the_limit_without_iterating(n, d, rank):
    X, y, w0 = problem(n, d, rank, seed=7)
    alpha = 1.0 / lam_max(X)
    w = ls.gd_closed_form(X, y, w0, alpha, 10**7)
    assert torch.isfinite(w).all()
    assert_close(w, limit(X, y, w0), kernel="gd_closed_form(k=1e7)",
                 reference="pinv(X) y + (I - pinv(X) X) w0", kind="grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [10**7, 2**128, 2**200, 10**400],
                         ids=lambda k: f"k~2^{k.bit_length() - 1}")
def test_huge_k_in_either_dtype_and_beyond_float64(k, dtype):
    # k was cast to X's dtype: float32 made k >= 2**128 inf, inf * log(mu = 1) nan in the
    # null space (read as divergence); beyond float64's range float(k) raised
    X, y, w0 = problem(30, 6, 3, seed=8)
    w = ls.gd_closed_form(X.to(dtype), y.to(dtype), w0.to(dtype), 1.0 / lam_max(X), k)
    assert_close(w, limit(X, y, w0).to(dtype), kernel=f"gd_closed_form(k=2^{k.bit_length()})",
                 reference="pinv(X) y + (I - pinv(X) X) w0", kind="grad")


@pytest.mark.parametrize("dtype, k", [(torch.float32, 2**24 + 1), (torch.float32, 2**24 + 3),
                                      (torch.float64, 2**53 + 1), (torch.float64, 2**55 + 1),
                                      (torch.float64, 2**53 + 2)])
def test_an_odd_k_keeps_its_sign_where_the_dtype_cannot_hold_it(dtype, k):
    # 1 < alpha lam < 2: mu = 1 - alpha lam < 0 converges oscillating, w_k = mu^k w0 for
    # X = [[1]], y = 0. k in the dtype (float32 above 2**24, float64 above 2**53) rounded
    # to an even number, and mu^k took the wrong sign
    alpha = 2.0 - (2.0 ** -22 if dtype == torch.float32 else 2.0 ** -52)
    mu = 1.0 - alpha
    exact = (-1.0 if k % 2 else 1.0) * math.exp(k * math.log(abs(mu)))
    X, y, w0 = (torch.tensor(v, dtype=dtype) for v in ([[1.0]], [0.0], [1.0]))
    with warnings.catch_warnings():  # alpha lam within float64's rounding of 2: warned of
        warnings.simplefilter("ignore", ls.DivergenceWarning)
        got = ls.gd_closed_form(X, y, w0, alpha, k)
    assert abs(exact) > 1e-6  # a value whose sign can be told
    assert_close(got, torch.tensor([exact], dtype=torch.float64), kernel="gd_closed_form",
                 reference="(-1)^k |mu|^k", what=f"k={k}", kind="grad")


def test_large_k_against_matrix_power_at_full_rank():
    # slow convergence (small alpha) so w_k at k = 10^4 .. 10^7 is still far from w*
    X, y, w0 = problem(25, 5, cond=1e3, seed=2)
    alpha = 0.5 / lam_max(X)
    A, ws = X.t() @ X, torch.linalg.pinv(X) @ y
    M = torch.eye(5, dtype=F64) - alpha * A
    for k in (10**4, 10**5, 10**6, 10**7):
        ref = ws + torch.linalg.matrix_power(M, k) @ (w0 - ws)
        assert_close(ls.gd_closed_form(X, y, w0, alpha, k), ref, kernel="gd_closed_form",
                     reference="w* + matrix_power(I - aA, k)(w0 - w*)", what=f"k={k}",
                     tol=Tol(rtol=1e-8, atol=1e-10))


def test_ill_conditioned_small_eigenvalues_stay_accurate():
    # cond(X) = 1e7: alpha lam ~ 1e-14 for the smallest eigenvalue, where 1 - (1 - alpha lam)^k
    # computed naively cancels to ~1e-6 relative error in that component
    X, y, _ = problem(20, 4, cond=1e7, seed=5)
    w0 = torch.zeros(4, dtype=F64)  # so each component is the geometric term alone
    alpha = 1.0 / lam_max(X)
    sp = ls.spectrum(X, y)
    lam, b, c0 = sp.lam, sp.Xty_v, sp.V.t() @ w0
    k = 10_000
    # exact in the eigenbasis, with the geometric sum added term by term in float64: its
    # error is second order in the rounding of mu, ~k^2 eps / 2 relative to k
    mu = 1 - alpha * lam
    powers = mu.unsqueeze(0) ** torch.arange(k, dtype=F64).unsqueeze(1)
    expected = mu**k * c0 + alpha * powers.sum(0) * b
    got = sp.V.t() @ ls.gd_closed_form(X, y, w0, alpha, k)
    assert_close(got, expected, kernel="gd_closed_form", what="eigen-components",
                 reference="term-by-term geometric sum", tol=Tol(rtol=1e-9, atol=1e-14))


def test_convergence_boundary_is_two_over_lambda_max():
    X, y, w0 = problem(10, 3, seed=1)
    lmax = lam_max(X)
    below, at, above = 1.999 / lmax, 2.0 / lmax, 2.001 / lmax
    assert ls.converges(X, below) and not ls.converges(X, at) and not ls.converges(X, above)
    assert ls.spectral_radius(X, below) < 1
    assert ls.spectral_radius(X, at) == pytest.approx(1.0, abs=1e-9)
    assert ls.spectral_radius(X, above) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning below the boundary
        ls.gd_closed_form(X, y, w0, below, 100)
    for alpha in (at, above):
        with pytest.warns(ls.DivergenceWarning, match=r"alpha = .* >= 2 / lambda_max"):
            ls.gd_closed_form(X, y, w0, alpha, 10)
        with pytest.warns(ls.DivergenceWarning):
            ls.gd_iterates(X, y, w0, alpha, 10)
    # at the boundary the top mode oscillates with constant amplitude: bounded, no limit
    with pytest.warns(ls.DivergenceWarning):
        w = ls.gd_closed_form(X, y, w0, at, [10**6, 10**6 + 1])
    assert torch.isfinite(w).all() and not torch.allclose(w[0], w[1])


def test_divergence_is_never_returned_as_inf():
    X, y, w0 = problem(10, 3, seed=1)
    alpha = 3.0 / lam_max(X)
    with pytest.warns(ls.DivergenceWarning), pytest.raises(OverflowError, match="diverged"):
        ls.gd_closed_form(X, y, w0, alpha, 10**6)
    with pytest.warns(ls.DivergenceWarning), pytest.raises(OverflowError, match="within k"):
        ls.gd_iterates(X, y, w0, alpha, 5000)


def test_rank_deficient_spectral_radius_is_one_but_gd_converges():
    X, y, w0 = problem(10, 5, rank=2, seed=4)
    alpha = 1.0 / lam_max(X)
    assert ls.spectral_radius(X, alpha) == pytest.approx(1.0)
    assert ls.converges(X, alpha)
    assert ls.spectrum(X).rank == 2


# --- momentum -----------------------------------------------------------------------


def sgd_reference(grads, theta0, alpha, beta):
    """torch.optim.SGD(momentum=beta, dampening=0) fed the given gradients."""
    p = theta0.clone().requires_grad_()
    opt = torch.optim.SGD([p], lr=alpha, momentum=beta, dampening=0)
    out = [theta0.clone()]
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return torch.stack(out)


@given(k=st.integers(1, 30), n=st.integers(1, 6), beta=st.floats(0.0, 0.99),
       alpha=st.floats(1e-3, 1.0), seed=st.integers(0, 2**16))
def test_momentum_forms_and_sgd_agree_on_a_gradient_sequence(k, n, beta, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(k, n, generator=g, dtype=F64)
    theta0 = torch.randn(n, generator=g, dtype=F64)
    f1 = ls.momentum_form1(grads, theta0, alpha, beta)
    f2 = ls.momentum_form2(grads, theta0, alpha, beta)
    assert f1.shape == (k + 1, n)
    kw = dict(kind="grad", tol=Tol(rtol=1e-10, atol=1e-10))
    assert_close(f1, f2, kernel="momentum_form1", reference="momentum_form2", **kw)
    assert_close(f2, sgd_reference(grads, theta0, alpha, beta), kernel="momentum_form2",
                 reference="torch_optim_sgd", **kw)


def test_momentum_on_least_squares_matches_sgd_and_closed_form():
    X, y, w0 = problem(20, 5, seed=8)
    alpha, beta, k = 0.5 / lam_max(X), 0.8, 80
    p = w0.clone().requires_grad_()
    opt = torch.optim.SGD([p], lr=alpha, momentum=beta, dampening=0)
    sgd = [w0.clone()]
    for _ in range(k):
        opt.zero_grad()
        (0.5 * ((X @ p - y) ** 2).sum()).backward()
        opt.step()
        sgd.append(p.detach().clone())
    sgd = torch.stack(sgd)
    loop = ls.heavy_ball_iterates(X, y, w0, alpha, beta, k)
    kw = dict(kind="grad", tol=Tol(rtol=1e-9, atol=1e-10))
    assert_close(loop, sgd, kernel="heavy_ball_iterates", reference="torch_optim_sgd", **kw)
    # form I given the gradients SGD saw reproduces the same path
    grads = torch.stack([ls.gradient(X, w, y) for w in sgd[:-1]])
    assert_close(ls.momentum_form1(grads, w0, alpha, beta), sgd, kernel="momentum_form1",
                 reference="torch_optim_sgd", **kw)
    closed = ls.heavy_ball_closed_form(X, y, w0, alpha, beta, list(range(k + 1)))
    assert_close(closed, loop, kernel="heavy_ball_closed_form", reference="heavy_ball_iterates",
                 **kw)


@pytest.mark.parametrize("rank", [5, 2])
def test_heavy_ball_closed_form_for_huge_k(rank):
    X, y, w0 = problem(15, 5, rank, seed=9)
    alpha, beta = 1.0 / lam_max(X), 0.9
    w = ls.heavy_ball_closed_form(X, y, w0, alpha, beta, 10**7)
    assert_close(w, limit(X, y, w0), kernel="heavy_ball_closed_form(k=1e7)",
                 reference="pinv(X) y + (I - pinv(X) X) w0", kind="grad")
    with pytest.warns(ls.DivergenceWarning, match="momentum does not converge"):
        ls.heavy_ball_closed_form(X, y, w0, 2 * (1 + beta) / lam_max(X), beta, 3)



# heavy-ball closed form where alpha lam is small: few steps' progress next to c* (the
# user's case: a 30 x 3 problem, alpha = 1e-8, k = 100), where computing w_k as c* plus a
# decayed error cancelled to a 5% error in float32 and a wrong sign


@pytest.mark.parametrize("alpha", [1e-14, 1e-8, 1e-6])
@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_heavy_ball_closed_form_with_tiny_alpha_lambda_matches_the_loop(alpha, beta):
    X, y, _ = problem(30, 3, seed=0)
    w0 = torch.zeros(3, dtype=F64)  # w_k is then the progress alone, c* far from it
    k = 100
    loop = ls.heavy_ball_iterates(X, y, w0, alpha, beta, k)[-1]
    # the loop rounds each of its k steps at eps relative to |w|, carried on by the momentum
    # (a factor up to 1 / (1 - beta)): k eps / (1 - beta) ~ 1e-13 at most (measured: 5e-15)
    tol = Tol(rtol=1e-12, atol=1e-12 * loop.abs().max().item())
    assert_close(ls.heavy_ball_closed_form(X, y, w0, alpha, beta, k), loop,
                 kernel="heavy_ball_closed_form", reference="heavy_ball_iterates",
                 what=f"alpha={alpha:g} beta={beta}", tol=tol)


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_heavy_ball_closed_form_in_float32_with_tiny_alpha_lambda(beta):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 3, generator=g), torch.randn(30, generator=g)
    w0 = torch.zeros(3)
    alpha, k = 1e-8, 100
    loop = ls.heavy_ball_iterates(X.double(), y.double(), w0.double(), alpha, beta, k)[-1]
    # the same rounded inputs in float64: the float32 SVD of this X (cond ~2) gives lam and
    # V to a few eps32 = 1.2e-7, and the 3x3 products amplify rounding by at most
    # 1 / (1 - beta) = 10 over log2 k = 7 levels: ~1e-5 relative (measured: 3e-7); the
    # cancelling form was off by 5% to 90%
    tol = Tol(rtol=1e-5, atol=1e-5 * loop.abs().max().item())
    assert_close(ls.heavy_ball_closed_form(X, y, w0, alpha, beta, k), loop,
                 kernel="heavy_ball_closed_form(float32)", reference="heavy_ball_iterates(float64)",
                 what=f"alpha={alpha:g} beta={beta}", tol=tol)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-13), (torch.float32, 2e-5)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("alpha,k", [(1e-8, 100), (1e-14, 10**12), (1e-14, 10**15),
                                     (1e-3, 10**30), (1e-12, 2**63)])
def test_heavy_ball_closed_form_without_momentum_is_gd_closed_form(alpha, k, dtype, rtol):
    """beta = 0 is gradient descent, whose closed form (expm1/log1p) is exact for any k:
    from a few steps (alpha lam tiny) through partial convergence at k = 1e12 to past
    int64 (k = 2^63 and 1e30, which torch.linalg.matrix_power cannot take)."""
    X, y, _ = problem(30, 3, seed=0)
    X, y = X.to(dtype), y.to(dtype)
    w0 = torch.zeros(3, dtype=dtype)  # w_k is the progress alone: nothing hides its error
    gd = ls.gd_closed_form(X, y, w0, alpha, k)
    # rtol: eps per level of the log2 k <= 100 doubling levels (measured: 7e-16 in float64,
    # 4e-6 in float32 at k = 1e30)
    assert_close(ls.heavy_ball_closed_form(X, y, w0, alpha, 0.0, k), gd,
                 kernel="heavy_ball_closed_form(beta=0)", reference="gd_closed_form",
                 what=f"alpha={alpha:g} k={k}", tol=Tol(rtol, rtol * gd.abs().max().item()))


@pytest.mark.parametrize("rank", [5, 2])
def test_heavy_ball_closed_form_past_int64_reaches_the_limit(rank):
    X, y, w0 = problem(15, 5, rank, seed=9)
    alpha, beta = 1.0 / lam_max(X), 0.9
    w = ls.heavy_ball_closed_form(X, y, w0, alpha, beta, [2**63, 10**30, 10**300])
    assert_close(w, limit(X, y, w0).expand(3, -1), kernel="heavy_ball_closed_form(k >= 2^63)",
                 reference="pinv(X) y + (I - pinv(X) X) w0", kind="grad")


def _heavy_ball_in_decimal(X, y, w0, alpha, beta, k, digits=60):
    """w_k by the plain augmented recurrence [d_j+1, d_j, 1] = [[1 + beta - alpha lam,
    -beta, -alpha g], [1, 0, 0], [0, 0, 1]] [d_j, d_j-1, 1] raised to the k by repeated
    squaring in 60-digit decimal arithmetic (1 + beta - alpha lam loses nothing there), per
    eigenvalue of torch.linalg.eigh(X^T X); g = lam c0 - b the initial gradient."""
    import decimal

    ctx = decimal.Context(prec=digits)
    dec = decimal.Decimal
    lam, V = torch.linalg.eigh(X.t() @ X)
    b, c0 = V.t() @ (X.t() @ y), V.t() @ w0

    def mul(P, Q):
        return [[sum((ctx.multiply(P[i][m], Q[m][j]) for m in range(3)), dec(0))
                 for j in range(3)] for i in range(3)]

    d = []
    for li, bi, ci in zip(lam.tolist(), b.tolist(), c0.tolist()):
        a_lam, a_g = dec(alpha) * dec(li), dec(alpha) * (dec(li) * dec(ci) - dec(bi))
        M = [[1 + dec(beta) - a_lam, -dec(beta), -a_g], [dec(1), dec(0), dec(0)],
             [dec(0), dec(0), dec(1)]]
        P = [[dec(int(i == j)) for j in range(3)] for i in range(3)]
        for bit in bin(k)[2:]:
            P = mul(P, P)
            if bit == "1":
                P = mul(P, M)
        d.append(float(P[0][2]))
    return w0 + V @ torch.tensor(d, dtype=F64)


@pytest.mark.parametrize("alpha,k", [(1e-12, 10**9), (1e-12, 10**11), (1e-6, 10**6)])
def test_heavy_ball_closed_form_at_large_k_against_a_60_digit_recurrence(alpha, k):
    """Momentum part-way to the limit after more steps than a loop can take, against the
    plain recurrence in high precision. lam = 0.1, 31, 310 here: with beta = 0.9 the slow
    mode decays as exp(-k alpha lam / (1 - beta)), k alpha lam / (1 - beta) from 1e-3 to 3
    at k = 1e9, 0.1 to 300 at 1e11, 1 to 3000 at alpha = 1e-6, k = 1e6."""
    X, y, w0 = problem(30, 3, seed=0)
    ref = _heavy_ball_in_decimal(X, y, w0, alpha, 0.9, k)
    # cond(X^T X) = 3e3: the reference's eigh and the kernel's SVD differ by up to
    # eps cond(X^T X) ~ 7e-13 in the smallest eigendirection (measured in all: 1.3e-14)
    assert_close(ls.heavy_ball_closed_form(X, y, w0, alpha, 0.9, k), ref,
                 kernel="heavy_ball_closed_form", reference="60-digit augmented recurrence",
                 what=f"alpha={alpha:g} k={k}",
                 tol=Tol(rtol=1e-12, atol=1e-12 * ref.abs().max().item()))


# --- bad input -----------------------------------------------------------------------

X3, Y3, W3 = torch.ones(4, 3, dtype=F64), torch.ones(4, dtype=F64), torch.ones(3, dtype=F64)
BAD = [
    ("w wrong size", lambda: ls.gradient(X3, torch.ones(2, dtype=F64), Y3), ValueError,
     r"w: expected shape \(3,\) for X of shape \(4, 3\), got \(2,\)"),
    ("y wrong size", lambda: ls.minimizer(X3, torch.ones(5, dtype=F64)), ValueError,
     r"y: expected shape \(4,\) for X of shape \(4, 3\), got \(5,\)"),
    ("X 1-D", lambda: ls.minimizer(torch.ones(4, dtype=F64), Y3), ValueError,
     r"X: expected a 2-D tensor, got shape \(4,\)"),
    ("w0 wrong size", lambda: ls.gd_closed_form(X3, Y3, torch.ones(4, dtype=F64), 0.1, 3),
     ValueError, r"w0: expected shape \(3,\)"),
    ("alpha <= 0", lambda: ls.gd_closed_form(X3, Y3, W3, 0.0, 3), ValueError,
     r"alpha: expected a positive step size, got 0.0"),
    ("negative k", lambda: ls.gd_closed_form(X3, Y3, W3, 0.01, -1), ValueError,
     r"k: iteration counts must be >= 0"),
    ("float k", lambda: ls.gd_closed_form(X3, Y3, W3, 0.01, 2.5), TypeError, r"k: expected an int"),
    ("mixed dtype", lambda: ls.gradient(X3, W3.float(), Y3), TypeError,
     r"w: dtype torch.float32 does not match X"),
    ("grads shape", lambda: ls.momentum_form1(torch.ones(5, 2, dtype=F64), W3, 0.1, 0.9),
     ValueError, r"grads: expected shape \(k, 3\) for theta0 of shape \(3,\), got \(5, 2\)"),
    ("beta", lambda: ls.momentum_form2(torch.ones(5, 3, dtype=F64), W3, 0.1, 1.0), ValueError,
     r"beta: expected a momentum 0 <= beta < 1, got 1.0"),
    ("beta string", lambda: ls.momentum_form1(torch.ones(5, 3, dtype=F64), W3, 0.1, "0.9"),
     TypeError, r"beta: expected a momentum 0 <= beta < 1 \(a real number\), got str"),
    ("alpha vector", lambda: ls.gd_closed_form(X3, Y3, W3, torch.ones(2), 3), TypeError,
     r"alpha: expected a positive step size \(a number or a 0-d real tensor\)"),
    ("alpha nan", lambda: ls.gd_iterates(X3, Y3, W3, float("nan"), 3), ValueError,
     r"alpha: expected a finite step size"),
    ("heavy-ball k negative", lambda: ls.heavy_ball_iterates(X3, Y3, W3, 0.01, 0.5, -1),
     ValueError, r"k: iteration counts must be >= 0, got \[-1\]"),
    ("heavy-ball k float", lambda: ls.heavy_ball_iterates(X3, Y3, W3, 0.01, 0.5, 2.5),
     TypeError, r"k: expected an int"),
    ("heavy-ball k list", lambda: ls.heavy_ball_iterates(X3, Y3, W3, 0.01, 0.5, [1, 2]),
     TypeError, r"k: heavy_ball_iterates takes one iteration count"),
    ("heavy-ball beta", lambda: ls.heavy_ball_iterates(X3, Y3, W3, 0.01, 1.5, 3), ValueError,
     r"beta: expected a momentum 0 <= beta < 1, got 1.5"),
    ("nan in y", lambda: ls.gd_closed_form(X3, torch.tensor([1, float("nan"), 1, 1],
                                                            dtype=F64), W3, 0.01, 3),
     ValueError, r"y: expected finite values, got 1 NaN or inf \(the first at index \(1,\)"),
    ("inf in X", lambda: ls.minimizer(X3.clone().index_put_((torch.tensor([2]),
                                                             torch.tensor([1])),
                                                            torch.tensor(float("inf"),
                                                                         dtype=F64)), Y3),
     ValueError, r"X: expected finite values, got 1 NaN or inf \(the first at index \(2, 1\)"),
    ("nan in w0", lambda: ls.heavy_ball_closed_form(X3, Y3, torch.full((3,), float("nan"),
                                                                       dtype=F64),
                                                    0.01, 0.5, 3),
     ValueError, r"w0: expected finite values, got 3 NaN or inf"),
    ("nan in grads", lambda: ls.momentum_form2(torch.full((5, 3), float("nan"), dtype=F64),
                                               W3, 0.1, 0.5),
     ValueError, r"grads: expected finite values"),
    ("half X to linalg", lambda: ls.gd_closed_form(X3.half(), Y3.half(), W3.half(), 0.01, 3),
     TypeError, r"X: dtype torch.float16 cannot be factored by torch.linalg"),
    ("bfloat16 X to minimizer", lambda: ls.minimizer(X3.bfloat16(), Y3.bfloat16()), TypeError,
     r"X: dtype torch.bfloat16 cannot be factored"),
    ("integer X", lambda: ls.gradient(X3.long(), W3.long(), Y3.long()), TypeError,
     r"X: expected a floating-point tensor, got dtype torch.int64"),
    # None is not "not given" where w, w0 or y is required (spectrum's y alone is optional)
    ("gradient w None", lambda: ls.gradient(X3, None, Y3), TypeError,
     r"^w: expected a torch.Tensor, got NoneType$"),
    ("loss w None", lambda: ls.loss(X3, None, Y3), TypeError,
     r"^w: expected a torch.Tensor, got NoneType$"),
    ("gradient y None", lambda: ls.gradient(X3, W3, None), TypeError,
     r"^y: expected a torch.Tensor, got NoneType$"),
    ("gd_iterates w0 None", lambda: ls.gd_iterates(X3, Y3, None, 1e-3, 3), TypeError,
     r"^w0: expected a torch.Tensor, got NoneType$"),
    ("gd_closed_form w0 None", lambda: ls.gd_closed_form(X3, Y3, None, 1e-3, 10), TypeError,
     r"^w0: expected a torch.Tensor, got NoneType$"),
    ("gd_closed_form w0 None, no k", lambda: ls.gd_closed_form(X3, Y3, None, 1e-3, []),
     TypeError, r"^w0: expected a torch.Tensor, got NoneType$"),
    ("gd_closed_form y None", lambda: ls.gd_closed_form(X3, None, W3, 1e-3, 10), TypeError,
     r"^y: expected a torch.Tensor, got NoneType$"),
    ("heavy_ball_iterates w0 None", lambda: ls.heavy_ball_iterates(X3, Y3, None, 1e-3, 0.9, 3),
     TypeError, r"^w0: expected a torch.Tensor, got NoneType$"),
    ("heavy_ball_closed_form w0 None",
     lambda: ls.heavy_ball_closed_form(X3, Y3, None, 1e-3, 0.9, 3), TypeError,
     r"^w0: expected a torch.Tensor, got NoneType$"),
    ("heavy_ball_iterates y None", lambda: ls.heavy_ball_iterates(X3, None, W3, 1e-3, 0.9, 3),
     TypeError, r"^y: expected a torch.Tensor, got NoneType$"),
    ("minimizer y None", lambda: ls.minimizer(X3, None), TypeError,
     r"^y: expected a torch.Tensor, got NoneType$"),
]


def test_spectrum_takes_y_as_optional():
    """None is "not given" for spectrum's y (and its callers without y), nowhere else."""
    X = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]], dtype=F64)
    sp = ls.spectrum(X, None, method="svd")
    assert sp.Xty_v is None and sp.lam.tolist() == [16.0, 9.0]
    assert ls.spectral_radius(X, 0.1) == pytest.approx(0.6)  # |1 - 0.1 * 16|
    assert ls.converges(X, 0.1)


def test_numbers_are_accepted_alike_as_python_numpy_and_0d_tensors():
    """alpha and beta as a Python float, a numpy scalar or a 0-d tensor give one result;
    k as a Python or numpy int too."""
    np = pytest.importorskip("numpy")
    X, y = _tall(20, 3)
    w0 = torch.zeros(3, dtype=F64)
    want = ls.heavy_ball_closed_form(X, y, w0, 0.02, 0.5, 7)
    for alpha, beta, k in [(np.float32(0.02), np.float64(0.5), np.int64(7)),
                           (torch.tensor(0.02, dtype=F64), torch.tensor(0.5), 7),
                           (0.02, 0.5, np.int32(7))]:
        got = ls.heavy_ball_closed_form(X, y, w0, alpha, beta, k)
        assert_close(got, want, kernel="heavy_ball_closed_form(numpy/tensor numbers)",
                     reference="heavy_ball_closed_form(floats)",
                     tol=Tol(rtol=1e-6, atol=1e-9), kind="grad")  # np.float32 alpha rounds
        it = ls.heavy_ball_iterates(X, y, w0, alpha, beta, k)
        assert it.shape == (8, 3) and torch.isfinite(it).all()
    grads = torch.randn(4, 3, dtype=F64)
    assert torch.equal(ls.momentum_form1(grads, w0, np.float64(0.1), torch.tensor(0.5)),
                       ls.momentum_form1(grads, w0, 0.1, 0.5))


@pytest.mark.parametrize("call,error,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gives_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# -- the Gram path (CUDA's default), tested on the CPU -------------------------------------

def _tall(n, d, cond=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    if cond is not None:  # singular values spread geometrically from 1 to 1/cond
        U, _, Vh = torch.linalg.svd(X, full_matrices=False)
        s = torch.logspace(0, -math.log10(cond), d, dtype=torch.float64)
        X = U @ torch.diag(s) @ Vh
    y = torch.randn(n, generator=g, dtype=torch.float64)
    return X.to(dtype), y.to(dtype)


def test_the_gram_spectrum_is_the_svd_spectrum_on_a_well_conditioned_X():
    X, y = _tall(300, 40)
    g, s = ls.spectrum(X, y, method="gram"), ls.spectrum(X, y, method="svd")
    assert (g.method, s.method) == ("gram", "svd") and g.rank == s.rank == 40
    assert_close(g.lam, s.lam, kernel="spectrum(gram).lam", reference="spectrum(svd).lam",
                 tol=Tol(rtol=1e-13, atol=0), kind="grad")
    # V diag(lam) V^T is X^T X and V (V^T X^T y) is X^T y: eigenvectors up to sign agree
    assert_close(g.V @ torch.diag(g.lam) @ g.V.t(), X.t() @ X, kernel="gram V lam V^T",
                 reference="X^T X", tol=Tol(rtol=1e-13, atol=1e-12), kind="grad")
    assert_close(g.V @ g.Xty_v, X.t() @ y, kernel="gram V b", reference="X^T y",
                 tol=Tol(rtol=1e-13, atol=1e-12), kind="grad")
    assert torch.all(g.lam[:-1] >= g.lam[1:])  # descending, as the SVD's


@pytest.mark.parametrize("case", ["ill_conditioned", "rank_deficient", "wide"])
def test_the_gram_path_falls_back_to_the_svd_where_it_would_lose_accuracy(case):
    if case == "ill_conditioned":  # cond(X) = 100: cond(X^T X) = 1e4 > GRAM_MAX_COND
        X, y = _tall(300, 40, cond=100.0)
    elif case == "rank_deficient":
        X, y = _tall(300, 40)
        X[:, -1] = X[:, 0] + X[:, 1]
    else:
        X, y = _tall(20, 40)
    assert ls.spectrum(X, y, method="gram").method == "svd"
    # just inside the bound the Gram path is taken
    X, _ = _tall(300, 40, cond=math.sqrt(ls.GRAM_MAX_COND) * 0.99)
    assert ls.spectrum(X, method="gram").method == "gram"


def test_auto_takes_the_svd_on_the_cpu_and_the_gram_path_on_cuda():
    X, y = _tall(300, 40)
    assert ls.spectrum(X, y).method == "svd"
    assert ls._auto_method(types.SimpleNamespace(device=torch.device("cuda"))) == "gram"
    assert ls._auto_method(types.SimpleNamespace(device=torch.device("cpu"))) == "svd"
    if torch.cuda.is_available():
        assert ls.spectrum(X.cuda(), y.cuda()).method == "gram"
    with pytest.raises(ValueError, match="method: expected one of"):
        ls.spectrum(X, y, method="qr")


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-14), (torch.float32, 2e-5)],
                         ids=["float64", "float32"])
def test_closed_forms_by_the_gram_path_match_the_loops(monkeypatch, dtype, rtol):
    """CUDA's path, on the CPU at a reduced size (N=2048, D=256; the GPU grid runs
    N=4096-20000), as accurate against the loop as the SVD path: GD at k = 10^4 and
    heavy-ball momentum at k = 500."""
    monkeypatch.setattr(ls, "_auto_method", lambda X: "gram")
    X, y = _tall(2048, 256, dtype=dtype)
    w0 = torch.zeros(256, dtype=dtype)
    alpha = 1.0 / float(torch.linalg.eigvalsh((X.t() @ X).double()).max())
    assert ls.spectrum(X, y).method == "gram"
    k = 10_000
    loop = ls.gd_iterates(X, y, w0, alpha, k)[-1]
    closed = ls.gd_closed_form(X, y, w0, alpha, k)
    err = float((closed - loop).norm() / loop.norm())
    assert err <= rtol, f"gram closed form vs loop: relative {err:.2e} > {rtol:.0e}"
    hb_loop = ls.heavy_ball_iterates(X, y, w0, alpha, 0.5, 500)[-1]
    hb = ls.heavy_ball_closed_form(X, y, w0, alpha, 0.5, 500)
    err = float((hb - hb_loop).norm() / hb_loop.norm())
    assert err <= rtol, f"gram heavy-ball vs loop: relative {err:.2e} > {rtol:.0e}"


def test_the_gram_path_falls_back_for_an_all_zero_X_and_just_past_its_bound():
    X = torch.zeros(10, 3, dtype=F64)
    y = torch.ones(10, dtype=F64)
    assert ls.spectrum(X, y, method="gram").method == "svd"  # every eigenvalue 0
    assert torch.equal(ls.minimizer(X, y), torch.zeros(3, dtype=F64))
    X, _ = _tall(300, 40, cond=math.sqrt(ls.GRAM_MAX_COND) * 1.02)  # cond(X^T X) ~ 266
    assert ls.spectrum(X, method="gram").method == "svd"


def test_inside_a_graph_the_gram_path_gives_way_to_the_svd(monkeypatch):
    """The Gram path reads cond(X^T X) on the host to choose; a compiled closed form
    cannot, so it takes the SVD (compiles whole, and equals the eager result)."""
    monkeypatch.setattr(ls, "_auto_method", lambda X: "gram")
    X, y = _tall(40, 4)
    w0 = torch.zeros(4, dtype=F64)
    torch._dynamo.reset()
    compiled = torch.compile(lambda: ls.gd_closed_form(X, y, w0, 0.01, 50), fullgraph=True,
                             backend="aot_eager")
    assert_close(compiled(), ls.gd_closed_form(X, y, w0, 0.01, 50),
                 kernel="compiled gd_closed_form", reference="eager gd_closed_form",
                 tol=Tol(rtol=1e-12, atol=1e-14), kind="grad")


# --- iterates that cannot be allocated ------------------------------------------------


def _iterate_calls(k):
    X = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, w0 = torch.ones(6, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    return [("gd_iterates", "gd_closed_form", lambda: ls.gd_iterates(X, y, w0, 0.01, k)),
            ("heavy_ball_iterates", "heavy_ball_closed_form",
             lambda: ls.heavy_ball_iterates(X, y, w0, 0.01, 0.5, k))]


def test_iterates_past_the_memory_are_refused_by_name_before_allocating():
    """k = 10**12 asked the allocator for 24 TB (its raw RuntimeError): a ValueError naming
    k, the size and the closed form; 10**30 (past int64) the same."""
    for k, size in ((10**12, "24 TB"), (10**30, "2.4e+16 PB")):
        for name, closed, call in _iterate_calls(k):
            with pytest.raises(ValueError, match=(
                    rf"^k: {name} keeps all k \+ 1 iterates, a \({k + 1}, 3\) torch.float64 "
                    rf"tensor of {re.escape(size)} for k = {k}, more than the .* of cpu memory "
                    rf"this machine has; for w_k alone take {closed}\(X, y, w0, alpha, ")):
                call()


def test_iterates_above_the_floor_are_made_while_they_fit(monkeypatch):
    """Past _ALLOC_FLOOR the device's memory decides: within it the loop runs; past it (or
    past int64 where the memory is not known) k is refused."""
    monkeypatch.setattr(ls, "_ALLOC_FLOOR", 0)
    monkeypatch.setattr(ls, "_device_memory", lambda device: 1000)
    for name, _, call in _iterate_calls(5):  # 6 x 3 x 8 = 144 bytes
        assert call().shape == (6, 3), name
    for name, _, call in _iterate_calls(41):  # 42 x 3 x 8 = 1008 bytes
        with pytest.raises(ValueError, match=rf"^k: {name} .* tensor of 1.01 KB for k = 41, "
                           r"more than the 1 KB of cpu memory this machine has"):
            call()
    monkeypatch.setattr(ls, "_device_memory", lambda device: None)
    for name, _, call in _iterate_calls(2**61):
        with pytest.raises(ValueError, match=rf"^k: {name} .* more than what torch can "
                           r"index; "):
            call()


def test_device_memory_of_cpu_cuda_and_others(monkeypatch):
    assert ls._device_memory(torch.device("cpu")) > 2**20
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(total_memory=80 * 2**30))
    assert ls._device_memory(torch.device("cuda:0")) == 80 * 2**30
    assert ls._device_memory(torch.device("mps")) is None
    monkeypatch.setattr(os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert ls._device_memory(torch.device("cpu")) is None


@pytest.mark.parametrize("iterate", [
    lambda X, y, w0, k: ls.gd_iterates(X, y, w0, 0.1, k),
    lambda X, y, w0, k: ls.heavy_ball_iterates(X, y, w0, 0.1, 0.5, k),
], ids=["gd_iterates", "heavy_ball_iterates"])
def test_iterates_with_no_coordinates_take_no_steps(iterate):
    # D = 0: every iterate is empty, and k of them need no arithmetic (k = 10**12 had looped
    # 10**12 times: its 0 bytes passed the memory check)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    X, y = torch.randn(5, 0, dtype=F64), torch.randn(5, dtype=F64)
    w0 = torch.zeros(0, dtype=F64)
    with Ops() as ops:
        out = iterate(X, y, w0, 6)
    assert out.shape == (7, 0)
    assert not {"mm", "mv", "addmv", "addmm", "matmul"} & set(ops.names), ops.names
    assert iterate(X, y, w0, 10**12).shape == (10**12 + 1, 0)
