"""handgrad.testing.check_vjp / check_jvp on kernels that are not handgrad's: a softplus
layer written by hand (right, and with planted bugs), a function numpy computes, and a
custom autograd.Function whose backward is the thing under test.

Every expected derivative here is written out by hand in this file; the checks under test
find the references themselves."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from handgrad.testing import Tol, assert_close, check_jvp, check_vjp, signature, tol_for
from handgrad.testing import compare as compare_mod


def softplus_layer(x, weight, bias):
    return F.softplus(x @ weight.t() + bias)


def vjp_right(g, x, weight, bias):
    d = g * torch.sigmoid(x @ weight.t() + bias)  # softplus' = sigmoid
    return d @ weight, d.t() @ x, d.sum(0)


def jvp_right(t, x, weight, bias):
    dz = t[0] @ weight.t() + x @ t[1].t() + t[2]
    return torch.sigmoid(x @ weight.t() + bias) * dz


def _args(dtype, n=5, k=4, p=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen, dtype=dtype),
            torch.randn(p, k, generator=gen, dtype=dtype),
            torch.randn(p, generator=gen, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_a_right_vjp_and_jvp_pass_with_a_report_per_argument(dtype):
    args = _args(dtype)
    for report in (check_vjp(softplus_layer, vjp_right, args),
                   check_jvp(softplus_layer, jvp_right, args)):
        assert [a.label for a in report.arguments] == ["args[0] (x)", "args[1] (weight)",
                                                       "args[2] (bias)"]
        assert all(a.checked and a.headroom > 1 for a in report.arguments)
        assert "central differences" in report.references
        assert {"torch_autograd", "torch_func_jvp"} & set(report.references)
        assert "PASS" in str(report)
        if dtype == torch.float64:  # the Taylor remainder of a right derivative: order 2
            assert all(abs(a.taylor_order - 2) < 0.2 for a in report.arguments)
        else:
            assert all(a.taylor_order is None for a in report.arguments)
    assert len(report.to_frame()) == 3


def _planted(name):
    def vjp(g, x, weight, bias):
        dx, dw, db = vjp_right(g, x, weight, bias)
        if name == "sign":
            dw = -dw
        elif name == "factor":
            db = 2 * db
        elif name == "zero":
            dx = torch.zeros_like(dx)
        elif name == "transpose":
            dw = dw.t()
        return dx, dw, db
    return vjp


@pytest.mark.parametrize("bug, argument, words", [
    ("sign", "args[1] (weight)", "a flipped sign"),
    ("factor", "args[2] (bias)", "a constant factor: 2 x"),
    ("zero", "args[0] (x)", "zero everywhere"),
    ("transpose", "args[1] (weight)", "the reference transposed"),
])
def test_a_planted_bug_fails_naming_the_argument_and_its_signature(bug, argument, words):
    # weight square (4, 4) so that a transposed gradient has the right shape
    args = _args(torch.float64, k=4, p=4)
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(softplus_layer, _planted(bug), args)
    text = str(err.value)
    first = text.splitlines()[0]
    assert first.endswith(f"wrong derivative for {argument}"), first
    assert words in text
    for other in {"args[0] (x)", "args[1] (weight)", "args[2] (bias)"} - {argument}:
        assert f"- {other}" not in text  # the right ones are not blamed


def test_a_transposed_gradient_of_the_wrong_shape_is_named():
    args = _args(torch.float64, k=4, p=3)
    with pytest.raises(AssertionError, match=r"args\[1\] \(weight\).*shape \(4, 3\).*"
                                             r"transposed\?"):
        check_vjp(softplus_layer, _planted("transpose"), args)


def test_a_wrong_jvp_fails_naming_the_argument():
    def jvp_bad(t, x, weight, bias):  # forgets the bias tangent
        return torch.sigmoid(x @ weight.t() + bias) * (t[0] @ weight.t() + x @ t[1].t())

    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_jvp(softplus_layer, jvp_bad, _args(torch.float64))
    assert str(err.value).splitlines()[0].endswith("wrong derivative for args[2] (bias)")
    assert "zero everywhere" in str(err.value)


def numpy_softplus(x):
    """torch cannot differentiate this: it leaves torch for numpy."""
    return torch.from_numpy(np.logaddexp(0.0, x.detach().numpy()))


def test_a_function_torch_cannot_differentiate_is_checked_by_central_differences():
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    report = check_vjp(numpy_softplus, lambda g, x: (g * torch.sigmoid(x),), (x,))
    assert report.references == ("central differences",)
    assert any("does not depend on its arguments through torch" in n for n in report.notes)
    with compare_mod.unrecorded(), pytest.raises(AssertionError, match="central difference"):
        check_vjp(numpy_softplus, lambda g, x: (g * torch.sigmoid(-x),), (x,))
    jvp_report = check_jvp(numpy_softplus, lambda t, x: torch.sigmoid(x) * t[0], (x,))
    assert jvp_report.references == ("central differences",)


class _Square(torch.autograd.Function):
    """x^2 with a wrong backward (x instead of 2x): what autograd would replay."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x


def test_a_custom_autograd_function_is_not_its_own_reference():
    x = torch.linspace(0.5, 2, 5, dtype=torch.float64)
    # the Function's own (wrong) backward as the vjp: autograd would agree with it
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(_Square.apply, lambda g, x: (g * x,), (x,))
    assert "central differences" in str(err.value)
    assert "custom autograd.Function _Square" in str(err.value)
    report = check_vjp(_Square.apply, lambda g, x: (2 * g * x,), (x,))
    assert report.references == ("central differences",)


def test_non_tensor_arguments_and_wrt():
    def scaled(x, power, weight):
        return (x ** power) @ weight.t()

    def vjp(g, x, power, weight):
        return (g @ weight) * power * x ** (power - 1), None, g.t() @ x ** power

    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, generator=gen, dtype=torch.float64) + 0.5
    w = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    report = check_vjp(scaled, vjp, (x, 3, w))
    assert [a.checked for a in report.arguments] == [True, False, True]
    assert "not a floating-point tensor" in report.arguments[1].note
    only = check_vjp(scaled, vjp, (x, 3, w), wrt="weight")
    assert [a.checked for a in only.arguments] == [False, False, True]
    assert only.arguments[0].note == "not in wrt"


def test_a_none_gradient_is_checked_as_zero():
    def f(x, y):
        return x * y

    with compare_mod.unrecorded(), pytest.raises(AssertionError, match=r"args\[1\] \(y\)"):
        check_vjp(f, lambda g, x, y: (g * y, None), _args(torch.float64)[:1] * 2)


def test_each_comparison_is_recorded_for_the_verify_report():
    before = len(compare_mod.RECORDS)
    check_vjp(softplus_layer, vjp_right, _args(torch.float64))
    new = compare_mod.RECORDS[before:]
    assert {r.kernel for r in new} == {"vjp_right"}
    assert {r.reference for r in new} == {"torch_autograd", "central differences"}
    assert {r.what.split(":")[0] for r in new} == {"args[0] (x)", "args[1] (weight)",
                                                   "args[2] (bias)"}



def test_name_gives_the_derivative_its_name_in_records():
    # a partial or a lambda is named by its type or "<lambda>" unless named
    before = len(compare_mod.RECORDS)
    check_vjp(softplus_layer, functools.partial(vjp_right), _args(torch.float64),
              name=" softplus_vjp ")
    check_jvp(softplus_layer, lambda t, *a: jvp_right(t, *a), _args(torch.float64),
              name="softplus_jvp")
    assert {r.kernel for r in compare_mod.RECORDS[before:]} == {"softplus_vjp", "softplus_jvp"}
    for bad in ("", "  ", 3):
        with pytest.raises(TypeError, match=r"^name: expected a non-empty string naming the "
                           r"(vjp|jvp) in records"):
            check_vjp(softplus_layer, vjp_right, _args(torch.float64), name=bad)
    with pytest.raises(TypeError, match=r"^name: .* naming the jvp"):
        check_jvp(softplus_layer, jvp_right, _args(torch.float64), name=3)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: check_vjp(3, vjp_right, _args(torch.float64)), TypeError, "f: expected a callable"),
    (lambda: check_vjp(softplus_layer, None, _args(torch.float64)), TypeError,
     "vjp: expected a callable"),
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64)[0]), TypeError,
     r"args=\(x,\)"),
    (lambda: check_vjp(softplus_layer, vjp_right, (1, 2, 3)), ValueError,
     "at least one floating-point tensor"),
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64), wrt="w"),
     ValueError, "no positional parameter 'w'"),
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64), wrt=[5]),
     ValueError, "positions 0..2"),
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64), directions=0),
     ValueError, "directions: expected a positive integer"),
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64), directions=2.0),
     TypeError, "directions: expected a positive integer, got float"),
    (lambda: check_vjp(softplus_layer, lambda g, *a: vjp_right(g, *a)[:2],
                       _args(torch.float64)), TypeError, "one gradient per argument"),
    (lambda: check_vjp(softplus_layer, vjp_right,
                       (torch.tensor([[float("nan")] * 4]), *_args(torch.float64)[1:])),
     ValueError, r"args\[0\]: holds NaN"),
    (lambda: check_vjp(lambda x: (x, x), lambda g, x: (g,), (torch.ones(2),)), TypeError,
     "f: expected a tensor, got tuple"),
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64),
                       cotangent=torch.ones(2)), ValueError, r"cotangent: expected .*\(5, 3\)"),
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64), tol=1e-3), TypeError,
     "tol: expected a handgrad.testing.Tol"),
])
def test_bad_input_is_refused_by_name(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_signature_names_nothing_for_an_unrelated_error():
    r = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)
    tol = tol_for(torch.float64, "grad")
    assert signature(r + torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
                                      dtype=torch.float64), r, tol) is None
    assert signature(-r, r, tol) == "a flipped sign (-1 x the reference)"
    assert signature(0.5 * r, r, tol).startswith("a constant factor: 0.5")


