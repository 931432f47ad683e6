"""The backward pass counted by formula (count_model(..., backward=True)) against
FlopCounterMode on an executed forward and backward pass, against what autograd's own
gradients reveal about their sums, and against the per-layer formulas on the worked cases.

What is compared with FlopCounterMode: the FLOPs it counts while ``loss.backward()`` runs
(convolution_backward and the matrix products of the linear layers' backward; 2 per
multiply-accumulate, no adds, nothing element-wise) against 2 x the ``macs`` of our
backward rows. Adds, activation derivatives and the bias gradients are ours alone, and
checked against the formulas and against autograd's gradients of all-ones tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from handgrad.kernels import counting as C
from handgrad.kernels import counting_backward as CB
from verify.counting_cases import CONVS, WORKED, n_params
from verify.models import MnistCNN


def backward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's FLOPs of the backward pass alone, on an executed model."""
    out = model(x)
    with FlopCounterMode(display=False) as fc:
        out.sum().backward()  # d(sum)/d(out) = ones: an expand, which counts nothing
    return fc.get_total_flops()


def total(grads: dict[str, C.Counts]) -> C.Counts:
    return sum(grads.values(), C.Counts())


@pytest.mark.parametrize("input_grad", [True, False], ids=["with_dx", "without_dx"])
@pytest.mark.parametrize("c_in,c_out,k,stride,padding,dilation,groups,bias", CONVS,
                         ids=["plain", "no_bias", "strided", "dilated", "grouped", "depthwise",
                              "pointwise", "rectangular"])
def test_conv2d_backward_formula_against_autograd(c_in, c_out, k, stride, padding, dilation,
                                                  groups, bias, input_grad):
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias)
    x = torch.randn(2, c_in, 13, 17, requires_grad=input_grad)
    grads = CB.conv2d_backward_counts(c_in, c_out, k, (13, 17), stride=stride, padding=padding,
                                      dilation=dilation, groups=groups, bias=bias,
                                      input_grad=input_grad, batch=2)
    # FlopCounterMode (torch 2.13, conv_backward_flop) counts grad_weight as a convolution
    # of x with grad_out and leaves its groups argument unused: for groups g > 1 it counts
    # g times the products there are (each weight gradient sums N H_out W_out products, see
    # the all-ones check below). Its grad_input figure is right.
    fc = 2 * (grads["grad_input"].macs + groups * grads["grad_weight"].macs)
    assert fc == backward_flops(conv, x)
    walked = C.count_model(conv, (2, c_in, 13, 17), backward=True,
                           input_requires_grad=input_grad)
    assert walked.backward == total(grads)
    assert walked.total == walked.forward + walked.backward
    # autograd, with every weight and every output gradient 1: dJ/dx_j is the number of
    # products summed into it, so its sum is the products that land inside the input (the
    # multiplies, less those with padding, which FlopCounterMode counts and we too) and its
    # nonzero count the input values that get a sum (a sum of n products costs n - 1 adds)
    conv.zero_grad(set_to_none=True)  # backward_flops left its gradients behind
    with torch.no_grad():
        conv.weight.fill_(1.0)
    xx = torch.ones(2, c_in, 13, 17, requires_grad=True)
    conv(xx).sum().backward()
    dx = xx.grad
    if input_grad:
        gi = grads["grad_input"]
        assert gi.adds == int(dx.sum()) - int((dx > 0).sum())
        assert gi.mults >= int(dx.sum()) and (gi.mults == int(dx.sum())) == (padding == 0)
    else:
        assert grads["grad_input"] == C.Counts()
    # dJ/db_c sums the output gradient over batch and positions: N H_out W_out terms
    if bias:
        assert grads["grad_bias"].adds == int(conv.bias.grad.sum()) - c_out
    else:
        assert grads["grad_bias"] == C.Counts()
    # every weight gradient sums one product per output position of its channel: with
    # x = 1 and no padding dJ/dW_k = N H_out W_out, so the grad_weight multiplies are the
    # forward MACs (padding's products are made too, as zeros)
    gw = grads["grad_weight"]
    assert gw.mults == conv.weight.numel() * conv(xx).shape[0] * conv(xx)[0, 0].numel()
    if padding == 0:
        assert int(conv.weight.grad.sum()) == gw.mults
    assert gw.adds == gw.mults - conv.weight.numel()


