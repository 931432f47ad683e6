"""The counting family's benchmark spec: count_model (shape propagation on meta, nothing
computed) beside FlopCounterMode, both on meta tensors (the like-for-like reference, and
the one the gate uses) and executing the same model on real tensors (what counting costs
when the model has to run). Its benchmarks are ``bench/test_counting.py``."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from handgrad.benchmark.methods import Family, Method
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


# count_model is measured against FlopCounterMode on meta tensors: the same kind of work
# (Python and dispatch, no arithmetic). Against the executed model the ratio moved by up
# to 27% between processes of unchanged code, with the convolutions' speed.
FAMILY = Family("counting", {
    "count_model": Method("kernel", reference="flop_counter_mode_meta"),
    "flop_counter_mode_meta": Method("reference"),
    "flop_counter_mode_executed": Method("reference"),
})
FAMILIES = (FAMILY,)


def counting_calls(model_name: str, device: str):
    """(the eager callables of one model by method name, its counted total)."""
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

    return {"count_model": lambda: C.count_model(model, shape),
            "flop_counter_mode_meta": flop_counter_meta,
            "flop_counter_mode_executed": flop_counter}, total
