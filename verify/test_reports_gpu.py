"""`python -m handgrad.reports render` on the real H100 runs in ../shared/gpu-h100 (schema 1,
read as they are, gzip-compressed): CPU vs GPU, runs told apart, disturbed benchmarks flagged,
readable figures, the roofline's measured roofs, peak memory, and what a file lacks.

Every expectation is computed here from the JSON by hand, never by the code under test.
Figures are inspected by capturing each one where ``reports.figures._save`` writes it."""

from __future__ import annotations

import copy
import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from handgrad.reports.__main__ import main
from verify.runs import (
    as_schema2,  # one conversion to today's layout
    captured,
)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "gpu-h100"
FIX = Path(__file__).resolve().parent / "fixtures"
CPU, GPU = "bench_default_cpu16", "bench_default_cuda"
# handgrad's methods in those files (schema 1 has no owner field), written out here
HANDGRAD = {"manual", "manual_forward", "manual_reverse", "gd_closed_form", "gd_loop",
            "momentum_form1", "momentum_form2", "count_model"}
SHAPE_KEYS = ("L", "D", "K", "P", "N", "k", "model")


def h100(name: str) -> Path:
    path = SHARED / f"{name}.json.gz"
    if not path.is_file():
        pytest.skip(f"{path} is not beside the checkout")
    return path


def load(name: str) -> dict:
    return json.loads(gzip.decompress(h100(name).read_bytes()))


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def label(data: dict, file: str) -> str:
    info = data["machine_info"]
    return f"{info['node']} ({info['gpu']}) · {file}"


def key(b: dict) -> tuple:
    e = b["extra_info"]
    return (e["kernel"], e["method"], e["dtype"], *(e.get(k) for k in SHAPE_KEYS))


def _norm(v):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return int(v) if isinstance(v, float) and v.is_integer() else v


def csv_key(r) -> tuple:
    return (r["kernel"], r["method"], r["dtype"], *(_norm(r[k]) for k in SHAPE_KEYS))


def md_table(md: str, header_start: str) -> list[dict]:
    """The rows of the first markdown table whose header starts with ``header_start``."""
    lines = md.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    head = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def ref_of(data: dict, b: dict) -> dict:
    """The reference's own benchmark: the same group, the method b names as reference."""
    return next(x for x in data["benchmarks"] if x["group"] == b["group"]
                and x["extra_info"]["method"] == b["extra_info"]["reference"])




