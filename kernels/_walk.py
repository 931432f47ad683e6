"""Running an ``nn.Module`` on the ``meta`` device, as the counting walker and the receptive
field do: its parameters and buffers swapped for meta tensors (nothing allocated or
computed), forward hooks that name the layer each op belongs to, the checks of the module,
the input shape and each layer's input, the dtype of the meta input against the module's
(``_walk_dtype``), and the error that says where a shape did not fit.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from handgrad.kernels.counts import _is_int


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(t, device="meta")
    return nn.Parameter(out, requires_grad=False) if isinstance(t, nn.Parameter) else out


def _meta_state(module: nn.Module, named_params=None) -> dict[str, torch.Tensor]:
    """A meta tensor for every parameter and buffer name; names that share a tensor in
    the module share one meta tensor, so sharing survives the swap. ``named_params``:
    ``module.named_parameters(remove_duplicate=False)`` where the caller has it already
    (each named_* call walks the whole module tree again)."""
    made: dict[int, torch.Tensor] = {}
    # named_* rather than the state dict, which leaves out non-persistent buffers (a causal
    # mask, a rotary table): the forward would meet them on their own device
    named = itertools.chain(module.named_parameters(remove_duplicate=False)
                            if named_params is None else named_params,
                            module.named_buffers(remove_duplicate=False))
    return {n: made.setdefault(id(t), _meta_like(t)) for n, t in named}


def _run_under(mode, module, state, x, hooks, input_shape, stack):
    """Run ``module`` on the meta input ``x`` under the dispatch ``mode`` that watches it
    and return its output, a torch error turned into the named ``_does_not_fit``; the
    hooks removed whatever happens."""
    try:
        # not under torch.device("meta"), which would make a factory call of the forward
        # without a device (torch.arange(n)) a meta tensor: its TorchFunctionMode on every op
        # made count_model 1.3 to 1.6x slower in the gate's timed runs (2.5% instructions)
        with mode:
            return _functional_call(module, state, x)
    except TypeError as exc:
        if "forward() missing" not in str(exc):
            raise
        raise TypeError(f"module: {str(exc).splitlines()[0]}; the walk feeds the forward one "
                        f"meta tensor of input_shape {input_shape}: wrap a module taking "
                        "several inputs in one that takes one and makes the others "
                        "(e.g. forward(x): return self.attn(x, x, x))") from None
    except (RuntimeError, NotImplementedError) as exc:
        error = _does_not_fit(input_shape, stack, exc)
        found = _float_dtypes(module)
        first = str(exc).splitlines()[0]
        if not x.dtype.is_floating_point and _TYPE_WORDS.search(first):
            # an integer dtype walks token indices (an Embedding's input): a layer that
            # takes floating input refuses them, whatever input_shape
            where = stack[-1][0] if stack else "(model)"
            raise TypeError(f"dtype: {x.dtype} walks the model on integer input (token "
                            f"indices, as an Embedding takes), but layer '{where}' takes "
                            f"floating input ({first}); pass the floating dtype its input "
                            "takes, or leave dtype out (the module's own)") from None
        if len(found) > 1:  # the likelier cause: say it
            error.args = (f"{error.args[0]} (the module mixes floating dtypes, "
                          f"{_mixed(found)}: cast a copy to one dtype, e.g. "
                          f"copy.deepcopy(module).float(); the counts do not depend on it)",)
        raise error from None
    finally:
        for h in hooks:
            h.remove()


def _functional_call(module, state, x):
    # torch.func.functional_call swaps the meta tensors in for the call and restores the
    # user's parameters afterwards; nothing here differentiates anything
    from torch.func import functional_call

    return functional_call(module, state, (x,), tie_weights=True, strict=False)


def _check_module(module) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    return module


def _float_dtypes(module: nn.Module) -> dict[torch.dtype, list[str]]:
    """The floating dtypes of ``module``'s parameters and buffers, each with the names that
    have it (integer buffers such as ``num_batches_tracked`` left out)."""
    found: dict[torch.dtype, list[str]] = {}
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point():
            found.setdefault(t.dtype, []).append(name)
    return found


def _mixed(found: dict[torch.dtype, list[str]]) -> str:
    """``found``'s dtypes, each with (up to three of) the names that have it."""
    def names(ns):
        return ", ".join(ns[:3]) + (f" and {len(ns) - 3} more" if len(ns) > 3 else "")
    each = [f"{d} ({names(ns)})" for d, ns in sorted(found.items(), key=str)]
    return ", ".join(each[:-1]) + " and " + each[-1]


