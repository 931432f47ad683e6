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

from handgrad.kernels.counting_ops import _covered, backward_op_counts
from handgrad.kernels.counts import Counts, _flag, _pair, _positive, conv2d_output_hw

__all__ = ["GRADS", "backward_op_counts", "conv2d_backward_counts", "linear_backward_counts"]

GRADS = ("grad_input", "grad_weight", "grad_bias")


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
