"""Hand-written central differences: gradient, Jacobian, and a step-size sweep.

``(f(x + h e_i) - f(x - h e_i)) / 2h`` has truncation error O(h^2) and rounding
error O(eps / h); the sum is smallest near h = eps^(1/3), the default step here
(scaled by max(1, |x_i|) so large coordinates get a proportionate step). Use float64:
in float32 the best attainable error is only about 1e-5 relative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kernels._checks import check_tensor


def default_eps(dtype: torch.dtype) -> float:
    """eps^(1/3) of ``dtype``: the step that balances truncation and rounding error."""
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


def _steps(x: torch.Tensor, eps: float | None) -> torch.Tensor:
    if eps is None:
        eps = default_eps(x.dtype)
    if not eps > 0:
        raise ValueError(f"eps: expected a positive step, got {eps}")
    return eps * x.abs().clamp_min(1.0)


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: f must return a torch.Tensor, got {type(value).__name__}")
    return value


@torch.no_grad()
def jacobian(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """Central-difference Jacobian: shape ``f(x).shape + x.shape``; 2 * x.numel() calls of f."""
    x = check_tensor("x", x)
    h = _steps(x, eps)
    flat = x.detach().reshape(-1).clone()
    hflat = h.reshape(-1)
    cols = []
    for i in range(flat.numel()):
        orig = flat[i].clone()
        flat[i] = orig + hflat[i]
        fp = _as_tensor("f", f(flat.reshape(x.shape)))
        flat[i] = orig - hflat[i]
        fm = _as_tensor("f", f(flat.reshape(x.shape)))
        flat[i] = orig
        # the actual step may differ from h by rounding of x + h; divide by what was taken
        cols.append((fp - fm) / ((orig + hflat[i]) - (orig - hflat[i])))
    if not cols:
        out = _as_tensor("f", f(x))
        return x.new_zeros(tuple(out.shape) + tuple(x.shape))
    out_shape = tuple(cols[0].shape)
    return torch.stack(cols, dim=-1).reshape(out_shape + tuple(x.shape))


def gradient(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """Central-difference gradient of a scalar function: shape ``x.shape``."""
    x = check_tensor("x", x)
    out = _as_tensor("f", f(x.detach()))
    if out.numel() != 1:
        raise ValueError(
            f"f: gradient needs a scalar function, but f(x) has shape {tuple(out.shape)}; "
            "use finite_diff.jacobian for vector outputs"
        )
    return jacobian(lambda t: f(t).reshape(()), x, eps)


@dataclass(frozen=True)
class StepSweep:
    """Error of the central difference at each step: the truncation/rounding V-curve."""

    eps: tuple[float, ...]
    error: tuple[float, ...]

    @property
    def best_eps(self) -> float:
        return self.eps[min(range(len(self.error)), key=self.error.__getitem__)]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"eps": self.eps, "max_abs_error": self.error})


def step_sweep(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    exact: torch.Tensor,
    eps_values: Sequence[float] | None = None,
) -> StepSweep:
    """Max |finite-difference Jacobian - exact| for each step in ``eps_values``.

    Default steps: 10^-1 down to 10^-13 (float64) or 10^-1 to 10^-7 (lower precision).
    ``exact`` has shape ``f(x).shape + x.shape``.
    """
    x = check_tensor("x", x)
    if eps_values is None:
        lo = 13 if x.dtype == torch.float64 else 7
        eps_values = [10.0**-k for k in range(1, lo + 1)]
    errors = []
    for e in eps_values:
        approx = jacobian(f, x, eps=float(e))
        if approx.shape != exact.shape:
            raise ValueError(
                f"exact: expected shape {tuple(approx.shape)} (f(x).shape + x.shape), "
                f"got {tuple(exact.shape)}"
            )
        errors.append(float((approx.to(exact.dtype) - exact).abs().max()))
    return StepSweep(eps=tuple(float(e) for e in eps_values), error=tuple(errors))
