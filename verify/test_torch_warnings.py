"""torch's own warnings in handgrad's forward-mode references: ``python -W error`` (which
comes after pyproject's filterwarnings) must not turn torch's jit.script deprecation, raised
when torch first loads its forward-mode decompositions, into a failure of a reference, and
handgrad silences nothing else while it loads them."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from handgrad.testing import references

ROOT = Path(__file__).resolve().parent.parent

# a fresh process: in this one an earlier test may have loaded the decompositions already
FIRST_FORWARD_MODE = """
import torch
from handgrad.testing.references import as_list, course_weights, jacobian_references
ws, _ = course_weights(3)
x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
{call}
print("ok")
"""


@pytest.mark.parametrize(
    "call",
    [
        "jacobian_references(as_list(ws))['autograd_jacobian_forward_mode'](x)",
        "jacobian_references(as_list(ws))['torch_func_jacfwd'](x)",
        "jacobian_references(as_list(ws))['torch_forward_ad'](x)",
        # check_jvp's torch reference is torch.func.jvp: no jacobian_references before it
        "from handgrad.testing import check_jvp\n"
        "report = check_jvp(torch.sin, lambda t, x: torch.cos(x) * t[0], (x[0],))\n"
        "assert 'torch_func_jvp' in report.references, report.references",
        # the bench's jacfwd reference (bench/specs, run from the checkout)
        "from bench.specs.jacobian import make_call\nmake_call('torch_func_jacfwd', ws, x)()",
    ],
    ids=["jacobian_forward_mode", "jacfwd", "forward_ad", "check_jvp", "bench_jacfwd"],
)
def test_first_forward_mode_call_passes_under_w_error(call: str) -> None:
    script = FIRST_FORWARD_MODE.format(call=call)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_load_forward_mode_silences_only_torchs_jit_script_warning(monkeypatch) -> None:
    def loader():  # stands in for torch's: its warning, and two it must let through
        for message, category in [
            (
                "`torch.jit.script` is deprecated. Please switch to `torch.compile` or "
                "`torch.export`.",
                DeprecationWarning,
            ),
            (
                "`torch.jit.script` is not supported in Python 3.14+ and may break. Please "
                "switch to `torch.compile` or `torch.export`.",
                DeprecationWarning,
            ),
            ("handgrad: some other deprecation", DeprecationWarning),
            ("`torch.jit.script` is deprecated (but a UserWarning)", UserWarning),
        ]:
            warnings.warn(message, category, stacklevel=2)

    monkeypatch.setattr(torch.autograd.forward_ad, "_maybe_load_decompositions", loader)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        references.load_forward_mode()
        warnings.warn("after the load", DeprecationWarning, stacklevel=1)  # filter gone
    assert [(w.category, str(w.message)) for w in caught] == [
        (DeprecationWarning, "handgrad: some other deprecation"),
        (UserWarning, "`torch.jit.script` is deprecated (but a UserWarning)"),
        (DeprecationWarning, "after the load"),
    ]


def test_load_forward_mode_without_torchs_loader(monkeypatch) -> None:
    monkeypatch.delattr(torch.autograd.forward_ad, "_maybe_load_decompositions")
    references.load_forward_mode()  # an older or newer torch without it: nothing to do
