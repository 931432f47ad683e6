"""count_model (shape propagation on meta, nothing computed) beside FlopCounterMode, both
on meta tensors (the like-for-like reference, and the one the gate uses) and executing the
same model on real tensors (what counting costs when the model has to run). The spec
(models, methods, callables): bench/specs/counting.py."""

from __future__ import annotations

import pytest
import torch

from bench.specs.counting import FAMILY, MODELS, counting_calls
from handgrad.benchmark.methods import method_params, peers


@pytest.mark.parametrize("method", method_params(FAMILY))
@pytest.mark.parametrize("model_name", [
    pytest.param(m, marks=[pytest.mark.full] if m == "large_conv_stack" else []) for m in MODELS
])
def test_counting(measure, method: str, model_name: str, device: str) -> None:
    calls, total = counting_calls(model_name, device)
    measure(
        **peers(FAMILY, method, calls, device).measure_kwargs(),
        group=f"counting {model_name} {device}",
        # the executed model does the model's work; the meta walk does none of it
        flops=total.flops if method == "flop_counter_mode_executed" else 0, bytes=0,
        model=model_name,
        shape={"N": MODELS[model_name][1][0]}, device=device, dtype=torch.float32,
    )
