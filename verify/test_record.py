"""The one benchmark record and the one verify record (reports.record), and the two numbers
every report shows: ratio to reference and achieved GFLOP/s."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handgrad.benchmark import bench_record, check_measure, measure_with
from handgrad.reports.record import (
    SCHEMA,
    BenchRecord,
    RecordError,
    SweepRecord,
    VerifyRecord,
    achieved_gflops,
    ratio_to_reference,
    schema_of,
)

GOOD = {"kernel": "backprop", "method": "manual", "reference": "torch_autograd",
        "role": "kernel", "flops": 1000, "bytes": 64, "device": "cpu",
        "dtype": "float32", "threads": 2, "shape": {"L": 3, "K": 64}}
# the same benchmark as schemas 1 to 3 wrote it: owner, and the shape in fields of its own
LEGACY = {**{k: v for k, v in GOOD.items() if k not in ("role", "shape")},
          "owner": "handgrad", "L": 3, "K": 64}


def test_a_record_round_trips_through_extra_info():
    rec = BenchRecord(**GOOD, reference_data=[1e-3, 2e-3])
    info = rec.to_extra_info()
    assert info["reference_data"] == [1e-3, 2e-3] and "model" not in info  # None left out
    assert info["shape"] == {"L": 3, "K": 64}
    assert BenchRecord.from_extra_info(info) == rec
    assert rec.shape == {"L": 3, "K": 64} and rec.gated


def test_any_family_method_and_shape_parameter_is_a_record():
    """Schema 4 is open: a user's family, method names and shape parameters."""
    rec = BenchRecord(**{**GOOD, "kernel": "softplus_layer", "method": "my_backward",
                         "reference": "torch_autograd", "shape": {"batch": 8, "width": 16}})
    assert BenchRecord.from_extra_info(rec.to_extra_info()) == rec and rec.gated
    ref = BenchRecord(**{**GOOD, "method": "torch_autograd", "reference": "torch_autograd",
                         "role": "reference", "shape": {}})
    assert not ref.gated and ref.to_extra_info()["shape"] == {}


@pytest.mark.parametrize("field, value, says", [
    ("role", "pytorch", r"role: expected one of \['kernel', 'reference'\], got 'pytorch'"),
    ("role", "reference", "role: manual is timed against torch_autograd, so it is a kernel"),
    ("kernel", "", "kernel: expected a non-empty string"),
    ("shape", [3, 64], "shape: expected a mapping of parameter names to sizes"),
    ("shape", {"L": 0}, r"shape\['L'\]: expected an integer >= 1"),
    ("shape", {"L": 2.5}, r"shape\['L'\]: expected an integer >= 1"),
    ("shape", {"my width": 3}, "shape: expected parameter names that are identifiers"),
    ("shape", {"median": 3}, "parameter name 'median' is taken"),
    ("shape", {"device": 3}, "parameter name 'device' is taken"),
    ("method", "", "method: expected a non-empty string"),
    ("flops", -1, "flops: expected an integer >= 0"),
    ("flops", 1.5, "flops: expected an integer"),
    ("bytes", True, "bytes: expected an integer"),
    ("threads", 0, "threads: expected an integer >= 1"),
    ("gate_noise", -0.5, "gate_noise: expected a finite number > 0"),
    ("slowed_by", float("nan"), "slowed_by: expected a finite number > 0"),
    ("reference_data", [], "reference_data: expected a non-empty list"),
    ("reference_data", [1e-3, 0.0], r"reference_data\[1\]: expected a finite number > 0"),
])
def test_a_malformed_field_is_refused_by_name(field, value, says):
    with pytest.raises(RecordError, match=says):
        BenchRecord(**{**GOOD, field: value})


def test_a_reference_has_no_paired_rounds_and_reading_refuses_unknown_or_missing_fields():
    with pytest.raises(RecordError, match="its own reference"):
        BenchRecord(**{**GOOD, "reference": "manual"}, reference_data=[1e-3])
    with pytest.raises(RecordError, match=r"unknown field\(s\) \['colour'\]"):
        BenchRecord.from_extra_info({**GOOD, "colour": "red"})
    with pytest.raises(RecordError, match=r"missing field\(s\) \['role'\]"):
        BenchRecord.from_extra_info({k: v for k, v in GOOD.items() if k != "role"})
    with pytest.raises(RecordError, match="expected an object, got NoneType"):
        BenchRecord.from_extra_info(None)


