"""Forward- and reverse-mode Jacobian kernels against six references, and the op-count
model against what the kernels execute."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from handgrad.kernels import finite_diff
from handgrad.kernels import jacobian as jm
from handgrad.testing.compare import assert_close, record_sweep
from handgrad.testing.references import as_list, course_weights, deep_net, jacobian_references
from handgrad.testing.tolerances import tol_for

KERNELS = {"jacobian_forward": jm.jacobian_forward, "jacobian_reverse": jm.jacobian_reverse}
REFERENCES = list(jacobian_references([torch.eye(1)]))


def ref_tol(reference: str, dtype: torch.dtype):
    return tol_for(dtype, "finite_diff" if reference.startswith("finite_diff") else "grad")


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("L", [3, 5, 10], ids=lambda L: f"course_D2_K30_P10_L{L}")
def test_course_case_against_reference(L: int, kernel: str, reference: str, device: str):
    ws, _ = course_weights(L, device=device)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(L))
    x = x.to(device)
    expected = jacobian_references(as_list(ws))[reference](x)
    got = KERNELS[kernel](ws, x)
    assert got.shape == (4, 10, 2)
    assert_close(got, expected, kernel=kernel, reference=reference, what=f"L={L} batched",
                 tol=ref_tol(reference, torch.float64))
    single = KERNELS[kernel](ws, x[1])
    assert single.shape == (10, 2)
    assert_close(single, expected[1], kernel=kernel, reference=reference, what=f"L={L} single",
                 tol=ref_tol(reference, torch.float64))


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_step_sweep_against_kernel(kernel: str, device: str):
    """The V-curve of the central difference against the kernel on the course case L=3:
    order 2 on the truncation branch, best step where predicted."""
    ws, _ = course_weights(3, device=device)
    x = torch.tensor([0.3, -0.8], dtype=torch.float64, device=device)
    sweep = finite_diff.step_sweep(deep_net(as_list(ws)), x, KERNELS[kernel](ws, x))
    assert sweep.order == pytest.approx(2.0, abs=0.1)
    assert abs(math.log10(sweep.predicted_eps / sweep.best_eps)) <= 1
    record_sweep(sweep, kernel=kernel, reference="finite_diff.step_sweep",
                 what="course D=2 K=30 P=10 L=3", device=device)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_biases_and_activations_against_jacrev(kernel: str, activation: str, device: str):
    ws, bs = course_weights(4, D=3, K=7, P=5, biases=True, device=device, seed=1)
    x = torch.randn(6, 3, dtype=torch.float64).to(device)
    refs = jacobian_references(as_list(ws), as_list(bs, "b"), activation)
    expected = refs["torch_func_jacrev"](x)
    got = KERNELS[kernel](ws, x, biases=bs, activation=activation)
    assert_close(got, expected, kernel=kernel, reference="torch_func_jacrev",
                 what=f"{activation} with biases", kind="grad")


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_column_major_weights_and_x_against_jacrev(kernel: str, activation: str):
    # the same values laid out column by column (a transposed weight, W.t() of a stored W^T):
    # jacobian_reverse's first adjoint took W_F's layout, and its views raised
    ws, bs = course_weights(4, D=3, K=7, P=5, biases=True, seed=2)
    ws, bs = as_list(ws), as_list(bs, "b")
    refs = jacobian_references(ws, bs, activation)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = refs["torch_func_jacrev"](x)
    col = [w.t().contiguous().t() for w in ws]
    assert not any(w.is_contiguous() for w in col)
    for xx in (x, x.t().contiguous().t()):
        got = KERNELS[kernel](col, xx, biases=bs, activation=activation)
        assert_close(got, expected, kernel=kernel, reference="torch_func_jacrev",
                     what=f"{activation}, column-major weights", kind="grad")


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("widths", [(64, 64), (65, 65), (8, 65, 8), (65,)],
                         ids=lambda w: "hidden" + "-".join(map(str, w)))
def test_one_x_in_both_layouts_against_jacrev(widths, activation: str):
    """One x runs in columns while every hidden layer is at most COLUMN_MAX_WIDTH wide, in
    rows beyond it: each layout, and one wide layer among narrow ones, with biases."""
    assert jm.COLUMN_MAX_WIDTH == 64  # the widths above straddle it
    gen = torch.Generator().manual_seed(sum(widths))
    sizes = [3, *widths, 5]
    ws = [torch.randn(o, i, dtype=torch.float64, generator=gen) / i ** 0.5
          for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [torch.randn(o, dtype=torch.float64, generator=gen) for o in sizes[1:]]
    x = torch.randn(3, dtype=torch.float64, generator=gen)
    expected = jacobian_references(ws, bs, activation)["torch_func_jacrev"](x.unsqueeze(0))[0]
    got = jm.jacobian_forward(ws, x, biases=bs, activation=activation)
    assert got.shape == (5, 3) and got.is_contiguous()
    assert_close(got, expected, kernel="jacobian_forward", reference="torch_func_jacrev",
                 what=f"one x, hidden widths {widths}, {activation}", kind="grad")


@pytest.mark.parametrize("widths, rows", [((64, 64), False), ((64, 65), True),
                                           ((8, 65, 8), True), ((30,), False)])
def test_one_x_switches_to_rows_past_column_max_width(monkeypatch, widths, rows):
    """The layout is chosen by the widest hidden layer: columns use torch.mm alone, rows
    F.linear (a speed choice, so correctness tests alone would not see it move)."""
    calls = []
    linear = jm.F.linear
    monkeypatch.setattr(jm.F, "linear", lambda *a, **k: calls.append(1) or linear(*a, **k))
    sizes = [2, *widths, 3]
    ws = [torch.ones(o, i) / i for i, o in zip(sizes[:-1], sizes[1:])]
    jm.jacobian_forward(ws, torch.ones(2))
    assert bool(calls) is rows
    calls.clear()
    w = torch.ones(65, 65) / 65  # one matrix as W1 and W2: still two wide hidden layers
    jm.jacobian_forward([w, w, torch.ones(3, 65)], torch.ones(65))
    assert calls


@given(
    D=st.integers(1, 6), K=st.integers(1, 9), P=st.integers(1, 6), L=st.integers(1, 5),
    n=st.integers(1, 4), activation=st.sampled_from(["tanh", "sigmoid", "relu", "identity"]),
    biases=st.booleans(), seed=st.integers(0, 2**16),
)
def test_random_shapes_against_jacrev(D, K, P, L, n, activation, biases, seed):
    ws, bs = course_weights(L, D, K, P, seed=seed, biases=biases)
    x = torch.randn(n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    refs = jacobian_references(as_list(ws), as_list(bs, "b") if biases else None, activation)
    expected = refs["torch_func_jacrev"](x)
    for name, kernel in KERNELS.items():
        got = kernel(as_list(ws), x, biases=as_list(bs, "b") if biases else None,
                     activation=activation)
        assert_close(got, expected, kernel=name, reference="torch_func_jacrev",
                     what=f"D={D} K={K} P={P} L={L} N={n}", kind="grad")


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_every_dtype_against_float64(kernel: str, dtype: torch.dtype, device: str):
    ws, _ = course_weights(3, device=device, dtype=dtype)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    got = KERNELS[kernel](ws, x)
    assert got.dtype == dtype and got.device.type == device
    # the reference sees the same rounded inputs, computed in float64
    ws64 = {k: v.double() for k, v in ws.items()}
    expected = jacobian_references(as_list(ws64))["torch_func_jacrev"](x.double())
    assert_close(got, expected, kernel=kernel, reference="torch_func_jacrev (float64)",
                 kind="grad", check_dtype=False)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_batched_equals_per_sample(kernel: str, device: str):
    ws, bs = course_weights(5, biases=True, device=device)
    x = torch.randn(16, 2, dtype=torch.float64).to(device)
    batched = KERNELS[kernel](ws, x, biases=bs)
    for i in range(16):
        assert_close(batched[i], KERNELS[kernel](ws, x[i], biases=bs), kernel=kernel,
                     reference="the same kernel on one sample", what=f"row {i}")


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("D,K,P,n", [(2, 30, 10, None), (2, 30, 10, 1), (1, 4, 3, 5),
                                     (3, 1, 2, 4), (1, 1, 1, None), (2, 65, 3, None)])
def test_inputs_are_never_modified(kernel: str, D: int, K: int, P: int, n):
    ws, bs = course_weights(3, D, K, P, biases=True)
    x = torch.randn((D,) if n is None else (n, D), dtype=torch.float64)
    before = [t.clone() for t in (x, *ws.values(), *bs.values())]
    KERNELS[kernel](ws, x, biases=bs)
    after = (x, *ws.values(), *bs.values())
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "kernel wrote into its inputs"


def test_forward_and_reverse_agree_on_wide_network():
    ws, _ = course_weights(3, D=3, K=600, P=4, seed=3)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert_close(jm.jacobian_forward(ws, x), jm.jacobian_reverse(ws, x),
                 kernel="jacobian_forward", reference="jacobian_reverse", kind="grad")


# --- the op-count model --------------------------------------------------------------


class Counter:
    """Multiplications by the model's rule, counted while a textbook algorithm runs."""

    def __init__(self):
        self.matmul = 0
        self.elementwise = 0

    def mm(self, a, b):  # (M1 x M2) @ (M2 x M3) costs M1 M2 M3
        self.matmul += a.shape[0] * a.shape[1] * b.shape[1]
        return a @ b

    def mul(self, a, b):  # element-wise: one per element of the result
        out = a * b
        self.elementwise += out.numel()
        return out


