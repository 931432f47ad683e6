"""Where a hand-derived backprop goes wrong, and how.

``diagnose`` compares a kernel's dW_i and db_i with torch.autograd's, layer by layer from
the output side, names the first layer that disagrees (the error starts there: backprop
carries it towards the input), and tests that layer's gradient against the usual bug
signatures, each built from autograd's own quantities:

- sign flip: the kernel's gradient is -reference;
- transpose: it is the reference transposed (dW only);
- constant factor: it is c * reference for one c (2, 1/2, N or 1/N are named);
- activation of the wrong layer: it equals the gradient built with rho'(z_j) of another
  layer j in place of rho'(z_i), or with another layer's activations h_j in place of the
  layer's input h_{i-1} in dW_i = delta_i^T h_{i-1}.

Layers are numbered from 1 (input side): W_1 is the first weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from handgrad.kernels.backprop import Gradients
from handgrad.kernels.mlp import MLP
from handgrad.testing.references import TORCH_ACTIVATIONS
from handgrad.testing.tolerances import Tol, tol_for


@dataclass(frozen=True)
class LayerCheck:
    """One gradient of one layer against autograd: the largest error relative to the
    tolerance (< 1 agrees)."""

    layer: int  # 1-based, input side first
    tensor: str  # "dW" or "db"
    worst_ratio: float

    @property
    def agrees(self) -> bool:
        return self.worst_ratio < 1


@dataclass(frozen=True)
class Diagnosis:
    """Every layer's check (output side first), the first disagreeing layer and tensor
    from the output side (None when all agree), and the bug signature recognised there
    (None when none fits)."""

    checks: tuple[LayerCheck, ...]
    layer: int | None
    tensor: str | None
    signature: str | None
    detail: str

    def message(self) -> str:
        rows = "\n".join(f"  layer {c.layer} {c.tensor}: "
                         f"{'ok' if c.agrees else 'DISAGREES'} (worst error "
                         f"{c.worst_ratio:.3g} x tolerance)" for c in self.checks)
        if self.layer is None:
            return "attribution: every dW and db agrees with torch.autograd\n" + rows
        head = (f"attribution: the first layer from the output side whose gradient disagrees "
                f"is layer {self.layer} ({self.tensor}{self.layer}); ")
        head += (f"signature: {self.signature} ({self.detail})" if self.signature
                 else f"no known bug signature fits ({self.detail})")
        return head + "\n" + rows


@dataclass(frozen=True)
class _Reference:
    zs: list[torch.Tensor]  # z_1..z_L, (N, out_i)
    hs: list[torch.Tensor]  # h_0 = x .. h_{L-1}, the inputs of layers 1..L
    dh: list[torch.Tensor | None]  # dJ/dh_i for i = 1..L-1 (None for the output layer)
    dz: list[torch.Tensor]  # dJ/dz_i = delta_i for i = 1..L
    dws: list[torch.Tensor]
    dbs: list[torch.Tensor]
    n: int


def _reference(net: MLP, x, y, loss: str, reduction: str) -> _Reference:
    """Every layer's z, h, dJ/dh, dJ/dW and dJ/db by torch.autograd, in float64."""
    ws = [w.detach().double().requires_grad_() for w in net.weights]
    bs = [b.detach().double().requires_grad_() for b in net.biases]
    h = x.detach().double()
    h = h.unsqueeze(0) if h.dim() == 1 else h
    rho = TORCH_ACTIVATIONS[net.activation]
    zs, hs = [], [h]
    with torch.enable_grad():
        for i, (w, b) in enumerate(zip(ws, bs)):
            z = F.linear(hs[-1], w, b)
            zs.append(z)
            if i < len(ws) - 1:
                hs.append(rho(z))
        r = zs[-1] - y.detach().double().reshape(zs[-1].shape)
        per = (0.5 * r**2).sum(1) if loss == "squared" else torch.log(torch.cosh(r)).sum(1)
        J = per.mean() if reduction == "mean" else per.sum()
        grads = torch.autograd.grad(J, [*ws, *bs, *hs[1:], *zs])
    L = len(ws)
    return _Reference(zs=[z.detach() for z in zs], hs=[t.detach() for t in hs],
                      dh=list(grads[2 * L:3 * L - 1]) + [None], dz=list(grads[3 * L - 1:]),
                      dws=list(grads[:L]),
                      dbs=list(grads[L:2 * L]), n=hs[0].shape[0])


