"""``check_vjp`` and ``check_jvp``: a hand-written derivative of any function, checked.

Each argument to differentiate is checked on its own (a random direction in it, the
others held), so a failure names the argument. Four references, each where it applies:

- **torch.autograd** (``check_vjp``) or **torch.func.jvp** (``check_jvp``; autograd's
  double-backward where f has no forward-mode rule): the exact derivative of ``f`` as torch
  differentiates it, computed from the same (rounded) inputs in float64 when ``f`` runs in
  float64 (else in the arguments' dtype), compared element by element with the dtype's
  gradient tolerance (``tolerances.GRAD``), its atol (an absolute error for values of order
  1) scaled by the reference's largest element where that is below 1 (``_at_scale``:
  bfloat16's 0.1 exceeded every element of a cross-entropy gradient averaged over 512
  rows, so one with a row left at zero passed). A float32 (or narrower) derivative misses that
  float64 reference by its own rounding, which sums that cancel make larger than rtol x
  |value| (a right ``x.T @ d`` over 8,192 rows failed at every seed): where an element
  fails, torch's derivative with f run at the arguments' own dtypes measures it, and
  ``ROUNDING_FACTOR`` (4) times that one's largest distance from the float64 reference is
  added to atol, with a note (in the failure too), and a vjp's central differences allow
  that atol projected (times |v|, where they fail without it); not where that added atol
  would exceed ``ROUNDING_CAP`` (0.1) of the reference's largest element (f loses precision
  in that dtype: the failure says to check in float64), nor where ``tol`` is given
  (compared at it, as given). A float64 gradient or tangent is allowed float64's own
  rounding the same way, measured by torch's derivative with each argument's elements moved
  by an ulp (``_moved_by_an_ulp``: a right layer-norm gradient of rows at 100 with std 0.01
  missed torch's by 8e-8 of an element); past the cap the failure says f's derivative is
  ill-conditioned there. Only against torch's reference: a custom Function's float32
  derivative held to its own float64 run (below) gets no such allowance. Skipped for an
  argument torch does not reach (unused, numpy inside, a ``.detach()``), with the reason in
  the report; skipped for all when ``f`` raises on tensors that require grad, or runs a
  custom ``torch.autograd.Function``: autograd would replay that Function's own backward, the code
  under test. An argument no reference can check fails.
- **central differences** along random directions (one pair of evaluations of ``f`` per
  direction, whatever the size): <u, J v> against <vjp(u), v> or <u, jvp(v)>, relative to
  the size of the sum's terms. Where one misses, a second look (``_second_look``): f's own
  rounding in the difference, eps <|u|, |f(x)|> over the step (``FD_ROUNDING``; large
  where the derivative is small beside f's value), is allowed; then Richardson's
  extrapolation over h and h/2 (with three times that rounding), which cancels one
  difference's own h^2 error (large at a point whose scale is far from 1: x**3 at 1e-3,
  tanh(x - 1000)), judges instead, with a note; where that misses too and f has a kink at
  x along the direction (its one-sided slopes differ by the same amount at h and h/4, at
  least the miss and beyond that rounding: relu at 0), the direction is set aside with a
  note if torch's derivative agreed element by element, else the failure says so. In
  float64 when ``f`` runs in float64, else in the arguments' dtype, or f's output's where
  that is narrower (float32 at best, with float32's step; lower dtypes skip it).
- **the vjp (jvp) in float64** (an argument narrower than float64 that torch gives no
  element-wise reference for, f running in float64): a projection's sum at float32's
  tolerance hides one wrong element among thousands, so the vjp is run once more at the
  float64 copies of the arguments (a None there is zero), the jvp once more per tangent;
  its float64 result takes the central differences at float64's floor (or the ``tol``
  given, where looser), recorded as float64, and the result under test is compared with it
  element by element at its own dtype's tolerance. A derivative that does not run in
  float64 (running out of memory is raised as it is), or gives no float64 result of the
  right shape there, is checked in its own dtype alone, with a note.
- **the Taylor remainder** of <u, f(x + h v)> (float64 arguments, ``f`` in float64): its
  fitted order, 2 when the derivative is right and 1 when it is not, goes into the report.
  An order below 1.5 fails the argument where the fit can be trusted (``_taylor_failure``):
  the remainder grows steadily with h (each local order between 0.5 and 2.5) and central
  differences along the same direction measure the same error (within 1.5x), so a
  derivative inside a loose ``tol`` that is still not f's (1.001 x the gradient) fails,
  naming the order (``taylor=False`` accepts one approximate on purpose). A right
  derivative of an f with a kink or jump between the steps (relu, max, sort, hardtanh)
  can fit below 1.5 too, but central differences at their smaller step see no error, or
  the remainder jumps: its order is reported with a note, not failed.

Refused before any comparison: a list, tuple or dict argument holding floating-point tensors
(``TypeError`` naming where: the check differentiates tensor arguments only, so those would
pass unchecked; pass each as an argument of its own); ``f(*args)`` not finite at the given
point (``ValueError`` naming how many output elements are NaN or inf, and the first three:
no derivative can be checked there; where f is finite at the float64 copies of the
arguments, that it overflows in its own dtype, ``_finite_wider``); an ``f`` whose second
call at the point differs from its first beyond its dtype's forward tolerance
(``ValueError``: not deterministic, dropout in training mode or a generator among its
arguments; f gets a copy of a generator argument, so the caller's is left as it was: one
more call of f, the check's cost for it); a derivative in a narrower dtype than what it is
the derivative of (``TypeError`` naming both dtypes): a vjp's gradient against its argument,
a jvp's tangent against ``f(*args)``. Narrower: ``torch.promote_types(result, expected) !=
result``, so a float32 result for float64, or float16 for bfloat16 and the reverse; such a
result has lost precision (a cast inside the derivative) and would read as a wrong
derivative at the expected dtype's tolerance, so it is refused rather than compared at a
looser one. A wider result (float64 for float32) is compared as usual. A vjp's gradient in
the dtype of f's output, where that is narrower than the argument, has lost nothing f holds:
it is compared.

An ``f`` whose output is narrower than an argument (it computes in float32 from float64, or
returns ``.half()``) holds no more than its output's precision, and torch's derivative of it
none either: that argument's derivative is compared at the output dtype's gradient tolerance
(of float16 and bfloat16, each narrower than the other, the looser), and the report says so
in a note (``tol=`` overrides it).

``f`` and the derivative are given copies of the arguments (and of the cotangent and
tangents, which a derivative may write into), so the caller's tensors are never modified;
an ``f``, vjp or jvp that writes into its arguments (an in-place op, even one leaving the
values as they were, or an assignment) is refused (``ValueError`` naming it and the
argument): a point that moves has no derivative to check.

On a failure: one ``AssertionError`` naming each wrong argument (``args[1] (weight)``; a
result of the wrong shape or device stops at the first argument it concerns, and a shape
that is the argument's with dimensions added says so: a batch not summed over, keepdim), its
worst element, errors and tolerance, and, where one fits, a signature: a flipped sign, a
transpose, a reversal along one dim (a convolution's kernel read back to front), a constant
factor (1/N, N the arguments' batch size where that is unambiguous, ``_batch_size``: a mean
over the batch where a sum is due, a bias's g.mean(0) for g.sum(0); N: the reverse), a
missing (zero) gradient, values computed in a narrower dtype (each a float32,
float16 or bfloat16 number, the reference's not: a cast inside the derivative; or a result
itself in a narrower dtype than the reference's, within that dtype's gradient tolerance: held
to a tighter one; named before a constant factor, which it would read as, 0.99999997 x); for
a scalar f (a loss), a gradient that is torch's over the cotangent is said to ignore the
cotangent.
The vjp is called twice at the point (the jvp twice with each argument's first tangent):
results that differ between the calls beyond rounding (their dtype's gradient tolerance, or a
looser ``tol`` given), or of another kind (None, another shape: what each call gave is
said), fail as not deterministic, naming the argument, where one call could
pass by chance (a random op, or a gradient accumulated into a buffer kept between calls;
the first call's result is copied before the second). An ``f``, vjp or jvp whose own
signature cannot take the call it gets (``vjp(g)`` for ``vjp(g, *args)``, f(x, y) for
``args=(x,)``) is a ``TypeError`` naming it, the call and its contract, before any of them
runs (``_fits``; not where the signature cannot be read, a builtin's, or a decorator's
``*args``). What ``f`` or a derivative raises is raised again, of its own type and chained
from the original, naming the call and its contract (``jvp(t, *args) raised TypeError:
...; t is a tuple of tangents, one per argument (t[0] for args[0]), even for one
argument``; on the repeat only: said so), with notes saying how the check called it and
what it gave it, in order (parameters in another order: vjp(x, W, b, g) for
vjp(g, x, W, b)); raised as it is where its type cannot be rebuilt from a message
(``KeyError``), and an ``AssertionError`` (a nested check's verdict) always. A derivative
that returns NaN or inf (``f`` being finite there) is named as such, with the count and
first indices, and not compared with a reference; where torch's derivative is not finite at
those places either, the message says the point is not differentiable (sqrt at 0). Where
torch's derivative disagrees and central differences agree with the derivative under test
and disagree with torch (not where the two differ below their resolution), the failure says
``f``'s graph may be broken for torch (``float()``, ``.item()``, numpy), and stays a
failure: central differences see projections only. On success: a ``CheckReport`` (headroom
per argument and reference, Taylor order). Each element comparison is also recorded like
handgrad's own (``compare.RECORDS``: ``pytest --verify-report``), labelled with the dtype
whose tolerance judged it (the argument's, or the narrower output's) and the argument's
device, central differences too (run in float64 and compared as float64 numbers on the CPU),
so the report's rows per dtype hold one tolerance.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from handgrad.kernels.finite_diff import (
    TaylorTest,
    default_eps,
    directional_derivative,
    taylor_test,
)
from handgrad.testing import compare as _records
from handgrad.testing.compare import assert_close
from handgrad.testing.references import load_forward_mode
from handgrad.testing.tolerances import FINITE_DIFF, FORWARD, GRAD, Tol, tol_for

AUTOGRAD = "torch_autograd"
FORWARD_AD = "torch_func_jvp"
CENTRAL = "central differences"
# the smallest scale-relative error a central difference is trusted to, per dtype it runs in
_FD_FLOOR = {torch.float64: FINITE_DIFF[torch.float64].rtol, torch.float32: 3e-4}
# the Taylor test fails an argument only where its fit can be trusted (_taylor_failure): each
# local order over the fitted steps within TAYLOR_LOCAL (the remainder grows steadily with
# h), and central differences along the same direction measure the same error as the
# remainder, within a factor TAYLOR_AGREE
TAYLOR_LOCAL = (0.5, 2.5)
TAYLOR_AGREE = 1.5
_TAYLOR_SET_ASIDE = ("a Taylor order below 1.5 set aside: its remainder jumps, or central "
                     "differences at x measure no such error (f is not smooth near x: a kink "
                     "between the steps?)")
# central differences: at most this many random directions per argument (two evaluations of f
# each); more adds nothing a check can use and only runs for hours
MAX_DIRECTIONS = 10_000


@dataclass(frozen=True)
class ArgumentCheck:
    """One argument of ``f``: whether it was checked and what each reference said.

    ``autograd_ratio``: worst |error| / allowed over its elements against torch's derivative
    (None: that reference did not apply); ``fd_error`` and ``fd_allowed``: the largest
    scale-relative disagreement with central differences over the directions, and what was
    allowed; ``taylor_order``: fitted order of the Taylor remainder (about 2 when right;
    None outside float64). ``headroom``: how many times over the worst error would still
    pass (inf when exact)."""

    position: int
    name: str | None
    checked: bool
    note: str = ""
    autograd_ratio: float | None = None
    fd_error: float | None = None
    fd_allowed: float | None = None
    taylor_order: float | None = None
    failures: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"args[{self.position}]" + (f" ({self.name})" if self.name else "")

    @property
    def headroom(self) -> float | None:
        ratios = [r for r in (self.autograd_ratio,
                              None if self.fd_error is None else self.fd_error / self.fd_allowed)
                  if r is not None]
        if not ratios:
            return None
        worst = max(ratios)
        return math.inf if worst == 0 else 1.0 / worst

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class CheckReport:
    """What ``check_vjp`` / ``check_jvp`` checked: per argument, per reference."""

    mode: str  # "vjp" or "jvp"
    function: str
    dtype: str
    references: tuple[str, ...]
    arguments: tuple[ArgumentCheck, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.arguments)

    def to_frame(self):
        """A pandas DataFrame, one row per argument."""
        import pandas as pd

        return pd.DataFrame([{
            "argument": a.label, "checked": a.checked, "autograd_ratio": a.autograd_ratio,
            "fd_error": a.fd_error, "fd_allowed": a.fd_allowed, "taylor_order": a.taylor_order,
            "headroom": a.headroom, "passed": a.passed, "note": a.note}
            for a in self.arguments])

    def __str__(self) -> str:
        lines = [f"check_{self.mode} of {self.function} ({self.dtype}): "
                 + ("PASS" if self.passed else "FAIL") + "; references: "
                 + ", ".join(self.references)]
        for a in self.arguments:
            if not a.checked:
                lines.append(f"  {a.label}: not checked ({a.note})")
                continue
            parts = []
            if a.headroom is not None:
                parts.append(f"headroom {a.headroom:.3g}x")
            if a.taylor_order is not None:
                parts.append(f"Taylor order {a.taylor_order:.2f}")
            if a.note:
                parts.append(a.note)
            lines.append(f"  {a.label}: " + ("ok" if a.passed else "WRONG")
                         + (": " + ", ".join(parts) if parts else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- arguments ---------------------------------------------------------------------------

def _is_float_tensor(a) -> bool:
    return isinstance(a, torch.Tensor) and a.dtype.is_floating_point


def _floats_inside(a, depth: int = 0) -> str:
    """Where a list, tuple or dict argument holds floating-point tensors ('[0], [1]'), or ''."""
    if depth > 8:  # a list holding itself, say
        return ""
    items = (a.items() if isinstance(a, dict) else enumerate(a)
             if isinstance(a, (list, tuple)) else ())
    found = []
    for key, v in items:
        if _is_float_tensor(v):
            found.append(f"[{key!r}]")
        else:
            inner = _floats_inside(v, depth + 1)
            if inner:
                found.append(f"[{key!r}]" + inner.split(", ")[0])
    return ", ".join(found)


def _names(f: Callable, n: int) -> list[str | None]:
    """The names of f's first n positional parameters, where its signature says them (a
    module's: its forward's)."""
    if isinstance(f, torch.nn.Module):
        f = f.forward
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):  # builtins, some C functions
        return [None] * n
    names: list[str | None] = []
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    return (names + [None] * n)[:n]


def _check_common(mode: str, f, d, args, wrt, directions, generator, tol, taylor,
                  name=None):
    """The arguments checked, and what both checks start from: f's and the derivative's
    names and f(*args)."""
    what = "vjp" if mode == "vjp" else "jvp"
    if not callable(f):
        raise TypeError(f"f: expected a callable, got {type(f).__name__}")
    if not callable(d):
        raise TypeError(f"{what}: expected a callable, got {type(d).__name__}")
    if isinstance(args, torch.Tensor) or not isinstance(args, (tuple, list)):
        raise TypeError(f"args: expected a tuple or list of f's positional arguments (one "
                        f"tensor x: args=(x,)), got {type(args).__name__}")
    args = tuple(args)
    for i, a in enumerate(args):
        held = _floats_inside(a) if wrt is None else ""  # wrt given: the caller chose
        if held:
            name = _names(f, len(args))[i]
            raise TypeError(
                f"args[{i}]{f' ({name})' if name else ''}: a {type(a).__name__} holding "
                f"floating-point tensors ({held}); the check differentiates with respect to "
                "tensor arguments only, so these would not be checked: pass each as an "
                "argument of its own (f(x, W, b), or wrap f: lambda x, W, b: f(x, [W, b])) and "
                "give the vjp/jvp the same arguments; to leave them out on purpose, name "
                "the arguments to check: wrt=[...]")
    floats = [i for i, a in enumerate(args) if _is_float_tensor(a)]
    if not floats:
        got = ", ".join(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__
                        for a in args)
        raise ValueError("args: expected at least one floating-point tensor to differentiate "
                         f"with respect to, got (dtypes and types) [{got}]")
    for i in floats:
        if args[i].device.type == "meta":
            raise ValueError(f"args[{i}]: a tensor on the meta device holds no values; "
                             "expected a tensor on a real device (cpu, cuda)")
        if args[i].layout != torch.strided:
            raise ValueError(f"args[{i}]: a {args[i].layout} tensor; expected a dense "
                             "(torch.strided) tensor (sparse: .to_dense())")
        if args[i].numel() == 0:
            raise ValueError(f"args[{i}]: an empty tensor (shape {tuple(args[i].shape)}) has "
                             "no derivative to check; expected at least one element")
        if not bool(torch.isfinite(args[i]).all()):
            raise ValueError(f"args[{i}]: holds NaN or inf; a derivative there means nothing")
    names = _names(f, len(args))
    if wrt is None:
        wrt = floats
    else:
        if isinstance(wrt, (numbers.Integral, str)) and not isinstance(wrt, bool):
            wrt = [wrt]
        if not isinstance(wrt, Sequence) or not wrt:
            raise TypeError(f"wrt: expected argument positions or names (a non-empty "
                            f"sequence), got {wrt!r}")
        picked = []
        for w in wrt:
            if isinstance(w, str):
                if w not in names:
                    raise ValueError(f"wrt: f has no positional parameter {w!r}; its "
                                     f"parameters: {[n for n in names if n]}")
                w = names.index(w)
            elif isinstance(w, bool) or not isinstance(w, numbers.Integral) or \
                    not 0 <= w < len(args):
                raise ValueError(f"wrt: expected positions 0..{len(args) - 1} or parameter "
                                 f"names, got {w!r}")
            if int(w) not in floats:
                raise ValueError(f"wrt: args[{int(w)}] is not a floating-point tensor, got "
                                 f"{type(args[int(w)]).__name__}"
                                 + (f" of dtype {args[int(w)].dtype}"
                                    if isinstance(args[int(w)], torch.Tensor) else ""))
            picked.append(int(w))
        wrt = sorted(set(picked))
    if isinstance(directions, bool) or not isinstance(directions, numbers.Integral):
        raise TypeError(f"directions: expected a positive integer, got "
                        f"{type(directions).__name__} {directions!r}")
    if not 1 <= directions <= MAX_DIRECTIONS:
        raise ValueError(f"directions: expected a positive integer of at most "
                         f"{MAX_DIRECTIONS}, got {directions!r}")
    if not isinstance(taylor, bool):
        raise TypeError(f"taylor: expected True or False, got {taylor!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator: expected a CPU torch.Generator or None, got {generator!r}")
    if tol is not None and not isinstance(tol, Tol):
        raise TypeError(f"tol: expected a handgrad.testing.Tol or None, got "
                        f"{type(tol).__name__}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TypeError(f"name: expected a non-empty string naming the {what} in records and "
                        f"reports, or None for its own name, got {name!r}")
    fname, kernel = _callable_name(f), name.strip() if name else _callable_name(d)
    # f and the derivative only ever see copies: the caller's tensors are never written to,
    # and one that writes into its arguments is refused by name (_Copies.check)
    args = _Copies(args, names)
    # each callable's own signature against the call it gets, before any runs (f(x) given
    # args=(x, W), vjp(g) for vjp(g, x)): refused by name rather than failing inside
    given = _shapes(args, names)
    _fits("f", f, len(args), given)
    _fits(what, d, len(args) + 1, [("g " if mode == "vjp" else "t ") + (
        "(f(*args)'s shape)" if mode == "vjp" else f"(a tuple of {len(args)})")] + given)
    with torch.no_grad():
        out = _output("f", _call("f", f, tuple(args), f"check_{what} called f(*args) at the "
                                 "given point", given))
    args.check("f")
    if not out.numel():
        raise ValueError(f"f: f(*args) has no elements (shape {tuple(out.shape)}): no "
                         "derivative to check; expected an f with at least one output element")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"args: f(*args) is not finite at the given point: "
                         f"{_nonfinite(out, 'output elements')}; no derivative can be checked "
                         "there: expected args where f is finite (log or sqrt of a negative "
                         "number is nan, say)" + _finite_wider(f, args, out))
    # differences and torch's derivative read f at and around the point many times: an f
    # that draws random numbers (dropout in training mode, a generator among its arguments)
    # gives each call its own function, and its derivative reads as wrong. One more call
    # at the point, compared with the first (within the forward tolerance of its dtype, atol
    # scaled by f's largest value: a GPU's atomic adds may sum in another order each call)
    try:
        with torch.no_grad():
            again = f(*args)
    except Exception as e:  # noqa: BLE001 (f is the user's; it ran once at this point)
        raise ValueError(f"f: raised on its second call at the same point ({type(e).__name__}: "
                         f"{str(e)[:120]}): f is not deterministic, so no derivative of it "
                         "can be checked") from e
    # atol scaled by f's largest value: an element near 0 that sums terms of that size may
    # differ by their rounding
    same = FORWARD.get(out.dtype, Tol(0.0, 0.0))
    same = Tol(same.rtol, same.atol + same.rtol * float(out.double().abs().max()))
    if not (isinstance(again, torch.Tensor) and again.shape == out.shape
            and _close(again.double(), out.double(), same)):
        differ = (float((again.double() - out.double()).abs().max())
                  if isinstance(again, torch.Tensor) and again.shape == out.shape else None)
        gens = [_label(i, names) for i, a in enumerate(args)
                if isinstance(a, torch.Generator)]
        raise ValueError(
            "f: two calls at the same point gave different results"
            + (f" (largest difference {differ:.3g})" if differ is not None else "")
            + ": f is not deterministic (dropout or another random op in training mode"
            + (f"; it draws from {', '.join(gens)}" if gens else "") + "), so no "
            "derivative of it can be checked: expected a deterministic f (model.eval(), or "
            "the random mask passed in as an argument)")
    return args, names, wrt, int(directions), generator, fname, kernel, out


def _finite_wider(f, args: tuple, out: torch.Tensor) -> str:
    """Where f(*args), not finite in a dtype narrower than float64, is finite at the float64
    copies of the arguments: f overflows in its own dtype (a float16 sum of 65,536 losses
    passes float16's largest value, 65,504, and torch's cross-entropy gave NaN), which the
    refusal then says instead of hinting at a log of a negative number; else ''."""
    try:
        with torch.no_grad():
            wide = f(*_as64(args))
    except Exception:  # noqa: BLE001 (f written for one dtype: nothing more to say)
        return ""
    if not (isinstance(wide, torch.Tensor) and wide.shape == out.shape
            and wide.dtype == torch.float64 and bool(torch.isfinite(wide).all())):
        return ""
    name, top = str(out.dtype).removeprefix("torch."), float(wide.abs().max())
    said = (f". In float64 f is finite at this point (its largest |value| {top:.3g}; {name}'s "
            f"largest finite number is {torch.finfo(out.dtype).max:.5g})")
    if top > torch.finfo(out.dtype).max:
        return said + (f": f's value itself is beyond {name}: check at a smaller size or "
                       "scale")
    return said + (f": f overflows in {name} here, in a sum, exp or square it computes in "
                   f"{name}: compute f in a wider dtype and cast its result back "
                   "(x.to(torch.promote_types(x.dtype, torch.float32)), which keeps float64 "
                   "for the check's float64 reference), or check at a smaller size")


class _Copies(tuple):
    """f's arguments as f and the derivative are given them: each tensor a copy of the
    caller's (detached; requiring grad where the caller's does), so nothing the check calls
    can change the caller's tensors. ``check(who)`` refuses, by name, a ``who`` that has
    written into them: a point that moves cannot have its derivative checked, and a
    derivative that writes into f's arguments corrupts what is read after it (a vjp into
    the tensors its autograd.Function saved, say). A copy changed in value, or whose version
    counter moved (any in-place op, even one that leaves the values as they were), counts."""

    def __new__(cls, args: tuple, names: list[str | None]):
        copies = super().__new__(cls, (
            a.detach().clone().requires_grad_(a.requires_grad)
            if isinstance(a, torch.Tensor) else _copy_generator(a)
            if isinstance(a, torch.Generator) else a for a in args))
        copies._caller = args
        copies._names = names
        copies._versions = [a._version if isinstance(a, torch.Tensor) else None
                            for a in copies]
        return copies

    def check(self, who: str) -> None:
        moved = [i for i, (a, b, v) in enumerate(zip(self, self._caller, self._versions))
                 if v is not None and (a._version != v or not _same(a, b))]
        if not moved:
            return
        labels = ", ".join(_label(i, self._names) for i in moved)
        why, instead = {
            "f": ("the check calls f again at and around the point, so f must leave its "
                  "arguments as they are (a point that moves has no derivative to check)",
                  "x.tanh() rather than x.tanh_(), or x = x.clone() first"),
            "vjp": ("a derivative must leave f's arguments as they are (the check reads "
                    "them again after it, as autograd does after a backward)",
                    "g * x rather than x.mul_(g); writing into the cotangent is fine"),
            "jvp": ("a derivative must leave f's arguments as they are (the check reads "
                    "them again after it)",
                    "t[0] * x rather than x.mul_(t[0]); writing into the tangents is fine"),
        }[who]
        raise ValueError(
            f"{who}: modified {labels} in place (an in-place op such as mul_ or tanh_, or an "
            f"assignment into it); {why}: expected {'an' if who == 'f' else 'a'} {who} that "
            f"does not write into them ({instead}). The caller's tensors are unchanged: the "
            f"check gave {who} copies")


def _copy_generator(g: torch.Generator) -> torch.Generator:
    """A generator in ``g``'s state: f draws from the copy, and the caller's is left as it
    was."""
    copy = torch.Generator(device=g.device)
    copy.set_state(g.get_state())
    return copy


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape and values (NaN matching NaN: a complex argument may hold one)."""
    if torch.equal(a, b):
        return True
    if a.shape != b.shape or a.dtype != b.dtype or not (a.is_floating_point()
                                                         or a.is_complex()):
        return False
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def _callable_name(fn) -> str:
    """How messages and records name a callable: its qualified name (``softplus_layer``,
    ``Model.forward``), ``torch.sin`` for a function of the torch namespace (whose qualified
    name is ``_VariableFunctionsClass.sin``), ``Tensor.sin`` for a tensor method (not
    ``TensorBase.sin``), ``MyFn.apply`` for a custom autograd.Function's apply, without
    ``<locals>.`` (a function defined in a test: ``test_xent.vjp``), else the type's name
    (a ``functools.partial``, a module)."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        return f"{owner.__qualname__}.{fn.__name__}"  # MyFn.apply, not Function.apply
    name = getattr(fn, "__qualname__", None)
    if not isinstance(name, str):
        return type(fn).__name__
    for inner, public in (("_VariableFunctionsClass.", "torch."), ("TensorBase.", "Tensor.")):
        if name.startswith(inner):
            return public + name.removeprefix(inner)
    return name.replace("<locals>.", "")  # test_xent.vjp, not test_xent.<locals>.vjp


def _output(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    return value


def _nonfinite(t: torch.Tensor, noun: str = "elements", shown: int = 3) -> str:
    """Where t is NaN or inf: 'NaN or inf in 2 of its 4 elements (index (1,): nan, ...)'."""
    t = t.detach()
    bad = ~torch.isfinite(t)
    where = ", ".join(f"index {tuple(ix)}: {v}" for ix, v in
                      zip(bad.nonzero()[:shown].tolist(), t[bad][:shown].tolist()))
    count = int(bad.sum())
    return (f"NaN or inf in {count} of its {t.numel()} {noun} ({where}"
            + (", ...)" if count > shown else ")"))


def _not_differentiable(result: torch.Tensor, reference: torch.Tensor | None,
                        whose: str) -> str:
    """Where torch's own derivative is not finite either, at every place the user's is not:
    the point, not the user's derivative, is at fault (sqrt or abs at 0: f finite, its
    derivative not)."""
    if reference is None:
        return ""
    bad = ~torch.isfinite(result)
    if not bool((~torch.isfinite(reference.to(result.device)) >= bad).all()):
        return ""
    return (f"; {whose} is not finite there either ({_nonfinite(reference)}): f is not "
            "differentiable at this point (sqrt at 0, say), so nothing can be checked there: "
            "choose another point")


def _narrower(got: torch.dtype, want: torch.dtype) -> bool:
    """Whether a result of dtype ``got`` cannot hold every value of dtype ``want`` (float32
    for float64, bfloat16 for float16 and the reverse): it has lost precision."""
    return torch.promote_types(got, want) != got


def _randn_like(t: torch.Tensor, generator) -> torch.Tensor:
    # drawn on the CPU in float64, so a seed gives the same numbers on every device
    return torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.device, t.dtype)


def _as64(args: tuple) -> tuple:
    return tuple(a.detach().double() if _is_float_tensor(a) else a for a in args)


def _runs_in_float64(f, args64) -> bool:
    try:
        with torch.no_grad():
            out = f(*args64)
    except Exception:  # noqa: BLE001 (f written for one dtype: the check runs in it)
        return False
    return isinstance(out, torch.Tensor) and out.dtype == torch.float64


def _custom_function(out: torch.Tensor) -> str | None:
    """The name of a custom autograd.Function in out's graph, if one is there."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            return type(node).__name__.removesuffix("Backward")
        stack.extend(n for n, _ in getattr(node, "next_functions", ()))
    return None


