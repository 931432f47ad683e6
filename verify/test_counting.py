"""Parameter and operation counts against sum(p.numel()), counts taken by forward hooks
on executed inputs, FlopCounterMode, and the worked cases built from the per-layer formula."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from handgrad.kernels import counting as C
from verify.counting_cases import (
    CONVS,
    WORKED,
    expected_inception_i,
    expected_inception_ii,
    expected_mnist,
    n_params,
)
from verify.models import InceptionI, InceptionII, MnistCNN, alexnet_28


class HookCounter:
    """Counts taken the other way: forward hooks on modules of a model actually run on
    a small input, each layer counted from its attributes and the executed shapes."""

    def __init__(self, model: nn.Module):
        self.mults = self.adds = self.activations = self.compares = 0
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules()]

    def hook(self, m, inputs, out):
        if isinstance(m, nn.Conv2d):
            fan_in = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            self.mults += out.numel() * fan_in
            self.adds += out.numel() * (fan_in - (m.bias is None))
        elif isinstance(m, nn.Linear):
            self.mults += out.numel() * m.in_features
            self.adds += out.numel() * (m.in_features - (m.bias is None))
        elif isinstance(m, nn.ReLU):
            self.activations += out.numel()
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            self.compares += out.numel() * (k * k - 1)

    def remove(self):
        for h in self.handles:
            h.remove()


# --- per-layer formulas ------------------------------------------------------------------



@pytest.mark.parametrize("c_in,c_out,k,stride,padding,dilation,groups,bias", CONVS,
                         ids=["plain", "no_bias", "strided", "dilated", "grouped", "depthwise",
                              "pointwise", "rectangular"])
def test_conv2d_formula_against_numel_and_executed_hooks(c_in, c_out, k, stride, padding,
                                                         dilation, groups, bias):
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias)
    x = torch.randn(2, c_in, 13, 17)
    hooks = HookCounter(conv)
    out = conv(x)
    hooks.remove()
    hw = C.conv2d_output_hw((13, 17), k, stride, padding, dilation)
    assert hw == tuple(out.shape[2:])
    counts = C.conv2d_counts(c_in, c_out, k, hw, groups=groups, bias=bias, batch=2)
    assert counts.params == n_params(conv)
    assert counts.mults == hooks.mults and counts.adds == hooks.adds
    assert counts.macs == counts.mults
    walked = C.count_model(conv, (2, c_in, 13, 17)).total
    assert walked == counts


def test_linear_and_pool_formulas_against_modules():
    lin = nn.Linear(7, 5)
    assert C.linear_counts(7, 5).params == n_params(lin)
    assert C.linear_counts(7, 5, bias=False).params == n_params(nn.Linear(7, 5, bias=False))
    hooks = HookCounter(lin)
    lin(torch.randn(3, 7))
    hooks.remove()
    c = C.linear_counts(7, 5, batch=3)
    assert (c.mults, c.adds) == (hooks.mults, hooks.adds) == (3 * 5 * 7, 3 * 5 * 7)
    assert C.count_model(lin, (3, 7)).total == c
    pool = nn.MaxPool2d(3, 2)
    hooks = HookCounter(pool)
    out = pool(torch.randn(2, 4, 11, 11))
    hooks.remove()
    p = C.pool2d_counts(4, 3, out.shape[2:], "max", batch=2)
    assert p.compares == hooks.compares == 2 * 4 * 5 * 5 * 8 and p.params == 0
    assert C.count_model(pool, (2, 4, 11, 11)).total == p
    a = C.pool2d_counts(4, 2, (3, 3), "avg")
    assert (a.adds, a.mults) == (4 * 9 * 3, 4 * 9)
    assert C.count_model(nn.AvgPool2d(2), (1, 4, 6, 6)).total == a


def test_conventions_macs_and_flops():
    c = C.conv2d_counts(256, 96, 5, (32, 32))
    assert c.macs == c.mults == 32 * 32 * 5 * 5 * 256 * 96
    assert c.flops == 2 * c.macs
    # with a bias every output's sum is completed by the bias add: adds == mults
    assert c.adds == c.mults
    assert C.conv2d_counts(256, 96, 5, (32, 32), bias=False).adds == c.mults - 32 * 32 * 96


# --- the worked cases --------------------------------------------------------------------














@pytest.mark.parametrize("name", list(WORKED))
def test_worked_case_totals_from_the_per_layer_formula(name):
    make, shape, expected = WORKED[name]
    model = make()
    report = C.count_model(model, shape)
    assert report.total == expected()
    assert report.total.params == n_params(model)
    assert not report.uncounted, report.uncounted


@pytest.mark.parametrize("name", list(WORKED))
def test_worked_case_against_flop_counter_and_hooks_on_execution(name):
    make, shape, _ = WORKED[name]
    model = make()
    report = C.count_model(model, shape)
    hooks = HookCounter(model)
    with FlopCounterMode(display=False) as fc:
        model(torch.randn(shape))
    hooks.remove()
    # FlopCounterMode: 2 FLOPs per multiply-accumulate of convs and matmuls, no bias adds,
    # no activations, no pooling -> exactly twice our MACs
    assert fc.get_total_flops() == report.total.flops == 2 * report.total.macs
    # the bias adds are what separates adds from MACs here (every layer has a bias)
    assert report.total.adds == report.total.macs
    assert report.total.mults == hooks.mults and report.total.adds == hooks.adds
    if name == "mnist_cnn":
        # hooks only see modules: the functional relu and max-pool calls escape them
        assert hooks.activations == 0 and hooks.compares == 0
        assert report.total.activations == 10 * 144 + 20 * 16 + 50
        assert report.total.compares == (10 * 144 + 20 * 16) * 3
    else:
        assert (report.total.activations, report.total.compares) == (hooks.activations,
                                                                    hooks.compares)


def test_inception_bottleneck_is_cheaper():
    one, two = expected_inception_i(), expected_inception_ii()
    assert two.mults < one.mults / 2 and two.params < one.params / 2


def test_batch_scales_operations_not_parameters():
    one = C.count_model(MnistCNN(), (1, 1, 28, 28)).total
    eight = C.count_model(MnistCNN(), (8, 1, 28, 28)).total
    assert eight.params == one.params
    assert (eight.mults, eight.adds, eight.activations, eight.compares) == (
        8 * one.mults, 8 * one.adds, 8 * one.activations, 8 * one.compares)
    assert eight == expected_mnist(batch=8)


def test_per_layer_frame():
    frame = C.count_model(InceptionII(), (1, 256, 32, 32)).to_frame()
    assert list(frame.columns) == ["pass", "layer", "type", "op", "output_shape", "params",
                                   "mults", "adds", "activations", "compares", "macs"]
    assert set(frame["pass"]) == {"forward"}
    convs = frame[frame["op"] == "convolution"]
    assert list(convs["layer"]) == ["b1.0", "r3.0", "b3.0", "r5.0", "b5.0", "rp.0"]
    row = convs.set_index("layer").loc["b5.0"]
    assert row["params"] == 5 * 5 * 64 * 96 + 96 and row["output_shape"] == (1, 96, 32, 32)
    assert frame["params"].sum() == n_params(InceptionII())


# --- norms, element-wise arithmetic and reductions ------------------------------------------


class Fn(nn.Module):
    """A module whose forward is ``fn(self, x)``, with optional parameters."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for name, value in params.items():
            self.register_parameter(name, nn.Parameter(value))

    def forward(self, x):
        return self.fn(self, x)


