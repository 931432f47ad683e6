"""The pytest-benchmark fixture that ``measure`` (``handgrad.plugin``) times with, as one of
two plugins the handgrad plugin registers (``register``): with pytest-benchmark loaded,
``_handgrad_benchmark`` is its ``benchmark`` fixture (so that ``--benchmark-skip``,
``--benchmark-only`` and its xdist check see a test using ``measure`` as a benchmark);
without it, a fixture that fails the test saying how to install or load it, where pytest
had said "fixture 'benchmark' not found"."""

from __future__ import annotations

import types

import pytest

NAME = "handgrad.benchmark.fixture"


def benchmark_loaded(config: pytest.Config) -> bool:
    """pytest-benchmark's plugin is registered in this session (by its entry point, or by
    ``-p pytest_benchmark.plugin``)."""
    return any(getattr(p, "__name__", None) == "pytest_benchmark.plugin"
               for p in config.pluginmanager.get_plugins())


def missing_message(version: str | None) -> str:
    """Why ``measure`` cannot run without pytest-benchmark, and what to do."""
    if version is None:
        return ("measure times with pytest-benchmark, which is not installed: pip install "
                "'handgrad[test]' (or pytest-benchmark>=4.0)")
    return (f"measure times with pytest-benchmark, installed ({version}) but not loaded in "
            "this session (-p no:benchmark, or PYTEST_DISABLE_PLUGIN_AUTOLOAD set): drop "
            "-p no:benchmark, or load it with -p pytest_benchmark.plugin")


def _with_benchmark() -> types.ModuleType:
    module = types.ModuleType(NAME + ".with_benchmark")

    @pytest.fixture
    def _handgrad_benchmark(benchmark):
        return benchmark

    module._handgrad_benchmark = _handgrad_benchmark
    return module


def _without_benchmark(message: str) -> types.ModuleType:
    module = types.ModuleType(NAME + ".without_benchmark")

    @pytest.fixture
    def _handgrad_benchmark():
        pytest.fail(message, pytrace=False)

    module._handgrad_benchmark = _handgrad_benchmark
    return module


def register(config: pytest.Config, version: str | None) -> None:
    """Register the one of the two that fits this session (once a session)."""
    if config.pluginmanager.has_plugin(NAME):
        return
    plugin = (_with_benchmark() if benchmark_loaded(config)
              else _without_benchmark(missing_message(version)))
    config.pluginmanager.register(plugin, NAME)


__all__ = ["register", "benchmark_loaded", "missing_message", "NAME"]