def _traced(f, call: tuple):
    """f on arguments that require grad, and why torch cannot differentiate it if it
    raises there (numpy on a tensor that requires grad, say)."""
    try:
        with torch.enable_grad():
            return f(*call), ""
    except Exception as e:  # noqa: BLE001 (f is the user's: any failure means the same)
        return None, (f"f raised on arguments that require grad ({type(e).__name__}: "
                      f"{str(e)[:120]}): torch cannot differentiate it, so the reference "
                      f"is {CENTRAL} only")


_UNTRIED = object()
VJP64 = "the vjp in float64"
JVP64 = "the jvp in float64"
# A derivative computed in float32 (or narrower) misses the float64 reference by its own
# rounding, and a sum over many terms that cancel makes that larger than rtol x |value|: a
# right x.T @ d over 8,192 rows failed float32's gradient tolerance for 10 seeds of 10. Where
# an element-wise comparison fails, torch's own derivative with f run at the arguments' own
# dtypes measures that rounding: ROUNDING_FACTOR times its largest distance from torch's
# float64 derivative is added to atol (a right derivative, however it sums, measured within
# 1.3x of torch's own; _rounding_allowance). Not where that added atol would exceed
# ROUNDING_CAP of the derivative's largest element: the dtype cannot resolve the derivative
# there, and the failure says so
ROUNDING_FACTOR = 4.0
ROUNDING_CAP = 0.1
# past ROUNDING_CAP, a float64 derivative within this many times float64's rounding of its
# terms is zero by cancellation (_rounding_allowance): compared at the table's atol
ZERO_BY_CANCELLING = 1000.0
_EPS64 = torch.finfo(torch.float64).eps


