"""Hand-written central differences: gradient, Jacobian, a step-size sweep, directional
checks and the Taylor remainder test.

``(f(x + h e_i) - f(x - h e_i)) / 2h`` has truncation error O(h^2) and rounding
error O(eps / h); the sum is smallest near h = eps^(1/3), the default step here
(scaled by max(1, |x_i|) so large coordinates get a proportionate step). Use float64:
in float32 the best attainable error is only about 1e-5 relative.

``gradient`` and ``jacobian`` cost 2 * x.numel() evaluations of f. ``directional_check``
costs one pair per direction, whatever the size of x: it compares <u, J v> by central
differences with a kernel's J v (forward mode) and u^T J (reverse mode), the identity
HIPS/autograd's ``check_grads`` and gradcheck's fast mode rely on. ``taylor_test`` needs
no step at all: the remainder f(x + h v) - f(x) - h <g, v> shrinks as h^2 when g is the
gradient and only as h when it is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kernels._checks import check_same, check_tensor


def default_eps(dtype: torch.dtype) -> float:
    """eps^(1/3) of ``dtype``: the step that balances truncation and rounding error."""
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


def _steps(x: torch.Tensor, eps: float | None) -> torch.Tensor:
    if eps is None:
        eps = default_eps(x.dtype)
    if not eps > 0:
        raise ValueError(f"eps: expected a positive step, got {eps}")
    return eps * x.abs().clamp_min(1.0)


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: f must return a torch.Tensor, got {type(value).__name__}")
    return value


@torch.no_grad()
def jacobian(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """Central-difference Jacobian: shape ``f(x).shape + x.shape``; 2 * x.numel() calls of f."""
    x = check_tensor("x", x)
    h = _steps(x, eps)
    flat = x.detach().reshape(-1).clone()
    hflat = h.reshape(-1)
    cols = []
    for i in range(flat.numel()):
        orig = flat[i].clone()
        flat[i] = orig + hflat[i]
        fp = _as_tensor("f", f(flat.reshape(x.shape)))
        flat[i] = orig - hflat[i]
        fm = _as_tensor("f", f(flat.reshape(x.shape)))
        flat[i] = orig
        # the actual step may differ from h by rounding of x + h; divide by what was taken
        cols.append((fp - fm) / ((orig + hflat[i]) - (orig - hflat[i])))
    if not cols:
        out = _as_tensor("f", f(x))
        return x.new_zeros(tuple(out.shape) + tuple(x.shape))
    out_shape = tuple(cols[0].shape)
    return torch.stack(cols, dim=-1).reshape(out_shape + tuple(x.shape))


def gradient(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """Central-difference gradient of a scalar function: shape ``x.shape``."""
    x = check_tensor("x", x)
    out = _as_tensor("f", f(x.detach()))
    if out.numel() != 1:
        raise ValueError(
            f"f: gradient needs a scalar function, but f(x) has shape {tuple(out.shape)}; "
            "use finite_diff.jacobian for vector outputs"
        )
    return jacobian(lambda t: f(t).reshape(()), x, eps)


def _fit_slope(log_h: Sequence[float], log_r: Sequence[float]) -> tuple[float, float]:
    """Least-squares line log_r = c + p log_h: (p, c)."""
    n = len(log_h)
    mh, mr = sum(log_h) / n, sum(log_r) / n
    var = sum((a - mh) ** 2 for a in log_h)
    p = sum((a - mh) * (b - mr) for a, b in zip(log_h, log_r)) / var
    return p, mr - p * mh


# a step belongs to the truncation branch of the V-curve when it is larger than the best
# step and its error is clear of the rounding floor (30 x the best error): there the error
# follows a h^p alone
TRUNCATION_CLEARANCE = 30.0


@dataclass(frozen=True)
class StepSweep:
    """Error of the central difference at each step: the truncation/rounding V-curve.

    ``order``: the fitted p of error ~ a h^p on the truncation branch (2 for a central
    difference; nan with fewer than two steps on it). ``predicted_eps``: the step that
    minimises a h^p + u |f| / h, the truncation branch plus the rounding error of the
    dtype (unit roundoff u, ``value_scale`` = max |f(x)|): h* = (u |f| / (p a))^(1/(p+1)).
    """

    eps: tuple[float, ...]
    error: tuple[float, ...]
    order: float = math.nan
    predicted_eps: float = math.nan
    dtype: str = ""
    value_scale: float = math.nan

    @property
    def best_eps(self) -> float:
        return self.eps[min(range(len(self.error)), key=self.error.__getitem__)]

    @property
    def truncation_branch(self) -> tuple[int, ...]:
        """Indices of the steps the order is fitted on (see TRUNCATION_CLEARANCE)."""
        best = min(self.error)
        return tuple(i for i, (e, r) in enumerate(zip(self.eps, self.error))
                     if e > self.best_eps and r > TRUNCATION_CLEARANCE * best and r > 0)

    def to_frame(self):
        import pandas as pd

        branch = set(self.truncation_branch)
        return pd.DataFrame({"eps": self.eps, "max_abs_error": self.error,
                             "truncation_branch": [i in branch for i in range(len(self.eps))]})


def _sweep_fit(eps: Sequence[float], error: Sequence[float], unit: float, scale: float
               ) -> tuple[float, float]:
    """(order, predicted optimal step) of a sweep; nan where the branch is too short."""
    partial = StepSweep(eps=tuple(eps), error=tuple(error))
    idx = partial.truncation_branch
    if len(idx) < 2:
        return math.nan, math.nan
    p, c = _fit_slope([math.log(eps[i]) for i in idx], [math.log(error[i]) for i in idx])
    if not p > 0 or not scale > 0:
        return p, math.nan
    a = math.exp(c)
    return p, (unit * scale / (p * a)) ** (1.0 / (p + 1.0))


def step_sweep(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    exact: torch.Tensor,
    eps_values: Sequence[float] | None = None,
) -> StepSweep:
    """Max |finite-difference Jacobian - exact| for each step in ``eps_values``, with the
    fitted order of the truncation branch and the predicted optimal step (``StepSweep``).

    Default steps: 10^-1 down to 10^-13 (float64) or 10^-1 to 10^-7 (lower precision).
    ``exact`` has shape ``f(x).shape + x.shape``.
    """
    x = check_tensor("x", x)
    if eps_values is None:
        lo = 13 if x.dtype == torch.float64 else 7
        eps_values = [10.0**-k for k in range(1, lo + 1)]
    errors = []
    for e in eps_values:
        approx = jacobian(f, x, eps=float(e))
        if approx.shape != exact.shape:
            raise ValueError(
                f"exact: expected shape {tuple(approx.shape)} (f(x).shape + x.shape), "
                f"got {tuple(exact.shape)}"
            )
        errors.append(float((approx.to(exact.dtype) - exact).abs().max()))
    eps_t = tuple(float(e) for e in eps_values)
    with torch.no_grad():
        scale = float(_as_tensor("f", f(x.detach())).abs().max())
    unit = float(torch.finfo(x.dtype).eps) / 2  # unit roundoff: a rounded value's error
    order, best = _sweep_fit(eps_t, errors, unit, scale)
    return StepSweep(eps=eps_t, error=tuple(errors), order=order, predicted_eps=best,
                     dtype=str(x.dtype).removeprefix("torch."), value_scale=scale)


# --- directional checks and the Taylor test ------------------------------------------------

def _as_parts(name: str, x) -> tuple[list[torch.Tensor], bool]:
    """A tensor or a sequence of tensors as a list of checked floating tensors; and whether
    it was a single tensor (f is then called with a tensor, not a list)."""
    if isinstance(x, torch.Tensor):
        return [check_tensor(name, x)], True
    if not isinstance(x, Sequence) or isinstance(x, str) or not x:
        raise TypeError(f"{name}: expected a tensor or a non-empty sequence of tensors, "
                        f"got {type(x).__name__}")
    return [check_tensor(f"{name}[{i}]", t) for i, t in enumerate(x)], False


def _like(name: str, value, ref: list[torch.Tensor], ref_single: bool, ref_name: str
          ) -> list[torch.Tensor]:
    """``value`` with the structure, shapes, dtype and device of ``ref``."""
    parts, single = _as_parts(name, value)
    if single != ref_single or len(parts) != len(ref):
        want = "a tensor" if ref_single else f"a sequence of {len(ref)} tensors"
        got = "a tensor" if single else f"a sequence of {len(parts)} tensors"
        raise ValueError(f"{name}: expected {want} like {ref_name}, got {got}")
    for i, (p, r) in enumerate(zip(parts, ref)):
        where = name if single else f"{name}[{i}]"
        if p.shape != r.shape:
            raise ValueError(f"{where}: expected shape {tuple(r.shape)} like {ref_name}, "
                             f"got {tuple(p.shape)}")
        check_same(where, p, ref_name, r)
    return parts


def _call(f, parts: list[torch.Tensor], single: bool) -> torch.Tensor:
    return _as_tensor("f", f(parts[0] if single else list(parts)))


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((p.double() * q.double()).sum() for p, q in zip(a, b)))


def _random_like(parts: Sequence[torch.Tensor], generator) -> list[torch.Tensor]:
    # drawn on the CPU from the generator so a seed gives the same direction on every device
    return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype)
            for p in parts]


def directional_derivative(f: Callable, x, v, eps: float | None = None) -> torch.Tensor:
    """J v = (f(x + h v) - f(x - h v)) / 2h by one pair of evaluations of f: ``f(x).shape``.

    ``x`` and ``v``: a tensor, or a sequence of tensors that ``f`` takes as a list (every
    parameter of a network, say). The step moves the largest coordinate of h v by
    ``eps * max(1, max |x|)`` (``eps`` default: eps^(1/3) of the dtype).
    """
    parts, single = _as_parts("x", x)
    dirs = _like("v", v, parts, single, "x")
    if eps is None:
        eps = default_eps(parts[0].dtype)
    if not eps > 0:
        raise ValueError(f"eps: expected a positive step, got {eps}")
    vmax = max(float(d.abs().max()) if d.numel() else 0.0 for d in dirs)
    if not vmax > 0 or not math.isfinite(vmax):
        raise ValueError(f"v: expected a finite direction with a nonzero entry, got max |v| = "
                         f"{vmax}")
    xmax = max(float(p.abs().max()) if p.numel() else 0.0 for p in parts)
    h = eps * max(1.0, xmax) / vmax
    with torch.no_grad():
        plus = _call(f, [p.detach() + h * d for p, d in zip(parts, dirs)], single)
        minus = _call(f, [p.detach() - h * d for p, d in zip(parts, dirs)], single)
    return (plus - minus) / (2 * h)


@dataclass(frozen=True)
class Direction:
    """One random direction of ``directional_check``: the kernel's numbers beside the
    central difference's. Tensors ``v`` (like x) and ``u`` (like f(x)); ``jv_fd`` = J v by
    central differences, ``jv`` the kernel's J v (None without ``jvp``). Scalars: ``fd``
    = <u, J v> by central differences, ``forward`` = <u, jvp(v)>, ``reverse`` =
    <vjp(u), v>, and ``scale`` = sum |u * J v| (fd's terms), the size to judge them by."""

    v: tuple[torch.Tensor, ...]
    u: torch.Tensor
    jv_fd: torch.Tensor
    jv: torch.Tensor | None
    fd: float
    forward: float | None
    reverse: float | None
    scale: float

    def errors(self) -> dict[str, float]:
        """|mode - fd| / scale for each mode checked: the relative disagreement."""
        s = self.scale if self.scale > 0 else 1.0
        return {name: abs(val - self.fd) / s for name, val in
                (("forward", self.forward), ("reverse", self.reverse)) if val is not None}


def directional_check(f: Callable, x, *, jvp: Callable | None = None,
                      vjp: Callable | None = None, directions: int = 2,
                      generator: torch.Generator | None = None, eps: float | None = None
                      ) -> list[Direction]:
    """For ``directions`` random pairs (u, v): <u, J v> by one pair of central differences,
    beside <u, jvp(v)> (forward mode) and <vjp(u), v> (reverse mode, backprop).

    ``x``: a tensor or a sequence of tensors (f takes a list then); ``jvp(v)`` returns J v,
    shaped like f(x); ``vjp(u)`` returns u^T J, structured like x. At least one of them.
    Directions are standard normal, drawn on the CPU from ``generator``. Nothing is
    asserted: compare ``Direction.errors()`` (or the tensors) with a tolerance.
    """
    if jvp is None and vjp is None:
        raise ValueError("jvp, vjp: expected at least one of them (the kernel to check), "
                         "got neither")
    for name, fn in (("f", f), ("jvp", jvp), ("vjp", vjp)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    if not isinstance(directions, int) or isinstance(directions, bool) or directions < 1:
        raise ValueError(f"directions: expected a positive integer, got {directions!r}")
    parts, single = _as_parts("x", x)
    with torch.no_grad():
        out = _call(f, [p.detach() for p in parts], single)
    results = []
    for _ in range(directions):
        v = _random_like(parts, generator)
        u = _random_like([out], generator)[0]
        vv = v[0] if single else v
        jv_fd = directional_derivative(f, x, vv, eps)
        fd = _dot([u], [jv_fd])
        scale = float((u.double() * jv_fd.double()).abs().sum())
        jv = forward = reverse = None
        if jvp is not None:
            jv = _as_tensor("jvp", jvp(vv))
            if jv.shape != out.shape:
                raise ValueError(f"jvp: expected J v of shape {tuple(out.shape)} (f(x)'s), "
                                 f"got {tuple(jv.shape)}")
            forward = _dot([u], [jv])
        if vjp is not None:
            g = _like("vjp", vjp(u), parts, single, "x")
            reverse = _dot(g, v)
        results.append(Direction(v=tuple(v), u=u, jv_fd=jv_fd, jv=jv, fd=fd, forward=forward,
                                 reverse=reverse, scale=scale))
    return results


@dataclass(frozen=True)
class TaylorTest:
    """The Taylor remainder r(h) = |f(x + h v) - f(x) - h <g, v>| at halving steps.

    ``order``: the fitted slope of log r against log h over the smallest steps whose
    remainder is clear of rounding (``noise``); 2 when g is the gradient, 1 when it is
    not; nan when fewer than three steps are clear of rounding (f is linear along v, or
    the steps are too small for the dtype).
    """

    h: tuple[float, ...]
    remainder: tuple[float, ...]
    noise: tuple[float, ...]
    order: float
    fitted: tuple[int, ...]  # indices of the steps the order was fitted on

    @property
    def consistent(self) -> bool:
        """Whether the order says "gradient" (nearer 2 than 1)."""
        return self.order > 1.5

    def to_frame(self):
        """h, remainder, the local order log2(r(2h) / r(h)), the rounding floor, and
        whether the step was used in the fit."""
        import pandas as pd

        local = [math.nan] + [math.log2(a / b) if a > 0 and b > 0 else math.nan
                              for a, b in zip(self.remainder, self.remainder[1:])]
        return pd.DataFrame({"h": self.h, "remainder": self.remainder, "local_order": local,
                             "noise": self.noise,
                             "fitted": [i in self.fitted for i in range(len(self.h))]})


# a remainder counts when it is this many times its rounding floor; the order is fitted
# on the smallest steps that clear it (where the h^3 term of a correct gradient, or the
# h^2 term of a wrong one, has died away)
TAYLOR_CLEARANCE = 100.0
TAYLOR_FIT_POINTS = 5


def taylor_test(f: Callable, grad, x, v=None, *, h0: float | None = None, halvings: int = 20,
                generator: torch.Generator | None = None) -> TaylorTest:
    """Fitted order of the Taylor remainder |f(x + h v) - f(x) - h <grad, v>| as h halves:
    2 when ``grad`` is the gradient of the scalar ``f`` at ``x``, 1 when it is wrong.

    ``x``, ``grad`` and ``v``: a tensor each, or sequences of tensors of the same shapes
    (f takes a list then). ``v`` default: standard normal from ``generator``. ``h0``
    default: moves the largest coordinate by 0.1 * max(1, max |x|); then ``halvings``
    halvings. Use float64: in float32 few steps clear the rounding floor.
    """
    parts, single = _as_parts("x", x)
    g = _like("grad", grad, parts, single, "x")
    dirs = _random_like(parts, generator) if v is None else _like("v", v, parts, single, "x")
    if not isinstance(halvings, int) or isinstance(halvings, bool) or halvings < 2:
        raise ValueError(f"halvings: expected an integer >= 2, got {halvings!r}")
    vmax = max(float(d.abs().max()) if d.numel() else 0.0 for d in dirs)
    if not vmax > 0 or not math.isfinite(vmax):
        raise ValueError(f"v: expected a finite direction with a nonzero entry, got max |v| = "
                         f"{vmax}")
    if h0 is None:
        xmax = max(float(p.abs().max()) if p.numel() else 0.0 for p in parts)
        h0 = 0.1 * max(1.0, xmax) / vmax
    if not (isinstance(h0, (int, float)) and h0 > 0 and math.isfinite(h0)):
        raise ValueError(f"h0: expected a positive finite step, got {h0!r}")
    with torch.no_grad():
        f0 = _call(f, [p.detach() for p in parts], single)
        if f0.numel() != 1:
            raise ValueError(f"f: the Taylor test needs a scalar function, but f(x) has shape "
                             f"{tuple(f0.shape)}")
        slope = _dot(g, dirs)
        unit = float(torch.finfo(parts[0].dtype).eps)
        hs, rs, noise = [], [], []
        for k in range(halvings + 1):
            h = h0 / 2**k
            fh = float(_call(f, [p.detach() + h * d for p, d in zip(parts, dirs)], single))
            hs.append(h)
            rs.append(abs(fh - float(f0) - h * slope))
            # each of f(x + h v) and f(x) is off by a few units of the last place
            noise.append(unit * (abs(fh) + abs(float(f0)) + abs(h * slope)))
    clear = [i for i in range(len(hs)) if rs[i] > TAYLOR_CLEARANCE * noise[i]]
    fitted = tuple(clear[-TAYLOR_FIT_POINTS:])
    order = math.nan
    if len(fitted) >= 3:
        order, _ = _fit_slope([math.log(hs[i]) for i in fitted],
                              [math.log(rs[i]) for i in fitted])
    return TaylorTest(h=tuple(hs), remainder=tuple(rs), noise=tuple(noise), order=order,
                      fitted=fitted)
