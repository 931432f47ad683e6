"""signature(got, ref, tol) on the inputs a bad-input sweep gave it (equal tensors, bool,
complex, NaN or inf, values of 1e200 and 1e-200), and check_jvp given a tangent on another
device than f's output (a meta tensor: its values were read before the device was checked)."""

from __future__ import annotations

import pytest
import torch

from handgrad.testing import Tol, check_jvp, check_vjp, signature

F64 = torch.float64
TOL = Tol(1e-6, 1e-8)


def _r() -> torch.Tensor:
    return torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_equal_tensors_have_no_signature():
    """Two equal tensors were 'a constant factor: 1 x the reference': nothing is wrong."""
    r = _r()
    assert signature(r.clone(), r, TOL) is None
    assert signature(r + 1e-12, r, TOL) is None  # within tol: nothing wrong either
    assert signature(-r, r, TOL) == "a flipped sign (-1 x the reference)"


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e-300])
def test_a_constant_factor_is_named_at_extreme_scales(scale):
    """(r * r).sum() overflowed at 1e200 and underflowed to 0 at 1e-200: both gave None."""
    r = _r()
    assert signature(2 * scale * r, scale * r, TOL) == "a constant factor: 2 x the reference"
    assert signature(-scale * r, scale * r, TOL) == "a flipped sign (-1 x the reference)"


def test_a_factor_beyond_float_range_is_no_signature():
    """got 1e300 times a reference of 1e-10: the factor 1e310 is no float, not 'inf x'."""
    r = _r()
    assert signature(1e300 * r, 1e-10 * r, TOL) is None


@pytest.mark.parametrize("got, ref, exc, words", [
    (_r() > 0, _r() > 0, TypeError, r"got: expected a floating-point tensor, got dtype "
                                    r"torch.bool"),
    (_r(), _r().long(), TypeError, r"ref: expected a floating-point tensor, got dtype "
                                   r"torch.int64"),
    (_r() * 1j, _r(), TypeError, r"got: complex dtype torch.complex128: a cast to real would "
                                 r"drop the imaginary part"),
    (_r(), _r().to(torch.complex64), TypeError, r"ref: complex dtype torch.complex64"),
    (_r(), _r() * float("inf"), ValueError, r"ref: NaN or inf in 9 of its 9 elements .*; "
                                            r"expected finite values"),
    (_r().index_fill(0, torch.tensor([1]), float("nan")), _r(), ValueError,
     r"got: NaN or inf in 3 of its 9 elements \(index \(1, 0\): nan"),
])
def test_signature_refuses_non_finite_complex_or_non_floating_input_by_name(got, ref, exc,
                                                                            words):
    with pytest.raises(exc, match=words):
        signature(got, ref, TOL)


def test_check_vjp_names_a_signature_and_passes_over_a_non_finite_reference():
    """check_vjp calls signature on its failures: a flipped sign is still named, and where
    torch's gradient is NaN (|x|^(1/2) at 0) and the vjp's finite, the failure is reported with
    no signature rather than signature's refusal raised."""
    x = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    with pytest.raises(AssertionError, match="looks like a flipped sign"):
        check_vjp(torch.sin, lambda g, x: (-g * x.cos(),), (x,))
    x0 = torch.tensor([0.0, 1.0, 4.0], dtype=F64)  # |x|^(1/2): torch's gradient NaN at 0
    with pytest.raises(AssertionError, match=r"kernel 0, reference nan") as e:
        check_vjp(lambda x: x.abs().sqrt(),
                  lambda g, x: (g * 0.5 * x.sign() / x.abs().sqrt().clamp_min(1e-3),), (x0,))
    assert "looks like" not in str(e.value)


def test_check_jvp_refuses_a_tangent_on_another_device_before_reading_it():
    """A meta tangent raised torch's NotImplementedError (nonzero on meta) from the
    repeat-call check; check_vjp's gradient on meta is an AssertionError naming the
    devices: so is check_jvp's tangent."""
    x = torch.randn(3, generator=torch.Generator().manual_seed(2), dtype=F64)

    def meta_jvp(t, x):
        return (t[0] * x.cos()).to("meta")

    with pytest.raises(AssertionError, match=r"args\[0\]: jvp returned shape \(3,\) on "
                                             r"meta, f\(\*args\) has \(3,\) on cpu"):
        check_jvp(torch.sin, meta_jvp, (x,))
