"""The comparison helper and the tolerance table: what a failing check tells a person."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handgrad.plugin import ALL_DTYPES
from handgrad.testing.compare import RECORDS, assert_close
from handgrad.testing.tolerances import FORWARD, GRAD, Tol, tol_for


@pytest.fixture(autouse=True)
def _not_checks_of_a_kernel():
    """These tests compare made-up tensors, some failing on purpose: what they record is no
    check of a kernel, so it stays out of --verify-report's headroom table."""
    before = len(RECORDS)
    yield
    del RECORDS[before:]


def test_failure_message_names_everything_needed_to_fix_the_bug() -> None:
    expected = torch.zeros(3, 4, dtype=torch.float64)
    actual = expected.clone()
    actual[1, 2] = 1e-3
    actual[2, 0] = 1e-7  # within atol: not a mismatch
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, kernel="backprop", reference="torch_autograd",
                     what="dJ/dW1", tol=Tol(rtol=1e-6, atol=1e-6))
    msg = str(info.value)
    # docs/verification.md quotes this message; keep them in step
    assert msg.splitlines()[0] == (
        "backprop vs torch_autograd [dJ/dW1]: tensors are not close (float64 on cpu)"
    )
    assert "Mismatched elements: 1 / 12 (8.3%)" in msg
    assert "Worst element at index (1, 2): kernel 0.001, reference 0" in msg
    assert "absolute error 0.001" in msg and "relative error" in msg
    assert "allowed: atol 1e-06 + rtol 1e-06 * |reference|" in msg


def test_nan_is_a_mismatch_and_shapes_are_checked_first() -> None:
    e = torch.ones(3)
    a = e.clone()
    a[0] = float("nan")
    with pytest.raises(AssertionError, match="Mismatched elements: 1 / 3"):
        assert_close(a, e, kernel="k", reference="r")
    shape_msg = r"shape mismatch: kernel gave \(3,\), reference gave \(1, 3\)"
    with pytest.raises(AssertionError, match=shape_msg):
        assert_close(e, e.reshape(1, 3), kernel="k", reference="r")
    with pytest.raises(TypeError, match="expected two tensors"):
        assert_close(e, [1.0, 1.0, 1.0], kernel="k", reference="r")


def test_passing_comparison_is_recorded_with_headroom() -> None:
    before = len(RECORDS)
    rec = assert_close(torch.tensor([1.0 + 1e-7]), torch.tensor([1.0], dtype=torch.float64),
                       kernel="k", reference="r", check_dtype=False)
    assert len(RECORDS) == before + 1 and rec.passed and rec.mismatched == 0
    assert 0 < rec.worst_ratio < 1 and rec.dtype == "float32"


def test_an_integer_result_is_compared_exactly_or_at_the_floating_references_tolerance():
    # check_dtype=False lets an integer result through: it has no rounding of its own
    ints = torch.tensor([1, 2, 3])
    rec = assert_close(ints, ints.clone(), kernel="k", reference="r", check_dtype=False)
    assert rec.passed and rec.max_abs_err == 0
    with pytest.raises(AssertionError, match=r"Mismatched elements: 1 / 3"):
        assert_close(ints, torch.tensor([1, 2, 4]), kernel="k", reference="r",
                     check_dtype=False)
    with pytest.raises(AssertionError, match=r"Mismatched elements: 1 / 1"):
        assert_close(torch.tensor([True]), torch.tensor([False]), kernel="k", reference="r",
                     check_dtype=False)
    # against a float64 formula: that reference's own rounding is allowed, no more
    near = torch.tensor([1.0, 2.0, 3.0 + 1e-12], dtype=torch.float64)
    assert assert_close(ints, near, kernel="k", reference="r", check_dtype=False).passed
    with pytest.raises(AssertionError, match=r"Mismatched elements: 1 / 3"):
        assert_close(ints, near + torch.tensor([0.0, 0.0, 1e-3], dtype=torch.float64),
                     kernel="k", reference="r", check_dtype=False)
    # a tol given is used as given
    assert assert_close(ints, torch.tensor([1, 2, 4]), kernel="k", reference="r",
                        check_dtype=False, tol=Tol(rtol=0.0, atol=1.0)).passed


