"""The machine's measured ceilings, per device and dtype: a matrix product large enough to
saturate the device (the compute roof) and a large copy (the bandwidth roof). The report's
roofline draws both from these records; the 512 control stays the drift check it is."""

from __future__ import annotations

import pytest
import torch

# square matmul size and copied bytes per device: large enough to saturate it, small
# enough for the grid's time (2-core CPU: ~0.3 s a product, ~0.1 s a copy)
MATMUL_N = {"cpu": 1536, "cuda": 8192}
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 4 * 2**30}
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.bfloat16, torch.float16)}


def ceiling_params():
    return [pytest.param(dt, id=str(dt).removeprefix("torch."))
            for dt in (torch.float32, torch.bfloat16, torch.float16)]


def _device_kind(device: str) -> str:
    return torch.device(device).type


@pytest.mark.every_grid
@pytest.mark.reference_role
@pytest.mark.parametrize("dtype", ceiling_params())
def test_ceiling_matmul(measure, device: str, dtype: torch.dtype) -> None:
    kind = _device_kind(device)
    if dtype not in DTYPES[kind]:
        pytest.skip(f"{dtype} matmul ceiling is measured on CUDA only (CPU: float32)")
    n = MATMUL_N[kind]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    itemsize = a.element_size()
    measure(lambda: a @ b, group=f"ceiling matmul {n} {device} {dtype}",
            kernel="ceiling", method="matmul", reference="matmul", role="reference",
            flops=2 * n**3, bytes=3 * itemsize * n * n, shape={"N": n}, device=device, dtype=dtype)


@pytest.mark.every_grid
@pytest.mark.reference_role
def test_ceiling_copy(measure, device: str) -> None:
    kind = _device_kind(device)
    numel = COPY_BYTES[kind] // 4
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    # bytes moved: every element read once and written once
    measure(lambda: dst.copy_(src), group=f"ceiling copy {device}",
            kernel="ceiling", method="copy", reference="copy", role="reference",
            flops=0, bytes=2 * 4 * numel, shape={"N": numel}, device=device, dtype=torch.float32)
