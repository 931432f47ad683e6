"""Gradient accumulation in count_model(..., backward=True), against the aten ops a real
CPU backward pass runs. Where a value that needs a gradient is used more than once (a
fan-out, a residual, tied weights, a module called twice, an RNN cell's weights at every
step, one op taking it twice), autograd receives one gradient per use and adds them: one
``add`` of the value's numel per use after the first (``op.grad_accumulate`` rows). An
``expand``ed parameter's gradient is summed back to its shape (a ``sum``). An op whose
result never reaches the output gets no gradient and is not run.

The expected numbers are read from the aten log of ``out.sum().backward()`` on CPU
(a TorchDispatchMode); for these models the only aten ``add``s autograd's backward
makes are the accumulations (linear, tanh and mul gradients are mm, sum, tanh_backward
and mul)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from handgrad.kernels import counting as C

N = 4


class _Log(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]], tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        o = out if isinstance(out, torch.Tensor) else None
        self.ops.append((func.overloadpacket.__name__, shapes, tuple(o.shape) if o is not None
                         else ()))
        return out


def aten_backward(model: nn.Module, shape, input_requires_grad=False):
    """The aten ops of a real CPU backward pass from out.sum(): (name, arg shapes, out)."""
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=input_requires_grad)
    out = model(x)
    log = _Log()
    with log:
        out.sum().backward()
    return log.ops


def accumulated(ops) -> int:
    """Adds of autograd's gradient accumulation: every aten add in the backward pass."""
    return sum(math.prod(o) for name, _, o in ops if name in ("add", "add_"))


def walker_accumulated(counts: C.ModelCounts) -> int:
    return sum(r.counts.adds for r in counts.rows if r.op.endswith(".grad_accumulate"))


class Fan(nn.Module):  # h feeds two layers
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 5), nn.Linear(8, 5)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h) + self.fc3(h)


class Tied(nn.Module):  # one weight in two layers
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


class Twice(nn.Module):  # one module called twice: weight and bias
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.tanh(self.fc(x)))


class Residual(nn.Module):  # a skip connection, the input needing a gradient too
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = x + self.fc1(x)
        return h + self.fc2(torch.tanh(h))


class Square(nn.Module):  # one op taking a value twice
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        return h * h


class CellLoop(nn.Module):  # an RNN cell at every step: its weights used T times
    def __init__(self, steps=5):
        super().__init__()
        self.cell, self.steps = nn.RNNCell(8, 6), steps

    def forward(self, x):
        h = self.cell(x)
        for _ in range(self.steps - 1):
            h = self.cell(x, h)
        return h


class InPlace(nn.Module):  # an in-place op makes a new version of h, with uses of its own
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc1(x)
        a = h * 2.0
        h.mul_(3.0)
        return self.fc2(h) + a


class DeadBranch(nn.Module):  # fc3(h) never reaches the output: autograd never runs it
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 5), nn.Linear(8, 5)

    def forward(self, x):
        h = self.fc1(x)
        self.fc3(h)
        return self.fc2(h)


CASES = [  # model, input shape, input requires grad, adds by hand
    (Fan, (N, 6), False, N * 8),
    (Tied, (N, 8), False, 64),
    (Twice, (N, 8), False, 64 + 8),
    (Residual, (N, 8), True, 2 * N * 8),  # x used twice, h used twice
    (Square, (N, 8), False, N * 8),
    (CellLoop, (N, 8), False, 4 * (6 * 8 + 6 * 6 + 6 + 6)),  # 4 weights, 5 steps
    (InPlace, (N, 8), False, N * 8),
    (DeadBranch, (N, 6), False, 0),
]


@pytest.mark.parametrize("model,shape,dx,by_hand", CASES, ids=[c[0].__name__ for c in CASES])
def test_accumulation_adds_match_autograds(model, shape, dx, by_hand):
    m = model()
    counts = C.count_model(m, shape, backward=True, input_requires_grad=dx)
    ops = aten_backward(m, shape, dx)
    assert accumulated(ops) == by_hand  # the hand count agrees with autograd's log
    assert walker_accumulated(counts) == by_hand, counts.to_frame()
    assert not counts.uncounted_backward