def test_legacy_records_get_their_role_from_the_table_of_that_suite():
    legacy = {k: v for k, v in LEGACY.items() if k not in ("owner", "bytes")}
    legacy.update(grid="quick", interleaved=True)  # keys of schema 1, no longer read
    rec = BenchRecord.from_extra_info(legacy, schema=1)
    assert rec.role == "kernel" and rec.bytes == 0 and rec.shape == {"L": 3, "K": 64}
    torch_ref = BenchRecord.from_extra_info(
        {**legacy, "method": "torch_autograd"}, schema=1)
    assert torch_ref.role == "reference" and not torch_ref.gated
    with pytest.raises(RecordError, match="never timed"):
        BenchRecord.from_extra_info({**legacy, "method": "manual_v2"}, schema=1)
    # today's files must carry the role
    with pytest.raises(RecordError, match=r"missing field\(s\) \['role'\]"):
        BenchRecord.from_extra_info({k: v for k, v in GOOD.items() if k != "role"},
                                    schema=SCHEMA)


@pytest.mark.parametrize("schema", [2, 3])
def test_schema_2_and_3_records_read_as_today_s(schema):
    """owner handgrad/torch as role kernel/reference, L..k fields as the shape."""
    rec = BenchRecord.from_extra_info(LEGACY, schema=schema)
    assert rec == BenchRecord(**GOOD)
    ref = BenchRecord.from_extra_info({**LEGACY, "method": "torch_autograd", "owner": "torch",
                                       "L": None}, schema=schema)
    assert ref.role == "reference" and ref.shape == {"K": 64}
    with pytest.raises(RecordError, match=r"owner: expected one of \['handgrad', 'torch'\]"):
        BenchRecord.from_extra_info({**LEGACY, "owner": "me"}, schema=schema)
    with pytest.raises(RecordError, match="schema-4 fields"):
        BenchRecord.from_extra_info({**LEGACY, "shape": {"L": 3}}, schema=schema)
    with pytest.raises(RecordError, match=r"unknown field\(s\) \['L'\]"):
        BenchRecord.from_extra_info({**GOOD, "L": 3}, schema=SCHEMA)


def test_schema_of_reads_machine_info():
    assert schema_of({}) == 1 and schema_of({"handgrad_schema": SCHEMA}) == SCHEMA
    assert schema_of({"handgrad_schema": 2}) == 2  # files before instruction counts
    for bad in (SCHEMA + 1, 0, "2", True):
        with pytest.raises(RecordError, match="handgrad_schema"):
            schema_of({"handgrad_schema": bad})


def test_bench_record_is_what_measure_writes():
    rec = bench_record({**{k: v for k, v in GOOD.items() if k != "threads"},
                        "dtype": "torch.float32"}, {"backprop.manual": 1.25})
    assert rec.dtype == "float32" and rec.threads >= 1 and rec.slowed_by == 1.25
    assert bench_record({**GOOD}, {"jacobian.manual_forward": 2.0}).slowed_by is None
    with pytest.raises(TypeError, match="role"):
        bench_record({k: v for k, v in GOOD.items() if k != "role"}, {})
    with pytest.raises(TypeError, match="colour"):
        bench_record({**GOOD, "colour": "red"}, {})


# measure's keywords as a benchmark gives them (GOOD's record fields, torch's dtype)
MEASURE = {**{k: v for k, v in GOOD.items() if k != "threads"}, "dtype": torch.float32,
           "group": "g"}


class _Untouched:
    """A benchmark fixture or config that fails the test if measure reaches it."""

    def __getattr__(self, name):
        raise AssertionError(f"measure went past its checks (read {name})")


