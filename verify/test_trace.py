"""``handgrad.benchmark.trace``: where a call's GPU time goes. Its reading of a trace is
checked on hand-made Chrome traces in torch's format (kernels, the operations that
launched them, call ranges) whose every number is worked out here; ``record`` and the
command run on the CPU (a trace without kernels)."""

from __future__ import annotations

import pytest
import torch

from handgrad.benchmark import trace as T


def _x(cat, name, ts, dur, ext=None, tid=1):
    e = {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur}
    if ext is not None:
        e["args"] = {"External id": ext}
    return e


def _trace():
    """Two methods, one call each. manual: the range 0..100 (it returns at 100, after
    its read back); kernels 10..30 (aten::mm), 25..50 (aten::addcmul_, overlapping the
    first), 60..90 (a copy to the host, no operation); reference: the range 200..205
    (it returns before the GPU is done), kernels 203..260 and 210..220 (aten::mm: two
    kernels, the second inside the first's time, on another stream)."""
    return {"traceEvents": [
        _x("user_annotation", f"{T.CALL}:manual:0", 0, 100, ext=1),
        _x("cpu_op", "aten::mm", 2, 5, ext=2),
        _x("cpu_op", "aten::addcmul_", 8, 4, ext=3),
        _x("kernel", "sm90_gemm", 10, 20, ext=2),
        _x("kernel", "elementwise_kernel", 25, 25, ext=3),
        _x("gpu_memcpy", "Memcpy DtoH", 60, 30),
        _x("user_annotation", f"{T.CALL}:reference:0", 200, 5, ext=4),
        _x("cpu_op", "aten::mm", 201, 1, ext=5),
        _x("kernel", "sm90_gemm", 203, 57, ext=5),
        _x("kernel", "elementwise_kernel", 210, 10, ext=5),  # inside the first, another stream
        {"ph": "M", "name": "process_name", "pid": 1},  # metadata: not an interval
    ]}


def test_a_call_is_split_into_busy_and_idle_before_between_and_after_its_kernels():
    manual, ref = T.summarize(_trace())
    assert (manual.method, manual.calls, ref.method) == ("manual", 1, "reference")
    # window 0..100; busy = union(10..50, 60..90) = 40 + 30
    assert manual.window_us == 100 and manual.busy_us == 70
    assert (manual.head_us, manual.gaps_us, manual.tail_us) == (10, 10, 10)
    assert manual.kernels == 3 and manual.idle_us == 30
    assert manual.by_op == {"aten::mm": 20, "aten::addcmul_": 25, "Memcpy DtoH": 30}
    # the reference returned at 205; its window ends with its kernel at 260
    assert (ref.window_us, ref.busy_us, ref.head_us, ref.gaps_us, ref.tail_us) == (
        60, 57, 3, 0, 0)
    assert ref.kernels == 2 and ref.by_op == {"aten::mm": 67}  # kernel time, not busy
    assert list(manual.by_op) == ["Memcpy DtoH", "aten::addcmul_", "aten::mm"]  # largest first


def test_calls_are_averaged_and_a_kernel_belongs_to_the_call_it_follows():
    t = {"traceEvents": [
        _x("user_annotation", f"{T.CALL}:m:0", 0, 10),
        _x("kernel", "k", 5, 10),  # 5..15: ends after the call returned
        _x("user_annotation", f"{T.CALL}:m:1", 100, 10),
        _x("kernel", "k", 120, 20),  # a launch that ran late still belongs to call 1
    ]}
    (m,) = T.summarize(t)
    assert m.calls == 2 and m.kernels == 1
    # call 0: window 15, busy 10, head 5; call 1: window 40, busy 20, head 20
    assert (m.window_us, m.busy_us, m.head_us, m.tail_us) == (27.5, 15, 12.5, 0)
    assert m.by_op == {"k": 15}


def test_a_call_without_kernels_is_all_idle_before_its_first_kernel():
    (m,) = T.summarize({"traceEvents": [_x("user_annotation", f"{T.CALL}:cpu:0", 0, 8)]})
    assert (m.window_us, m.busy_us, m.head_us, m.gaps_us, m.tail_us, m.kernels) == (
        8, 0, 8, 0, 0, 0)


def test_a_trace_it_cannot_read_is_refused_by_name():
    with pytest.raises(ValueError, match="trace: expected a Chrome trace"):
        T.summarize([1, 2])
    with pytest.raises(ValueError, match="trace: no call ranges named"):
        T.summarize({"traceEvents": [_x("kernel", "k", 0, 1)]})


