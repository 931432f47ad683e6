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
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from handgrad.kernels._checks import (
    check_finite,
    check_float_dtype,
    check_int,
    check_same,
    check_tensor,
    real_number,
    shape_str,
)


def default_eps(dtype: torch.dtype) -> float:
    """eps^(1/3) of ``dtype``: the step that balances truncation and rounding error."""
    check_float_dtype("dtype", dtype)
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


def _count(name: str, value, least: int) -> int:
    """A Python or numpy integer >= ``least`` as an int (TypeError for another type,
    ValueError below ``least``)."""
    return check_int(name, value, minimum=least)


def _callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")


def _finite(name: str, parts: Sequence[torch.Tensor]) -> None:
    """No NaN or inf in ``parts``: a difference quotient there means nothing."""
    for i, t in enumerate(parts):
        check_finite(name if len(parts) == 1 else f"{name}[{i}]", t)


def _check_eps(eps, dtypes: Sequence[torch.dtype], xmax: float) -> float:
    """A step ``eps`` (relative to max(1, |x_i|)) that moves every coordinate in every
    dtype: eps >= the dtype's machine epsilon u. Then h = eps * max(1, |x_i|) >= u *
    max(1, |x_i|) >= the spacing of floats at x_i, so x_i + h and x_i - h both round away
    from x_i and the step taken is never 0 (the 0 / 0 that a smaller step gives). The
    coarsest dtype decides; and x + h must not overflow."""
    coarse = max(dtypes, key=lambda d: torch.finfo(d).eps)
    if eps is None:
        eps = default_eps(coarse)
        if max(1.0, xmax) * (1.0 + eps) >= float(torch.finfo(coarse).max):
            raise ValueError(f"x: max |x| = {xmax:g} leaves no room for a step: x + eps * "
                             f"max(1, |x|) overflows {coarse} at the default eps = {eps:g}; "
                             "scale x (and f) down")
        return eps
    eps = real_number("eps", eps, "a positive step")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps: expected a positive finite step, got {eps!r}")
    unit = float(torch.finfo(coarse).eps)
    if eps < unit:
        raise ValueError(f"eps: {eps:g} is below the resolution of {coarse} (machine epsilon "
                         f"{unit:g}): x_i +- eps * max(1, |x_i|) would round back to x_i; "
                         f"expected eps >= {unit:g} (default {default_eps(coarse):g})")
    top = float(torch.finfo(coarse).max)
    if max(1.0, xmax) * (1.0 + eps) >= top:
        raise ValueError(f"eps: x + eps * max(1, |x|) overflows {coarse} (max |x| = "
                         f"{xmax:g}, eps = {eps:g})")
    return eps


def _steps(x: torch.Tensor, eps) -> torch.Tensor:
    xmax = float(x.abs().max()) if x.numel() else 0.0
    return _check_eps(eps, [x.dtype], xmax) * x.abs().clamp_min(1.0)


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: f must return a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name}: f must return a floating-point tensor, got dtype "
                        f"{value.dtype}")
    return value


def _coarser(a: torch.dtype, b: torch.dtype) -> bool:
    """Whether floating dtype ``a`` resolves less than ``b`` (a larger machine epsilon)."""
    return torch.finfo(a).eps > torch.finfo(b).eps


