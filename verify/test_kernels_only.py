"""--bench-kernels-only: a run of what the gates judge. Each kernel is timed (or counted)
with its reference beside it; the references' own benchmarks and the machine's are skipped
with the reason; a kernel without ``reference_fn`` is refused by name (its ratio would need
the skipped row: a gate would leave it ungated). .ci/gate runs every benchmark so: the
references' rows were 62% of the default grid's rows and half its time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import handgrad.reports.gate  # noqa: F401  (C extensions load before pytester's tests)
from verify.runs import drop_worker_env

ROOT = Path(__file__).resolve().parent.parent

BENCH = '''
import pytest
import torch

x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))


def mine():
    return torch.tanh(x)


def reference():
    return x.tanh()


@pytest.mark.parametrize("method", ["mine", "torch_tanh"])
def test_tanh(measure, method):
    kernel = method == "mine"
    measure(mine if kernel else reference, reference_fn=reference if kernel else None,
            group="tanh 64x32", kernel="tanh_layer", method=method, reference="torch_tanh",
            role="kernel" if kernel else "reference", device="cpu", dtype=torch.float32)


def test_control(measure):
    measure(reference, group="control tanh", kernel="control", method="tanh",
            reference="tanh", role="reference", device="cpu", dtype=torch.float32)
'''

NO_REFERENCE_FN = '''
import torch


def test_alone(measure):
    measure(lambda: torch.ones(3).sum(), group="sum 3", kernel="summing", method="mine",
            reference="torch_sum", role="kernel", device="cpu", dtype=torch.float32)
'''

FAST = ("--benchmark-min-rounds=3", "--benchmark-max-time=0.01", "--bench-threads=1")


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch) -> pytest.Pytester:
    pytest.importorskip("pytest_benchmark")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    drop_worker_env(monkeypatch)  # pytest-benchmark turns itself off in an xdist worker
    return pytester


def _run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_subprocess("-p", "handgrad.plugin", "-p", "no:cacheprovider", "-rs",
                                  *FAST, *args)


def _methods(path: Path) -> dict[str, dict]:
    data = json.loads(path.read_text())
    return {b["extra_info"]["method"]: b for b in data["benchmarks"]}


def test_only_the_kernels_are_timed_each_with_its_reference_interleaved(project, tmp_path):
    project.makepyfile(test_bench=BENCH)
    out = tmp_path / "kernels.json"
    result = _run(project, "test_bench.py", "--bench-kernels-only", f"--benchmark-json={out}")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*--bench-kernels-only: a reference's own benchmark*"])
    data = json.loads(out.read_text())
    assert data["machine_info"]["bench_kernels_only"] is True
    methods = _methods(out)
    assert list(methods) == ["mine"]
    mine = methods["mine"]
    assert len(mine["extra_info"]["reference_data"]) == len(mine["stats"]["data"]) >= 3
    # the gate reads its ratio from the interleaved rounds: a run of kernels alone is gated
    from handgrad.reports.__main__ import main

    again = tmp_path / "again.json"
    _run(project, "test_bench.py", "--bench-kernels-only",
         f"--benchmark-json={again}").assert_outcomes(passed=1, skipped=2)
    gate_md = tmp_path / "gate.md"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["gate", "--baseline", str(out), "--current", str(again)])
    gate_md.write_text(buf.getvalue())
    assert rc in (0, 1, 3), buf.getvalue()
    assert "tanh_layer.mine" in buf.getvalue() or "tanh 64x32" in buf.getvalue()
    assert "was not timed in both runs" not in buf.getvalue()
    # the report says what the file lacks
    assert main(["render", str(out), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "the references' own benchmarks (as a --bench-kernels-only run" in report


def test_without_the_option_every_benchmark_is_timed(project, tmp_path):
    project.makepyfile(test_bench=BENCH)
    out = tmp_path / "all.json"
    _run(project, "test_bench.py", f"--benchmark-json={out}").assert_outcomes(passed=3)
    assert sorted(_methods(out)) == ["mine", "tanh", "torch_tanh"]
    assert json.loads(out.read_text())["machine_info"]["bench_kernels_only"] is False
    report_dir = tmp_path / "report"
    from handgrad.reports.__main__ import main

    assert main(["render", str(out), "--out", str(report_dir)]) == 0
    assert "--bench-kernels-only" not in (report_dir / "report.md").read_text()


def test_a_kernel_without_its_references_callable_is_refused_by_name(project, tmp_path):
    project.makepyfile(test_alone=NO_REFERENCE_FN)
    result = _run(project, "test_alone.py", "--bench-kernels-only",
                  f"--benchmark-json={tmp_path / 'x.json'}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*ValueError: reference_fn: --bench-kernels-only skips the references' own "
        "benchmarks, so kernel summing.mine needs its reference 'torch_sum' timed beside it "
        "(reference_fn), got None*"])
    # without the option it is timed (its ratio comes from a reference row, if any)
    _run(project, "test_alone.py").assert_outcomes(passed=1)


def test_a_role_outside_the_two_is_refused_not_skipped(project):
    project.makepyfile(test_role='''
import torch


def test_role(measure):
    measure(lambda: None, group="g", kernel="k", method="m", reference="r",
            role="kernal", device="cpu", dtype=torch.float32)
''')
    result = _run(project, "test_role.py", "--bench-kernels-only")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*ValueError: role: expected one of ('kernel', 'reference'), got 'kernal'*"])


def test_the_ci_gate_runs_every_benchmark_so():
    gate = (ROOT / ".ci" / "gate").read_text()
    line = next(ln for ln in gate.splitlines() if ln.startswith("bench=("))
    assert "--bench-kernels-only" in line  # both the counted and the timed runs use it


# ------------------------------------------------ skipped at collection, before the setup

MARKED = '''
import pytest


@pytest.mark.reference_role
def test_reference_setup():
    raise AssertionError("set up: a reference's case ran")


@pytest.mark.captured
def test_replay(device):
    raise AssertionError(f"set up: a replay's case ran on {device}")


def test_kernel():
    pass


@pytest.mark.captured
@pytest.mark.parametrize("device", ["cuda:0"])
def test_replay_on_a_cuda_device(device):  # the case itself skips where CUDA is missing
    pass
'''


def test_the_marked_cases_are_skipped_before_they_set_anything_up(project):
    """Under callgrind a case's setup takes seconds (random weights of K=1024): a reference
    (``reference_role``) under --bench-kernels-only, and a replay (``captured``) on a device
    other than CUDA, are skipped at collection, before their bodies run."""
    project.makepyfile(test_marked=MARKED)
    result = _run(project, "test_marked.py", "--bench-kernels-only", "--device", "cpu")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*--bench-kernels-only: a reference's own benchmark*",
                                 "*CUDA graphs replay on a GPU only (device cpu)*"])
    # without the option the reference's case runs; the replay still skips off CUDA
    result = _run(project, "test_marked.py", "--device", "cpu")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*set up: a reference's case ran*"])


def test_handgrads_families_mark_each_method_by_role_and_build():
    from bench.specs import backprop, counting, jacobian, least_squares
    from handgrad.benchmark.methods import method_params

    families = [backprop.FAMILY, backprop.CE_FAMILY, counting.FAMILY, jacobian.FAMILY,
                least_squares.GD_FAMILY, least_squares.MOMENTUM_FAMILY]
    seen = set()
    for family in families:
        for param in method_params(family):
            (name,) = param.values
            m = family.methods[name]
            marks = {mark.name for mark in param.marks}
            assert ("reference_role" in marks) == (m.role == "reference"), (name, marks)
            assert ("captured" in marks) == (m.build == "captured"), (name, marks)
            assert ("full" in marks) == (m.build == "compiled"), (name, marks)
            seen.add((m.role, m.build))
    # each kind is among them, or the assertions above proved nothing of it
    assert {("reference", "eager"), ("kernel", "eager"), ("kernel", "captured")} <= seen


def test_the_control_and_the_ceilings_are_skipped_by_it():
    for name in ("test_control.py", "test_ceiling.py"):
        text = (ROOT / "bench" / name).read_text()
        assert text.count("@pytest.mark.every_grid\n@pytest.mark.reference_role\n") == \
            text.count("@pytest.mark.every_grid\n") >= 1, name
