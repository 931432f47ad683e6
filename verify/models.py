"""The course's worked convolution cases as nn.Modules, shared by verify/ and bench/."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_relu(c_in: int, c_out: int, k: int) -> nn.Sequential:
    """k x k convolution, stride 1, 'same' padding, followed by ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.ReLU())


class InceptionI(nn.Module):
    """Three parallel convs on 256 channels: 1x1 -> 124, 3x3 -> 192, 5x5 -> 96; concat."""

    def __init__(self):
        super().__init__()
        self.b1 = conv_relu(256, 124, 1)
        self.b3 = conv_relu(256, 192, 3)
        self.b5 = conv_relu(256, 96, 5)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x)], dim=1)


class InceptionII(nn.Module):
    """Model I with 1x1 bottlenecks: 1x1 256 -> 124; three 1x1 256 -> 64 reductions, one
    feeding a 3x3 64 -> 192, one a 5x5 64 -> 96, the third a branch of its own; concat."""

    def __init__(self):
        super().__init__()
        self.b1 = conv_relu(256, 124, 1)
        self.r3 = conv_relu(256, 64, 1)
        self.b3 = conv_relu(64, 192, 3)
        self.r5 = conv_relu(256, 64, 1)
        self.b5 = conv_relu(64, 96, 5)
        self.rp = conv_relu(256, 64, 1)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(self.r3(x)), self.b5(self.r5(x)), self.rp(x)], 1)


class MnistCNN(nn.Module):
    """conv 1 -> 10 k5, max-pool 2, conv 10 -> 20 k5, max-pool 2, linear 320 -> 50 -> 10,
    with functional relu and pooling as in the classic PyTorch example."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.view(-1, 320)))
        return self.fc2(x)


def alexnet_28() -> nn.Sequential:
    """AlexNet-style for 28x28x1: ReLU after every conv and the hidden linear layer."""
    return nn.Sequential(
        nn.Conv2d(1, 96, 4), nn.ReLU(),               # 28 -> 25
        nn.Conv2d(96, 96, 3), nn.ReLU(),              # 25 -> 23
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(),  # 23
        nn.MaxPool2d(3, 2),                           # 23 -> 11
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, 2),                           # 11 -> 5
        nn.Flatten(),
        nn.Linear(6400, 800), nn.ReLU(),
        nn.Linear(800, 10),
    )
