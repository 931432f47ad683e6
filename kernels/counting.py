"""Parameter and operation counts for convolution stacks: per-layer formulas, and
``count_model``, which walks any ``nn.Module`` on the ``meta`` device and counts each aten
op it dispatches by the op table (``kernels.counting_ops``), forward and, with
``backward=True``, backward. The unit and its conventions: ``kernels.counts``; the
receptive field: ``kernels.receptive_field`` (both re-exported here).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from handgrad.kernels._checks import check_float_dtype
from handgrad.kernels._walk import (
    _check_input_shape,
    _check_layer_input,
    _check_module,
    _flat,
    _meta_state,
    _run_under,
    _walk_dtype,
)
from handgrad.kernels.counting_ops import (
    _ZERO,
    NO_GRADIENT_OPS,
    STATISTICS_OPS,
    backward_op_counts,
    forward_op_counts,
    statistics,
)
from handgrad.kernels.counts import (
    Counts,
    _flag,
    _pair,
    _positive,
    conv2d_output_hw,
)
from handgrad.kernels.receptive_field import ReceptiveField, receptive_field

__all__ = ["Counts", "ModelCounts", "ReceptiveField", "Row", "activation_counts",
           "conv2d_counts", "conv2d_output_hw", "count_model", "linear_counts",
           "pool2d_counts", "receptive_field"]

# --- per-layer formulas ----------------------------------------------------------------


def conv2d_counts(c_in: int, c_out: int, kernel_size, out_hw, groups: int = 1,
                  bias: bool = True, nonlinearity: bool = False, batch: int = 1) -> Counts:
    """Counts of one k x k convolution C_in -> C_out with ``groups`` on an H_out x W_out
    output: params k*k*(C_in/g)*C_out (+ C_out bias), mults H_out*W_out*k*k*(C_in/g)*C_out,
    adds the same (one fewer per output without bias), activations H_out*W_out*C_out when
    a nonlinearity follows. Operations scale with ``batch``; parameters do not."""
    c_in, c_out, groups, batch = _positive(c_in=c_in, c_out=c_out, groups=groups, batch=batch)
    _flag(bias=bias, nonlinearity=nonlinearity)
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups: {groups} must divide c_in={c_in} and c_out={c_out}")
    kh, kw = _pair("kernel_size", kernel_size)
    ho, wo = _pair("out_hw", out_hw)
    _positive(kernel_h=kh, kernel_w=kw, out_h=ho, out_w=wo)
    fan_in = kh * kw * (c_in // groups)
    outputs = batch * ho * wo * c_out
    return Counts(
        params=fan_in * c_out + (c_out if bias else 0),
        mults=outputs * fan_in,
        adds=outputs * (fan_in if bias else fan_in - 1),
        activations=outputs if nonlinearity else 0,
        macs=outputs * fan_in,
    )


def linear_counts(in_features: int, out_features: int, bias: bool = True,
                  nonlinearity: bool = False, batch: int = 1) -> Counts:
    """A fully-connected layer: in*out (+ out) params; batch*out sums of ``in`` products."""
    in_features, out_features, batch = _positive(in_features=in_features,
                                                 out_features=out_features, batch=batch)
    _flag(bias=bias, nonlinearity=nonlinearity)
    outputs = batch * out_features
    return Counts(
        params=in_features * out_features + (out_features if bias else 0),
        mults=outputs * in_features,
        adds=outputs * (in_features if bias else in_features - 1),
        activations=outputs if nonlinearity else 0,
        macs=outputs * in_features,
    )


def pool2d_counts(channels: int, kernel_size, out_hw, kind: str = "max", batch: int = 1) -> Counts:
    """Max-pooling: k*k - 1 compares per output; average pooling: k*k - 1 adds and one
    multiply (by 1/k^2) per output. No parameters."""
    channels, batch = _positive(channels=channels, batch=batch)
    kh, kw = _pair("kernel_size", kernel_size)
    ho, wo = _pair("out_hw", out_hw)
    _positive(kernel_h=kh, kernel_w=kw, out_h=ho, out_w=wo)
    outputs = batch * channels * ho * wo
    if kind == "max":
        return Counts(compares=outputs * (kh * kw - 1))
    if kind == "avg":
        return Counts(adds=outputs * (kh * kw - 1), mults=outputs)
    raise ValueError(f"kind: expected 'max' or 'avg', got {kind!r}")


def activation_counts(numel: int) -> Counts:
    """An element-wise nonlinearity on ``numel`` values."""
    (numel,) = _positive(numel=numel)
    return Counts(activations=numel)


# --- walking a model ---------------------------------------------------------------------


@dataclass
class Row:
    layer: str
    type: str
    op: str
    output_shape: tuple[int, ...]
    counts: Counts
    pass_: str = "forward"  # or "backward"


def _sum(rows) -> Counts:
    total = Counts()
    for r in rows:
        total = total + r.counts
    return total


@dataclass
class ModelCounts:
    """Per-op rows of a model walk, their ``total``, and the ops that had no formula.

    With ``count_model(..., backward=True)`` the rows hold the backward pass too (in the
    order autograd runs it, output side first): ``total`` covers both passes, ``forward``
    and ``backward`` each pass alone."""

    rows: list[Row]
    uncounted: dict[str, int] = field(default_factory=dict)  # aten op -> times seen
    input_shape: tuple[int, ...] = ()
    uncounted_backward: dict[str, int] = field(default_factory=dict)
    with_backward: bool = False
    # parameters of the module the traced forward pass never reached, by name: (numel,
    # why). They are not in ``total.params``; with them the module's own count is whole:
    # total.params + sum of these = sum(p.numel() for p in module.parameters())
    unreached_params: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def total(self) -> Counts:
        return _sum(self.rows)

    def of_pass(self, name: str) -> Counts:
        """The rows of one pass, "forward" or "backward", summed."""
        if name not in ("forward", "backward"):
            raise ValueError(f"name: expected 'forward' or 'backward', got {name!r}")
        return _sum(r for r in self.rows if r.pass_ == name)

    @property
    def forward(self) -> Counts:
        return self.of_pass("forward")

    @property
    def backward(self) -> Counts:
        """The backward pass alone (zero Counts unless counted with backward=True)."""
        return self.of_pass("backward")

    def to_frame(self, include_free: bool = False):
        """pandas DataFrame, a row per counted op (free data-movement ops left out unless
        ``include_free``): pass ("forward" / "backward"), layer, type, op, output_shape,
        params, mults, adds, activations, compares, macs. A backward row's op names the
        gradient it computes, e.g. ``convolution.grad_weight``."""
        import pandas as pd

        recs = [
            {"pass": r.pass_, "layer": r.layer, "type": r.type, "op": r.op,
             "output_shape": r.output_shape,
             **{k: v for k, v in r.counts.as_dict().items() if k != "flops"}}
            for r in self.rows
            if include_free or r.counts != Counts() or r.op == "(parameters)"
        ]
        return pd.DataFrame(recs)

    def summary(self) -> str:
        t = self.total
        lines = [
            f"input {self.input_shape}: params {t.params:,}; mults {t.mults:,}; adds {t.adds:,}; "
            f"activations {t.activations:,}; compares {t.compares:,}",
            f"MACs {t.macs:,} = FLOPs/2; FLOPs {t.flops:,} (FlopCounterMode convention: "
            "products only, no bias adds or activations)",
        ]
        if self.with_backward:
            b = self.of_pass("backward")
            lines.insert(0, "forward and backward passes:")
            lines.append(f"of which the backward pass: mults {b.mults:,}; adds {b.adds:,}; "
                         f"activations {b.activations:,}; MACs {b.macs:,}")
        if self.uncounted:
            lines.append("uncounted ops (no formula): " + ", ".join(
                f"{k} x{v}" for k, v in sorted(self.uncounted.items())))
        if self.uncounted_backward:
            lines.append("uncounted backward ops (no formula): " + ", ".join(
                f"{k} x{v}" for k, v in sorted(self.uncounted_backward.items())))
        if self.unreached_params:
            n = sum(k for k, _ in self.unreached_params.values())
            lines.append(f"parameters the forward pass did not reach ({n:,}, not in params):")
            lines += [f"  {name} ({k:,}): {why}"
                      for name, (k, why) in self.unreached_params.items()]
        return "\n".join(lines)


class _Recorder(TorchDispatchMode):
    """Counts each op; with ``tracked`` (the meta tensors that require grad) it also follows
    which values depend on them and counts the backward pass each op will need."""

    def __init__(self, stack: list[tuple[str, str]], result: ModelCounts,
                 tracked: list[torch.Tensor] | None = None,
                 watched: set[int] | None = None):
        super().__init__()
        self.stack, self.result = stack, result
        self.watched = watched or set()  # ids of the parameters' meta tensors
        self.reached: set[int] = set()  # those an op took as an argument
        self.follow_grads = tracked is not None
        self.keep = list(tracked or [])  # alive, so that their ids stay theirs
        self.tracked = {id(t) for t in self.keep}
        # each tracked value's current version: a number per op result (in place or not)
        self.made = len(self.keep)
        self.version = {id(t): i for i, t in enumerate(self.keep)}
        self.ops: list = []  # per op needing a gradient: (uses, versions made, rows, ...)
        # a custom Function being applied through function(): the list its ctx's
        # mark_non_differentiable fills (context); an open region: _Region
        self.entering: list | None = None
        self.region: _Region | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        watched = self.watched
        if watched:  # a parameter reaches an op as an argument of its own (aten takes a
            for a in args:  # weight or bias positionally) or in a list (stack, cat)
                if id(a) in watched:
                    watched.discard(id(a))
                    self.reached.add(id(a))
                elif a.__class__ is list and a and a[0].__class__ is not int:
                    self._reach(a)  # not a list of ints (a stride, a size): no tensor there
        counts = forward_op_counts(name, args, out)
        # the stack holds (layer, type) frames, "(model)" for the module itself
        layer, kind = self.stack[-1] if self.stack else ("(model)", "")
        if counts is None:
            self.result.uncounted[name] = self.result.uncounted.get(name, 0) + 1
            counts = _ZERO
        if name in STATISTICS_OPS:
            part = statistics(name, args)
            if part is not None:
                self.result.uncounted[part] = self.result.uncounted.get(part, 0) + 1
        o = out[0] if isinstance(out, (tuple, list)) and out else out
        shape = tuple(o.shape) if isinstance(o, torch.Tensor) else ()
        self.result.rows.append(Row(layer, kind, name, shape, counts))
        if self.follow_grads:
            if self.region is not None and self._in_region(args, out):
                return out  # a Function's forward, its apply its own: one node (context)
            self._backward(name, args, out, layer, kind, shape)
        return out

    def function(self, cls, args, kwargs):
        """``cls.apply(*args, **kwargs)`` during the walk (``_functions_followed``). torch
        runs a Function's forward with grad disabled, so its ops get no gradient here;
        autograd records the Function as one node whose backward is ``cls.backward``, the
        user's code, which the walk does not see: its results are followed (the layers
        upstream get their gradients), but for those its forward marks non-differentiable
        (``ctx.mark_non_differentiable``), and the Function is listed in
        ``uncounted_backward``. A reentrant checkpoint (torch.utils.checkpoint's
        CheckpointFunction) is not applied: its block is called as it is, in the grad mode
        of the call, so its ops are counted as without the checkpoint (its recomputation
        in the backward is not counted), and torch's CheckpointFunction.forward, which
        warns that no input requires grad (none of the walk's meta tensors does), does not
        run."""
        grad = torch.is_grad_enabled()
        if cls.__name__ == "CheckpointFunction" and cls.__module__ == "torch.utils.checkpoint":
            # CheckpointFunction.apply(run_function, preserve_rng_state, *args)
            return args[0](*args[2:], **kwargs)
        marked: list = []  # its ctx's non-differentiable results (context)
        self.entering = marked
        try:
            out = _APPLY[0].__func__(cls, *args, **kwargs)
        finally:
            self.entering = None
        if grad:
            tracked, version = self.tracked, self.version
            uses = [(version[id(t)], t.numel()) for t in _flat([*args, *kwargs.values()])
                    if isinstance(t, torch.Tensor) and id(t) in tracked
                    and t.is_floating_point()]
            self._function_node(cls, uses, [out], marked, *self._frame())
        return out

    def _frame(self) -> tuple[str, str]:
        return self.stack[-1] if self.stack else ("(model)", "")

    def context(self, ctx, caller) -> None:
        """A Function's ctx is being made (``_ctx_init``): the Function starts. Applied
        through Function.apply (``function``), its ctx is watched for the results it marks
        non-differentiable. A Function whose own ``apply`` goes around Function.apply (to
        ``torch._C._FunctionBase.apply``) is met here only: it is followed as a region,
        the ops its forward runs while the call at ``caller`` lasts (``_in_region``)."""
        grad = torch.is_grad_enabled()
        if self.region is not None and grad:
            # grad is on: no Function's forward is running, the region's call has returned
            self._close_region()
        marked = self.entering
        if marked is not None:  # function()'s own: watched only
            self.entering = None
            _watch(ctx, marked)
        elif grad:  # an apply of its own; with grad off, autograd records no node
            marked = []
            _watch(ctx, marked)
            self.region = _Region(type(ctx)._forward_cls, caller, caller.f_lasti, marked,
                                  self._frame())

    def _in_region(self, args=(), out=None) -> bool:
        """Whether the op (``args`` -> ``out``) is one of the open region's: run with grad
        off while the region's apply call has not returned (its caller's frame is still at
        that call). Its ops have no backward of their own (the Function's is the user's
        code); the tracked values they read are the Function's uses, the values they make
        its results. An op after the call closes the region (``_close_region``) first."""
        r = self.region
        if torch.is_grad_enabled() or r.frame.f_lasti != r.lasti:
            self._close_region()
            return False
        tracked, version = self.tracked, self.version
        for t in _flat(args):
            if isinstance(t, torch.Tensor) and id(t) in tracked and t.is_floating_point():
                r.uses.setdefault(version[id(t)], t.numel())
        r.outs.append(out)
        return True

    def _close_region(self) -> None:
        """The open region's Function as a node (``_function_node``): each tracked value its
        forward read is one use (a value it was given but did not read, and one given
        twice, cannot be told from the ops: one use each value read)."""
        r, self.region = self.region, None
        self._function_node(r.cls, list(r.uses.items()), r.outs, r.marked, *r.where)

    def _function_node(self, cls, uses, out, marked, layer, kind) -> None:
        """A custom Function's node in the graph: it needs a gradient where an input does
        (``uses``); its results are tracked, but for those its forward marked
        non-differentiable (``marked``), each use receives a gradient, and its backward,
        the user's own, is listed as uncounted."""
        skip = {id(t) for t in marked}
        outs = [t for t in _flat(out) if isinstance(t, torch.Tensor)
                and (t.is_floating_point() or t.is_complex()) and id(t) not in skip]
        if not uses or not outs:
            return
        # as _backward's (not shared: a call per op there cost 0.09% of a backward walk)
        tracked, version = self.tracked, self.version
        made = []
        for t in outs:
            tracked.add(id(t))
            self.keep.append(t)
            self.made += 1
            version[id(t)] = self.made
            made.append(self.made)
        name = f"{cls.__qualname__} (autograd.Function: its backward is the user's code)"
        seen = self.result.uncounted_backward
        seen[name] = seen.get(name, 0) + 1
        self.ops.append((uses, made, [], layer, kind, cls.__qualname__))

    def _reach(self, tensors: list) -> None:
        for t in tensors:
            if id(t) in self.watched:
                self.watched.discard(id(t))
                self.reached.add(id(t))

    def _backward(self, name, args, out, layer, kind, shape) -> None:
        # a constant to autograd (NO_GRADIENT_OPS), or an op run under torch.no_grad()
        # (or inference_mode): autograd records nothing, its result needs no gradient.
        # torch runs a custom autograd.Function's forward so too: the Function itself is
        # followed at its apply (``function``) or as a region (``context``), a reentrant
        # checkpoint's block is run in the grad mode it was called in
        if name in NO_GRADIENT_OPS or not torch.is_grad_enabled():
            return
        tracked = self.tracked
        needs = [any(id(t) in tracked for t in _flat([a]) if isinstance(t, torch.Tensor))
                 for a in args]
        if not any(needs):
            return
        # an integer or boolean result (a mask, indices) has no gradient: autograd neither
        # runs this op backward for it nor sends one through it
        outs = [t for t in _flat([out]) if isinstance(t, torch.Tensor)
                and (t.is_floating_point() or t.is_complex())]
        if not outs:
            return
        # each use of a tracked value (a version of it: an in-place op makes a new one)
        # sends autograd one gradient for it; see _accumulation
        version = self.version
        uses = [(version[id(t)], t.numel()) for t in _flat(args)
                if isinstance(t, torch.Tensor) and id(t) in tracked and t.is_floating_point()]
        made = []
        for t in outs:
            tracked.add(id(t))
            self.keep.append(t)
            self.made += 1
            version[id(t)] = self.made
            made.append(self.made)
        rows = backward_op_counts(name, args, out, needs)
        if rows is None:
            seen = self.result.uncounted_backward
            seen[name] = seen.get(name, 0) + 1
            rows = []
        # autograd runs an op's gradients in the reverse of the order listed here
        self.ops.append((uses, made, [Row(layer, kind, f"{name}.{grad}", shape, counts,
                                          "backward") for grad, counts in rows], layer, kind,
                         name))

    def backward_rows(self, output) -> list[Row]:
        """The backward pass from ``output`` (the forward's result), in the order autograd
        runs it: an op none of whose results leads to ``output`` gets no gradient and is
        not run; a value that leads to ``output`` through several uses (an op's, or one op
        taking it twice) receives one gradient per use, and autograd adds them, one add
        per element for each use after the first (``_accumulation``)."""
        from torch.utils._pytree import tree_leaves  # a tuple, a dict, a ModelOutput

        if self.region is not None:  # the forward ended in a Function's region
            self._close_region()
        live = {self.version[id(t)] for t in tree_leaves(output)
                if isinstance(t, torch.Tensor) and id(t) in self.version}
        if not live:  # an output pytree cannot open: every result is taken as used
            live = {m for _, made, *_ in self.ops for m in made}
        received: dict[int, int] = {}  # a value's version -> the gradients it gets
        rows: list[Row] = []
        for uses, made, op_rows, layer, kind, name in reversed(self.ops):
            if not any(m in live for m in made):
                continue
            rows.extend(reversed(op_rows))
            for key, numel in uses:
                live.add(key)
                if received.get(key):  # a second gradient for that value: added to the first
                    rows.append(_accumulation(layer, kind, name, numel))
                received[key] = received.get(key, 0) + 1
        return rows


