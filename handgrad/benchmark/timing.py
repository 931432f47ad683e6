"""How a call is timed, per device: the CPU path (perf_counter around the call) and the GPU
path the best GPU benchmark tools use (Triton's ``do_bench``, NVIDIA's nvbench).

On CUDA, CUDA events are recorded around each call with no host synchronisation inside
the window; the host waits for the end event only after it. pytest-benchmark keeps its
own statistics: it reads ``EventClock`` before and after each call, a clock that stands
still while the call runs and then moves by the GPU time between the two events, so its
per-round data are event times. With ``cold=True`` the L2 is flushed (a buffer larger than
the L2 is zeroed) before each timed call, outside the window.

``peak_bytes`` measures the memory one call allocates at its peak on CUDA. Everything that
touches torch.cuda takes it as an argument, so its logic is tested on a CPU with a fake.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

FLUSH_BYTES = 256 * 2**20  # at least twice the L2 of any current GPU (H100: 50 MB)


class EventClock:
    """A clock for pytest-benchmark: ``now`` moves only when ``advance`` is called."""

    __name__ = "cuda_event"  # how pytest-benchmark's JSON names the timer

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _perf_counter_time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Timing:
    """The timing of one device: ``wrap(fn)`` gives the callable pytest-benchmark times,
    ``time_once(fn)`` the seconds of one call timed the same way (the interleaved
    reference's rounds), ``clock`` the timer pytest-benchmark must read (None: its own)."""

    timer: str  # reports.record.TIMERS
    cache: str  # reports.record.CACHES
    clock: EventClock | None = None
    cuda: object = None  # the torch.cuda module (or a stand-in in tests)
    _flush_buffer: torch.Tensor | None = field(default=None, repr=False)

    def _flush(self) -> None:
        if self.cache == "cold":
            self._flush_buffer.zero_()  # queued before the start event: outside the window

    def _event_seconds(self, fn: Callable[[], object]) -> tuple[float, object]:
        self._flush()
        start = self.cuda.Event(enable_timing=True)
        end = self.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()  # after the window: the host waits for the GPU only here
        return start.elapsed_time(end) / 1e3, out

    def wrap(self, fn: Callable[[], object]) -> Callable[[], object]:
        if self.timer == "perf_counter":
            return finished(fn, self.cuda)

        def run() -> object:
            seconds, out = self._event_seconds(fn)
            self.clock.advance(seconds)
            return out

        return run

    def time_once(self, fn: Callable[[], object]) -> float:
        if self.timer == "perf_counter":
            return _perf_counter_time(finished(fn, self.cuda))
        return self._event_seconds(fn)[0]


def finished(fn: Callable[[], object], cuda) -> Callable[[], object]:
    """``fn`` then a wait for the device (a GPU timed by perf_counter: without it the timer
    measures only the launch; --bench-slow, which spins for a multiple of the call's own
    time); ``fn`` itself on the CPU (``cuda`` None)."""
    if cuda is None:
        return fn

    def run() -> object:
        out = fn()
        cuda.synchronize()
        return out

    return run


def timing_for(device: str, cold: bool = False, cuda=None) -> Timing:
    """CPU: perf_counter, as pytest-benchmark does by itself. CUDA: events (``cold``: L2
    flushed before each call)."""
    if torch.device(device).type != "cuda":
        if cold:
            raise ValueError(f"cold-L2 timing is for CUDA devices; device {device!r} is not")
        return Timing(timer="perf_counter", cache="warm")
    cuda = cuda if cuda is not None else torch.cuda
    flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device) if cold else None
    return Timing(timer="cuda_event", cache="cold" if cold else "warm", clock=EventClock(),
                  cuda=cuda, _flush_buffer=flush)


def peak_bytes(fn: Callable[[], object], device: str, cuda=None) -> int | None:
    """Bytes allocated at the peak of one call of ``fn`` above what was allocated before it:
    CUDA's caching allocator's own count on a GPU, the allocator's event timeline
    (``cpu_peak_bytes``) on the CPU; None on another device."""
    kind = torch.device(device).type
    if kind == "cpu":
        return cpu_peak_bytes(fn)
    if kind != "cuda":
        return None
    return cuda_peak(fn, cuda)[1]


def cuda_peak(make: Callable[[], object], cuda=None) -> tuple[object, int]:
    """``(make(), bytes allocated at its peak above what was allocated before it)``, by
    CUDA's caching allocator's counters, the device finished before and after."""
    cuda = cuda if cuda is not None else torch.cuda
    cuda.synchronize()
    cuda.reset_peak_memory_stats()
    before = cuda.memory_allocated()
    out = make()
    cuda.synchronize()
    return out, int(cuda.max_memory_allocated() - before)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by allocations made during one call of ``fn`` on the CPU, above what
    was allocated before it (what ``torch.cuda.max_memory_allocated`` says on a GPU).

    Read from torch.profiler's memory events (``profile_memory=True``): every allocation
    and free of torch's CPU allocator during the call, in order, summed; the peak of that
    running sum. The raw events (``kineto_results``), not ``FunctionEvent.cpu_memory_usage``,
    which nets each operator's allocations and frees and would hide a temporary. Tensors
    the call returns count (they are allocated during it), as on a GPU.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # in time order; events of one timestamp keep the profiler's order (a stable sort by
    # time alone: sorting by size too would put a free before an allocation)
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
                    key=lambda ev: ev[0])
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return int(peak)


def gpu_info(cuda=None, smi: Callable[[list[str]], str] | None = None) -> dict:
    """What a GPU run records of its machine: name, CUDA version, driver and SM clock where
    they can be read (torch.cuda.clock_rate needs pynvml; the driver comes from nvidia-smi).
    Empty without a GPU."""
    cuda = cuda if cuda is not None else torch.cuda
    if not cuda.is_available():
        return {}
    info = {"gpu": cuda.get_device_name(0), "cuda": torch.version.cuda,
            "gpu_driver": None, "gpu_sm_clock_mhz": None}
    try:
        info["gpu_sm_clock_mhz"] = int(cuda.clock_rate(0))
    except Exception:  # noqa: BLE001 (pynvml absent, or no permission: not recorded)
        pass
    smi = smi or _nvidia_smi
    try:
        info["gpu_driver"] = smi(["--query-gpu=driver_version", "--format=csv,noheader"]
                                 ).splitlines()[0].strip() or None
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return info


def _nvidia_smi(args: list[str]) -> str:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout
