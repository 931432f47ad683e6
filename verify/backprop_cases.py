"""Backprop test cases shared by several test modules (not a test module itself): the
course's reference networks (``Case``, ``CASES``, ``make_problem``), the check of a result
against a reference (``check_all``), the planted-bug problem of the attribution tests
(``problem``) and the layer statistics by ``retain_grad`` (``retain_grad_statistics``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from handgrad.kernels import backprop as bp
from handgrad.kernels import mlp
from handgrad.testing import attribution
from handgrad.testing.compare import assert_close
from handgrad.testing.references import (
    TORCH_ACTIVATIONS,
    torch_loss,
)
from verify.planted import BATCH, NET_SIZES


@dataclass(frozen=True)
class Case:
    name: str
    sizes: tuple[int, ...]
    activation: str
    loss: str
    n: int | None  # batch size; None = a single unbatched sample
    reduction: str = "mean"
    init: str | float = "xavier"
    # cross-entropy's y: "indices" (int64 class labels) or "probs" (rows of a softmax)
    target: str = "indices"


CASES = [
    # course: one hidden layer, W1 20x10 (D=10, K=20), w2 of size 20, tanh, log-cosh,
    # J = (1/N) sum of per-sample losses
    Case("course_one_hidden_tanh_logcosh", (10, 20, 1), "tanh", "log_cosh", 16, init=0.5),
    # course: six layers 4-4-4-4-4-4-1, sigmoid hidden, linear out, one sample, (y_hat-y)^2/2
    Case("course_six_layer_sigmoid_single", (4, 4, 4, 4, 4, 4, 1), "sigmoid", "squared", None),
    # course: 13 tabular features, hidden 20 and 10, tanh
    Case("course_tabular_13_20_10_tanh", (13, 20, 10, 1), "tanh", "squared", 32),
    Case("tabular_13_20_10_tanh_logcosh_sum", (13, 20, 10, 1), "tanh", "log_cosh", 32, "sum"),
    Case("relu_multi_output", (6, 8, 8, 8, 3), "relu", "squared", 7),
    Case("identity_linear_logcosh", (5, 4, 2), "identity", "log_cosh", 3, "sum"),
    Case("single_layer_regression", (3, 2), "tanh", "squared", 4),
    # course: classification networks trained with softmax cross-entropy
    Case("classifier_tanh_cross_entropy_indices", (20, 16, 10), "tanh", "cross_entropy", 12),
    Case("classifier_relu_cross_entropy_probs_sum", (6, 8, 8, 4), "relu", "cross_entropy", 5,
         "sum", target="probs"),
    Case("classifier_sigmoid_cross_entropy_single", (5, 7, 3), "sigmoid", "cross_entropy",
         None),
    # course: softmax regression from scratch, one linear layer
    Case("softmax_regression_probs", (8, 4), "identity", "cross_entropy", 6, target="probs"),
]


CASE_IDS = [c.name for c in CASES]


def make_problem(case: Case, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = mlp.init_mlp(case.sizes, case.activation, case.init, generator=g, dtype=torch.float64)
    d, p = case.sizes[0], case.sizes[-1]
    shape_x = (d,) if case.n is None else (case.n, d)
    shape_y = (p,) if case.n is None else (case.n, p)
    x = torch.randn(shape_x, generator=g, dtype=torch.float64)
    if case.loss == "cross_entropy" and case.target == "indices":
        y = torch.randint(0, p, shape_y[:-1], generator=g).to(device)
    else:
        y = torch.randn(shape_y, generator=g, dtype=torch.float64)
        if case.loss == "cross_entropy":  # probabilities: rows of a softmax, in float64
            y = torch.softmax(2 * y, dim=-1)
        y = y.to(device, dtype)
    return net.to(dtype=dtype, device=device), x.to(device, dtype), y


def check_all(g: bp.Gradients, ref, *, reference: str, tol=None, problem=None) -> None:
    """Loss and every gradient of ``g`` against ``ref = (J, [dW], [db], dx)``. With
    ``problem = (net, x, y, loss, reduction)`` a failure also says which layer the error
    starts at and what kind of bug it looks like (handgrad.testing.attribution)."""
    try:
        _check_all(g, ref, reference=reference, tol=tol)
    except AssertionError as exc:
        if problem is None:
            raise
        net, x, y, loss, reduction = problem
        diagnosis = attribution.diagnose(g, net, x, y, loss=loss, reduction=reduction)
        raise AssertionError(f"{exc}\n{diagnosis.message()}") from None


def _check_all(g: bp.Gradients, ref, *, reference: str, tol=None) -> None:
    value, dws, dbs, dx = ref
    common = dict(kernel="backprop", reference=reference, tol=tol)
    assert_close(g.loss, value, what="loss", kind="forward", **common)
    for i, (a, e) in enumerate(zip(g.weights, dws)):
        assert_close(a, e, what=f"dJ/dW{i + 1}", kind="grad", **common)
    for i, (a, e) in enumerate(zip(g.biases, dbs)):
        assert_close(a, e, what=f"dJ/db{i + 1}", kind="grad", **common)
    assert_close(g.input, dx, what="dJ/dx", kind="grad", **common)


def problem(activation: str = "tanh", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = mlp.init_mlp(NET_SIZES, activation, 0.5, generator=g, dtype=torch.float64)
    x = torch.randn(BATCH, NET_SIZES[0], generator=g, dtype=torch.float64)
    y = torch.randn(BATCH, NET_SIZES[-1], generator=g, dtype=torch.float64)
    return net, x, y


def retain_grad_statistics(net: mlp.MLP, x, y, *, loss: str, reduction: str = "mean"):
    """(mean h_i, mean |h_i|, ||dJ/dh_i||, ||dJ/dW_i||) per layer, from autograd."""
    ws = [w.detach().clone().requires_grad_() for w in net.weights]
    bs = [b.detach().clone() for b in net.biases]
    h = x.reshape(-1, x.shape[-1])
    outs = []
    with torch.enable_grad():
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = torch.nn.functional.linear(h, w, b)
            if i < len(ws) - 1:
                h = TORCH_ACTIVATIONS[net.activation](h)
            h.retain_grad()
            outs.append(h)
        # the loss of the last h, written like the other references
        yy = y.reshape(1, *y.shape) if x.dim() == 1 else y
        if loss == "cross_entropy":
            J = torch.nn.functional.cross_entropy(
                h, yy.reshape(-1).long() if not yy.dtype.is_floating_point else yy,
                reduction=reduction)
        else:
            ident = [torch.eye(h.shape[1], dtype=h.dtype)]
            J = torch_loss(ident, [torch.zeros(h.shape[1], dtype=h.dtype)], h, yy,
                           activation="identity", loss=loss, reduction=reduction)
        J.backward()
    stack = torch.stack
    return (stack([o.detach().mean() for o in outs]),
            stack([o.detach().abs().mean() for o in outs]),
            stack([o.grad.norm() for o in outs]), stack([w.grad.norm() for w in ws]))


