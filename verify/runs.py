"""Helpers for tests that run pytest or read benchmark files (not a test module itself):
the environment of a pytest subprocess (``pytest_env``), a schema-1 file in today's layout
(``as_schema2``, ``as_schema4``), the ``captured`` fixture and timed runs made from a real
one by scaling kernels' rounds (``scaled_run``, ``write_runs``; ``backprop_run``: one
parametrised benchmark of three shapes under one group); ``counted_run``: the counted
fixture with one kernel's count scaled."""

from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# set in a pytest-xdist worker (pytest-benchmark disables itself when it sees
# PYTEST_XDIST_WORKER) or by the running test: a pytest subprocess must not inherit them
WORKER_VARIABLES = ("PYTEST_XDIST", "PYTEST_CURRENT_TEST")


def pytest_env() -> dict[str, str]:
    """The environment for a pytest subprocess: without ``WORKER_VARIABLES``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(WORKER_VARIABLES)}


def drop_worker_env(monkeypatch) -> None:
    """``pytest_env`` for a subprocess that inherits ``os.environ`` (pytester's): the
    ``WORKER_VARIABLES`` removed for the test."""
    for name in [k for k in os.environ if k.startswith(WORKER_VARIABLES)]:
        monkeypatch.delenv(name)


def as_schema2(data: dict) -> dict:
    """A schema-1 fixture in today's layout: machine_info names the schema, every record
    says whose its method is, the keys no report read are gone."""
    data = copy.deepcopy(data)
    ours = {"manual", "manual_forward", "manual_reverse", "gd_closed_form", "gd_loop",
            "momentum_form1", "momentum_form2", "count_model"}
    data["machine_info"]["handgrad_schema"] = 2
    for b in data["benchmarks"]:
        info = b["extra_info"]
        for key in ("grid", "interleaved", "predicted_mode", "params", "model_flops"):
            info.pop(key, None)
        info.setdefault("bytes", 0)
        info["owner"] = "handgrad" if info["method"] in ours else "torch"
    return data


def as_schema4(data: dict) -> dict:
    """A schema-1 fixture in today's layout (schema 4): every record has its role, and its
    shape as a mapping; otherwise as ``as_schema2``."""
    data = as_schema2(data)
    data["machine_info"]["handgrad_schema"] = 4
    for b in data["benchmarks"]:
        info = b["extra_info"]
        info["role"] = {"handgrad": "kernel", "torch": "reference"}[info.pop("owner")]
        info["shape"] = {k: info.pop(k) for k in ("L", "D", "K", "P", "N", "k") if k in info}
    return data


@contextmanager
def captured():
    """Every figure the report writes, by file name, as it was when saved."""
    from handgrad.reports import figures

    shown = {}
    real = figures._save

    def keep(fig, path):
        shown[Path(path).name] = fig
        return real(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "_save", keep)
        yield shown


def scaled_run(factors: dict[str, float], reference: float = 1.0,
               run: dict | None = None) -> dict:
    """bench_run1 with the kernel rounds of each ``kernel.method`` (or ``group :: method``)
    in ``factors`` times its factor; every reference's rounds times ``reference``. ``run``:
    another timed run to start from."""
    data = copy.deepcopy(run if run is not None else
                         json.loads((FIXTURES / "bench_run1.json").read_text()))
    for b in data["benchmarks"]:
        info = b["extra_info"]
        name = f"{info['kernel']}.{info['method']}"
        f = factors.get(name, 1.0)
        for key, v in factors.items():
            if " :: " in key and b["group"] in key and key.endswith(f":: {info['method']}"):
                f = v
        b["stats"]["data"] = [t * f for t in b["stats"]["data"]]
        if "reference_data" in info:
            info["reference_data"] = [t * reference for t in info["reference_data"]]
    return data


def write_runs(folder: Path, side: str, per_run: list[dict[str, float]],
               reference=None) -> list[str]:
    """One file ``<side>-<i>.json`` per entry of ``per_run`` (its ``scaled_run`` factors);
    ``reference``: {i: factor} for the reference rounds of run i."""
    paths = []
    for i, factors in enumerate(per_run, 1):
        p = folder / f"{side}-{i}.json"
        run = scaled_run(factors, (reference or {}).get(i, 1.0))
        # a run of its own, as a separate process's is, even where its factors repeat
        # another's (the gate refuses one run given twice: reports.noise.distinct_runs)
        run["datetime"] = f"2026-12-05T00:00:00 {side}-{i}"
        p.write_text(json.dumps(run))
        paths.append(str(p))
    return paths


def counted_run(folder: Path, factor: float) -> Path:
    """The counted fixture (bench_instructions.json) as another run, written into
    ``folder``: jacobian.manual_forward's instructions times ``factor``."""
    data = json.loads((FIXTURES / "bench_instructions.json").read_text())
    for b in data["benchmarks"]:
        if b["extra_info"]["method"] == "manual_forward":
            b["extra_info"]["instructions"] = round(b["extra_info"]["instructions"] * factor)
    data["datetime"] = f"{data.get('datetime')}-{factor}"
    path = folder / f"counted-{factor}.json"
    path.write_text(json.dumps(data))
    return path


BACKPROP_GROUP = "backprop"  # the one group of ``backprop_run``


def backprop_run(factors: dict[int, float] | None = None, when: str = "run",
                 only: tuple[int, ...] | None = None) -> dict:
    """bench_run1's backprop benchmarks in schema 4, all under one group "backprop" (a
    parametrised test under one group): three shapes, L=3, 5 and 10, each its manual kernel
    and its reference. ``factors``: {L: factor} for the manual kernel's rounds of shape L;
    ``only``: the shapes kept (a run restricted by GATE_K, e.g. to L=10); ``when``: the
    run's datetime (each run a file of its own)."""
    data = as_schema4(json.loads((FIXTURES / "bench_run1.json").read_text()))
    data["datetime"] = when
    kept = []
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if not b["group"].startswith("backprop ") or (
                only is not None and info["shape"]["L"] not in only):
            continue
        b["group"] = BACKPROP_GROUP
        if info["method"] == "manual":
            f = (factors or {}).get(info["shape"]["L"], 1.0)
            b["stats"]["data"] = [t * f for t in b["stats"]["data"]]
        kept.append(b)
    data["benchmarks"] = kept
    return data