def test_a_derivative_nothing_can_check_is_not_passed():
    def half_only(x):  # numpy (no autograd), float16 only (no float64 central differences)
        if x.dtype != torch.float16:
            raise TypeError("float16 only")
        return torch.from_numpy(np.logaddexp(0.0, x.numpy()))

    x = torch.linspace(-1, 1, 4, dtype=torch.float16)
    with pytest.raises(AssertionError, match="no reference could check it"):
        check_vjp(half_only, lambda g, x: (g * torch.sigmoid(x),), (x,))


def test_a_function_that_raises_under_autograd_falls_back_to_central_differences():
    def plain_numpy(x):  # x.numpy() refuses a tensor that requires grad
        return torch.from_numpy(np.logaddexp(0.0, x.numpy()))

    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for check, d in ((check_vjp, lambda g, x: (g * torch.sigmoid(x),)),
                     (check_jvp, lambda t, x: torch.sigmoid(x) * t[0])):
        report = check(plain_numpy, d, (x,))
        assert report.references == ("central differences",)
        assert any("raised on arguments that require grad (RuntimeError" in n
                   for n in report.notes)


def scale_by_detached(x, w):
    """torch reaches x but not w (a detach): w's true gradient is not zero."""
    return x * w.detach()


def test_an_argument_torch_does_not_reach_is_checked_by_central_differences_alone():
    gen = torch.Generator().manual_seed(5)
    x, w = (torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(2))
    report = check_vjp(scale_by_detached, lambda g, x, w: (g * w, g * x), (x, w))
    assert report.arguments[0].autograd_ratio is not None and not report.arguments[0].note
    assert report.arguments[1].autograd_ratio is None
    assert "torch.autograd does not reach it" in report.arguments[1].note
    with compare_mod.unrecorded(), pytest.raises(AssertionError,
                                                 match=r"wrong derivative for args\[1\] \(w\)"):
        check_vjp(scale_by_detached, lambda g, x, w: (g * w, 2 * g * x), (x, w))
    jr = check_jvp(scale_by_detached, lambda t, x, w: t[0] * w + x * t[1], (x, w))
    assert jr.arguments[0].autograd_ratio is not None
    assert jr.arguments[1].autograd_ratio is None and "does not reach" in jr.arguments[1].note
    with compare_mod.unrecorded(), pytest.raises(AssertionError,
                                                 match=r"wrong derivative for args\[1\] \(w\)"):
        check_jvp(scale_by_detached, lambda t, x, w: t[0] * w, (x, w))


def test_a_nan_gradient_fails_naming_its_argument():
    args = _args(torch.float64)

    def nan_vjp(g, x, weight, bias):
        dx, dw, db = vjp_right(g, x, weight, bias)
        return dx, dw * float("nan"), db

    with compare_mod.unrecorded(), pytest.raises(AssertionError,
                                                 match=r"wrong derivative for args\[1\]"):
        check_vjp(softplus_layer, nan_vjp, args)


