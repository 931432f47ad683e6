"""Where a call's time goes on a GPU: the kernels each torch operation launched, and the
time the GPU sat idle waiting for the host, for a kernel and its reference side by side.

The event clock (``handgrad.benchmark.timing``) says how long a call took; this says what
filled that time. ``record`` profiles each callable with ``torch.profiler`` (CPU and CUDA
activity) the way the event clock times it: the GPU drained before the call, the call
inside a ``record_function`` range, the GPU drained after. ``summarize`` reads the Chrome
trace torch writes. Per call:

- ``window``: from the call's start on the host to the later of its return and its last
  kernel's end (what CUDA events recorded around the call measure);
- ``busy``: the time at least one kernel (or copy, or memset) ran;
- ``head``: idle before the first kernel (the host's work before its first launch);
- ``gaps``: idle between kernels (the host fell behind the GPU, or waited on it);
- ``tail``: idle after the last kernel (the host's work after the GPU finished: a read
  back, Python returning).

Kernel time is given to the torch operation that launched it (``aten::mm``,
``aten::addcmul_``), the operation whose External id the kernel carries in the trace; a
kernel with none keeps its own name. ``table`` sets methods side by side, and the first's
excess over each of the others (list the kernel first, its reference after). Where no
kernel was recorded (callables run on the CPU), ``table`` says so instead of a split.

    from handgrad.benchmark import trace
    t = trace.record({"mine": lambda: my_backward(x), "autograd": reference}, calls=5)
    print(trace.table(trace.summarize(t)))

``python -m handgrad.benchmark.trace`` does this for backprop against autograd at a given
size (from a checkout: it builds the benchmark's own callables, ``bench/specs``), the
``trace`` stage of ``python -m handgrad.gpu_check``. It needs a GPU; the trace's reading
is tested on the CPU (``verify/test_trace.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CALL = "handgrad.call"  # the record_function range of one call: f"{CALL}:{method}:{i}"
KERNEL_CATS = ("kernel", "gpu_memcpy", "gpu_memset")  # what occupies the GPU
OP_CATS = ("cpu_op",)


@dataclass
class Breakdown:
    """One method's calls, each number the mean per call in microseconds."""

    method: str
    calls: int
    window_us: float
    busy_us: float
    head_us: float
    gaps_us: float
    tail_us: float
    kernels: float  # kernels (and copies, memsets) per call
    by_op: dict[str, float] = field(default_factory=dict)  # GPU time per operation

    @property
    def idle_us(self) -> float:
        return self.head_us + self.gaps_us + self.tail_us


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _events(trace: Mapping) -> list[tuple[int, dict]]:
    """The complete events ('ph': 'X') of the trace, each with its index in 'traceEvents'."""
    events = trace.get("traceEvents") if isinstance(trace, Mapping) else None
    if not isinstance(events, list):
        raise ValueError("trace: expected a Chrome trace (a dict with a 'traceEvents' list, "
                         f"as torch.profiler's export_chrome_trace writes), got "
                         f"{type(trace).__name__}")
    return [(i, e) for i, e in enumerate(events) if isinstance(e, dict) and e.get("ph") == "X"]


def _event(i: int, e: dict) -> str:
    return f"trace: traceEvents[{i}] ({e.get('name')!r}, cat {e.get('cat')!r})"


def _time(i: int, e: dict, key: str) -> float:
    """Event ``i``'s 'ts' or 'dur' in microseconds: a finite number, a 'dur' >= 0."""
    want = "a duration >= 0" if key == "dur" else "a finite number"
    if key not in e:
        raise ValueError(f"{_event(i, e)}: has no {key!r}; expected {want} (microseconds), "
                         "as every complete event ('ph': 'X') has")
    v = e[key]
    try:
        x = float("nan") if isinstance(v, bool) else float(v)
    except (TypeError, ValueError, OverflowError):
        x = float("nan")
    if not math.isfinite(x) or (key == "dur" and x < 0):
        raise ValueError(f"{_event(i, e)}: {key!r}: expected {want} (microseconds), "
                         f"got {v!r:.80}")
    return x


def _external_id(i: int, e: dict) -> object:
    """Event ``i``'s 'External id' (None where it has none): 'args' must be a dict, the id
    an integer (or a string)."""
    args = e.get("args")
    if args is None:
        return None
    if not isinstance(args, Mapping):
        raise ValueError(f"{_event(i, e)}: 'args': expected a dict (holding its "
                         f"'External id'), got {type(args).__name__} {args!r:.80}")
    ext = args.get("External id")
    if ext is not None and (isinstance(ext, bool) or not isinstance(ext, (int, str))):
        raise ValueError(f"{_event(i, e)}: 'args'['External id']: expected an integer (or "
                         f"a string), got {type(ext).__name__} {ext!r:.80}")
    return ext


