"""``python -m handgrad.benchmark.alternate``: two trees' benchmark runs alternated, each a
separate pytest process with its tree first on PYTHONPATH; what a failed run does.

The trees here are tiny pytest-benchmark projects (no torch), so each run takes a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from handgrad.benchmark.alternate import main, plan
from verify.runs import pytest_env

BENCH = '''
import os, time

def test_it(benchmark):
    benchmark.extra_info["pythonpath"] = os.environ["PYTHONPATH"].split(os.pathsep)[0]
    benchmark.extra_info["started"] = time.time()
    benchmark.pedantic(lambda: None, rounds=2)
    assert os.environ.get("FAIL_IN") != os.path.basename(os.getcwd())
'''


def _tree(tmp_path: Path, name: str) -> Path:
    tree = tmp_path / name
    tree.mkdir()
    (tree / "test_b.py").write_text(BENCH)
    return tree


def _run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "handgrad.benchmark.alternate", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**pytest_env(), **(env or {})})


def test_plan_alternates_baseline_first():
    assert plan(2) == [("base", 1), ("head", 1), ("base", 2), ("head", 2)]
    assert plan(1, start=4) == [("base", 4), ("head", 4)]


def test_runs_alternate_each_in_its_own_tree_and_process(tmp_path):
    a, b = _tree(tmp_path, "a"), _tree(tmp_path, "b")
    out = tmp_path / "out"
    proc = _run("--out", str(out), "--runs", "2", "--baseline-tree", str(a),
                "--current-tree", str(b), "--", "test_b.py", "-q", "-p", "no:cacheprovider")
    assert proc.returncode == 0, proc.stderr
    files = {f.name: json.loads(f.read_text()) for f in out.glob("*.json")}
    assert set(files) == {"base-1.json", "head-1.json", "base-2.json", "head-2.json"}
    info = {n: d["benchmarks"][0]["extra_info"] for n, d in files.items()}
    assert {info[n]["pythonpath"] for n in ("base-1.json", "base-2.json")} == {str(a)}
    assert {info[n]["pythonpath"] for n in ("head-1.json", "head-2.json")} == {str(b)}
    started = sorted(info, key=lambda n: info[n]["started"])
    assert started == ["base-1.json", "head-1.json", "base-2.json", "head-2.json"]
    assert proc.stdout.count("alternate: run ") == 4 and "left" in proc.stdout


def test_a_failing_baseline_run_is_allowed_a_failing_current_run_is_not(tmp_path):
    a, b = _tree(tmp_path, "a"), _tree(tmp_path, "b")
    args = ["--runs", "1", "--baseline-tree", str(a), "--current-tree", str(b), "--",
            "test_b.py", "-q", "-p", "no:cacheprovider"]
    ok = _run("--out", str(tmp_path / "o1"), *args, env={"FAIL_IN": "a"})
    assert ok.returncode == 0, ok.stderr
    assert "some benchmarks failed" in ok.stdout
    bad = _run("--out", str(tmp_path / "o2"), *args, env={"FAIL_IN": "b"})
    assert bad.returncode == 2
    assert "run head-1" in bad.stderr and "exited 1" in bad.stderr


@pytest.mark.parametrize("args, says", [
    (["--runs", "0"], "expected a whole number >= 1"),
    (["--runs", "1", "--baseline-tree", "/no/such/tree"], "is not a folder"),
    (["--runs", "1", "--", "bench", "--benchmark-json", "x.json"], "set by alternate"),
])
def test_bad_options_are_refused_by_name(tmp_path, args, says):
    proc = _run("--out", str(tmp_path / "o"), *args)
    assert proc.returncode == 2 and says in proc.stderr


@pytest.mark.parametrize("out,says", [
    ("afile", "--out: {} is a file; expected a folder to write the runs into"),
    ("afile/o", "--out: {} lies under {}, which is a file"),
])
def test_an_out_folder_that_is_a_file_is_refused_before_any_run(tmp_path, capsys, out, says):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / out), "--runs", "1"])
    assert e.value.code == 2
    assert says.format(tmp_path / out, tmp_path / "afile") in capsys.readouterr().err


def test_main_is_the_command(tmp_path, monkeypatch, capsys):
    # in-process, for the argument handling that the subprocess tests cannot mutate-check
    monkeypatch.setattr(os, "environ", {**pytest_env()})
    a = _tree(tmp_path, "a")
    assert main(["--out", str(tmp_path / "o"), "--runs", "1", "--baseline-tree", str(a),
                 "--current-tree", str(a), "--", "test_b.py", "-q",
                 "-p", "no:cacheprovider"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.json")) == [
        "base-1.json", "head-1.json"]


def test_a_relative_out_is_taken_from_where_alternate_starts(tmp_path, monkeypatch):
    """The README's form, run from the current tree with the baseline beside it: the runs
    land in ./runs here, not in each run's tree (each run's working directory)."""
    monkeypatch.setattr(os, "environ", {**pytest_env()})
    a, b = _tree(tmp_path, "a"), _tree(tmp_path, "b")
    monkeypatch.chdir(b)
    assert main(["--out", "runs", "--runs", "1", "--baseline-tree", "../a", "--",
                 "test_b.py", "-q", "-p", "no:cacheprovider"]) == 0
    assert sorted(p.name for p in (b / "runs").glob("*.json")) == [
        "base-1.json", "head-1.json"]
    assert not (a / "runs").exists()


def test_alternate_itself_takes_a_relative_out_from_its_caller(tmp_path, monkeypatch):
    from handgrad.benchmark.alternate import alternate

    monkeypatch.setattr(os, "environ", {**pytest_env()})
    a = _tree(tmp_path, "a")
    monkeypatch.chdir(tmp_path)
    written = alternate(Path("o"), 1, Path("a"), Path("a"),
                        ["test_b.py", "-q", "-p", "no:cacheprovider"], log=lambda _: None)
    assert written == [tmp_path / "o" / "base-1.json", tmp_path / "o" / "head-1.json"]
    assert all(p.is_file() for p in written) and not (a / "o").exists()
    info = json.loads(written[0].read_text())["benchmarks"][0]["extra_info"]
    assert info["pythonpath"] == str(a)  # the tree first on PYTHONPATH, as a full path