@pytest.mark.parametrize("field, value, error, says", [
    ("fn", 3, TypeError, r"^fn: expected a callable of no arguments, got int 3$"),
    ("reference_fn", 3, TypeError,
     r"^reference_fn: expected a callable of no arguments or None, got int 3$"),
    ("group", None, TypeError, r"^group: expected a non-empty string .*got NoneType None$"),
    ("group", "", ValueError, r"^group: expected a non-empty string .*got ''$"),
    ("group", 5, TypeError, r"^group: expected a non-empty string .*got int 5$"),
    ("warmup", 0, ValueError, r"^warmup: expected an integer >= 1 \(warm-up calls\), got 0$"),
    ("warmup", -1, ValueError, r"^warmup: expected an integer >= 1 .*got -1$"),
    ("warmup", 2.0, TypeError, r"^warmup: expected an integer >= 1 .*got float 2.0$"),
    ("warmup", True, TypeError, r"^warmup: expected an integer >= 1 .*got bool True$"),
    ("dtype", np.float32, TypeError,
     r"^dtype: expected a floating torch.dtype \(e.g. torch.float32\), got "
     r"<class 'numpy.float32'>$"),
    ("dtype", torch.int64, TypeError, r"^dtype: expected a floating torch.dtype .*torch.int64$"),
    ("dtype", "float32", TypeError, r"^dtype: expected a floating torch.dtype .*got 'float32'$"),
    ("dtype", None, TypeError, r"^dtype: expected a floating torch.dtype .*got None$"),
    ("device", "gpu", ValueError,
     r"^device: expected a device string such as 'cpu', 'cuda' or 'cuda:0', got 'gpu'$"),
    ("device", None, TypeError,
     r"^device: expected a device string such as 'cpu' or 'cuda', got NoneType None$"),
])
def test_measure_refuses_a_bad_argument_by_name_before_timing(field, value, error, says):
    kw = {"fn": lambda: None, "warmup": 3, **MEASURE, field: value}
    with pytest.raises(error, match=says):
        measure_with(_Untouched(), _Untouched(), **kw)


def test_measure_accepts_what_the_benchmarks_give():
    for kw in ({"device": "cpu"}, {"warmup": 1, "dtype": torch.bfloat16},
               {"device": "meta", "dtype": torch.float64, "group": "a group"}):
        args = {**MEASURE, **kw}
        assert check_measure(lambda: None, None, args.pop("group"), args.pop("warmup", 3),
                             args) is None


