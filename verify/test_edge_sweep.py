"""Edge inputs an adversarial sweep found answered by a raw error from torch or Python, or by
a silent wrong result: each now gets a named error or the right answer."""

from __future__ import annotations

import math

import pytest
import torch

from handgrad.kernels import finite_diff as FD
from handgrad.kernels import least_squares as ls
from handgrad.kernels import mlp
from handgrad.kernels.backprop import backprop

F64 = torch.float64


def _problem(n=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, generator=g, dtype=F64)
    w0 = torch.randn(d, generator=g, dtype=F64)
    return X, y, w0


# -- least squares ------------------------------------------------------------------------


def test_gd_iterates_with_a_lambda_max_past_float_range_names_the_divergence():
    """sigma_max = 1e200: sigma_max^2 is past float64's range. Python's float ** 2 raised a
    bare OverflowError (34, 'Numerical result out of range') that named nothing."""
    X, y, w0 = _problem()
    with pytest.warns(ls.DivergenceWarning):
        with pytest.raises(OverflowError, match=r"gd_iterates: the iterates diverged"):
            ls.gd_iterates(X * 1e200, y, w0, 0.1, 3)
    with pytest.raises(OverflowError, match=r"heavy_ball_iterates: the iterates diverged"):
        ls.heavy_ball_iterates(X * 1e200, y, w0, 0.1, 0.5, 3)


def test_spectral_radius_with_no_coordinates_is_zero():
    """X of shape (N, 0): no eigenvalue, an iteration on R^0 that converges (``converges``
    says True); the radius is the max over no eigenvalues, 0 (torch's max of an empty tensor
    raised a RuntimeError)."""
    X, _, _ = _problem()
    assert ls.converges(X[:, :0], 0.1) is True
    assert ls.spectral_radius(X[:, :0], 0.1) == 0.0
    assert ls.spectral_radius(X[:0, :0], 0.1) == 0.0


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e160, 1e200, 2.0**-1000, 2.0**1000])
def test_minimizer_of_a_tiny_or_huge_X_is_right(scale):
    """w*(c X, y) = w*(X, y) / c. At c = 1e-200, X^T X underflows to 0 (the minimizer was
    NaN); at c = 1e200 it overflows to inf (the minimizer was 0). Both are in range."""
    X, y, _ = _problem()
    want = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1) / scale
    got = ls.minimizer(X * scale, y)
    assert bool(torch.isfinite(got).all()), got
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


def test_minimizer_of_a_rank_deficient_tiny_X_is_the_least_norm_one():
    X, y, _ = _problem()
    X = torch.cat([X, X[:, :1]], 1)  # a repeated column: rank 3 of 4
    want = torch.linalg.pinv(X) @ y
    torch.testing.assert_close(ls.minimizer(X * 1e-200, y), want * 1e200, rtol=1e-9, atol=0)


# -- finite differences -------------------------------------------------------------------


def test_step_sweep_of_an_f_with_no_output_is_refused_by_name():
    """f(x) with no entries has no Jacobian entry to sweep (torch's max of an empty error
    tensor raised a RuntimeError)."""
    x = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match=r"f: f\(x\) has no entries \(shape \(0,\)\)"):
        FD.step_sweep(lambda t: t[:0], x, torch.zeros(0, 3, dtype=F64))
    assert math.isfinite(FD.step_sweep(lambda t: t * 2, x, 2 * torch.eye(3, dtype=F64)).best_eps)


def test_minimizer_of_a_subnormal_float32_X_is_right():
    """max |X| = 1e-40, subnormal in float32: the power of two that brings it near 1 is
    2^133, past float32's range; it is capped at 2^127 (uncapped, c was inf and w* nan)."""
    X, y, _ = _problem()
    Xs, ys = (X * 1e-40).float(), (y * 1e-40).float()
    c = 2.0**127  # exact: the same problem in float32's normal range
    want = torch.linalg.lstsq((Xs * c).double(), (ys * c).double().unsqueeze(1))
    got = ls.minimizer(Xs, ys)
    assert bool(torch.isfinite(got).all()), got
    torch.testing.assert_close(got.double(), want.solution.squeeze(1), rtol=2e-3, atol=0)


