"""The records handgrad writes and reads: one definition each, shared by the writers
(``bench/`` and the root ``conftest.py``) and the readers (``reports/``).

- ``BenchRecord``: what one benchmark stores in pytest-benchmark's ``extra_info``.
  ``bench``'s ``measure`` builds it (validated on writing) and ``reports.load`` rebuilds
  it from the JSON (validated on reading); ``reports`` never imports ``bench``.
- ``VerifyRecord``: one comparison of ``pytest verify``'s helper, as written by
  ``--verify-report`` and read by the headroom table.
- ``SweepRecord``: one step sweep (the central difference's V-curve) of a kernel, written
  by ``--verify-report`` beside the comparisons and drawn by the verify report.
- ``ratio_to_reference`` and ``achieved_gflops``: the one definition of each number that
  the tables, the figures and the gate show.

A benchmark file says which record layout it holds in ``machine_info["handgrad_schema"]``
(``SCHEMA``). Schema 4 is open to any project's kernels: any family name (``kernel``), any
method names, a ``role`` ("kernel": timed against a reference, gated; "reference": what it
is measured against) and the shape as a mapping of any parameter names to sizes. Files of
schemas 1 to 3 (handgrad's own suite: ``owner`` "handgrad"/"torch", the shape in the fixed
fields L, D, K, P, N, k) are read into it. Schema 1 (e.g. the H100 runs in
``../shared/gpu-h100/``) had no ``owner``; it is read through ``LEGACY_OWNERS``, the exact
methods that suite timed, and a method outside it is refused, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np

# 3: instruction counts (instructions, reference_instructions, timer callgrind)
# 4: open to any project: any kernel family, role instead of owner, shape as a mapping
SCHEMA = 4
SCHEMAS = (1, 2, 3, SCHEMA)  # what this version reads
SCHEMA_KEY = "handgrad_schema"  # in machine_info
ROLES = ("kernel", "reference")  # kernel: measured against a reference (gated)
# schemas 1 to 3: owner in place of role
LEGACY_ROLES = {"handgrad": "kernel", "torch": "reference"}
# how a call was timed (see handgrad/benchmark/timing.py); "callgrind": under valgrind,
# whose times are not wall clock: the run's measurement is its instruction counts
# (handgrad/benchmark/callgrind.py)
TIMERS = ("perf_counter", "cuda_event", "callgrind")
CACHES = ("warm", "cold")  # cold: the GPU's L2 was flushed before each timed call
# schemas 1 to 3: the only shape parameters a benchmark could have (their fields); in schema
# 4 the shape is a mapping of any names, these first in tables when present
SHAPES = ("L", "D", "K", "P", "N", "k")

# schema 1 (no owner field): every (kernel, method) that suite timed, and whose it is
LEGACY_OWNERS = {
    ("backprop", "manual"): "handgrad",
    ("backprop", "torch_autograd"): "torch",
    ("control", "matmul_512"): "torch",
    ("counting", "count_model"): "handgrad",
    ("counting", "flop_counter_mode_executed"): "torch",
    ("counting", "flop_counter_mode_meta"): "torch",
    ("jacobian", "manual_forward"): "handgrad",
    ("jacobian", "manual_reverse"): "handgrad",
    ("jacobian", "autograd_jacobian"): "torch",
    ("jacobian", "autograd_jacobian_forward_mode"): "torch",
    ("jacobian", "plain_forward"): "torch",
    ("jacobian", "torch_func_jacfwd"): "torch",
    ("jacobian", "torch_func_jacrev"): "torch",
    ("jacobian", "torch_func_vmap_jacfwd"): "torch",
    ("jacobian", "torch_func_vmap_jacrev"): "torch",
    ("least_squares", "gd_closed_form"): "handgrad",
    ("least_squares", "gd_loop"): "handgrad",
    ("least_squares", "momentum_form1"): "handgrad",
    ("least_squares", "momentum_form2"): "handgrad",
    ("least_squares", "gd_torch_lstsq"): "torch",
    ("least_squares", "gd_torch_optim_sgd"): "torch",
    ("least_squares", "torch_optim_sgd"): "torch",
}
# schema-1 keys that had no reader and are no longer written
LEGACY_UNREAD = ("grid", "interleaved", "predicted_mode", "params", "model_flops")


# what a shape parameter may not be named: the columns a report reads beside it (a row per
# benchmark holds the record's fields, the shape's parameters and these)
# written by handgrad's plugin into the extra_info of a benchmark whose test failed after it
# measured (pytest-benchmark writes the row all the same); not part of the record, a column
# of the loaded frame
TEST_FAILED = "test_failed"
RESERVED_COLUMNS = ("source", "machine", "run", "schema", "group", "name", "interleaved",
                    "fields_written", "median", "iqr", "rounds", "data", "shape",
                    "shape_keys", TEST_FAILED)


class RecordError(ValueError):
    """A record that does not follow this module's definition; the message names the
    field, what it held and what was expected."""


def _int(name: str, value, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise RecordError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _str(name: str, value, choices: Sequence[str] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise RecordError(f"{name}: expected a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise RecordError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            math.isfinite(value) and value > 0):
        raise RecordError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _shape(value) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise RecordError(f"shape: expected a mapping of parameter names to sizes, e.g. "
                          f"{{'N': 256, 'K': 64}}, got {type(value).__name__}")
    out = {}
    for name, size in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise RecordError(f"shape: expected parameter names that are identifiers, got "
                              f"{name!r}")
        if name in _RESERVED_SHAPE_NAMES:
            raise RecordError(f"shape: parameter name {name!r} is taken by a record field or "
                              f"report column; rename it (e.g. {name}_)")
        out[name] = _int(f"shape[{name!r}]", size, minimum=1)
    return out


def _times(name: str, value) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise RecordError(f"{name}: expected a non-empty list of times (seconds), got "
                          f"{type(value).__name__}")
    return tuple(_positive(f"{name}[{i}]", t) for i, t in enumerate(value))


@dataclass(frozen=True)
class BenchRecord:
    """One benchmark's ``extra_info``: what was timed, whose it is, against what, and the
    analytic work of one call."""

    kernel: str  # the family: any name, e.g. backprop, softplus_layer
    method: str  # what was timed, e.g. manual_forward, torch.func.jacfwd
    reference: str  # the method it is measured against; a reference names itself
    role: str  # "kernel" (measured against its reference: gated) or "reference" (reported)
    flops: int  # analytic FLOPs of one call (2 per multiply-add); 0 when not modelled
    bytes: int  # compulsory memory traffic of one call; 0 when not modelled
    device: str
    dtype: str
    threads: int  # torch CPU threads during the run
    # the problem's size: parameter name -> size, e.g. {"L": 3, "K": 30, "N": 1024}
    shape: Mapping[str, int] = field(default_factory=dict)
    model: str | None = None  # counting: the model counted
    model_forward: int | None = None  # jacobian: the op-count model's multiplies,
    model_reverse: int | None = None  # forward and reverse mode
    gate_noise: float | None = None  # this benchmark's own between-process noise (gate)
    slowed_by: float | None = None  # --bench-slow factor applied to this method
    # how the time was taken: perf_counter around a synchronised call (CPU, and every file
    # written before this field), or CUDA events around the call with no host sync inside
    timer: str = "perf_counter"
    cache: str = "warm"
    # peak bytes allocated during one call of the method, and of its reference (CUDA: the
    # caching allocator's count; CPU: torch.profiler's allocator events)
    peak_bytes: int | None = None
    reference_peak_bytes: int | None = None
    # compiled methods: torch.compile's mode, and the seconds the first call took to
    # compile (never part of the per-call time)
    compile_mode: str | None = None
    compile_s: float | None = None
    # interleaved runs: the reference's time (s) in each round, paired with stats.data
    reference_data: tuple[float, ...] | None = None
    # --bench-instructions: instructions (callgrind's Ir) per call of the method and of its
    # reference, the same inputs, one thread
    instructions: int | None = None
    reference_instructions: int | None = None

    def __post_init__(self) -> None:
        _str("kernel", self.kernel)
        _str("method", self.method)
        _str("reference", self.reference)
        _str("role", self.role, ROLES)
        _int("flops", self.flops)
        _int("bytes", self.bytes)
        _str("device", self.device)
        _str("dtype", self.dtype)
        _int("threads", self.threads, minimum=1)
        object.__setattr__(self, "shape", _shape(self.shape))
        if self.role == "reference" and self.method != self.reference:
            raise RecordError(f"role: {self.method} is timed against {self.reference}, so it "
                              "is a kernel; a reference names itself as its reference")
        if self.model is not None:
            _str("model", self.model)
        for name in ("model_forward", "model_reverse"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name))
        for name in ("gate_noise", "slowed_by"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _str("timer", self.timer, TIMERS)
        _str("cache", self.cache, CACHES)
        for name in ("peak_bytes", "reference_peak_bytes"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name))
        for name in ("instructions", "reference_instructions"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), minimum=1)
        if (self.instructions is None) != (self.timer != "callgrind"):
            raise RecordError(f"instructions: a run under callgrind (timer 'callgrind') "
                              f"records its instructions and only it does; got timer "
                              f"{self.timer!r} and instructions {self.instructions!r}")
        if self.reference_instructions is not None and self.method == self.reference:
            raise RecordError(f"reference_instructions: {self.method} is its own reference")
        if self.compile_mode is not None:
            _str("compile_mode", self.compile_mode)
        if self.compile_s is not None:
            _positive("compile_s", self.compile_s)
        if self.reference_data is not None:
            object.__setattr__(self, "reference_data",
                               _times("reference_data", self.reference_data))
            if self.method == self.reference:
                raise RecordError(f"reference_data: {self.method} is its own reference; "
                                  "only a method timed against another has paired rounds")

    @property
    def gated(self) -> bool:
        """The gate judges kernels measured against a reference."""
        return self.role == "kernel" and self.method != self.reference

    def to_extra_info(self) -> dict:
        """The JSON-ready ``extra_info``, without the fields left at None."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["shape"] = dict(self.shape)
        if self.reference_data is not None:
            out["reference_data"] = list(self.reference_data)
        return out

    @classmethod
    def from_extra_info(cls, info: Mapping, schema: int = SCHEMA) -> BenchRecord:
        """Rebuild and validate a record read from JSON; RecordError names what is wrong."""
        if not isinstance(info, Mapping):
            raise RecordError(f"extra_info: expected an object, got {type(info).__name__}")
        info = dict(info)
        if schema not in SCHEMAS:
            raise RecordError(f"{SCHEMA_KEY}: expected one of {list(SCHEMAS)}, got {schema!r}")
        if schema == 1:
            for key in LEGACY_UNREAD:
                info.pop(key, None)
            info.setdefault("bytes", 0)  # optional then: counting wrote none
            kernel, method = info.get("kernel"), info.get("method")
            if "owner" not in info:
                if (kernel, method) not in LEGACY_OWNERS:
                    raise RecordError(
                        f"owner: a schema-1 file (written before the owner field) holds "
                        f"{kernel}.{method}, which that suite never timed; rerun the bench")
                info["owner"] = LEGACY_OWNERS[kernel, method]
        if schema < 4:
            info = _from_legacy(info)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(info) - known)
        if unknown:
            raise RecordError(f"extra_info: unknown field(s) {unknown}; expected only "
                              f"{sorted(known)}")
        missing = [f.name for f in fields(cls) if f.default is MISSING
                   and f.default_factory is MISSING and f.name not in info]
        if missing:
            raise RecordError(f"extra_info: missing field(s) {missing}")
        return cls(**info)


