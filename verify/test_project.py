"""The front door stays true: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_commands_test_then_bench() -> None:
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    test_cmd, bench_cmd = cmds
    assert "pytest verify" in test_cmd
    assert "pytest bench --benchmark-json" in bench_cmd and "reports render" in bench_cmd


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_cmd = readme_commands()[0]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines, f".ci/run does not run the README's test command: {test_cmd}"


def test_constraints_pin_the_cpu_torch_and_pyproject_keeps_a_range() -> None:
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=' in pyproject and "torch==" not in pyproject
    assert "constraints.txt" in (ROOT / "tox.ini").read_text()


def test_no_autograd_inside_manual_kernels() -> None:
    offenders = []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"torch\.autograd|torch\.func|\.backward\(|requires_grad_\(", code):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, "autograd inside kernels/:\n" + "\n".join(offenders)