def textbook_forward(ws, x, c: Counter):
    """The course's forward mode for one x, with explicit column vectors and tangents."""
    h = x.reshape(-1, 1)
    tangent = None
    for i, w in enumerate(ws[:-1]):
        z = c.mm(w, h)
        h = torch.tanh(z)
        d = 1 - c.mul(h, h)  # tanh' = 1 - tanh^2
        dz = w if i == 0 else c.mm(w, tangent)  # dz_1/dx = W1: no product
        tangent = c.mul(d, dz)  # diag(d) dz, one multiply per element
    return c.mm(ws[-1], tangent)


def textbook_reverse(ws, x, c: Counter):
    h, ds = x.reshape(-1, 1), []
    for w in ws[:-1]:
        h = torch.tanh(c.mm(w, h))
        ds.append(1 - c.mul(h, h))
    adj = c.mul(ws[-1], ds[-1].t())  # W_F diag(d_L)
    for i in range(len(ws) - 2, 0, -1):
        adj = c.mul(c.mm(adj, ws[i]), ds[i - 1].t())
    return c.mm(adj, ws[0])


@pytest.mark.parametrize("D,K,P,L", [(2, 30, 10, 3), (2, 30, 10, 5), (2, 30, 10, 10),
                                     (7, 5, 3, 4), (1, 1, 1, 1), (10, 30, 2, 3)])
