"""Argument checks shared by the kernels: clear errors that name the argument and shapes."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

import torch


def in_graph() -> bool:
    """Inside torch.compile's trace or a CUDA graph capture: no value can be read back to
    the host there, so the checks that read values are not made (the kernels say which)."""
    if torch.compiler.is_compiling():
        return True
    # a capture runs on an initialised CUDA: is_initialized reads a flag, where
    # is_available asks the driver (a quarter of a small kernel's checks, measured)
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def host(t: torch.Tensor) -> torch.Tensor:
    """``t`` to read to the host by float(): detached where it requires grad,
    where torch warns 'Converting a tensor with requires_grad=True to a scalar' (an
    attribute test where it does not: no op on the kernels' hot paths)."""
    return t.detach() if t.requires_grad else t


def shape_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"


def check_tensor(name: str, t: object, *, ndims: Sequence[int] | None = None) -> torch.Tensor:
    """``t`` is a floating-point tensor whose rank is one of ``ndims``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.device.type == "meta":
        raise ValueError(f"{name}: a tensor on the meta device holds no values; expected a "
                         "tensor on a real device (cpu, cuda)")
    if ndims is not None and t.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name}: expected a {want} tensor, got shape {shape_str(t)}")
    return t


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` has the dtype and device of ``ref`` (no silent promotion or transfer)."""
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{name}: dtype {t.dtype} does not match {ref_name} ({ref.dtype}); "
            "cast the inputs to one dtype first"
        )
    if t.device != ref.device:
        raise ValueError(
            f"{name}: on device {t.device}, but {ref_name} on {ref.device}; "
            "move the inputs to one device first"
        )


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def check_finite(name: str, t: torch.Tensor) -> None:
    """Every value of ``t`` finite, else a ValueError that says how many are not and where
    the first is. Not inside a graph (``in_graph``), where no value can be read."""
    if in_graph() or t.numel() == 0:
        return
    # the sum is NaN or inf whenever a value is (NaN + anything is NaN, inf - inf is NaN):
    # one scalar and no temporary of t's size in the usual case; the element-wise test
    # only when the sum is not finite (a NaN or inf, or finite values overflowing the sum)
    if bool(torch.isfinite(t.sum())):
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(f"{name}: expected finite values, got {int(bad.sum())} NaN or inf "
                         f"(the first at index {first}: {t[first].item()})")


def check_float_dtype(name: str, value: object) -> torch.dtype:
    """A floating ``torch.dtype`` (float64, float32, bfloat16, ...); a string such as
    "float32", a numpy dtype or None is a TypeError naming the argument, as is an integer,
    bool or complex dtype."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        named = getattr(torch, value, None) if isinstance(value, str) else None
        hint = f" (torch.{value})" if isinstance(named, torch.dtype) and \
            named.is_floating_point else ""
        raise TypeError(f"{name}: expected a floating torch.dtype{hint}, got {value!r}")
    return value


def check_int(name: str, value: object, *, minimum: int, what: str = "an integer") -> int:
    """A Python or numpy integer >= ``minimum`` as an int (not a bool, not a float)."""
    want = what if minimum == 1 and "positive" in what else f"{what} >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected {want}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return int(value)


def real_number(name: str, value: object, what: str) -> float:
    """A Python, numpy or 0-d real tensor number as a float (not a bool); TypeError
    otherwise, naming ``what`` was expected."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name}: expected {what} (a number or a 0-d real tensor), got a "
                            f"tensor of dtype {value.dtype} and shape {shape_str(value)}")
        return float(host(value))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what} (a real number), got "
                        f"{type(value).__name__} {value!r}")
    return float(value)


def check_real(name: str, value: object, *, what: str) -> float:
    """``real_number``, finite."""
    value = real_number(name, value, what)
    if not value == value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected {what}, finite, got {value!r}")
    return value


def check_all_finite(named: Sequence[tuple[str, torch.Tensor]]) -> None:
    """``check_finite`` of several tensors with one read to the host (one sync on a GPU)
    when all are finite: their sums stacked; the tensors one by one only when not."""
    named = [(n, t) for n, t in named if t is not None and t.numel()]
    if in_graph() or not named:
        return
    sums = torch.stack([t.sum().to(torch.float64) for _, t in named])
    if bool(torch.isfinite(sums).all()):
        return
    for name, t in named:
        check_finite(name, t)


def check_probabilities(name: str, rows: torch.Tensor) -> None:
    """A ValueError naming ``name`` unless every row of ``rows`` (N, C) is finite, >= 0 and
    sums to 1 within ~C ulps (a row of correctly rounded probabilities does); not checked
    inside a graph (a value check)."""
    n, c = rows.shape
    sums = rows.sum(1)
    tol = 2 * c * torch.finfo(rows.dtype).eps
    # written so that a NaN or infinite entry (a NaN or infinite sum) fails it too
    bad = (rows < 0).any(1) | ~((sums - 1).abs() <= tol)
    if not in_graph() and bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        held = ", ".join(f"{v:.6g}" for v in rows[row, :8].tolist()) + (", ..." if c > 8
                                                                       else "")
        raise ValueError(
            f"{name}: probabilities must be finite, >= 0 and sum to 1 in each row (within "
            f"{tol:.2g}); row {row} holds [{held}], summing to {float(sums[row].detach()):.9g}"
        )


# a result below this many bytes is made without asking how much memory the device has
_ALLOC_FLOOR = 2 ** 30


def _device_memory(device: torch.device) -> int | None:
    """The device's memory in bytes (the CPU's physical memory, a CUDA device's total), or
    None where it is not known (another device, or no sysconf)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        pass
    return None


def _bytes_str(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # unreachable