def _walk_dtype(module: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the meta input: ``dtype``, which must be one of the module's floating
    dtypes (TypeError naming ``dtype`` and the module's, as for a dtype differing from a
    sibling's; rather than torch's mismatch blamed on the input shape by the first layer
    that sees it). None: the module's own (the first parameter's or buffer's where it
    mixes dtypes, as keeping norms in float32 does), or torch's default for a module with
    no floating parameters or buffers; any dtype for the latter."""
    floating = False  # one lazy pass, no names (count_model is timed); names on refusal
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            if dtype is None or t.dtype == dtype:
                return t.dtype
            floating = True
    if not floating:  # no floating parameter or buffer: any dtype
        return torch.get_default_dtype() if dtype is None else dtype
    found = _float_dtypes(module)
    if len(found) == 1:
        (have,) = found
        raise TypeError(f"dtype: got {dtype}, but the module's floating parameters and "
                        f"buffers are {have}; pass dtype={have} to match them")
    raise TypeError(f"dtype: got {dtype}, but the module's floating parameters and "
                    f"buffers are {_mixed(found)}; pass the dtype its input takes")


_MAX_NUMEL = (2**63 - 1) // 16  # values of the widest dtype (complex128) torch can size


def _check_input_shape(input_shape, rank: int | None = None) -> tuple[int, ...]:
    """A sequence of positive Python or numpy ints (batch included) as a tuple of ints:
    TypeError for something else than a sequence of ints, ValueError for an empty one or a
    size below 1."""
    want = "a sequence of positive ints (batch included)"
    if isinstance(input_shape, torch.Tensor):  # the input itself, not its shape
        raise TypeError(f"input_shape: expected {want}, got a tensor of shape "
                        f"{tuple(input_shape.shape)}; pass its shape (x.shape)")
    if (not isinstance(input_shape, Sequence) or isinstance(input_shape, str)
            or not all(_is_int(s) for s in input_shape)):
        raise TypeError(f"input_shape: expected {want}, got {input_shape!r}")
    if not input_shape or not all(s >= 1 for s in input_shape):
        raise ValueError(f"input_shape: expected {want}, got {input_shape!r}")
    shape = tuple(int(s) for s in input_shape)
    if math.prod(shape) > _MAX_NUMEL:  # torch counts a tensor's bytes in an int64
        raise ValueError(f"input_shape: {shape} is {math.prod(shape):.3g} values, more than a "
                         f"tensor can hold (at most {_MAX_NUMEL:.3g} of 16 bytes: torch counts "
                         "a tensor's bytes in a 64-bit integer)")
    if rank is not None and len(shape) != rank:
        raise ValueError(f"input_shape: expected (N, C, H, W), 4 ints, got {shape}")
    return shape


# torch's words where an op refuses its input's dtype (an integer input to a floating layer)
_TYPE_WORDS = re.compile(r"dtype|scalar type|Input type|floating point|not implemented for")

# torch's words where a forward reads a tensor's values (.item(), ``if`` on a tensor,
# nonzero, a boolean mask), which a meta tensor does not have
_READS_VALUES = ("cannot be called on meta tensors",
                 "data-independent", "Cannot copy out of meta tensor")


def _does_not_fit(input_shape, stack, exc) -> ValueError:
    where = stack[-1][0] if stack else "(model)"
    first = str(exc).splitlines()[0]
    if any(w in first for w in _READS_VALUES):
        return ValueError(f"layer '{where}' reads tensor values ({first}): a forward that "
                          "reads tensor values cannot be walked on meta tensors, whatever "
                          "input_shape")
    if "is not on the expected device meta" in first or (
            "meta" in first and "devices" in first):
        return ValueError(f"layer '{where}' mixes a tensor on another device with the walk's "
                          f"meta tensors ({first}): a tensor the forward makes without "
                          "device=x.device (torch.arange(n) makes it on the CPU) or with an "
                          "explicit device, or one it holds outside its parameters and "
                          "buffers (a plain attribute), cannot be walked on meta tensors, "
                          "whatever input_shape; make it with device=x.device, or register "
                          "it as a buffer")
    # torch's embedding refuses a floating input: the model takes indices, not the shape
    hint = ("; the model takes integer indices (an Embedding): pass dtype=torch.long"
            if "'indices'" in first else "")
    return ValueError(f"input_shape: {input_shape} does not fit layer '{where}': {first}"
                      f"{hint}")


_RANK_NAMES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _where(name: str, mod: nn.Module) -> str:
    """A layer as the errors name it: its name and type (made only for an error, not for
    every layer's input)."""
    return f"layer '{name or '(model)'}' ({type(mod).__name__})"


def _check_layer_input(name: str, mod: nn.Module, inputs) -> None:
    """The input a layer is about to get fits it: rank and channels of a convolution,
    channels of a batch or group norm, features of a linear layer (named errors, before
    torch's own)."""
    if not inputs or not isinstance(inputs[0], torch.Tensor):
        return
    x = inputs[0]
    channels = None
    if isinstance(mod, nn.modules.conv._ConvNd):
        n = len(mod.kernel_size)
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(f"input_shape: {_where(name, mod)} expects "
                             f"{_RANK_NAMES.get(n, 'N, C, ...')} input, got shape "
                             f"{tuple(x.shape)}")
        channels = mod.in_channels
    elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and x.dim() >= 2:
        channels = mod.num_features
    elif isinstance(mod, nn.GroupNorm) and x.dim() >= 2:
        channels = mod.num_channels
    if channels is not None:
        got = x.shape[-(len(getattr(mod, "kernel_size", ())) + 1)] if isinstance(
            mod, nn.modules.conv._ConvNd) else x.shape[1]
        if got != channels:
            raise ValueError(f"input_shape: {_where(name, mod)} expects {channels} input "
                             f"channels, got {got} (input shape {tuple(x.shape)})")
    if isinstance(mod, nn.Linear) and x.shape[-1] != mod.in_features:
        raise ValueError(f"input_shape: {_where(name, mod)} expects {mod.in_features} input "
                         f"features, got {x.shape[-1]} (input shape {tuple(x.shape)})")


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a
