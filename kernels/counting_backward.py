"""Backward-pass counts by formula: the gradients autograd computes for each layer, and
only those that ``requires_grad`` asks for.

For a layer y = x W^T + b (or a convolution) the backward pass can compute three things:

- ``grad_input`` dJ/dx, needed when x depends on a parameter that requires grad (never
  for the network's input, so never for the first layer);
- ``grad_weight`` dJ/dW, needed when W.requires_grad;
- ``grad_bias`` dJ/db, needed when b.requires_grad.

Conventions, as the forward counts (kernels.counting): every product is a multiply (and
a MAC), a sum of n terms costs n - 1 adds. A convolution's grad_input and grad_weight each
make exactly the products of its forward pass (each forward product x_j W_k appears once
in dJ/dx_j and once in dJ/dW_k): ``macs`` = forward MACs each, so FlopCounterMode's
backward FLOPs are 2 x the MACs counted here. Element-wise nonlinearities cost one
derivative evaluation (``activations``) and one product per element; max-pooling routes
each gradient to its argmax (no arithmetic; where windows overlap, two outputs may pick one
input and their gradients add: data-dependent, not counted); concatenation, views and
other data movement are free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from handgrad.kernels.counting import Counts, _flag, _pair, _positive, conv2d_output_hw

GRADS = ("grad_input", "grad_weight", "grad_bias")


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


def _wants(input_grad: bool, weight_grad: bool, bias_grad: bool) -> dict[str, bool]:
    for name, v in (("input_grad", input_grad), ("weight_grad", weight_grad),
                    ("bias_grad", bias_grad)):
        if not isinstance(v, bool):
            raise TypeError(f"{name}: expected True or False, got {v!r}")
    return {"grad_input": input_grad, "grad_weight": weight_grad, "grad_bias": bias_grad}


def conv2d_backward_counts(c_in: int, c_out: int, kernel_size, in_hw, *, stride=1, padding=0,
                           dilation=1, groups: int = 1, bias: bool = True,
                           input_grad: bool = True, weight_grad: bool = True,
                           bias_grad: bool | None = None, batch: int = 1) -> dict[str, Counts]:
    """{"grad_input", "grad_weight", "grad_bias"} -> Counts of one convolution's backward
    pass on an (H_in, W_in) input; a gradient not asked for (or a bias that is absent)
    counts zero. ``bias_grad`` defaults to ``bias``.

    grad_input: mults = forward MACs (as FlopCounterMode: the products with padding zeros
    are made and dropped); adds = the products that land inside the input, less one per
    input value that gets any. grad_weight: mults = forward MACs; adds = mults - weight
    values (each sums N H_out W_out products). grad_bias: C_out (N H_out W_out - 1) adds.
    """
    c_in, c_out, groups, batch = _positive(c_in=c_in, c_out=c_out, groups=groups, batch=batch)
    _flag(bias=bias)
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups: {groups} must divide c_in={c_in} and c_out={c_out}")
    want = _wants(input_grad, weight_grad, bias if bias_grad is None else bias_grad)
    if want["grad_bias"] and not bias:
        raise ValueError("bias_grad: True asks for the gradient of a bias the layer lacks "
                         "(bias=False)")
    kh, kw = _pair("kernel_size", kernel_size)
    h, w = _pair("in_hw", in_hw)
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    dh, dw = _pair("dilation", dilation)
    ho, wo = conv2d_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    fan_in = kh * kw * (c_in // groups)
    macs = batch * ho * wo * c_out * fan_in
    (cov_h, in_h), (cov_w, in_w) = _covered(h, ho, kh, sh, ph, dh), _covered(w, wo, kw, sw, pw, dw)
    inside = batch * c_out * (c_in // groups) * in_h * in_w
    out = {g: Counts() for g in GRADS}
    if want["grad_input"]:
        out["grad_input"] = Counts(mults=macs, adds=inside - batch * c_in * cov_h * cov_w,
                                   macs=macs)
    if want["grad_weight"]:
        out["grad_weight"] = Counts(mults=macs, adds=macs - fan_in * c_out, macs=macs)
    if want["grad_bias"]:
        out["grad_bias"] = Counts(adds=c_out * (batch * ho * wo - 1))
    return out


def linear_backward_counts(in_features: int, out_features: int, *, bias: bool = True,
                           input_grad: bool = True, weight_grad: bool = True,
                           bias_grad: bool | None = None, batch: int = 1) -> dict[str, Counts]:
    """{"grad_input", "grad_weight", "grad_bias"} -> Counts of a fully-connected layer's
    backward pass for ``batch`` rows: grad_input = G W (batch*in sums of ``out`` products),
    grad_weight = G^T X (in*out sums of ``batch`` products), grad_bias = column sums of G."""
    in_features, out_features, batch = _positive(in_features=in_features,
                                                 out_features=out_features, batch=batch)
    _flag(bias=bias)
    want = _wants(input_grad, weight_grad, bias if bias_grad is None else bias_grad)
    if want["grad_bias"] and not bias:
        raise ValueError("bias_grad: True asks for the gradient of a bias the layer lacks "
                         "(bias=False)")
    macs = batch * in_features * out_features
    out = {g: Counts() for g in GRADS}
    if want["grad_input"]:
        out["grad_input"] = Counts(mults=macs, adds=batch * in_features * (out_features - 1),
                                   macs=macs)
    if want["grad_weight"]:
        out["grad_weight"] = Counts(mults=macs, adds=in_features * out_features * (batch - 1),
                                    macs=macs)
    if want["grad_bias"]:
        out["grad_bias"] = Counts(adds=out_features * (batch - 1))
    return out


# --- aten ops, as count_model(backward=True) meets them ------------------------------------

def _numel(shape) -> int:
    return math.prod(shape)


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


def backward_op_counts(name: str, args, out, needs: list[bool]) -> list[tuple[str, Counts]] | None:
    """The backward pass of one aten op as (gradient, Counts) rows, given which positional
    arguments need a gradient; [] when it costs nothing, None when there is no formula."""
    from handgrad.kernels.counting import _ACTIVATION_OPS, _FREE_OPS, _out_numel

    if not isinstance(name, str):
        raise TypeError(f"name: expected an aten op name (str), got {type(name).__name__}")
    if isinstance(needs, (str, bytes)) or not isinstance(needs, Sequence) or not all(
            isinstance(n, bool) for n in needs):
        raise TypeError(f"needs: expected a sequence of True/False, one per argument, got "
                        f"{needs!r}")
    base = name.split(".")[0]
    if base == "convolution":
        return _conv_backward(args, out, needs)
    if base in ("mm", "bmm"):
        return _mm_backward(args[0], args[1], needs[0], needs[1])
    if base in ("addmm", "baddbmm"):
        rows = _mm_backward(args[1], args[2], needs[1], needs[2])
        if needs[0]:  # the bias: summed over the rows it was broadcast to
            rows.append(("grad_bias", Counts(adds=_numel(out.shape) - _numel(args[0].shape))))
        return rows
    if base in _ACTIVATION_OPS:
        n = _out_numel(args, out)
        return [("grad_input", Counts(mults=n, activations=n))] if needs[0] else []
    if base in ("max_pool2d_with_indices", "max_pool2d", "max_pool1d",
                "max_pool3d_with_indices", *_FREE_OPS):
        return []  # routing and data movement (module docstring)
    if base == "avg_pool2d":
        if not needs[0]:
            return []
        # each output's gradient is scaled by 1/k^2 once, then spread over its window: the
        # taps that land inside the input are summed into the input values they reach
        x = args[0]
        k = _pair("kernel_size", args[1])
        stride = _pair("stride", args[2] if len(args) > 2 and args[2] else args[1])
        pad = _pair("padding", args[3] if len(args) > 3 else 0)
        cov, ins = 1, 1
        for i in range(2):
            c, n = _covered(x.shape[-2 + i], out.shape[-2 + i], k[i], stride[i], pad[i], 1)
            cov, ins = cov * c, ins * n
        planes = _numel(x.shape[:-2])
        return [("grad_input", Counts(mults=_out_numel(args, out),
                                      adds=planes * (ins - cov)))]
    if base in ("add", "add_", "sub", "sub_", "rsub"):
        # the gradient passes through; a broadcast operand sums it back to its shape
        rows = []
        for i in (0, 1):
            a = args[i] if i < len(args) else None
            if needs[i] if i < len(needs) else False:
                rows.append(("grad_input", Counts(adds=_numel(out.shape) - _numel(a.shape))))
        return rows
    if base in ("mul", "mul_"):
        rows = []
        for i in (0, 1):
            if i < len(needs) and needs[i]:
                a = args[i]
                rows.append(("grad_input", Counts(mults=_numel(out.shape),
                                                  adds=_numel(out.shape) - _numel(a.shape))))
        return rows
    if base in ("sum", "mean"):
        if not needs[0]:
            return []
        return [("grad_input", Counts(mults=_numel(args[0].shape) if base == "mean" else 0))]
    return None
