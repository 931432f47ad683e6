"""Shared pytest options and fixtures for `pytest verify` and `pytest bench`.

- ``--device cpu,cuda`` (default: every device present). A device that is asked
  for but absent makes its tests skip with a reason; it never fails them.
- ``device`` and ``dtype`` fixtures, parametrized; tests that ask for them run once
  per device and per dtype the tolerance table knows.
- Seeds: every test starts from a seed derived from a stable hash of its node id,
  so a failure reproduces on its own and does not depend on test order.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import zlib
from importlib import metadata
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# bounded property tests: CI has 2 cores and a few minutes for `pytest verify`
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci")

KNOWN_DEVICES = ("cpu", "cuda")
GRIDS = ("quick", "full", "gpu")
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
        "--bench-grid",
        choices=GRIDS,
        default="quick",
        help="benchmark grid. quick: a few minutes on 2 cores (default); full: wider, "
        "deeper; gpu: sizes that make a GPU work (CUDA only; see README)",
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
        "--verify-report",
        metavar="PATH",
        default=None,
        help="write every comparison's worst error against its tolerance to this JSON "
        "file; `python -m handgrad.reports render PATH --out DIR` turns it into a headroom table",
    )
    group.addoption(
        "--bench-slow",
        action="append",
        default=[],
        metavar="KERNEL.METHOD=FACTOR",
        help="testing the gate: make every benchmark of KERNEL.METHOD (e.g. "
        "backprop.manual=1.25) take FACTOR times as long, by spinning after each call. "
        "Touches only the timed callable, never kernels/. Repeatable; recorded",
    )
    group.addoption(
        "--bench-instructions",
        action="store_true",
        help="count instructions per call instead of timing: the run re-executes itself "
        "under valgrind's callgrind (one process, one thread, warm-up outside the "
        "collection) and records each benchmark's and its reference's instructions per "
        "call (bench/callgrind.py); benchmarks over bench.callgrind.MAX_FLOPS are skipped. "
        "Exits 2 when valgrind is missing",
    )


def bench_threads(config: pytest.Config) -> int:
    if config.getoption("--bench-instructions"):
        return 1  # instruction counts are taken on one thread
    n = config.getoption("--bench-threads")
    if n is not None and n < 1:
        raise pytest.UsageError(f"--bench-threads: expected a positive integer, got {n}")
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


def pytest_configure(config: pytest.Config) -> None:
    try:
        benchmark_version = metadata.version("pytest-benchmark")
    except metadata.PackageNotFoundError:
        benchmark_version = None
    conflict = plugin_conflict(pytest.__version__, benchmark_version)
    if conflict:
        raise pytest.UsageError(conflict)
    if config.getoption("--bench-instructions"):
        _instruction_mode(config)  # returns only under callgrind (the re-executed run)
    # one fixed thread count for the whole session, recorded in machine_info and every
    # benchmark's extra_info: CPU timings are meaningless without it
    torch.set_num_threads(bench_threads(config))
    # a malformed --bench-slow or --device is a usage error (one line) before anything runs
    bench_slow(config, check_names=True)
    requested_devices(config)
    # pytest-benchmark >= 5.3 writes --benchmark-json at the end of the session and fails
    # then if the folder is missing, so make it now (older versions open the file while
    # parsing the command line: reports/out/ is kept in git for them)
    target = benchmark_json_path(config)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)


def _instruction_mode(config: pytest.Config) -> None:
    """--bench-instructions: in the process the user started, run the same pytest command
    under callgrind and exit with its status; in that re-executed process, return."""
    from bench import callgrind

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


def benchmark_json_path(config: pytest.Config) -> Path | None:
    """Where --benchmark-json writes, whatever pytest-benchmark's version: a path (5.3 and
    newer) or a file it has already opened for writing (4.0 to 5.2)."""
    target = getattr(config.option, "benchmark_json", None)
    if target is None:
        return None
    return Path(target.name if hasattr(target, "write") else target)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not config.getoption("--verify-report"):
        return
    from handgrad.testing.compare import RECORDS, SWEEPS  # imported by the tests that made them

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


_WORKER_RECORDS = "handgrad_verify_records"
_WORKER_SWEEPS = "handgrad_verify_sweeps"
_worker_records = pytest.StashKey[list]()
_worker_sweeps = pytest.StashKey[list]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist, on the controller: keep what a finished worker recorded."""
    output = getattr(node, "workeroutput", {})
    node.config.stash.setdefault(_worker_records, []).extend(output.get(_WORKER_RECORDS, []))
    node.config.stash.setdefault(_worker_sweeps, []).extend(output.get(_WORKER_SWEEPS, []))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    from handgrad.reports.record import SCHEMA, SCHEMA_KEY

    machine_info[SCHEMA_KEY] = SCHEMA  # the extra_info layout of every benchmark
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["platform"] = platform.platform()
    from bench.timing import gpu_info

    machine_info.update({"cuda": None, "gpu": None, **gpu_info()})
    machine_info["bench_grid"] = config.getoption("--bench-grid")
    machine_info["bench_slow"] = bench_slow(config)
    machine_info["bench_mode"] = "instructions" if config.getoption(
        "--bench-instructions") else "time"


