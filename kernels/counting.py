"""Parameter and operation counts for convolution stacks: by formula, and by walking any
``nn.Module`` on the ``meta`` device.

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
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from handgrad.kernels._checks import check_float_dtype

# --- counts and per-layer formulas -----------------------------------------------------


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
    """Each value a positive Python or numpy integer; returned as Python ints, in order."""
    for name, v in kw.items():
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return tuple(int(v) for v in kw.values())


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


# --- counting aten ops as they are dispatched ----------------------------------------------


def _numel(shape) -> int:
    return math.prod(shape)


def _scattered(n_in: int, size: int, k: int, stride: int, padding: int, dilation: int
               ) -> tuple[int, int]:
    """A transposed convolution along one axis: input i's tap t lands on output
    i * stride - padding + t * dilation. (output positions that at least one tap reaches,
    (input, tap) pairs that land inside the cropped output of length ``size``)."""
    hits = [o for i in range(n_in) for t in range(k)
            if 0 <= (o := i * stride - padding + t * dilation) < size]
    return len(set(hits)), len(hits)


def _conv(args, out) -> Counts:
    x, w, b = args[0], args[1], args[2]
    transposed = bool(args[6]) if len(args) > 6 else False
    k = _numel(w.shape[2:])
    if transposed:
        # every input value is scattered to C_out/g * k outputs: all those products are
        # made (FlopCounterMode counts them too); the ones that land on the border that
        # padding crops are dropped. An output that c products reach sums them with c - 1
        # adds (c with a bias); an output none reaches (stride > dilated kernel) holds
        # the bias alone, no add.
        m = _numel(x.shape) * w.shape[1] * k
        reached, inside = 1, 1
        for i in range(x.dim() - 2):
            r, n = _scattered(x.shape[2 + i], out.shape[2 + i], w.shape[2 + i], args[3][i],
                              args[4][i], args[5][i])
            reached, inside = reached * r, inside * n
        groups = args[8]
        c_in_per_group = x.shape[1] // groups
        contributions = x.shape[0] * out.shape[1] * c_in_per_group * inside
        reached = x.shape[0] * out.shape[1] * reached
        adds = contributions if b is not None else contributions - reached
        return Counts(mults=m, adds=adds, macs=m)
    fan_in = w.shape[1] * k
    n_out = _numel(out.shape)
    return Counts(mults=n_out * fan_in, adds=n_out * (fan_in if b is not None else fan_in - 1),
                  macs=n_out * fan_in)


def _mm(a, b, out, bias: bool) -> Counts:
    inner = a.shape[-1]
    n_out = _numel(out.shape)
    return Counts(mults=n_out * inner, adds=n_out * (inner if bias else inner - 1),
                  macs=n_out * inner)


def _out_numel(args, out) -> int:
    o = out[0] if isinstance(out, (tuple, list)) else out
    return _numel(o.shape)


def _pool_window(base: str, args) -> int | None:
    """Taps of a pooling window: k, [k] or [k1, ..., kn] for a 1-, 2- or 3-D pool; None
    when the kernel argument does not fit the pool's rank."""
    rank = 3 if "3d" in base else 1 if "1d" in base else 2
    k = args[1]
    if _is_int(k):
        return int(k) ** rank
    if isinstance(k, Sequence) and len(k) in (1, rank) and all(_is_int(i) for i in k):
        return _numel(k) if len(k) == rank else int(k[0]) ** rank
    return None


_ACTIVATION_OPS = {
    "relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "gelu", "gelu_", "silu", "silu_",
    "elu", "elu_", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "softplus", "mish",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "threshold", "threshold_",
    "_softmax", "_log_softmax",
}
# data movement and bookkeeping: no arithmetic, counted as zero on purpose
_FREE_OPS = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "clone",
    "contiguous", "detach", "alias", "cat", "stack", "flatten", "unsqueeze", "squeeze",
    "slice", "select", "split", "split_with_sizes", "chunk", "empty", "zeros", "ones",
    "zeros_like", "empty_like", "ones_like", "copy_", "_to_copy", "lift_fresh", "as_strided",
    "unbind", "narrow", "pad", "constant_pad_nd", "dropout", "native_dropout", "_reshape_alias",
    "new_empty", "new_zeros", "fill_", "zero_", "index_select", "repeat", "roll", "flip",
}


