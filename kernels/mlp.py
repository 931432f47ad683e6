"""MLP parameters, activations and losses with their derivatives, and the forward pass.

Network: ``h_0 = x``, ``h_i = rho(h_{i-1} W_i^T + b_i)`` for the hidden layers and a
linear output ``y_hat = h_{L-1} W_L^T + b_L``. Weights have ``nn.Linear``'s shape
``(out, in)``; a batch is ``(N, in)`` and a single input ``(in,)`` gives ``(out,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from handgrad.kernels._checks import (
    _ALLOC_FLOOR,
    _bytes_str,
    _device_memory,
    check_all_finite,
    check_choice,
    check_finite,
    check_float_dtype,
    check_int,
    check_probabilities,
    check_real,
    check_same,
    check_tensor,
    in_graph,
    shape_str,
)

# --- activations ------------------------------------------------------------------
# each derivative is written in terms of (z, a) = (pre-activation, activation), so the
# backward pass reuses what the forward pass stored: tanh' = 1 - a^2, sigmoid' = a(1 - a)


def _relu_grad(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # relu'(0) := 0, the subgradient torch uses
    return (z > 0).to(z.dtype)


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (torch.tanh, lambda z, a: 1 - a * a),
    # torch.sigmoid is stable at large |z| (no exp overflow), unlike 1 / (1 + exp(-z))
    "sigmoid": (torch.sigmoid, lambda z, a: a * (1 - a)),
    "relu": (torch.relu, _relu_grad),
    "identity": (lambda z: z, lambda z, a: torch.ones_like(z)),
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name``."""
    return ACTIVATIONS[check_choice("activation", name, list(ACTIVATIONS))][0]


