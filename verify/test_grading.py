"""check_vjp as an autograder uses it: students' hand-written backward passes of a tanh
layer, each wrong in one of the ways students get them wrong, and the verdict and message
each gets (a right one passing, a wrong one failing with a message that says what to fix)."""

from __future__ import annotations

import math

import pytest
import torch

from handgrad.testing import check_jvp, check_vjp, signature
from handgrad.testing.tolerances import GRAD, Tol


def layer(x, W, b):
    return torch.tanh(x @ W.t() + b)


def layer_vjp(g, x, W, b):  # by hand: d = g * (1 - tanh(z)^2)
    h = torch.tanh(x @ W.t() + b)
    d = g * (1 - h * h)
    return d @ W, d.t() @ x, d.sum(0)


def _args(dtype, n=6, k=4, p=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, k, generator=gen, dtype=dtype),
        torch.randn(p, k, generator=gen, dtype=dtype),
        torch.randn(p, generator=gen, dtype=dtype),
    )


# --- a vjp that gives another gradient each call ----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_vjp_right_on_its_first_call_only_fails_as_not_deterministic(dtype):
    # a random op in the student's vjp (here: every other call, 1.001 x dW): the one call the
    # check made was the right one, and it passed
    calls = []

    def flaky(g, x, W, b):
        calls.append(1)
        dx, dW, db = layer_vjp(g, x, W, b)
        return dx, dW * (1.001 if len(calls) % 2 == 0 else 1.0), db

    with pytest.raises(AssertionError) as err:
        check_vjp(layer, flaky, _args(dtype))
    msg = str(err.value)
    assert msg.startswith(
        "args[1] (W): two calls of the vjp at the same point gave different "
        "gradients (largest difference "
    )
    assert "the vjp is not deterministic" in msg


def test_a_vjp_differing_between_calls_by_rounding_only_passes():
    # a GPU's atomic adds sum in another order each call: the last bits differ
    calls = []

    def atomics(g, x, W, b):
        calls.append(1)
        dx, dW, db = layer_vjp(g, x, W, b)
        return dx, dW * (1 + 1e-14 * (len(calls) % 2)), db

    assert check_vjp(layer, atomics, _args(torch.float64)).passed


def test_a_float32_vjp_differing_between_calls_within_its_gradient_tolerance_passes():
    # a GPU's atomic adds over many terms that cancel: 3e-5 of the largest element apart,
    # beyond float32's forward tolerance (1e-5) and within its gradient tolerance (1e-4),
    # which is what the gradient is compared at: no verdict turns on such a difference
    calls = []

    def atomics(g, x, W, b):
        calls.append(1)
        dx, dW, db = layer_vjp(g, x, W, b)
        return dx, dW + 3e-5 * dW.abs().max() * (len(calls) % 2 == 0), db

    assert check_vjp(layer, atomics, _args(torch.float32), tol=None).passed is True


def test_a_vjp_differing_between_calls_within_a_looser_tol_given_passes_and_beyond_it_fails():
    # tol=: the check compares at that tolerance, so the repeat does too (the looser of it
    # and the gradient tolerance): 3e-3 of the largest element apart is beyond float32's
    # gradient tolerance (1e-4) and within rtol 1e-2; 5e-2 apart is beyond both
    def differing(by):
        calls = []

        def vjp(g, x, W, b):
            calls.append(1)
            dx, dW, db = layer_vjp(g, x, W, b)
            return dx, dW + by * dW.abs().max() * (len(calls) % 2 == 0), db

        return vjp

    loose = Tol(rtol=1e-2, atol=1e-4)  # the difference is within its rtol, not its atol
    assert check_vjp(layer, differing(3e-3), _args(torch.float32), tol=loose).passed is True
    with pytest.raises(AssertionError, match=r"args\[1\] \(W\): two calls of the vjp"):
        check_vjp(layer, differing(3e-3), _args(torch.float32))
    with pytest.raises(AssertionError, match=r"args\[1\] \(W\): two calls of the vjp"):
        check_vjp(layer, differing(5e-2), _args(torch.float32), tol=loose)


def test_a_vjp_giving_none_then_a_tensor_fails_as_not_deterministic():
    calls = []

    def flaky(g, x, W, b):
        calls.append(1)
        dx, dW, db = layer_vjp(g, x, W, b)
        return dx, dW, db if len(calls) > 1 else None

    with pytest.raises(
        AssertionError,
        match=r"^args\[2\] \(b\): two calls of the vjp at the "
        r"same point gave different gradients \(the first call gave None, the second a "
        r"float64 tensor of shape \(3,\) on cpu\)",
    ):
        check_vjp(layer, flaky, _args(torch.float64))