def summarize(trace: Mapping) -> list[Breakdown]:
    """One ``Breakdown`` per method, in the order the trace first ran them. A call's
    kernels are those that start between its range's start and the next call's (the GPU
    is drained between calls, so none of a call's kernels starts later). The range torch
    draws again on the GPU's timeline ('gpu_user_annotation', around the kernels) is not a
    call.

    The events it reads are checked: a call range's and a kernel's 'ts' must be a finite
    number and its 'dur' one >= 0, a kernel's or an operation's 'args' a dict; a ValueError
    names the event (its index in 'traceEvents', its name) otherwise. Other events are not
    read."""
    calls: list[tuple[float, float, str]] = []
    kernels: list[tuple[float, float, object, str]] = []
    op_of: dict[object, str] = {}  # External id -> the operation that holds it (torch
    # writes a kernel's External id as the one of the operation that launched it)
    for i, e in _events(trace):
        cat, name = e.get("cat"), str(e.get("name", "?"))
        if name.startswith(CALL + ":") and cat != "gpu_user_annotation":
            calls.append((_time(i, e, "ts"), _time(i, e, "dur"), name))
        if cat in KERNEL_CATS:
            kernels.append((_time(i, e, "ts"), _time(i, e, "dur"), _external_id(i, e), name))
        elif cat in OP_CATS:
            ext = _external_id(i, e)
            if ext is not None:
                op_of[ext] = name
    if not calls:
        raise ValueError(f"trace: no call ranges named '{CALL}:<method>:<i>' in it; "
                         "expected a trace written by handgrad.benchmark.trace.record")
    calls.sort(key=lambda c: c[0])
    kernels.sort(key=lambda k: k[0])
    per: dict[str, list[dict]] = {}
    for i, (start, dur, name) in enumerate(calls):
        returned = start + dur
        nxt = calls[i + 1][0] if i + 1 < len(calls) else float("inf")
        mine = [k for k in kernels if start <= k[0] < nxt]
        spans = [(ts, ts + d) for ts, d, _, _ in mine]
        end = max([returned] + [b for _, b in spans])
        busy = _union(spans)
        head = (min(a for a, _ in spans) - start) if spans else end - start
        tail = (end - max(b for _, b in spans)) if spans else 0.0
        by_op: dict[str, float] = defaultdict(float)
        for (_, _, ext, kname), (a, b) in zip(mine, spans):
            by_op[op_of.get(ext, kname)] += b - a
        method = name[len(CALL) + 1:].rsplit(":", 1)[0]
        per.setdefault(method, []).append(dict(
            window=end - start, busy=busy, head=head, tail=tail,
            gaps=(end - start) - busy - head - tail, kernels=len(mine), by_op=by_op))
    out = []
    for method, rows in per.items():
        n = len(rows)
        ops: dict[str, float] = defaultdict(float)
        for r in rows:
            for op, us in r["by_op"].items():
                ops[op] += us / n
        b = Breakdown(
            method, n, *(sum(r[k] for r in rows) / n
                         for k in ("window", "busy", "head", "gaps", "tail", "kernels")),
            by_op=dict(sorted(ops.items(), key=lambda kv: -kv[1])))
        if not all(math.isfinite(v) for v in (b.window_us, b.busy_us, b.head_us, b.gaps_us,
                                              b.tail_us, *b.by_op.values())):
            raise OverflowError(f"trace: the times of method {method!r} overflow a float "
                                "(its events' 'ts' and 'dur' are finite but too large to add)")
        out.append(b)
    return out


def _check_breakdown(where: str, b: object) -> None:
    """A TypeError or ValueError naming ``where`` unless ``b`` is a Breakdown whose numbers
    are finite (one made by hand may hold anything)."""
    if not isinstance(b, Breakdown):
        raise TypeError(f"{where}: expected a Breakdown (as summarize returns), got "
                        f"{type(b).__name__} {b!r:.80}")
    if not isinstance(b.by_op, Mapping):
        raise TypeError(f"{where}.by_op: expected a dict of operation name to microseconds, "
                        f"got {type(b.by_op).__name__}")
    numbers = [(f, getattr(b, f)) for f in ("calls", "window_us", "busy_us", "head_us",
                                            "gaps_us", "tail_us", "kernels")]
    for label, v in numbers + [(f"by_op[{op!r}]", us) for op, us in b.by_op.items()]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{where}.{label}: expected a number, got {type(v).__name__} "
                            f"{v!r}")
        if not math.isfinite(v):
            raise ValueError(f"{where}.{label}: expected a finite number, got {v!r}")


