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


# --- kernels measured without their reference -----------------------------------------------

MEASURED = '''
import pytest
import torch

CPU = dict(kernel="k", device="cpu", dtype=torch.float32)


def kernel(group, reference, **more):
    return dict(group=group, method="hand", reference=reference, role="kernel", **CPU, **more)


def reference(group, method, **more):
    return dict(group=group, method=method, reference=method, role="reference", **CPU, **more)


def test_kernel_alone(measure):
    measure(lambda: None, **kernel("alone", "torch_missing"))


def test_kernel_interleaved(measure):
    measure(lambda: None, reference_fn=lambda: None, **kernel("inter", "torch_missing"))


def test_kernel_ok(measure):
    measure(lambda: None, **kernel("ok", "torch_ref"))


def test_reference_ok(measure):
    measure(lambda: None, **reference("ok", "torch_ref"))


def test_kernel_other_group(measure):  # its reference is timed, in group "ok" only
    measure(lambda: None, **kernel("other", "torch_ref"))


@pytest.mark.parametrize("n", [1, 2])
def test_reference_two_shapes(measure, n):
    measure(lambda: None, **reference("shapes", "torch_ref", shape={"n": n}))


@pytest.mark.parametrize("n", [1, 3])
def test_kernel_shapes(measure, n):  # n=3: the group's reference has two shapes, not 3
    measure(lambda: None, **kernel("shapes", "torch_ref", shape={"n": n}))


def test_reference_one_shape(measure):
    measure(lambda: None, **reference("one", "torch_ref", shape={"n": 1}))


def test_kernel_one_shape(measure):  # the group's one reference, whatever its shape
    measure(lambda: None, **kernel("one", "torch_ref", shape={"n": 5}))


def test_kernel_that_fails(measure):  # failed: reported as such, never gated
    measure(lambda: None, **kernel("failed", "torch_missing"))
    assert False


def test_reference_that_fails(measure):
    measure(lambda: None, **reference("failed_ref", "torch_ref"))
    assert False


def test_kernel_of_a_failed_reference(measure):
    measure(lambda: None, **kernel("failed_ref", "torch_ref"))
'''

ONE_NAME = '''
import torch

KW = dict(group="layer", kernel="layer", method="hand", reference="torch", role="kernel",
          device="cpu")


def test_over_dtypes(measure, dtype):  # the dtype fixture, one group and shape
    measure(lambda: None, reference_fn=lambda: None, dtype=dtype, shape={"n": 4}, **KW)


def test_dtype_in_the_group(measure, dtype):  # told apart: the fix the summary gives
    measure(lambda: None, reference_fn=lambda: None, dtype=dtype, shape={"n": 8},
            **dict(KW, group=f"layer {dtype}"))


def test_twice_a(measure):
    measure(lambda: None, reference_fn=lambda: None, dtype=torch.float32,
            **dict(KW, group="twice"))


def test_twice_b(measure):
    measure(lambda: None, reference_fn=lambda: None, dtype=torch.float32,
            **dict(KW, group="twice"))
'''


def test_benchmarks_measured_under_one_name_are_named_at_the_end(project):
    """A gate and the history refuse a run with two benchmarks of one group, method, shape
    and device (a test over the dtype fixture under one group and shape is one): the
    session's end says so, with the tests and what to change, before any gate runs."""
    project.makepyfile(test_one_name=ONE_NAME)
    res = _run(project, "test_one_name.py", "--benchmark-disable")
    res.assert_outcomes(passed=10)
    res.stdout.fnmatch_lines([
        "*= handgrad: benchmarks measured under one name =*",
        "handgrad: 2 benchmark(s) measured more than once under one group, method, shape and "
        "device: the gate and the history refuse a run that holds them*",
        "  group 'layer', method 'hand', device 'cpu' [[]n=4[]]: "
        "test_one_name.py::test_over_dtypes[[]float64[]], *[[]float16[]] (in torch.float64, "
        "torch.float32, torch.bfloat16, torch.float16)",
        "  group 'twice', method 'hand', device 'cpu': test_one_name.py::test_twice_a, "
        "test_one_name.py::test_twice_b",
        "  give each its own group, or a shape that differs: where they differ by dtype, a "
        "group per dtype (group=f'... {dtype}'), as a group per device",
    ])
    assert "n=8" not in res.stdout.str()  # a group per dtype tells them apart
    # one clash, not by dtype: the shape hint without the dtype's
    project.makepyfile(test_one_name=ONE_NAME.split("def test_over_dtypes")[0]
                       + "def test_twice_a" + ONE_NAME.split("def test_twice_a")[1])
    res = _run(project, "test_one_name.py", "--benchmark-disable")
    res.stdout.fnmatch_lines(["  give each its own group, or a shape that differs "
                              "(measure(..., shape={...}))"])
    # none: no section
    res = _run(project, "test_one_name.py", "--benchmark-disable", "-k", "twice_a")
    assert "measured under one name" not in res.stdout.str()


