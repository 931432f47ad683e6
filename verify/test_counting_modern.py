"""count_model on the pieces of modern architectures, each against a count made by hand
from the op's definition (the formula is written in the test, never read from the walker):
attention (nn.MultiheadAttention, nn.TransformerEncoderLayer both norm orders,
F.scaled_dot_product_attention with and without a causal mask), norms, depthwise, grouped,
dilated and transposed convolutions, GELU/SiLU/Mish, tied embeddings, parametrizations,
dtypes, channels_last, models on ``meta``, buffers, dropout and batch norm in both modes;
and the values autograd sends no gradient through: ``detach``, ``*_like`` factories (the
noise of a training-mode dropout), a ``torch.no_grad()`` block; and what torch runs with
grad disabled that is not the model's no_grad: a custom autograd Function's forward, a
reentrant checkpoint's block."""

from __future__ import annotations

import functools
import itertools

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


# --- custom autograd Functions and checkpoints: torch runs their forward with grad off ----

H, OUT = 6, 3  # hidden and output widths


class MatMul(torch.autograd.Function):
    """x @ w.t() with its own backward: torch runs forward with grad disabled."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, g.t() @ x


class Sign(torch.autograd.Function):
    """An integer result: autograd sends it no gradient."""

    @staticmethod
    def forward(ctx, x):
        return (x > 0).long()

    @staticmethod
    def backward(ctx, g):
        return None


class FnLinear(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i))

    def forward(self, x):
        return MatMul.apply(x, self.weight)


MATMUL = "MatMul (autograd.Function: its backward is the user's code)"


def mlp(middle: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(E, H), middle, nn.Linear(H, OUT))


def added(*pairs) -> tuple[int, int]:
    return sum(m for m, _ in pairs), sum(a for _, a in pairs)


def test_custom_function_output_needs_gradient():
    """The Function's result needs a gradient (its input does): the last layer sends one
    back (grad_input) and the first layer gets its weight gradient; the Function's own
    backward is the user's code, listed, not counted."""
    report = C.count_model(mlp(FnLinear(H, H)), (B, E), backward=True)
    m, a = added(linear_back(B, H, OUT, input_grad=True), linear_back(B, E, H, input_grad=False))
    assert report.backward == C.Counts(mults=m, adds=a, macs=2 * B * H * OUT + B * E * H)
    assert report.uncounted_backward == {MATMUL: 1}
    assert {r.layer for r in report.rows if r.pass_ == "backward"} == {"0", "2"}
    # the forward counts the Function's own ops (grad off does not stop them)
    assert report.forward.macs == B * E * H + B * H * H + B * H * OUT


class FunctionAndSkip(nn.Module):
    """fc(x) goes to the Function and past it: two gradients for h, added."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, H)
        self.w = nn.Parameter(torch.randn(H, H))

    def forward(self, x):
        h = self.fc(x)
        return MatMul.apply(h, self.w) + h


def test_custom_function_input_gets_a_gradient_per_use():
    report = C.count_model(FunctionAndSkip(), (B, E), backward=True)
    m, a = linear_back(B, E, H, input_grad=False)
    # the add passes its gradient through; h receives it and the Function's: B*H adds
    assert report.backward == C.Counts(mults=m, adds=a + B * H, macs=B * E * H)
    assert report.uncounted_backward == {MATMUL: 1}


class FunctionOffTheGraph(nn.Module):
    """A Function autograd does not record: under the model's torch.no_grad(), on the
    data and a frozen weight, and one with an integer result."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)
        self.frozen = nn.Parameter(torch.randn(E, E), requires_grad=False)
        self.w = nn.Parameter(torch.randn(E, E))

    def forward(self, x):
        c = MatMul.apply(x, self.frozen)  # nothing here requires grad
        h = self.fc(x)
        with torch.no_grad():
            t = MatMul.apply(h, self.w)
        s = Sign.apply(h)  # an integer result
        return h * t + c + s


def test_custom_function_not_recorded_needs_no_gradient():
    report = C.count_model(FunctionOffTheGraph(), (B, E), backward=True)
    n = B * E
    m, a = linear_back(B, E, E, input_grad=False)
    assert report.backward == C.Counts(mults=n + m, adds=a, macs=B * E * E)
    assert report.uncounted_backward == {}


class OwnApply(MatMul):
    """A Function whose own apply goes around Function.apply, straight to torch's C apply
    (_FunctionBase.apply): the walk's swap of Function.apply never sees it."""

    @classmethod
    def apply(cls, *args):
        return super(torch.autograd.function._SingleLevelFunction, cls).apply(*args)


class SuperApply(MatMul):
    """An apply of its own that calls Function.apply (super().apply)."""

    @classmethod
    def apply(cls, *args):
        return super().apply(*args)


class AnyFnLinear(nn.Module):
    def __init__(self, fn, i, o):
        super().__init__()
        self.fn = fn
        self.weight = nn.Parameter(torch.randn(o, i))

    def forward(self, x):
        return self.fn.apply(x, self.weight)


def _recorded(model: nn.Module, first: str) -> bool:
    """Whether real autograd gives ``first``'s weight a gradient (the Function is on the
    graph in torch too: what the count should agree with)."""
    model.zero_grad()
    model(torch.randn(B, E)).sum().backward()
    return model.get_submodule(first).weight.grad is not None


@pytest.mark.parametrize("fn", [OwnApply, SuperApply], ids=["around-Function.apply",
                                                             "super().apply"])
def test_function_with_its_own_apply_is_one_node(fn):
    """As test_custom_function_output_needs_gradient, with apply overridden: before, an
    apply that went around Function.apply dropped the Function and every layer upstream
    from the backward count, silently (backward = the last layer's weight gradient)."""
    model = mlp(AnyFnLinear(fn, H, H))
    assert _recorded(model, "0")
    report = C.count_model(model, (B, E), backward=True)
    m, a = added(linear_back(B, H, OUT, input_grad=True), linear_back(B, E, H, input_grad=False))
    assert report.backward == C.Counts(mults=m, adds=a, macs=2 * B * H * OUT + B * E * H)
    assert report.uncounted_backward == {
        f"{fn.__name__} (autograd.Function: its backward is the user's code)": 1}
    assert {r.layer for r in report.rows if r.pass_ == "backward"} == {"0", "2"}
    assert report.forward.macs == B * E * H + B * H * H + B * H * OUT


class OwnApplyAround(nn.Module):
    """h to an own-apply Function and past it; under the model's no_grad, right after
    the Function's call, a teacher on its result and an own-apply Function autograd does
    not record; then torch's C apply called by ``map`` twice and the results multiplied
    by ``functools.reduce``: no Python frame between forward's and the C calls."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, H)
        self.w = nn.Parameter(torch.randn(H, H))
        self.w2 = nn.Parameter(torch.randn(H, H))
        self.teacher = nn.Linear(H, H)

    def forward(self, x):
        h = self.fc(x)
        f = OwnApply.apply(h, self.w)
        with torch.no_grad():
            t = self.teacher(f)  # grad off, but the Function's call has returned
            c = OwnApply.apply(h, self.w2)  # grad off: not recorded
        y = f + h
        c_apply = super(torch.autograd.function._SingleLevelFunction, OwnApply).apply
        ab = functools.reduce(torch.mul, map(c_apply, (y, y), (self.w, self.w2)))
        return ab * t + c


def test_functions_with_own_apply_uses_and_regions():
    model = OwnApplyAround()
    report = C.count_model(model, (B, E), backward=True)
    n = B * H
    m, a = linear_back(B, E, H, input_grad=False)
    # ab * t: g * t (n mults), t and c are constants; a * b: g * b and g * a (2n mults).
    # y: one use by each Function of the map, two gradients, n adds; h: the Function's
    # use and the skip's, n adds; w: taken by the first Function and the map's, H*H adds
    assert report.backward == C.Counts(mults=3 * n + m, adds=a + n + n + H * H,
                                       macs=B * E * H)
    assert report.uncounted_backward == {
        "OwnApply (autograd.Function: its backward is the user's code)": 3}
    assert report.forward.macs == B * E * H + 4 * B * H * H + B * H * H


def test_function_with_its_own_apply_last():
    """The forward ends inside the Function's call (its result is the output)."""
    report = C.count_model(nn.Sequential(nn.Linear(E, H), AnyFnLinear(OwnApply, H, H)),
                           (B, E), backward=True)
    m, a = linear_back(B, E, H, input_grad=False)
    assert report.backward == C.Counts(mults=m, adds=a, macs=B * E * H)
    assert report.uncounted_backward == {
        "OwnApply (autograd.Function: its backward is the user's code)": 1}


def test_ctx_init_of_torchs_own_is_called_and_kept(monkeypatch):
    """Where torch defines BackwardCFunction.__init__ (2.13 does not), the walk's own
    calls it for every ctx and puts it back after."""
    ctx_cls = torch.autograd.function.BackwardCFunction
    made = []

    def init(ctx):
        made.append(type(ctx).__name__)

    monkeypatch.setattr(ctx_cls, "__init__", init, raising=False)
    C.count_model(mlp(AnyFnLinear(OwnApply, H, H)), (B, E), backward=True)
    assert made == ["OwnApplyBackward"]
    assert ctx_cls.__dict__["__init__"] is init


class SortLike(torch.autograd.Function):
    """Two results, the second (floating) marked non-differentiable, as torch.sort's
    indices would be: autograd sends it no gradient."""

    @staticmethod
    def forward(ctx, x):
        v, idx = x * 2, x + 1
        ctx.mark_non_differentiable(idx)
        return v, idx

    @staticmethod
    def backward(ctx, g, g_idx):
        return g * 2


class SortLikeOwn(SortLike):
    @classmethod
    def apply(cls, *args):
        return super(torch.autograd.function._SingleLevelFunction, cls).apply(*args)


class NonDifferentiable(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.fc, self.fc2 = nn.Linear(E, E), nn.Linear(E, E)

    def forward(self, x):
        v, idx = self.fn.apply(self.fc(x))
        return v + self.fc2(idx)


@pytest.mark.parametrize("fn", [SortLike, SortLikeOwn], ids=["Function.apply", "own-apply"])
def test_non_differentiable_result_gets_no_gradient(fn):
    """fc2 reads the non-differentiable result: its weight and bias get gradients, its
    input none (before, fc2's grad_input was counted: B*E*E mults too many)."""
    model = NonDifferentiable(fn)
    model(torch.randn(B, E)).sum().backward()  # torch agrees: idx needs no gradient
    report = C.count_model(model, (B, E), backward=True)
    m, a = linear_back(B, E, E, input_grad=False)
    assert report.backward == C.Counts(mults=2 * m, adds=2 * a, macs=2 * B * E * E)
    assert not [r for r in report.rows if r.op == "addmm.grad_input"]
    assert report.uncounted_backward == {
        f"{fn.__name__} (autograd.Function: its backward is the user's code)": 1}


class Checkpointed(nn.Module):
    def __init__(self, block: nn.Module, reentrant: bool):
        super().__init__()
        self.block, self.reentrant = block, reentrant

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.block, x, use_reentrant=self.reentrant)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_checkpointed_block_counted_as_without_checkpoint(reentrant):
    """Both kinds of checkpoint: the block's gradients as without it; the recomputation
    of the block's forward in the backward is not counted. No warning: torch's "None of
    the inputs have requires_grad" (the walk's meta tensors require none) is not the
    user's doing (pyproject makes a warning an error)."""
    report = C.count_model(mlp(Checkpointed(nn.Linear(H, H), reentrant)), (B, E),
                           backward=True)
    m, a = added(linear_back(B, H, OUT, input_grad=True), linear_back(B, H, H, input_grad=True),
                 linear_back(B, E, H, input_grad=False))
    macs = 2 * B * H * OUT + 2 * B * H * H + B * E * H
    assert report.backward == C.Counts(mults=m, adds=a, macs=macs)
    assert report.uncounted_backward == {}
    assert {r.layer for r in report.rows if r.pass_ == "backward"} == {"0", "1.block", "2"}


class TeacherCheckpointed(nn.Module):
    """h * teacher(h), the teacher checkpointed inside the model's own torch.no_grad()."""

    def __init__(self, reentrant: bool):
        super().__init__()
        self.fc = nn.Linear(E, E)
        self.teacher = nn.Linear(E, E)
        self.reentrant = reentrant

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        h = self.fc(x)
        with torch.no_grad():
            t = checkpoint(self.teacher, h, use_reentrant=self.reentrant)
        return h * t


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_checkpoint_under_no_grad_is_not_differentiated(reentrant):
    report = C.count_model(TeacherCheckpointed(reentrant), (B, E), backward=True)
    n = B * E
    m, a = linear_back(B, E, E, input_grad=False)
    assert report.backward == C.Counts(mults=n + m, adds=a, macs=B * E * E)
    assert report.forward.macs == 2 * B * E * E


def test_function_apply_is_torchs_own_after_the_walk():
    """The walk swaps torch.autograd.Function.apply (and sets BackwardCFunction.__init__,
    which torch does not define) and puts them back, also after an error; the swap is
    only there for a backward walk."""
    before = torch.autograd.Function.__dict__["apply"]
    ctx_cls = torch.autograd.function.BackwardCFunction
    C.count_model(mlp(FnLinear(H, H)), (B, E), backward=True)
    assert torch.autograd.Function.__dict__["apply"] is before
    assert "__init__" not in ctx_cls.__dict__
    with pytest.raises(ValueError):
        C.count_model(mlp(FnLinear(H, H)), (B, E + 1), backward=True)
    assert torch.autograd.Function.__dict__["apply"] is before
    assert "__init__" not in ctx_cls.__dict__
    report = C.count_model(mlp(FnLinear(H, H)), (B, E))  # no backward: nothing to follow
    assert report.uncounted_backward == {}
    during = SeesApply()
    C.count_model(during, (B, E))  # nor swapped while a forward-only walk runs
    assert during.met is before
    C.count_model(during, (B, E), backward=True)
    assert during.met is not before


