"""The distribution installs one import package, handgrad, and nothing else at the top.

The wheel is built from this checkout (setuptools, the build backend pyproject names,
without build isolation: no network) and read as the zip it is; no install."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of what the wheel is made of: setuptools writes build/ and
    # *.egg-info/ beside the sources, which stay out of the checkout
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("handgrad", "kernels", "reports"):
        shutil.copytree(ROOT / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "out"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(out), str(src)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("handgrad-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


@pytest.mark.slow
def test_the_wheel_has_one_top_level_package_handgrad(wheel):
    names = wheel.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"handgrad"}, sorted(tops)
    (info,) = dist_info
    top_level = f"{info}/top_level.txt"
    if top_level in names:  # setuptools writes it; the import names pip records
        assert wheel.read(top_level).decode().split() == ["handgrad"]


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_kernels_and_reports_under_handgrad(wheel):
    names = set(wheel.namelist())
    for folder in ("kernels", "reports"):
        for path in (ROOT / folder).glob("*.py"):
            assert f"handgrad/{folder}/{path.name}" in names, f"{folder}/{path.name} missing"
    assert "handgrad/__init__.py" in names
    assert not any(n.startswith(("handgrad/verify/", "handgrad/bench/")) for n in names)


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_nothing_imports_kernels_or_reports_outside_the_handgrad_package():
    """One name per module: ``kernels.mlp`` and ``handgrad.kernels.mlp`` would be two
    modules with two ``MLP`` classes (an isinstance check fails across them)."""
    offenders = []
    for folder in ("handgrad", "kernels", "reports", "verify", "bench", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []:
            if "out" in path.relative_to(ROOT).parts:
                continue
            for line, name in _imports(path):
                if name.split(".", 1)[0] in ("kernels", "reports"):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: import {name}")
    for line, name in _imports(ROOT / "conftest.py"):
        if name.split(".", 1)[0] in ("kernels", "reports"):
            offenders.append(f"conftest.py:{line}: import {name}")
    assert not offenders, "\n".join(offenders)


def test_handgrad_kernels_is_the_checkouts_kernels_folder():
    import handgrad
    import handgrad.kernels
    import handgrad.reports

    assert Path(handgrad.kernels.__file__).parent == ROOT / "kernels"
    assert Path(handgrad.reports.__file__).parent == ROOT / "reports"
    assert handgrad.__version__.count(".") == 2


def test_the_old_reports_command_is_gone_as_its_deprecation_said():
    proc = subprocess.run([sys.executable, "-m", "reports", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr == ("error: `python -m reports` was removed in handgrad 0.3.0 "
                           "(deprecated in 0.2); use `python -m handgrad.reports` with the "
                           "same arguments\n")
    new = subprocess.run([sys.executable, "-m", "handgrad.reports", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert new.returncode == 0 and new.stderr == "", new.stderr


@pytest.mark.slow
def test_the_wheel_registers_the_pytest_plugin(wheel):
    (info,) = {n.split("/", 1)[0] for n in wheel.namelist() if ".dist-info/" in n}
    text = wheel.read(f"{info}/entry_points.txt").decode()
    section = text.split("[pytest11]", 1)[1].split("\n[", 1)[0]
    assert "handgrad.plugin = handgrad.plugin" in section
    assert "handgrad/plugin.py" in wheel.namelist()
    assert "handgrad/testing/checks.py" in wheel.namelist()
