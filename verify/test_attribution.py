"""Attribution of a wrong backprop: the first layer from the output side whose gradient
disagrees, and the bug's signature, on copies of the kernel with each usual bug planted."""

from __future__ import annotations

import pytest
import torch

from handgrad.kernels import backprop as bp
from handgrad.testing.attribution import diagnose
from handgrad.testing.compare import unrecorded
from handgrad.testing.references import autograd_grads
from verify.backprop_cases import check_all, problem
from verify.planted import BATCH, BUG_IDS, BUGS, Bug, planted_backprop


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("bug", BUGS, ids=BUG_IDS)
def test_each_planted_bug_is_named_with_its_layer_and_signature(bug: Bug, activation: str):
    net, x, y = problem(activation)
    grads = planted_backprop(bug).backprop(net, x, y)
    d = diagnose(grads, net, x, y)
    assert (d.layer, d.tensor, d.signature) == (bug.layer, bug.tensor, bug.signature), d.message()
    # every layer nearer the output than the culprit agrees
    assert all(c.agrees for c in d.checks if c.layer > bug.layer)
    assert f"is layer {bug.layer} ({bug.tensor}{bug.layer})" in d.message()


def test_the_factor_is_named_as_the_batch_size():
    net, x, y = problem()
    bug = BUGS[BUG_IDS.index("missing_1_over_N")]
    d = diagnose(planted_backprop(bug).backprop(net, x, y), net, x, y)
    assert f"dW4 = 8 (N = {BATCH}, the batch size) x reference" in d.detail


def test_the_right_kernel_gets_no_attribution():
    net, x, y = problem()
    d = diagnose(bp.backprop(net, x, y), net, x, y)
    assert d.layer is None and d.signature is None and all(c.agrees for c in d.checks)
    assert len(d.checks) == 2 * net.depth
    assert d.message().startswith("attribution: every dW and db agrees")


def test_an_unknown_bug_is_located_but_not_named():
    net, x, y = problem()
    g = bp.backprop(net, x, y)
    noisy = g.biases[1] + 1e-3 * torch.arange(6, dtype=torch.float64)  # no usual signature
    bad = bp.Gradients(g.loss, g.weights, (g.biases[0], noisy, *g.biases[2:]), g.input)
    d = diagnose(bad, net, x, y)
    assert (d.layer, d.tensor, d.signature) == (2, "db", None)
    assert "no known bug signature fits" in d.message()


def test_a_failing_backprop_check_says_where_the_error_starts():
    net, x, y = problem()
    bug = BUGS[BUG_IDS.index("activation_of_layer3_in_layer2")]
    grads = planted_backprop(bug).backprop(net, x, y)
    ref = autograd_grads(net, x, y, loss="squared")
    with unrecorded(), pytest.raises(AssertionError) as info:
        check_all(grads, ref, reference="torch_autograd",
                  problem=(net, x, y, "squared", "mean"))
    text = str(info.value)
    # the comparison helper's report of the first tensor it met (dW1, input side) ...
    assert "backprop vs torch_autograd [dJ/dW1]" in text
    # ... and the attribution: the error starts two layers nearer the output
    assert "is layer 2 (dW2); signature: activation of the wrong layer" in text
    assert "rho'(z_3) of layer 3" in text


def test_a_bug_whose_line_left_the_kernel_is_refused():
    # the planted copies replace a line of kernels/backprop.py: if the kernel changes so
    # that the line is gone, say so instead of testing an unplanted copy
    ghost = Bug("ghost", "    this line is not in the kernel\n", "", 1, "dW", "sign flip")
    with pytest.raises(AssertionError, match="ghost: the line to replace is not once in"):
        planted_backprop(ghost)
