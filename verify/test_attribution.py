"""Attribution of a wrong backprop: the first layer from the output side whose gradient
disagrees, and the bug's signature, on copies of the kernel with each usual bug planted."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from handgrad.kernels import backprop as bp
from handgrad.testing.attribution import diagnose
from handgrad.testing.compare import unrecorded
from handgrad.testing.references import autograd_grads
from verify.backprop_cases import check_all, problem
from verify.planted import BATCH, BUG_IDS, BUGS, Bug, planted_backprop


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("bug", BUGS, ids=BUG_IDS)
def test_each_planted_bug_is_named_with_its_layer_and_signature(bug: Bug, activation: str):
    net, x, y = problem(activation)
    grads = planted_backprop(bug).backprop(net, x, y)
    d = diagnose(grads, net, x, y)
    assert (d.layer, d.tensor, d.signature) == (bug.layer, bug.tensor, bug.signature), d.message()
    # every layer nearer the output than the culprit agrees
    assert all(c.agrees for c in d.checks if c.layer > bug.layer)
    assert f"is layer {bug.layer} ({bug.tensor}{bug.layer})" in d.message()


def test_the_factor_is_named_as_the_batch_size():
    net, x, y = problem()
    bug = BUGS[BUG_IDS.index("missing_1_over_N")]
    d = diagnose(planted_backprop(bug).backprop(net, x, y), net, x, y)
    assert f"dW4 = 8 (N = {BATCH}, the batch size) x reference" in d.detail


def test_the_right_kernel_gets_no_attribution():
    net, x, y = problem()
    d = diagnose(bp.backprop(net, x, y), net, x, y)
    assert d.layer is None and d.signature is None and all(c.agrees for c in d.checks)
    # every layer's dW and db, then the input gradient
    assert len(d.checks) == 2 * net.depth + 1
    assert (d.checks[-1].layer, d.checks[-1].tensor) == (0, "dx") and d.input_checked
    assert d.message().startswith("attribution: every dW and db agrees with torch.autograd, "
                                  "and so does the input gradient dx\n")
    assert "\n  input dx: ok (worst error" in d.message()


def test_an_unknown_bug_is_located_but_not_named():
    net, x, y = problem()
    g = bp.backprop(net, x, y)
    noisy = g.biases[1] + 1e-3 * torch.arange(6, dtype=torch.float64)  # no usual signature
    bad = bp.Gradients(g.loss, g.weights, (g.biases[0], noisy, *g.biases[2:]), g.input)
    d = diagnose(bad, net, x, y)
    assert (d.layer, d.tensor, d.signature) == (2, "db", None)
    assert "no known bug signature fits" in d.message()


def test_a_failing_backprop_check_says_where_the_error_starts():
    net, x, y = problem()
    bug = BUGS[BUG_IDS.index("activation_of_layer3_in_layer2")]
    grads = planted_backprop(bug).backprop(net, x, y)
    ref = autograd_grads(net, x, y, loss="squared")
    with unrecorded(), pytest.raises(AssertionError) as info:
        check_all(grads, ref, reference="torch_autograd",
                  problem=(net, x, y, "squared", "mean"))
    text = str(info.value)
    # the comparison helper's report of the first tensor it met (dW1, input side) ...
    assert "backprop vs torch_autograd [dJ/dW1]" in text
    # ... and the attribution: the error starts two layers nearer the output
    assert "is layer 2 (dW2); signature: activation of the wrong layer" in text
    assert "rho'(z_3) of layer 3" in text


def test_a_bug_whose_line_left_the_kernel_is_refused():
    # the planted copies replace a line of kernels/backprop.py: if the kernel changes so
    # that the line is gone, say so instead of testing an unplanted copy
    ghost = Bug("ghost", "    this line is not in the kernel\n", "", 1, "dW", "sign flip")
    with pytest.raises(AssertionError, match="ghost: the line to replace is not once in"):
        planted_backprop(ghost)


def _with_weight(g: bp.Gradients, i: int, w: torch.Tensor) -> bp.Gradients:
    return bp.Gradients(g.loss, (*g.weights[:i], w, *g.weights[i + 1:]), g.biases, g.input)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("target", ["indices", "probs"])
def test_cross_entropy_is_diagnosed(target: str, reduction: str):
    net, x, _ = problem()
    gen = torch.Generator().manual_seed(1)
    y = (torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]) if target == "indices"
         else torch.softmax(torch.randn(BATCH, 2, generator=gen, dtype=torch.float64), 1))
    g = bp.backprop(net, x, y, loss="cross_entropy", reduction=reduction)
    d = diagnose(g, net, x, y, loss="cross_entropy", reduction=reduction)
    assert d.layer is None and all(c.agrees for c in d.checks), d.message()
    # dW3 negated by hand: layer 4 agrees, layer 3 is a sign flip
    d = diagnose(_with_weight(g, 2, -g.weights[2]), net, x, y, loss="cross_entropy",
                 reduction=reduction)
    assert (d.layer, d.tensor, d.signature) == (3, "dW", "sign flip"), d.message()


def test_cross_entropy_of_a_single_sample_is_diagnosed():
    net, x, _ = problem()
    y = torch.tensor(1)
    g = bp.backprop(net, x[0], y, loss="cross_entropy")
    assert diagnose(g, net, x[0], y, loss="cross_entropy").layer is None


def test_log_cosh_with_large_residuals_blames_no_right_layer():
    # residuals of ~1e4: cosh overflows float64 (|r| > 710), tanh(r) is +-1
    net, x, y = problem()
    y = 1e4 * y
    g = bp.backprop(net, x, y, loss="log_cosh")
    d = diagnose(g, net, x, y, loss="log_cosh")
    assert d.layer is None, d.message()
    assert all(c.worst_ratio < 1 for c in d.checks)
    d = diagnose(_with_weight(g, 3, 2 * g.weights[3]), net, x, y, loss="log_cosh")
    assert (d.layer, d.tensor, d.signature) == (4, "dW", "constant factor"), d.message()
    assert "dW4 = 2 (2) x reference" in d.detail


def test_the_loss_and_reduction_asked_for_are_the_ones_diagnosed():
    net, x, y = problem()
    # a squared-loss gradient is not a log-cosh one: layer 4, the output layer, disagrees
    d = diagnose(bp.backprop(net, x, y, loss="squared"), net, x, y, loss="log_cosh")
    assert (d.layer, d.tensor) == (4, "dW")
    # a sum where the mean is asked for: N times too large
    d = diagnose(bp.backprop(net, x, y, reduction="sum"), net, x, y, reduction="mean")
    assert f"dW4 = 8 (N = {BATCH}, the batch size) x reference" in d.detail
    d = diagnose(bp.backprop(net, x, y, reduction="sum"), net, x, y, reduction="sum")
    assert d.layer is None


def test_an_empty_batch_of_class_indices_is_diagnosed_with_a_sum():
    net, x, _ = problem()
    y = torch.zeros(0, dtype=torch.int64)
    g = bp.backprop(net, x[:0], y, loss="cross_entropy", reduction="sum")
    d = diagnose(g, net, x[:0], y, loss="cross_entropy", reduction="sum")
    assert d.layer is None and all(c.worst_ratio == 0 for c in d.checks)


def _bad(**change):
    net, x, y = problem()
    call = dict(grads=bp.backprop(net, x, y), net=net, x=x, y=y) | change
    return lambda: diagnose(call.pop("grads"), call.pop("net"), call.pop("x"), call.pop("y"),
                            **call)


@pytest.mark.parametrize("call, exc, words", [
    (_bad(loss="Squared"), ValueError,
     r"loss: expected one of \['squared', 'log_cosh', 'cross_entropy'\], got 'Squared'"),
    (_bad(loss=None), ValueError, "loss: expected one of .*, got None"),
    (_bad(reduction="Mean"), ValueError, r"reduction: expected one of \['mean', 'sum'\], "
                                         r"got 'Mean'"),
    (_bad(grads=None), TypeError, "grads: expected a handgrad.kernels.backprop.Gradients "
                                  r"\(backprop's result\), got NoneType"),
    (_bad(grads=bp.Gradients(torch.zeros(()), (), (), torch.zeros(()))), ValueError,
     "grads: 0 weights gradients for a network of 4 layers"),
    (_bad(net="mlp"), TypeError, "net: expected a handgrad.kernels.mlp.MLP, got str"),
    (_bad(x=problem()[1].numpy()), TypeError, "x: expected a torch.Tensor, got ndarray"),
    (_bad(x=problem()[1].to("meta")), ValueError, "x: on meta, the network on cpu; "
                                                  "expected one device"),
    (_bad(y=problem()[2].to("meta")), ValueError, "y: on meta, the network on cpu"),
    (_bad(x=problem()[1].to_sparse()), ValueError, r"x: expected a dense \(torch.strided\) "
                                                   "tensor, got a torch.sparse_coo tensor"),
    (_bad(grads=bp.Gradients(torch.zeros(()), (torch.zeros(6, 5), torch.zeros(6, 6).to("meta"),
                                               torch.zeros(6, 6), torch.zeros(2, 6)),
                             tuple(torch.zeros(k) for k in (6, 6, 6, 2)), torch.zeros(()))),
     ValueError, r"grads.weights\[1\]: on meta, the network on cpu"),
    (_bad(grads=bp.Gradients(torch.zeros(()), tuple(torch.zeros(s, dtype=torch.int64) for s in
                                                    ((6, 5), (6, 6), (6, 6), (2, 6))),
                             tuple(torch.zeros(k) for k in (6, 6, 6, 2)), torch.zeros(()))),
     TypeError, r"grads.weights\[0\]: expected a floating-point tensor, got dtype torch.int64"),
    (_bad(x=problem()[1].long()), TypeError, "x: expected a floating-point tensor, got "
                                             "dtype torch.int64"),
    (_bad(x=problem()[1][:, :4]), ValueError, r"x: expected shape \(N, 5\) or \(5,\) for "
                                              r"this network, got \(8, 4\)"),
    (_bad(x=problem()[1] * float("nan")), ValueError, "x: holds NaN or inf"),
    (_bad(y=problem()[2].numpy()), TypeError, "y: expected a torch.Tensor, got ndarray"),
    (_bad(y=problem()[2][:3]), ValueError, r"y: expected 16 values \(shape \(8, 2\)\)"),
    (_bad(y=problem()[2].long()), TypeError, "y: for loss='squared' expected a "
                                             "floating-point tensor, got dtype torch.int64"),
    (_bad(y=torch.full((8, 2), float("inf"), dtype=torch.float64)), ValueError,
     "y: holds NaN or inf"),
    (_bad(y=torch.full((8,), 2), loss="cross_entropy"), ValueError,
     r"y: class indices must lie in \[0, 2\) for 2 outputs, got values from 2 to 2"),
    (_bad(y=torch.zeros(7, dtype=torch.int64), loss="cross_entropy"), ValueError,
     r"y: for loss='cross_entropy' expected 8 class indices"),
])
def test_diagnose_refuses_bad_input_by_name(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


# --- the input gradient and the missing activation derivative, planted the way
# verify/planted.py plants BUGS: one line of kernels/backprop.py replaced in a copy

_RHO_LINE = "            delta = _times_activation_grad_(net.activation, dh, hs[i], spare)\n"


def _missing_derivative(layer: int) -> Bug:
    """rho'(z) left out of delta in ``layer`` (1-based): at the loop's index i the kernel
    makes delta of layer i, dJ/dh_i * rho'(z_i)."""
    return Bug(f"missing_activation_derivative_in_layer{layer}", _RHO_LINE,
               f"            delta = dh if i == {layer} else _times_activation_grad_(\n"
               "                net.activation, dh, hs[i], spare)\n",
               layer, "dW", "missing activation derivative")