WITHOUT_REFERENCE = "*kernel benchmark(s) measured without their reference in this session*"


def _named(res: pytest.RunResult) -> set[str]:
    """The tests the summary names as kernels measured without their reference."""
    lines = res.stdout.lines
    start = [i for i, line in enumerate(lines) if "measured without their reference" in line]
    if not start:
        return set()
    return {line.split()[0].removesuffix(":") for line in lines[start[0] + 1:]
            if line.startswith("  test_")}


def test_the_kernels_measured_without_their_reference_are_named_at_the_end(project):
    project.makepyfile(test_measured=MEASURED)
    res = _run(project, "test_measured.py", "--benchmark-disable")
    res.assert_outcomes(passed=12, failed=2)
    assert _named(res) == {
        "test_measured.py::test_kernel_alone",
        "test_measured.py::test_kernel_other_group",
        "test_measured.py::test_kernel_shapes[3]",
        "test_measured.py::test_kernel_of_a_failed_reference",
    }
    res.stdout.fnmatch_lines([
        "*= handgrad: kernels without their reference =*",
        WITHOUT_REFERENCE.replace("kernel", "4 kernel", 1)
        + "nothing was timed here (--benchmark-disable or -n), but a timed run*",
        "  test_measured.py::test_kernel_alone: group 'alone', method 'hand', device 'cpu': "
        "no test that passed timed its reference 'torch_missing' in the group on 'cpu'",
        "  test_measured.py::test_kernel_shapes[[]3[]]: group 'shapes', method 'hand', device "
        "'cpu' [[]n=3[]]: no test that passed timed its reference 'torch_ref' in the group on "
        "'cpu'",
        "*time each reference in the same session*role='reference'*-k*reference_fn=*",
    ])
    assert "give each device its own group" not in res.stdout.str()  # one device here


def test_a_session_whose_kernels_have_their_references_says_nothing(project):
    project.makepyfile(test_measured=MEASURED)
    res = _run(project, "test_measured.py", "--benchmark-disable", "-k",
               "kernel_ok or reference_ok or interleaved or one_shape")
    res.assert_outcomes(passed=5)
    assert "without their reference" not in res.stdout.str()


def test_a_timed_kernel_whose_reference_is_deselected_is_named(project):
    """The walkthrough's case: a timed run with -k that leaves the reference's test out."""
    project.makepyfile(test_measured=MEASURED)
    res = _run(project, "test_measured.py", "-k", "kernel_ok", "--benchmark-min-rounds=1",
               "--benchmark-max-time=0.000001", "--benchmark-warmup=off")
    res.assert_outcomes(passed=1)
    assert _named(res) == {"test_measured.py::test_kernel_ok"}
    res.stdout.fnmatch_lines([WITHOUT_REFERENCE + "render has no ratio for them and a gate "
                              "skips them*"])


def test_under_xdist_the_workers_measure_calls_are_judged_together(project):
    """-n: a kernel and its reference may run on two workers; the controller gathers every
    worker's measure calls and names, once, the kernels none of them timed a reference for
    (benchmarks are disabled under xdist; the check is the same as in one process)."""
    project.makepyfile(test_kernels='''
import torch

CPU = dict(kernel="k", device="cpu", dtype=torch.float32, role="kernel", method="hand")

def test_kernel_ok(measure):
    measure(lambda: None, group="ok", reference="torch_ref", **CPU)

def test_kernel_alone(measure):
    measure(lambda: None, group="alone", reference="torch_ref", **CPU)
''', test_references='''
import torch

def test_reference_ok(measure):
    measure(lambda: None, group="ok", method="torch_ref", reference="torch_ref",
            role="reference", kernel="k", device="cpu", dtype=torch.float32)
''')
    res = _run(project, "test_kernels.py", "test_references.py", "-n", "2", "--dist",
               "loadfile")
    res.assert_outcomes(passed=3)
    assert _named(res) == {"test_kernels.py::test_kernel_alone"}
    assert res.stdout.str().count("measured without their reference") == 1
    assert "nothing was timed here (--benchmark-disable or -n)" in res.stdout.str()