def test_linear_backward_formula_against_autograd():
    lin = nn.Linear(7, 5)
    x = torch.ones(3, 7, requires_grad=True)
    grads = CB.linear_backward_counts(7, 5, batch=3)
    assert 2 * total(grads).macs == backward_flops(lin, x)
    assert grads["grad_input"] == C.Counts(mults=3 * 7 * 5, adds=3 * 7 * 4, macs=3 * 7 * 5)
    assert grads["grad_weight"] == C.Counts(mults=3 * 7 * 5, adds=7 * 5 * 2, macs=3 * 7 * 5)
    assert grads["grad_bias"] == C.Counts(adds=5 * 2)
    walked = C.count_model(lin, (3, 7), backward=True, input_requires_grad=True)
    assert walked.backward == total(grads)
    frozen = CB.linear_backward_counts(7, 5, weight_grad=False, bias_grad=False, batch=3)
    assert total(frozen) == grads["grad_input"]


@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (2, 1, 1), (2, 1, 2)],
                         ids=["plain", "strided_padded", "grouped"])
def test_transposed_conv_backward_against_autograd(stride, padding, groups):
    conv = nn.ConvTranspose2d(4, 6, 3, stride, padding, groups=groups)
    walked = C.count_model(conv, (2, 4, 5, 5), backward=True, input_requires_grad=True)
    back = walked.to_frame().query("`pass` == 'backward'").set_index("op")
    gi, gw = back.loc["convolution.grad_input"], back.loc["convolution.grad_weight"]
    macs = 2 * 4 * 5 * 5 * (6 // groups) * 9  # every input value times C_out/g * k^2 taps
    assert gi["mults"] == gw["mults"] == macs
    if groups == 1:  # FlopCounterMode ignores groups in grad_weight (see above)
        x = torch.randn(2, 4, 5, 5, requires_grad=True)
        assert backward_flops(conv, x) == 2 * walked.backward.macs
    # autograd, weights and output gradient 1: dJ/dx_j counts the taps of x_j that land
    # inside the cropped output
    conv.zero_grad(set_to_none=True)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    xx = torch.ones(2, 4, 5, 5, requires_grad=True)
    conv(xx).sum().backward()
    assert gi["adds"] == int(xx.grad.sum()) - int((xx.grad > 0).sum())
    assert gw["adds"] == macs - conv.weight.numel()


# --- the worked cases --------------------------------------------------------------------

def RELU(n: int) -> C.Counts:
    """rho'(z) and its product with the incoming gradient, per element."""
    return C.Counts(mults=n, activations=n)


def conv_b(c_in, c_out, k, hw, *, first=False, padding=None):
    """A conv's backward by formula; ``first``: fed by the data (no grad_input)."""
    p = k // 2 if padding is None else padding
    return total(CB.conv2d_backward_counts(c_in, c_out, k, hw, padding=p,
                                           input_grad=not first))


def inception_i_backward():
    # every branch reads the data: weight and bias gradients only
    return (conv_b(256, 124, 1, 32, first=True) + conv_b(256, 192, 3, 32, first=True)
            + conv_b(256, 96, 5, 32, first=True) + RELU(1024 * (124 + 192 + 96)))


def inception_ii_backward():
    return (conv_b(256, 124, 1, 32, first=True) + conv_b(256, 64, 1, 32, first=True)
            + conv_b(256, 64, 1, 32, first=True) + conv_b(256, 64, 1, 32, first=True)
            + conv_b(64, 192, 3, 32) + conv_b(64, 96, 5, 32)
            + RELU(1024 * (124 + 64 * 3 + 192 + 96)))


def mnist_backward():
    lin = lambda i, o: total(CB.linear_backward_counts(i, o))  # noqa: E731
    return (conv_b(1, 10, 5, 28, first=True, padding=0) + RELU(10 * 144)
            + conv_b(10, 20, 5, 12, padding=0) + RELU(20 * 16)
            + lin(320, 50) + RELU(50) + lin(50, 10))


def alexnet_backward():
    lin = lambda i, o: total(CB.linear_backward_counts(i, o))  # noqa: E731
    return (conv_b(1, 96, 4, 28, first=True, padding=0) + RELU(96 * 625)
            + conv_b(96, 96, 3, 25, padding=0) + RELU(96 * 529)
            + conv_b(96, 256, 5, 23, padding=2) + RELU(256 * 529)
            + conv_b(256, 384, 3, 11) + RELU(384 * 121)
            + conv_b(384, 384, 3, 11) + RELU(384 * 121)
            + conv_b(384, 256, 3, 11) + RELU(256 * 121)
            + lin(6400, 800) + RELU(800) + lin(800, 10))


BACKWARD = {
    "inception_model_I_32x32x256": inception_i_backward,
    "inception_model_II_32x32x256": inception_ii_backward,
    "mnist_cnn": mnist_backward,
    "alexnet_style_28x28": alexnet_backward,
}


@pytest.mark.parametrize("name", list(WORKED))
def test_worked_case_backward_by_formula_and_flop_counter(name):
    make, shape, forward = WORKED[name]
    model = make()
    report = C.count_model(model, shape, backward=True)
    assert report.backward == BACKWARD[name]()
    assert report.forward == forward() and report.total == forward() + BACKWARD[name]()
    assert report.total.params == n_params(model) and report.backward.params == 0
    assert not report.uncounted and not report.uncounted_backward
    # executed forward and backward: FlopCounterMode's backward FLOPs are 2 x our MACs
    assert backward_flops(model, torch.randn(shape)) == 2 * report.backward.macs
    # the input layer needs no input gradient, so the backward is under 2 x forward
    assert report.backward.macs < 2 * report.forward.macs


def test_frozen_layers_need_fewer_gradients():
    model = MnistCNN()
    model.conv1.requires_grad_(False)  # conv1 frozen: nothing before conv2 needs a gradient
    model.fc1.bias.requires_grad_(False)
    model.fc2.weight.requires_grad_(False)
    report = C.count_model(model, (2, 1, 28, 28), backward=True)
    lin = CB.linear_backward_counts
    conv2 = CB.conv2d_backward_counts(10, 20, 5, (12, 12), input_grad=False, batch=2)
    expected = (total(conv2) + RELU(2 * 20 * 16) + total(lin(320, 50, bias_grad=False, batch=2))
                + RELU(2 * 50) + total(lin(50, 10, weight_grad=False, batch=2)))
    assert report.backward == expected
    assert backward_flops(model, torch.randn(2, 1, 28, 28)) == 2 * report.backward.macs
    ops = set(report.to_frame().query("`pass` == 'backward'")["op"] + "@"
              + report.to_frame().query("`pass` == 'backward'")["layer"])
    assert not any(o.endswith("@conv1") for o in ops)
    assert "convolution.grad_input@conv2" not in ops and "addmm.grad_weight@fc1" in ops
    assert "addmm.grad_bias@fc1" not in ops and "addmm.grad_weight@fc2" not in ops
    assert "addmm.grad_bias@fc2" in ops


def test_frame_has_a_pass_column_and_backward_rows_run_from_the_output():
    report = C.count_model(MnistCNN(), (2, 1, 28, 28), backward=True)
    frame = report.to_frame()
    assert list(frame.columns[:4]) == ["pass", "layer", "type", "op"]
    back = frame[frame["pass"] == "backward"]
    assert back["layer"].iloc[0] == "fc2" and back["layer"].iloc[-1] == "conv1"
    assert set(back["op"]) >= {"convolution.grad_weight", "convolution.grad_bias",
                               "convolution.grad_input", "addmm.grad_input",
                               "addmm.grad_weight", "addmm.grad_bias", "relu.grad_input"}
    sums = back[["mults", "adds", "activations", "macs"]].sum()
    b = report.backward
    assert (sums["mults"], sums["adds"], sums["activations"], sums["macs"]) == (
        b.mults, b.adds, b.activations, b.macs)
    assert "of which the backward pass: mults" in report.summary()
    # forward only: no backward rows and an all-zero backward
    plain = C.count_model(MnistCNN(), (2, 1, 28, 28))
    assert plain.backward == C.Counts() and set(plain.to_frame()["pass"]) == {"forward"}
    assert plain.total == report.forward


def test_ops_without_a_backward_formula_are_listed():
    class Cube(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return torch.pow(x * self.w, 3)

    report = C.count_model(Cube(), (2, 3), backward=True)
    assert report.uncounted_backward == {"pow": 1}
    assert "uncounted backward ops (no formula): pow x1" in report.summary()


class Affine(nn.Module):
    """mean(x * w + b) with w, b (3,) broadcast over a (2, 3) input."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.b = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return (x * self.w + self.b).mean()


def test_elementwise_backward_by_hand():
    report = C.count_model(Affine(), (2, 3), backward=True)
    frame = report.to_frame(include_free=True)
    back = frame[frame["pass"] == "backward"].set_index("op")
    # mean: the gradient 1/6 spread over 6 values, one multiply each
    assert back.loc["mean.grad_input", "mults"] == 6
    # add: passes the gradient on; b, broadcast over 2 rows, sums it back: 6 - 3 adds
    assert sorted(back.loc["add.grad_input", "adds"]) == [0, 3]
    # mul by w: the gradient times x (6 multiplies), summed back over the rows (3 adds);
    # x is data, so no gradient for it
    assert back.loc["mul.grad_input", ["mults", "adds"]].tolist() == [6, 3]
    assert report.backward == C.Counts(mults=12, adds=6)


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 0), (2, 2, 0), (2, 3, 0), (3, 2, 1)],
                         ids=["overlapping", "tiling", "gapped", "padded"])
def test_avg_pool_backward_against_autograd(k, stride, padding):
    pool = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(k, stride, padding))
    report = C.count_model(pool, (1, 1, 7, 7), backward=True)
    back = report.to_frame().query("`pass` == 'backward' and op == 'avg_pool2d.grad_input'")
    # autograd with an output gradient of k^2: each input value gets one 1 per window
    # tap that reaches it, so the sum is the taps inside, the nonzero count those reached
    x = torch.ones(1, 2, 7, 7, requires_grad=True)
    out = nn.AvgPool2d(k, stride, padding)(x)
    out.backward(torch.full_like(out, float(k * k)))
    taps, reached = int(x.grad.sum()), int((x.grad > 0).sum())
    assert back["mults"].item() == out.numel()
    assert back["adds"].item() == taps - reached


BAD = [
    ("backward type", lambda: C.count_model(nn.Linear(2, 2), (1, 2), backward="yes"),
     TypeError, r"backward: expected True or False, got 'yes'"),
    ("bias absent", lambda: CB.linear_backward_counts(3, 2, bias=False, bias_grad=True),
     ValueError, r"bias_grad: True asks for the gradient of a bias the layer lacks"),
    ("conv bias absent", lambda: CB.conv2d_backward_counts(3, 2, 3, (5, 5), bias=False,
                                                           bias_grad=True),
     ValueError, r"bias_grad: True asks for the gradient of a bias the layer lacks"),
    ("pass name", lambda: C.count_model(nn.Linear(2, 2), (1, 2)).of_pass("both"),
     ValueError, r"name: expected 'forward' or 'backward', got 'both'"),
    ("input_grad type", lambda: CB.conv2d_backward_counts(3, 2, 3, (5, 5), input_grad=1),
     TypeError, r"input_grad: expected True or False, got 1"),
    ("too small", lambda: CB.conv2d_backward_counts(3, 2, 5, (3, 3)), ValueError,
     r"in_hw: \(3, 3\) is too small for kernel 5x5"),
]


@pytest.mark.parametrize("call,error,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gives_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


class Zoo(nn.Module):
    """One op of every kind of the op table, each on a value that needs a gradient."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)        # conv
        self.bn = nn.BatchNorm2d(2).eval()               # norm (running statistics)
        self.pool = nn.MaxPool2d(2)                      # max_pool
        self.avg = nn.AvgPool2d(2)                       # avg_pool
        self.lin = nn.Linear(8, 4)                       # addmm
        self.w = nn.Parameter(torch.ones(4))
        self.m = nn.Parameter(torch.ones(1, 4, 3))

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)))            # activation
        h = self.avg(self.pool(h)).flatten(1)            # free
        h = (self.lin(h) * self.w + 1) / 2               # mul, add, div
        h = torch.log_softmax(torch.softmax(h, -1), -1)  # softmax, log_softmax
        h = torch.bmm(h.unsqueeze(0), self.m)            # mm
        u = F.interpolate(h, scale_factor=2)             # upsample_nearest
        s = (h ** 2).mean() + torch.where(h > 0, h, 0).mean()  # pow, compare
        return u.mean() + h.argmax() + s                 # reduce, arg_reduce


