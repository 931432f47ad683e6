"""What the last adversarial sweep left answered silently or by a raw error: finite
differences of an f narrower than x, directional_check's non-finite numbers, capture's
``cuda`` stand-in and the benchmark harness's internals. Each now gives the right answer
or an error that names the argument."""

from __future__ import annotations

import math

import pytest
import torch

from handgrad.benchmark import not_counted, round_seconds, warm_up
from handgrad.kernels import finite_diff as FD
from handgrad.kernels.capture import capture
from verify.fake_cuda_graph import FakeCuda

F64, F32 = torch.float64, torch.float32
X = torch.tensor([1.0, 2.0], dtype=F64)
EXACT = torch.diag(3 * X**2)  # the Jacobian of x**3, by hand


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- finite differences of an f whose output is narrower than x ---------------------------

NARROW = r"^f: returned torch\.float32 for x of torch\.float64: the default step"


@pytest.mark.parametrize("call", [
    lambda: FD.jacobian(lambda t: (t**3).float(), X),
    lambda: FD.gradient(lambda t: (t**3).sum().float(), X),
    lambda: FD.directional_derivative(lambda t: (t**3).float(), X, torch.ones(2, dtype=F64)),
    lambda: FD.directional_derivative(lambda t: (t**3).float(), X, torch.ones(2, dtype=F64),
                                      richardson=True),
    lambda: FD.directional_derivative(lambda ts: (ts[0] * ts[1]).float(), [X, X],
                                      [torch.ones(2, dtype=F64)] * 2),
    lambda: FD.directional_check(lambda t: (t**3).float(), X,
                                 jvp=lambda v: (3 * X**2 * v).float(), generator=_gen(0)),
], ids=["jacobian", "gradient", "directional_derivative", "richardson", "list_x",
        "directional_check"])
def test_an_f_narrower_than_x_at_the_default_step_is_refused_naming_both_dtypes(call):
    """jacobian(lambda t: (t**3).float(), float64 x) returned a float32 Jacobian 1.1e-2 from
    diag(3 x^2) without a word: float32's rounding over float64's step (6e-6)."""
    with pytest.raises(TypeError, match=NARROW + r".*default_eps\(torch\.float32\) = 0\.00492"):
        call()


def test_an_f_narrower_than_x_at_a_step_given_is_the_callers_choice():
    """eps given (as check_vjp gives its narrower output's step): differenced at it."""
    J = FD.jacobian(lambda t: (t**3).float(), X, eps=FD.default_eps(F32))
    assert J.dtype == F32
    torch.testing.assert_close(J.double(), EXACT, rtol=1e-4, atol=1e-4)
    jv = FD.directional_derivative(lambda t: (t**3).float(), X, torch.ones(2, dtype=F64),
                                   eps=FD.default_eps(F32))
    torch.testing.assert_close(jv.double(), 3 * X**2, rtol=1e-4, atol=1e-4)


def test_an_f_wider_than_x_or_an_empty_x_is_differenced_as_before():
    J = FD.jacobian(lambda t: (t**3).double(), X.float())  # float64 f: finer, accepted
    assert J.dtype == F64
    torch.testing.assert_close(J, EXACT, rtol=1e-4, atol=1e-4)
    # no coordinate, no step: f's dtype does not matter
    assert FD.jacobian(lambda t: t.float().sum().reshape(1), X[:0]).shape == (1, 0)


def test_taylor_test_judges_the_remainder_by_the_rounding_of_fs_output():
    """An f returning float32 for a float64 x had its remainders held to float64's
    rounding floor: the right gradient fitted order -0.14 (consistent=False, 'wrong')."""
    g = _gen(0)
    x = torch.randn(5, generator=g, dtype=F64)

    def f(t):
        return (t**3).sum().float()

    right = FD.taylor_test(f, 3 * x**2, x, generator=_gen(1))
    assert right.consistent and right.order == pytest.approx(2.0, abs=0.1)
    wrong = FD.taylor_test(f, 3 * x**2 * 1.1, x, generator=_gen(1))
    assert not wrong.consistent and wrong.order == pytest.approx(1.0, abs=0.1)


def test_step_sweep_of_an_f_narrower_than_x_is_in_fs_dtype():
    """The differences are float32's: the sweep says so and takes float32's default steps
    (it said float64 and swept 13 steps, 6 of them all rounding)."""
    sweep = FD.step_sweep(lambda t: torch.sin(t).float(), X, torch.diag(torch.cos(X)))
    assert sweep.dtype == "float32"
    assert sweep.eps == tuple(10.0**-k for k in range(1, 8))