class _Reporter:
    def __init__(self):
        self.written = []

    def write_sep(self, *args, **kwargs):
        self.written.append(args)

    def write_line(self, *args, **kwargs):
        self.written.append(args)


def test_a_worker_says_nothing_of_its_share(pytestconfig, monkeypatch):
    """A pytest-xdist worker holds some of the session's measure calls: only the controller,
    with all of them, may say which kernels had no reference."""
    from handgrad import plugin

    entry = {"nodeid": "t::k", "group": "g", "method": "hand", "reference": "ref",
             "role": "kernel", "device": "cpu", "interleaved": False, "shape": {},
             "failed": False}

    class Config:
        def __init__(self, worker: bool):
            self.stash = pytest.Stash()
            self.stash[plugin._measured_entries] = [entry]
            if worker:
                self.workerinput = {"workercount": 2}

        def getoption(self, name, default=None):  # no option given: each its default
            return default

    controller, worker = _Reporter(), _Reporter()
    plugin.pytest_terminal_summary(controller, 0, Config(worker=False))
    plugin.pytest_terminal_summary(worker, 0, Config(worker=True))
    assert any("t::k" in str(w) for w in controller.written)  # the stand-in works
    assert worker.written == []


# --- the reference's device -------------------------------------------------------------------

# a CUDA stand-in for a user's project run in a subprocess of its own: --device and measure
# see a GPU, which verify's fake times (its events) and whose peak memory it counts
FAKE_CUDA = '''
import torch

from verify.fake_cuda_timing import FakeCuda

_fake = FakeCuda()
torch.cuda.is_available = lambda: True
torch.cuda.Event, torch.cuda.synchronize = _fake.Event, _fake.synchronize
# the allocator's counters too: a worker under -n records a peak (on torch 2.1, a CPU build's
# torch.cuda.reset_peak_memory_stats raises "Torch not compiled with CUDA enabled")
torch.cuda.reset_peak_memory_stats = _fake.reset_peak_memory_stats
torch.cuda.memory_allocated = _fake.memory_allocated
torch.cuda.max_memory_allocated = _fake.max_memory_allocated
'''

TWO_DEVICES = '''
import pytest
import torch

SAME = dict(kernel="k", dtype=torch.float32, reference="torch_ref")


def test_kernel(measure, device):  # on both devices, one shape
    measure(lambda: None, group="g", method="hand", role="kernel", device=device,
            shape={"n": 3}, **SAME)


def test_reference(measure):  # on the CPU only, at the kernel's shape
    measure(lambda: None, group="g", method="torch_ref", role="reference", device="cpu",
            shape={"n": 3}, **SAME)


def test_reference_cuda(measure):  # on the GPU too
    measure(lambda: None, group="g", method="torch_ref", role="reference", device="cuda",
            shape={"n": 3}, **SAME)


def test_kernel_one(measure, device):  # the group's one reference, of another shape
    measure(lambda: None, group="one", method="hand", role="kernel", device=device,
            shape={"n": 5}, **SAME)


def test_reference_one(measure):  # timed once, on the CPU
    measure(lambda: None, group="one", method="torch_ref", role="reference", device="cpu",
            shape={"n": 1}, **SAME)
'''


def _entry(nodeid, method, role, device, group="g", shape=None):
    return {"nodeid": nodeid, "group": group, "method": method, "reference": "ref",
            "role": role, "device": device, "interleaved": False,
            "shape": shape if shape is not None else {"n": "3"}, "failed": False}


def test_a_reference_timed_on_another_device_is_no_reference():
    """The rule keys by group, device and method: a CPU reference at the kernel's shape
    (or the group's one CPU reference) leaves a CUDA kernel without one (before: named
    none of them)."""
    from handgrad.plugin import without_reference

    kernels = [_entry("k[cpu]", "hand", "kernel", "cpu"),
               _entry("k[cuda]", "hand", "kernel", "cuda"),
               _entry("one[cpu]", "hand", "kernel", "cpu", "one", {"n": "5"}),
               _entry("one[cuda]", "hand", "kernel", "cuda", "one", {"n": "5"})]
    cpu_refs = [_entry("r", "ref", "reference", "cpu"),
                _entry("r1", "ref", "reference", "cpu", "one", {"n": "1"})]
    cuda_refs = [_entry("rc", "ref", "reference", "cuda"),
                 _entry("rc1", "ref", "reference", "cuda", "one", {"n": "1"})]
    assert [e["nodeid"] for e in without_reference(kernels + cpu_refs)] == [
        "k[cuda]", "one[cuda]"]
    assert [e["nodeid"] for e in without_reference(kernels + cuda_refs)] == [
        "k[cpu]", "one[cpu]"]
    assert without_reference(kernels + cpu_refs + cuda_refs) == []