_MAX_POOL_OPS = {"max_pool1d", "max_pool2d", "max_pool2d_with_indices", "max_pool3d",
                 "max_pool3d_with_indices"}
_AVG_POOL_OPS = {"avg_pool1d", "avg_pool2d", "avg_pool3d"}
_NORM_OPS = {"native_batch_norm", "_native_batch_norm_legit_no_training",
             "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
             "native_layer_norm", "native_group_norm"}


def _statistics(name: str, args) -> str | None:
    """The uncounted part of a normalisation that computes its statistics from the input
    (mean and variance: training-mode batch norm, instance, layer and group norm), as a
    key of ``ModelCounts.uncounted``; None for inference batch norm (running statistics)."""
    base = name.split(".")[0]
    if base in ("native_layer_norm", "native_group_norm"):
        return f"{base} (statistics)"
    if base in ("native_batch_norm", "_native_batch_norm_legit",
                "_native_batch_norm_legit_functional"):
        training = next((a for a in args if isinstance(a, bool)), True)  # the one flag
        return f"{base} (batch statistics, training mode)" if training else None
    return None


def _count_op(name: str, args, out) -> Counts | None:
    """Counts of one aten op, or None when there is no formula for it."""
    base = name.split(".")[0]
    if base == "convolution":
        return _conv(args, out)
    if base in ("mm", "bmm"):
        return _mm(args[0], args[1], out, bias=False)
    if base in ("addmm", "baddbmm"):
        return _mm(args[1], args[2], out, bias=True)
    if base in _ACTIVATION_OPS:
        return Counts(activations=_out_numel(args, out))
    if base in _MAX_POOL_OPS:
        taps = _pool_window(base, args)
        return None if taps is None else Counts(compares=_out_numel(args, out) * (taps - 1))
    if base in _AVG_POOL_OPS:
        taps = _pool_window(base, args)
        n = _out_numel(args, out)
        return None if taps is None else Counts(adds=n * (taps - 1), mults=n)
    if base in ("mean", "sum"):
        n_in, n_out = _numel(args[0].shape), _out_numel(args, out)
        return Counts(adds=n_in - n_out, mults=n_out if base == "mean" else 0)
    if base in ("add", "add_", "sub", "sub_", "rsub"):
        return Counts(adds=_out_numel(args, out))
    if base in ("mul", "mul_", "div", "div_"):
        return Counts(mults=_out_numel(args, out))
    if base in _NORM_OPS:
        # one scale and one shift per value: the inference form, statistics folded in;
        # statistics computed from the input (see _statistics) are listed as uncounted
        n = _out_numel(args, out)
        return Counts(mults=n, adds=n)
    if base in _FREE_OPS:
        return Counts()
    return None


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
        self.backward_rows: list[Row] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        watched = self.watched
        if watched:  # a parameter reaches an op as an argument of its own (top level);
            for a in args:  # aten takes a weight or bias positionally
                if id(a) in watched:
                    watched.discard(id(a))
                    self.reached.add(id(a))
        counts = _count_op(name, args, out)
        layer, kind = self.stack[-1] if self.stack else ("", "")
        if counts is None:
            self.result.uncounted[name] = self.result.uncounted.get(name, 0) + 1
            counts = Counts()
        part = _statistics(name, args)
        if part is not None:
            self.result.uncounted[part] = self.result.uncounted.get(part, 0) + 1
        o = out[0] if isinstance(out, (tuple, list)) and out else out
        shape = tuple(o.shape) if isinstance(o, torch.Tensor) else ()
        self.result.rows.append(Row(layer or "(model)", kind, name, shape, counts))
        if self.follow_grads:
            self._backward(name, args, out, layer or "(model)", kind, shape)
        return out

    def _backward(self, name, args, out, layer, kind, shape) -> None:
        from handgrad.kernels.counting_backward import backward_op_counts

        needs = [any(id(t) in self.tracked for t in _flat([a]) if isinstance(t, torch.Tensor))
                 for a in args]
        if not any(needs):
            return
        for t in _flat([out]):
            if isinstance(t, torch.Tensor):
                self.tracked.add(id(t))
                self.keep.append(t)
        rows = backward_op_counts(name, args, out, needs)
        if rows is None:
            seen = self.result.uncounted_backward
            seen[name] = seen.get(name, 0) + 1
            rows = []
        # autograd runs an op's gradients in the reverse of the order listed here
        for grad, counts in rows:
            self.backward_rows.append(Row(layer, kind, f"{name}.{grad}", shape, counts,
                                          "backward"))


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(t, device="meta")
    return nn.Parameter(out, requires_grad=False) if isinstance(t, nn.Parameter) else out


