"""Softmax cross-entropy in the manual backprop: the parts the shared case table of
``test_backprop.py`` (autograd, torch.func, finite differences, gradcheck, every dtype)
does not reach: huge logits, every integer label dtype, the gradient's closed form, and
named errors for bad labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from handgrad.kernels import backprop as bp
from handgrad.kernels import mlp
from handgrad.testing.compare import assert_close
from handgrad.testing.tolerances import Tol

EXACT = Tol(rtol=0.0, atol=0.0)  # the values asserted exact below are exact in float32


def _identity_net(c: int, dtype=torch.float32, device="cpu") -> mlp.MLP:
    """One linear layer W = I: the logits are the input itself."""
    return mlp.MLP(weights=[torch.eye(c, dtype=dtype, device=device)],
                   biases=[torch.zeros(c, dtype=dtype, device=device)], activation="identity")


@pytest.mark.parametrize("label", [0, 1, 2])
def test_finite_and_exact_at_logits_of_1e4_float32(label: int, device: str) -> None:
    z = torch.tensor([[1e4, -1e4, 0.0]], device=device)
    g = bp.backprop(_identity_net(3, device=device), z, torch.tensor([label], device=device),
                    loss="cross_entropy")
    assert torch.isfinite(g.loss) and torch.isfinite(g.input).all()
    # -log softmax(z)_label = logsumexp(z) - z_label = 1e4 - z_label exactly in float32 (the
    # other terms of the sum are exp(-1e4) and exp(-2e4): 0); softmax is (1, 0, 0) exactly
    expected_loss = torch.tensor(1e4 - float(z[0, label]), device=device)
    assert_close(g.loss, expected_loss, kernel="cross_entropy", reference="1e4 - z_label",
                 tol=EXACT)
    expected_dz = torch.tensor([[1.0, 0.0, 0.0]], device=device)
    expected_dz[0, label] -= 1
    assert_close(g.input, expected_dz, kernel="backprop", reference="softmax - onehot",
                 what="dJ/dlogits", tol=EXACT)
    # and torch's own cross-entropy agrees
    assert_close(g.loss, F.cross_entropy(z, torch.tensor([label], device=device)),
                 kernel="cross_entropy", reference="F.cross_entropy")


def test_the_naive_log_softmax_does_overflow_there() -> None:
    z = torch.tensor([[1e4, -1e4, 0.0]])
    naive = torch.log(torch.exp(z) / torch.exp(z).sum(1, keepdim=True))
    assert not torch.isfinite(naive).all()  # exp(1e4) = inf: the test above is not idle
    assert torch.isfinite(mlp.log_softmax(z)).all()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_every_integer_label_dtype_against_f_cross_entropy(dtype: torch.dtype,
                                                           generator) -> None:
    z = 5 * torch.randn(9, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=generator)
    for reduction in ("mean", "sum"):
        g = bp.backprop(_identity_net(4, torch.float64), z, y.to(dtype), loss="cross_entropy",
                        reduction=reduction)
        zz = z.clone().requires_grad_()
        ref = F.cross_entropy(zz, y, reduction=reduction)
        (dz,) = torch.autograd.grad(ref, zz)
        kw = dict(kernel="backprop", reference=f"F.cross_entropy ({reduction})")
        assert_close(g.loss, ref.detach(), what="loss", **kw)
        assert_close(g.input, dz, what="dJ/dlogits", kind="grad", **kw)


def test_gradient_is_softmax_minus_target_over_n(generator) -> None:
    """The closed form, written without the kernel: (softmax(z) - onehot(y)) / N."""
    z = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    g = bp.backprop(_identity_net(5, torch.float64), z, y, loss="cross_entropy")
    e = torch.exp(z)
    expected = (e / e.sum(1, keepdim=True) - torch.eye(5, dtype=torch.float64)[y]) / 6
    assert_close(g.input, expected, kernel="backprop", reference="(softmax - onehot) / N",
                 what="dJ/dlogits", kind="grad")
    # a one-hot probability target is the same as its index
    p = bp.backprop(_identity_net(5, torch.float64), z, torch.eye(5, dtype=torch.float64)[y],
                    loss="cross_entropy")
    assert_close(p.loss, g.loss, kernel="backprop", reference="index target", what="loss")


def test_single_sample_takes_a_0d_label(generator) -> None:
    net = mlp.init_mlp([4, 6, 3], generator=generator, dtype=torch.float64)
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    y = torch.tensor([2, 0, 1, 1, 2])
    batch = bp.backprop(net, x, y, loss="cross_entropy", reduction="sum")
    one = bp.backprop(net, x[3], y[3], loss="cross_entropy")
    assert tuple(one.input.shape) == (4,) and one.loss.dim() == 0
    assert_close(one.input, batch.input[3], kernel="backprop", reference="row 3 of the batch",
                 what="dJ/dx", kind="grad")


def _ce(y, x=None, net=None):
    net = net or mlp.init_mlp([3, 4, 3], generator=torch.Generator().manual_seed(0))
    x = torch.ones(5, 3) if x is None else x
    return lambda: bp.backprop(net, x, y, loss="cross_entropy")


PROBS = torch.full((5, 3), 1 / 3)
BAD_LABELS = [
    ("index too large", _ce(torch.tensor([0, 1, 3, 2, 0])), ValueError,
     r"y: class index 3 at position 2 is out of range for a network with 3 outputs; "
     r"expected 0 <= y < 3"),
    ("negative index", _ce(torch.tensor([0, -1, 1, 2, 0])), ValueError,
     r"y: class index -1 at position 1 is out of range"),
    ("float labels", _ce(torch.tensor([0.0, 1, 2, 2, 0])), ValueError,
     r"y: expected class indices of shape \(5,\) with an integer dtype, or probabilities of "
     r"shape \(5, 3\) in x's dtype for x of shape \(5, 3\) and a network with 3 outputs; got "
     r"probabilities \(dtype torch.float32\) of shape \(5,\)"),
    ("bool labels", _ce(torch.ones(5, dtype=torch.bool)), TypeError,
     r"y: expected class indices .* got dtype torch.bool"),
    ("labels as a column", _ce(torch.zeros(5, 1, dtype=torch.long)), ValueError,
     r"got class indices \(dtype torch.int64\) of shape \(5, 1\)"),
    ("labels wrong batch", _ce(torch.zeros(4, dtype=torch.long)), ValueError,
     r"expected class indices of shape \(5,\).*got class indices \(dtype torch.int64\) of "
     r"shape \(4,\)"),
    ("integer one-hot", _ce(torch.eye(3, dtype=torch.long)[[0, 1, 2, 0, 1]]), ValueError,
     r"got class indices \(dtype torch.int64\) of shape \(5, 3\)"),
    ("single x, batch label", _ce(torch.tensor([1]), x=torch.ones(3)), ValueError,
     r"expected class indices of shape \(\) .* got class indices .* of shape \(1,\)"),
    ("probabilities wrong dtype", _ce(PROBS.double()), TypeError,
     r"y: dtype torch.float64 does not match x \(torch.float32\)"),
    ("probabilities wrong width", _ce(torch.full((5, 4), 0.25)), ValueError,
     r"got probabilities \(dtype torch.float32\) of shape \(5, 4\)"),
    ("probabilities not summing to 1", _ce(torch.full((5, 3), 0.3)), ValueError,
     r"y: probabilities must be finite, >= 0 and sum to 1 in each row .* row 0 .* "
     r"summing to 0.9"),
    ("negative probability",
     _ce(torch.tensor([[1 / 3] * 3] * 3 + [[1.5, -0.5, 0.0]] + [[1 / 3] * 3])), ValueError,
     r"row 3 holds \[1.5, -0.5, 0\]"),
    ("nan probability", _ce(torch.tensor([[1 / 3] * 3] * 4 + [[float("nan"), 0.5, 0.5]])),
     ValueError, r"row 4 holds \[nan, 0.5, 0.5\]"),
    ("labels on another device", _ce(torch.zeros(5, dtype=torch.long, device="meta")),
     ValueError, r"y: on device meta, but x on cpu"),
    ("labels not a tensor", _ce([0, 1, 2, 0, 1]), TypeError,
     r"y: for loss='cross_entropy' expected a torch.Tensor \(class indices .*\), got list"),
    # mlp.cross_entropy on its own: softmax - t is its gradient only where rows sum to 1
    # (it returned the loss right and a gradient 0.58 off autograd's)
    ("mlp: probabilities not summing to 1",
     lambda: mlp.cross_entropy(torch.zeros(5, 3), torch.full((5, 3), 0.5)), ValueError,
     r"^target: probabilities must be finite, >= 0 and sum to 1 in each row .* row 0 .* "
     r"summing to 1.5"),
    ("mlp: negative probability",
     lambda: mlp.cross_entropy(torch.zeros(2, 3), torch.tensor([[1 / 3] * 3, [1.5, -0.5, 0.0]])),
     ValueError, r"^target: .* row 1 holds \[1.5, -0.5, 0\]"),
]


@pytest.mark.parametrize("call,error,pattern", [c[1:] for c in BAD_LABELS],
                         ids=[c[0] for c in BAD_LABELS])
def test_bad_labels_give_named_errors(call, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        call()


def test_a_wide_bad_row_is_shown_in_part() -> None:
    net = _identity_net(20)
    y = torch.full((2, 20), 0.05)
    y[1, 19] = 0.5
    with pytest.raises(ValueError, match=r"row 1 holds \[(0.05, ){8}\.\.\.\], summing to 1.45"):
        bp.backprop(net, torch.zeros(2, 20), y, loss="cross_entropy")
