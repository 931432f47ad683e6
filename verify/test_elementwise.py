"""kernels._elementwise.tanh_: numpy's tanh where it applies, torch's everywhere else.

The values are checked against Python's ``math.tanh`` (the C library's, correctly rounded
to within an ulp of float64) and against torch's own tanh; the path taken is checked by
which function wrote the result."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handgrad.kernels import _elementwise
from handgrad.kernels._elementwise import NUMPY_TANH_MIN, numpy_tanh_applies, tanh_


def _grid(n: int, dtype: torch.dtype) -> torch.Tensor:
    # dense near 0 (relative accuracy of tiny values), then out to saturation
    t = torch.linspace(-1.0, 1.0, n, dtype=torch.float64) ** 5 * 20
    return t.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_path_matches_the_c_library_tanh_to_an_eps(dtype):
    z = _grid(20001, dtype)
    assert numpy_tanh_applies(z)
    ref = torch.tensor([math.tanh(v) for v in z.double().tolist()], dtype=torch.float64)
    got = tanh_(z.clone()).double()
    eps = torch.finfo(dtype).eps
    rel = ((got - ref).abs() / ref.abs().clamp_min(torch.finfo(dtype).tiny)).max().item()
    # measured 2026-12-04: numpy 0.91 / 1.68 eps (float32 / float64), torch's own 0.49 / 1.43
    assert rel <= 2 * eps, f"max relative error {rel / eps:.2f} eps"
    # and agrees with torch's own to the same bound
    ours = tanh_(z.clone())
    theirs = torch.tanh(z)
    assert ((ours - theirs).abs() <= 3 * eps * theirs.abs()).all()


def _spy(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = np.tanh

    def spy(a, out=None):
        calls.append(a.size)
        return real(a, out=out)

    monkeypatch.setattr(_elementwise.np, "tanh", spy)
    return calls


def test_writes_in_place_and_returns_its_argument_on_both_paths(monkeypatch):
    calls = _spy(monkeypatch)
    for n in (NUMPY_TANH_MIN, 3):
        z = torch.linspace(-3, 3, n)
        ptr = z.data_ptr()
        out = tanh_(z)
        assert out is z and z.data_ptr() == ptr
        torch.testing.assert_close(z, torch.tanh(torch.linspace(-3, 3, n)))
    assert calls == [NUMPY_TANH_MIN]  # the small one went to torch


class _Sub(torch.Tensor):
    pass


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda: torch.randn(64, 64, dtype=torch.bfloat16), "bfloat16: numpy has none"),
        (lambda: torch.randn(64, 64, dtype=torch.float16), "float16: torch's own"),
        (lambda: torch.randn(NUMPY_TANH_MIN - 1), "below NUMPY_TANH_MIN"),
        (lambda: torch.randn(64, 64).as_subclass(_Sub), "a tensor subclass"),
        (lambda: torch.randn(64, 64, requires_grad=True), "a tensor that requires grad"),
    ],
)
def test_torch_runs_where_numpy_does_not_apply(monkeypatch, make, why):
    calls = _spy(monkeypatch)
    z = make()
    ref = torch.tanh(z.detach())
    assert not numpy_tanh_applies(z), why
    if z.requires_grad:
        return  # an in-place write of a leaf that requires grad is torch's own error
    out = tanh_(z)
    assert out is z and calls == []
    torch.testing.assert_close(z.as_subclass(torch.Tensor), ref.as_subclass(torch.Tensor))


def test_large_tensors_go_to_torch_when_it_has_many_threads(monkeypatch):
    z = torch.randn(256, 256)  # above torch's single-thread grain
    monkeypatch.setattr(torch, "get_num_threads", lambda: _elementwise.NUMPY_TANH_MAX_THREADS)
    assert numpy_tanh_applies(z)
    monkeypatch.setattr(torch, "get_num_threads",
                        lambda: _elementwise.NUMPY_TANH_MAX_THREADS + 1)
    assert not numpy_tanh_applies(z)
    assert numpy_tanh_applies(torch.randn(128, 128))  # under the grain: one thread anyway


def test_not_inside_a_compile_trace(monkeypatch):
    z = torch.randn(64, 64)
    assert numpy_tanh_applies(z)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not numpy_tanh_applies(z)


def test_the_kernels_take_it_for_their_hidden_layers(monkeypatch):
    """backprop and both Jacobian kernels write their tanh layers through ``tanh_``: one
    numpy call per hidden layer at sizes where it applies."""
    from handgrad.kernels.backprop import backprop
    from handgrad.kernels.jacobian import jacobian_forward, jacobian_reverse
    from handgrad.kernels.mlp import init_mlp

    calls = _spy(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    net = init_mlp([13, 50, 50, 50, 1], generator=gen)  # three hidden layers
    x, y = torch.randn(256, 13, generator=gen), torch.randn(256, 1, generator=gen)
    backprop(net, x, y)
    assert calls == [256 * 50] * 3
    calls.clear()
    ws = [torch.randn(40, 2, generator=gen), torch.randn(40, 40, generator=gen),
          torch.randn(10, 40, generator=gen)]
    xs = torch.randn(64, 2, generator=gen)  # a batch: (64, 40) hidden layers
    jacobian_forward(ws, xs)
    jacobian_reverse(ws, xs)
    assert calls == [64 * 40] * 4


def test_not_for_views_numpy_would_write_wrongly_or_inside_transforms():
    assert not numpy_tanh_applies(torch.randn(64, 64).t())  # strided
    assert not numpy_tanh_applies(torch.randn(1, 2048).expand(4, 2048))  # overlapping
    seen = []

    def probe(z):
        seen.append(numpy_tanh_applies(z))
        return z

    torch.func.vmap(probe)(torch.randn(3, 2048))
    import torch.autograd.forward_ad as fwad

    from handgrad.testing.references import load_forward_mode

    load_forward_mode()  # torch's jit.script warning at its first forward-mode call
    with fwad.dual_level():
        dual = fwad.make_dual(torch.randn(2048), torch.randn(2048))
        seen.append(numpy_tanh_applies(dual))
    assert seen == [False, False]
    assert numpy_tanh_applies(torch.randn(2048))  # and outside them, again


def test_one_sample_keeps_torchs_tanh_even_for_wide_layers(monkeypatch):
    """One x: a layer of K values, where numpy and torch break even (K=1024) and the
    products dominate: the kernels keep torch's tanh, the code path they had before."""
    from handgrad.kernels.backprop import backprop
    from handgrad.kernels.jacobian import jacobian_forward, jacobian_reverse
    from handgrad.kernels.mlp import init_mlp

    calls = _spy(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    ws = [torch.randn(2048, 2, generator=gen), torch.randn(10, 2048, generator=gen)]
    jacobian_forward(ws, torch.randn(2, generator=gen))
    jacobian_reverse(ws, torch.randn(2, generator=gen))
    jacobian_forward(ws, torch.randn(1, 2, generator=gen))  # a batch of one
    net = init_mlp([3, 2048, 1], generator=gen)
    backprop(net, torch.randn(3, generator=gen), torch.randn(1, generator=gen))
    backprop(net, torch.randn(1, 3, generator=gen), torch.randn(1, 1, generator=gen))
    assert calls == []
