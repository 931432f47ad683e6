"""handgrad reports: pytest-benchmark JSON -> pandas tables, matplotlib figures, markdown.

``python -m handgrad.reports render BENCH.json [MORE.json ...] --out DIR``
"""

from handgrad.reports.load import ReportInputError, load_benchmarks

__all__ = ["ReportInputError", "load_benchmarks"]