# -- softmax cross-entropy ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cross_entropy_of_a_sure_class_with_a_far_logit_is_zero_not_nan(dtype):
    """Logits (big, -big) whose difference is past the dtype's range: log softmax of the
    second class is -inf, and a probability 0 times it was NaN; the loss of a target all on
    the first class is 0 (its log softmax is 0)."""
    big = torch.finfo(dtype).max / 1.5
    z = torch.tensor([[big, -big], [1.0, 2.0]], dtype=dtype)
    t = torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=dtype)
    loss, grad = mlp.cross_entropy(z, t)
    assert loss[0].item() == 0.0
    want = -(0.25 * math.log(1 / (1 + math.e)) + 0.75 * math.log(math.e / (1 + math.e)))
    assert loss[1].item() == pytest.approx(want, rel=1e-6)
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_backprop_of_a_sure_class_with_a_far_logit_is_zero_not_an_overflow(dtype):
    """backprop's cross-entropy as mlp.cross_entropy's: one linear layer giving logits
    (big, -big), a target all on the first class: loss 0, every gradient 0 (softmax minus
    target is 0); its -inf log softmax times probability 0 had made the loss NaN, raised
    as an overflow."""
    big = torch.finfo(dtype).max / 1.5
    net = mlp.MLP(weights=(torch.tensor([[big], [-big]], dtype=dtype),))
    x = torch.ones(1, 1, dtype=dtype)
    t = torch.tensor([[1.0, 0.0]], dtype=dtype)
    g = backprop(net, x, t, loss="cross_entropy")
    assert float(g.loss) == 0.0
    assert float(g.weights[0].abs().max()) == 0.0 and float(g.input.abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("target", ["index", "probabilities"])
def test_cross_entropy_that_overflows_from_finite_logits_is_an_overflow_error(dtype, target):
    """The loss of the far class is max - (-max) = 2 max: past the dtype's range. It was
    returned as inf; finite arguments whose loss overflows raise OverflowError, as
    backprop's do."""
    big = torch.finfo(dtype).max / 1.5
    z = torch.tensor([[1.0, 2.0], [big, -big]], dtype=dtype)
    t = (
        torch.tensor([0, 1])
        if target == "index"
        else torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=dtype)
    )
    with pytest.raises(
        OverflowError,
        match=r"cross_entropy: the loss of sample 1 is inf in "
        r"torch\.float(32|64) though the logits are finite",
    ):
        mlp.cross_entropy(z, t)


def test_taylor_test_where_f_overflows_at_every_step_is_refused_by_name():
    """h0 = 1e300: f(x + h v) = |x + h v|^2 is inf at every one of the halvings, so every
    remainder was inf and the order nan: a right gradient read as not consistent. Steps
    where the remainder is not finite are not fitted; where none is left, h0 is named."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, generator=g, dtype=F64)
    sq = lambda t: (t * t).sum()  # noqa: E731
    with pytest.raises(
        ValueError,
        match=r"h0: the remainder .* is not finite at any of the 21 steps from h0 = 1e\+300",
    ):
        FD.taylor_test(sq, 2 * x, x, h0=1e300)
    # some steps overflowing, the smaller ones not: the fit takes those (order 2)
    t = FD.taylor_test(sq, 2 * x, x, h0=1e160, halvings=600)
    assert t.consistent and abs(t.order - 2) < 0.1


def test_taylor_test_says_when_it_chose_the_h0_that_overflows_and_names_an_overflowing_slope():
    # exp at 700 (f finite, 1e304): the default h0 moves x by 70, the two halvings by 35
    # and 17.5, and exp(717.5) overflows at each: the step was the function's choice
    x = torch.full((2,), 700.0, dtype=F64)
    v = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match=r"h0: the remainder .* not finite at any of the 3 "
                                         r"steps .* \(h0 was chosen from x and v"):
        FD.taylor_test(lambda t: t.exp().sum(), x.exp(), x, v, halvings=2)
    with pytest.raises(ValueError) as err:  # the caller's h0: nothing said of a choice
        FD.taylor_test(lambda t: t.exp().sum(), x.exp(), x, v, h0=70.0, halvings=2)
    assert "chosen" not in str(err.value)
    # grad and v finite, <grad, v> = 2e400 not: named, not blamed on h0
    big = torch.full((2,), 1e200, dtype=F64)
    with pytest.raises(ValueError, match=r"^grad, v: <grad, v> is not finite \(inf\) though "
                                         r"both are"):
        FD.taylor_test(lambda t: (t * t).sum(), big, torch.zeros(2, dtype=F64), big)


@pytest.mark.parametrize(
    "what",
    ["loss", "gradient", "spectral_radius-X", "spectral_radius-alpha"],
)
def test_least_squares_results_that_overflow_from_finite_arguments_raise(what):
    """X of 1e200: X w is 1e200, its square past float64's range: the loss was inf and the
    gradient X^T (X w - y) nan; the spectral radius |1 - alpha lambda| of X of 1e200 (or
    alpha = 1e308) was inf. Finite arguments whose result overflows raise OverflowError,
    as gradient descent's iterates do."""
    X, y, w = _problem()
    calls = {
        "loss": lambda: ls.loss(X * 1e200, w, y),
        "gradient": lambda: ls.gradient(X * 1e200, w, y),
        "spectral_radius-X": lambda: ls.spectral_radius(X * 1e200, 0.1),
        "spectral_radius-alpha": lambda: ls.spectral_radius(X, 1e308),
    }
    name = what.split("-")[0]
    with pytest.raises(OverflowError, match=rf"{name}: .* overflows torch\.float64"):
        calls[what]()
    # within range: returned
    assert math.isfinite(float(ls.loss(X * 1e150, w, y)))
    assert bool(torch.isfinite(ls.gradient(X * 1e100, w, y)).all())
    assert math.isfinite(ls.spectral_radius(X * 1e100, 1e-200))