def _own_dtype_vjp(f, args: tuple, wrt: list[int], u: torch.Tensor) -> dict[int, torch.Tensor]:
    """torch.autograd's gradients with f run at the arguments' own dtypes (the rounding a
    computation at those dtypes makes, for ``_rounding_allowance``); {} where torch gives
    none (f raises on arguments that require grad, or its graph does not reach them)."""
    leaves = {i: args[i].detach().clone().requires_grad_() for i in wrt}
    call = tuple(leaves.get(i, a.detach().clone() if isinstance(a, torch.Tensor) else a)
                 for i, a in enumerate(args))
    out, failed = _traced(f, call)
    if failed:
        return {}
    try:
        got = torch.autograd.grad(out, [leaves[i] for i in wrt], u.to(out.dtype),
                                  allow_unused=True)
    except RuntimeError:  # no graph at these dtypes (a detach), or no backward for one op
        return {}
    return {i: g.detach() for i, g in zip(wrt, got) if g is not None}


def _jittered_vjp(f, args: tuple, wrt: list[int], u: torch.Tensor) -> dict[int, torch.Tensor]:
    """torch.autograd's float64 gradients with each checked argument's elements moved by an
    ulp, up or down at random (a fixed seed): how far float64's own rounding moves torch's
    derivative at this point, for ``_rounding_allowance``. A float64 point is known to an ulp,
    and where f's derivative sums terms that cancel (layer norm of rows far from 0: a right
    float64 gradient missed torch's by 8e-8 of an element, rtol 1e-9) no float64 computation
    gets nearer; {} where torch gives none."""
    return _own_dtype_vjp(f, _moved_by_an_ulp(args, wrt), wrt, u)


def _moved_by_an_ulp(args: tuple, wrt: list[int]) -> tuple:
    """``args`` (float64) with each checked argument's elements moved by an ulp, up or down
    at random (a fixed seed): a point as float64 knows it (``_jittered_vjp``)."""
    gen = torch.Generator().manual_seed(0)
    eps = torch.finfo(torch.float64).eps
    moved = list(args)
    for i in wrt:
        sign = torch.randint(0, 2, args[i].shape, generator=gen, dtype=torch.float64) * 2 - 1
        moved[i] = args[i].detach() * (1 + eps * sign.to(args[i].device))
    return tuple(moved)


def _own_dtype_jvp(f, args: tuple, i: int, t: torch.Tensor) -> torch.Tensor | None:
    """torch's tangent of f along ``t`` in ``args[i]``, f run at the arguments' own dtypes
    (for ``_rounding_allowance``); None where torch gives none."""
    own = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
    try:
        jt, _ = _jvp_reference(lambda xi: f(*_with(own, i, xi)), own[i], t.to(own[i].dtype))
    except Exception:  # noqa: BLE001 (f is the user's: no tangent means no allowance)
        return None
    return jt


def _rounding_allowance(own: torch.Tensor | None, ref: torch.Tensor, tol: Tol,
                        dtype: torch.dtype, what: str,
                        table: Tol | None = None) -> tuple[Tol, str] | None:
    """``tol`` with atol widened by the rounding torch's own derivative at ``dtype`` (``own``;
    ``what`` names it) shows against its float64 one (``ref``), and a note saying so; or
    (``tol``, why not) where the atol added (ROUNDING_FACTOR times that rounding) would
    exceed ROUNDING_CAP of ``ref``'s largest element. (``table``, why not) there instead
    where ``ref`` is zero by cancellation (a Linear's bias before a batch norm: its float64
    gradient is rounding, 1e-16, or 0; ``ZERO_BY_CANCELLING``): ``table`` is the dtype's
    tolerance before ``_at_scale`` scaled its atol to ``ref`` (default ``tol``), an absolute
    error for values of order 1, and ``ref``'s largest element is not the derivative's scale.
    None where there is nothing to measure."""
    if own is None:
        return None
    miss = float((own.double().to(ref.device) - ref.double()).abs().max())
    top = float(ref.double().abs().max())
    if not (math.isfinite(miss) and math.isfinite(top)) or miss == 0:
        return None
    # zero by cancellation: the float64 reference no larger than float64's rounding of terms
    # whose rounding at dtype is ``miss`` (terms of about miss / eps(dtype)), ZERO_BY_CANCELLING
    # times over: its largest element is not the derivative's scale, the terms' are
    zero = top <= ZERO_BY_CANCELLING * _EPS64 * miss / torch.finfo(dtype).eps
    table = tol if table is None or not zero else table
    dtype = str(dtype).removeprefix("torch.")
    capped = ROUNDING_FACTOR * miss > ROUNDING_CAP * top
    if capped and table is not tol:
        how = ("moved by an ulp, it moves by" if dtype == "float64" else
               f"at {dtype}, it misses that by")
        return table, (f"{what} is zero by cancellation here (its largest element in float64 "
                       f"{top:.3g}; {how} {miss:.3g}): compared at the table's atol "
                       f"{table.atol:g}, not scaled to its largest element")
    if dtype == "float64":  # own: torch's at the arguments moved by an ulp (_jittered_vjp)
        if capped:
            return tol, (f"{what} moves by {miss:.3g} with the arguments moved by an ulp "
                         f"({miss / top:.3g} of its largest element): f's derivative is "
                         "ill-conditioned at this point, even in float64: choose another point")
        wide = Tol(tol.rtol, tol.atol + ROUNDING_FACTOR * miss)
        return wide, (f"float64 rounding allowed: atol {tol.atol:g} + {ROUNDING_FACTOR:g} x "
                      f"{miss:.3g} (how far {what} moves with the arguments moved by an "
                      "ulp; sums that cancel)")
    if capped:
        return tol, (f"{what} at {dtype} misses its float64 one by {miss:.3g} ({miss / top:.3g} "
                     f"of its largest element): f loses precision at {dtype} here, so its "
                     "derivative cannot be checked element by element in it: check in "
                     "float64")
    wide = Tol(tol.rtol, tol.atol + ROUNDING_FACTOR * miss)
    return wide, (f"{dtype} rounding allowed: atol {tol.atol:g} + {ROUNDING_FACTOR:g} x "
                  f"{miss:.3g} ({what} at {dtype} against its float64 one; sums that cancel)")


class _Rounding:
    """The rounding allowed one derivative checked against torch's float64 one, measured
    when a comparison first needs it (``own()``: torch's derivative at the arguments' own
    dtypes, None where torch gives none): ``allowance()`` for the element-wise comparison,
    ``projected(v)`` for central differences, which see the derivative through <., v>: the
    element-wise atol added, times |v| (independent errors of that size project to about
    that)."""

    def __init__(self, own: Callable[[], torch.Tensor | None], ref: torch.Tensor, tol: Tol,
                 dtype: torch.dtype, what: str, table: Tol | None = None):
        self._own, self._ref, self._tol, self._dtype, self._what = own, ref, tol, dtype, what
        self._table = table  # before _at_scale (None: tol; _rounding_allowance)
        self._value = _UNTRIED

    def allowance(self) -> tuple[Tol, str] | None:
        if self._value is _UNTRIED:
            self._value = _rounding_allowance(self._own(), self._ref, self._tol, self._dtype,
                                              self._what, self._table)
        return self._value

    def projected(self, v: torch.Tensor) -> tuple[float, str | None]:
        """(the absolute error allowed <derivative, v> for rounding, its note)."""
        allowance = self.allowance()
        if allowance is None or allowance[0] is self._tol:
            return 0.0, None
        extra = allowance[0].atol - self._tol.atol
        return extra * float(v.double().norm()), allowance[1]


def _per_argument(grads, n: int) -> tuple | list | None:
    """A vjp's result as one entry per argument of f (a lone tensor for a one-argument f is
    its tuple), or None where it is not that."""
    if isinstance(grads, torch.Tensor) and n == 1:
        return (grads,)
    return grads if isinstance(grads, (tuple, list)) and len(grads) == n else None


def _unreduced(got: torch.Size, want: torch.Size) -> str:
    """Why a gradient of shape ``got`` may have been meant to be ``want``'s, where it is
    ``want`` with dimensions added ('' otherwise): leading ones of a batch the gradient was
    not summed over (a bias's d, not d.sum(0)), or dimensions of size 1 (keepdim=True)."""
    extra = len(got) - len(want)
    if extra <= 0:
        return ""
    if tuple(got[extra:]) == tuple(want) and any(n != 1 for n in got[:extra]):
        dims = ", ".join(map(str, range(extra)))
        return (f"; that is the argument's shape after leading dimension"
                f"{'s' if extra > 1 else ''} {tuple(got[:extra])}: not summed over "
                f"{'them' if extra > 1 else 'it'} (a bias's gradient sums over the batch: "
                f".sum({dims if extra > 1 else 0}))?")
    if [n for n in got if n != 1] == [n for n in want if n != 1]:
        return ("; that is the argument's shape with dimensions of size 1 added: a sum with "
                "keepdim=True, or a missing squeeze?")
    return ""