def bench_slow(config: pytest.Config, check_names: bool = False) -> dict[str, float]:
    """--bench-slow KERNEL.METHOD=FACTOR entries as {"kernel.method": factor}; with
    ``check_names``, a KERNEL.METHOD that no benchmark records is a usage error (a
    misspelt name would slow nothing while the run says it was slowed)."""
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
    if check_names and out:
        from bench import slowable_methods

        known = slowable_methods()
        for name in out:
            kernel, _, method = name.partition(".")
            if method not in known.get(kernel, ()):
                hint = (f"its methods: {sorted(known[kernel])}" if kernel in known
                        else f"kernels: {sorted(known)}")
                raise pytest.UsageError(
                    f"--bench-slow: no benchmark records {name!r}; {hint}")
    return out


def _present(device: str) -> bool:
    if device == "cpu":
        return True
    if device == "cuda":
        return torch.cuda.is_available()
    return False


def requested_devices(config: pytest.Config) -> list[str]:
    """The devices named by --device, in order; 'all' means every known device."""
    raw = config.getoption("--device")
    if raw == "all":
        return [d for d in KNOWN_DEVICES if _present(d)]
    names = [d.strip() for d in raw.split(",") if d.strip()]
    unknown = [d for d in names if d not in KNOWN_DEVICES]
    if unknown:
        raise pytest.UsageError(
            f"--device: unknown device(s) {unknown}; expected a comma-separated subset of "
            f"{list(KNOWN_DEVICES)} or 'all'"
        )
    return names


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames and not _is_parametrized(metafunc, "device"):
        metafunc.parametrize("device", _device_params(metafunc.config))
    if "dtype" in metafunc.fixturenames and not _is_parametrized(metafunc, "dtype"):
        metafunc.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Which benchmarks a grid runs. quick: the unmarked ones; full: those and ``full``;
    gpu: ``gpu_grid`` (GPU-sized, CUDA only) and ``every_grid`` (control, ceilings)."""
    grid = config.getoption("--bench-grid")
    for item in items:
        marks = {m.name for m in item.iter_markers()}
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


def _is_parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    return any(name in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))


def stable_seed(text: str) -> int:
    """A seed that is the same on every machine and Python run (unlike hash())."""
    return zlib.crc32(text.encode("utf-8"))


@pytest.fixture(autouse=True)
def _seed_everything(request: pytest.FixtureRequest) -> None:
    torch.manual_seed(stable_seed(request.node.nodeid))


@pytest.fixture
def generator(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from the test's node id (create tensors on CPU, then move)."""
    return torch.Generator().manual_seed(stable_seed(request.node.nodeid))