def test_one_table_decides_both_passes_for_every_kind():
    """Every kind of kernels.counting_ops.OPS is counted forward, and backward either by a
    formula or, for a kind in NO_BACKWARD, listed as uncounted: never silently zero."""
    from handgrad.kernels.counting_ops import NO_BACKWARD, OPS

    report = C.count_model(Zoo(), (2, 1, 8, 8), backward=True)
    seen = {OPS.get(r.op.split(".")[0]) for r in report.rows if r.pass_ == "forward"}
    assert seen == set(OPS.values()), set(OPS.values()) - seen
    assert report.uncounted == {}
    kinds = {OPS[op] for op in report.uncounted_backward}
    assert kinds == set(NO_BACKWARD), report.uncounted_backward


@pytest.mark.parametrize("pool, shape", [
    (nn.AvgPool3d(2, 2), (1, 1, 4, 5, 6)),
    (nn.AvgPool3d(3, 2, 1), (1, 1, 5, 5, 5)),
    (nn.AvgPool1d(3, 2, 1), (1, 1, 9)),
    (nn.MaxPool3d(2), (1, 1, 4, 4, 4)),
    (nn.MaxPool1d(2), (1, 1, 8)),
], ids=["avg3d-tiling", "avg3d-padded", "avg1d-padded", "max3d", "max1d"])
def test_pools_of_every_rank_have_a_backward(pool, shape):
    """The forward counts 1-, 2- and 3-D pools; so does the backward (an average pool's
    spread against autograd, a max pool's routing free)."""
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[len(shape)](1, 2, 1)
    report = C.count_model(nn.Sequential(conv, pool), shape, backward=True)
    assert report.uncounted_backward == {}
    back = report.to_frame(include_free=True)
    back = back[(back["pass"] == "backward") & back["op"].str.contains("pool")]
    if isinstance(pool, (nn.MaxPool1d, nn.MaxPool3d)):
        assert back[["mults", "adds"]].to_numpy().sum() == 0
        return
    x = torch.ones(1, 2, *shape[2:], requires_grad=True)
    out = pool(x)
    taps = math.prod(pool.kernel_size) if isinstance(pool.kernel_size, tuple) else (
        pool.kernel_size[0] if isinstance(pool.kernel_size, list) else pool.kernel_size
    ) ** (len(shape) - 2)
    out.backward(torch.full_like(out, float(taps)))
    inside, reached = int(x.grad.sum()), int((x.grad > 0).sum())
    assert back["mults"].sum() == out.numel()
    assert back["adds"].sum() == inside - reached
