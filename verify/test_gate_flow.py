""".ci/gate's flow around its two gates, run for real on a stand-in project: the script
itself in a throwaway git repository, with a `python` first on PATH that writes the
repository's fixtures where pytest would write its benchmark JSON, and fails or times as a
test asks, but hands `python -m handgrad.reports gate` to the real interpreter. So the
gate's verdicts and warnings are the real ones, and nothing is timed or counted here.

What it holds: a line of .ci/accepted-regressions that the instruction gate compares
nowhere is left to the timed gate (--accept-later), and said on exit whatever ends the
gate before the timed gate reaches its verdict (it was lost: no gate checked it)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from verify.runs import counted_run, write_runs

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "verify" / "fixtures"
COUNTED = FIXTURES / "bench_instructions.json"

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason=".ci/gate needs git and bash")

# the stand-in `python`: pytest writes a fixture as its --benchmark-json (the baseline tree's
# run or this tree's), alternate copies prepared timed runs or fails, render and history do
# nothing; everything else (the gate) is the real interpreter
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = -c ]; then exit 0; fi
if [ "$1 $2" = "-m pytest" ]; then
    while [ $# -gt 0 ]; do
        if [ "$1" = --benchmark-json ]; then
            case "$PWD" in */baseline-tree) cp "$FAKE_BASE" "$2" ;; *) cp "$FAKE_HEAD" "$2" ;; esac
        fi
        shift
    done
    exit 0
fi
if [ "$1 $2" = "-m handgrad.benchmark.alternate" ]; then
    [ -n "$FAKE_LOG" ] && echo "alternate $*" >> "$FAKE_LOG"
    [ -n "$FAKE_TIMED" ] || { echo "alternate: a timed run died" >&2; exit 1; }
    while [ $# -gt 0 ]; do [ "$1" = --out ] && cp "$FAKE_TIMED"/*.json "$2"/; shift; done
    exit 0
fi
case "$1 $2 $3" in "-m handgrad.reports render"|"-m handgrad.reports history") exit 0 ;; esac
exec "$REAL_PYTHON" "$@"
"""

TYPO = "jacobian.manual_forwrd"  # close to a counted kernel.method: the gates say which


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _counted(tmp_path: Path, factor: float) -> Path:
    return counted_run(tmp_path, factor)


def _project(tmp_path: Path, accept: str) -> Path:
    """A git repository with .ci/gate as it is here, a committed kernels/ to be the
    baseline, and ``accept`` as its .ci/accepted-regressions."""
    repo = tmp_path / "repo"
    for folder in ("handgrad", "bench", "verify", "reports", "kernels"):
        (repo / folder).mkdir(parents=True)
        (repo / folder / "__init__.py").write_text("")
    (repo / "conftest.py").write_text("")
    (repo / "pyproject.toml").write_text("")
    (repo / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "gate", repo / ".ci" / "gate")
    (repo / ".ci" / "gate-noise.json").write_text((ROOT / ".ci" / "gate-noise.json")
                                                  .read_text())
    (repo / ".ci" / "accepted-regressions").write_text(accept)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    (repo / ".ci" / "baseline").write_text(_git(repo, "rev-parse", "HEAD") + "\n")
    return repo


def _gate(tmp_path: Path, repo: Path, head: Path, timed: Path | None = None,
          **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    run_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "REAL_PYTHON": sys.executable, "FAKE_BASE": str(COUNTED),
               "FAKE_HEAD": str(head), "FAKE_TIMED": str(timed or ""), "FAKE_LOG": "",
               "GATE_OUT": str(out), "GATE_RUNS": "3", "GATE_MORE": "0", **env}
    run_env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run(["bash", str(repo / ".ci" / "gate")], env=run_env,
                          capture_output=True, text=True, timeout=300)


ACCEPT = (f"{TYPO} 1.1 a typo of a counted kernel\n"
          "jacobian.manual_forward 1.01 counted and timed\n")


def test_a_line_left_to_a_timed_gate_that_never_ran_is_said_on_exit(tmp_path):
    repo = _project(tmp_path, ACCEPT)
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0))
    # the timed stage died (alternate's exit 1), after the instruction gate passed
    assert run.returncode == 1, run.stderr
    assert "alternate: a timed run died" in run.stderr
    left = tmp_path / "out" / "accept-deferred.txt"
    assert "gate: ended (exit 1) before the timed gate checked the lines of " \
        ".ci/accepted-regressions the instruction gate left to it" in run.stderr
    said = [ln for ln in run.stderr.splitlines() if ln.startswith("warning:")]
    assert said == left.read_text().splitlines()
    assert len(said) == 1, run.stderr
    assert said[0].startswith(
        f"warning: {repo}/.ci/accepted-regressions:1: {TYPO} matches no kernel.method "
        "compared by the instruction-count gate, so it accepts nothing (did you mean "
        "jacobian.manual_forward?); the instruction-count gate left it to the gate that "
        "follows (--accept-later), which ended before its verdict, so no gate checked it")
    # the line that matched in the instruction gate is in no warning
    assert "jacobian.manual_forward matches" not in run.stderr
    # the baseline tree is still removed on the way out
    assert not (tmp_path / "out" / "baseline-tree").exists()