def _inplace(op):
    def fn(m, x):
        y = x.clone()  # data movement: free
        op(y)
        return y
    return fn


def _iadd(y):
    y += 1


def _isub(y):
    y -= 1


def _imul(y):
    y *= 2


def _idiv(y):
    y /= 2


N_ELEM = 2 * 3 * 4 * 5  # every case below runs on a (2, 3, 4, 5) input: 120 values

# (id, module, input shape, expected Counts worked by hand, expected uncounted): every norm
# counts one scale and one shift per value (the inference form); a norm that computes its
# statistics from the input lists them as uncounted, never as zero
BN_TRAIN = {"native_batch_norm (batch statistics, training mode)": 1}
NORMS = [
    # inference batch norm: one scale and one shift per value; 2 * 3 params (weight, bias)
    ("batchnorm2d_eval", lambda: nn.BatchNorm2d(3).eval(), (2, 3, 4, 5),
     C.Counts(params=2 * 3, mults=N_ELEM, adds=N_ELEM), {}),
    ("batchnorm1d_eval", lambda: nn.BatchNorm1d(7).eval(), (4, 7),
     C.Counts(params=2 * 7, mults=4 * 7, adds=4 * 7), {}),
    ("batchnorm2d_no_affine_eval", lambda: nn.BatchNorm2d(3, affine=False).eval(),
     (2, 3, 4, 5), C.Counts(mults=N_ELEM, adds=N_ELEM), {}),
    # training mode: the batch statistics are listed; num_batches_tracked += 1 (an int64
    # step counter) is bookkeeping, not the model's arithmetic: no add
    ("batchnorm2d_train", lambda: nn.BatchNorm2d(3).train(), (2, 3, 4, 5),
     C.Counts(params=2 * 3, mults=N_ELEM, adds=N_ELEM), BN_TRAIN),
    ("batchnorm2d_train_no_running_stats",
     lambda: nn.BatchNorm2d(3, track_running_stats=False).eval(), (2, 3, 4, 5),
     C.Counts(params=2 * 3, mults=N_ELEM, adds=N_ELEM), BN_TRAIN),
    ("instancenorm2d", lambda: nn.InstanceNorm2d(3), (2, 3, 4, 5),
     C.Counts(mults=N_ELEM, adds=N_ELEM), BN_TRAIN),
    ("groupnorm", lambda: nn.GroupNorm(1, 3), (2, 3, 4, 5),
     C.Counts(params=2 * 3, mults=N_ELEM, adds=N_ELEM), {"native_group_norm (statistics)": 1}),
    # layer norm over the last dim (5): weight and bias of 5 each; its statistics listed
    ("layernorm_last_dim", lambda: nn.LayerNorm(5), (2, 3, 4, 5),
     C.Counts(params=2 * 5, mults=N_ELEM, adds=N_ELEM), {"native_layer_norm (statistics)": 1}),
    ("layernorm_hw_no_affine", lambda: nn.LayerNorm((4, 5), elementwise_affine=False),
     (2, 3, 4, 5), C.Counts(mults=N_ELEM, adds=N_ELEM), {"native_layer_norm (statistics)": 1}),
]

# (id, module, expected Counts worked by hand) on a (2, 3, 4, 5) input
ELEMENTWISE = [
    # one add per output value; the output of a broadcast is what counts
    ("add_tensor", lambda: Fn(lambda m, x: x + x), C.Counts(adds=N_ELEM)),
    ("add_scalar", lambda: Fn(lambda m, x: x + 1), C.Counts(adds=N_ELEM)),
    ("add_broadcast", lambda: Fn(lambda m, x: x + m.b, b=torch.zeros(3, 1, 1)),
     C.Counts(params=3, adds=N_ELEM)),
    # the smaller operand first: still one add per value of the (2, 3, 4, 5) output
    ("add_broadcast_small_first", lambda: Fn(lambda m, x: m.b + x, b=torch.zeros(3, 1, 1)),
     C.Counts(params=3, adds=N_ELEM)),
    ("add_inplace", lambda: Fn(_inplace(_iadd)), C.Counts(adds=N_ELEM)),
    ("sub_scalar", lambda: Fn(lambda m, x: x - 1), C.Counts(adds=N_ELEM)),
    ("rsub_scalar", lambda: Fn(lambda m, x: 1 - x), C.Counts(adds=N_ELEM)),
    ("sub_inplace", lambda: Fn(_inplace(_isub)), C.Counts(adds=N_ELEM)),
    # a (5,) row vector broadcast up against (2, 3, 4, 5), on either side
    ("sub_row_vector", lambda: Fn(lambda m, x: x - m.r, r=torch.zeros(5)),
     C.Counts(params=5, adds=N_ELEM)),
    ("sub_from_row_vector", lambda: Fn(lambda m, x: m.r - x, r=torch.zeros(5)),
     C.Counts(params=5, adds=N_ELEM)),
    # one multiply (or divide) per output value
    ("mul_tensor", lambda: Fn(lambda m, x: x * x), C.Counts(mults=N_ELEM)),
    ("mul_scalar", lambda: Fn(lambda m, x: x * 2), C.Counts(mults=N_ELEM)),
    ("mul_broadcast", lambda: Fn(lambda m, x: x * m.s, s=torch.ones(3, 1, 1)),
     C.Counts(params=3, mults=N_ELEM)),
    ("mul_broadcast_small_first", lambda: Fn(lambda m, x: m.s * x, s=torch.ones(3, 1, 1)),
     C.Counts(params=3, mults=N_ELEM)),
    ("mul_inplace", lambda: Fn(_inplace(_imul)), C.Counts(mults=N_ELEM)),
    ("div_scalar", lambda: Fn(lambda m, x: x / 3), C.Counts(mults=N_ELEM)),
    ("div_tensor", lambda: Fn(lambda m, x: x / x), C.Counts(mults=N_ELEM)),
    ("div_inplace", lambda: Fn(_inplace(_idiv)), C.Counts(mults=N_ELEM)),
    ("div_small_numerator", lambda: Fn(lambda m, x: m.s / x, s=torch.ones(3, 1, 1)),
     C.Counts(params=3, mults=N_ELEM)),
    # x * 2 + 1: a scale and a shift
    ("mul_then_add", lambda: Fn(lambda m, x: x * 2 + 1), C.Counts(mults=N_ELEM, adds=N_ELEM)),
]