def test_tolerance_table_covers_every_dtype_with_rtol_and_atol() -> None:
    for table in (FORWARD, GRAD):
        assert set(table) == set(ALL_DTYPES)
        for tol in table.values():
            assert tol.rtol > 0 and tol.atol > 0
    # lower precision is never held to a tighter standard, and gradients never tighter
    # than forward values
    order = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    for table in (FORWARD, GRAD):
        rtols = [table[d].rtol for d in order]
        assert rtols == sorted(rtols)
    for d in ALL_DTYPES:
        assert GRAD[d].rtol >= FORWARD[d].rtol and GRAD[d].atol >= FORWARD[d].atol
    with pytest.raises(ValueError, match="rtol and atol must be >= 0"):
        Tol(rtol=-1.0, atol=0.0)
    with pytest.raises(TypeError, match="Tol: rtol: expected a real number >= 0, got str '1e-3'"):
        Tol(rtol="1e-3", atol=0)
    with pytest.raises(TypeError, match="Tol: atol: expected a real number >= 0, got bool True"):
        Tol(rtol=0.1, atol=True)
    with pytest.raises(ValueError, match="rtol and atol must be >= 0"):
        Tol(rtol=float("nan"), atol=0.0)  # a NaN tolerance passes nothing and fails nothing
    for rtol, atol in ((math.inf, 0.0), (0.0, math.inf)):  # would pass every value
        with pytest.raises(ValueError, match=r"rtol and atol must be finite \(an infinite one "
                                             r"passes every value\), got rtol="):
            Tol(rtol=rtol, atol=atol)
    with pytest.raises(ValueError, match="dtype: no finite_diff tolerance for torch.float16"):
        tol_for(torch.float16, "finite_diff")
    with pytest.raises(TypeError, match="dtype: expected a floating torch.dtype, got "
                                        "torch.int64"):
        tol_for(torch.int64)
    with pytest.raises(TypeError, match=r"dtype: expected a floating torch.dtype "
                                        r"\(torch.float32\), got 'float32'"):
        tol_for("float32")
    for bad in ("int64", None, np.float32):  # no hint to a dtype that is not floating
        with pytest.raises(TypeError, match=r"dtype: expected a floating torch.dtype, got "):
            tol_for(bad)
    with pytest.raises(ValueError, match=r"kind: expected one of \[.finite_diff., .forward., "
                                         r".grad.\], got .bogus."):
        assert_close(torch.ones(2), torch.ones(2), kernel="k", reference="r", kind="bogus")


def test_reference_weights_refuse_a_dtype_that_is_not_a_floating_torch_dtype():
    from handgrad.testing.references import course_weights

    with pytest.raises(TypeError, match=r"dtype: expected a floating torch.dtype "
                                        r"\(torch.float64\), got 'float64'"):
        course_weights(3, dtype="float64")
    assert course_weights(3, dtype=torch.float32)[0]["W1"].dtype == torch.float32


def test_relative_error_is_relative_to_the_reference_in_record_and_message() -> None:
    # element 0: |1010 - 1000| = 10, relative 10 / 1000 = 0.01
    # element 1: |0.75 - 0.5| = 0.25, relative 0.25 / 0.5 = 0.5 (the worst against its
    # allowance 1e-6 + 1e-6 * 0.5, and the greatest relative difference)
    # element 2: exact. Absolute and relative errors differ wherever they are not 0
    expected = torch.tensor([1000.0, 0.5, 3.0], dtype=torch.float64)
    actual = torch.tensor([1010.0, 0.75, 3.0], dtype=torch.float64)
    before = len(RECORDS)
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, kernel="k", reference="r",
                     tol=Tol(rtol=1e-6, atol=1e-6))
    msg = str(info.value)
    assert "Worst element at index (1,): kernel 0.75, reference 0.5" in msg
    assert "absolute error 0.25, relative error 0.5 (allowed" in msg
    assert "Greatest absolute difference: 10; greatest relative difference: 0.5" in msg
    assert len(RECORDS) == before + 1
    failed = RECORDS[-1]
    assert not failed.passed and failed.mismatched == 2
    assert (failed.max_abs_err, failed.max_rel_err) == (10.0, 0.5)
    # a passing comparison records the same: 10 / 1000 = 0.01 within rtol 0.02
    passed = assert_close(actual[:1], expected[:1], kernel="k", reference="r",
                          tol=Tol(rtol=0.02, atol=0.0))
    assert passed.passed and (passed.max_abs_err, passed.max_rel_err) == (10.0, 0.01)
    assert passed.worst_ratio == pytest.approx(10 / (0.02 * 1000))


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("kernel_value, reference_value, close", [
    (INF, INF, True),  # the same infinity
    (-INF, -INF, True),
    (NAN, NAN, False),  # a NaN is no result, even where the reference has NaN too
    (1.0, INF, False),  # anything else against an infinity: atol + rtol * inf allows all
    (INF, -INF, False),
    (NAN, INF, False),
    (INF, 1.0, False),
    (NAN, 1.0, False),
])
def test_infinities_and_nans(kernel_value, reference_value, close) -> None:
    e = torch.tensor([2.0, reference_value], dtype=torch.float64)
    a = torch.tensor([2.0, kernel_value], dtype=torch.float64)
    if close:
        rec = assert_close(a, e, kernel="k", reference="r")
        assert rec.passed and rec.worst_ratio == 0.0
        return
    with pytest.raises(AssertionError, match="Mismatched elements: 1 / 2"):
        assert_close(a, e, kernel="k", reference="r")
    rec = RECORDS[-1]
    # the record says how wrong, as a number JSON can hold: inf, never NaN
    assert rec.max_abs_err == INF and rec.worst_ratio == INF and rec.max_rel_err == INF


