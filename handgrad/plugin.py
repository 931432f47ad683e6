"""handgrad's pytest plugin (entry point ``pytest11``: ``handgrad.plugin``), loaded in any
project where handgrad is installed; ``-p no:handgrad.plugin`` turns it off.

- ``--device cpu,cuda`` (default: every device present). A device asked for but absent
  makes its tests skip with a reason; it never fails them.
- Fixtures ``device`` and ``dtype``: a test that asks for one runs once per device
  (``--device``) and per dtype of the tolerance table (``ALL_DTYPES``), unless it
  parametrizes them itself or its project defines a fixture of that name (yours wins).
- ``generator``: a CPU ``torch.Generator`` seeded from the test's node id (the same on
  every machine and run); ``seed``: that seed, with torch's global generator set to it
  for the test (its state is restored afterwards).
- ``--verify-report PATH``: every comparison made through ``handgrad.testing``
  (``assert_close``, ``check_vjp``, ``check_jvp``) and every recorded step sweep, with its
  worst error against its tolerance, written as JSON when the session ends (pytest-xdist
  workers' records included); ``python -m handgrad.reports render PATH --out DIR`` turns it
  into a headroom table.
- The ``measure`` fixture (with pytest-benchmark installed): times any callable, beside
  any reference (interleaved round by round), with its peak memory, on the device's clock
  (CUDA events on a GPU), and writes one ``handgrad.reports.record.BenchRecord`` into the
  benchmark's ``extra_info``; ``--benchmark-json`` files are what ``python -m
  handgrad.reports render|gate`` read. The options: ``--bench-grid`` (quick, full, gpu:
  selects on the markers ``full``, ``gpu_grid``, ``every_grid``), ``--bench-threads``,
  ``--bench-cold-l2``, ``--bench-slow KERNEL.METHOD=FACTOR`` (testing a gate: a target no
  benchmark of the session measured is named at its end, with the closest one measured)
  and ``--bench-instructions`` (instruction counts under valgrind instead of times). A test
  that fails after it measured keeps its row, marked ``extra_info["test_failed"]``, which
  the reports leave out of their tables, figures and gates. At the session's end the
  plugin names each kernel (role ``kernel``) measured without its reference: no
  ``reference_fn`` and no passing test of the session timing the reference in its group on
  its device (left out by ``-k``, say; a reference timed on another device only is none),
  which a gate would skip; under pytest-xdist the controller judges every worker's measure
  calls together. The machinery is ``handgrad.benchmark``.
"""

from __future__ import annotations

import contextlib
import json
import platform
import zlib
from pathlib import Path

import pytest
import torch

from handgrad.benchmark import (
    GRIDS,
    MARKERS,
    bench_slow,
    check_keywords,
    measure_with,
    select_grid,
)
from handgrad.benchmark import configure as configure_benchmarks
from handgrad.benchmark import machine_info as record_machine_info

KNOWN_DEVICES = ("cpu", "cuda")
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("handgrad")
    group.addoption(
        "--device",
        action="store",
        default="all",
        help="comma-separated devices to run on (cpu, cuda); default: every device present",
    )
    group.addoption(
        "--verify-report",
        metavar="PATH",
        default=None,
        help="write every comparison's worst error against its tolerance to this JSON "
        "file; `python -m handgrad.reports render PATH --out DIR` turns it into a headroom "
        "table",
    )


    group.addoption(
        "--bench-grid",
        choices=GRIDS,
        default="quick",
        help="benchmark grid. quick: the benchmarks without a grid marker (default); full: "
        "those and the ones marked full; gpu: those marked gpu_grid (CUDA only) or "
        "every_grid",
    )
    group.addoption(
        "--bench-cold-l2",
        action="store_true",
        help="on CUDA, flush the L2 before each timed call (outside the timed window); "
        "recorded as cache=cold",
    )
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="torch CPU threads for every benchmark (default: all cores, at most 8); recorded",
    )
    group.addoption(
        "--bench-slow",
        action="append",
        default=[],
        metavar="KERNEL.METHOD=FACTOR",
        help="testing a gate: make every benchmark of KERNEL.METHOD (e.g. "
        "backprop.manual=1.25) take FACTOR times as long, by spinning after each call. "
        "Touches only the timed callable, never the kernel. Repeatable; recorded. A "
        "KERNEL.METHOD no benchmark of the session measured (a typo, a test left out) is "
        "named at the session's end",
    )
    group.addoption(
        "--bench-kernels-only",
        action="store_true",
        help="time (or count) only what a gate judges: each kernel (role 'kernel') with its "
        "reference's rounds interleaved (reference_fn); the references' own benchmarks and "
        "the machine's (control, ceilings) are skipped, saying so. A kernel measured "
        "without reference_fn fails under it. What .ci/gate runs; recorded",
    )
    group.addoption(
        "--bench-instructions",
        action="store_true",
        help="count instructions per call instead of timing: the run re-executes itself "
        "under valgrind's callgrind (one process, one thread, warm-up outside the "
        "collection) and records each benchmark's and its reference's instructions per "
        "call (handgrad.benchmark.callgrind); benchmarks over its MAX_FLOPS are skipped. "
        "Exits 2 when valgrind is missing",
    )