def render(out: Path, *paths) -> tuple[dict, str]:
    with captured() as shown:
        assert main(["render", *map(str, paths), "--out", str(out)]) == 0
    return shown, (out / "report.md").read_text()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The CPU and the GPU run of the same machine, rendered once (gzip read directly)."""
    out = tmp_path_factory.mktemp("pair")
    shown, md = render(out, h100(CPU), h100(GPU))
    return out, shown, md


def speedups_by_hand() -> dict:
    cpu, gpu = load(CPU), load(GPU)
    on_gpu = {key(b): b for b in gpu["benchmarks"]}
    return {key(b): b["stats"]["median"] / on_gpu[key(b)]["stats"]["median"]
            for b in cpu["benchmarks"] if key(b) in on_gpu}


def sizes_by_hand() -> dict:
    """Problem size of a shape: the largest flops of any benchmark of that kernel, dtype
    and shape, in either file."""
    size = {}
    for data in (load(CPU), load(GPU)):
        for b in data["benchmarks"]:
            k = key(b)
            shape = (k[0], *k[2:])
            size[shape] = max(size.get(shape, 0), b["extra_info"]["flops"])
    return size


# ------------------------------------------------------------------- reading the files


def test_gzip_is_read_by_suffix_and_by_magic_bytes(tmp_path, capsys):
    import handgrad.reports.load as load_mod

    gz = h100(GPU)
    plain = tmp_path / "cuda.json"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    disguised = tmp_path / "cuda_gz_named.json"  # gzip bytes under a .json name
    shutil.copy(gz, disguised)
    a = load_mod.load_benchmarks([gz])
    b = load_mod.load_benchmarks([disguised])
    c = load_mod.load_benchmarks([plain])
    assert len(a) == len(b) == len(c) == len(load(GPU)["benchmarks"])
    assert list(a["median"]) == list(c["median"]) == list(b["median"])
    # a .gz that is not gzip: one line, exit 2
    bad = tmp_path / "broken.json.gz"
    bad.write_text('{"benchmarks": []}')
    assert main(["render", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "not valid gzip" in err
    assert str(bad) in err


# ----------------------------------------------------------------------- 1. CPU vs GPU


def test_cpu_vs_gpu_speedup_per_method_and_shape(pair):
    out, _, md = pair
    assert "## CPU vs GPU" in md
    want = speedups_by_hand()
    assert len(want) == 106  # the same grid on both devices
    csv = pd.read_csv(out / "cpu_vs_gpu.csv")
    got = {csv_key(r): r["speedup"] for _, r in csv.iterrows()}
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-12), k
    # the course's question: forward and reverse mode at L = 3, 5, 10 on both devices
    for method in ("manual_forward", "manual_reverse"):
        depths = {k[3] for k in got if k[1] == method}
        assert depths == {3, 5, 10}, method


def test_cpu_vs_gpu_names_the_crossover_per_method(pair):
    out, shown, md = pair
    want = speedups_by_hand()
    size = sizes_by_hand()
    rows = {(r["kernel"], r["method"]): r
            for r in md_table(md, "| kernel | role | method | dtype | shapes |")}
    titles = {ax.get_title().split(" (")[0]: ax for ax in shown["cpu_vs_gpu.png"].axes
              if ax.get_title()}
    methods = {(k[0], k[1]) for k in want}
    assert set(rows) == methods
    for kernel, method in methods:
        pts = sorted((size[(k[0], *k[2:])], s) for k, s in want.items()
                     if k[:2] == (kernel, method))
        faster = [x for x, s in pts if s > 1]
        row = rows[kernel, method]
        if not faster:
            assert row["crossover"] == row["faster_from"] == "never within the grid"
        else:
            assert row["crossover"].startswith(f"{min(faster):.3g} FLOP ("), row
        # faster at every larger size from: the shortest all-faster tail
        tail = [x for i, (x, _) in enumerate(pts) if all(s > 1 for _, s in pts[i:])]
        if faster and tail:
            assert row["faster_from"].startswith(f"{tail[0]:.3g} FLOP ("), row
        elif faster:
            assert row["faster_from"] == "not at the largest size"
        if method not in HANDGRAD:
            continue
        ax = titles[f"{kernel}.{method}"]  # a panel per handgrad method says it too
        vlines = [line for line in ax.get_lines() if line.get_gid() == "crossover"]
        if faster:
            assert f"GPU first faster at {min(faster):.3g} FLOP" in ax.get_title()
            assert [line.get_xdata()[0] for line in vlines] == [pytest.approx(min(faster))]
        else:
            assert "GPU never faster within the grid" in ax.get_title() and not vlines
    # the real H100 result: the batched K=1024 Jacobians win, closed-form GD never does
    assert rows["least_squares", "gd_closed_form"]["crossover"] == "never within the grid"
    assert "K=1024" in rows["jacobian", "manual_forward"]["faster_from"]


def test_cpu_vs_gpu_figure_plots_time_against_problem_size(pair):
    _, shown, md = pair
    cpu, gpu = load(CPU), load(GPU)
    size = sizes_by_hand()
    fig = shown["cpu_vs_gpu.png"]
    ax = next(a for a in fig.axes if a.get_title().startswith("jacobian.manual_reverse "))
    for side, data in (("cpu", cpu), ("gpu", gpu)):
        line, = [x for x in ax.get_lines() if x.get_gid() == f"kernel {side}"]
        want = sorted((size[(k[0], *k[2:])], b["stats"]["median"] * 1e3)
                      for b in data["benchmarks"] if (k := key(b))[1] == "manual_reverse")
        got = sorted(zip(line.get_xdata(), line.get_ydata()))
        assert np.allclose(got, want, rtol=1e-12)
        assert line.get_linestyle() == "None"  # points: neighbouring sizes are unlike shapes
        # its reference on each shape (torch.func.jacrev, or its vmap when batched)
        ref, = [x for x in ax.get_lines() if x.get_gid() == f"reference {side}"]
        want = sorted((size[(k[0], *k[2:])], ref_of(data, b)["stats"]["median"] * 1e3)
                      for b in data["benchmarks"] if (k := key(b))[1] == "manual_reverse")
        assert np.allclose(sorted(zip(ref.get_xdata(), ref.get_ydata())), want)
    assert "Problem size is the analytic FLOP count of one call of the costliest method" in md
    assert "![CPU vs GPU](cpu_vs_gpu.png)" in md


def test_cpu_vs_gpu_jacobian_forward_and_reverse_against_depth(pair):
    _, shown, md = pair
    fig = shown["cpu_vs_gpu_jacobian.png"]
    ax = next(a for a in fig.axes if a.get_title() == "K=30, N=1")
    for side, name in (("cpu", CPU), ("gpu", GPU)):
        for method in ("manual_forward", "manual_reverse"):
            line, = [x for x in ax.get_lines() if x.get_gid() == f"{method} {side}"]
            want = sorted((b["extra_info"]["L"], b["stats"]["median"] * 1e3)
                          for b in load(name)["benchmarks"]
                          if b["extra_info"]["method"] == method
                          and b["extra_info"]["K"] == 30 and b["extra_info"]["N"] == 1)
            assert [L for L, _ in want] == [3, 5, 10]
            assert np.allclose(list(zip(line.get_xdata(), line.get_ydata())), want)
    assert "](cpu_vs_gpu_jacobian.png)" in md


def test_a_crossover_at_a_methods_only_shape_is_drawn(tmp_path):
    """Momentum has one shape: both forms made 100x faster on the GPU, the crossover is
    that shape, drawn on a sensible axis (a decade around it; no singular-limits warning,
    which the test configuration turns into an error)."""
    gpu = load(GPU)
    forms = ("momentum_form1", "momentum_form2")
    for b in gpu["benchmarks"]:
        if b["extra_info"]["method"] in forms:
            b["stats"]["data"] = [t / 100 for t in b["stats"]["data"]]
            b["stats"]["median"] /= 100
            b["extra_info"].pop("reference_data")
    cpu = {b["extra_info"]["method"]: b["stats"]["median"] for b in load(CPU)["benchmarks"]}
    group, = {b["group"] for b in gpu["benchmarks"] if b["extra_info"]["method"] in forms}
    size = max(x["extra_info"]["flops"] for x in gpu["benchmarks"] if x["group"] == group)
    shown, _ = render(tmp_path, h100(CPU), write(tmp_path, "fast.json", gpu))
    for form in forms:
        b = next(x for x in gpu["benchmarks"] if x["extra_info"]["method"] == form)
        assert cpu[form] / b["stats"]["median"] > 1
        ax = next(a for a in shown["cpu_vs_gpu.png"].axes
                  if a.get_title().startswith(f"least_squares.{form} "))
        assert f"GPU first faster at {size:.3g} FLOP and above" in ax.get_title()
        lo, hi = ax.get_xlim()
        assert lo < size < hi and hi / lo > 5


def test_one_device_has_no_cpu_vs_gpu_section(tmp_path):
    shown, md = render(tmp_path, h100(GPU))
    assert "CPU vs GPU" not in md and "cpu_vs_gpu.png" not in shown
    assert not (tmp_path / "cpu_vs_gpu.csv").exists()


def test_the_report_shows_no_nan_and_says_where_it_is(pair, tmp_path, capsys):
    _, _, md = pair
    assert not re.search(r"\bnan\b", md, re.IGNORECASE)
    # progress lines, the CPU vs GPU step included
    main(["render", str(h100(CPU)), str(h100(GPU)), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert re.search(r"\[(\d+)/\1\] rendering CPU vs GPU", err), err


# -------------------------------------------------------------------- 2a. runs apart


def test_two_runs_of_one_machine_are_told_apart(tmp_path):
    a, b = load("gate_cuda_A"), load("gate_cuda_B")
    assert a["machine_info"] == b["machine_info"]  # the same machine: only the file differs
    shown, md = render(tmp_path, h100("gate_cuda_A"), h100("gate_cuda_B"))
    csv = pd.read_csv(tmp_path / "summary.csv")
    runs = {label(a, "gate_cuda_A.json.gz"): a, label(b, "gate_cuda_B.json.gz"): b}
    assert set(csv["run"]) == set(runs)
    for run, data in runs.items():
        mine = csv[csv["run"] == run]
        assert len(mine) == len(data["benchmarks"])  # each benchmark once per run
        assert f"`{run}`" in md
    # one line per run, panel and method, never zigzagging between runs
    fig = shown["jacobian_time_vs_L.png"]
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    for line in lines:
        assert np.all(np.diff(line.get_xdata()) > 0), line.get_label()
    # the Jacobian mode figure: a panel per run
    modes = shown["jacobian_modes_model_vs_measured.png"]
    assert sorted(ax.get_title() for ax in modes.axes) == sorted(
        f"{r.split(' · ')[0]}\n{r.split(' · ')[1]} · cuda" for r in runs)
    for run, data in runs.items():
        depths = {}
        for x in data["benchmarks"]:
            e = x["extra_info"]
            if e["kernel"] == "jacobian":
                depths.setdefault((e["K"], e["N"], e["method"]), set()).add(e["L"])
        want = sum(len(d) > 1 for d in depths.values())
        got = [line for line in lines if line.get_gid() == f"{run} | cuda"
               and len(line.get_xdata()) > 1]
        assert len(got) == want and want > 0


def test_a_file_given_twice_is_refused(tmp_path, capsys):
    gz = h100("gate_cuda_A")
    out = tmp_path / "out"
    assert main(["render", str(gz), str(gz), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "given twice" in err
    assert str(gz) in err and not out.exists()
    # the same run under another name (decompressed beside it)
    plain = tmp_path / "gate_cuda_A.json"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    assert main(["render", str(gz), str(plain), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds the same run as" in err and str(plain) in err and "\n" not in err


def test_files_of_the_same_name_get_distinct_run_labels(tmp_path):
    for folder, src in (("a", "bench_run1.json"), ("b", "bench_run2.json")):
        (tmp_path / folder).mkdir()
        shutil.copy(FIX / src, tmp_path / folder / "bench.json")
    render(tmp_path / "out", tmp_path / "a" / "bench.json", tmp_path / "b" / "bench.json")
    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    node = json.loads((FIX / "bench_run1.json").read_text())["machine_info"]["node"]
    assert set(csv["run"]) == {f"{node} · a/bench.json", f"{node} · b/bench.json"}


# -------------------------------------------------------------- 2b. disturbed flagged


def disturbed_by_hand(data: dict) -> set:
    """(method, L, K, N) of every benchmark the rule flags, computed from the JSON."""
    flagged = set()
    for b in data["benchmarks"]:
        e = b["extra_info"]
        shape = (e.get("L"), e.get("K"), e.get("N"))
        if e.get("reference_data"):
            ref = ref_of(data, b)
            moved = np.median(e["reference_data"]) / ref["stats"]["median"]
            ratio = np.median(np.divide(b["stats"]["data"], e["reference_data"]))
            if not 0.5 <= moved <= 2:
                flagged |= {(e["method"], *shape), (e["reference"], *shape)}
            elif not 1 / 20 <= ratio <= 20:
                flagged.add((e["method"], *shape))
    return flagged


def flagged_rows(csv: pd.DataFrame) -> set:
    if "disturbed" not in csv.columns:
        return set()
    hit = csv[csv["disturbed"].notna() & (csv["disturbed"] != "")]
    return {(r["method"], *(_norm(r[k]) for k in ("L", "K", "N"))) for _, r in hit.iterrows()}


def test_real_runs_are_not_flagged(pair):
    out, _, md = pair
    csv = pd.read_csv(out / "summary.csv")
    assert disturbed_by_hand(load(CPU)) == disturbed_by_hand(load(GPU)) == set()
    assert flagged_rows(csv) == set()
    assert "No benchmark is flagged." in md


def test_a_disturbed_reference_is_flagged(tmp_path):
    data = load(GPU)
    group = "jacobian L=5 K=30 N=1 cuda"
    hit = [b for b in data["benchmarks"]
           if b["group"] == group and b["extra_info"].get("reference_data")]
    assert len(hit) == 2  # forward and reverse mode, each against its own reference
    b = hit[0]
    b["extra_info"]["reference_data"] = [t * 10 for t in b["extra_info"]["reference_data"]]
    path = write(tmp_path, "disturbed.json", data)
    want = disturbed_by_hand(data)
    e = b["extra_info"]
    assert want == {(e["method"], 5, 30, 1), (e["reference"], 5, 30, 1)}
    _, md = render(tmp_path / "out", path, h100(CPU))
    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert flagged_rows(csv) == want
    why, = csv.loc[(csv["method"] == e["method"]) & (csv["L"] == 5) & (csv["K"] == 30)
                   & (csv["N"] == 1) & (csv["device"] == "cuda"), "disturbed"]
    moved = np.median(e["reference_data"]) / ref_of(data, b)["stats"]["median"]
    assert f"{moved:.3g}x" in why
    assert "**2 benchmark(s) are flagged**" in md and "differ by more than 2x" in md
    # the CPU vs GPU speedup of that shape carries the flag too
    sp = pd.read_csv(tmp_path / "out" / "cpu_vs_gpu.csv")
    flagged = sp[sp["disturbed"].notna() & (sp["disturbed"] != "")]
    assert {(r["method"], r["L"], r["K"], r["N"]) for _, r in flagged.iterrows()} == want
    assert all(s.startswith("gpu: ") for s in flagged["disturbed"])


def test_a_reference_faster_in_its_rounds_is_flagged_too(tmp_path):
    """The rule is two-sided: interleaved rounds 10x faster than the reference's own."""
    from handgrad.reports.load import load_benchmarks
    from handgrad.reports.tables import summary

    data = load(GPU)
    b = next(x for x in data["benchmarks"] if x["group"] == "backprop L=5 K=256 N=256 cuda"
             and x["extra_info"].get("reference_data"))
    b["extra_info"]["reference_data"] = [t / 10 for t in b["extra_info"]["reference_data"]]
    want = disturbed_by_hand(data)
    assert want == {("manual", 5, 256, 256), ("torch_autograd", 5, 256, 256)}
    table = summary(load_benchmarks([write(tmp_path, "fast_ref.json", data)]))
    assert flagged_rows(table) == want


