"""Load one or more pytest-benchmark JSON files into one pandas DataFrame, a row a benchmark."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

SHAPE_KEYS = ("L", "D", "K", "P", "N", "k")
INFO_KEYS = ("kernel", "method", "reference", "flops", "bytes", "device", "dtype", "threads")
# optional extra_info some families record: the Jacobian op-count model, the counted model
# and gate_noise (a benchmark's own per-benchmark gate threshold, see reports.gate)
OPTIONAL_KEYS = ("model_forward", "model_reverse", "predicted_mode", "model", "slowed_by",
                 "gate_noise")


class ReportInputError(ValueError):
    """A benchmark file that is missing, not JSON, or not pytest-benchmark output."""


def machine_label(machine_info: dict) -> str:
    """Short name of the machine a file came from: host, and the GPU when there is one."""
    label = str(machine_info.get("node") or "unknown-host")
    if machine_info.get("gpu"):
        label += f" ({machine_info['gpu']})"
    return label


def read_json_any(path: str | Path) -> object:
    """The parsed JSON of ``path``; ReportInputError when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ReportInputError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: not valid JSON ({exc})") from None


def read_json(path: str | Path) -> dict:
    data = read_json_any(path)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportInputError(f"{path}: not pytest-benchmark output (no 'benchmarks' list)")
    return data


def load_benchmarks(paths: Sequence[str | Path]) -> pd.DataFrame:
    """A row per benchmark per file: source, machine, group, name, extra_info fields,
    median/iqr/mean/min (seconds), rounds, the per-round data (list, seconds) and, for
    interleaved benchmarks, the reference's per-round data paired with it."""
    if not paths:
        raise ReportInputError("no benchmark files given")
    rows = []
    for path in paths:
        data = read_json(path)
        machine = machine_label(data.get("machine_info", {}))
        for b in data["benchmarks"]:
            stats, info = b.get("stats"), b.get("extra_info", {})
            if not isinstance(stats, dict) or "median" not in stats:
                raise ReportInputError(f"{path}: benchmark {b.get('name')!r} has no stats")
            row = {
                "source": str(path),
                "machine": machine,
                "group": b.get("group") or b.get("name"),
                "name": b["name"],
                **{k: info.get(k) for k in INFO_KEYS},
                **{k: info.get(k) for k in SHAPE_KEYS if k in info},
                **{k: info.get(k) for k in OPTIONAL_KEYS if k in info},
                "median": stats["median"],
                "iqr": stats["iqr"],
                "mean": stats["mean"],
                "min": stats["min"],
                "rounds": stats["rounds"],
                "data": stats.get("data"),
                # interleaved runs: the reference's time in each round, paired with data
                "reference_data": info.get("reference_data"),
            }
            rows.append(row)
    if not rows:
        raise ReportInputError(f"{', '.join(map(str, paths))}: no benchmarks in the file(s)")
    return pd.DataFrame(rows)
