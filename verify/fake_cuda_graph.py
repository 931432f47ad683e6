"""A stand-in for ``torch.cuda`` that records what ``kernels.capture`` asks of it (not a
test module itself), for the capture tests on a CPU."""

from __future__ import annotations


class FakeCuda:
    """torch.cuda's graph API, recording what capture does with it (no GPU needed): a
    graph 'records' by noting which call happened inside it; replay counts."""

    def __init__(self):
        self.log = []
        self.recording = False
        fake = self

        class Stream:
            def wait_stream(self, other):
                fake.log.append(("wait", self.name, other.name))

        self._side, self._current = Stream(), Stream()
        self._side.name, self._current.name = "side", "current"

        class CUDAGraph:
            def replay(self):
                fake.log.append("replay")

        self.CUDAGraph = CUDAGraph

    def Stream(self):
        return self._side

    def current_stream(self):
        return self._current

    def stream(self, s):
        fake = self

        class Ctx:
            def __enter__(self):
                fake.log.append(("enter", s.name))

            def __exit__(self, *exc):
                fake.log.append(("exit", s.name))

        return Ctx()

    def graph(self, g):
        fake = self

        class Ctx:
            def __enter__(self):
                fake.log.append("record")
                fake.recording = True

            def __exit__(self, *exc):
                fake.recording = False

        return Ctx()