def test_the_table_sets_methods_side_by_side_with_the_kernels_excess():
    text = T.table(T.summarize(_trace()), top=2)
    lines = text.splitlines()
    assert lines[0] == "Mean per call, microseconds (manual: 1 calls, reference: 1 calls)"
    assert lines[2] == "| | manual | reference | manual - reference |"
    assert "| window (what CUDA events measure) | 100.0 | 60.0 | +40.0 |" in lines
    assert "| GPU busy | 70.0 | 57.0 | +13.0 |" in lines
    assert "| idle after the last kernel | 10.0 | 0.0 | +10.0 |" in lines
    # the two largest operations over both methods, the rest in one line
    assert "| `aten::mm` | 20.0 | 67.0 | -47.0 |" in lines
    assert "| `Memcpy DtoH` | 30.0 | 0.0 | +30.0 |" in lines
    assert lines[-1] == "| 1 other operations | 25.0 | 0.0 | +25.0 |"
    with pytest.raises(ValueError, match="breakdowns: expected at least one"):
        T.table([])


def test_the_range_torch_draws_again_on_the_gpu_timeline_is_not_a_call():
    """On CUDA torch writes each record_function range twice: on the host
    ('user_annotation') and around its kernels on the GPU's stream ('gpu_user_annotation',
    same name); taken as calls, each call counted twice, half of them without kernels."""
    t = _trace()
    t["traceEvents"] += [_x("gpu_user_annotation", f"{T.CALL}:manual:0", 10, 80, ext=1),
                         _x("gpu_user_annotation", f"{T.CALL}:reference:0", 203, 57, ext=4)]
    assert T.summarize(t) == T.summarize(_trace())
    assert [b.calls for b in T.summarize(t)] == [1, 1]


def _one_kernel(**fields):
    k = _x("kernel", "sm90_gemm", 5, 10, ext=2)
    k.update(fields)
    return {"traceEvents": [_x("user_annotation", f"{T.CALL}:m:0", 0, 10), k]}


@pytest.mark.parametrize("fields,match", [
    ({"ts": float("nan")}, r"'ts': expected a finite number \(microseconds\), got nan"),
    ({"ts": float("inf")}, r"'ts': expected a finite number \(microseconds\), got inf"),
    ({"ts": "abc"}, r"'ts': expected a finite number \(microseconds\), got 'abc'"),
    ({"ts": True}, r"'ts': expected a finite number \(microseconds\), got True"),
    ({"dur": -5}, r"'dur': expected a duration >= 0 \(microseconds\), got -5"),
    ({"dur": None}, r"'dur': expected a duration >= 0 \(microseconds\), got None"),
    ({"args": [1]}, r"'args': expected a dict \(holding its 'External id'\), got list"),
    ({"args": {"External id": [2]}},
     r"'args'\['External id'\]: expected an integer \(or a string\), got list"),
])
def test_a_bad_event_is_refused_naming_it_and_its_field(fields, match):
    with pytest.raises(ValueError, match=r"trace: traceEvents\[1\] \('sm90_gemm', cat "
                                         r"'kernel'\): " + match):
        T.summarize(_one_kernel(**fields))


def test_a_call_range_or_a_kernel_without_its_times_is_refused():
    t = _one_kernel()
    del t["traceEvents"][1]["dur"]
    with pytest.raises(ValueError, match=r"traceEvents\[1\] .*has no 'dur'; expected a "
                                         r"duration >= 0"):
        T.summarize(t)
    t = _one_kernel()
    del t["traceEvents"][0]["ts"]
    with pytest.raises(ValueError, match=r"traceEvents\[0\] \('handgrad.call:m:0', cat "
                                         r"'user_annotation'\): has no 'ts'"):
        T.summarize(t)


def test_an_operations_args_are_checked_and_other_events_not_read():
    t = _one_kernel()
    t["traceEvents"].append(_x("cpu_op", "aten::mm", 1, 2))
    t["traceEvents"][-1]["args"] = "External id 2"
    with pytest.raises(ValueError, match=r"traceEvents\[2\] \('aten::mm', cat 'cpu_op'\): "
                                         r"'args': expected a dict"):
        T.summarize(t)
    t = _one_kernel()  # an event summarize does not read may hold anything
    t["traceEvents"].append(_x("python_function", "f", float("nan"), -1))
    assert T.summarize(t)[0].busy_us == 10