def test_an_implausible_ratio_is_flagged(tmp_path):
    data = load(GPU)
    b = next(x for x in data["benchmarks"] if x["extra_info"]["method"] == "manual"
             and x["extra_info"]["L"] == 3 and x["extra_info"]["K"] == 64)
    del b["extra_info"]["reference_data"]  # by medians: no rounds to compare
    b["stats"]["data"] = [t * 0.005 for t in b["stats"]["data"]]
    b["stats"]["median"] *= 0.005
    ratio = b["stats"]["median"] / ref_of(data, b)["stats"]["median"]
    assert ratio < 1 / 20
    _, md = render(tmp_path, write(tmp_path, "odd.json", data))
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert flagged_rows(csv) == {("manual", 3, 64, 256)}
    assert csv["disturbed"].dropna().tolist() == [f"ratio {ratio:.3g} implausible"]


def test_the_disturbed_factor_is_the_gates():
    from handgrad.reports import gate, record, tables

    # one definition, read by the table's flag and the gate's rule
    assert tables.DISTURBED is record.DISTURBED and gate.DISTURBED is record.DISTURBED


# ------------------------------------------------------------------ 2c-2f. figures


def test_a_panel_with_one_depth_is_a_point_chart(pair):
    _, shown, _ = pair
    fig = shown["jacobian_time_vs_L.png"]
    for device, name in (("cpu", CPU), ("cuda", GPU)):
        single = [ax for ax in fig.axes if f"· {device}\nK=1024, N=1024" in ax.get_title()]
        assert len(single) == 1
        ax, = single
        want = {b["extra_info"]["method"] for b in load(name)["benchmarks"]
                if b["extra_info"]["kernel"] == "jacobian" and b["extra_info"]["K"] == 1024
                and b["extra_info"]["N"] == 1024}
        assert {b["extra_info"]["L"] for b in load(name)["benchmarks"]
                if b["extra_info"].get("K") == 1024 and b["extra_info"].get("N") == 1024} == {3}
        assert all(line.get_linestyle() == "None" for line in ax.get_lines())
        assert {t.get_text() for t in ax.get_xticklabels()} == want
        lo, hi = ax.get_xlim()
        assert hi - lo >= len(want) - 1  # a point per method, not 2.85 to 3.15
        assert "L=3 only" in ax.get_title()
    # no panel of any depth figure has a degenerate axis
    for name in ("jacobian_time_vs_L.png", "backprop_time_vs_L.png"):
        for ax in shown[name].axes:
            lo, hi = ax.get_xlim()
            assert hi - lo >= 1, ax.get_title()