REDUCTIONS = [
    # reducing n_in values to n_out sums takes n_in - n_out adds; a mean divides each sum once
    # (2, 3, 4, 5) -> (2, 3): 6 sums of 4 * 5 = 20 values, 19 adds each
    ("mean_hw", lambda: Fn(lambda m, x: x.mean((2, 3))), C.Counts(adds=6 * 19, mults=6)),
    ("mean_hw_keepdim", lambda: Fn(lambda m, x: x.mean((2, 3), keepdim=True)),
     C.Counts(adds=6 * 19, mults=6)),
    # -> (2, 3, 4): 24 sums of 5 values
    ("mean_last", lambda: Fn(lambda m, x: x.mean(-1)), C.Counts(adds=24 * 4, mults=24)),
    ("mean_all", lambda: Fn(lambda m, x: x.mean()), C.Counts(adds=N_ELEM - 1, mults=1)),
    # -> (2, 4, 5): 40 sums of 3 channels; a sum has no division
    ("sum_channels", lambda: Fn(lambda m, x: x.sum(1)), C.Counts(adds=40 * 2)),
    ("sum_all", lambda: Fn(lambda m, x: x.sum()), C.Counts(adds=N_ELEM - 1)),
    # sum over dims 0 and 2: -> (3, 5), 15 sums of 2 * 4 = 8 values
    ("sum_batch_and_h", lambda: Fn(lambda m, x: x.sum((0, 2))), C.Counts(adds=15 * 7)),
]


@pytest.mark.parametrize("make,shape,expected,uncounted", [c[1:] for c in NORMS],
                         ids=[c[0] for c in NORMS])
def test_norm_layers_count_one_scale_and_one_shift_per_value(make, shape, expected, uncounted):
    model = make()
    report = C.count_model(model, shape)
    assert report.total == expected
    assert report.total.params == n_params(model)
    assert report.uncounted == uncounted
    for op in uncounted:
        assert op in report.summary()
    # executed on a real input, the norm's output has as many values as counted
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert report.total.mults == out.numel()


@pytest.mark.parametrize("make,expected", [c[1:] for c in ELEMENTWISE + REDUCTIONS],
                         ids=[c[0] for c in ELEMENTWISE + REDUCTIONS])
def test_elementwise_and_reduction_ops(make, expected):
    model = make()
    report = C.count_model(model, (2, 3, 4, 5))
    assert report.total == expected
    assert report.total.params == n_params(model)
    assert not report.uncounted, report.uncounted
    # FlopCounterMode counts no element-wise ops and no reductions: nothing here is a MAC
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(2, 3, 4, 5))
    assert fc.get_total_flops() == report.total.flops == 0


class BasicBlock(nn.Module):
    """A ResNet basic block (conv-BN-ReLU-conv-BN, identity shortcut, ReLU), then global
    average pooling and a linear classifier."""

    def __init__(self, c=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + x)
        return self.fc(y.mean((2, 3)))


def test_residual_block_with_norms_and_global_average_pool():
    model = BasicBlock().eval()
    shape = (2, 8, 6, 6)
    report = C.count_model(model, shape)
    n = 2 * 8 * 6 * 6  # values of every feature map: 576
    fan_in = 3 * 3 * 8  # 72 products per conv output, no bias: 71 adds
    conv_macs = n * fan_in
    expected = C.Counts(
        params=2 * (8 * 8 * 3 * 3) + 2 * (2 * 8) + (8 * 10 + 10),   # 1274
        # two convs; two batch norms (a scale each value); global mean (a divide per
        # channel: 2 * 8 means); linear 8 -> 10 on 2 samples
        mults=2 * conv_macs + 2 * n + 2 * 8 + 2 * 10 * 8,
        # two convs without bias; two batch norms (a shift each value); the residual add;
        # the mean: 16 sums of 36 values; the linear layer with its bias
        adds=2 * n * (fan_in - 1) + 2 * n + n + 16 * 35 + 2 * 10 * 8,
        activations=2 * n,
        macs=2 * conv_macs + 2 * 10 * 8,
    )
    assert report.total == expected
    assert report.total.params == n_params(model) == 1274
    assert not report.uncounted, report.uncounted
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(shape))
    assert fc.get_total_flops() == report.total.flops


# (id, module, input shape, Counts worked by hand): 1-D and 3-D pools count their own window
POOLS = [
    # (2, 3, 10) -> (2, 3, 3): 18 windows of 3, 2 compares each
    ("maxpool1d", lambda: nn.MaxPool1d(3), (2, 3, 10), C.Counts(compares=18 * 2)),
    ("avgpool1d", lambda: nn.AvgPool1d(3), (2, 3, 10), C.Counts(adds=18 * 2, mults=18)),
    # (1, 2, 4, 4, 4) -> (1, 2, 2, 2, 2): 16 windows of 8
    ("maxpool3d", lambda: nn.MaxPool3d(2), (1, 2, 4, 4, 4), C.Counts(compares=16 * 7)),
    ("maxpool3d_indices", lambda: nn.MaxPool3d(2, return_indices=True), (1, 2, 4, 4, 4),
     C.Counts(compares=16 * 7)),
    ("avgpool3d", lambda: nn.AvgPool3d(2), (1, 2, 4, 4, 4), C.Counts(adds=16 * 7, mults=16)),
    # window 1 x 2 x 3 on (1, 2, 4, 4, 6) -> (1, 2, 4, 2, 2): 32 windows of 6
    ("maxpool3d_rectangular", lambda: nn.MaxPool3d((1, 2, 3)), (1, 2, 4, 4, 6),
     C.Counts(compares=32 * 5)),
    # adaptive, 5 -> 2 per axis: windows [0, 3) and [2, 5) (floor(i In / Out) to
    # ceil((i + 1) In / Out)), 3 x 3 = 9 taps each; 2 planes of 4 outputs
    ("adaptive_avg_uneven", lambda: nn.AdaptiveAvgPool2d(2), (1, 2, 5, 5),
     C.Counts(adds=8 * 8, mults=8)),
    # a global max: 2 windows of 25
    ("adaptive_max_global", lambda: nn.AdaptiveMaxPool2d(1), (1, 2, 5, 5),
     C.Counts(compares=2 * 24)),
]


@pytest.mark.parametrize("make,shape,expected", [c[1:] for c in POOLS],
                         ids=[c[0] for c in POOLS])
def test_pools_of_every_rank_count_their_window(make, shape, expected):
    report = C.count_model(make(), shape)
    assert report.total == expected
    assert not report.uncounted, report.uncounted


@pytest.mark.parametrize("make,op", [
    (lambda: nn.Upsample(scale_factor=2, mode="bilinear"), "upsample_bilinear2d"),
    (lambda: nn.Upsample(scale_factor=2, mode="bicubic"), "upsample_bicubic2d"),
], ids=["upsample_bilinear", "upsample_bicubic"])
def test_layers_without_a_formula_are_listed(make, op):
    """Interpolation has no one convention (docs/kernels.md); nearest's is a copy,
    counted (verify/test_counting_listed.py)."""
    report = C.count_model(make(), (1, 2, 5, 5))
    assert report.uncounted == {op: 1}
    assert report.total == C.Counts()