_recording = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    requested_devices(config)  # a malformed --device is a usage error before anything runs
    verify_report_path(config)  # and a report that could not be written, before, not after
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    configure_benchmarks(config)
    # measure's benchmark: pytest-benchmark's fixture, or one that says how to get it
    from handgrad.benchmark import benchmark_version
    from handgrad.benchmark.fixture import register

    register(config, benchmark_version())
    from handgrad.testing.compare import recording

    # the session's comparisons are kept for --verify-report (and for tests that read them)
    config.stash[_recording] = stack = contextlib.ExitStack()
    stack.enter_context(recording())


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(_recording, None)
    if stack is not None:
        stack.close()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """pytest-benchmark: the schema, torch, threads, GPU and options of the run."""
    record_machine_info(config, machine_info)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    select_grid(config, items)


@pytest.fixture
def measure(_handgrad_benchmark, request: pytest.FixtureRequest):
    """``measure(fn, *, group, kernel, method, reference, role, flops=0, bytes=0, device,
    dtype, shape={}, reference_fn=None, warmup=3, peak=None, reference_peak=None, **more)``:
    time ``fn`` (a callable of no arguments) and write its record.

    ``kernel`` is the family, ``method`` what ``fn`` is, ``reference`` the method it is
    measured against (a reference names itself, role "reference"; a kernel has role
    "kernel" and is what a gate judges), ``shape`` the problem's size by parameter name.
    With ``reference_fn`` (the reference's callable, same inputs) rounds are interleaved:
    before each timed round of ``fn`` the reference runs once, timed the same way, and its
    times go to ``extra_info["reference_data"]``, paired index by index with the kernel's
    ``stats.data``; a ratio of paired rounds cancels whatever drift the machine has between
    rounds. The device's clock: perf_counter on the CPU, CUDA events on a GPU (no host sync
    inside the window; ``--bench-cold-l2`` flushes the L2 first). The peak memory of one
    call of ``fn`` and of the reference is recorded (``peak`` and ``reference_peak`` give
    them instead, e.g. a captured callable's capture peak). Compiled and captured peers:
    build them with ``handgrad.benchmark.compiled`` and pass ``compile_mode`` and
    ``compile_s``. Under ``--bench-instructions`` the same call records instructions per
    call instead of times. Returns what pytest-benchmark's fixture returns.

    One ``measure`` a test (pytest-benchmark's fixture times one benchmark): a second call
    is refused; parametrize the test to time several callables. A keyword it does not
    take, or a required one missing, is a TypeError naming it and the keywords accepted;
    without pytest-benchmark the test fails saying how to install it."""
    benchmark = _handgrad_benchmark

    def _measure(*args, **kwargs):
        if len(args) + ("fn" in kwargs) != 1:
            raise TypeError("measure: expected the callable to time (fn) as its one "
                            "positional argument, the rest by keyword (reference_fn=..., "
                            f"group=...); got {len(args)} positional argument(s)"
                            + (" and fn=" if "fn" in kwargs else ""))
        fn = args[0] if args else kwargs.pop("fn")
        check_keywords(kwargs)
        if _measured_group in request.node.stash:
            first = request.node.stash[_measured_group]
            raise RuntimeError(f"measure: called a second time in this test (group "
                               f"{kwargs.get('group')!r}; the first: group {first!r}): one "
                               f"measure a test, as pytest-benchmark times one benchmark a "
                               f"test. Parametrize the test (@pytest.mark.parametrize) to "
                               f"time several callables")
        request.node.stash[_measured_group] = kwargs.get("group")
        request.node.stash[_measured] = benchmark  # marked if the test fails (below)
        result = measure_with(benchmark, request.config, fn, **kwargs)
        _note_measured(request, kwargs)
        return result

    return _measure