def test_a_vjp_giving_nan_at_the_same_place_each_call_is_named_as_nan_not_as_flaky():
    def nan_at_one(g, x, W, b):
        dx, dW, db = layer_vjp(g, x, W, b)
        dW = dW.clone()
        dW[1, 2] = float("nan")
        return dx, dW, db

    with pytest.raises(AssertionError, match=r"args\[1\] \(W\): vjp returned non-finite values"):
        check_vjp(layer, nan_at_one, _args(torch.float64))


# --- a gradient with the argument's shape and more -------------------------------------------


def test_a_bias_gradient_not_summed_over_the_batch_says_so():
    def unsummed(g, x, W, b):
        dx, dW, _ = layer_vjp(g, x, W, b)
        h = torch.tanh(x @ W.t() + b)
        return dx, dW, g * (1 - h * h)  # (6, 3): one row per example

    with pytest.raises(AssertionError) as err:
        check_vjp(layer, unsummed, _args(torch.float64))
    assert str(err.value) == (
        "args[2] (b): vjp's gradient has shape (6, 3), the argument (3,); that is the "
        "argument's shape after leading dimension (6,): not summed over it (a bias's gradient "
        "sums over the batch: .sum(0))?"
    )


def test_a_gradient_with_a_kept_dimension_says_keepdim():
    def kept(g, x, W, b):
        dx, dW, db = layer_vjp(g, x, W, b)
        return dx, dW, db[None, :]

    with pytest.raises(
        AssertionError,
        match=r"shape \(1, 3\), the argument \(3,\); that is the "
        "argument's shape with dimensions of size 1 "
        "added: a sum with keepdim=True",
    ):
        check_vjp(layer, kept, _args(torch.float64))


@pytest.mark.parametrize(
    "wrong", [lambda db: torch.cat([db, db]), lambda db: torch.zeros(2, 5, dtype=db.dtype)]
)
def test_a_gradient_of_an_unrelated_shape_gets_no_hint(wrong):
    def other(g, x, W, b):
        dx, dW, db = layer_vjp(g, x, W, b)
        return dx, dW, wrong(db)

    with pytest.raises(AssertionError) as err:
        check_vjp(layer, other, _args(torch.float64))
    assert str(err.value).endswith("the argument (3,)")
    assert str(err.value).startswith("args[2] (b): vjp's gradient has shape (")


# --- a gradient computed in a narrower dtype than its own ------------------------------------


@pytest.mark.parametrize(
    "dtype, inside",
    [
        (torch.float64, torch.float32),
        (torch.float64, torch.float16),
        (torch.float32, torch.float16),
        (torch.float32, torch.bfloat16),
    ],
)
def test_a_gradient_computed_in_a_narrower_dtype_is_named_with_it(dtype, inside):
    def narrow(g, x, W, b):  # right, but computed in `inside` and cast back
        got = layer_vjp(g.to(inside), x.to(inside), W.to(inside), b.to(inside))
        return tuple(t.to(dtype) for t in got)

    with pytest.raises(AssertionError) as err:
        check_vjp(layer, narrow, _args(dtype))
    name = str(inside).removeprefix("torch.")
    assert (
        f"looks like values computed in {name}: each is a {name} number and the "
        "reference's are not" in str(err.value)
    )


def test_signature_names_the_narrower_dtype_and_nothing_for_a_wrong_wide_gradient():
    ref = torch.tensor([0.1, 1 / 3, -2 / 7], dtype=torch.float64)
    # float32's nearest values to the reference's, by hand: 0.1 -> 13421773 / 2**27
    got = torch.tensor([13421773 / 2**27, 11184811 / 2**25, -9586981 / 2**25], dtype=torch.float64)
    assert signature(got, ref, GRAD[torch.float64]) == (
        "values computed in float32: each is a float32 number and the reference's are not (a "
        "cast to float32 inside the derivative, or a float32 constant or buffer it uses?)"
    )
    assert (
        signature(
            ref * (1 + 1e-6) + torch.tensor([0.0, 1e-7, 0.0], dtype=torch.float64),
            ref,
            GRAD[torch.float64],
        )
        is None
    )
    # a reference of float32 numbers itself: nothing to tell the two apart by
    assert (
        signature(got, torch.tensor([0.5, 0.25, -3.0], dtype=torch.float64), GRAD[torch.float64])
        is None
    )


