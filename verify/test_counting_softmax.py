"""Softmax and log-softmax in count_model (not element-wise: each output reads its row of C
values), and integer bookkeeping left out of the arithmetic.

Expected values by hand from the formulas, n values in rows of C: softmax exp(x) / sum exp(x)
is n exps, n - rows adds, n divides (mults); log-softmax x - log(sum exp(x)) n + rows
exps/logs, 2n - rows adds. Backward: softmax y * (g - sum(g * y)) 2n mults, 2n - rows adds;
log-softmax g - exp(y) * sum(g) n exps, n mults, 2n - rows adds. Cross-checked against the
aten ops of torch's own decompositions run on CPU (torch._decomp), counted one op at a time
by the elementary rules; the forward's shift by the row max (exact, the value unchanged) is
left out of both."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch._decomp import decomposition_table
from torch.utils._python_dispatch import TorchDispatchMode

from handgrad.kernels import counting as C

aten = torch.ops.aten


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


SOFTMAX = lambda x, d: torch.softmax(x, d)  # noqa: E731
LOG_SOFTMAX = lambda x, d: torch.log_softmax(x, d)  # noqa: E731
SAFE = lambda x, d: aten._safe_softmax(x, d)  # noqa: E731


def by_hand(kind: str, n: int, rows: int) -> tuple[C.Counts, C.Counts]:
    """(forward, backward) of a softmax of n values in ``rows`` rows, from the formulas."""
    if kind == "log_softmax":
        return (C.Counts(activations=n + rows, adds=2 * n - rows),
                C.Counts(activations=n, mults=n, adds=2 * n - rows))
    return (C.Counts(activations=n, adds=n - rows, mults=n),
            C.Counts(mults=2 * n, adds=2 * n - rows))


CASES = [  # (id, fn, kind, shape, dim, rows)
    ("softmax_last", SOFTMAX, "softmax", (2, 4), -1, 2),
    ("softmax_middle", SOFTMAX, "softmax", (2, 3, 5), 1, 10),   # rows of 3: 2 * 5 of them
    ("softmax_first", SOFTMAX, "softmax", (3, 4), 0, 4),
    # a 0-d value (a free view of the (1,) input): one row of one value
    ("softmax_0d", lambda x, d: torch.softmax(x.view(()), d), "softmax", (1,), 0, 1),
    ("log_softmax_last", LOG_SOFTMAX, "log_softmax", (2, 4), -1, 2),
    ("log_softmax_middle", LOG_SOFTMAX, "log_softmax", (2, 3, 5), 1, 10),
    ("safe_softmax_last", SAFE, "softmax", (2, 4), -1, 2),
    ("safe_softmax_middle", SAFE, "softmax", (2, 3, 5), 1, 10),
]


@pytest.mark.parametrize("fn,kind,shape,dim,rows", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_softmax_by_hand_both_passes(fn, kind, shape, dim, rows):
    report = C.count_model(Fn(lambda x: fn(x, dim)), shape, backward=True,
                           input_requires_grad=True)
    forward, backward = by_hand(kind, math.prod(shape), rows)
    assert report.forward == forward
    assert report.backward == backward
    assert report.uncounted == {} and report.uncounted_backward == {}


def test_softmax_of_no_values_costs_nothing():
    # rows of 0 values (C = 0): no sums, no negative count, no division by zero
    report = C.count_model(Fn(lambda x: torch.softmax(x[:, :0], 1)), (3, 2), backward=True,
                           input_requires_grad=True)
    assert report.total == C.Counts()


class _Log(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append((func.overloadpacket.__name__, args, out))
        return out


def elementary(ops) -> C.Counts:
    """Counts of a log of element-wise and reduction aten ops, by the elementary rules; the
    row max (amax) and the shift by it are left out (see the module docstring)."""
    total, shifts = C.Counts(), set()
    for name, args, out in ops:
        n = out.numel() if isinstance(out, torch.Tensor) else 0
        if name == "amax":
            shifts.add(id(out))
        elif name == "sub" and any(id(a) in shifts for a in args):
            continue
        elif name in ("add", "sub"):
            total += C.Counts(adds=n)
        elif name in ("mul", "div"):
            total += C.Counts(mults=n)
        elif name in ("exp", "log"):
            total += C.Counts(activations=n)
        elif name == "sum":
            total += C.Counts(adds=args[0].numel() - n)
        elif name not in ("clone", "_to_copy", "empty_like", "empty_strided", "copy_",
                          "detach", "alias", "view", "expand"):
            raise AssertionError(f"no elementary rule for {name}")
    return total


@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", [((2, 4), -1), ((2, 3, 5), 1)])
def test_against_torchs_decompositions(kind, shape, dim):
    x = torch.randn(shape, dtype=torch.float64)
    y = getattr(aten, f"_{kind}")(x, dim, False)
    g = torch.randn(shape, dtype=torch.float64)
    fwd, bwd = _Log(), _Log()
    with fwd:
        decomposition_table[getattr(aten, f"_{kind}").default](x, dim, False)
    with bwd:
        decomposition_table[getattr(aten, f"_{kind}_backward_data").default](
            g, y, dim, torch.float64)
    report = C.count_model(Fn(lambda t: getattr(torch, kind)(t, dim)), shape, backward=True,
                           input_requires_grad=True)
    assert report.forward == elementary(fwd.ops)
    assert report.backward == elementary(bwd.ops)


def test_safe_softmax_backward_is_softmaxs():
    """aten's own backward of _safe_softmax on CPU is _softmax_backward_data, softmax's."""
    x = torch.randn(2, 3, 4, requires_grad=True)
    log = _Log()
    with log:
        aten._safe_softmax(x, -1).sum().backward()
    assert "_softmax_backward_data" in [name for name, *_ in log.ops]


def test_attention_softmax_is_counted():
    # scaled_dot_product_attention's math path on meta: _safe_softmax over rows of 6 keys
    attn = Fn(lambda x: nn.functional.scaled_dot_product_attention(x, x, x))
    report = C.count_model(attn, (1, 2, 6, 4), backward=True, input_requires_grad=True)
    assert "_safe_softmax" not in report.uncounted
    rows = report.to_frame()
    soft = rows[rows["op"].str.startswith("_safe_softmax")]
    n = 2 * 6 * 6
    fwd, bwd = by_hand("softmax", n, 2 * 6)
    assert soft[["activations", "adds", "mults"]].to_numpy().tolist() == [
        [fwd.activations, fwd.adds, fwd.mults], [bwd.activations, bwd.adds, bwd.mults]]


# --- integer bookkeeping --------------------------------------------------------------


class Counter(nn.Module):
    """A float model that keeps an int64 step counter, as batch norm's num_batches_tracked."""

    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.steps.add_(1)
        self.steps.mul_(1)
        return x * 2 + 1


