"""A planted bug: the weight gradient with its sign flipped. This file
fails on purpose (CI runs it apart and checks the failure names args[1] (weight))."""

import torch
from softplus_layer import softplus_linear, softplus_linear_vjp

from handgrad.testing import check_vjp


def wrong_vjp(g, x, weight, bias):
    dx, dw, db = softplus_linear_vjp(g, x, weight, bias)
    return dx, -dw, db


def test_planted_wrong_weight_gradient():
    args = (torch.randn(8, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64),
            torch.randn(3, dtype=torch.float64))
    check_vjp(softplus_linear, wrong_vjp, args)
