"""The messages a kernel engineer checking float16 and bfloat16 kernels found unclear: what
a derivative's repeat call returned, and ``signature`` of a result in a narrower dtype than
its reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from handgrad.testing import GRAD, check_jvp, check_vjp, signature


def _randn(*shape, dtype, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


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
    said = ("float32 values against a float64 reference: they differ from it by float32's "
            "rounding (computed in float32, a narrower dtype: compute in float64, or compare "
            "at float32's tolerance)")
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