class SeesApply(nn.Module):
    """Notes the Function.apply its forward meets."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)
        self.met = None

    def forward(self, x):
        self.met = torch.autograd.Function.__dict__["apply"]
        return self.fc(x)


class OtherThread(nn.Module):
    """A Function applied by another thread while the walk runs is torch's, untouched."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)
        self.seen = None

    def forward(self, x):
        import threading

        def work():
            w = torch.ones(2, 2, requires_grad=True)
            self.seen = MatMul.apply(torch.ones(3, 2), w).grad_fn

        t = threading.Thread(target=work)
        t.start()
        t.join()
        return self.fc(x)


def test_function_of_another_thread_is_not_followed():
    model = OtherThread()
    report = C.count_model(model, (B, E), backward=True)
    assert type(model.seen).__name__ == "MatMulBackward"  # torch recorded it as usual
    assert report.uncounted_backward == {}


class WalksInside(nn.Module):
    """A forward that walks another model (backward=True) before applying its Function:
    the outer walk still follows it after the inner walk ends."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, H)
        self.mid = FnLinear(H, H)

    def forward(self, x):
        C.count_model(nn.Linear(E, E), (B, E), backward=True)
        return self.mid(self.fc(x))


def test_nested_walk_keeps_following_functions():
    report = C.count_model(WalksInside(), (B, E), backward=True)
    m, a = linear_back(B, E, H, input_grad=False)
    assert report.backward == C.Counts(mults=m, adds=a, macs=B * E * H)
    assert report.uncounted_backward == {MATMUL: 1}


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


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_encoder_layer_by_hand(norm_first):
    """Eval mode (dropout off), need_weights=False: attention through SDPA's math (q and k
    each scaled by sqrt(1/sqrt(d))). Layer norm counts one scale and one shift per value and
    lists its statistics (docs); its backward has no formula and is listed, both ways."""
    h, ff = 2, 3 * E
    d = E // h
    m = nn.TransformerEncoderLayer(E, h, ff, batch_first=True, norm_first=norm_first).eval()
    report = C.count_model(m, (B, L, E), backward=True)
    rows, n, v = B * L, B * h * L * L, B * L * E
    assert report.total.params == n_params(m) == 4 * E * E + 4 * E + 2 * E * ff + ff + E + 4 * E
    linear_macs = rows * (4 * E * E + 2 * E * ff)
    forward = C.Counts(
        params=n_params(m),
        mults=linear_macs + 2 * v + n * d + n + B * h * L * d * L + 2 * v,  # last: 2 norms
        adds=linear_macs  # every linear layer has a bias
        + n * (d - 1)
        + (n - B * h * L)
        + B * h * L * d * (L - 1)
        + 2 * v  # two norms' shifts
        + 2 * v,  # two residual adds
        activations=n + rows * ff,  # softmax's exponentials, the ReLU
        macs=linear_macs + n * d + B * h * L * d * L,
    )
    assert report.forward == forward
    assert report.uncounted == {"native_layer_norm (statistics)": 2}
    assert report.uncounted_backward == {"native_layer_norm": 2}


@pytest.mark.parametrize(
    "norm, shape, groups",
    [
        (nn.GroupNorm(2, 6), (B, 6, 3, 3), 2),
        (nn.LayerNorm([3, 3]), (B, 6, 3, 3), B * 6),
        (nn.GroupNorm(6, 6, affine=False), (B, 6, 3, 3), 6),
    ],
    ids=["group", "layer", "instance-like"],
)
def test_group_and_layer_norm_scale_and_shift_statistics_listed(norm, shape, groups):
    n = B * 6 * 9
    report = C.count_model(norm, shape, backward=True)
    assert report.forward == C.Counts(params=n_params(norm), mults=n, adds=n)
    assert len(report.uncounted) == 1 and next(iter(report.uncounted)).endswith("(statistics)")
    # the affine weight and bias need gradients: the op is listed, never zero
    assert report.uncounted_backward == (
        {next(iter(report.uncounted)).split()[0]: 1} if n_params(norm) else {}
    )


def test_rms_norm_by_hand():
    """y = x * rsqrt(mean(x^2) + eps) * w over the last E values: x^2 (a product per
    value), mean (E - 1 adds and a divide per row), + eps (an add per row), rsqrt (an
    evaluation per row, as a nonlinearity), the two products (2 per value); pow and rsqrt
    were listed before. Backward: w's gradient alone (the data needs none): g * x_hat (a
    product per value), summed over the B*L rows. With the input's gradient, nothing is
    listed either (the whole count: verify/test_counting_listed.py)."""
    m = nn.RMSNorm(E)
    report = C.count_model(m, (B, L, E), backward=True)
    rows, n = B * L, B * L * E
    assert report.forward == C.Counts(params=E, mults=n + rows + 2 * n,
                                      adds=rows * (E - 1) + rows, activations=rows)
    assert report.uncounted == {}
    assert report.backward == C.Counts(mults=n, adds=n - E)
    with_input = C.count_model(m, (B, L, E), backward=True, input_requires_grad=True)
    assert with_input.uncounted_backward == {}


# --- convolutions -------------------------------------------------------------------------


def conv_back(macs: int, weight: int, c_out: int, outputs_per_channel: int):
    """A convolution's weight and bias gradients (the data needs none), by hand: dW makes the
    forward's products again, each weight value a sum of macs / weight of them (padding's
    zero products included, as FlopCounterMode counts them); db sums each channel."""
    return C.Counts(mults=macs, adds=macs - weight + c_out * (outputs_per_channel - 1), macs=macs)


def test_depthwise_conv_by_hand_with_input_gradient():
    """Conv2d(4, 4, 3, groups=4, padding=1) on 6x6: each output sums 9 products (1 input
    channel); dx: of each axis' 6 x 3 taps, 2 land on the padding: 16 x 16 products per
    channel land inside and are summed into the 36 inputs they reach."""
    m = nn.Conv2d(4, 4, 3, groups=4, padding=1)
    report = C.count_model(m, (1, 4, 6, 6), backward=True, input_requires_grad=True)
    macs = 36 * 4 * 9
    assert report.forward == C.Counts(params=4 * 9 + 4, mults=macs, adds=macs, macs=macs)
    grad_input = C.Counts(mults=macs, adds=4 * 16 * 16 - 4 * 36, macs=macs)
    assert report.backward == conv_back(macs, 36, 4, 36) + grad_input


def test_grouped_dilated_strided_conv_by_hand():
    """Conv2d(4, 8, 3, groups=2, dilation=2, stride=2) on 9x9: 3x3 outputs (9 - 4 - 1) / 2
    + 1; each sums 3*3*2 products. The windows touch rows 0, 2, 4, 6, 8 only: dx sums all
    the products (no padding) into 5 x 5 of the 9 x 9 inputs per channel."""
    m = nn.Conv2d(4, 8, 3, groups=2, dilation=2, stride=2, bias=False)
    report = C.count_model(m, (1, 4, 9, 9), backward=True, input_requires_grad=True)
    macs = 9 * 8 * 18
    assert report.forward == C.Counts(params=8 * 2 * 9, mults=macs, adds=macs - 72, macs=macs)
    grad_weight = C.Counts(mults=macs, adds=macs - 8 * 2 * 9, macs=macs)
    grad_input = C.Counts(mults=macs, adds=macs - 4 * 25, macs=macs)
    assert report.backward == grad_weight + grad_input


@pytest.mark.parametrize("bias", [True, False])
def test_transposed_conv_with_output_padding_by_hand(bias):
    """ConvTranspose2d(2, 3, 2, stride=3, output_padding=2) on 3x3: output (3 - 1) * 3 + 2
    + 2 = 10 per axis. Input i's taps land on 3i and 3i + 1: 6 of the 10 rows (and columns)
    are reached, each by one tap of each of the 2 input channels; the 64 others (output
    padding and the stride's gaps) hold the bias alone, with no add."""
    m = nn.ConvTranspose2d(2, 3, 2, stride=3, output_padding=2, bias=bias)
    report = C.count_model(m, (1, 2, 3, 3), backward=True)
    macs = 9 * 2 * 3 * 4  # every input value times C_out * k * k weights
    reached = 3 * 6 * 6
    adds = reached * 2 if bias else reached * (2 - 1)
    assert report.forward == C.Counts(params=24 + 3 * bias, mults=macs, adds=adds, macs=macs)
    assert report.rows[0].output_shape == (1, 3, 10, 10)
    grad_bias = 3 * (100 - 1) if bias else 0
    assert report.backward == C.Counts(mults=macs, adds=macs - 24 + grad_bias, macs=macs)


@pytest.mark.parametrize(
    "layer, op",
    [
        (nn.Upsample(scale_factor=2, mode="bilinear"), "upsample_bilinear2d"),
        (nn.Upsample(scale_factor=2, mode="bicubic"), "upsample_bicubic2d"),
    ],
    ids=["bilinear", "bicubic"],
)
def test_resampling_without_a_formula_is_listed_both_ways(layer, op):
    """After a 1x1 convolution (so the op needs a gradient): listed, never zeroed.
    (Nearest, a copy, is counted: verify/test_counting_listed.py.)"""
    m = nn.Sequential(nn.Conv2d(2, 2, 1), layer)
    report = C.count_model(m, (1, 2, 5, 7), backward=True)
    assert report.uncounted == {op: 1}
    assert report.uncounted_backward == {op: 1}
    macs = 35 * 2 * 2
    assert report.forward == C.Counts(params=6, mults=macs, adds=macs, macs=macs)


def test_gelu_silu_mish_one_evaluation_each_way():
    m = nn.Sequential(nn.Linear(E, E), nn.GELU(), nn.SiLU(), nn.Mish(), nn.GELU("tanh"))
    report = C.count_model(m, (B, E), backward=True)
    n = B * E
    lin_m, lin_a = linear_back(B, E, E, input_grad=False)
    linear = C.Counts(mults=B * E * E, adds=B * E * E, macs=B * E * E)
    assert report.forward == C.Counts(params=E * E + E, activations=4 * n) + linear
    assert report.backward == C.Counts(
        mults=4 * n + lin_m, adds=lin_a, activations=4 * n, macs=lin_m
    )


class TiedLM(nn.Module):
    """Embedding (V, E), its table reused as the output projection's weight."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        self.embed = nn.Embedding(vocab, E)
        self.out = nn.Linear(E, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(self.embed(tokens))


def test_embedding_with_tied_output_weights_by_hand():
    vocab = 11
    m = TiedLM(vocab)
    report = C.count_model(m, (B, L), dtype=torch.long, backward=True)
    rows = B * L
    assert report.total.params == n_params(m) == vocab * E  # the shared table once
    assert report.forward == C.Counts(
        params=vocab * E, mults=rows * vocab * E, adds=rows * vocab * (E - 1), macs=rows * vocab * E
    )
    # logits = h W^T: dW^T = h^T G (E*V sums of B*L), dh = G W (B*L*E sums of V); the
    # lookup routes dh to the table's rows (free); the table gets two gradients, one add
    back = C.Counts(
        mults=2 * rows * vocab * E,
        adds=E * vocab * (rows - 1) + rows * E * (vocab - 1) + vocab * E,
        macs=2 * rows * vocab * E,
    )
    assert report.backward == back
    assert report.uncounted == {} and report.uncounted_backward == {}


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_parametrized_weights_counted_once_and_their_ops_listed(kind):
    from torch.nn.utils import parametrizations

    m = getattr(parametrizations, kind)(nn.Linear(E, 4))
    report = C.count_model(m, (B, E), backward=True)
    # weight_norm: original0 (4, 1) and original1 (4, E); spectral_norm: original (4, E)
    own = 4 + 4 * E + 4 if kind == "weight_norm" else 4 * E + 4
    assert report.total.params == n_params(m) == own
    assert report.unreached_params == {}
    assert report.uncounted and report.uncounted_backward  # the reparametrisation's ops
    if kind == "spectral_norm":  # the power iteration runs under no_grad: not in backward
        assert "linalg_vector_norm" in report.uncounted
        assert "linalg_vector_norm" not in report.uncounted_backward


# --- dtypes, devices, layouts, buffers, modes ------------------------------------------------


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


def small_cnn_counts(batch: int = 1):
    """Conv 3->4 3x3 on 6x6 (4x4 out), ReLU, conv 4->2 1x1, by hand, both passes."""
    m1, m2 = batch * 16 * 4 * 27, batch * 16 * 2 * 4
    fwd = C.Counts(
        params=4 * 27 + 4 + 2 * 4 + 2,
        mults=m1 + m2,
        adds=m1 + m2,
        activations=batch * 64,
        macs=m1 + m2,
    )
    # conv2: dW, db, dx (1x1, no padding: each input value a sum of 2 products); relu;
    # conv1: dW, db (the data needs none)
    back = (
        C.Counts(mults=m2, adds=m2 - 8 + 2 * (batch * 16 - 1), macs=m2)
        + C.Counts(mults=m2, adds=batch * 64 * (2 - 1), macs=m2)
        + C.Counts(mults=batch * 64, activations=batch * 64)
        + C.Counts(mults=m1, adds=m1 - 108 + 4 * (batch * 16 - 1), macs=m1)
    )
    return fwd, back


@pytest.mark.parametrize(
    "prepare",
    [
        lambda m: m,
        lambda m: m.half(),
        lambda m: m.to(torch.bfloat16),
        lambda m: m.to(memory_format=torch.channels_last),
        lambda m: m.to("meta"),
    ],
    ids=["float32", "float16", "bfloat16", "channels_last", "meta"],
)
def test_counts_do_not_depend_on_dtype_layout_or_device(prepare):
    report = C.count_model(prepare(small_cnn()), (2, 3, 6, 6), backward=True)
    fwd, back = small_cnn_counts(batch=2)
    assert (report.forward, report.backward) == (fwd, back)
    assert report.uncounted == {} and report.uncounted_backward == {}


class Buffered(nn.Module):
    """A persistent and a non-persistent buffer, used in the forward: not parameters, and
    no gradient for them."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)
        self.register_buffer("scale", torch.ones(E))
        self.register_buffer("shift", torch.zeros(E), persistent=False)

    def forward(self, x):
        return self.fc(x) * self.scale + self.shift


def test_buffers_are_neither_parameters_nor_differentiated():
    report = C.count_model(Buffered(), (B, E), backward=True)
    n = B * E
    linear = C.Counts(params=E * E + E, mults=B * E * E, adds=B * E * E, macs=B * E * E)
    assert report.forward == linear + C.Counts(mults=n, adds=n)
    lin_m, lin_a = linear_back(B, E, E, input_grad=False)
    assert report.backward == C.Counts(mults=n + lin_m, adds=lin_a, macs=lin_m)


def bn_net():
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Dropout(0.5))


