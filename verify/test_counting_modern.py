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


# --- attention ---------------------------------------------------------------------------


class SDPA(nn.Module):
    """q, k, v from one linear layer, then F.scaled_dot_product_attention (one head)."""

    def __init__(self, causal: bool):
        super().__init__()
        self.qkv = nn.Linear(E, 3 * E)
        self.causal = causal

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_scaled_dot_product_attention_by_hand(causal):
    """The math definition: q and k each scaled by sqrt(1/sqrt(E)), S = q k^T (B*L*L sums
    of E), plus the causal mask's bias (B*L*L adds; building the mask, a tril of ones and a
    where between 0 and -inf, is selection, no arithmetic), softmax over rows of L, S v
    (B*L*E sums of L)."""
    report = C.count_model(SDPA(causal), (B, L, E), backward=True)
    rows, n = B * L, B * L * L  # softmax rows, scores
    lin = C.Counts(mults=rows * 3 * E * E, adds=rows * 3 * E * E, macs=rows * 3 * E * E)
    scale = C.Counts(mults=2 * B * L * E)
    scores = C.Counts(mults=n * E, adds=n * (E - 1), macs=n * E)
    mask = C.Counts(adds=n if causal else 0)
    softmax = C.Counts(activations=n, adds=n - rows, mults=n)
    av = C.Counts(mults=B * L * E * L, adds=B * L * E * (L - 1), macs=B * L * E * L)
    params = C.Counts(params=3 * E * E + 3 * E)
    assert report.forward == params + lin + scale + scores + mask + softmax + av
    assert report.uncounted == {}
    # backward: S v -> dS (n sums of E), dv (B*L*E sums of L); softmax: 2n mults, 2n - rows
    # adds; q k^T -> dq (B*L*E sums of L), dk the same; each scale: one product per value;
    # the mask's add passes dS through; chunk's three gradients are concatenated (free);
    # the linear layer: weight (3E x E sums of B*L) and bias gradients, none for the data
    back_av = C.Counts(mults=2 * n * E, adds=n * (E - 1) + B * L * E * (L - 1), macs=2 * n * E)
    back_softmax = C.Counts(mults=2 * n, adds=2 * n - rows)
    back_scores = C.Counts(mults=2 * n * E, adds=2 * B * L * E * (L - 1), macs=2 * n * E)
    back_scale = C.Counts(mults=2 * B * L * E)
    w_m, w_a = linear_back(rows, E, 3 * E, input_grad=False)
    back_lin = C.Counts(mults=w_m, adds=w_a, macs=w_m)
    assert report.backward == back_av + back_softmax + back_scores + back_scale + back_lin
    assert report.uncounted_backward == {}


class Gate(nn.Module):
    """where(keep, fc(x), p): p (E,) broadcast over the batch, h masked by a tril and a
    masked_fill; the masks are boolean buffers."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)
        self.p = nn.Parameter(torch.zeros(E))
        self.register_buffer("keep", torch.arange(B * E).reshape(B, E) % 3 > 0)
        self.register_buffer("drop", torch.arange(B * E).reshape(B, E) % 5 == 0)

    def forward(self, x):
        h = self.fc(x).tril().masked_fill(self.drop, 0.0)
        return torch.where(self.keep, h, self.p)


def test_where_routes_and_sums_a_broadcast_operand_back():
    report = C.count_model(Gate(), (B, E), backward=True)
    assert report.uncounted == {} and report.uncounted_backward == {}
    lin_m, lin_a = linear_back(B, E, E, input_grad=False)
    # where: h's gradient routed (no arithmetic), p's summed over the batch: B*E - E adds;
    # masked_fill and tril route too
    assert report.backward == C.Counts(mults=lin_m, adds=lin_a + B * E - E, macs=lin_m)
    # against autograd's own: the only add-like op of p's gradient is that sum
    x = torch.randn(B, E)
    m = Gate()
    m(x).sum().backward()
    assert torch.equal(m.p.grad, (~m.keep).sum(0).float())


class SelfAttention(nn.Module):
    """nn.MultiheadAttention on one input (the walk feeds one tensor): need_weights=True,
    so the heads' weights are averaged too (a mean the output does not use)."""

    def __init__(self, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def test_multihead_attention_by_hand():
    h = 2
    d = E // h
    m = SelfAttention(h)
    report = C.count_model(m, (B, L, E), backward=True)
    rows, n = B * L, B * h * L * L
    assert report.total.params == n_params(m) == 3 * E * E + 3 * E + E * E + E
    forward = C.Counts(
        params=n_params(m),
        # in_proj (3E outputs) and out_proj (E): sums of E products plus the bias
        mults=rows * 4 * E * E
        + B * L * E  # q scaled by 1/sqrt(d)
        + n * d  # scores, n sums of d
        + n  # softmax's divides
        + B * h * L * d * L  # weights @ v
        + B * L * L,  # the heads' weights averaged: one divide per (B, L, L) value
        adds=rows * 4 * E * E
        + n * (d - 1)
        + (n - B * h * L)
        + B * h * L * d * (L - 1)
        + B * L * L * (h - 1),
        activations=n,
        macs=rows * 4 * E * E + n * d + B * h * L * d * L,
    )
    assert report.forward == forward
    assert report.uncounted == {} and report.uncounted_backward == {}
    assert not [r for r in report.rows if r.pass_ == "backward" and r.op.startswith("mean")]
