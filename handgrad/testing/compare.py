"""One comparison helper for every check in `pytest verify`.

``assert_close`` checks shape, device and a floating dtype before values, and on failure says
which kernel and reference disagree, how many elements, where the worst one is and
by how much, absolute and relative, against the tolerance allowed. Every call under
pytest with handgrad's plugin (or inside ``recording()``) is also recorded (kernel,
reference, dtype, worst errors, tolerance) so a run can report how much precision headroom
each kernel has.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from handgrad.reports.record import SweepRecord
from handgrad.reports.record import VerifyRecord as Record  # the one definition, read by reports/
from handgrad.testing.tolerances import KINDS, Tol, tol_for

RECORDS: list[Record] = []
SWEEPS: list[SweepRecord] = []
# how many recorders are open: handgrad's pytest plugin opens one for its session, and
# ``recording()`` one for its block; with none, nothing is kept (a script that checks in a
# loop would otherwise grow these lists without end)
_recorders = 0


@contextmanager
def recording() -> Iterator[list[Record]]:
    """Keep every comparison made inside (and ``record_sweep``'s sweeps) in ``RECORDS`` and
    ``SWEEPS``; yields a list of this block's own records, filled when the block ends.
    Under pytest with handgrad's plugin loaded, the whole session records; elsewhere
    nothing is kept unless asked for here."""
    global _recorders
    _recorders += 1
    before, mine = len(RECORDS), []
    try:
        yield mine
    finally:
        _recorders -= 1
        mine.extend(RECORDS[before:])


def _current_test() -> str:
    # pytest names the running test in the environment; strip its " (call)" phase
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]


def record_sweep(sweep, *, kernel: str, reference: str, what: str = "", device: str = "cpu"
                 ) -> SweepRecord:
    """Keep a ``finite_diff.StepSweep`` of ``kernel`` for the verify report's V-curve
    (another ``sweep`` is a TypeError naming it, not an AttributeError)."""
    import math

    from handgrad.kernels.finite_diff import StepSweep

    if not isinstance(sweep, StepSweep):
        raise TypeError(f"sweep: expected a handgrad.kernels.finite_diff.StepSweep "
                        f"(step_sweep's result), got {type(sweep).__name__}")

    def finite(v: float) -> float | None:
        return v if math.isfinite(v) else None

    record = SweepRecord(kernel=kernel, reference=reference, what=what, dtype=sweep.dtype,
                         device=device, eps=sweep.eps, error=sweep.error,
                         order=finite(sweep.order), predicted_eps=finite(sweep.predicted_eps),
                         best_eps=sweep.best_eps, test=_current_test())
    if _recorders:
        SWEEPS.append(record)
    return record


@contextmanager
def unrecorded() -> Iterator[None]:
    """Comparisons made inside are left out of the verify report: checks of a planted bug,
    which fail on purpose, are no check of a kernel."""
    before, sweeps = len(RECORDS), len(SWEEPS)
    try:
        yield
    finally:
        del RECORDS[before:]
        del SWEEPS[sweeps:]


def _index(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    idx = []
    for size in reversed(shape):
        idx.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(idx))


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    kernel: str = "actual",
    reference: str = "expected",
    what: str = "",
    tol: Tol | None = None,
    kind: str = "forward",
    check_dtype: bool = True,
    equal_nan: bool = False,
) -> Record:
    """Assert ``actual`` (the kernel's output) matches ``expected`` (the reference's);
    ``kernel`` and ``reference`` name them in the message and the verify report.

    ``expected`` may be of a wider dtype (a float64 reference for a float32 kernel): the
    values are compared in float64, with the tolerance of ``actual``'s dtype from the table
    unless ``tol`` is given. With ``check_dtype`` (default), a non-floating ``actual`` is an
    ``AssertionError`` (a kernel that returned the wrong kind of result); without it, an
    integer or bool ``actual`` is compared exactly against an integer ``expected``, and at
    ``expected``'s tolerance against a floating one, unless ``tol`` is given.

    A NaN fails, even where the reference is NaN at the same place (as in
    ``torch.testing.assert_close``): a NaN is no result, whoever computed it. Pass
    ``equal_nan=True`` where NaN at the same place is the answer both sides should give.
    """
    label = f"{kernel} vs {reference}" + (f" [{what}]" if what else "")
    # the options first: each is read below only on some paths (kind only without tol,
    # check_dtype only for some dtypes), and a wrong one would pass there unseen
    if not isinstance(check_dtype, bool):
        raise TypeError(f"check_dtype: expected True or False, got {check_dtype!r}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise TypeError(
            f"{label}: expected two tensors, got {type(actual).__name__} and "
            f"{type(expected).__name__}"
        )
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{label}: shape mismatch: kernel gave {tuple(actual.shape)}, "
            f"reference gave {tuple(expected.shape)}"
        )
    if actual.device != expected.device:
        raise AssertionError(
            f"{label}: device mismatch: kernel on {actual.device}, reference on {expected.device}"
        )
    if actual.device.type == "meta":
        raise ValueError(f"{label}: tensors on the meta device hold no values to compare")
    if check_dtype and actual.is_complex() and not expected.is_complex():
        raise AssertionError(f"{label}: kernel returned complex dtype {actual.dtype} for a "
                             f"real reference ({expected.dtype})")
    if actual.is_complex() or expected.is_complex():
        raise TypeError(
            f"{label}: complex tensors are not compared (kernel {actual.dtype}, reference "
            f"{expected.dtype}): a cast to real would drop the imaginary part; compare "
            "torch.view_as_real of both")
    if check_dtype and not actual.dtype.is_floating_point:
        raise AssertionError(f"{label}: kernel returned non-floating dtype {actual.dtype}")
    # a reference that holds less than the kernel, judged at the kernel's tolerance
    narrower_reference = (tol is None and expected.dtype.is_floating_point
                          and actual.dtype.is_floating_point
                          and torch.finfo(expected.dtype).eps > torch.finfo(actual.dtype).eps)
    if tol is None and not actual.dtype.is_floating_point:
        # an integer or bool result (check_dtype=False): no rounding of its own; exact
        # against an integer reference, at the reference's tolerance against a floating one
        tol = Tol(0.0, 0.0) if not expected.dtype.is_floating_point else None
        tol_dtype = expected.dtype
    else:
        tol_dtype = actual.dtype
    if tol is None:
        try:
            tol = tol_for(tol_dtype, kind)
        except (TypeError, ValueError) as e:  # no table entry for this dtype
            if not str(e).startswith("dtype:"):  # a bad kind: the caller's error as it is
                raise
            raise TypeError(f"{label}: {e.args[0]}; pass tol=Tol(rtol, atol)") from None
    elif not isinstance(tol, Tol):
        raise TypeError(f"tol: expected a handgrad.testing.Tol or None, got "
                        f"{type(tol).__name__}")
    if not isinstance(equal_nan, bool):
        raise TypeError(f"equal_nan: expected True or False, got {equal_nan!r}")

    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    abs_err = (a - e).abs()
    allowed = tol.atol + tol.rtol * e.abs()
    # NaN in either tensor is a mismatch (unless equal_nan and both are NaN at the same
    # place); an infinity matches only the same infinity
    same = torch.isinf(a) & (a == e)
    if equal_nan:
        same |= torch.isnan(a) & torch.isnan(e)
    abs_err = torch.where(same, torch.zeros_like(abs_err), abs_err)
    bad = ~(abs_err <= allowed) & ~same  # catches NaN too (allowed is NaN where e is)
    bad |= torch.isinf(e) & ~same  # allowed is inf there: anything would pass
    # a NaN result is infinitely wrong: the record holds inf, never NaN (JSON has no NaN)
    abs_err = torch.where(torch.isnan(abs_err) | (bad & torch.isinf(e)),
                          torch.full_like(abs_err, float("inf")), abs_err)
    # relative error against a zero reference is inf (or 0 when the kernel is exact too)
    rel_err = torch.where(abs_err == 0, torch.zeros_like(abs_err), abs_err / e.abs())
    rel_err = torch.where(torch.isnan(rel_err), torch.full_like(rel_err, float("inf")), rel_err)
    ratio = abs_err / allowed.clamp_min(torch.finfo(torch.float64).tiny)
    ratio = torch.where(torch.isnan(ratio), torch.full_like(ratio, float("inf")), ratio)
    ratio = torch.where(same, torch.zeros_like(ratio), ratio)

    numel = a.numel()
    mismatched = int(bad.sum())
    if numel:
        worst = int(torch.argmax(ratio.reshape(-1)))
        worst_abs = float(abs_err.reshape(-1)[worst])
        worst_rel = float(rel_err.reshape(-1)[worst])
        max_abs = float(abs_err.max())
        max_rel = float(rel_err.max())
        worst_ratio = float(ratio.max())
    else:
        worst, worst_abs, worst_rel, max_abs, max_rel, worst_ratio = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    record = Record(
        kernel=kernel,
        reference=reference,
        what=what,
        dtype=_short(actual.dtype),
        device=str(actual.device),
        numel=numel,
        mismatched=mismatched,
        max_abs_err=max_abs,
        max_rel_err=max_rel,
        rtol=tol.rtol,
        atol=tol.atol,
        worst_ratio=worst_ratio,
        passed=mismatched == 0,
        test=_current_test(),
    )
    if _recorders:
        RECORDS.append(record)
    if mismatched:
        where = _index(worst, actual.shape) if actual.dim() else ()
        raise AssertionError(
            f"{label}: tensors are not close ({record.dtype} on {record.device})\n"
            f"Mismatched elements: {mismatched} / {numel} ({100.0 * mismatched / numel:.1f}%)\n"
            f"Worst element at index {where}: kernel {float(a.reshape(-1)[worst]):.9g}, "
            f"reference {float(e.reshape(-1)[worst]):.9g}\n"
            f"  absolute error {worst_abs:.3g}, relative error {worst_rel:.3g} "
            f"(allowed: atol {tol.atol:g} + rtol {tol.rtol:g} * |reference|)\n"
            f"Greatest absolute difference: {max_abs:.3g}; "
            f"greatest relative difference: {max_rel:.3g}"
            + (f"\nThe reference is {_short(expected.dtype)}, narrower than the kernel's "
               f"{record.dtype} whose tolerance judged it: compute the reference in "
               f"{record.dtype} (or pass tol=)" if narrower_reference else "")
        )
    return record