def test_a_gradient_on_another_device_is_named():
    args = _args(torch.float64)

    def meta_vjp(g, x, weight, bias):
        dx, dw, db = vjp_right(g, x, weight, bias)
        return dx, dw.to("meta"), db

    with pytest.raises(AssertionError, match=r"args\[1\] \(weight\): vjp's gradient is on "
                                             r"meta, the argument on cpu"):
        check_vjp(softplus_layer, meta_vjp, args)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64),
                       cotangent=torch.full((5, 3), float("nan"), dtype=torch.float64)),
     ValueError, "cotangent: holds NaN"),
    (lambda: check_vjp(softplus_layer, vjp_right,
                       (torch.ones(0, 4, dtype=torch.float64), *_args(torch.float64)[1:])),
     ValueError, r"args\[0\]: an empty tensor"),
    (lambda: check_jvp(softplus_layer, "jvp", _args(torch.float64)), TypeError,
     "jvp: expected a callable"),
    (lambda: check_jvp(softplus_layer, jvp_right, _args(torch.float64)[0]), TypeError,
     r"args=\(x,\)"),
    (lambda: check_jvp(softplus_layer, jvp_right, _args(torch.float64), wrt=["x", 7]),
     ValueError, "positions 0..2"),
    (lambda: compare_mod.assert_close(torch.ones(2), torch.ones(2), tol=0.1), TypeError,
     "tol: expected a handgrad.testing.Tol"),
])
def test_more_bad_input_is_refused_by_name(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_signature_of_mismatched_ranks_is_none():
    tol = tol_for(torch.float64, "grad")
    assert signature(torch.ones(2, 3, dtype=torch.float64),
                     torch.ones(3, 2, 1, dtype=torch.float64), tol) is None


def test_arguments_that_require_grad_pass_under_warnings_as_errors():
    # a gradient computed from arguments that require grad requires grad itself: reading it
    # as a number must not warn (pyproject turns warnings into errors: a right gradient
    # would fail). torch warns once a process, so vjp and jvp are checked in turn here.
    args = tuple(a.clone().requires_grad_() for a in _args(torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vr = check_vjp(softplus_layer, vjp_right, args,
                       cotangent=torch.ones(5, 3, dtype=torch.float64, requires_grad=True))
        jr = check_jvp(softplus_layer, jvp_right, args)
    assert vr.passed and jr.passed
    assert [a.checked for a in vr.arguments] == [True, True, True]


def test_a_numpy_integer_selects_an_argument_like_an_int():
    args = _args(torch.float64)
    for wrt in (np.int64(1), [np.int32(1)], 1):
        report = check_vjp(softplus_layer, vjp_right, args, wrt=wrt)
        assert [a.checked for a in report.arguments] == [False, True, False]
    assert check_jvp(softplus_layer, jvp_right, args, wrt=np.int64(2),
                     directions=np.int64(1)).arguments[2].checked


def _never(*args):
    raise AssertionError("f ran: the bad argument was not refused first")


@pytest.mark.parametrize("call, exc, words", [
    (lambda: check_vjp(softplus_layer, vjp_right,
                       tuple(a.to("meta") for a in _args(torch.float64))), ValueError,
     r"args\[0\]: a tensor on the meta device holds no values"),
    (lambda: check_jvp(softplus_layer, jvp_right,
                       (*_args(torch.float64)[:2], _args(torch.float64)[2].to("meta"))),
     ValueError, r"args\[2\]: a tensor on the meta device"),
    (lambda: check_vjp(lambda x: 2 * x, lambda g, x: (2 * g,),
                       (torch.ones(3, dtype=torch.float64).to_sparse(),)), ValueError,
     r"args\[0\]: a torch.sparse_coo tensor; expected a dense"),
    (lambda: check_vjp(softplus_layer, vjp_right,
                       (torch.ones(5, 4, dtype=torch.int64),
                        torch.ones(3, 4, dtype=torch.complex64), 2)), ValueError,
     r"got \(dtypes and types\) \[torch.int64, torch.complex64, int\]"),
    (lambda: check_vjp(softplus_layer, vjp_right, _args(torch.float64), taylor="no"),
     TypeError, "taylor: expected True or False, got 'no'"),
    (lambda: check_jvp(softplus_layer, jvp_right, _args(torch.float64), taylor=1),
     TypeError, "taylor: expected True or False, got 1"),
    # refused before f runs once (f raises if it does): not after hours of directions
    (lambda: check_vjp(_never, vjp_right, _args(torch.float64), directions=10**12),
     ValueError, "directions: expected a positive integer of at most 10000, got 1000000000000"),
    (lambda: check_jvp(_never, jvp_right, _args(torch.float64), directions=10_001),
     ValueError, "at most 10000, got 10001"),
])
def test_still_more_bad_input_is_refused_by_name(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


# --- a derivative in a narrower dtype than its argument; f or the derivative not finite ----

def product(x, w):
    return x * w


def product_vjp(g, x, w):
    return g * w, g * x


def product_jvp(t, x, w):
    return t[0] * w + x * t[1]


def _cast_vjp(dtype, at):
    """vjp_right with the gradient of args[at] cast to dtype (a cast inside the vjp)."""
    def vjp(g, x, weight, bias):
        grads = list(vjp_right(g, x, weight, bias))
        grads[at] = grads[at].to(dtype)
        return tuple(grads)
    return vjp


def test_a_gradient_narrower_than_its_argument_is_refused_naming_both_dtypes():
    # float64 arguments, the weight's gradient in float32: float32's rounding against
    # float64's tolerance would read as a wrong derivative; it is refused by its dtypes
    with pytest.raises(TypeError) as err:
        check_vjp(softplus_layer, _cast_vjp(torch.float32, 1), _args(torch.float64))
    assert str(err.value) == (
        "vjp's gradient for args[1] (weight): dtype torch.float32 for an argument of dtype "
        "torch.float64; expected torch.float64 (or a wider dtype): a gradient narrower than "
        "its argument has lost the argument's precision (a cast inside the vjp?), so it is "
        "not compared")
    # the same cast where the arguments are float32 is no cast: it passes
    assert check_vjp(softplus_layer, _cast_vjp(torch.float32, 1), _args(torch.float32)).passed
    # a wider gradient holds every value of its argument: float32 arguments, float64 gradient
    assert check_vjp(softplus_layer, _cast_vjp(torch.float64, 0), _args(torch.float32)).passed
    # float16 and bfloat16 each lose what the other holds (precision, range): refused
    x, w = (torch.linspace(-1, 1, 4, dtype=torch.float16) for _ in range(2))
    with pytest.raises(TypeError, match=r"^vjp's gradient for args\[0\] \(x\): dtype "
                                        r"torch.bfloat16 for an argument of dtype torch.float16"):
        check_vjp(product, lambda g, x, w: (g.bfloat16() * w.bfloat16(), g * x), (x, w))


def test_a_tangent_narrower_than_f_output_is_refused_naming_both_dtypes():
    def jvp32(t, x, weight, bias):
        return jvp_right(t, x, weight, bias).float()

    with pytest.raises(TypeError) as err:
        check_jvp(softplus_layer, jvp32, _args(torch.float64))
    assert str(err.value) == (
        "jvp's tangent of f(*args) (moving args[0] (x)): dtype torch.float32 for an output of "
        "dtype torch.float64; expected torch.float64 (or a wider dtype): a tangent narrower "
        "than f's output has lost its precision (a cast inside the jvp?), so it is not "
        "compared")
    assert check_jvp(softplus_layer, jvp32, _args(torch.float32)).passed
    x, w = (torch.linspace(0.5, 2, 4, dtype=torch.float32) for _ in range(2))
    assert check_jvp(product, lambda t, x, w: product_jvp(t, x, w).double(), (x, w)).passed
    # the tangent is f's output's: float32 arguments, f in float64, a float32 tangent
    with pytest.raises(TypeError, match=r"dtype torch.float32 for an output of dtype "
                                        r"torch.float64; expected torch.float64"):
        check_jvp(lambda x, w: product(x, w).double(), product_jvp, (x, w))


def _not_called(*args):
    raise AssertionError("the derivative ran: f's non-finite value was not refused first")


@pytest.mark.parametrize("check", [check_vjp, check_jvp])
def test_f_not_finite_at_the_point_is_refused_naming_its_elements(check):
    x = torch.tensor([1.0, -2.0, 3.0, -0.5], dtype=torch.float64)  # log of -2 and -0.5: nan
    with pytest.raises(ValueError) as err:
        check(torch.log, _not_called, (x,))
    assert str(err.value) == (
        "args: f(*args) is not finite at the given point: NaN or inf in 2 of its 4 output "
        "elements (index (1,): nan, index (3,): nan); no derivative can be checked there: "
        "expected args where f is finite (log or sqrt of a negative number is nan, say)")
    # inf too, and past three elements the rest are counted, not listed
    x = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"NaN or inf in 4 of its 6 output elements "
                                         r"\(index \(0, 0\): inf, index \(0, 2\): inf, "
                                         r"index \(1, 0\): inf, \.\.\.\); no derivative"):
        check(lambda x: 1 / x, _not_called, (x,))


def test_a_non_finite_gradient_is_named_not_compared():
    def nan_vjp(g, x, weight, bias):
        dx, dw, db = vjp_right(g, x, weight, bias)
        dw = dw.clone()
        dw[1, 2] = float("nan")
        return dx, dw, db

    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(softplus_layer, nan_vjp, _args(torch.float64))
    text = str(err.value)
    lines = text.splitlines()
    assert lines[0] == "check_vjp of softplus_layer: wrong derivative for args[1] (weight)"
    assert lines[1] == (
        "- args[1] (weight): vjp returned non-finite values where f(*args) is finite: NaN or "
        "inf in 1 of its 12 elements (index (1, 2): nan); not compared with the references")
    assert [line for line in lines if line.startswith("- ")] == lines[1:2]  # no comparison


def test_a_non_finite_tangent_is_named_not_compared():
    def inf_jvp(t, x, weight, bias):
        out = jvp_right(t, x, weight, bias)
        if bool(t[2].ne(0).any()):  # wrong only where the bias moves
            out = out.clone()
            out[0, 1] = float("inf")
        return out

    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_jvp(softplus_layer, inf_jvp, _args(torch.float64))
    lines = str(err.value).splitlines()
    assert lines[0].endswith("wrong derivative for args[2] (bias)")
    assert lines[1] == (
        "- args[2] (bias): jvp returned non-finite values for a tangent of this argument, "
        "where f(*args) is finite: NaN or inf in 1 of its 15 elements (index (0, 1): inf); "
        "not compared with the references")
    assert [line for line in lines if line.startswith("- ")] == lines[1:2]  # no comparison


def test_a_point_where_f_is_not_differentiable_is_blamed_not_the_derivative():
    # sqrt at 0: f is finite, its derivative is not; a right vjp/jvp returns inf there, and
    # torch's own derivative does too: the point is at fault
    x = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(torch.sqrt, lambda g, x: (g * 0.5 / torch.sqrt(x),), (x,))
    assert ("- args[0]: vjp returned non-finite values where f(*args) is finite: NaN or inf "
            "in 1 of its 3 elements (index (0,): inf); not compared with the references; "
            "torch.autograd's gradient is not finite there either (NaN or inf in 1 of its 3 "
            "elements (index (0,): inf)): f is not differentiable at this point (sqrt at 0, "
            "say), so nothing can be checked there: choose another point") in str(err.value)
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_jvp(torch.sqrt, lambda t, x: t[0] * 0.5 / torch.sqrt(x), (x,))
    assert "'s tangent is not finite there either (NaN or inf in 1 of its 3 elements" in str(
        err.value)
    assert "f is not differentiable at this point" in str(err.value)
    # a derivative that is not finite where torch's is finite says nothing of the point,
    # though torch's is not finite elsewhere (at 0)
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(torch.sqrt, lambda g, x: (g / x.sub(1.0),), (x,))
    assert "index (1,): " in str(err.value) and "not differentiable" not in str(err.value)
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_jvp(torch.sqrt, lambda t, x: t[0] / x.sub(1.0), (x,))
    assert "index (1,): " in str(err.value) and "not differentiable" not in str(err.value)


# --- names of torch's own functions ----------------------------------------------------------

def test_torch_functions_are_named_as_torch_spells_them():
    # torch.sin's qualified name is _VariableFunctionsClass.sin, Tensor.sin's TensorBase.sin:
    # messages and records read torch.sin and Tensor.sin
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    assert check_vjp(torch.sin, lambda g, x: g * torch.cos(x), (x,)).function == "torch.sin"
    assert str(check_jvp(torch.Tensor.sin, lambda t, x: t[0] * torch.cos(x), (x,))).startswith(
        "check_jvp of Tensor.sin (float64): PASS")
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(torch.sin, lambda g, x: g * torch.sin(x), (x,))
    assert str(err.value).startswith("check_vjp of torch.sin: wrong derivative for args[0]")
    before = len(compare_mod.RECORDS)
    check_vjp(lambda x: 0.5 * x * x, torch.mul, (x,))  # the vjp g * x is torch.mul itself
    assert {r.kernel for r in compare_mod.RECORDS[before:]} == {"torch.mul"}


# --- f or the derivative writing into its arguments ------------------------------------------

def _tanh_vjp(g, x):
    return g * (1 - torch.tanh(x) ** 2)


def _tanh_jvp(t, x):
    return t[0] * (1 - torch.tanh(x) ** 2)


@pytest.mark.parametrize("check, derivative", [(check_vjp, _tanh_vjp), (check_jvp, _tanh_jvp)])
def test_an_f_that_writes_into_its_arguments_is_refused_and_the_callers_tensors_kept(
        check, derivative):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = x.clone()
    with pytest.raises(ValueError) as err:
        check(lambda x: x.tanh_(), derivative, (x,))
    assert str(err.value) == (
        "f: modified args[0] (x) in place (an in-place op such as mul_ or tanh_, or an "
        "assignment into it); the check calls f again at and around the point, so f must "
        "leave its arguments as they are (a point that moves has no derivative to check): "
        "expected an f that does not write into them (x.tanh() rather than x.tanh_(), or "
        "x = x.clone() first). The caller's tensors are unchanged: the check gave f copies")
    assert torch.equal(x, before)  # f ran on a copy

    def zero_first_row(x, w):  # an assignment into another argument
        w[0] = 0.0
        return x * w

    w = torch.ones(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^f: modified args\[1\] \(w\) in place"):
        check(zero_first_row, lambda *a: None, (x, w))
    assert bool((w == 1).all())
    # an in-place op that leaves the values as they are (clamp_ inside the range) is one too
    with pytest.raises(ValueError, match=r"^f: modified args\[0\] \(x\) in place"):
        check(lambda x: x.clamp_(-100.0, 100.0).tanh(), derivative, (x,))
    # and a write torch's version counter does not see (through .data)
    with pytest.raises(ValueError, match=r"^f: modified args\[0\] \(x\) in place"):
        check(lambda x: (x.data.mul_(0.5), torch.tanh(x))[1], derivative, (x,))
    assert torch.equal(x, before)
    # an f that copies first is fine
    assert check(lambda x: x.clone().tanh_(), derivative, (x,)).passed


def test_a_derivative_that_writes_into_its_cotangent_or_tangent_is_checked_on_a_copy():
    # a right derivative computed in place in the cotangent (tangent) it is given, as a
    # backward may: it passes, and the caller's cotangent is unchanged
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u0 = u.clone()
    assert check_vjp(torch.sin, lambda g, x: g.mul_(torch.cos(x)), (x,), cotangent=u).passed
    assert torch.equal(u, u0)
    assert check_vjp(torch.sin, lambda g, x: g.mul_(torch.cos(x)), (x,)).passed
    assert check_jvp(torch.sin, lambda t, x: t[0].mul_(torch.cos(x)), (x,),
                     directions=3).passed


def test_a_derivative_that_writes_into_f_arguments_is_refused_by_name():
    args = _args(torch.float64)
    before = [a.clone() for a in args]

    def vjp_scaling_weight(g, x, weight, bias):
        weight.mul_(1.0)  # values unchanged, still a write
        return vjp_right(g, x, weight, bias)

    with pytest.raises(ValueError) as err:
        check_vjp(softplus_layer, vjp_scaling_weight, args)
    assert str(err.value) == (
        "vjp: modified args[1] (weight) in place (an in-place op such as mul_ or tanh_, or an "
        "assignment into it); a derivative must leave f's arguments as they are (the check "
        "reads them again after it, as autograd does after a backward): expected a vjp that "
        "does not write into them (g * x rather than x.mul_(g); writing into the cotangent "
        "is fine). The caller's tensors are unchanged: the check gave vjp copies")

    def jvp_into_bias(t, x, weight, bias):
        out = jvp_right(t, x, weight, bias)
        if bool(t[2].ne(0).any()):  # only where the bias moves: the third argument checked
            bias.add_(t[2])
        return out

    with pytest.raises(ValueError) as err:
        check_jvp(softplus_layer, jvp_into_bias, args)
    assert str(err.value).startswith(
        "jvp: modified args[2] (bias) in place (an in-place op such as mul_ or tanh_, or an "
        "assignment into it); a derivative must leave f's arguments as they are (the check "
        "reads them again after it): expected a jvp that does not write into them (t[0] * x "
        "rather than x.mul_(t[0]); writing into the tangents is fine)")
    assert all(torch.equal(a, b) for a, b in zip(args, before))


def test_an_argument_holding_nan_is_not_taken_for_a_write():
    # a complex argument is not differentiated, so not refused for a NaN: f leaves it as it
    # is, and NaN != NaN must not read as f having written into it
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    c = torch.tensor([complex("nan"), 1j])
    assert check_vjp(lambda x, c: torch.tanh(x), lambda g, x, c: (_tanh_vjp(g, x), None),
                     (x, c)).passed
    assert check_jvp(lambda x, c: torch.tanh(x), lambda t, x, c: _tanh_jvp(t, x), (x, c)).passed


# --- f's graph broken for torch ----------------------------------------------------------------

def scaled_by_max(x):
    """x * max(x), the max leaving torch's graph through .item(): torch differentiates
    x * c, a constant c, while f's true derivative has the max's term too."""
    return x * x.max().item()


def scaled_by_max_vjp(g, x):  # the true derivative: g * max + e_argmax <g, x>
    gx = (g * x.max()).clone()
    gx[x.argmax()] += (g * x).sum()
    return gx


def scaled_by_max_jvp(t, x):
    return t[0] * x.max() + x * t[0][x.argmax()]


@pytest.mark.parametrize("check, derivative, torch_name", [
    (check_vjp, scaled_by_max_vjp, "torch.autograd"),
    (check_jvp, scaled_by_max_jvp, "torch.func.jvp")])
def test_torch_disagreeing_where_central_differences_agree_says_f_graph_may_be_broken(
        check, derivative, torch_name):
    x = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64)
    mode = "vjp" if check is check_vjp else "jvp"
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check(scaled_by_max, derivative, (x,))
    text = str(err.value)
    assert text.splitlines()[0] == (f"check_{mode} of scaled_by_max: wrong derivative for "
                                    "args[0] (x)")
    assert (f"    {torch_name} disagrees, but central differences agree with the {mode} (error "
            in text)
    assert ("): f's graph may be broken for torch (float(), .item(), numpy or .detach() inside "
            "f), so torch differentiates another function than f computes.\n    Still a "
            "failure, as central differences check projections only: let torch follow f "
            "(x.max(), not float(x.max())), or pass f with its arguments detached (lambda x: "
            "f(x.detach())) to check against central differences alone") in text
    if check is check_jvp:  # the jvp stops at the first tangent torch disagrees on
        calls = []
        with compare_mod.unrecorded(), pytest.raises(AssertionError, match="graph may be"):
            check_jvp(scaled_by_max, lambda t, x: calls.append(1) or derivative(t, x), (x,),
                      directions=4)
        assert len(calls) == 2  # that tangent's call and its repeat (the jvp's determinism)
    # the way out it names: central differences alone pass the right derivative
    report = check(lambda x: scaled_by_max(x.detach()), derivative, (x,))
    assert report.references == ("central differences",)
    # a derivative central differences reject too is only wrong: no word of f's graph
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check(scaled_by_max, lambda *a: 2 * derivative(*a), (x,))
    assert "against central differences" in str(err.value)
    assert "graph may be broken" not in str(err.value)


# --- the verify report's records ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_records_carry_the_dtype_whose_tolerance_judged_them(dtype):
    # central differences run in float64 here (f does) and are compared as float64 numbers,
    # a gradient may be wider than its argument: each record still says the argument's
    # dtype, whose tolerance it holds, so the report's rows per dtype hold one tolerance
    args = _args(dtype)
    before = len(compare_mod.RECORDS)
    check_vjp(softplus_layer, _cast_vjp(torch.float64, 0), args)  # x's gradient in float64
    check_jvp(softplus_layer, jvp_right, args)
    new = compare_mod.RECORDS[before:]
    grad = tol_for(dtype, "grad")
    assert {r.dtype for r in new} == {str(dtype).removeprefix("torch.")}
    assert {r.device for r in new} == {"cpu"}
    central = [r for r in new if r.reference == "central differences"]
    assert central and {r.atol for r in central} == {grad.rtol}  # max(float64's 1e-6, rtol)
    # the table's rtol; its atol, or (a gradient whose largest element is below 1) that
    # atol scaled down with it
    elementwise = [r for r in new if r.reference != "central differences"]
    assert {r.rtol for r in elementwise} == {grad.rtol}
    assert grad.atol in {r.atol for r in elementwise}
    assert all(0 < r.atol <= grad.atol for r in elementwise)
    # a failing comparison too (kept out of the session's report), of a gradient in float64
    def wrong_and_wide(g, x, weight, bias):
        dx, dw, db = vjp_right(g, x, weight, bias)
        return dx, dw, 2 * db.double()

    with compare_mod.unrecorded():
        before = len(compare_mod.RECORDS)
        with pytest.raises(AssertionError):
            check_vjp(softplus_layer, wrong_and_wide, args)
        failed = [r for r in compare_mod.RECORDS[before:] if not r.passed]
        assert {r.reference for r in failed} == {"torch_autograd", "central differences"}
        assert {r.dtype for r in failed} == {str(dtype).removeprefix("torch.")}


# --- f's output narrower than its arguments -----------------------------------------------------

def sin_half(x):  # float32 in, float16 out
    return torch.sin(x).half()


def test_f_returning_a_narrower_dtype_is_checked_at_its_output_tolerance():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    before = len(compare_mod.RECORDS)
    report = check_vjp(sin_half, lambda g, x: g.float() * torch.cos(x), (x,))
    assert report.notes == (
        "f(*args) is torch.float16, narrower than args[0] (x) (torch.float32): compared at "
        "torch.float16's gradient tolerance, the precision f's output holds (pass tol= for "
        "another, or compute f in its arguments' dtype)",
        "central differences skipped for args[0] (x): f runs in or returns torch.float16 "
        "there, too coarse for them (f does not run in float64)")
    assert report.references == ("torch_autograd",)
    assert {r.dtype for r in compare_mod.RECORDS[before:]} == {"float16"}
    jr = check_jvp(sin_half, lambda t, x: (t[0] * torch.cos(x)).half(), (x,))
    assert jr.passed and jr.notes[0].startswith("f(*args) is torch.float16, narrower than")
    with compare_mod.unrecorded(), pytest.raises(AssertionError, match="a constant factor: 2"):
        check_vjp(sin_half, lambda g, x: 2 * g.float() * torch.cos(x), (x,))
    # a tolerance passed is used as it is
    told = check_vjp(sin_half, lambda g, x: g.float() * torch.cos(x), (x,), tol=tol_for(
        torch.float16, "grad").scaled(2))
    assert told.notes[0] == ("f(*args) is torch.float16, narrower than args[0] (x) "
                             "(torch.float32): compared at the tol passed")
    # a gradient narrower than both the argument and f's output is still refused
    with pytest.raises(TypeError, match=r"dtype torch.bfloat16 for an argument of dtype "
                                        r"torch.float32"):
        check_vjp(sin_half, lambda g, x: (g.float() * torch.cos(x)).bfloat16(), (x,))


def sin_in_float32(x):  # float64 in, computed and returned in float32
    return torch.sin(x.float())


def test_f_computing_in_float32_from_float64_is_checked_in_float32():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for vjp in (lambda g, x: g * torch.cos(x),  # float64 gradient
                lambda g, x: g * torch.cos(x.float())):  # float32, as f's output: no loss
        report = check_vjp(sin_in_float32, vjp, (x,))
        assert report.references == ("torch_autograd", "central differences")
        assert "compared at torch.float32's gradient tolerance" in report.notes[0]
        assert report.arguments[0].taylor_order is None  # f does not run in float64
    assert check_jvp(sin_in_float32, lambda t, x: t[0] * torch.cos(x), (x,)).passed
    # an error float32's tolerance sees fails against either reference
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(sin_in_float32, lambda g, x: 1.01 * g * torch.cos(x), (x,))
    assert "against torch_autograd" in str(err.value)
    assert "against central differences" in str(err.value)


def test_float16_and_bfloat16_each_narrower_than_the_other_take_the_looser_tolerance():
    x = torch.linspace(-1, 1, 6, dtype=torch.float32)
    for arg, returned, judged in ((torch.float16, torch.bfloat16, "bfloat16"),
                                  (torch.bfloat16, torch.float16, "bfloat16")):
        before = len(compare_mod.RECORDS)
        report = check_vjp(lambda x, returned=returned: torch.sin(x).to(returned),
                           lambda g, x: g.to(x.dtype) * torch.cos(x), (x.to(arg),))
        assert {r.dtype for r in compare_mod.RECORDS[before:]} == {judged}
        # a note only where the tolerance is not the argument's own
        assert any("narrower than" in n for n in report.notes) == (arg == torch.float16)


def test_central_differences_are_named_only_where_an_argument_takes_them():
    def half_only_product(x, w):  # runs in float16 alone: too coarse for central differences
        if x.dtype != torch.float16:
            raise TypeError("float16 only")
        return x * w

    x, w = (torch.linspace(0.5, 1, 4, dtype=torch.float16) for _ in range(2))
    report = check_vjp(half_only_product, product_vjp, (x, w))
    assert report.references == ("torch_autograd",)
    assert report.notes == ("central differences skipped for args[0] (x), args[1] (w): f runs "
                            "in or returns torch.float16 there, too coarse for them (f does not "
                            "run in float64)",)
    assert check_jvp(half_only_product, product_jvp, (x, w)).references == ("torch_func_jvp",)


# --- the Taylor remainder's order -----------------------------------------------------------

def _x24(seed=0):
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("check, derivative, words", [
    (check_vjp, lambda g, x: 1.001 * g * torch.cos(x),
     "|<u, f(x + h v)> - <u, f(x)> - h <vjp(u), v>| falls as h^1.0"),
    (check_jvp, lambda t, x: 1.001 * t[0] * torch.cos(x),
     "|<w, f(x + h t)> - <w, f(x)> - h <w, jvp(t)>| falls as h^1.0")])
def test_a_wrong_derivative_within_a_loose_tol_fails_on_its_taylor_order(check, derivative,
                                                                         words):
    # 0.1% off: inside tol=1e-2 for torch and central differences, but the Taylor remainder
    # falls as h, not h^2, and central differences along its direction see the same error
    loose = Tol(1e-2, 1e-2)
    mode = "vjp" if check is check_vjp else "jvp"
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check(torch.sin, derivative, (_x24(),), tol=loose)
    lines = str(err.value).splitlines()
    assert lines[0] == f"check_{mode} of torch.sin: wrong derivative for args[0]"
    assert lines[1].startswith("- args[0]: against the Taylor remainder: " + words)
    assert lines[1].endswith(f"; within the tolerance (rtol 0.01, atol 0.01), but not f's "
                             f"derivative (taylor=False accepts a {mode} that is approximate "
                             "on purpose)")
    assert "where an exact derivative gives h^2" in lines[1]
    # the way out it names: an approximation on purpose passes with taylor=False
    with compare_mod.unrecorded():
        report = check(torch.sin, derivative, (_x24(),), tol=loose, taylor=False)
    assert report.passed and report.arguments[0].taylor_order is None
    # the right derivative passes at that tolerance, order 2
    right = check(torch.sin, lambda *a: derivative(*a) / 1.001, (_x24(),), tol=loose)
    assert abs(right.arguments[0].taylor_order - 2) < 0.2 and right.arguments[0].note == ""


@pytest.mark.parametrize("check, derivative", [
    (check_vjp, lambda g, x: g * ((x > -1) & (x < 1))),
    (check_jvp, lambda t, x: t[0] * ((x > -1) & (x < 1)))])
def test_a_right_derivative_with_kinks_near_x_is_not_failed_on_its_taylor_order(check,
                                                                                derivative):
    # hardtanh's kinks at +-1 are crossed between the Taylor test's steps: its fitted order
    # falls below 1.5 for a right derivative, which is reported with a note, not failed
    report = check(F.hardtanh, derivative, (_x24(),))
    a = report.arguments[0]
    assert a.passed and a.taylor_order < 1.5
    assert a.note == ("a Taylor order below 1.5 set aside: its remainder jumps, or central "
                      "differences at x measure no such error (f is not smooth near x: a "
                      "kink between the steps?)")


def _taylor(remainder, order):
    from handgrad.kernels.finite_diff import TaylorTest

    h = tuple(0.1 / 2 ** k for k in range(len(remainder)))
    return TaylorTest(h=h, remainder=tuple(remainder), noise=(0.0,) * len(h), order=order,
                      fitted=tuple(range(len(h))))


def test_the_taylor_verdict_trusts_a_steady_fit_central_differences_confirm():
    from handgrad.testing.checks import _taylor_failure

    what = ("u", "<vjp(u), v>", "v", "vjp")
    tol = Tol(1e-2, 1e-2)
    steady = _taylor([1e-3 * 0.1 / 2 ** k for k in range(5)], 1.0)  # r(h) = 1e-3 h
    # central differences see the error r(h) / h = 1e-3 too: a wrong derivative
    assert _taylor_failure("args[0]", steady, ours=2.001, fd=2.0, scale=4.0, tol=tol,
                           what=what).startswith("args[0]: against the Taylor remainder: |<u, "
                                                 "f(x + h v)> - <u, f(x)> - h <vjp(u), v>| "
                                                 "falls as h^1.00 along a random v")
    assert _taylor_failure("args[0]", steady, ours=2.0014, fd=2.0, scale=4.0, tol=tol,
                           what=what)  # 1.4x: within the factor
    # central differences at x measure another error: f is not smooth between the steps
    for ours in (2.0 + 1e-9, 2.0016, 2.0006):
        assert _taylor_failure("args[0]", steady, ours=ours, fd=2.0, scale=4.0, tol=tol,
                               what=what) is None
    # a remainder that jumps (a step crossed: flat between steps, local order 0)
    jumpy = _taylor([1e-4, 1e-4, 5e-5, 2.5e-5, 1.25e-5], 0.8)
    assert _taylor_failure("args[0]", jumpy, ours=2.0 + 1.25e-5 / (0.1 / 16), fd=2.0,
                           scale=4.0, tol=tol, what=what) is None
    # growing faster than h^2.5 between two steps (the onset of a kink's crossing)
    onset = _taylor([4e-4, 2e-4, 1e-4, 5e-5, 5e-6], 1.3)
    assert _taylor_failure("args[0]", onset, ours=2.0 + 5e-6 / (0.1 / 16), fd=2.0,
                           scale=4.0, tol=tol, what=what) is None


# --- no element-wise torch reference: the vjp's own float64 run ------------------------------

def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


def _gelu_prime(x):
    return 0.5 * (1 + torch.erf(x / 2**0.5)) + x * torch.exp(-x * x / 2) / (2 * torch.pi)**0.5


class _Gelu(torch.autograd.Function):  # torch would replay this backward: no reference
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _gelu(x)

    @staticmethod
    def backward(ctx, g):
        return g * _gelu_prime(ctx.saved_tensors[0])


def _one_wrong_element(g, x):
    r = g * _gelu_prime(x)
    r[0, 7] *= 3.0  # one element of 65,536: a projection's sum hides it at float32's rtol
    return r


def test_one_wrong_element_among_many_is_caught_through_the_vjp_in_float64():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(1))
    right = check_vjp(_Gelu.apply, lambda g, x: g * _gelu_prime(x), (x,))
    assert right.passed and "the vjp in float64" in right.references
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(_Gelu.apply, _one_wrong_element, (x,))
    assert "- args[0]: against central differences: <vjp(u), v> in float64 = " in str(
        err.value)
    assert "allowed 1e-06" in str(err.value)  # float64's floor, not float32's rtol


def test_a_vjp_wrong_in_float32_only_is_held_to_its_float64_run():
    def drifts(g, x):  # right in float64; in float32 one element off by 1%
        r = g * _gelu_prime(x)
        if r.dtype == torch.float32:
            r[3, 4] *= 1.01
        return r

    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(_Gelu.apply, drifts, (x,))
    assert "- args[0]: against the vjp in float64: tensors are not close" in str(err.value)
    assert "Worst element at index (3, 4)" in str(err.value)


@pytest.mark.parametrize("vjp, says", [
    (lambda g, x: (g * _gelu_prime(x)) if x.dtype == torch.float32 else 1 / 0,
     "the vjp does not run in float64 (ZeroDivisionError): central differences check it at "
     "its own dtype's tolerance only"),
    (lambda g, x: (g * _gelu_prime(x)).float(),
     "the vjp gives no float64 gradients at float64 arguments"),
])
def test_a_vjp_for_one_dtype_is_checked_in_it_alone_and_says_so(vjp, says):
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    report = check_vjp(_Gelu.apply, vjp, (x,))
    assert report.passed and "the vjp in float64" not in report.references
    assert any(says in n for n in report.notes), report.notes


def test_a_float64_run_that_is_not_finite_is_not_used():
    def overflows_in_float64(g, x):  # the float32 gradient under test is right
        r = g * _gelu_prime(x)
        if r.dtype == torch.float64:
            r[0, 0] = float("inf")
        return r

    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    report = check_vjp(_Gelu.apply, overflows_in_float64, (x,))
    assert report.passed and "the vjp in float64" not in report.references
    assert "the vjp's float64 gradient is not finite where this one is: not used" in (
        report.arguments[0].note)


def test_the_float64_run_takes_none_as_zero_and_the_callers_tol():
    # a vjp that gives None for an argument f does not use (through a detach): zero
    x = torch.randn(6, generator=torch.Generator().manual_seed(5))
    y = torch.randn(6, generator=torch.Generator().manual_seed(6))
    report = check_vjp(lambda x, y: _Gelu.apply(x) + y.detach() * 0,
                       lambda u, x, y: (u * _gelu_prime(x), None), (x, y))
    assert report.passed and "the vjp in float64" in report.references
    # a vjp approximate on purpose, inside the tol given: the float64 run keeps that tol
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(7))
    loose = check_vjp(_Gelu.apply, lambda u, x: 1.001 * u * _gelu_prime(x), (x,),
                      tol=Tol(rtol=1e-2, atol=1e-2))
    assert loose.passed and "the vjp in float64" in loose.references
    with compare_mod.unrecorded(), pytest.raises(AssertionError, match="allowed 1e-06"):
        check_vjp(_Gelu.apply, lambda u, x: 1.001 * u * _gelu_prime(x), (x,))


def test_the_float64_runs_central_differences_are_recorded_as_float64():
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(8))
    before = len(compare_mod.RECORDS)
    check_vjp(_Gelu.apply, lambda u, x: u * _gelu_prime(x), (x,))
    rows = {(r.reference, r.dtype, r.atol, r.rtol) for r in compare_mod.RECORDS[before:]}
    fd64 = {r for r in rows if r[0] == "central differences"}
    assert fd64 == {("central differences", "float64", 1e-6, 0.0)}, rows
    elementwise = {r for r in rows if r[0] == "the vjp in float64"}
    assert {r[1] for r in elementwise} == {"float32"}, rows  # the gradient under test's


