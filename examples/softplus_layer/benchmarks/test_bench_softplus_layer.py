"""The user's benchmarks: the hand-written backward timed beside torch.autograd's, with
handgrad's ``measure`` fixture (pytest-benchmark and handgrad's plugin, both installed).

    pytest benchmarks --benchmark-json out/bench.json
    python -m handgrad.reports render out/bench.json --out out/report
    python -m handgrad.reports gate --baseline main.json --current out/bench.json
"""

import pytest
import torch
from softplus_layer import softplus_linear, softplus_linear_vjp

WIDTH_IN, WIDTH_OUT = 64, 32


@pytest.mark.parametrize("batch", [64, 256, 1024])
@pytest.mark.parametrize("method", ["hand_vjp", "torch_autograd"])
def test_softplus_linear_backward(measure, device, batch, method):
    g = torch.Generator().manual_seed(batch)
    x, weight, bias, cotangent = (
        torch.randn(s, generator=g).to(device)
        for s in ((batch, WIDTH_IN), (WIDTH_OUT, WIDTH_IN), (WIDTH_OUT,), (batch, WIDTH_OUT)))

    def autograd():
        leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
        return torch.autograd.grad(softplus_linear(*leaves), leaves, cotangent)

    calls = {"hand_vjp": lambda: softplus_linear_vjp(cotangent, x, weight, bias),
             "torch_autograd": autograd}
    is_reference = method == "torch_autograd"
    measure(
        calls[method],
        reference_fn=None if is_reference else autograd,  # interleaved, round by round
        group=f"softplus_linear backward batch={batch} {device}",
        kernel="softplus_linear", method=method, reference="torch_autograd",
        role="reference" if is_reference else "kernel",
        # forward z = x W^T + b and the three products of the backward: 2 FLOPs a multiply-add
        flops=4 * 2 * batch * WIDTH_IN * WIDTH_OUT,
        device=device, dtype=torch.float32,
        shape={"batch": batch, "width_in": WIDTH_IN, "width_out": WIDTH_OUT},
    )