@dataclass
class _Region:
    """A custom Function whose own ``apply`` goes around Function.apply, while it runs:
    the frame that called torch's C apply and the instruction it is at (``f_lasti``, the
    same until the call returns), the results its ctx marks non-differentiable, the
    tracked values its ops read (version -> numel), the results they make, the layer."""

    cls: type
    frame: object
    lasti: int
    marked: list
    where: tuple[str, str]
    uses: dict = field(default_factory=dict)
    outs: list = field(default_factory=list)


# torch.autograd.Function.apply is a Python classmethod that no dispatch or torch-function
# mode sees: a backward walk swaps in ``_apply`` for its duration (``_functions_followed``),
# which hands the calls of the walking thread to its recorder and passes the others through.
# A subclass may override apply and call torch's C apply (``_FunctionBase.apply``) itself:
# every apply makes the Function's ctx, ``cls._backward_cls()``, a BackwardCFunction, whose
# __init__ (``_ctx_init``, set for the walk's duration too) tells the recorder
_APPLY = [torch.autograd.Function.__dict__["apply"]]  # the apply swapped out (torch's own)
# (named through the Function base class: counting differentiates nothing, and test_project
# allows counting.py that name alone) torch's BackwardCFunction, the base of every ctx class
_CTX = torch.autograd.Function._backward_cls.__bases__[0]
_MARK = torch.autograd.Function.mark_non_differentiable  # FunctionCtx's
_CTX_INIT = [_CTX.__dict__.get("__init__")]  # torch defines none (2.13): object's
_walks: dict[int, _Recorder] = {}  # thread id -> the recorder of the walk it runs
_walks_lock = threading.Lock()


