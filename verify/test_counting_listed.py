"""count_model on ops that were listed as uncounted and have a formula with a clear
convention (docs/kernels.md, "The backward pass"), each against a count made by hand from
the op's definition, never read from the walker: RMSNorm (x ** 2, mean, rsqrt), float
comparisons, masked_fill with a tensor value that needs a gradient, nearest up- and
downsampling both ways. And those left listed, by name: bilinear interpolation, another
exponent than 2, a norm's backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from handgrad.kernels import counting as C

B, L, E = 2, 5, 8


def linear_back(rows: int, i: int, o: int, input_grad: bool):
    """(mults, adds) of a biased linear layer's backward on ``rows`` rows, by hand."""
    mults = rows * i * o * (2 if input_grad else 1)
    adds = i * o * (rows - 1) + o * (rows - 1) + (rows * i * (o - 1) if input_grad else 0)
    return mults, adds


def test_rms_norm_both_passes():
    """nn.RMSNorm(E) after a linear layer, on N = B*L rows of E: y = x * rsqrt(mean(x ** 2)
    + eps) * w. Forward: x ** 2 (NE mults), the mean (N(E - 1) adds, N divides), + eps (N
    adds), rsqrt (N evaluations), two scalings (2NE mults)."""
    model = nn.Sequential(nn.Linear(E, E), nn.RMSNorm(E))
    report = C.count_model(model, (B, L, E), backward=True)
    n, ne = B * L, B * L * E
    lin = C.Counts(params=E * E + E, mults=ne * E, adds=ne * E, macs=ne * E)
    assert report.forward == lin + C.Counts(params=E, mults=3 * ne + n, adds=n * (E - 1) + n,
                                           activations=n)
    assert report.uncounted == {} and report.uncounted_backward == {}
    # backward, output side first: (x r) * w: g w and g (x r) (2NE mults), w's summed over
    # the N rows (NE - E adds); x * r: g r and g x (2NE mults), r's summed over E (NE - N
    # adds); rsqrt: N derivatives and N products; + eps: passes; the mean: 1/E times each
    # of NE values (NE mults); x ** 2: 2 x g (2NE mults); x, read by x ** 2 and x * r,
    # gets two gradients (NE adds); the linear layer's weight and bias
    lm, la = linear_back(n, E, E, input_grad=False)
    assert report.backward == C.Counts(mults=2 * ne + 2 * ne + n + ne + 2 * ne + lm,
                                       adds=(ne - E) + (ne - n) + ne + la,
                                       activations=n, macs=n * E * E)


class Compares(nn.Module):
    """h > 0 on floats (B*E compares); an index mask compared as integers (bookkeeping);
    an in-place comparison of a float value that needs a gradient (zero gradient)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)

    def forward(self, x):
        h = self.fc(x)
        keep = torch.zeros(E, dtype=torch.long, device=x.device).ne(3)  # integers: zero
        step = h.clone().ge_(1.0)  # floating 0./1., its gradient zero
        return torch.where(h > 0, h, 0) * keep + step


def test_float_comparisons_count_compares():
    report = C.count_model(Compares(), (B, E), backward=True)
    assert report.forward.compares == B * E + B * E  # h > 0 and the in-place ge_
    assert report.uncounted == {} and report.uncounted_backward == {}
    # where's h: routed (free); * keep: g * keep (B*E mults); + step: passes, and step's
    # ge_ sends nothing back (zero); h gets where's and clone's: clone's is zero, but
    # autograd still adds it (B*E adds); the linear layer's weight and bias
    m, a = linear_back(B, E, E, input_grad=False)
    assert report.backward == C.Counts(mults=B * E + m, adds=B * E + a, macs=B * E * E)


class FillValue(nn.Module):
    """h.masked_fill(h > 0, v), v a learned 0-d value: v's gradient sums g where masked."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)
        self.v = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        h = self.fc(x)
        return h.masked_fill(h > 0, self.v)


class AtenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = args[0] if args else None
        self.ops.append((func.overloadpacket.__name__,
                         tuple(first.shape) if isinstance(first, torch.Tensor) else None))
        return out