def _shapes(args: tuple, names: list[str | None]) -> list[str]:
    """Each argument as a derivative is given it: 'args[0] (x) (6, 4)', or its type."""
    return [f"{_label(i, names)} " + (str(tuple(a.shape)) if isinstance(a, torch.Tensor)
                                      else type(a).__name__) for i, a in enumerate(args)]


def _note_call(e: BaseException, how: str, given: list[str],
               whose: str = "the derivative under test") -> None:
    """Add to ``e``, raised by the derivative under test (or f: ``whose``), how the check
    called it and with what, in order (the commonest cause: parameters in another order,
    vjp(x, W, b, g) for vjp(g, x, W, b)); Python 3.11 on: notes (``_call`` raises it again
    with the call's contract in its message)."""
    if hasattr(e, "add_note"):
        e.add_note(how)
        e.add_note(f"raised by {whose}, given in this order: " + ", ".join(given))


# how the check calls each callable under test, and what it gives and expects: said where
# the callable's own signature cannot take the call, and where it raises
_CONTRACTS = {
    "f": ("f(*args)", "f is given the entries of args as its positional arguments, in order "
          "(one tensor x: args=(x,))"),
    "vjp": ("vjp(g, *args)", "g is the cotangent, of f(*args)'s shape, then f's arguments in "
            "f's order; it returns one gradient per argument (a tuple, or a tensor where f "
            "has one argument)"),
    "jvp": ("jvp(t, *args)", "t is a tuple of tangents, one per argument (t[0] for args[0]), "
            "even for one argument, then f's arguments in f's order; it returns the tangent "
            "of f(*args)"),
}


def _fits(who: str, fn: Callable, n: int, given: list[str]) -> None:
    """A ``TypeError``, before any call, where ``fn``'s own signature cannot take the ``n``
    positional arguments the check calls it with (``vjp(g)`` for ``vjp(g, x)``); nothing
    where it has no signature to read (a builtin) or could take them. Its own signature, not
    a wrapped function's: a decorator may give more than it declares."""
    try:
        sig = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):  # builtins, some C functions
        return
    try:
        sig.bind(*([None] * n))
    except TypeError as e:
        call, contract = _CONTRACTS[who]
        raise TypeError(f"{who}: {_callable_name(fn)}{sig} cannot be called as {call} with "
                        f"the {n} argument{'s' if n != 1 else ''} the check gives it ({e}): "
                        f"{contract}; it would be given {', '.join(given)}") from None


def _call(who: str, fn: Callable, call_args: tuple, how: str, given: list[str],
          repeat: bool = False):
    """``fn(*call_args)``, ``fn`` the user's ``who`` ("f", "vjp", "jvp"). What it raises is
    raised again with the call and its contract in the message, of the same type, chained
    from the original and with ``_note_call``'s notes (``how``, ``given``); raised as it is
    where the type cannot be rebuilt from a message (``KeyError`` quotes its own), and an
    ``AssertionError`` (a check's verdict, a nested check's among them) or an out-of-memory
    error (the machine's limit) always. ``repeat``: the second call at the same point, the
    first having returned."""
    try:
        return fn(*call_args)
    except Exception as e:  # noqa: BLE001 (the user's code: raised again, with its context)
        _note_call(e, how, given, "f" if who == "f" else "the derivative under test")
        if isinstance(e, (AssertionError, torch.cuda.OutOfMemoryError)):
            raise
        call, contract = _CONTRACTS[who]
        text = (f"{call} raised {type(e).__name__}: {e}"
                + (" on its second call at the same point (the first returned): it keeps "
                   "state between calls" if repeat else "") + f"; {contract}")
        try:
            again = type(e)(text)
        except Exception:  # noqa: BLE001 (a constructor of its own: raised as it is)
            raise e from None
        if type(again) is not type(e) or str(again) != text:
            raise
        for note in getattr(e, "__notes__", ()):
            again.add_note(note)
        raise again from e


def _repeatable(who: str, pairs, tol: Tol | None = None) -> None:
    """An ``AssertionError`` naming the first argument whose result differs between two calls
    of the derivative ``who`` ("vjp": its gradient, "jvp": the tangent moving it) at the same
    point beyond rounding (the result's dtype's gradient tolerance, atol scaled by its largest
    value): a random op inside the derivative, or state kept between
    calls (a gradient accumulated into a buffer it returns). One call of such a derivative
    can pass by chance. ``pairs``: (label, first, second) per argument, ``first`` a copy
    taken before the second call (a buffer the second call writes into would match itself).
    ``tol``, the caller's: the looser of it and the gradient tolerance, part by part (a
    difference within the tolerance the check compares at cannot turn its verdict either).
    """
    noun = {"vjp": "gradient", "jvp": "tangent"}[who]
    given = {"vjp": "cotangent", "jvp": "tangents"}[who]
    for label, a, b in pairs:
        if a is None and b is None:
            continue
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
                a.shape == b.shape and a.device == b.device:
            a64, b64 = a.detach().double(), b.detach().double()
            # the gradient tolerance: a difference below it cannot turn a verdict, and a GPU's
            # atomic adds (index_add, scatter_add) sum in another order each call
            same = GRAD.get(a.dtype, Tol(0.0, 0.0))
            if tol is not None:
                same = Tol(max(same.rtol, tol.rtol), max(same.atol, tol.atol))
            top = a64.abs()[torch.isfinite(a64)]
            same = Tol(same.rtol, same.atol + same.rtol * float(top.max() if top.numel() else 0))
            # NaN or inf at the same place both times is the same result (and named later)
            if bool(((a64 - b64).abs() <= same.atol + same.rtol * a64.abs())
                    .logical_or_(a64 == b64).logical_or_(a64.isnan() & b64.isnan()).all()):
                continue
            diff = (a64 - b64).abs().nan_to_num(nan=math.inf)
            # numpy's: torch.unravel_index is torch 2.2's, pyproject allows 2.1
            at = tuple(int(k) for k in np.unravel_index(int(diff.argmax()), diff.shape))
            how = (f" (largest difference {float(diff.max()):.3g}, at index {at}: "
                   f"{float(a64[at]):.9g} then {float(b64[at]):.9g})")
        else:  # a tensor one time and not the other, or tensors of other shapes or devices
            how = f" (the first call gave {_kind(a)}, the second {_kind(b)})"
        raise AssertionError(
            f"{label}: two calls of the {who} at the same point gave different {noun}s{how}: "
            f"the {who} is not deterministic (a random op inside it, or state kept between "
            f"calls: a {noun} accumulated into a buffer it returns), so one call could pass "
            f"by chance: expected the same {noun} for the same {given} and arguments")


class _Gave:
    """What a derivative's repeat call returned where it was not one result per argument
    (``_repeatable`` names it for each argument: no gradient of the argument's own to show)."""

    def __init__(self, value, n: int):
        self.text = f"{_kind(value)} (f has {n} argument{'s' if n > 1 else ''})"


def _kind(value) -> str:
    """A result as ``_repeatable`` names it: 'None', 'a float32 tensor of shape (3, 4) on
    cpu', 'a tuple of 2', 'an int'."""
    if isinstance(value, _Gave):
        return value.text
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return (f"a {str(value.dtype).removeprefix('torch.')} tensor of shape "
                f"{tuple(value.shape)} on {value.device}")
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(value, (tuple, list)):
        return f"{article} {name} of {len(value)}"
    return f"{article} {name}"


def _vjp_in_float64(vjp, u, args64, wrt, notes) -> tuple | None:
    """The vjp's gradients at the float64 copies of the arguments, or None (with a note)
    where it does not run in float64 or gives another dtype or shape there: a vjp written
    for one dtype is checked in it alone."""
    try:
        got = vjp(u.double().clone(), *(a.clone() if isinstance(a, torch.Tensor) else a
                                        for a in args64))
    except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from 2.5 on; 2.1 has this
        raise  # not a vjp for one dtype: the machine's limit, said as it is
    except Exception as exc:  # noqa: BLE001 (a vjp written for one dtype)
        notes.append(f"the vjp does not run in float64 ({type(exc).__name__}): central "
                     "differences check it at its own dtype's tolerance only, which one "
                     "wrong element among many can pass")
        return None
    got = _per_argument(got, len(args64))
    if got is None or not all(
            isinstance(got[i], torch.Tensor) and got[i].dtype == torch.float64
            and got[i].shape == args64[i].shape for i in wrt if got[i] is not None):
        notes.append("the vjp gives no float64 gradients at float64 arguments: central "
                     "differences check it at its own dtype's tolerance only")
        return None
    # None for a checked argument is zero, as in the vjp's own dtype
    return tuple(g.detach() if g is not None else torch.zeros_like(args64[i]) if i in wrt
                 else None for i, g in enumerate(got))


def _jvp_in_float64(jvp, t: torch.Tensor, i: int, args64: tuple,
                    shape: torch.Size) -> tuple[torch.Tensor | None, str | None]:
    """The jvp's tangent at the float64 copies of the arguments, moving args[i] along ``t``
    (in float64); or (None, a note) where it does not run in float64 or gives no float64
    tangent of f's ``shape`` there: a jvp written for one dtype is checked in it alone."""
    tangents = tuple(t.double().clone() if j == i else (
        torch.zeros_like(b) if _is_float_tensor(b) else None) for j, b in enumerate(args64))
    try:
        got = jvp(tangents, *(a.clone() if isinstance(a, torch.Tensor) else a for a in args64))
    except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from 2.5 on; 2.1 has this
        raise  # not a jvp for one dtype: the machine's limit, said as it is
    except Exception as exc:  # noqa: BLE001 (a jvp written for one dtype)
        return None, (f"the jvp does not run in float64 ({type(exc).__name__}): central "
                      "differences check it at its own dtype's tolerance only, which one "
                      "wrong element among many can pass")
    if not (isinstance(got, torch.Tensor) and got.dtype == torch.float64
            and got.shape == shape):
        return None, ("the jvp gives no float64 tangent of f's shape at float64 arguments: "
                      "central differences check it at its own dtype's tolerance only")
    return got.detach(), None


def _noted(note: str, more: str) -> str:
    """``note`` with ``more`` joined on, once."""
    return note if more in note else "; ".join(filter(None, [note, more]))


def _with(args: tuple, i: int, value) -> tuple:
    return args[:i] + (value,) + args[i + 1:]


# --- signatures ----------------------------------------------------------------------------

def _close(a: torch.Tensor, b: torch.Tensor, tol: Tol) -> bool:
    return a.shape == b.shape and bool(((a - b).abs() <= tol.atol + tol.rtol * b.abs()).all())


