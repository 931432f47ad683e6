"""handgrad's own suites (`pytest verify`, `pytest bench`): what the plugin leaves to a
project.

- handgrad's pytest plugin (``handgrad.plugin``: ``--device``, ``--verify-report``, the
  ``device``, ``dtype``, ``generator`` and ``seed`` fixtures) is loaded here too, so that a
  checkout runs without an install; installed, its entry point has loaded it already.
- The benchmark options (``--bench-grid``, ``--bench-threads``, ``--bench-slow``,
  ``--bench-instructions``, ``--bench-cold-l2``) and the machine info of each run.
- Seeds: every test starts from a seed derived from a stable hash of its node id (the
  plugin's ``stable_seed``), so a failure reproduces on its own and does not depend on
  test order.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from handgrad.plugin import ALL_DTYPES, KNOWN_DEVICES, stable_seed  # noqa: F401 (re-exported)

# the plugin by the name of its entry point: loaded once whether installed or not
pytest_plugins = ["handgrad.plugin", "pytester"]

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

GRIDS = ("quick", "full", "gpu")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("handgrad")
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
    # a malformed --bench-slow is a usage error (one line) before anything runs
    bench_slow(config, check_names=True)
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


@pytest.fixture(autouse=True)
def _seed_everything(request: pytest.FixtureRequest) -> None:
    torch.manual_seed(stable_seed(request.node.nodeid))
