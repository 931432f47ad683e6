"""The benchmark suite (``pytest bench``): each kernel family beside its torch reference.
The families' specs are data in ``bench/specs/``; the benchmarks are ``bench/test_*.py``."""

from __future__ import annotations


def slowable_methods() -> dict[str, set[str]]:
    """Per kernel family, every ``extra_info.method`` its benchmarks record: the names
    ``--bench-slow KERNEL.METHOD=FACTOR`` accepts, read from the specs (``bench/specs``).
    The machine's own measurements (the control and the ceilings) are not slowable."""
    from bench.specs import families

    names: dict[str, set[str]] = {}
    for family in families():
        names.setdefault(family.kernel, set()).update(family.recorded_methods())
    return names
