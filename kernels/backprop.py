"""Manual reverse-mode gradients of a loss through an MLP, derived by the chain rule.

With ``delta_L = dJ/dy_hat`` (N, out) and, going back through layer i,

    dJ/dW_i = delta_i^T h_{i-1}          (out_i, in_i)
    dJ/db_i = sum_n delta_i              (out_i,)
    dJ/dh_{i-1} = delta_i W_i            (N, in_i)
    delta_{i-1} = dJ/dh_{i-1} * rho'(z_{i-1})

and ``dJ/dx = dJ/dh_0``. No torch.autograd: every line above is one tensor op below.

Memory: the forward pass keeps the activations h_0..h_{L-1} and nothing else (each
activation overwrites its own pre-activation); rho'(z_{i-1}) is written from h_{i-1}
alone (tanh' = 1 - h^2, sigmoid' = h(1 - h), relu' = [h > 0]) into h_{i-1}'s buffer,
which the backward pass then releases. On CUDA, tanh's delta_{i-1} = dh (1 - h^2) is one
pass (kernels whose formulas are written below, compiled by torch's jiterator) into the
buffer delta_i lets go, where the two in-place passes move two (N, K) arrays more (at a
one-output layer dh = delta w is not made: the pass reads delta, w and h). Peak
memory of one call is at most autograd's (to
within the 0-d tensors torch wraps Python scalars in)
(verify/test_memory.py).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from handgrad.kernels import mlp
from handgrad.kernels._checks import (
    check_choice,
    check_finite,
    check_probabilities,
    check_same,
    check_tensor,
    in_graph,
    shape_str,
)
from handgrad.kernels._elementwise import batch_takes_numpy_tanh, tanh_
from handgrad.kernels.mlp import (
    MLP,
    REDUCTIONS,
    _check_input_shape,
    forward_cache,
    log_cosh,
)

# the residual losses of kernels.mlp, and softmax cross-entropy of the logits
LOSSES = (*mlp.LOSSES, "cross_entropy")


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


# torch.dot in these dtypes takes a workspace on a CPU with AMX (oneDNN): bfloat16 256 bytes
# an element (2.6 MB for a (1024, 10) residual, more than the whole backward pass), float16
# 268 kB; a float32 copy of the residual is 4 bytes an element (the squared loss, below)
_DOT_WORKSPACE = (torch.bfloat16, torch.float16)


def _check_target(net: MLP, x: torch.Tensor, y: object) -> torch.Tensor:
    """``y`` as (N, out): accepts (N, out), (N,) when out == 1, and for a single x (out,)."""
    y = check_tensor("y", y, ndims=(0, 1, 2))
    check_same("y", y, "x", x)
    # y's values are read with the loss (``_check_finite_result``), after this
    p = net.sizes[-1]
    if x.dim() == 1:
        ok = {(p,)} | ({()} if p == 1 else set())
        want = f"({p},)" + (" or ()" if p == 1 else "")
    else:
        n = x.shape[0]
        ok = {(n, p)} | ({(n,)} if p == 1 else set())
        want = f"({n}, {p})" + (f" or ({n},)" if p == 1 else "")
    if tuple(y.shape) not in ok:
        check_finite("y", y)  # a NaN or inf is refused before the shape, as ever
        raise ValueError(
            f"y: expected shape {want} for x of shape {shape_str(x)} and a network with "
            f"{p} output(s), got {shape_str(y)}"
        )
    return y.reshape(-1, p)


def _check_finite_result(value: torch.Tensor, x: torch.Tensor, y, classes: bool) -> None:
    """Refuse a NaN or inf in x or y with one read to the host: the loss and x's sum.

    A NaN or inf in y makes the loss NaN or inf (squared and log cosh are >= 0 per term
    and grow without bound; a NaN stays NaN); cross-entropy's targets are checked by
    ``_check_classes``. x is read directly: its NaN reaches dW_1 = delta_1^T x only through
    products a BLAS may skip for zero deltas (dead units), and an inf saturates tanh. Only
    when the number is not finite are x and y searched, by the checks that name them
    (``check_finite``); finite values whose sum overflows have no culprit and the result
    stands, but a loss that overflows the dtype from finite x, y and weights (a squared
    error of 3e19 in float32) is an ``OverflowError``: no result is inf. The net's own
    parameters were checked when it was made (``MLP``). Not inside a graph (``in_graph``)."""
    if in_graph():
        return
    if value.is_cpu:  # reads of CPU memory: no wait, no extra op
        total = value.item() + x.sum().item()
    else:  # one read to the host for both numbers: a GPU waits once, not twice
        total = x.sum().add_(value).item()
    if math.isfinite(total):
        return
    check_finite("x", x)
    if not classes:
        check_finite("y", y)
    loss = float(value)
    if not math.isfinite(loss):
        raise OverflowError(
            f"backprop: the loss is {loss} in {value.dtype} though x, y and the weights are "
            f"finite: it overflows {value.dtype}'s range (largest "
            f"{torch.finfo(value.dtype).max:.3g}); compute in a wider dtype (float64), or "
            "scale x, y or the weights")


def _lean_forward(net: MLP, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The activations ``h_0 = x, h_1..h_{L-1}`` and the output: only what the backward
    pass needs. Each hidden layer's activation overwrites its pre-activation (in place), so
    no layer keeps two (N, K) buffers; rho' is recovered from the activation alone."""
    rho_ = _ACTIVATE_[net.activation]
    if rho_ is torch.tanh_ and batch_takes_numpy_tanh(x.shape[0], net._widest_hidden):
        rho_ = tanh_
    hs = [x]
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        z = F.linear(hs[-1], w, b)
        if i == net.depth - 1:
            return hs, z
        hs.append(rho_(z))
    raise AssertionError("unreachable: an MLP has at least one layer")


