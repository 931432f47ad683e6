"""The front door stays true: the README's commands are the ones CI runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

# the reports (and matplotlib, scipy, pandas under them) load when this module does:
# pytester restores sys.modules after each of its tests, and a C extension such as
# scipy's, first imported inside one, cannot load again in the tests that follow
import handgrad.reports.gate  # noqa: F401
import handgrad.reports.render  # noqa: F401
from verify.runs import drop_worker_env

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


def _autograd_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for every torch.autograd / torch.func access, import, or .backward() call."""
    found = []
    tree = ast.parse(source)
    # torch.autograd.Function, the base class (named, not called: counting follows custom
    # Functions at their apply), told apart from the rest of torch.autograd
    base = {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr == "Function"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "torch" and node.attr in (
                "autograd",
                "func",
            ):
                found.append((node.lineno, "torch.autograd.Function" if id(node) in base
                              else f"torch.{node.attr}"))
            if node.attr in ("backward", "requires_grad_"):
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names]
            for name in names:
                if name.startswith(("torch.autograd", "torch.func", "functorch")):
                    found.append((node.lineno, f"import {name}"))
    return found


def test_the_autograd_detector_detects() -> None:
    src = "import torch\nfrom torch.func import grad\ny = torch.autograd.grad(a, b)\nz.backward()\n"
    assert sorted(n for n, _ in _autograd_uses(src)) == [2, 3, 4]
    # the Function base class is named apart, the rest of torch.autograd not
    both = "f = torch.autograd.Function.apply\ng = torch.autograd.grad\n"
    assert sorted(_autograd_uses(both)) == [(1, "torch.autograd.Function"), (2, "torch.autograd")]


# counting differentiates nothing: it uses torch.func.functional_call only to run a model
# with meta tensors swapped in for its parameters (and restored after); _elementwise reads
# whether a forward-mode AD level is open, to keep numpy's tanh out of it
# _walk.py: torch.func.functional_call runs a module with swapped parameters (no
# derivative); _elementwise.py: see its docstring; counting.py: swaps
# torch.autograd.Function.apply during a backward walk, to see custom Functions
ALLOWED = {("_walk.py", "import torch.func"), ("_elementwise.py", "torch.autograd"),
           ("counting.py", "torch.autograd.Function")}


def test_no_autograd_inside_manual_kernels() -> None:
    offenders = [
        f"{path.name}:{n}: {what}"
        for path in sorted((ROOT / "kernels").glob("*.py"))
        for n, what in _autograd_uses(path.read_text())
        if (path.name, what) not in ALLOWED
    ]
    assert not offenders, "autograd inside kernels/:\n" + "\n".join(offenders)


def test_workflow_verifies_every_push_and_gates_pull_requests() -> None:
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert re.search(r"^on:\n  push:\n  pull_request:", text, re.M), "triggers"
    assert "python -m pytest verify" in text
    assert "-c constraints.txt" in text  # the CPU torch, as in .ci/run
    gate_job = text.split("bench-gate:", 1)[1]
    assert "if: github.event_name == 'pull_request'" in gate_job
    assert "pull_request.base.sha" in gate_job  # the base is benchmarked on the same runner
    # runs alternated (each a process, one thread), then gated over runs
    runs = gate_job.index("python -m handgrad.benchmark.alternate --out reports/out --runs 3 "
                          "--baseline-tree ../base --current-tree . --")
    assert "--bench-threads=1" in gate_job[runs:].split("\n", 1)[0]
    assert "--bench-kernels-only" in gate_job[runs:].split("\n", 1)[0]  # as .ci/gate
    gate = gate_job.index("python -m handgrad.reports gate --baseline reports/out/base-1.json "
                          "reports/out/base-2.json reports/out/base-3.json --current "
                          "reports/out/head-1.json reports/out/head-2.json "
                          "reports/out/head-3.json")
    assert runs < gate


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_docs_show_no_figure_of_a_run(tmp_path) -> None:
    """Figures that change with each run are generated into reports, never copied into the
    docs: no figure the docs show has the name of one that `render` writes; those they do
    show exist and are PNGs."""
    from handgrad.reports.__main__ import main

    assert main(["render", str(ROOT / "verify" / "fixtures" / "bench_run1.json"),
                 "--out", str(tmp_path)]) == 0
    written = {p.name for p in tmp_path.glob("*.png")}
    assert written  # render draws figures, so the comparison means something
    for doc in DOCS:
        for f in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", doc.read_text()):
            path = (doc.parent / f).resolve()
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (doc.name, f)
            assert path.name not in written, f"{doc.name} shows {f}, a figure of one run"


def test_the_docs_links_resolve() -> None:
    """Every relative link of the README and docs/ names a file of the repository (a clone
    has no ../shared/)."""
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            assert path.exists() and ROOT in path.parents, (doc.name, target)


