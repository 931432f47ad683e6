"""Least squares ``L(w) = 1/2 ||X w - y||^2`` (X is N x D), gradient descent on it in
closed form for any k, and the two forms of momentum.

Everything spectral goes through the eigendecomposition ``X^T X = V diag(lam) V^T``. In
that basis GD is D independent scalar recurrences ``c_{k+1} = (1 - alpha lam_i) c_k +
alpha b_i`` with ``b = V^T X^T y``, solved exactly. Two ways to take it (``spectrum``):

- ``"svd"``: from the SVD of X (same V, lam = s^2), so an ill-conditioned X does not have
  its condition number squared: relative error ~ eps cond(X). The CPU's way (LAPACK's
  SVD of a tall matrix costs about what ``torch.linalg.lstsq`` does there).
- ``"gram"``: ``torch.linalg.eigh`` of the D x D Gram matrix X^T X: error ~ eps cond(X)^2.
  On CUDA the SVD of a tall matrix is 8 to 12x slower than ``lstsq`` (H100, N=4096-20000,
  D=1024-2000: ``../shared/gpu-h100/probe_lsq.json``) and the Gram matrix's eigh is
  0.6 to 1.4x ``lstsq``. Taken only when X is tall and cond(X^T X) <= GRAM_MAX_COND
  (its error then within 16x of the SVD's); otherwise (ill-conditioned, rank-deficient,
  wide) the SVD is taken instead. The default on CUDA.

Extreme scales: ``lam = sigma^2`` underflows to 0 for sigma(X) below ~1e-154 and overflows
to inf above ~1e154 (float64), where ``alpha lam`` and ``alpha b`` need not. The closed
forms, ``converges`` and ``spectral_radius`` therefore never form lam or b: they take
``alpha lam = (alpha sigma) sigma`` and ``alpha b = (alpha sigma) U^T y`` from the singular
values ``Spectrum.sigma`` and ``Spectrum.Uty`` (alpha sigma is finite wherever alpha lam
is, and two roundings as before), so GD on ``(c X, c y, w0, alpha / c^2)`` gives ``w_k`` of
``(X, y, w0, alpha)`` for any power of two c whose step size is representable.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from handgrad.kernels._checks import (
    _ALLOC_FLOOR,
    _bytes_str,
    _device_memory,
    check_all_finite,
    check_finite,
    check_same,
    check_tensor,
    host,
    in_graph,
    real_number,
    shape_str,
)


class DivergenceWarning(RuntimeWarning):
    """The step size is outside the region where the iteration converges."""


# --- checks -------------------------------------------------------------------------


_LAPACK_DTYPES = (torch.float32, torch.float64)


def _check_problem(X, y=None, w=None, w_name: str | None = "w", *, linalg: bool = False):
    """Shapes, dtypes and devices of X (N, D), y (N,) and w (D,); with ``linalg``, a dtype
    torch.linalg can factor. Every value finite (said per argument), except inside a graph
    (``in_graph``: no value can be read there).

    ``w_name``: what the caller calls w ("w", "w0"); y and w are then required (None is a
    TypeError naming it). None: a problem without w (``spectrum``), where y is optional.
    Tested only when y or w is None: nothing added to a call that gives both."""
    X = check_tensor("X", X, ndims=(2,))
    if linalg and X.dtype not in _LAPACK_DTYPES:
        raise TypeError(f"X: dtype {X.dtype} cannot be factored by torch.linalg (LAPACK, "
                        "cuSOLVER); expected float32 or float64")
    n, d = X.shape
    if y is not None or w_name is not None:  # y None given where it is required: refused
        y = check_tensor("y", y, ndims=(1,))
        check_same("y", y, "X", X)
        if y.shape[0] != n:
            raise ValueError(f"y: expected shape ({n},) for X of shape {shape_str(X)}, got "
                             f"{shape_str(y)}")
    if w is not None or w_name is not None:
        w = check_tensor(w_name, w, ndims=(1,))
        check_same(w_name, w, "X", X)
        if w.shape[0] != d:
            raise ValueError(f"{w_name}: expected shape ({d},) for X of shape {shape_str(X)}, "
                             f"got {shape_str(w)}")
    check_all_finite([("X", X), ("y", y), (w_name, w)])  # one read to the host
    return X, y, w


def _check_alpha(alpha) -> float:
    alpha = real_number("alpha", alpha, "a positive step size")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha: expected a finite step size, got {alpha!r}")
    if not alpha > 0:
        raise ValueError(f"alpha: expected a positive step size, got {alpha!r}")
    return alpha


def _check_beta(beta) -> float:
    beta = real_number("beta", beta, "a momentum 0 <= beta < 1")
    if not 0 <= beta < 1:
        raise ValueError(f"beta: expected a momentum 0 <= beta < 1, got {beta!r}")
    return beta


def _check_k(k) -> tuple[list[int], bool]:
    """k as a list of Python ints (iteration counts), and whether one was given alone.
    Checked on the host, in Python: no tensor op, so a compiled kernel has no graph break
    here when k is an int (a tensor k is read to the host once)."""
    single = isinstance(k, numbers.Integral) and not isinstance(k, bool)
    if isinstance(k, torch.Tensor):
        if (k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool
                or k.dim() > 1):
            raise TypeError(f"k: expected an int or a 1-D integer tensor, got {k.dtype} "
                            f"of shape {shape_str(k)}")
        single = k.dim() == 0
        ks = [int(v) for v in k.reshape(-1).tolist()]
    elif single:
        ks = [int(k)]
    elif isinstance(k, Sequence) and not isinstance(k, str) and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in k):
        ks = [int(v) for v in k]
    else:
        raise TypeError(f"k: expected an int, a sequence of ints or an integer tensor, got {k!r}")
    if any(v < 0 for v in ks):
        raise ValueError(f"k: iteration counts must be >= 0, got {ks}")
    return ks, single


def _check_iterates_fit(what: str, nbytes: int, k: int, w0: torch.Tensor,
                        closed: str) -> None:
    """The (k+1, D) iterates of ``what`` (nbytes) fit the device's memory (int64 indexing
    where it is not known), else a ValueError naming k, the size and the closed form to
    take instead: asked before allocating, not torch's allocator error. Called only above
    _ALLOC_FLOOR bytes (the loops' own cost: one multiply and a compare)."""
    memory = _device_memory(w0.device)
    limit = memory if memory is not None else 2 ** 63 - 1
    if nbytes > limit:
        where = (f"the {_bytes_str(memory)} of {w0.device.type} memory this machine has"
                 if memory is not None else "what torch can index")
        raise ValueError(
            f"k: {what} keeps all k + 1 iterates, a ({k + 1}, {w0.shape[0]}) {w0.dtype} "
            f"tensor of {_bytes_str(nbytes)} for k = {k}, more than {where}; for w_k alone "
            f"take {closed} (any k, without iterating)")


# the largest k whose float64 value is k itself and keeps its parity
_EXACT_K = 2 ** 53


def _k_float(k: int) -> float:
    """k as a float64 value; inf beyond float64's range (where mu^k is its limit)."""
    try:
        return float(k)
    except OverflowError:
        return math.inf


def _one_k(k, what: str) -> int:
    ks, single = _check_k(k)
    if not single:
        raise TypeError(f"k: {what} takes one iteration count, got {ks}")
    return ks[0]


# Inside a graph (``kernels._checks.in_graph``: torch.compile, CUDA-graph capture) the
# checks that read values (finite inputs, divergence warnings, the overflow error, the Gram
# path's condition number) are not made. The result still carries any inf.


# --- the spectrum ---------------------------------------------------------------------


@dataclass(frozen=True)
class Spectrum:
    """``X^T X = V diag(lam) V^T``; ``rank`` eigenvalues are treated as nonzero.

    ``lam = sigma^2``: for X of 1e-200 lam rounds to 0 (or a subnormal) where sigma, the
    rank and V are still exact; ``spectrum`` refuses a lam or Xty_v that overflows."""

    V: torch.Tensor  # (D, D), orthonormal columns
    lam: torch.Tensor  # (D,), descending, exact zeros past the rank
    nonzero: torch.Tensor  # (D,) bool: lam_i treated as nonzero (the first ``rank``)
    Xty_v: torch.Tensor | None  # V^T X^T y, zero past the rank, when y was given
    method: str = "svd"  # how it was taken: "svd" or "gram" (``spectrum``)
    # (D,) singular values of X, sqrt(lam), exact zeros past the rank (finite where lam
    # under/overflows); None only in a Spectrum made by hand
    sigma: torch.Tensor | None = None
    # (D,) U^T y (Xty_v = sigma Uty), zero past the rank, when y was given
    Uty: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.nonzero.sum())

    @property
    def lam_max(self) -> float:
        return float(host(self.lam[0])) if self.lam.numel() else 0.0