_measured = pytest.StashKey[object]()
_measured_group = pytest.StashKey[object]()

# --- kernels measured without their reference ------------------------------------------------

_WORKER_MEASURED = "handgrad_measured"
_measured_entries = pytest.StashKey[list]()  # the session's measure calls (workers' included)
_measured_entry = pytest.StashKey[dict]()  # this test's


def _note_measured(request: pytest.FixtureRequest, kwargs: dict) -> None:
    """Keep what the session's end needs of a measure call that returned: which benchmark
    it was and the reference it names (plain strings and a flag: a pytest-xdist worker
    sends them to the controller)."""
    entry = {"nodeid": request.node.nodeid, "group": str(kwargs["group"]),
             "kernel": str(kwargs["kernel"]), "method": str(kwargs["method"]),
             "reference": str(kwargs["reference"]),
             "role": str(kwargs["role"]), "device": str(kwargs["device"]),
             "dtype": str(kwargs["dtype"]),
             "interleaved": kwargs.get("reference_fn") is not None,
             "shape": {str(k): str(v) for k, v in (kwargs.get("shape") or {}).items()},
             "failed": False}
    request.node.stash[_measured_entry] = entry
    request.config.stash.setdefault(_measured_entries, []).append(entry)


def _timed_references(entries: list[dict]) -> tuple[dict, dict]:
    """The passing tests' benchmarks by (group, device, method): the shape texts timed, and
    how many benchmarks."""
    from handgrad.reports.load import shape_text

    timed: dict[tuple[str, str, str], set[str]] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for e in entries:
        if not e["failed"]:
            key = (e["group"], e["device"], e["method"])
            timed.setdefault(key, set()).add(shape_text(e["shape"]))
            counts[key] = counts.get(key, 0) + 1
    return timed, counts


def _has_reference(e: dict, device: str, timed: dict, counts: dict) -> bool:
    """Whether kernel ``e``'s reference was timed on ``device`` in its group: at its shape,
    or as the group's one benchmark of it on that device."""
    from handgrad.reports.load import shape_text

    key = (e["group"], device, e["reference"])
    return shape_text(e["shape"]) in timed.get(key, ()) or counts.get(key) == 1


def without_reference(entries: list[dict]) -> list[dict]:
    """The kernels (role kernel, of tests that passed) measured without their reference:
    not interleaved with it (no ``reference_fn``) and no passing test's benchmark of the
    session in their group, on their device, is the reference (its method), at the
    kernel's shape or, as the reports' ``find_row`` reads it, the group's one benchmark of
    it on that device whatever its shape. A gate would skip each: nothing to normalise it
    by (or, where the reference was timed on another device only in the same group, a
    time of that device)."""
    timed, counts = _timed_references(entries)
    return [e for e in entries
            if e["role"] == "kernel" and not e["failed"] and not e["interleaved"]
            and not _has_reference(e, e["device"], timed, counts)]


