"""handgrad kernels: hand-derived derivatives on torch tensors, device and dtype agnostic.

No kernel calls torch.autograd or torch.func; references for them live in ``verify/``
and ``bench/``.
"""

from handgrad.kernels import (
    backprop,
    constructions,
    counting,
    counting_backward,
    counting_ops,
    counts,
    finite_diff,
    jacobian,
    least_squares,
    mlp,
    receptive_field,
)

__all__ = [
    "backprop", "constructions", "counting", "counting_backward", "counting_ops", "counts",
    "finite_diff", "jacobian", "least_squares", "mlp", "receptive_field",
]
