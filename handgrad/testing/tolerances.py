"""The one tolerance table: (rtol, atol) per dtype, for forward values and for gradients.

A kernel run in dtype ``d`` is compared with a float64 reference computed from the
same (rounded) inputs, so each entry is a statement about how much rounding ``d``
is allowed to accumulate. rtol and atol always travel together; an element passes
when ``|actual - expected| <= atol + rtol * |expected|`` (torch.isclose's rule).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"Tol: {name}: expected a real number >= 0, got "
                                f"{type(v).__name__} {v!r}")
        if not (self.rtol >= 0 and self.atol >= 0):
            raise ValueError(
                f"Tol: rtol and atol must be >= 0, got rtol={self.rtol}, atol={self.atol}"
            )
        if math.isinf(self.rtol) or math.isinf(self.atol):  # a check that can never fail
            raise ValueError(
                f"Tol: rtol and atol must be finite (an infinite one passes every value), "
                f"got rtol={self.rtol}, atol={self.atol}"
            )

    def scaled(self, factor: float) -> Tol:
        """The same tolerance loosened by ``factor`` (a finite real number > 0; below 1
        tightens it); callers say why in a comment."""
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise TypeError(f"Tol.scaled: factor: expected a real number > 0, got "
                            f"{type(factor).__name__} {factor!r}")
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"Tol.scaled: factor: expected a finite real number > 0, got "
                             f"{factor!r}")
        rtol, atol = self.rtol * factor, self.atol * factor
        if math.isinf(rtol) or math.isinf(atol):
            raise OverflowError(f"Tol.scaled: factor: {factor!r} times rtol={self.rtol}, "
                                f"atol={self.atol} overflows float's range; expected a "
                                "factor that keeps them finite")
        return Tol(rtol, atol)


# forward values: a few ulps of the dtype, times the depth of a small network
FORWARD: dict[torch.dtype, Tol] = {
    torch.float64: Tol(rtol=1e-10, atol=1e-12),
    torch.float32: Tol(rtol=1e-5, atol=1e-6),
    # bfloat16 keeps 8 mantissa bits (eps 7.8e-3); matmul accumulation rounds each layer
    torch.bfloat16: Tol(rtol=4e-2, atol=4e-2),
    # float16 keeps 11 mantissa bits (eps 9.8e-4)
    torch.float16: Tol(rtol=1e-2, atol=1e-2),
}

# gradients: looser than forward values, because the backward pass multiplies the
# forward pass's rounding error by every layer's Jacobian on the way back and sums
# over the batch (the JAX test suite keeps a separate, looser gradient table too)
GRAD: dict[torch.dtype, Tol] = {
    torch.float64: Tol(rtol=1e-9, atol=1e-11),
    torch.float32: Tol(rtol=1e-4, atol=1e-5),
    # bfloat16: errors of ~eps per layer compound across depth and batch sums
    torch.bfloat16: Tol(rtol=1e-1, atol=1e-1),
    torch.float16: Tol(rtol=3e-2, atol=3e-2),
}

# finite differences carry truncation error O(h^2) and rounding error O(eps/h): with
# h = eps^(1/3) the best they can do is about eps^(2/3), i.e. ~4e-11 in float64
FINITE_DIFF: dict[torch.dtype, Tol] = {
    torch.float64: Tol(rtol=1e-6, atol=1e-8),
}


def check_float_dtype(name: str, value: object) -> torch.dtype:
    """A floating ``torch.dtype``, else a TypeError naming the argument (a string such as
    "float32" gets the hint torch.float32). The same rule as ``kernels._checks``'s, written
    here because the harness (``handgrad.testing``) must import against older kernels too:
    ``.ci/gate`` runs this tree's harness over the baseline's ``kernels/``."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        named = getattr(torch, value, None) if isinstance(value, str) else None
        hint = f" (torch.{value})" if isinstance(named, torch.dtype) and \
            named.is_floating_point else ""
        raise TypeError(f"{name}: expected a floating torch.dtype{hint}, got {value!r}")
    return value


# the kinds of table tol_for (and assert_close's kind=) name
KINDS = ("forward", "grad", "finite_diff")


def tol_for(dtype: torch.dtype, kind: str = "forward") -> Tol:
    """The table entry for ``dtype``; kind is 'forward', 'grad' or 'finite_diff'."""
    tables = dict(zip(KINDS, (FORWARD, GRAD, FINITE_DIFF)))
    if kind not in tables:
        raise ValueError(f"kind: expected one of {sorted(tables)}, got {kind!r}")
    table = tables[kind]
    check_float_dtype("dtype", dtype)  # a string, None or an integer dtype: TypeError
    if dtype not in table:
        raise ValueError(f"dtype: no {kind} tolerance for {dtype}; known: "
                         f"{sorted(map(str, table))}")
    return table[dtype]
