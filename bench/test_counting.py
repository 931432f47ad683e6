"""count_model (shape propagation on meta, nothing computed) beside FlopCounterMode, both
on meta tensors (the like-for-like reference, and the one the gate uses) and executing the
same model on real tensors (what counting costs when the model has to run)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from handgrad.kernels import counting as C
from verify.models import InceptionI, InceptionII, MnistCNN, alexnet_28


def wide_resnet_like() -> nn.Sequential:
    """A large model: 8 3x3 convs of 512 channels on 64x64 (~19M params, ~77 GMACs)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 512, 3, padding=1), nn.ReLU()]
    for _ in range(7):
        layers += [nn.Conv2d(512, 512, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


MODELS = {
    "inception_I": (InceptionI, (1, 256, 32, 32)),
    "inception_II": (InceptionII, (1, 256, 32, 32)),
    "mnist_cnn": (MnistCNN, (1, 1, 28, 28)),
    "alexnet_28": (alexnet_28, (1, 1, 28, 28)),
    "large_conv_stack": (wide_resnet_like, (1, 3, 64, 64)),
}


ROLES = {"count_model": "kernel", "flop_counter_mode_meta": "reference",
          "flop_counter_mode_executed": "reference"}


@pytest.mark.parametrize("method", list(ROLES))
@pytest.mark.parametrize("model_name", [
    pytest.param(m, marks=[pytest.mark.full] if m == "large_conv_stack" else []) for m in MODELS
])
def test_counting(measure, method: str, model_name: str, device: str) -> None:
    make, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = make().to(device).eval()
    x = torch.randn(shape, device=device)
    total = C.count_model(model, shape).total

    def flop_counter():
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
        return fc.get_total_flops()

    meta_model = copy.deepcopy(model).to("meta")
    x_meta = torch.empty(shape, device="meta")

    def flop_counter_meta():
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            meta_model(x_meta)
        return fc.get_total_flops()

    calls = {"count_model": lambda: C.count_model(model, shape),
             "flop_counter_mode_meta": flop_counter_meta,
             "flop_counter_mode_executed": flop_counter}
    # count_model is measured against FlopCounterMode on meta tensors: the same kind of
    # work (Python and dispatch, no arithmetic). Against the executed model the ratio
    # moved by up to 27% between processes of unchanged code, with the convolutions' speed.
    reference = "flop_counter_mode_meta" if method == "count_model" else method
    measure(
        calls[method],
        reference_fn=None if reference == method else calls[reference],
        group=f"counting {model_name} {device}",
        kernel="counting", method=method, reference=reference, role=ROLES[method],
        # the executed model does the model's work; the meta walk does none of it
        flops=total.flops if method == "flop_counter_mode_executed" else 0, bytes=0,
        model=model_name,
        shape={"N": shape[0]}, device=device, dtype=torch.float32,
    )
