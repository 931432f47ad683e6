"""What a new user's walk through the benchmark tools, the GPU check, the reports and
capture found: each fixed, each checked here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from verify.runs import pytest_env

ROOT = Path(__file__).resolve().parent.parent

# a finder that makes pytest (and its private package) look uninstalled, as it is without
# the test extra
HIDE_PYTEST = textwrap.dedent("""
    import sys

    class NoPytest:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("pytest", "_pytest"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoPytest())
    for name in [m for m in sys.modules if m.partition(".")[0] in ("pytest", "_pytest")]:
        del sys.modules[name]
""")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_PYTEST + textwrap.dedent(code)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=pytest_env())


# -- handgrad.benchmark without the test extra ------------------------------------------------

def test_the_trace_module_imports_and_runs_without_pytest():
    proc = _python("""
        import handgrad.benchmark
        from handgrad.benchmark import trace
        import torch
        t = trace.record({"a": lambda: torch.ones(3) + 1}, calls=1, warmup=0)
        print(trace.table(trace.summarize(t)))
        assert "pytest" not in sys.modules
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Mean per call, microseconds (a: 1 calls)" in proc.stdout
    proc = _python("""
        import runpy
        sys.argv = ["python -m handgrad.benchmark.trace", "--help"]
        runpy.run_module("handgrad.benchmark.trace", run_name="__main__", alter_sys=True)
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No module named" not in proc.stderr
    assert "usage: python -m handgrad.benchmark.trace" in proc.stdout


def test_the_finder_does_hide_pytest():
    """The check above is a check: with the finder, ``import pytest`` fails."""
    proc = _python("import pytest")
    assert proc.returncode == 1 and "No module named 'pytest'" in proc.stderr


# -- the reports' subcommands say what they read and write -----------------------------------

@pytest.mark.parametrize("command, says", [
    (["render"], ["Reads pytest-benchmark JSON files", "verify reports", "writes into --out",
                  "report.md"]),
    (["gate"], ["Reads the baseline's and the change's pytest-benchmark JSON",
                "Markdown verdict to stdout"]),
    (["calibrate"], ["Reads three or more pytest-benchmark JSON files", "writes to --out"]),
    (["init-study"], ["writes into --out"]),
    (["history"], ["add stores pytest-benchmark JSON runs", "report reads the file"]),
    (["history", "add"], ["Reads pytest-benchmark JSON files", "in the SQLite file --db",
                          "without a commit is stored with a note on stderr"]),
    (["history", "report"], ["Reads the history file --db", "writes into --out history.md"]),
])
def test_each_reports_subcommands_help_says_what_it_reads_and_writes(command, says, capsys):
    """render's and history's --help had usage and options only: each has a paragraph of
    its own between them."""
    from handgrad.reports.__main__ import main

    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    description = " ".join(text.split("\n\n")[1].split())  # the paragraph after usage
    assert not description.startswith(("positional arguments", "options")), text
    for words in says:
        assert words in description, (words, description)