def _coarsest(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def _step_dtype(out: torch.Tensor, chosen_for: torch.dtype | None) -> torch.Tensor:
    """f's value ``out`` where the default step was chosen for x's dtype ``chosen_for``
    (None: the caller chose the step): refused when f returns a coarser dtype. Its rounding
    over the step of x's dtype swamps the difference (f = x**3 returning float32 for a
    float64 x: a Jacobian 1e-2 off, returned in float32 without a word)."""
    if chosen_for is not None and _coarser(out.dtype, chosen_for):
        mine, theirs = default_eps(chosen_for), default_eps(out.dtype)
        raise TypeError(
            f"f: returned {out.dtype} for x of {chosen_for}: the default step (eps = "
            f"{mine:.3g}, eps^(1/3) of {chosen_for}) is too small for {out.dtype}, whose "
            f"rounding over it is about {torch.finfo(out.dtype).eps / mine:.1g} relative; "
            f"expected f to return {chosen_for} (compute f in x's dtype), or x in "
            f"{out.dtype}, or eps= for {out.dtype} (default_eps({out.dtype}) = "
            f"{theirs:.3g}: a central difference in {out.dtype} is good to about "
            f"{theirs ** 2:.1g} relative)")
    return out


def _check_x(x) -> torch.Tensor:
    x = check_tensor("x", x)
    _finite("x", [x])
    return x


def _columns(f, x: torch.Tensor, h: torch.Tensor,
             chosen_for: torch.dtype | None = None) -> torch.Tensor:
    """The central-difference Jacobian with per-coordinate steps ``h``; a column whose step
    rounded away to nothing is nan (0 / 0), and so is one where f is not finite.
    ``chosen_for``: the dtype the default step was chosen for (``_step_dtype``)."""
    flat = x.detach().reshape(-1).clone()
    hflat = h.reshape(-1)
    cols, shape = [], None
    for i in range(flat.numel()):
        orig = flat[i].clone()
        # f sees a copy of the point: a result that is a view of its argument (t[:, 0],
        # t.t()) would change when the next point is written, one that writes into its
        # argument would move the point
        flat[i] = orig + hflat[i]
        fp = _as_tensor("f", f(flat.reshape(x.shape).clone()))
        flat[i] = orig - hflat[i]
        fm = _as_tensor("f", f(flat.reshape(x.shape).clone()))
        flat[i] = orig
        if shape is None:
            shape = _step_dtype(fp, chosen_for).shape
        for v in (fp, fm):
            if v.shape != shape:
                raise ValueError(f"f: returned shape {tuple(v.shape)} at coordinate {i} of "
                                 f"x, but {tuple(shape)} before")
        # the actual step may differ from h by rounding of x + h; divide by what was taken
        cols.append((fp - fm) / ((orig + hflat[i]) - (orig - hflat[i])))
    if not cols:
        out = _as_tensor("f", f(x))  # no step taken: any dtype
        return x.new_zeros(tuple(out.shape) + tuple(x.shape))
    return torch.stack(cols, dim=-1).reshape(tuple(shape) + tuple(x.shape))


@torch.no_grad()
def jacobian(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """Central-difference Jacobian: shape ``f(x).shape + x.shape``; 2 * x.numel() calls of f.
    Refused: f not callable or not returning a floating tensor of one shape; x not a
    floating tensor or not finite; eps not a positive finite number at least the machine
    epsilon of x's dtype; a result that is not finite (f overflowed or is undefined); at
    the default step, an f returning a coarser dtype than x's (its rounding over x's step
    swamps the difference: pass eps= for f's dtype)."""
    _callable("f", f)
    x = _check_x(x)
    out = _columns(f, x, _steps(x, eps), x.dtype if eps is None else None)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        first = tuple(int(v) for v in bad.nonzero()[0])
        raise ValueError(f"f: the central difference is not finite at index {first} "
                         f"({out[first].item()}): f is nan or inf at x +- h along "
                         f"coordinate {first[out.dim() - x.dim():]} of x")
    return out


def gradient(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """Central-difference gradient of a scalar function: shape ``x.shape`` (refuses what
    ``jacobian`` refuses, and an f(x) with more than one value)."""
    _callable("f", f)
    x = _check_x(x)
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
    difference; nan with fewer than two steps on it). ``predicted_eps``: the eps that
    minimises a eps^p + u |f| / (eps s), the truncation branch (fitted in eps) plus the
    rounding error of the dtype (unit roundoff u, ``value_scale`` = max |f(x)|) over the
    step taken, h = eps max(1, |x_i|), largest where that is smallest: s = max(1, min
    |x_i|). eps* = (u |f| / (p a s))^(1/(p+1)); for |x| <= 1, s = 1 and h = eps.
    """

    eps: tuple[float, ...]
    error: tuple[float, ...]
    order: float = math.nan
    predicted_eps: float = math.nan
    dtype: str = ""
    value_scale: float = math.nan

    def __post_init__(self) -> None:
        for name in ("eps", "error"):  # sequences of numbers, as step_sweep makes them
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
                    isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
                raise TypeError(f"{name}: expected a sequence of real numbers, one per step, "
                                f"got {type(value).__name__} {value!r}")
        # one error per step: a shorter error had given best_eps nan and to_frame pandas'
        # raw "All arrays must be of the same length"
        if len(self.eps) != len(self.error):
            raise ValueError(f"error: expected one error per step ({len(self.eps)} eps), got "
                             f"{len(self.error)}")

    @property
    def best_eps(self) -> float:
        """The step of the smallest error; a nan error (a step that rounded away, or f
        not finite there) is never best; nan when no error is a number."""
        ok = [i for i, r in enumerate(self.error) if not math.isnan(r)]
        return self.eps[min(ok, key=self.error.__getitem__)] if ok else math.nan

    @property
    def truncation_branch(self) -> tuple[int, ...]:
        """Indices of the steps the order is fitted on (see TRUNCATION_CLEARANCE)."""
        finite = [r for r in self.error if math.isfinite(r)]
        if not finite:
            return ()
        best = min(finite)
        return tuple(i for i, (e, r) in enumerate(zip(self.eps, self.error))
                     if e > self.best_eps and math.isfinite(r)
                     and r > TRUNCATION_CLEARANCE * best and r > 0)

    def to_frame(self):
        import pandas as pd

        branch = set(self.truncation_branch)
        return pd.DataFrame({"eps": self.eps, "max_abs_error": self.error,
                             "truncation_branch": [i in branch for i in range(len(self.eps))]})


def _sweep_fit(eps: Sequence[float], error: Sequence[float], unit: float, scale: float,
               x_scale: float = 1.0) -> tuple[float, float]:
    """(order, predicted optimal eps) of a sweep; nan where the branch is too short.
    ``x_scale``: s = max(1, min |x_i|), the step taken being eps * max(1, |x_i|)."""
    partial = StepSweep(eps=tuple(eps), error=tuple(error))
    idx = partial.truncation_branch
    if len(idx) < 2:
        return math.nan, math.nan
    p, c = _fit_slope([math.log(eps[i]) for i in idx], [math.log(error[i]) for i in idx])
    if not p > 0 or not scale > 0:
        return p, math.nan
    a = math.exp(c)
    return p, (unit * scale / (p * a * x_scale)) ** (1.0 / (p + 1.0))


def step_sweep(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    exact: torch.Tensor,
    eps_values: Sequence[float] | None = None,
) -> StepSweep:
    """Max |finite-difference Jacobian - exact| for each step in ``eps_values``, with the
    fitted order of the truncation branch and the predicted optimal step (``StepSweep``).

    Default steps: 10^-1 down to 10^-13 (float64) or 10^-1 to 10^-7 (lower precision).
    ``exact`` has shape ``f(x).shape + x.shape`` (any real dtype, x's device); errors are
    taken in the estimate's dtype (x's). A step may lie below the dtype's resolution (the
    rounding branch of the V-curve): where it rounds away to nothing at some coordinate,
    or f is not finite, its error is nan, and a nan error is never ``best_eps`` nor
    fitted. Refused: f not callable, x or exact not finite, steps that are not positive
    finite numbers.
    """
    _callable("f", f)
    x = _check_x(x)
    _some_coordinate("x", [x])  # no Jacobian entry: no error to sweep
    if not isinstance(exact, torch.Tensor):
        raise TypeError(f"exact: expected a torch.Tensor, got {type(exact).__name__}")
    if exact.dtype.is_complex or exact.dtype == torch.bool:
        raise TypeError(f"exact: expected a real tensor, got dtype {exact.dtype}")
    if exact.device != x.device:
        raise ValueError(f"exact: on device {exact.device}, but x on {x.device}")
    _finite("exact", [exact])
    with torch.no_grad():
        fx = _as_tensor("f", f(x.detach()))
    # the differences are taken in f's output dtype where that is coarser than x's: its
    # rounding decides the default steps and the predicted one (they were x's)
    dtype = _coarsest([x.dtype, fx.dtype])
    if eps_values is None:
        lo = 13 if dtype == torch.float64 else 7
        eps_values = [10.0**-k for k in range(1, lo + 1)]
    if isinstance(eps_values, torch.Tensor) or hasattr(eps_values, "tolist"):
        eps_values = eps_values.tolist()
    if isinstance(eps_values, Sequence) and not isinstance(eps_values, str) and \
            not eps_values:
        raise ValueError("eps_values: expected a non-empty sequence of steps, got an empty "
                         "one")
    if not isinstance(eps_values, Sequence) or isinstance(eps_values, str):
        raise TypeError(f"eps_values: expected a non-empty sequence of steps, got "
                        f"{type(eps_values).__name__}")
    steps = [real_number(f"eps_values[{i}]", e, "a positive step")
             for i, e in enumerate(eps_values)]
    for i, e in enumerate(steps):
        if not (e > 0 and math.isfinite(e)):
            raise ValueError(f"eps_values[{i}]: expected a positive finite step, got {e!r}")
    errors = []
    scale_x = x.abs().clamp_min(1.0)
    with torch.no_grad():
        for e in steps:
            approx = _columns(f, x, e * scale_x)
            if not approx.numel():  # x has a coordinate (checked): f(x) has no entry
                raise ValueError(f"f: f(x) has no entries (shape "
                                 f"{tuple(approx.shape[:approx.dim() - x.dim()])}): no "
                                 "Jacobian entry to sweep")
            if approx.shape != exact.shape:
                raise ValueError(
                    f"exact: expected shape {tuple(approx.shape)} (f(x).shape + x.shape), "
                    f"got {tuple(exact.shape)}"
                )
            err = (approx - exact.to(approx.dtype)).abs()
            errors.append(float(err.max()) if bool(torch.isfinite(err).all()) else math.nan)
        scale = float(fx.abs().max())
        # the smallest step taken, over eps: where f's rounding over the step is largest
        x_scale = max(1.0, float(x.abs().min()))
    eps_t = tuple(steps)
    unit = float(torch.finfo(dtype).eps) / 2  # unit roundoff: a rounded value's error
    order, best = _sweep_fit(eps_t, errors, unit, scale, x_scale)
    return StepSweep(eps=eps_t, error=tuple(errors), order=order, predicted_eps=best,
                     dtype=str(dtype).removeprefix("torch."), value_scale=scale)


# --- directional checks and the Taylor test ------------------------------------------------

def _as_parts(name: str, x) -> tuple[list[torch.Tensor], bool]:
    """A tensor or a sequence of tensors as a list of checked floating tensors; and whether
    it was a single tensor (f is then called with a tensor, not a list)."""
    # detached: a difference quotient is never differentiated, and its values are read to
    # the host (max |x|, <g, v>), where a tensor requiring grad makes torch warn
    if isinstance(x, torch.Tensor):
        return [check_tensor(name, x).detach()], True
    if not isinstance(x, Sequence) or isinstance(x, str):
        raise TypeError(f"{name}: expected a tensor or a non-empty sequence of tensors, "
                        f"got {type(x).__name__}")
    if not x:
        raise ValueError(f"{name}: expected a tensor or a non-empty sequence of tensors, "
                         f"got an empty {type(x).__name__}")
    return [check_tensor(f"{name}[{i}]", t).detach() for i, t in enumerate(x)], False


def _some_coordinate(name: str, parts: list[torch.Tensor]) -> None:
    """A step along a direction needs at least one coordinate to move."""
    if not any(p.numel() for p in parts):
        shapes = ", ".join(shape_str(p) for p in parts)
        raise ValueError(f"{name}: expected at least one coordinate to step along, got "
                         f"empty shape {shapes}")


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


def _call(f, parts: list[torch.Tensor], single: bool,
          chosen_for: torch.dtype | None = None) -> torch.Tensor:
    return _step_dtype(_as_tensor("f", f(parts[0] if single else list(parts))), chosen_for)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((p.detach().double() * q.detach().double()).sum() for p, q in zip(a, b)))


def _check_generator(generator) -> None:
    if generator is not None and (not isinstance(generator, torch.Generator)
                                  or generator.device.type != "cpu"):
        raise TypeError(f"generator: expected a CPU torch.Generator or None, got "
                        f"{generator!r}")


def _random_like(parts: Sequence[torch.Tensor], generator) -> list[torch.Tensor]:
    # drawn on the CPU from the generator so a seed gives the same direction on every device
    return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype)
            for p in parts]


def _central(f: Callable, parts, dirs, single: bool, h: float,
             chosen_for: torch.dtype | None = None) -> torch.Tensor:
    with torch.no_grad():
        plus = _call(f, [p.detach() + h * d for p, d in zip(parts, dirs)], single, chosen_for)
        minus = _call(f, [p.detach() - h * d for p, d in zip(parts, dirs)], single,
                      chosen_for)
    if plus.shape != minus.shape:
        raise ValueError(f"f: returned shapes {tuple(plus.shape)} and {tuple(minus.shape)} at "
                         "x + h v and x - h v")
    return (plus - minus) / (2 * h)


def directional_derivative(f: Callable, x, v, eps: float | None = None, *,
                           richardson: bool = False) -> torch.Tensor:
    """J v = (f(x + h v) - f(x - h v)) / 2h by one pair of evaluations of f: ``f(x).shape``.

    ``x`` and ``v``: a tensor, or a sequence of tensors that ``f`` takes as a list (every
    parameter of a network, say). The step moves the largest coordinate of h v by
    ``eps * max(1, max |x|)`` (``eps`` default: eps^(1/3) of the dtype).

    ``richardson=True``: two pairs, at h and h/2, combined as (4 D(h/2) - D(h)) / 3, which
    cancels the h^2 term of the central difference's error (truncation O(h^4), for twice
    the evaluations). Needed where v moves millions of coordinates at once: for a 10-layer
    K=4096 network at N=16384 (H200, float64) one pair at the default step is 1e-6 to
    2.6e-6 from the exact J v, the pair at h/2 four times closer, their combination 1e-11.
    """
    _callable("f", f)
    parts, single = _as_parts("x", x)
    _some_coordinate("x", parts)
    _finite("x", parts)
    dirs = _like("v", v, parts, single, "x")
    vmax = max(float(d.abs().max()) if d.numel() else 0.0 for d in dirs)
    if not vmax > 0 or not math.isfinite(vmax):
        raise ValueError(f"v: expected a finite direction with a nonzero entry, got max |v| = "
                         f"{vmax}")
    xmax = max(float(p.abs().max()) if p.numel() else 0.0 for p in parts)
    # the default step is the coarsest part's: f must not return coarser (_step_dtype)
    chosen_for = _coarsest([p.dtype for p in parts]) if eps is None else None
    eps = _check_eps(eps, [p.dtype for p in parts], xmax)
    h = eps * max(1.0, xmax) / vmax
    if not isinstance(richardson, bool):
        raise TypeError(f"richardson: expected True or False, got {richardson!r}")
    jv = _central(f, parts, dirs, single, h, chosen_for)
    if richardson:
        jv = (4 * _central(f, parts, dirs, single, h / 2, chosen_for) - jv) / 3
    if not bool(torch.isfinite(jv).all()):
        raise ValueError("f: the central difference along v is not finite: f is nan or inf "
                         "at x + h v or x - h v")
    return jv


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
                      generator: torch.Generator | None = None, eps: float | None = None,
                      richardson: bool = False) -> list[Direction]:
    """For ``directions`` random pairs (u, v): <u, J v> by one pair of central differences
    (two, extrapolated, with ``richardson=True``: see ``directional_derivative``), beside
    <u, jvp(v)> (forward mode) and <vjp(u), v> (reverse mode, backprop).

    ``x``: a tensor or a sequence of tensors (f takes a list then); ``jvp(v)`` returns J v,
    shaped like f(x); ``vjp(u)`` returns u^T J, structured like x. At least one of them.
    Directions are standard normal, drawn on the CPU from ``generator``. No tolerance is
    applied: compare ``Direction.errors()`` (or the tensors) with one. Every number
    returned is finite: a jvp(v) or vjp(u) holding NaN or inf is a ValueError naming it,
    and an inner product past float64's range (<u, J v> of the central difference, its
    scale, or the kernel's) an OverflowError naming f, jvp or vjp.
    """
    if jvp is None and vjp is None:
        raise ValueError("jvp, vjp: expected at least one of them (the kernel to check), "
                         "got neither")
    _callable("f", f)
    for name, fn in (("jvp", jvp), ("vjp", vjp)):
        if fn is not None:
            _callable(name, fn)
    directions = check_int("directions", directions, minimum=1, what="a positive integer")
    _check_generator(generator)
    parts, single = _as_parts("x", x)
    _some_coordinate("x", parts)
    _finite("x", parts)
    with torch.no_grad():
        out = _call(f, [p.detach() for p in parts], single)
    results = []
    for _ in range(directions):
        v = _random_like(parts, generator)
        u = _random_like([out], generator)[0]
        vv = v[0] if single else v
        jv_fd = directional_derivative(f, x, vv, eps, richardson=richardson)  # finite
        fd = _dot([u], [jv_fd])
        scale = float((u.double() * jv_fd.double()).abs().sum())
        if not (math.isfinite(fd) and math.isfinite(scale)):
            # J v is finite, but u * J v is past float64's range: a nan fd, or an inf scale
            # that made every error() 0, had been returned as a result
            raise OverflowError(
                f"f: <u, J v> = {fd} (its terms' size sum |u * J v| = {scale}) overflows "
                f"float64 though the central difference J v is finite (max |J v| = "
                f"{float(jv_fd.abs().max()):.3g}); expected an f whose derivative along v "
                "fits float64 with room for u (scale f down)")
        jv = forward = reverse = None
        if jvp is not None:
            jv = _as_tensor("jvp", jvp(vv))
            if jv.shape != out.shape:
                raise ValueError(f"jvp: expected J v of shape {tuple(out.shape)} (f(x)'s), "
                                 f"got {tuple(jv.shape)}")
            # a nan from the kernel had made errors() nan, which no "err > tol" catches
            check_finite("jvp", jv)
            forward = _dot([u], [jv])
            if not math.isfinite(forward):
                raise OverflowError(f"jvp: <u, jvp(v)> = {forward} overflows float64 though "
                                    f"jvp(v) is finite (max |jvp(v)| = "
                                    f"{float(jv.abs().max()):.3g}), where the central "
                                    f"difference's <u, J v> is {fd:.6g}")
        if vjp is not None:
            g = _like("vjp", vjp(u), parts, single, "x")
            _finite("vjp", g)
            reverse = _dot(g, v)
            if not math.isfinite(reverse):
                raise OverflowError(f"vjp: <vjp(u), v> = {reverse} overflows float64 though "
                                    f"vjp(u) is finite (max |vjp(u)| = "
                                    f"{max(float(t.abs().max()) for t in g):.3g}), where the "
                                    f"central difference's <u, J v> is {fd:.6g}")
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
    _callable("f", f)
    _check_generator(generator)
    parts, single = _as_parts("x", x)
    _some_coordinate("x", parts)
    _finite("x", parts)
    g = _like("grad", grad, parts, single, "x")
    _finite("grad", g)
    dirs = _random_like(parts, generator) if v is None else _like("v", v, parts, single, "x")
    halvings = _count("halvings", halvings, 2)
    vmax = max(float(d.abs().max()) if d.numel() else 0.0 for d in dirs)
    if not vmax > 0 or not math.isfinite(vmax):
        raise ValueError(f"v: expected a finite direction with a nonzero entry, got max |v| = "
                         f"{vmax}")
    chosen = h0 is None  # h0 from x and v, not the caller's
    if h0 is None:
        xmax = max(float(p.abs().max()) if p.numel() else 0.0 for p in parts)
        h0 = 0.1 * max(1.0, xmax) / vmax
    h0 = real_number("h0", h0, "a positive finite step")
    if not (h0 > 0 and math.isfinite(h0)):
        raise ValueError(f"h0: expected a positive finite step, got {h0!r}")
    with torch.no_grad():
        f0 = _call(f, [p.detach() for p in parts], single)
        if f0.numel() != 1:
            raise ValueError(f"f: the Taylor test needs a scalar function, but f(x) has shape "
                             f"{tuple(f0.shape)}")
        if not math.isfinite(float(f0)):
            raise ValueError(f"f: expected a finite f(x), got {float(f0)}")
        slope = _dot(g, dirs)
        if not math.isfinite(slope):  # grad and v are finite: their product overflowed
            raise ValueError(f"grad, v: <grad, v> is not finite ({slope}) though both are: "
                             "expected a grad and v whose inner product fits the dtype "
                             "(scale v down)")
        # the rounding of f's values: its output's dtype where that is coarser than x's (an
        # f returning float32 for a float64 x had its remainders judged against float64's
        # floor, and a right gradient fitted order -0.14)
        unit = float(torch.finfo(_coarsest([p.dtype for p in parts] + [f0.dtype])).eps)
        hs, rs, noise = [], [], []
        for k in range(halvings + 1):
            h = h0 / 2**k
            fh = float(_call(f, [p.detach() + h * d for p, d in zip(parts, dirs)], single))
            hs.append(h)
            rs.append(abs(fh - float(f0) - h * slope))
            # each of f(x + h v) and f(x) is off by a few units of the last place
            noise.append(unit * (abs(fh) + abs(float(f0)) + abs(h * slope)))
    if not any(math.isfinite(r) for r in rs):  # f overflowed (or is nan) at every step
        raise ValueError(f"h0: the remainder |f(x + h v) - f(x) - h <grad, v>| is not finite "
                         f"at any of the {len(hs)} steps from h0 = {h0:g} down to "
                         f"{hs[-1]:g}; expected a smaller h0 (where f is finite near x)"
                         + (" (h0 was chosen from x and v: 0.1 max(1, max |x|) / max |v|; "
                            "pass a smaller one)" if chosen else ""))
    clear = [i for i in range(len(hs)) if rs[i] > TAYLOR_CLEARANCE * noise[i]]
    fitted = tuple(clear[-TAYLOR_FIT_POINTS:])
    order = math.nan
    if len(fitted) >= 3:
        order, _ = _fit_slope([math.log(hs[i]) for i in fitted],
                              [math.log(rs[i]) for i in fitted])
    return TaylorTest(h=tuple(hs), remainder=tuple(rs), noise=tuple(noise), order=order,
                      fitted=fitted)