def test_eval_mode_batch_norm_and_dropout_by_hand():
    """Eval: batch norm is one scale and one shift per value (running statistics, nothing
    listed), dropout is the identity (no op). Batch norm's backward has no formula:
    listed."""
    m = bn_net().eval()
    report = C.count_model(m, (B, 2, 3, 3), backward=True)
    n = B * 3 * 9
    conv = C.Counts(params=9 + 6, mults=n * 2, adds=n * 2, macs=n * 2)
    assert report.forward == conv + C.Counts(mults=n, adds=n)
    assert report.uncounted == {}
    assert report.uncounted_backward == {"native_batch_norm": 1}


def test_train_mode_lists_batch_statistics_and_the_dropout_noise():
    """Training: batch norm's statistics are listed, dropout draws its noise (bernoulli_,
    listed), scales it by 1/(1 - p) and multiplies (a product per value each); its
    backward is g * noise alone (the noise is a constant to autograd). The step counter
    num_batches_tracked += 1 is integer bookkeeping."""
    m = bn_net().train()
    report = C.count_model(m, (B, 2, 3, 3), backward=True)
    n = B * 3 * 9
    conv = C.Counts(params=9 + 6, mults=n * 2, adds=n * 2, macs=n * 2)
    assert report.forward == conv + C.Counts(mults=n, adds=n) + C.Counts(mults=2 * n)
    assert report.uncounted == {
        "native_batch_norm (batch statistics, training mode)": 1,
        "bernoulli_": 1,
    }
    assert report.uncounted_backward == {"native_batch_norm": 1}
    dropout_back = [r for r in report.rows if r.pass_ == "backward" and r.layer == "2"]
    assert sum((r.counts for r in dropout_back), C.Counts()) == C.Counts(mults=n)