def test_running_out_of_memory_in_float64_is_said_as_it_is():
    def big_in_float64(u, x):
        if x.dtype == torch.float64:
            raise torch.cuda.OutOfMemoryError("out of memory")
        return u * _gelu_prime(x)

    x = torch.randn(4, generator=torch.Generator().manual_seed(9))
    with pytest.raises(torch.cuda.OutOfMemoryError):  # not read as "a vjp for one dtype"
        check_vjp(_Gelu.apply, big_in_float64, (x,))


def test_a_disagreement_below_central_differences_resolution_gets_no_graph_hint():
    # torch's softplus is x itself above 20: its derivative there is exactly 1, a
    # sigmoid-based vjp 1 - 1.25e-9. A real difference at float64's tolerance, far below
    # what central differences resolve: they agree with both, so they say nothing of f's
    # graph (the hint is for a torch answer they can tell apart: the test above)
    x = torch.tensor([20.5, 0.3, -1.0], dtype=torch.float64)
    for check, d in ((check_vjp, lambda g, x: g * torch.sigmoid(x)),
                     (check_jvp, lambda t, x: t[0] * torch.sigmoid(x))):
        with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
            check(F.softplus, d, (x,))
        assert "index (0,)" in str(err.value) and "graph may be broken" not in str(err.value)