# -- handgrad.testing -----------------------------------------------------------------------


def test_check_vjp_of_an_f_with_no_output_is_refused_by_name():
    """f(*args) with no elements: no derivative to check (torch's max of the empty output
    raised a RuntimeError while the tolerance was scaled by it)."""
    from handgrad.testing import check_jvp, check_vjp

    x = torch.ones(3, 4, dtype=F64)
    w = torch.ones(4, 2, dtype=F64)

    def f(x, w):
        return (x @ w)[:0]

    def vjp(g, x, w):
        return torch.zeros_like(x), torch.zeros_like(w)

    def jvp(t, x, w):
        return f(x, w)

    pattern = r"f: f\(\*args\) has no elements \(shape \(0, 2\)\)"
    with pytest.raises(ValueError, match=pattern):
        check_vjp(f, vjp, (x, w))
    with pytest.raises(ValueError, match=pattern):
        check_jvp(f, jvp, (x, w))


def test_signature_refuses_what_is_not_a_tensor_or_a_tol_by_name():
    """signature(got, ref, tol) is public: a list, a (rtol, atol) tuple or a meta tensor got
    AttributeError / RuntimeError from inside."""
    from handgrad.testing import Tol, signature

    a = torch.ones(3, dtype=F64)
    tol = Tol(1e-6, 1e-6)
    with pytest.raises(TypeError, match=r"got: expected a torch.Tensor, got list"):
        signature([1.0, 1.0, 1.0], a, tol)
    with pytest.raises(TypeError, match=r"ref: expected a torch.Tensor, got ndarray"):
        signature(a, a.numpy(), tol)
    with pytest.raises(TypeError, match=r"tol: expected a handgrad.testing.Tol, got tuple"):
        signature(a, -a, (1e-6, 1e-6))
    with pytest.raises(ValueError, match=r"got: a tensor on the meta device holds no values"):
        signature(a.to("meta"), a, tol)
    with pytest.raises(ValueError, match=r"ref: a tensor on the meta device holds no values"):
        signature(a, a.to("meta"), tol)
    assert signature(-a, a, tol) == "a flipped sign (-1 x the reference)"


def test_diagnose_refuses_x_or_y_of_another_dtype_than_the_network_by_name():
    """backprop refuses x of float32 for a float64 network; diagnose took it, rounded x to
    float32 for its reference, and named a right dW2 as wrong ('not -reference, ...')."""
    from handgrad.kernels import backprop as bp
    from handgrad.testing import diagnose

    g = torch.Generator().manual_seed(0)
    net = mlp.init_mlp([3, 5, 2], "tanh", generator=g, dtype=F64)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    y = torch.randn(4, 2, generator=g, dtype=F64)
    grads = bp.backprop(net, x, y)
    assert diagnose(grads, net, x, y).layer is None  # right: no layer named
    with pytest.raises(TypeError, match=r"x: dtype torch.float32 does not match the network's"):
        diagnose(grads, net, x.float(), y)
    with pytest.raises(TypeError, match=r"y: dtype torch.float32 does not match x"):
        diagnose(grads, net, x, y.float())
    labels = torch.tensor([0, 1, 1, 0], dtype=torch.int32)  # indices: any integer dtype
    ce = bp.backprop(net, x, labels, loss="cross_entropy")
    assert diagnose(ce, net, x, labels, loss="cross_entropy").layer is None