def without_reference_lines(missing: list[dict], timed: bool = True,
                            entries: list[dict] = ()) -> list[str]:
    """What the session's summary says of ``without_reference``'s kernels, and what to do.
    ``timed``: whether the session recorded timings (not under --benchmark-disable or -n,
    where pytest-benchmark times nothing): if not, what a timed run of it would lack.
    ``entries``: the session's measure calls, to say where a reference was timed on another
    device only."""
    from handgrad.reports.load import shape_text

    refs, counts = _timed_references(list(entries))
    lines = [f"handgrad: {len(missing)} kernel benchmark(s) measured without their reference "
             "in this session: "
             + ("render has no ratio for them and a gate skips them (its reference ... was "
                "not timed)" if timed else
                "nothing was timed here (--benchmark-disable or -n), but a timed run of this "
                "selection would give render no ratio for them and a gate would skip them")]
    devices = {key[1] for key in refs}
    other_device = False
    for e in missing:
        shape = shape_text(e["shape"])
        elsewhere = sorted(d for d in devices
                           if d != e["device"] and _has_reference(e, d, refs, counts))
        other_device = other_device or bool(elsewhere)
        lines.append(f"  {e['nodeid']}: group {e['group']!r}, method {e['method']!r}, "
                     f"device {e['device']!r}" + (f" [{shape}]" if shape else "")
                     + f": no test that passed timed its reference {e['reference']!r} in "
                     f"the group on {e['device']!r}"
                     + (f" (timed only on {', '.join(map(repr, elsewhere))}: the reports "
                        "pair a kernel with a reference on its own device only, so this one "
                        "gets no ratio and no gate)" if elsewhere else ""))
    lines.append("  time each reference in the same session, on each device its kernels run "
                 "on: its test, in the same group, with measure(..., method=<the reference>, "
                 "role='reference') (a test left out by -k, deselected or skipped leaves it "
                 "untimed), or pass reference_fn= to the kernel's measure to time the two "
                 "interleaved"
                 + ("; and give each device its own group (group=f'... {device}'), as "
                    "handgrad's bench does: a gate tells benchmarks apart by group, method "
                    "and shape only" if other_device else ""))
    return lines


def indistinct(entries: list[dict]) -> list[list[dict]]:
    """The benchmarks that share a group, method, shape and device: each list two or more
    measure calls that a gate (and the history) could not tell apart, as a test
    parametrised over the ``dtype`` fixture under one group and shape gives. A failed
    test's count too: its benchmark is in the JSON, and the gate refuses the run before it
    leaves the failed ones out."""
    from handgrad.reports.load import shape_text

    by: dict[tuple[str, str, str, str], list[dict]] = {}
    for e in entries:
        key = (e["group"], e["method"], shape_text(e["shape"]), e["device"])
        by.setdefault(key, []).append(e)
    return [es for es in by.values() if len(es) > 1]


def indistinct_lines(clashes: list[list[dict]]) -> list[str]:
    """What the session's summary says of ``indistinct``'s benchmarks, and what to do."""
    from handgrad.reports.load import shape_text

    lines = [f"handgrad: {len(clashes)} benchmark(s) measured more than once under one group, "
             "method, shape and device: the gate and the history refuse a run that holds "
             "them (render reports them, but no run against another can pair them)"]
    by_dtype = False
    for es in clashes:
        e, shape = es[0], shape_text(es[0]["shape"])
        dtypes = list(dict.fromkeys(x.get("dtype", "") for x in es))
        by_dtype = by_dtype or len(dtypes) > 1
        lines.append(f"  group {e['group']!r}, method {e['method']!r}, device {e['device']!r}"
                     + (f" [{shape}]" if shape else "") + ": "
                     + ", ".join(x["nodeid"] for x in es)
                     + (f" (in {', '.join(dtypes)})" if len(dtypes) > 1 else ""))
    lines.append("  give each its own group, or a shape that differs"
                 + (": where they differ by dtype, a group per dtype (group=f'... {dtype}'), "
                    "as a group per device" if by_dtype else " (measure(..., shape={...}))"))
    return lines


# at most this many of the session's kernel.method names are listed after a --bench-slow
# target that matched none of them
LISTED_MEASURED = 30


def unslowed(slow: dict[str, float], entries: list[dict]) -> list[str]:
    """The ``--bench-slow`` targets (KERNEL.METHOD) that no measure call of the session
    measured (``entries``, failed tests' included: they were slowed all the same): a typo,
    or a benchmark the session left out (-k, a skip, a reference under
    --bench-kernels-only). Each slowed nothing, so a gate given the run has nothing to
    catch: said at the session's end (``unslowed_lines``)."""
    measured = {f"{e.get('kernel')}.{e.get('method')}" for e in entries}
    return [name for name in slow if name not in measured]