def test_nearest_upsampling_is_a_copy():
    report = C.count_model(nn.Upsample(scale_factor=2), (1, 2, 5, 5))
    assert report.uncounted == {}
    assert report.total == C.Counts()
    assert [r.op for r in report.rows] == ["upsample_nearest2d"]


# --- transposed convolution --------------------------------------------------------------

# (c_in, c_out, k, stride, padding, output_padding, groups, bias, hand MACs on (2, c_in, 5, 6))
# every input value is scattered to (C_out/g) * kh * kw outputs:
# MACs = N * C_in * H_in * W_in * (C_out / g) * kh * kw
CONV_T = [
    ("plain", (4, 6, 3, 1, 0, 0, 1, True), 2 * 4 * 5 * 6 * 6 * 3 * 3),
    ("no_bias", (4, 6, 3, 1, 0, 0, 1, False), 2 * 4 * 5 * 6 * 6 * 3 * 3),
    ("strided_grouped", (4, 6, 3, 2, 0, 0, 2, False), 2 * 4 * 5 * 6 * 3 * 3 * 3),
    ("stride_equals_kernel", (3, 3, 3, 3, 0, 0, 3, False), 2 * 3 * 5 * 6 * 1 * 3 * 3),
    ("rectangular", (2, 4, (2, 3), (2, 1), 0, 0, 1, True), 2 * 2 * 5 * 6 * 4 * 2 * 3),
    ("padded", (4, 6, 3, 2, 1, 1, 1, True), 2 * 4 * 5 * 6 * 6 * 3 * 3),
]


@pytest.mark.parametrize("args,macs", [c[1:] for c in CONV_T], ids=[c[0] for c in CONV_T])
def test_transposed_conv_against_hand_formula_flop_counter_and_scatter(args, macs):
    c_in, c_out, k, stride, padding, out_pad, groups, bias = args
    model = nn.ConvTranspose2d(c_in, c_out, k, stride, padding, out_pad, groups, bias)
    shape = (2, c_in, 5, 6)
    report = C.count_model(model, shape)
    total = report.total
    assert total.macs == total.mults == macs
    assert total.params == n_params(model)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        out = model(torch.randn(shape))
    assert fc.get_total_flops() == total.flops == 2 * macs
    assert report.rows[0].output_shape == tuple(out.shape)
    # the scatter measured: ones in, ones as weights, no bias -> each output holds the
    # number of products summed into it; with padding, products that land on the cropped
    # border are made (and counted in macs, as FlopCounterMode counts them) but summed
    # into nothing
    inside, reached = scatter(model, shape)
    assert inside == macs or padding
    # c products make c - 1 adds, and the bias one more
    assert total.adds == (inside if bias else inside - reached)


def scatter(model: nn.Module, shape) -> tuple[int, int]:
    """(products summed into the output, outputs that receive at least one) of a transposed
    convolution, counted by running it with all-ones input and weights in float64."""
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(shape) - 2]
    ones = conv(torch.ones(shape, dtype=torch.float64),
                torch.ones_like(model.weight, dtype=torch.float64), None, model.stride,
                model.padding, model.output_padding, model.groups, model.dilation)
    return int(ones.sum()), int((ones > 0).sum())


# (id, module, input shape): adds of every layout against the brute-force scatter
CONV_T_ADDS = [
    # kernel 1, stride 2: three of every four outputs receive nothing (and no bias): 0 adds
    ("k1_s2_no_bias", lambda: nn.ConvTranspose2d(1, 1, 1, stride=2, bias=False), (2, 1, 5, 6)),
    ("k1_s2_bias", lambda: nn.ConvTranspose2d(1, 1, 1, stride=2), (2, 1, 5, 6)),
    ("stride_over_kernel", lambda: nn.ConvTranspose2d(2, 3, 2, stride=3, bias=False),
     (1, 2, 4, 5)),
    ("padding", lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, bias=False),
     (1, 2, 4, 5)),
    ("padding_output_padding", lambda: nn.ConvTranspose2d(
        2, 4, 3, stride=2, padding=2, output_padding=1, bias=False), (2, 2, 4, 5)),
    ("dilation_groups", lambda: nn.ConvTranspose2d(
        4, 6, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 3), groups=2, bias=False),
     (1, 4, 5, 4)),
    ("dilation_groups_bias", lambda: nn.ConvTranspose2d(
        4, 6, 3, stride=3, padding=1, output_padding=2, dilation=2, groups=2), (1, 4, 3, 3)),
    ("conv1d", lambda: nn.ConvTranspose1d(3, 2, 3, stride=4, padding=1, bias=False), (2, 3, 7)),
    ("conv3d", lambda: nn.ConvTranspose3d(2, 2, 2, stride=(1, 3, 2), padding=(1, 0, 0),
                                          bias=False), (1, 2, 3, 3, 4)),
]


@pytest.mark.parametrize("make,shape", [c[1:] for c in CONV_T_ADDS],
                         ids=[c[0] for c in CONV_T_ADDS])
def test_transposed_conv_adds_against_brute_force_scatter(make, shape):
    model = make()
    total = C.count_model(model, shape).total
    inside, reached = scatter(model, shape)
    bias = model.bias is not None
    assert total.adds == (inside if bias else inside - reached) >= 0
    assert total.macs == math.prod(shape) * model.weight.shape[1] * math.prod(
        model.weight.shape[2:])


# --- what other counters get wrong --------------------------------------------------------


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.other = nn.Linear(8, 8)
        self.other.weight = self.fc.weight  # tied

    def forward(self, x):
        return self.other(torch.tanh(self.fc(self.fc(x))))


def test_shared_parameters_count_once_and_their_ops_every_time():
    model = Shared()
    report = C.count_model(model, (4, 8))
    assert report.total.params == n_params(model) == 64 + 8 + 8
    assert report.total.mults == 3 * 4 * 8 * 8
    assert report.total.activations == 4 * 8


class Attention(nn.Module):
    """nn.MultiheadAttention takes ``out_proj``'s weight and bias through
    F.multi_head_attention_forward: the submodule itself never runs."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


class WithAux(nn.Module):
    """An auxiliary classifier that runs in training mode only (as Inception's), and a
    parameter a layer holds but never uses (counted with its layer, which ran)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.aux = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        self.head = nn.Linear(8, 2)
        self.head.unused = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        h = self.body(x)
        return (self.head(h), self.aux(h)) if self.training else self.head(h)


@pytest.mark.parametrize("make,shape", [
    (lambda: Attention().eval(), (2, 5, 16)),
    (lambda: WithAux().eval(), (3, 8)),
    (lambda: WithAux().train(), (3, 8)),
    (Shared, (4, 8)),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).requires_grad_(False), (2, 4)),
], ids=["attention", "aux-eval", "aux-train", "shared", "frozen"])
def test_every_parameter_is_counted_or_named(make, shape):
    """total.params and the unreached parameters add up to the module's own count, so no
    parameter vanishes in silence."""
    model = make()
    report = C.count_model(model, shape)
    missing = sum(k for k, _ in report.unreached_params.values())
    assert report.total.params + missing == n_params(model)


