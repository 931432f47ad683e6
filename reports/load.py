"""Load one or more pytest-benchmark JSON files (plain, or gzip-compressed: by the
``.gz`` suffix or gzip's magic bytes) into one pandas DataFrame, a row a benchmark, each
row's ``extra_info`` validated as a ``reports.record.BenchRecord``.

A file is one **run**: its rows carry a ``run`` label, the machine and the file's name
("vm (NVIDIA H100 80GB HBM3) · bench_default_cuda.json.gz"), unique per input file, so
that two runs of one machine are never mixed. A file given twice, or two files holding
the same run, are refused (ReportInputError): the report would list every row twice."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import pandas as pd

from handgrad.reports.record import (
    SHAPES,
    TEST_FAILED,
    BenchRecord,
    RecordError,
    paired_ratios,
    schema_of,
)

RECORD_COLUMNS = tuple(f.name for f in fields(BenchRecord))
# what the reports read of pytest-benchmark's own stats (seconds; data: one time a round)
STATS = ("median", "iqr", "rounds", "data")

# a benchmark file without handgrad's records: plain pytest-benchmark output of a project
# that times with the ``benchmark`` fixture, not handgrad's ``measure``
NO_RECORDS = ("no handgrad benchmark records (no extra_info kernel/method/reference): time "
              "each kernel with the measure fixture of handgrad's pytest plugin, not "
              "pytest-benchmark's benchmark alone, and write the file with pytest "
              "--benchmark-json PATH (handgrad's own suite: pytest bench --benchmark-json "
              "PATH)")


class ReportInputError(ValueError):
    """Input the reports cannot use (a file that is missing, not JSON, not handgrad's
    pytest-benchmark output; an option out of range; an unwritable output path)."""


def machine_label(machine_info: dict) -> str:
    """Short name of the machine a file came from: host, and the GPU when there is one."""
    label = str(machine_info.get("node") or "unknown-host")
    if machine_info.get("gpu"):
        label += f" ({machine_info['gpu']})"
    return label


GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip (``.gz`` suffix or magic bytes)."""
    raw = path.read_bytes()
    if path.suffix == ".gz" or raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ReportInputError(f"{path}: not valid gzip ({exc})") from None
    return raw


