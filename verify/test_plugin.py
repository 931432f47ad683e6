"""handgrad's pytest plugin in a user's project: a temporary folder outside this
repository with its own test file, run by pytest in a subprocess (pytester)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# the reports (and matplotlib, scipy, pandas under them) load when this module does:
# pytester restores sys.modules after each of its tests, and a C extension such as
# scipy's, first imported inside one, cannot load again in the tests that follow
import handgrad.reports.gate  # noqa: F401
import handgrad.reports.render  # noqa: F401
from verify.runs import drop_worker_env

ROOT = Path(__file__).resolve().parent.parent

USER_TEST = '''
import torch
import torch.nn.functional as F
from handgrad.testing import check_vjp


def softplus(x):
    return F.softplus(x)


def softplus_vjp(g, x):
    return (g * torch.sigmoid(x),)


def softplus_vjp_wrong(g, x):
    return (g * torch.sigmoid(-x),)


def test_right(generator):
    check_vjp(softplus, softplus_vjp, (torch.randn(6, generator=generator,
                                                   dtype=torch.float64),))


def test_devices(device):
    assert torch.zeros(1, device=device).device.type == device


def test_dtypes(dtype):
    assert dtype.is_floating_point


def test_seed(seed, generator):
    assert isinstance(seed, int) and generator.initial_seed() == seed
'''


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch) -> pytest.Pytester:
    # handgrad from this checkout, whether or not it is installed
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    drop_worker_env(monkeypatch)  # pytest-benchmark turns itself off in an xdist worker
    pytester.makepyfile(test_user=USER_TEST)
    return pytester


def _run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_subprocess("-p", "handgrad.plugin", "-p", "no:cacheprovider", *args)


def test_the_fixtures_and_the_verify_report_in_a_users_project(project, tmp_path):
    report = tmp_path / "new" / "verify.json"  # its folder made
    res = _run(project, "--device", "cpu", f"--verify-report={report}", "-v")
    res.assert_outcomes(passed=7)  # right, devices[cpu], 4 dtypes, seed
    res.stdout.fnmatch_lines(["*test_devices?cpu?*", "*test_dtypes?float64?*",
                              "*test_dtypes?bfloat16?*", "*verify report: * comparisons*"])
    payload = json.loads(report.read_text())
    kernels = {r["kernel"] for r in payload["records"]}
    assert kernels == {"softplus_vjp"}


@pytest.mark.parametrize("where,says", [
    ("folder", "*folder is a folder; expected a file"),
    ("file/report.json", "*report.json lies under *file, which is a file"),
])
def test_a_verify_report_that_cannot_be_written_is_a_usage_error_before_the_run(
        project, tmp_path, where, says):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    res = _run(project, "--device", "cpu", f"--verify-report={tmp_path / where}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*--verify-report: {says}*"])
    assert "passed" not in res.stdout.str()  # refused before any test ran


def test_an_absent_device_skips_with_the_reason(project):
    res = _run(project, "--device", "cpu,cuda", "-k", "devices", "-rs")
    if torch.cuda.is_available():
        res.assert_outcomes(passed=2)
    else:
        res.assert_outcomes(passed=1, skipped=1)
        res.stdout.fnmatch_lines(["*device 'cuda' requested but not present*"])


def test_a_misspelt_device_is_a_usage_error(project):
    res = _run(project, "--device", "tpu")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--device: unknown device(s) ?'tpu'?*"])


def test_a_device_named_twice_runs_once(project):
    """--device cpu,cpu (a slip) runs each test once on the CPU, not twice as cpu0, cpu1."""
    res = _run(project, "--device", "cpu, cpu,cpu", "-v", "-k", "test_devices")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*test_devices?cpu? PASSED*"])


def test_a_wrong_vjp_fails_naming_the_argument(project):
    project.makepyfile(test_wrong='''
import torch
from test_user import softplus, softplus_vjp_wrong
from handgrad.testing import check_vjp

def test_wrong():
    check_vjp(softplus, softplus_vjp_wrong, (torch.linspace(-2, 2, 5, dtype=torch.float64),))
''')
    res = _run(project, "test_wrong.py")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*wrong derivative for args[[]0[]] (x)*"])


def test_a_projects_own_device_fixture_wins(project):
    project.makeconftest('''
import pytest

@pytest.fixture
def device():
    return "cpu"
''')
    res = _run(project, "-k", "devices", "--device", "cpu,cuda")
    res.assert_outcomes(passed=1)  # its fixture, not the plugin's parametrization


def test_the_seed_fixture_gives_the_global_generator_back(project):
    """A test that takes ``seed`` reseeds torch's global generator for itself only: the
    next test continues the stream the one before left."""
    project.makepyfile(test_rng='''
import torch

STATE = {}

def test_1_before():
    torch.manual_seed(123)
    STATE["after_first"] = torch.rand(2)
    STATE["rng"] = torch.get_rng_state()

def test_2_seeded(seed):
    assert torch.initial_seed() == seed
    torch.rand(1000)

def test_3_after():
    assert torch.equal(torch.get_rng_state(), STATE["rng"])
''')
    res = _run(project, "test_rng.py", "-p", "no:randomly")
    res.assert_outcomes(passed=3)


def test_the_plugin_can_be_turned_off(project):
    res = project.runpytest_subprocess("-p", "no:handgrad.plugin", "-p", "no:cacheprovider",
                                       "--device", "cpu")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*unrecognized arguments: --device*"])


USER_BENCH = '''
import pytest
import torch
import torch.nn.functional as F


def softplus_backward(g, x):  # the user's hand-written backward
    return g * torch.sigmoid(x)


@pytest.mark.parametrize("batch", [64, 256, 1024])
@pytest.mark.parametrize("method", ["mine", "torch_autograd"])
def test_softplus_backward(measure, batch, method):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 32, generator=g)
    dy = torch.randn(batch, 32, generator=g)

    def reference():
        xr = x.detach().requires_grad_()
        return torch.autograd.grad(F.softplus(xr), xr, dy)[0]

    fn = {"mine": lambda: softplus_backward(dy, x), "torch_autograd": reference}[method]
    measure(fn, reference_fn=None if method == "torch_autograd" else reference,
            group=f"softplus batch={batch}", kernel="softplus_layer", method=method,
            reference="torch_autograd",
            role="reference" if method == "torch_autograd" else "kernel",
            flops=4 * batch * 32, bytes=3 * 4 * batch * 32, device="cpu",
            dtype=torch.float32, shape={"batch": batch, "width": 32})


@pytest.mark.full
def test_only_in_the_full_grid(measure):
    measure(lambda: None, group="g", kernel="k", method="m", reference="m",
            role="reference", device="cpu", dtype=torch.float32)
'''


def test_the_measure_fixture_times_a_users_kernel_beside_its_reference(project, tmp_path):
    """A user's kernel, a family handgrad does not know: interleaved with its reference,
    its peak memory measured, the record read by render and gate; the grid option and
    its markers work in a project that registers none."""
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(test_bench=USER_BENCH)
    out = tmp_path / "user.json"
    result = _run(project, "test_bench.py", "--strict-markers", f"--benchmark-json={out}",
                  "--benchmark-min-rounds=3", "--benchmark-max-time=0.01",
                  "--bench-threads=1")
    result.assert_outcomes(passed=6, skipped=1)
    data = json.loads(out.read_text())
    from handgrad.reports.record import SCHEMA, SCHEMA_KEY, BenchRecord

    assert data["machine_info"][SCHEMA_KEY] == SCHEMA
    records = [BenchRecord.from_extra_info(b["extra_info"]) for b in data["benchmarks"]]
    mine = [r for r in records if r.method == "mine"]
    assert sorted(r.shape["batch"] for r in mine) == [64, 256, 1024]
    assert all(r.gated and r.threads == 1 and r.peak_bytes is not None
               and r.reference_peak_bytes is not None for r in mine)
    for b in data["benchmarks"]:  # interleaved: one reference round per kernel round
        r = BenchRecord.from_extra_info(b["extra_info"])
        if r.method == "mine":
            assert len(r.reference_data) == len(b["stats"]["data"]) >= 3
    from handgrad.reports.__main__ import main

    assert main(["render", str(out), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.csv").read_text()
    assert "softplus_layer" in summary and "batch" in summary.splitlines()[0]
    # a second run to gate against (one run given as both sides is refused): the gate reads
    # both (0 ok, 1 regression, 3 inconclusive, by the noise of runs this short; 2: unread)
    again = tmp_path / "again.json"
    _run(project, "test_bench.py", "--strict-markers", f"--benchmark-json={again}",
         "--benchmark-min-rounds=3", "--benchmark-max-time=0.01",
         "--bench-threads=1").assert_outcomes(passed=6, skipped=1)
    assert main(["gate", "--baseline", str(out), "--current", str(again)]) in (0, 1, 3)


def test_the_measure_fixture_refuses_a_malformed_record_by_name(project):
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(test_bad='''
import torch

def test_bad(measure):
    measure(lambda: None, group="g", kernel="k", method="m", reference="r",
            role="owner", device="cpu", dtype=torch.float32)


def test_bad_dtype(measure):
    measure(lambda: None, group="g", kernel="k", method="m", reference="m",
            role="reference", device="cpu", dtype=torch.int64)


def test_not_callable(measure):
    measure(3, group="g", kernel="k", method="m", reference="m",
            role="reference", device="cpu", dtype=torch.float32)
''')
    result = _run(project, "test_bad.py", "--benchmark-disable")
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    assert "role: expected one of ['kernel', 'reference'], got 'owner'" in out
    assert "dtype: expected a floating torch.dtype (e.g. torch.float32), got torch.int64" in out
    assert "fn: expected a callable of no arguments, got int 3" in out


def test_a_session_of_checks_keeps_the_projects_thread_count(project):
    """The plugin fixes torch's thread count only for a session that times something (a
    test using measure) or asks (--bench-threads): a project's checks keep their own."""
    project.makepyfile(test_threads='''
import torch

def test_threads():
    print("THREADS", torch.get_num_threads())
''')
    project.makeconftest("import torch\ntorch.set_num_threads(3)\n")
    kept = _run(project, "test_threads.py", "-s")
    kept.assert_outcomes(passed=1)
    kept.stdout.fnmatch_lines(["*THREADS 3*"])
    asked = _run(project, "test_threads.py", "-s", "--bench-threads=1")
    asked.stdout.fnmatch_lines(["*THREADS 1*"])
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(test_timed='''
import torch

def test_timed(measure):
    print("THREADS", torch.get_num_threads())
    measure(lambda: None, group="g", kernel="k", method="m", reference="m",
            role="reference", device="cpu", dtype=torch.float32)
''')
    timed = _run(project, "test_timed.py", "-s", "--benchmark-disable")
    timed.assert_outcomes(passed=1)
    timed.stdout.fnmatch_lines([f"*THREADS {min(os.cpu_count() or 1, 8)}*"])