def activation_grad(name: str, z: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
    """rho'(z), element-wise; pass ``a = rho(z)`` when known to save recomputing it."""
    f, df = ACTIVATIONS[check_choice("activation", name, list(ACTIVATIONS))]
    z = check_tensor("z", z)
    if a is not None:
        a = check_tensor("a", a)
        check_same("a", a, "z", z)
        if a.shape != z.shape:
            raise ValueError(f"a: expected z's shape {shape_str(z)} (a = rho(z)), got "
                             f"{shape_str(a)}")
    return df(z, f(z) if a is None else a)


# --- losses -----------------------------------------------------------------------
# per-sample losses of the residual r = y_hat - y, summed over output components (LOSSES);
# softmax cross-entropy, a loss of the logits and class targets, is ``cross_entropy``


def log_cosh(r: torch.Tensor) -> torch.Tensor:
    """log(cosh(r)) element-wise, finite for every finite r.

    cosh overflows float32 once |r| > ~89; log cosh r = |r| + log1p(exp(-2|r|)) - log 2
    never exponentiates a positive number.
    """
    a = check_tensor("r", r).abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


def log_softmax(z: torch.Tensor) -> torch.Tensor:
    """log softmax(z) over the last axis, finite for every finite z.

    exp(z) overflows float32 once z > ~88. With m the row's maximum,
    log softmax(z)_c = (z_c - m) - log sum_j exp(z_j - m): every exponent is <= 0 and the
    sum is >= 1 (the maximum contributes exp(0)), so neither exp nor log can overflow or
    see 0; logits of +-1e4 give exact results in float32.
    """
    z = check_tensor("z", z)
    if z.dim() == 0 or z.shape[-1] == 0:
        raise ValueError(f"z: expected at least one logit on the last axis, got shape "
                         f"{shape_str(z)}")
    s = z - z.amax(dim=-1, keepdim=True)
    return s - torch.log(torch.exp(s).sum(dim=-1, keepdim=True))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) per-sample softmax cross-entropy of logits (N, C), and its gradient (N, C).

    ``target``: class indices (N,) of dtype int64, or probabilities (N, C) whose rows sum
    to 1. J_n = -sum_c t_nc log softmax(z_n)_c and, since sum_c t_nc = 1,
    dJ_n/dz_n = softmax(z_n) - t_n (a one-hot t_n for an index).
    """
    logits = check_tensor("logits", logits, ndims=(2,))
    n, c = logits.shape
    if c == 0:
        raise ValueError(f"logits: expected at least one class (C >= 1), got shape "
                         f"{shape_str(logits)}")
    check_finite("logits", logits)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected a torch.Tensor (class indices ({n},) or "
                        f"probabilities ({n}, {c})), got {type(target).__name__}")
    if target.dtype.is_floating_point:
        check_same("target", target, "logits", logits)
        if target.shape != logits.shape:
            raise ValueError(f"target: expected probabilities of shape ({n}, {c}) like the "
                             f"logits, got {shape_str(target)}")
        check_finite("target", target)
        # softmax - t is the gradient only where each row of t sums to 1
        check_probabilities("target", target)
    else:
        if target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"target: expected class indices of an integer dtype or "
                            f"probabilities, got dtype {target.dtype}")
        if target.shape != (n,) or target.device != logits.device:
            raise ValueError(f"target: expected class indices of shape ({n},) on "
                             f"{logits.device}, got {shape_str(target)} on {target.device}")
        if n and not in_graph():
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= c:
                raise ValueError(f"target: class indices must lie in [0, {c}) for {c} logits, "
                                 f"got values from {lo} to {hi}")
        target = target.long()
    logp = log_softmax(logits)
    p = torch.exp(logp)
    if target.dtype.is_floating_point:
        # a class of probability 0 adds nothing, also where its log softmax is -inf (a logit
        # more than the dtype's range below the row's maximum), where 0 * -inf is NaN
        loss = -torch.where(target > 0, target * logp, 0).sum(1)
        grad = p - target
    else:
        idx = target.unsqueeze(1)
        minus_one = torch.full_like(idx, -1, dtype=p.dtype)
        loss, grad = -logp.gather(1, idx).squeeze(1), p.scatter_add(1, idx, minus_one)
    if not in_graph():
        bad = ~torch.isfinite(loss)
        if bool(bad.any()):  # the logits are finite (checked): the loss overflowed
            i = int(bad.nonzero()[0, 0])
            raise OverflowError(
                f"cross_entropy: the loss of sample {i} is {float(loss[i].detach())} in "
                f"{loss.dtype} though the logits are finite: its logits span more than the "
                f"dtype's "
                f"range (largest {torch.finfo(loss.dtype).max:.3g}); scale the logits")
    return loss, grad


LOSSES: dict[str, tuple[Callable, Callable]] = {
    "squared": (lambda r: 0.5 * r * r, lambda r: r),
    "log_cosh": (log_cosh, torch.tanh),
}
REDUCTIONS = ("mean", "sum")


def loss_value(name: str, r: torch.Tensor) -> torch.Tensor:
    """Element-wise loss of the residual ``r`` (not yet summed or reduced)."""
    return LOSSES[check_choice("loss", name, list(LOSSES))][0](check_tensor("r", r))


def loss_grad(name: str, r: torch.Tensor) -> torch.Tensor:
    """d loss / d r, element-wise."""
    return LOSSES[check_choice("loss", name, list(LOSSES))][1](check_tensor("r", r))


# --- the network ------------------------------------------------------------------


@dataclass(frozen=True)
class MLP:
    """An MLP: ``weights[i]`` is ``(out_i, in_i)``, ``biases[i]`` is ``(out_i,)``.

    The hidden layers apply ``activation``; the last layer is linear. ``biases=None``
    means zero biases.
    """

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...] | None = None
    activation: str = "tanh"

    def __post_init__(self) -> None:
        weights = self.weights
        if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence):
            raise TypeError(
                f"weights: expected a sequence of 2-D tensors, got {type(weights).__name__}"
            )
        weights = tuple(weights)
        if not weights:
            raise ValueError("weights: expected at least one layer, got an empty sequence")
        for i, w in enumerate(weights):
            check_tensor(f"weights[{i}]", w, ndims=(2,))
            check_same(f"weights[{i}]", w, "weights[0]", weights[0])
            if w.numel() == 0:
                raise ValueError(f"weights[{i}]: expected at least one unit in and out, got "
                                 f"shape {shape_str(w)}")
            if i and w.shape[1] != weights[i - 1].shape[0]:
                raise ValueError(
                    f"weights[{i}]: shape {shape_str(w)} does not follow weights[{i - 1}] of "
                    f"shape {shape_str(weights[i - 1])}; expected ({w.shape[0]}, "
                    f"{weights[i - 1].shape[0]}) since weights are (out, in)"
                )
        if self.biases is None:
            biases = tuple(w.new_zeros(w.shape[0]) for w in weights)
        else:
            if isinstance(self.biases, torch.Tensor) or not isinstance(self.biases, Sequence):
                raise TypeError(
                    f"biases: expected a sequence of 1-D tensors, got {type(self.biases).__name__}"
                )
            biases = tuple(self.biases)
            if len(biases) != len(weights):
                raise ValueError(
                    f"biases: expected {len(weights)} (one per weight matrix), got {len(biases)}"
                )
            for i, (b, w) in enumerate(zip(biases, weights)):
                check_tensor(f"biases[{i}]", b, ndims=(1,))
                check_same(f"biases[{i}]", b, "weights[0]", weights[0])
                if b.shape[0] != w.shape[0]:
                    raise ValueError(
                        f"biases[{i}]: shape {shape_str(b)} does not fit weights[{i}] of shape "
                        f"{shape_str(w)}; expected ({w.shape[0]},)"
                    )
        check_choice("activation", self.activation, list(ACTIVATIONS))
        check_all_finite([*((f"weights[{i}]", w) for i, w in enumerate(weights)),
                          *((f"biases[{i}]", b) for i, b in enumerate(biases))])
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "biases", biases)
        # read by kernels.backprop per call (which tanh to run): not a field
        object.__setattr__(self, "_widest_hidden", max((w.shape[0] for w in weights[:-1]),
                                                       default=0))

    @property
    def sizes(self) -> list[int]:
        """Layer widths ``[in, hidden..., out]``."""
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    @property
    def depth(self) -> int:
        """Number of weight matrices L."""
        return len(self.weights)

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def to(self, *args, **kwargs) -> MLP:
        """A copy with every parameter moved/cast like ``Tensor.to``."""
        return MLP(
            weights=[w.to(*args, **kwargs) for w in self.weights],
            biases=[b.to(*args, **kwargs) for b in self.biases],
            activation=self.activation,
        )


def init_mlp(
    sizes: Sequence[int],
    activation: str = "tanh",
    init: str | float = "xavier",
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MLP:
    """A fresh MLP with layer widths ``sizes = [in, hidden..., out]``.

    ``init="xavier"``: weights U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), zero
    biases. ``init=d`` (a positive number): weights and biases U(-d, d). Random
    numbers are drawn on the CPU from ``generator`` so a seed gives the same network on
    every device.
    """
    if isinstance(sizes, (str, torch.Tensor)) or not isinstance(sizes, Sequence):
        raise TypeError(f"sizes: expected a sequence of layer widths [in, hidden..., out], "
                        f"got {type(sizes).__name__} {sizes!r}")
    if len(sizes) < 2:
        raise ValueError(f"sizes: expected at least two positive integers, got {list(sizes)}")
    sizes = [check_int(f"sizes[{i}]", s, minimum=1, what="a layer width")
             for i, s in enumerate(sizes)]
    check_choice("activation", activation, list(ACTIVATIONS))
    check_float_dtype("dtype", dtype)
    device = _check_device(device)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            kind = type(generator)
            raise TypeError(f"generator: expected a torch.Generator or None, got "
                            f"{kind.__module__}.{kind.__qualname__}")
        if generator.device.type != "cpu":
            raise ValueError(f"generator: expected a CPU torch.Generator (the numbers are "
                             f"drawn on the CPU, then moved to device), got one on "
                             f"{generator.device}")

    # asked before allocating (torch's allocator error names no argument): the parameters
    # in dtype, and the largest layer's float64 draw beside them
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    nbytes = params * dtype.itemsize + 8 * max(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if nbytes > _ALLOC_FLOOR:
        memory = _device_memory(device)
        limit = memory if memory is not None else 2 ** 63 - 1
        if nbytes > limit:
            where = (f"the {_bytes_str(memory)} of {device.type} memory this machine has"
                     if memory is not None else "what torch can index")
            raise ValueError(f"sizes: {sizes} make {params:,} parameters, {_bytes_str(nbytes)} "
                             f"in {dtype} with the draw, more than {where}; expected "
                             "narrower layers")

    def uniform(shape: tuple[int, ...], bound: float) -> torch.Tensor:
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return ((2 * u - 1) * bound).to(dtype=dtype, device=device)

    weights, biases = [], []
    if not (isinstance(init, str) and init == "xavier"):
        if isinstance(init, str):
            raise ValueError(f"init: expected 'xavier' or a positive number d, got {init!r}")
        init = check_real("init", init, what="'xavier' or a positive number d")
        if not init > 0:
            raise ValueError(f"init: expected 'xavier' or a positive number d, got {init!r}")
        top = float(torch.finfo(dtype).max)
        if init > top:  # U(-d, d) would round its draws to +-inf in dtype
            raise ValueError(f"init: d = {init:g} draws values past {dtype}'s range "
                             f"(largest {top:.3g}); expected d <= {top:.3g}")
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if init == "xavier":
            weights.append(uniform((fan_out, fan_in), math.sqrt(6.0 / (fan_in + fan_out))))
            biases.append(torch.zeros(fan_out, dtype=dtype, device=device))
        else:
            weights.append(uniform((fan_out, fan_in), init))
            biases.append(uniform((fan_out,), init))
    return MLP(weights=weights, biases=biases, activation=activation)


def _check_device(device: object) -> torch.device:
    """``device`` as a torch.device: a string torch can parse or a torch.device, present
    on this machine (CUDA: ``torch.cuda.is_available``)."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected a device such as 'cpu' or 'cuda' (a str or "
                        f"torch.device), got {type(device).__name__} {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: expected a device such as 'cpu', 'cuda' or 'cuda:0', got "
                         f"{device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {str(device)!r} asked for, but no CUDA device is present")
    if device.type == "meta":
        raise ValueError("device: 'meta' holds no values; expected a real device such as "
                         "'cpu' or 'cuda'")
    if device.type != "cpu":
        _check_device_usable(device)
    return device


