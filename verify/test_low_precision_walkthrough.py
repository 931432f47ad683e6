"""A kernel engineer checking fused float16 and bfloat16 kernels on the CPU with
handgrad.testing: a softmax cross-entropy backward, a layer-norm backward, a GELU and a fused
linear + bias + tanh, each right (computed in float32, rounded once) and wrong in one of the
ways such kernels go wrong, with the verdict and message each gets at the default tolerances.
Then the messages of the repeat call and of ``signature`` that the walkthrough found unclear."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from handgrad.testing import GRAD, check_jvp, check_vjp, signature

LOW = [torch.float16, torch.bfloat16]


def _randn(*shape, dtype, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


# --- the kernels --------------------------------------------------------------------------------

def xent(z, y):  # mean over the batch: each gradient element is at most 1/N
    return F.cross_entropy(z, y)


def xent_vjp(g, z, y, *, per_row=True, zero_row=None):
    p = torch.softmax(z.float(), -1)
    p[torch.arange(len(y)), y] -= 1
    if zero_row is not None:  # wrong: one row's gradient left at zero
        p[zero_row] = 0
    return (g.float() * p / (len(y) if per_row else 1)).to(z.dtype), None


def layer_norm(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b, eps=1e-5)


def layer_norm_vjp(g, x, w, b, *, full=True):
    dtype = x.dtype
    x, w, g = x.float(), w.float(), g.float()
    mu = x.mean(-1, keepdim=True)
    rstd = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).rsqrt()
    xh = (x - mu) * rstd
    dxh = g * w
    dx = dxh - dxh.mean(-1, keepdim=True)
    if full:  # wrong without it: the variance's term
        dx = dx - xh * (dxh * xh).mean(-1, keepdim=True)
    return (dx * rstd).to(dtype), (g * xh).sum(0).to(dtype), g.sum(0).to(dtype)


def _gelu_slope(x):
    x = x.float()
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(
        2 * math.pi)


def gelu_vjp(g, x):
    return (g.float() * _gelu_slope(x)).to(x.dtype)


def gelu_jvp(t, x):
    return (t[0].float() * _gelu_slope(x)).to(x.dtype)


def linear_tanh(x, W, b):
    return torch.tanh(x @ W.t() + b)


def linear_tanh_vjp(g, x, W, b, *, transposed=False):
    y = torch.tanh(x.float() @ W.float().t() + b.float())
    d = g.float() * (1 - y * y)
    dW = d.t() @ x.float()
    return ((d @ W.float()).to(x.dtype), (dW.t() if transposed else dW).to(W.dtype),
            d.sum(0).to(b.dtype))


def linear_tanh_jvp(t, x, W, b):
    y = torch.tanh(x.float() @ W.float().t() + b.float())
    dz = t[0].float() @ W.float().t() + x.float() @ t[1].float().t() + t[2].float()
    return ((1 - y * y) * dz).to(x.dtype)


def _xent_args(dtype, n=64, c=10):
    return _randn(n, c, dtype=dtype, scale=2), torch.randint(
        0, c, (n,), generator=torch.Generator().manual_seed(1))


def _ln_args(dtype):
    return (_randn(64, 32, dtype=dtype, seed=0) + 0.5, _randn(32, dtype=dtype, seed=1),
            _randn(32, dtype=dtype, seed=2))


def _linear_args(dtype):
    return (_randn(128, 16, dtype=dtype, seed=0), _randn(16, 16, dtype=dtype, scale=0.25, seed=1),
            _randn(16, dtype=dtype, seed=2))


# --- right kernels pass at the defaults -----------------------------------------------------------

@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_right_fused_kernels_pass_at_the_default_tolerances(dtype):
    assert check_vjp(xent, xent_vjp, _xent_args(dtype)).passed
    assert check_vjp(layer_norm, layer_norm_vjp, _ln_args(dtype)).passed
    x = _randn(1024, dtype=dtype, scale=2)
    assert check_vjp(F.gelu, gelu_vjp, (x,)).passed
    assert check_jvp(F.gelu, gelu_jvp, (x,)).passed
    assert check_vjp(linear_tanh, linear_tanh_vjp, _linear_args(dtype)).passed
    assert check_jvp(linear_tanh, linear_tanh_jvp, _linear_args(dtype)).passed


# --- wrong kernels fail, named ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_wrong_fused_kernels_fail_with_what_is_wrong(dtype):
    with pytest.raises(AssertionError, match=r"looks like a constant factor 64: a sum over "
                                             r"the batch \(64\) where a mean is due"):  # 1/N out
        check_vjp(xent, lambda g, z, y: xent_vjp(g, z, y, per_row=False), _xent_args(dtype))
    with pytest.raises(AssertionError, match=r"args\[0\] \(x\): against torch_autograd"):
        check_vjp(layer_norm, lambda *a: layer_norm_vjp(*a, full=False), _ln_args(dtype))
    with pytest.raises(AssertionError, match=r"args\[1\] \(W\): against torch_autograd: .*\n"
                                             r"(.*\n)*    looks like the reference transposed"):
        check_vjp(linear_tanh, lambda *a: linear_tanh_vjp(*a, transposed=True),
                  _linear_args(dtype))


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_a_cross_entropy_gradient_with_a_row_left_at_zero_fails_element_by_element(dtype):
    # a mean over 512 rows: every element of the gradient is below 1/512, and float16's and
    # bfloat16's atol (0.03, 0.1) exceeded all of them, so the element-wise comparison passed
    # any gradient, a zero one too; central differences see the row as 1/sqrt(512) of a
    # projection, within bfloat16's 0.1: the wrong gradient passed. The atol is scaled to
    # the reference's largest element
    args = _xent_args(dtype, n=512)
    with pytest.raises(AssertionError) as err:
        check_vjp(xent, lambda g, z, y: xent_vjp(g, z, y, zero_row=511), args)
    msg = str(err.value)
    assert "- args[0] (z): against torch_autograd: tensors are not close" in msg
    assert "Worst element at index (511, " in msg
    tol = GRAD[dtype]
    assert (f"atol scaled to the reference: {str(dtype).removeprefix('torch.')}'s "
            f"{tol.atol:g} x 0.00") in msg
    # the right one still passes, and tol= given is compared at as given (not scaled)
    assert check_vjp(xent, xent_vjp, args).passed
    if dtype == torch.bfloat16:
        assert check_vjp(xent, lambda g, z, y: xent_vjp(g, z, y, zero_row=511), args,
                         tol=tol).passed


def test_a_small_tangent_with_an_element_left_at_zero_fails_element_by_element():
    # the jvp's tangent is compared the same way: 0.01 tanh(x) moves by at most 0.01 t, far
    # below bfloat16's atol of 0.1; one element of 4,096 wrong is invisible to a projection
    def f(x):
        return 0.01 * torch.tanh(x)

    def jvp(t, x, wrong=True):
        y = torch.tanh(x.float())
        out = 0.01 * (1 - y * y) * t[0].float()
        if wrong:
            out[7] = 0
        return out.to(x.dtype)

    x = _randn(4096, dtype=torch.bfloat16)
    assert check_jvp(f, lambda t, x: jvp(t, x, wrong=False), (x,)).passed
    with pytest.raises(AssertionError) as err:
        check_jvp(f, jvp, (x,))
    assert "- args[0] (x): against torch_func_jvp: tensors are not close" in str(err.value)
    assert "Worst element at index (7,)" in str(err.value)
    assert "atol scaled to the reference: bfloat16's 0.1 x 0.00" in str(err.value)


# --- the repeat call's message ------------------------------------------------------------------

def _f(x, w):
    return x * w


@pytest.mark.parametrize("second, said", [
    (lambda g, x, w: (g * w, None), "a float64 tensor of shape (3,) on cpu, the second None"),
    (lambda g, x, w: (g * w, (g * x)[:2]),
     "a float64 tensor of shape (3,) on cpu, the second a float64 tensor of shape (2,) on cpu"),
    (lambda g, x, w: (g * w,), "a float64 tensor of shape (3,) on cpu, the second a tuple of 1 "
                               "(f has 2 arguments)"),
    (lambda g, x, w: 3, "a float64 tensor of shape (3,) on cpu, the second an int (f has 2 "
                        "arguments)"),
])
def test_a_vjp_returning_another_kind_of_result_on_the_repeat_says_what_each_call_gave(
        second, said):
    calls = itertools.count()

    def vjp(g, x, w):
        return (g * w, g * x) if next(calls) == 0 else second(g, x, w)

    args = (_randn(3, dtype=torch.float64), _randn(3, dtype=torch.float64, seed=1))
    with pytest.raises(AssertionError) as err:
        check_vjp(_f, vjp, args)
    assert f"gave different gradients (the first call gave {said}): the vjp is not " \
           "deterministic" in str(err.value)


def test_a_jvp_returning_none_on_the_repeat_says_what_each_call_gave():
    calls = itertools.count()

    def jvp(t, x, w):
        return t[0] * w + t[1] * x if next(calls) == 0 else None

    args = (_randn(3, dtype=torch.float64), _randn(3, dtype=torch.float64, seed=1))
    with pytest.raises(AssertionError, match=r"^args\[0\] \(x\): two calls of the jvp at the "
                       r"same point gave different tangents \(the first call gave a float64 "
                       r"tensor of shape \(3,\) on cpu, the second None\)"):
        check_jvp(_f, jvp, args)


# --- signature: a narrower dtype before a constant factor ---------------------------------------

def test_signature_names_a_float32_result_against_a_float64_reference_before_a_factor():
    ref = _randn(6, 5, dtype=torch.float64)
    said = ("float32 values against a float64 reference, within float32's gradient tolerance: "
            "a float32 result held to a tighter one than float32's (compare at float32's, or "
            "compute in float64)")
    # it had read "a constant factor: 0.99999997... x the reference"
    assert signature(ref.float(), ref, GRAD[torch.float32]) == said
    assert signature(ref.float(), ref, GRAD[torch.float64]) == said  # it had said nothing
    assert signature(ref.half(), ref.float(), GRAD[torch.float64]).startswith(
        "float16 values against a float32 reference")
    # a real factor is still one: twice the reference, at float32's tolerance
    assert signature((2 * ref).float(), ref, GRAD[torch.float32]) == (
        "a constant factor: 2 x the reference")
    # and a cast inside a float64 result is still named as one (bfloat16 values)
    assert signature(ref.bfloat16().double(), ref, GRAD[torch.float64]).startswith(
        "values computed in bfloat16")
    # not where an element is wrong beyond bfloat16's rounding, however small the gradient:
    # bfloat16's atol, 0.1, is scaled to one whose largest element is below 1
    small = ref * 0.01
    cast_and_wrong = small.bfloat16().double()
    cast_and_wrong[2, 3] = 0
    assert signature(cast_and_wrong, small, GRAD[torch.float64]) is None
    assert signature(cast_and_wrong.float(), small, GRAD[torch.float64]) is None


# --- a custom autograd.Function: held to its own float64 run, element by element -------------

def _wrong_below_float64(t: torch.Tensor, index) -> torch.Tensor:
    """``t`` with ``t[index]`` zeroed where it is narrower than float64: a kernel whose
    low-precision path alone is wrong (its float64 run, the reference, is right)."""
    if t.dtype != torch.float64:
        t = t.clone()
        t[index] = 0
    return t


class _Xent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, y):
        return F.cross_entropy(z, y)

    @staticmethod
    def backward(ctx, g):  # not what the check calls: the vjp below is
        raise NotImplementedError


def test_a_custom_functions_vjp_wrong_in_one_row_at_bfloat16_fails_against_its_float64_run():
    # torch gives no reference (it would replay the Function's backward): the vjp's float64
    # run is the reference, element by element, at the atol scaled to it
    def vjp(g, z, y):
        dz, _ = xent_vjp(g, z, y)
        return _wrong_below_float64(dz, 511), None

    args = _xent_args(torch.bfloat16, n=512)
    assert check_vjp(_Xent.apply, xent_vjp, args).passed
    with pytest.raises(AssertionError) as err:
        check_vjp(_Xent.apply, vjp, args)
    assert "- args[0]: against the vjp in float64: tensors are not close" in str(err.value)
    assert "atol scaled to the reference: bfloat16's 0.1 x 0.00" in str(err.value)


class _SmallTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 0.01 * torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        raise NotImplementedError


def test_a_custom_functions_jvp_wrong_in_one_element_at_bfloat16_fails_against_its_float64_run():
    def jvp(t, x):
        y = torch.tanh(x.double())
        return _wrong_below_float64((0.01 * (1 - y * y) * t[0].double()).to(x.dtype), 7)

    x = _randn(4096, dtype=torch.bfloat16)
    with pytest.raises(AssertionError) as err:
        check_jvp(_SmallTanh.apply, jvp, (x,))
    assert "- args[0]: against the jvp in float64: tensors are not close" in str(err.value)
    assert "Worst element at index (7,)" in str(err.value)
    assert "atol scaled to the reference: bfloat16's 0.1 x 0.00" in str(err.value)
    # one element left at zero is no rounding: no signature says it is
    assert "looks like" not in str(err.value)


# --- f overflowing in its own dtype -------------------------------------------------------------

def test_an_f_overflowing_in_float16_is_refused_saying_so_not_as_a_log_of_a_negative():
    # torch's own float16 cross-entropy of 65,536 rows gave NaN on the CPU (its sum passes
    # 65,504); here a float16 mean of squares of 1,000 values near 10 does the same
    x = (_randn(1000, dtype=torch.float64) + 10).half()
    with pytest.raises(ValueError) as err:
        check_vjp(lambda x: (x * x).sum() / 1000, lambda g, x: 2 * g * x / 1000, (x,))
    assert str(err.value).startswith("args: f(*args) is not finite at the given point: NaN or "
                                     "inf in 1 of its 1 output elements")
    assert ". In float64 f is finite at this point (its largest |value| 10" in str(err.value)
    assert ("float16's largest finite number is 65504): f overflows in float16 here, in a sum, "
            "exp or square it computes in float16: compute f in a wider dtype" in str(err.value))

    def wider(x):  # as the message says
        return ((x.to(torch.promote_types(x.dtype, torch.float32)) ** 2).sum() / 1000).to(
            x.dtype)

    assert check_vjp(wider, lambda g, x: (2 * g.float() * x.float() / 1000).half(),
                     (x,)).passed
    # the sum itself, 1e5, is beyond float16: no wider computation helps
    with pytest.raises(ValueError) as err:
        check_vjp(lambda x: (x * x).sum(), lambda g, x: 2 * g * x, (x,))
    assert "f's value itself is beyond float16: check at a smaller size or scale" in str(
        err.value)
    # an f for float16 alone (raising in float64): nothing more to say
    def half_only(x):
        if x.dtype != torch.float16:
            raise TypeError("float16 only")
        return (x * x).sum() / 1000

    with pytest.raises(ValueError) as err:
        check_vjp(half_only, lambda g, x: 2 * g * x / 1000, (x,))
    assert str(err.value).endswith("(log or sqrt of a negative number is nan, say)")
    # a log of a negative number is NaN in float64 too: nothing more is said
    with pytest.raises(ValueError) as err:
        check_vjp(torch.log, lambda g, x: g / x, (torch.tensor([-1.0, 2.0]).half(),))
    assert "In float64" not in str(err.value)