SIGN_FLIP_DX = Bug("sign_flip_dx", "    dx = dh.squeeze(0) if single else dh\n",
                   "    dx = -(dh.squeeze(0) if single else dh)\n", 0, "dx", "sign flip")


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_a_missing_activation_derivative_is_named_with_its_layer(activation: str, layer: int):
    net, x, y = problem(activation)
    bug = _missing_derivative(layer)
    d = diagnose(planted_backprop(bug).backprop(net, x, y), net, x, y)
    assert (d.layer, d.tensor, d.signature) == (layer, "dW", "missing activation derivative"), \
        d.message()
    assert all(c.agrees for c in d.checks if c.layer > layer)
    assert f"dW{layer} is what delta_{layer} = dJ/dh_{layer} gives: layer {layer}'s " \
        f"{activation}'" in d.detail


# rho and rho' from rho's output, written out by hand as a student would
_STUDENT_RHO = {"tanh": (torch.tanh, lambda h: 1 - h * h),
                "sigmoid": (torch.sigmoid, lambda h: h * (1 - h)),
                "relu": (torch.relu, lambda h: (h > 0).to(h.dtype))}


def _student(net, x, y, skip: int | None = None) -> bp.Gradients:
    """A hand-written backprop of the mean squared loss (the user's report); ``skip``: the
    layer (1-based) whose rho' it forgets."""
    rho, rho_prime = _STUDENT_RHO[net.activation]
    hs = [x]
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        z = hs[-1] @ w.t() + b
        hs.append(rho(z) if i < net.depth - 1 else z)
    delta = (hs[-1] - y) / x.shape[0]
    dws, dbs = [None] * net.depth, [None] * net.depth
    for i in reversed(range(net.depth)):
        dws[i], dbs[i] = delta.t() @ hs[i], delta.sum(0)
        dh = delta @ net.weights[i]  # dJ/dh_i, h_i = hs[i] the output of layer i
        delta = dh if i in (0, skip) else dh * rho_prime(hs[i])
    return bp.Gradients(torch.tensor(0.0), tuple(dws), tuple(dbs), dh)


