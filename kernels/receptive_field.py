"""The receptive field of the last spatial feature map of any ``nn.Module``, and the layer
whose output that map is: followed op by op through a meta-device run, exact or refused by
name (``receptive_field``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from handgrad.kernels._walk import (
    _check_input_shape,
    _check_layer_input,
    _check_module,
    _flat,
    _meta_state,
    _run_under,
    _walk_dtype,
)
from handgrad.kernels.counting_ops import ACTIVATION_OPS
from handgrad.kernels.counts import _is_int, _pair


@dataclass(frozen=True)
class ReceptiveField:
    """Of one unit of the last spatial feature map: ``size`` (h, w) of input pixels seen,
    ``jump`` (h, w) input pixels between neighbouring units, ``start`` (h, w) the centre of
    the first unit's field in input coordinates (may be negative with padding). Sizes are
    spans in the padded input's coordinates, padding included.

    ``layer`` names the module whose output that map is, by its qualified name in
    ``module.named_modules()`` (``'0'``, ``'features.3'``): the innermost module running the
    last op that made a spatial map, so that in a classifier (convolutions, then
    ``Flatten`` and ``Linear``) it is the last layer before the flatten. ``'(model)'``: an op
    of the top-level module's own ``forward`` made it (``torch.cat`` of branches, a
    functional pool); ``'(input)'``: no op made one (the field of one input pixel). Its
    default ``""`` is for a field built by hand."""

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]
    layer: str = ""


# ops that act on each spatial position alone (output position p reads input position p)
_RF_POINTWISE = ACTIVATION_OPS | {  # a softmax is not: it reads its row (SOFTMAX_OPS)
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "clone", "contiguous",
    "detach", "alias", "_to_copy", "copy_", "lift_fresh", "dropout", "native_dropout", "view",
    "_unsafe_view", "reshape", "_reshape_alias", "abs", "neg", "pow", "sqrt", "exp", "log",
    "clamp", "clamp_min", "clamp_max", "sign", "fill_", "zero_",
}
# ops that pick or join along a dimension (its position in the op's arguments, default 0):
# exact when that dimension is the batch or the channels, not a spatial one
_RF_ALONG_DIM = {"cat": 1, "slice": 1, "select": 1, "narrow": 1, "index_select": 1,
                 "unbind": 1, "split": 2, "split_with_sizes": 2, "chunk": 2}
_FLAT = "flattened"  # a tracked value with fewer than 3 dims: the spatial field ended


def _rf_pool(rf, k, stride, pad, dil):
    """The textbook recurrences, per axis (see verify/test_counting.py's RF_CASES)."""
    r, j, s = rf
    new = tuple(zip(*[(r[i] + (k[i] - 1) * dil[i] * j[i], j[i] * stride[i],
                       s[i] + ((k[i] - 1) * dil[i] / 2 - pad[i]) * j[i]) for i in range(2)]))
    return (new[0], new[1], new[2])


class _RFTracker(TorchDispatchMode):
    """Follows the field of every value computed from the input, op by op; an op with no
    exact formula on a value that still has spatial dims is refused by name."""

    def __init__(self, first: torch.Tensor, stack: list[tuple[str, str]]):
        super().__init__()
        self.stack = stack
        self.rf: dict[int, tuple | str] = {id(first): ((1, 1), (1, 1), (0.5, 0.5))}
        self.last = self.rf[id(first)]
        self.last_layer = "(input)"  # the layer whose output ``last`` is
        self.keep = [first]  # keep tensors alive so their ids stay unique

    def _refuse(self, base: str, why: str) -> ValueError:
        layer, kind = self.stack[-1] if self.stack else ("(model)", "")
        where = f"layer '{layer}' ({kind})" if kind else f"'{layer}'"
        return ValueError(f"module: {where} applies aten.{base}, which {why}: no exact "
                          "receptive field (refused rather than guessed)")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        base = func.overloadpacket.__name__
        ins = [a for a in _flat(args) if isinstance(a, torch.Tensor) and id(a) in self.rf]
        if not ins:
            return out
        outs = [t for t in _flat([out]) if isinstance(t, torch.Tensor)]
        spatial = [t for t in outs if t.dim() >= 3]
        if not spatial:
            rf = _FLAT  # flattened or reduced: the spatial field ends here
        elif any(self.rf[id(a)] == _FLAT for a in ins):
            raise self._refuse(base, "makes a spatial map again from a flattened value")
        else:
            rf = self._field(base, args, ins, spatial[0])
            self.last = rf
            self.last_layer = self.stack[-1][0] if self.stack else "(model)"
        for t in outs:
            self.rf[id(t)] = rf
            self.keep.append(t)
        return out

    def _field(self, base, args, ins, o):
        x = args[0] if isinstance(args[0], torch.Tensor) else None
        if base == "convolution":
            if x is None or id(x) not in self.rf:
                raise self._refuse(base, "convolves the input as its weight")
            if args[1].dim() != 4:
                raise self._refuse(base, f"is a {args[1].dim() - 2}-D convolution")
            if args[6]:
                raise self._refuse(base, "is a transposed convolution")
            return _rf_pool(self.rf[id(x)], tuple(args[1].shape[2:]), args[3], args[4],
                            args[5])
        if base in ("max_pool2d_with_indices", "max_pool2d", "avg_pool2d"):
            k = _pair("kernel_size", args[1])
            stride = _pair("stride", args[2] if len(args) > 2 and args[2] else args[1])
            pad = _pair("padding", args[3] if len(args) > 3 else 0)
            dil = _pair("dilation", args[4] if base.startswith("max") and len(args) > 4
                        else 1)
            return _rf_pool(self.rf[id(x)], k, stride, pad, dil)
        if base in ("mean", "sum", "amax", "adaptive_max_pool2d", "_adaptive_avg_pool2d"):
            # global pooling (adaptive pooling to 1x1 among it): a window the size of
            # the map; any other adaptive pooling has windows of varying size
            n = tuple(x.shape[-2:])
            if tuple(o.shape[-2:]) == (1, 1) and o.dim() == x.dim():
                return _rf_pool(self.rf[id(x)], n, n, (0, 0), (1, 1))
            if base in ("mean", "sum", "amax") and o.shape[-2:] == x.shape[-2:]:
                return self.rf[id(x)]  # reduced over the channels only
            raise self._refuse(base, f"pools a {n} map to {tuple(o.shape[-2:])} unevenly")
        if base in _RF_ALONG_DIM:
            i = _RF_ALONG_DIM[base]
            ref = x if x is not None else ins[0]
            dim = args[i] if len(args) > i else 0
            if not _is_int(dim) or not (dim % ref.dim()) < ref.dim() - 2:
                raise self._refuse(base, f"works along dimension {dim}, a spatial one")
        elif base in ("native_batch_norm", "_native_batch_norm_legit_no_training",
                      "_native_batch_norm_legit"):
            if next((a for a in args if isinstance(a, bool)), True):
                raise self._refuse(base, "normalises with batch statistics over every "
                                   "position (training mode; call model.eval() first)")
        elif base not in _RF_POINTWISE:
            raise self._refuse(base, "has no receptive-field formula here")
        fields = [self.rf[id(a)] for a in ins]
        if any(tuple(a.shape[-2:]) != tuple(o.shape[-2:]) or a.dim() < 3 for a in ins):
            raise self._refuse(base, "broadcasts or moves values across spatial positions")
        return _merge(fields, lambda why: self._refuse(base, why))


def _merge(fields, refuse):
    """Fields joined position by position (residual add, concatenation): per axis, the span
    of their union; exact when their jumps agree (refused otherwise)."""
    if len({f[1] for f in fields}) > 1:
        raise refuse(f"joins fields of different jumps {sorted({f[1] for f in fields})}")
    lo = [min(f[2][i] - f[0][i] / 2 for f in fields) for i in range(2)]
    hi = [max(f[2][i] + f[0][i] / 2 for f in fields) for i in range(2)]
    size = tuple(int(round(hi[i] - lo[i])) for i in range(2))
    return (size, fields[0][1], tuple((lo[i] + hi[i]) / 2 for i in range(2)))


def receptive_field(module: nn.Module, input_shape: Sequence[int]) -> ReceptiveField:
    """Receptive field of the last spatial feature map of a 2-D conv/pool stack, on meta
    tensors, and the layer whose output that map is (``ReceptiveField.layer``; what comes
    after it, a ``Flatten`` and ``Linear`` head say, has no spatial field); for branching
    blocks (concatenation, residual adds) the span of the union of the branches' fields.
    Global pooling (``AdaptiveAvgPool2d(1)``, a mean over H and W with keepdim) pools the
    whole map: its field is the whole input, padding included.
    Refused with a ValueError naming the layer and op: whatever has no exact formula
    (uneven adaptive pooling, upsampling, transposed or non-2-D convolutions, spatial
    crops, pads or permutes, batch norm in training mode, group and layer norm, a
    flattened value made spatial again, fields of different jumps joined). The meta input
    takes the dtype of the module's floating parameters and buffers (a ``model.half()``
    works as it is; the first one's where they mix)."""
    module = _check_module(module)
    input_shape = _check_input_shape(input_shape, rank=4)
    dtype = _walk_dtype(module, None)
    stack: list[tuple[str, str]] = []
    names = {m: n for n, m in module.named_modules()}

    def pre(mod, inputs):
        name = names.get(mod, "?")
        _check_layer_input(name, mod, inputs)
        stack.append((name or "(model)", type(mod).__name__))

    def post(mod, inputs, output):
        stack.pop()

    hooks = [h for m in module.modules()
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    state = _meta_state(module)
    x = torch.empty(input_shape, dtype=dtype, device="meta")
    tracker = _RFTracker(x, stack)
    _run_under(tracker, module, state, x, hooks, input_shape, stack)
    (r, j, s) = tracker.last
    return ReceptiveField(size=r, jump=j, start=s, layer=tracker.last_layer)
