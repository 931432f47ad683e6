"""Hand-built networks against targets written here from their definitions (never from
the constructions), on truth tables, dense grids through every breakpoint, random inputs
and near-ties; and check_construction finding a wrong network's counterexample."""

from __future__ import annotations

import itertools

import pytest
import torch

from handgrad.kernels import constructions as cs

FLOATS = [torch.float64, torch.float32]
FLOAT_IDS = ["float64", "float32"]


# --- the targets, from the definitions -------------------------------------------

def tent_target(x: torch.Tensor) -> torch.Tensor:
    """2x on [0, 1/2], 2(1 - x) on [1/2, 1], 0 elsewhere."""
    zero = torch.zeros_like(x)
    up = (x >= 0) & (x <= 0.5)
    down = (x > 0.5) & (x <= 1)
    return torch.where(up, 2 * x, torch.where(down, 2 * (1 - x), zero))


def soft_threshold_target(x: torch.Tensor, s: float) -> torch.Tensor:
    """max(|x| - s, 0) sign(x)."""
    return torch.clamp(x.abs() - s, min=0) * torch.sign(x)


def decreasing_target(x: torch.Tensor) -> torch.Tensor:
    """+1 iff x1 > x2 > x3 > x4 > x5, else -1."""
    strictly = (x[:, :-1] > x[:, 1:]).all(dim=1)
    return torch.where(strictly, 1.0, -1.0).to(x.dtype)


def grid_through(breakpoints: list[float], lo: float, hi: float, dtype) -> torch.Tensor:
    """A dense grid on [lo, hi] plus each breakpoint and its two neighbouring floats."""
    dense = torch.linspace(lo, hi, 4001, dtype=torch.float64).to(dtype)
    bp = torch.tensor(breakpoints, dtype=dtype)
    near = [torch.nextafter(bp, torch.full_like(bp, v)) for v in (-float("inf"), float("inf"))]
    return torch.cat([dense, bp, *near])


# --- XNOR ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_xnor_exact_on_the_truth_table(dtype) -> None:
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
    got = cs.xnor()(x)
    assert got.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert got.dtype == dtype
    assert float(cs.xnor()(torch.tensor([1.0, 1.0], dtype=dtype))) == 1.0  # one input -> ()


# --- the tent -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_tent_exact_on_a_dense_grid_through_its_breakpoints(dtype) -> None:
    x = grid_through([0.0, 0.5, 1.0], -1.0, 2.0, dtype)
    check = cs.check_construction(cs.tent(), tent_target, x)
    assert check.max_error == 0.0, str(check)
    # the grid does visit every piece, and the peak
    values = tent_target(x)
    assert float(values.max()) == 1.0 and (values == 0).sum() > 1000
    assert ((x > 0) & (x < 0.5)).any() and ((x > 0.5) & (x < 1)).any()


def test_tent_is_one_hidden_layer_of_three_relus() -> None:
    net = cs.tent()
    assert net.sizes == [1, 3, 1] and net.units == ("relu", "identity")
    assert tuple(net(torch.zeros(7)).shape) == (7,)  # N scalar inputs -> N values
    assert tuple(net(torch.zeros(7, 1)).shape) == (7,)


def test_tent_runs_on_the_device_of_its_input(device: str) -> None:
    x = torch.tensor([0.25, 0.5, 0.75, 1.5], device=device)
    got = cs.tent()(x)
    assert got.device.type == device and got.tolist() == [0.5, 1.0, 0.5, 0.0]


# --- soft-thresholding --------------------------------------------------------------------

@pytest.mark.parametrize("s", [0.5, 1.0, 0.3, 0.0, 2])
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_soft_threshold_exact_on_a_dense_grid_through_plus_minus_s(s, dtype) -> None:
    sr = float(torch.tensor(s, dtype=dtype))  # s as the input's dtype holds it
    x = grid_through([-sr, 0.0, sr], -3.0, 3.0, dtype)
    check = cs.check_construction(cs.soft_threshold(s), lambda t: soft_threshold_target(t, sr),
                                  x)
    assert check.max_error == 0.0, str(check)
    if s:
        assert (soft_threshold_target(x, sr) == 0).sum() > 100  # the dead zone is visited


# --- decreasing order ---------------------------------------------------------------------

def test_decreasing_order_is_four_perceptrons_and_one_output() -> None:
    net = cs.decreasing_order()
    assert net.sizes == [5, 4, 1] and net.units == ("sign", "sign")


