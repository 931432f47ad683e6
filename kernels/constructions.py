"""Networks whose parameters are found by hand, and a checker for anyone's construction.

``Network`` is a small feed-forward network with one activation per layer: ReLU,
sigmoid, tanh, sign or identity. Calling it maps inputs to outputs; its ``weights``
(``(out, in)`` like ``nn.Linear``) and ``biases`` are there to read. The sign unit is
the perceptron's:

    sign(z) = +1 if z >= 0, -1 if z < 0        (sign(0) = +1, never 0)

so a perceptron ``y = sign(<w, x> + b)`` fires on its boundary. ``check_construction``
evaluates a network and its target on points and says where they differ most.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from handgrad.kernels._checks import (
    check_choice,
    check_finite,
    check_real,
    check_tensor,
    in_graph,
    shape_str,
)


def sign(z: torch.Tensor) -> torch.Tensor:
    """+1 where z >= 0, -1 where z < 0 (NaN stays NaN): the perceptron's output unit."""
    z = check_tensor("z", z)
    one = torch.ones_like(z)
    return torch.where(z >= 0, one, torch.where(z < 0, -one, z))


UNITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "sign": sign,
    "identity": lambda z: z,
}


@dataclass(frozen=True)
class Network:
    """h_0 = x, h_i = units[i](h_{i-1} W_i^T + b_i); the output is h_L.

    ``weights[i]`` is ``(out_i, in_i)``, ``biases[i]`` is ``(out_i,)``, ``units[i]`` one of
    ``UNITS``. Called on x (N, in) or (in,) it gives (N, out) or (out,), with the last axis
    dropped when out == 1; a network of one input also takes x (N,), N scalar inputs. The
    parameters are cast to x's dtype and device for the call.
    """

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    units: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("weights", "biases", "units"):
            value = getattr(self, name)
            if isinstance(value, (torch.Tensor, str)) or not isinstance(value, Sequence):
                raise TypeError(f"{name}: expected a sequence, one per layer, got "
                                f"{type(value).__name__}")
            object.__setattr__(self, name, tuple(value))
        ws, bs, us = self.weights, self.biases, self.units
        if not ws:
            raise ValueError("weights: expected at least one layer, got an empty sequence")
        if not len(bs) == len(us) == len(ws):
            raise ValueError(f"biases, units: expected one per weight matrix ({len(ws)}), got "
                             f"{len(bs)} biases and {len(us)} units")
        for i, (w, b, u) in enumerate(zip(ws, bs, us)):
            check_tensor(f"weights[{i}]", w, ndims=(2,))
            check_tensor(f"biases[{i}]", b, ndims=(1,))
            check_finite(f"weights[{i}]", w)
            check_finite(f"biases[{i}]", b)
            check_choice(f"units[{i}]", u, list(UNITS))
            if 0 in w.shape:
                raise ValueError(f"weights[{i}]: expected at least one input and one output "
                                 f"unit, got shape {shape_str(w)}")
            if i and w.shape[1] != ws[i - 1].shape[0]:
                raise ValueError(f"weights[{i}]: shape {shape_str(w)} does not follow "
                                 f"weights[{i - 1}] of shape {shape_str(ws[i - 1])}; "
                                 f"expected ({w.shape[0]}, {ws[i - 1].shape[0]})")
            if b.shape[0] != w.shape[0]:
                raise ValueError(f"biases[{i}]: shape {shape_str(b)} does not fit weights[{i}] "
                                 f"of shape {shape_str(w)}; expected ({w.shape[0]},)")

    @property
    def sizes(self) -> list[int]:
        """Layer widths ``[in, hidden..., out]``."""
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d, p = self.sizes[0], self.sizes[-1]
        x = check_tensor("x", x, ndims=(1, 2))
        if x.dim() == 1 and d == 1:  # N scalar inputs
            h, lead = x.unsqueeze(1), x.shape
        elif x.shape[-1] == d:
            h, lead = x.reshape(-1, d), x.shape[:-1]
        else:
            want = f"(N, {d}) or ({d},)" + (" or (N,)" if d == 1 else "")
            raise ValueError(f"x: expected shape {want} for a network with {d} inputs, got "
                             f"{shape_str(x)}")
        check_finite("x", x)
        for w, b, u in zip(self.weights, self.biases, self.units):
            w, b = w.to(x.device, x.dtype), b.to(x.device, x.dtype)
            h = UNITS[u](torch.addmm(b, h, w.t()))
        if not in_graph() and h.numel() and not bool(torch.isfinite(h).all()):
            i = tuple(int(v) for v in (~torch.isfinite(h)).nonzero()[0].tolist())
            raise OverflowError(
                f"Network: output {i} is {h[i].item()} in {h.dtype} though x and the "
                f"parameters are finite: a value went past {h.dtype}'s range (largest "
                f"{torch.finfo(h.dtype).max:.3g}) on the way, in x times the weights or in "
                "the parameters cast to x's dtype; call it on x in a wider dtype (float64), "
                "or scale x")
        return h.reshape(tuple(lead)) if p == 1 else h.reshape(*lead, p)


def _net(layers: Sequence[tuple[list, list, str]]) -> Network:
    """A Network from [(W as nested lists, b as a list, unit), ...], in float64."""
    def t(v):
        return torch.tensor(v, dtype=torch.float64)

    return Network(weights=[t(w) for w, _, _ in layers], biases=[t(b) for _, b, _ in layers],
                   units=[u for _, _, u in layers])


# -------------------------------------------------------------------- the constructions