def _apply(cls, *args, **kwargs):
    recorder = _walks.get(threading.get_ident())
    if recorder is None:
        return _APPLY[0].__func__(cls, *args, **kwargs)
    return recorder.function(cls, args, kwargs)


def _ctx_init(ctx, *args, **kwargs):
    recorder = _walks.get(threading.get_ident())
    if recorder is not None:  # the frame that called the C apply (C frames are not seen)
        recorder.context(ctx, sys._getframe(1))
    if _CTX_INIT[0] is not None:
        _CTX_INIT[0](ctx, *args, **kwargs)


def _mark(ctx, marked: list, *tensors):
    marked.extend(tensors)
    return _MARK(ctx, *tensors)


def _watch(ctx, marked: list) -> None:
    """``ctx.mark_non_differentiable`` also notes its tensors in ``marked`` (torch clears
    the ctx's own record when apply returns)."""
    ctx.mark_non_differentiable = lambda *tensors: _mark(ctx, marked, *tensors)


@contextlib.contextmanager
def _functions_followed(recorder: _Recorder):
    """Custom autograd Functions (and reentrant checkpoints) called in this thread go to
    ``recorder.function`` while the walk runs, and the ctx each Function makes to
    ``recorder.context``; Function.apply and BackwardCFunction are torch's own again after
    the last walk (of any thread) ends."""
    me = threading.get_ident()
    with _walks_lock:
        before = _walks.get(me)
        if not _walks:  # the first walk running: swap (kept, for a late caller, after)
            _APPLY[0] = torch.autograd.Function.__dict__["apply"]
            torch.autograd.Function.apply = classmethod(_apply)
            _CTX_INIT[0] = _CTX.__dict__.get("__init__")
            _CTX.__init__ = _ctx_init
        _walks[me] = recorder
    try:
        yield
    finally:
        with _walks_lock:
            if before is None:
                del _walks[me]
            else:
                _walks[me] = before
            if not _walks:
                torch.autograd.Function.apply = _APPLY[0]
                if _CTX_INIT[0] is None:
                    del _CTX.__init__
                else:
                    _CTX.__init__ = _CTX_INIT[0]


