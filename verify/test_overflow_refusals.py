"""Finite arguments whose result passes the dtype's range: an ``OverflowError`` that says so,
never an inf or NaN returned as a result (the forward passes, the hand-built networks), and
the last bad inputs of the sweep of 2026-12-06 refused by name (a construction's complex or
meta values, a network with no units, softmax cross-entropy of no classes)."""

from __future__ import annotations

import pytest
import torch

from handgrad.kernels import constructions as cs
from handgrad.kernels import mlp


def _huge_net() -> mlp.MLP:
    return mlp.MLP([torch.full((2, 3), 1e20)], activation="identity")


def test_forward_whose_output_overflows_is_an_overflow_error():
    x = torch.full((2, 3), 1e20)  # 3 x 1e20 x 1e20 = 3e40 > float32's 3.4e38
    with pytest.raises(OverflowError, match=r"forward: the output overflows "
                       r"torch\.float32's range \(largest 3\.4e\+38\) though x, the weights "
                       r"and the biases are finite"):
        mlp.forward(_huge_net(), x)
    # in float64 the same values are a result
    net64 = mlp.MLP([torch.full((2, 3), 1e20, dtype=torch.float64)], activation="identity")
    out = mlp.forward(net64, x.double())  # x: float32's nearest to 1e20, widened
    assert torch.allclose(out, torch.full((2, 2), 3e40, dtype=torch.float64), rtol=1e-6)


def test_forward_cache_names_the_layer_whose_pre_activation_overflows():
    # layer 1 overflows (3e40), saturates tanh; layer 2's input is finite again
    net = mlp.MLP([torch.full((2, 3), 1e20), torch.ones(1, 2)], activation="tanh")
    x = torch.full((1, 3), 1e20)
    with pytest.raises(OverflowError, match=r"forward_cache: z_1 \(layer 1's "
                       r"pre-activation\) overflows"):
        mlp.forward_cache(net, x)
    # forward's output is right: tanh of the true 3e40 rounds to 1, so 1 + 1
    assert mlp.forward(net, x).item() == 2.0


def test_a_network_whose_values_pass_the_range_is_an_overflow_error():
    with pytest.raises(OverflowError, match=r"Network: output \(0, 0\) is nan in "
                       r"torch\.float32 though x and the parameters are finite"):
        cs.tent()(torch.tensor([2e38]))
    with pytest.raises(OverflowError, match=r"is -inf in torch\.float32"):
        cs.xnor()(torch.tensor([[3e38, -3e38]]))
    assert cs.tent()(torch.tensor([2e38], dtype=torch.float64)).item() == 0.0


def test_a_network_refuses_a_nan_or_inf_x_by_name():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^x: expected finite values, got 1 NaN or inf"):
            cs.tent()(torch.tensor([0.5, bad]))


def test_a_network_layer_with_no_units_is_refused_when_made():
    with pytest.raises(ValueError, match=r"^weights\[0\]: expected at least one input and "
                       r"one output unit, got shape \(2, 0\)"):
        cs.Network([torch.ones(2, 0)], [torch.ones(2)], ["relu"])
    with pytest.raises(ValueError, match=r"^weights\[1\]: expected at least one input and "
                       r"one output unit, got shape \(0, 2\)"):
        cs.Network([torch.ones(2, 1), torch.ones(0, 2)], [torch.ones(2), torch.ones(0)],
                   ["relu", "identity"])


POINTS = torch.tensor([[0.0], [1.0]], dtype=torch.float64)


def test_a_construction_of_complex_values_is_refused_not_cut_to_its_real_part():
    with pytest.raises(TypeError, match=r"^target\(points\): expected real values, got dtype "
                       r"torch\.complex128"):
        cs.check_construction(lambda x: x[:, 0], lambda x: x[:, 0].to(torch.complex128) + 5j,
                              POINTS)
    with pytest.raises(TypeError, match=r"^net\(points\): expected real values"):
        cs.check_construction(lambda x: x[:, 0] * 1j, lambda x: x[:, 0], POINTS)


def test_a_construction_on_the_meta_device_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^target\(points\): expected values, got a tensor "
                       r"on the meta device"):
        cs.check_construction(lambda x: x[:, 0], lambda x: x[:, 0].to("meta"), POINTS)


def test_cross_entropy_of_no_classes_names_the_logits():
    with pytest.raises(ValueError, match=r"^logits: expected at least one class \(C >= 1\), "
                       r"got shape \(0, 0\)"):
        mlp.cross_entropy(torch.ones(0, 0), torch.zeros(0, dtype=torch.long))


def test_a_minimizer_past_the_range_is_an_overflow_error():
    from handgrad.kernels import least_squares as ls

    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 3, dtype=torch.float64, generator=g)
    y = torch.randn(5, dtype=torch.float64, generator=g)
    w = ls.minimizer(X, y)
    # w* scales as y / X: 1e300 / 1e-10 is past float64's range
    with pytest.raises(OverflowError, match=r"^minimizer: w\* overflows torch\.float64's "
                       r"range \(largest 1\.8e\+308\) though X and y are finite .*scale y down "
                       r"\(w\* scales with y\)$"):
        ls.minimizer(X * 1e-10, y * 1e300)
    with pytest.raises(OverflowError, match=r"torch\.float32's range .*, or compute in "
                       r"float64$"):
        ls.minimizer(X.float() * 1e-30, y.float() * 1e30)
    # within the range, the scaled problem's answer: w* (c X, c y) = w* (X, y)
    assert torch.allclose(ls.minimizer(X * 1e200, y * 1e200), w, rtol=1e-12)


