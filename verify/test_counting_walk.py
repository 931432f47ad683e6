"""count_model's walk: parameters reached inside a list argument, buffers the state dict
leaves out, and the errors of models it cannot walk (a forward reading tensor values, a
forward taking several inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from handgrad.kernels import counting as C


class PList(nn.Module):  # every parameter reaches torch.stack inside a list; ws never runs
    def __init__(self):
        super().__init__()
        self.ws = nn.ParameterList([nn.Parameter(torch.randn(8)) for _ in range(3)])

    def forward(self, x):
        return x @ torch.stack(list(self.ws), 1)


def test_parameters_passed_in_a_list_are_reached():
    counts = C.count_model(PList(), (2, 8), backward=True)
    assert counts.unreached_params == {}
    assert counts.total.params == 3 * 8
    # forward: 2 x 3 outputs of 8 products; backward: dW = x^T G, 8 x 3 of 2 products
    assert counts.forward.macs == 2 * 3 * 8 and counts.backward.macs == 8 * 3 * 2


class NonPersistent(nn.Module):  # a mask registered with persistent=False
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("mask", torch.ones(8), persistent=False)

    def forward(self, x):
        return self.fc(x) * self.mask


class NonPersistentConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 1, 3)
        self.register_buffer("m", torch.ones(1), persistent=False)

    def forward(self, x):
        return self.c(x) * self.m


def test_a_non_persistent_buffer_is_walked_on_meta():
    counts = C.count_model(NonPersistent(), (2, 8))
    # 2 x 8 outputs of 8 products and 8 adds (bias), then 2 x 8 products by the mask
    assert counts.total.mults == 2 * 8 * 8 + 2 * 8 and counts.total.adds == 2 * 8 * 8
    assert C.receptive_field(NonPersistentConv(), (1, 1, 8, 8)) is not None


class ReadsValue(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.fc, self.how = nn.Linear(4, 4), how

    def forward(self, x):
        y = self.fc(x)
        if self.how == "if":
            return y if y.sum() > 0 else -y
        if self.how == "item":
            return y * y.max().item()
        return y[y.nonzero(as_tuple=True)]


@pytest.mark.parametrize("how", ["if", "item", "nonzero"])
def test_a_forward_reading_tensor_values_is_told_so(how):
    with pytest.raises(ValueError) as err:
        C.count_model(ReadsValue(how), (2, 4))
    assert "a forward that reads tensor values cannot be walked on meta tensors" in str(
        err.value)
    assert "does not fit" not in str(err.value)


@pytest.mark.parametrize("module,shape", [(nn.MultiheadAttention(8, 2, batch_first=True),
                                           (1, 3, 8)), (nn.Bilinear(3, 4, 5), (2, 3))],
                         ids=["attention", "bilinear"])
def test_a_forward_taking_several_inputs_is_told_to_wrap_it(module, shape):
    with pytest.raises(TypeError) as err:
        C.count_model(module, shape)
    assert f"one meta tensor of input_shape {shape}" in str(err.value)
    assert "wrap a module taking several inputs" in str(err.value)


def test_a_type_error_of_another_kind_is_torchs_own():
    class Bad(nn.Module):
        def forward(self, x):
            return x + "a"

    with pytest.raises(TypeError) as err:
        C.count_model(Bad(), (2, 3))
    assert "input_shape" not in str(err.value)


def test_input_requires_grad_needs_backward():
    with pytest.raises(ValueError, match="input_requires_grad=True .* needs backward=True"):
        C.count_model(nn.Linear(3, 2), (2, 3), input_requires_grad=True)
    both = C.count_model(nn.Linear(3, 2), (2, 3), backward=True, input_requires_grad=True)
    assert both.backward.macs == 2 * 2 * 3 * 2  # dW and dx, 12 products each


class MakesTensors(nn.Module):
    """A forward that makes a tensor: on its input's device (positions, a causal mask, as
    models do), without a device (the CPU's), with device='cpu' given, or held as a plain
    attribute (not a buffer)."""

    def __init__(self, how):
        super().__init__()
        self.fc, self.how = nn.Linear(8, 8), how
        self.plain = torch.ones(8)

    def forward(self, x):
        y = self.fc(x)
        if self.how == "on_x":
            return (y * torch.arange(8, dtype=y.dtype, device=x.device)
                    + torch.ones(8, dtype=y.dtype, device=x.device))
        if self.how == "factory":
            return y * torch.arange(8, dtype=y.dtype)
        if self.how == "explicit":
            return y * torch.arange(8, dtype=y.dtype, device="cpu")
        return y * self.plain


def test_a_tensor_the_forward_makes_on_its_inputs_device_is_walked():
    counts = C.count_model(MakesTensors("on_x"), (2, 8))
    # 2 x 8 outputs of 8 products and 8 adds (bias), then a product and an add each
    assert counts.total.mults == 2 * 8 * 8 + 2 * 8
    assert counts.total.adds == 2 * 8 * 8 + 2 * 8
    assert counts.uncounted == {}  # arange and ones are fills, free


class MakesTensorsConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        y = self.c(x)
        return y * torch.ones(y.shape[-1], dtype=y.dtype, device=y.device)


def test_the_receptive_field_walks_a_forward_making_a_tensor():
    assert C.receptive_field(MakesTensorsConv(), (1, 1, 8, 8)) is not None


@pytest.mark.parametrize("how", ["factory", "explicit", "plain"])
def test_a_tensor_on_another_device_is_told_so_not_blamed_on_the_shape(how):
    with pytest.raises(ValueError) as err:
        C.count_model(MakesTensors(how), (2, 8))
    msg = str(err.value)
    assert "mixes a tensor on another device with the walk's meta tensors" in msg
    assert "register it as a buffer" in msg and "does not fit" not in msg
    assert "make it with device=x.device" in msg and "torch.arange(n) makes it on the CPU" in msg


def test_an_input_given_for_its_shape_is_told_to_pass_the_shape():
    with pytest.raises(TypeError) as err:
        C.count_model(MakesTensors("on_x"), torch.randn(2, 8))
    assert str(err.value) == ("input_shape: expected a sequence of positive ints (batch "
                              "included), got a tensor of shape (2, 8); pass its shape "
                              "(x.shape)")


class Elementary(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, x):
        return getattr(torch, self.name)(x)


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "abs", "sin", "cos"])
def test_an_elementary_function_counts_as_a_nonlinearity(name):
    # forward: one evaluation per value; backward: one derivative evaluation and one
    # product per value (docs/kernels.md), as tanh's
    counts = C.count_model(Elementary(name), (2, 5), backward=True, input_requires_grad=True)
    assert counts.uncounted == {} and counts.uncounted_backward == {}
    assert counts.forward == C.Counts(activations=10)
    assert counts.backward == C.Counts(activations=10, mults=10)


@pytest.mark.parametrize("shape", [(1, 3, 2**40, 2**40), (10**20, 3, 8, 8)])
def test_an_input_shape_no_tensor_can_hold_is_refused_by_name(shape):
    for walk in (C.count_model, C.receptive_field):
        with pytest.raises(ValueError, match=r"^input_shape: .* values, more than a tensor "
                           r"can hold \(at most 5\.76e\+17 of 16 bytes"):
            walk(nn.Conv2d(3, 3, 3), shape)
    # the largest a tensor holds is walked (on meta: nothing allocated)
    assert C.count_model(nn.Conv2d(3, 3, 3), (1, 3, 2**28, 2**28)).total.params == 84


@pytest.mark.parametrize("module,shape", [(nn.Conv2d(3, 3, 3), (1, 3, 8, 8)),
                                          (nn.LayerNorm(3), (2, 3))], ids=["conv", "norm"])
def test_an_integer_dtype_a_layer_refuses_is_told_by_dtype_not_input_shape(module, shape):
    with pytest.raises(TypeError) as err:
        C.count_model(module, shape, dtype=torch.int32)
    msg = str(err.value)
    assert msg.startswith("dtype: torch.int32 walks the model on integer input (token "
                          "indices, as an Embedding takes), but layer '(model)' takes "
                          "floating input (")
    assert msg.endswith("pass the floating dtype its input takes, or leave dtype out (the "
                        "module's own)")
    # token indices into an Embedding are what an integer dtype is for
    embed = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    assert C.count_model(embed, (2, 3), dtype=torch.int32).total.macs == 2 * 3 * 4 * 2