@pytest.mark.parametrize("name", ["jacobian_time_vs_L.png", "backprop_time_vs_L.png"])
def test_handgrad_kernels_stand_apart_from_references(pair, name):
    _, shown, _ = pair
    fig = shown[name]
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    ours = [x for x in lines if x.get_label() in HANDGRAD]
    theirs = [x for x in lines if x.get_label() not in HANDGRAD]
    assert ours and theirs
    for x in ours:
        assert x.get_linewidth() >= 2 and x.get_markerfacecolor() != "none"
        if len(x.get_xdata()) > 1:
            assert x.get_linestyle() == "-"
    for x in theirs:
        assert x.get_linewidth() <= 1.2 and x.get_markerfacecolor() == "none"
        if len(x.get_xdata()) > 1:
            assert x.get_linestyle() == "--"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("kernel (") for t in legend)
    assert any(t.startswith("reference (") for t in legend)


def test_compiled_peers_keep_a_colour_per_method(tmp_path):
    """With compiled peers a kernel has more than 10 methods: each keeps its own colour."""
    data = as_schema2(load(GPU))
    peers = []
    for b in data["benchmarks"]:
        if b["extra_info"]["kernel"] == "jacobian":
            c = copy.deepcopy(b)
            e = c["extra_info"]
            e["method"] += "_compiled"
            e["reference"] += "_compiled"
            e.update(compile_mode="reduce-overhead", compile_s=3.0)
            c["name"] += "-compiled"
            peers.append(c)
    data["benchmarks"] += peers
    methods = {b["extra_info"]["method"] for b in data["benchmarks"]
               if b["extra_info"]["kernel"] == "jacobian"}
    assert len(methods) > 10
    shown, _ = render(tmp_path, write(tmp_path, "peers.json", data))
    colour = {}
    for ax in shown["jacobian_time_vs_L.png"].axes:
        for line in ax.get_lines():
            colour.setdefault(line.get_label(), set()).add(str(line.get_color()))
    assert set(colour) == methods
    assert all(len(c) == 1 for c in colour.values())  # one colour per method throughout
    assert len({next(iter(c)) for c in colour.values()}) == len(methods)  # none shared


