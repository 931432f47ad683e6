"""A careless user: every public function of kernels/ (backprop, mlp, jacobian, least
squares, constructions, capture; counting and finite differences in
``test_reliability_counting.py``) called with malformed arguments.

Each case takes a valid call and spoils one argument in one way (a category of issue 17):
not a tensor, an integer / complex / bool / other floating dtype, a wrong rank, a
zero-sized axis, NaN, inf, another device ("meta"), a numpy or 0-d tensor number, a bool,
a string, a negative or zero count, an unknown choice; and (issue 26) a dtype given as a
string, a numpy type, None or a non-floating torch dtype, an empty batch (every argument
that holds the batch emptied together) and an empty sequence of iteration counts; and the
same values in a strided (non-contiguous) layout or requiring grad, a count given as a
whole float (2.0), a float16 or bfloat16 dtype. The outcome must be one of:

- ``reject``: a ``ValueError`` or ``TypeError`` whose message names the spoilt argument;
- ``accept``: a finite result equal to the valid call's (a numpy ``float32(0.02)`` or a
  0-d tensor where a number is accepted gives the same answer as the float it holds);
- ``propagate`` (element-wise building blocks only): NaN and inf in, the IEEE answer out,
  equal to torch's own element-wise formula with NaN where it has NaN;
- ``empty``: no samples in, a finite result with no samples out (every output that had the
  valid call's batch size as its first axis has 0 there, every other output its shape);
- ``finite``: no samples in, a finite result (least squares with no data: the loss is 0
  everywhere, so the gradient is 0 and gradient descent stays at w0).

``test_every_malformed_call_is_refused_by_name_or_answered_right`` runs every case once
(pytest's count of its parameters is the number of cases); ``test_malformed_calls_property``
draws the same cases with hypothesis over random valid inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handgrad.kernels import backprop as bp
from handgrad.kernels import constructions as cs
from handgrad.kernels import jacobian as jm
from handgrad.kernels import least_squares as ls
from handgrad.kernels import mlp
from handgrad.kernels.capture import capture
from verify.fake_cuda_graph import FakeCuda

F64 = torch.float64


# -- spoiling one argument -----------------------------------------------------------------

def _tensor_spoilers(t: torch.Tensor) -> dict[str, tuple[object, str]]:
    """name: (spoilt value, expected outcome) for a floating tensor argument."""
    out = {
        "list": (t.tolist(), "reject"),
        "int-dtype": (t.round().to(torch.int64), "reject"),
        "complex": (t.to(torch.complex128), "reject"),
        "bool": (t > 0, "reject"),
        "float32": (t.float() if t.dtype != torch.float32 else t.double(), "reject"),
        "add-dim": (t.unsqueeze(0).unsqueeze(0), "reject"),
        "meta": (t.to("meta"), "reject"),
    }
    if t.numel():
        nan, inf = t.clone(), t.clone()
        nan.view(-1)[0] = float("nan")
        inf.view(-1)[-1] = float("inf")
        out["nan"] = (nan, "reject")
        out["inf"] = (inf, "reject")
    if t.dim() >= 1:
        out["drop-dim"] = (t.reshape(-1)[0], "reject")
        # the same values in a layout of another stride (every other element of a buffer
        # twice the size), and the same values requiring grad: the same answer
        out["strided"] = (torch.stack([t, t], -1)[..., 0], "accept")
    out["requires-grad"] = (t.detach().clone().requires_grad_(), "accept")
    return out


def _number_spoilers(v: float, positive: bool = True) -> dict[str, tuple[object, str]]:
    out = {
        "numpy-float32": (np.float32(v), "accept"),
        "numpy-float64": (np.float64(v), "accept"),
        "tensor-0d": (torch.tensor(v, dtype=F64), "accept"),
        "bool": (True, "reject"),
        "str": (str(v), "reject"),
        "nan": (float("nan"), "reject"),
        "inf": (float("inf"), "reject"),
        "vector": (torch.tensor([v, v]), "reject"),
        "none": (None, "reject"),
    }
    if positive:
        out["zero"] = (0.0, "reject")
        out["negative"] = (-abs(v), "reject")
    return out


def _count_spoilers(k: int, minimum: int = 0) -> dict[str, tuple[object, str]]:
    return {
        "numpy-int64": (np.int64(k), "accept"),
        "float": (k + 0.5, "reject"),
        "float-whole": (float(k), "reject"),  # depth=2.0: a float, if a whole one
        "bool": (True, "reject"),
        "str": (str(k), "reject"),
        "below-minimum": (minimum - 1, "reject"),
        "none": (None, "reject"),
    }


def _dtype_spoilers() -> dict[str, tuple[object, str]]:
    return {"str": ("float32", "reject"), "numpy": (np.float32, "reject"),
            "none": (None, "reject"), "int": (torch.int64, "reject"),
            "complex": (torch.complex128, "reject"), "float32": (torch.float32, "dtype"),
            "float16": (torch.float16, "dtype"), "bfloat16": (torch.bfloat16, "dtype")}


def _choice_spoilers() -> dict[str, tuple[object, str]]:
    return {"unknown": ("no-such-choice", "reject"), "int": (1, "reject"),
            "none": (None, "reject")}


@dataclass
class Fn:
    """A public function, a valid call of it and what each argument is."""

    name: str
    call: Callable[..., object]
    valid: Callable[[torch.Generator], dict]
    kinds: dict  # argument -> "tensor" | "number" | "signed" | "count" | "counts" (an int
    #              or a sequence) | "count1" | "choice" | "dtype" | "skip" (not spoilt here)
    #              | a callable arg -> spoilers
    elementwise: Callable[..., object] | None = None  # torch's formula (``propagate``)
    batch: tuple[str, ...] = ()  # the arguments whose first axis is the batch
    empty: str = "empty"  # the outcome of an empty batch: "empty", "finite" or "reject"


def _mlp_problem(g, n=4, sizes=(3, 5, 2), activation="tanh"):
    net = mlp.init_mlp(list(sizes), activation, generator=g, dtype=F64)
    x = torch.randn(n, sizes[0], generator=g, dtype=F64)
    y = torch.randn(n, sizes[-1], generator=g, dtype=F64)
    return net, x, y


def _jac_problem(g, n=3):
    ws = {"W1": torch.randn(4, 2, generator=g, dtype=F64),
          "W2": torch.randn(4, 4, generator=g, dtype=F64),
          "WF": torch.randn(3, 4, generator=g, dtype=F64)}
    return ws, torch.randn(n, 2, generator=g, dtype=F64)


def _ls_problem(g, n=12, d=3):
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, generator=g, dtype=F64)
    w0 = torch.randn(d, generator=g, dtype=F64)
    alpha = 0.5 / float(torch.linalg.eigvalsh(X.t() @ X).max())
    return X, y, w0, alpha


def _net_spoilers(net: mlp.MLP) -> dict[str, tuple[object, str]]:
    return {"tensor": (net.weights[0], "reject"), "list": (list(net.weights), "reject"),
            "none": (None, "reject")}


def _weights_spoilers(ws: dict) -> dict[str, tuple[object, str]]:
    w0 = dict(ws)
    w0["W0"] = torch.ones(4, 2, dtype=F64)  # the issue's silently-ignored key
    return {
        "key-W0": (w0, "reject"),
        "unknown-key": ({**ws, "bias": ws["W1"]}, "reject"),
        "missing-WF": ({k: v for k, v in ws.items() if k != "WF"}, "reject"),
        "nan": ({**ws, "W2": ws["W2"].clone().fill_(float("nan"))}, "reject"),
        "int-dtype": ({k: v.long() for k, v in ws.items()}, "reject"),
        "tensor": (ws["W1"], "reject"),
        "one-matrix": ([ws["W1"]], "reject"),
        "mismatched": ({**ws, "W2": torch.ones(5, 4, dtype=F64)}, "reject"),
    }


def _callable_spoilers(_) -> dict[str, tuple[object, str]]:
    return {"not-callable": ("backprop", "reject"), "none": (None, "reject")}


FUNCTIONS = [
    # -- mlp -------------------------------------------------------------------------------
    Fn("mlp.activation", lambda name: mlp.activation(name), lambda g: {"name": "tanh"},
       {"name": "choice"}),
    Fn("mlp.activation_grad", lambda name, z: mlp.activation_grad(name, z),
       lambda g: {"name": "sigmoid", "z": torch.randn(3, 2, generator=g, dtype=F64)},
       {"name": "choice", "z": "elementwise"},
       elementwise=lambda name, z: torch.sigmoid(z) * (1 - torch.sigmoid(z)), batch=("z",)),
    Fn("mlp.log_cosh", lambda r: mlp.log_cosh(r),
       lambda g: {"r": torch.randn(3, 2, generator=g, dtype=F64)}, {"r": "elementwise"},
       elementwise=lambda r: torch.log(torch.cosh(r)), batch=("r",)),
    Fn("mlp.loss_value", lambda name, r: mlp.loss_value(name, r),
       lambda g: {"name": "squared", "r": torch.randn(3, 2, generator=g, dtype=F64)},
       {"name": "choice", "r": "elementwise"}, elementwise=lambda name, r: 0.5 * r * r,
       batch=("r",)),
    Fn("mlp.loss_grad", lambda name, r: mlp.loss_grad(name, r),
       lambda g: {"name": "log_cosh", "r": torch.randn(3, 2, generator=g, dtype=F64)},
       {"name": "choice", "r": "elementwise"}, elementwise=lambda name, r: torch.tanh(r),
       batch=("r",)),
    Fn("mlp.log_softmax", lambda logits: mlp.log_softmax(logits),
       lambda g: {"logits": torch.randn(3, 4, generator=g, dtype=F64)},
       {"logits": lambda v: {**_spoilers("elementwise", v),
                             "drop-dim": (v.reshape(-1)[0], "reject")}},  # no class axis
       elementwise=lambda logits: F.log_softmax(logits, dim=-1), batch=("logits",)),
    Fn("mlp.cross_entropy", lambda logits, target: mlp.cross_entropy(logits, target),
       lambda g: {"logits": torch.randn(4, 3, generator=g, dtype=F64),
                  "target": torch.tensor([0, 2, 1, 2])},
       {"logits": "tensor",
        "target": lambda v: {"short": (v[:3], "reject"), "out-of-range": (v + 1, "reject"),
                             "negative": (v - 3, "reject"), "bool": (v > 0, "reject"),
                             "float-vector": (v.double(), "reject"),
                             "probabilities-1d": (torch.full((3,), 1 / 3, dtype=F64), "reject"),
                             "list": (v.tolist(), "reject"), "meta": (v.to("meta"), "reject"),
                             "int32": (v.int(), "accept")}}, batch=("logits", "target")),
    Fn("mlp.init_mlp",
       lambda sizes, activation, init, dtype: mlp.init_mlp(
           sizes, activation, init, generator=torch.Generator().manual_seed(0), dtype=dtype),
       lambda g: {"sizes": [3, 4, 2], "activation": "relu", "init": 0.5, "dtype": F64},
       {"sizes": lambda v: {"empty": ([], "reject"), "zero-width": ([3, 0, 2], "reject"),
                            "float-width": ([3, 4.5, 2], "reject"),
                            "numpy-ints": ([np.int64(3), np.int64(4), np.int64(2)], "accept"),
                            "str": ("3,4,2", "reject")},
        "activation": "choice", "init": "number", "dtype": "dtype"}),
    Fn("mlp.MLP", lambda weights, biases: mlp.MLP(weights, biases),
       lambda g: {"weights": [torch.randn(4, 3, generator=g, dtype=F64)],
                  "biases": [torch.randn(4, generator=g, dtype=F64)]},
       {"weights": lambda v: {"tensor": (v[0], "reject"), "empty": ([], "reject"),
                              "int": ([v[0].long()], "reject"),
                              "nan": ([v[0].clone().fill_(float("nan"))], "reject"),
                              "zero-size": ([v[0][:0]], "reject")},
        "biases": lambda v: {"tensor": (v[0], "reject"), "too-many": (v * 2, "reject"),
                             "wrong-size": ([v[0][:2]], "reject"),
                             "inf": ([v[0].clone().fill_(float("inf"))], "reject")}}),
    Fn("mlp.forward", lambda net, x: mlp.forward(net, x),
       lambda g: dict(zip(("net", "x"), _mlp_problem(g)[:2])),
       {"net": _net_spoilers, "x": "tensor"}, batch=("x",)),
    Fn("mlp.forward_cache", lambda net, x: mlp.forward_cache(net, x),
       lambda g: dict(zip(("net", "x"), _mlp_problem(g)[:2])),
       {"net": _net_spoilers, "x": "tensor"}, batch=("x",)),
    Fn("mlp.check_input", lambda net, x: mlp.check_input(net, x),
       lambda g: dict(zip(("net", "x"), _mlp_problem(g)[:2])),
       {"net": _net_spoilers, "x": "tensor"}, batch=("x",)),
    # -- backprop ----------------------------------------------------------------------------
    Fn("backprop.backprop",
       lambda net, x, y, loss, reduction: bp.backprop(net, x, y, loss=loss,
                                                      reduction=reduction),
       lambda g: {**dict(zip(("net", "x", "y"), _mlp_problem(g))), "loss": "log_cosh",
                  "reduction": "mean"},
       {"net": _net_spoilers, "x": "tensor", "y": "tensor", "loss": "choice",
        "reduction": "choice"}, batch=("x", "y"), empty="reject"),  # no mean of no samples
    Fn("backprop.layer_statistics",
       lambda net, x, y, loss: bp.layer_statistics(net, x, y, loss=loss),
       lambda g: {**dict(zip(("net", "x", "y"), _mlp_problem(g))), "loss": "squared"},
       {"net": _net_spoilers, "x": "tensor", "y": "tensor", "loss": "choice"},
       batch=("x", "y"), empty="reject"),
    # -- jacobian ----------------------------------------------------------------------------
    *[Fn(f"jacobian.{name}",
         lambda weights, x, activation, _f=f: _f(weights, x, activation=activation),
         lambda g: {**dict(zip(("weights", "x"), _jac_problem(g))), "activation": "tanh"},
         {"weights": _weights_spoilers, "x": "tensor", "activation": "choice"}, batch=("x",))
      for name, f in (("jacobian_forward", jm.jacobian_forward),
                      ("jacobian_reverse", jm.jacobian_reverse))],
    *[Fn(f"jacobian.{name}", lambda D, K, P, L, _f=f: _f(D=D, K=K, P=P, L=L),
         lambda g: {"D": 2, "K": 30, "P": 10, "L": 3},
         {"D": "count1", "K": "count1", "P": "count1", "L": "count1"})
      for name, f in (("op_counts", jm.op_counts), ("op_count_terms", jm.op_count_terms),
                      ("matmul_counts", jm.matmul_counts),
                      ("predicted_mode", jm.predicted_mode))],
    # -- least squares -----------------------------------------------------------------------
    Fn("least_squares.gradient", lambda X, w, y: ls.gradient(X, w, y),
       lambda g: dict(zip(("X", "y", "w"), _ls_problem(g)[:3])),
       {"X": "tensor", "w": "tensor", "y": "tensor"}, batch=("X", "y"), empty="finite"),
    Fn("least_squares.loss", lambda X, w, y: ls.loss(X, w, y),
       lambda g: dict(zip(("X", "y", "w"), _ls_problem(g)[:3])),
       {"X": "tensor", "w": "tensor", "y": "tensor"}, batch=("X", "y"), empty="finite"),
    Fn("least_squares.minimizer", lambda X, y: ls.minimizer(X, y),
       lambda g: dict(zip(("X", "y"), _ls_problem(g)[:2])), {"X": "tensor", "y": "tensor"},
       batch=("X", "y"), empty="finite"),
    Fn("least_squares.spectrum", lambda X, y, method: ls.spectrum(X, y, method).lam,
       lambda g: {**dict(zip(("X", "y"), _ls_problem(g)[:2])), "method": "gram"},
       {"X": "tensor", "y": "tensor", "method": "choice"}, batch=("X", "y"), empty="finite"),
    Fn("least_squares.spectral_radius", lambda X, alpha: ls.spectral_radius(X, alpha),
       lambda g: (lambda p: {"X": p[0], "alpha": p[3]})(_ls_problem(g)),
       {"X": "tensor", "alpha": "number"}, batch=("X",), empty="finite"),
    Fn("least_squares.converges", lambda X, alpha: ls.converges(X, alpha),
       lambda g: (lambda p: {"X": p[0], "alpha": p[3]})(_ls_problem(g)),
       {"X": "tensor", "alpha": "number"}, batch=("X",), empty="finite"),
    *[Fn(f"least_squares.{name}",
         lambda X, y, w0, alpha, k, _f=f: _f(X, y, w0, alpha, k),
         lambda g: {**dict(zip(("X", "y", "w0", "alpha"), _ls_problem(g))), "k": 7},
         {"X": "tensor", "y": "tensor", "w0": "tensor", "alpha": "number", "k": kind},
         batch=("X", "y"), empty="finite")
      for name, f, kind in (("gd_iterates", ls.gd_iterates, "count"),
                            ("gd_closed_form", ls.gd_closed_form, "counts"))],
    *[Fn(f"least_squares.{name}",
         lambda X, y, w0, alpha, beta, k, _f=f: _f(X, y, w0, alpha, beta, k),
         lambda g: {**dict(zip(("X", "y", "w0", "alpha"), _ls_problem(g))), "beta": 0.5,
                    "k": 7},
         {"X": "tensor", "y": "tensor", "w0": "tensor", "alpha": "number", "beta": "unit",
          "k": kind}, batch=("X", "y"), empty="finite")
      for name, f, kind in (("heavy_ball_iterates", ls.heavy_ball_iterates, "count"),
                            ("heavy_ball_closed_form", ls.heavy_ball_closed_form, "counts"))],
    *[Fn(f"least_squares.{name}",
         lambda grads, theta0, alpha, beta, _f=f: _f(grads, theta0, alpha, beta),
         lambda g: {"grads": torch.randn(5, 3, generator=g, dtype=F64),
                    "theta0": torch.randn(3, generator=g, dtype=F64), "alpha": 0.1,
                    "beta": 0.5},
         {"grads": "tensor", "theta0": "tensor", "alpha": "number", "beta": "unit"},
         batch=("grads",), empty="finite")  # no gradient steps: [theta0]
      for name, f in (("momentum_form1", ls.momentum_form1),
                      ("momentum_form2", ls.momentum_form2))],
    # -- constructions -----------------------------------------------------------------------
    Fn("constructions.sign", lambda z: cs.sign(z),
       lambda g: {"z": torch.randn(5, generator=g, dtype=F64)}, {"z": "elementwise"},
       elementwise=lambda z: torch.where(z >= 0, 1.0, torch.where(z < 0, -1.0, z)),
       batch=("z",)),
    Fn("constructions.soft_threshold", lambda s: cs.soft_threshold(s)(
        torch.linspace(-2, 2, 9, dtype=F64)), lambda g: {"s": 0.5}, {"s": "nonneg"}),
    Fn("constructions.check_construction",
       lambda net, target, points: cs.check_construction(net, target, points).max_error,
       lambda g: {"net": cs.tent(), "target": lambda x: torch.relu(x),
                  "points": torch.linspace(-1, 2, 31, dtype=F64)},
       {"net": _callable_spoilers, "target": _callable_spoilers, "points": "tensor"},
       batch=("points",), empty="reject"),
    Fn("constructions.Network",
       lambda weights, biases, units: cs.Network(weights, biases, units)(
           torch.ones(2, 3, dtype=F64)),
       lambda g: {"weights": [torch.randn(4, 3, generator=g, dtype=F64)],
                  "biases": [torch.randn(4, generator=g, dtype=F64)], "units": ["relu"]},
       {"weights": lambda v: {"tensor": (v[0], "reject"), "int": ([v[0].long()], "reject"),
                              "nan": ([v[0].clone().fill_(float("nan"))], "reject")},
        "biases": lambda v: {"wrong-size": ([v[0][:2]], "reject")},
        "units": lambda v: {"unknown": (["softplus"], "reject"), "str": ("relu", "reject"),
                            "too-many": (["relu", "relu"], "reject")}}),
    # -- capture -----------------------------------------------------------------------------
    Fn("capture.capture", lambda kernel, warmup: capture(kernel, torch.ones(2), warmup=warmup,
                                                         cuda=FakeCuda()),
       lambda g: {"kernel": lambda t: t * 2, "warmup": 2},
       {"kernel": _callable_spoilers, "warmup": "count1"}),
]
ALIASES = {"name": ("activation", "loss"), "logits": ("logits", "z"), "r": ("r",)}


def _spoilers(kind, value, fn: Fn | None = None) -> dict[str, tuple[object, str]]:
    if callable(kind):
        return kind(value)
    if kind == "tensor":
        out = _tensor_spoilers(value)
        if fn is not None and sum(k in ("tensor", "elementwise")
                                  for k in fn.kinds.values()) == 1:
            del out["float32"]  # no other tensor to disagree with: float32 is as valid
        return out
    if kind == "elementwise":  # any float dtype, shape or device is as valid: torch's formula
        out = _tensor_spoilers(value)
        for how in ("float32", "add-dim", "drop-dim"):
            out[how] = (out[how][0], "formula")
        for how in ("nan", "inf"):
            out[how] = (out[how][0], "propagate")
        return out
    if kind == "nonneg":  # a number >= 0
        out = _number_spoilers(value)
        out["zero"] = (0.0, "accept")
        return out
    if kind == "number":
        return _number_spoilers(value)
    if kind == "unit":  # a momentum in [0, 1)
        out = _number_spoilers(value, positive=False)
        out["one"] = (1.0, "reject")
        out["negative"] = (-0.5, "reject")
        return out
    if kind in ("count", "count1"):
        return _count_spoilers(value, minimum=0 if kind == "count" else 1)
    if kind == "counts":  # an int or a sequence of them: an empty sequence, no iterates
        return {**_count_spoilers(value), "empty-seq": ([], "empty-seq"),
                "empty-tensor": (torch.tensor([], dtype=torch.long), "empty-seq")}
    if kind == "dtype":
        return _dtype_spoilers()
    if kind == "choice":
        return _choice_spoilers()
    raise AssertionError(kind)


def _flat(out) -> list:
    if isinstance(out, bp.Gradients):
        return [out.loss, *out.weights, *out.biases, out.input]
    if isinstance(out, (list, tuple)):
        return [v for o in out for v in _flat(o)]
    if isinstance(out, dict):
        return [v for o in out.values() for v in _flat(o)]
    if hasattr(out, "to_numpy"):  # a DataFrame
        return [torch.tensor(out.select_dtypes("number").to_numpy(dtype=float))]
    if isinstance(out, mlp.MLP):
        return [*out.weights, *out.biases]
    if isinstance(out, torch.Tensor):
        return [out]
    return [out]


def _same(a, b) -> bool:
    fa, fb = _flat(a), _flat(b)
    if len(fa) != len(fb):
        return False
    for u, v in zip(fa, fb):
        if isinstance(u, torch.Tensor):
            if not isinstance(v, torch.Tensor) or u.shape != v.shape:
                return False
            if not bool(torch.isfinite(u).all()):
                return False
            if not torch.allclose(u.double(), v.double(), rtol=1e-6, atol=1e-9):
                return False
        elif isinstance(u, float):
            if not (math.isfinite(u) and math.isclose(u, v, rel_tol=1e-6, abs_tol=1e-9)):
                return False
        elif callable(u):
            continue  # a function or a Captured: accepted, nothing to compare
        elif u != v:
            return False
    return True


def _canonical(value):
    """The plain value an accepted variant stands for."""
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return float(value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _case_spoilers(fn: Fn, arg: str, value) -> dict[str, tuple[object, str]]:
    """The argument's spoilers, and for the first batch argument an empty batch (every
    batch argument emptied together when the case runs)."""
    out = _spoilers(fn.kinds[arg], value, fn)
    if fn.batch and arg == fn.batch[0]:
        out["empty-batch"] = (value[:0], fn.empty)
    return out


def _no_samples(got, want, n: int) -> str:
    """"" when ``got`` is ``want`` with no samples: each output whose first axis was the
    batch (n) has 0 there, every other output its shape; all finite. Else what differs."""
    fg, fw = _flat(got), _flat(want)
    if len(fg) != len(fw):
        return f"{len(fg)} outputs, expected {len(fw)}"
    for i, (u, v) in enumerate(zip(fg, fw)):
        if not isinstance(v, torch.Tensor):  # a number: a finite one of the same type
            if type(u) is not type(v) or (isinstance(u, float) and not math.isfinite(u)):
                return f"output {i}: {u!r}, expected a {type(v).__name__}"
            continue
        shape = (0, *v.shape[1:]) if v.dim() and v.shape[0] == n else tuple(v.shape)
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != shape:
            return f"output {i}: {getattr(u, 'shape', u)}, expected shape {shape}"
        if u.dtype != v.dtype or not bool(torch.isfinite(u).all()):
            return f"output {i}: dtype {u.dtype} (expected {v.dtype}) or not finite"
    return ""


def _all_finite(got) -> bool:
    return all(bool(torch.isfinite(u).all()) if isinstance(u, torch.Tensor) else
               (not isinstance(u, float) or math.isfinite(u)) for u in _flat(got))


@dataclass(frozen=True)
class Case:
    fn: Fn
    arg: str
    how: str

    @property
    def id(self) -> str:
        return f"{self.fn.name}-{self.arg}-{self.how}"


CASES = [Case(fn, arg, how) for fn in FUNCTIONS for arg in fn.kinds
         for how in _case_spoilers(fn, arg, fn.valid(torch.Generator().manual_seed(0))[arg])]


def outcome(case: Case, seed: int = 0) -> tuple[str, str]:
    """(what happened, detail): "reject", "accept", "propagate", or "other error" /
    "wrong result" (failures)."""
    fn = case.fn
    kwargs = fn.valid(torch.Generator().manual_seed(seed))
    bad, expected = _case_spoilers(fn, case.arg, kwargs[case.arg])[case.how]
    spoilt = {**kwargs, case.arg: bad}
    if case.how == "empty-batch":
        spoilt = {**kwargs, **{a: kwargs[a][:0] for a in fn.batch}}
    names = (case.arg, *ALIASES.get(case.arg, ()))
    try:
        got = fn.call(**spoilt)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        if expected == "reject" and any(re.search(rf"(^|\W){re.escape(n)}(\W|$)", msg)
                                        for n in names):
            return "reject", msg
        return "other error", f"{type(exc).__name__}: {msg}"
    except Exception as exc:  # noqa: BLE001 (a careless user sees whatever comes out)
        return "other error", f"{type(exc).__name__}: {exc}"
    if expected == "empty":
        why = _no_samples(got, fn.call(**kwargs), kwargs[fn.batch[0]].shape[0])
        return ("empty", "") if not why else ("wrong result", why)
    if expected == "finite":
        return ("finite", "") if _all_finite(got) else ("wrong result", f"{got!r}")
    if expected == "empty-seq":  # (0, D): no iterates of D coordinates
        d = kwargs["w0"].shape[0]
        ok = isinstance(got, torch.Tensor) and tuple(got.shape) == (0, d)
        return ("empty", "") if ok else ("wrong result", f"{got!r}, expected shape (0, {d})")
    if expected == "dtype":  # another floating dtype: the result is made in it
        ok = all(u.dtype == bad for u in _flat(got) if isinstance(u, torch.Tensor))
        return ("accept", "") if ok else ("wrong result", f"dtype {_flat(got)[0].dtype}")
    if expected == "accept":
        want = fn.call(**{**kwargs, case.arg: _canonical(bad)})
        return ("accept", "") if _same(got, want) else ("wrong result", f"{got!r} != {want!r}")
    if expected in ("propagate", "formula"):
        # torch's formula in float64 (the naive log cosh loses float32's digits near 0)
        want = fn.elementwise(**{k: v.double() if isinstance(v, torch.Tensor)
                                 and v.dtype.is_floating_point else v
                                 for k, v in spoilt.items()}).to(got.dtype)
        ok = (got.shape == want.shape
              and torch.allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
              and bool(torch.isfinite(got[torch.isfinite(want)]).all()))
        return (expected, "") if ok else ("wrong result", f"{got!r} != {want!r}")
    return "wrong result", f"returned {str(got)[:200]} where a named error was expected"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_malformed_call_is_refused_by_name_or_answered_right(case):
    what, detail = outcome(case)
    assert what in ("reject", "accept", "propagate", "formula", "empty", "finite"), \
        f"{case.id}: {what}: {detail}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), seed=st.integers(0, 2**16))
def test_malformed_calls_property(case, seed):
    """The same with random valid inputs around the spoilt argument."""
    what, detail = outcome(case, seed)
    assert what in ("reject", "accept", "propagate", "formula", "empty", "finite"), \
        f"{case.id} (seed {seed}): {detail}"


def test_the_table_covers_every_public_function():
    import inspect

    from handgrad.kernels import capture as cap

    tested = {fn.name for fn in FUNCTIONS}
    skip = {"least_squares.DivergenceWarning", "least_squares.Spectrum", "backprop.Gradients",
            "constructions.Check", "constructions.xnor", "constructions.tent",
            "constructions.decreasing_order", "capture.Captured"}  # no arguments / results
    for mod in (mlp, bp, jm, ls, cs, cap):
        short = mod.__name__.removeprefix("handgrad.kernels.")
        public = {f"{short}.{n}" for n, o in vars(mod).items()
                  if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
                  and o.__module__ == mod.__name__}
        assert public - skip <= tested, sorted(public - skip - tested)


def test_check_finite_sees_every_nan_and_inf_and_no_overflowing_sum():
    from handgrad.kernels._checks import check_finite

    # finite values whose sum overflows: the element-wise test decides, and passes them
    check_finite("t", torch.tensor([6e4, 6e4], dtype=torch.float16))
    check_finite("t", torch.tensor([3e38, 3e38, -3e38, -3e38], dtype=torch.float32))
    for bad, where in [(torch.tensor([1.0, float("nan"), 2.0]), r"\(1,\)"),
                       (torch.tensor([[1.0, 2.0], [float("-inf"), 3.0]]), r"\(1, 0\)"),
                       (torch.tensor([float("inf"), float("-inf")]), r"2 NaN or inf"),
                       (torch.tensor(float("inf")), r"\(\)")]:
        with pytest.raises(ValueError, match=f"t: expected finite values.*{where}"):
            check_finite("t", bad)


# -- empty inputs: the exact answers -----------------------------------------------------------

def test_empty_inputs_get_exact_empty_answers_or_named_errors():
    """The answers the table above only checks for shape and finiteness: no samples, no
    data, no iteration counts, each either a correct empty result or a named error."""
    g = torch.Generator().manual_seed(0)
    net, x, y = _mlp_problem(g)
    x0, y0 = x[:0], y[:0]
    out = bp.backprop(net, x0, y0, loss="squared", reduction="sum")
    assert float(out.loss) == 0.0 and out.input.shape == (0, 3)
    assert all(float(w.abs().max()) == 0 for w in (*out.weights, *out.biases))
    with pytest.raises(ValueError, match=r"x: an empty batch \(shape \(0, 3\)\) has no layer "
                                         r"statistics"):
        bp.layer_statistics(net, x0, y0, reduction="sum")
    ws, xj = _jac_problem(g)
    for f in (jm.jacobian_forward, jm.jacobian_reverse):
        assert f(ws, xj[:0]).shape == (0, 3, 2)  # (N, P, D)
    X, yy, w0, alpha = _ls_problem(g)
    X0, y00 = X[:0], yy[:0]
    assert float(ls.gradient(X0, w0, y00).abs().max()) == 0.0
    assert float(ls.loss(X0, w0, y00)) == 0.0
    assert float(ls.minimizer(X0, y00).abs().max()) == 0.0  # the least-norm minimiser
    assert torch.equal(ls.spectrum(X0, y00).lam, torch.zeros(3, dtype=F64))  # X^T X = 0
    assert ls.spectral_radius(X0, alpha) == 1.0 and ls.converges(X0, alpha) is True
    assert torch.equal(ls.gd_closed_form(X0, y00, w0, alpha, 5), w0)  # no data: no step
    assert torch.equal(ls.gd_iterates(X0, y00, w0, alpha, 2), w0.expand(3, -1))
    assert torch.equal(ls.heavy_ball_closed_form(X0, y00, w0, alpha, 0.5, 4), w0)
    assert torch.equal(ls.heavy_ball_iterates(X0, y00, w0, alpha, 0.5, 2), w0.expand(3, -1))
    for ks in ([], torch.tensor([], dtype=torch.long)):
        assert ls.gd_closed_form(X, yy, w0, alpha, ks).shape == (0, 3)
        assert ls.heavy_ball_closed_form(X, yy, w0, alpha, 0.5, ks).shape == (0, 3)
    theta0 = torch.randn(3, generator=g, dtype=F64)
    for f in (ls.momentum_form1, ls.momentum_form2):
        assert torch.equal(f(torch.zeros(0, 3, dtype=F64), theta0, 0.1, 0.5), theta0[None])