def test_a_timed_gate_that_stops_without_a_verdict_leaves_the_lines_said(tmp_path):
    """The timed runs came back, but the gate over them had nothing to judge (exit 2:
    runs with no kernel benchmark): no verdict, so no warning of its own."""
    repo = _project(tmp_path, ACCEPT)
    timed = tmp_path / "timed"
    timed.mkdir()
    empty = json.loads((FIXTURES / "bench_run1.json").read_text())
    empty["benchmarks"] = []
    for side in ("base", "head"):
        for i in (1, 2, 3):
            empty["datetime"] = f"{side}-{i}"
            (timed / f"{side}-{i}.json").write_text(json.dumps(empty))
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), timed)
    assert run.returncode == 2, run.stderr
    assert "gate: ended (exit 2) before the timed gate checked" in run.stderr
    assert f"{TYPO} matches no kernel.method compared by the instruction-count gate" \
        in run.stderr


def test_a_timed_gate_that_judges_says_the_lines_itself_and_nothing_is_repeated(tmp_path):
    repo = _project(tmp_path, ACCEPT)
    timed = tmp_path / "timed"
    timed.mkdir()
    for side in ("base", "head"):
        write_runs(timed, side, [{}, {"jacobian.manual_reverse": 1.01},
                                 {"jacobian.manual_reverse": 0.99}])
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), timed)
    assert run.returncode in (0, 3), run.stderr
    assert "ended (exit" not in run.stderr
    # the timed gate's own warning, searched in both gates' kernels
    warned = [ln for ln in run.stderr.splitlines() if TYPO in ln]
    assert len(warned) == 1 and "compared by the timed gate over runs or gated in the " \
        "--accept-elsewhere runs" in warned[0], run.stderr


def test_a_failing_instruction_gate_warns_itself_and_leaves_nothing(tmp_path):
    repo = _project(tmp_path, ACCEPT)
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.05))
    assert run.returncode == 1, run.stderr
    assert "FAIL" in run.stdout
    warned = [ln for ln in run.stderr.splitlines() if TYPO in ln]
    assert len(warned) == 1 and "left it to the gate that follows" not in warned[0]
    assert (tmp_path / "out" / "accept-deferred.txt").read_text() == ""
    assert "ended (exit" not in run.stderr


def test_the_counts_alone_warn_the_line_themselves(tmp_path):
    repo = _project(tmp_path, ACCEPT)
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), GATE_TIMED="0")
    assert run.returncode == 0, run.stderr
    warned = [ln for ln in run.stderr.splitlines() if TYPO in ln]
    assert len(warned) == 1 and "instruction-count gate, so it accepts nothing" in warned[0]
    assert not (tmp_path / "out" / "accept-deferred.txt").exists()
    assert "ended (exit" not in run.stderr


# ---------------------------------------------------------------- --accept-later FILE


def test_accept_later_writes_the_lines_it_leaves_and_only_those(tmp_path, capsys):
    from handgrad.reports.__main__ import main

    accept = tmp_path / "accept.txt"
    accept.write_text(ACCEPT)
    left = tmp_path / "left.txt"
    argv = ["gate", "--baseline", str(COUNTED), "--accept", str(accept)]
    assert main([*argv, "--current", str(_counted(tmp_path, 1.0)),
                 "--accept-later", str(left)]) == 0
    assert capsys.readouterr().err == ""  # left to the later gate, not said here
    lines = left.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {accept}:1: {TYPO} matches")
    # a failing gate says it itself (no later gate runs): nothing left, the file emptied
    assert main([*argv, "--current", str(_counted(tmp_path, 1.05)),
                 "--accept-later", str(left)]) == 1
    assert TYPO in capsys.readouterr().err and left.read_text() == ""
    # nothing unmatched: an empty file
    accept.write_text("jacobian.manual_forward 1.01 counted\n")
    left.write_text("stale\n")
    assert main([*argv, "--current", str(_counted(tmp_path, 1.0)),
                 "--accept-later", str(left)]) == 0
    assert left.read_text() == ""
    # the flag alone, as before: nothing written anywhere, nothing said
    assert main([*argv, "--current", str(_counted(tmp_path, 1.0)), "--accept-later"]) == 0
    assert capsys.readouterr().err == ""