def test_a_kernel_on_two_devices_with_its_reference_on_one_is_named(project):
    """A user's benchmark parametrized over --device cpu,cuda (a CUDA stand-in) whose
    reference is timed on the CPU only: the CUDA kernel is named, with where its reference
    was timed (before: the CPU reference at the same shape text hid it)."""
    project.makeconftest(FAKE_CUDA)
    project.makepyfile(test_devices=TWO_DEVICES)
    res = _run(project, "test_devices.py", "--benchmark-disable", "--device", "cpu,cuda",
               "-k", "not reference_cuda")
    res.assert_outcomes(passed=6)
    assert _named(res) == {"test_devices.py::test_kernel[cuda]",
                           "test_devices.py::test_kernel_one[cuda]"}
    res.stdout.fnmatch_lines([
        "  test_devices.py::test_kernel[[]cuda[]]: group 'g', method 'hand', device 'cuda' "
        "[[]n=3[]]: no test that passed timed its reference 'torch_ref' in the group on "
        "'cuda' (timed only on 'cpu': the reports pair a kernel with a reference on its "
        "own device only, so this one gets no ratio and no gate)",
        "*on each device its kernels run on*give each device its own group*",
    ])
    # the reference timed on the GPU too: the kernel of its shape has it; the group "one"'s
    # CUDA kernel still has none (its group's one reference is the CPU's)
    res = _run(project, "test_devices.py", "--benchmark-disable", "--device", "cpu,cuda")
    res.assert_outcomes(passed=7)
    assert _named(res) == {"test_devices.py::test_kernel_one[cuda]"}


def test_under_xdist_a_reference_on_another_device_is_no_reference(project):
    """-n: the CUDA kernel and the CPU reference on two workers; the controller keys what
    they send by device too."""
    project.makeconftest(FAKE_CUDA)
    project.makepyfile(test_kernels='''
import torch

SAME = dict(group="g", kernel="k", dtype=torch.float32, reference="torch_ref",
            method="hand", role="kernel", shape={"n": 3})

def test_kernel_cpu(measure):
    measure(lambda: None, device="cpu", **SAME)

def test_kernel_cuda(measure):
    measure(lambda: None, device="cuda", **SAME)
''', test_references='''
import torch

def test_reference_cpu(measure):
    measure(lambda: None, group="g", method="torch_ref", reference="torch_ref",
            role="reference", kernel="k", device="cpu", dtype=torch.float32, shape={"n": 3})
''')
    res = _run(project, "test_kernels.py", "test_references.py", "-n", "2", "--dist",
               "loadfile")
    res.assert_outcomes(passed=3)
    assert _named(res) == {"test_kernels.py::test_kernel_cuda"}
    assert res.stdout.str().count("measured without their reference") == 1
    assert "(timed only on 'cpu'" in res.stdout.str()


# --- --bench-slow: a target no benchmark of the session matched --------------------------

SLOWED = '''
import pytest
import torch

KW = dict(kernel="softplus", dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("method", ["mine", "torch_autograd"])
def test_softplus(measure, method):
    measure(lambda: None, group="g", method=method, reference="torch_autograd",
            role="kernel" if method == "mine" else "reference", **KW)


def test_failed_after_measuring(measure):  # slowed all the same: it was measured
    measure(lambda: None, group="f", method="failing", reference="failing",
            role="reference", **KW)
    assert False
'''