def _relu_(z: torch.Tensor) -> torch.Tensor:
    return z.clamp_(min=0)


# rho applied in place to a pre-activation the kernel owns; ``_lean_forward`` takes
# kernels._elementwise.tanh_ instead of torch's where ``batch_takes_numpy_tanh`` says
_ACTIVATE_ = {"tanh": torch.tanh_, "sigmoid": torch.sigmoid_, "relu": _relu_,
              "identity": lambda z: z}


# tanh' times the gradient in one element-wise pass on CUDA, where the in-place form takes
# two (a^2 into a, then dh - dh a^2 into dh) and moves two (N, K) arrays more (four at a
# one-output layer, whose dh is not made at all). At L=3, one output, a call moved 28.9
# (N, K) arrays against autograd's 24.9 (counted per torch operation on the CPU), the
# element-wise share of the bfloat16 gap to autograd on the H200 (docs/kernels.md); with
# these, 22.9. The formulas are written here by hand and compiled by torch's jiterator
# (NVRTC) at the first call per dtype
FUSED_CUDA = {
    # a hidden layer: (dh, a = h) -> dh (1 - h^2)
    "tanh_grad": "template <typename T> T handgrad_tanh_grad(T dh, T a) "
                 "{ return dh - dh * a * a; }",
    # the output layer of a one-output network: (delta (N, 1), w (1, K), a (N, K)) ->
    # (delta w) (1 - h^2), the outer product dh = delta w never made
    "tanh_grad_outer": "template <typename T> T handgrad_tanh_grad_outer(T d, T w, T a) "
                       "{ return d * w - d * w * a * a; }",
}
_fused_state: dict = {}  # (name, dtype) -> True (compiled and ran) or False (failed)


def _fuses(t: torch.Tensor) -> bool:
    """Whether the one-pass kernels may serve a call on ``t``'s device: CUDA (one read of
    a flag per call: the CPU pays nothing more)."""
    return t.is_cuda


@functools.cache
def _jit(name: str):
    """The jitted function ``name`` of FUSED_CUDA; NVRTC compiles it at its first call
    per dtype."""
    from torch.cuda import jiterator

    return jiterator._create_jit_fn(FUSED_CUDA[name])


