"""Directional checks at the benchmarks' GPU sizes: <u, J v> by one pair of central
differences per direction, against the kernels' J v (forward mode) and u^T J (reverse
mode, backprop). A full finite-difference check costs 2 * numel evaluations (millions
here); these cost two per direction.

On a GPU (``--device cuda``) the sizes are the gpu benchmark grid's largest
(bench/test_backprop.py, bench/test_jacobian.py); on the CPU a reduced size that runs in
a few seconds on 2 cores. Everything is float64: the check is only as good as its
central difference, so it is Richardson-extrapolated (two pairs, at h and h/2): v moves
every one of ~10^8 parameters at once, and one pair's truncation error alone was 1e-6 to
2.6e-6 of <u, J v> at L=10 K=4096 N=16384 on an H200 (the tolerance is 1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from handgrad.kernels import backprop as bp
from handgrad.kernels import finite_diff, mlp
from handgrad.kernels import jacobian as jm
from handgrad.testing.compare import assert_close, unrecorded
from handgrad.testing.references import as_list, course_weights, deep_net, torch_loss
from handgrad.testing.tolerances import tol_for

FD_TOL = tol_for(torch.float64, "finite_diff")
DIRECTIONS = 2


@dataclass(frozen=True)
class Size:
    L: int
    K: int
    N: int


# backprop (D=13, P=1 as in the benchmarks): the gpu grid's largest are L=10 K=4096
# N=16384 and L=3 K=8192 N=16384 (~11 GB of float64 activations at most)
BACKPROP = {
    "cpu": [Size(5, 512, 1024)],
    "cuda": [Size(10, 4096, 16384), Size(3, 8192, 16384)],
}
# Jacobians (D=2, P=10): the gpu grid's largest are L=10 K=4096 N=8192 and L=3 K=1024
# N=65536 (reverse mode's adjoint: P*N*K = 5.4 GB of float64)
JACOBIAN = {
    "cpu": [Size(3, 512, 512)],
    "cuda": [Size(10, 4096, 8192), Size(3, 1024, 65536)],
}


def sizes(table: dict[str, list[Size]]) -> list:
    """(device, size) pairs; the device marks and skips come from the ``device`` fixture,
    so each size is parametrized by index and looked up for the device in the test."""
    return list(range(max(len(v) for v in table.values())))


def size_for(table: dict[str, list[Size]], device: str, i: int) -> Size:
    options = table[device]
    if i >= len(options):
        pytest.skip(f"size #{i} is checked on the GPU only ({device} checks "
                    f"{len(options)} size(s))")
    return options[i]


def compare(d: finite_diff.Direction, mode: str, *, kernel: str, what: str) -> None:
    """<u, J v> of the kernel's mode against the central difference's, both divided by
    the size of the central difference's terms (sum |u * J v|): a relative check that a
    sum of terms of both signs cannot make look bad by cancelling."""
    got = d.forward if mode == "forward" else d.reverse
    assert_close(torch.tensor(got / d.scale, dtype=torch.float64),
                 torch.tensor(d.fd / d.scale, dtype=torch.float64), kernel=kernel,
                 reference="finite_diff.directional_check", what=f"{mode} {what}", tol=FD_TOL)


def backprop_problem(size: Size, device: str, generator: torch.Generator):
    net = mlp.init_mlp([13] + [size.K] * (size.L - 1) + [1], "tanh", generator=generator,
                       dtype=torch.float64, device=device)
    x = torch.randn(size.N, 13, generator=generator, dtype=torch.float64).to(device)
    y = torch.randn(size.N, 1, generator=generator, dtype=torch.float64).to(device)
    return net, x, y


def backprop_directions(net, x, y, grads: bp.Gradients, generator) -> list:
    n = net.depth

    def loss(params):  # the reference loss, written with plain torch ops
        return torch_loss(params[:n], params[n:2 * n], params[-1], y, activation=net.activation,
                          loss="squared")

    flat = [*grads.weights, *grads.biases, grads.input]
    return finite_diff.directional_check(
        loss, [*net.weights, *net.biases, x], vjp=lambda u: [u * g for g in flat],
        directions=DIRECTIONS, generator=generator, richardson=True)


@pytest.mark.parametrize("i", sizes(BACKPROP))
def test_backprop_directional_at_gpu_sizes(i: int, device: str, generator) -> None:
    size = size_for(BACKPROP, device, i)
    net, x, y = backprop_problem(size, device, generator)
    grads = bp.backprop(net, x, y, loss="squared")
    for k, d in enumerate(backprop_directions(net, x, y, grads, generator)):
        compare(d, "reverse", kernel="backprop", what=f"L={size.L} K={size.K} N={size.N} #{k}")


def test_backprop_directional_check_catches_one_wrong_layer(generator) -> None:
    net, x, y = backprop_problem(Size(3, 64, 128), "cpu", generator)
    grads = bp.backprop(net, x, y, loss="squared")
    # one bias gradient with its sign flipped: a few hundred of ~4,000 numbers wrong
    bad = bp.Gradients(grads.loss, grads.weights,
                       (grads.biases[0], -grads.biases[1], grads.biases[2]), grads.input)
    for d in backprop_directions(net, x, y, bad, generator):
        with unrecorded(), pytest.raises(AssertionError,
                                         match="backprop vs finite_diff.directional_check"):
            compare(d, "reverse", kernel="backprop", what="planted sign flip in db2")


def jacobian_problem(size: Size, device: str, generator: torch.Generator):
    ws, _ = course_weights(size.L, D=2, K=size.K, P=10, seed=size.K + size.L, device=device)
    x = torch.randn(size.N, 2, generator=generator, dtype=torch.float64).to(device)
    return ws, x


def jacobian_directions(ws, x, J: torch.Tensor, generator) -> list:
    f = deep_net(as_list(ws))  # row-wise: (N, D) -> (N, P), plain torch ops
    return finite_diff.directional_check(
        f, x, jvp=lambda v: torch.einsum("npd,nd->np", J, v),
        vjp=lambda u: torch.einsum("np,npd->nd", u, J), directions=DIRECTIONS,
        generator=generator, richardson=True)


@pytest.mark.parametrize("kernel", ["jacobian_forward", "jacobian_reverse"])
@pytest.mark.parametrize("i", sizes(JACOBIAN))
def test_jacobian_directional_at_gpu_sizes(kernel: str, i: int, device: str, generator) -> None:
    size = size_for(JACOBIAN, device, i)
    ws, x = jacobian_problem(size, device, generator)
    J = getattr(jm, kernel)(ws, x)
    what = f"L={size.L} K={size.K} N={size.N}"
    for k, d in enumerate(jacobian_directions(ws, x, J, generator)):
        # J v, sample by sample and output by output, against the central difference
        assert_close(d.jv, d.jv_fd, kernel=kernel, reference="finite_diff.directional_check",
                     what=f"J v {what} #{k}", tol=FD_TOL)
        compare(d, "forward", kernel=kernel, what=f"{what} #{k}")
        compare(d, "reverse", kernel=kernel, what=f"{what} #{k}")


def test_jacobian_directional_check_catches_swapped_columns(generator) -> None:
    ws, x = jacobian_problem(Size(3, 32, 16), "cpu", generator)
    J = jm.jacobian_forward(ws, x).flip(-1)  # d/dx1 and d/dx2 swapped: a transpose-like bug
    for d in jacobian_directions(ws, x, J, generator):
        for mode in ("forward", "reverse"):
            with unrecorded(), pytest.raises(AssertionError, match="tensors are not close"):
                compare(d, mode, kernel="jacobian_forward", what="planted column swap")
