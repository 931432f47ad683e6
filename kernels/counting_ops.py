"""The op table: every aten op that ``count_model`` counts, its kind, and the forward and
backward formula of each kind, in one place (``OPS``, ``forward_op_counts``,
``backward_op_counts``). An op's forward and backward are decided by the same entry, so
the two passes cannot drift apart; a kind whose backward has no formula says so in
``NO_BACKWARD`` and its ops are listed as uncounted in the backward pass, never zero.

Backward conventions, as the forward's (``kernels.counts``): every product is a multiply
(and a MAC), a sum of n terms costs n - 1 adds. A convolution's grad_input and grad_weight
each make exactly the products of its forward pass, so FlopCounterMode's backward FLOPs are
2 x the MACs counted here. Element-wise nonlinearities cost one derivative evaluation
(``activations``) and one product per element. A softmax is not element-wise: over rows
of C values (n in all) its forward is n exponentials (``activations``), the row sums (n -
rows adds) and n divides (``mults``, as every divide is); log-softmax subtracts each row's
log (one more activation per row) instead of dividing (n adds). Its backward, y * (g -
sum(g * y)), is 2n mults and 2n - rows adds; log-softmax's, g - exp(y) * sum(g), n
exponentials, n mults and 2n - rows adds (aten's decompositions of _softmax_backward_data
and _log_softmax_backward_data). The max subtracted first for range (exact, value
unchanged) is not counted. An op whose result is an integer or boolean (a step counter,
indices, a mask) is bookkeeping, counted zero. Max-pooling routes each gradient to its
argmax (no arithmetic; where windows overlap, two outputs may pick one input and their
gradients add: data-dependent, not counted); views, other data movement and selection
(``where``, ``tril``, ``masked_fill``: an attention mask; ``where``'s broadcast operand's
gradient is summed back to its shape) are free, and
so is an embedding lookup, both ways (``LOOKUP_OPS``), but for the gradient of an expand or
repeat, summed back to its input's shape (``SUMMED_BACK``), and for masked_fill's tensor
value, whose gradient autograd takes as where(mask, g, 0).sum() (numel(out) - numel(value)
adds, whatever the mask). x ** 2 is a product per value (two backward, 2 x g); rsqrt is an
element-wise nonlinearity, so RMSNorm counts whole, and so are exp, log, sqrt, abs, sin and
cos (a hand-written norm or loss, a rotary table); arange is a fill, free; a comparison made
in a floating dtype is a compare per output value (``COMPARE_OPS``); nearest resampling is a
copy whose backward sums, per input, the gradients of the outputs that copied it (``NEAREST_OPS``).
Without a formula, listed: bilinear and bicubic interpolation, another exponent, a norm's
backward (no one convention: see docs/kernels.md). Where a value is used more than
once autograd adds the gradients of its uses: ``count_model`` counts those adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from handgrad.kernels.counts import Counts, _numel, _tuple

# --- the table --------------------------------------------------------------------------

ACTIVATION_OPS = {
    "relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "gelu", "gelu_", "silu", "silu_",
    "elu", "elu_", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "softplus", "mish",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "threshold", "threshold_",
    "rsqrt", "rsqrt_",  # 1 / sqrt(x): RMSNorm's (and a hand-written norm's) scale
    # the elementary functions a forward writes itself (a hand-written norm, a rotary table,
    # a log-cosh loss): one evaluation per value, as softmax's exponentials are counted
    "exp", "exp_", "log", "log_", "sqrt", "sqrt_", "abs", "abs_", "sin", "sin_", "cos", "cos_",
}
# comparisons: one compare per output value where made in a floating dtype (the operands'
# promoted one); on integers, bookkeeping (a mask of indices), counted zero. The result is
# boolean (no gradient); an in-place one's (x.gt_(0), x floating) gradient is zero, free
COMPARE_OPS = {"gt", "lt", "ge", "le", "eq", "ne", "gt_", "lt_", "ge_", "le_", "eq_", "ne_"}
# nearest upsampling (or downsampling) copies one input value per output: free forward;
# backward, each input sums the gradients of the outputs that copied it (``_nearest``).
# Bilinear and bicubic interpolation have no formula (listed): see docs/kernels.md
NEAREST_OPS = {"upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
               "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
               "_upsample_nearest_exact3d"}
# a softmax along one dim (rows of C values): not element-wise, each output reads its row.
# _safe_softmax (scaled_dot_product_attention's) is softmax with fully masked rows set to 0,
# and its backward is softmax's (_softmax_backward_data)
SOFTMAX_OPS = {"_softmax": "softmax", "_safe_softmax": "softmax", "_log_softmax": "log_softmax"}
# an integer or boolean result is bookkeeping (a step counter, indices, a mask), not the
# model's arithmetic: counted as zero (batch norm's num_batches_tracked += 1 in training)
_INTEGER_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                   torch.uint16, torch.uint32, torch.uint64}
# data movement and bookkeeping: no arithmetic, counted as zero on purpose
FREE_OPS = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "clone",
    "contiguous", "detach", "alias", "cat", "stack", "flatten", "unsqueeze", "squeeze",
    "slice", "select", "split", "split_with_sizes", "chunk", "empty", "zeros", "ones",
    "zeros_like", "empty_like", "ones_like", "copy_", "_to_copy", "lift_fresh", "as_strided",
    "unbind", "narrow", "pad", "constant_pad_nd", "dropout", "native_dropout", "_reshape_alias",
    "new_empty", "new_zeros", "fill_", "zero_", "index_select", "repeat", "roll", "flip",
    # selection and masking (an attention mask: tril of ones, where between 0 and -inf)
    "tril", "triu", "where", "masked_fill", "masked_fill_", "scalar_tensor", "full",
    "full_like", "new_ones", "new_full", "new_empty_strided",  # fills, as zeros_like
    "arange",  # positions (a rotary table, a causal mask): made, not computed
}

# free forward, but their gradient is summed back to the input's shape: an expanded (or
# repeated) value's gradient adds its copies' (numel(out) - numel(in) adds), as a broadcast
# operand's does in ``add`` and ``mul``
SUMMED_BACK = {"expand", "repeat"}

# results that carry no gradient though made from a value that needs one: autograd's
# detach, and factories that read only their argument's shape and dtype (the noise of a
# dropout, empty_like(x).bernoulli_(q)). Their result is a constant to autograd: the op is
# no use of its argument, and what is computed from the result alone needs no gradient
NO_GRADIENT_OPS = {"detach", "empty_like", "zeros_like", "ones_like", "full_like",
                   "rand_like", "randn_like", "randint_like", "new_empty", "new_zeros",
                   "new_ones", "new_full", "new_empty_strided"}

# a table lookup (nn.Embedding): rows gathered by index, no arithmetic, so free as
# index_select is; its backward routes each row's gradient to its index (repeated indices
# add: data-dependent, not counted, as max-pooling's). max_norm's embedding_renorm_ does
# arithmetic and stays uncounted.
LOOKUP_OPS = {"embedding"}


MAX_POOL_OPS = {"max_pool1d", "max_pool2d", "max_pool2d_with_indices", "max_pool3d",
                "max_pool3d_with_indices"}
AVG_POOL_OPS = {"avg_pool1d", "avg_pool2d", "avg_pool3d"}
# adaptive pooling (1-D goes through 2-D; an output of 1 x 1 is a mean): output i of an
# axis of In values reads [floor(i In / Out), ceil((i + 1) In / Out)), windows that may
# differ in size and overlap where Out does not divide In (``_adaptive_taps``)
ADAPTIVE_POOL_OPS = {"_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool2d",
                     "adaptive_max_pool3d"}
NORM_OPS = {"native_batch_norm", "_native_batch_norm_legit_no_training",
            "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
            "native_layer_norm", "native_group_norm"}
ADD_OPS = {"add", "add_", "sub", "sub_", "rsub"}

# an aten op (its overload packet's name) -> its kind; both passes dispatch on the kind
OPS: dict[str, str] = {
    "convolution": "conv",
    "mm": "mm", "bmm": "mm",
    "addmm": "addmm", "baddbmm": "addmm",
    **dict.fromkeys(ACTIVATION_OPS, "activation"),
    **SOFTMAX_OPS,
    **dict.fromkeys(MAX_POOL_OPS, "max_pool"),
    **dict.fromkeys(AVG_POOL_OPS, "avg_pool"),
    **{op: "max_pool" if "max" in op else "avg_pool" for op in ADAPTIVE_POOL_OPS},
    "mean": "reduce", "sum": "reduce",
    **dict.fromkeys(COMPARE_OPS, "compare"),
    # x ** 2 (RMSNorm's, a squared error's): one product per value; another exponent has
    # no formula (forward_op_counts answers None: listed)
    "pow": "pow",
    **dict.fromkeys(NEAREST_OPS, "upsample_nearest"),
    # the index of a row's largest (smallest) value: C - 1 compares per row of C; indices
    # carry no gradient, so no backward is ever asked of it
    "argmax": "arg_reduce", "argmin": "arg_reduce",
    **dict.fromkeys(ADD_OPS, "add"),
    "mul": "mul", "mul_": "mul",
    "div": "div", "div_": "div",
    **dict.fromkeys(NORM_OPS, "norm"),
    **dict.fromkeys(FREE_OPS, "free"),
    **dict.fromkeys(LOOKUP_OPS, "free"),
}
# kinds whose backward pass has no formula (yet): counted forward, listed backward
NO_BACKWARD = {
    "div": "the quotient rule's two gradients",
    "norm": "the gradient through the batch, layer or group statistics",
}


# the counts of a free op: one shared instance (Counts is frozen), not a new one per op
_ZERO = Counts()


def forward_op_counts(name: str, args, out) -> Counts | None:
    """Counts of one aten op, or None when there is no formula for it."""
    base = name.split(".")[0]
    kind = OPS.get(base)
    if kind is None:
        return None
    if kind == "free":
        return _ZERO  # data movement and bookkeeping, zero on purpose
    if kind == "arg_reduce":  # an integer result, but compares made on its input
        return Counts(compares=_numel(args[0].shape) - _numel(out.shape))
    if kind == "compare":  # a boolean result: compares made in the operands' dtype
        made_in = torch.result_type(args[0], args[1])
        return Counts(compares=_numel(out.shape)) if made_in.is_floating_point else _ZERO
    if kind == "upsample_nearest":
        return _ZERO  # a copy of one input value per output
    if kind == "pow" and not _squared(args):
        return None  # an exponent other than 2: no formula
    if (out[0] if isinstance(out, (tuple, list)) else out).dtype in _INTEGER_DTYPES:
        return _ZERO  # integer bookkeeping (_INTEGER_DTYPES)
    if kind == "conv":
        return _conv(args, out)
    if kind == "mm":
        return _mm(args[0], args[1], out, bias=False)
    if kind == "addmm":
        return _mm(args[1], args[2], out, bias=True)
    if kind == "activation":
        return Counts(activations=_out_numel(args, out))
    if kind == "softmax":  # exp(x) / (its row's sum): n exps, sums of C, n divides
        n, rows = _softmax_rows(args)
        return Counts(activations=n, adds=n - rows, mults=n)
    if kind == "log_softmax":  # x - log(its row's sum of exp(x)): n exps, a log per row
        n, rows = _softmax_rows(args)
        return Counts(activations=n + rows, adds=n - rows + n)
    if base in ADAPTIVE_POOL_OPS:  # every output's window: taps - 1 adds or compares
        taps, _ = _adaptive_taps(args, out)
        n = _out_numel(args, out)
        return Counts(compares=taps - n) if kind == "max_pool" else Counts(adds=taps - n,
                                                                          mults=n)
    if kind == "max_pool":
        taps = _pool_window(base, args)
        return None if taps is None else Counts(compares=_out_numel(args, out) * (taps - 1))
    if kind == "avg_pool":
        taps = _pool_window(base, args)
        n = _out_numel(args, out)
        return None if taps is None else Counts(adds=n * (taps - 1), mults=n)
    if kind == "reduce":
        n_in, n_out = _numel(args[0].shape), _out_numel(args, out)
        return Counts(adds=n_in - n_out, mults=n_out if base == "mean" else 0)
    if kind == "add":
        return Counts(adds=_out_numel(args, out))
    if kind in ("mul", "div", "pow"):  # x ** 2 is x * x
        return Counts(mults=_out_numel(args, out))
    if kind == "norm":
        # one scale and one shift per value: the inference form, statistics folded in;
        # statistics computed from the input (see statistics) are listed as uncounted
        n = _out_numel(args, out)
        return Counts(mults=n, adds=n)
    raise AssertionError(f"OPS: kind {kind!r} (of {base}) has no forward rule")


def backward_op_counts(name: str, args, out, needs: list[bool]) -> list[tuple[str, Counts]] | None:
    """The backward pass of one aten op as (gradient, Counts) rows, given which positional
    arguments need a gradient; [] when it costs nothing, None when there is no formula."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected an aten op name (str), got {type(name).__name__}")
    if isinstance(needs, (str, bytes)) or not isinstance(needs, Sequence) or not all(
            isinstance(n, bool) for n in needs):
        raise TypeError(f"needs: expected a sequence of True/False, one per argument, got "
                        f"{needs!r}")
    base = name.split(".")[0]
    kind = OPS.get(base)
    if kind is None or kind in NO_BACKWARD:
        return None
    if kind == "conv":
        return _conv_backward(args, out, needs)
    if kind == "mm":
        return _mm_backward(args[0], args[1], needs[0], needs[1])
    if kind == "addmm":
        rows = _mm_backward(args[1], args[2], needs[1], needs[2])
        if needs[0]:  # the bias: summed over the rows it was broadcast to
            rows.append(("grad_bias", Counts(adds=_numel(out.shape) - _numel(args[0].shape))))
        return rows
    if kind == "activation":
        n = _out_numel(args, out)
        return [("grad_input", Counts(mults=n, activations=n))] if needs[0] else []
    if kind == "softmax":  # dx = y * (g - sum(g * y)): 2n mults, row sums and n subtractions
        n, rows = _softmax_rows(args)
        return [("grad_input", Counts(mults=2 * n, adds=n - rows + n))] if needs[0] else []
    if kind == "log_softmax":  # dx = g - exp(y) * sum(g): n exps, n mults, sums, n subs
        n, rows = _softmax_rows(args)
        return [("grad_input", Counts(activations=n, mults=n, adds=n - rows + n))
                ] if needs[0] else []
    if kind == "pow":  # d(x ** 2) = 2 x g: two products per value
        if not _squared(args):
            return None
        return [("grad_input", Counts(mults=2 * _out_numel(args, out)))] if needs[0] else []
    if kind == "upsample_nearest":
        return [("grad_input", _nearest_backward(base, args, out))] if needs[0] else []
    if base in ("masked_fill", "masked_fill_"):  # masked_fill(x, mask, value): x's gradient
        # is g with the masked values zeroed (free); a tensor value's is the sum of g over
        # the masked values, which autograd takes as where(mask, g, 0).sum(): numel(out) -
        # numel(value) adds, whatever the mask (a 0-d value: numel(out) - 1)
        return [("grad_value", Counts(adds=_numel(out.shape) - _numel(args[2].shape)))
                ] if len(needs) > 2 and needs[2] else []
    if kind == "free" and base in SUMMED_BACK:  # the copies' gradients summed to one
        return [("grad_input", Counts(adds=_numel(out.shape) - _numel(args[0].shape)))
                ] if needs[0] else []
    if base == "where":  # where(cond, a, b): each value's gradient routed to a or b; a
        # broadcast operand's summed back to its shape (a 0-d -inf: numel(out) - 1 adds)
        return [("grad_input", Counts(adds=_numel(out.shape) - _numel(args[i].shape)))
                for i in (1, 2) if i < len(needs) and needs[i]]
    if kind in ("max_pool", "free", "arg_reduce", "compare"):
        return []  # routing and data movement (module docstring); indices, masks: none
    if kind == "avg_pool" and base in ADAPTIVE_POOL_OPS:  # scaled once, spread: each input
        taps, n_in = _adaptive_taps(args, out)  # sums the windows covering it (all are)
        return [("grad_input", Counts(mults=_out_numel(args, out), adds=taps - n_in))
                ] if needs[0] else []
    if kind == "avg_pool":
        return _avg_pool_backward(base, args, out) if needs[0] else []
    if kind == "add":
        # the gradient passes through; a broadcast operand sums it back to its shape
        return [("grad_input", Counts(adds=_numel(out.shape) - _numel(args[i].shape)))
                for i in (0, 1) if i < len(needs) and needs[i]]
    if kind == "mul":
        return [("grad_input", Counts(mults=_numel(out.shape),
                                      adds=_numel(out.shape) - _numel(args[i].shape)))
                for i in (0, 1) if i < len(needs) and needs[i]]
    if kind == "reduce":
        if not needs[0]:
            return []
        return [("grad_input", Counts(mults=_numel(args[0].shape) if base == "mean" else 0))]
    raise AssertionError(f"OPS: kind {kind!r} (of {base}) has no backward rule and no "
                         "NO_BACKWARD entry")


