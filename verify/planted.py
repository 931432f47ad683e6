"""Copies of kernels/backprop.py with one of the usual students' bugs planted: the source
text with one line replaced, executed as a module of its own (the real kernel is never
touched). Used to show that the attribution and the Taylor test recognise each bug.

The copies are meant for ``NET_SIZES``: 4 layers, hidden widths all 6 so that a transpose
or another layer's activation gives a gradient of the right shape (W2 and W3 are 6 x 6).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "kernels" / "backprop.py"
NET_SIZES = (5, 6, 6, 6, 2)
BATCH = 8


@dataclass(frozen=True)
class Bug:
    name: str
    old: str  # a line of kernels/backprop.py
    new: str  # what replaces it in the copy
    layer: int  # the first layer (1-based) from the output side whose gradient is wrong
    tensor: str  # "dW" or "db": the first of that layer's gradients that is wrong
    signature: str  # what handgrad.testing.attribution must call it


BUGS = [
    Bug("sign_flip_dW3",
        "        dws[i] = delta.t() @ hs[i]\n",
        "        dws[i] = (delta.t() @ hs[i]) * (-1.0 if i == 2 else 1.0)\n",
        3, "dW", "sign flip"),
    Bug("transpose_dW2",
        "        dws[i] = delta.t() @ hs[i]\n",
        "        dws[i] = (hs[i].t() @ delta) if i == 1 else delta.t() @ hs[i]\n",
        2, "dW", "transpose"),
    Bug("missing_1_over_N",
        '    scale = 1.0 / x2.shape[0] if reduction == "mean" else 1.0\n',
        "    scale = 1.0\n",
        4, "dW", "constant factor"),
    Bug("activation_of_layer3_in_layer2",
        "            delta = _times_activation_grad_(net.activation, dh, hs[i], spare)\n",
        # the kernel has let layer 3's activation go by then: the bug recomputes it,
        # h_3 = rho(h_2 W_3^T + b_3), and takes rho' from it in layer 2
        "            delta = _times_activation_grad_(net.activation, dh, _ACTIVATE_[\n"
        "                net.activation](hs[i] @ net.weights[i].t() + net.biases[i])\n"
        "                if i == 2 else hs[i], spare)\n",
        2, "dW", "activation of the wrong layer"),
    Bug("output_of_layer2_in_dW2",
        "        dws[i] = delta.t() @ hs[i]\n",
        # layer 2's output h_2 = rho(h_1 W_2^T + b_2) where its input h_1 belongs
        "        dws[i] = delta.t() @ (_ACTIVATE_[net.activation](\n"
        "            hs[i] @ net.weights[i].t() + net.biases[i]) if i == 1 else hs[i])\n",
        2, "dW", "activation of the wrong layer"),
]
BUG_IDS = [b.name for b in BUGS]


def planted_backprop(bug: Bug) -> types.ModuleType:
    """A module like kernels.backprop whose ``backprop`` carries ``bug``."""
    src = SOURCE.read_text()
    if src.count(bug.old) != 1:
        raise AssertionError(f"{bug.name}: the line to replace is not once in {SOURCE}; "
                             f"update verify/planted.py to the kernel: {bug.old!r}")
    name = f"planted_backprop_{bug.name}"
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        exec(compile(src.replace(bug.old, bug.new), module.__file__, "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module