def _fused(name: str, *tensors: torch.Tensor) -> torch.Tensor | None:
    """FUSED_CUDA[name] of ``tensors`` (the last one (N, K), on a device ``_fuses``) into
    a new buffer; None where it does not apply (inside torch.compile's trace, a graph
    capture before the dtype's first eager call) or did not compile (warned once per kernel
    and dtype; the two passes serve from then on)."""
    a = tensors[-1]
    if torch.compiler.is_compiling():
        return None
    key = (name, a.dtype)
    state = _fused_state.get(key)
    if state is None and not in_graph():  # its first call compiles it: not in a capture
        try:
            out = _jit(name)(*tensors)
        except RuntimeError as e:
            _fused_state[key] = False
            warnings.warn(f"backprop: the one-pass CUDA kernel {name} did not compile for "
                          f"{a.dtype} ({e}); two element-wise passes are used instead",
                          RuntimeWarning, stacklevel=4)
            return None
        _fused_state[key] = True
        return out
    return _jit(name)(*tensors) if state else None


def _times_activation_grad_(name: str, dh: torch.Tensor, a: torch.Tensor,
                            spare: bool = False) -> torch.Tensor:
    """dh * rho'(z), in dh's buffer, with rho'(z) written from a = rho(z) alone and in a's
    buffer (a is not needed after): tanh' = 1 - a^2, sigmoid' = a (1 - a), relu' = 1 where
    a > 0 else 0 (relu'(0) := 0, torch's subgradient: a = 0 exactly when z <= 0),
    identity' = 1. No temporary of a's size is allocated. tanh on CUDA when ``spare`` (the
    caller has just let go a buffer of dh's size): one pass into a new buffer, which takes
    that one's place (``_fused``)."""
    if name == "tanh":  # dh - dh a^2
        fused = _fused("tanh_grad", dh, a) if spare else None
        return dh.addcmul_(dh, a.mul_(a), value=-1) if fused is None else fused
    if name == "sigmoid":  # dh (a - a^2)
        return dh.mul_(a.addcmul_(a, a, value=-1))
    if name == "relu":
        return dh.mul_(a.sign_())
    return dh


def _check_classes(net: MLP, x: torch.Tensor, y: object) -> torch.Tensor:
    """cross-entropy's target: class indices as (N,) int64, or probabilities as (N, C).

    Indices: (N,) (or () for a single x) of an integer dtype, each in [0, C).
    Probabilities: (N, C) (or (C,)) in x's dtype, >= 0, each row summing to 1.
    """
    c = net.sizes[-1]
    single = x.dim() == 1
    n = 1 if single else x.shape[0]
    idx_shape, prob_shape = ((), (c,)) if single else ((n,), (n, c))
    want = (f"class indices of shape {idx_shape} with an integer dtype, or probabilities of "
            f"shape {prob_shape} in x's dtype")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y: for loss='cross_entropy' expected a torch.Tensor ({want}), got "
                        f"{type(y).__name__}")
    about = f"for x of shape {shape_str(x)} and a network with {c} outputs"
    if y.dtype.is_floating_point:
        check_same("y", y, "x", x)
        if tuple(y.shape) != prob_shape:
            raise ValueError(f"y: expected {want} {about}; got probabilities (dtype {y.dtype}) "
                             f"of shape {shape_str(y)}")
        y2 = y.reshape(n, c)
        check_probabilities("y", y2)
        return y2
    if y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y: expected {want}; got dtype {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"y: on device {y.device}, but x on {x.device}; move the inputs to "
                         "one device first")
    if tuple(y.shape) != idx_shape:
        raise ValueError(f"y: expected {want} {about}; got class indices (dtype {y.dtype}) of "
                         f"shape {shape_str(y)}")
    y2 = y.reshape(n).long()
    bad = (y2 < 0) | (y2 >= c)
    if not in_graph() and bool(bad.any()):  # a value check: not inside a graph
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"y: class index {int(y2[i])} at position {i} is out of range for a "
                         f"network with {c} outputs; expected 0 <= y < {c}")
    return y2