def _glyph(h) -> tuple:
    face = h.get_markerfacecolor()
    return (h.get_marker(), h.get_linestyle(), round(h.get_linewidth(), 2),
            str(h.get_color()), "hollow" if face == "none" else str(face))


def test_jacobian_mode_legend_glyphs_are_distinct(pair):
    _, shown, _ = pair
    fig = shown["jacobian_modes_model_vs_measured.png"]
    leg = fig.legends[0]
    entries = {t.get_text(): _glyph(h) for t, h in zip(leg.get_texts(), leg.legend_handles)
               if t.get_text().strip()}
    assert {"width K = 30", "filled: batched (N > 1)", "hollow: single x (N = 1)"} <= set(
        entries)
    assert len(set(entries.values())) == len(entries), entries
    assert entries["width K = 30"] != entries["filled: batched (N > 1)"]


def with_bfloat16(data: dict) -> dict:
    """A copy where every Jacobian and backprop benchmark is timed in bfloat16 too."""
    extra = []
    for b in data["benchmarks"]:
        if b["extra_info"]["kernel"] in ("jacobian", "backprop"):
            c = copy.deepcopy(b)
            c["group"] += " bfloat16"
            c["name"] += "-bf16"
            c["extra_info"]["dtype"] = "bfloat16"
            c["stats"]["data"] = [t * 0.6 for t in c["stats"]["data"]]
            c["stats"]["median"] *= 0.6
            extra.append(c)
    data["benchmarks"] += extra
    return data