def _ratio(m: torch.Tensor, c: torch.Tensor, tol: Tol) -> float:
    """max |m - c| / (atol + rtol |c|); inf when the shapes differ."""
    if m.shape != c.shape:
        return float("inf")
    return float(((m - c).abs() / (tol.atol + tol.rtol * c.abs())).max()) if m.numel() else 0.0


def _factor_name(c: float, n: int) -> str:
    for value, name in ((2.0, "2"), (0.5, "1/2"), (float(n), f"N = {n}, the batch size"),
                        (1.0 / n, f"1/N, N = {n} the batch size")):
        if abs(c - value) <= 1e-6 * abs(value):
            return f"{c:.6g} ({name})"
    return f"{c:.6g}"


def _signature(i: int, tensor: str, m: torch.Tensor, ref: _Reference, net: MLP, tol: Tol
               ) -> tuple[str | None, str]:
    """(signature, detail) of layer index i's (0-based) gradient ``m``."""
    r = ref.dws[i] if tensor == "dW" else ref.dbs[i]
    name = f"{tensor}{i + 1}"
    if _ratio(m, -r, tol) < 1:
        return "sign flip", f"{name} = -reference"
    if tensor == "dW" and _ratio(m, r.t(), tol) < 1:
        return "transpose", f"{name} = reference^T, shape {tuple(m.shape)}"
    if m.shape == r.shape and float((r * r).sum()) > 0:
        c = float((m * r).sum() / (r * r).sum())
        if _ratio(m, c * r, tol) < 1:
            return "constant factor", f"{name} = {_factor_name(c, ref.n)} x reference"
    rho = TORCH_ACTIVATIONS[net.activation]
    hidden = len(ref.zs) - 1
    if i < hidden:  # rho'(z_j) of another hidden layer in place of rho'(z_i)
        for j in range(hidden):
            if j == i or ref.zs[j].shape != ref.zs[i].shape:
                continue
            z = ref.zs[j].clone().requires_grad_()
            with torch.enable_grad():
                (drho,) = torch.autograd.grad(rho(z).sum(), z)
            delta = ref.dh[i] * drho
            cand = delta.t() @ ref.hs[i] if tensor == "dW" else delta.sum(0)
            if _ratio(m, cand, tol) < 1:
                return ("activation of the wrong layer",
                        f"{name} is what rho'(z_{j + 1}) of layer {j + 1} gives in place of "
                        f"layer {i + 1}'s own rho'(z_{i + 1})")
    if tensor == "dW":  # another layer's activations in place of the layer's input h_{i-1}
        delta = ref.dz[i]
        for j, h in enumerate(ref.hs):
            if j != i and h.shape == ref.hs[i].shape and _ratio(m, delta.t() @ h, tol) < 1:
                return ("activation of the wrong layer",
                        f"{name} = delta_{i + 1}^T h_{j} (layer {j}'s output) in place of "
                        f"delta_{i + 1}^T h_{i}, layer {i + 1}'s input")
    return None, f"{name}: not -reference, not reference^T, not c x reference, and no other " \
        "layer's activation explains it"


def diagnose(grads: Gradients, net: MLP, x, y, *, loss: str = "squared",
             reduction: str = "mean") -> Diagnosis:
    """Each layer's dW and db of ``grads`` against torch.autograd (output side first), the
    first that disagrees, and the bug signature that explains it (module docstring)."""
    ref = _reference(net, x, y, loss, reduction)
    tol = tol_for(grads.weights[0].dtype, "grad")
    checks, first = [], None
    for i in reversed(range(net.depth)):
        for tensor, m, r in (("dW", grads.weights[i], ref.dws[i]),
                             ("db", grads.biases[i], ref.dbs[i])):
            c = LayerCheck(i + 1, tensor, _ratio(m.detach().double(), r, tol))
            checks.append(c)
            if first is None and not c.agrees:
                first = (i, tensor, m.detach().double())
    if first is None:
        return Diagnosis(tuple(checks), None, None, None, "")
    i, tensor, m = first
    signature, detail = _signature(i, tensor, m, ref, net, tol)
    return Diagnosis(tuple(checks), i + 1, tensor, signature, detail)
