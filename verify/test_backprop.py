"""Manual backprop against torch.autograd.grad, torch.func.grad, hand-written finite
differences and torch.autograd.gradcheck, on the course's reference networks,
random networks (hypothesis) and every dtype the tolerance table knows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from handgrad.kernels import backprop as bp
from handgrad.kernels import finite_diff, mlp
from handgrad.testing.compare import assert_close, record_sweep
from handgrad.testing.references import BackpropFunction, autograd_grads, func_grads, torch_loss
from handgrad.testing.tolerances import tol_for
from verify.backprop_cases import CASE_IDS, CASES, Case, check_all, make_problem


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_against_autograd_grad(case: Case, device: str) -> None:
    net, x, y = make_problem(case, torch.float64, device)
    g = bp.backprop(net, x, y, loss=case.loss, reduction=case.reduction)
    ref = autograd_grads(net, x, y, loss=case.loss, reduction=case.reduction)
    check_all(g, ref, reference="torch_autograd",
              problem=(net, x, y, case.loss, case.reduction))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_against_torch_func_grad(case: Case, device: str) -> None:
    net, x, y = make_problem(case, torch.float64, device, seed=1)
    g = bp.backprop(net, x, y, loss=case.loss, reduction=case.reduction)
    ref = func_grads(net, x, y, loss=case.loss, reduction=case.reduction)
    check_all(g, ref, reference="torch_func_grad")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_against_finite_differences(case: Case, device: str) -> None:
    net, x, y = make_problem(case, torch.float64, device, seed=2)
    g = bp.backprop(net, x, y, loss=case.loss, reduction=case.reduction)
    tol = tol_for(torch.float64, "finite_diff")
    ws, bs = list(net.weights), list(net.biases)

    def J(weights=ws, biases=bs, xx=x):
        net_ = mlp.MLP(weights=weights, biases=biases, activation=net.activation)
        return bp.backprop(net_, xx, y, loss=case.loss, reduction=case.reduction).loss

    kw = dict(kernel="backprop", reference="finite_diff.gradient", tol=tol)
    for i in range(net.depth):
        fd_w = finite_diff.gradient(lambda w, i=i: J(weights=ws[:i] + [w] + ws[i + 1 :]), ws[i])
        assert_close(g.weights[i], fd_w, what=f"dJ/dW{i + 1}", **kw)
        fd_b = finite_diff.gradient(lambda b, i=i: J(biases=bs[:i] + [b] + bs[i + 1 :]), bs[i])
        assert_close(g.biases[i], fd_b, what=f"dJ/db{i + 1}", **kw)
    assert_close(g.input, finite_diff.gradient(lambda xx: J(xx=xx), x), what="dJ/dx", **kw)


def test_step_sweep_against_backprop(device: str) -> None:
    """The V-curve of the central difference against the kernel's dJ/dW1 on the course's
    one-hidden-layer case: order 2 on the truncation branch, best step where predicted."""
    case = CASES[0]
    net, x, y = make_problem(case, torch.float64, device, seed=6)
    g = bp.backprop(net, x, y, loss=case.loss, reduction=case.reduction)
    ws, bs = list(net.weights), list(net.biases)

    def J(w):  # the reference loss as a function of W1
        return torch_loss([w, *ws[1:]], bs, x, y, activation=net.activation, loss=case.loss)

    sweep = finite_diff.step_sweep(J, ws[0], g.weights[0])
    assert sweep.order == pytest.approx(2.0, abs=0.1)
    assert abs(math.log10(sweep.predicted_eps / sweep.best_eps)) <= 1
    record_sweep(sweep, kernel="backprop", reference="finite_diff.step_sweep",
                 what=f"dJ/dW1 {case.name}", device=device)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck(case: Case, device: str) -> None:
    net, x, y = make_problem(case, torch.float64, device, seed=3)
    inputs = [t.detach().clone().requires_grad_() for t in (x, *net.weights, *net.biases)]
    xx, params = inputs[0], inputs[1:]

    def f(xx, *params):
        return BackpropFunction.apply(xx, y, net.activation, case.loss, case.reduction, *params)

    assert torch.autograd.gradcheck(f, (xx, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_dtype_against_float64_autograd(case: Case, dtype: torch.dtype, device: str) -> None:
    if device == "cpu" and dtype == torch.float16 and not _cpu_half_matmul():
        pytest.skip("this torch build has no float16 matmul on CPU")
    net, x, y = make_problem(case, dtype, device, seed=4)
    g = bp.backprop(net, x, y, loss=case.loss, reduction=case.reduction)
    for t in (g.loss, g.input, *g.weights, *g.biases):
        assert t.dtype == dtype and t.device.type == device
    # the reference sees the same rounded inputs, computed exactly (float64)
    yy = y.double() if y.dtype.is_floating_point else y  # class indices stay integers
    ref = autograd_grads(net.to(torch.float64), x.double(), yy, loss=case.loss,
                         reduction=case.reduction)
    value, dws, dbs, dx = ref
    kw = dict(kernel="backprop", reference="torch_autograd (float64)", check_dtype=False)
    assert_close(g.loss, value.to(device), what="loss", kind="forward", **kw)
    for i, (a, e) in enumerate(zip(g.weights, dws)):
        assert_close(a, e, what=f"dJ/dW{i + 1}", kind="grad", **kw)
    for i, (a, e) in enumerate(zip(g.biases, dbs)):
        assert_close(a, e, what=f"dJ/db{i + 1}", kind="grad", **kw)
    assert_close(g.input, dx, what="dJ/dx", kind="grad", **kw)


def _cpu_half_matmul() -> bool:
    try:
        torch.ones(2, 2, dtype=torch.float16) @ torch.ones(2, 2, dtype=torch.float16)
    except RuntimeError:
        return False
    return True


@given(
    sizes=st.lists(st.integers(1, 7), min_size=2, max_size=6).map(tuple),
    activation=st.sampled_from(sorted(mlp.ACTIVATIONS)),
    loss=st.sampled_from(sorted(bp.LOSSES)),
    reduction=st.sampled_from(mlp.REDUCTIONS),
    n=st.one_of(st.none(), st.integers(1, 6)),
    target=st.sampled_from(["indices", "probs"]),
    seed=st.integers(0, 2**16),
)
def test_random_networks_against_autograd(sizes, activation, loss, reduction, n, target,
                                          seed) -> None:
    case = Case("random", sizes, activation, loss, n, reduction, init=1.0, target=target)
    net, x, y = make_problem(case, torch.float64, "cpu", seed=seed)
    g = bp.backprop(net, x, y, loss=loss, reduction=reduction)
    check_all(g, autograd_grads(net, x, y, loss=loss, reduction=reduction),
              reference="torch_autograd")


# --- the course's cases, spelled out -------------------------------------------------


def test_course_one_hidden_layer_shapes_and_mean_reduction(device: str) -> None:
    """W1 20x10, w2 of size 20 (as a 1x20 matrix), J = (1/N) sum of per-sample losses."""
    case = CASES[0]
    net, x, y = make_problem(case, torch.float64, device)
    assert [tuple(w.shape) for w in net.weights] == [(20, 10), (1, 20)]
    g = bp.backprop(net, x, y, loss="log_cosh")
    assert tuple(g.weights[0].shape) == (20, 10) and tuple(g.weights[1].shape) == (1, 20)
    assert tuple(g.biases[0].shape) == (20,) and tuple(g.biases[1].shape) == (1,)
    assert tuple(g.input.shape) == (16, 10)
    # mean reduction is (1/N) times the sum reduction, gradients included
    s = bp.backprop(net, x, y, loss="log_cosh", reduction="sum")
    n = x.shape[0]
    kw = dict(kernel="backprop", reference="sum reduction / N")
    assert_close(g.loss, s.loss / n, what="loss", **kw)
    assert_close(g.weights[0], s.weights[0] / n, what="dJ/dW1", **kw)
    # per-sample input gradients do not mix samples: row k only depends on sample k
    one = bp.backprop(net, x[3], y[3], loss="log_cosh")
    assert_close(g.input[3] * n, one.input, what="dJ/dx row 3", kind="grad", **kw)


def test_course_six_layer_sigmoid_matches_hand_chain_rule(device: str) -> None:
    """The 4-4-4-4-4-4-1 sigmoid network, one sample, written out as the course does:
    delta_6 = y_hat - y; delta_i = (W_{i+1}^T delta_{i+1}) * a_i (1 - a_i)."""
    case = CASES[1]
    net, x, y = make_problem(case, torch.float64, device)
    a = [x]
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        a.append(1 / (1 + torch.exp(-(w @ a[-1] + b))))
    y_hat = net.weights[-1] @ a[-1] + net.biases[-1]
    delta = y_hat - y
    expected_dw = [None] * 6
    for i in range(5, -1, -1):
        expected_dw[i] = torch.outer(delta, a[i])
        if i:
            delta = (net.weights[i].t() @ delta) * a[i] * (1 - a[i])
    g = bp.backprop(net, x, y, loss="squared")
    assert_close(g.loss, 0.5 * ((y_hat - y) ** 2).sum(), kernel="backprop",
                 reference="hand chain rule", what="loss")
    for i in range(6):
        assert_close(g.weights[i], expected_dw[i], kernel="backprop",
                     reference="hand chain rule", what=f"dJ/dW{i + 1}", kind="grad")


def test_layer_norms_match_reference_norms(device: str) -> None:
    net, x, y = make_problem(CASES[1], torch.float64, device)
    g = bp.backprop(net, x, y)
    _, dws, _, _ = autograd_grads(net, x, y, loss="squared")
    expected = torch.stack([torch.linalg.matrix_norm(d) for d in dws])
    assert tuple(g.layer_norms.shape) == (6,)
    assert_close(g.layer_norms, expected, kernel="backprop.layer_norms",
                 reference="torch_autograd (norms by torch.linalg.matrix_norm)", kind="grad")


# --- numerically delicate losses ------------------------------------------------------


@pytest.mark.parametrize("r", [1e4, -1e4, 88.0, 95.0, 1e30])
def test_log_cosh_finite_and_correct_at_large_residuals_float32(r: float, device: str) -> None:
    net = mlp.MLP(weights=[torch.ones(1, 1, device=device)], biases=[torch.zeros(1, device=device)])
    x = torch.tensor([[r]], device=device)
    y = torch.zeros(1, 1, device=device)
    g = bp.backprop(net, x, y, loss="log_cosh")
    assert torch.isfinite(g.loss) and torch.isfinite(g.weights[0]).all()
    # log cosh r = |r| - log 2 + log1p(e^{-2|r|}); the last term is below float32 eps here
    expected_loss = torch.tensor(abs(r) - math.log(2.0), dtype=torch.float64, device=device)
    assert_close(g.loss, expected_loss, kernel="log_cosh", reference="|r| - log 2",
                 check_dtype=False)
    # dJ/dW = tanh(r) * x = sign(r) * r
    assert_close(g.weights[0], torch.tensor([[abs(r)]], device=device, dtype=torch.float64),
                 kernel="backprop", reference="tanh(r) x", what="dJ/dW", kind="grad")


def test_log_cosh_matches_naive_formula_where_naive_is_finite() -> None:
    r = torch.linspace(-30, 30, 1001, dtype=torch.float64)
    assert_close(mlp.log_cosh(r), torch.log(torch.cosh(r)), kernel="log_cosh",
                 reference="log(cosh(r)) in float64")
    # and the naive float32 form really does overflow where the stable one does not
    big = torch.tensor([100.0])
    assert torch.isinf(torch.log(torch.cosh(big))).all()
    assert torch.isfinite(mlp.log_cosh(big)).all()


@pytest.mark.parametrize("z", [-1e4, -100.0, 100.0, 1e4])
def test_sigmoid_and_derivative_finite_at_large_inputs_float32(z: float) -> None:
    t = torch.tensor([z])
    a = mlp.activation("sigmoid")(t)
    d = mlp.activation_grad("sigmoid", t, a)
    assert torch.isfinite(a).all() and torch.isfinite(d).all()
    assert 0.0 <= float(a) <= 1.0 and 0.0 <= float(d) <= 0.25


@pytest.mark.parametrize("name", sorted(mlp.ACTIVATIONS))
def test_activation_derivatives_against_autograd(name: str) -> None:
    z = torch.linspace(-4, 4, 101, dtype=torch.float64).requires_grad_()
    a = mlp.activation(name)(z)
    (expected,) = torch.autograd.grad(a.sum(), z)
    assert_close(mlp.activation_grad(name, z.detach()), expected, kernel=f"{name}'",
                 reference="torch_autograd", kind="grad")


# --- the MLP container and initialisation --------------------------------------------


def test_init_mlp_xavier_and_uniform_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    net = mlp.init_mlp([13, 20, 10, 1], init="xavier", generator=g, dtype=torch.float64)
    assert net.sizes == [13, 20, 10, 1] and net.depth == 3
    for w in net.weights:
        bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.5 * bound  # drawn from the whole range
    assert all(float(b.abs().max()) == 0 for b in net.biases)
    u = mlp.init_mlp([4, 5, 1], init=0.1, generator=g)
    assert all(float(t.abs().max()) <= 0.1 for t in (*u.weights, *u.biases))
    assert float(u.biases[0].abs().max()) > 0  # biases drawn too
    same = mlp.init_mlp([13, 20, 10, 1], generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(net.weights, same.weights))


def test_forward_single_equals_batched_row(device: str) -> None:
    net, x, _ = make_problem(CASES[2], torch.float64, device)
    assert_close(mlp.forward(net, x[5]), mlp.forward(net, x)[5], kernel="mlp.forward",
                 reference="batched forward, row 5")


# --- bad input -----------------------------------------------------------------------


class _CudaGenerator(torch.Generator):
    """A CPU generator that says it is on CUDA: what init_mlp sees of a CUDA generator,
    on a machine without one."""

    device = torch.device("cuda")


def _net(**kw):
    return mlp.init_mlp([3, 4, 2], generator=torch.Generator().manual_seed(0), **kw)


BAD_CALLS = [
    ("x wrong features", lambda: bp.backprop(_net(), torch.ones(5, 4), torch.ones(5, 2)),
     ValueError, r"x: expected shape \(N, 3\) or \(3,\).*got \(5, 4\)"),
    ("x rank 3", lambda: bp.backprop(_net(), torch.ones(2, 5, 3), torch.ones(5, 2)),
     ValueError, r"x: expected a 1-D or 2-D tensor, got shape \(2, 5, 3\)"),
    ("y wrong batch", lambda: bp.backprop(_net(), torch.ones(5, 3), torch.ones(4, 2)),
     ValueError, r"y: expected shape \(5, 2\).*got \(4, 2\)"),
    ("y wrong outputs", lambda: bp.backprop(_net(), torch.ones(5, 3), torch.ones(5)),
     ValueError, r"y: expected shape \(5, 2\).*got \(5,\)"),
    ("unknown loss", lambda: bp.backprop(_net(), torch.ones(5, 3), torch.ones(5, 2), loss="l1"),
     ValueError, r"loss: expected one of \['squared', 'log_cosh', 'cross_entropy'\], got 'l1'"),
    ("unknown reduction",
     lambda: bp.backprop(_net(), torch.ones(5, 3), torch.ones(5, 2), reduction="max"),
     ValueError, r"reduction: expected one of"),
    ("unknown activation", lambda: mlp.init_mlp([3, 2], activation="gelu"),
     ValueError, r"activation: expected one of .*got 'gelu'"),
    ("mixed dtypes",
     lambda: bp.backprop(_net(), torch.ones(5, 3, dtype=torch.float64), torch.ones(5, 2)),
     TypeError, r"x: dtype torch.float64 does not match the network's weights \(torch.float32\)"),
    ("y dtype", lambda: bp.backprop(_net(), torch.ones(5, 3), torch.ones(5, 2).double()),
     TypeError, r"y: dtype torch.float64 does not match x \(torch.float32\)"),
    ("meta device",
     lambda: bp.backprop(_net(), torch.ones(5, 3, device="meta"), torch.ones(5, 2)),
     ValueError, r"x: a tensor on the meta device holds no values"),
    ("integer x", lambda: bp.backprop(_net(), torch.ones(5, 3, dtype=torch.long), torch.ones(5, 2)),
     TypeError, r"x: expected a floating-point tensor, got dtype torch.int64"),
    ("not a net", lambda: bp.backprop([torch.ones(2, 3)], torch.ones(5, 3), torch.ones(5, 2)),
     TypeError, r"net: expected a handgrad.kernels.mlp.MLP, got list"),
    ("layers don't chain", lambda: mlp.MLP(weights=[torch.ones(4, 3), torch.ones(2, 5)]),
     ValueError, r"weights\[1\]: shape \(2, 5\) does not follow weights\[0\] of shape \(4, 3\)"),
    ("bias shape", lambda: mlp.MLP(weights=[torch.ones(4, 3)], biases=[torch.ones(3)]),
     ValueError, r"biases\[0\]: shape \(3,\) does not fit weights\[0\] of shape \(4, 3\)"),
    ("bias count", lambda: mlp.MLP(weights=[torch.ones(4, 3)], biases=[]),
     ValueError, r"biases: expected 1 \(one per weight matrix\), got 0"),
    ("1-D weight", lambda: mlp.MLP(weights=[torch.ones(4)]),
     ValueError, r"weights\[0\]: expected a 2-D tensor, got shape \(4,\)"),
    ("no layers", lambda: mlp.MLP(weights=[]), ValueError, r"at least one layer"),
    ("bad init", lambda: mlp.init_mlp([3, 2], init="he"), ValueError, r"init: expected 'xavier'"),
    ("bad sizes", lambda: mlp.init_mlp([3]), ValueError, r"sizes: expected at least two"),
    ("init device gpu", lambda: mlp.init_mlp([3, 2, 1], device="gpu"), ValueError,
     r"^device: expected a device such as 'cpu', 'cuda' or 'cuda:0', got 'gpu'$"),
    ("init device int", lambda: mlp.init_mlp([3, 2, 1], device=0), TypeError,
     r"^device: expected a device such as 'cpu' or 'cuda' \(a str or torch.device\), got int 0$"),
    ("init numpy generator",
     lambda: mlp.init_mlp([3, 2, 1], generator=np.random.default_rng(0)), TypeError,
     r"^generator: expected a torch.Generator or None, got numpy\.random\..*Generator$"),
    ("init seed as generator", lambda: mlp.init_mlp([3, 2, 1], generator=0), TypeError,
     r"^generator: expected a torch.Generator or None, got builtins.int$"),
    ("init GPU generator", lambda: mlp.init_mlp([3, 2, 1], generator=_CudaGenerator()),
     ValueError, r"^generator: expected a CPU torch.Generator .*got one on cuda$"),
    ("init dtype string", lambda: mlp.init_mlp([3, 2, 1], dtype="float32"), TypeError,
     r"^dtype: expected a floating torch.dtype \(torch.float32\), got 'float32'$"),
    ("init dtype numpy", lambda: mlp.init_mlp([3, 2, 1], dtype=np.float32), TypeError,
     r"^dtype: expected a floating torch.dtype, got <class 'numpy.float32'>$"),
    ("init dtype integer", lambda: mlp.init_mlp([3, 2, 1], dtype=torch.int64), TypeError,
     r"^dtype: expected a floating torch.dtype, got torch.int64$"),
]


def test_init_mlp_refuses_an_absent_cuda_by_name(monkeypatch) -> None:
    """On a machine without CUDA (made one here), not torch's own error from the move."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device: 'cuda:0' asked for, but no CUDA device "
                       r"is present$"):
        mlp.init_mlp([3, 2, 1], device="cuda:0")
    net = mlp.init_mlp([3, 2, 1], device=torch.device("cpu"), generator=torch.Generator())
    assert net.device == torch.device("cpu")


