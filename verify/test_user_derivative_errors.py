"""What the user's f, vjp or jvp raises, and a call its own signature cannot take, said with
the call and its contract; and a constant factor of 1/N or N named as the batch's."""

from __future__ import annotations

import pytest
import torch

from handgrad.testing import check_jvp, check_vjp, signature
from handgrad.testing.compare import unrecorded
from handgrad.testing.tolerances import tol_for

JVP_CONTRACT = ("t is a tuple of tangents, one per argument (t[0] for args[0]), even for one "
                "argument")
VJP_CONTRACT = "g is the cotangent, of f(*args)'s shape, then f's arguments in f's order"


def _x(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _layer_args():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(5, 4, dtype=torch.float64, generator=g),
            torch.randn(3, 4, dtype=torch.float64, generator=g),
            torch.randn(3, dtype=torch.float64, generator=g))


def layer(x, W, b):
    return x @ W.t() + b


# --- an exception raised by the user's f or derivative -----------------------------------


def test_a_jvp_reading_its_tangents_as_one_tensor_is_told_the_contract():
    """The user's report: t * (1 - tanh(x)^2) with t the tuple (t0,) raised torch's
    'only integer tensors of a single element can be converted to an index', which said
    nothing of what t is."""
    with pytest.raises(TypeError) as err:
        check_jvp(torch.tanh, lambda t, x: (1 - torch.tanh(x) ** 2) * t, (_x(),))
    text = str(err.value)
    assert text.startswith("jvp(t, *args) raised TypeError: only integer tensors of a single "
                           "element can be converted to an index; " + JVP_CONTRACT)
    # chained from the original, whose type it keeps
    assert isinstance(err.value.__cause__, TypeError)
    assert "only integer tensors" in str(err.value.__cause__)
    assert "jvp(t, *args)" not in str(err.value.__cause__)


@pytest.mark.parametrize("exc", [ValueError, RuntimeError, IndexError, NotImplementedError])
def test_what_a_vjp_raises_keeps_its_type_and_names_the_call(exc):
    def vjp(g, x, W, b):
        raise exc("a student's bug")

    with pytest.raises(exc) as err:
        check_vjp(layer, vjp, _layer_args())
    assert type(err.value) is exc
    assert str(err.value).startswith(f"vjp(g, *args) raised {exc.__name__}: a student's bug; "
                                     + VJP_CONTRACT)
    assert type(err.value.__cause__) is exc and str(err.value.__cause__) == "a student's bug"
    # how it was called, in order, still in the notes
    assert err.value.__notes__[-1] == (
        "raised by the derivative under test, given in this order: cotangent (5, 3), "
        "args[0] (x) (5, 4), args[1] (W) (3, 4), args[2] (b) (3,)")


def test_what_f_raises_names_the_call_of_f():
    def f(x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError) as err:
        check_vjp(f, lambda g, x: g, (_x(),))
    assert str(err.value).startswith(
        "f(*args) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied; f is given "
        "the entries of args as its positional arguments, in order")
    assert isinstance(err.value.__cause__, RuntimeError)
    assert err.value.__notes__[-1] == "raised by f, given in this order: args[0] (x) (5,)"


@pytest.mark.parametrize("mode", ["vjp", "jvp"])
def test_a_derivative_raising_on_its_repeat_says_it_keeps_state(mode):
    calls = []

    def once(first, x):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("a buffer already used")
        return first * torch.cos(x) if mode == "vjp" else first[0] * torch.cos(x)

    check = check_vjp if mode == "vjp" else check_jvp
    with pytest.raises(RuntimeError) as err:
        check(torch.sin, once, (_x(),))
    call = "vjp(g, *args)" if mode == "vjp" else "jvp(t, *args)"
    assert str(err.value).startswith(
        f"{call} raised RuntimeError: a buffer already used on its second call at the same "
        "point (the first returned): it keeps state between calls; ")


def test_an_assertion_error_from_inside_the_derivative_is_not_wrapped():
    # a check's verdict (a nested check in the user's code, or an assert) stays as it is
    def vjp(g, x):
        raise AssertionError("args[0] (x): a nested check's verdict")

    with pytest.raises(AssertionError) as err:
        check_vjp(torch.sin, vjp, (_x(),))
    assert str(err.value) == "args[0] (x): a nested check's verdict"
    assert err.value.__cause__ is None


def test_an_exception_whose_type_cannot_take_the_message_is_raised_as_it_is():
    # KeyError quotes its message: rebuilt, it would not read as written
    def vjp(g, x):
        raise KeyError("weight")

    with pytest.raises(KeyError) as err:
        check_vjp(torch.sin, vjp, (_x(),))
    assert err.value.args == ("weight",)
    assert "check_vjp called vjp(cotangent, *args)" in err.value.__notes__[0]


# --- a call the callable's own signature cannot take, refused before any call ---------------


@pytest.mark.parametrize("mode", ["vjp", "jvp"])
def test_a_derivative_with_too_few_parameters_is_refused_before_any_call(mode):
    calls = []

    def f(x):
        calls.append(1)
        return torch.sin(x)

    def one(first):  # forgot the arguments after the cotangent (tangents)
        calls.append(2)
        return first

    check = check_vjp if mode == "vjp" else check_jvp
    with pytest.raises(TypeError) as err:
        check(f, one, (_x(),))
    call = "vjp(g, *args)" if mode == "vjp" else "jvp(t, *args)"
    text = str(err.value)
    assert text.startswith(f"{mode}: test_a_derivative_with_too_few_parameters_is_refused_"
                           f"before_any_call.one(first) cannot be called as {call} with the 2 "
                           "arguments the check gives it (too many positional arguments): ")
    assert (VJP_CONTRACT if mode == "vjp" else JVP_CONTRACT) in text
    assert text.endswith(", args[0] (x) (5,)")
    assert calls == []  # neither f nor the derivative ran