@pytest.mark.parametrize("model,shape,dx,by_hand", CASES, ids=[c[0].__name__ for c in CASES])
def test_backward_products_match_autograds(model, shape, dx, by_hand):
    """The matrix products of the backward pass: only those autograd runs (no dead branch)."""
    m = model()
    counts = C.count_model(m, shape, backward=True, input_requires_grad=dx)
    ops = aten_backward(m, shape, dx)
    macs = 0
    for name, shapes, out in ops:
        if name in ("mm", "addmm"):
            a = shapes[-2]
            macs += math.prod(out) * a[-1]
    assert counts.backward.macs == macs


def test_an_expanded_parameters_gradient_is_summed_back():
    """A class token expanded over the batch: its gradient, (N, 1, 8), is summed to
    (1, 1, 8): (N - 1) * 8 adds, autograd's one sum."""

    class Cls(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls, self.fc = nn.Parameter(torch.zeros(1, 1, 8)), nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1))

    m = Cls()
    ops = aten_backward(m, (N, 3, 8))
    sums = [(shapes[0], out) for name, shapes, out in ops if name == "sum"
            and shapes[0][1:] == (1, 8)]
    assert sums == [((N, 1, 8), (1, 1, 8))]  # the expand's gradient, in autograd's log
    counts = C.count_model(m, (N, 3, 8), backward=True)
    (row,) = [r for r in counts.rows if r.op == "expand.grad_input"]
    assert row.counts == C.Counts(adds=(N - 1) * 8)


def test_a_repeated_parameters_gradient_is_summed_back():
    """repeat(2, 2) of a (2, 3) parameter: autograd sums the (4, 6) gradient to (2, 3),
    24 - 6 = 18 adds (its log: one sum over a (2, 2, 2, 3) view)."""

    class Rep(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(2, 3))

        def forward(self, x):
            return x * self.p.repeat(2, 2)

    m = Rep()
    ops = aten_backward(m, (4, 6))
    assert [(s[0], o) for n, s, o in ops if n == "sum" and o == (2, 3)] == [((2, 2, 2, 3),
                                                                          (2, 3))]
    counts = C.count_model(m, (4, 6), backward=True)
    (row,) = [r for r in counts.rows if r.op == "repeat.grad_input"]
    assert row.counts == C.Counts(adds=24 - 6)


class _Box:  # an output pytree cannot open
    def __init__(self, y):
        self.y = y


@pytest.mark.parametrize("wrap,by_hand", [(lambda y: {"logits": y}, N * 64),
                                           (lambda y: (y, None), N * 64),
                                           (_Box, 3 * N * 64)],
                         ids=["dict", "tuple", "object"])
def test_the_backward_runs_from_an_output_in_a_container(wrap, by_hand):
    """A dict or tuple output: its tensors are where the backward starts, so the unused
    ``dead`` layer is not run (fc's dW alone: N * 8 * 8 products, as autograd's mm; x needs
    no gradient); an object that cannot be opened: every result is taken as used (dead's
    dW and its dh besides: 3 x as many)."""

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.dead = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = self.fc(x)
            self.dead(h)
            return wrap(h)

    counts = C.count_model(Wrapped(), (N, 8), backward=True)
    macs = sum(math.prod(o) * s[-2][-1] for n, s, o in aten_backward(nn.Linear(8, 8), (N, 8))
               if n in ("mm", "addmm"))
    assert macs == N * 64
    assert counts.backward.macs == by_hand


def test_an_integer_result_sends_no_gradient():
    """argmax's indices, used twice, need no gradient (no add); h, gathered twice, gets two
    (one add of N * 8, autograd's one aten add)."""

    class Pick(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            h = self.fc(x)
            i = h.argmax(1, keepdim=True)
            return h.gather(1, i) * h.gather(1, i)

    assert accumulated(aten_backward(Pick(), (N, 8))) == N * 8
    assert walker_accumulated(C.count_model(Pick(), (N, 8), backward=True)) == N * 8