# --- float32 rounding in sums that cancel ----------------------------------------------------

def _tanh_layer_args(n, k, p, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen), torch.randn(k, p, generator=gen))


def tanh_layer(x, w):
    return torch.tanh(x @ w)


def tanh_layer_vjp(d, x, w):
    d = d * (1 - torch.tanh(x @ w) ** 2)  # tanh' = 1 - tanh^2
    return d @ w.T, x.T @ d


def tanh_layer_jvp(t, x, w):
    return (1 - torch.tanh(x @ w) ** 2) * (t[0] @ w + x @ t[1])


def test_a_right_float32_gradient_summing_over_many_rows_passes_with_its_rounding_allowed():
    # w's gradient sums 8,192 rows: at float32's rtol 1e-4 alone this right vjp failed at
    # every seed tried (rounding of ~5e-5 against elements as small as 0.005)
    args = _tanh_layer_args(8192, 64, 32, seed=0)
    with pytest.raises(AssertionError, match="args\\[1\\] \\(w\\)"):  # the old rule, as tol=
        check_vjp(tanh_layer, tanh_layer_vjp, args, tol=tol_for(torch.float32, "grad"),
                  taylor=False)
    report = check_vjp(tanh_layer, tanh_layer_vjp, args, taylor=False)
    w = report.arguments[1]
    assert w.passed and "float32 rounding allowed: atol 1e-05 + 4 x" in w.note
    assert "torch.autograd's gradient at float32 against its float64 one" in w.note


