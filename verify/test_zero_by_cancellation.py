"""A derivative zero by cancellation (a Linear's bias before a batch norm, the input of a
layer norm whose outputs are summed) is checked at the gradient table's atol, not at an atol
scaled to its float64 value (rounding, 1e-16, or exactly 0): a right hand-written backward
passes in float32 and float64, a wrong one still fails, and an exactly zero float64
reference is no ZeroDivisionError."""
import pytest
import torch

from handgrad.testing import check_jvp, check_vjp


def _linear_bn(x, W, b):
    h = x @ W.T + b
    mu = h.mean(0)
    v = ((h - mu) ** 2).mean(0)
    return (h - mu) / torch.sqrt(v + 1e-5)


def _linear_bn_vjp(g, x, W, b, *, wrong=False):
    # by hand: the batch norm's backward, then the Linear's; db is zero by cancellation
    h = x @ W.T + b
    hc = h - h.mean(0)
    r = 1 / torch.sqrt((hc ** 2).mean(0) + 1e-5)
    hh = hc * r
    dh = r * (g - g.mean(0) - hh * (g * hh).mean(0))
    db = g.sum(0) * r if wrong else dh.sum(0)  # wrong: the batch norm's mean forgotten
    return dh @ W, dh.T @ x, db


def _args(dtype):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(*s, generator=gen, dtype=dtype) for s in ((16, 5), (3, 5), (3,)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_bias_before_a_batch_norm_right_by_hand_passes(dtype):
    report = check_vjp(_linear_bn, _linear_bn_vjp, _args(dtype))
    assert report.passed
    assert "zero by cancellation here" in str(report)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_bias_before_a_batch_norm_wrong_by_hand_fails_named(dtype):
    with pytest.raises(AssertionError) as err:
        check_vjp(_linear_bn, lambda g, x, W, b: _linear_bn_vjp(g, x, W, b, wrong=True),
                  _args(dtype))
    msg = str(err.value)
    assert "wrong derivative for args[2] (b)" in msg
    assert "args[0] (x): ok" in msg and "args[1] (W): ok" in msg
    # compared at the table's atol, and not said to be scaled
    assert "zero by cancellation here" in msg and "atol scaled to the reference" not in msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_tangent_zero_by_cancellation_right_by_hand_passes(dtype):
    # along b only, the batch norm's output does not move: the jvp is zero by cancellation
    def jvp(t, x, W, b):
        tb = t[2]
        h = x @ W.T + b
        hc = h - h.mean(0)
        r = 1 / torch.sqrt((hc ** 2).mean(0) + 1e-5)
        dh = tb.expand_as(h)
        dhc = dh - dh.mean(0)
        return r * dhc - hc * r ** 3 * (hc * dhc).mean(0)

    assert check_jvp(_linear_bn, jvp, _args(dtype), wrt=[2]).passed


def test_an_exactly_zero_float64_reference_is_compared_not_divided_by():
    # d/dx sum(layer_norm(x)) = 0; torch's float64 gradient is exactly 0 here (it raised
    # ZeroDivisionError in the rounding note)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))

    def f(x):
        return torch.nn.functional.layer_norm(x, (8,)).sum()

    def vjp(g, x, wrong=False):
        xc = x - x.mean(-1, keepdim=True)
        r = ((xc ** 2).mean(-1, keepdim=True) + 1e-5).rsqrt()
        xh = xc * r
        dy = torch.ones_like(x)
        dx = r * (dy - (0 if wrong else dy.mean(-1, keepdim=True))
                  - xh * (dy * xh).mean(-1, keepdim=True))
        return g * dx

    report = check_vjp(f, vjp, (x,))
    assert report.passed and "its largest element in float64 0;" in str(report)
    with pytest.raises(AssertionError, match=r"wrong derivative for args\[0\] \(x\)"):
        check_vjp(f, lambda g, x: vjp(g, x, wrong=True), (x,))