def test_decreasing_order_on_every_permutation_of_1_to_5() -> None:
    x = torch.tensor(list(itertools.permutations([1.0, 2, 3, 4, 5])), dtype=torch.float64)
    got = cs.decreasing_order()(x)
    assert got.tolist() == decreasing_target(x).tolist()
    assert (got == 1).sum() == 1 and got[x[:, 0] == 5].max() == 1  # only 5 4 3 2 1


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_decreasing_order_right_on_random_inputs_and_near_ties(dtype, generator) -> None:
    n = 2000
    free = torch.randn(n, 5, generator=generator, dtype=torch.float64).to(dtype)
    ordered = free.sort(dim=1, descending=True).values  # all +1
    k = torch.randint(0, 4, (n,), generator=generator)
    rows = torch.arange(n)
    tied = ordered.clone()
    tied[rows, k + 1] = tied[rows, k]  # x_k = x_{k+1}: not strictly decreasing
    by_one_ulp = ordered.clone()  # x_{k+1} one float below x_k: still strictly decreasing
    by_one_ulp[rows, k + 1] = torch.nextafter(ordered[rows, k],
                                              torch.tensor(-float("inf"), dtype=dtype))
    swapped = ordered.clone()  # one adjacent pair the wrong way round, by one ulp
    swapped[rows, k] = by_one_ulp[rows, k + 1]
    swapped[rows, k + 1] = ordered[rows, k]
    x = torch.cat([free, ordered, tied, by_one_ulp, swapped])
    expected = decreasing_target(x)
    assert (expected == 1).sum() >= 2 * n and (expected == -1).sum() >= 2 * n
    check = cs.check_construction(cs.decreasing_order(), decreasing_target, x)
    assert check.max_error == 0.0, str(check)


def test_sign_unit_convention() -> None:
    z = torch.tensor([-2.0, -1e-300, -0.0, 0.0, 1e-300, 3.0, float("nan")], dtype=torch.float64)
    got = cs.sign(z)
    assert got[:-1].tolist() == [-1, -1, 1, 1, 1, 1] and torch.isnan(got[-1])


# --- check_construction -------------------------------------------------------------------

def sigmoid_tent() -> cs.Network:
    """A student's tent with sigmoid units where the ramps should be: smooth, so wrong."""
    t = cs.tent()
    return cs.Network(weights=t.weights, biases=t.biases, units=("sigmoid", "identity"))


def test_check_construction_finds_the_sigmoid_tents_worst_input() -> None:
    x = grid_through([0.0, 0.5, 1.0], -1.0, 2.0, torch.float64)
    net = sigmoid_tent()
    check = cs.check_construction(net, tent_target, x)
    # the worst point, found here by a plain loop over the points
    errs = [abs(float(net(p.reshape(1))) - float(tent_target(p))) for p in x]
    i = max(range(len(errs)), key=errs.__getitem__)
    assert check.max_error == errs[i] and check.max_error > 0.1
    assert float(check.worst_input) == float(x[i])
    assert float(check.network_value) == float(net(x[i].reshape(1)))
    assert float(check.target_value) == float(tent_target(x[i]))


def test_check_construction_finds_a_single_wrong_point() -> None:
    def student(x):
        return tent_target(x) + 0.25 * (x == 0.75)

    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    x[40] = 0.75
    max_error, worst, value, target = cs.check_construction(student, tent_target, x)
    assert (max_error, float(worst), float(value), float(target)) == (0.25, 0.75, 0.75, 0.5)
    text = str(cs.check_construction(student, tent_target, x))
    assert text == "max error 0.25 at x = 0.75: network 0.75, target 0.5"


def test_check_construction_counts_nan_as_the_worst(generator) -> None:
    x = torch.randn(50, 5, generator=generator, dtype=torch.float64)

    def broken(t):
        out = decreasing_target(t)
        out[17] = float("nan")
        return out

    check = cs.check_construction(broken, decreasing_target, x)
    assert check.max_error == float("inf") and torch.equal(check.worst_input, x[17])


