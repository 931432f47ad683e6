"""Instruction counts of one call, under valgrind's callgrind: the bench suite's
``--bench-instructions`` mode.

A count is a number, not a distribution: the same code on the same inputs executes the same
instructions, whatever else the machine is doing, so a regression of 2% is visible where the
wall clock needs many runs to see 10%. The whole pytest run is one valgrind process
(``reexec_command``: pytest re-executes itself under ``valgrind --tool=callgrind
--collect-atstart=no``), so nothing is counted until a benchmark switches collection on.
For each benchmark ``count`` warms the call up outside the collection, then switches it on
(``torch._C._valgrind_toggle``), makes ``calls`` calls with Python's garbage collector
paused, switches it off and dumps the totals (``torch._C._valgrind_toggle_and_dump_stats``),
and reads the instructions of the dump (its ``summary:`` line) back from the file callgrind
wrote. A call whose first (warm-up) run is slow gets fewer calls (``plan``): a count does
not need many calls to be exact, and the suite's slowest calls (gradient descent for
k=1000 steps, ~5e8 instructions) would otherwise take most of the run. One thread
(torch.set_num_threads(1)); PYTHONHASHSEED fixed by the re-execution, so two runs of the
same tree take the same paths through dicts and sets.

What is measured is the interpreter that runs pytest (``sys.executable``): unlike
``torch.utils.benchmark.Timer.collect_callgrind``, which starts ``python`` from PATH.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# set in the environment of the re-executed pytest: the folder callgrind writes into
ENV_DIR = "HANDGRAD_CALLGRIND_DIR"
OUT_NAME = "callgrind.out"  # callgrind writes OUT_NAME.<pid>, then .<pid>.<n> per dump
CALLS = 10  # counted calls per benchmark, after WARMUP calls outside the collection
WARMUP = 3
# wall seconds (under valgrind) a count may take, roughly: a call slower than this over
# WARMUP + CALLS calls is warmed up once and counted over fewer calls (``plan``)
BUDGET_S = 10.0
# benchmarks above this many analytic FLOPs a call are not counted: callgrind runs code
# ~50x slower, and at such sizes the arithmetic, not handgrad's Python and dispatch, is
# the count (the wall-clock gate covers them)
MAX_FLOPS = 50_000_000
INSTALL_HINT = ("valgrind not found on PATH: --bench-instructions counts instructions "
                "under valgrind's callgrind; install it (Debian/Ubuntu: "
                "apt-get install valgrind)")


class CallgrindError(RuntimeError):
    """A count could not be read back from callgrind's output."""


def valgrind_path() -> str | None:
    return shutil.which("valgrind")


def under_callgrind() -> bool:
    """This process is the re-executed pytest, running under callgrind."""
    return bool(os.environ.get(ENV_DIR))


def reexec_command(valgrind: str, out_dir: str | Path, args: Sequence[str],
                   python: str | None = None) -> list[str]:
    """The command line that runs ``python -m pytest ARGS`` under callgrind with collection
    off until a benchmark switches it on."""
    return [valgrind, "--tool=callgrind", "--collect-atstart=no", "-q",
            f"--callgrind-out-file={Path(out_dir) / OUT_NAME}.%p",
            python or sys.executable, "-m", "pytest", *args]


def reexec_env(out_dir: str | Path, environ: dict | None = None) -> dict:
    env = dict(os.environ if environ is None else environ)
    env[ENV_DIR] = str(out_dir)
    env["PYTHONHASHSEED"] = "0"  # the same dict and set orders in every counted run
    return env


_SUMMARY = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)


def read_dump(path: str | Path) -> int:
    """Instructions (event Ir) in one callgrind dump: its ``summary:`` line."""
    text = Path(path).read_bytes()
    m = _SUMMARY.search(text)
    if m is None:
        raise CallgrindError(f"{path}: no 'summary:' line; not a callgrind dump?")
    return int(m.group(1))


def _dumps(out_dir: Path) -> dict[int, Path]:
    """Numbered dumps of this process: OUT_NAME.<pid>.<n> -> {n: path}."""
    prefix = f"{OUT_NAME}.{os.getpid()}."
    found = {}
    for p in out_dir.glob(prefix + "*"):
        tail = p.name[len(prefix):]
        if tail.isdigit():
            found[int(tail)] = p
    return found


def plan(first_s: float, calls: int = CALLS, warmup: int = WARMUP,
         budget_s: float = BUDGET_S) -> tuple[int, int]:
    """(further warm-up calls, counted calls) once the first warm-up call took ``first_s``
    seconds: ``warmup - 1`` and ``calls`` while all of them fit in ``budget_s``; otherwise
    no further warm-up and as many calls as fit, at least one, at most ``calls``."""
    if (warmup + calls) * first_s <= budget_s:
        return warmup - 1, calls
    return 0, max(1, min(calls, int(budget_s // first_s)))


def count(fn: Callable[[], object], calls: int = CALLS, warmup: int = WARMUP,
          out_dir: str | Path | None = None, toggle=None, dump=None,
          budget_s: float = BUDGET_S, clock: Callable[[], float] = time.perf_counter) -> int:
    """Instructions of one call of ``fn``: the total of ``calls`` calls, collected by
    callgrind after ``warmup`` calls outside the collection, divided by ``calls`` (rounded).
    With ``warmup`` >= 1 the first warm-up call is timed and a slow call is counted over
    fewer calls (``plan``). ``toggle`` and ``dump`` default to torch's valgrind client
    requests (tests pass stand-ins, and a ``clock``)."""
    import torch

    if calls < 1:
        raise ValueError(f"calls: expected a positive integer, got {calls!r}")
    if warmup < 0:
        raise ValueError(f"warmup: expected a non-negative integer, got {warmup!r}")
    out = Path(out_dir or os.environ.get(ENV_DIR) or "")
    if not out_dir and not under_callgrind():
        raise CallgrindError("not running under callgrind: run pytest with "
                             "--bench-instructions")
    toggle = toggle or torch._C._valgrind_toggle
    dump = dump or torch._C._valgrind_toggle_and_dump_stats
    if warmup:
        start = clock()
        fn()
        warmup, calls = plan(clock() - start, calls, warmup, budget_s)
    for _ in range(warmup):
        fn()
    before = set(_dumps(out))
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside the window would count another call's garbage
    try:
        toggle()
        for _ in range(calls):
            fn()
        dump()
    finally:
        if enabled:
            gc.enable()
    new = {n: p for n, p in _dumps(out).items() if n not in before}
    if len(new) != 1:
        raise CallgrindError(f"expected one new callgrind dump in {out}, found {len(new)}")
    (path,) = new.values()
    total = read_dump(path)
    path.unlink()  # a dump a benchmark: the folder stays small
    return round(total / calls)