def test_nan_matches_nan_only_when_asked() -> None:
    a = torch.tensor([2.0, NAN, INF], dtype=torch.float64)
    e = torch.tensor([2.0, NAN, INF], dtype=torch.float64)
    rec = assert_close(a, e, kernel="k", reference="r", equal_nan=True)
    assert rec.passed and rec.worst_ratio == 0.0
    # NaN at another place is still a mismatch when asked
    with pytest.raises(AssertionError, match=r"Mismatched elements: 2 / 3"):
        assert_close(a, torch.tensor([NAN, 2.0, INF], dtype=torch.float64), kernel="k",
                     reference="r", equal_nan=True)
    with pytest.raises(AssertionError, match=r"index \(1,\): kernel nan, reference nan"):
        assert_close(a, e, kernel="k", reference="r")
    with pytest.raises(TypeError, match=r"equal_nan: expected True or False, got 1"):
        assert_close(a, e, kernel="k", reference="r", equal_nan=1)


def test_unrecorded_comparisons_stay_out_of_the_report() -> None:
    from handgrad.testing.compare import SWEEPS, unrecorded

    before, sweeps = len(RECORDS), len(SWEEPS)
    with unrecorded(), pytest.raises(AssertionError):
        assert_close(torch.ones(2), torch.zeros(2), kernel="planted", reference="zeros")
    assert len(RECORDS) == before and len(SWEEPS) == sweeps
    assert_close(torch.ones(2), torch.ones(2), kernel="k", reference="r")
    assert len(RECORDS) == before + 1  # outside it, comparisons are recorded again


def test_comparisons_are_kept_only_where_recorded(monkeypatch) -> None:
    from handgrad.testing import compare

    monkeypatch.setattr(compare, "_recorders", 0)  # as in a script: no pytest session
    before = len(RECORDS)
    assert_close(torch.ones(2), torch.ones(2), kernel="k", reference="r")
    with pytest.raises(AssertionError):
        assert_close(torch.ones(2), torch.zeros(2), kernel="k", reference="r")
    assert len(RECORDS) == before  # a loop of checks grows nothing
    from handgrad.kernels.finite_diff import step_sweep

    x = torch.ones(2, dtype=torch.float64)
    sweep = step_sweep(torch.sin, x, torch.diag(torch.cos(x)), eps_values=[1e-2, 1e-3])
    sweeps = len(compare.SWEEPS)
    compare.record_sweep(sweep, kernel="k", reference="r")
    assert len(compare.SWEEPS) == sweeps  # nor do sweeps
    with compare.recording() as kept:
        assert_close(torch.ones(2), torch.ones(2), kernel="inside", reference="r")
    assert [r.kernel for r in RECORDS[before:]] == ["inside"]
    with compare.recording() as again:  # each block's own records, not every earlier one's
        assert_close(torch.ones(2), torch.ones(2), kernel="second", reference="r")
    assert [r.kernel for r in kept] == ["inside"] and [r.kernel for r in again] == ["second"]
    assert compare._recorders == 0  # the block closed its recorder
    assert_close(torch.ones(2), torch.ones(2), kernel="after", reference="r")
    assert len(RECORDS) == before + 2


def test_a_script_keeps_no_records() -> None:
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from handgrad.testing import assert_close, compare\n"
        "for _ in range(3):\n"
        "    assert_close(torch.ones(2), torch.ones(2))\n"
        "with compare.recording():\n"
        "    assert_close(torch.ones(2), torch.ones(2))\n"
        "print(len(compare.RECORDS))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "1"