def _cross_entropy_(z: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.mlp.cross_entropy`` written into the logits' own buffer (the kernel owns
    it): log softmax in place (z - max first, exact, then minus log sum exp), the loss
    read from it, then softmax - target in place. One (N, C) temporary, inside the sum."""
    z.sub_(z.amax(1, keepdim=True))
    z.sub_(z.exp().sum(1, keepdim=True).log_())  # log softmax(z)
    if target.dtype.is_floating_point:
        # a logit more than the dtype's range below the row's max has log softmax -inf, and
        # a probability 0 times it is NaN: as mlp.cross_entropy, such a class adds nothing
        # (clamped to the lowest finite value; its softmax, exp of it, is 0 either way)
        z.clamp_(min=torch.finfo(z.dtype).min)
        loss = -(target.unsqueeze(1) @ z.unsqueeze(2)).reshape(-1)  # no (N, C) product
        return loss, z.exp_().sub_(target)
    idx = target.unsqueeze(1)
    loss = -z.gather(1, idx).squeeze(1)
    return loss, z.exp_().scatter_add_(1, idx, torch.full_like(idx, -1, dtype=z.dtype))


@torch.no_grad()
def backprop(
    net: MLP,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str = "squared",
    reduction: str = "mean",
) -> Gradients:
    """Loss J and dJ/d(every weight, bias, input) for x (N, in) or (in,).

    ``loss``: "squared" (1/2 ||y_hat - y||^2 per sample), "log_cosh"
    (sum_j log cosh(y_hat_j - y_j) per sample) or "cross_entropy" (softmax cross-entropy
    of the logits y_hat (N, C); ``y`` class indices (N,) of an integer dtype or
    probabilities (N, C)); ``reduction``: "mean" (J is the mean of per-sample losses over
    the batch, the default) or "sum".
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a handgrad.kernels.mlp.MLP, got {type(net).__name__}")
    check_choice("loss", loss, LOSSES)
    check_choice("reduction", reduction, REDUCTIONS)
    x = _check_input_shape(net, x)  # x's values: read with the loss, below
    if reduction == "mean" and x.dim() == 2 and x.shape[0] == 0:
        raise ValueError(f"x: an empty batch (shape {shape_str(x)}) has no mean loss; expected "
                         "at least one sample, or reduction='sum' (J = 0)")
    classes = loss == "cross_entropy"
    try:
        y2 = _check_classes(net, x, y) if classes else _check_target(net, x, y)
    except (TypeError, ValueError):
        check_finite("x", x)  # a NaN or inf in x is refused before anything about y
        raise
    single = x.dim() == 1
    x2 = x.unsqueeze(0) if single else x

    hs, out = _lean_forward(net, x2)
    scale = 1.0 / x2.shape[0] if reduction == "mean" else 1.0
    if classes:
        per_sample, dloss = _cross_entropy_(out, y2)  # dloss = softmax - target
        value = per_sample.sum()
        if scale != 1.0:
            value, delta = value * scale, dloss.mul_(scale)
        else:
            delta = dloss
        del out, dloss, per_sample  # delta is the only name left on the (N, C) buffer
    else:
        r = out.sub_(y2)  # the residual, in the output's own buffer
        if loss == "squared":  # J = scale / 2 sum r^2 (one product), dJ/dy_hat = scale r
            flat = r.view(-1)
            if flat.dtype in _DOT_WORKSPACE:  # summed in float32, rounded once, as dot's is
                wide = flat.float()  # 4 bytes an element, freed at once
                value = torch.dot(wide, wide).mul_(0.5 * scale).to(flat.dtype)
                del wide
            else:
                value = torch.dot(flat, flat).mul_(0.5 * scale)
            delta = r if scale == 1.0 else r.mul_(scale)
            del flat
        else:  # log cosh: J = scale sum log cosh r, dJ/dy_hat = scale tanh r
            value = log_cosh(r).sum()
            if scale != 1.0:
                value = value * scale
            delta = r.tanh_() if scale == 1.0 else r.tanh_().mul_(scale)
        del r, out

    dws: list[torch.Tensor] = [None] * net.depth  # type: ignore[list-item]
    dbs: list[torch.Tensor] = [None] * net.depth  # type: ignore[list-item]
    bias_first = delta.is_cuda
    fuse = _fuses(delta)
    for i in range(net.depth - 1, -1, -1):
        # on CUDA a column sum of an (N, K) tensor takes a temporary (32 MiB at N=4096,
        # K=1024 on an H200, twice delta itself): the bias gradient is taken first, when it
        # adds to the fewest buffers (dh not yet made). The CPU's sum takes none, and there
        # the bias gradient is made last, so that it is not alive when dh is made
        if bias_first:
            dbs[i] = delta.sum(0)
        # one output, tanh, on CUDA: delta_{i-1} = (delta w)(1 - h^2) in one pass, with no
        # (N, K) dh made (it would be the outer product delta w)
        outer = (_fused("tanh_grad_outer", delta, net.weights[i], hs[i]) if fuse and i > 0
                 and delta.shape[1] == 1 and net.activation == "tanh" else None)
        # dh before dW, in autograd's order: a matmul's workspace (oneDNN's, bfloat16 on a
        # CPU with AMX: 207 kB for a (128, 784) dW) is taken with the other product alive,
        # so the order sets the peak; autograd's order, the same workspaces, its peak
        if outer is None:
            dh = delta @ net.weights[i]
        dws[i] = delta.t() @ hs[i]
        if not bias_first:
            dbs[i] = delta.sum(0)
        if outer is not None:
            delta, hs[i] = outer, None  # type: ignore[call-overload]
        elif i > 0:
            # delta_{i-1} = dh * rho'(z): rho' from the activation, in its own buffer,
            # which the pass then lets go (nothing of layer i is needed below it). delta_i
            # is let go first: where it is dh's size, CUDA's one-pass tanh' writes a new
            # buffer in its place, and dh's is let go after, so that no layer holds one
            # (N, K) buffer more than the two in-place passes
            spare = fuse and delta.shape == dh.shape
            del delta
            delta = _times_activation_grad_(net.activation, dh, hs[i], spare)
            hs[i] = dh = None  # type: ignore[call-overload]
    dx = dh.squeeze(0) if single else dh
    # read to the host once, after every kernel of the pass is queued: on a GPU a read
    # before the backward pass left the device idle while the host queued it
    _check_finite_result(value, x, y, classes)
    return Gradients(loss=value, weights=tuple(dws), biases=tuple(dbs), input=dx)


