"""handgrad's benchmark machinery, public through the pytest plugin (``handgrad.plugin``):
the ``measure`` fixture times any callable beside any reference and writes one
``handgrad.reports.record.BenchRecord`` into pytest-benchmark's ``extra_info``.

- ``timing``: how a call is timed per device (perf_counter on the CPU; CUDA events with no
  host sync inside the window on a GPU, cold L2 on request) and its peak memory.
- ``compiled``: compiled (``torch.compile``) and captured (CUDA graph) peers of a callable,
  compiled outside any timing.
- ``callgrind``: instruction counts of one call under valgrind (``--bench-instructions``).

This module holds what the fixture and the ``--bench-*`` options do, so that the plugin
stays a thin layer of pytest hooks: ``measure_with`` (the fixture's body), the record a
measurement writes (``bench_record``), the thread count, the grid a benchmark belongs to,
the machine info of a run and the ``--bench-instructions`` re-execution.

It imports without pytest (the ``test`` extra): the functions that need it import it
themselves, so ``trace`` and ``timing`` work in an install without the extra.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from handgrad.benchmark.timing import finished, peak_bytes, timing_for
from handgrad.reports.record import ROLES, BenchRecord

if TYPE_CHECKING:  # pytest is the test extra's: imported where a function needs it, so
    import pytest  # that handgrad.benchmark.trace (and this module) import without it

GRIDS = ("quick", "full", "gpu")
# families that measure the machine, not a kernel: timed, never counted or slowed
MACHINE_FAMILIES = ("control", "ceiling")

MAX_THREADS = 2**31 - 1  # the most torch.set_num_threads takes (a C int)

# the markers the grids select on (registered by the plugin)
MARKERS = (
    "full: part of the full benchmark grid only (--bench-grid=full)",
    "gpu_grid: GPU-sized, part of the gpu benchmark grid only (--bench-grid=gpu, CUDA)",
    "every_grid: part of every benchmark grid (the control and the ceilings)",
    "cuda: needs a CUDA device (skipped when none is present)",
    "reference_role: a reference's own benchmark (role 'reference', or the machine's): "
    "skipped at collection under --bench-kernels-only",
    "captured: a CUDA-graph replay: skipped at collection where the test's device is not "
    "CUDA",
)


# ------------------------------------------------------------------------ the options

def bench_threads(config: pytest.Config) -> int:
    """torch's CPU threads for the session: --bench-threads, else all cores (at most 8)
    shared among pytest-xdist workers; one under --bench-instructions."""
    import pytest

    if config.getoption("--bench-instructions"):
        return 1  # instruction counts are taken on one thread
    n = config.getoption("--bench-threads")
    if n is not None and not 1 <= n <= MAX_THREADS:  # torch's count is a C int: beyond it,
        # torch.set_num_threads had ended the session in an overflow (INTERNALERROR)
        raise pytest.UsageError(f"--bench-threads: expected an integer from 1 to "
                                f"{MAX_THREADS} (torch's thread count), got {n}")
    if n:
        return n
    # a pytest-xdist worker shares the cores with its siblings: n workers x all cores
    # threads would oversubscribe the machine (benchmarks are disabled under xdist anyway)
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    return max(1, min(os.cpu_count() or 1, 8) // workers)


def plugin_conflict(pytest_version: str, benchmark_version: str | None) -> str | None:
    """The one pairing inside pyproject's ranges that cannot work, said plainly: before
    5.3.1, pytest-benchmark's fixture reads Node._nodeid, which pytest 9.2 removed."""
    def release(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", v)[:3])

    if benchmark_version and release(benchmark_version) < (5, 3, 1) and release(
            pytest_version) >= (9, 2):
        return (f"pytest-benchmark {benchmark_version} cannot run under pytest "
                f"{pytest_version} (it reads Node._nodeid, removed in pytest 9.2): install "
                "pytest-benchmark>=5.3.1 or pytest<9.2")
    return None


def benchmark_version() -> str | None:
    try:
        return metadata.version("pytest-benchmark")
    except metadata.PackageNotFoundError:
        return None


def bench_slow(config: pytest.Config) -> dict[str, float]:
    """--bench-slow KERNEL.METHOD=FACTOR entries as {"kernel.method": factor}; a malformed
    entry is a usage error."""
    import pytest

    out = {}
    for entry in config.getoption("--bench-slow"):
        name, sep, factor = entry.partition("=")
        try:
            value = float(factor)
        except ValueError:
            value = float("nan")
        if not sep or "." not in name or not value >= 1:
            raise pytest.UsageError(
                f"--bench-slow: expected KERNEL.METHOD=FACTOR with FACTOR >= 1 "
                f"(e.g. backprop.manual=1.25), got {entry!r}"
            )
        out[name.strip()] = value
    return out


def benchmark_json_path(config: pytest.Config) -> Path | None:
    """Where --benchmark-json writes, whatever pytest-benchmark's version: a path (5.3 and
    newer) or a file it has already opened for writing (4.0 to 5.2)."""
    target = getattr(config.option, "benchmark_json", None)
    if target is None:
        return None
    return Path(target.name if hasattr(target, "write") else target)


def configure(config: pytest.Config) -> None:
    """The session's benchmark settings, before anything runs: the version check, the
    --bench-instructions re-execution, the thread count when asked for, --bench-slow's
    format, the --benchmark-json folder."""
    import pytest

    conflict = plugin_conflict(pytest.__version__, benchmark_version())
    if conflict:
        raise pytest.UsageError(conflict)
    if config.getoption("--bench-instructions"):
        instruction_mode(config)  # returns only under callgrind (the re-executed run)
    refuse_xdist_output(config)
    if config.getoption("--bench-threads") is not None or config.getoption(
            "--bench-instructions"):
        fix_threads(config)  # asked for: before anything runs (else see select_grid)
    bench_slow(config)  # a malformed --bench-slow is a usage error (one line)
    # pytest-benchmark >= 5.3 writes --benchmark-json at the end of the session and fails
    # then if the folder is missing, so make it now (older versions open the file while
    # parsing the command line)
    target = benchmark_json_path(config)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)