def test_times_too_large_to_add_overflow_by_name():
    with pytest.raises(OverflowError, match="trace: the times of method 'm' overflow a float"):
        T.summarize(_one_kernel(ts=1e308, dur=1e308))


@pytest.mark.parametrize("top,err", [
    (-1, ValueError), (0, ValueError), (True, TypeError), (None, TypeError),
    ("3", TypeError), (2.5, TypeError)])
def test_the_table_refuses_a_bad_top_by_name(top, err):
    with pytest.raises(err, match=rf"top: expected an integer >= 1 \(operations listed by "
                                  rf"name\), got .*{top!r}"):
        T.table(T.summarize(_trace()), top=top)


def test_the_table_takes_a_list_of_breakdowns_or_one():
    manual, _ = T.summarize(_trace())
    text = T.table(manual, top=1)  # one Breakdown: a list of one
    assert text == T.table([manual], top=1)
    assert text.splitlines()[2] == "| | manual |"
    assert text.splitlines()[-1] == "| 2 other operations | 45.0 |"
    with pytest.raises(TypeError, match=r"breakdowns\[0\]: expected a Breakdown \(as "
                                        r"summarize returns\), got dict"):
        T.table([{"method": "a"}])
    with pytest.raises(TypeError, match="breakdowns: expected a list of Breakdowns .* or one "
                                        "Breakdown, got str"):
        T.table("manual")
    with pytest.raises(TypeError, match=r"breakdowns\[1\]: expected a Breakdown"):
        T.table([manual, None])


def test_the_table_refuses_a_breakdown_made_by_hand_with_a_number_that_is_not():
    with pytest.raises(ValueError, match=r"breakdowns\[0\].window_us: expected a finite "
                                         r"number, got nan"):
        T.table([T.Breakdown("m", 1, float("nan"), 0, 0, 0, 0, 0)])
    with pytest.raises(TypeError, match=r"breakdowns\[0\].by_op\['mm'\]: expected a "
                                        r"number, got str"):
        T.table([T.Breakdown("m", 1, 1, 0, 1, 0, 0, 0, by_op={"mm": "1"})])


def test_record_profiles_each_call_in_its_own_range_on_the_cpu(tmp_path):
    calls = []
    a = torch.randn(64, 64)
    t = T.record({"first": lambda: calls.append("f") or a @ a,
                  "second": lambda: calls.append("s") or a.tanh()},
                 calls=3, warmup=2, path=tmp_path / "t.json")
    assert calls == ["f", "f", "s", "s"] + ["f"] * 3 + ["s"] * 3  # warm-ups outside
    first, second = T.summarize(t)
    assert (first.method, first.calls, second.method, second.calls) == (
        "first", 3, "second", 3)
    assert first.kernels == 0 and first.window_us > 0  # no GPU here: all host time
    assert T.summarize(__import__("json").loads((tmp_path / "t.json").read_text()))[0] \
        .calls == 3


def test_record_with_no_warm_up_profiles_the_first_call():
    calls = []
    t = T.record({"cold": lambda: calls.append("c")}, calls=2, warmup=0)
    assert calls == ["c", "c"]  # both profiled, none before
    assert T.summarize(t)[0].calls == 2


@pytest.mark.parametrize("fns,kw,err,match", [
    ({}, {}, TypeError, "fns: expected a non-empty mapping"),
    ({"a": lambda: None}, {"warmup": -1}, ValueError, "warmup: expected an integer >= 0"),
    ({"a:b": lambda: None}, {}, ValueError, "without ':'"),
    ({"a": 3}, {}, TypeError, r"fns\['a'\]: expected a callable, got int"),
    ({"a": lambda: None}, {"calls": 0}, ValueError, "calls: expected an integer >= 1"),
    ({"a": lambda: None}, {"warmup": 1.5}, TypeError, "warmup: expected an integer"),
])
def test_record_refuses_bad_arguments_by_name(fns, kw, err, match):
    with pytest.raises(err, match=match):
        T.record(fns, **kw)


