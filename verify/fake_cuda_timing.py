"""A stand-in for ``torch.cuda`` for the timing tests on a CPU (not a test module
itself): a GPU clock that queued work advances, events that read it, and a log of what
the host did."""

from __future__ import annotations


class FakeCuda:
    """torch.cuda as far as handgrad.benchmark.timing uses it: a GPU clock (seconds) that
    work queued by a call advances, events that read it, and a log of what the host did,
    in order."""

    def __init__(self) -> None:
        self.gpu_now = 0.0
        self.log: list[str] = []
        self.allocated = 0
        self.peak = 0

    def Event(self, enable_timing: bool):  # noqa: N802 (torch's name)
        assert enable_timing
        cuda = self

        class _Event:
            def record(self):
                cuda.log.append("record")
                self.t = cuda.gpu_now

            def synchronize(self):
                cuda.log.append("event.synchronize")

            def elapsed_time(self, end):  # milliseconds, as torch's
                return (end.t - self.t) * 1e3

        return _Event()

    def synchronize(self):
        self.log.append("synchronize")

    def work(self, seconds: float, alloc: int = 0) -> None:
        self.log.append("work")
        self.gpu_now += seconds
        self.peak = max(self.peak, self.allocated + alloc)

    # memory
    def reset_peak_memory_stats(self):
        self.peak = self.allocated

    def memory_allocated(self):
        return self.allocated

    def max_memory_allocated(self):
        return self.peak