def test_op_counts_equal_a_textbook_run_counted_op_by_op(D, K, P, L):
    ws = as_list(course_weights(L, D, K, P)[0])
    x = torch.randn(D, dtype=torch.float64)
    for mode, textbook, kernel in (("forward", textbook_forward, jm.jacobian_forward),
                                   ("reverse", textbook_reverse, jm.jacobian_reverse)):
        c = Counter()
        jac = textbook(ws, x, c)
        assert_close(kernel(ws, x), jac, kernel=kernel.__name__, reference=f"textbook {mode}")
        terms = jm.op_count_terms(D, K, P, L)[mode]
        assert sum(v for k, v in terms.items() if k.endswith("matmul")) == c.matmul
        assert sum(v for k, v in terms.items() if not k.endswith("matmul")) == c.elementwise
        assert jm.op_counts(D, K, P, L)[mode] == c.matmul + c.elementwise


@pytest.mark.parametrize("D,K,P,L,N", [(2, 30, 10, 3, 1), (2, 30, 10, 10, 64), (5, 17, 3, 2, 8)])
@pytest.mark.parametrize("biases", [False, True])
def test_matmul_counts_equal_flop_counter_on_the_kernels(D, K, P, L, N, biases):
    ws, bs = course_weights(L, D, K, P, biases=biases)
    x = torch.randn(N, D, dtype=torch.float64)
    model = jm.matmul_counts(D, K, P, L, N)
    for mode, kernel in (("forward", jm.jacobian_forward), ("reverse", jm.jacobian_reverse)):
        with FlopCounterMode(display=False) as fc:
            kernel(ws, x, biases=bs)
        # FlopCounterMode counts 2 FLOPs per multiply-add of a product, nothing else
        assert fc.get_total_flops() == 2 * model[mode], mode