def _from_legacy(info: dict) -> dict:
    """A schema 1 to 3 ``extra_info`` (owner, shape fields L..k) as schema 4's fields."""
    if "shape" in info or "role" in info:
        raise RecordError("extra_info: shape and role are schema-4 fields, in a file marked "
                          f"as an older schema; mark it {SCHEMA_KEY}={SCHEMA}")
    owner = info.pop("owner", None)
    if owner not in LEGACY_ROLES:
        raise RecordError(f"owner: expected one of {list(LEGACY_ROLES)}, got {owner!r}")
    info["role"] = LEGACY_ROLES[owner]
    info["shape"] = {k: info.pop(k) for k in SHAPES if info.get(k) is not None}
    for k in SHAPES:
        info.pop(k, None)
    return info


# what ``_shape`` refuses as a parameter name: the record's fields and the report's columns
_RESERVED_SHAPE_NAMES = frozenset({f.name for f in fields(BenchRecord)} | set(RESERVED_COLUMNS))


def schema_of(machine_info) -> int:
    """The record layout of a benchmark file, from its machine_info (1 when unmarked)."""
    if not isinstance(machine_info, Mapping):
        raise RecordError(f"machine_info: expected an object, got {type(machine_info).__name__}")
    value = machine_info.get(SCHEMA_KEY, 1)
    if value not in SCHEMAS or isinstance(value, bool):
        raise RecordError(f"machine_info.{SCHEMA_KEY}: expected one of {list(SCHEMAS)}, got "
                          f"{value!r}; "
                          "written by a newer handgrad?")
    return int(value)