def test_init_mlp_refuses_sizes_past_the_memory_by_name(monkeypatch):
    with pytest.raises(ValueError, match=r"^sizes: \[1000000000000, 2\] make "
                       r"2,000,000,000,002 parameters, 24 TB in torch\.float32 with the draw, "
                       r"more than the .* of cpu memory this machine has; expected narrower "
                       r"layers$"):
        mlp.init_mlp([10**12, 2])
    # past the floor the device's memory decides; where it is not known, int64's range
    monkeypatch.setattr(mlp, "_ALLOC_FLOOR", 0)
    monkeypatch.setattr(mlp, "_device_memory", lambda device: 1000)
    assert mlp.init_mlp([3, 4, 2]).sizes == [3, 4, 2]  # 26 x 4 + 12 x 8 = 200 bytes
    with pytest.raises(ValueError, match=r"^sizes: \[16, 16\] make 272 parameters, 3\.14 KB "
                       r"in torch\.float32 with the draw, more than the 1 KB of cpu memory"):
        mlp.init_mlp([16, 16])  # 272 x 4 + 256 x 8 (the weights' float64 draw) = 3136 bytes
    monkeypatch.setattr(mlp, "_device_memory", lambda device: None)
    with pytest.raises(ValueError, match=r"more than what torch can index"):
        mlp.init_mlp([2**40, 2**30])


def test_init_mlp_refuses_a_scale_past_the_dtype_by_name():
    with pytest.raises(ValueError, match=r"^init: d = 1e\+200 draws values past "
                       r"torch\.float32's range \(largest 3\.4e\+38\); expected d <= 3\.4e\+38$"):
        mlp.init_mlp([3, 2], init=1e200)
    net = mlp.init_mlp([3, 2], init=1e200, dtype=torch.float64)  # within float64's
    assert bool(torch.isfinite(net.weights[0]).all())


def test_a_step_sweep_of_no_numbers_is_refused_by_name():
    from handgrad.kernels.finite_diff import StepSweep

    for bad in (None, "abc", (1e-3, None), (True,)):
        with pytest.raises(TypeError, match=r"^eps: expected a sequence of real numbers, one "
                           r"per step"):
            StepSweep(eps=bad, error=(0.1,) * (len(bad) if isinstance(bad, tuple) else 1))
    with pytest.raises(TypeError, match=r"^error: expected a sequence of real numbers"):
        StepSweep(eps=(1e-3,), error=None)
    assert StepSweep(eps=(1e-3, 1e-4), error=(0.1, 0.01)).best_eps == 1e-4


def test_x_with_no_room_for_the_default_step_is_named():
    from handgrad.kernels import finite_diff as FD

    x = torch.tensor([3.4e38])
    for call in (lambda: FD.jacobian(lambda t: t * 0.5, x),
                 lambda: FD.directional_derivative(lambda t: t * 0.5, x, torch.ones(1))):
        with pytest.raises(ValueError, match=r"^x: max \|x\| = 3\.4e\+38 leaves no room for a "
                           r"step: x \+ eps \* max\(1, \|x\|\) overflows torch\.float32 at the "
                           r"default eps = "):
            call()
    # a given eps is named as before
    with pytest.raises(ValueError, match=r"^eps: x \+ eps \* max\(1, \|x\|\) overflows"):
        FD.jacobian(lambda t: t * 0.5, x, eps=1e-2)
    assert FD.jacobian(lambda t: t * 0.5, torch.tensor([3.0e38])).item() == pytest.approx(0.5)


def test_a_complex_k_is_refused_by_name():
    from handgrad.kernels import least_squares as ls

    X, y = torch.eye(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^k: expected an int or a 1-D integer tensor, got "
                       r"torch\.complex64"):
        ls.gd_iterates(X, y, torch.zeros(3, dtype=torch.float64), 0.1, torch.tensor(3 + 0j))


def test_the_jacobians_name_meta_weights_and_biases_by_their_own_names():
    from handgrad.kernels import jacobian as jm

    W = [torch.randn(4, 3), torch.randn(2, 4)]
    x = torch.randn(3)
    for kernel in (jm.jacobian_forward, jm.jacobian_reverse):
        with pytest.raises(ValueError, match=r"^weights\[W1\]: on the meta device, a shape "
                           r"without values; expected values on x's device \(cpu\)$"):
            kernel([w.to("meta") for w in W], x)
        with pytest.raises(ValueError, match=r"^biases\[bF\]: shape \(3,\) does not fit WF of "
                           r"shape \(2, 4\); expected \(2,\)$"):
            kernel(W, x, biases=[torch.zeros(4), torch.zeros(3)])
        with pytest.raises(TypeError, match=r"^biases\[b1\]: expected a torch\.Tensor"):
            kernel(W, x, biases=["a", torch.zeros(2)])