def count_model(module: nn.Module, input_shape: Sequence[int], *, dtype=torch.float32,
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
    backward has no formula are listed in ``.uncounted_backward``."""
    if not isinstance(backward, bool):
        raise TypeError(f"backward: expected True or False, got {backward!r}")
    if not isinstance(input_requires_grad, bool):
        raise TypeError(f"input_requires_grad: expected True or False, got "
                        f"{input_requires_grad!r}")
    module = _check_module(module)
    input_shape = _check_input_shape(input_shape)
    check_float_dtype("dtype", dtype)
    result = ModelCounts(rows=[], input_shape=input_shape, with_backward=backward)
    stack: list[tuple[str, str]] = []
    names = {m: n for n, m in module.named_modules()}
    seen_params: set[int] = set()
    param_rows: dict[str, int] = {}
    hooks = []

    def pre(mod, inputs):
        name = names.get(mod, "?")
        _check_layer_input(name, mod, inputs)
        stack.append((name or "(model)", type(mod).__name__))
        own = 0
        for p in mod.parameters(recurse=False):
            key = id(p)  # one meta tensor per shared parameter (see _meta_state)
            if key not in seen_params:
                seen_params.add(key)
                own += p.numel()
        if own:
            param_rows[name or "(model)"] = param_rows.get(name or "(model)", 0) + own

    def post(mod, inputs, output):
        stack.pop()

    for m in module.modules():
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    state = _meta_state(module)
    x = torch.empty(input_shape, dtype=dtype, device="meta")
    tracked = None
    if backward:
        originals = module.state_dict(keep_vars=True)
        tracked = [state[n] for n, t in originals.items() if t.requires_grad]
        tracked += [x] if input_requires_grad else []
    params = dict(module.named_parameters())  # shared ones once, at their first name
    recorder = _Recorder(stack, result, tracked, {id(state[n]) for n in params})
    _run_under(recorder, module, state, x, hooks, input_shape, stack)
    _account_params(module, params, state, seen_params, recorder.reached, param_rows, result)
    _attach_params(result, param_rows, {names[m] or "(model)": type(m).__name__
                                        for m in module.modules()})
    result.rows.extend(reversed(recorder.backward_rows))
    return result


def _meta_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A meta tensor for every parameter and buffer name; names that share a tensor in
    the module share one meta tensor, so sharing survives the swap."""
    made: dict[int, torch.Tensor] = {}
    return {n: made.setdefault(id(t), _meta_like(t))
            for n, t in module.state_dict(keep_vars=True).items()}


def _run_under(mode, module, state, x, hooks, input_shape, stack) -> None:
    """Run ``module`` on the meta input ``x`` under the dispatch ``mode`` that watches it,
    a torch error turned into the named ``_does_not_fit``; the hooks removed whatever
    happens."""
    try:
        with mode:
            _functional_call(module, state, x)
    except (RuntimeError, NotImplementedError) as exc:
        raise _does_not_fit(input_shape, stack, exc) from None
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


def _check_input_shape(input_shape, rank: int | None = None) -> tuple[int, ...]:
    """A sequence of positive Python or numpy ints (batch included) as a tuple of ints."""
    if (not isinstance(input_shape, Sequence) or isinstance(input_shape, str)
            or not input_shape or not all(_is_int(s) and s >= 1 for s in input_shape)):
        raise ValueError(f"input_shape: expected a sequence of positive ints (batch "
                         f"included), got {input_shape!r}")
    shape = tuple(int(s) for s in input_shape)
    if rank is not None and len(shape) != rank:
        raise ValueError(f"input_shape: expected (N, C, H, W), 4 ints, got {shape}")
    return shape


def _does_not_fit(input_shape, stack, exc) -> ValueError:
    where = stack[-1][0] if stack else "(model)"
    return ValueError(f"input_shape: {input_shape} does not fit layer '{where}': "
                      f"{str(exc).splitlines()[0]}")


_RANK_NAMES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _check_layer_input(name: str, mod: nn.Module, inputs) -> None:
    """The input a layer is about to get fits it: rank and channels of a convolution,
    channels of a batch or group norm, features of a linear layer (named errors, before
    torch's own)."""
    if not inputs or not isinstance(inputs[0], torch.Tensor):
        return
    x = inputs[0]
    where = f"layer '{name or '(model)'}' ({type(mod).__name__})"
    channels = None
    if isinstance(mod, nn.modules.conv._ConvNd):
        n = len(mod.kernel_size)
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(f"input_shape: {where} expects {_RANK_NAMES.get(n, 'N, C, ...')} "
                             f"input, got shape {tuple(x.shape)}")
        channels = mod.in_channels
    elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and x.dim() >= 2:
        channels = mod.num_features
    elif isinstance(mod, nn.GroupNorm) and x.dim() >= 2:
        channels = mod.num_channels
    if channels is not None:
        got = x.shape[-(len(getattr(mod, "kernel_size", ())) + 1)] if isinstance(
            mod, nn.modules.conv._ConvNd) else x.shape[1]
        if got != channels:
            raise ValueError(f"input_shape: {where} expects {channels} input channels, "
                             f"got {got} (input shape {tuple(x.shape)})")
    if isinstance(mod, nn.Linear) and x.shape[-1] != mod.in_features:
        raise ValueError(f"input_shape: {where} expects {mod.in_features} input features, got "
                         f"{x.shape[-1]} (input shape {tuple(x.shape)})")


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


# --- receptive field -------------------------------------------------------------------


@dataclass(frozen=True)
class ReceptiveField:
    """Of one unit of the last spatial feature map: ``size`` (h, w) of input pixels seen,
    ``jump`` (h, w) input pixels between neighbouring units, ``start`` (h, w) the centre of
    the first unit's field in input coordinates (may be negative with padding). Sizes are
    spans in the padded input's coordinates, padding included."""

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]


# ops that act on each spatial position alone (output position p reads input position p)
_RF_POINTWISE = (_ACTIVATION_OPS - {"_softmax", "_log_softmax"}) | {
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


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a


def receptive_field(module: nn.Module, input_shape: Sequence[int]) -> ReceptiveField:
    """Receptive field of the last spatial feature map of a 2-D conv/pool stack, on meta
    tensors; for branching blocks (concatenation, residual adds) the span of the union of
    the branches' fields. Global pooling (``AdaptiveAvgPool2d(1)``, a mean over H and W
    with keepdim) pools the whole map: its field is the whole input, padding included.
    Refused with a ValueError naming the layer and op: whatever has no exact formula
    (uneven adaptive pooling, upsampling, transposed or non-2-D convolutions, spatial
    crops, pads or permutes, batch norm in training mode, group and layer norm, a
    flattened value made spatial again, fields of different jumps joined)."""
    module = _check_module(module)
    input_shape = _check_input_shape(input_shape, rank=4)
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
    x = torch.empty(input_shape, device="meta")
    tracker = _RFTracker(x, stack)
    _run_under(tracker, module, state, x, hooks, input_shape, stack)
    (r, j, s) = tracker.last
    return ReceptiveField(size=r, jump=j, start=s)