# pytest-benchmark's options that ask for timings out of the session: under pytest-xdist
# it disables every benchmark (one warning), so each would be written or compared empty
OUTPUT_OPTIONS = (("benchmark_json", "--benchmark-json"), ("benchmark_save", "--benchmark-save"),
                  ("benchmark_autosave", "--benchmark-autosave"),
                  ("benchmark_compare", "--benchmark-compare"),
                  ("benchmark_compare_fail", "--benchmark-compare-fail"))


def refuse_xdist_output(config: pytest.Config) -> None:
    """A timed run that asks for its timings (``OUTPUT_OPTIONS``) under pytest-xdist is a
    usage error, as --bench-instructions is: pytest-benchmark disables benchmarks there, so
    the session passed and wrote nothing (its "automatically disabled" warning aside).
    Checks alone (--benchmark-skip or --benchmark-disable) may still use -n."""
    import pytest

    if getattr(config, "workerinput", None) is not None:
        return  # the controller refuses, before any worker starts
    if config.getoption("dist", default="no") in ("no", None) or config.getoption(
            "benchmark_skip", default=False) or config.getoption(
            "benchmark_disable", default=False):
        return
    asked = [flag for dest, flag in OUTPUT_OPTIONS if config.getoption(dest, default=None)]
    if asked:
        raise pytest.UsageError(
            f"{asked[0]}: benchmarks are not timed under pytest-xdist (pytest-benchmark "
            f"disables them with -n), so {asked[0]} would get nothing: run the timed "
            "benchmarks without -n (or with -n 0 where addopts sets it)")


def fix_threads(config: pytest.Config) -> None:
    """One fixed torch thread count for the whole session (``bench_threads``), recorded in
    machine_info and every benchmark's extra_info: CPU timings are meaningless without it.
    Set when the session runs a benchmark or asks for a count; a session of checks only
    keeps the project's own setting."""
    torch.set_num_threads(bench_threads(config))