# what ``table`` says instead of the GPU's split where no method recorded a kernel
NO_KERNELS = ("No GPU kernels recorded: the callables ran on the CPU (or launched no "
              "kernel), so there is no GPU time to split into busy and idle; the window is "
              "each call's time on the host. Run them on a CUDA device for the split")


def table(breakdowns: Sequence[Breakdown], top: int = 12) -> str:
    """Markdown: the time split (window, busy, idle before / between / after the kernels),
    then GPU time per operation (the ``top`` largest over all methods); then the first
    method's excess over each of the others (a kernel listed first, against its
    reference). Where no method recorded a GPU kernel (callables run on the CPU) it says
    so (``NO_KERNELS``) and gives the window alone, the host's time; where some did not,
    a line names them above the table.

    ``breakdowns`` is a list (or tuple) of ``Breakdown``, as ``summarize`` returns; one
    ``Breakdown`` alone is taken as a list of one (its table, with no excess columns).
    ``top`` is an integer >= 1."""
    from handgrad.benchmark import check_count

    if isinstance(breakdowns, Breakdown):
        breakdowns = [breakdowns]
    if not isinstance(breakdowns, Sequence) or isinstance(breakdowns, (str, bytes)):
        raise TypeError("breakdowns: expected a list of Breakdowns (as summarize returns) or "
                        f"one Breakdown, got {type(breakdowns).__name__} {breakdowns!r:.80}")
    if not breakdowns:
        raise ValueError("breakdowns: expected at least one Breakdown, got none")
    for i, b in enumerate(breakdowns):
        _check_breakdown(f"breakdowns[{i}]", b)
    check_count("top", top, 1, "operations listed by name")
    first = breakdowns[0]
    cols = [b.method for b in breakdowns] + [f"{first.method} - {b.method}"
                                             for b in breakdowns[1:]]
    counts = ", ".join(f"{b.method}: {b.calls} calls" for b in breakdowns)
    lines = [f"Mean per call, microseconds ({counts})",
             "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def row(label: str, get: Callable[[Breakdown], float]) -> str:
        vals = [get(b) for b in breakdowns]
        cells = [f"{v:.1f}" for v in vals] + [f"{vals[0] - v:+.1f}" for v in vals[1:]]
        return f"| {label} | " + " | ".join(cells) + " |"

    idle = [b.method for b in breakdowns if b.kernels == 0]
    if len(idle) == len(breakdowns):  # busy 0 and all "idle before the first kernel" said
        # nothing true: there was no GPU work to split
        lines[0:0] = [NO_KERNELS, ""]
        lines += [row("window (the call's time on the host)", lambda b: b.window_us)]
        return "\n".join(lines)
    if idle:
        lines[0:0] = [f"No GPU kernels recorded for {', '.join(idle)}: their window is the "
                      "call's time on the host (the callable ran on the CPU or launched no "
                      "kernel), all of it counted idle before the first kernel", ""]
    lines += [row("window (what CUDA events measure)", lambda b: b.window_us),
              row("GPU busy", lambda b: b.busy_us),
              row("idle before the first kernel", lambda b: b.head_us),
              row("idle between kernels", lambda b: b.gaps_us),
              row("idle after the last kernel", lambda b: b.tail_us),
              row("kernels per call", lambda b: b.kernels)]
    total: dict[str, float] = defaultdict(float)
    for b in breakdowns:
        for op, us in b.by_op.items():
            total[op] += us
    ops = sorted(total, key=lambda op: -total[op])
    for op in ops[:top]:
        lines.append(row(f"`{op}`", lambda b, op=op: b.by_op.get(op, 0.0)))
    if len(ops) > top:
        lines.append(row(f"{len(ops) - top} other operations",
                         lambda b: sum(b.by_op.get(op, 0.0) for op in ops[top:])))
    return "\n".join(lines)


def record(fns: Mapping[str, Callable[[], object]], *, calls: int = 5, warmup: int = 2,
           path: str | Path | None = None, sync: Callable[[], None] | None = None) -> dict:
    """Profile ``calls`` calls of each callable (after ``warmup`` unprofiled ones), each
    in a ``record_function`` range, the device drained before and after it (``sync``,
    default ``torch.cuda.synchronize`` where CUDA is initialised); the Chrome trace as a
    dict, also written to ``path`` when given (open it in Perfetto or chrome://tracing).
    CUDA activity is recorded where CUDA is available, CPU activity always.

    ``warmup=0`` is allowed here, where ``measure`` wants at least one: a trace of the first
    call shows what it pays once (a kernel compiled, memory first reserved), which a timing
    must leave out."""
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from handgrad.benchmark import check_count

    if not isinstance(fns, Mapping) or not fns:
        raise TypeError(f"fns: expected a non-empty mapping of method name to callable, "
                        f"got {fns!r}")
    for name, fn in fns.items():
        if not isinstance(name, str) or ":" in name or not name:
            raise ValueError(f"fns: method names must be non-empty strings without ':', "
                             f"got {name!r}")
        if not callable(fn):
            raise TypeError(f"fns[{name!r}]: expected a callable, got {type(fn).__name__}")
    check_count("calls", calls, 1)
    check_count("warmup", warmup, 0)
    if path is not None:  # checked before anything is profiled
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a file path (a str or Path) or None, got "
                            f"{type(path).__name__} {path!r}")
        folder = Path(path).parent
        if Path(path).is_dir():
            raise ValueError(f"path: expected a file to write the trace to, got the folder "
                             f"{str(path)!r}")
        if not folder.is_dir():
            raise ValueError(f"path: expected a file in an existing folder, got {str(path)!r} "
                             f"(there is no folder {str(folder)!r})")
        if not os.access(folder, os.W_OK) or (Path(path).exists()
                                              and not os.access(path, os.W_OK)):
            raise ValueError(f"path: expected a file this process may write, got "
                             f"{str(path)!r} (it or its folder is not writable)")
    if sync is not None and not callable(sync):
        raise TypeError(f"sync: expected a callable that drains the device (or None, for "
                        f"torch.cuda.synchronize where CUDA is initialised), got "
                        f"{type(sync).__name__} {sync!r}")
    if sync is None:
        def sync() -> None:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    with profile(activities=activities) as prof:
        for name, fn in fns.items():
            for i in range(calls):
                sync()
                with record_function(f"{CALL}:{name}:{i}"):
                    fn()
                sync()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(tmp_path))
        text = tmp_path.read_text()
    if path is not None:
        Path(path).write_text(text)
    return json.loads(text)