def xnor() -> Network:
    """XNOR of two bits (0/1 in, 0/1 out): 2 ReLU units, linear output.

    XNOR(a, b) = 1 - |a - b| on bits, and |a - b| = relu(a - b) + relu(b - a), so
    h = relu([[1, -1], [-1, 1]] x), y = 1 - h_1 - h_2:
    (0,0) -> 1 - 0 - 0 = 1; (0,1) -> 1 - 0 - 1 = 0; (1,0) -> 1 - 1 - 0 = 0; (1,1) -> 1.
    """
    return _net([([[1, -1], [-1, 1]], [0, 0], "relu"),
                 ([[-1, -1]], [1], "identity")])


def tent() -> Network:
    """The tent: 2x on [0, 1/2], 2(1 - x) on [1/2, 1], 0 elsewhere. 3 ReLU units.

    A sum of ramps c_k relu(x - t_k) changes slope by c_k at t_k. The tent's slope goes
    0 -> 2 at 0, 2 -> -2 at 1/2, -2 -> 0 at 1, so c = (2, -4, 2), t = (0, 1/2, 1):
    f(x) = 2 relu(x) - 4 relu(x - 1/2) + 2 relu(x - 1). Check: x >= 1 gives
    2x - 4x + 2 + 2x - 2 = 0. A sigmoid network is smooth, so it cannot have the kinks.
    """
    return _net([([[1], [1], [1]], [0, -0.5, -1], "relu"),
                 ([[2, -4, 2]], [0], "identity")])


def soft_threshold(s: float) -> Network:
    """Soft-thresholding max(|x| - s, 0) sign(x), for s >= 0. 2 ReLU units.

    For x > s it is x - s = relu(x - s); for x < -s it is x + s = -relu(-x - s); between,
    0, where both ramps are 0. So f(x) = relu(x - s) - relu(-x - s):
    h = relu([[1], [-1]] x + [-s, -s]), y = h_1 - h_2.
    """
    s = check_real("s", s, what="a finite number >= 0")
    if s < 0:
        raise ValueError(f"s: expected a finite number >= 0, got {s!r}")
    return _net([([[1], [-1]], [-s, -s], "relu"),
                 ([[1, -1]], [0], "identity")])


def decreasing_order() -> Network:
    """+1 iff x1 > x2 > x3 > x4 > x5 (strictly), else -1: 4 hidden perceptrons, 1 output.

    Hidden unit k watches the pair (x_k, x_{k+1}) for a violation: h_k =
    sign(x_{k+1} - x_k) is +1 iff x_{k+1} >= x_k (a tie is a violation, as sign(0) = +1).
    The output fires iff no unit does, i.e. sum_k h_k = -4: y = sign(-sum_k h_k - 3)
    gives sign(1) = +1 then, and sign(-1) or less with any violation (z is odd: never 0).
    """
    hidden = [[-1 if j == k else 1 if j == k + 1 else 0 for j in range(5)] for k in range(4)]
    return _net([(hidden, [0, 0, 0, 0], "sign"),
                 ([[-1, -1, -1, -1]], [-3], "sign")])


# -------------------------------------------------------------------- the checker


class Check(NamedTuple):
    """What ``check_construction`` found: the largest error over the points, the input
    where it occurs, and the network's and the target's value there."""

    max_error: float
    worst_input: torch.Tensor
    network_value: torch.Tensor
    target_value: torch.Tensor

    def __str__(self) -> str:
        def v(t: torch.Tensor):
            return t.tolist()

        return (f"max error {self.max_error:.6g} at x = {v(self.worst_input)}: network "
                f"{v(self.network_value)}, target {v(self.target_value)}")


def check_construction(net: Callable, target: Callable, points: torch.Tensor) -> Check:
    """Evaluate ``net`` and ``target`` on ``points`` (N, in), or (N,) for scalar inputs,
    and return the largest absolute difference, where it occurs and both values there.

    ``net`` and ``target`` map the whole batch of points at once; each must give one value
    (or the same number of values) per point. A NaN counts as an infinite error.
    """
    for name, f in (("net", net), ("target", target)):
        if not callable(f):
            raise TypeError(f"{name}: expected a callable x -> f(x), got {type(f).__name__}")
    points = check_tensor("points", points, ndims=(1, 2))
    check_finite("points", points)
    n = points.shape[0]
    if n == 0:
        raise ValueError(f"points: expected at least one point, got shape {shape_str(points)}")
    outs = {}
    for name, f in (("net", net), ("target", target)):
        out = f(points)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{name}(points): expected a torch.Tensor, got {type(out).__name__}")
        if out.dtype.is_complex:  # the difference would drop the imaginary part
            raise TypeError(f"{name}(points): expected real values, got dtype {out.dtype}")
        if out.device.type == "meta":
            raise ValueError(f"{name}(points): expected values, got a tensor on the meta "
                             "device (a shape without values)")
        if out.dim() == 0 or out.shape[0] != n:
            raise ValueError(f"{name}(points): expected one row per point ({n}), got shape "
                             f"{shape_str(out)}")
        outs[name] = out.reshape(n, -1)
    a, e = outs["net"], outs["target"]
    if a.shape != e.shape:
        raise ValueError(f"net and target give different numbers of values per point: "
                         f"{a.shape[1]} and {e.shape[1]}")
    if a.shape[1] == 0:  # no value to compare: no largest difference, no worst point
        raise ValueError(f"net(points), target(points): expected at least one value per "
                         f"point, got none from both (shape {shape_str(outs['net'])} "
                         f"for {n} points)")
    # read to the host (no grad): net and target may give their values on two devices
    err = (a.detach().double().cpu() - e.detach().double().cpu()).abs()
    err = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
    per_point = err.amax(dim=1)
    i = int(torch.argmax(per_point))
    return Check(max_error=float(per_point[i]), worst_input=points[i],
                 network_value=outs["net"][i].squeeze(0), target_value=e[i].squeeze(0))
