"""The `disturbed` flag's spread rule (reports.tables), `history add` leaving out what the
report flags, integer shapes in summary.csv, and what a history with no change point says.

Runs are the timed fixture scaled (verify.runs.scaled_run), so where a benchmark was
disturbed, and how, is known here."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from handgrad.reports import history as H
from handgrad.reports import tables as T
from handgrad.reports.__main__ import main
from handgrad.reports.load import load_benchmarks
from verify.runs import as_schema4, counted_run, scaled_run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FWD = "jacobian.manual_forward"
GROUP = "jacobian L=3 K=30 N=1 cpu"  # one of manual_forward's groups in bench_run1


def _date(i: int) -> str:
    return f"2026-11-{10 + i:02d}T12:00:00+00:00"


def _bench(data: dict, group: str, method: str) -> dict:
    return next(b for b in data["benchmarks"]
                if b["group"] == group and b["extra_info"]["method"] == method)


def _write(tmp_path: Path, name: str, data: dict) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


# ---------------------------------------------------------------- the spread rule


def test_spread_rule_thresholds():
    fast = [1.0] * 10
    # a median HICCUP times the fastest round: more than half the rounds were slowed
    assert T._spread([1.0, *[T.HICCUP * 0.99] * 4]) == ""
    assert T._spread([1.0, *[T.HICCUP * 1.01] * 4]).startswith("median 10.1x")
    # an IQR over SPREAD times the median: a quarter of the rounds or more slowed
    assert T._spread(fast + [1 + T.SPREAD * 0.9] * 5) == ""
    assert T._spread(fast + [1 + T.SPREAD * 1.2] * 6).startswith("IQR")
    assert T._spread(fast) == "" and T._spread(None) == "" and T._spread([5.0]) == ""


@pytest.mark.parametrize("name", ["bench_run1.json", "bench_run2.json",
                                  "bench_run_slow.json", "bench_instructions.json",
                                  "h200/bench_backprop.json.gz",
                                  "h200/bench_captured.json.gz",
                                  "h200/bench_ceilings.json.gz",
                                  "h200/bench_least_squares.json.gz"])
def test_no_handgrad_run_is_flagged(name):
    df = T.with_ratios(load_benchmarks([FIXTURES / name]))
    assert (df["disturbed"] == "").all(), df.loc[df["disturbed"] != "", "disturbed"]


def test_rounds_slowed_past_the_median_are_flagged_with_their_reason(tmp_path):
    data = as_schema4(scaled_run({}))
    b = _bench(data, GROUP, "manual_forward")
    # most rounds, the kernel's and its interleaved reference's, hit by a stall of ~500x
    # (base6.json's rows=256: median 647x the fastest round, ratio in range), and no
    # benchmark of the reference's own to compare with (the walkthrough's pattern)
    b["stats"]["data"] = [t * 500 if i % 5 else t for i, t in enumerate(b["stats"]["data"])]
    info = b["extra_info"]
    info["reference_data"] = [t * 500 if i % 5 else t
                              for i, t in enumerate(info["reference_data"])]
    data["benchmarks"].remove(_bench(data, GROUP, info["reference"]))
    other = _bench(data, "jacobian L=3 K=30 N=1024 cpu", "manual_forward")
    ref = other["extra_info"]["reference_data"]  # its reference's rounds: 40% slowed 10x
    other["extra_info"]["reference_data"] = [t * 10 if i % 5 < 2 else t
                                             for i, t in enumerate(ref)]
    out = tmp_path / "out"
    assert main(["render", _write(tmp_path, "run.json", data), "--out", str(out)]) == 0
    table = pd.read_csv(out / "summary.csv")
    flagged = table[table["disturbed"].notna()]
    why = dict(zip(flagged["method"] + " N=" + flagged["N"].astype(str),
                   flagged["disturbed"]))
    assert set(why) == {"manual_forward N=1", "manual_forward N=1024"}
    assert why["manual_forward N=1"].startswith("rounds: median ")
    assert why["manual_forward N=1024"].startswith("reference rounds: IQR ")
    md = (out / "report.md").read_text()
    assert "**2 benchmark(s) are flagged**" in md
    assert f"an IQR over {T.SPREAD:g}x the median" in md


# ---------------------------------------------------------------- history add


def test_history_add_leaves_out_a_disturbed_benchmark_and_the_step_is_found(tmp_path,
                                                                            capsys):
    db = tmp_path / "h.sqlite"
    levels = [1.0, 1.0, 1.0, 1.0, 1.3, 1.3, 1.3, 1.3]
    commits = [f"{i}" + "c" * 39 for i in range(len(levels))]
    for i, level in enumerate(levels):
        data = scaled_run({FWD: level})
        data["datetime"] = _date(i)  # each run its own file
        if i == 6:  # the walkthrough's slow3.json: one ratio 100x too small
            b = _bench(data, GROUP, "manual_forward")
            b["stats"]["data"] = [t / 100 for t in b["stats"]["data"]]
        f = _write(tmp_path, f"r{i}.json", data)
        assert main(["history", "add", "--db", str(db), f, "--commit", commits[i],
                     "--date", _date(i)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("not stored, disturbed") == 1
    assert f"{GROUP} :: manual_forward (ratio " in printed and "implausible)" in printed
    con = sqlite3.connect(db)
    stored = con.execute(
        "SELECT s.ratio, s.record FROM results s JOIN runs r ON r.id = s.run_id WHERE "
        "r.commit_sha = ? AND s.benchmark = ?", (commits[6], f"{GROUP} :: manual_forward")
    ).fetchall()
    assert len(stored) == 1 and stored[0][0] is None
    assert "implausible" in json.loads(stored[0][1])["disturbed"]
    s = H.series(H.load_history(con))
    fwd = s[(s["kernel"] == "jacobian") & (s["method"] == "manual_forward")
            & (s["metric"] == "ratio")]
    values = fwd.set_index("commit")["value"]
    # the left-out benchmark counts as measured (no benchmark leaves the series) and its
    # run sits at its level, not pulled down
    assert fwd["benchmarks"].nunique() == 1
    assert values[commits[6]] / values[commits[5]] == pytest.approx(1.0, rel=0.01)
    report = H.analyse(H.load_history(con))
    pts = report.points[report.points["kernel"] == FWD]
    # the kernel's mean, then each of its 4 benchmarks: the one left out at commit 6 too,
    # from its other runs
    assert pts["commit"].tolist() == [commits[4][:12]] * 5
    assert f"{GROUP} :: manual_forward" in set(pts["benchmark"])
    assert pts["change"].to_numpy() == pytest.approx(1.3, rel=0.02)


def test_history_add_refuses_a_run_whose_every_benchmark_is_disturbed(tmp_path):
    data = scaled_run({})
    for b in data["benchmarks"]:
        b["stats"]["data"] = [t / 1000 for t in b["stats"]["data"]]
    con = H.connect(tmp_path / "h.sqlite")
    with pytest.raises(Exception, match="left out, disturbed"):
        H.add_run(con, _write(tmp_path, "r.json", data), commit="a" * 40, date=_date(0))
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


def test_run_levels_are_the_plain_mean_without_a_gap_and_fill_one():
    kept = pd.DataFrame({"run": [1, 1, 2, 2, 3, 3],
                         "benchmark": ["a", "b"] * 3,
                         "ratio": [1.0, 4.0, 2.0, 8.0, 2.0, np.nan]})
    full = H._run_levels(kept.fillna({"ratio": 8.0}), "ratio")
    assert np.exp(full).tolist() == pytest.approx([2.0, 4.0, 4.0])
    gap = H._run_levels(kept.dropna(), "ratio")  # run 3 lacks b: b is 4x a, as elsewhere
    assert np.exp(gap).tolist() == pytest.approx([2.0, 4.0, 4.0])


# ---------------------------------------------------------------- small ones


def test_summary_csv_writes_shapes_as_integers(tmp_path):
    out = tmp_path / "out"
    path = _write(tmp_path, "run.json", as_schema4(scaled_run({})))
    assert main(["render", path, "--out", str(out)]) == 0
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for col in ("L", "K", "N", "k", "D"):
        cells = [r[col] for r in rows if r[col]]
        assert cells and all(c.isdigit() for c in cells), (col, cells[:5])
    assert any(r["L"] == "" for r in rows)  # a shape a row lacks stays empty


def test_no_change_point_says_what_one_needs(tmp_path):
    db = tmp_path / "h.sqlite"
    con = H.connect(db)
    for i, level in enumerate([1.0, 1.3]):
        data = scaled_run({FWD: level})
        data["datetime"] = _date(i)
        f = _write(tmp_path, f"r{i}.json", data)
        H.add_run(con, f, commit=f"{i}" * 40, date=_date(i))
    con.close()
    out = tmp_path / "rep"
    assert main(["history", "report", "--db", str(db), "--out", str(out)]) == 0
    md = (out / "history.md").read_text()
    assert f"None found. A change point needs at least {H.MIN_VALUES} runs in a series" in md
    assert H.MIN_VALUES == 3


def test_only_whole_number_columns_become_integers():
    whole = T._integers(pd.Series([256.0, np.nan, 64.0]))
    assert str(whole.dtype) == "Int64" and whole.isna().tolist() == [False, True, False]
    halves = pd.Series([0.5, np.nan, 2.0])
    assert T._integers(halves).dtype == float
    names = pd.Series(["mnist", None])
    assert T._integers(names) is names


# ---------------------------------------------------------------- what a failed gate says

RUN1 = FIXTURES / "bench_run1.json"
SLOW = FIXTURES / "bench_run_slow.json"  # jacobian.manual_forward slowed 1.25x
COUNTED = FIXTURES / "bench_instructions.json"


def _counted(tmp_path: Path, factor: float) -> str:
    return str(counted_run(tmp_path, factor))


def _timed_runs(tmp_path: Path) -> list[str]:
    from verify.runs import write_runs

    base = write_runs(tmp_path, "b", [{FWD: n} for n in (1.00, 1.01, 0.99)])
    cur = write_runs(tmp_path, "c", [{FWD: 1.3 * n} for n in (1.00, 1.01, 0.99)])
    return ["--baseline", *base, "--current", *cur]


def _gates(tmp_path: Path) -> dict[str, list[str]]:
    """The argv of each gate on the fixtures, each failing on jacobian.manual_forward."""
    return {"one pair": ["--baseline", str(RUN1), "--current", str(SLOW)],
            "over runs": _timed_runs(tmp_path),
            "counted": ["--baseline", str(COUNTED), "--current", _counted(tmp_path, 1.05)]}


@pytest.mark.parametrize("gate", ["one pair", "over runs", "counted"])
def test_an_accept_file_matching_nothing_adds_no_empty_column(tmp_path, capsys, gate):
    """An --accept file none of whose lines named a row of the report still gave its
    tables an `accepted_bound` column, empty: gone, in the report and the summary alike;
    a line that names a row brings it back, with its bound."""
    argv = _gates(tmp_path)[gate]
    accept = tmp_path / "accept.txt"
    accept.write_text("swiglu.hand_vjp 1.2 a kernel these runs do not hold\n")
    summary = tmp_path / "summary.md"
    assert main(["gate", *argv, "--accept", str(accept), "--summary", str(summary)]) == 1
    out = capsys.readouterr().out
    for text in (out, summary.read_text()):
        assert "| verdict |" in text and "accepted_bound" not in text
    accept.write_text("jacobian.manual_forward 1.9 taken on purpose\n")
    summary.unlink()
    assert main(["gate", *argv, "--accept", str(accept), "--summary", str(summary)]) in (0, 3)
    out = capsys.readouterr().out
    for text in (out, summary.read_text()):
        header = next(ln for ln in text.splitlines() if "| verdict |" in ln)
        assert "accepted_bound" in header
        rows = [ln for ln in text.splitlines() if "manual_forward" in ln and "|" in ln]
        assert rows and all(("| 1.900 |" in ln or "| 1.9000 |" in ln) for ln in rows), rows


def _next(text: str, name: str) -> str:
    block = text.split("**Next**:\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith(f"- `{name}`")]
    assert len(lines) == 1, block
    return lines[0]


@pytest.mark.parametrize("gate", ["one pair", "over runs", "counted"])
def test_a_failed_gate_says_what_to_do_and_the_least_bound_that_passes(tmp_path, capsys,
                                                                       gate):
    """A failed report named the regression and stopped: nothing said to fix it or how to
    declare it. Now a `Next` line per regressed kernel.method, with the least bound: a
    line declaring it passes this run, a bound 0.001 under it does not, and the report then
    says the declared bound is too low and where it was declared."""
    argv = _gates(tmp_path)[gate]
    assert main(["gate", *argv]) == 1
    line = _next(capsys.readouterr().out, FWD)
    assert "fix the kernel" in line and "the file given as --accept" in line
    bound = line.split(f"`{FWD} ", 1)[1].split(" <reason>`", 1)[0]
    assert len(bound.split(".")[1]) == 3 and 1 < float(bound) < 10
    if gate == "counted":  # the count's change is known here: 1.05, rounded up
        data = json.loads(COUNTED.read_text())
        grown = json.loads(Path(argv[-1]).read_text())
        change = max(g["extra_info"]["instructions"] / b["extra_info"]["instructions"]
                     for b, g in zip(data["benchmarks"], grown["benchmarks"])
                     if b["extra_info"]["method"] == "manual_forward")
        assert bound == f"{math.ceil(change * 1000) / 1000:.3f}" == "1.051"
    accept = tmp_path / "accept.txt"
    accept.write_text(f"{FWD} {bound} as the report says\n")
    assert main(["gate", *argv, "--accept", str(accept)]) in (0, 3)
    out = capsys.readouterr().out
    assert "PASS" in out.splitlines()[0] and "**Next**" not in out
    under = f"{float(bound) - 0.001:.3f}"
    accept.write_text(f"{FWD} {under} a little short\n")
    assert main(["gate", *argv, "--accept", str(accept)]) == 1
    line = _next(capsys.readouterr().out, FWD)
    assert line.startswith(f"- `{FWD}`: declared up to {float(under):g}x ({accept}:1), "
                           f"under this run's {bound}")
    assert f"raise the bound there to {bound} or more" in line


def test_a_passing_gate_has_no_next_steps(tmp_path, capsys):
    assert main(["gate", "--baseline", str(RUN1), "--current", str(FIXTURES / "bench_run2.json")
                 ]) in (0, 3)
    assert "**Next**" not in capsys.readouterr().out


def test_the_next_step_names_the_accept_file_given(tmp_path, capsys):
    accept = tmp_path / "accept.txt"
    accept.write_text("# nothing declared yet\n")
    assert main(["gate", "--baseline", str(RUN1), "--current", str(SLOW), "--accept",
                 str(accept)]) == 1
    assert f"Declare it in `{accept}`: `{FWD} " in _next(capsys.readouterr().out, FWD)


def test_a_regression_beyond_any_declaration_says_so(tmp_path):
    from handgrad.reports.gate import next_steps

    rows = pd.DataFrame({"kernel": ["jacobian", "jacobian"], "method": ["manual_forward"] * 2,
                         "verdict": ["REGRESSION", "ok"], "ci_low": [12.5, 30.0]})
    text = next_steps((rows,), "ci_low", ())
    assert "12.500 (the highest `ci_low` of its REGRESSION rows) is beyond what a " \
        "declaration accepts (under 10x): fix the kernel" in text
    assert next_steps((rows.assign(verdict="ok"),), "ci_low", ()) == ""


def test_a_disturbed_benchmark_of_one_pair_says_it_is_unseen_and_what_to_do(tmp_path):
    from handgrad.reports.gate import gate

    data = json.loads(RUN1.read_text())
    b = _bench(data, GROUP, "manual_forward")
    b["stats"]["data"] = [t * 3 for t in b["stats"]["data"]]
    b["extra_info"]["reference_data"] = [t * 3 for t in b["extra_info"]["reference_data"]]
    data["datetime"] = "another run"
    r = gate(str(RUN1), _write(tmp_path, "disturbed.json", data))
    line = next(s for s in r.skipped if s.startswith(f"{GROUP} :: manual_forward"))
    assert line.endswith("took 3.00x its baseline time: not gated, a change of it unseen; "
                         "run both sides again to gate it"), line
