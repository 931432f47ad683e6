"""Where a hand-derived backprop goes wrong, and how.

``diagnose`` compares a kernel's dW_i and db_i with torch.autograd's, layer by layer from
the output side, then its input gradient dx = dJ/dx (``grads.input``, delta_1 W_1) where
the gradients carry one, names the first gradient that disagrees (the error starts there:
backprop carries it towards the input), and tests that gradient against the usual bug
signatures, each built from autograd's own quantities:

- sign flip: the kernel's gradient is -reference;
- transpose: it is the reference transposed (dW and dx only);
- constant factor: it is c * reference for one c (2, 1/2, N or 1/N are named);
- cast to a narrower dtype: each of its values is a float32 (float16, bfloat16) number
  and the reference's are not, and it is the reference to that dtype's gradient
  tolerance: computed in that dtype and cast back (a gradient whose dtype itself is
  narrower than the network's is refused, as check_vjp refuses it);
- missing activation derivative (dW_i and db_i of a hidden layer i): it is the gradient
  built with delta_i = dJ/dh_i, rho'(z_i) left out (tanh's 1 - h_i^2, sigmoid's
  h_i (1 - h_i), relu's mask z_i > 0 not applied); the candidate is written here by hand,
  from autograd's dJ/dh_i and h_{i-1};
- activation of the wrong layer (dW_i and db_i): it equals the gradient built with
  rho'(z_j) of another layer j in place of rho'(z_i), or with another layer's activations
  h_j in place of the layer's input h_{i-1} in dW_i = delta_i^T h_{i-1}.

Layers are numbered from 1 (input side): W_1 is the first weight matrix. The input
gradient's check is numbered layer 0 (h_0 = x), tensor "dx"; where ``grads.input`` is None
it is not checked, and the diagnosis says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# backprop's own checks of y (its shape, and cross-entropy's probabilities): what backprop
# refuses, diagnose refuses the same way, rather than naming a right result wrong
from handgrad.kernels.backprop import LOSSES, Gradients, _check_classes, _check_target
from handgrad.kernels.mlp import MLP, REDUCTIONS
from handgrad.testing.checks import _computed_narrower, _narrower
from handgrad.testing.references import TORCH_ACTIVATIONS
from handgrad.testing.tolerances import Tol, tol_for


@dataclass(frozen=True)
class LayerCheck:
    """One gradient of one layer against autograd: the largest error relative to the
    tolerance (< 1 agrees)."""

    layer: int  # 1-based, input side first; 0 for the input gradient dx
    tensor: str  # "dW", "db", or "dx" (dJ/dx, grads.input)
    worst_ratio: float

    @property
    def agrees(self) -> bool:
        return self.worst_ratio < 1

    @property
    def name(self) -> str:
        return "input dx" if self.tensor == "dx" else f"layer {self.layer} {self.tensor}"


@dataclass(frozen=True)
class Diagnosis:
    """Every layer's check (output side first, the input gradient's last where it was
    checked), the first disagreeing layer and tensor from the output side (None when all
    agree; layer 0 and tensor "dx" for the input gradient), and the bug signature
    recognised there (None when none fits)."""

    checks: tuple[LayerCheck, ...]
    layer: int | None
    tensor: str | None
    signature: str | None
    detail: str

    @property
    def input_checked(self) -> bool:
        """Whether the input gradient dx was compared (``grads.input`` was not None)."""
        return any(c.tensor == "dx" for c in self.checks)

    def message(self) -> str:
        rows = "\n".join(f"  {c.name}: {'ok' if c.agrees else 'DISAGREES'} (worst error "
                         f"{c.worst_ratio:.3g} x tolerance)" for c in self.checks)
        if not self.input_checked:
            rows += "\n  input dx: not checked (grads.input is None)"
        if self.layer is None:
            tail = (", and so does the input gradient dx" if self.input_checked else
                    "; the input gradient dx is not checked (grads.input is None)")
            return f"attribution: every dW and db agrees with torch.autograd{tail}\n" + rows
        if self.tensor == "dx":
            head = ("attribution: every dW and db agrees with torch.autograd, but the input "
                    "gradient dx (grads.input, dJ/dx = delta_1 W_1) disagrees; ")
        else:
            head = (f"attribution: the first layer from the output side whose gradient "
                    f"disagrees is layer {self.layer} ({self.tensor}{self.layer}); ")
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
    dx: torch.Tensor  # dJ/dx, x's shape
    n: int


def _reference(net: MLP, x, y, loss: str, reduction: str) -> _Reference:
    """Every layer's z, h, dJ/dh, dJ/dW and dJ/db, and dJ/dx, by torch.autograd, in
    float64."""
    ws = [w.detach().double().requires_grad_() for w in net.weights]
    bs = [b.detach().double().requires_grad_() for b in net.biases]
    x0 = x.detach().double().requires_grad_()
    rho = TORCH_ACTIVATIONS[net.activation]
    with torch.enable_grad():
        zs, hs = [], [x0.unsqueeze(0) if x0.dim() == 1 else x0]
        for i, (w, b) in enumerate(zip(ws, bs)):
            z = F.linear(hs[-1], w, b)
            zs.append(z)
            if i < len(ws) - 1:
                hs.append(rho(z))
        z = zs[-1]
        if loss == "cross_entropy":  # y: class indices, or probabilities like the logits
            t = (y.detach().double().reshape(z.shape) if y.dtype.is_floating_point
                 else y.detach().reshape(-1).long())
            per = F.cross_entropy(z, t, reduction="none")
        else:
            r = z - y.detach().double().reshape(z.shape)
            # log cosh r as log((e^r + e^-r) / 2): log(cosh(r)) overflows for |r| > ~710
            per = ((0.5 * r**2).sum(1) if loss == "squared"
                   else (torch.logaddexp(r, -r) - math.log(2.0)).sum(1))
        J = per.mean() if reduction == "mean" else per.sum()
        grads = torch.autograd.grad(J, [*ws, *bs, *hs[1:], *zs, x0])
    L = len(ws)
    return _Reference(zs=[z.detach() for z in zs], hs=[t.detach() for t in hs],
                      dh=list(grads[2 * L:3 * L - 1]) + [None],
                      dz=list(grads[3 * L - 1:4 * L - 1]), dws=list(grads[:L]),
                      dbs=list(grads[L:2 * L]), dx=grads[-1], n=hs[0].shape[0])


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


# rho'(z_k) per activation, as a student leaves it out of delta_k = dJ/dh_k * rho'(z_k),
# and delta_k with it put back (the fix); identity' = 1: nothing to leave out
_MISSING_DERIVATIVE = {
    "tanh": ("tanh' = 1 - h_{k}^2", "dJ/dh_{k} * (1 - h_{k}^2)"),
    "sigmoid": ("sigmoid' = h_{k} (1 - h_{k})", "dJ/dh_{k} * h_{k} * (1 - h_{k})"),
    "relu": ("relu' (the mask z_{k} > 0, not applied)", "dJ/dh_{k} * (z_{k} > 0)"),
}


def _signature(i: int, tensor: str, m: torch.Tensor, ref: _Reference, net: MLP, tol: Tol
               ) -> tuple[str | None, str]:
    """(signature, detail) of layer index i's (0-based) gradient ``m``, in its own dtype;
    ``tensor`` "dx": the input gradient (``i`` unused)."""
    r = {"dW": ref.dws, "db": ref.dbs}[tensor][i] if tensor != "dx" else ref.dx
    name = f"{tensor}{i + 1}" if tensor != "dx" else "dx"
    # m in its own dtype: a float64 gradient whose every value is a float32 number
    narrower = _computed_narrower(m, r)
    if narrower:
        return "cast to a narrower dtype", f"{name}: " + narrower.replace(
            "inside the derivative", "inside the kernel")
    m = m.double()
    if _ratio(m, -r, tol) < 1:
        return "sign flip", f"{name} = -reference"
    if tensor != "db" and r.dim() == 2 and _ratio(m, r.t(), tol) < 1:
        return "transpose", f"{name} = reference^T, shape {tuple(m.shape)}"
    if m.shape == r.shape and float((r * r).sum()) > 0:
        c = float((m * r).sum() / (r * r).sum())
        if _ratio(m, c * r, tol) < 1:
            return "constant factor", f"{name} = {_factor_name(c, ref.n)} x reference"
    if tensor == "dx":
        return None, f"{name}: not -reference, not reference^T, not c x reference"
    rho = TORCH_ACTIVATIONS[net.activation]
    hidden = len(ref.zs) - 1
    missing = _MISSING_DERIVATIVE.get(net.activation) if i < hidden else None
    if missing is not None:  # delta_k = dJ/dh_k, rho'(z_k) left out (k = i + 1)
        k, dh = i + 1, ref.dh[i]
        cand = dh.t() @ ref.hs[i] if tensor == "dW" else dh.sum(0)
        if _ratio(m, cand, tol) < 1:
            return ("missing activation derivative",
                    f"{name} is what delta_{k} = dJ/dh_{k} gives: layer {k}'s "
                    f"{missing[0].format(k=k)} is missing; delta_{k} = "
                    f"{missing[1].format(k=k)}")
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
    tried = (f", not missing layer {i + 1}'s rho'(z_{i + 1})" if missing is not None
             else "")
    return None, (f"{name}: not -reference, not reference^T, not c x reference{tried}, and "
                  "no other layer's activation explains it")


def _tensor(name: str, t: object, device: torch.device) -> torch.Tensor:
    """A dense tensor on the network's ``device`` (never meta: an MLP holds values), else a
    TypeError or ValueError naming ``name``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, the network on {device}; expected one "
                         "device")
    if t.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (torch.strided) tensor, got a {t.layout} "
                         "tensor (.to_dense())")
    return t