def test_accept_later_refuses_a_file_it_cannot_write(tmp_path, capsys):
    from handgrad.reports.__main__ import main

    argv = ["gate", "--baseline", str(COUNTED), "--current", str(_counted(tmp_path, 1.0))]
    assert main([*argv, "--accept-later", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: --accept-later: {tmp_path} is a folder; "
                                       "expected a file\n")
    assert main([*argv, "--accept-later", str(tmp_path / "no" / "left.txt")]) == 2
    assert "--accept-later: the folder of" in capsys.readouterr().err


def test_a_baseline_the_clone_lacks_is_refused_with_what_to_set(tmp_path):
    repo = _project(tmp_path, ACCEPT)
    missing = "0" * 40
    (repo / ".ci" / "baseline").write_text(f"{missing}\n")
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0))
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == (
        f"error: .ci/baseline names {missing}, which this clone does not have and could not "
        "fetch from origin: set it to a commit of main (main's HEAD when the work started; "
        'docs/reports-and-gate.md, "The CI gate")')


# ---------------------------------------------------------------- GATE_DEADLINE


def _inconclusive(tmp_path: Path) -> Path:
    """Five timed runs a side: over the first three jacobian.manual_reverse is undecided
    (its interval 0.990 to 1.057 straddles its limit 1.05: exit 3)."""
    timed = tmp_path / "timed"
    timed.mkdir()
    write_runs(timed, "base", [{}, {"jacobian.manual_reverse": 1.01},
                               {"jacobian.manual_reverse": 0.99}, {}, {}])
    write_runs(timed, "head", [{"jacobian.manual_reverse": f}
                               for f in (1.06, 0.98, 1.03, 1.0, 1.0)])
    return timed


def _alternated(log: Path) -> list[str]:
    return [" ".join(ln.split()[ln.split().index("--runs"):][:4])
            for ln in log.read_text().splitlines()]


def test_an_inconclusive_verdict_takes_more_runs_before_the_deadline(tmp_path):
    import time

    repo = _project(tmp_path, "")
    log = tmp_path / "alternate.log"
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), _inconclusive(tmp_path),
                GATE_MORE="2", FAKE_LOG=str(log), GATE_DEADLINE=str(int(time.time()) + 3600))
    assert run.returncode == 0, run.stdout + run.stderr
    assert _alternated(log) == ["--runs 3 --start 1", "--runs 2 --start 4"]
    assert "gate: inconclusive after 3 runs a side; 2 more a side" in run.stdout
    assert "GATE_DEADLINE" not in run.stdout


def test_no_more_runs_than_end_before_the_deadline(tmp_path):
    """CI's time limit had ended the whole job in a slow gate (stop 38's submission): past
    GATE_DEADLINE the undecided kernels are listed and the gate passes, as after the more
    runs; without GATE_DEADLINE (a local run) nothing is cut."""
    import time

    repo = _project(tmp_path, "")
    log = tmp_path / "alternate.log"
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), _inconclusive(tmp_path),
                GATE_MORE="2", FAKE_LOG=str(log), GATE_DEADLINE=str(int(time.time()) - 1))
    assert run.returncode == 0, run.stdout + run.stderr
    assert _alternated(log) == ["--runs 3 --start 1"]
    assert "2 more a side (about" in run.stdout and "would end after GATE_DEADLINE (in " \
        in run.stdout and "s): not run" in run.stdout, run.stdout
    assert "gate: wall clock inconclusive for the kernels listed after 3 runs a side: " \
        "not blocking" in run.stdout
    assert "jacobian.manual_reverse" in run.stdout


def _regressed(tmp_path: Path, later: tuple[float, float]) -> Path:
    """Five timed runs a side: over the first three jacobian.manual_reverse regressed
    (1.100 [1.085, 1.116]); runs 4 and 5 of the head at ``later``."""
    timed = tmp_path / "timed"
    timed.mkdir()
    write_runs(timed, "base", [{"jacobian.manual_reverse": f}
                               for f in (1.0, 1.01, 0.99, 1.0, 1.0)])
    write_runs(timed, "head", [{"jacobian.manual_reverse": f}
                               for f in (1.10, 1.09, 1.11, *later)])
    return timed


