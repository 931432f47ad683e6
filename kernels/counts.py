"""The unit of every count: ``Counts`` (parameters and scalar operations), and the checks
of the integer arguments every counting formula takes.

Conventions. ``mults`` and ``adds`` are scalar multiplications and additions. A k x k
convolution C_in -> C_out (groups g) makes each output a sum of k*k*C_in/g products:
k*k*C_in/g multiplies and, with the bias completing the sum, as many adds (one fewer
without bias). ``macs`` = mults of the products (one multiply-accumulate each);
``flops`` = 2 * macs, the convention of torch.utils.flop_counter.FlopCounterMode, which
counts convolutions and matrix products only and no bias adds. ``activations`` counts
nonlinearity evaluations, ``compares`` the comparisons of max-pooling.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields

from handgrad.kernels._checks import check_int


@dataclass(frozen=True)
class Counts:
    """Parameters and scalar operations of a layer or a model (see the module docstring)."""

    params: int = 0
    mults: int = 0
    adds: int = 0
    activations: int = 0
    compares: int = 0
    macs: int = 0  # multiply-accumulates of convolutions and matrix products

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def flops(self) -> int:
        """2 * macs: what FlopCounterMode reports (no bias adds, no activations)."""
        return 2 * self.macs

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"flops": self.flops}


def _is_int(v) -> bool:
    """A Python or numpy integer (bool is not a count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _tuple(name: str, v, n: int) -> tuple[int, ...]:
    """An int (repeated ``n`` times) or a sequence of ``n`` ints (Python or numpy) as ints."""
    if _is_int(v):
        return (int(v),) * n
    if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == n and all(
            _is_int(i) for i in v):
        return tuple(int(i) for i in v)
    want = "an int or a pair of ints" if n == 2 else f"an int or {n} ints"
    raise TypeError(f"{name}: expected {want}, got {v!r}")


def _pair(name: str, v) -> tuple[int, int]:
    return _tuple(name, v, 2)


def _positive(**kw) -> tuple[int, ...]:
    """Each value a positive Python or numpy integer (TypeError for another type, ValueError
    below 1); returned as Python ints, in order."""
    return tuple(check_int(name, v, minimum=1, what="a positive integer")
                 for name, v in kw.items())


def _flag(**kw) -> None:
    for name, v in kw.items():
        if not isinstance(v, bool):
            raise TypeError(f"{name}: expected True or False, got {v!r}")


def conv2d_output_hw(in_hw, kernel_size, stride=1, padding=0, dilation=1) -> tuple[int, int]:
    """(H_out, W_out) of a 2-D convolution or pooling window (torch's formula). Sizes,
    strides and dilations are positive, padding >= 0; an output under 1x1 is refused."""
    h, w = _pair("in_hw", in_hw)
    kh, kw = _pair("kernel_size", kernel_size)
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    dh, dw = _pair("dilation", dilation)
    _positive(in_h=h, in_w=w, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw,
              dilation_h=dh, dilation_w=dw)
    if ph < 0 or pw < 0:
        raise ValueError(f"padding: expected non-negative padding, got {(ph, pw)}")
    out = ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
    if min(out) < 1:
        raise ValueError(f"in_hw: {(h, w)} is too small for kernel {kh}x{kw}, dilation "
                         f"{dh}x{dw}, padding {ph}x{pw}: output would be {out}")
    return out


def _numel(shape) -> int:
    return math.prod(shape)
