"""A NaN or inf in any argument of the Jacobian kernels and of backprop is refused by name,
with the message the argument-by-argument check gives (``kernels._checks``), although the
kernels now read one number of their result instead of every argument up front.

The kernels' claim (``jacobian._check_finite_result``, ``backprop._check_finite_result``):
a non-finite weight reaches every entry of the Jacobian it enters, even through units
whose rho' is exactly 0 (saturated tanh and sigmoid, dead relu), since inf * 0 and
NaN * 0 are NaN; x and the biases, which may not reach it, are read directly; in
backprop, y reaches the loss and x is read directly. These tests plant NaN, +inf and -inf
in each argument at several positions, in networks whose units are in their usual range
and in networks whose units all sit where rho' = 0, and compare the error with what
``check_all_finite`` / ``check_finite`` (the checks the kernels made before) raise.
Finite arguments whose sums overflow have no culprit: the result is returned, as before.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handgrad.kernels import backprop as bp
from handgrad.kernels import jacobian as jm
from handgrad.kernels import mlp
from handgrad.kernels._checks import check_all_finite, check_finite
from handgrad.testing.compare import assert_close
from handgrad.testing.references import torch_loss

ACTIVATIONS = ["tanh", "sigmoid", "relu", "identity"]
BAD = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
KERNELS = {"forward": jm.jacobian_forward, "reverse": jm.jacobian_reverse}


def _message(check, *args) -> str:
    """What a finiteness check raises (the message the kernels raised before)."""
    with pytest.raises(ValueError) as info:
        check(*args)
    return str(info.value)


def _plant(t: torch.Tensor, where: str | int, value: float) -> torch.Tensor:
    t = t.clone()
    flat = t.view(-1)
    i = {"first": 0, "last": flat.numel() - 1, "middle": flat.numel() // 2}.get(where, where)
    flat[i] = value
    return t


# -- the Jacobian kernels -------------------------------------------------------------------

def _jacobian_problem(activation: str, regime: str, *, D=3, K=5, P=4, L=3, n=None, seed=0,
                      dtype=torch.float64):
    """Weights, biases and x. regime "usual": units in their working range; "flat": every
    hidden unit of layer 1 where rho' = 0 (tanh and sigmoid saturated, relu dead), so the
    tangents and adjoints through layer 1 are exact zeros."""
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(K, D, generator=g, dtype=dtype)]
    ws += [torch.randn(K, K, generator=g, dtype=dtype) for _ in range(L - 1)]
    ws += [torch.randn(P, K, generator=g, dtype=dtype)]
    bs = [torch.randn(w.shape[0], generator=g, dtype=dtype) * 0.1 for w in ws]
    x = torch.randn((D,) if n is None else (n, D), generator=g, dtype=dtype)
    if regime == "flat":
        x = x.abs() + 0.5
        if activation == "relu":  # every pre-activation of layer 1 negative
            ws[0] = -ws[0].abs() - 0.1
        else:  # |z_1| ~ 1e4: tanh(z) = +-1 and sigmoid(z) in {0, 1} exactly
            ws[0] = torch.where(ws[0] >= 0, 1e4, -1e4).to(dtype)
    return ws, bs, x


def _named(ws, bs, x):
    names = [f"W{i + 1}" for i in range(len(ws) - 1)] + ["WF"]
    return [*((f"weights[{n}]", w) for n, w in zip(names, ws)),
            *((f"biases[{n.replace('W', 'b')}]", b) for n, b in zip(names, bs)),
            ("x", x)]


def _jacobian_cases():
    targets = ["W1", "W2", "W3", "WF", "x", "b1", "b2", "b3", "bF"]
    return [(t, where) for t in targets for where in ("first", "middle", "last")]


def _spoil(ws, bs, x, target, where, value):
    ws, bs = list(ws), list(bs)
    if target == "x":
        x = _plant(x, where, value)
    else:
        i = {"F": len(ws) - 1}.get(target[1:], None)
        i = int(target[1:]) - 1 if i is None else i
        (ws if target[0] == "W" else bs)[i] = _plant((ws if target[0] == "W" else bs)[i],
                                                    where, value)
    return ws, bs, x


@pytest.mark.parametrize("batched", [False, True], ids=["one-x", "batch"])
@pytest.mark.parametrize("regime", ["usual", "flat"])
@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_jacobian_refuses_every_nan_and_inf_by_name(kernel, activation, bad, regime, batched):
    ws0, bs0, x0 = _jacobian_problem(activation, regime, n=3 if batched else None)
    for target, where in _jacobian_cases():
        for with_biases in ((True,) if target[0] == "b" else (False, True)):
            ws, bs, x = _spoil(ws0, bs0, x0, target, where, BAD[bad])
            want = _message(check_all_finite, _named(ws, bs if with_biases else
                                                     [None] * len(ws), x))
            assert want.startswith(("x:", f"weights[{target}]:", f"biases[{target}]:"))
            with pytest.raises(ValueError) as info:
                KERNELS[kernel](ws, x, biases=bs if with_biases else None,
                                activation=activation)
            assert str(info.value) == want, (target, where, with_biases)


@settings(max_examples=150, deadline=None)
@given(kernel=st.sampled_from(list(KERNELS)), activation=st.sampled_from(ACTIVATIONS),
       regime=st.sampled_from(["usual", "flat"]), bad=st.sampled_from(list(BAD)),
       D=st.integers(1, 4), K=st.integers(1, 6), P=st.integers(1, 4), L=st.integers(1, 4),
       n=st.one_of(st.none(), st.integers(1, 3)), with_biases=st.booleans(),
       data=st.data())
def test_jacobian_refusal_property(kernel, activation, regime, bad, D, K, P, L, n,
                                   with_biases, data):
    """Any argument, any entry, any shape: the error is the argument-by-argument check's."""
    ws, bs, x = _jacobian_problem(activation, regime, D=D, K=K, P=P, L=L, n=n,
                                  seed=data.draw(st.integers(0, 2**16)))
    named = _named(ws, bs if with_biases else [None] * len(ws), x)
    named = [(name, t) for name, t in named if t is not None]
    name, t = data.draw(st.sampled_from(named))
    pos = data.draw(st.integers(0, t.numel() - 1))
    spoilt = _plant(t, pos, BAD[bad])
    named = [(m, spoilt if m == name else u) for m, u in named]
    ws = [u for m, u in named if m.startswith("weights")]
    bs = [u for m, u in named if m.startswith("biases")] if with_biases else None
    x = named[-1][1]
    want = _message(check_all_finite, named)
    assert want.startswith(f"{name}: expected finite values")
    with pytest.raises(ValueError) as info:
        KERNELS[kernel](ws, x, biases=bs, activation=activation)
    assert str(info.value) == want


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_jacobian_overflow_of_finite_weights_is_an_overflow_error(kernel):
    """Finite weights whose product overflows float32: no argument is at fault, and no
    result is inf (it was returned): OverflowError, saying what to do."""
    ws = [torch.full((2, 2), 1e20), torch.full((2, 2), 1e20), torch.full((3, 2), 1.0)]
    with pytest.raises(OverflowError, match=r"^the Jacobian overflows torch.float32's range "
                       r"\(largest 3.4e\+38\) though the weights, biases and x are finite: "
                       r"compute in a wider dtype \(float64\)"):
        KERNELS[kernel](ws, torch.ones(2), activation="identity")
    # in float64 it is finite, and right
    w64 = [w.double() for w in ws]
    got = KERNELS[kernel](w64, torch.ones(2, dtype=torch.float64), activation="identity")
    assert torch.equal(got, w64[2] @ w64[1] @ w64[0])


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_jacobian_finite_x_whose_sum_overflows_is_accepted(kernel, batched):
    """x's entries are finite but their sum (and x . x) overflow float32; where W1 ignores
    them the Jacobian is finite and right."""
    ws, _, _ = _jacobian_problem("tanh", "usual", dtype=torch.float32)
    ws[0][:, :2] = 0  # the huge entries of x do not reach z_1
    x = torch.tensor([3e38, 3e38, 0.5])
    x = x.expand(2, 3).clone() if batched else x
    got = KERNELS[kernel](ws, x, activation="tanh")
    want = KERNELS[kernel]([w.double() for w in ws], x.double().clamp(-1, 1),
                           activation="tanh")  # the same Jacobian: W1 ignores x_1, x_2
    assert_close(got, want.float(), kernel=f"jacobian_{kernel}", reference="float64 kernel",
                 what="finite x with an overflowing sum")


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_jacobian_empty_matrix_is_refused_after_x_as_before(kernel):
    """An empty matrix (no longer a check of its own on the fast path) is refused by name,
    and only after x's own checks, as before."""
    ws = [torch.ones(4, 2), torch.ones(0, 4), torch.ones(3, 0)]
    with pytest.raises(ValueError, match=re.escape("weights[W2]: expected at least one unit "
                                                   "in and out, got shape (0, 4)")):
        KERNELS[kernel](ws, torch.ones(2))
    with pytest.raises(ValueError, match=re.escape("weights[W1]: expected at least one unit")):
        KERNELS[kernel]([torch.ones(0, 2), torch.ones(3, 0)], torch.ones(2))
    with pytest.raises(ValueError, match=re.escape("weights[WF]: expected at least one unit "
                                                   "in and out, got shape (0, 4)")):
        KERNELS[kernel]([torch.ones(4, 2), torch.ones(0, 4)], torch.ones(2))  # no output
    with pytest.raises(ValueError, match=r"^x: expected shape \(N, 2\) or \(2,\)"):
        KERNELS[kernel](ws, torch.ones(3))  # x's shape is refused first, as it was
    with pytest.raises(ValueError, match=r"^x: expected a 1-D or 2-D tensor"):
        KERNELS[kernel](ws, torch.ones(1, 1, 2))