def test_a_compiled_module_counts_as_its_eager_self():
    """torch.compile's wrapper: the walk runs the original module (layers named under
    ``_orig_mod``); nothing is compiled for meta tensors under the walk's dispatch mode."""
    from handgrad.benchmark.compiled import load_inductor

    load_inductor()  # torch.compile's default backend imports inductor: torch's deprecation
    report = C.count_model(torch.compile(small_cnn()), (2, 3, 6, 6), backward=True)
    assert (report.forward, report.backward) == small_cnn_counts(batch=2)
    assert report.unreached_params == {}


def windows(n_in: int, n_out: int) -> list[range]:
    """Adaptive pooling's windows along one axis, by definition: output i reads
    [floor(i In / Out), ceil((i + 1) In / Out))."""
    return [range(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]


@pytest.mark.parametrize(
    "in_size, out_size",
    [((5, 7), (2, 3)), ((7, 5), (3, 4)), ((6,), (4,)), ((5, 4, 3), (2, 3, 2))],
    ids=["5x7-to-2x3", "7x5-to-3x4", "1d-6-to-4", "3d"],
)
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_uneven_adaptive_pooling_by_hand(in_size, out_size, kind):
    """Each output's window, enumerated by definition (and checked to be torch's own on
    values): avg pools sum it (taps - 1 adds) and divide once; max pools compare (taps - 1).
    Backward: avg scales each output's gradient once and every input sums the gradients of
    the windows covering it (covers - 1 adds); max routes (free)."""
    rank = len(in_size)
    pool = getattr(nn, f"Adaptive{kind.capitalize()}Pool{rank}d")(out_size)
    c = 2
    per_axis = [windows(i, o) for i, o in zip(in_size, out_size)]
    # the windows are torch's: pool a random input by hand
    x = torch.randn(1, c, *in_size, dtype=torch.float64)
    by_hand = torch.empty(1, c, *out_size, dtype=torch.float64)
    for idx in itertools.product(*(range(o) for o in out_size)):
        part = x[(..., *(slice(w[i].start, w[i].stop) for w, i in zip(per_axis, idx)))]
        flat = part.reshape(1, c, -1)
        by_hand[(..., *idx)] = flat.mean(-1) if kind == "avg" else flat.amax(-1)
    assert torch.allclose(pool(x), by_hand)
    taps = sum(
        c * len(list(itertools.product(*(w[i] for w, i in zip(per_axis, idx)))))
        for idx in itertools.product(*(range(o) for o in out_size))
    )
    outputs = c * torch.Size(out_size).numel()
    inputs = c * torch.Size(in_size).numel()
    m = nn.Sequential(
        nn.Conv1d(c, c, 1) if rank == 1 else getattr(nn, f"Conv{rank}d")(c, c, 1), pool
    )
    report = C.count_model(m, (1, c, *in_size), backward=True)
    conv = C.Counts(params=c * c + c, mults=inputs * c, adds=inputs * c, macs=inputs * c)
    pooled = (
        C.Counts(adds=taps - outputs, mults=outputs)
        if kind == "avg"
        else C.Counts(compares=taps - outputs)
    )
    assert report.forward == conv + pooled
    assert report.uncounted == {} and report.uncounted_backward == {}
    # the convolution's weight and bias gradients, then the pool's
    conv_back = C.Counts(
        mults=inputs * c, adds=inputs * c - c * c + c * (inputs // c - 1), macs=inputs * c
    )
    pool_back = C.Counts(mults=outputs, adds=taps - inputs) if kind == "avg" else C.Counts()
    if kind == "avg":  # autograd's own: weight each output's gradient by its window's size
        # (undoing the 1/size), and each input's gradient counts the windows covering it
        x = torch.ones(1, c, *in_size, dtype=torch.float64, requires_grad=True)
        sizes = pool(torch.ones_like(x)) * 0 + torch.tensor(
            [
                len(list(itertools.product(*(w[i] for w, i in zip(per_axis, idx)))))
                for idx in itertools.product(*(range(o) for o in out_size))
            ],
            dtype=torch.float64,
        ).reshape(out_size)
        (pool(x) * sizes).sum().backward()
        covers = x.grad.round().long()
        assert (covers >= 1).all() and int((covers - 1).sum()) == taps - inputs
    assert report.backward == conv_back + pool_back


class Pick(nn.Module):
    """argmax and argmin of values that need a gradient, the indices used downstream."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)

    def forward(self, x):
        h = self.fc(x)
        i = h.argmax(1, keepdim=True)
        j = h.argmin()  # over all B * E values
        return h * (i + j)


def test_argmax_and_argmin_compare_and_send_no_gradient():
    """Forward: C - 1 compares per row of C (B*E - 1 for the whole tensor); autograd has no
    backward for an index, so neither is listed as a backward op without a formula, and h
    is used once by autograd (the mul) : no accumulation."""
    report = C.count_model(Pick(), (B, E), backward=True, input_requires_grad=True)
    assert report.uncounted == {} and report.uncounted_backward == {}
    n = B * E
    linear = C.Counts(params=E * E + E, mults=n * E, adds=n * E, macs=n * E)
    # the index sum i + j: integer bookkeeping; h * (i + j): n products
    assert report.forward == linear + C.Counts(compares=B * (E - 1) + n - 1, mults=n)
    lin_m, lin_a = linear_back(B, E, E, input_grad=True)
    assert report.backward == C.Counts(mults=n + lin_m, adds=lin_a, macs=lin_m)
    # asked directly (count_model never asks it: an integer result), the table says free
    from handgrad.kernels.counting_ops import backward_op_counts

    h = torch.empty(B, E, device="meta")
    assert backward_op_counts("argmax", [h, 1], h.argmax(1), [True, False]) == []


class Filled(nn.Module):
    """Constants made like h (full_like, new_ones, new_full): fills, free, and constants to
    autograd."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(E, E)

    def forward(self, x):
        h = self.fc(x)
        return h * torch.full_like(h, 2.0) + h.new_ones(h.shape) + h.new_full((E,), 3.0)


def test_fills_are_free_and_constant():
    report = C.count_model(Filled(), (B, E), backward=True)
    n = B * E
    assert report.uncounted == {} and report.uncounted_backward == {}
    linear = C.Counts(params=E * E + E, mults=n * E, adds=n * E, macs=n * E)
    assert report.forward == linear + C.Counts(mults=n, adds=2 * n)
    lin_m, lin_a = linear_back(B, E, E, input_grad=False)
    assert report.backward == C.Counts(mults=n + lin_m, adds=lin_a, macs=lin_m)