def test_a_parameter_taken_by_a_functional_call_is_counted_at_its_own_layer():
    model = Attention().eval()
    report = C.count_model(model, (2, 5, 16))
    assert report.unreached_params == {}
    assert report.total.params == n_params(model) == 4 * 16 * 16 + 4 * 16 + 16 * 3 + 3
    frame = report.to_frame()
    out_proj = frame[frame["layer"] == "attn.out_proj"]
    assert out_proj["params"].sum() == 16 * 16 + 16


def test_a_branch_the_mode_skips_is_named_with_the_reason():
    report = C.count_model(WithAux().eval(), (3, 8))
    assert report.total.params == (8 * 8 + 8) + (8 * 2 + 2) + 5
    assert set(report.unreached_params) == {"aux.0.weight", "aux.0.bias", "aux.2.weight",
                                            "aux.2.bias"}
    assert report.unreached_params["aux.0.weight"] == (
        32, "no op took it: module 'aux.0' (Linear) was not called in the traced forward "
        "pass (traced in eval mode)")
    text = report.summary()
    assert "parameters the forward pass did not reach (46, not in params):" in text
    assert "  aux.2.bias (2): no op took it: module 'aux.2' (Linear) was not called" in text
    trained = C.count_model(WithAux().train(), (3, 8))
    assert trained.unreached_params == {} and trained.total.params == n_params(WithAux())


def test_ops_without_a_formula_are_listed_not_zeroed():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(F.relu(x), dim=1).sort(dim=1).values

    report = C.count_model(Odd(), (2, 5))
    assert set(report.uncounted) == {"cumsum", "sort"}
    assert "uncounted ops (no formula): cumsum x1, sort x1" in report.summary()


def test_model_too_large_to_run_is_counted_on_meta():
    with torch.device("meta"):
        big = nn.Sequential(nn.Conv2d(3, 4096, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(4096, 4096, 3, padding=1))
    # a real forward would hold 64 x 4096 x 2048^2 floats = 4 TiB per activation
    report = C.count_model(big, (64, 3, 2048, 2048))
    expected = (C.conv2d_counts(3, 4096, 3, (2048, 2048), nonlinearity=True, batch=64)
                + C.conv2d_counts(4096, 4096, 3, (2048, 2048), batch=64))
    assert report.total == expected


def test_user_module_is_left_untouched():
    model = MnistCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    C.count_model(model, (1, 1, 28, 28))
    assert all(torch.equal(before[k], v) and v.device.type == "cpu"
               for k, v in model.state_dict().items())


# --- receptive field ---------------------------------------------------------------------


def empirical_rf(model: nn.Module, shape) -> tuple[int, int]:
    """Input pixels that influence the centre unit of the output, found with autograd."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = model.double()(x)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    rows = x.grad[0].abs().sum(0).sum(1).nonzero()
    cols = x.grad[0].abs().sum(0).sum(0).nonzero()
    return (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))


@pytest.mark.parametrize("name,make,expected", [
    ("conv3_conv3_avgpool2_conv3", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Conv2d(2, 2, 3), nn.AvgPool2d(2), nn.Conv2d(2, 1, 3)),
     # 1 + 2 = 3; + 2 = 5; pool k2: + 1 -> 6, jump 2; conv3: + 2*2 = 10
     ((10, 10), (2, 2))),
    ("dilated_strided", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2), nn.Conv2d(2, 1, 3, dilation=2)),
     # 3, jump 2; dilated k3 d2 spans 5 units of jump 2: 3 + 4*2 = 11; stride 1 keeps jump 2
     ((11, 11), (2, 2))),
])
def test_receptive_field_against_autograd_footprint(name, make, expected):
    model = make()
    rf = C.receptive_field(model, (1, 1, 40, 40))
    assert (rf.size, rf.jump) == expected
    assert rf.size == empirical_rf(model, (1, 1, 40, 40))


def test_receptive_field_of_branching_blocks_is_the_widest_branch():
    assert C.receptive_field(InceptionI(), (1, 256, 32, 32)).size == (5, 5)
    assert C.receptive_field(InceptionII(), (1, 256, 32, 32)).size == (5, 5)
    # k4, k3, k5, pool k3 (jump -> 2), three k3 at jump 2, pool k3 at jump 2 (jump -> 4)
    rf = C.receptive_field(alexnet_28(), (1, 1, 28, 28))
    assert rf.size == (4 + 2 + 4 + 2 + 3 * 2 * 2 + 2 * 2,) * 2 == (28, 28)
    assert rf.jump == (4, 4)


def impulse_footprint(model: nn.Module, hw: tuple[int, int]):
    """The middle unit of the output, and the first and last rows and columns (each as
    (lo, hi)) of the input pixels that reach it, measured by running the model with all
    weights 1 and biases 0 on a batch of one-hot images, one per pixel. With non-negative
    weights and inputs nothing cancels, and max-pooling passes a lone positive value on, so
    an output is positive exactly when its field contains the lit pixel (float32 is exact
    enough for a sign; dilated float64 convolutions are slow on CPU)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 1.0)
        h, w = hw
        c_in = next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))
        x = torch.eye(h * w).reshape(h * w, 1, h, w).expand(-1, c_in, -1, -1)
        out = model(x)
    unit = (out.shape[2] // 2, out.shape[3] // 2)
    seen = (out[:, :, unit[0], unit[1]].sum(1) > 0).reshape(h, w)
    rows, cols = seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten()
    return unit, (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))