def test_two_dtypes_of_one_shape_are_never_one_line(tmp_path):
    """The GPU grid times one shape in several dtypes: a line or a panel per dtype."""
    shown, _ = render(tmp_path, write(tmp_path, "cpu.json", with_bfloat16(load(CPU))),
                      write(tmp_path, "gpu.json", with_bfloat16(load(GPU))))
    for name in ("jacobian_time_vs_L.png", "backprop_time_vs_L.png",
                 "cpu_vs_gpu_jacobian.png"):
        lines = [x for ax in shown[name].axes for x in ax.get_lines()]
        assert lines and all(np.all(np.diff(x.get_xdata()) > 0) for x in lines), name
        titles = [ax.get_title() for ax in shown[name].axes]
        assert any("bfloat16" in t for t in titles) and any("float32" in t for t in titles)
    modes = shown["jacobian_modes_model_vs_measured.png"]
    assert sorted(ax.get_title().rsplit(", ", 1)[1] for ax in modes.axes) == [
        "bfloat16", "bfloat16", "float32", "float32"]  # per device and dtype
    for ax in modes.axes:  # one point per (L, K, N) of its dtype: 10 shapes
        assert sum(len(c.get_offsets()) for c in ax.collections) == 10


def test_counting_rows_carry_their_model(pair):
    out, _, _ = pair
    csv = pd.read_csv(out / "summary.csv")
    for name in (CPU, GPU):
        want = sorted(b["extra_info"]["model"] for b in load(name)["benchmarks"]
                      if b["extra_info"]["method"] == "count_model")
        dev = "cpu" if name == CPU else "cuda"
        got = csv.loc[(csv["method"] == "count_model") & (csv["device"] == dev), "model"]
        assert sorted(got) == want and len(want) == 4