@pytest.mark.parametrize("activation, words", [
    ("tanh", "(dW2 is what delta_2 = dJ/dh_2 gives: layer 2's tanh' = 1 - h_2^2 is missing; "
             "delta_2 = dJ/dh_2 * (1 - h_2^2))"),
    ("sigmoid", "(dW2 is what delta_2 = dJ/dh_2 gives: layer 2's sigmoid' = h_2 (1 - h_2) is "
                "missing; delta_2 = dJ/dh_2 * h_2 * (1 - h_2))"),
    ("relu", "(dW2 is what delta_2 = dJ/dh_2 gives: layer 2's relu' (the mask z_2 > 0, not "
             "applied) is missing; delta_2 = dJ/dh_2 * (z_2 > 0))"),
])
def test_a_hand_written_backprop_without_rho_prime_in_layer2_is_told_the_fix(activation,
                                                                               words):
    net, x, y = problem(activation)
    right = diagnose(_student(net, x, y), net, x, y)
    assert right.layer is None and all(c.agrees for c in right.checks), right.message()
    d = diagnose(_student(net, x, y, skip=2), net, x, y)
    assert (d.layer, d.tensor, d.signature) == (2, "dW", "missing activation derivative"), \
        d.message()
    assert ("is layer 2 (dW2); signature: missing activation derivative " + words
            in d.message())
    # the right dW2 beside the student's db2 = sum of dJ/dh_2: the bias alone forgot rho'
    g = bp.backprop(net, x, y)
    bad = bp.Gradients(g.loss, g.weights, (g.biases[0], _student(net, x, y, skip=2).biases[1],
                                           *g.biases[2:]), g.input)
    d = diagnose(bad, net, x, y)
    assert (d.layer, d.tensor, d.signature) == (2, "db", "missing activation derivative"), \
        d.message()
    assert d.detail.startswith("db2 is what delta_2 = dJ/dh_2 gives: layer 2's ")


