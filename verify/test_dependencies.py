"""Every declared version works: constraints-lowest.txt pins exactly pyproject's lower
bounds, CI and tox install with it, and the reports need nothing beyond the core
dependencies (`pip install .` runs `python -m handgrad.reports render` and `gate`)."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: no TOML parser in the standard library
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent
OWN_PACKAGES = {"handgrad", "reports", "kernels"}
# CI pins torch to the CPU build (constraints.txt), never to its lower bound
NOT_PINNED_LOW = {"torch"}

needs_tomllib = pytest.mark.skipif(
    tomllib is None, reason="reading pyproject.toml needs tomllib (Python 3.11+)")


def canonical(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503): case and -_. runs folded."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """'2.0' and '2.0.0' are one version (PEP 440 pads the release with zeros)."""
    assert re.fullmatch(r"\d+(\.\d+)*", version), f"not a plain release version: {version}"
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """{name: version} of each requirement's '>=' bound; every requirement must have one."""
    out = {}
    for req in requirements:
        spec = req.split(";", 1)[0]
        m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", spec)
        assert m, f"pyproject: cannot read the requirement {req!r}"
        bounds = re.findall(r">=\s*([^\s,]+)", m.group(3))
        assert len(bounds) == 1, f"pyproject: {req!r} needs exactly one lower bound (>=)"
        out[canonical(m.group(1))] = bounds[0]
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def core_and_test_bounds() -> tuple[dict[str, str], dict[str, str]]:
    project = pyproject()["project"]
    return (lower_bounds(project["dependencies"]),
            lower_bounds(project["optional-dependencies"]["test"]))


def lowest_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, line in enumerate((ROOT / "constraints-lowest.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert m, f"constraints-lowest.txt:{n}: expected name==version, got {line!r}"
        name = canonical(m.group(1))
        assert name not in pins, f"constraints-lowest.txt:{n}: {name} is pinned twice"
        pins[name] = m.group(2)
    return pins


@needs_tomllib
def test_lowest_pins_are_exactly_the_declared_lower_bounds() -> None:
    core, test = core_and_test_bounds()
    declared = {k: v for k, v in {**core, **test}.items() if k not in NOT_PINNED_LOW}
    pins = lowest_pins()
    assert sorted(pins) == sorted(declared), (
        f"constraints-lowest.txt pins {sorted(pins)}; pyproject's dependencies and test "
        f"extra declare lower bounds for {sorted(declared)} (torch excepted)")
    wrong = {name: f"pinned {pins[name]}, declared >={low}" for name, low in declared.items()
             if release(pins[name]) != release(low)}
    assert not wrong, f"constraints-lowest.txt is not at the lower bounds: {wrong}"


def third_party_imports(folder: Path) -> dict[str, list[str]]:
    """{top-level module: ['file:line', ...]} for every absolute import of a module that is
    neither in the standard library nor one of the project's own packages."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        if path.relative_to(folder).parts[0] == "out":  # generated output (reports/out)
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                if top in sys.stdlib_module_names or top in OWN_PACKAGES:
                    continue
                found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_import_finder_finds() -> None:
    # the finder itself, on this folder: pytest is third party, the rest is not
    found = third_party_imports(Path(__file__).parent)
    assert "pytest" in found and "ast" not in found and "reports" not in found


@needs_tomllib
def test_reports_import_only_core_dependencies() -> None:
    core, test = core_and_test_bounds()
    dists = packages_distributions()
    offenders = []
    for module, where in third_party_imports(ROOT / "reports").items():
        names = {canonical(d) for d in dists.get(module, [module])}
        if not names & core.keys():
            extra = " (only in the test extra)" if names & test.keys() else ""
            offenders.append(f"{module}{extra}, imported at {', '.join(where)}")
    assert not offenders, (
        "reports/ imports modules that pyproject's core dependencies do not install, so "
        "`pip install .` is not enough for `python -m handgrad.reports`:\n" + "\n".join(offenders))


def _pip_install_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "pip install" in line]


def test_ci_runs_verify_and_the_bench_at_the_lowest_versions() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    installs = [line for line in _pip_install_lines(text)
                if "-c constraints.txt" in line and "-c constraints-lowest.txt" in line]
    assert installs, ".ci/run installs nothing with -c constraints-lowest.txt"
    after = text.split(installs[0], 1)[1]
    for what in ("python -m pytest verify", "--benchmark-disable", "--benchmark-json"):
        assert what in after, f".ci/run: no {what!r} after the lowest-versions install"


def test_ci_runs_the_reports_from_a_core_install() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    core = [line for line in _pip_install_lines(text)
            if re.search(r"pip install (--quiet )?-c constraints\.txt \.$", line.strip())]
    assert core, ".ci/run has no `pip install -c constraints.txt .` (without extras)"
    after = text.split(core[0], 1)[1]
    assert "python -m handgrad.reports render" in after
    assert "python -m handgrad.reports gate" in after


def test_tox_has_a_lowest_environment() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    assert tox.has_section("testenv:lowest"), "tox.ini has no [testenv:lowest]"
    env = tox["testenv:lowest"]
    install = env.get("install_command", "")
    assert "constraints.txt" in install and "constraints-lowest.txt" in install, install
    commands = env.get("commands", "")
    assert "python -m pytest verify" in commands and "--benchmark-disable" in commands