def test_course_numbers_and_predicted_winner():
    c = jm.op_counts(D=2, K=30, P=10, L=3)
    # by hand: primal 30*2 + 2*900 = 1860, tanh' 3*30 = 90;
    # forward: 2*900*2 + 10*30*2 = 4200 products, 3*30*2 = 180 scalings -> 6330
    # reverse: 2*10*900 + 10*30*2 = 18600 products, 3*10*30 = 900 scalings -> 21450
    assert c == {"forward": 6330, "reverse": 21450}
    assert jm.predicted_mode(2, 30, 10, 3) == "forward"
    assert jm.op_counts(2, 30, 10, 3, N=1024)["forward"] == 1024 * 6330


@given(D=st.integers(1, 50), K=st.integers(1, 50), P=st.integers(1, 50), L=st.integers(1, 12))
def test_predicted_winner_is_forward_exactly_when_fewer_inputs_than_outputs(D, K, P, L):
    want = "tie" if D == P else ("forward" if D < P else "reverse")
    assert jm.predicted_mode(D, K, P, L) == want


# --- bad input -----------------------------------------------------------------------

W = {"W1": torch.ones(4, 2), "W2": torch.ones(4, 4), "WF": torch.ones(3, 4)}
BAD = [
    ("x wrong size", lambda: jm.jacobian_forward(W, torch.ones(5, 3)), ValueError,
     r"x: expected shape \(N, 2\) or \(2,\) to match W1 of shape \(4, 2\), got \(5, 3\)"),
    ("x rank 3", lambda: jm.jacobian_reverse(W, torch.ones(1, 5, 2)), ValueError,
     r"x: expected a 1-D or 2-D tensor, got shape \(1, 5, 2\)"),
    ("layers inconsistent", lambda: jm.jacobian_forward(
        {"W1": torch.ones(4, 2), "W2": torch.ones(4, 5), "WF": torch.ones(3, 4)}, torch.ones(2)),
     ValueError, r"weights\[W2\]: shape \(4, 5\) does not follow W1 of shape \(4, 2\)"),
    ("missing key", lambda: jm.jacobian_forward(
        {"W1": torch.ones(4, 2), "W3": torch.ones(4, 4), "WF": torch.ones(3, 4)}, torch.ones(2)),
     ValueError, r"weights: missing key\(s\) \['W2'\]"),
    ("missing WF", lambda: jm.jacobian_reverse({"W1": torch.ones(4, 2)}, torch.ones(2)),
     ValueError, r"weights: missing key 'WF'"),
    ("unknown key", lambda: jm.jacobian_forward({**W, "V": torch.ones(1)}, torch.ones(2)),
     ValueError, r"weights: unexpected key 'V'"),
    ("one matrix", lambda: jm.jacobian_forward([torch.ones(3, 2)], torch.ones(2)),
     ValueError, r"weights: expected at least W1 and WF"),
    ("bias shape", lambda: jm.jacobian_forward(
        W, torch.ones(2), biases=[torch.ones(4), torch.ones(3), torch.ones(3)]),
     ValueError, r"biases\[b2\]: shape \(3,\) does not fit W2 of shape \(4, 4\)"),
    ("mixed dtype", lambda: jm.jacobian_forward(W, torch.ones(2, dtype=torch.float64)),
     TypeError, r"x: dtype torch.float64 does not match weights\[W1\]"),
    ("weights not tensors", lambda: jm.jacobian_forward(torch.ones(3, 3), torch.ones(3)),
     TypeError, r"weights: expected a sequence \[W1, \.\.\., WL, WF\] or a dict"),
    ("activation", lambda: jm.jacobian_forward(W, torch.ones(2), activation="elu"),
     ValueError, r"activation: expected one of"),
    ("op_counts", lambda: jm.op_counts(D=0, K=30, P=10, L=3), ValueError,
     r"D: expected a positive integer, got 0"),
]


@pytest.mark.parametrize("call,error,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gives_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
