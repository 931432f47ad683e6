"""In-place elementwise functions the kernels own, where torch's own is the slow part.

``tanh_``: torch's CPU tanh (SLEEF, 1 ulp) ran 3.5x to 6x slower than numpy's vectorised
tanh on this project's machines (2026-12-04, torch 2.13.0+cpu, numpy 2.4, AVX-512: 35 us
against 8 us for 256 x 50 float32, 1.56 ms against 0.26 ms for 1024 x 512, one or two
threads), and it was the largest single cost of a backprop call at N=256, K=50. numpy's
result is within 2 eps relative of the C library's tanh (measured 0.91 eps float32, 1.68
float64; torch's 0.49 and 1.43; ``verify/test_elementwise.py``). It is used only where it
is a plain write into memory the kernel owns: a plain CPU tensor of float32 or float64,
outside torch.compile's trace, of at least ``NUMPY_TANH_MIN`` elements (below it numpy's
call costs more than it saves). torch's tanh runs everywhere else: other devices and
dtypes, subclasses (fake tensors), non-contiguous tensors, torch.compile traces,
torch.func transforms and forward-mode AD, and large tensors when torch has more than
``NUMPY_TANH_MAX_THREADS`` threads to spread them over (numpy runs on one thread).
"""

from __future__ import annotations

import numpy as np
import torch

# below it torch's tanh is as fast as the numpy call's overhead (1 to 300 elements:
# 2.1 to 3.0 us against 2.7 to 5.1 us; 1024 and up: numpy ahead)
NUMPY_TANH_MIN = 1024
# torch's unary ops run on one thread below this many elements (ATen's GRAIN_SIZE)
_TORCH_GRAIN = 32768
# numpy's single thread was ~6x faster than torch's one: more threads than this, torch's
NUMPY_TANH_MAX_THREADS = 4
_NUMPY_DTYPES = (torch.float32, torch.float64)


def batch_takes_numpy_tanh(rows: int, widest: int) -> bool:
    """The kernels' rule, once per call: numpy's tanh (``tanh_``) for a batch of ``rows``
    >= 2 samples whose widest hidden layer holds ``NUMPY_TANH_MIN`` values over the batch;
    torch's for one sample (a layer of K values: the two break even at K = 1024 and the
    products dominate) and for small layers (no size test per layer)."""
    return rows > 1 and rows * widest >= NUMPY_TANH_MIN


def numpy_tanh_applies(z: torch.Tensor) -> bool:
    """Whether ``tanh_`` writes ``z`` through numpy (the conditions in the module's doc)."""
    n = z.numel()
    return (
        n >= NUMPY_TANH_MIN
        and type(z) is torch.Tensor
        and z.device.type == "cpu"
        and z.dtype in _NUMPY_DTYPES
        and (n <= _TORCH_GRAIN or torch.get_num_threads() <= NUMPY_TANH_MAX_THREADS)
        and z.is_contiguous()  # numpy writes through a view of z's memory, once per element
        and not z.requires_grad
        and not torch.compiler.is_compiling()
        and not _in_transform()
    )


def _in_transform() -> bool:
    """Inside a torch.func transform (vmap, grad, jvp: z may be a wrapper numpy cannot see
    through) or forward-mode AD (numpy would update the primal and leave its tangent)."""
    try:
        if torch._C._functorch.maybe_current_level() is not None:
            return True
    except AttributeError:  # a torch without functorch's C API: no transform can be active
        pass
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def tanh_(z: torch.Tensor) -> torch.Tensor:
    """tanh of ``z``, written into ``z``'s own buffer; returns ``z``."""
    # the size first, inline: a small layer (a single x) pays one numel() for this choice
    if z.numel() >= NUMPY_TANH_MIN and numpy_tanh_applies(z):
        a = z.numpy()  # a view of z's memory (z is contiguous or strided: numpy keeps it)
        np.tanh(a, out=a)
        return z
    return z.tanh_()