# -- backprop ---------------------------------------------------------------------------------

def _backprop_problem(activation: str, regime: str, *, n=4, single=False, seed=0):
    """A [5, 6, 6, 2] network, x and y. regime "flat": every hidden unit of layer 1 where
    rho' = 0 (relu dead: all-negative pre-activations; tanh and sigmoid saturated), so
    delta_1 = 0 exactly and dW_1 = delta_1^T x multiplies x by zeros only."""
    g = torch.Generator().manual_seed(seed)
    net = mlp.init_mlp([5, 6, 6, 2], activation, generator=g, dtype=torch.float64)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    if regime == "flat":
        x = x.abs() + 0.5
        w0 = (-net.weights[0].abs() - 0.1 if activation == "relu"
              else torch.where(net.weights[0] >= 0, 1e4, -1e4).double())
        net = mlp.MLP([w0, *net.weights[1:]], net.biases, activation)
    if single:
        x, y = x[0], y[0]
    return net, x, y


@pytest.mark.parametrize("single", [False, True], ids=["batch", "one-x"])
@pytest.mark.parametrize("regime", ["usual", "flat"])
@pytest.mark.parametrize("loss", ["squared", "log_cosh"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backprop_refuses_every_nan_and_inf_in_x_and_y_by_name(activation, reduction, loss,
                                                               regime, single):
    net, x0, y0 = _backprop_problem(activation, regime, single=single)
    for value in BAD.values():
        for target in ("x", "y"):
            for where in ("first", "middle", "last"):
                x = _plant(x0, where, value) if target == "x" else x0
                y = _plant(y0, where, value) if target == "y" else y0
                want = _message(check_finite, target, x if target == "x" else y)
                with pytest.raises(ValueError) as info:
                    bp.backprop(net, x, y, loss=loss, reduction=reduction)
                assert str(info.value) == want, (target, where, value)


@pytest.mark.parametrize("target", ["indices", "probabilities"])
@pytest.mark.parametrize("regime", ["usual", "flat"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backprop_cross_entropy_refuses_nan_and_inf_in_x_by_name(activation, regime, target):
    net, x0, _ = _backprop_problem(activation, regime)
    y = (torch.tensor([0, 1, 1, 0]) if target == "indices"
         else torch.softmax(torch.randn(4, 2, dtype=torch.float64), 1))
    for value in BAD.values():
        for where in ("first", "middle", "last"):
            x = _plant(x0, where, value)
            with pytest.raises(ValueError) as info:
                bp.backprop(net, x, y, loss="cross_entropy")
            assert str(info.value) == _message(check_finite, "x", x)
    if target == "probabilities":  # a non-finite probability: refused by its own check
        for value in BAD.values():
            with pytest.raises(ValueError, match=r"^y: probabilities must be finite"):
                bp.backprop(net, x0, _plant(y, "first", value), loss="cross_entropy")


@settings(max_examples=100, deadline=None)
@given(activation=st.sampled_from(ACTIVATIONS), regime=st.sampled_from(["usual", "flat"]),
       loss=st.sampled_from(["squared", "log_cosh"]), bad=st.sampled_from(list(BAD)),
       n=st.integers(1, 5), single=st.booleans(), target=st.sampled_from(["x", "y"]),
       data=st.data())
def test_backprop_refusal_property(activation, regime, loss, bad, n, single, target, data):
    net, x, y = _backprop_problem(activation, regime, n=n, single=single,
                                  seed=data.draw(st.integers(0, 2**16)))
    t = x if target == "x" else y
    t = _plant(t, data.draw(st.integers(0, t.numel() - 1)), BAD[bad])
    x, y = (t, y) if target == "x" else (x, t)
    with pytest.raises(ValueError) as info:
        bp.backprop(net, x, y, loss=loss)
    assert str(info.value) == _message(check_finite, target, t)


def test_backprop_keeps_the_order_of_refusals():
    """Two faults at once: the one refused first before is refused first now (x's values
    before anything about y; y's values before y's shape)."""
    net, x, y = _backprop_problem("tanh", "usual")
    nan_x, nan_y = _plant(x, "first", float("nan")), _plant(y, "first", float("inf"))
    for bad_y in (y[:, :1], y.long(), y.float(), [1.0]):
        with pytest.raises(ValueError, match=r"^x: expected finite values"):
            bp.backprop(net, nan_x, bad_y)
    with pytest.raises(ValueError, match=r"^x: expected finite values"):
        bp.backprop(net, nan_x, torch.tensor([0, 5, 1, 0]), loss="cross_entropy")
    with pytest.raises(ValueError, match=r"^y: expected finite values"):
        bp.backprop(net, x, nan_y[:3])  # and its shape is wrong too
    with pytest.raises(ValueError, match=r"^x: expected finite values"):
        bp.backprop(net, nan_x, nan_y)


def test_backprop_finite_x_whose_sum_overflows_is_accepted():
    """x's entries are finite, their sum overflows float32, and W1 ignores them: no
    argument is at fault and the gradients are returned, right."""
    g = torch.Generator().manual_seed(3)
    net = mlp.init_mlp([3, 4, 2], "tanh", generator=g)
    w0 = net.weights[0].clone()
    w0[:, :2] = 0
    net = mlp.MLP([w0, net.weights[1]], net.biases, "tanh")
    x = torch.tensor([[3e38, 3e38, 0.5], [1e-3, 2e-3, -0.25]])
    y = torch.randn(2, 2, generator=g)
    got = bp.backprop(net, x, y)
    # the reference in float64, where nothing overflows
    ws = [w.double().requires_grad_() for w in net.weights]
    bs = [b.double().requires_grad_() for b in net.biases]
    xx = x.double().requires_grad_()
    J = torch_loss(ws, bs, xx, y.double(), activation="tanh", loss="squared")
    grads = torch.autograd.grad(J, ws + bs)
    for a, e in zip((got.loss, *got.weights, *got.biases), (J, *grads)):
        assert_close(a, e.float(), kernel="backprop", reference="float64 autograd",
                     what="finite x with an overflowing sum")


def test_backprop_loss_overflow_of_finite_inputs_is_an_overflow_error():
    """Finite x and y whose loss overflows float32 (a residual of 2e30, squared): no
    argument is at fault, and no result is inf (the loss was returned as inf):
    OverflowError, saying what to do."""
    net = mlp.MLP([torch.ones(1, 1)], [torch.zeros(1)], "identity")
    with pytest.raises(OverflowError, match=r"^backprop: the loss is inf in torch.float32 "
                       r"though x, y and the weights are finite: it overflows torch.float32's "
                       r"range .*compute in a wider dtype \(float64\)"):
        bp.backprop(net, torch.tensor([[1e30]]), torch.tensor([[-1e30]]))
    net64 = mlp.MLP([torch.ones(1, 1, dtype=torch.float64)],
                    [torch.zeros(1, dtype=torch.float64)], "identity")
    got = bp.backprop(net64, torch.tensor([[1e30]], dtype=torch.float64),
                      torch.tensor([[-1e30]], dtype=torch.float64))
    assert math.isclose(float(got.loss), 2e60, rel_tol=1e-15) and torch.equal(got.biases[0],
                                                    torch.tensor([2e30], dtype=torch.float64))


# -- inside a graph: no value is read --------------------------------------------------------

@pytest.mark.parametrize("call", ["jacobian_forward", "jacobian_reverse", "backprop"])
def test_inside_a_graph_no_value_is_read_and_the_nan_stays(call):
    torch._dynamo.reset()
    ws, _, x = _jacobian_problem("tanh", "usual", dtype=torch.float32)
    net, xb, yb = _backprop_problem("tanh", "usual")
    net, xb, yb = net.to(torch.float32), xb.float(), yb.float()
    bad_w = [_plant(ws[0], "first", float("nan")), *ws[1:]]
    bad_x = _plant(xb, "first", float("nan"))
    fn = {"jacobian_forward": lambda: jm.jacobian_forward(bad_w, x),
          "jacobian_reverse": lambda: jm.jacobian_reverse(bad_w, x),
          "backprop": lambda: bp.backprop(net, bad_x, yb).weights[0]}[call]
    with pytest.raises(ValueError, match="expected finite values"):
        fn()  # eagerly: refused
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")()
    assert torch.isnan(out).any()
