"""Fixtures for `pytest bench`. Every benchmark goes through the plugin's ``measure``
fixture (``handgrad.plugin``, machinery in ``handgrad.benchmark``): it warms the callable
up, times it on the device's clock beside its reference, and writes its ``extra_info`` as
a ``handgrad.reports.record.BenchRecord``.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def grid(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--bench-grid")
