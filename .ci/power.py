#!/usr/bin/env python
"""The gates' measured power: how often they fail unchanged code, and how often they catch
a real regression planted in a kernel's code.

    python .ci/power.py collect --out DIR --runs 20 [--kind time|instructions]
        [--plant copies2] [-k EXPR] [--threads 1]
    python .ci/power.py analyse DIR [--pairs 20] [--thresholds 3%,5%,10%]
        [--runs-per-side 1,2,3] [--calibration-runs 6] [--seed 0]

collect copies this tree twice into DIR (the harness and kernels/ as they are; in the
second, ``--plant`` edits kernels/jacobian.py: a code change, not ``--bench-slow``'s
spin), then runs the benchmark subset (``-k``, default: the eager Jacobian and backprop
kernels at width 30) alternated A/P/A/P, each run a separate process on ``--threads``
torch threads (``handgrad.benchmark.alternate``): ``a-<i>.json`` are the unchanged runs,
``p-<i>.json`` the planted ones. ``--kind instructions`` counts instructions instead
(``--bench-instructions``, two runs at a time, one a core).

analyse draws comparisons from those runs without reusing a run inside one comparison:
an unchanged pair is r A-runs against r other A-runs, a planted pair r A-runs against r
P-runs; each is gated at each threshold as CI gates it (timed:
``handgrad.reports.noise.gate_runs`` with a calibration made from
``--calibration-runs`` other A-runs, held out of the comparison; counts:
``instruction_gate``). A false failure is any REGRESSION in an unchanged pair; a catch is
the planted kernel flagged in a planted pair. Prints a markdown table; pairs drawn from one
pool share runs, so they are not independent: the pool's size is printed beside it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ("handgrad", "bench", "verify", "reports", "kernels", "conftest.py", "pyproject.toml")
DEFAULT_K = "K30 and manual and not compiled and not captured"
FILES = ("bench/test_jacobian.py", "bench/test_backprop.py")

# planted regressions: (file, the kernel they slow, [(anchor, replacement)])
JACOBIAN = "kernels/jacobian.py"


def _tangent_copies(n: int) -> list[tuple[str, str]]:
    """The tangent copied ``n`` times on every hidden layer of the forward-mode Jacobian
    (both layouts): the kind of copy a refactor leaves behind."""
    copy = "t = t" + ".clone()" * n
    return [("                t = torch.mm(w, t)\n                scale_(t, h)\n",
             f"                t = torch.mm(w, t)\n                {copy}\n"
             "                scale_(t, h)\n"),
            ("        t = F.linear(t, w)\n        scale_(t, h)\n",
             f"        t = F.linear(t, w)\n        {copy}\n        scale_(t, h)\n")]


def _recheck(condition: str, what: str) -> list[tuple[str, str]]:
    """A redundant check of every weight against x on each call (what _prepare already
    checked), before the forward-mode Jacobian's first layer."""
    anchor = "    if x.dim() == 1 and widest <= COLUMN_MAX_WIDTH:\n        h = x.view(-1, 1)\n"
    return [(anchor, f"    if any({condition} for w in ws):\n"
                     f"        raise TypeError('weights and x differ in {what}')\n" + anchor)]


PLANTS = {  # measured at K=30, one thread (docs/reports-and-gate.md, "Measured power")
    "clone": (JACOBIAN, "jacobian.manual_forward", _tangent_copies(1)),  # 1.064x
    "copies2": (JACOBIAN, "jacobian.manual_forward", _tangent_copies(2)),  # 1.12x
    "copies": (JACOBIAN, "jacobian.manual_forward", _tangent_copies(3)),  # 1.16-1.23x, 2 threads
    # instruction counts of the smallest call (L=3, K=30, one x): 1.05x and 1.03x
    "recheck": (JACOBIAN, "jacobian.manual_forward",
                _recheck("w.dtype != x.dtype or w.device != x.device", "dtype or device")),
    "redtype": (JACOBIAN, "jacobian.manual_forward", _recheck("w.dtype != x.dtype", "dtype")),
}


def copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in HARNESS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)


def plant(tree: Path, name: str) -> str:
    path, kernel, edits = PLANTS[name]
    target = tree / path
    text = target.read_text()
    for anchor, replacement in edits:
        if text.count(anchor) != 1:
            sys.exit(f"error: --plant {name}: its anchor is not once in {path}; update "
                     f"PLANTS in {__file__}")
        text = text.replace(anchor, replacement)
    target.write_text(text)
    return kernel


def collect(args) -> int:
    out = Path(args.out).resolve()
    a, p = out / "tree-a", out / "tree-p"
    copy_tree(a)
    copy_tree(p)
    kernel = plant(p, args.plant)
    (out / "planted").write_text(f"{args.plant} {kernel}\n")
    pytest_args = [*FILES, "-q", "-p", "no:cacheprovider", "-k", args.k]
    if args.threads and args.kind == "time":
        pytest_args.append(f"--bench-threads={args.threads}")
    if args.kind == "instructions":
        pytest_args.append("--bench-instructions")
        for i in range(1, args.runs + 1):  # a count does not depend on the load: 2 at once
            procs = [subprocess.Popen(
                [sys.executable, "-m", "pytest", *pytest_args, "--benchmark-json",
                 str(out / f"{side}-{i}.json")], cwd=tree, stdout=subprocess.DEVNULL,
                env={**__import__("os").environ, "PYTHONPATH": str(tree)})
                for side, tree in (("a", a), ("p", p))]
            codes = [q.wait() for q in procs]
            if any(codes):
                sys.exit(f"error: instruction run {i} exited {codes}")
            print(f"power: instruction runs {i}/{args.runs} done", flush=True)
        return 0
    from handgrad.benchmark.alternate import alternate

    files = alternate(out, args.runs, a, p, pytest_args)
    for f in files:  # base-i -> a-i, head-i -> p-i
        f.rename(f.with_name(f.name.replace("base-", "a-").replace("head-", "p-")))
    return 0