def unslowed_lines(names: list[str], slow: dict[str, float],
                   entries: list[dict]) -> list[str]:
    """What the session's summary says of ``unslowed``'s targets: each, with the closest
    kernel.method measured (as the gate's --accept warnings give it), and what was
    measured."""
    import difflib

    measured = sorted({f"{e.get('kernel')}.{e.get('method')}" for e in entries})
    lines = [f"handgrad: {len(names)} --bench-slow target(s) matched no benchmark measured in "
             "this session, so they slowed nothing: a gate given this run has no regression "
             "of theirs to catch"]
    for name in names:
        close = difflib.get_close_matches(name, measured, n=1)
        lines.append(f"  --bench-slow {name}={slow[name]:g}: no benchmark of kernel.method "
                     f"{name} was measured" + (f" (did you mean {close[0]}?)" if close else ""))
    shown = ", ".join(measured[:LISTED_MEASURED]) + (
        f" and {len(measured) - LISTED_MEASURED} more" if len(measured) > LISTED_MEASURED
        else "")
    lines.append(f"  measured (kernel.method): {shown}" if measured else
                 "  measured: nothing (no test of the session called measure)")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The session's end: the ``--bench-slow`` targets no benchmark matched (``unslowed``),
    the kernels measured without their reference (``without_reference``) and the
    benchmarks measured twice under one name (``indistinct``), with pytest-xdist's workers'
    measure calls gathered on the controller (a kernel and its reference may run on two
    workers), said once there. Each is a warning: the session's exit status is its tests'
    (what a session measured is known only at its end, after its tests ran)."""
    if hasattr(config, "workerinput"):
        return
    slow = bench_slow(config) if config.getoption("--bench-slow", default=None) else {}
    if slow:
        entries = config.stash.get(_measured_entries, [])
        names = unslowed(slow, entries)
        if names:
            terminalreporter.write_sep("=", "handgrad: --bench-slow slowed nothing", red=True,
                                       bold=True)
            for line in unslowed_lines(names, slow, entries):
                terminalreporter.write_line(line, red=True)
    clashes = indistinct(config.stash.get(_measured_entries, []))
    if clashes:
        terminalreporter.write_sep("=", "handgrad: benchmarks measured under one name",
                                   yellow=True)
        for line in indistinct_lines(clashes):
            terminalreporter.write_line(line, yellow=True)
    missing = without_reference(config.stash.get(_measured_entries, []))
    if not missing:
        return
    timed = not config.getoption("benchmark_disable", default=False) and config.getoption(
        "dist", default="no") in ("no", None)
    lines = without_reference_lines(missing, timed, config.stash.get(_measured_entries, []))
    terminalreporter.write_sep("=", "handgrad: kernels without their reference", yellow=True)
    for line in lines:
        terminalreporter.write_line(line, yellow=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A test that timed something with ``measure`` and then failed (in any phase, or as
    an expected failure): its benchmark's ``extra_info`` says so (``test_failed``), for
    pytest-benchmark writes the row all the same. Its timing is not a measurement of a
    right kernel: the reports leave it out of their tables, figures and gates, listed."""
    outcome = yield
    benchmark = item.stash.get(_measured, None)
    if benchmark is None:
        return
    report = outcome.get_result()
    if report.failed or (report.skipped and hasattr(report, "wasxfail")):
        from handgrad.reports.load import TEST_FAILED

        benchmark.extra_info[TEST_FAILED] = True
        entry = item.stash.get(_measured_entry, None)
        if entry is not None:
            entry["failed"] = True


def _present(device: str) -> bool:
    if device == "cpu":
        return True
    if device == "cuda":
        return torch.cuda.is_available()
    return False


def requested_devices(config: pytest.Config) -> list[str]:
    """The devices named by --device, in order, each once (``cpu,cpu`` runs a test once);
    'all' means every known device present."""
    raw = config.getoption("--device")
    if raw == "all":
        return [d for d in KNOWN_DEVICES if _present(d)]
    names = [d.strip() for d in raw.split(",") if d.strip()]
    unknown = [d for d in names if d not in KNOWN_DEVICES]
    if unknown or not names:
        raise pytest.UsageError(
            f"--device: unknown device(s) {unknown or [raw]}; expected a comma-separated "
            f"subset of {list(KNOWN_DEVICES)} or 'all'"
        )
    return list(dict.fromkeys(names))