def instruction_mode(config: pytest.Config) -> None:
    """--bench-instructions: in the process the user started, run the same pytest command
    under callgrind and exit with its status; in that re-executed process, return."""
    import pytest

    from handgrad.benchmark import callgrind

    if config.getoption("--bench-slow"):
        raise pytest.UsageError("--bench-slow spins for a multiple of a call's time; with "
                                "--bench-instructions it would count the spinning: plant a "
                                "code change instead")
    if callgrind.under_callgrind():
        return
    if getattr(config, "workerinput", None) is not None or config.getoption(
            "numprocesses", default=None):
        raise pytest.UsageError("--bench-instructions: counts are taken in one process; "
                                "drop -n (pytest-xdist)")
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()  # the child writes to the real stdout/stderr
    valgrind = callgrind.valgrind_path()
    if valgrind is None:
        print(f"error: {callgrind.INSTALL_HINT}", file=sys.stderr, flush=True)
        os._exit(2)
    import shutil
    import subprocess
    import tempfile

    out_dir = tempfile.mkdtemp(prefix="handgrad-callgrind-")
    try:
        rc = subprocess.call(callgrind.reexec_command(valgrind, out_dir,
                                                      config.invocation_params.args),
                             cwd=config.invocation_params.dir,
                             env=callgrind.reexec_env(out_dir))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # this process ran nothing: the child's status is the run's


def machine_info(config: pytest.Config, info: dict) -> None:
    """What every benchmark file records of its run, beside pytest-benchmark's own."""
    from handgrad.benchmark.timing import gpu_info
    from handgrad.reports.record import SCHEMA, SCHEMA_KEY

    info[SCHEMA_KEY] = SCHEMA  # the extra_info layout of every benchmark
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["cpu_count"] = os.cpu_count()
    info["platform"] = platform.platform()
    info.update({"cuda": None, "gpu": None, **gpu_info()})
    info["bench_grid"] = config.getoption("--bench-grid")
    info["bench_kernels_only"] = bool(config.getoption("--bench-kernels-only", default=False))
    info["bench_slow"] = bench_slow(config)
    info["bench_mode"] = "instructions" if config.getoption(
        "--bench-instructions") else "time"


