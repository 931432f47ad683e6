"""Compiled peers: torch.compile of a zero-argument callable, compiled outside any timing.

``compile_call(fn, device)`` compiles ``fn`` the way a user of that device would
(``mode="reduce-overhead"`` on CUDA: CUDA graphs; ``"default"`` on the CPU), makes the
first calls (the compile itself, and on CUDA the CUDA-graph warm-up and recording) and
returns ``(compiled, compile_s, mode)``; ``compile_s`` is the wall time of those first
calls, recorded as ``BenchRecord.compile_s`` and never part of the per-call time. When
torch.compile or a first call raises, the test skips with torch's reason (exception type,
first line of its message, torch version): torch 2.11 cannot compile vmap(jacfwd(f)).

Call ``reset()`` once at the start of each compiled benchmark, before compiling its
callables (the kernel and its interleaved reference): the benches build their callables
from the same source lines for every shape, so without it Dynamo's per-code cache fills
up across benchmarks and falls back to eager. Never reset between compiling a kernel and
its reference: reset drops the compiled code of both.
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Callable

import pytest
import torch

from handgrad.benchmark.timing import cuda_peak

WARMUP_CALLS = {"default": 1, "reduce-overhead": 3}  # CUDA graphs record on the 3rd call
# what Dynamo raises for a graph break under fullgraph=True
GRAPH_BREAKS = (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError)


CAPTURE_MODE = "cuda_graph"  # BenchRecord.compile_mode of a captured method


def capture_call(fn: Callable[[], object], device: str, *, name: str,
                 cuda=None) -> tuple[Callable[[], object], float, int]:
    """``(replay, capture_s, peak_bytes)``: ``fn`` recorded into a CUDA graph by
    ``kernels.capture`` (warm-up and recording outside any timing; ``capture_s`` goes to
    ``BenchRecord.compile_s``). A replay allocates nothing, so the peak memory recorded is
    the capture's: what the warm-up and the graph's pool took at their peak. Skips off
    CUDA with the reason."""
    if torch.device(device).type != "cuda":
        pytest.skip(f"{name}: CUDA graphs replay on a GPU only (device {device})")
    from handgrad.kernels.capture import capture

    start = []

    def record():  # timed from after the device is idle to after the recording finished
        start.append(time.perf_counter())
        return capture(fn, cuda=cuda)

    replay, peak = cuda_peak(record, cuda)
    return replay, time.perf_counter() - start[0], peak


def peak_while(make: Callable[[], object], device: str, cuda=None) -> tuple[object, int | None]:
    """``(make(), peak bytes allocated while it ran)`` on CUDA (None elsewhere): the peak of
    a compile with its warm-up calls and CUDA-graph recording, measured as capture_call
    measures a capture's."""
    if torch.device(device).type != "cuda":
        return make(), None
    return cuda_peak(make, cuda)


def compile_mode(device: str) -> str:
    """The mode a user of ``device`` compiles with."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


def reset() -> None:
    """Drop every compiled graph and guard (Dynamo's caches): a fresh start per benchmark."""
    torch._dynamo.reset()


def failure_reason(name: str, exc: BaseException) -> str:
    """torch's reason, in one line: the exception's type, its first line, torch's version."""
    lines = str(exc).strip().splitlines()
    return (f"torch.compile of {name} fails in torch {torch.__version__}: "
            f"{type(exc).__name__}: {lines[0] if lines else ''}")


# torch's message when a module it imports defines script methods (torch 2.13: "is
# deprecated"; on Python 3.14: "is not supported in Python 3.14+"), matched from its start
_SCRIPT_METHOD_WARNING = r"`torch\.jit\.script_method` is "
INDUCTOR_ENTRY = "torch._inductor.compile_fx"  # what inductor imports at its first compile


def load_inductor() -> None:
    """Import inductor's compiler now, with the one warning that import raises silenced.
    torch imports it at the first inductor compile of a process, and on that path imports
    ``torch.utils.mkldnn``, whose class body decorates with ``torch.jit.script_method``:
    from torch 2.13 that warns (DeprecationWarning) that it is deprecated, torch's own
    warning, which ``-W error`` (the command line's -W comes after pyproject's filters) made
    an error inside the compile, so that the first compiled benchmark of a session skipped
    (compile_call). Only that message, of that category, during that import is silenced; a
    no-op once imported (a later import raises nothing). The forward-mode counterpart is
    ``handgrad.testing.references.load_forward_mode``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SCRIPT_METHOD_WARNING,
                                category=DeprecationWarning)
        importlib.import_module(INDUCTOR_ENTRY)


# inductor's lowering of aten.diagonal (torch.func's jacfwd/jacrev graphs) calls torch's own
# deprecated torch._prims_common.check (torch 2.13), warning at every such compile
_PRIMS_CHECK_WARNING = r"`torch\._prims_common\.check` is deprecated"


def compile_call(fn: Callable[[], object], device: str, *, name: str,
                 backend: str | Callable | None = None, fullgraph: bool = False,
                 mode: str | None = None) -> tuple[Callable[[], object], float, str]:
    """``(compiled, compile_s, mode)`` for ``fn``, its first calls made (see the module).

    ``fullgraph=True`` for handgrad's kernels: each compiles whole (verify/test_graph.py),
    so a graph break is an error here, never a silent fall-back to eager pieces; torch's
    references (torch.func) compile as torch lets them.

    ``backend`` (default: inductor) is for tests only: ``verify`` compiles with
    ``"aot_eager"`` (Dynamo and AOTAutograd trace the same graph, without inductor's
    code generation, which takes tens of seconds per graph on 2 cores).

    ``mode`` overrides the device's (``compile_mode``): the least-squares factorisations
    read their LAPACK status on the host, which a CUDA graph cannot record, so they compile
    with ``"default"`` on every device.

    Two warnings of torch's own, raised inside torch where no user of it can act on them,
    are silenced here, each by its message and category and only while it can arise, so
    that ``-W error`` (which overrides pyproject's filters) does not turn them into a
    skipped benchmark: inductor's import (``load_inductor``) and, during the first calls
    (the compile), inductor's call of its deprecated ``torch._prims_common.check``.
    """
    mode = mode or compile_mode(device)
    cuda = torch.device(device).type == "cuda"
    t0 = time.perf_counter()
    try:
        if backend is None or backend == "inductor":
            load_inductor()
        kwargs = {"backend": backend} if backend is not None else {"mode": mode}
        compiled = torch.compile(fn, fullgraph=fullgraph, dynamic=False, **kwargs)
        with warnings.catch_warnings():  # the compile happens in the first calls
            warnings.filterwarnings("ignore", message=_PRIMS_CHECK_WARNING,
                                    category=FutureWarning)
            for _ in range(WARMUP_CALLS[mode]):
                compiled()
        if cuda:
            torch.cuda.synchronize(device)
    except Exception as exc:  # torch's own failure: the benchmark cannot exist here
        if fullgraph and isinstance(exc, GRAPH_BREAKS):  # one of our kernels broke its
            raise  # graph: that is a bug, not a skip
        pytest.skip(failure_reason(name, exc))
    return compiled, time.perf_counter() - t0, mode if backend is None else backend