# -------------------------------------------------------------------- the gpu_check stage

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m handgrad.benchmark.trace",
        description="Where backprop's time goes against autograd's on a GPU (run from a "
        "handgrad checkout: it builds the benchmark's callables from bench/specs).")
    p.add_argument("--out", required=True,
                   help="folder for trace.md (the tables) and the Chrome traces")
    p.add_argument("--shape", default="3,4096,16384", metavar="L,K,N",
                   help="depth, width and batch (default 3,4096,16384: the GPU claim's)")
    p.add_argument("--dtypes", default="bfloat16,float32", metavar="DT[,DT]",
                   help="torch dtypes (default bfloat16,float32)")
    p.add_argument("--calls", type=int, default=5, help="profiled calls per method")
    p.add_argument("--device", default="cuda", help="default cuda")
    args = p.parse_args(argv)
    import torch

    try:
        L, K, N = (int(v) for v in args.shape.split(","))
    except ValueError:
        p.error(f"--shape: expected L,K,N (three integers), got {args.shape!r}")
    if min(L, K, N) < 1:
        p.error(f"--shape: expected L,K,N (three integers >= 1), got {args.shape!r}")
    if args.calls < 1:
        p.error(f"--calls: expected a count >= 1, got {args.calls}")
    dtypes = []
    for name in (s.strip() for s in args.dtypes.split(",")):
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            p.error(f"--dtypes: expected floating torch dtype names, got {name!r}")
        dtypes.append((name, dt))
    try:
        torch.device(args.device)
    except (RuntimeError, ValueError):
        p.error(f"--device: expected a torch device such as cpu, cuda or cuda:0, got "
                f"{args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("[trace] no CUDA device here", file=sys.stderr)
        return 2
    try:
        from bench.specs.backprop import make_calls
    except ImportError as e:
        p.error(f"run it from a handgrad checkout (bench/specs not importable: {e})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, dt in dtypes:
        fns, _ = make_calls(L, K, N, dt, args.device)
        t = record({"manual": fns["manual"], "torch_autograd": fns["torch_autograd"]},
                   calls=args.calls, path=out / f"backprop-L{L}-K{K}-N{N}-{name}.json")
        parts.append(f"### backprop L={L} K={K} N={N} {name}: manual against torch_autograd"
                     f"\n\n{table(summarize(t))}")
        del fns, t
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    text = "\n\n".join(parts) + "\n"
    (out / "trace.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
