"""Argument checks shared by the kernels: clear errors that name the argument and shapes."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def in_graph() -> bool:
    """Inside torch.compile's trace or a CUDA graph capture: no value can be read back to
    the host there, so the checks that read values are not made (the kernels say which)."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def shape_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"


def check_tensor(name: str, t: object, *, ndims: Sequence[int] | None = None) -> torch.Tensor:
    """``t`` is a floating-point tensor whose rank is one of ``ndims``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
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
