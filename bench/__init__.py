"""The benchmark suite (``pytest bench``): each kernel family beside its torch reference."""

from __future__ import annotations


def slowable_methods() -> dict[str, set[str]]:
    """Per kernel family, every ``extra_info.method`` its benchmarks record: the names
    ``--bench-slow KERNEL.METHOD=FACTOR`` accepts. The machine's own measurements (the
    control and the ceilings) are not slowable."""
    from bench import test_backprop as bb
    from bench import test_counting as bc
    from bench import test_jacobian as bj
    from bench import test_least_squares as bl

    return {
        "backprop": set(bb.ROLES),
        "jacobian": {bj.method_name(m, batched) for m in bj.METHODS
                     for batched in (False, True)},
        "least_squares": {f"gd_{m}" for m in bl.GD_ROLES} | set(bl.MOMENTUM_ROLES),
        "counting": set(bc.ROLES),
    }