def _check_device_usable(device: torch.device) -> None:
    """A device other than the CPU that this torch build and machine can use, else a
    ValueError naming it: 'mps' on a build without MPS, 'xla' without torch_xla, 'cuda:3'
    on a machine with one GPU. Asks the device's torch module (torch.cuda, torch.mps,
    torch.xpu, ...: is_available, device_count), creating no tensor; a type with no such
    module (xla, ipu, ...) is tried with an empty tensor, the only test torch offers."""
    kind = device.type
    try:
        module = torch.get_device_module(kind)
    except (RuntimeError, AttributeError):  # no torch.<kind> module (or torch < 2.3)
        module = None
    if module is not None:
        if not module.is_available():
            raise ValueError(f"device: {str(device)!r} asked for, but this torch build or "
                             f"machine has no usable {kind} device (torch.{kind}."
                             f"is_available() is False); expected 'cpu' or a device present")
        count = module.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device: {str(device)!r} asked for, but {count} {kind} "
                             f"device(s) present; expected an index below {count}")
        return
    try:
        torch.empty(0, device=device)
    except (RuntimeError, NotImplementedError, AssertionError, ImportError) as e:
        # ImportError: torch imports torch.<kind> for the tensor (hpu: no such module)
        why = str(e).split(". ")[0]
        raise ValueError(f"device: {str(device)!r} asked for, but this torch build cannot "
                         f"use {kind} devices ({why}); expected "
                         f"'cpu' or a device present") from None