def test_a_bench_slow_target_no_benchmark_measured_is_named_at_the_end(project):
    """A misspelt KERNEL.METHOD slowed nothing while the run records it as slowed: a gate
    then looks as if it could not catch the regression. The session's end names it, with
    the closest kernel.method measured and what was measured; a warning (the plugin's
    session-end findings are), not an exit status of its own."""
    project.makepyfile(test_slowed=SLOWED)
    res = _run(project, "test_slowed.py", "--benchmark-disable",
               "--bench-slow=softplus.mien=2", "--bench-slow=softplus.mine=1.5",
               "--bench-slow=nothere.at_all=1.25")
    res.assert_outcomes(passed=2, failed=1)
    assert res.ret == 1  # its failed test's, as without --bench-slow
    res.stdout.fnmatch_lines([
        "*= handgrad: --bench-slow slowed nothing =*",
        "handgrad: 2 --bench-slow target(s) matched no benchmark measured in this session, "
        "so they slowed nothing: a gate given this run has no regression of theirs to catch",
        "  --bench-slow softplus.mien=2: no benchmark of kernel.method softplus.mien was "
        "measured (did you mean softplus.mine?)",
        "  --bench-slow nothere.at_all=1.25: no benchmark of kernel.method nothere.at_all "
        "was measured",
        "  measured (kernel.method): softplus.failing, softplus.mine, softplus.torch_autograd",
    ])
    assert "softplus.mine=1.5" not in res.stdout.str()  # matched: not named
    # every target matched (a failed test's benchmark too): nothing said
    res = _run(project, "test_slowed.py", "--benchmark-disable",
               "--bench-slow=softplus.mine=2", "--bench-slow=softplus.failing=2")
    assert res.ret == 1 and "slowed nothing" not in res.stdout.str()


def test_a_bench_slow_target_left_out_of_the_session_is_named_too(project):
    """Deselected by -k, it slowed nothing either; a session that measured nothing says
    so; an all-passing session keeps exit status 0."""
    project.makepyfile(test_slowed=SLOWED)
    res = _run(project, "test_slowed.py", "--benchmark-disable", "-k", "torch_autograd",
               "--bench-slow=softplus.mine=2")
    res.assert_outcomes(passed=1)
    assert res.ret == 0
    res.stdout.fnmatch_lines([
        "  --bench-slow softplus.mine=2: no benchmark of kernel.method softplus.mine was "
        "measured",
        "  measured (kernel.method): softplus.torch_autograd"])
    res = _run(project, "test_user.py", "--bench-slow=softplus.mine=2")
    assert res.ret == 0
    res.stdout.fnmatch_lines([
        "*--bench-slow softplus.mine=2: no benchmark of kernel.method softplus.mine*",
        "  measured: nothing (no test of the session called measure)"])


def test_under_xdist_a_bench_slow_target_is_judged_on_every_workers_calls(project):
    project.makepyfile(test_slowed=SLOWED)
    res = _run(project, "test_slowed.py", "-n", "2", "--bench-slow=softplus.mine=2",
               "--bench-slow=softplus.torch_autograd=2", "--bench-slow=softplus.mnie=2")
    res.assert_outcomes(passed=2, failed=1)
    out = res.stdout.str()
    assert out.count("matched no benchmark measured") == 1  # the controller's, once
    assert "softplus.mnie=2: no benchmark" in out and "did you mean softplus.mine?" in out
    assert "softplus.mine=2: no" not in out and "torch_autograd=2: no" not in out


def test_measure_given_a_tensor_for_its_callable_says_its_shape_not_its_values(project):
    """measure(x) (a result given for the call): the message says a Tensor of its shape
    and what to pass, not the tensor's values, screens of them; a second measure in a test
    is refused as the README says (a RuntimeError naming both groups and the fix)."""
    project.makepyfile(test_misuse='''
import torch

KW = dict(group="g", kernel="k", method="m", reference="m", role="reference",
          device="cpu", dtype=torch.float32)


def test_tensor(measure):
    x = torch.full((300, 200), 0.123456)
    measure(x @ x.T, **KW)


def test_tensor_reference(measure):
    x = torch.full((300, 200), 0.123456)
    measure(lambda: x, reference_fn=x, **KW)


def test_twice(measure):
    measure(lambda: None, **KW)
    measure(lambda: None, **dict(KW, group="h"))
''')
    res = _run(project, "test_misuse.py", "--benchmark-disable")
    res.assert_outcomes(failed=3)
    out = res.stdout.str()
    assert ("TypeError: fn: expected a callable of no arguments, got a Tensor of shape "
            "(300, 300) (torch.float32 on cpu): a result, not the call that makes it; pass "
            "the call, e.g. lambda: kernel(x)") in out
    assert ("TypeError: reference_fn: expected a callable of no arguments or None, got a "
            "Tensor of shape (300, 200) (torch.float32 on cpu)") in out
    said = [ln for ln in res.stdout.lines if ln.startswith("E ") and "Error:" in ln]
    assert len(said) == 3 and not any("0.1235" in ln for ln in said)  # no values (pytest's
    # own traceback may print the frames' arguments: not the message)
    assert ("RuntimeError: measure: called a second time in this test (group 'h'; the "
            "first: group 'g'): one measure a test") in out
    assert "Parametrize the test (@pytest.mark.parametrize) to time several callables" in out