def _accumulation(layer, kind, name, numel) -> Row:
    """Autograd adding one more gradient into a value's (numel adds), counted at the use that
    sends it: ``op.grad_accumulate``."""
    return Row(layer, kind, f"{name}.grad_accumulate", (), Counts(adds=numel), "backward")


# an integer input: the indices an nn.Embedding (or another lookup) takes
_INDEX_DTYPES = (torch.int64, torch.int32)


def count_model(module: nn.Module, input_shape: Sequence[int], *, dtype=None,
                backward: bool = False, input_requires_grad: bool = False) -> ModelCounts:
    """Walk ``module`` on a meta input of ``input_shape`` (batch included): nothing is
    allocated or computed, and the module itself is not modified. Every aten op the
    forward pass dispatches is counted (functional calls too) and attributed to the
    innermost module running it; ops with no formula are listed in ``.uncounted``.
    A parameter shared by several layers is counted once, at its first owner.

    ``backward=True`` also counts the backward pass by formula (kernels.counting_backward),
    as autograd would run it from the output: per op the gradient of each input that
    depends on a parameter with ``requires_grad`` (the data input does not, unless
    ``input_requires_grad``), of each weight and bias that requires grad, nothing else.
    ``.total`` then covers both passes and ``.backward`` the backward pass alone; ops whose
    backward has no formula are listed in ``.uncounted_backward``. As autograd, it runs
    only the ops whose results lead to the output (every tensor of a tuple or dict
    output), and where a value is used more than once (a fan-out, a residual, tied
    weights, a module called twice, one op taking it twice) adds the gradients of its
    uses: numel adds per use after the first (``op.grad_accumulate`` rows). A custom
    ``torch.autograd.Function`` is one node, as to autograd (whatever its ``apply``): its
    results need a gradient where an input does, but for those it marks non-differentiable;
    its backward, the user's code, is not counted but listed in
    ``.uncounted_backward`` ("<name> (autograd.Function: ...)"). A block under
    ``torch.utils.checkpoint`` (reentrant or not) is counted as without the checkpoint:
    the forward it runs again in the backward is not counted.

    ``dtype`` is the meta input's: None (default) the module's own (its first floating
    parameter's or buffer's; float32 for a module with none), else one of the module's
    floating parameters' and buffers' dtypes: another is a TypeError naming ``dtype`` and
    the module's. A module with none takes any. Where a module that mixes dtypes does not
    run in ``dtype``, the error names each dtype. The counts do not depend on it.
    ``torch.long`` or ``torch.int32``: an input of indices (a model that starts with an
    ``nn.Embedding``), walked as given."""
    if not isinstance(backward, bool):
        raise TypeError(f"backward: expected True or False, got {backward!r}")
    if not isinstance(input_requires_grad, bool):
        raise TypeError(f"input_requires_grad: expected True or False, got "
                        f"{input_requires_grad!r}")
    if input_requires_grad and not backward:  # it decides which gradients the backward makes
        raise ValueError("input_requires_grad=True counts the input's gradient in the "
                         "backward pass: it needs backward=True too")
    module = _check_module(module)
    input_shape = _check_input_shape(input_shape)
    if dtype not in _INDEX_DTYPES:  # token indices (an Embedding's input) are walked as given
        dtype = _walk_dtype(module, None if dtype is None else check_float_dtype("dtype",
                                                                                 dtype))
    result = ModelCounts(rows=[], input_shape=input_shape, with_backward=backward)
    stack: list[tuple[str, str]] = []
    # each module's frame as the stack holds it, (layer, type), made once: the module
    # tree is walked here and for the parameters below, not again per use or per call
    frames = {m: (n or "(model)", type(m).__name__) for n, m in module.named_modules()}
    seen_params: set[int] = set()
    param_rows: dict[str, int] = {}
    hooks = []

    def pre(mod, inputs):
        frame = frames.get(mod) or ("?", type(mod).__name__)
        layer = frame[0]
        _check_layer_input(layer, mod, inputs)
        stack.append(frame)
        own = 0
        # mod._parameters is what mod.parameters(recurse=False) reads (less its Nones and
        # its duplicates, which seen_params drops too), without that generator chain on
        # every module call
        for p in mod._parameters.values():
            if p is None:
                continue
            key = id(p)  # one meta tensor per shared parameter (see _meta_state)
            if key not in seen_params:
                seen_params.add(key)
                own += p.numel()
        if own:
            param_rows[layer] = param_rows.get(layer, 0) + own

    def post(mod, inputs, output):
        stack.pop()

    for m in frames:  # module.modules(), in its order
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    named_params = list(module.named_parameters(remove_duplicate=False))
    state = _meta_state(module, named_params)
    x = torch.empty(input_shape, dtype=dtype, device="meta")
    tracked = None
    if backward:
        tracked = [state[n] for n, t in named_params if t.requires_grad]
        tracked += [x] if input_requires_grad else []
    params = _first_names(named_params)  # shared ones once, at their first name
    recorder = _Recorder(stack, result, tracked, {id(state[n]) for n in params})
    # the backward asked for is counted whatever the caller's grad mode; the model's own
    # torch.no_grad() blocks still switch it off inside (_Recorder._backward)
    # (custom autograd Functions, whose forward torch runs with grad disabled, are followed
    # at their apply: _functions_followed)
    with (torch.enable_grad() if backward else contextlib.nullcontext(),
          _functions_followed(recorder) if backward else contextlib.nullcontext()):
        output = _run_under(recorder, module, state, x, hooks, input_shape, stack)
    _account_params(module, params, state, seen_params, recorder.reached, param_rows, result)
    _attach_params(result, param_rows, dict(frames.values()))
    if backward:
        result.rows.extend(recorder.backward_rows(output))
    return result


