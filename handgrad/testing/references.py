"""Independent torch references for the MLP kernels: written with plain torch ops so
autograd, torch.func and gradcheck can differentiate them. Nothing here imports the
kernel under test except to read the parameters out of an ``MLP``."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from handgrad.kernels import backprop as bp
from handgrad.kernels.mlp import MLP
from handgrad.testing.tolerances import check_float_dtype

# One spelling per torch reference, shared by verify's comparisons (``assert_close``'s and
# the checks' ``reference``, so ``--verify-report``) and the bench's records
# (``BenchRecord.reference`` and a reference's ``method``), so that the two reports join on
# it. A bench record may carry a variant (``reference_key`` maps it back): a ``gd_`` prefix
# (the least-squares family's names), ``_vmap_`` (batched under torch.func.vmap),
# ``_compiled`` (torch.compile of it) or ``_cross_entropy`` (the loss); a verify label may
# add a qualifier in parentheses, e.g. "torch_autograd (float64)".
REFERENCES = {
    "torch_autograd": "torch.autograd.grad of the loss written with plain torch ops "
                      "(torch_loss); for a user's function, its backward",
    "torch_func_grad": "torch.func.grad of the same loss, every parameter and x",
    "torch_func_jvp": "torch.func.jvp: forward-mode directional derivative",
    "torch_func_jacfwd": "torch.func.jacfwd of the network (a batch: under torch.func.vmap)",
    "torch_func_jacrev": "torch.func.jacrev of the network (a batch: under torch.func.vmap)",
    "autograd_jacobian": "torch.autograd.functional.jacobian (reverse mode) of the summed "
                         "network",
    "autograd_jacobian_forward_mode": "torch.autograd.functional.jacobian(strategy="
                                      "'forward-mode', vectorize=True)",
    "torch_forward_ad": "torch.autograd.forward_ad, one dual tangent per input coordinate",
    "plain_forward": "the network's forward pass alone: the floor under any Jacobian",
    "torch_optim_sgd": "torch.optim.SGD steps on autograd's gradient (momentum where the "
                       "kernel has it, no dampening)",
    "torch_lstsq": "torch.linalg.lstsq (gelsd on the CPU): the least-squares minimiser",
    "torch_pinv": "torch.linalg.pinv: the minimum-norm solution",
    "flop_counter_mode_meta": "torch.utils.flop_counter.FlopCounterMode over the model on "
                              "meta tensors",
    "flop_counter_mode_executed": "FlopCounterMode over the model executed on real tensors",
}


def reference_key(name: str) -> str | None:
    """The ``REFERENCES`` key a recorded or reported reference name spells, or None when it
    names none (a formula, finite differences, a user's own reference)."""
    key = name.split(" (", 1)[0].removeprefix("gd_").replace("_vmap_", "_")
    key = key.removesuffix("_compiled").removesuffix("_cross_entropy")
    return key if key in REFERENCES else None


# torch's message when it scripts its forward-mode decompositions (torch 2.13: "is deprecated";
# on Python 3.14: "is not supported in Python 3.14+"), matched from its start
_JIT_SCRIPT_WARNING = r"`torch\.jit\.script` is "


def load_forward_mode() -> None:
    """Have torch load its forward-mode decompositions now, with the one warning that
    loading raises silenced. torch loads them with ``torch.jit.script`` on the first
    forward-mode call in a process (``torch.autograd.forward_ad.make_dual``,
    ``torch.func.jvp``/``jacfwd``, ``jacobian(strategy="forward-mode")``), and from torch
    2.13 jit.script warns (DeprecationWarning) that it is deprecated: torch's own warning,
    which ``python -W error`` made an error in the first forward-mode reference of a
    session (the command line's -W comes after pyproject's filters). Only that message, of
    that category, during that load is silenced; a no-op once loaded, and where torch has
    no such loader."""
    load = getattr(torch.autograd.forward_ad, "_maybe_load_decompositions", None)
    if load is None:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_SCRIPT_WARNING, category=DeprecationWarning)
        load()


TORCH_ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "identity": lambda z: z,
}