def check_input(net: MLP, x: object, name: str = "x") -> torch.Tensor:
    """``x`` is (N, in) or (in,) in the network's dtype and on its device, every value
    finite (not checked inside a graph: ``kernels._checks.in_graph``)."""
    x = _check_input_shape(net, x, name)
    check_finite(name, x)
    return x


def _check_input_shape(net: MLP, x: object, name: str = "x") -> torch.Tensor:
    """``check_input`` but for the values: backprop reads x's sum with the loss instead."""
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a handgrad.kernels.mlp.MLP, got {type(net).__name__}")
    x = check_tensor(name, x, ndims=(1, 2))
    check_same(name, x, "the network's weights", net.weights[0])
    d = net.sizes[0]
    if x.shape[-1] != d:
        want = f"(N, {d}) or ({d},)"
        raise ValueError(
            f"{name}: expected shape {want} for a network with {d} input features, "
            f"got {shape_str(x)}"
        )
    return x


@torch.no_grad()
def forward_cache(net: MLP, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pre-activations ``z_1..z_L`` and activations ``h_0..h_{L-1}`` for a batch x (N, in).

    ``h[i]`` feeds layer i+1; ``z[-1]`` is the network's output. A pre-activation past the
    dtype's range (finite x and weights) is an ``OverflowError`` naming its layer.
    """
    x = check_input(net, x)
    if x.dim() != 2:
        raise ValueError(f"x: expected a batch (N, {net.sizes[0]}), got shape {shape_str(x)}")
    zs, hs = _forward_cache(net, x)
    for i, z in enumerate(zs, 1):
        _check_overflow("forward_cache", f"z_{i} (layer {i}'s pre-activation)", z)
    return zs, hs


def _check_overflow(who: str, what: str, t: torch.Tensor) -> None:
    """An OverflowError naming ``what`` where ``t``, computed from finite x and weights,
    holds an inf or NaN (inf - inf); not inside a graph (``in_graph``)."""
    if in_graph() or not t.numel() or bool(torch.isfinite(t).all()):
        return
    raise OverflowError(
        f"{who}: {what} overflows {t.dtype}'s range (largest {torch.finfo(t.dtype).max:.3g}) "
        "though x, the weights and the biases are finite: compute in a wider dtype "
        "(float64), or scale x or the weights")


def _forward_cache(net: MLP, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    rho = activation(net.activation)
    hs, zs = [x], []
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        z = torch.addmm(b, hs[-1], w.t())
        zs.append(z)
        if i < net.depth - 1:
            hs.append(rho(z))
    return zs, hs


def forward(net: MLP, x: torch.Tensor) -> torch.Tensor:
    """(N, in) -> (N, out), or (in,) -> (out,): the network's output; an output past the
    dtype's range (finite x and weights) is an ``OverflowError``."""
    x = check_input(net, x)
    single = x.dim() == 1
    zs, _ = _forward_cache(net, x.unsqueeze(0) if single else x)
    # the output only: a hidden pre-activation past the range saturates its activation
    # (tanh(inf) = 1, as tanh of the true value rounds), and the output is right
    _check_overflow("forward", "the output", zs[-1])
    return zs[-1].squeeze(0) if single else zs[-1]