def test_measure_on_an_absent_gpu_skips_saying_so(monkeypatch):
    """As --device does for an absent device: skipped with the reason, never failed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(pytest.skip.Exception,
                           match=rf"^device '{device}' requested but not present"):
            measure_with(_Untouched(), _Untouched(), lambda: None,
                         **{**MEASURE, "device": device})


def test_ratio_to_reference_pairs_rounds_when_it_can():
    data, ref = [2.0, 4.0, 9.0], [1.0, 4.0, 3.0]  # round ratios 2, 1, 3: median 2
    assert ratio_to_reference(data, ref) == (2.0, "paired")
    # not interleaved: median of data (4) over median of the reference's rounds (2)
    assert ratio_to_reference(data, None, [1.0, 2.0, 8.0]) == (2.0, "medians")
    ratio, kind = ratio_to_reference(data)
    assert math.isnan(ratio) and kind == ""
    with pytest.raises(RecordError, match="one time per round"):
        ratio_to_reference(data, [1.0, 2.0])


def test_achieved_gflops():
    assert achieved_gflops(2e9, 0.5) == pytest.approx(4.0)
    out = achieved_gflops([2e9, 0, 1e9], [1.0, 1.0, 0.0])
    assert out[0] == pytest.approx(2.0) and np.isnan(out[1]) and np.isnan(out[2])


VGOOD = {"kernel": "backprop", "reference": "torch_autograd", "what": "dW1", "dtype": "float64",
         "device": "cpu", "numel": 4, "mismatched": 0, "max_abs_err": 0.0,
         "max_rel_err": 0.0, "rtol": 1e-9, "atol": 1e-11, "worst_ratio": 0.0,
         "passed": True, "test": "t"}


@pytest.mark.parametrize("field, value, says", [
    ("passed", False, "contradicts mismatched"),
    ("passed", 1, "passed: expected true or false"),
    ("worst_ratio", float("nan"), "worst_ratio: expected a number >= 0"),
    ("numel", -1, "numel: expected an integer >= 0"),
    ("kernel", "", "kernel: expected a non-empty string"),
])
def test_verify_record_refuses_what_the_headroom_table_could_not_use(field, value, says):
    with pytest.raises(RecordError, match=says):
        VerifyRecord.from_dict({**VGOOD, field: value})
    assert VerifyRecord.from_dict(VGOOD).as_dict() == VGOOD
    assert VerifyRecord(**{**VGOOD, "worst_ratio": float("inf"), "passed": False,
                           "mismatched": 1}).worst_ratio == float("inf")


@pytest.mark.parametrize("field, value, says", [
    ("timer", "wallclock", r"timer: expected one of \['perf_counter', 'cuda_event', 'callgrind'\]"),
    ("cache", "lukewarm", r"cache: expected one of \['warm', 'cold'\]"),
    ("peak_bytes", -1, "peak_bytes: expected an integer >= 0"),
    ("reference_peak_bytes", 1.5, "reference_peak_bytes: expected an integer"),
    ("compile_s", 0.0, "compile_s: expected a finite number > 0"),
    ("compile_mode", "", "compile_mode: expected a non-empty string"),
])
def test_measurement_fields_are_checked(field, value, says):
    with pytest.raises(RecordError, match=says):
        BenchRecord(**{**GOOD, field: value})


def test_measurement_fields_default_to_what_older_files_did():
    rec = BenchRecord.from_extra_info({**GOOD})
    assert (rec.timer, rec.cache, rec.peak_bytes, rec.compile_s) == (
        "perf_counter", "warm", None, None)
    cuda = BenchRecord(**{**GOOD, "device": "cuda", "timer": "cuda_event", "cache": "cold",
                          "peak_bytes": 3 << 20, "reference_peak_bytes": 2 << 20,
                          "compile_mode": "reduce-overhead", "compile_s": 12.5})
    assert BenchRecord.from_extra_info(cuda.to_extra_info()) == cuda


def test_memory_ratio():
    from handgrad.reports.record import memory_ratio

    assert memory_ratio(3 << 20, 2 << 20) == pytest.approx(1.5)
    assert math.isnan(memory_ratio(None, 2 << 20)) and math.isnan(memory_ratio(5, 0))
    out = memory_ratio([4, None, 0], [2, 2, 8])
    assert out[0] == 2 and np.isnan(out[1]) and out[2] == 0


SGOOD = {"kernel": "backprop", "reference": "finite_diff.step_sweep", "what": "dW1",
         "dtype": "float64", "device": "cpu", "eps": [0.1, 0.01, 0.001],
         "error": [1e-3, 1e-5, 1e-4], "order": 2.0, "predicted_eps": 5e-3, "best_eps": 0.01,
         "test": "t"}


@pytest.mark.parametrize("field, value, says", [
    ("eps", [0.1, 0.01], "eps: expected one positive step per error"),
    ("eps", [0.1, 0.0, 0.001], "eps: expected one positive step per error"),
    ("error", [1e-3, float("nan"), 1e-4], "error: expected a list of at least two finite"),
    ("error", [1e-3], "error: expected a list of at least two finite"),
    ("order", float("nan"), "order: expected a finite number or null"),
    ("predicted_eps", "small", "predicted_eps: expected a finite number or null"),
    ("best_eps", 0.5, "best_eps: expected one of eps"),
    ("kernel", "", "kernel: expected a non-empty string"),
])
def test_sweep_record_refuses_what_the_v_curve_could_not_draw(field, value, says):
    with pytest.raises(RecordError, match=says):
        SweepRecord.from_dict({**SGOOD, field: value})
    assert SweepRecord.from_dict(SGOOD).as_dict() == SGOOD
    assert SweepRecord.from_dict({**SGOOD, "order": None}).order is None
    with pytest.raises(RecordError, match=r"sweep: missing \['best_eps'\], unknown \['x'\]"):
        SweepRecord.from_dict({**{k: v for k, v in SGOOD.items() if k != "best_eps"}, "x": 1})