def _device_params(config: pytest.Config) -> list:
    params = []
    for name in requested_devices(config):
        marks = []
        if name == "cuda":
            marks.append(pytest.mark.cuda)
        if not _present(name):
            marks.append(pytest.mark.skip(reason=f"device {name!r} requested but not present"))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def _is_parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    for m in metafunc.definition.iter_markers("parametrize"):
        names = m.args[0]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


def _ours(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether fixture ``name`` resolves to this plugin's (not one the project defines)."""
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get(name)
    if not defs:
        return True
    return getattr(defs[-1].func, "__module__", None) == __name__


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, params in (("device", lambda: _device_params(metafunc.config)),
                         ("dtype", lambda: [pytest.param(d, id=str(d).removeprefix("torch."))
                                            for d in ALL_DTYPES])):
        if name in metafunc.fixturenames and not _is_parametrized(metafunc, name) \
                and _ours(metafunc, name):
            metafunc.parametrize(name, params(), indirect=True)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    """The device this test runs on ('cpu', 'cuda'), from --device."""
    return request.param


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """A floating dtype of the tolerance table (float64, float32, bfloat16, float16)."""
    return request.param


def stable_seed(text: str) -> int:
    """A seed that is the same on every machine and Python run (unlike hash())."""
    return zlib.crc32(text.encode("utf-8"))


@pytest.fixture
def generator(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from the test's node id (create tensors on CPU, then move)."""
    return torch.Generator().manual_seed(stable_seed(request.node.nodeid))


@pytest.fixture
def seed(request: pytest.FixtureRequest):
    """The test's stable seed; torch's global generators (the CPU's and, where a GPU is
    present, the GPUs') are seeded with it for the test and given back their state after
    it, so the tests that follow draw what they would have drawn without this one."""
    value = stable_seed(request.node.nodeid)
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(value)
        yield value


# --- the verify report ----------------------------------------------------------------------

_WORKER_RECORDS = "handgrad_verify_records"
_WORKER_SWEEPS = "handgrad_verify_sweeps"
_worker_records = pytest.StashKey[list]()
_worker_sweeps = pytest.StashKey[list]()


def verify_report_path(config: pytest.Config) -> Path | None:
    """``--verify-report``'s file, checked before the session: not a folder, and under a
    writable folder that exists or can be made (the reports' own check)."""
    value = config.getoption("--verify-report")
    if not value:
        return None
    from handgrad.reports.load import ReportInputError, check_output_file

    try:
        return check_output_file(value, "--verify-report", make_folder=True)
    except ReportInputError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workeroutput"):  # a pytest-xdist worker: its measure calls too
        config.workeroutput[_WORKER_MEASURED] = config.stash.get(_measured_entries, [])
    if not config.getoption("--verify-report"):
        return
    from handgrad.testing.compare import RECORDS, SWEEPS

    if hasattr(config, "workeroutput"):  # a pytest-xdist worker: its records go to the
        config.workeroutput[_WORKER_RECORDS] = [r.as_dict() for r in RECORDS]  # controller
        config.workeroutput[_WORKER_SWEEPS] = [s.as_dict() for s in SWEEPS]
        return
    from handgrad.reports.record import SweepRecord, VerifyRecord, verify_payload

    records = [*RECORDS, *(VerifyRecord.from_dict(d)
                           for d in config.stash.get(_worker_records, []))]
    sweeps = [*SWEEPS, *(SweepRecord.from_dict(d) for d in config.stash.get(_worker_sweeps, []))]
    payload = verify_payload(records, sweeps, torch=torch.__version__,
                             platform=platform.platform(), exitstatus=int(exitstatus))
    path = Path(config.getoption("--verify-report"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    config.get_terminal_writer().line(
        f"verify report: {len(records)} comparisons and {len(sweeps)} step sweeps written "
        f"to {path}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist, on the controller: keep what a finished worker recorded."""
    output = getattr(node, "workeroutput", {})
    node.config.stash.setdefault(_worker_records, []).extend(output.get(_WORKER_RECORDS, []))
    node.config.stash.setdefault(_worker_sweeps, []).extend(output.get(_WORKER_SWEEPS, []))
    node.config.stash.setdefault(_measured_entries, []).extend(output.get(_WORKER_MEASURED, []))
