"""The benchmark specs of handgrad's kernel families, one module each: its grids, its
methods as data (``handgrad.benchmark.methods.Family``: role, reference, build, source)
and the eager callables of one case. ``bench/test_<family>.py`` times them through
``peers`` and ``measure``; verify reads them here (never from a test module).

Each module lists its families in ``FAMILIES``; ``families()`` finds them all, so a new
family needs no registry entry: ``--bench-slow`` and the suite's checks read it here."""

from __future__ import annotations

import importlib
import pkgutil


def families() -> list:
    """Every ``Family`` of every spec module in this package."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += list(getattr(module, "FAMILIES", ()))
    return found