def test_a_regression_the_more_runs_do_not_confirm_does_not_block(tmp_path):
    """A wall clock moves between processes: least_squares.gd_loop, its code unchanged,
    read 1.059 [1.016, 1.105] over 3 runs a side here and 1.007 [0.980, 1.036] over 6.
    A regression over the first runs takes the more runs too, and blocks only if it holds
    over all of them."""
    import time

    repo = _project(tmp_path, "")
    log = tmp_path / "alternate.log"
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), _regressed(tmp_path, (0.93, 0.93)),
                GATE_MORE="2", FAKE_LOG=str(log), GATE_DEADLINE=str(int(time.time()) + 3600))
    assert run.returncode == 0, run.stdout + run.stderr
    assert _alternated(log) == ["--runs 3 --start 1", "--runs 2 --start 4"]
    assert "gate: a regression after 3 runs a side; 2 more a side to confirm it (the " \
        "verdict over 3: " in run.stdout
    first = (tmp_path / "out" / "gate-time-3-runs.md").read_text()
    assert "REGRESSION" in first and "3/3" in first
    assert "not blocking" in run.stdout and "5/5" in run.stdout


def test_a_regression_the_more_runs_confirm_blocks(tmp_path):
    repo = _project(tmp_path, "")
    log = tmp_path / "alternate.log"
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), _regressed(tmp_path, (1.10, 1.10)),
                GATE_MORE="2", FAKE_LOG=str(log))
    assert run.returncode == 1, run.stdout + run.stderr
    assert _alternated(log) == ["--runs 3 --start 1", "--runs 2 --start 4"]
    assert "REGRESSION" in run.stdout and "5/5" in run.stdout


def test_a_regression_with_no_time_to_confirm_it_blocks(tmp_path):
    import time

    repo = _project(tmp_path, "")
    log = tmp_path / "alternate.log"
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), _regressed(tmp_path, (0.93, 0.93)),
                GATE_MORE="2", FAKE_LOG=str(log), GATE_DEADLINE=str(int(time.time()) - 1))
    assert run.returncode == 1, run.stdout + run.stderr
    assert _alternated(log) == ["--runs 3 --start 1"]
    assert "gate: a regression after 3 runs a side; 2 more a side to confirm it (about " \
        in run.stdout and "not run, the verdict over 3 stands" in run.stdout
    assert "REGRESSION" in run.stdout and "3/3" in run.stdout


def test_a_passing_verdict_takes_no_more_runs(tmp_path):
    repo = _project(tmp_path, "")
    log = tmp_path / "alternate.log"
    timed = tmp_path / "ok"
    timed.mkdir()
    for side in ("base", "head"):
        write_runs(timed, side, [{}, {"jacobian.manual_reverse": 1.01},
                                 {"jacobian.manual_reverse": 0.99}])
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), timed, GATE_MORE="2",
                FAKE_LOG=str(log))
    assert run.returncode == 0, run.stdout + run.stderr
    assert _alternated(log) == ["--runs 3 --start 1"]
    assert "more a side" not in run.stdout


def test_the_timed_gate_takes_the_calibration_of_the_runs_machine(tmp_path):
    """.ci/gate gives the gate every calibration, .ci/gate-noise.json first and each
    .ci/gate-noise-*.json after it; the gate takes the one measured on the runs' CPU."""
    repo = _project(tmp_path, "")
    mine = json.loads((ROOT / ".ci" / "gate-noise.json").read_text())
    # the fixtures' runs: an AMD EPYC's, 2 cores, 2 torch threads
    mine["machine"] = {"cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 2}
    other = dict(mine, machine={**mine["machine"], "cpu": "Another CPU"})
    (repo / ".ci" / "gate-noise.json").write_text(json.dumps(other))
    (repo / ".ci" / "gate-noise-fixtures.json").write_text(json.dumps(mine))
    timed = _regressed(tmp_path, (0.93, 0.93))
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), timed, GATE_RUNS="5")
    assert run.returncode == 0, run.stdout + run.stderr
    report = (tmp_path / "out" / "gate-time.md").read_text()
    assert f"the calibration {repo}/.ci/gate-noise-fixtures.json)" in report
    assert "may not hold here" not in report
    # without it, the first: another CPU's, and the report says so
    (repo / ".ci" / "gate-noise-fixtures.json").unlink()
    shutil.rmtree(tmp_path / "out")
    run = _gate(tmp_path, repo, _counted(tmp_path, 1.0), timed, GATE_RUNS="5")
    assert run.returncode == 0, run.stdout + run.stderr
    report = (tmp_path / "out" / "gate-time.md").read_text()
    assert f"the calibration {repo}/.ci/gate-noise.json)" in report
    assert "(cpu 'Another CPU' there, 'AMD EPYC' here)" in report