def test_integer_ops_are_bookkeeping():
    report = C.count_model(Counter(), (2, 5))
    assert report.total == C.Counts(mults=10, adds=10)  # x * 2 + 1 alone


def test_batch_norm_counts_the_same_in_training_and_eval():
    # num_batches_tracked.add_(1) in training mode is no add
    shape = (2, 3, 4, 5)
    train = C.count_model(nn.BatchNorm2d(3).train(), shape).total
    assert train == C.count_model(nn.BatchNorm2d(3).eval(), shape).total
    assert train == C.Counts(params=6, mults=120, adds=120)


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return h * (h > 0).float()


def test_a_boolean_mask_gets_no_gradient():
    """The mask (h > 0) has no gradient: autograd's backward of h * mask makes one product,
    dJ/dh = g * mask (the aten log of a real CPU backward), none for the mask."""
    torch.manual_seed(0)
    model = Masked()
    log = _Log()
    out = model(torch.randn(2, 4))
    with log:
        out.sum().backward()
    aten_mults = sum(o.numel() for name, _, o in log.ops if name == "mul")
    report = C.count_model(Masked(), (2, 4), backward=True)
    back = report.to_frame()
    back = back[(back["pass"] == "backward") & back["op"].str.startswith("mul")]
    assert back["mults"].sum() == aten_mults == 8
    assert report.uncounted_backward == {}
