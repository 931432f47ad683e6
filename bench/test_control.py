"""The control: a fixed-size matrix product that no change to handgrad can make faster or
slower. When it moves between two runs, the machine moved, not the kernels."""

from __future__ import annotations

import pytest
import torch

M = 512


@pytest.mark.every_grid
@pytest.mark.reference_role
def test_control_matmul(measure, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(M, M, generator=g).to(device)
    b = torch.randn(M, M, generator=g).to(device)
    measure(
        lambda: a @ b,
        group=f"control matmul {M} {device}",
        kernel="control", method=f"matmul_{M}", reference=f"matmul_{M}", role="reference",
        flops=2 * M**3, bytes=3 * 4 * M * M, shape={"N": M}, device=device, dtype=torch.float32,
    )