def signature(got: torch.Tensor, ref: torch.Tensor, tol: Tol, *,
              batch: int | None = None) -> str | None:
    """A name for how ``got`` is wrong against ``ref`` when one simple change explains it:
    a missing (zero) result, a flipped sign, a transpose, a reversal along one dim, a
    constant factor, values computed in a narrower dtype; else None (None too where ``got``
    is within ``tol`` of ``ref``: nothing is wrong). ``got`` and ``ref``: finite
    floating-point tensors. ``tol``'s atol is an absolute error for values of order 1:
    against a reference whose largest element is below 1 it is scaled with it, as
    check_vjp's default tolerance is (a reference of 1e-200 is not within an atol of 1e-8
    of everything). ``batch``: the batch size N (an integer >= 1) or None; a constant
    factor of 1/N or N is then named as a mean over the batch where a sum is due, or the
    reverse (check_vjp and check_jvp pass the arguments' batch size where it is
    unambiguous, ``_batch_size``)."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, numbers.Integral)
                              or batch < 1):
        raise (ValueError if isinstance(batch, numbers.Integral) and not isinstance(batch, bool)
               else TypeError)(f"batch: expected the batch size, an integer >= 1, or None, "
                               f"got {batch!r}")
    for name, t in (("got", got), ("ref", ref)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type == "meta":
            raise ValueError(f"{name}: a tensor on the meta device holds no values; expected "
                             "a tensor on a real device (cpu, cuda)")
        if t.is_complex():
            raise TypeError(f"{name}: complex dtype {t.dtype}: a cast to real would drop the "
                            "imaginary part; expected a floating-point tensor (pass "
                            "torch.view_as_real of both)")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if not isinstance(tol, Tol):
        raise TypeError(f"tol: expected a handgrad.testing.Tol, got {type(tol).__name__}")
    for name, t in (("got", got), ("ref", ref)):
        if not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{name}: {_nonfinite(t)}; expected finite values (a NaN or inf "
                             "is no result a simple change explains)")
    return _signature(got, ref, _at_scale(tol, ref, ref.dtype, False)[0],
                      None if batch is None else int(batch))


def _signature(got: torch.Tensor, ref: torch.Tensor, tol: Tol,
               batch: int | None = None) -> str | None:
    """``signature`` of finite floating-point ``got`` and ``ref``, compared at ``tol`` as
    it is (check_vjp's and check_jvp's own, already at the reference's scale); ``batch``:
    the batch size N, or None."""
    g, r = got.detach().double(), ref.detach().double().to(got.device)
    if g.dim() == 2 and r.dim() == 2 and g.shape == r.t().shape and g.shape != r.shape:
        return "the shape of its transpose: transposed?"
    if g.shape != r.shape or r.numel() == 0:
        return None
    s = float(r.abs().max())
    if s == 0:
        return None
    if _close(g, r, tol):  # nothing wrong, unless a narrower dtype explains why it passed
        return _computed_narrower(got, ref)
    sg = float(g.abs().max())
    if sg == 0:
        return "zero everywhere: a missing gradient?"
    if _close(g, -r, tol):
        return "a flipped sign (-1 x the reference)"
    if g.dim() == 2 and g.shape[0] == g.shape[1] and _close(g, r.t(), tol):
        return "the reference transposed"
    # a kernel's gradient reversed along its window: a convolution written as a correlation
    # (or the reverse), x.unfold's window read back to front
    for d in range(g.dim()):
        if g.shape[d] > 1 and _close(g, r.flip(d), tol):
            return (f"the reference reversed along dim {d}: a window read back to front "
                    "(convolution for correlation, or a flip missing)?")
    # before a constant factor: a float32 result for a float64 reference is that reference
    # times 0.99999997 at float64's tolerance, and the narrower dtype is what explains it
    narrower = _computed_narrower(got, ref)
    if narrower:
        return narrower
    # the least-squares factor <g, r> / <r, r>, each tensor divided by its largest element
    # first: a sum of squares of 1e200 overflows float64, of 1e-200 underflows to zero
    rs = r / s
    c = float(((g / sg) * rs).sum()) / float((rs * rs).sum()) * (sg / s)
    if c != 0 and math.isfinite(c) and _close(g, c * r, tol):
        # 1/N or N itself explains it, N the batch: a mean where a sum is due (a bias's
        # gradient g.mean(0) for g.sum(0)), or the reverse
        if batch is not None and batch > 1:
            if _close(g, r / batch, tol):
                return (f"a constant factor {1 / batch:.6g} = 1/{batch}: a mean over the batch "
                        f"({batch}) where a sum is due")
            if _close(g, r * batch, tol):
                return (f"a constant factor {batch}: a sum over the batch ({batch}) where a "
                        "mean is due")
        shown = f"{c:.6g}"
        if shown in ("1", "-1"):  # 1.0000001: as many digits as tell it from 1
            shown = f"{c:.15g}"
        return f"a constant factor: {shown} x the reference"
    return None


def _computed_narrower(got: torch.Tensor, ref: torch.Tensor) -> str | None:
    """A name for ``got`` where each of its values is a number of a narrower dtype than its
    own (float16, bfloat16, float32) and not each of the reference's is: the derivative
    computed in that dtype and cast back (right in float64, wrong in its rounding). Rarely
    so by chance: a float64 gradient of any size whose values all fit float32's 24 bits.
    And ``got`` close to ``ref`` at that dtype's gradient tolerance (its atol scaled to a
    reference below 1, ``_at_scale``): a wrong gradient of few
    distinct values (a relu's 0/1 mask, not times g) is each a bfloat16 number too. Else,
    where ``got``'s own dtype is narrower than ``ref``'s (float32 against float64) and close
    to it at that dtype's gradient tolerance: held to a tighter one than its dtype's."""
    g, r = got.detach(), ref.detach().to(got.device)
    # the narrowest first: bfloat16's 8 bits fit float16's 11 (within its range)
    for narrow in (torch.bfloat16, torch.float16, torch.float32):
        if not _narrower(narrow, g.dtype):  # float32 for float64; not float32 for itself
            continue
        if bool((g.to(narrow).to(g.dtype) == g).all()) and not bool(
                (r.to(narrow).to(r.dtype) == r).all()) and _close(
                g.double(), r.double(), _at_scale(GRAD[narrow], r, narrow, False)[0]):
            name = str(narrow).removeprefix("torch.")
            return (f"values computed in {name}: each is a {name} number and the reference's "
                    f"are not (a cast to {name} inside the derivative, or a {name} constant "
                    "or buffer it uses?)")
    # got itself in a narrower dtype than ref (float32 against float64), within that dtype's
    # tolerance: held to a tighter one (within its rounding, or a tol= tighter than its own)
    if _narrower(g.dtype, r.dtype) and g.dtype in GRAD and not bool(
            (r.to(g.dtype).to(r.dtype) == r).all()) and _close(
                g.double(), r.double(), _at_scale(GRAD[g.dtype], r, g.dtype, False)[0]):
        name, wide = (str(d).removeprefix("torch.") for d in (g.dtype, r.dtype))
        return (f"{name} values against a {wide} reference, within {name}'s gradient "
                f"tolerance: a {name} result held to a tighter one than {name}'s (compare at "
                f"{name}'s, or compute in {wide})")
    return None


# --- the checks ----------------------------------------------------------------------------

def _record_as(before: int, record_as: tuple[torch.dtype, torch.device]) -> None:
    """Label the comparisons recorded since ``compare.RECORDS`` held ``before`` with the
    dtype whose tolerance judged them and the argument's device: the verify report groups
    headroom by dtype, and a central difference is compared as float64 numbers on the CPU
    (a gradient may be wider than its argument) whatever the dtype it checks."""
    dtype, device = str(record_as[0]).removeprefix("torch."), str(record_as[1])
    for k in range(before, len(_records.RECORDS)):
        _records.RECORDS[k] = dataclasses.replace(_records.RECORDS[k], dtype=dtype,
                                                  device=device)


def _compare(label: str, got: torch.Tensor, ref: torch.Tensor, *, kernel: str,
             reference: str, tol: Tol, record_as: tuple[torch.dtype, torch.device],
             batch: int | None = None) -> tuple[float, str | None]:
    """(worst |error| / allowed, failure message or None), recorded like every comparison
    (as ``record_as``'s dtype and device); ``batch``: the arguments' batch size for the
    signature (``_batch_size``), or None."""
    before = len(_records.RECORDS)
    try:
        rec = assert_close(got, ref, kernel=kernel, reference=reference, what=label, tol=tol)
    except AssertionError as e:
        _record_as(before, record_as)
        # a NaN or inf (the reference's: the derivative's own are refused before) is no
        # result a simple change explains
        sig = (_signature(got, ref, tol, batch) if bool(torch.isfinite(got).all())
               and bool(torch.isfinite(ref).all()) else None)
        text = str(e).removeprefix(f"{kernel} vs {reference} [{label}]: ")
        # the report's headroom: how far over its allowance the worst element is (0.82x),
        # inf only where an element is NaN or infinite
        g, r = got.detach().double().to(ref.device), ref.detach().double()
        over = ((g - r).abs() / (tol.atol + tol.rtol * r.abs()).clamp_min(
            torch.finfo(torch.float64).tiny)).nan_to_num(nan=math.inf)
        ratio = float(over.max()) if over.numel() else math.inf
        return ratio, f"{label}: against {reference}: {text}".replace("\n", "\n    ") + (
            f"\n    looks like {sig}" if sig else "")
    _record_as(before, record_as)
    return rec.worst_ratio, None


KINK = ("f has a kink at this point along a direction (its one-sided slopes differ by the "
        "same amount however small the step: relu or abs at 0, max at a tie)")


# f's own rounding in a central difference: each value of f is off by some ulps of |f|,
# and a difference of two divided by 2h carries that as ~ eps |f| / h. FD_ROUNDING eps of
# <|w|, |f(x)|> over h are allowed where a difference misses (a derivative small beside
# f's value: rmsnorm's at one element, 1 + 1e-7 sin x), Richardson's extrapolation three
# times that (its (4 D(h/2) - D(h)) / 3 weighs the h/2 difference's doubled rounding).
# Measured: a float64 sum of 512 cross-entropies missed by 0.01 to 0.12 of it, rmsnorm at
# one element by 0.1; 4 eps hid a float32 gradient's rounding that float64's central
# differences can see
FD_ROUNDING = 1.0


def _fd_step(x: torch.Tensor, v: torch.Tensor, eps: float | None) -> float:
    """The step ``directional_derivative`` takes along v: eps max(1, |x|) / |v|."""
    return (eps if eps is not None else default_eps(x.dtype)) * max(
        1.0, float(x.abs().max())) / float(v.abs().max())


def _second_look(along, x: torch.Tensor, v: torch.Tensor, eps: float | None, w: torch.Tensor,
                 ours: float, fd: float, scale: float,
                 allowed: float) -> tuple[float, float, float, str | None, bool]:
    """Where one central difference ``fd`` (of terms' size ``scale``) misses ``ours`` by more
    than ``allowed`` of that size, a second look: f's own rounding in the difference
    (``FD_ROUNDING``) allowed, then Richardson's extrapolation over h and h/2 (cancels the
    h^2 error of one difference, large where x's scale is far from 1: x**3 at 1e-3, sin at
    1e3) and, where that misses too, whether f has a kink at x along v (``_kink``). Returns
    (fd, scale, allowed) to judge by, a note where the second look decided, and whether a
    kink explains the miss."""
    if abs(ours - fd) <= allowed * (scale or 1.0):
        return fd, scale, allowed, None, False
    ww = w.double()
    with torch.no_grad():
        f0 = along(x)
    # f's rounding in one difference, absolute: FD_ROUNDING eps of <|w|, |f(x)|> over h
    noise = (FD_ROUNDING * float(torch.finfo(f0.dtype).eps)
             * float((ww.to(f0.device).abs() * f0.double().abs()).sum()) / _fd_step(x, v, eps))
    if abs(ours - fd) <= allowed * (scale or 1.0) + noise:
        return fd, scale, allowed + noise / (scale or 1.0), (
            "a central difference missed by more than allowed, within f's own rounding in "
            "it (eps |f| over the step: a derivative small beside f's value)"), False
    jv = directional_derivative(along, x, v, eps=eps, richardson=True)
    ww = ww.to(jv.device)
    fd_r = float((ww * jv.double()).sum())
    scale_r = float((ww * jv.double()).abs().sum())
    if abs(ours - fd_r) <= allowed * (scale_r or 1.0) + 3 * noise:
        return fd_r, scale_r, allowed + 3 * noise / (scale_r or 1.0), (
            "a central difference missed by more than allowed (its own h^2 error: a point "
            "whose scale is far from 1?); Richardson's extrapolation over h and h/2 agrees"), \
            False
    return fd_r, scale_r, allowed, None, _kink(along, x, v, eps, ww, abs(ours - fd_r), noise,
                                                f0)


def _kink(along, x: torch.Tensor, v: torch.Tensor, eps: float | None, w: torch.Tensor,
          miss: float, noise: float, fx: torch.Tensor | None = None) -> bool:
    """Whether f has a kink at x along v that explains a central difference's ``miss``: the
    jump between the one-sided slopes <w, (f(x + hv) - f(x)) / h> and <w, (f(x) - f(x - hv))
    / h> is at least the miss, beyond f's rounding in it (``noise``, a central difference's,
    doubled: a jump takes three values of f), and stays as h shrinks fourfold (a smooth
    f's shrinks with h; rounding's grows fourfold). ``fx``: f(x), where the caller has it."""
    h = _fd_step(x, v, eps)
    with torch.no_grad():
        def at(xi):
            return float((w * along(xi).double().to(w.device)).sum())

        f0 = at(x) if fx is None else float((w * fx.double().to(w.device)).sum())

        def jump(step):
            return (at(x + step * v) - f0) / step - (f0 - at(x - step * v)) / step

        big = jump(h)
        small = jump(h / 4)
    return (abs(big) >= miss and abs(big) > 2 * noise
            and 0.5 * abs(big) < abs(small) < 2 * abs(big))


def _fd_compare(label: str, ours: float, fd: float, scale: float, allowed: float, *,
                kernel: str, what: str,
                record_as: tuple[torch.dtype, torch.device]) -> tuple[float, str | None]:
    err = abs(ours - fd) / (scale if scale > 0 else 1.0)
    tol = Tol(rtol=0.0, atol=allowed)
    s = scale if scale > 0 else 1.0
    before = len(_records.RECORDS)
    try:
        assert_close(torch.tensor([ours / s], dtype=torch.float64),
                     torch.tensor([fd / s], dtype=torch.float64), kernel=kernel,
                     reference=CENTRAL, what=f"{label}: {what} / scale", tol=tol)
    except AssertionError:
        _record_as(before, record_as)
        return err, (f"{label}: against {CENTRAL}: {what} = {ours:.9g} where the central "
                     f"difference gives {fd:.9g}; error {err:.3g} of the terms' size "
                     f"{scale:.3g}, allowed {allowed:.3g}")
    _record_as(before, record_as)
    return err, None


def _compare_rounded(label: str, got: torch.Tensor, ref: torch.Tensor, dtol: Tol,
                     rounding: _Rounding | None, **kw):
    """``_compare`` at ``dtol``, or, where an element fails it and ``rounding`` measures the
    dtype's rounding (``_Rounding``), at the tolerance that allows it: (ratio, message or
    None, why the allowance or None, the tolerance compared at)."""
    ctol, why = dtol, None
    if rounding is not None and not _close(got.to(ref.device), ref, dtol):
        allowance = rounding.allowance()
        if allowance is not None:
            ctol, why = allowance
    ratio, msg = _compare(label, got, ref, tol=ctol, **kw)
    return ratio, msg, why, ctol


def _at_scale(tol: Tol, ref: torch.Tensor, dtype: torch.dtype,
              given: bool) -> tuple[Tol, str | None]:
    """The tolerance an element-wise comparison with ``ref`` is made at by default, and a
    note where it is not the table's (``tol``, of ``dtype``). The table's atol is an absolute
    error for values of order 1: against a reference whose largest element ``s`` is below 1
    it is scaled with it (atol x s), else it says nothing of the elements (bfloat16's 0.1
    exceeds a cross-entropy gradient averaged over 64 rows, 1/64 at most: a gradient with a
    row left at zero passed every element). Never looser than the table; a reference of
    zeros (a gradient zero by structure, x * 0, which a right derivative gives as zeros too)
    is matched exactly. ``given`` (tol= passed): compared at as given."""
    if given:
        return tol, None
    r = ref.detach().double().abs()
    r = r[torch.isfinite(r)]
    s = float(r.max()) if r.numel() else 0.0
    if s >= 1:
        return tol, None
    name = str(dtype).removeprefix("torch.")
    return Tol(tol.rtol, tol.atol * s), (
        f"atol scaled to the reference: {name}'s {tol.atol:g} x {s:.3g}, its largest element "
        "(the table's atol is an absolute error for values of order 1)")


def check_vjp(f: Callable, vjp: Callable, args: Sequence, *, wrt=None,
              cotangent: torch.Tensor | None = None, tol: Tol | None = None,
              directions: int = 2, generator: torch.Generator | None = None,
              taylor: bool = True, name: str | None = None) -> CheckReport:
    """Check ``vjp``, a hand-written reverse-mode derivative of ``f``.

    ``f(*args)`` returns a tensor; ``vjp(cotangent, *args)`` returns one gradient per
    argument (a tuple, or a tensor when there is one argument), None for one without, as an
    ``autograd.Function.backward`` does; a None for a checked argument is taken as zero.
    ``wrt``: the arguments to check (positions or parameter names; default every
    floating-point tensor, each dense and holding values: not on the meta device).
    ``cotangent``: default standard normal. ``tol``: default the gradient tolerance of the
    arguments' dtype (its atol scaled by the reference's largest element, where below 1).
    ``directions``: how many random directions per argument central
    differences take, two evaluations of ``f`` each (1 to ``MAX_DIRECTIONS`` = 10,000).
    ``taylor`` (True or False): fit the order of the Taylor remainder (float64 only); an
    order below 1.5 that the fit can trust fails the argument (see the module's docstring).
    ``generator``: a CPU ``torch.Generator`` for the random vectors (default seeded 0).
    ``name``: what records and the verify report call the vjp (default its own name: a
    ``functools.partial`` or a lambda is better named here).
    Raises ``AssertionError`` on a wrong gradient (every wrong argument named; one holding
    NaN or inf is named with where, not compared), returns a ``CheckReport`` otherwise; bad
    arguments are a ``TypeError`` or ``ValueError`` naming them: among them ``f(*args)`` not
    finite (``ValueError``), and a gradient in a narrower dtype than both its argument and
    f's output, float32 for float64 say (``TypeError`` naming both dtypes; a wider one is
    compared). Where f's output is narrower than an argument, that argument is compared at
    the output dtype's tolerance (a note in the report says so). An ``f`` or ``vjp`` whose
    own signature cannot take its call is a ``TypeError`` before either runs; what either
    raises is raised again, of its type, naming the call and its contract (module
    docstring).
    """
    args, names, wrt, directions, gen, fname, kernel, out = _check_common(
        "vjp", f, vjp, args, wrt, directions, generator, tol, taylor, name)
    if cotangent is None:
        u = _randn_like(out, gen)
    else:
        u = _output("cotangent", cotangent)
        if u.shape != out.shape:
            raise ValueError(f"cotangent: expected f(*args)'s shape {tuple(out.shape)}, got "
                             f"{tuple(u.shape)}")
        if u.device != out.device:
            raise ValueError(f"cotangent: on {u.device}, f(*args) on {out.device}; expected "
                             "one device")
        if not bool(torch.isfinite(u).all()):
            raise ValueError("cotangent: holds NaN or inf")
        u = u.detach()
    # a copy of the cotangent: a vjp may write into it (g.mul_(...)), as a backward may
    # into its grad_output; the check reads u again after
    grads = _call("vjp", vjp, (u.clone(), *args), "check_vjp called vjp(cotangent, *args): "
                  "the cotangent (f(*args)'s shape) first, then f's arguments",
                  [f"cotangent {tuple(u.shape)}"] + _shapes(args, names))
    args.check("vjp")
    per = _per_argument(grads, len(args))
    if per is None:
        got = (f"a sequence of {len(grads)}" if isinstance(grads, (tuple, list))
               else type(grads).__name__)
        raise TypeError(f"vjp: expected one gradient per argument of f ({len(args)}, None "
                        f"for one without), got {got}")
    grads = per
    for i in wrt:
        g = grads[i]
        if g is None:
            continue
        _output(f"vjp's gradient for args[{i}]", g)
        # narrower than what f's output holds too (float32 for a float64 argument is not a
        # loss where f returns float32: it is compared at float32's tolerance, _Precision)
        if _narrower(g.dtype, args[i].dtype) and _narrower(g.dtype, out.dtype):
            raise TypeError(f"vjp's gradient for {_label(i, names)}: dtype {g.dtype} for an "
                            f"argument of dtype {args[i].dtype}; expected {args[i].dtype} "
                            "(or a wider dtype): a gradient narrower than its argument has "
                            "lost the argument's precision (a cast inside the vjp?), so it is "
                            "not compared")
        if g.device != args[i].device:
            raise AssertionError(f"{_label(i, names)}: vjp's gradient is on {g.device}, the "
                                 f"argument on {args[i].device}")
        if g.shape != args[i].shape:
            flipped = g.dim() == 2 and tuple(g.shape) == tuple(args[i].shape)[::-1]
            other = [j for j in wrt if j != i and args[j].shape == g.shape]
            raise AssertionError(
                f"{_label(i, names)}: vjp's gradient has shape {tuple(g.shape)}, the "
                f"argument {tuple(args[i].shape)}"
                + ("; that is the argument's transpose: transposed?" if flipped else
                   f"; that is {_label(other[0], names)}'s shape: the gradients in another "
                   "order than f's arguments?" if other else _unreduced(g.shape,
                                                                        args[i].shape)))
    # the first call's gradients as they were: a second call may write into a buffer the
    # first returned
    grads = tuple(g.detach().clone() if isinstance(g, torch.Tensor) else g for g in grads)
    returned = _call("vjp", vjp, (u.clone(), *args), "check_vjp called vjp(cotangent, *args) "
                     "a second time, as the first (which returned): it raised on the repeat, "
                     "so it keeps state between calls",
                     [f"cotangent {tuple(u.shape)}"] + _shapes(args, names), repeat=True)
    args.check("vjp")
    again = _per_argument(returned, len(args))
    _repeatable("vjp", [(_label(i, names), grads[i], again[i] if again is not None
                         else _Gave(returned, len(args))) for i in wrt], tol)

    args64 = _as64(args)
    in64 = _runs_in_float64(f, args64)
    ref_args = args64 if in64 else tuple(a.detach() if _is_float_tensor(a) else a
                                         for a in args)
    notes, references = [], []
    # torch.autograd: the whole gradient, every checked argument at once
    ref_grads: dict[int, torch.Tensor] = {}
    leaves = {i: ref_args[i].clone().requires_grad_() for i in wrt}
    call = tuple(leaves.get(i, a) for i, a in enumerate(ref_args))
    out_ref, failed = _traced(f, call)
    custom = _custom_function(out_ref) if isinstance(out_ref, torch.Tensor) else None
    if failed:
        notes.append(failed)
    elif custom is not None:
        notes.append(f"f runs the custom autograd.Function {custom}: torch.autograd would "
                     "replay its own backward, so it is no reference here")
    elif isinstance(out_ref, torch.Tensor) and out_ref.requires_grad:
        got = torch.autograd.grad(out_ref, [leaves[i] for i in wrt],
                                  u.to(out_ref.dtype), allow_unused=True)
        # None: torch does not reach the argument (unused, or through a detach or numpy):
        # no torch reference for it, rather than a zero that may be wrong
        ref_grads = {i: g.detach() for i, g in zip(wrt, got) if g is not None}
        references.append(AUTOGRAD)
    else:
        notes.append("f's output does not depend on its arguments through torch (numpy "
                     "inside, or a detach): torch.autograd is no reference")

    prec = _precisions(args, names, wrt, out, ref_args, in64, tol, notes)
    if any(prec[i].fd_ok for i in wrt):
        references.append(CENTRAL)
    checks = []
    grads64 = _UNTRIED
    # torch's gradients with f at the arguments' own dtypes, once, where a rounding allowance
    # is first needed (_Rounding)
    own_grads = functools.cache(lambda: _own_dtype_vjp(f, args, wrt, u))
    # and at float64 arguments each moved by an ulp: float64's own rounding
    jittered = functools.cache(lambda: _jittered_vjp(f, args64, wrt, u))
    for i, a in enumerate(args):
        if i not in wrt:
            why = ("not a floating-point tensor" if not _is_float_tensor(a)
                   else "not in wrt")
            checks.append(ArgumentCheck(i, names[i], False, why))
            continue
        label = _label(i, names)
        batch = _batch_size(args, i, out)  # a factor 1/N or N named as the batch's
        dtol, record_as = prec[i].tol, prec[i].record_as
        fd_dtype, fd_ok = prec[i].fd_dtype, prec[i].fd_ok
        # detached: a gradient computed from arguments that require grad requires grad,
        # and float() of one warns (an error under -W error)
        g = grads[i].detach() if grads[i] is not None else torch.zeros_like(args[i])
        note = "" if grads[i] is not None else "vjp gave None: checked as zero"
        if AUTOGRAD in references and i not in ref_grads:
            note = "; ".join(filter(None, [note, "torch.autograd does not reach it (unused, "
                                           "or through a detach or numpy)"]))
        failures, ratio, fd_err, fd_allowed, order = [], None, None, None, None
        if not bool(torch.isfinite(g).all()):
            checks.append(ArgumentCheck(i, names[i], True, note, failures=(
                f"{label}: vjp returned non-finite values where f(*args) is finite: "
                f"{_nonfinite(g)}; not compared with the references"
                + _not_differentiable(g, ref_grads.get(i), "torch.autograd's gradient"),)))
            continue
        torch_failed = None  # the index of torch's disagreement among failures
        # the table's atol scaled to a gradient whose largest element is below 1 (_at_scale)
        etol, scaled = (_at_scale(dtol, ref_grads[i], prec[i].dtype, tol is not None)
                        if i in ref_grads else (dtol, None))
        # the reference in float64, the gradient narrower: its rounding is allowed where a
        # comparison fails (tol= given: compared at it, as given)
        rounding = (_Rounding(lambda i=i: own_grads().get(i), ref_grads[i], etol,
                              args[i].dtype, "torch.autograd's gradient", dtol)
                    if tol is None and in64 and args[i].dtype != torch.float64
                    and i in ref_grads else
                    _Rounding(lambda i=i: jittered().get(i), ref_grads[i], etol, torch.float64,
                              "torch.autograd's gradient", dtol)
                    if tol is None and in64 and i in ref_grads else None)
        if i in ref_grads:
            ratio, msg, why, ctol = _compare_rounded(label, g, ref_grads[i], etol, rounding,
                                                     kernel=kernel, reference=AUTOGRAD,
                                                     record_as=record_as, batch=batch)
            if msg and scaled and ctol is not dtol:  # not back at the table's (_Rounding)
                msg += f"\n    {scaled}"
            swapped = [j for j in ref_grads if j != i and msg and ref_grads[j].shape == g.shape
                       and _close(g.to(ref_grads[j].device), ref_grads[j], ctol)]
            if swapped:
                msg += (f"\n    it is {_label(swapped[0], names)}'s gradient: the gradients "
                        "in another order than f's arguments?")
            elif msg and u.numel() == 1 and float(u) != 0 and _close(
                    (g.double() * float(u)).to(ref_grads[i].device), ref_grads[i], ctol):
                # a scalar f (a loss): the gradient as if the cotangent were 1
                msg += (f"\n    it is the reference over the cotangent ({float(u):.6g}): the "
                        "vjp ignores its cotangent g? (a loss's gradient times g)")
            if why and msg:
                msg += f"\n    {why}"
            elif why:
                note = _noted(note, why)
            if msg:
                torch_failed = len(failures)
                failures.append(msg)
        elif not fd_ok:
            failures.append(f"{label}: no reference could check it (torch does not reach it "
                            f"and {fd_dtype} is too coarse for central differences)")
        # no element-wise reference, and central differences see projections only, at the
        # argument's tolerance: one wrong element of many hides in the sum. Where the vjp
        # also runs in float64, its float64 gradient takes central differences at float64's
        # floor, and the gradient under test is held to it element by element
        g_fd, fd_what, fd_record_as = g, "<vjp(u), v>", record_as
        if fd_ok and i not in ref_grads and in64 and args[i].dtype != torch.float64:
            if grads64 is _UNTRIED:
                grads64 = _vjp_in_float64(vjp, u, args64, wrt, notes)
            if grads64 is not None and not bool(torch.isfinite(grads64[i]).all()):
                note = "; ".join(filter(None, [note, "the vjp's float64 gradient is not "
                                               "finite where this one is: not used"]))
            elif grads64 is not None:
                vtol, scaled = _at_scale(dtol, grads64[i], prec[i].dtype, tol is not None)
                _, msg = _compare(label, g, grads64[i].to(g.device), kernel=kernel,
                                  reference=VJP64, tol=vtol, record_as=record_as,
                                  batch=batch)
                if msg:
                    failures.append(msg + (f"\n    {scaled}" if scaled else ""))
                g_fd, fd_what = grads64[i], "<vjp(u), v> in float64"
                # its central differences are float64's, and recorded as such
                fd_record_as = (torch.float64, record_as[1])
                if VJP64 not in references:
                    references.append(VJP64)
        if fd_ok:
            # a float64 gradient at float64's floor, unless the caller loosened the tolerance
            fd_allowed = (max(_FD_FLOOR[torch.float64], tol.rtol if tol is not None else 0.0)
                          if g_fd is not g else max(_FD_FLOOR[fd_dtype], dtol.rtol))
            torch_fd_err, worst = 0.0, None  # worst: (error, allowed) of the worst direction
            for _ in range(directions):
                v = _randn_like(ref_args[i], gen)

                def along(xi, i=i):
                    return f(*_with(ref_args, i, xi))

                jv = directional_derivative(along, ref_args[i].detach(), v,
                                            eps=prec[i].fd_eps)
                uu = u.to(jv.dtype)
                fd = float((uu.double() * jv.double()).sum())
                scale = float((uu.double() * jv.double()).abs().sum())
                ours = float((g_fd.double() * v.double().to(g_fd.device)).sum())
                allowed, why = fd_allowed, None
                if rounding is not None and abs(ours - fd) > fd_allowed * (scale or 1.0):
                    extra, why = rounding.projected(v)
                    allowed += extra / (scale or 1.0)
                fd, scale, allowed, look, kink = _second_look(
                    along, ref_args[i].detach(), v, prec[i].fd_eps, uu, ours, fd, scale,
                    allowed)
                if kink and i in ref_grads and torch_failed is None:
                    # torch's derivative agreed element by element: the kink, not the vjp
                    note = _noted(note, f"{KINK}: central differences set aside, "
                                  "torch.autograd's gradient agreed")
                    continue
                err, msg = _fd_compare(label, ours, fd, scale, allowed, kernel=kernel,
                                       what=fd_what, record_as=fd_record_as)
                if worst is None or err / allowed > worst[0] / worst[1]:
                    worst = (err, allowed)
                if look:
                    note = _noted(note, look)
                if msg and kink:
                    msg += f"; {KINK}: choose a point off it"
                if why:  # the report, in a failure too, says it
                    note = _noted(note, why)
                if torch_failed is not None:  # torch's answer, as central differences see it
                    theirs = float((ref_grads[i].double() * v.double().to(
                        ref_grads[i].device)).sum())
                    torch_fd_err = max(torch_fd_err, abs(theirs - fd) / (scale or 1.0))
                if msg:
                    failures.append(msg)
                    break
            else:
                # only where central differences tell the two apart: a disagreement below
                # their resolution (softplus's linear tail, 1e-9 off) says nothing of f's graph
                if torch_failed is not None and torch_fd_err > fd_allowed:
                    failures[torch_failed] += _graph_hint("vjp", AUTOGRAD, worst[0],
                                                          fd_allowed, directions)
            # the report's: the worst direction's (none where every one crossed a kink)
            fd_err, fd_allowed = worst if worst is not None else (None, None)
        if taylor and args[i].dtype == torch.float64 and in64 and not failures:
            def scalar(xi, i=i):
                return (u.double() * f(*_with(args64, i, xi)).double()).sum()

            v = _randn_like(args64[i], gen)
            t = taylor_test(scalar, g.detach().double(), args64[i], v)
            order = None if math.isnan(t.order) else t.order
            if order is not None and not t.consistent:  # central differences along v
                jv = directional_derivative(lambda xi, i=i: f(*_with(args64, i, xi)),
                                            args64[i], v).double()
                msg = _taylor_failure(
                    label, t, ours=float((g.double() * v.to(g.device)).sum()),
                    fd=float((u.double() * jv).sum()),
                    scale=float((u.double() * jv).abs().sum()), tol=dtol,
                    what=("u", "<vjp(u), v>", "v", "vjp"))
                if msg:
                    failures.append(msg)
                else:
                    note = "; ".join(filter(None, [note, _TAYLOR_SET_ASIDE]))
        rest = [j for j in wrt if j != i]
        if failures and grads[i] is None and rest:
            failures[0] += (f"\n    the vjp gave None for it: if it is data, not something "
                            f"to differentiate, leave it out of the check: wrt={rest}")
        checks.append(ArgumentCheck(i, names[i], True, note, ratio, fd_err, fd_allowed, order,
                                    tuple(failures)))
    return _finish("vjp", fname, args, wrt, references, checks, notes)


def check_jvp(f: Callable, jvp: Callable, args: Sequence, *, wrt=None,
              tol: Tol | None = None, directions: int = 2,
              generator: torch.Generator | None = None, taylor: bool = True,
              name: str | None = None) -> CheckReport:
    """Check ``jvp``, a hand-written forward-mode derivative of ``f``.

    ``jvp(tangents, *args)`` returns the output's tangent J t (f(*args)'s shape) for
    ``tangents``, a tuple with one tangent per argument (zeros for those not moved, None for
    arguments that are not floating-point tensors). Each checked argument is moved alone,
    along ``directions`` random tangents. Other arguments as in ``check_vjp``; a tangent in
    a narrower dtype than ``f(*args)`` is a ``TypeError`` naming both dtypes, one holding
    NaN or inf fails naming where. What ``f`` or ``jvp`` raises is raised again naming the
    call and its contract (a jvp reading ``t`` as one tensor is told it is a tuple).
    """
    args, names, wrt, directions, gen, fname, kernel, out = _check_common(
        "jvp", f, jvp, args, wrt, directions, generator, tol, taylor, name)
    args64 = _as64(args)
    in64 = _runs_in_float64(f, args64)
    ref_args = args64 if in64 else tuple(a.detach() if _is_float_tensor(a) else a
                                         for a in args)
    notes, references = [], []
    leaves = {i: ref_args[i].clone().requires_grad_() for i in wrt}
    probe, failed = _traced(f, tuple(leaves.get(i, a) for i, a in enumerate(ref_args)))
    custom = _custom_function(probe) if isinstance(probe, torch.Tensor) else None
    use_autograd = custom is None and isinstance(probe, torch.Tensor) and probe.requires_grad
    reached = _reached(probe, [leaves[i] for i in wrt], wrt) if use_autograd else set()
    if failed:
        notes.append(failed)
    elif custom is not None:
        notes.append(f"f runs the custom autograd.Function {custom}: torch would replay its "
                     "own derivatives, so it is no reference here")
    elif not use_autograd:
        notes.append(f"f's output does not depend on its arguments through torch (numpy "
                     f"inside, or a detach): the reference is {CENTRAL} only")
    prec = _precisions(args, names, wrt, out, ref_args, in64, tol, notes)
    used: set[str] = set()
    checks = []
    jvp64_runs = True  # until the jvp's float64 run is found not to (one note, not one a try)
    for i, a in enumerate(args):
        if i not in wrt:
            why = "not a floating-point tensor" if not _is_float_tensor(a) else "not in wrt"
            checks.append(ArgumentCheck(i, names[i], False, why))
            continue
        label = _label(i, names)
        batch = _batch_size(args, i, out)  # a factor 1/N or N named as the batch's
        failures, ratio, fd_err, fd_allowed, order = [], None, None, None, None
        fd_worst = None  # (error, allowed) of the worst direction
        dtol, record_as = prec[i].tol, prec[i].record_as
        fd_dtype, fd_ok = prec[i].fd_dtype, prec[i].fd_ok
        note = ("torch does not reach it (unused, or through a detach or numpy)"
                if use_autograd and i not in reached else "")
        if not fd_ok and i not in reached:
            failures.append(f"{label}: no reference could check it (torch does not reach it "
                            f"and {fd_dtype} is too coarse for central differences)")

        def along(xi, i=i):
            return f(*_with(ref_args, i, xi))

        for k in range(directions):
            t = _randn_like(a, gen)
            # a copy of t: a jvp may write into its tangents; t is read again after
            tangents = tuple(t.clone() if j == i else (torch.zeros_like(b)
                                                       if _is_float_tensor(b) else None)
                             for j, b in enumerate(args))
            # t * x for a one-argument f: t is the tuple (t0,), which the message says
            got = _call("jvp", jvp, (tangents, *args), f"check_jvp called jvp(tangents, *args) "
                        f"with tangents a tuple of {len(tangents)}, one tangent per argument "
                        "of f (t[0] for the first, even where f has one argument)",
                        [f"tangents (a tuple of {len(tangents)})"] + _shapes(args, names))
            jt = _output("jvp", got).detach()  # float() of it below
            args.check("jvp")
            # before its values are read (a meta tangent holds none), as check_vjp's gradient
            if jt.shape != out.shape or jt.device != out.device:
                raise AssertionError(f"{label}: jvp returned shape {tuple(jt.shape)} on "
                                     f"{jt.device}, f(*args) has {tuple(out.shape)} on "
                                     f"{out.device}")
            if k == 0:  # once per argument: the same tangents again give the same tangent
                jt = jt.clone()  # as it was: a second call may write into a buffer it returned
                # fresh tangents: the first call may have written into its own
                again = _call("jvp", jvp, (tuple(t.clone() if j == i else (
                    torch.zeros_like(b) if _is_float_tensor(b) else None)
                    for j, b in enumerate(args)), *args), "check_jvp called jvp(tangents, "
                    "*args) a second time with the same tangents, as the first (which "
                    "returned): it raised on the repeat, so it keeps state between calls",
                    [f"tangents (a tuple of {len(tangents)})"] + _shapes(args, names),
                    repeat=True)
                args.check("jvp")
                _repeatable("jvp", [(label, jt, again)], tol)
            if _narrower(jt.dtype, out.dtype):
                raise TypeError(f"jvp's tangent of f(*args) (moving {label}): dtype "
                                f"{jt.dtype} for an output of dtype {out.dtype}; expected "
                                f"{out.dtype} (or a wider dtype): a tangent narrower than "
                                "f's output has lost its precision (a cast inside the jvp?), "
                                "so it is not compared")
            if not bool(torch.isfinite(jt).all()):
                why = ""
                if i in reached:  # torch's tangent, to tell a bad point from a bad jvp
                    ref, how = _jvp_reference(along, ref_args[i].detach(),
                                              t.to(ref_args[i].dtype))
                    why = _not_differentiable(jt, ref, f"{how}'s tangent")
                failures.append(f"{label}: jvp returned non-finite values for a tangent of "
                                f"this argument, where f(*args) is finite: {_nonfinite(jt)}; "
                                f"not compared with the references{why}")
                break
            torch_failed = None  # the index of torch's disagreement among failures
            rounding = None
            if i in reached and not failures:
                ref, how = _jvp_reference(along, ref_args[i].detach(), t.to(ref_args[i].dtype))
                used.add(how)
                # the table's atol scaled to a tangent whose largest element is below 1
                etol, scaled = _at_scale(dtol, ref, prec[i].dtype, tol is not None)
                # the reference in float64, the tangent narrower: its rounding is allowed
                # where a comparison fails (tol= given: compared at it, as given)
                if tol is None and in64 and a.dtype != torch.float64:
                    rounding = _Rounding(lambda i=i, t=t: _own_dtype_jvp(f, args, i, t), ref,
                                         etol, a.dtype, f"{how}'s tangent", dtol)
                elif tol is None and in64:  # float64's own: the arguments moved by an ulp
                    rounding = _Rounding(
                        lambda i=i, t=t: _own_dtype_jvp(f, _moved_by_an_ulp(args64, wrt), i, t),
                        ref, etol, torch.float64, f"{how}'s tangent", dtol)
                r, msg, why, ctol = _compare_rounded(label, jt, ref, etol, rounding,
                                                     kernel=kernel, reference=how,
                                                     record_as=record_as, batch=batch)
                if msg and scaled and ctol is not dtol:  # not back at the table's (_Rounding)
                    msg += f"\n    {scaled}"
                ratio = r if ratio is None else max(ratio, r)
                if why and msg:
                    msg += f"\n    {why}"
                elif why:
                    note = _noted(note, why)
                if msg:  # central differences along the same tangent still run: below
                    torch_failed = len(failures)
                    failures.append(msg)
            # no element-wise reference, and central differences see projections only, at the
            # argument's tolerance: one wrong element of many hides in the sum. Where the jvp
            # also runs in float64, its float64 tangent takes central differences at float64's
            # floor, and the tangent under test is held to it element by element (as the
            # vjp's float64 run in check_vjp)
            jt_fd, fd_what, fd_record_as = jt, "<w, jvp(t)>", record_as
            if fd_ok and i not in reached and in64 and a.dtype != torch.float64 and \
                    jvp64_runs:
                jt64, why = _jvp_in_float64(jvp, t, i, args64, out.shape)
                if why:
                    jvp64_runs = False
                    notes.append(why)
                elif not bool(torch.isfinite(jt64).all()):
                    why = ("the jvp's float64 tangent is not finite where this one is: not "
                           "used")
                    note = _noted(note, why)
                else:
                    vtol, scaled = _at_scale(dtol, jt64, prec[i].dtype, tol is not None)
                    _, msg = _compare(label, jt, jt64.to(jt.device), kernel=kernel,
                                      reference=JVP64, tol=vtol, record_as=record_as,
                                      batch=batch)
                    if msg:
                        failures.append(msg + (f"\n    {scaled}" if scaled else ""))
                        break
                    jt_fd, fd_what = jt64, "<w, jvp(t)> in float64"
                    # its central differences are float64's, and recorded as such
                    fd_record_as = (torch.float64, record_as[1])
                    used.add(JVP64)
            if fd_ok:
                # no rounding allowance here: a tangent's own elements are what central
                # differences sum, and none of a sweep (tanh, squares and cross-entropy
                # layers, 64 to 8,192 wide) failed them where the element-wise one passed.
                # A float64 tangent at float64's floor, unless the caller loosened tol
                fd_allowed = (max(_FD_FLOOR[torch.float64],
                                  tol.rtol if tol is not None else 0.0)
                              if jt_fd is not jt else max(_FD_FLOOR[fd_dtype], dtol.rtol))
                jv = directional_derivative(along, ref_args[i].detach(),
                                            t.to(ref_args[i].dtype), eps=prec[i].fd_eps)
                w = _randn_like(jv, gen).double()
                fd = float((w * jv.double()).sum())
                scale = float((w * jv.double()).abs().sum())
                ours = float((w.to(jt_fd.device) * jt_fd.double()).sum())
                fd, scale, judged_at, look, kink = _second_look(
                    along, ref_args[i].detach(), t.to(ref_args[i].dtype), prec[i].fd_eps, w,
                    ours, fd, scale, fd_allowed)
                if kink and i in reached and torch_failed is None:
                    # torch's tangent agreed element by element: the kink, not the jvp
                    note = _noted(note, f"{KINK}: central differences set aside, torch's "
                                  "tangent agreed")
                    continue
                err, msg = _fd_compare(label, ours, fd, scale, judged_at, kernel=kernel,
                                       what=fd_what, record_as=fd_record_as)
                fd_err = err if fd_err is None else max(fd_err, err)
                if fd_worst is None or err / judged_at > fd_worst[0] / fd_worst[1]:
                    fd_worst = (err, judged_at)
                if look:
                    note = _noted(note, look)
                if msg and kink:
                    msg += f"; {KINK}: choose a point off it"
                if msg:
                    failures.append(msg)
                    break
                # only where central differences tell torch's tangent from the jvp's
                theirs = float((w.to(ref.device) * ref.double()).sum()) if (
                    torch_failed is not None) else fd
                if torch_failed is not None and abs(theirs - fd) / (scale or 1.0) > fd_allowed:
                    failures[torch_failed] += _graph_hint("jvp", how, fd_err, fd_allowed, k + 1)
            if torch_failed is not None:
                break
            if taylor and k == 0 and a.dtype == torch.float64 and in64 and not failures:
                w = _randn_like(out, gen).double()
                slope = float((w * jt.double()).sum())
                tt = float((t.double() * t.double()).sum())

                def scalar(xi, i=i, w=w):
                    return (w * f(*_with(args64, i, xi)).double()).sum()

                if tt > 0:
                    res = taylor_test(scalar, t.double() * (slope / tt), args64[i],
                                      t.double())
                    order = None if math.isnan(res.order) else res.order
                    if order is not None and not res.consistent and fd_ok:
                        # jv: central differences along this tangent, taken above
                        msg = _taylor_failure(
                            label, res, ours=slope, fd=float((w * jv.double()).sum()),
                            scale=float((w * jv.double()).abs().sum()), tol=dtol,
                            what=("w", "<w, jvp(t)>", "t", "jvp"))
                        if msg:
                            failures.append(msg)
                        else:
                            note = "; ".join(filter(None, [note, _TAYLOR_SET_ASIDE]))
        if fd_worst is not None:  # the report's: the worst direction's error and allowance
            fd_err, fd_allowed = fd_worst
        checks.append(ArgumentCheck(i, names[i], True, note, ratio, fd_err, fd_allowed, order,
                                    tuple(failures)))
    references += sorted(used) + ([CENTRAL] if any(prec[i].fd_ok for i in wrt) else [])
    return _finish("jvp", fname, args, wrt, references, checks, notes)


def _taylor_failure(label: str, t: TaylorTest, *, ours: float, fd: float, scale: float,
                    tol: Tol, what: tuple[str, str, str, str]) -> str | None:
    """A failure where the Taylor remainder shows the derivative is not f's, though it
    passed the tolerance (a loose ``tol``, or central differences alone), else None.

    A fitted order below 1.5 (``TaylorTest.consistent`` false) fails only where the fit can
    be trusted: (1) over the fitted steps the remainder grows steadily with h, each local
    order log(r(h1) / r(h2)) / log(h1 / h2) within ``TAYLOR_LOCAL``: no jump of a step
    function (order 0) or of a kink crossed between steps (relu, max, sort, clamp, median:
    orders of -2 and 4), no wobble of rounding in a sum of large terms; and (2) central
    differences along the same direction, at their own smaller step, measure the same error
    |ours - fd| as the remainder's r(h) / h at the smallest fitted step, within a factor
    ``TAYLOR_AGREE``: the error is in the derivative at x, not in f between x and x + h v (a
    kink crossed by the Taylor steps and not by the central difference's). Both hold for a
    wrong derivative, where r(h) = |e h + c h^2 + ...| -> e h; a right one where f is not
    smooth near x fails one or the other, and its order is reported with a note instead.
    ``what``: the output's weight, the derivative's side, the direction and the mode, as
    the message names them."""
    fit = t.fitted
    local = [math.log(t.remainder[a] / t.remainder[b]) / math.log(t.h[a] / t.h[b])
             for a, b in zip(fit, fit[1:])]
    lo, hi = TAYLOR_LOCAL
    if not all(lo <= p <= hi for p in local):
        return None
    taylor_err, fd_err = t.remainder[fit[-1]] / t.h[fit[-1]], abs(ours - fd)
    if not (fd_err > 0 and 1 / TAYLOR_AGREE <= taylor_err / fd_err <= TAYLOR_AGREE):
        return None
    weight, side, direction, mode = what
    s = scale if scale > 0 else 1.0
    return (f"{label}: against the Taylor remainder: |<{weight}, f(x + h {direction})> - "
            f"<{weight}, f(x)> - h {side}| falls as h^{t.order:.2f} along a random "
            f"{direction}, where an exact derivative gives h^2: {side} = {ours:.9g} where "
            f"central differences give {fd:.9g} (off by {fd_err / s:.3g} of the terms' size "
            f"{scale:.3g}); within the tolerance (rtol {tol.rtol:g}, atol {tol.atol:g}), but "
            f"not f's derivative (taylor=False accepts a {mode} that is approximate on "
            "purpose)")


def _graph_hint(mode: str, reference: str, fd_err: float, fd_allowed: float,
                runs: int) -> str:
    """Said where torch's derivative of f disagrees with the derivative under test and
    central differences agree with it: f's graph is likely broken for torch (a value
    leaves it through float() or .item(), numpy or a detach), so torch differentiates
    another function than the one f computes. Still a failure: central differences see one
    projection per direction, torch the whole derivative."""
    torch_name = {AUTOGRAD: "torch.autograd", FORWARD_AD: "torch.func.jvp"}[reference]
    return (f"\n    {torch_name} disagrees, but {CENTRAL} agree with the {mode} (error "
            f"{fd_err:.3g} of the terms' size, allowed {fd_allowed:.3g}, along {runs} random "
            f"direction{'s' if runs > 1 else ''}): f's graph may be broken for torch "
            "(float(), .item(), numpy or .detach() inside f), so torch differentiates another "
            "function than f computes.\n    Still a failure, as central differences check "
            "projections only: let torch follow f (x.max(), not float(x.max())), or pass f "
            "with its arguments detached (lambda x: f(x.detach())) to check against "
            f"{CENTRAL} alone")


@dataclass(frozen=True)
class _Precision:
    """How finely one argument's derivative can be checked. ``tol``: the tolerance (the
    caller's, else the gradient tolerance of ``dtype``); ``dtype``: the argument's, or f's
    output's where that is narrower (f computes in float32 from float64 arguments, or returns
    .half()): f's output holds no more, and torch's derivative of it none either; the
    records carry ``dtype``. Central differences run in ``fd_dtype``, the narrower of the
    dtype f runs in and its output there, with the step ``fd_eps`` of that dtype (None: the
    default of the arguments'); ``fd_ok``: fine enough for them (float64, float32)."""

    tol: Tol
    dtype: torch.dtype
    device: torch.device
    fd_dtype: torch.dtype
    fd_eps: float | None

    @property
    def fd_ok(self) -> bool:
        return self.fd_dtype in _FD_FLOOR

    @property
    def record_as(self) -> tuple[torch.dtype, torch.device]:
        return self.dtype, self.device


def _precisions(args: tuple, names: list, wrt: list[int], out: torch.Tensor, ref_args: tuple,
                in64: bool, tol: Tol | None, notes: list) -> dict[int, _Precision]:
    """Each checked argument's ``_Precision``, with notes where f's output is narrower than
    an argument and where central differences are skipped."""
    ref_out = torch.float64 if in64 else out.dtype  # f's output where the references run
    prec, narrowed, coarse = {}, {}, {}
    for i in wrt:
        a = args[i]
        dtype = a.dtype
        if _narrower(out.dtype, a.dtype):
            dtype = out.dtype
            if _narrower(a.dtype, out.dtype):  # float16 and bfloat16: the looser of the two
                dtype = max(a.dtype, out.dtype, key=lambda d: GRAD[_known(d)].rtol)
            if dtype != a.dtype:
                narrowed.setdefault((a.dtype, dtype), []).append(_label(i, names))
        fd_dtype = ref_args[i].dtype
        if _narrower(ref_out, fd_dtype):
            fd_dtype = ref_out
        if fd_dtype not in _FD_FLOOR:
            coarse.setdefault(fd_dtype, []).append(_label(i, names))
        fd_eps = (float(torch.finfo(fd_dtype).eps) ** (1 / 3)
                  if fd_dtype != ref_args[i].dtype else None)
        prec[i] = _Precision(tol if tol is not None else tol_for(_known(dtype), "grad"),
                             dtype, a.device, fd_dtype, fd_eps)
    for (arg_dtype, dtype), labels in narrowed.items():
        notes.append(
            f"f(*args) is {out.dtype}, narrower than {', '.join(labels)} ({arg_dtype}): "
            + (f"compared at {dtype}'s gradient tolerance, the precision f's output holds "
               "(pass tol= for another, or compute f in its arguments' dtype)"
               if tol is None else "compared at the tol passed"))
    for dtype, labels in coarse.items():
        notes.append(f"{CENTRAL} skipped for {', '.join(labels)}: f runs in or returns "
                     f"{dtype} there, too coarse for them (f does not run in float64)")
    return prec


def _reached(out: torch.Tensor, leaves: list[torch.Tensor], wrt: list[int]) -> set[int]:
    """The checked arguments (``leaves``, in the order of ``wrt``) that torch's graph of
    ``out`` reaches: the others are unused, detached or passed through numpy."""
    try:
        got = torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)
    except RuntimeError:
        return set()
    return {i for i, g in zip(wrt, got) if g is not None}