def test_ci_gates_every_submission_against_the_baseline_commit() -> None:
    """.ci/run installs valgrind where it is missing and runs .ci/gate, which counts and
    times the baseline's kernels and this tree's and gates them with the declared
    regressions; .ci/baseline names one full commit hash."""
    import subprocess

    from handgrad.reports.gate import read_accepted

    run = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install -y -qq valgrind" in run and ".ci/gate" in run
    gate = (ROOT / ".ci" / "gate").read_text()
    assert "--bench-instructions" in gate
    assert gate.index("--bench-instructions") < gate.index("python -m handgrad.reports gate")
    assert gate.count("--accept") >= 1 and "accepted-regressions" in gate
    assert 'git archive "$base" kernels' in gate
    lines = [ln.strip() for ln in (ROOT / ".ci" / "baseline").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) == 1 and re.fullmatch(r"[0-9a-f]{40}", lines[0]), lines
    if (ROOT / ".git").exists():  # a checkout: the baseline is a commit it has
        assert subprocess.run(["git", "cat-file", "-e", lines[0] + "^{commit}"], cwd=ROOT,
                              capture_output=True).returncode == 0
    read_accepted(str(ROOT / ".ci" / "accepted-regressions"))  # well formed


def test_ci_runs_the_gate_last_within_its_time_limit() -> None:
    """The gate's timed runs are the one step of .ci/run whose length varies (an
    inconclusive verdict takes more runs): it runs last, told when CI's time ends
    (GATE_DEADLINE), so that nothing after it is cut by CI's limit (stop 38's submission
    did not land: the job passed 5400 s)."""
    run = (ROOT / ".ci" / "run").read_text()
    steps = [ln for ln in run.splitlines() if ln.startswith("step_done ")]
    assert steps[-1] == 'step_done "benchmark gate against .ci/baseline"', steps
    gate_call = run[run.rindex("GATE_DEADLINE="):]
    assert gate_call.index(".ci/gate") < gate_call.index("step_done")
    assert "${CI_TIME_LIMIT_S:-5400}" in gate_call.split(".ci/gate")[0]
    assert run.index(".ci/example") < run.rindex(".ci/gate")