# -- directional_check: every number returned is finite ----------------------------------

C = torch.full((6,), 1e308, dtype=F64)
X3 = torch.tensor([1.0, 2.0, 3.0], dtype=F64)


def test_directional_check_where_u_j_v_overflows_names_f():
    """J v finite but <u, J v> past float64's range: fd was nan (seed 76), or the scale inf
    and every error() 0.0, a perfect agreement that was not one (seed 0)."""
    with pytest.raises(OverflowError, match=r"^f: <u, J v> = nan .*overflows float64"):
        FD.directional_check(lambda t: C * t, torch.zeros(6, dtype=F64), jvp=lambda v: C * v,
                             generator=_gen(76), directions=1)
    with pytest.raises(OverflowError, match=r"^f: <u, J v> = .*sum \|u \* J v\| = inf"):
        FD.directional_check(lambda t: 5e307 * torch.sin(t), X3,
                             jvp=lambda v: 5e307 * torch.cos(X3) * v, generator=_gen(0),
                             directions=1)


def test_directional_check_of_a_kernel_returning_nan_or_inf_names_it():
    """forward was nan (errors() nan, which no 'err > tol' catches), reverse inf."""
    with pytest.raises(ValueError, match=r"^jvp: expected finite values, got 3 NaN or inf"):
        FD.directional_check(torch.sin, X3, jvp=lambda v: v * math.nan, generator=_gen(0))
    with pytest.raises(ValueError, match=r"^vjp: expected finite values, got 3 NaN or inf"):
        FD.directional_check(torch.sin, X3, vjp=lambda u: u * math.inf, generator=_gen(0))
    with pytest.raises(ValueError, match=r"^vjp\[1\]: expected finite values"):
        FD.directional_check(lambda ts: ts[0] * ts[1], [X3, X3],
                             vjp=lambda u: [u, u * math.nan], generator=_gen(0))


def test_directional_check_of_a_kernel_whose_inner_product_overflows_names_it():
    big = 1.7e308
    with pytest.raises(OverflowError, match=r"^jvp: <u, jvp\(v\)> = -inf overflows"):
        FD.directional_check(torch.sin, X3, jvp=lambda v: torch.full_like(v, big),
                             generator=_gen(0))
    with pytest.raises(OverflowError, match=r"^vjp: <vjp\(u\), v> = nan overflows"):
        FD.directional_check(torch.sin, X3, vjp=lambda u: torch.full_like(u, big),
                             generator=_gen(0))


def test_directional_check_of_a_right_kernel_still_returns_finite_small_errors():
    d = FD.directional_check(torch.sin, X3, jvp=lambda v: torch.cos(X3) * v,
                             vjp=lambda u: torch.cos(X3) * u, generator=_gen(0))
    for one in d:
        assert all(math.isfinite(e) and e < 1e-8 for e in one.errors().values())


# -- capture's stand-in for torch.cuda ----------------------------------------------------


def test_capture_with_a_cuda_that_is_no_stand_in_is_a_type_error_naming_cuda():
    """cuda="x" had failed in AttributeError: 'str' object has no attribute 'Stream'."""
    with pytest.raises(TypeError, match=r"^cuda: expected None \(torch\.cuda\) or a "
                       r"stand-in.*got str 'x', which lacks Stream, current_stream"):
        capture(lambda t: t * 2, torch.ones(2), cuda="x")

    class NoGraph(FakeCuda):
        graph = None

    with pytest.raises(TypeError, match=r"which lacks graph$"):
        capture(lambda t: t * 2, torch.ones(2), cuda=NoGraph())
    step = capture(lambda t: t * 2, torch.ones(2), cuda=FakeCuda())  # a full one still works
    assert step().tolist() == [2.0, 2.0]


# -- the benchmark harness's internals ----------------------------------------------------