# the normalisations that may compute statistics from their input (``statistics``)
STATISTICS_OPS = {"native_layer_norm", "native_group_norm", "native_batch_norm",
                  "_native_batch_norm_legit", "_native_batch_norm_legit_functional"}


def statistics(name: str, args) -> str | None:
    """The uncounted part of a normalisation that computes its statistics from the input
    (mean and variance: training-mode batch norm, instance, layer and group norm), as a
    key of ``ModelCounts.uncounted``; None for inference batch norm (running statistics),
    and for any op not in ``STATISTICS_OPS``."""
    base = name.split(".")[0]
    if base in ("native_layer_norm", "native_group_norm"):
        return f"{base} (statistics)"
    if base in ("native_batch_norm", "_native_batch_norm_legit",
                "_native_batch_norm_legit_functional"):
        training = next((a for a in args if isinstance(a, bool)), True)  # the one flag
        return f"{base} (batch statistics, training mode)" if training else None
    return None


# --- forward formulas ---------------------------------------------------------------------


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


def _softmax_rows(args) -> tuple[int, int]:
    """(values, rows) of a softmax of args[0] along dim args[1]: rows of C values each (a
    0-d value is one row of one)."""
    x = args[0]
    c = x.shape[args[1]] if x.dim() else 1
    n = _numel(x.shape)
    return n, (n // c if c else 0)


def _adaptive_taps(args, out) -> tuple[int, int]:
    """(the taps of all the windows of an adaptive pool, its input's numel): per axis of In
    values pooled to Out, the window sizes sum to S = sum_i ceil((i + 1) In / Out) -
    floor(i In / Out); the windows are separable, so the taps are planes * prod S."""
    x = args[0]
    o = out[0] if isinstance(out, (tuple, list)) else out
    rank = len(args[1])
    taps = _numel(x.shape[:-rank])
    for n_in, n_out in zip(x.shape[-rank:], o.shape[-rank:]):
        taps *= sum(-(-(i + 1) * n_in // n_out) - i * n_in // n_out for i in range(n_out))
    return taps, _numel(x.shape)


def _pool_rank(base: str) -> int:
    """1, 2 or 3: the spatial dimensions of a pooling op, by its name."""
    return 3 if "3d" in base else 1 if "1d" in base else 2


def _window(name: str, v, rank: int) -> tuple[int, ...]:
    """A pooling argument as aten passes it: an int, [k] or [k1, ..., k_rank]."""
    if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 1:
        v = v[0]
    return _tuple(name, v, rank)


def _pool_window(base: str, args) -> int | None:
    """Taps of a pooling window: k, [k] or [k1, ..., kn] for a 1-, 2- or 3-D pool; None
    when the kernel argument does not fit the pool's rank."""
    try:
        return _numel(_window("kernel_size", args[1], _pool_rank(base)))
    except TypeError:
        return None


def _squared(args) -> bool:
    """pow(x, 2): a Python (or 0-d) exponent of 2, not a tensor of exponents."""
    e = args[1] if len(args) > 1 else None
    return isinstance(args[0], torch.Tensor) and not isinstance(e, torch.Tensor) and (
        isinstance(e, (int, float)) and not isinstance(e, bool) and e == 2)


# --- backward formulas --------------------------------------------------------------------


def _nearest_reached(n_in: int, n_out: int, scale, exact: bool) -> int:
    """Input positions some output copies along one axis, as aten's nearest_idx and
    nearest_exact_idx (UpSample.h) pick them: output i reads min(floor(i * s), In - 1)
    (nearest-exact: floor((i + 0.5) * s)), s = 1 / scale where a scale factor was given,
    else In / Out, in float32; but nearest copies straight where Out = In, whatever the
    scale (its Out = 2 In shortcut, i // 2, reaches what the formula does)."""
    if n_out == n_in and not exact:
        return n_in
    s = np.float32(1.0 / scale) if scale is not None and scale > 0 else (
        np.float32(n_in) / np.float32(n_out))
    i = np.arange(n_out, dtype=np.float32) + np.float32(0.5 if exact else 0.0)
    return len(np.unique(np.minimum(np.floor(i * s).astype(np.int64), n_in - 1)))


def _nearest_backward(base: str, args, out) -> Counts:
    """Each input sums the gradients of the outputs that copied it: numel(out) less the
    input values reached (per plane, the product of each axis' reached positions)."""
    x = args[0]
    rank = x.dim() - 2
    scales = [a if isinstance(a, (int, float)) else None for a in args[2:2 + rank]]
    scales += [None] * (rank - len(scales))
    exact = "exact" in base
    reached = _numel(x.shape[:2])
    for d in range(rank):
        reached *= _nearest_reached(x.shape[2 + d], out.shape[2 + d], scales[d], exact)
    return Counts(adds=_numel(out.shape) - reached)



def _covered(size: int, out: int, k: int, stride: int, padding: int, dilation: int
             ) -> tuple[int, int]:
    """Along one spatial axis: (input positions some window touches, (output, tap) pairs
    that land inside the input rather than on its padding)."""
    hits = [o * stride - padding + t * dilation for o in range(out) for t in range(k)]
    inside = [i for i in hits if 0 <= i < size]
    return len(set(inside)), len(inside)


def _gathered(n_in: int, size: int, k: int, stride: int, padding: int, dilation: int
              ) -> tuple[int, int]:
    """A transposed convolution along one axis: (input positions at least one of whose
    taps lands inside the cropped output, taps that land inside)."""
    counts = [sum(1 for t in range(k) if 0 <= i * stride - padding + t * dilation < size)
              for i in range(n_in)]
    return sum(1 for c in counts if c), sum(counts)


def _avg_pool_backward(base: str, args, out) -> list[tuple[str, Counts]]:
    """Each output's gradient is scaled by 1/k once, then spread over its window: the taps
    that land inside the input are summed into the input values they reach (1-, 2- or 3-D)."""
    rank = _pool_rank(base)
    x = args[0]
    k = _window("kernel_size", args[1], rank)
    stride = _window("stride", args[2] if len(args) > 2 and args[2] else args[1], rank)
    pad = _window("padding", args[3] if len(args) > 3 else 0, rank)
    cov, ins = 1, 1
    for i in range(rank):
        c, n = _covered(x.shape[-rank + i], out.shape[-rank + i], k[i], stride[i], pad[i], 1)
        cov, ins = cov * c, ins * n
    planes = _numel(x.shape[:-rank])
    return [("grad_input", Counts(mults=_out_numel(args, out), adds=planes * (ins - cov)))]


def _conv_backward(args, out, needs) -> list[tuple[str, Counts]]:
    x, w = args[0], args[1]
    stride, padding, dilation = args[3], args[4], args[5]
    transposed = bool(args[6])  # w.shape[1] is C_in / groups (C_out / groups transposed)
    k = _numel(w.shape[2:])
    # transposed: the forward scatters every input value to C_out/g * k outputs (some land
    # on the border that padding crops); dJ/dx_j gathers back those that landed inside
    per_axis = _gathered if transposed else _covered
    macs = _numel((x if transposed else out).shape) * w.shape[1] * k
    cov, ins = 1, 1
    for i in range(x.dim() - 2):
        c, n = per_axis(x.shape[2 + i], out.shape[2 + i], w.shape[2 + i], stride[i],
                        padding[i], dilation[i])
        cov, ins = cov * c, ins * n
    covered = x.shape[0] * x.shape[1] * cov
    inside = x.shape[0] * (x if transposed else out).shape[1] * w.shape[1] * ins
    rows = []
    if needs[0]:
        rows.append(("grad_input", Counts(mults=macs, adds=inside - covered, macs=macs)))
    if needs[1]:
        rows.append(("grad_weight", Counts(mults=macs, adds=macs - _numel(w.shape), macs=macs)))
    if len(needs) > 2 and needs[2]:
        per_channel = _numel(out.shape) // out.shape[1]
        rows.append(("grad_bias", Counts(adds=out.shape[1] * (per_channel - 1))))
    return rows


def _mm_backward(a, b, needs_a: bool, needs_b: bool) -> list[tuple[str, Counts]]:
    """(..., M, K) @ (..., K, P): dA = G B^T, dB = A^T G, batched over leading dims."""
    m, k, p = a.shape[-2], a.shape[-1], b.shape[-1]
    nb = _numel(a.shape[:-2])
    rows = []
    if needs_a:
        rows.append(("grad_input", Counts(mults=nb * m * k * p, adds=nb * m * k * (p - 1),
                                          macs=nb * m * k * p)))
    if needs_b:
        rows.append(("grad_weight", Counts(mults=nb * m * k * p, adds=nb * k * p * (m - 1),
                                           macs=nb * m * k * p)))
    return rows