def _first_names(named_params) -> dict[str, torch.Tensor]:
    """``dict(module.named_parameters())`` from ``named_parameters(remove_duplicate=False)``:
    each tensor once, at its first name (a shared module's tensors are first met under the
    path remove_duplicate keeps), in the same order; without a second walk of the tree."""
    params: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for n, t in named_params:
        if id(t) not in seen:
            seen.add(id(t))
            params[n] = t
    return params


def _account_params(module, params, state, seen, reached, param_rows, result) -> None:
    """Every parameter of ``module`` counted or named. A layer's own parameters were
    counted when it ran (``pre``); one that an op took while its layer never ran (an
    attention block's ``out_proj``, used through ``F.multi_head_attention_forward``) is
    counted at its own layer; one no op took, of a layer that never ran, is listed in
    ``unreached_params`` with the reason (a branch the module's mode skips, say)."""
    mode = "training" if module.training else "eval"
    for name, p in params.items():
        meta = state[name]
        if id(meta) in seen:
            continue
        owner = name.rpartition(".")[0]
        if id(meta) in reached:
            seen.add(id(meta))
            param_rows[owner or "(model)"] = param_rows.get(owner or "(model)", 0) + p.numel()
            continue
        # a layer that ran counted all its own parameters (``pre``), used or not
        sub = module.get_submodule(owner) if owner else module
        result.unreached_params[name] = (
            p.numel(), f"no op took it: module '{owner or '(model)'}' "
            f"({type(sub).__name__}) was not called in the traced forward pass (traced in "
            f"{mode} mode)")


def _attach_params(result: ModelCounts, param_rows: dict[str, int], kinds: dict[str, str]):
    """Put each layer's parameter count on its first op row (or a row of its own)."""
    for layer, n in param_rows.items():
        for r in result.rows:
            if r.layer == layer:
                r.counts = r.counts + Counts(params=n)
                break
        else:
            result.rows.append(Row(layer, kinds.get(layer, ""), "(parameters)", (),
                                   Counts(params=n)))