def test_the_rounding_allowance_still_catches_one_element_one_percent_off():
    args = _tanh_layer_args(8192, 64, 32, seed=0)

    def vjp_one_off(d, x, w):
        gx, gw = tanh_layer_vjp(d, x, w)
        gw[3, 4] *= 1.01
        return gx, gw

    with pytest.raises(AssertionError) as e:
        check_vjp(tanh_layer, vjp_one_off, args, taylor=False)
    msg = str(e.value)
    assert "wrong derivative for args[1] (w)\n" in msg and "index (3, 4)" in msg
    # the failure itself (above the report) says what it allowed
    assert "float32 rounding allowed" in msg.split("\n\n")[0]


def test_a_right_float32_tangent_summing_over_many_inputs_passes_with_its_rounding_allowed():
    args = _tanh_layer_args(8, 8192, 32, seed=1)  # at rtol 1e-4 alone: failed
    with pytest.raises(AssertionError, match="args\\[1\\] \\(w\\)"):
        check_jvp(tanh_layer, tanh_layer_jvp, args, tol=tol_for(torch.float32, "grad"),
                  taylor=False)
    report = check_jvp(tanh_layer, tanh_layer_jvp, args, taylor=False)
    assert report.arguments[1].passed
    assert "float32 rounding allowed" in report.arguments[1].note
    assert "torch_func_jvp's tangent at float32" in report.arguments[1].note


def test_a_float32_tangent_one_element_off_is_caught_with_the_rounding_allowed():
    args = _tanh_layer_args(8, 8192, 32, seed=1)

    def jvp_one_off(t, x, w):
        out = tanh_layer_jvp(t, x, w)
        out[2, 5] += 0.01 * out.abs().max()  # 1% of the largest element, at one element
        return out

    with pytest.raises(AssertionError) as e:
        check_jvp(tanh_layer, jvp_one_off, args, wrt=[1], taylor=False)
    failure = str(e.value).split("\n\n")[0]
    assert "index (2, 5)" in failure and "float32 rounding allowed" in failure


def test_no_rounding_allowance_where_torch_float32_gradient_is_exact():
    # 2 * x is exact in float32: a wrong gradient gets no allowance to hide in
    x = torch.linspace(-1, 1, 64)
    with pytest.raises(AssertionError) as e:
        check_vjp(lambda x: 2 * x, lambda d, x: 2.001 * d, (x,), taylor=False)
    assert "rounding allowed" not in str(e.value)


def test_an_f_that_loses_float32_precision_is_failed_with_the_reason():
    # sin(x + 1e7): float32 holds x + 1e7 to 1, so its cos there is nothing like float64's;
    # no allowance can tell a right derivative from a wrong one at that level
    x = torch.linspace(-1, 1, 256)
    with pytest.raises(AssertionError) as e:
        check_vjp(lambda x: torch.sin(x + 1e7), lambda d, x: d * torch.cos(x + 1e7), (x,),
                  cotangent=torch.ones(256), taylor=False)
    msg = str(e.value)
    assert "f loses precision at float32 here" in msg and "check in float64" in msg
    assert msg.count("f loses precision") == 1  # said with the failure, not again as a note
    assert "rounding allowed" not in msg


@pytest.mark.parametrize("float32_f", ["raises", "detaches"])
def test_no_rounding_allowance_where_torch_cannot_differentiate_f_at_float32(float32_f):
    # an f torch differentiates in float64 only: the gradient is compared as before, and a
    # wrong one fails as wrong (not an error of the check)
    def f(x):
        if x.dtype == torch.float32 and x.requires_grad:
            if float32_f == "raises":
                raise RuntimeError("float64 only")
            x = x.detach()
        return torch.sin(x)

    x = torch.linspace(-1, 1, 64)
    with pytest.raises(AssertionError) as e:
        check_vjp(f, lambda d, x: d * torch.cos(x) * 1.001, (x,), taylor=False)
    assert "wrong derivative for args[0]" in str(e.value)
    assert "rounding allowed" not in str(e.value)


def test_no_rounding_allowance_where_torch_has_no_float32_tangent_of_f():
    def f(x):  # numpy at float32: torch has no tangent of it there, in float64 it does
        if x.dtype == torch.float32:
            return torch.from_numpy(np.sin(x.numpy()))
        return torch.sin(x)

    x = torch.linspace(-1, 1, 64)
    with pytest.raises(AssertionError) as e:
        check_jvp(f, lambda t, x: t[0] * torch.cos(x) * 1.001, (x,), taylor=False)
    assert "wrong derivative for args[0]" in str(e.value)
    assert "rounding allowed" not in str(e.value)


def test_central_differences_allow_the_rounding_of_a_right_float32_gradient():
    # a cross-entropy summed over 512 rows: the element-wise comparison passes, but the
    # projection <vjp(u), v> of w's float32 gradient missed float64's central difference by
    # 1.05e-4 of the terms' size (allowed 1e-4): float32 rounding, not a wrong gradient
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(512, 64, generator=gen), torch.randn(64, 32, generator=gen)
    b, y = torch.randn(32, generator=gen), torch.randint(0, 32, (512,), generator=gen)

    def ce(x, w, b):
        return F.cross_entropy(x @ w + b, y, reduction="sum")

    def ce_vjp(d, x, w, b):
        p = torch.softmax(x @ w + b, 1)  # d/dz of -log softmax(z)[y] = softmax(z) - onehot
        p[torch.arange(len(y)), y] -= 1
        p = p * d
        return p @ w.T, x.T @ p, p.sum(0)

    u = torch.randn((), generator=torch.Generator().manual_seed(103))
    with pytest.raises(AssertionError, match="args\\[1\\] \\(w\\): against central"):
        check_vjp(ce, ce_vjp, (x, w, b), cotangent=u, tol=tol_for(torch.float32, "grad"),
                  taylor=False)
    report = check_vjp(ce, ce_vjp, (x, w, b), cotangent=u, taylor=False)
    w_check = report.arguments[1]
    assert w_check.passed and "float32 rounding allowed" in w_check.note
    # the report's central-difference headroom is the allowed one's: over 1x when passing
    assert w_check.fd_error < w_check.fd_allowed and w_check.fd_allowed > 1e-4


# --- no element-wise torch reference: the jvp's own float64 run ------------------------------

def test_one_wrong_element_among_many_is_caught_through_the_jvp_in_float64():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(1))
    right = check_jvp(_Gelu.apply, lambda t, x: t[0] * _gelu_prime(x), (x,))
    assert right.passed and "the jvp in float64" in right.references

    def one_wrong(t, x):  # one element of 65,536: passed with headroom 16x before
        r = t[0] * _gelu_prime(x)
        r[0, 7] *= 3.0
        return r

    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_jvp(_Gelu.apply, one_wrong, (x,))
    assert "- args[0]: against central differences: <w, jvp(t)> in float64 = " in str(
        err.value)
    assert "allowed 1e-06" in str(err.value)  # float64's floor, not float32's rtol


def test_a_jvp_wrong_in_float32_only_is_held_to_its_float64_run():
    def drifts(t, x):  # right in float64; in float32 one element off by 1%
        r = t[0] * _gelu_prime(x)
        if r.dtype == torch.float32:
            r[3, 4] *= 1.01
        return r

    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_jvp(_Gelu.apply, drifts, (x,))
    assert "- args[0]: against the jvp in float64: tensors are not close" in str(err.value)
    assert "Worst element at index (3, 4)" in str(err.value)


@pytest.mark.parametrize("jvp, says", [
    (lambda t, x: (t[0] * _gelu_prime(x)) if x.dtype == torch.float32 else 1 / 0,
     "the jvp does not run in float64 (ZeroDivisionError): central differences check it at "
     "its own dtype's tolerance only"),
    (lambda t, x: (t[0] * _gelu_prime(x)).float(),
     "the jvp gives no float64 tangent of f's shape at float64 arguments"),
    (lambda t, x: (t[0] * _gelu_prime(x)) if x.dtype == torch.float32 else t[0][0],
     "the jvp gives no float64 tangent of f's shape at float64 arguments"),
])
def test_a_jvp_for_one_dtype_is_checked_in_it_alone_and_says_so_once(jvp, says):
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    report = check_jvp(_Gelu.apply, jvp, (x,), directions=3)
    assert report.passed and "the jvp in float64" not in report.references
    assert [n for n in report.notes if says in n] == [n for n in report.notes if "float64" in n]
    assert len([n for n in report.notes if says in n]) == 1, report.notes  # not once a tangent


def test_a_jvp_float64_run_that_is_not_finite_is_not_used():
    def overflows_in_float64(t, x):  # the float32 tangent under test is right
        r = t[0] * _gelu_prime(x)
        if r.dtype == torch.float64:
            r[0, 0] = float("inf")
        return r

    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    report = check_jvp(_Gelu.apply, overflows_in_float64, (x,), directions=3)
    assert report.passed and "the jvp in float64" not in report.references
    assert report.arguments[0].note == ("the jvp's float64 tangent is not finite where this "
                                        "one is: not used")  # once, for three tangents