def _parse_list(text: str, kind):
    return [kind(x) for x in text.split(",") if x.strip()]


def _timed(base, current, threshold, held_out, quantile):
    """The gate as CI runs it: over runs, with a calibration made from ``held_out``
    unchanged runs (none of them in this comparison)."""
    from handgrad.reports import noise as N

    cal = N.noise_from(N.calibrate([str(x) for x in held_out], threshold), "held-out runs")
    return N.gate_runs([str(x) for x in base], [str(x) for x in current], threshold=threshold,
                       noise=cal, quantile=quantile)


def analyse(args) -> int:
    from handgrad.reports import gate as G

    folder = Path(args.folder)
    a = sorted(folder.glob("a-*.json"), key=lambda f: int(f.stem.split("-")[1]))
    p = sorted(folder.glob("p-*.json"), key=lambda f: int(f.stem.split("-")[1]))
    kernel = (folder / "planted").read_text().split()[1]
    counted = G.is_instruction_run(str(a[0]))
    thresholds = _parse_list(args.thresholds, G.parse_threshold)
    rng = random.Random(args.seed)
    print(f"power: {len(a)} unchanged runs, {len(p)} planted ({kernel}); {args.pairs} pairs "
          f"each, drawn from these runs")
    if counted:
        thresholds = _parse_list(args.thresholds or "1%,2%", G.parse_threshold)
        unchanged = [tuple(rng.sample(a, 2)) for _ in range(args.pairs)]
        planted = [(rng.choice(a), rng.choice(p)) for _ in range(args.pairs)]
        print("\n| threshold | false failures | catches | planted change (median) |")
        print("|---|---|---|---|")
        for thr in thresholds:
            false = sum(not G.instruction_gate(str(x), str(y), thr).passed for x, y in unchanged)
            res = [G.instruction_gate(str(x), str(y), thr) for x, y in planted]
            caught = sum(kernel in r.flagged() for r in res)
            ch = sorted(float(r.table[r.table["method"] == kernel.split(".")[1]]["change"].max())
                        for r in res)
            print(f"| {thr:.0%} | {false}/{len(unchanged)} | {caught}/{len(planted)} | "
                  f"{ch[len(ch) // 2]:.4f} |")
        return 0
    print(f"\nEach comparison is calibrated on {args.calibration_runs} other unchanged runs "
          "(held out: not in the comparison).")
    print("\n| runs a side | threshold | quantile | false failures | unchanged inconclusive | "
          "catches | planted inconclusive | planted kernel change (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in _parse_list(args.runs_per_side, int):
        if 2 * r + args.calibration_runs > len(a) or r > len(p):
            print(f"| {r} | | | not enough runs | | | | |")
            continue
        unchanged, planted = [], []
        for _ in range(args.pairs):
            pick = rng.sample(a, 2 * r + args.calibration_runs)
            unchanged.append((pick[:r], pick[r:2 * r], pick[2 * r:]))
            pick = rng.sample(a, r + args.calibration_runs)
            planted.append((pick[:r], rng.sample(p, r), pick[r:]))
        for thr, q in [(t, q) for t in thresholds
                       for q in _parse_list(args.quantiles, float)]:
            u = [_timed(b, c, thr, held, q) for b, c, held in unchanged]
            g = [_timed(b, c, thr, held, q) for b, c, held in planted]
            false = sum(not x.passed for x in u)
            caught = sum(kernel in x.flagged() for x in g)
            und_u = sum(bool(getattr(x, "inconclusive", 0)) for x in u)
            und_p = sum(kernel in getattr(x, "undecided", lambda: set())() for x in g)
            changes = sorted(float(x.kernels[(x.kernels["kernel"] + "." + x.kernels["method"])
                                             == kernel]["change"].iloc[0]) for x in g)
            print(f"| {r} | {thr:.0%} | {q:g} | {false}/{len(u)} | {und_u}/{len(u)} | "
                  f"{caught}/{len(g)} | {und_p}/{len(g)} | {changes[len(changes) // 2]:.3f} |",
                  flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python .ci/power.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--out", required=True)
    c.add_argument("--runs", type=int, default=20)
    c.add_argument("--kind", choices=("time", "instructions"), default="time")
    c.add_argument("--plant", choices=sorted(PLANTS), default="copies2")
    c.add_argument("-k", default=DEFAULT_K)
    c.add_argument("--threads", type=int, default=1,
                   help="torch's CPU thread count in every timed run (--bench-threads; "
                        "default 1, as .ci/gate times; 0: the plugin's, all cores up to 8)")
    an = sub.add_parser("analyse")
    an.add_argument("folder")
    an.add_argument("--pairs", type=int, default=20)
    an.add_argument("--thresholds", default="3%,5%,10%")
    an.add_argument("--runs-per-side", default="1,2,3")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--quantiles", default="0.999",
                    help="noise quantiles of the calibrated limit (gate_runs' quantile)")
    an.add_argument("--calibration-runs", type=int, default=6,
                    help="unchanged runs held out to calibrate each timed comparison")
    args = parser.parse_args(argv)
    return collect(args) if args.command == "collect" else analyse(args)


if __name__ == "__main__":
    sys.exit(main())
