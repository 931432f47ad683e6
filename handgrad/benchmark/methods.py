"""One spec shape for a kernel family's benchmarks, and one driver that builds each
method's callable, eager, compiled or captured, beside its reference's.

A family is data: a ``Family`` names the kernel family and maps each benchmarked method
to a ``Method`` (its role, the method it is timed against, how its callable is built and
from which of the case's eager callables). A benchmark builds the eager callables of one
case by name and asks ``peers`` for what ``measure`` takes::

    FAMILY = Family("softplus", {
        "manual": Method("kernel", reference="torch_autograd"),
        "torch_autograd": Method("reference"),
        "manual_compiled": Method("kernel", reference="torch_compiled",
                                  build="compiled", source="manual"),
        "torch_compiled": Method("reference", build="compiled", source="torch_autograd"),
    })

    @pytest.mark.parametrize("method", method_params(FAMILY))
    def test_softplus(measure, method, device):
        calls = {"manual": ..., "torch_autograd": ...}  # the case's eager callables
        p = peers(FAMILY, method, calls, device)
        measure(**p.measure_kwargs(), group=..., shape=..., device=device, dtype=...)

``peers`` does the branching every family used to copy: an eager method runs its
callable; a compiled one is ``torch.compile``d (``handgrad.benchmark.compiled``; Dynamo's
caches reset first; a kernel compiles whole, ``fullgraph=True``) and meets its compiled
reference; a captured one (CUDA graphs, GPU only) replays its eager callable and meets the
compiled reference, or that reference's eager callable where torch cannot compile it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pytest

from handgrad.benchmark.compiled import CAPTURE_MODE, capture_call, compile_call, peak_while, reset
from handgrad.reports.record import ROLES

BUILDS = ("eager", "compiled", "captured")


@dataclass(frozen=True)
class Method:
    """One benchmarked method. ``role``: "kernel" (what a gate judges) or "reference".
    ``reference``: the method of the same family it is timed interleaved with and judged
    against; None: it names itself (a reference, or a kernel with no peer). ``build``:
    "eager", "compiled" (torch.compile) or "captured" (a CUDA graph replay). ``source``:
    the case's eager callable it runs or builds on (default: its own name)."""

    role: str
    reference: str | None = None
    build: str = "eager"
    source: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Method role: expected one of {ROLES}, got {self.role!r}")
        if self.build not in BUILDS:
            raise ValueError(f"Method build: expected one of {BUILDS}, got {self.build!r}")
        if self.build != "eager" and self.source is None:
            raise ValueError(f"Method source: a {self.build} method names the eager callable "
                             "it builds on, got None")


@dataclass(frozen=True)
class Family:
    """A kernel family's benchmarked methods. ``label(method)``: the names a method's
    records may carry (a case can rename one, e.g. a batched variant); default: its own.
    ``compile_mode``: the torch.compile mode of its compiled methods where the device's
    (``handgrad.benchmark.compiled.compile_mode``) does not fit them."""

    kernel: str
    methods: Mapping[str, Method]
    label: Callable[[str], Iterable[str]] = field(default=lambda m: (m,))
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, str):
            raise TypeError(f"Family kernel: expected a name (str), got "
                            f"{type(self.kernel).__name__}")
        if not self.kernel:
            raise ValueError("Family kernel: expected a non-empty name, got ''")
        for name, m in self.methods.items():
            if not isinstance(m, Method):
                raise TypeError(f"Family {self.kernel} method {name!r}: expected a Method, "
                                f"got {type(m).__name__}")
            if m.reference is None:
                continue
            ref = self.methods.get(m.reference)
            if ref is None:
                raise ValueError(f"Family {self.kernel} method {name!r}: its reference "
                                 f"{m.reference!r} is not one of the family's methods")
            if ref.role != "reference":
                raise ValueError(f"Family {self.kernel} method {name!r}: its reference "
                                 f"{m.reference!r} has role {ref.role!r}, expected 'reference'")
            want = "eager" if m.build == "eager" else "compiled"  # captured meets compiled
            got = ref.build
            if got != want:
                raise ValueError(
                    f"Family {self.kernel} method {name!r} ({m.build}): expected a {want} "
                    f"reference, got {m.reference!r} ({got})")

    def one_label(self, method: str) -> str:
        """The name ``method`` is recorded under where the family gives it one only."""
        names = tuple(self.label(method))
        if len(names) != 1:
            raise ValueError(f"Family {self.kernel} method {method!r}: recorded as any of "
                             f"{names}; expected the case to say which (peers' label)")
        return names[0]

    def recorded_methods(self) -> set[str]:
        """Every name this family's records may carry as ``method``."""
        return {name for m in self.methods for name in self.label(m)}