# ---------------------------------------------------------------------- 3. roofline


def ceiling(method: str, flops: int, nbytes: int, median: float, n: int,
            dtype: str = "float32") -> dict:
    data = [median * f for f in (0.98, 0.99, 1.0, 1.0, 1.01, 1.03, 1.0)]
    return {"group": f"ceiling {method} {n} cuda {dtype}", "name": f"test_ceiling[{dtype}]",
            "extra_info": {"kernel": "ceiling", "method": method, "reference": method,
                           "owner": "torch", "flops": flops, "bytes": nbytes,
                           "device": "cuda", "dtype": dtype, "threads": 8, "N": n,
                           "timer": "cuda_event", "cache": "warm"},
            "stats": {"median": float(np.median(data)), "iqr": median * 0.02,
                      "rounds": len(data), "data": data}}


def test_roofline_draws_the_measured_roofs(tmp_path):
    data = as_schema2(load(GPU))
    n = 8192
    # a compute roof per dtype (float32, bfloat16), one copy: the device's bandwidth
    matmuls = {"float32": ceiling("matmul", 2 * n**3, 3 * 4 * n * n, 2.5e-3, n),
               "bfloat16": ceiling("matmul", 2 * n**3, 3 * 2 * n * n, 1.9e-3, n, "bfloat16")}
    copy_ = ceiling("copy", 0, 2 * 2**30, 1.1e-3, 2**28)
    data["benchmarks"] += [*matmuls.values(), copy_]
    compute = {dt: b["extra_info"]["flops"] / b["stats"]["median"] / 1e9  # GFLOP/s
               for dt, b in matmuls.items()}
    bandwidth = copy_["extra_info"]["bytes"] / copy_["stats"]["median"] / 1e9  # GB/s
    shown, md = render(tmp_path, write(tmp_path, "ceil.json", data))
    ax, = shown["roofline.png"].axes
    roofs = {x.get_label().split(",")[1].split(":")[0].strip(): x for x in ax.get_lines()
             if x.get_gid() == "roof"}
    assert roofs.keys() == compute.keys()
    assert not [x for x in ax.get_lines() if x.get_gid() == "control"]
    pts = [b for b in data["benchmarks"] if b["extra_info"]["flops"] > 0
           and b["extra_info"]["bytes"] > 0
           and b["extra_info"]["kernel"] not in ("control", "ceiling")]
    intensity = [b["extra_info"]["flops"] / b["extra_info"]["bytes"] for b in pts]
    for dtype, line in roofs.items():
        xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert np.allclose(ys, np.minimum(compute[dtype], bandwidth * xs), rtol=1e-12)
        # both roofs: the ridge point, the flat compute roof, the bandwidth slope
        assert any(np.isclose(x, compute[dtype] / bandwidth) for x in xs)
        assert max(ys) == pytest.approx(compute[dtype]) and min(ys) < compute[dtype]
        # spanning every kernel that has an intensity
        assert min(xs) <= min(intensity) and max(xs) >= max(intensity)
        assert f"cuda {dtype}: compute {compute[dtype]:.4g} GFLOP/s, bandwidth " \
               f"{bandwidth:.4g} GB/s" in md
    assert "Measured ceilings in `ceil.json`" in md and "No measured ceiling" not in md


def test_roofline_without_ceilings_says_so_and_shows_the_control_as_drift(pair):
    _, shown, md = pair
    for name in (CPU, GPU):
        assert f"No measured ceiling in `{name}.json.gz`" in md
    fig = shown["roofline.png"]
    for ax, name in zip(fig.axes, (CPU, GPU)):
        control = next(b for b in load(name)["benchmarks"]
                       if b["extra_info"]["kernel"] == "control")
        peak = control["extra_info"]["flops"] / control["stats"]["median"] / 1e9
        line, = [x for x in ax.get_lines() if x.get_gid() == "control"]
        assert line.get_ydata()[0] == pytest.approx(peak) and line.get_linestyle() == "--"
        assert "drift check, not a ceiling" in line.get_label()
        assert not [x for x in ax.get_lines() if x.get_gid() == "roof"]
        # handgrad's points filled, torch's hollow
        faces = {tuple(np.round(c.get_facecolors()[0], 3)) if len(c.get_facecolors())
                 else "hollow" for c in ax.collections}
        assert "hollow" in faces and len(faces) > 1


