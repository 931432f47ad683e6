"""Forward-mode and reverse-mode Jacobians of ``f(x) = W_F rho(W_L ... rho(W_1 x))``, batched,
with an exact operation-count model of both modes.

Forward mode carries the tangent ``T_i = dh_i/dx`` for all D input directions at once,
``T_i = diag(rho'(z_i)) W_i T_{i-1}``, stored transposed as (N, D, K) so each layer is one
(N*D, K) x (K, K) matrix product. Reverse mode runs the primal pass, then carries the
adjoint ``A_i = df/dh_i`` for all P outputs at once, ``A_{i-1} = (A_i W_i) diag(rho'(z_{i-1}))``,
stored as (N, P, K). No torch.autograd inside.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from handgrad.kernels._checks import (
    check_all_finite,
    check_choice,
    check_int,
    check_same,
    check_tensor,
    in_graph,
    shape_str,
)
from handgrad.kernels._elementwise import batch_takes_numpy_tanh, tanh_
from handgrad.kernels.mlp import ACTIVATIONS


def _as_list(name: str, params, prefix: str) -> list[torch.Tensor]:
    """Sequence ``[P1, ..., PL, PF]`` or mapping ``{"P1", ..., "PL", "PF"}`` -> list."""
    if isinstance(params, Mapping):
        depth = len(params) - 1
        keys = [f"{prefix}{i}" for i in range(1, depth + 1)] + [f"{prefix}F"]
        if depth >= 1 and all(k in params for k in keys):  # the usual case, without regexes
            return [params[k] for k in keys]
        numbered = {}
        for key in params:
            m = re.fullmatch(rf"{prefix}([1-9]\d*)", str(key))  # W1, W2, ...: not W0, W01
            if m:
                numbered[int(m.group(1))] = key
            elif key != f"{prefix}F":
                raise ValueError(
                    f"{name}: unexpected key {key!r}; expected '{prefix}1', ..., "
                    f"'{prefix}L' and '{prefix}F'"
                )
        if f"{prefix}F" not in params:
            raise ValueError(f"{name}: missing key '{prefix}F' (the output layer)")
        depth = max(numbered, default=0)
        missing = [f"{prefix}{i}" for i in range(1, depth + 1) if i not in numbered]
        if not numbered or missing:
            raise ValueError(
                f"{name}: missing key(s) {missing or [prefix + '1']}; expected '{prefix}1' "
                f"to '{prefix}{max(depth, 1)}' and '{prefix}F', got {sorted(map(str, params))}"
            )
        return [params[numbered[i]] for i in range(1, depth + 1)] + [params[f"{prefix}F"]]
    if isinstance(params, torch.Tensor) or not isinstance(params, Sequence):
        raise TypeError(
            f"{name}: expected a sequence [{prefix}1, ..., {prefix}L, {prefix}F] or a dict with "
            f"those keys, got {type(params).__name__}"
        )
    return list(params)


def _prepare(weights, biases, x, activation: str):
    """Checked (weights, biases or Nones, x, the widest hidden layer). Every check but the
    finiteness of the values: the kernels read one sum of the result instead
    (``_check_finite_result``)."""
    ws = _as_list("weights", weights, "W")
    if len(ws) < 2:
        raise ValueError(
            f"weights: expected at least W1 and WF (two matrices), got {len(ws)}"
        )
    fit = _weights_fit(ws)
    if not fit:
        _explain_weights(ws)  # raises, unless the only fault is an empty matrix
    bs = _prepare_biases(biases, ws)
    check_choice("activation", activation, ACTIVATIONS)
    x = check_tensor("x", x, ndims=(1, 2))
    if x.device != ws[0].device and ws[0].device.type == "meta":  # not x's fault
        raise ValueError(f"weights[W1]: on the meta device, a shape without values; "
                         f"expected values on x's device ({x.device})")
    check_same("x", x, "weights[W1]", ws[0])
    d = ws[0].shape[1]
    if x.shape[-1] != d:
        raise ValueError(
            f"x: expected shape (N, {d}) or ({d},) to match W1 of shape {shape_str(ws[0])}, "
            f"got {shape_str(x)}"
        )
    if not fit:  # an empty matrix: refused after x, as before
        for n, w in zip(_names(ws), ws):
            if w.numel() == 0:
                raise ValueError(f"weights[{n}]: expected at least one unit in and out, got "
                                 f"shape {shape_str(w)}")
        raise AssertionError("unreachable: _weights_fit and _explain_weights disagree")
    return ws, bs, x, fit


def _names(ws) -> list[str]:
    return [f"W{i + 1}" for i in range(len(ws) - 1)] + ["WF"]


def _check_finite_result(jac: torch.Tensor, ws, bs, x: torch.Tensor) -> torch.Tensor:
    """``jac``, after one read to the host that refuses a NaN or inf in any argument.

    A NaN or inf in a weight reaches every Jacobian it enters: W_i sits in the product
    W_F D_L W_L ... D_1 W_1 (D_i = diag(rho'(z_i))), and a non-finite entry of a matrix
    product stays non-finite whatever it is multiplied by (inf * 0 is NaN, NaN * 0 is NaN)
    through every later product and scaling, so one sum of the result sees it. x and the
    biases reach the Jacobian only through rho'(z_i), where tanh and sigmoid saturate and
    relu masks (an inf there can vanish; b_F is not used at all): their own sums are read
    with the result's. Only when that one number is not finite are the arguments searched,
    by the check that names the culprit (``check_all_finite``); finite values whose sum
    overflows have no culprit and the result is returned, but a Jacobian that itself
    overflows the dtype from finite arguments (weights of 1e20 in float32) is an
    ``OverflowError``: no result is inf. Not inside a graph."""
    if in_graph():
        return jac
    # x . x for one x: one BLAS call, cheaper than a reduction (float16's x^2 would
    # overflow from |x| > 256 on: a sum there)
    one = x.dim() == 1 and x.dtype != torch.float16
    total = jac.sum().item() + (torch.dot(x, x) if one else x.sum()).item()
    if bs[0] is not None:
        total += torch.cat(bs).sum().item()
    if not math.isfinite(total):
        names = _names(ws)
        check_all_finite([*((f"weights[{n}]", w) for n, w in zip(names, ws)),
                          *((f"biases[{n.replace('W', 'b')}]", b) for n, b in zip(names, bs)),
                          ("x", x)])
        if not bool(torch.isfinite(jac).all()):
            raise OverflowError(
                f"the Jacobian overflows {jac.dtype}'s range (largest "
                f"{torch.finfo(jac.dtype).max:.3g}) though the weights, biases and x are "
                "finite: compute in a wider dtype (float64), or scale the weights")
    return jac


def _weights_fit(ws) -> int:
    """One cheap pass for the common case: non-empty floating 2-D tensors of one dtype and
    device whose shapes chain. Small layers are dominated by per-call overhead, checks
    included. Returns the widest hidden layer (rows of W1..WL) when they fit, else 0."""
    w0 = ws[0]
    if not (isinstance(w0, torch.Tensor) and w0.dtype.is_floating_point and w0.dim() == 2
            and w0.shape[1]):  # W1 takes no input: empty
        return 0
    dtype, device, rows, widest = w0.dtype, w0.device, w0.shape[0], 0
    for w in ws[1:]:
        if not rows:  # an empty matrix (the next one, if any, is empty too)
            return 0
        if rows > widest:  # the layer before w is a hidden one
            widest = rows
        if not (isinstance(w, torch.Tensor) and w.dim() == 2 and w.dtype == dtype
                and w.device == device and w.shape[1] == rows):
            return 0
        rows = w.shape[0]
    return widest if rows else 0


def _explain_weights(ws) -> None:
    """Raise the error that says what is wrong with ``ws`` (after _weights_fit failed),
    unless it is only that a matrix is empty: ``_prepare`` refuses that after x's checks."""
    names = _names(ws)
    for i, (n, w) in enumerate(zip(names, ws)):
        check_tensor(f"weights[{n}]", w, ndims=(2,))
        check_same(f"weights[{n}]", w, "weights[W1]", ws[0])
        if i and w.shape[1] != ws[i - 1].shape[0]:
            raise ValueError(
                f"weights[{n}]: shape {shape_str(w)} does not follow {names[i - 1]} of shape "
                f"{shape_str(ws[i - 1])}; expected ({w.shape[0]}, {ws[i - 1].shape[0]})"
            )


def _prepare_biases(biases, ws) -> list:
    if biases is None:
        return [None] * len(ws)
    names = _names(ws)
    bs = _as_list("biases", biases, "b")
    if len(bs) != len(ws):
        raise ValueError(f"biases: expected {len(ws)} (one per weight matrix), got {len(bs)}")
    for n, b, w in zip(names, bs, ws):
        bn = n.replace("W", "b")  # biases[b1] .. biases[bF], as the finite check names them
        check_tensor(f"biases[{bn}]", b, ndims=(1,))
        check_same(f"biases[{bn}]", b, "weights[W1]", ws[0])
        if b.shape[0] != w.shape[0]:
            raise ValueError(
                f"biases[{bn}]: shape {shape_str(b)} does not fit {n} of shape "
                f"{shape_str(w)}; expected ({w.shape[0]},)"
            )
    return bs


# in-place activations: the primal rows are overwritten by rho(z); every rho' below is a
# function of h = rho(z) alone (relu: of its sign, which relu keeps), so z need not be
# kept. ``_rho_`` takes kernels._elementwise.tanh_ instead of torch's where a layer can be
# large enough
_RHO_ = {
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "relu": torch.relu_,
    "identity": lambda t: t,
}


def _rho_(activation: str, x: torch.Tensor, widest: int):
    """rho in place for this call: numpy's tanh (``tanh_``) where
    ``batch_takes_numpy_tanh`` says (a batch with large enough layers), torch's otherwise;
    one x never calls the rule."""
    if activation == "tanh" and x.dim() == 2 and batch_takes_numpy_tanh(x.shape[0], widest):
        return tanh_
    return _RHO_[activation]


# m * rho'(z), with h = rho(z) broadcast over m (over the D tangent directions or the P
# adjoint rows). Two forms: in place, into m's buffer (``_SCALE_``), and a fresh tensor
# (``_SCALED``) for the first tangent or adjoint, which is a broadcast of W_1 or W_F
# scaled once (no expanded copy of it first). Small layers are dispatch-bound: each form
# is two ops (rho' and the product) where the formula allows; no Python-number operand,
# which torch wraps in a tensor per call.
def _scale_tanh_(m, h):
    return m.addcmul_(m, h * h, value=-1)  # m (1 - h^2)


def _scaled_tanh(m, h):
    return torch.addcmul(m, m, h * h, value=-1)


def _scale_sigmoid_(m, h):
    return m.mul_(torch.addcmul(h, h, h, value=-1))  # m h (1 - h)


def _scaled_sigmoid(m, h):
    return m * torch.addcmul(h, h, h, value=-1)


def _scale_relu_(m, h):
    return m.mul_(h > 0)


def _scaled_relu(m, h):
    return m * (h > 0)


def _scale_identity_(m, h):
    return m


def _scaled_identity(m, h):
    return m  # never written in place: every later op makes a new tensor


_SCALE_ = {
    "tanh": _scale_tanh_,
    "sigmoid": _scale_sigmoid_,
    "relu": _scale_relu_,
    "identity": _scale_identity_,
}
_SCALED = {
    "tanh": _scaled_tanh,
    "sigmoid": _scaled_sigmoid,
    "relu": _scaled_relu,
    "identity": _scaled_identity,
}


# one x: the widest hidden layer up to which jacobian_forward keeps the column layout
COLUMN_MAX_WIDTH = 64


@torch.no_grad()
def jacobian_forward(weights, x: torch.Tensor, biases=None, activation: str = "tanh"):
    """(D,) -> (P, D); (N, D) -> (N, P, D): df/dx by forward-mode tangent propagation.

    ``weights``: ``[W1, ..., WL, WF]`` or ``{"W1", ..., "WL", "WF"}`` with W1 (K, D),
    Wi (K, K) (any widths that chain), WF (P, K); ``biases`` likewise (b1..bL, bF) or None.

    One x, hidden layers at most ``COLUMN_MAX_WIDTH`` (64) wide: the textbook's column
    layout, h_i (K, 1) and the tangent T_i = dh_i/dx (K, D), so every layer is W_i T_{i-1}
    with no transpose, T_1 = W_1 scaled by rho'(z_1) (no product) and the Jacobian
    W_F T_L comes out (P, D) as it is returned: the fewest ops, what dispatch-bound small
    layers need. Wider: rows, h_i (K,) and T_i^T (D, K), each layer T_{i-1}^T W_i^T, since
    MKL's product of a (K, K) matrix with a (K, D) one is slow for small D (at K = 1024,
    one thread: 3.5x the time of the row form, 1.25x its instructions; the row form is
    1.15x slower at K = 30 and breaks even near K = 64 to 96).

    A batch: the tangent for all samples is one contiguous (D, N, K) tensor, so a layer
    is one (D N, K) x (K, K) product plus one fused scaling by rho'(z_i), which broadcasts
    over D without a copy. Measured on a 2-core CPU (K = 30 to 1024, N = 1 to 1024)
    against (N, D, K) and (N, K, D) tangents and against primal rows stacked on top of the
    tangent in one product (W_i read once): fastest, or within 8% where stacking wins
    (wide layers, N >= 16), with the fewest ops per layer, which is what small layers
    need. At N = 1 a product with D + 1 rows costs about 3 matrix-vector products of MKL,
    whatever the layout.
    """
    ws, bs, x, widest = _prepare(weights, biases, x, activation)
    rho_, scale_, scaled = _rho_(activation, x, widest), _SCALE_[activation], _SCALED[activation]
    if x.dim() == 1 and widest <= COLUMN_MAX_WIDTH:
        h = x.view(-1, 1)
        for i, (w, b) in enumerate(zip(ws[:-1], bs[:-1])):
            h = rho_(torch.mm(w, h) if b is None else torch.addmm(b.view(-1, 1), w, h))
            if i == 0:  # dz_1/dx = W1: the first tangent needs no product
                t = scaled(w, h)
            else:  # the old tangent let go before rho' is made: one fewer buffer at the peak
                t = torch.mm(w, t)
                scale_(t, h)
        return _check_finite_result(torch.mm(ws[-1], t), ws, bs, x)
    if x.dim() == 1:  # wide layers: rows, T_i^T (D, K)
        h = x
        for i, (w, b) in enumerate(zip(ws[:-1], bs[:-1])):
            h = rho_(F.linear(h, w, b))
            if i == 0:
                t = scaled(w.t(), h)
            else:
                t = F.linear(t, w)
                scale_(t, h)
        return _check_finite_result(torch.mm(ws[-1], t.t()), ws, bs, x)
    n, d = x.shape
    h = rho_(F.linear(x, ws[0], bs[0]))
    # dz_1/dx = W1 for every sample: W1^T (a contiguous (D, K) copy, so that the scaling
    # runs along contiguous rows: fewer instructions than the strided view at K=30,
    # N=1024, 0.72x) broadcast over the samples, scaled into a new (D, N, K) tensor (identity:
    # its expanded copy, which F.linear reads as it is)
    t = scaled(ws[0].t().contiguous().unsqueeze(1), h) if activation != "identity" else \
        ws[0].t().unsqueeze(1).expand(d, n, -1)
    for w, b in zip(ws[1:-1], bs[1:-1]):
        h = rho_(F.linear(h, w, b))
        t = F.linear(t, w)
        scale_(t, h)
    jac = F.linear(t, ws[-1]).permute(1, 2, 0).contiguous()
    return _check_finite_result(jac, ws, bs, x)


@torch.no_grad()
def jacobian_reverse(weights, x: torch.Tensor, biases=None, activation: str = "tanh"):
    """(D,) -> (P, D); (N, D) -> (N, P, D): df/dx by reverse-mode adjoint propagation.

    Same arguments as ``jacobian_forward``. Runs the primal pass keeping h_i = rho(z_i) of
    every layer (N x K x L), then carries the adjoint for all P outputs as (P, N, K) ((P, K)
    for one x), one product with W_i per layer.
    """
    ws, bs, x, widest = _prepare(weights, biases, x, activation)
    rho_, scale_, scaled = _rho_(activation, x, widest), _SCALE_[activation], _SCALED[activation]
    single = x.dim() == 1
    h, hs = (x.unsqueeze(0) if single else x), []
    for w, b in zip(ws[:-1], bs[:-1]):
        h = rho_(F.linear(h, w, b))
        hs.append(h)
    if single:  # adjoints (P, K), rows scaled by h_i (1, K): the products as they stand
        a = scaled(ws[-1], hs[-1])  # df/dh_L = W_F: the first adjoint needs no product
        for i in range(len(ws) - 2, 0, -1):
            a = torch.mm(a, ws[i])  # the old adjoint let go before rho' is made
            scale_(a, hs[i - 1])
        return _check_finite_result(torch.mm(a, ws[0]), ws, bs, x)
    p, n = ws[-1].shape[0], x.shape[0]
    # df/dh_L = W_F for every sample: W_F broadcast over the samples, scaled into a new
    # (P, N, K) tensor, laid out as W_F is (contiguous for the views below: a transposed
    # W_F made one that no view could read), or, for identity, its contiguous copy (nothing
    # writes into it, so it may be W_F itself when N == 1)
    a = scaled(ws[-1].contiguous().unsqueeze(1), hs[-1]) if activation != "identity" else \
        ws[-1].unsqueeze(1).expand(p, n, -1).contiguous()
    # the views name every size: with no samples (n = 0) a -1 would be ambiguous
    for i in range(len(ws) - 2, 0, -1):
        a = (a.view(p * n, a.shape[-1]) @ ws[i]).view(p, n, ws[i].shape[1])
        scale_(a, hs[i - 1])
    jac = (a.view(p * n, a.shape[-1]) @ ws[0]).view(p, n, ws[0].shape[1]).transpose(0, 1)
    jac = jac.contiguous()
    return _check_finite_result(jac, ws, bs, x)


# --- the operation-count model ------------------------------------------------------


def op_count_terms(D: int, K: int, P: int, L: int, N: int = 1) -> dict[str, dict[str, int]]:
    """Multiplications of each mode, term by term, for N inputs of size D, L hidden layers
    of width K and P outputs, rho = tanh (or sigmoid).

    Rule: an (M1 x M2) by (M2 x M3) product costs M1*M2*M3; an element-wise product
    costs one per element. Per input:

    both modes, the primal pass:
      ``primal_matmul``  = K*D + (L-1)*K^2     (W1 x, then W_i h_{i-1})
      ``activation_grad`` = L*K                (rho' = 1 - h*h: one multiply per unit)
    forward mode, tangent T_i (K x D):
      ``tangent_matmul`` = (L-1)*K^2*D + P*K*D (W_i T_{i-1} for i = 2..L, then W_F T_L;
                                                T_1 = W_1 needs no product)
      ``tangent_scale``  = L*K*D               (diag(rho'(z_i)) T_i, i = 1..L)
    reverse mode, adjoint A_i (P x K):
      ``adjoint_matmul`` = (L-1)*P*K^2 + P*K*D (A_i W_i for i = L..2, then A_1 W_1;
                                                A_L = W_F needs no product)
      ``adjoint_scale``  = L*P*K               (A_i diag(rho'(z_i)), i = L..1)

    The difference, forward - reverse = (D - P) * ((L-1) K^2 + L K), so the model
    predicts forward mode cheaper exactly when D < P.
    """
    D, K, P, L, N = (check_int(name, v, minimum=1, what="a positive integer")
                     for name, v in (("D", D), ("K", K), ("P", P), ("L", L), ("N", N)))
    primal = {"primal_matmul": K * D + (L - 1) * K * K, "activation_grad": L * K}
    fwd = {"tangent_matmul": (L - 1) * K * K * D + P * K * D, "tangent_scale": L * K * D}
    rev = {"adjoint_matmul": (L - 1) * P * K * K + P * K * D, "adjoint_scale": L * P * K}
    scale = lambda terms: {k: N * v for k, v in terms.items()}  # noqa: E731
    return {"forward": scale(primal | fwd), "reverse": scale(primal | rev)}


def op_counts(D: int, K: int, P: int, L: int, N: int = 1) -> dict[str, int]:
    """{"forward": int, "reverse": int}: total multiplications of each mode (see
    ``op_count_terms`` for the terms)."""
    terms = op_count_terms(D, K, P, L, N)
    return {mode: sum(t.values()) for mode, t in terms.items()}


def matmul_counts(D: int, K: int, P: int, L: int, N: int = 1) -> dict[str, int]:
    """Matrix-product multiplications only (what FlopCounterMode sees, halved)."""
    terms = op_count_terms(D, K, P, L, N)
    return {mode: sum(v for k, v in t.items() if k.endswith("matmul")) for mode, t in terms.items()}


def predicted_mode(D: int, K: int, P: int, L: int) -> str:
    """'forward', 'reverse' or 'tie': the mode the op-count model says is cheaper."""
    c = op_counts(D, K, P, L)
    if c["forward"] == c["reverse"]:
        return "tie"
    return "forward" if c["forward"] < c["reverse"] else "reverse"
