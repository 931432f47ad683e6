"""Parameter and operation counts against sum(p.numel()), counts taken by forward hooks
on executed inputs, FlopCounterMode, and the worked cases built from the per-layer formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kernels import counting as C
from verify.models import InceptionI, InceptionII, MnistCNN, alexnet_28


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


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

CONVS = [  # (c_in, c_out, k, stride, padding, dilation, groups, bias)
    (3, 8, 3, 1, 1, 1, 1, True),
    (3, 8, 3, 1, 1, 1, 1, False),
    (8, 16, 5, 2, 2, 1, 1, True),     # strided
    (8, 16, 3, 1, 2, 2, 1, True),     # dilated
    (8, 16, 3, 1, 1, 1, 4, True),     # grouped
    (16, 16, 3, 1, 1, 1, 16, False),  # depthwise
    (16, 32, 1, 1, 0, 1, 1, True),    # pointwise
    (4, 6, (3, 5), (1, 2), (1, 2), 1, 2, True),  # rectangular, grouped
]


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


def conv_relu_counts(c_in, c_out, k, hw=(32, 32), batch=1):
    return C.conv2d_counts(c_in, c_out, k, hw, nonlinearity=True, batch=batch)


def expected_inception_i():
    return conv_relu_counts(256, 124, 1) + conv_relu_counts(256, 192, 3) + conv_relu_counts(
        256, 96, 5)


def expected_inception_ii():
    return (conv_relu_counts(256, 124, 1) + conv_relu_counts(256, 64, 1)
            + conv_relu_counts(64, 192, 3) + conv_relu_counts(256, 64, 1)
            + conv_relu_counts(64, 96, 5) + conv_relu_counts(256, 64, 1))


def expected_mnist(batch=1):
    c1 = C.conv2d_counts(1, 10, 5, (24, 24), batch=batch)
    p1 = C.pool2d_counts(10, 2, (12, 12), batch=batch) + C.activation_counts(batch * 10 * 144)
    c2 = C.conv2d_counts(10, 20, 5, (8, 8), batch=batch)
    p2 = C.pool2d_counts(20, 2, (4, 4), batch=batch) + C.activation_counts(batch * 20 * 16)
    f1 = C.linear_counts(320, 50, nonlinearity=True, batch=batch)
    return c1 + p1 + c2 + p2 + f1 + C.linear_counts(50, 10, batch=batch)


def expected_alexnet():
    return (C.conv2d_counts(1, 96, 4, (25, 25), nonlinearity=True)
            + C.conv2d_counts(96, 96, 3, (23, 23), nonlinearity=True)
            + C.conv2d_counts(96, 256, 5, (23, 23), nonlinearity=True)
            + C.pool2d_counts(256, 3, (11, 11))
            + C.conv2d_counts(256, 384, 3, (11, 11), nonlinearity=True)
            + C.conv2d_counts(384, 384, 3, (11, 11), nonlinearity=True)
            + C.conv2d_counts(384, 256, 3, (11, 11), nonlinearity=True)
            + C.pool2d_counts(256, 3, (5, 5))
            + C.linear_counts(6400, 800, nonlinearity=True) + C.linear_counts(800, 10))


WORKED = {
    "inception_model_I_32x32x256": (InceptionI, (1, 256, 32, 32), expected_inception_i),
    "inception_model_II_32x32x256": (InceptionII, (1, 256, 32, 32), expected_inception_ii),
    "mnist_cnn": (MnistCNN, (1, 1, 28, 28), expected_mnist),
    "alexnet_style_28x28": (alexnet_28, (1, 1, 28, 28), expected_alexnet),
}


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
    assert list(frame.columns) == ["layer", "type", "op", "output_shape", "params", "mults",
                                   "adds", "activations", "compares", "macs"]
    convs = frame[frame["op"] == "convolution"]
    assert list(convs["layer"]) == ["b1.0", "r3.0", "b3.0", "r5.0", "b5.0", "rp.0"]
    row = convs.set_index("layer").loc["b5.0"]
    assert row["params"] == 5 * 5 * 64 * 96 + 96 and row["output_shape"] == (1, 96, 32, 32)
    assert frame["params"].sum() == n_params(InceptionII())


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
    ("groups", lambda: C.conv2d_counts(6, 4, 3, (5, 5), groups=4), ValueError,
     r"groups: 4 must divide c_in=6 and c_out=4"),
    ("kernel type", lambda: C.conv2d_counts(6, 4, "3", (5, 5)), TypeError,
     r"kernel_size: expected an int or a pair of ints"),
]


@pytest.mark.parametrize("call,error,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gives_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