def test_a_wrong_gradient_of_few_values_is_not_said_to_be_computed_in_a_narrower_dtype():
    # a relu backward returning its 0/1 mask, not the mask times g: each value is a bfloat16
    # number, but far from the reference at any dtype's tolerance: no cast explains it
    ref = torch.tensor([0.3, 0.0, -1.7, 0.05, 0.0, 2.2], dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    assert signature(mask, ref, GRAD[torch.float64]) is None


def test_a_vjp_accumulating_into_a_buffer_it_returns_fails_as_keeping_state():
    # a classic: dW accumulated into a buffer kept between calls (+= where = was meant); the
    # first call's dW was right, and it read as "a constant factor: 2 x the reference"
    kept = {}

    def accumulating(g, x, W, b):
        dx, dW, db = layer_vjp(g, x, W, b)
        kept.setdefault("W", torch.zeros_like(W))
        kept["W"] += dW
        return dx, kept["W"], db

    with pytest.raises(AssertionError) as err:
        check_vjp(layer, accumulating, _args(torch.float64))
    msg = str(err.value)
    assert msg.startswith(
        "args[1] (W): two calls of the vjp at the same point gave different gradients"
    )
    assert "state kept between calls: a gradient accumulated into a buffer it returns" in msg


def layer_jvp(t, x, W, b):  # by hand: (1 - tanh(z)^2) (t_x W^T + x t_W^T + t_b)
    h = torch.tanh(x @ W.t() + b)
    return (1 - h * h) * (t[0] @ W.t() + x @ t[1].t() + t[2])


def test_a_jvp_right_on_every_other_call_fails_as_not_deterministic():
    calls = []

    def flaky(t, x, W, b):
        calls.append(1)
        return layer_jvp(t, x, W, b) * (1.001 if len(calls) % 2 == 0 else 1.0)

    with pytest.raises(AssertionError) as err:
        check_jvp(layer, flaky, _args(torch.float64))
    assert str(err.value).startswith(
        "args[0] (x): two calls of the jvp at the same point gave different tangents "
        "(largest difference "
    )


def test_a_jvp_differing_between_calls_within_a_looser_tol_given_passes():
    calls = []

    def differing(t, x, W, b):
        calls.append(1)
        jt = layer_jvp(t, x, W, b)
        return jt + 3e-3 * jt.abs().max() * (len(calls) == 2)  # args[0]'s repeat only

    loose = Tol(rtol=1e-2, atol=1e-4)  # the difference is within its rtol, not its atol
    assert check_jvp(layer, differing, _args(torch.float32), tol=loose).passed is True
    calls.clear()
    with pytest.raises(AssertionError, match=r"two calls of the jvp at the same point"):
        check_jvp(layer, differing, _args(torch.float32))


def test_a_right_jvp_writing_into_its_tangents_is_not_taken_for_a_flaky_one():
    def writes(t, x, W, b):
        t[0].mul_(2.0)  # its own copy: allowed, and the second call gets fresh tangents
        h = torch.tanh(x @ W.t() + b)
        return (1 - h * h) * (0.5 * t[0] @ W.t() + x @ t[1].t() + t[2])

    assert check_jvp(layer, writes, _args(torch.float64)).passed


def test_a_jvp_accumulating_into_a_buffer_it_returns_fails_as_keeping_state():
    kept = {}

    def accumulating(t, x, W, b):
        kept.setdefault("out", torch.zeros(x.shape[0], W.shape[0], dtype=x.dtype))
        kept["out"] += layer_jvp(t, x, W, b)
        return kept["out"]

    with pytest.raises(AssertionError) as err:
        check_jvp(layer, accumulating, _args(torch.float64))
    assert str(err.value).startswith(
        "args[0] (x): two calls of the jvp at the same point gave different tangents"
    )


# --- a derivative that raises -----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes: Python 3.11")
@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes: Python 3.11")
def test_a_vjp_raising_is_raised_as_it_is_with_how_it_was_called():
    # parameters in another order than vjp(g, *args): torch's error deep in the student's
    # code said nothing of what the vjp was given
    def in_another_order(x, W, b, g):
        return layer_vjp(g, x, W, b)

    with pytest.raises(RuntimeError) as err:
        check_vjp(layer, in_another_order, _args(torch.float64))
    assert err.value.__notes__ == [
        "check_vjp called vjp(cotangent, *args): the cotangent (f(*args)'s shape) first, then "
        "f's arguments",
        "raised by the derivative under test, given in this order: cotangent (6, 3), "
        "args[0] (x) (6, 4), args[1] (W) (3, 4), args[2] (b) (3,)",
    ]


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes: Python 3.11")
@pytest.mark.parametrize("mode", ["vjp", "jvp"])
def test_a_derivative_raising_on_its_second_call_only_says_so(mode):
    # state kept between calls that breaks the repeat: a buffer allocated on the first call
    calls = []

    def once(first, *args):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("a buffer already used")
        return layer_vjp(first, *args) if mode == "vjp" else layer_jvp(first, *args)

    check = check_vjp if mode == "vjp" else check_jvp
    with pytest.raises(RuntimeError, match="a buffer already used") as err:
        check(layer, once, _args(torch.float64))
    assert f"check_{mode} called {mode}(" in err.value.__notes__[0]
    assert "a second time" in err.value.__notes__[0]
    assert "it raised on the repeat, so it keeps state between calls" in err.value.__notes__[0]


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes: Python 3.11")
def test_a_jvp_raising_is_raised_as_it_is_with_how_it_was_called():
    def boom(t, x, W, b):
        raise IndexError("a student's bug")

    with pytest.raises(IndexError, match="a student's bug") as err:
        check_jvp(layer, boom, _args(torch.float64))
    assert err.value.__notes__[1] == (
        "raised by the derivative under test, given in this order: tangents (a tuple of 3), "
        "args[0] (x) (6, 4), args[1] (W) (3, 4), args[2] (b) (3,)"
    )


# --- a loss's vjp that ignores its cotangent --------------------------------------------------


def log_cosh(pred, y):  # mean log cosh(pred - y), written stably
    d = pred - y
    return (d + torch.nn.functional.softplus(-2 * d) - math.log(2.0)).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_loss_vjp_ignoring_its_cotangent_is_told_so(dtype):
    # d/dpred mean log cosh(pred - y) = tanh(pred - y) / n; the vjp should scale it by g
    def no_g(g, pred, y):
        t = torch.tanh(pred - y) / pred.numel()
        return t, -t

    gen = torch.Generator().manual_seed(3)
    args = (
        torch.randn(10, generator=gen, dtype=dtype),
        torch.randn(10, generator=gen, dtype=dtype),
    )
    with pytest.raises(AssertionError) as err:
        check_vjp(log_cosh, no_g, args, cotangent=torch.tensor(-2.5, dtype=dtype))
    assert (
        str(err.value).count(
            "it is the reference over the cotangent (-2.5): the vjp ignores its cotangent g? (a "
            "loss's gradient times g)"
        )
        == 2
    )  # pred and y
    # one that uses g passes; one wrong otherwise gets no such hint
    assert check_vjp(
        log_cosh, lambda g, p, y: (g * no_g(g, p, y)[0], -g * no_g(g, p, y)[0]), args
    ).passed
    with pytest.raises(AssertionError) as err:
        check_vjp(
            log_cosh,
            lambda g, p, y: (3 * g * no_g(g, p, y)[0], -g * no_g(g, p, y)[0]),
            args,
            cotangent=torch.tensor(0.5, dtype=dtype),
        )
    assert "ignores its cotangent" not in str(err.value)


# --- float64's own rounding where a derivative's sums cancel ----------------------------------


def layer_norm(x):
    return torch.nn.functional.layer_norm(x, x.shape[-1:])


def layer_norm_vjp(g, x):  # by hand, eps 1e-5 as layer_norm's
    m = x.mean(-1, keepdim=True)
    s = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    xh = (x - m) / s
    return (g - g.mean(-1, keepdim=True) - xh * (g * xh).mean(-1, keepdim=True)) / s


def _far_rows():  # rows of std 0.01 at 100: the gradient's terms cancel to 1e-3 of 300
    gen = torch.Generator().manual_seed(0)
    return (0.01 * torch.randn(8, 64, generator=gen, dtype=torch.float64) + 100.0,)


def test_a_right_float64_gradient_whose_sums_cancel_passes_with_float64_rounding_allowed():
    # it failed: an element of 1.15e-3 missed torch's by 9.6e-11 (rtol 1e-9, atol 1e-11),
    # float64's own rounding in a sum of terms of 300
    report = check_vjp(layer_norm, layer_norm_vjp, _far_rows())
    assert "float64 rounding allowed: atol 1e-11 + 4 x " in str(report)
    assert "(how far torch.autograd's gradient moves with the arguments moved by an ulp; " in (
        str(report)
    )


def test_float64_rounding_allowed_does_not_hide_a_gradient_one_millionth_off():
    with pytest.raises(AssertionError, match=r"looks like a constant factor: 1\.000001"):
        check_vjp(layer_norm, lambda g, x: layer_norm_vjp(g, x) * (1 + 1e-6), _far_rows())


def test_a_derivative_an_ulp_changes_entirely_is_said_to_be_ill_conditioned():
    # sin(1e17 x): an ulp of x moves the phase by radians; a vjp 1e-6 off is not told from
    # float64's rounding there, and the failure says to choose another point
    x = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)

    def vjp(g, x):
        return g * 1e17 * torch.cos(1e17 * x) * (1 + 1e-6)

    with pytest.raises(AssertionError) as err:
        check_vjp(lambda x: torch.sin(1e17 * x), vjp, (x,), taylor=False)
    assert (
        "f's derivative is ill-conditioned at this point, even in float64: choose another "
        "point" in str(err.value)
    )