def select_grid(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fixes the thread count when a collected test uses ``measure``; then which benchmarks
    a grid runs. quick: the unmarked ones; full: those and ``full``;
    gpu: ``gpu_grid`` (GPU-sized, CUDA only) and ``every_grid`` (control, ceilings)."""
    import pytest

    if any("measure" in getattr(item, "fixturenames", ()) for item in items):
        fix_threads(config)  # a session that times something: one thread count for all
    grid = config.getoption("--bench-grid")
    kernels = config.getoption("--bench-kernels-only", default=False)
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        # before the test sets its problem up (seconds a case under callgrind), where
        # measure would skip it after
        if kernels and "reference_role" in marks:
            item.add_marker(pytest.mark.skip(reason=KERNELS_ONLY_SKIP))
        device = _param(item, "device")
        if "captured" in marks and device is not None and \
                torch.device(device).type != "cuda":
            item.add_marker(pytest.mark.skip(
                reason=f"CUDA graphs replay on a GPU only (device {device})"))
        if grid == "gpu":
            if not marks & {"gpu_grid", "every_grid"}:
                item.add_marker(pytest.mark.skip(reason="not in the gpu grid "
                                                 "(--bench-grid=quick or full)"))
            elif "gpu_grid" in marks and _param(item, "device") not in (None, "cuda"):
                item.add_marker(pytest.mark.skip(reason="gpu grid: GPU-sized, CUDA only"))
        elif "gpu_grid" in marks:
            item.add_marker(pytest.mark.skip(reason="gpu grid only (--bench-grid=gpu)"))
        elif "full" in marks and grid != "full":
            item.add_marker(pytest.mark.skip(reason="full benchmark grid only "
                                             "(--bench-grid=full)"))


def _param(item: pytest.Item, name: str):
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get(name)


# ------------------------------------------------------------------------ measuring

def slowed(fn: Callable[[], object], factor: float) -> Callable[[], object]:
    """``fn`` made ``factor`` times as slow by spinning for (factor - 1) x its own time after
    each call: a stand-in for a regression, for testing the gate (``--bench-slow``)."""

    def run() -> object:
        t0 = time.perf_counter()
        out = fn()
        until = time.perf_counter() + (factor - 1) * (time.perf_counter() - t0)
        while time.perf_counter() < until:
            pass
        return out

    return run


def warm_up(fn: Callable[[], object], times: int) -> list[float]:
    """Call ``fn`` up to ``times`` times before timing; one call is enough warm-up for a
    call that takes over 50 ms (caches, allocator and dispatch are warm after it). Returns
    the seconds of each call (the calibration's first samples, ``round_seconds``). A
    ``fn`` not callable or ``times`` not an integer >= 1 is refused by name (times=1.5 was
    range()'s raw TypeError, times=0 an empty warm-up)."""
    _check_callable("fn", fn)
    times = check_count("times", times, 1, "warm-up calls")
    took = []
    for _ in range(times):
        took.append(_time(fn))
        if took[-1] > 0.05:
            break
    return took


def _check_callable(name: str, fn: object, none: bool = False) -> None:
    if not (callable(fn) or (none and fn is None)):
        raise TypeError(f"{name}: expected a callable of no arguments"
                        + (" or None" if none else "") + f", got {_got_call(fn)}")


def _got_call(value: object) -> str:
    """What a message says it got where a callable was expected: a tensor by its shape,
    dtype and device, with what to pass instead (its values had filled the screen: a
    result given for the call that makes it); anything else by its type and value."""
    if isinstance(value, torch.Tensor):
        return (f"a Tensor of shape {tuple(value.shape)} ({value.dtype} on {value.device}): "
                "a result, not the call that makes it; pass the call, e.g. "
                "lambda: kernel(x)")
    return f"{type(value).__name__} {value!r:.200}"


def _seconds(name: str, value: object) -> float:
    """A time in seconds: a finite real number >= 0 (not a bool), else named."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected seconds (a finite number >= 0), got "
                        f"{type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected seconds (a finite number >= 0), got {value!r}")
    return float(value)


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# timed calls of each callable, besides its first (cold) one, that the round size is
# estimated from (``round_seconds``)
CALIBRATION_CALLS = 3


def round_seconds(run: Callable[[], object], ref: Callable[[], object] | None,
                  run_times: list[float], ref_times: list[float], budget: float,
                  time_call: Callable[[Callable[[], object]], float] = _time) -> float:
    """Seconds one round takes (a call of ``run``, and of ``ref`` when interleaved), to size
    the rounds: the minimum of each callable's timed calls, those of the warm-up
    (``run_times``, ``ref_times``: the first one cold) and the calibration's, as
    pytest-benchmark's calibration (with warm-up) and timeit's ``repeat`` take it. A call is
    slowed by what else the machine does, never sped up: one slow call (a page fault, the
    scheduler, a collection) does not shrink a benchmark to its minimum rounds, as it did
    when the size came from one call.

    Cost, bounded: one calibration call of each (as before), more only while a callable
    has fewer than ``CALIBRATION_CALLS`` timed calls besides its first and the calibration
    has taken under ``budget`` seconds (``measure_with``: a quarter of
    --benchmark-max-time). After the default warm-up (3 calls, each under 50 ms) no call
    is added; otherwise at most ``CALIBRATION_CALLS - 1`` pairs, started within
    ``budget``.

    Refused by name: ``run``, ``ref`` or ``time_call`` not callable; ``run_times``,
    ``ref_times`` not sequences of seconds (finite numbers >= 0); a ``budget`` that is not
    one; a time_call that returns one that is not (a nan among the times had made the
    round size nan, and 10,000 rounds taken)."""
    _check_callable("run", run)
    _check_callable("ref", ref, none=True)
    _check_callable("time_call", time_call)
    budget = _seconds("budget", budget)
    times = {}
    for name, given in (("run_times", run_times), ("ref_times", ref_times)):
        if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)):
            raise TypeError(f"{name}: expected a list of seconds, got "
                            f"{type(given).__name__} {given!r}")
        times[name] = [_seconds(f"{name}[{i}]", t) for i, t in enumerate(given)]
    run_times, ref_times = times["run_times"], times["ref_times"]
    spent = 0.0
    while True:
        run_times.append(_seconds("time_call", time_call(run)))
        spent += run_times[-1]
        if ref is not None:
            ref_times.append(_seconds("time_call", time_call(ref)))
            spent += ref_times[-1]
        short = len(run_times) <= CALIBRATION_CALLS or (
            ref is not None and len(ref_times) <= CALIBRATION_CALLS)
        if not short or spent >= budget:
            break
    return min(run_times) + (min(ref_times) if ref is not None else 0.0)


def bench_record(info: dict, slow: dict[str, float]) -> BenchRecord:
    """The record of one benchmark from ``measure``'s keywords: the dtype as its name, the
    session's thread count, the ``--bench-slow`` factor that applies. A missing, unknown or
    malformed field raises here (TypeError / reports.record.RecordError, by name)."""
    info = {**info, "dtype": str(info.get("dtype")).removeprefix("torch."),
            "threads": torch.get_num_threads()}
    factor = slow.get(f"{info.get('kernel')}.{info.get('method')}")
    if factor is not None:
        info["slowed_by"] = factor
    return BenchRecord(**info)


def check_count(name: str, value: object, least: int, what: str = "") -> int:
    """``value`` as an int >= ``least`` (not a bool, not a float); a TypeError or
    ValueError naming ``name`` (and ``what`` it counts) otherwise."""
    want = f"an integer >= {least}" + (f" ({what})" if what else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected {want}, got {type(value).__name__} {value!r}")
    if value < least:
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return value


# measure's keywords besides the record's fields, and what each is
MEASURE_KEYWORDS = {
    "group": "pytest-benchmark's group",
    "reference_fn": "the reference's callable, timed in interleaved rounds",
    "warmup": "warm-up calls, default 3",
    "peak": "the peak bytes of one call, when given instead of measured",
    "reference_peak": "the same for the reference",
}
# the keywords every measure needs, and what each means
REQUIRED_KEYWORDS = {
    "group": "pytest-benchmark's group",
    "kernel": "the family, any name",
    "method": "what fn is",
    "reference": "the method fn is measured against; a reference names itself",
    "role": "'kernel': measured against its reference, judged by the gate; 'reference': "
            "reported only",
    "device": "e.g. 'cpu', 'cuda'",
    "dtype": "a floating torch.dtype",
}
# the record's fields measure writes itself: not keywords of measure
SET_BY_MEASURE = {
    "threads": "the session's torch thread count, from --bench-threads",
    "timer": "the device's clock",
    "cache": "--bench-cold-l2",
    "slowed_by": "--bench-slow",
    "reference_data": "the interleaved reference's rounds: give reference_fn",
    "peak_bytes": "measured: give peak= to set it",
    "reference_peak_bytes": "measured: give reference_peak= to set it",
    "instructions": "--bench-instructions",
    "reference_instructions": "--bench-instructions",
}


def measure_keywords() -> list[str]:
    """Every keyword ``measure`` takes: its own and the record's fields it does not set
    itself, the required ones first."""
    fields = [f.name for f in dataclasses.fields(BenchRecord) if f.name not in SET_BY_MEASURE]
    return list(dict.fromkeys([*REQUIRED_KEYWORDS, *fields, *MEASURE_KEYWORDS]))


def check_keywords(given) -> None:
    """``measure``'s keywords, before anything else: a keyword measure does not take, or
    one it needs and lacks, is a TypeError that names it, the keywords accepted and what
    the required ones mean (not the record's constructor's TypeError)."""
    accepted = measure_keywords()
    for name in given:
        if name in SET_BY_MEASURE:
            raise TypeError(f"measure: {name!r} is written by measure itself "
                            f"({SET_BY_MEASURE[name]}), not a keyword")
        if name not in accepted:
            import difflib

            near = difflib.get_close_matches(name, accepted, n=1)
            raise TypeError(f"measure: unexpected keyword {name!r}"
                            + (f" (did you mean {near[0]!r}?)" if near else "")
                            + f"; the keywords: {', '.join(accepted)}")
    missing = [name for name in REQUIRED_KEYWORDS if name not in given]
    if missing:
        meaning = "; ".join(f"{k} ({v})" for k, v in REQUIRED_KEYWORDS.items())
        raise TypeError(f"measure: missing keyword{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))}; every measure gives {meaning}")


def check_measure(fn, reference_fn, group, warmup, info: dict) -> None:
    """``measure``'s own arguments and the two record fields the record cannot judge (it
    holds them as strings), before anything is set up or timed: a TypeError or ValueError
    naming the argument. A ``device`` of a kind not present here (CUDA without a GPU)
    skips the test, as ``--device`` does."""
    import pytest

    _check_callable("fn", fn)
    _check_callable("reference_fn", reference_fn, none=True)
    if not isinstance(group, str):
        raise TypeError(f"group: expected a non-empty string (pytest-benchmark's group), "
                        f"got {type(group).__name__} {group!r}")
    if not group:
        raise ValueError("group: expected a non-empty string (pytest-benchmark's group), "
                         "got ''")
    check_count("warmup", warmup, 1, "warm-up calls")
    dtype = info.get("dtype")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype (e.g. torch.float32), got "
                        f"{dtype!r}")
    device = info.get("device")
    if not isinstance(device, str):
        raise TypeError(f"device: expected a device string such as 'cpu' or 'cuda', got "
                        f"{type(device).__name__} {device!r}")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"device: expected a device string such as 'cpu', 'cuda' or "
                         f"'cuda:0', got {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"device {device!r} requested but not present (no CUDA device)")


def measure_with(benchmark, config: pytest.Config, fn: Callable[[], object],
                 **kwargs) -> object:
    """The ``measure`` fixture's body (see ``handgrad.plugin.measure``). ``flops`` and
    ``bytes`` default to 0: not modelled (no GFLOP/s, no roofline point). Its keywords
    (``check_keywords``) and arguments (``check_measure``) are checked first."""
    check_keywords(kwargs)
    return _measure_with(benchmark, config, fn, **kwargs)


def _measure_with(benchmark, config: pytest.Config, fn: Callable[[], object], *,
                  group: str, warmup: int = 3,
                  reference_fn: Callable[[], object] | None = None,
                  peak: int | None = None, reference_peak: int | None = None,
                  **info) -> object:
    check_measure(fn, reference_fn, group, warmup, info)
    if config.getoption("--bench-kernels-only", default=False):
        kernels_only(info, reference_fn)
    info = {"flops": 0, "bytes": 0, **info}
    if config.getoption("--bench-instructions"):
        return _count_instructions(benchmark, fn, reference_fn, group, info)
    device = str(info.get("device"))
    cold = bool(config.getoption("--bench-cold-l2")) and _is_cuda(device)
    timing = timing_for(device, cold=cold)
    record = bench_record({**info, "timer": timing.timer, "cache": timing.cache},
                          bench_slow(config))
    benchmark.group = group
    benchmark.extra_info.update(record.to_extra_info())
    target = fn
    if record.slowed_by is not None:  # spun inside the timed window, device finished
        target = slowed(finished(fn, timing.cuda), record.slowed_by)
    run = timing.wrap(target)
    if benchmark.disabled:
        return benchmark(run)
    run_warm = warm_up(run, warmup)
    if timing.clock is not None:
        _use_clock(benchmark, timing.clock)
    ref_warm = [] if reference_fn is None else warm_up(timing.wrap(reference_fn), warmup)
    ref_times: list[float] = []
    if reference_fn is None and timing.clock is None:
        result = benchmark(run)  # pytest-benchmark's own calibration and rounds
    else:
        # as many rounds as fit in --benchmark-max-time (for the pair, when
        # interleaved), at least min-rounds
        opts = config.option
        min_rounds = int(getattr(opts, "benchmark_min_rounds", 5))
        max_time = float(getattr(opts, "benchmark_max_time", 1.0))
        # from the warm-up's and a few more calls, not one: one slow call had cut the
        # rounds (round_seconds; its cost: at most a quarter of max_time more)
        per_round = round_seconds(run, timing.wrap(reference_fn) if reference_fn else None,
                                  run_warm, ref_warm, budget=max_time / 4)
        rounds = int(max(min_rounds, min(10_000, max_time / max(per_round, 1e-9))))
        setup = None if reference_fn is None else (
            lambda: ref_times.append(timing.time_once(reference_fn)))
        result = benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    extra = {}
    if reference_fn is not None:
        extra["reference_data"] = tuple(ref_times)
    if peak is None:  # given for a captured method: its replay allocates nothing
        peak = peak_bytes(fn, device)
    if peak is not None:
        extra["peak_bytes"] = peak
        if reference_fn is not None:
            extra["reference_peak_bytes"] = (reference_peak if reference_peak is not None
                                             else peak_bytes(reference_fn, device))
    if extra:
        benchmark.extra_info.update(dataclasses.replace(record, **extra).to_extra_info())
    return result


KERNELS_ONLY_SKIP = ("--bench-kernels-only: a reference's own benchmark (or the machine's); "
                     "a gate reads a reference's rounds interleaved with its kernel's")


def kernels_only(info: dict, reference_fn) -> None:
    """--bench-kernels-only: skip a benchmark no gate judges (a reference's own, the
    machine's), with the reason; refuse a kernel without ``reference_fn``, whose ratio would
    need its reference's own benchmark, skipped here (the gate would leave it ungated)."""
    import pytest

    role = info.get("role")
    if role not in ROLES:
        raise ValueError(f"role: expected one of {ROLES}, got {role!r}")
    if role != "kernel":  # the machine's (control, ceilings) have role reference too
        pytest.skip(KERNELS_ONLY_SKIP)
    if reference_fn is None:
        raise ValueError(
            f"reference_fn: --bench-kernels-only skips the references' own benchmarks, so "
            f"kernel {info.get('kernel')}.{info.get('method')} needs its reference "
            f"{info.get('reference')!r} timed beside it (reference_fn), got None")


def not_counted(info: dict) -> str | None:
    """Why ``--bench-instructions`` does not count a benchmark (None: it counts it).
    ``info``: measure's keywords, a dict; a device torch cannot parse or a ``flops`` that is
    not a number >= 0 is refused by name (not torch's or Python's raw error)."""
    from handgrad.benchmark import callgrind

    if not isinstance(info, dict):
        raise TypeError(f"info: expected a dict of measure's keywords, got "
                        f"{type(info).__name__} {info!r}")
    if info.get("kernel") in MACHINE_FAMILIES:
        return ("a measurement of the machine, for the wall clock: not counted under "
                "--bench-instructions")
    if info.get("compile_mode") is not None:
        return ("compiled or captured: compiling under callgrind takes hours; not counted "
                "under --bench-instructions")
    device = info.get("device")
    try:
        kind = (torch.device(device).type if isinstance(device, (str, torch.device))
                else None)
    except RuntimeError:
        kind = None
    if kind is None:
        raise ValueError(f"device: expected a device string such as 'cpu' or 'cuda', got "
                         f"{device!r}")
    if kind != "cpu":
        return "instructions are counted on the CPU only (--bench-instructions)"
    flops = info.get("flops")
    flops = 0 if flops is None else flops
    want = "a finite number >= 0 (FLOPs a call; 0: not modelled)"
    if isinstance(flops, bool) or not isinstance(flops, numbers.Real):
        raise TypeError(f"flops: expected {want}, got {type(flops).__name__} {flops!r}")
    if not (math.isfinite(flops) and flops >= 0):
        raise ValueError(f"flops: expected {want}, got {flops!r}")
    if flops > callgrind.MAX_FLOPS:
        return (f"{flops:.3g} FLOPs a call, over handgrad.benchmark.callgrind.MAX_FLOPS "
                f"({callgrind.MAX_FLOPS:.3g}): arithmetic-bound, left to the wall-clock gate")
    return None


def _count_instructions(benchmark, fn, reference_fn, group: str, info: dict) -> object:
    """--bench-instructions: instructions per call of ``fn`` and of its reference
    (handgrad.benchmark.callgrind.count), recorded with timer 'callgrind'; pytest-benchmark
    times one call under valgrind, a time no report reads as wall clock."""
    import pytest

    from handgrad.benchmark import callgrind

    why = not_counted(info)
    if why:
        pytest.skip(why)
    counts = {"instructions": callgrind.count(fn)}
    if reference_fn is not None:
        counts["reference_instructions"] = callgrind.count(reference_fn)
    record = bench_record({**info, "timer": "callgrind", "cache": "warm", **counts}, {})
    benchmark.group = group
    benchmark.extra_info.update(record.to_extra_info())
    if benchmark.disabled:
        return benchmark(fn)
    return benchmark.pedantic(fn, rounds=1, iterations=1)


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def _use_clock(benchmark, clock) -> None:
    """pytest-benchmark reads its timer before and after each call; give it the event
    clock (the attribute every version from 4.0 to 5.3 has)."""
    if not hasattr(benchmark, "_timer"):
        raise RuntimeError("this pytest-benchmark has no BenchmarkFixture._timer: CUDA event "
                           "timing cannot hand it its times")
    benchmark._timer = clock