def method_params(family: Family) -> list:
    """pytest params of the family's methods: eager and captured ones in every grid,
    compiled ones (a compile is tens of seconds per graph on 2 cores) in the full grid
    (and the gpu grid, whose params carry its own marker). A reference's param is marked
    ``reference_role`` (skipped at collection under --bench-kernels-only), a captured one
    ``captured`` (skipped at collection off CUDA): each before its case is set up."""
    def marks(m: Method) -> list:
        return ([pytest.mark.full] if m.build == "compiled" else []) + (
            [pytest.mark.captured] if m.build == "captured" else []) + (
            [pytest.mark.reference_role] if m.role == "reference" else [])

    return [pytest.param(name, marks=marks(m)) for name, m in family.methods.items()]


@dataclass
class Peers:
    """What one benchmark times: the method's callable and its reference's, built."""

    kernel: str
    method: str
    role: str
    fn: Callable[[], object]
    reference: str
    reference_fn: Callable[[], object] | None
    peak: int | None = None
    reference_peak: int | None = None
    compiled: dict = field(default_factory=dict)

    def measure_kwargs(self) -> dict:
        """``measure``'s arguments that the spec decides (the rest are the case's)."""
        return dict(fn=self.fn, reference_fn=self.reference_fn, peak=self.peak,
                    reference_peak=self.reference_peak, kernel=self.kernel,
                    method=self.method, reference=self.reference, role=self.role,
                    **self.compiled)


_SPEC = object()


def peers(family: Family, method: str, calls: Mapping[str, Callable[[], object]],
          device: str, *, label: Callable[[str], str] | None = None, reference=_SPEC,
          mode: str | None = None) -> Peers:
    """Build ``method``'s callable and its reference's from the case's eager ``calls``.

    ``label(name)``: the name a method is recorded (and compiled) under in this case;
    default: the family's one name for it. ``reference``: this case's reference where it
    differs from the spec's (None: the method names itself). ``mode``: the compile mode
    (``compile_call``); default: the family's, else the device's."""
    if label is None:
        label = family.one_label
    mode = mode or family.compile_mode
    if method not in family.methods:
        raise ValueError(f"{family.kernel}: method expected one of "
                         f"{sorted(family.methods)}, got {method!r}")
    m = family.methods[method]
    ref = m.reference if reference is _SPEC else reference
    if ref == method:
        ref = None
    if ref is not None and ref not in family.methods:
        raise ValueError(f"{family.kernel}: reference expected one of "
                         f"{sorted(family.methods)}, got {ref!r}")

    def source(name: str) -> Callable[[], object]:
        return calls[family.methods[name].source or name]

    out = Peers(kernel=family.kernel, method=label(method), role=m.role, fn=None,
                reference=label(ref or method), reference_fn=None)
    if m.build == "captured":
        out.fn, capture_s, out.peak = capture_call(source(method), device, name=label(method))
        out.compiled = {"compile_mode": CAPTURE_MODE, "compile_s": capture_s}
        if ref is not None:
            reset()
            try:
                (out.reference_fn, _, _), out.reference_peak = peak_while(
                    lambda: compile_call(source(ref), device, name=label(ref), mode=mode),
                    device)
            except pytest.skip.Exception:  # torch cannot compile it (vmap(jacfwd), torch
                eager = family.methods[ref].source or ref  # 2.11): the replay meets
                out.reference_fn, out.reference = calls[eager], label(eager)  # the eager call
    elif m.build == "compiled":
        reset()
        out.fn, compile_s, used = compile_call(source(method), device, name=label(method),
                                               fullgraph=m.role == "kernel", mode=mode)
        out.compiled = {"compile_mode": used, "compile_s": compile_s}
        if ref is not None:
            out.reference_fn, _, _ = compile_call(source(ref), device, name=label(ref),
                                                  mode=mode)
    else:
        out.fn = source(method)
        out.reference_fn = None if ref is None else source(ref)
    return out