def test_the_pytest_session_records(pytester) -> None:
    pytester.makepyfile(test_one="""
        import torch
        from handgrad.testing import assert_close, compare

        def test_it():
            before = len(compare.RECORDS)
            assert_close(torch.ones(2), torch.ones(2))
            assert len(compare.RECORDS) == before + 1
    """)
    from handgrad.testing import compare

    outer = compare._recorders
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist").assert_outcomes(
        passed=1)
    assert compare._recorders == outer  # the inner session closed its own recorder only


@pytest.mark.parametrize("actual, expected", [
    (torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1 + 5j, 2 + 0j])),
    (torch.tensor([1 + 9j]), torch.tensor([1 + 0j])),
    (torch.tensor([1 + 9j]), torch.tensor([1.0])),
])
def test_complex_tensors_are_refused_not_cast_to_real(actual, expected):
    # a cast to float64 drops the imaginary part: 1 and 1+5j would have matched
    with pytest.raises(TypeError, match=r"^k vs r: complex tensors are not compared \(kernel "
                       r"torch\.(float64|complex64), reference torch\.(complex64|float32)\)"):
        assert_close(actual, expected, kernel="k", reference="r", check_dtype=False,
                     tol=Tol(rtol=1e-6, atol=1e-6))
    real = torch.view_as_real(torch.tensor([1 + 9j]))  # the way the message gives works
    assert_close(real, real.clone(), kernel="k", reference="r")


def test_a_kernel_returning_complex_for_a_real_reference_is_a_failure():
    # the kernel's fault, as a non-floating result is: AssertionError, not a usage error
    with pytest.raises(AssertionError, match=r"^k vs r: kernel returned complex dtype "
                       r"torch\.complex64 for a real reference \(torch\.float32\)"):
        assert_close(torch.tensor([1 + 0j]), torch.tensor([1.0]), kernel="k", reference="r")


def test_meta_tensors_are_refused_by_name():
    m = torch.empty(2, device="meta")
    with pytest.raises(ValueError, match="^k vs r: tensors on the meta device hold no values"):
        assert_close(m, m, kernel="k", reference="r")


@pytest.mark.parametrize("factor, exc, words", [
    ("2", TypeError, r"Tol.scaled: factor: expected a real number > 0, got str '2'"),
    (True, TypeError, r"Tol.scaled: factor: expected a real number > 0, got bool True"),
    (None, TypeError, r"Tol.scaled: factor: expected a real number > 0, got NoneType"),
    (0, ValueError, r"Tol.scaled: factor: expected a finite real number > 0, got 0"),
    (-2.0, ValueError, r"Tol.scaled: factor: expected a finite real number > 0, got -2.0"),
    (math.nan, ValueError, r"Tol.scaled: factor: expected a finite real number > 0, got nan"),
    (math.inf, ValueError, r"Tol.scaled: factor: expected a finite real number > 0, got inf"),
    (1e308, OverflowError,
     r"Tol.scaled: factor: 1e\+308 times rtol=10.0, atol=1e-06 overflows"),
])
def test_tol_scaled_refuses_a_factor_that_is_not_a_positive_real_by_name(factor, exc, words):
    """scaled("2") said "can't multiply sequence by non-int of type 'float'", naming nothing."""
    with pytest.raises(exc, match=words):
        Tol(10.0, 1e-6).scaled(factor)


def test_tol_scaled_keeps_valid_factors():
    assert Tol(1e-5, 1e-6).scaled(2) == Tol(2e-5, 2e-6)
    assert Tol(1e-4, 1e-6).scaled(np.float64(0.5)) == Tol(5e-5, 5e-7)


def test_assert_close_refuses_a_check_dtype_that_is_not_a_bool_and_a_bad_kind_with_tol():
    """check_dtype="no" was taken as True; kind="bogus" with tol= passed silently (kind is
    read only where tol is None)."""
    a = torch.arange(4.0)
    with pytest.raises(TypeError, match=r"check_dtype: expected True or False, got 'no'"):
        assert_close(a.long(), a.long(), check_dtype="no")
    with pytest.raises(TypeError, match=r"check_dtype: expected True or False, got None"):
        assert_close(a, a, check_dtype=None)
    with pytest.raises(ValueError, match=r"kind: expected one of \['finite_diff', 'forward', "
                                         r"'grad'\], got 'bogus'"):
        assert_close(a, a, kind="bogus", tol=Tol(0, 0))
    with pytest.raises(ValueError, match=r"kind: expected one of .*, got None"):
        assert_close(a, a, kind=None, tol=Tol(0, 0))
    assert assert_close(a.long(), a.long(), check_dtype=False).passed
    assert assert_close(a, a, kind="grad", tol=Tol(0, 0)).passed
