"""backprop.layer_statistics against torch autograd with ``retain_grad`` on every layer's
output, the way the course's notebook reads them."""

from __future__ import annotations

import pytest
import torch

from handgrad.kernels import backprop as bp
from handgrad.kernels import mlp
from handgrad.testing.compare import assert_close
from handgrad.testing.tolerances import Tol
from verify.backprop_cases import retain_grad_statistics

CASES = [  # sizes, activation, loss, n, reduction, init
    ((12, 9, 9, 9, 4), "tanh", "cross_entropy", 16, "mean", 1.0),
    ((5, 6, 6, 1), "sigmoid", "squared", None, "mean", 2.0),
    ((7, 8, 8, 3), "relu", "log_cosh", 6, "sum", 0.7),
    # the course's study network, with the smallest initialisation: norms near 1e-10
    ((784, 50, 50, 50, 50, 50, 50, 50, 10), "tanh", "cross_entropy", 32, "mean", 0.01),
]


@pytest.mark.parametrize("sizes,activation,loss,n,reduction,init", CASES,
                         ids=["tanh_ce", "sigmoid_single", "relu_logcosh_sum", "study_d0.01"])
def test_against_autograd_retain_grad(sizes, activation, loss, n, reduction, init,
                                      generator) -> None:
    net = mlp.init_mlp(sizes, activation, init, generator=generator, dtype=torch.float64)
    d, p = sizes[0], sizes[-1]
    x = torch.randn(*(() if n is None else (n,)), d, generator=generator, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, p, (() if n is None else (n,)), generator=generator)
    else:
        y = torch.randn(*(() if n is None else (n,)), p, generator=generator,
                        dtype=torch.float64)
    df = bp.layer_statistics(net, x, y, loss=loss, reduction=reduction)
    assert list(df["layer"]) == list(range(1, len(sizes)))
    assert list(df["units"]) == list(sizes[1:])
    expected = retain_grad_statistics(net, x, y, loss=loss, reduction=reduction)
    names = ["mean_activation", "mean_abs_activation", "activation_grad_norm",
             "weight_grad_norm"]
    for name, e in zip(names, expected):
        got = torch.tensor(df[name].to_numpy(), dtype=torch.float64)
        assert_close(got, e, kernel="layer_statistics", reference="torch_autograd (retain_grad)",
                     what=name, kind="grad")


def test_tiny_gradient_norms_do_not_underflow_in_float32() -> None:
    """Squares of 1e-22 (1e-44) are subnormal in float32: a float32 sum of them is off by
    1%; the norms are summed in float64. y_hat = 1e-22 (4,), dJ/dy_hat = y_hat."""
    net = mlp.MLP(weights=[1e-22 * torch.eye(4)])
    df = bp.layer_statistics(net, torch.ones(1, 4), torch.zeros(1, 4), reduction="sum")
    # ||dJ/dy_hat|| = sqrt(4 * 1e-44); dJ/dW = dJ/dy_hat^T x has 16 entries of 1e-22
    expected = torch.tensor([2e-22, 4e-22, 1e-22], dtype=torch.float64)
    got = torch.tensor(df.loc[0, ["activation_grad_norm", "weight_grad_norm",
                                  "mean_activation"]].to_numpy(dtype=float))
    assert_close(got, expected, kernel="layer_statistics", reference="by hand",
                 tol=Tol(rtol=1e-6, atol=0.0))  # float32 inputs, exact float64 sums


def test_bad_input_is_refused_by_name() -> None:
    net = mlp.init_mlp([3, 4, 2], generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"y: expected shape \(5, 2\)"):
        bp.layer_statistics(net, torch.ones(5, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"loss: expected one of"):
        bp.layer_statistics(net, torch.ones(5, 3), torch.ones(5, 2), loss="hinge")