def torch_loss(
    weights, biases, x, y, *, activation: str, loss: str, reduction: str = "mean"
) -> torch.Tensor:
    """The loss J written the obvious way: F.linear layers and the textbook loss formulas.

    log-cosh uses the naive log(cosh(r)): fine as a float64 reference for |r| < 700;
    cross-entropy is torch.nn.functional.cross_entropy of the logits.
    """
    single = x.dim() == 1
    h = x.unsqueeze(0) if single else x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = F.linear(h, w, b)
        if i < len(weights) - 1:
            h = TORCH_ACTIVATIONS[activation](h)
    if loss == "cross_entropy":  # y: class indices of any integer dtype, or probabilities
        t = y.reshape(h.shape) if y.dtype.is_floating_point else y.reshape(-1).long()
        return F.cross_entropy(h, t, reduction=reduction)
    r = h - y.reshape(h.shape)
    per_sample = (0.5 * r**2).sum(1) if loss == "squared" else torch.log(torch.cosh(r)).sum(1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def autograd_grads(net: MLP, x, y, *, loss: str, reduction: str = "mean"):
    """(J, [dW...], [db...], dx) by torch.autograd.grad on ``torch_loss``."""
    ws = [w.detach().clone().requires_grad_() for w in net.weights]
    bs = [b.detach().clone().requires_grad_() for b in net.biases]
    xx = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        J = torch_loss(ws, bs, xx, y, activation=net.activation, loss=loss, reduction=reduction)
        grads = torch.autograd.grad(J, ws + bs + [xx])
    n = len(ws)
    return J.detach(), list(grads[:n]), list(grads[n : 2 * n]), grads[-1]


def func_grads(net: MLP, x, y, *, loss: str, reduction: str = "mean"):
    """(J, [dW...], [db...], dx) by torch.func.grad_and_value over a parameter dict."""
    n = net.depth
    params = {f"W{i}": w for i, w in enumerate(net.weights)}
    params |= {f"b{i}": b for i, b in enumerate(net.biases)}

    def J(p, xx):
        ws = [p[f"W{i}"] for i in range(n)]
        bs = [p[f"b{i}"] for i in range(n)]
        return torch_loss(ws, bs, xx, y, activation=net.activation, loss=loss, reduction=reduction)

    (gp, gx), value = torch.func.grad_and_value(J, argnums=(0, 1))(params, x)
    return value, [gp[f"W{i}"] for i in range(n)], [gp[f"b{i}"] for i in range(n)], gx


class BackpropFunction(torch.autograd.Function):
    """The manual kernel as an autograd Function, so torch.autograd.gradcheck can test
    its backward against numerical differentiation of its forward."""

    @staticmethod
    def forward(ctx, x, y, activation, loss, reduction, *params):
        n = len(params) // 2
        net = MLP(weights=params[:n], biases=params[n:], activation=activation)
        g = bp.backprop(net, x, y, loss=loss, reduction=reduction)
        ctx.save_for_backward(*g.weights, *g.biases, g.input)
        return g.loss

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        dx, dparams = saved[-1], saved[:-1]
        return (grad_out * dx, None, None, None, None, *(grad_out * p for p in dparams))


# --- deep networks f(x) = W_F rho(W_L ... rho(W_1 x)) for the Jacobian kernels --------


def course_weights(L: int, D: int = 2, K: int = 30, P: int = 10, *, seed: int = 0,
                   dtype=torch.float64, device="cpu", biases: bool = False):
    """The course's dictionary form {"W1", ..., "WL", "WF"}: W1 K x D, Wi K x K, WF P x K."""
    check_float_dtype("dtype", dtype)
    g = torch.Generator().manual_seed(seed)
    shapes = {"W1": (K, D), **{f"W{i}": (K, K) for i in range(2, L + 1)}, "WF": (P, K)}
    ws = {k: (torch.randn(s, generator=g, dtype=torch.float64) / s[1] ** 0.5).to(device, dtype)
          for k, s in shapes.items()}
    if not biases:
        return ws, None
    bs = {k.replace("W", "b"): (0.1 * torch.randn(s[0], generator=g, dtype=torch.float64))
          .to(device, dtype) for k, s in shapes.items()}
    return ws, bs


def as_list(d, prefix="W"):
    n = len(d) - 1
    return [d[f"{prefix}{i}"] for i in range(1, n + 1)] + [d[f"{prefix}F"]]


def deep_net(ws, bs=None, activation: str = "tanh"):
    """f for one input (D,) -> (P,), written with plain torch ops."""
    rho = TORCH_ACTIVATIONS[activation]

    # written as torch users write it (h @ W^T, a bias only when there is one): the
    # benchmarks time torch.func on this, so it must not carry avoidable work
    def f(x):
        h = x
        for i, w in enumerate(ws):
            h = h @ w.t() if bs is None else h @ w.t() + bs[i]
            if i < len(ws) - 1:
                h = rho(h)
        return h

    return f


def jacobian_references(ws, bs=None, activation: str = "tanh"):
    """name (a ``REFERENCES`` key, or finite_diff.jacobian) -> function (N, D) -> (N, P, D)
    computing the Jacobian with torch's machinery (the forward-mode ones: torch's
    decompositions loaded first, ``load_forward_mode``)."""
    load_forward_mode()
    f = deep_net(ws, bs, activation)
    fb = f  # f is row-wise, so it takes a batch (N, D) as it is

    def summed(x):  # samples are independent: d(sum_n f(x_n))/dx = per-sample Jacobians
        return fb(x).sum(0)

    def forward_ad(x):
        import torch.autograd.forward_ad as fwAD

        cols = []
        with fwAD.dual_level():
            for j in range(x.shape[1]):
                tangent = torch.zeros_like(x)
                tangent[:, j] = 1
                out = fb(fwAD.make_dual(x, tangent))
                cols.append(fwAD.unpack_dual(out).tangent)
        return torch.stack(cols, dim=-1)

    def finite_differences(x):
        from handgrad.kernels import finite_diff

        return torch.stack([finite_diff.jacobian(f, xi) for xi in x])

    return {  # REFERENCES' names; finite differences are handgrad's own
        "autograd_jacobian": lambda x: torch.autograd.functional.jacobian(
            summed, x
        ).transpose(0, 1),
        "autograd_jacobian_forward_mode": lambda x: (
            torch.autograd.functional.jacobian(
                summed, x, strategy="forward-mode", vectorize=True
            ).transpose(0, 1)
        ),
        "torch_func_jacfwd": torch.func.vmap(torch.func.jacfwd(f)),
        "torch_func_jacrev": torch.func.vmap(torch.func.jacrev(f)),
        "torch_forward_ad": forward_ad,
        "finite_diff.jacobian": finite_differences,
    }