def test_masked_fill_with_a_value_that_needs_a_gradient():
    """Before: masked_fill was free both ways, so v's gradient counted 0 adds, silently."""
    report = C.count_model(FillValue(), (B, E), backward=True)
    m, a = linear_back(B, E, E, input_grad=False)
    # v: where(mask, g, 0).sum() over all B*E values, whatever the mask: B*E - 1 adds
    assert report.backward == C.Counts(mults=m, adds=B * E - 1 + a, macs=B * E * E)
    assert [r.op for r in report.rows if r.op.startswith("masked_fill.")] == [
        "masked_fill.grad_value"]
    # the convention's premise, in torch: v's gradient sums a full (B, E) tensor
    model = FillValue()
    out = model(torch.randn(B, E))
    with AtenOps() as seen:
        out.sum().backward()
    assert ("where", (B, E)) in seen.ops and ("sum", (B, E)) in seen.ops


@pytest.mark.parametrize("shape, kwargs", [
    ((1, 1, 4, 4), {"scale_factor": 2}),
    ((1, 1, 8, 6), {"size": (4, 3)}),
], ids=["up-by-2", "down-by-2"])
def test_nearest_by_two_by_hand(shape, kwargs):
    """By 2 up: each input copied to 4 outputs, whose gradients it sums (3 adds each);
    by 2 down: each output copies a different input, nothing to add."""
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return F.interpolate(self.conv(x), mode="nearest", **kwargs)

    report = C.count_model(Up(), shape, backward=True)
    n_in = 2 * shape[2] * shape[3]
    assert report.uncounted == {} and report.uncounted_backward == {}
    rows = [r for r in report.rows if r.op.startswith("upsample_nearest2d")]
    assert [r.counts for r in rows if r.pass_ == "forward"] == [C.Counts()]
    back = [r.counts for r in rows if r.pass_ == "backward"]
    assert back == [C.Counts(adds=3 * n_in if "scale_factor" in kwargs else 0)]


@pytest.mark.parametrize("mode, shape, kwargs", [
    ("nearest", (1, 2, 5), {"size": 7}),
    ("nearest", (1, 2, 7), {"size": 5}),
    ("nearest", (1, 2, 5, 7), {"scale_factor": 1.5}),
    ("nearest-exact", (1, 2, 5, 7), {"scale_factor": 1.5}),
    ("nearest-exact", (1, 2, 6, 4), {"size": (4, 9)}),
    ("nearest", (1, 1, 3, 4, 5), {"size": (5, 3, 8)}),
    ("nearest", (1, 1, 3, 4, 5), {"scale_factor": (2.5, 0.5, 1.0)}),
    ("nearest", (1, 2, 10), {"scale_factor": 1.05}),
    ("nearest-exact", (1, 2, 12), {"scale_factor": 1.05}),
    ("nearest-exact", (1, 2, 2), {"scale_factor": 1.03}),
], ids=["1d-5to7", "1d-7to5", "2d-x1.5", "2d-exact-x1.5", "2d-exact-mixed", "3d-size",
        "3d-scales", "same-size-x1.05", "exact-same-size-x1.05", "exact-2-x1.03"])
def test_nearest_uneven_against_torch(mode, shape, kwargs):
    """Uneven ratios: an input is copied 0, 1 or 2 times. The adds, numel(out) less the
    inputs reached, against torch: the gradient of a sum of the outputs is, at each input,
    how many outputs copied it. A scale of 1.05 that keeps the size: nearest copies
    straight (aten's shortcut), nearest-exact skips an input (it has none), and reaches
    both of 2 at 1.03 where floor(i * s) without its half-step offset would reach one."""
    x = torch.zeros(shape, requires_grad=True)
    out = F.interpolate(x, mode=mode, **kwargs)
    out.sum().backward()
    expected = out.numel() - int((x.grad > 0).sum())

    class Interp(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return F.interpolate(x * self.w, mode=mode, **kwargs)

    report = C.count_model(Interp(), shape, backward=True)
    back = [r.counts for r in report.rows
            if r.pass_ == "backward" and "upsample_nearest" in r.op]
    assert back == [C.Counts(adds=expected)]
    assert report.uncounted == {} and report.uncounted_backward == {}


class Listed(nn.Module):
    """Ops left without a formula: bilinear interpolation, x ** 3, a layer norm's
    backward (through its statistics)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.norm = nn.LayerNorm([2, 6, 6])

    def forward(self, x):
        h = F.interpolate(self.conv(x), size=(6, 6), mode="bilinear")
        return self.norm(h ** 3)


def test_what_stays_listed():
    report = C.count_model(Listed(), (1, 1, 4, 4), backward=True)
    assert report.uncounted == {"upsample_bilinear2d": 1, "pow": 1,
                                "native_layer_norm (statistics)": 1}
    assert report.uncounted_backward == {"upsample_bilinear2d": 1, "pow": 1,
                                         "native_layer_norm": 1}