def test_check_construction_takes_a_column_beside_a_vector() -> None:
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)

    def xnor_column(t):
        return (t[:, :1] == t[:, 1:]).to(t.dtype)  # (N, 1)

    check = cs.check_construction(cs.xnor(), xnor_column, x)
    assert check.max_error == 0.0
    # two outputs per point: the error of either one counts
    both = cs.Network([torch.eye(2)], [torch.zeros(2)], ["identity"])  # x -> x
    off = cs.check_construction(both, lambda t: t + torch.tensor([0.0, 0.5]) * t[:, :1], x)
    assert off.max_error == 0.5 and off.worst_input.tolist() == [1.0, 0.0]
    assert off.network_value.tolist() == [1.0, 0.0]
    assert off.target_value.tolist() == [1.0, 0.5]
    wrong = cs.check_construction(lambda t: 1 - cs.xnor()(t), xnor_column, x)
    assert wrong.max_error == 1.0 and wrong.worst_input.tolist() == [0.0, 0.0]


# --- bad input ----------------------------------------------------------------------------

W = torch.ones(2, 1)
B = torch.zeros(2)
BAD_CALLS = [
    ("s negative", lambda: cs.soft_threshold(-0.1), ValueError,
     r"s: expected a finite number >= 0, got -0.1"),
    ("s nan", lambda: cs.soft_threshold(float("nan")), ValueError, r"s: expected a finite"),
    ("s bool", lambda: cs.soft_threshold(True), TypeError,
     r"s: expected a finite number >= 0 \(a real number\), got bool"),
    ("s string", lambda: cs.soft_threshold("0.5"), TypeError,
     r"s: expected a finite number >= 0 \(a real number\), got str"),
    ("unknown unit", lambda: cs.Network([W], [B], ["step"]), ValueError,
     r"units\[0\]: expected one of \['relu', 'sigmoid', 'tanh', 'sign', 'identity'\], "
     r"got 'step'"),
    ("units a string", lambda: cs.Network([W], [B], "relu"), TypeError,
     r"units: expected a sequence, one per layer, got str"),
    ("counts differ", lambda: cs.Network([W], [B, B], ["relu"]), ValueError,
     r"expected one per weight matrix \(1\), got 2 biases and 1 units"),
    ("no layers", lambda: cs.Network([], [], []), ValueError, r"weights: expected at least"),
    ("layers don't chain", lambda: cs.Network([W, torch.ones(1, 3)], [B, torch.zeros(1)],
                                              ["relu", "identity"]), ValueError,
     r"weights\[1\]: shape \(1, 3\) does not follow weights\[0\] of shape \(2, 1\)"),
    ("bias shape", lambda: cs.Network([W], [torch.zeros(3)], ["relu"]), ValueError,
     r"biases\[0\]: shape \(3,\) does not fit weights\[0\] of shape \(2, 1\)"),
    ("x wrong width", lambda: cs.decreasing_order()(torch.ones(3, 4)), ValueError,
     r"x: expected shape \(N, 5\) or \(5,\) for a network with 5 inputs, got \(3, 4\)"),
    ("x integer", lambda: cs.tent()(torch.arange(3)), TypeError,
     r"x: expected a floating-point tensor, got dtype torch.int64"),
    ("net not callable", lambda: cs.check_construction(3, tent_target, torch.zeros(2)),
     TypeError, r"net: expected a callable x -> f\(x\), got int"),
    ("target not callable", lambda: cs.check_construction(cs.tent(), None, torch.zeros(2)),
     TypeError, r"target: expected a callable"),
    ("points a list", lambda: cs.check_construction(cs.tent(), tent_target, [0.0, 1.0]),
     TypeError, r"points: expected a torch.Tensor, got list"),
    ("no points", lambda: cs.check_construction(cs.tent(), tent_target, torch.zeros(0)),
     ValueError, r"points: expected at least one point, got shape \(0,\)"),
    ("net gives a list", lambda: cs.check_construction(lambda t: [0.0], tent_target,
                                                       torch.zeros(2)),
     TypeError, r"net\(points\): expected a torch.Tensor, got list"),
    ("target gives too few rows", lambda: cs.check_construction(cs.tent(), lambda t: t[:1],
                                                                torch.zeros(2)),
     ValueError, r"target\(points\): expected one row per point \(2\), got shape \(1,\)"),
    ("values per point differ", lambda: cs.check_construction(
        cs.tent(), lambda t: torch.stack([t, t], 1), torch.zeros(2)), ValueError,
     r"net and target give different numbers of values per point: 1 and 2"),
    ("no values per point", lambda: cs.check_construction(
        lambda p: p[:, :0], lambda p: p[:, :0], torch.ones(3, 2)), ValueError,
     r"^net\(points\), target\(points\): expected at least one value per point, got none "
     r"from both \(shape \(3, 0\) for 3 points\)$"),
]


@pytest.mark.parametrize("call,error,pattern", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_gives_clear_error(call, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        call()