def test_the_readmes_own_kernel_example_runs_and_checks() -> None:
    """The "Check your own kernel" example, executed as written: it must pass, and with
    its backward broken (the bias gradient doubled) it must fail naming the bias."""
    import contextlib
    import io

    import pytest

    text = (ROOT / "README.md").read_text()
    section = text.split("## Check your own kernel", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert "check_vjp of layer (float64): PASS" in out.getvalue()
    assert "check_jvp of layer (float64): PASS" in out.getvalue()
    broken = code.replace("d.sum(0)", "2 * d.sum(0)")
    assert broken != code
    from handgrad.testing.compare import unrecorded  # a planted failure is no check

    with unrecorded(), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(AssertionError, match=r"wrong derivative for args\[2\] \(bias\)"):
        exec(compile(broken, "README.md", "exec"), {})


def test_ci_runs_the_example_project_from_a_built_wheel() -> None:
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ".ci/example" in run
    example = (ROOT / ".ci" / "example").read_text()
    for what in ("pip wheel", "examples/softplus_layer", "$(mktemp -d)",
                 "tests/test_softplus_layer.py", "tests/test_planted.py",
                 r"wrong derivative for args\[1\] (weight)", "handgrad.reports render",
                 "python -m pytest benchmarks", "--benchmark-json", "--bench-slow",
                 "handgrad.reports gate", "| REGRESSION |"):
        assert what in example, f".ci/example lacks {what!r}"
    assert "pip install -e" not in example and "--editable" not in example


def test_the_docs_record_table_names_every_field_of_the_record_once() -> None:
    """docs/benchmarks.md's table of the benchmark record mirrors BenchRecord: each field
    in one row, no row for a field that does not exist, and both roles named."""
    from dataclasses import fields

    from handgrad.reports.record import ROLES, BenchRecord

    text = (ROOT / "docs" / "benchmarks.md").read_text()
    table = text.split("## The benchmark record", 1)[1].split("\n\n| field | meaning |", 1)[1]
    rows = [line for line in table.split("\n\n", 1)[0].splitlines() if line.startswith("| `")]
    named = [n for row in rows for n in re.findall(r"`([A-Za-z_]+)`", row.split(" | ")[0])]
    want = [f.name for f in fields(BenchRecord)]
    assert sorted(named) == sorted(want), (sorted(set(want) - set(named)),
                                           sorted(set(named) - set(want)))
    role_row = next(r for r in rows if r.startswith("| `role` |"))
    assert set(re.findall(r"`([a-z_]+)`", role_row.split(" | ", 1)[1])) == set(ROLES)


# test modules import helpers, never each other (issue 24): shared cases, fakes and run
# helpers live in verify/backprop_cases.py, counting_cases.py, runs.py, fake_cuda_*.py; the
# bench's family specs in bench/specs/, which verify reads there.


def _test_module_imports() -> set[tuple[str, str]]:
    import ast

    found = set()
    for folder in ("verify", "bench"):
        for path in sorted((ROOT / folder).glob("test_*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for name in names:
                    parts = name.split(".")
                    if len(parts) >= 2 and parts[0] in ("verify", "bench") and \
                            parts[1].startswith("test_"):
                        found.add((f"{folder}/{path.name}", ".".join(parts[:2])))
    return found


def test_no_test_module_imports_another():
    assert _test_module_imports() == set()


def test_the_harness_imports_no_private_kernel_helper():
    """``.ci/gate`` runs this tree's harness (handgrad/, bench/, reports/) over the
    baseline's kernels/: a harness module importing a private helper of today's kernels
    (``kernels._checks``, ``kernels._elementwise``) breaks the baseline's run, as
    ``check_float_dtype`` once did."""
    import ast

    bad = []
    for folder in ("handgrad", "bench", "reports"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                        else [a.name for a in node.names] if isinstance(node, ast.Import)
                        else [])
                mods += [f"{node.module}.{a.name}" for a in node.names] if isinstance(
                    node, ast.ImportFrom) and node.module else []
                if any(m.startswith(("handgrad.kernels._", "kernels._")) for m in mods):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == []


def test_the_readmes_benchmark_example_runs_and_writes_records(pytester, monkeypatch):
    """The "Benchmark it" example, as written, in a project of its own (the functions it
    times are the "Check your own kernel" example's): three benchmarks, each a kernel
    timed interleaved with its reference, that render reads."""
    import json

    import pytest

    pytest.importorskip("pytest_benchmark")
    text = (ROOT / "README.md").read_text()
    check = text.split("## Check your own kernel", 1)[1].split("\n## ", 1)[0]
    (kernel,) = re.findall(r"```python\n(.+?)\n```", check, flags=re.S)
    kernel = kernel.split("\nargs = ", 1)[0]  # the functions, not the calls
    bench = text.split("## Benchmark it", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.+?)\n```", bench, flags=re.S)[0]
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    drop_worker_env(monkeypatch)  # pytest-benchmark turns itself off in an xdist worker
    pytester.makepyfile(test_readme_bench=kernel + "\n\n" + code)
    out = pytester.path / "bench.json"
    result = pytester.runpytest_subprocess(
        "-p", "handgrad.plugin", "-p", "no:cacheprovider", f"--benchmark-json={out}",
        "--benchmark-min-rounds=3", "--benchmark-max-time=0.01")
    result.assert_outcomes(passed=3)
    from handgrad.reports.load import load_benchmarks

    df = load_benchmarks([out])
    assert sorted(df["batch"]) == [64, 256, 1024] and df["interleaved"].all()
    assert set(df["role"]) == {"kernel"} and json.loads(out.read_text())["benchmarks"]


def test_the_readmes_kernel_example_runs_as_its_comments_say() -> None:
    import torch

    text = (ROOT / "README.md").read_text()
    section = text.split("## handgrad's own kernels", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert tuple(ns["grads"].weights[0].shape) == (20, 13)
    assert tuple(ns["grads"].input.shape) == (32, 13)
    assert tuple(ns["J"].shape) == (10, 2)
    W = ns["W"]
    x = torch.randn(2, generator=torch.Generator().manual_seed(1))
    want = torch.func.jacfwd(lambda v: W[2] @ torch.tanh(W[1] @ torch.tanh(W[0] @ v)))(x)
    torch.testing.assert_close(ns["jacobian"].jacobian_forward(W, x), want)


def test_the_gate_example_in_the_docs_is_what_the_command_prints() -> None:
    """docs/reports-and-gate.md shows the gate's output on the fixtures: generated by the
    command it names, never hand-edited (a number there that the command no longer prints
    fails here)."""
    import subprocess
    import sys

    text = (ROOT / "docs" / "reports-and-gate.md").read_text()
    block = text.split("--current verify/fixtures/bench_run_slow.json\n```\n\n```\n", 1)[1]
    shown = block.split("\n```", 1)[0].splitlines()
    assert len(shown) > 10
    fix = ROOT / "verify" / "fixtures"
    out = subprocess.run([sys.executable, "-m", "handgrad.reports", "gate", "--baseline",
                          str(fix / "bench_run1.json"), "--current",
                          str(fix / "bench_run_slow.json")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 1, out.stderr
    assert out.stdout.splitlines()[:len(shown)] == shown


def test_project_md_lists_every_ci_file_and_ends_each_paragraph() -> None:
    """docs/project.md had lost its last lines in the README's move (it ended "a real"),
    and its layout named only some of .ci's files."""
    text = (ROOT / "docs" / "project.md").read_text()
    layout = text.split("```", 2)[1]
    ci = sorted(p.name for p in (ROOT / ".ci").iterdir()
                if not p.name.startswith(".") and p.name != "__pycache__")
    assert ci and [name for name in ci if name not in layout] == []
    prose = [p.strip() for p in text.split("```")[-1].split("\n\n")
             if p.strip() and not p.lstrip().startswith("#")]
    assert prose and [p[-40:] for p in prose if not p.endswith(".")] == []