# ------------------------------------------------------------------------ 4. memory


def test_peak_memory_and_its_ratio_to_the_reference(tmp_path):
    data = as_schema2(load(GPU))
    peaks = {}
    for i, b in enumerate(data["benchmarks"]):
        if b["extra_info"]["kernel"] == "backprop":
            peaks[b["name"]] = b["extra_info"]["peak_bytes"] = (i + 3) * 2**20 + 4096
    # one kernel record also names its reference's peak from its own measurement
    named = next(b for b in data["benchmarks"] if b["extra_info"]["method"] == "manual")
    named["extra_info"]["reference_peak_bytes"] = 7 * 2**20
    _, md = render(tmp_path, write(tmp_path, "mem.json", data))
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert {"peak_mib", "memory_ratio"} <= set(csv.columns)
    assert "`peak_mib` is the peak memory allocated during one call" in md
    assert csv.loc[csv["kernel"] != "backprop", ["peak_mib", "memory_ratio"]].isna().all(
        axis=None)
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if e["kernel"] != "backprop":
            continue
        r, = csv[(csv["method"] == e["method"]) & (csv["L"] == e["L"])
                 & (csv["K"] == e["K"])].to_dict("records")
        assert r["peak_mib"] == pytest.approx(e["peak_bytes"] / 2**20)
        ref_peak = e.get("reference_peak_bytes", ref_of(data, b)["extra_info"]["peak_bytes"])
        assert r["memory_ratio"] == pytest.approx(e["peak_bytes"] / ref_peak)
    assert "reference_peak_bytes" in named["extra_info"]  # the record's own was used above


def test_no_peak_memory_no_memory_columns(pair):
    out, _, md = pair
    csv = pd.read_csv(out / "summary.csv")
    assert "peak_mib" not in csv.columns and "memory_ratio" not in csv.columns
    # nor a timer or compile column the files never wrote
    assert not {"timer", "cache", "compile_mode", "compile_s"} & set(csv.columns)
    assert "No run recorded peak memory" in md


# ----------------------------------------------------------------- 5. what is lacking


def _lacks(md: str, file: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"- `{file}`: "))


def test_the_report_says_what_each_file_lacks(pair, tmp_path):
    _, _, md = pair
    assert "What these files lack:" in md
    gpu = _lacks(md, f"{GPU}.json.gz")
    assert all(load(GPU)["benchmarks"][0]["extra_info"].get(k) is None
               for k in ("timer", "peak_bytes", "owner"))
    for said in ("timer", "peak memory", "measured ceilings", "owner field", "compiled"):
        assert said in gpu, gpu
    assert "interleaved" not in gpu  # these runs interleaved every kernel with its reference
    assert "peak memory" not in _lacks(md, f"{CPU}.json.gz")  # measured on CUDA only
    # a file with all of them lacks none of them
    data = as_schema2(load(GPU))
    for b in data["benchmarks"]:
        b["extra_info"].update(timer="cuda_event", cache="warm", peak_bytes=2**20)
    data["benchmarks"][0]["extra_info"].update(compile_mode="reduce-overhead", compile_s=2.5)
    data["benchmarks"] += [ceiling("matmul", 2 * 4096**3, 0, 1e-3, 4096),
                           ceiling("copy", 0, 2**30, 1e-3, 2**28)]
    # and one without interleaved rounds
    plain = load(CPU)
    for b in plain["benchmarks"]:
        b["extra_info"].pop("reference_data", None)
    _, md2 = render(tmp_path, write(tmp_path, "full.json", data),
                    write(tmp_path, "plain.json", plain))
    line = _lacks(md2, "full.json")
    assert line == "- `full.json`: nothing today's bench suite records."
    # what the records say of their timing is shown, where they say it
    csv = pd.read_csv(tmp_path / "summary.csv")
    full = csv[csv["run"].str.endswith("full.json")]
    assert set(full["timer"]) == {"cuda_event"} and set(full["cache"]) == {"warm"}
    assert csv.loc[~csv["run"].str.endswith("full.json"), "timer"].isna().all()
    compiled = csv[csv["compile_mode"].notna()]
    first = data["benchmarks"][0]["extra_info"]
    assert list(compiled["method"]) == [first["method"]]
    assert list(compiled["compile_s"]) == [2.5]
    assert "interleaved reference rounds" in _lacks(md2, "plain.json")