@pytest.mark.parametrize("kw,err,match", [
    ({"path": "/nonexistent/dir/t.json"}, ValueError,
     "path: expected a file in an existing folder, got '/nonexistent/dir/t.json' "
     r"\(there is no folder '/nonexistent/dir'\)"),
    ({"path": "."}, ValueError, "path: expected a file to write the trace to, got the folder"),
    ({"path": 3}, TypeError, r"path: expected a file path \(a str or Path\) or None, got int"),
    ({"sync": 3}, TypeError, "sync: expected a callable that drains the device .*got int 3"),
])
def test_record_checks_path_and_sync_before_profiling_anything(kw, err, match):
    calls = []
    with pytest.raises(err, match=match):
        T.record({"a": lambda: calls.append(1)}, calls=2, warmup=1, **kw)
    assert calls == []  # refused before the first call


def test_record_refuses_a_path_it_may_not_write(tmp_path, monkeypatch):
    monkeypatch.setattr(T.os, "access", lambda p, mode: False)  # as for a read-only folder
    calls = []
    with pytest.raises(ValueError, match="path: expected a file this process may write, got "
                                         ".*t.json' \\(it or its folder is not writable\\)"):
        T.record({"a": lambda: calls.append(1)}, path=tmp_path / "t.json")
    assert calls == []


def test_the_command_writes_its_tables_and_traces(tmp_path, monkeypatch, capsys):
    """On the CPU at a small size (the GPU stage runs the default, the claim's size)."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # bench/specs from the checkout
    out = tmp_path / "trace"
    rc = T.main(["--out", str(out), "--shape", "2,16,32", "--dtypes", "float32",
                 "--device", "cpu", "--calls", "2"])
    assert rc == 0
    md = (out / "trace.md").read_text()
    assert md.startswith("### backprop L=2 K=16 N=32 float32: manual against torch_autograd")
    assert "| | manual | torch_autograd | manual - torch_autograd |" in md
    assert (out / "backprop-L2-K16-N32-float32.json").exists()
    assert md.strip() in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["--shape", "3,4096"], "--shape: expected L,K,N"),
    (["--dtypes", "float32,int64"], "--dtypes: expected floating torch dtype names, got 'int64'"),
    (["--dtypes", "fp8"], "got 'fp8'"),
    (["--calls", "0"], "--calls: expected a count >= 1, got 0"),
    (["--shape", "0,16,32"], "--shape: expected L,K,N (three integers >= 1), got '0,16,32'"),
    (["--shape", "2,-1,32"], "(three integers >= 1), got '2,-1,32'"),
    (["--device", "nonsense"], "--device: expected a torch device such as cpu, cuda or "
     "cuda:0, got 'nonsense'"),
])
def test_the_command_refuses_bad_arguments(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        T.main(["--out", str(tmp_path), "--device", "cpu", *args])
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_the_command_needs_a_gpu_for_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert T.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_table_of_calls_without_gpu_kernels_says_so_instead_of_a_gpu_split():
    """On the CPU (no kernel recorded) busy 0.0 and all time "idle before the first kernel"
    misled: the table says no GPU kernels were recorded and gives the host's time alone."""
    t = {"traceEvents": [_x("user_annotation", f"{T.CALL}:mine:0", 0, 8),
                         _x("cpu_op", "aten::mm", 1, 6, ext=7),
                         _x("user_annotation", f"{T.CALL}:ref:0", 20, 5)]}
    text = T.table(T.summarize(t))
    lines = text.splitlines()
    assert lines[0] == T.NO_KERNELS and lines[0].startswith(
        "No GPU kernels recorded: the callables ran on the CPU")
    assert "| window (the call's time on the host) | 8.0 | 5.0 | +3.0 |" in lines
    assert "GPU busy" not in text and "idle" not in text.replace("busy and idle", "")
    # recorded on the CPU by record: the same
    a = torch.randn(16, 16)
    text = T.table(T.summarize(T.record({"mm": lambda: a @ a}, calls=1, warmup=0)))
    assert text.startswith(T.NO_KERNELS) and "GPU busy" not in text


def test_a_table_where_one_method_recorded_no_kernel_names_it():
    t = _trace()
    t["traceEvents"].append(_x("user_annotation", f"{T.CALL}:host_only:0", 400, 9))
    lines = T.table(T.summarize(t)).splitlines()
    assert lines[0].startswith("No GPU kernels recorded for host_only: their window is the "
                               "call's time on the host")
    assert "| GPU busy | 70.0 | 57.0 | 0.0 | +13.0 | +70.0 |" in lines  # the split is kept