def test_a_negated_input_gradient_is_named():
    net, x, y = problem()
    d = diagnose(planted_backprop(SIGN_FLIP_DX).backprop(net, x, y), net, x, y)
    assert (d.layer, d.tensor, d.signature) == (0, "dx", "sign flip"), d.message()
    assert all(c.agrees for c in d.checks if c.tensor != "dx")
    assert d.message().startswith(
        "attribution: every dW and db agrees with torch.autograd, but the input gradient dx "
        "(grads.input, dJ/dx = delta_1 W_1) disagrees; signature: sign flip (dx = -reference)")
    assert "\n  input dx: DISAGREES" in d.message()
    # one sample, x and dx of shape (in,)
    g = planted_backprop(SIGN_FLIP_DX).backprop(net, x[0], y[0])
    d = diagnose(g, net, x[0], y[0])
    assert (d.layer, d.tensor, d.signature) == (0, "dx", "sign flip"), d.message()


def _with_input(g: bp.Gradients, dx) -> bp.Gradients:
    return bp.Gradients(g.loss, g.weights, g.biases, dx)


@pytest.mark.parametrize("change, signature, words", [
    (lambda t: t.t(), "transpose", "dx = reference^T, shape (5, 8)"),
    (lambda t: 8 * t, "constant factor", "dx = 8 (N = 8, the batch size) x reference"),
    (lambda t: t + 1e-3 * torch.arange(5, dtype=torch.float64), None,
     "dx: not -reference, not reference^T, not c x reference"),
], ids=["transpose", "batch_size_factor", "unknown"])
def test_an_input_gradient_is_tested_against_the_signatures(change, signature, words):
    net, x, y = problem()
    g = bp.backprop(net, x, y)
    d = diagnose(_with_input(g, change(g.input)), net, x, y)
    assert (d.layer, d.tensor, d.signature) == (0, "dx", signature), d.message()
    assert d.detail == words


