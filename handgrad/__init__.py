"""handgrad: hand-derived deep-learning kernels, checked against autograd and finite
differences, timed beside their PyTorch references, gated in CI.

One import package: ``handgrad.kernels`` (the four kernel families), ``handgrad.reports``
(``python -m handgrad.reports render|gate|init-study``).

In the repository the subpackages keep the project's layout at its root (``kernels/``,
``reports/``); the wheel maps them under ``handgrad/`` (pyproject's ``package-dir``). In a
checkout, this package's path is extended by the repository's root, so that
``handgrad.kernels`` is ``kernels/`` without an install (an editable install resolves it
the same way).
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.8.0"

_here = Path(__file__).resolve().parent
if not (_here / "kernels").is_dir() and (_here.parent / "kernels" / "__init__.py").is_file() \
        and (_here.parent / "pyproject.toml").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 (a package's __path__)