# Textbook recurrences, per axis, layer by layer (pixel i spans [i, i+1), so the input's
# first unit is centred at 0.5; kernel k, stride s, padding p, dilation d):
#   size  r' = r + (k - 1) * d * j
#   jump  j' = j * s
#   start c' = c + ((k - 1) * d / 2 - p) * j     (centre of the first unit's field)
RF_CASES = [
    ("conv3_valid", lambda: nn.Sequential(nn.Conv2d(1, 2, 3)),
     # r = 1 + 2 = 3; c = 0.5 + 1 = 1.5: the first unit sees pixels 0..2, centred on 1
     (3, 3), (1, 1), (1.5, 1.5)),
    ("conv3_pad2_starts_outside", lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=2)),
     # c = 0.5 + (1 - 2) = -0.5: the first unit is centred on the padding
     (3, 3), (1, 1), (-0.5, -0.5)),
    ("conv5s2_avgpool2_conv3p1", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 5, stride=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(2, 1, 3, padding=1)),
     # conv5 s2: r 5, j 2, c 0.5 + 2 = 2.5; pool2: r 5 + 1*2 = 7, j 4, c 2.5 + 0.5*2 = 3.5;
     # conv3 p1: r 7 + 2*4 = 15, j 4, c 3.5 + (1 - 1)*4 = 3.5
     (15, 15), (4, 4), (3.5, 3.5)),
    ("rectangular_strided", lambda: nn.Sequential(
        nn.Conv2d(1, 2, (3, 5)), nn.Conv2d(2, 2, 3, stride=(2, 1)), nn.ReLU(),
        nn.Conv2d(2, 1, 3, padding=(1, 0))),
     # (3, 5): r (3, 5), c (1.5, 2.5); k3 s(2, 1): r (5, 7), j (2, 1), c (2.5, 3.5);
     # k3 p(1, 0): r (5 + 2*2, 7 + 2*1) = (9, 9), c (2.5 + 0*2, 3.5 + 1*1) = (2.5, 4.5)
     (9, 9), (2, 1), (2.5, 4.5)),
    ("dilated", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, dilation=2), nn.Conv2d(2, 2, 3, stride=2, padding=1),
        nn.Conv2d(2, 1, 3, dilation=3)),
     # k3 d2: r 1 + 2*2 = 5, c 0.5 + 2 = 2.5; k3 s2 p1: r 7, j 2, c 2.5 + 0 = 2.5;
     # k3 d3 at jump 2: r 7 + 2*3*2 = 19, c 2.5 + 3*2 = 8.5
     (19, 19), (2, 2), (8.5, 8.5)),
    ("avgpool3s2p1_conv2", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.AvgPool2d(3, stride=2, padding=1), nn.Conv2d(2, 1, 2)),
     # 1x1: nothing moves; pool3 s2 p1: r 3, j 2, c 0.5 + (1 - 1) = 0.5;
     # conv2: r 3 + 1*2 = 5, c 0.5 + 0.5*2 = 1.5
     (5, 5), (2, 2), (1.5, 1.5)),
    ("resnet_stem_then_conv3", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 7, stride=2, padding=3), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(2, 1, 3)),
     # k7 s2 p3: r 7, j 2, c 0.5 + (3 - 3) = 0.5; max-pool k3 s2 p1: r 7 + 2*2 = 11, j 4,
     # c 0.5 + (1 - 1)*2 = 0.5; conv3: r 11 + 2*4 = 19, c 0.5 + 1*4 = 4.5
     (19, 19), (4, 4), (4.5, 4.5)),
    ("maxpool2_conv3_maxpool3s1", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3), nn.MaxPool2d(3, 1)),
     # k3 p1: r 3, c 0.5; max-pool 2: r 4, j 2, c 0.5 + 0.5 = 1.0;
     # conv3: r 4 + 2*2 = 8, c 1.0 + 1*2 = 3.0; max-pool 3 s1: r 8 + 2*2 = 12, c 3.0 + 2 = 5.0
     (12, 12), (2, 2), (5.0, 5.0)),
]


@pytest.mark.parametrize("make,size,jump,start", [c[1:] for c in RF_CASES],
                         ids=[c[0] for c in RF_CASES])
def test_receptive_field_size_jump_start_by_hand_and_by_impulses(make, size, jump, start):
    model = make()
    hw = (36, 36)
    rf = C.receptive_field(model, (1, 1, *hw))
    assert (rf.size, rf.jump, rf.start) == (size, jump, start)
    # every case ends on a spatial layer: the field is of its output
    assert isinstance(model[-1], (nn.Conv2d, nn.MaxPool2d)) and rf.layer == str(len(model) - 1)
    # measured: the field of a unit away from the border, its extent and its centre
    unit, rows, cols = impulse_footprint(model, hw)
    for (lo, hi), n, r, j, c, u in zip((rows, cols), hw, size, jump, start, unit):
        assert 0 < lo and hi < n - 1, "the field reaches the border: use a larger input"
        assert hi - lo + 1 == r
        # the centre of pixels lo..hi is (lo + hi + 1) / 2; unit u is u jumps from the first
        assert (lo + hi + 1) / 2 == c + u * j


def test_receptive_field_start_of_the_worked_cases():
    # 'same' padding everywhere: every branch's first unit is centred on pixel 0
    assert C.receptive_field(InceptionII(), (1, 256, 32, 32)).start == (0.5, 0.5)
    # alexnet_28: k4: c 0.5 + 1.5 = 2.0; k3: 2.0 + 1 = 3.0; k5 p2: 3.0; pool3 s2: 3.0 + 1 = 4.0,
    # j 2; three k3 p1: 4.0; pool3 s2 at jump 2: 4.0 + 1*2 = 6.0
    assert C.receptive_field(alexnet_28(), (1, 1, 28, 28)).start == (6.0, 6.0)


@pytest.mark.parametrize("pool", [lambda: nn.AdaptiveAvgPool2d(1), lambda: nn.AdaptiveMaxPool2d(1),
                                  lambda: Fn(lambda m, x: x.mean((2, 3), keepdim=True))],
                         ids=["adaptive_avg_1", "adaptive_max_1", "mean_keepdim"])
def test_receptive_field_of_global_pooling_is_the_whole_input(pool):
    # conv3 (valid) leaves 14 x 14 units of field 3 centred at 1.5 .. 14.5; pooling them all
    # sees pixels 0 .. 15: the whole 16 x 16 input, centred at 8
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), pool(), nn.Flatten(), nn.Linear(2, 3))
    rf = C.receptive_field(model, (1, 1, 16, 16))
    assert rf.size == (16, 16) and rf.start == (8.0, 8.0)
    if isinstance(model[2], nn.AdaptiveMaxPool2d):
        return  # its gradient reaches the argmax alone
    # measured: every input pixel reaches the output
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    model.double()[:3](x).sum().backward()
    assert bool((x.grad != 0).all())


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(y.mean((2, 3), keepdim=True))


