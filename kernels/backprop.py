"""Manual reverse-mode gradients of a loss through an MLP, derived by the chain rule.

With ``delta_L = dJ/dy_hat`` (N, out) and, going back through layer i,

    dJ/dW_i = delta_i^T h_{i-1}          (out_i, in_i)
    dJ/db_i = sum_n delta_i              (out_i,)
    dJ/dh_{i-1} = delta_i W_i            (N, in_i)
    delta_{i-1} = dJ/dh_{i-1} * rho'(z_{i-1})

and ``dJ/dx = dJ/dh_0``. No torch.autograd: every line above is one tensor op below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels._checks import check_choice, check_same, check_tensor, shape_str
from kernels.mlp import (
    LOSSES,
    MLP,
    REDUCTIONS,
    activation_grad,
    check_input,
    forward_cache,
    loss_grad,
    loss_value,
)


@dataclass(frozen=True)
class Gradients:
    """The loss and its gradient for every weight, bias and the input.

    Each gradient has its parameter's shape; ``input`` has ``x``'s shape.
    """

    loss: torch.Tensor
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    input: torch.Tensor

    @property
    def layer_norms(self) -> torch.Tensor:
        """(L,): Frobenius norm of dJ/dW_i per layer, input side first.

        Shrinking norms towards the input are the vanishing-gradient signature.
        """
        return torch.stack([g.norm() for g in self.weights])


def _check_target(net: MLP, x: torch.Tensor, y: object) -> torch.Tensor:
    """``y`` as (N, out): accepts (N, out), (N,) when out == 1, and for a single x (out,)."""
    y = check_tensor("y", y, ndims=(0, 1, 2))
    check_same("y", y, "x", x)
    p = net.sizes[-1]
    if x.dim() == 1:
        ok = {(p,)} | ({()} if p == 1 else set())
        want = f"({p},)" + (" or ()" if p == 1 else "")
    else:
        n = x.shape[0]
        ok = {(n, p)} | ({(n,)} if p == 1 else set())
        want = f"({n}, {p})" + (f" or ({n},)" if p == 1 else "")
    if tuple(y.shape) not in ok:
        raise ValueError(
            f"y: expected shape {want} for x of shape {shape_str(x)} and a network with "
            f"{p} output(s), got {shape_str(y)}"
        )
    return y.reshape(-1, p)


@torch.no_grad()
def backprop(
    net: MLP,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str = "squared",
    reduction: str = "mean",
) -> Gradients:
    """Loss J and dJ/d(every weight, bias, input) for x (N, in) or (in,).

    ``loss``: "squared" (1/2 ||y_hat - y||^2 per sample) or "log_cosh"
    (sum_j log cosh(y_hat_j - y_j) per sample); ``reduction``: "mean" (J is the mean
    of per-sample losses over the batch, the default) or "sum".
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a kernels.mlp.MLP, got {type(net).__name__}")
    check_choice("loss", loss, list(LOSSES))
    check_choice("reduction", reduction, REDUCTIONS)
    x = check_input(net, x)
    y2 = _check_target(net, x, y)
    single = x.dim() == 1
    x2 = x.unsqueeze(0) if single else x

    zs, hs = forward_cache(net, x2)
    r = zs[-1] - y2
    scale = 1.0 / x2.shape[0] if reduction == "mean" else 1.0
    value = loss_value(loss, r).sum() * scale
    delta = loss_grad(loss, r) * scale  # dJ/dy_hat, (N, out)

    dws: list[torch.Tensor] = [None] * net.depth  # type: ignore[list-item]
    dbs: list[torch.Tensor] = [None] * net.depth  # type: ignore[list-item]
    for i in range(net.depth - 1, -1, -1):
        dws[i] = delta.t() @ hs[i]
        dbs[i] = delta.sum(0)
        dh = delta @ net.weights[i]
        if i > 0:
            delta = dh * activation_grad(net.activation, zs[i - 1], hs[i])
    dx = dh.squeeze(0) if single else dh
    return Gradients(loss=value, weights=tuple(dws), biases=tuple(dbs), input=dx)