def test_the_jvp_float64_run_keeps_the_callers_tol_and_records_as_float64():
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(7))
    loose = check_jvp(_Gelu.apply, lambda t, x: 1.001 * t[0] * _gelu_prime(x), (x,),
                      tol=Tol(rtol=1e-2, atol=1e-2))
    assert loose.passed and "the jvp in float64" in loose.references
    with compare_mod.unrecorded(), pytest.raises(AssertionError, match="allowed 1e-06"):
        check_jvp(_Gelu.apply, lambda t, x: 1.001 * t[0] * _gelu_prime(x), (x,))
    before = len(compare_mod.RECORDS)
    check_jvp(_Gelu.apply, lambda t, x: t[0] * _gelu_prime(x), (x,))
    rows = {(r.reference, r.dtype, r.atol, r.rtol) for r in compare_mod.RECORDS[before:]}
    assert {r for r in rows if r[0] == "central differences"} == {
        ("central differences", "float64", 1e-6, 0.0)}, rows
    assert {r[1] for r in rows if r[0] == "the jvp in float64"} == {"float32"}, rows


def test_the_jvp_running_out_of_memory_in_float64_is_said_as_it_is():
    def big_in_float64(t, x):
        if x.dtype == torch.float64:
            raise torch.cuda.OutOfMemoryError("out of memory")
        return t[0] * _gelu_prime(x)

    x = torch.randn(4, generator=torch.Generator().manual_seed(9))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        check_jvp(_Gelu.apply, big_in_float64, (x,))


def test_the_jvp_float64_run_moves_only_the_argument_checked():
    # two arguments, each with its own derivative: a float64 tangent moving both (or the
    # wrong one) would disagree with the float32 tangent under test
    x = torch.randn(32, generator=torch.Generator().manual_seed(10))
    y = torch.randn(32, generator=torch.Generator().manual_seed(11))

    def f(x, y):
        return _Gelu.apply(x) * y

    report = check_jvp(f, lambda t, x, y: t[0] * _gelu_prime(x) * y + _gelu(x) * t[1], (x, y))
    assert report.passed and "the jvp in float64" in report.references


# --- arguments the check cannot see into -------------------------------------------------------

@pytest.mark.parametrize("check", [check_vjp, check_jvp])
@pytest.mark.parametrize("params, where", [
    (lambda W, b: [W, b], "a list holding floating-point tensors ([0], [1])"),
    (lambda W, b: {"W": W, "b": b}, "a dict holding floating-point tensors (['W'], ['b'])"),
    (lambda W, b: ((W, 1), b), "a tuple holding floating-point tensors ([0][0], [1])"),
])
def test_floating_tensors_inside_a_container_argument_are_refused_by_name(check, params, where):
    # a student's f(x, params): the parameters inside were skipped, and a dW 5x wrong passed
    W, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(TypeError) as err:
        check(lambda x, p: x.sum() * 0, lambda *a: None, (x, params(W, b)))
    assert str(err.value).startswith(f"args[1] (p): {where}; the check differentiates")
    assert "pass each as an argument of its own" in str(err.value)


def test_a_container_of_integers_or_shapes_is_an_argument_like_any_other():
    x = torch.randn(6, dtype=torch.float64)
    report = check_vjp(lambda x, shape: x.reshape(shape[0], shape[1][0]),
                       lambda g, x, shape: (g.reshape(x.shape), None),
                       (x, (2, [3], {"k": torch.tensor([1])})))
    assert report.passed and report.arguments[1].note == "not a floating-point tensor"
    itself = [2, 3]
    itself.append(itself)  # looked into to a depth, not forever
    assert check_vjp(lambda x, s: x.reshape(s[0], s[1]), lambda g, x, s: (g.reshape(x.shape),
                                                                          None),
                     (x, itself)).passed


# --- central differences' own error, and kinks ------------------------------------------------

class _Cube(torch.autograd.Function):  # no torch reference: central differences alone
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        return 3 * g * ctx.saved_tensors[0]**2


_SMALL = 1e-3 * torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
_FAR = 1000.0 + torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("check, f, d, x", [
    # x**3 at |x| ~ 1e-3: one central difference's h^2 error was 1.4e-6 of the terms' size
    (check_vjp, lambda x: x**3, lambda g, x: 3 * g * x**2, _SMALL),
    (check_jvp, lambda x: x**3, lambda t, x: 3 * t[0] * x**2, _SMALL),
    (check_vjp, _Cube.apply, lambda g, x: 3 * g * x**2, _SMALL),
    (check_jvp, _Cube.apply, lambda t, x: 3 * t[0] * x**2, _SMALL),
    # tanh(x - 1000): a step scaled by |x| = 1000, 1.3e-6
    (check_vjp, lambda x: torch.tanh(x - 1000.0),
     lambda g, x: g * (1 - torch.tanh(x - 1000.0)**2), _FAR),
])
def test_a_right_derivative_at_a_point_far_from_scale_one_passes(check, f, d, x):
    report = check(f, d, (x,))
    assert report.passed
    assert "Richardson's extrapolation over h and h/2 agrees" in report.arguments[0].note


@pytest.mark.parametrize("check", [check_vjp, check_jvp])
def test_a_wrong_derivative_at_a_small_scale_still_fails_without_a_torch_reference(check):
    d = ((lambda g, x: 3.001 * g * x**2) if check is check_vjp
         else (lambda t, x: 3.001 * t[0] * x**2))
    with compare_mod.unrecorded(), pytest.raises(AssertionError, match="against central"):
        check(_Cube.apply, d, (_SMALL,), taylor=False)


_AT_ZERO = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)


@pytest.mark.parametrize("check, d, agreed", [
    (check_vjp, lambda g, x: g * (x > 0), "torch.autograd's gradient agreed"),
    (check_jvp, lambda t, x: t[0] * (x > 0), "torch's tangent agreed"),
])
def test_relu_at_an_exact_zero_sets_central_differences_aside_where_torch_agrees(check, d,
                                                                                 agreed):
    # central differences straddle the kink: slope 1/2 there, torch's (and the student's) 0
    report = check(torch.relu, d, (_AT_ZERO,))
    assert report.passed
    assert "f has a kink at this point along a direction" in report.arguments[0].note
    assert agreed in report.arguments[0].note


class _Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        return g * (ctx.saved_tensors[0] > 0)


@pytest.mark.parametrize("check, d", [
    (check_vjp, lambda g, x: g * (x >= 0)),
    (check_jvp, lambda t, x: t[0] * (x >= 0)),
])
@pytest.mark.parametrize("f, why", [
    (_Relu.apply, "no torch reference to agree"),
    (torch.relu, "torch disagrees: relu'(0) = 0 in torch, 1 here"),
])
def test_a_kink_without_torch_agreeing_fails_and_says_to_move_off_it(check, d, f, why):
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check(f, d, (_AT_ZERO,))
    assert "f has a kink at this point along a direction" in str(err.value), why
    assert "choose a point off it" in str(err.value)


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g


@pytest.mark.parametrize("check, d", [
    (check_vjp, lambda g, x: 2.001 * g),
    (check_jvp, lambda t, x: 2.001 * t[0]),
])
def test_a_wrong_derivative_of_a_smooth_f_is_not_blamed_on_a_kink(check, d):
    # a linear f's one-sided slopes differ by rounding only, far below the miss
    x = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check(_Double.apply, d, (x,), taylor=False)
    assert "against central differences" in str(err.value) and "kink" not in str(err.value)


class _NearlyFlat(torch.autograd.Function):
    """1 + 1e-7 sin x: a derivative small beside f's value, central differences its only
    reference (a custom Function)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 1 + 1e-7 * torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1e-7 * torch.cos(ctx.saved_tensors[0])


@pytest.mark.parametrize("check, d", [
    (check_vjp, lambda g, x: g * 1e-7 * torch.cos(x)),
    (check_jvp, lambda t, x: t[0] * 1e-7 * torch.cos(x)),
])
def test_a_right_derivative_small_beside_f_passes_within_fs_rounding(check, d):
    # central differences carry f's rounding, eps |f| / h: 2e-11 here against a derivative
    # of 1e-7, 2e-4 of it, beyond their 1e-6 floor. They failed the right derivative, and
    # the kink test read the rounding (growing as h shrinks) as a kink
    x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = check(_NearlyFlat.apply, d, (x,))
    assert report.passed
    assert "within f's own rounding in it" in report.arguments[0].note
    assert "kink" not in report.arguments[0].note
    # the report's headroom is the allowance it was judged by: over 1x when passing
    assert report.arguments[0].fd_error <= report.arguments[0].fd_allowed
    # 1% off is not within it, and is not blamed on a kink
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check(_NearlyFlat.apply, lambda *a: 1.01 * d(*a), (x,))
    assert "against central differences" in str(err.value) and "kink" not in str(err.value)


class _FastFlat(torch.autograd.Function):
    """1 + 1e-8 sin(1000 x): a central difference's h^2 error and f's rounding both."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 1 + 1e-8 * torch.sin(1e3 * x)

    @staticmethod
    def backward(ctx, g):
        return g * 1e-5 * torch.cos(1e3 * ctx.saved_tensors[0])


def test_richardson_allows_fs_rounding_too():
    # Richardson's extrapolation cancels the h^2 error but weighs the rounding threefold
    x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert check_vjp(_FastFlat.apply, lambda g, x: g * 1e-5 * torch.cos(1e3 * x), (x,),
                     taylor=False).passed


def test_a_failed_argument_reports_how_far_over_its_allowance_it_is():
    # "headroom 0x" said nothing: a gradient 3e-9 off (relative) is 0.3x of its allowance
    x = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    tol = tol_for(torch.float64, "grad")
    c = torch.cos(x)
    expected = float((3e-9 * c.abs() / (tol.atol + tol.rtol * c.abs())).max())
    assert 0.1 < 1 / expected < 1  # a miss, by less than its allowance tenfold
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(torch.sin, lambda g, x: g * torch.cos(x) * (1 + 3e-9), (x,),
                  cotangent=torch.ones_like(x), taylor=False)
    assert f"args[0]: WRONG: headroom {1 / expected:.3g}x" in str(err.value)