def test_a_right_float64_tangent_whose_sums_cancel_passes_with_float64_rounding_allowed():
    def layer_norm_jvp(t, x):  # by hand, the vjp's formula: layer norm's Jacobian is symmetric
        return layer_norm_vjp(t[0], x)

    # it failed: an element of -0.0415 missed torch.func.jvp's by 1.3e-10
    report = check_jvp(layer_norm, layer_norm_jvp, _far_rows())
    assert "float64 rounding allowed: atol 1e-11 + 4 x " in str(report)
    with pytest.raises(AssertionError, match=r"looks like a constant factor: 1\.0000009"):
        check_jvp(layer_norm, lambda t, x: layer_norm_jvp(t, x) * (1 + 1e-6), _far_rows())


# --- a convolution's kernel gradient read back to front --------------------------------------


def test_a_kernel_gradient_reversed_along_its_window_is_named():
    def conv1d(x, w):  # x (B, C, L), w (O, C, K): F.conv1d is a correlation
        return torch.nn.functional.conv1d(x, w)

    def conv1d_vjp_flipped(g, x, w):  # by hand through x.unfold, the window read backwards
        K, L_out = w.shape[-1], g.shape[-1]
        cols = x.unfold(2, K, 1)  # (B, C, L_out, K)
        dw = torch.einsum("bol,bclk->ock", g, cols)
        dcols = torch.einsum("bol,ock->bclk", g, w)
        dx = torch.zeros_like(x)
        for k in range(K):
            dx[:, :, k : k + L_out] += dcols[..., k]
        return dx, dw.flip(-1)

    gen = torch.Generator().manual_seed(4)
    args = (
        torch.randn(2, 3, 10, generator=gen, dtype=torch.float64),
        torch.randn(4, 3, 3, generator=gen, dtype=torch.float64),
    )
    with pytest.raises(AssertionError) as err:
        check_vjp(conv1d, conv1d_vjp_flipped, args)
    assert str(err.value).startswith("check_vjp of test_a_kernel_gradient_reversed_along_its_")
    assert (
        "looks like the reference reversed along dim 2: a window read back to front "
        "(convolution for correlation, or a flip missing)?"
    ) in str(err.value)
    assert "args[0] (x)" not in str(err.value).splitlines()[0]  # dx is right


def test_signature_names_a_reversal_only_where_one_explains_it():
    ref = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]], dtype=torch.float64)
    tol = GRAD[torch.float64]
    assert signature(
        torch.tensor([[3.0, 2.0, 1.0], [7.0, 5.0, 4.0]], dtype=torch.float64), ref, tol
    ).startswith("the reference reversed along dim 1: ")
    assert signature(
        torch.tensor([[4.0, 5.0, 7.0], [1.0, 2.0, 3.0]], dtype=torch.float64), ref, tol
    ).startswith("the reference reversed along dim 0: ")
    assert (
        signature(torch.tensor([[3.0, 2.0, 1.0], [7.0, 5.0, 4.5]], dtype=torch.float64), ref, tol)
        is None
    )
