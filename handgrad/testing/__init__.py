"""Check a hand-written derivative, and compare tensors the way handgrad's own suite does.

- ``check_vjp(f, vjp, args)`` and ``check_jvp(f, jvp, args)``: a reverse- or forward-mode
  derivative of any ``f`` against torch's and central differences, per argument, with the
  dtype's tolerance (``handgrad.testing.checks``).
- ``assert_close(actual, expected)``: shape, device, dtype, then values against the
  tolerance table; a failure names the worst element and the errors.
- ``Tol``, ``tol_for`` and the tables ``FORWARD``, ``GRAD``, ``FINITE_DIFF``.
- ``diagnose(grads, net, x, y)``: where a hand-derived MLP backprop (a
  ``handgrad.kernels.backprop.Gradients`` for a ``handgrad.kernels.mlp.MLP``) first
  disagrees with autograd, layer by layer, and the bug signature that explains it.
- ``references``: plain-torch references of handgrad's kernels (losses, gradients by
  autograd and torch.func, Jacobians), differentiable by torch.

Under pytest every comparison is recorded for ``--verify-report``.
"""

from handgrad.testing.attribution import Diagnosis, diagnose
from handgrad.testing.checks import (
    ArgumentCheck,
    CheckReport,
    check_jvp,
    check_vjp,
    signature,
)
from handgrad.testing.compare import assert_close
from handgrad.testing.tolerances import FINITE_DIFF, FORWARD, GRAD, Tol, tol_for

__all__ = [
    "FINITE_DIFF",
    "FORWARD",
    "GRAD",
    "ArgumentCheck",
    "CheckReport",
    "Diagnosis",
    "Tol",
    "assert_close",
    "check_jvp",
    "check_vjp",
    "diagnose",
    "signature",
    "tol_for",
]