class Branches(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


def _then(layer):
    return lambda: nn.Sequential(nn.Conv2d(1, 2, 3), layer)


# (id, model, input shape, error, pattern): no exact formula is a named refusal, not a guess
RF_REFUSED = [
    ("adaptive_avg_2", _then(nn.AdaptiveAvgPool2d(2)), (1, 1, 16, 16), ValueError,
     r"layer '1' \(AdaptiveAvgPool2d\) applies aten._adaptive_avg_pool2d, which pools a "
     r"\(14, 14\) map to \(2, 2\) unevenly"),
    ("upsample", _then(nn.Upsample(scale_factor=2)), (1, 1, 16, 16), ValueError,
     r"layer '1' \(Upsample\) applies aten.upsample_nearest2d, which has no receptive-field"),
    ("transposed", lambda: nn.Sequential(nn.ConvTranspose2d(1, 2, 3)), (1, 1, 8, 8), ValueError,
     r"layer '0' \(ConvTranspose2d\) applies aten.convolution, which is a transposed"),
    ("batchnorm_training", _then(nn.BatchNorm2d(2)), (2, 1, 8, 8), ValueError,
     r"\(BatchNorm2d\) applies aten.native_batch_norm.*call model.eval\(\) first"),
    ("groupnorm", _then(nn.GroupNorm(1, 2)), (1, 1, 8, 8), ValueError,
     r"\(GroupNorm\) applies aten.native_group_norm"),
    ("permute", _then(Fn(lambda m, x: x.transpose(2, 3))), (1, 1, 8, 8), ValueError,
     r"layer '1' \(Fn\) applies aten.transpose"),
    ("crop", _then(Fn(lambda m, x: x[:, :, 1:])), (1, 1, 8, 8), ValueError,
     r"applies aten.slice, which works along dimension 2, a spatial one"),
    ("reflect_padding", lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1,
                                                        padding_mode="reflect")),
     (1, 1, 8, 8), ValueError, r"applies aten.reflection_pad2d"),
    ("linear_over_width", lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(6, 6),
                                                nn.Conv2d(2, 2, 3)),
     (1, 1, 8, 8), ValueError, r"makes a spatial map again from a flattened value"),
    ("broadcast_squeeze_excite", SqueezeExcite, (1, 2, 8, 8), ValueError,
     r"applies aten.mul, which broadcasts or moves values across spatial positions"),
    # the (1, 2, 8, 8) input viewed as one (N, C, D, H, W) volume and convolved in 3-D
    ("conv3d", lambda: Fn(lambda m, x: F.conv3d(x.view(1, 1, 2, 8, 8), m.w),
                          w=torch.ones(1, 1, 1, 3, 3)), (1, 2, 8, 8), ValueError,
     r"'\(model\)' \(Fn\) applies aten.convolution, which is a 3-D convolution"),
    # 8 -> 4 both ways, but one unit steps 2 pixels and the other 1: no single jump
    ("different_jumps", lambda: Branches(nn.Conv2d(1, 1, 1, stride=2), nn.Conv2d(1, 1, 5)),
     (1, 1, 8, 8), ValueError, r"applies aten.cat, which joins fields of different jumps"),
    ("conv1d", lambda: nn.Sequential(nn.Conv1d(1, 2, 3)), (1, 1, 8, 8), ValueError,
     r"input_shape: layer '0' \(Conv1d\) expects \(N, C, L\) input, got shape"),
    ("channels", lambda: nn.Sequential(nn.Conv2d(3, 2, 3)), (1, 1, 8, 8), ValueError,
     r"input_shape: layer '0' \(Conv2d\) expects 3 input channels, got 1"),
    ("rank", lambda: nn.Sequential(nn.Conv2d(3, 2, 3)), (1, 3, 8), ValueError,
     r"input_shape: expected \(N, C, H, W\), 4 ints, got \(1, 3, 8\)"),
    ("float_size", lambda: nn.Conv2d(1, 2, 3), (1, 1, 8.0, 8), TypeError,
     r"input_shape: expected a sequence of positive ints"),
    ("too_small", lambda: nn.Conv2d(1, 2, 5), (1, 1, 3, 3), ValueError,
     r"input_shape: \(1, 1, 3, 3\) does not fit layer"),
    ("not_a_module", lambda: (lambda x: x), (1, 1, 3, 3), TypeError,
     r"module: expected a torch.nn.Module, got function"),
]


@pytest.mark.parametrize("make,shape,error,pattern", [c[1:] for c in RF_REFUSED],
                         ids=[c[0] for c in RF_REFUSED])
def test_receptive_field_refuses_what_has_no_exact_formula(make, shape, error, pattern):
    with pytest.raises(error, match=pattern):
        C.receptive_field(make(), shape)


def test_receptive_field_accepts_numpy_ints_and_eval_batch_norm():
    import numpy as np

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).eval()
    rf = C.receptive_field(model, tuple(np.int64(v) for v in (1, 1, 8, 8)))
    assert (rf.size, rf.jump, rf.start) == ((3, 3), (1, 1), (1.5, 1.5))


def _features_then_head():
    """A torchvision-style classifier: the spatial layers in a child ``features``."""
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2),
                               nn.MaxPool2d(2)),
        head=nn.Sequential(nn.Flatten(), nn.Linear(2 * 2 * 2, 4))))  # 12 -> 10 -> 4 -> 2


def _doubled_by_a_pre_hook():
    # a hook of the user's runs before the walker's own (registered earlier): no layer runs
    model = nn.Flatten()
    model.register_forward_pre_hook(lambda m, inputs: (inputs[0] * 2,))
    return model


# (id, model, input shape, the layer named, its field's size): the layer whose output is the
# last spatial map, by qualified name, whatever runs after it
RF_LAYERS = [
    ("conv_relu_flatten_linear", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 5)),
     (1, 1, 8, 8), "1", (3, 3)),
    ("conv_flatten_linear", lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 5), nn.ReLU()),
     (1, 1, 8, 8), "0", (3, 3)),
    # conv3: 3; conv3 s2: 3 + 2 = 5, jump 2; max-pool 2 at jump 2: 5 + 1*2 = 7
    ("nested_features", _features_then_head, (1, 1, 12, 12), "features.3", (7, 7)),
    # the classifier's functional relu and pooling run in the top-level forward
    ("functional_ops_of_the_model", MnistCNN, (1, 1, 28, 28), "(model)", (16, 16)),
    ("cat_of_the_model", InceptionI, (1, 256, 8, 8), "(model)", (5, 5)),
    ("cat_of_a_child", lambda: nn.Sequential(InceptionI(), nn.Flatten()), (1, 256, 8, 8),
     "0", (5, 5)),
    ("nothing_spatial", lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), (1, 1, 8, 8),
     "(input)", (1, 1)),
    ("op_before_any_layer", _doubled_by_a_pre_hook, (1, 1, 8, 8), "(model)", (1, 1)),
]


@pytest.mark.parametrize("make,shape,layer,size", [c[1:] for c in RF_LAYERS],
                         ids=[c[0] for c in RF_LAYERS])
def test_receptive_field_names_the_layer_of_the_last_spatial_map(make, shape, layer, size):
    rf = C.receptive_field(make(), shape)
    assert (rf.layer, rf.size) == (layer, size)


def test_receptive_field_compares_with_its_layer_and_defaults_it_when_built_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
    by_hand = C.ReceptiveField(size=(3, 3), jump=(1, 1), start=(1.5, 1.5))
    assert by_hand.layer == ""
    rf = C.receptive_field(model, (1, 1, 8, 8))
    assert rf == C.ReceptiveField(size=(3, 3), jump=(1, 1), start=(1.5, 1.5), layer="1")
    assert rf != by_hand  # a field of the output of layer '1', not of no layer named


# --- dtypes --------------------------------------------------------------------------------


def _classifier():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))