def read_json_any(path: str | Path) -> object:
    """The parsed JSON of ``path`` (gzip-compressed or not); ReportInputError when it is
    missing, a folder, not gzip though named .gz, or not JSON."""
    path = Path(path)
    if path.is_dir():
        raise ReportInputError(f"{path}: is a folder; expected a JSON file")
    if not path.is_file():
        raise ReportInputError(f"{path}: no such file")
    try:
        return json.loads(_read_bytes(path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot be read ({exc.strerror})") from None


def read_json(path: str | Path) -> dict:
    data = read_json_any(path)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportInputError(f"{path}: not pytest-benchmark output (no 'benchmarks' list)")
    return data


def _stats(path, name: str, stats) -> dict:
    if not isinstance(stats, dict):
        raise ReportInputError(f"{path}: benchmark {name!r} has no stats")
    missing = [k for k in STATS if k not in stats]
    if missing:
        raise ReportInputError(f"{path}: benchmark {name!r}: stats lack {missing} "
                               "(write the file with pytest --benchmark-json)")
    for key in ("median", "iqr"):
        v = stats[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ReportInputError(f"{path}: benchmark {name!r}: stats.{key}: expected a "
                                   f"time >= 0, got {v!r}")
    data = stats["data"]
    if not isinstance(data, list) or not data or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in data):
        raise ReportInputError(f"{path}: benchmark {name!r}: stats.data: expected the "
                               "per-round times (positive numbers)")
    return {k: stats[k] for k in STATS}


def run_labels(paths: Sequence[str | Path], machines: Sequence[str]) -> list[str]:
    """"machine · file" per input, unique: the file's name, or as many of its last folders
    as it takes to tell two files of the same name apart."""
    parts = [Path(p).resolve().parts for p in paths]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(q[-depth:]) for q in parts]
        if len(set(names)) == len(names):
            break
    return [f"{m} · {n}" for m, n in zip(machines, names)]


def _fingerprint(data: dict) -> str:
    """Identical for two files that hold the same run (a copy, or x.json and x.json.gz)."""
    text = json.dumps([data.get("datetime"), data["benchmarks"]], sort_keys=True,
                      default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def check_given_once(paths: Sequence[str | Path], why: str) -> None:
    """ReportInputError naming the first file given twice (the same file by two names
    too), and ``why`` that matters."""
    seen: dict[Path, str | Path] = {}
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            raise ReportInputError(f"{path}: given twice (as {seen[key]}); {why}")
        seen[key] = path


def load_benchmarks(paths: Sequence[str | Path], failed_tests: bool = False) -> pd.DataFrame:
    """A row per benchmark per file: source, machine, run ("machine · file", unique per
    file), schema (the file's record layout), group, name, every BenchRecord field (the
    shape as text, "L=3 K=30"), a column per shape parameter (``shape_columns``: missing
    where a benchmark lacks it) and ``shape_keys`` (the parameters a row has),
    ``fields_written`` (the extra_info keys the file holds: a field read with its default
    was not measured), ``interleaved`` (it has paired reference rounds), ``test_failed``
    (its test failed after it measured: ``extra_info["test_failed"]``, written by
    handgrad's plugin), and median/iqr (seconds), rounds, the per-round data (list,
    seconds).

    The benchmarks of failed tests are left out unless ``failed_tests`` (then kept, with
    ``test_failed`` True): a failed test's timing is not a measurement of a right kernel,
    and no reader should take it for one without asking. A file holding nothing else is
    then unusable (ReportInputError).

    ReportInputError names the file, the benchmark and the field when a file is not
    handgrad's benchmark output or a record breaks its definition, and the file when it is
    given twice or holds the same run as another input."""
    if not paths:
        raise ReportInputError("no benchmark files given")
    check_given_once(paths, "each run once, or the report lists every benchmark twice")
    rows, machines, fingerprints = [], [], {}
    for path in paths:
        data = read_json(path)
        machine_info = data.get("machine_info") or {}
        try:
            schema = schema_of(machine_info)
        except RecordError as exc:
            raise ReportInputError(f"{path}: {exc}") from None
        machine = machine_label(machine_info)
        machines.append(machine)
        if not data["benchmarks"]:
            raise ReportInputError(f"{path}: no benchmarks in the file")
        if not any(isinstance(b, dict) and isinstance(
                b.get("extra_info"), dict) and "kernel" in b["extra_info"]
                for b in data["benchmarks"]):
            raise ReportInputError(f"{path}: {NO_RECORDS}")
        fp = _fingerprint(data)
        if fp in fingerprints:
            raise ReportInputError(f"{path}: holds the same run as {fingerprints[fp]} "
                                   "(identical benchmarks); give it once")
        fingerprints[fp] = path
        failed = 0
        for b in data["benchmarks"]:
            if not isinstance(b, dict) or not isinstance(b.get("name"), str):
                raise ReportInputError(f"{path}: a benchmark entry without a name")
            name = b["name"]
            info, test_failed = _test_outcome(path, name, b.get("extra_info"))
            try:
                record = BenchRecord.from_extra_info(info, schema)
            except RecordError as exc:
                raise ReportInputError(f"{path}: benchmark {name!r}: {exc}") from None
            failed += test_failed
            if test_failed and not failed_tests:
                continue
            stats = _stats(path, name, b.get("stats"))
            if record.reference_data is not None:
                try:
                    paired_ratios(stats["data"], record.reference_data)
                except RecordError as exc:
                    raise ReportInputError(f"{path}: benchmark {name!r}: {exc}") from None
            row = {"source": str(path), "machine": machine, "schema": schema,
                   "group": b.get("group") or name, "name": name}
            row.update((f, getattr(record, f)) for f in RECORD_COLUMNS)
            row.update(record.shape)
            # the shape as hashable cells (a dict cell breaks pandas' grouping)
            row["shape"] = shape_text(record.shape)
            row["shape_keys"] = tuple(record.shape)
            row["reference_data"] = (None if record.reference_data is None
                                     else list(record.reference_data))
            row["interleaved"] = record.reference_data is not None
            row["fields_written"] = frozenset(info)
            row[TEST_FAILED] = test_failed
            row.update(stats)
            rows.append(row)
        if failed == len(data["benchmarks"]) and not failed_tests:
            raise ReportInputError(f"{path}: every benchmark in the file ({failed}) is of a "
                                   "test that failed after it measured (extra_info "
                                   f"{TEST_FAILED}): no timing of a passing test to read")
    df = pd.DataFrame(rows)
    for key in SHAPES:  # handgrad's own parameters: a column each, also when absent
        if key not in df.columns:
            df[key] = float("nan")
    labels = dict(zip(map(str, paths), run_labels(paths, machines)))
    df.insert(2, "run", df["source"].map(labels))
    return df


def gated(df: pd.DataFrame) -> pd.Series:
    """Which rows the gates judge: a kernel (role ``kernel``) measured against another
    method. One definition for the gates, the gate over runs and the history."""
    return (df["role"] == "kernel") & (df["method"] != df["reference"])


def self_referenced(df: pd.DataFrame) -> pd.Series:
    """The kernels (role ``kernel``) that name themselves as their reference: nothing to
    time them against, so no gate judges them (``gated``), and the gates say so
    (``self_referenced_line``) instead of leaving them out unsaid."""
    return (df["role"] == "kernel") & (df["method"] == df["reference"])


def self_referenced_line(name: str, what: str = "not gated") -> str:
    """How a gate lists a kernel of ``self_referenced``."""
    return (f"{name}: a kernel (role kernel) whose reference is itself: no reference to time "
            f"it against, {what} (name the method it is measured against as its reference, "
            "and time that too: measure(..., reference=..., reference_fn=...))")


# what tells two benchmarks of one run apart: the group, the method and the shape (its text,
# ``shape_text``): a parametrised test may time several shapes under one group
BENCHMARK_KEY = ["group", "method", "shape"]
# the gates' key (``benchmark_names(..., by_device=True)`` sets ``bench_device``): the device
# too where one run times a group, method and shape on several devices (a user's measure
# over the device fixture under one group), "" elsewhere, so that a benchmark whose device
# changed between runs is still paired with itself, and said to be another measurement
DEVICE_KEY = [*BENCHMARK_KEY, "bench_device"]


def check_distinct_benchmarks(df: pd.DataFrame, by_device: bool = False) -> None:
    """ReportInputError naming two benchmarks of one run (``source``) that have the same
    group, method and shape (``by_device``: and device): a gate could not tell which of them
    to compare with which. Without ``by_device`` (the history's series have no device in
    their key) one timed on two devices is refused too."""
    key = [*BENCHMARK_KEY, "device"] if by_device else BENCHMARK_KEY
    dup = df[df.duplicated(["source", *key], keep=False)]
    if dup.empty:
        return
    first = dup.iloc[0]
    same = dup[(dup[["source", *key]] == first[["source", *key]]).all(axis=1)]
    names = list(dict.fromkeys(same["name"]))
    which = (f"{names[0]!r} and {names[1]!r}" if len(names) > 1
             else f"{names[0]!r} ({len(same)} times)")
    devices = sorted(set(same["device"]))
    dtypes = list(dict.fromkeys(same["dtype"])) if "dtype" in same else []
    raise ReportInputError(
        f"{first['source']}: benchmarks {which} have the same group {first['group']!r}, "
        f"method {first['method']!r} and shape ({first['shape'] or 'none'})"
        + (f" on {devices[0]!r}" if by_device else "") + ": no gate can "
        "tell them apart; give each its own group, or a shape that differs "
        "(measure(..., shape={...}))" + (
            f" (timed on {' and '.join(map(repr, devices))}: this report keys its series "
            "by group, method and shape only)" if len(devices) > 1 else "") + (
            f" (timed in {' and '.join(map(str, dtypes))}: a benchmark's dtype is not part "
            "of its name; give each dtype its own group, group=f'... {dtype}')"
            if len(dtypes) > 1 else ""))


def split_by_device(*frames: pd.DataFrame) -> set[tuple[str, str, str]]:
    """The (group, method, shape) that some one run (``source``) of ``frames`` timed on
    several devices: there the device is part of a benchmark's identity (``DEVICE_KEY``)."""
    rows = pd.concat([f[["source", *BENCHMARK_KEY, "device"]] for f in frames])
    n = rows.drop_duplicates().groupby(["source", *BENCHMARK_KEY]).size()
    return {k[1:] for k in n[n > 1].index}


def _full_name(group: str, method: str, shape: str) -> str:
    """A benchmark's name with its shape, "[no shape]" for none: "group [rows=64] :: method"."""
    return f"{group} [{shape or 'no shape'}] :: {method}"


def benchmark_names(*frames: pd.DataFrame, by_device: bool = False) -> dict[tuple, str]:
    """The name a report gives each benchmark (``BENCHMARK_KEY``) of ``frames`` (the runs
    compared, together): "group :: method", with the shape, "group [rows=64] :: method",
    where that (group, method) has several shapes in them. Also sets each frame's
    ``benchmark`` column (in place).

    ``by_device`` (the gates): keyed by ``DEVICE_KEY``, each frame's ``bench_device`` set
    (in place): where a run timed a (group, method, shape) on several devices
    (``split_by_device``), each device's is its own benchmark, named with its device,
    "group :: method@cuda"; elsewhere ``bench_device`` is "" and the name as without.

    Two benchmarks one name would give (group "b [x=1]" of no shape beside group "b" of
    shapes x=1 and x=2: both "b [x=1] :: m") are each named with their shape, "[no shape]"
    included ("b [x=1] [no shape] :: m"); where even that leaves two one name (a group or
    shape text written to read as another's), ReportInputError names both keys."""
    if by_device:
        split = split_by_device(*frames)
        for f in frames:
            f["bench_device"] = [d if k in split else "" for k, d in zip(
                zip(f["group"], f["method"], f["shape"]), f["device"])]
    key = DEVICE_KEY if by_device else BENCHMARK_KEY
    keys = pd.concat([f[key] for f in frames]).drop_duplicates()
    several = keys.drop_duplicates(BENCHMARK_KEY).groupby(["group", "method"]).size()
    several = set(several[several > 1].index)

    def on(k) -> str:  # the device a name carries: where it tells benchmarks apart
        return f"@{k[3]}" if len(k) > 3 and k[3] else ""

    names = {k: (_full_name(*k[:3]) if k[:2] in several else f"{k[0]} :: {k[1]}") + on(k)
             for k in keys.itertuples(index=False, name=None)}
    while True:  # each key is given its full name at most once: this ends
        by_name: dict[str, list[tuple[str, str, str]]] = {}
        for k, n in names.items():
            by_name.setdefault(n, []).append(k)
        shared = [ks for ks in by_name.values() if len(ks) > 1]
        if not shared:
            break
        renamed = False
        for ks in shared:
            for k in ks:
                if names[k] != _full_name(*k[:3]) + on(k):
                    names[k], renamed = _full_name(*k[:3]) + on(k), True
        if not renamed:
            a, b = (f"group {k[0]!r}, method {k[1]!r}, "
                    + (f"shape {k[2]!r}" if k[2] else "no shape") for k in shared[0][:2])
            raise ReportInputError(
                f"two benchmarks have one name, {names[shared[0][0]]!r} ({a}; {b}): no "
                "report could tell them apart; rename one group (its brackets read as a "
                "shape)")
    for f in frames:
        f["benchmark"] = [names[k] for k in zip(*(f[c] for c in key))]
    return names


def find_row(df: pd.DataFrame, group: str, method: str, shape: str, device: str):
    """The row of ``method`` in ``group`` with ``shape`` on ``device``, or None; a reference
    timed once for its group on that device (whatever shape it records) when none has that
    shape. A time on another device is never one: a kernel on cuda divided by its reference
    on the cpu is no ratio of the kernel's."""
    same = df[(df["group"] == group) & (df["method"] == method) & (df["device"] == device)]
    hit = same[same["shape"] == shape]
    if hit.empty and len(same) == 1:
        hit = same
    return None if hit.empty else hit.iloc[0]


def failed_gated(df: pd.DataFrame, by_shape: bool = False) -> dict[tuple, bool]:
    """The benchmarks of failed tests, in a frame loaded with ``failed_tests=True``, that a
    gate would have read, by (group, method), or with ``by_shape`` by (group, method,
    shape): True for a gated kernel, False for a reference that a gated kernel of its group
    is measured against."""
    g_df = df[gated(df)]
    refs = set(zip(g_df["group"], g_df["reference"]))
    hit = df[df[TEST_FAILED]]
    return {((g, m, s) if by_shape else (g, m)): bool(k)
            for g, m, s, k in zip(hit["group"], hit["method"], hit["shape"], gated(hit))
            if k or (g, m) in refs}


def failed_line(name: str, kernel: bool, where: str, what: str = "not gated") -> str:
    """How a gate says it left out a benchmark of a failed test (``failed_gated``)."""
    if kernel:
        return f"{name}: its test failed ({where}): {what}"
    return (f"{name}: a reference whose test failed ({where}): the kernels measured against "
            f"it are {what}")


def _test_outcome(path, name: str, info) -> tuple[object, bool]:
    """(the extra_info without ``TEST_FAILED``, whether the benchmark's test failed)."""
    if not isinstance(info, dict) or TEST_FAILED not in info:
        return info, False
    info = dict(info)
    value = info.pop(TEST_FAILED)
    if value is not True:
        raise ReportInputError(f"{path}: benchmark {name!r}: extra_info.{TEST_FAILED}: "
                               f"expected true (its test failed; handgrad's plugin writes "
                               f"it), got {value!r}")
    return info, True


def _shape_order(keys) -> list[str]:
    return [k for k in SHAPES if k in keys] + sorted(set(keys) - set(SHAPES))


def shape_text(shape) -> str:
    """A shape as one canonical line, "L=3 K=30 N=1024" (``_shape_order``): two runs of
    one benchmark give the same text whatever order their mappings were written in."""
    return " ".join(f"{k}={shape[k]}" for k in _shape_order(shape))


def shape_columns(df: pd.DataFrame) -> list[str]:
    """The shape parameters of the loaded benchmarks, in table order: handgrad's own
    (``record.SHAPES``: L, D, K, P, N, k) first, then any other in order of name; only
    those some row has."""
    return _shape_order(set().union(*df["shape_keys"]) if len(df) else set())


def gaps(df: pd.DataFrame) -> dict[str, list[str]]:
    """Per input file, what it lacks that today's bench suite records: the report says so
    instead of failing or showing a default as if it had been measured."""
    out = {}
    for source, g in df.groupby("source", sort=False):
        written = frozenset().union(*g["fields_written"])
        lack = []
        if int(g["schema"].iloc[0]) == 1:
            lack.append("the owner field (schema 1: each method's role is taken from the "
                        "list of methods that suite timed)")
        if "timer" not in written or "cache" not in written:
            lack.append("the timer and cache mode (read as perf_counter around a "
                        "synchronised call, warm cache)")
        if any(map(on_gpu, g["device"])) and g["peak_bytes"].isna().all():
            lack.append("peak memory (no `peak_mib` or `memory_ratio`)")
        if not (g["kernel"] == "ceiling").any():
            lack.append("measured ceilings (the roofline has no roofs)")
        if "compile_mode" not in written:
            lack.append("compiled timings (`torch.compile`)")
        if not g["interleaved"].any():
            lack.append("interleaved reference rounds (ratios by medians; no disturbed check)")
        if (g["role"] == "kernel").any() and not (g["role"] == "reference").any():
            lack.append("the references' own benchmarks (as a --bench-kernels-only run: each "
                        "kernel's ratio is to its reference's interleaved rounds, where timed)")
        out[source] = lack
    return out


def on_gpu(device: str) -> bool:
    return not str(device).startswith("cpu")


def _existing_ancestor(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def check_output_dir(path: str | Path, option: str = "--out", what: str = "the report") -> Path:
    """``path`` as a folder ``what`` can be written into (made later, after the inputs
    have been read); ReportInputError when it is a file, lies under a file, or cannot be
    written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ReportInputError(f"{option}: {path} is a file; expected a folder to write "
                               f"{what} into")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise ReportInputError(f"{option}: {path} lies under {base}, which is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ReportInputError(f"{option}: {base} is not writable")
    return path


def check_output_file(path: str | Path, option: str, make_folder: bool = False) -> Path:
    """``path`` as a file that can be appended to: its folder exists (with
    ``make_folder``: or can be made, under a folder) and is writable, and it is not itself
    a folder; ReportInputError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ReportInputError(f"{option}: {path} is a folder; expected a file")
    parent = _existing_ancestor(path.parent) if make_folder else path.parent
    if make_folder and not parent.is_dir():
        raise ReportInputError(f"{option}: {path} lies under {parent}, which is a file")
    if not parent.is_dir():
        raise ReportInputError(f"{option}: the folder of {path} does not exist")
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(parent, os.W_OK):
        raise ReportInputError(f"{option}: {path} is not writable")
    return path