@pytest.mark.parametrize("part", ["weights", "biases", "input"])
def test_a_gradient_narrower_than_the_network_is_refused_as_check_vjp_refuses_it(part):
    """A float32 gradient of a float64 network was judged at float32's tolerance (the dtype
    of grads.weights[0], or dx's own) and told it agrees with torch.autograd: a cast inside
    the kernel passed. check_vjp refuses a gradient narrower than its argument; so does
    diagnose, naming the gradient and both dtypes."""
    net, x, y = problem()
    g = bp.backprop(net, x, y)
    narrow = (dataclasses.replace(g, input=g.input.float()) if part == "input" else
              dataclasses.replace(g, **{part: tuple(t.float() for t in getattr(g, part))}))
    with pytest.raises(TypeError) as e:
        diagnose(narrow, net, x, y)
    name = "grads.input" if part == "input" else f"grads.{part}[0]"
    assert str(e.value).startswith(f"{name}: dtype torch.float32 for a network of dtype "
                                   "torch.float64; expected torch.float64 (or a wider dtype)")
    assert "a cast inside the kernel?" in str(e.value)
    # the same values cast back to float64: not refused (the dtype is the network's), and
    # named: every value is a float32 number, and float32 is what explains the difference
    wide = (dataclasses.replace(g, input=g.input.float().double()) if part == "input" else
            dataclasses.replace(g, **{part: tuple(t.float().double()
                                                  for t in getattr(g, part))}))
    d = diagnose(wide, net, x, y)
    assert d.signature == "cast to a narrower dtype", d.message()
    assert (d.layer, d.tensor) == ((0, "dx") if part == "input" else
                                   (4, "dW" if part == "weights" else "db"))
    assert "values computed in float32: each is a float32 number and the reference's are " \
        "not (a cast to float32 inside the kernel" in d.detail


def test_a_wider_gradient_is_judged_at_the_networks_dtype():
    # float64 gradients of a float32 network (a kernel computing in float32, returning
    # float64) were judged at float64's tolerance, grads.weights[0]'s dtype, and named wrong
    net, x, y = problem()
    net = type(net)(tuple(w.float() for w in net.weights), tuple(b.float() for b in net.biases),
                    net.activation)
    x, y = x.float(), y.float()
    g = bp.backprop(net, x, y)
    wide = bp.Gradients(g.loss, tuple(t.double() for t in g.weights),
                        tuple(t.double() for t in g.biases), g.input.double())
    d = diagnose(wide, net, x, y)
    assert d.layer is None and d.input_checked, d.message()
    d = diagnose(_with_input(wide, -wide.input), net, x, y)
    assert (d.layer, d.tensor, d.signature) == (0, "dx", "sign flip"), d.message()


