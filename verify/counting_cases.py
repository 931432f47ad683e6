"""Counting test cases shared by the forward and backward counting tests (not a test
module itself): the convolutions (``CONVS``), the worked models with their expected counts
(``WORKED``), ``n_params``."""

from __future__ import annotations

from torch import nn

from handgrad.kernels import counting as C
from verify.models import InceptionI, InceptionII, MnistCNN, alexnet_28


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


CONVS = [  # (c_in, c_out, k, stride, padding, dilation, groups, bias)
    (3, 8, 3, 1, 1, 1, 1, True),
    (3, 8, 3, 1, 1, 1, 1, False),
    (8, 16, 5, 2, 2, 1, 1, True),     # strided
    (8, 16, 3, 1, 2, 2, 1, True),     # dilated
    (8, 16, 3, 1, 1, 1, 4, True),     # grouped
    (16, 16, 3, 1, 1, 1, 16, False),  # depthwise
    (16, 32, 1, 1, 0, 1, 1, True),    # pointwise
    (4, 6, (3, 5), (1, 2), (1, 2), 1, 2, True),  # rectangular, grouped
]




def expected_inception_i():
    return conv_relu_counts(256, 124, 1) + conv_relu_counts(256, 192, 3) + conv_relu_counts(
        256, 96, 5)


def expected_inception_ii():
    return (conv_relu_counts(256, 124, 1) + conv_relu_counts(256, 64, 1)
            + conv_relu_counts(64, 192, 3) + conv_relu_counts(256, 64, 1)
            + conv_relu_counts(64, 96, 5) + conv_relu_counts(256, 64, 1))


def expected_mnist(batch=1):
    c1 = C.conv2d_counts(1, 10, 5, (24, 24), batch=batch)
    p1 = C.pool2d_counts(10, 2, (12, 12), batch=batch) + C.activation_counts(batch * 10 * 144)
    c2 = C.conv2d_counts(10, 20, 5, (8, 8), batch=batch)
    p2 = C.pool2d_counts(20, 2, (4, 4), batch=batch) + C.activation_counts(batch * 20 * 16)
    f1 = C.linear_counts(320, 50, nonlinearity=True, batch=batch)
    return c1 + p1 + c2 + p2 + f1 + C.linear_counts(50, 10, batch=batch)


def expected_alexnet():
    return (C.conv2d_counts(1, 96, 4, (25, 25), nonlinearity=True)
            + C.conv2d_counts(96, 96, 3, (23, 23), nonlinearity=True)
            + C.conv2d_counts(96, 256, 5, (23, 23), nonlinearity=True)
            + C.pool2d_counts(256, 3, (11, 11))
            + C.conv2d_counts(256, 384, 3, (11, 11), nonlinearity=True)
            + C.conv2d_counts(384, 384, 3, (11, 11), nonlinearity=True)
            + C.conv2d_counts(384, 256, 3, (11, 11), nonlinearity=True)
            + C.pool2d_counts(256, 3, (5, 5))
            + C.linear_counts(6400, 800, nonlinearity=True) + C.linear_counts(800, 10))


def conv_relu_counts(c_in, c_out, k, hw=(32, 32), batch=1):
    return C.conv2d_counts(c_in, c_out, k, hw, nonlinearity=True, batch=batch)


WORKED = {
    "inception_model_I_32x32x256": (InceptionI, (1, 256, 32, 32), expected_inception_i),
    "inception_model_II_32x32x256": (InceptionII, (1, 256, 32, 32), expected_inception_ii),
    "mnist_cnn": (MnistCNN, (1, 1, 28, 28), expected_mnist),
    "alexnet_style_28x28": (alexnet_28, (1, 1, 28, 28), expected_alexnet),
}