STATISTICS = ("layer", "units", "mean_activation", "mean_abs_activation",
              "activation_grad_norm", "weight_grad_norm")


@torch.no_grad()
def layer_statistics(
    net: MLP,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str = "squared",
    reduction: str = "mean",
):
    """A pandas DataFrame with one row per layer i = 1..L (input side first): ``layer``,
    ``units`` (its width), ``mean_activation`` and ``mean_abs_activation`` (mean of h_i
    and of |h_i| over the batch and the units), ``activation_grad_norm`` (Frobenius norm
    of dJ/dh_i over the batch: what ``retain_grad`` on h_i shows) and ``weight_grad_norm``
    (of dJ/dW_i). h_i = rho(z_i) for the hidden layers; h_L is the linear output y_hat.

    dJ/dh_i is the input gradient of the rest of the network (layers i+1..L) at h_i, so
    each one is a call of ``backprop`` on that sub-network (for h_L, on a single identity
    layer): the kernel's own chain rule, for L(L+1)/2 layer-backward passes instead of L.
    """
    import pandas as pd

    g = backprop(net, x, y, loss=loss, reduction=reduction)  # checks every argument
    if x.dim() == 2 and x.shape[0] == 0:  # (reduction='mean' was refused by backprop)
        raise ValueError(f"x: an empty batch (shape {shape_str(x)}) has no layer statistics "
                         "(means over no samples); expected at least one sample")
    if x.dim() == 1:  # one sample: a batch of one (mean and sum reductions agree)
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    zs, hs = forward_cache(net, x)
    outs = [*hs[1:], zs[-1]]  # h_1 .. h_L
    rows = []
    for i, h in enumerate(outs):
        if i < net.depth - 1:
            rest = MLP(weights=net.weights[i + 1:], biases=net.biases[i + 1:],
                       activation=net.activation)
        else:
            c = h.shape[1]
            rest = MLP(weights=[torch.eye(c, dtype=h.dtype, device=h.device)])
        dh = backprop(rest, h, y, loss=loss, reduction=reduction).input
        # summed in float64: squares of gradients near 1e-20 underflow float32
        h, dh, dw = h.double(), dh.double(), g.weights[i].double()
        rows.append({"layer": i + 1, "units": h.shape[1],
                     "mean_activation": float(h.mean()),
                     "mean_abs_activation": float(h.abs().mean()),
                     "activation_grad_norm": float(dh.norm()),
                     "weight_grad_norm": float(dw.norm())})
    return pd.DataFrame(rows, columns=list(STATISTICS))