@pytest.mark.parametrize("call, error, match", [
    (lambda: warm_up(lambda: None, 1.5), TypeError, r"^times: expected an integer >= 1"),
    (lambda: warm_up(lambda: None, 0), ValueError, r"^times: expected an integer >= 1"),
    (lambda: warm_up(None, 2), TypeError, r"^fn: expected a callable"),
    (lambda: round_seconds(lambda: None, None, [math.nan, 1e-3], [], budget=0.1),
     ValueError, r"^run_times\[0\]: expected seconds \(a finite number >= 0\), got nan"),
    (lambda: round_seconds(lambda: None, None, [1e-3], [-1.0], budget=0.1),
     ValueError, r"^ref_times\[0\]: expected seconds"),
    (lambda: round_seconds(lambda: None, None, 1e-3, [], budget=0.1),
     TypeError, r"^run_times: expected a list of seconds, got float"),
    (lambda: round_seconds(lambda: None, None, [1e-3], [], budget=math.nan),
     ValueError, r"^budget: expected seconds"),
    (lambda: round_seconds(lambda: None, None, [1e-3], [], budget="1"),
     TypeError, r"^budget: expected seconds"),
    (lambda: round_seconds(lambda: None, None, [1e-3], [], budget=0.1,
                           time_call=lambda fn: math.nan),
     ValueError, r"^time_call: expected seconds"),
    (lambda: round_seconds(lambda: None, 3, [1e-3], [], budget=0.1),
     TypeError, r"^ref: expected a callable of no arguments or None"),
    (lambda: round_seconds(None, None, [1e-3], [], budget=0.1),
     TypeError, r"^run: expected a callable of no arguments, got NoneType"),
    (lambda: round_seconds(lambda: None, None, [1e-3], [], budget=0.1, time_call=3),
     TypeError, r"^time_call: expected a callable"),
    (lambda: not_counted(None), TypeError, r"^info: expected a dict of measure's keywords"),
    (lambda: not_counted({"kernel": "k", "device": "xyz"}), ValueError,
     r"^device: expected a device string.*got 'xyz'"),
    (lambda: not_counted({"kernel": "k"}), ValueError, r"^device: .*got None"),
    (lambda: not_counted({"kernel": "k", "device": "cpu", "flops": "a"}), TypeError,
     r"^flops: expected a finite number >= 0"),
    (lambda: not_counted({"kernel": "k", "device": "cpu", "flops": math.nan}), ValueError,
     r"^flops: expected a finite number >= 0"),
], ids=["warm_up_float", "warm_up_zero", "warm_up_fn", "round_nan", "round_negative",
        "round_not_list", "budget_nan", "budget_str", "time_call_nan", "ref_not_callable",
        "run_none", "time_call_int", "not_counted_none", "device_xyz", "device_missing",
        "flops_str", "flops_nan"])
def test_the_benchmark_internals_refuse_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_benchmark_internals_still_answer_valid_calls():
    seconds = iter([5e-4, 2e-4, 3e-4])
    assert round_seconds(lambda: None, None, [1e-3], [], budget=1.0,
                         time_call=lambda fn: next(seconds)) == 2e-4
    assert len(warm_up(lambda: None, 2)) == 2
    assert not_counted({"kernel": "k", "device": torch.device("cpu"), "flops": 0}) is None


# -- the sweep of handgrad.testing and kernels --------------------------------------------


def test_diagnose_of_an_empty_batch_with_a_mean_is_refused_as_backprop_refuses_it():
    """The reference's mean over no samples is nan and its gradients 0: zero gradients had
    been told 'every dW and db agrees with torch.autograd'."""
    from handgrad.kernels import backprop as bp
    from handgrad.kernels import mlp
    from handgrad.testing import diagnose

    net = mlp.init_mlp([3, 4, 2], generator=_gen(0), dtype=F64)
    x, y = torch.zeros(0, 3, dtype=F64), torch.zeros(0, 2, dtype=F64)
    grads = bp.backprop(net, x, y, reduction="sum")
    with pytest.raises(ValueError, match=r"^x: an empty batch \(shape \(0, 3\)\) has no mean "
                       r"loss; expected at least one sample, or reduction='sum'"):
        diagnose(grads, net, x, y)
    assert diagnose(grads, net, x, y, reduction="sum").layer is None  # sum: J = 0, agrees


def test_record_sweep_of_something_else_names_sweep():
    """record_sweep(None) was AttributeError: 'NoneType' object has no attribute 'dtype'."""
    from handgrad.testing.compare import record_sweep

    with pytest.raises(TypeError, match=r"^sweep: expected a handgrad\.kernels\.finite_diff"
                       r"\.StepSweep \(step_sweep's result\), got NoneType"):
        record_sweep(None, kernel="k", reference="r")


def test_a_step_sweep_with_an_error_per_step_missing_is_refused():
    """StepSweep(eps=(1.0,), error=()) gave best_eps nan, and to_frame pandas' raw
    ValueError (All arrays must be of the same length)."""
    with pytest.raises(ValueError, match=r"^error: expected one error per step \(1 eps\), "
                       r"got 0"):
        FD.StepSweep(eps=(1.0,), error=())
    assert FD.StepSweep(eps=(1.0, 0.1), error=(0.5, 0.01)).best_eps == 0.1