# the Gram path's error, eps cond(X)^2, is within 16x of the SVD's, eps cond(X), while
# cond(X) <= 16, i.e. cond(X^T X) <= 256
GRAM_MAX_COND = 256.0
METHODS = ("auto", "svd", "gram")


def spectrum(X: torch.Tensor, y: torch.Tensor | None = None, method: str = "auto") -> Spectrum:
    """Eigendecomposition of X^T X, with numerically-zero eigenvalues set to exactly zero,
    and V^T X^T y when y is given.

    ``method``: "svd" (from the SVD of X: s_i <= max(N, D) eps s_max count as zero, and
    V^T X^T y = s_i (U^T y)_i), "gram" (eigh of X^T X when X is tall and cond(X^T X) <=
    GRAM_MAX_COND, else the SVD), or "auto": "gram" on CUDA, "svd" elsewhere (the module's
    docstring says why). ``Spectrum.method`` says which was taken.
    """
    X, y, _ = _check_problem(X, y, None, None, linalg=True)  # no w; y optional
    sp = _spectrum(X, y, method)
    if not in_graph():  # finite X, y: an inf is sigma^2 (or sigma U^T y) past the range
        for name, t in (("lam", sp.lam), ("Xty_v", sp.Xty_v)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise OverflowError(
                    f"spectrum: {name} overflows {t.dtype} (largest "
                    f"{torch.finfo(t.dtype).max:.3g}; sigma_max(X) = "
                    f"{float(host(sp.sigma[0])):.3g}) though X and y are finite; scale X "
                    "(and y) by a power of two c: lam scales by c^2")
    return sp


def _spectrum(X: torch.Tensor, y: torch.Tensor | None, method: str = "auto") -> Spectrum:
    """``spectrum`` of X and y already checked (by the caller's ``_check_problem``), lam
    and Xty_v as they come (inf where they overflow: the callers use sigma and Uty)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if method == "auto":
        method = _auto_method(X)
    if method == "gram" and not in_graph():  # its fallback reads cond(X^T X) to the host
        sp = _gram_spectrum(X, y)
        if sp is not None:
            return sp
    return _svd_spectrum(X, y)


def _auto_method(X: torch.Tensor) -> str:
    return "gram" if X.device.type == "cuda" else "svd"


def _gram_spectrum(X: torch.Tensor, y: torch.Tensor | None) -> Spectrum | None:
    """eigh of X^T X, or None when X is wide or cond(X^T X) > GRAM_MAX_COND (rank-deficient
    X included: its Gram eigenvalues at zero are rounding noise, and the SVD decides), or
    X^T X leaves the dtype's normal range (X of 1e-160: subnormal, its eigenvalues lose
    digits; 1e160: inf, eigh fails or gives NaN): the SVD of X is exact at any scale."""
    n, d = X.shape
    if n < d or X.numel() == 0:
        return None
    try:
        lam, V = torch.linalg.eigh(X.t() @ X)  # ascending
    except torch.linalg.LinAlgError:  # X^T X overflowed: an inf entry
        return None
    lam_min, lam_max = (float(v) for v in host(lam[[0, -1]]))
    # lam_min above tiny / eps: each Gram entry's underflow (N products below tiny, N <
    # 1/eps) stays under eps lam_min; NaN (an inf entry) fails the comparison
    if not lam_min > _GRAM_FLOOR[X.dtype] or lam_max > GRAM_MAX_COND * lam_min:
        return None
    lam, V = lam.flip(0), V.flip(1)
    sigma = lam.sqrt()
    xty = uty = None
    if y is not None:
        xty = V.t() @ (X.t() @ y)
        uty = xty / sigma
    return Spectrum(V=V, lam=lam, nonzero=torch.ones_like(lam, dtype=torch.bool), Xty_v=xty,
                    method="gram", sigma=sigma, Uty=uty)


_GRAM_FLOOR = {dt: torch.finfo(dt).tiny / torch.finfo(dt).eps for dt in _LAPACK_DTYPES}


def _svd_spectrum(X: torch.Tensor, y: torch.Tensor | None) -> Spectrum:
    n, d = X.shape
    # a square V needs full matrices only when N < D; for tall X that would be an N x N U
    U, s, Vh = torch.linalg.svd(X, full_matrices=n < d)
    m = s.shape[0]  # min(N, D); the SVD's s is descending
    eps = torch.finfo(X.dtype).eps
    # numerically zero: s_i <= max(N, D) eps s_max; a tensor comparison (no host read), so
    # the rank is a mask and the same code runs eagerly, compiled and captured
    keep = s > max(n, d) * eps * s[:1].amax() if m else s > 0
    sigma = X.new_zeros(d)
    sigma[:m] = torch.where(keep, s, 0)
    lam = sigma * sigma  # under/overflows at X of 1e-160/1e160: the callers take sigma
    nonzero = torch.zeros(d, dtype=torch.bool, device=X.device)
    nonzero[:m] = keep
    xty = uty = None
    if y is not None:
        uty = X.new_zeros(d)
        uty[:m] = torch.where(keep, U[:, :m].t() @ y, 0)
        xty = sigma * uty
    return Spectrum(V=Vh.t(), lam=lam, nonzero=nonzero, Xty_v=xty, method="svd", sigma=sigma,
                    Uty=uty)


def gradient(X: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(D,): grad L(w) = X^T (X w - y)."""
    X, y, w = _check_problem(X, y, w)
    return _no_overflow(X.t() @ (X @ w - y), "gradient", "X^T (X w - y)")


