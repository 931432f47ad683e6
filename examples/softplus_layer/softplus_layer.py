"""A user's own kernel, not one of handgrad's: a linear layer followed by softplus,
y = softplus(x W^T + b), with its forward- and reverse-mode derivatives written by hand.

softplus(z) = log(1 + e^z), softplus'(z) = sigmoid(z). With z = x W^T + b and
d = g * sigmoid(z) for an output cotangent g:

    dJ/dx = d W,    dJ/dW = d^T x,    dJ/db = sum over rows of d

and for tangents (tx, tW, tb):  dy = sigmoid(z) * (tx W^T + x tW^T + tb).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softplus_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.softplus(x @ weight.t() + bias)


def softplus_linear_vjp(g, x, weight, bias):
    d = g * torch.sigmoid(x @ weight.t() + bias)
    return d @ weight, d.t() @ x, d.sum(0)


def softplus_linear_jvp(tangents, x, weight, bias):
    tx, tw, tb = tangents
    return torch.sigmoid(x @ weight.t() + bias) * (tx @ weight.t() + x @ tw.t() + tb)


class SoftplusLinear(torch.autograd.Function):
    """The same kernel as an autograd.Function, for use inside a model."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return softplus_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        return softplus_linear_vjp(g, *ctx.saved_tensors)