def test_a_failing_backprop_check_names_a_wrong_input_gradient():
    net, x, y = problem()
    grads = planted_backprop(SIGN_FLIP_DX).backprop(net, x, y)
    ref = autograd_grads(net, x, y, loss="squared")
    with unrecorded(), pytest.raises(AssertionError) as info:
        check_all(grads, ref, reference="torch_autograd",
                  problem=(net, x, y, "squared", "mean"))
    text = str(info.value)
    assert "backprop vs torch_autograd [dJ/dx]" in text
    assert "but the input gradient dx (grads.input, dJ/dx = delta_1 W_1) disagrees; " \
        "signature: sign flip" in text


@pytest.mark.parametrize("make", [
    lambda g: _with_input(g, None),
    lambda g: SimpleNamespace(weights=list(g.weights), biases=list(g.biases)),
], ids=["input_None", "no_input_attribute"])
def test_gradients_without_an_input_gradient_say_it_is_not_checked(make):
    net, x, y = problem()
    g = bp.backprop(net, x, y)
    d = diagnose(make(g), net, x, y)
    assert d.layer is None and not d.input_checked
    assert len(d.checks) == 2 * net.depth and all(c.tensor != "dx" for c in d.checks)
    assert d.message().startswith("attribution: every dW and db agrees with torch.autograd; "
                                  "the input gradient dx is not checked (grads.input is None)")
    assert d.message().endswith("\n  input dx: not checked (grads.input is None)")
    # a wrong dW is still named; the rows still say dx was not checked
    d = diagnose(_with_input(_with_weight(g, 2, -g.weights[2]), None), net, x, y)
    assert (d.layer, d.tensor, d.signature) == (3, "dW", "sign flip")
    assert d.message().endswith("\n  input dx: not checked (grads.input is None)")


def _bad_input(dx):
    net, x, y = problem()
    g = bp.backprop(net, x, y)
    return lambda: diagnose(_with_input(g, dx(g.input)), net, x, y)


@pytest.mark.parametrize("call, exc, words", [
    (_bad_input(lambda t: t.tolist()), TypeError,
     "grads.input: expected a torch.Tensor, got list"),
    (_bad_input(lambda t: t.to("meta")), ValueError,
     "grads.input: on meta, the network on cpu"),
    (_bad_input(lambda t: t.long()), TypeError,
     "grads.input: expected a floating-point tensor or None, got dtype torch.int64"),
], ids=["list", "meta", "int64"])
def test_diagnose_refuses_a_bad_input_gradient_by_name(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


@pytest.mark.parametrize("y, loss", [
    (lambda y: y[:5].t(), "squared"),  # (2, 5) for 5 samples and 2 outputs: 10 values
    (lambda y: y[:5].t(), "log_cosh"),
    (lambda y: torch.ones(5, 2, dtype=torch.float64), "cross_entropy"),  # rows sum to 2
    (lambda y: torch.tensor([[1.5, -0.5]] * 5, dtype=torch.float64), "cross_entropy"),
])
def test_diagnose_refuses_the_y_backprop_refuses(y, loss):
    """diagnose checked y's number of elements only: it took y.t() and "probabilities" whose
    rows sum to 2 or hold a negative, and named backprop's right result wrong (layer 4 dW).
    It refuses them as backprop does, with backprop's own check and message."""
    net, x, y0 = problem()
    x, y_bad = x[:5], y(y0)
    g = bp.backprop(net, x, y0[:5].softmax(1) if loss == "cross_entropy" else y0[:5],
                    loss=loss)
    with pytest.raises(ValueError) as kernel:
        bp.backprop(net, x, y_bad, loss=loss)
    words = (r"y: expected shape \(5, 2\) for x of shape \(5, 5\)" if loss != "cross_entropy"
             else r"y: probabilities must be finite, >= 0 and sum to 1 in each row")
    with pytest.raises(ValueError, match=words) as e:
        diagnose(g, net, x, y_bad, loss=loss)
    assert str(e.value) == str(kernel.value)