# conv 3 -> 4 k3 on 8 x 8 (6 x 6 out, ReLU after), linear 144 -> 5: in every dtype
CLASSIFIER_COUNTS = (C.conv2d_counts(3, 4, 3, (6, 6), nonlinearity=True)
                     + C.linear_counts(144, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_module_in_another_dtype_is_walked_in_it(dtype):
    model = _classifier().to(dtype)
    assert C.count_model(model, (1, 3, 8, 8), dtype=dtype).total == CLASSIFIER_COUNTS
    assert C.count_model(model, (1, 3, 8, 8)).total == CLASSIFIER_COUNTS  # by default too
    both = C.count_model(model, (1, 3, 8, 8), dtype=dtype, backward=True)
    assert both.forward == CLASSIFIER_COUNTS
    assert both.backward == C.count_model(_classifier(), (1, 3, 8, 8), backward=True).backward
    # the receptive field takes the module's dtype itself
    rf = C.receptive_field(model, (1, 3, 8, 8))
    assert (rf.size, rf.layer) == ((3, 3), "1")


def test_integer_buffers_do_not_count_as_a_dtype():
    # batch norm's num_batches_tracked stays int64 in a model.half()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval().half()
    assert model[1].num_batches_tracked.dtype == torch.int64
    report = C.count_model(model, (1, 1, 8, 8), dtype=torch.float16)
    assert report.total.params == 2 * 9 + 2 + 2 * 2
    assert C.receptive_field(model, (1, 1, 8, 8)).size == (3, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_a_module_without_parameters_takes_any_dtype(dtype):
    model = nn.Sequential(nn.MaxPool2d(2), nn.ReLU())
    report = C.count_model(model, (1, 3, 8, 8), dtype=dtype)
    assert report.total == C.pool2d_counts(3, 2, (4, 4)) + C.activation_counts(3 * 4 * 4)
    assert C.receptive_field(model, (1, 3, 8, 8)).size == (2, 2)


def _half_conv_float_norm():
    # deliberately mixed: a half convolution before a float32 batch norm
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    model[0].half()
    return model


def test_a_module_of_mixed_dtypes_walks_in_its_input_dtype():
    # float32 norms after half layers (as mixed precision keeps them): counted as it runs
    model = _half_conv_float_norm()
    reference = C.count_model(copy.deepcopy(model).float(), (1, 3, 8, 8))
    assert C.count_model(model, (1, 3, 8, 8), dtype=torch.float16).total == reference.total
    assert C.count_model(model, (1, 3, 8, 8)).total == reference.total  # its first dtype
    assert C.count_model(model, (1, 3, 8, 8), dtype=torch.float16,
                         backward=True).total == C.count_model(
        copy.deepcopy(model).float(), (1, 3, 8, 8), backward=True).total
    assert C.receptive_field(model, (1, 3, 8, 8)).size == (3, 3)  # the first parameter's dtype


MIXED = (r"torch.float16 \(0.weight, 0.bias\) and torch.float32 \(1.weight, 1.bias, "
         r"1.running_mean and 1 more\)")


def test_a_module_of_mixed_dtypes_names_each_where_it_does_not_run():
    # a dtype none of its parameters has: named up front
    with pytest.raises(TypeError, match=r"^dtype: got torch.float64, but the module's floating "
                       r"parameters and buffers are " + MIXED + "; pass the dtype its input"):
        C.count_model(_half_conv_float_norm(), (1, 3, 8, 8), dtype=torch.float64)
    # float32 is one of them, but not the first layer's: torch's mismatch, with the likelier
    # cause said
    with pytest.raises(ValueError, match=r"^input_shape: \(1, 3, 8, 8\) does not fit layer '0'"
                       r".*\(the module mixes floating dtypes, " + MIXED + ": cast a copy"):
        C.count_model(_half_conv_float_norm(), (1, 3, 8, 8), dtype=torch.float32)


# --- bad input -----------------------------------------------------------------------------

BAD = [
    ("wrong channels", lambda: C.count_model(MnistCNN(), (1, 3, 28, 28)), ValueError,
     r"layer 'conv1' \(Conv2d\) expects 1 input channels, got 3"),
    ("wrong rank", lambda: C.count_model(MnistCNN(), (28, 28)), ValueError,
     r"layer 'conv1' \(Conv2d\) expects \(N, C, H, W\) input, got shape \(28, 28\)"),
    ("linear mismatch", lambda: C.count_model(nn.Linear(5, 2), (3, 4)), ValueError,
     r"expects 5 input features, got 4"),
    ("too small", lambda: C.count_model(alexnet_28(), (1, 1, 8, 8)), ValueError,
     r"input_shape: \(1, 1, 8, 8\) does not fit layer"),
    ("not a module", lambda: C.count_model(lambda x: x, (1, 2)), TypeError,
     r"module: expected a torch.nn.Module, got function"),
    ("bad shape", lambda: C.count_model(nn.ReLU(), (1, 0)), ValueError,
     r"input_shape: expected a sequence of positive ints"),
    # the dtype is named up front, not blamed on the input shape by the first layer
    ("dtype of a half model", lambda: C.count_model(_classifier().half(), (1, 3, 8, 8),
                                                    dtype=torch.float32), TypeError,
     r"^dtype: got torch.float32, but the module's floating parameters and buffers "
     r"are torch.float16; pass dtype=torch.float16"),
    ("dtype of a double model", lambda: C.count_model(
        MnistCNN().double(), (1, 1, 28, 28), dtype=torch.float16, backward=True), TypeError,
     r"^dtype: got torch.float16, .* are torch.float64; pass dtype=torch.float64"),
    ("groups", lambda: C.conv2d_counts(6, 4, 3, (5, 5), groups=4), ValueError,
     r"groups: 4 must divide c_in=6 and c_out=4"),
    ("kernel type", lambda: C.conv2d_counts(6, 4, "3", (5, 5)), TypeError,
     r"kernel_size: expected an int or a pair of ints"),
]


@pytest.mark.parametrize("call,error,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gives_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_an_embedding_lookup_costs_nothing_either_way():
    """A lookup gathers rows: 0 multiply-adds forward, and backward its gradient rows are
    routed to their indices (repeated indices add: data-dependent, not counted, as
    max-pooling's); neither pass lists it as uncounted. max_norm renormalises rows: that is
    arithmetic, still listed."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    both = C.count_model(model, (2, 5), dtype=torch.long, backward=True)
    # the linear layer's input depends on the table: its grad_input is made, as for an input
    # that requires grad
    linear = C.count_model(nn.Linear(4, 3), (2, 5, 4), backward=True, input_requires_grad=True)
    assert not both.uncounted and not both.uncounted_backward, both.summary()
    assert both.backward == linear.backward  # the table's gradient: routed, free
    assert both.forward == linear.forward + C.Counts(params=10 * 4)
    assert "uncounted" not in both.summary()
    renorm = C.count_model(nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)), (2, 5),
                           dtype=torch.long)
    assert renorm.uncounted == {"embedding_renorm_": 1}


def test_a_model_taking_token_indices_is_counted_with_an_integer_dtype():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    for index_dtype in (torch.long, torch.int32):
        counts = C.count_model(model, (2, 5), dtype=index_dtype)
        assert counts.total.params == 10 * 4 + 4 * 3 + 3  # the table and the linear layer
        assert counts.total.mults == 2 * 5 * 4 * 3  # each of 10 tokens' 4 features, 3 outputs
        # the lookup does no arithmetic: counted as zero, with the table, not as uncounted
        assert not counts.uncounted, counts.uncounted
        (lookup,) = [r for r in counts.rows if r.type == "Embedding"]
        assert lookup.op == "embedding" and lookup.counts == C.Counts(params=10 * 4)
    with pytest.raises(ValueError) as err:  # a floating input, the default: named, with how
        C.count_model(model, (2, 5))
    assert str(err.value).endswith("the model takes integer indices (an Embedding): pass "
                                   "dtype=torch.long")
    with pytest.raises(TypeError, match="dtype"):  # other integer dtypes are not indices
        C.count_model(model, (2, 5), dtype=torch.uint8)