def _not_narrower(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    """A TypeError naming ``name`` where gradient ``t`` is in a narrower dtype than the
    network's ``dtype`` (float32 for float64), as check_vjp refuses a gradient narrower than
    its argument: it has lost the precision a comparison at the network's tolerance reads
    as a wrong gradient, and at its own dtype's it passes a cast inside the kernel."""
    if _narrower(t.dtype, dtype):
        raise TypeError(f"{name}: dtype {t.dtype} for a network of dtype {dtype}; expected "
                        f"{dtype} (or a wider dtype): a gradient narrower than the network's "
                        "weights has lost their precision (a cast inside the kernel?), so it "
                        "is not compared")


def _check_arguments(grads, net, x, y, loss, reduction) -> None:
    """diagnose's arguments, each refused by name: the reference computes nothing from
    what the kernel would have refused."""
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a handgrad.kernels.mlp.MLP, got {type(net).__name__}")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss: expected one of {list(LOSSES)}, got {loss!r}")
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
    device = net.weights[0].device
    parts = [getattr(grads, part, None) for part in ("weights", "biases")]
    dx = getattr(grads, "input", None)
    if not all(isinstance(p, (tuple, list)) for p in parts):
        raise TypeError(f"grads: expected a handgrad.kernels.backprop.Gradients (backprop's "
                        f"result), got {type(grads).__name__}")
    wdtype = net.weights[0].dtype
    for part, ts in zip(("weights", "biases"), parts):
        if len(ts) != net.depth:
            raise ValueError(f"grads: {len(ts)} {part} gradients for a network of "
                             f"{net.depth} layers; expected one per layer")
        for i, t in enumerate(ts):
            if not _tensor(f"grads.{part}[{i}]", t, device).dtype.is_floating_point:
                raise TypeError(f"grads.{part}[{i}]: expected a floating-point tensor, got "
                                f"dtype {t.dtype}")
    if dx is not None and not _tensor("grads.input", dx, device).dtype.is_floating_point:
        raise TypeError(f"grads.input: expected a floating-point tensor or None, got dtype "
                        f"{dx.dtype}")
    # then each one's dtype against the network's, once every one is a tensor there
    for part, ts in zip(("weights", "biases"), parts):
        for i, t in enumerate(ts):
            _not_narrower(f"grads.{part}[{i}]", t, wdtype)
    if dx is not None:
        _not_narrower("grads.input", dx, wdtype)
    x = _tensor("x", x, device)
    if not x.dtype.is_floating_point:
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    # backprop refuses x or y of another dtype than the weights': so does this
    if x.dtype != wdtype:
        raise TypeError(f"x: dtype {x.dtype} does not match the network's weights ({wdtype}); "
                        "expected the x backprop was given")
    if x.dim() not in (1, 2) or x.shape[-1] != net.sizes[0]:
        raise ValueError(f"x: expected shape (N, {net.sizes[0]}) or ({net.sizes[0]},) for this "
                         f"network, got {tuple(x.shape)}")
    n, c = (1 if x.dim() == 1 else x.shape[0]), net.sizes[-1]
    if n == 0 and reduction == "mean":  # as backprop refuses it (the reference's mean is
        # nan, its gradients 0: any zero grads had been told they agree)
        raise ValueError(f"x: an empty batch (shape {tuple(x.shape)}) has no mean loss; "
                         "expected at least one sample, or reduction='sum' (backprop "
                         "refuses reduction='mean' there)")
    y = _tensor("y", y, device)
    indices = loss == "cross_entropy" and not y.dtype.is_floating_point
    if indices:
        if y.dtype.is_complex or y.dtype == torch.bool or y.numel() != n:
            raise ValueError(f"y: for loss='cross_entropy' expected {n} class indices of an "
                             f"integer dtype or probabilities ({n}, {c}), got shape "
                             f"{tuple(y.shape)} of dtype {y.dtype}")
        if n and not (0 <= int(y.min()) and int(y.max()) < c):
            raise ValueError(f"y: class indices must lie in [0, {c}) for {c} outputs, got "
                             f"values from {int(y.min())} to {int(y.max())}")
    else:
        if not y.dtype.is_floating_point:
            raise TypeError(f"y: for loss={loss!r} expected a floating-point tensor, got "
                            f"dtype {y.dtype}")
        if y.dtype != x.dtype:
            raise TypeError(f"y: dtype {y.dtype} does not match x ({x.dtype}); expected the y "
                            "backprop was given")
        if y.numel() != n * c:
            raise ValueError(f"y: expected {n * c} values (shape ({n}, {c})) for x of shape "
                             f"{tuple(x.shape)} and a network with {c} outputs, got shape "
                             f"{tuple(y.shape)}")
    for name, t in (("x", x), ("y", y)):
        if t.dtype.is_floating_point and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{name}: holds NaN or inf; expected finite values")
    # then backprop's own checks: y of the right size in another shape (y.t()), or
    # probabilities whose rows do not sum to 1 or hold a negative, as backprop refuses them
    if loss == "cross_entropy":
        _check_classes(net, x, y)
    else:
        _check_target(net, x, y)


