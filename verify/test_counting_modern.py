"""count_model on the pieces of modern architectures, each against a count made by hand
from the op's definition (the formula is written in the test, never read from the walker):
attention (nn.MultiheadAttention, nn.TransformerEncoderLayer both norm orders,
F.scaled_dot_product_attention with and without a causal mask), norms, depthwise, grouped,
dilated and transposed convolutions, GELU/SiLU/Mish, tied embeddings, parametrizations,
dtypes, channels_last, models on ``meta``, buffers, dropout and batch norm in both modes;
and the values autograd sends no gradient through: ``detach``, ``*_like`` factories (the
noise of a training-mode dropout), a ``torch.no_grad()`` block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from handgrad.kernels import counting as C

B, L, E = 2, 5, 8  # batch, sequence, embedding


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def linear_back(rows: int, i: int, o: int, input_grad: bool, bias: bool = True):
    """(mults, adds) of a linear layer's backward on ``rows`` rows, by hand: dW = G^T X
    (i*o sums of ``rows`` products), db = column sums of G, dX = G W (rows*i sums of o)."""
    mults = rows * i * o + (rows * i * o if input_grad else 0)
    adds = i * o * (rows - 1) + (o * (rows - 1) if bias else 0)
    adds += rows * i * (o - 1) if input_grad else 0
    return mults, adds


# --- values autograd sends no gradient through -------------------------------------------


class Detached(nn.Module):
    """h * h.detach(): h is used once by autograd (detach's result is a constant)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)

    def forward(self, x):
        h = self.fc(x)
        return h * h.detach()


def test_detach_result_needs_no_gradient():
    report = C.count_model(Detached(), (B, E), backward=True)
    n = B * E
    lin_m, lin_a = linear_back(B, E, E, input_grad=False)
    # mul: one gradient, g * h.detach() (n mults); no second use of h, so no add
    assert report.backward == C.Counts(mults=n + lin_m, adds=lin_a, macs=B * E * E)
    assert not [r for r in report.rows if r.op.startswith("detach.")]


class Noisy(nn.Module):
    """A hand-written dropout, as aten's own on CPU: noise = empty_like(h).bernoulli_(q)
    / q, h * noise. The noise is made from h's shape, not its values: no gradient."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)

    def forward(self, x):
        h = self.fc(x)
        noise = torch.empty_like(h).bernoulli_(0.5).div_(0.5)
        return h * noise + torch.zeros_like(h) + h.new_zeros(h.shape)


@pytest.mark.parametrize(
    "model",
    [Noisy(), nn.Sequential(nn.Linear(E, E), nn.Dropout(0.5))],
    ids=["by-hand", "nn.Dropout-train"],
)
def test_factory_like_results_need_no_gradient(model):
    report = C.count_model(model, (B, E), backward=True)
    n = B * E
    lin_m, lin_a = linear_back(B, E, E, input_grad=False)
    # h * noise: dh = g * noise (n mults); the adds pass the gradient through (0 adds); h
    # is used once by autograd; the noise's bernoulli_ and div_ get no gradient, so they
    # are not listed as backward ops without a formula
    assert report.backward == C.Counts(mults=n + lin_m, adds=lin_a, macs=B * E * E)
    assert report.uncounted_backward == {}


class NoGradBranch(nn.Module):
    """h * teacher(h), the teacher run under torch.no_grad(): autograd records nothing
    there, so the teacher gets no weight gradient and h no second gradient."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)
        self.teacher = nn.Linear(E, E)

    def forward(self, x):
        h = self.fc(x)
        with torch.no_grad():
            t = self.teacher(h)
        return h * t


def test_no_grad_block_is_not_differentiated():
    report = C.count_model(NoGradBranch(), (B, E), backward=True)
    n = B * E
    lin_m, lin_a = linear_back(B, E, E, input_grad=False)
    assert report.backward == C.Counts(mults=n + lin_m, adds=lin_a, macs=B * E * E)
    assert {r.layer for r in report.rows if r.pass_ == "backward"} == {"fc", "(model)"}
    # the forward still runs (and counts) the teacher
    assert report.forward.macs == 2 * B * E * E


def test_backward_counted_when_called_under_no_grad():
    """The caller's own torch.no_grad() (an inference script) is not the model's: the
    backward pass asked for is counted as outside it."""
    outside = C.count_model(NoGradBranch(), (B, E), backward=True)
    with torch.no_grad():
        inside = C.count_model(NoGradBranch(), (B, E), backward=True)
        assert not torch.is_grad_enabled()  # and the caller's mode is left as it was
    assert inside.backward == outside.backward != C.Counts()