def test_rmsnorm_at_one_element_passes_with_its_right_gradient():
    # a walkthrough's hypothesis find: x / sqrt(x^2 + 1e-6) at one element is nearly flat,
    # its right gradient failed against central differences by f's rounding
    def rms(x, w):
        return x * torch.rsqrt(x * x + 1e-6) * w

    def rms_vjp(g, x, w):
        r = torch.rsqrt(x * x + 1e-6)
        return g * w * r * (1 - x * x * r * r), (g * x * r).sum(0)

    x = torch.tensor([[0.80327607809635]], dtype=torch.float64)
    w = torch.tensor([0.17483339327910], dtype=torch.float64)
    assert check_vjp(rms, rms_vjp, (x, w)).passed


def test_rounding_noise_is_not_a_kink():
    # the one-sided slopes of a smooth f differ by rounding alone, growing fourfold as h
    # shrinks fourfold: a kink's jump stays
    from handgrad.testing.checks import _kink
    x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v, w = torch.ones_like(x), torch.ones_like(x)

    def along(t):
        return 1 + 1e-7 * torch.sin(t)

    assert not _kink(along, x, v, None, w, miss=1e-14, noise=0.0)
    assert _kink(torch.relu, torch.zeros(3, dtype=torch.float64), torch.ones(3,
                 dtype=torch.float64), None, torch.ones(3, dtype=torch.float64), miss=0.5,
                 noise=0.0)
    # a jump within the rounding allowed is none
    assert not _kink(torch.relu, torch.zeros(3, dtype=torch.float64), torch.ones(3,
                     dtype=torch.float64), None, torch.ones(3, dtype=torch.float64), miss=0.5,
                     noise=10.0)


# --- an f that is not deterministic -----------------------------------------------------------

@pytest.mark.parametrize("check, d", [
    (check_vjp, lambda g, x: 2 * g),
    (check_jvp, lambda t, x: 2 * t[0]),
])
def test_an_f_drawing_random_numbers_is_refused_as_not_deterministic(check, d):
    # dropout in training mode: each call its own mask; it was "a wrong derivative" with a
    # central difference of -121677.993 against 4.2
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    with pytest.raises(ValueError) as err:
        check(lambda x: F.dropout(x, 0.5, training=True), d, (x,))
    assert str(err.value).startswith("f: two calls at the same point gave different results "
                                     "(largest difference ")
    assert "f is not deterministic (dropout or another random op in training mode)" in str(
        err.value)


def test_a_generator_argument_is_named_and_the_callers_is_left_as_it_was():
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"it draws from args\[1\] \(gen\)\)"):
        check_vjp(lambda x, gen: x * torch.rand(x.shape, generator=gen, dtype=x.dtype),
                  lambda g, x, gen: (g, None), (x, gen))
    fresh = torch.Generator().manual_seed(0)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=fresh))


def test_an_f_that_only_reads_a_generator_argument_is_checked():
    # a generator used the same way each call (reseeded inside): deterministic, so checked
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(15))

    def masked(x, gen):
        gen.manual_seed(7)
        return x * (torch.rand(x.shape, generator=gen, dtype=x.dtype) > 0.5)

    def vjp(g, x, gen):
        gen.manual_seed(7)
        return g * (torch.rand(x.shape, generator=gen, dtype=x.dtype) > 0.5), None

    assert check_vjp(masked, vjp, (x, torch.Generator())).passed


def test_an_f_that_differs_between_calls_by_rounding_only_is_checked():
    # a GPU's atomic adds sum in another order each call: results differ in the last bits
    calls = []
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(16))

    def f(x):
        calls.append(1)
        return x * (1 + 1e-14 * (len(calls) % 2))

    assert check_vjp(f, lambda g, x: g, (x,)).passed


def test_an_f_whose_result_changes_shape_between_calls_is_refused():
    calls = []

    def f(x):
        calls.append(1)
        return x if len(calls) == 1 else x[:3]

    with pytest.raises(ValueError, match="^f: two calls at the same point gave different "
                                         "results: f is not deterministic"):
        check_vjp(f, lambda g, x: g, (torch.randn(6, dtype=torch.float64),))


# --- hints for the commonest mistakes --------------------------------------------------------

def test_gradients_in_another_order_are_named_by_shape_and_by_value():
    W = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    with pytest.raises(AssertionError, match=r"that is args\[1\] \(W\)'s shape: the gradients "
                                             "in another order than f's arguments\\?"):
        check_vjp(lambda x, W: x @ W.t(), lambda g, x, W: (g.t() @ x, g @ W), (x, W))
    y = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(19))
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(lambda x, y: x * y, lambda g, x, y: (g * x, g * y), (x, y))
    assert "it is args[1] (y)'s gradient: the gradients in another order" in str(err.value)
    assert "it is args[0] (x)'s gradient" in str(err.value)


def test_a_none_gradient_that_fails_points_at_wrt():
    p = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(20))
    t = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(21))
    with compare_mod.unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(lambda p, t: ((p - t)**2).mean(),
                  lambda g, p, t: (2 * g * (p - t) / p.numel(), None), (p, t))
    assert ("the vjp gave None for it: if it is data, not something to differentiate, leave "
            "it out of the check: wrt=[0]") in str(err.value)
    assert check_vjp(lambda p, t: ((p - t)**2).mean(),
                     lambda g, p, t: (2 * g * (p - t) / p.numel(), None), (p, t),
                     wrt=[0]).passed


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes: Python 3.11")
def test_a_jvp_treating_its_tangents_as_one_tensor_is_told_they_are_a_tuple():
    x = torch.randn(4, dtype=torch.float64)
    with pytest.raises(TypeError) as err:
        check_jvp(torch.sin, lambda t, x: t * torch.cos(x), (x,))
    assert ("check_jvp called jvp(tangents, *args) with tangents a tuple of 1, one tangent per "
            "argument of f (t[0] for the first, even where f has one argument)"
            ) in err.value.__notes__


def test_a_constant_factor_near_one_is_shown_with_the_digits_that_tell_it_from_one():
    x = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    assert signature(1.0000001 * x, x, tol_for(torch.float64, "grad")) == (
        "a constant factor: 1.0000001 x the reference")
    assert signature(2.5 * x, x, tol_for(torch.float64, "grad")) == (
        "a constant factor: 2.5 x the reference")


def test_a_custom_function_and_a_module_are_named_as_a_user_wrote_them():
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(23))
    report = check_vjp(_Gelu.apply, lambda g, x: g * _gelu_prime(x), (x,))
    assert report.function == "_Gelu.apply"
    lin = torch.nn.Linear(4, 3).double()
    report = check_vjp(lin, lambda g, x: g @ lin.weight, (x.double(),))
    assert report.arguments[0].name == "input"  # Linear.forward(self, input)


def test_assert_close_says_when_the_reference_is_narrower_than_the_kernel():
    a = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(24))
    with pytest.raises(AssertionError) as err:
        assert_close(a, a.float())
    assert str(err.value).endswith("The reference is float32, narrower than the kernel's "
                                   "float64 whose tolerance judged it: compute the reference "
                                   "in float64 (or pass tol=)")
    with pytest.raises(AssertionError) as err:  # a wider reference: no such line
        assert_close(a.float() * 1.1, a)
    assert "narrower" not in str(err.value)
    with pytest.raises(AssertionError) as err:  # tol given: the caller chose it
        assert_close(a, a.float(), tol=Tol(1e-12, 0.0))
    assert "narrower" not in str(err.value)
    # bfloat16 holds fewer digits than float16, of the same size
    with pytest.raises(AssertionError, match="The reference is bfloat16, narrower than the "
                       "kernel's float16"):
        assert_close(torch.tensor([1.0], dtype=torch.float16),
                     torch.tensor([1.05], dtype=torch.bfloat16))
    # a float8 kernel: no tolerance of its own (a named TypeError, not torch's promotion error)
    with pytest.raises(TypeError, match=r"no forward tolerance for torch\.float8_e4m3fn; .*"
                       r"pass tol=Tol"):
        assert_close(torch.ones(2, dtype=torch.float8_e4m3fn), torch.ones(2))


def test_a_derivative_defined_in_a_test_is_named_without_locals():
    def vjp(g, x):
        return g * torch.cos(x)

    before = len(compare_mod.RECORDS)
    check_vjp(torch.sin, vjp, (torch.randn(4, dtype=torch.float64),))
    kernels = {r.kernel for r in compare_mod.RECORDS[before:]}
    assert kernels == {"test_a_derivative_defined_in_a_test_is_named_without_locals.vjp"}


def test_a_container_argument_left_out_by_wrt_is_the_callers_choice():
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(25))
    mask = [torch.ones(5, 4, dtype=torch.float64)]
    report = check_vjp(lambda x, m: x * m[0], lambda g, x, m: (g * m[0], None), (x, mask),
                       wrt=[0])
    assert report.passed and report.arguments[1].note == "not a floating-point tensor"


def test_an_f_raising_on_its_second_call_is_refused_as_not_deterministic():
    calls = []

    def f(x):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of tokens")
        return 2 * x

    with pytest.raises(ValueError, match=r"^f: raised on its second call at the same point "
                                         r"\(RuntimeError: out of tokens\)"):
        check_vjp(f, lambda g, x: 2 * g, (torch.randn(4, dtype=torch.float64),))


def test_an_f_near_zero_summing_large_terms_is_deterministic_at_its_scale():
    # float32 f = sum of +-1e4 terms: the element near 0 differs between calls by the
    # terms' rounding (1e-3), far above atol 1e-6 but not above rtol x the largest value
    calls = []
    x = torch.randn(8, generator=torch.Generator().manual_seed(26))

    def f(x):
        calls.append(1)
        jitter = 1e-3 if len(calls) == 2 else 0.0  # the determinism check's call
        return torch.stack([x.sum() * 1e4, x.sum() * 0 + jitter])

    assert check_jvp(f, lambda t, x: torch.stack([t[0].sum() * 1e4, t[0].sum() * 0]), (x,),
                     taylor=False, directions=1).passed