def test_a_vjp_with_too_many_parameters_is_refused_by_name():
    with pytest.raises(TypeError, match=r"vjp: .*\(g, x, W, b\) cannot be called as "
                                        r"vjp\(g, \*args\) with the 3 arguments the check "
                                        r"gives it \(missing a required argument: 'b'\)"):
        check_vjp(lambda x, W: x @ W.t(), lambda g, x, W, b: (g @ W, g.t() @ x),
                  _layer_args()[:2])


def test_an_f_that_cannot_take_args_is_refused_by_name():
    with pytest.raises(TypeError, match=r"f: \S*<lambda>\(x, y\) cannot be called as f\(\*args\) "
                                        r"with the 1 argument the check gives it \(missing a "
                                        r"required argument: 'y'\): f is given the entries of "
                                        r"args as its positional arguments"):
        check_vjp(lambda x, y: x * y, lambda g, x, y: (g * y, g * x), (_x(),))


def test_callables_whose_signature_says_nothing_are_called_as_before():
    # a builtin (no signature), a module (*args), a partial, keyword defaults: all checked
    x = _x()
    assert check_vjp(torch.sin, lambda g, x, scale=1.0: scale * g * torch.cos(x), (x,)).passed
    lin = torch.nn.Linear(4, 3).double()
    X = _layer_args()[0]
    assert check_vjp(lin, lambda g, X: g @ lin.weight, (X,)).passed


# --- a constant factor of 1/N or N: the batch's ---------------------------------------------


def _bias_failure(bias_grad) -> str:
    def vjp(g, x, W, b):
        return g @ W, g.t() @ x, bias_grad(g)

    with unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(layer, vjp, _layer_args())
    return str(err.value)


def test_a_bias_gradient_averaged_over_the_batch_is_named_a_mean_for_a_sum():
    # the user's: g.mean(0) for g.sum(0), reported as 'a constant factor: 0.2 x the reference'
    text = _bias_failure(lambda g: g.mean(0))
    assert ("looks like a constant factor 0.2 = 1/5: a mean over the batch (5) where a sum "
            "is due") in text


def test_a_gradient_summed_where_a_mean_is_due_is_named_the_reverse():
    text = _bias_failure(lambda g: 5 * g.sum(0))
    assert "looks like a constant factor 5: a sum over the batch (5) where a mean is due" in text


def test_a_factor_that_is_not_the_batch_keeps_the_plain_wording():
    text = _bias_failure(lambda g: g.sum(0) / 3)  # 1/3: the output width, not the batch
    assert "looks like a constant factor: 0.333333 x the reference" in text
    assert "over the batch" not in text


def test_a_loss_of_a_batch_names_its_mean():
    # a scalar f: the batch is the one leading dimension of the other arguments
    g = torch.Generator().manual_seed(2)
    p, y = (torch.randn(4, 3, dtype=torch.float64, generator=g) for _ in range(2))

    def loss(p, y):
        return ((p - y) ** 2).sum(1).mean()

    with unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(loss, lambda g, p, y: (2 * g * (p - y) / 16, None), (p, y), wrt=[0])
    assert "a constant factor 0.25 = 1/4: a mean over the batch (4) where a sum is due" \
        in str(err.value)


def test_an_ambiguous_batch_keeps_the_plain_wording():
    # a scalar f of x (5, 4) and W (3, 4): no one leading dimension, no batch to name (W's
    # 3, the other argument's, is no batch of x's gradient)
    X, W, _ = _layer_args()

    def f(x, W):
        return (x @ W.t()).sum()

    with unrecorded(), pytest.raises(AssertionError) as err:
        check_vjp(f, lambda g, x, W: (g * W.sum(0).expand_as(x) / 3, g * x.sum(0).expand_as(W)),
                  (X, W))
    assert "looks like a constant factor: 0.333333 x the reference" in str(err.value)
    assert "over the batch" not in str(err.value)


def test_signature_names_the_batch_it_is_given():
    r = _x(6)
    tol = tol_for(torch.float64, "grad")
    assert signature(r / 6, r, tol, batch=6) == (
        "a constant factor 0.166667 = 1/6: a mean over the batch (6) where a sum is due")
    assert signature(6 * r, r, tol, batch=6) == (
        "a constant factor 6: a sum over the batch (6) where a mean is due")
    assert signature(r / 6, r, tol) == "a constant factor: 0.166667 x the reference"
    assert signature(r / 3, r, tol, batch=6) == "a constant factor: 0.333333 x the reference"


@pytest.mark.parametrize("batch, exc", [(0, ValueError), (-2, ValueError), (2.0, TypeError),
                                        (True, TypeError), ("5", TypeError)])
def test_signature_refuses_a_batch_that_is_no_size(batch, exc):
    r = _x()
    with pytest.raises(exc, match=r"batch: expected the batch size, an integer >= 1, or "
                                  rf"None, got {batch!r}"):
        signature(r, r, tol_for(torch.float64, "grad"), batch=batch)