def loss(X: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L(w) = 1/2 ||X w - y||^2."""
    X, y, w = _check_problem(X, y, w)
    r = X @ w - y
    return _no_overflow(0.5 * (r @ r), "loss", "1/2 ||X w - y||^2")


def _no_overflow(t: torch.Tensor, what: str, formula: str) -> torch.Tensor:
    """``t``, or an OverflowError where it is not finite: its arguments were checked finite,
    so the result overflowed (X of 1e200). Not inside a graph (a read to the host)."""
    if not in_graph() and not bool(torch.isfinite(t).all()):
        raise OverflowError(f"{what}: {formula} overflows {t.dtype} (largest "
                            f"{torch.finfo(t.dtype).max:.3g}) though X, w and y are finite; "
                            "scale X and y")
    return t


def minimizer(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(D,): w* = (X^T X)^{-1} X^T y, or the least-norm minimiser when X^T X is singular."""
    if y is None:  # spectrum's y is optional; here it is required
        raise TypeError("y: expected a torch.Tensor, got NoneType")
    X, y, _ = _check_problem(X, y, None, None, linalg=True)
    # w*(X) = c w*(c X): X scaled by the power of two c that brings max |X| near 1 (exact),
    # so X^T X neither underflows to 0 (max |X| = 1e-200: w* was nan) nor overflows to inf
    # (1e200: w* was 0); a tensor op (the spectrum reads lam to the host, and the result's
    # finiteness is read below)
    top = math.frexp(torch.finfo(X.dtype).max)[1] - 1  # c <= 2^top: finite in X's dtype
    # exp2 in X's dtype (torch.ldexp before 2.5 took its power of two in float32: 2^-700
    # was 0, pytorch#133267); exact for an integer exponent
    c = torch.exp2((-torch.frexp(X.abs().amax())[1]).clamp(max=top).to(X.dtype)) \
        if X.numel() else 1.0
    sp = _spectrum(X * c, y)
    w = c * (sp.V @ torch.where(sp.nonzero, sp.Xty_v / torch.where(sp.nonzero, sp.lam, 1),
                                0))
    if not in_graph() and w.numel() and not bool(torch.isfinite(w).all()):
        # X and y are finite (checked): w* itself lies past the dtype's range (y huge
        # against a small X), or X^T y overflowed on the way
        raise OverflowError(
            f"minimizer: w* overflows {w.dtype}'s range (largest "
            f"{torch.finfo(w.dtype).max:.3g}) though X and y are finite (max |X| = "
            f"{float(host(X.abs().amax())):.3g}, max |y| = {float(host(y.abs().amax())):.3g}): "
            "scale y down (w* scales with y)"
            + ("" if w.dtype == torch.float64 else ", or compute in float64"))
    return w


def spectral_radius(X: torch.Tensor, alpha: float) -> float:
    """max_i |1 - alpha lam_i| over every eigenvalue of X^T X, zeros included.

    GD converges iff this is < 1. With rank(X) < D some lam_i = 0 and the radius is 1:
    the null-space part of w0 then never moves while the rest converges (see
    ``converges``).
    """
    alpha = _check_alpha(alpha)
    X, _, _ = _check_problem(X, None, None, None, linalg=True)
    sigma = _spectrum(X, None).sigma
    if not sigma.shape[0]:  # D = 0: no eigenvalue, the max over none is 0 (converges: True)
        return 0.0
    # alpha lam as (alpha sigma) sigma: lam itself under/overflows at X of 1e-200/1e200
    radius = float(host((1 - (alpha * sigma) * sigma).abs().max()))
    if not in_graph() and not math.isfinite(radius):  # finite X, alpha: alpha lam overflowed
        raise OverflowError(f"spectral_radius: |1 - alpha lambda_max| overflows {sigma.dtype} "
                            f"(alpha = {alpha:g}, X of max |X| = "
                            f"{float(host(X.abs().amax())):g}); GD diverges far beyond it")
    return radius


def converges(X: torch.Tensor, alpha: float) -> bool:
    """Whether GD reaches a minimiser from every w0: 0 < alpha < 2 / lambda_max(X^T X)."""
    alpha = _check_alpha(alpha)
    X, _, _ = _check_problem(X, None, None, None, linalg=True)
    return not _at_or_past(_alpha_lam(alpha, _sigma_max(_spectrum(X, None))), 2)


# alpha = 2 / lambda_max computed by the caller from another eigen-solver lands a few ulps
# either side of the boundary; count those as on it (where the iteration does not converge)
_BOUNDARY = 1 - 16 * torch.finfo(torch.float64).eps


def _at_or_past(x: float, bound: float) -> bool:
    return x >= bound * _BOUNDARY


def _sigma_max(X: torch.Tensor | Spectrum) -> float:
    """sigma_max(X), from the singular values alone (a Spectrum's: 0 at rank 0)."""
    if isinstance(X, Spectrum):
        return float(host(X.sigma[0])) if X.sigma.numel() else 0.0
    return float(host(torch.linalg.svdvals(X)[0])) if X.numel() else 0.0


def _alpha_lam(alpha: float, sigma: float) -> float:
    """alpha sigma^2 as (alpha sigma) sigma: finite wherever alpha lambda is, though lambda
    = sigma^2 is 0 at sigma = 1e-200 and inf at 1e200 (float64). Products, not ** 2: past
    float64's range a product is inf (and the warning says so), where Python's float ** 2
    raises a bare OverflowError (34, 'Numerical result out of range')."""
    return (alpha * sigma) * sigma


def _warn_if_divergent(alpha: float, sigma_max: Spectrum | float, what: str) -> None:
    if in_graph():
        return
    if isinstance(sigma_max, Spectrum):
        sigma_max = _sigma_max(sigma_max)
    a_lam = _alpha_lam(alpha, sigma_max)
    if a_lam > 0 and _at_or_past(a_lam, 2):
        warnings.warn(
            f"{what}: alpha = {alpha:g} >= 2 / lambda_max = {2 / sigma_max / sigma_max:g} "
            f"(|1 - alpha lambda_max| = {abs(1 - a_lam):g} >= 1): gradient "
            "descent does not converge",
            DivergenceWarning,
            stacklevel=3,
        )


def _finite_or_raise(t: torch.Tensor, what: str, alpha: float, where: str) -> torch.Tensor:
    if not in_graph() and not torch.isfinite(t).all():
        raise OverflowError(
            f"{what}: the iterates diverged past the range of {t.dtype} {where} "
            f"(alpha = {alpha:g} is outside the convergent region)"
        )
    return t


# --- gradient descent ---------------------------------------------------------------


def gd_iterates(X, y, w0, alpha: float, k: int) -> torch.Tensor:
    """(k+1, D): w_0, ..., w_k of w_{j+1} = w_j - alpha X^T (X w_j - y), by iterating."""
    X, y, w0 = _check_problem(X, y, w0, "w0", linalg=True)
    alpha = _check_alpha(alpha)
    k = _one_k(k, "gd_iterates")
    nbytes = (k + 1) * w0.shape[0] * w0.dtype.itemsize  # refused past the memory, by name
    if nbytes > _ALLOC_FLOOR:
        _check_iterates_fit("gd_iterates", nbytes, k, w0, "gd_closed_form(X, y, w0, alpha, k)")
    # the loop needs only lambda_max: singular values without vectors cost half an SVD
    if not in_graph():
        _warn_if_divergent(alpha, _sigma_max(X), "gd_iterates")
    out = w0.new_empty(k + 1, w0.shape[0])
    if not w0.shape[0]:  # no coordinates: k empty steps (10**12 of them had run)
        return out
    out[0] = w0
    Xty = X.t() @ y
    for j in range(k):
        w = out[j]
        out[j + 1] = w - alpha * (X.t() @ (X @ w) - Xty)
    return _finite_or_raise(out, "gd_iterates", alpha, f"within k = {k} steps")


def gd_closed_form(X, y, w0, alpha: float, k) -> torch.Tensor:
    """w_k without iterating: (D,) for an int k, (len(k), D) for a sequence of k (an empty
    one gives an empty (0, D) result).

    w_k = (I - alpha A)^k w_0 + alpha sum_{j<k} (I - alpha A)^j X^T y, A = X^T X. Per
    eigenvalue, with mu = 1 - alpha lam: c_k = mu^k c_0 + b (1 - mu^k) / lam, where
    mu^k = exp(k log1p(-alpha lam)) and 1 - mu^k = -expm1(k log1p(-alpha lam)) stay
    accurate when alpha lam is tiny and underflow harmlessly to 0 for huge k. Null-space
    directions (lam = 0) keep w_0's component. Rank-deficient X included.
    """
    X, y, w0 = _check_problem(X, y, w0, "w0", linalg=True)
    alpha = _check_alpha(alpha)
    ks, single = _check_k(k)
    if not ks:  # an empty sequence of counts: no iterates, (0, D)
        return w0.new_empty(0, w0.shape[0])
    sp = _spectrum(X, y)  # X, y checked above
    _warn_if_divergent(alpha, sp, "gd_closed_form")
    # k in float64 whatever X's dtype (float32 would make k >= 2**128 inf, and an odd
    # k > 2**24 even); beyond float64 (k > 1.8e308), inf: mu^k is then its limit
    big = max(ks) > _EXACT_K
    kk = torch.tensor([_k_float(k) for k in ks] if big else ks, device=X.device,
                      dtype=torch.float64).unsqueeze(1)  # (m, 1)
    c0 = sp.V.t() @ w0
    # alpha lam = (alpha sigma) sigma and alpha b = (alpha sigma) U^T y: finite where they
    # are, though lam and b under/overflow (X of 1e-200, 1e200; module docstring)
    a_sigma = alpha * sp.sigma
    a_lam = a_sigma * sp.sigma
    mu = 1 - a_lam
    pos = mu > 0
    # 0 < mu <= 1: via logs; mu <= 0 (alpha lam >= 1): mu^k directly, no cancellation there
    log_mu = torch.log1p(-a_lam.clamp(max=1 - torch.finfo(X.dtype).eps)).double()
    k_log_mu = kk * log_mu
    mu_k = mu.double().pow(kk)
    phi_k = kk.to(X.dtype)  # (1 - mu^k) / (alpha lam) -> k as k alpha lam -> 0
    if big:
        # mu = 1 (lam = 0): mu^k = 1 at k = inf too (inf * 0 is nan); an odd k above 2**53
        # is even in float64: the sign of a negative mu's power from k itself
        k_log_mu = torch.where(log_mu == 0, 0.0, k_log_mu)
        odd = torch.tensor([k % 2 == 1 for k in ks], device=X.device).unsqueeze(1)
        mu_k = torch.where(odd & (mu < 0), -mu_k.abs(), mu_k.abs())
        # alpha lam = 0 (null space, or below the dtype) at k = inf: mu^k = 1, no step
        phi_k = torch.where(phi_k.isinf() & (log_mu == 0), 0, phi_k)
    one_minus = torch.where(pos, -torch.expm1(k_log_mu), 1 - mu_k).to(X.dtype)
    mu_k = torch.where(pos, torch.exp(k_log_mu), mu_k).to(X.dtype)
    # the geometric sum (1 - mu^k) b / lam = phi alpha b, phi = (1 - mu^k) / (alpha lam);
    # phi = k where k alpha lam < eps (within eps of it), alpha lam = 0 included (lam
    # below the dtype, and the null space, where alpha b = 0)
    phi = torch.where(k_log_mu > -torch.finfo(X.dtype).eps, phi_k, one_minus / a_lam)
    w = (mu_k * c0 + phi * (a_sigma * sp.Uty)) @ sp.V.t()  # (m, D)
    _finite_or_raise(w, "gd_closed_form", alpha, f"at k = {max(ks)}")
    return w[0] if single else w


# --- momentum -------------------------------------------------------------------------


def _check_momentum(grads, theta0, alpha, beta):
    grads = check_tensor("grads", grads, ndims=(2,))
    theta0 = check_tensor("theta0", theta0, ndims=(1,))
    check_same("theta0", theta0, "grads", grads)
    if grads.shape[1] != theta0.shape[0]:
        raise ValueError(f"grads: expected shape (k, {theta0.shape[0]}) for theta0 of shape "
                         f"{shape_str(theta0)}, got {shape_str(grads)}")
    check_finite("grads", grads)
    check_finite("theta0", theta0)
    return grads, theta0, _check_alpha(alpha), _check_beta(beta)


def momentum_form1(grads, theta0, alpha: float, beta: float) -> torch.Tensor:
    """(k+1, n): heavy ball, theta_{j+1} = theta_j - alpha g_j + beta (theta_j - theta_{j-1}),
    theta_{-1} = theta_0, for a given gradient sequence grads (k, n)."""
    grads, theta0, alpha, beta = _check_momentum(grads, theta0, alpha, beta)
    out = theta0.new_empty(grads.shape[0] + 1, theta0.shape[0])
    out[0] = theta0
    prev = theta0
    for j, g in enumerate(grads):
        out[j + 1] = out[j] - alpha * g + beta * (out[j] - prev)
        prev = out[j]
    return _momentum_finite(out, "momentum_form1", alpha, beta)


def momentum_form2(grads, theta0, alpha: float, beta: float) -> torch.Tensor:
    """(k+1, n): v_{j+1} = g_j + beta v_j, theta_{j+1} = theta_j - alpha v_{j+1}, v_0 = 0
    (torch.optim.SGD's momentum with dampening 0), for a given gradient sequence."""
    grads, theta0, alpha, beta = _check_momentum(grads, theta0, alpha, beta)
    out = theta0.new_empty(grads.shape[0] + 1, theta0.shape[0])
    out[0] = theta0
    v = torch.zeros_like(theta0)
    for j, g in enumerate(grads):
        v = g + beta * v
        out[j + 1] = out[j] - alpha * v
    return _momentum_finite(out, "momentum_form2", alpha, beta)


def _momentum_finite(out: torch.Tensor, what: str, alpha: float, beta: float) -> torch.Tensor:
    """``out``, or an OverflowError naming the first step that overflowed: grads and theta0
    were checked finite. A coordinate once inf or NaN stays so (x + finite, inf - inf,
    0 inf; v likewise in form II), so the last row (n values) tells; the search of the
    (k+1, n) iterates only on the error's branch. Not inside a graph (a read to the host)."""
    if not in_graph() and not bool(torch.isfinite(out[-1]).all()):
        j = int(host((~torch.isfinite(out)).any(1).nonzero()[0, 0]))
        raise OverflowError(
            f"{what}: the iterates overflow {out.dtype} (largest "
            f"{torch.finfo(out.dtype).max:.3g}) at step {j} of {out.shape[0] - 1} though "
            f"grads and theta0 are finite (alpha = {alpha:g}, beta = {beta:g}); scale the "
            "gradients or alpha")
    return out


def heavy_ball_iterates(X, y, w0, alpha: float, beta: float, k: int) -> torch.Tensor:
    """(k+1, D): momentum (form I) on least squares, gradients taken at the iterates."""
    X, y, w0 = _check_problem(X, y, w0, "w0")
    alpha, beta = _check_alpha(alpha), _check_beta(beta)
    k = _one_k(k, "heavy_ball_iterates")
    nbytes = (k + 1) * w0.shape[0] * w0.dtype.itemsize  # refused past the memory, by name
    if nbytes > _ALLOC_FLOOR:
        _check_iterates_fit("heavy_ball_iterates", nbytes, k, w0,
                            "heavy_ball_closed_form(X, y, w0, alpha, beta, k)")
    out = w0.new_empty(k + 1, w0.shape[0])
    if not w0.shape[0]:  # no coordinates: k empty steps
        return out
    out[0] = w0
    prev = w0
    Xty = X.t() @ y
    for j in range(k):
        w = out[j]
        out[j + 1] = w - alpha * (X.t() @ (X @ w) - Xty) + beta * (w - prev)
        prev = w
    return _finite_or_raise(out, "heavy_ball_iterates", alpha, f"within k = {k} steps")


def heavy_ball_closed_form(X, y, w0, alpha: float, beta: float, k) -> torch.Tensor:
    """w_k of heavy-ball momentum on least squares without k iterations: (D,) for an int
    k, (len(k), D) for a sequence of k (an empty one gives an empty (0, D) result).

    Per eigenvalue, the progress d_j = c_j - c_0 (not the error from c*, which cancels
    against c* when the steps so far moved w little: alpha lam tiny) obeys d_{j+1} = d_j -
    alpha (lam d_j + g) + beta v_j, v_j = d_j - d_{j-1}, with g = lam c_0 - b the initial
    gradient and d_0 = v_0 = 0 (w_{-1} = w_0): an affine map M on [d, v, 1] whose
    E = M - I = [[-alpha lam, beta, -alpha g], [-alpha lam, beta - 1, -alpha g], [0, 0, 0]]
    keeps alpha lam to its own relative precision (M's 1 - alpha lam would round it away,
    and with it the rate at which w_k approaches w*). M^k - I by binary powering of
    K = M^n - I itself, never of M: K_{2n} = 2 K_n + K_n^2, K_{n+1} = E + M K_n (one
    product by M rounds K_{n+1} at eps, harmlessly), log2 k batched products; then
    d_k = K_k[0, 2] and w_k = w_0 + V d_k. Any k: a Python int, no int64 bound (K of a
    convergent iteration settles at its fixed point). Null-space directions (lam = b = 0,
    so g = 0) keep w0's component exactly. Converges iff 0 < alpha lam < 2 (1 + beta)
    for every nonzero lam.
    """
    X, y, w0 = _check_problem(X, y, w0, "w0", linalg=True)
    alpha, beta = _check_alpha(alpha), _check_beta(beta)
    ks, single = _check_k(k)
    if not ks:  # an empty sequence of counts: no iterates, (0, D)
        return w0.new_empty(0, w0.shape[0])
    sp = _spectrum(X, y)  # X, y checked above
    a_max = 0.0 if in_graph() else _alpha_lam(alpha, _sigma_max(sp))
    if a_max > 0 and _at_or_past(a_max, 2 * (1 + beta)):
        warnings.warn(
            f"heavy_ball_closed_form: alpha lambda_max = {a_max:g} >= "
            f"2 (1 + beta) = {2 * (1 + beta):g}: momentum does not converge",
            DivergenceWarning,
            stacklevel=2,
        )
    c0 = sp.V.t() @ w0
    a_sigma = alpha * sp.sigma  # neither lam nor b formed: gd_closed_form says why
    a_lam = a_sigma * sp.sigma
    # alpha times the initial gradient, per lam: alpha (lam c0 - b)
    a_g = a_lam * c0 - a_sigma * sp.Uty
    # E and every K = M^n - I have a zero last row: kept as their top two rows, (D, 2, 3),
    # batched over eigenvalues; K^2 = K[:, :, :2] K
    e = X.new_zeros(c0.shape[0], 2, 3)
    e[:, :, 0] = -a_lam.unsqueeze(1)
    e[:, 0, 1] = beta
    e[:, 1, 1] = beta - 1
    e[:, :, 2] = -a_g.unsqueeze(1)
    m = e[:, :, :2] + torch.eye(2, dtype=X.dtype, device=X.device)  # M's top-left block
    rows = []
    for kv in ks:
        if kv == 0:
            rows.append(torch.zeros_like(c0))
            continue
        km = e  # M^1 - I; then the bits of k after the leading one, most significant first
        for bit in bin(kv)[3:]:
            km = torch.baddbmm(km, km[:, :, :2], km, beta=2)  # K_2n = 2 K + K^2
            if bit == "1":
                km = torch.baddbmm(e, m, km)  # K_n+1 = E + M K
        rows.append(km[:, 0, 2])
    w = w0 + torch.stack(rows) @ sp.V.t()
    _finite_or_raise(w, "heavy_ball_closed_form", alpha, f"at k = {max(ks)}")
    return w[0] if single else w