def _jvp_reference(g: Callable, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, str]:
    """J t of g at x: forward mode (torch.func.jvp) where g has forward-mode rules, else
    autograd's double-backward (torch.autograd.functional.jvp)."""
    try:
        load_forward_mode()  # torch's jit.script warning at its first forward-mode call
        _, jt = torch.func.jvp(g, (x,), (t,))
        return jt.detach(), FORWARD_AD
    except (RuntimeError, NotImplementedError):
        _, jt = torch.autograd.functional.jvp(g, x, t)
        return jt.detach(), AUTOGRAD


def _known(dtype: torch.dtype) -> torch.dtype:
    if dtype not in GRAD:
        raise TypeError(f"args: no gradient tolerance for dtype {dtype}; known: "
                        f"{sorted(map(str, GRAD))} (pass tol=)")
    return dtype


def _batch_size(args: tuple, i: int, out: torch.Tensor) -> int | None:
    """The batch size N that names a constant factor 1/N or N in args[i]'s signature (a mean
    over the batch where a sum is due), read from the arguments' leading dimension where
    that is unambiguous: where f's output has dimensions, its leading one if an argument
    other than args[i] shares it (x (N, in) beside W (out, in) for x @ W.T + b: N, for b's
    gradient too); for a scalar f (a loss), the one leading dimension of every argument
    with dimensions, two at least (pred (N, C) and y (N,)). None where there is no such
    one size (a scalar f of x (N, in) and W (out, in)), and for N = 1."""
    lead = [a.shape[0] for j, a in enumerate(args)
            if isinstance(a, torch.Tensor) and a.dim() >= 1 and (j != i or out.dim() == 0)]
    sizes = set(lead) & {out.shape[0]} if out.dim() >= 1 else set(lead) if len(lead) >= 2 \
        else set()
    return next(iter(sizes)) if len(sizes) == 1 and next(iter(sizes)) > 1 else None


def _label(i: int, names: list[str | None]) -> str:
    return f"args[{i}]" + (f" ({names[i]})" if names[i] else "")


def _finish(mode, fname, args, wrt, references, checks, notes) -> CheckReport:
    dtypes = sorted({str(args[i].dtype).removeprefix("torch.") for i in wrt})
    report = CheckReport(mode=mode, function=fname, dtype="/".join(dtypes),
                         references=tuple(references), arguments=tuple(checks),
                         notes=tuple(notes))
    wrong = [a for a in checks if a.failures]
    if wrong:
        body = "\n".join(f"- {m}" for a in wrong for m in a.failures)
        raise AssertionError(
            f"check_{mode} of {fname}: wrong derivative for "
            + ", ".join(a.label for a in wrong) + f"\n{body}\n\n{report}")
    if not references:
        raise AssertionError(f"check_{mode} of {fname}: no reference could check it ("
                             + "; ".join(notes) + ")")
    return report