def test_timed_output_under_xdist_is_refused_naming_n(project, tmp_path):
    """pytest-benchmark disables benchmarks under pytest-xdist: `-n 2 --benchmark-json`
    had passed and written nothing, its warning the only word (a walkthrough's find)."""
    out = tmp_path / "x.json"
    res = _run(project, "--device", "cpu", "-n", "2", f"--benchmark-json={out}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--benchmark-json: benchmarks are not timed under "
                              "pytest-xdist*run the timed benchmarks without -n*"])
    # nothing written (pytest-benchmark < 5 opens the file as it parses the option: empty)
    assert not out.exists() or out.stat().st_size == 0


class _Config:
    def __init__(self, worker: bool = False, **options):
        self.options = {"dist": "load", **options}
        if worker:
            self.workerinput = {"workercount": 2}

    def getoption(self, name, default=None):
        return self.options.get(name, default)


@pytest.mark.parametrize("dest, flag", __import__("handgrad.benchmark").benchmark.OUTPUT_OPTIONS)
def test_each_timed_output_under_xdist_is_refused_by_its_flag(dest, flag):
    from handgrad.benchmark import refuse_xdist_output

    with pytest.raises(pytest.UsageError, match=f"^{flag}: .*without -n"):
        refuse_xdist_output(_Config(**{dest: "x"}))


@pytest.mark.parametrize("config", [
    _Config(benchmark_json="x.json", dist="no"),  # -n 0, or no -n
    _Config(benchmark_json="x.json", benchmark_skip=True),  # checks only
    _Config(benchmark_json="x.json", benchmark_disable=True),
    _Config(),  # -n without an output: pytest-benchmark's warning, the checks run
    _Config(worker=True, benchmark_json="x.json"),  # a worker: the controller refuses
], ids=["serial", "skip", "disable", "no-output", "worker"])
def test_xdist_without_timed_output_is_not_refused(config):
    from handgrad.benchmark import refuse_xdist_output

    refuse_xdist_output(config)