def test_init_mlp_refuses_a_device_this_build_cannot_use(monkeypatch) -> None:
    """mps, xpu (a torch module that says unavailable), xla (no module: an empty tensor is
    tried), meta and a CUDA index beyond the count: a ValueError naming device, not torch's
    'PyTorch is not linked with support for mps devices'."""
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device: 'mps' asked for, but this torch build or "
                       r"machine has no usable mps device \(torch.mps.is_available\(\) is "
                       r"False\)"):
        mlp.init_mlp([3, 2, 1], device="mps")
    with pytest.raises(ValueError, match=r"^device: 'xla' asked for, but this torch build "
                       r"cannot use xla devices \(.*XLA"):
        mlp.init_mlp([3, 2, 1], device="xla")
    # no torch.hpu module to import for the tensor: ModuleNotFoundError had escaped
    with pytest.raises(ValueError, match=r"^device: 'hpu' asked for, but this torch build "
                       r"cannot use hpu devices \(No module named 'torch.hpu'\)"):
        mlp.init_mlp([3, 2, 1], device="hpu")
    with pytest.raises(ValueError, match=r"^device: 'meta' holds no values"):
        mlp.init_mlp([3, 2, 1], device="meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"^device: 'cuda:1' asked for, but 1 cuda device\(s\) "
                       r"present; expected an index below 1$"):
        mlp.init_mlp([3, 2, 1], device="cuda:1")


def test_check_device_accepts_a_usable_device_without_a_tensor_on_it(monkeypatch) -> None:
    """A device its torch module says is present is accepted by asking the module (no tensor
    made); one with no module is accepted when an empty tensor can be made there."""
    monkeypatch.setattr(torch.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "device_count", lambda: 1)
    made = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: made.append(k) or real_empty(0))
    assert mlp._check_device("mps:0") == torch.device("mps:0")
    assert made == []
    assert mlp._check_device("xla:0") == torch.device("xla:0")
    assert made == [{"device": torch.device("xla:0")}]


@pytest.mark.parametrize("call,error,pattern", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_gives_clear_error(call, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        call()
