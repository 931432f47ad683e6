"""The user's checks, written with handgrad's public API only."""

import torch
from softplus_layer import (
    SoftplusLinear,
    softplus_linear,
    softplus_linear_jvp,
    softplus_linear_vjp,
)

from handgrad.testing import check_jvp, check_vjp


def _args(dtype, device, generator):
    shapes = [(8, 5), (3, 5), (3,)]
    return tuple(torch.randn(s, generator=generator, dtype=torch.float64).to(device, dtype)
                 for s in shapes)


def test_vjp(dtype, device, generator):  # handgrad's fixtures: every dtype and device
    report = check_vjp(softplus_linear, softplus_linear_vjp, _args(dtype, device, generator))
    assert "torch_autograd" in report.references  # raised already if a gradient were wrong


def test_jvp(device, generator):
    check_jvp(softplus_linear, softplus_linear_jvp, _args(torch.float64, device, generator))


def test_the_autograd_function_backward(generator):
    # f runs the custom Function: handgrad checks its backward against central differences
    args = _args(torch.float64, "cpu", generator)
    report = check_vjp(SoftplusLinear.apply, softplus_linear_vjp, args)
    assert report.references == ("central differences",)