# ---------------------------------------------------------------------------- the numbers

# A torch reference runs the same code wherever it is timed: when two of its medians (its
# interleaved rounds against its own benchmark in one run, or one run against another)
# differ by more than this factor, the machine was disturbed while one of them ran.
# Undisturbed, they stay within 0.64x to 1.64x on every real run here (2-core CPU, H100 CPU
# and GPU); another process on the cores made such calls 10 to 35x slower.
DISTURBED = 2.0

RATIO_DEFINITION = (
    "`ratio_to_ref` is the method's time over its reference's, both from the same run: "
    "the median over rounds of kernel_i / reference_i when the two were timed interleaved "
    "(`ratio_kind` = paired), else the kernel's median over the reference's median "
    "(`ratio_kind` = medians). Below 1: faster than the reference."
)


def paired_ratios(data: Sequence[float], reference_data: Sequence[float]) -> np.ndarray:
    """kernel_i / reference_i for each interleaved round i."""
    a, b = np.asarray(data, dtype=float), np.asarray(reference_data, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise RecordError(f"reference_data: expected one time per round of stats.data "
                          f"({a.size}), got {b.size}")
    return a / b


def _present(rounds) -> bool:
    return isinstance(rounds, (list, tuple, np.ndarray))


def ratio_to_reference(data: Sequence[float], reference_data: Sequence[float] | None = None,
                       reference_rounds: Sequence[float] | None = None) -> tuple[float, str]:
    """(ratio, kind) from per-round times: the median of paired round ratios kernel_i /
    reference_i (kind "paired") when the reference was timed interleaved; else the median
    of ``data`` over the median of the reference's own rounds (kind "medians"); (NaN, "")
    when the reference was not timed. An absent sequence may be None or a missing pandas
    cell (NaN)."""
    if _present(reference_data):
        return float(np.median(paired_ratios(data, reference_data))), "paired"
    if not _present(reference_rounds) or not len(reference_rounds):
        return math.nan, ""
    return float(np.median(np.asarray(data, dtype=float))
                 / np.median(np.asarray(reference_rounds, dtype=float))), "medians"


def memory_ratio(peak_bytes, reference_peak_bytes):
    """Peak memory of one call over its reference's; NaN where either was not measured."""
    a = np.asarray(_nan_for_none(peak_bytes), dtype=float)
    b = np.asarray(_nan_for_none(reference_peak_bytes), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((a >= 0) & (b > 0), a / b, np.nan)
    return float(out) if out.ndim == 0 else out


def _nan_for_none(v):
    """None (a field not written) as NaN, element-wise."""
    if isinstance(v, (list, tuple, np.ndarray)) or hasattr(v, "to_numpy"):
        return [np.nan if x is None else x for x in list(v)]
    return np.nan if v is None else v


def achieved_gflops(flops, seconds):
    """Analytic FLOPs over time, in GFLOP/s; NaN where a call does no counted work."""
    flops = np.asarray(flops, dtype=float)
    seconds = np.asarray(seconds, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((flops > 0) & (seconds > 0), flops / seconds / 1e9, np.nan)
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------- verify records

VERIFY_KIND = "verify-report"


def _from_fields(cls, d: Mapping, what: str):
    """``cls(**d)`` for a record dataclass read from JSON: every field but ``test`` (which
    defaults) present, no unknown key; a RecordError that says which otherwise."""
    if not isinstance(d, Mapping):
        raise RecordError(f"{what}: expected an object, got {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in d and n != "test"]
    unknown = sorted(set(d) - set(names))
    if missing or unknown:
        raise RecordError(f"{what}: missing {missing}, unknown {unknown}")
    return cls(**d)


@dataclass(frozen=True)
class VerifyRecord:
    """One comparison made by ``handgrad.testing.compare.assert_close``."""

    kernel: str
    reference: str
    what: str
    dtype: str
    device: str
    numel: int
    mismatched: int
    max_abs_err: float
    max_rel_err: float
    rtol: float
    atol: float
    # largest |a - e| / (atol + rtol |e|): < 1 passes; 0.01 means 100x headroom
    worst_ratio: float
    passed: bool
    test: str = ""  # the pytest node that made the comparison

    def __post_init__(self) -> None:
        for name in ("kernel", "reference", "dtype", "device"):
            _str(name, getattr(self, name))
        for name in ("numel", "mismatched"):
            _int(name, getattr(self, name))
        for name in ("max_abs_err", "max_rel_err", "rtol", "atol", "worst_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise RecordError(f"{name}: expected a number >= 0 (inf allowed), got {v!r}")
        if not isinstance(self.passed, bool):
            raise RecordError(f"passed: expected true or false, got {self.passed!r}")
        if self.passed != (self.mismatched == 0):
            raise RecordError(f"passed: {self.passed} contradicts mismatched = "
                              f"{self.mismatched}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> VerifyRecord:
        return _from_fields(cls, d, "record")


@dataclass(frozen=True)
class SweepRecord:
    """One step sweep of a central difference against a kernel (``finite_diff.step_sweep``):
    the error at each step (the V-curve), the fitted order of its truncation branch and the
    predicted optimal step for the dtype. ``order`` and ``predicted_eps`` are None where the
    sweep could not fit them (JSON has no NaN)."""

    kernel: str
    reference: str
    what: str
    dtype: str
    device: str
    eps: tuple[float, ...]
    error: tuple[float, ...]
    order: float | None
    predicted_eps: float | None
    best_eps: float
    test: str = ""

    def __post_init__(self) -> None:
        for name in ("kernel", "reference", "dtype", "device"):
            _str(name, getattr(self, name))
        for name in ("eps", "error"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or len(v) < 2 or any(
                    isinstance(e, bool) or not isinstance(e, (int, float)) or not e >= 0
                    or not math.isfinite(e) for e in v):
                raise RecordError(f"{name}: expected a list of at least two finite numbers "
                                  f">= 0, got {v!r}")
            object.__setattr__(self, name, tuple(float(e) for e in v))
        if len(self.eps) != len(self.error) or min(self.eps) <= 0:
            raise RecordError(f"eps: expected one positive step per error ({len(self.error)}), "
                              f"got {list(self.eps)}")
        for name in ("order", "predicted_eps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v)):
                raise RecordError(f"{name}: expected a finite number or null, got {v!r}")
        if self.best_eps not in self.eps:
            raise RecordError(f"best_eps: expected one of eps, got {self.best_eps!r}")

    def as_dict(self) -> dict:
        d = asdict(self)
        return {**d, "eps": list(self.eps), "error": list(self.error)}

    @classmethod
    def from_dict(cls, d: Mapping) -> SweepRecord:
        return _from_fields(cls, d, "sweep")


def verify_payload(records: Sequence[VerifyRecord], sweeps: Sequence[SweepRecord] = (),
                   **about) -> dict:
    """The JSON document ``pytest verify --verify-report PATH`` writes."""
    return {"handgrad": VERIFY_KIND, **about, "records": [r.as_dict() for r in records],
            "sweeps": [s.as_dict() for s in sweeps]}
