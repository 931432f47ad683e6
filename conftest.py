"""handgrad's own suites (`pytest verify`, `pytest bench`): what the plugin leaves to a
project.

- handgrad's pytest plugin (``handgrad.plugin``: ``--device``, ``--verify-report``, the
  ``device``, ``dtype``, ``generator`` and ``seed`` fixtures) is loaded here too, so that a
  checkout runs without an install; installed, its entry point has loaded it already.
- The plugin also carries the benchmark options (``--bench-grid``, ``--bench-threads``,
  ``--bench-slow``, ``--bench-instructions``, ``--bench-cold-l2``), the ``measure``
  fixture and the machine info of each run (``handgrad.benchmark``); this file adds the
  check that a ``--bench-slow`` name is one that ``pytest bench`` records.
- Seeds: every test starts from a seed derived from a stable hash of its node id (the
  plugin's ``stable_seed``), so a failure reproduces on its own and does not depend on
  test order.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

from handgrad.benchmark import bench_slow, fix_threads
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


def pytest_configure(config: pytest.Config) -> None:
    # handgrad's own suites run on one fixed thread count, checks too (pytest-xdist
    # workers share the cores: handgrad.benchmark.bench_threads)
    fix_threads(config)
    # handgrad's own suite knows every method its benchmarks record: a --bench-slow name
    # that none records would slow nothing while the run says it was slowed
    check_bench_slow_names(bench_slow(config))


def check_bench_slow_names(slow: dict[str, float]) -> None:
    """A --bench-slow KERNEL.METHOD that no benchmark of ``pytest bench`` records is a
    usage error naming the kernels or the kernel's methods."""
    if not slow:
        return
    from bench import slowable_methods

    known = slowable_methods()
    for name in slow:
        kernel, _, method = name.partition(".")
        if method not in known.get(kernel, ()):
            hint = (f"its methods: {sorted(known[kernel])}" if kernel in known
                    else f"kernels: {sorted(known)}")
            raise pytest.UsageError(f"--bench-slow: no benchmark records {name!r}; {hint}")


@pytest.fixture(autouse=True)
def _seed_everything(request: pytest.FixtureRequest) -> None:
    torch.manual_seed(stable_seed(request.node.nodeid))