def diagnose(grads: Gradients, net: MLP, x, y, *, loss: str = "squared",
             reduction: str = "mean") -> Diagnosis:
    """Each layer's dW and db of ``grads`` against torch.autograd (output side first),
    then the input gradient dx (``grads.input``; not checked, and said so, where it is
    None), the first that disagrees, and the bug signature that explains it (module
    docstring).

    ``grads``: backprop's result for ``net`` at ``x`` (N, in) or (in,) and ``y``;
    ``loss``: one of ``handgrad.kernels.backprop.LOSSES`` ("squared", "log_cosh",
    "cross_entropy": ``y`` class indices (N,) of an integer dtype or probabilities (N, C));
    ``reduction``: "mean" or "sum". A bad argument is a TypeError or ValueError naming it:
    among them a gradient in a narrower dtype than the network's (float32 for float64), as
    check_vjp refuses one narrower than its argument. Each gradient is compared at the
    gradient tolerance of the network's dtype (a wider one too).
    """
    _check_arguments(grads, net, x, y, loss, reduction)
    ref = _reference(net, x, y, loss, reduction)
    # the network's dtype's tolerance, for each gradient (none is narrower: refused above;
    # a wider one is compared at it, as check_vjp compares a gradient at its argument's)
    tol = tol_for(net.weights[0].dtype, "grad")
    checks, first = [], None
    for i in reversed(range(net.depth)):
        for tensor, m, r in (("dW", grads.weights[i], ref.dws[i]),
                             ("db", grads.biases[i], ref.dbs[i])):
            c = LayerCheck(i + 1, tensor, _ratio(m.detach().double(), r, tol))
            checks.append(c)
            if first is None and not c.agrees:
                first = (i, tensor, m.detach())
    dx = getattr(grads, "input", None)
    if dx is not None:  # dJ/dx; layer index -1 -> layer 0
        c = LayerCheck(0, "dx", _ratio(dx.detach().double(), ref.dx, tol))
        checks.append(c)
        if first is None and not c.agrees:
            first = (-1, "dx", dx.detach())
    if first is None:
        return Diagnosis(tuple(checks), None, None, None, "")
    i, tensor, m = first
    signature, detail = _signature(i, tensor, m, ref, net, tol)
    return Diagnosis(tuple(checks), i + 1, tensor, signature, detail)
