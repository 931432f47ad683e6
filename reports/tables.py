"""Derived columns and the summary table: ratio to the same-run reference, achieved
GFLOP/s and peak memory over the reference's, each by its one definition in
``reports.record``; and the flag of a benchmark that ran on a disturbed machine."""

from __future__ import annotations

import numpy as np
import pandas as pd

from handgrad.reports.load import BENCHMARK_KEY, shape_columns
from handgrad.reports.record import (
    DISTURBED,
    achieved_gflops,
    memory_ratio,
    ratio_to_reference,
)


def key_columns(df: pd.DataFrame) -> list[str]:
    """The columns that tell one benchmark from another beside its method: the shape's
    parameters and (counting) the model."""
    return [*shape_columns(df), "model"]
# a like-cost reference keeps real ratios within 0.14 to 4 on those runs; a ratio beyond
# 1/IMPLAUSIBLE..IMPLAUSIBLE (e.g. 0.007) says the machine, not the kernel, changed
IMPLAUSIBLE = 20.0
# the rounds of one call on one input: undisturbed, their median stays within 3.0x the
# fastest round and their IQR within 1.8x the median (a bimodal layernorm on 2 threads; no
# handgrad fixture passes 0.6x), while rounds hit by another process's stalls reach
# 21x to 650x and 2.8x to 440x on the walkthrough runs that were disturbed
HICCUP = 10.0  # a median over this many times the fastest round
SPREAD = 2.0  # an IQR over this many times the median

DISTURBED_RULE = (
    f"`disturbed` flags a benchmark whose numbers are not to be trusted: its reference's "
    f"interleaved rounds (median of `extra_info.reference_data`) and the reference's own "
    f"benchmark in the same group and file differ by more than {DISTURBED:g}x (the gate's "
    f"rule between runs), which flags the method and its reference, or its ratio to the "
    f"reference lies outside 1/{IMPLAUSIBLE:g} to {IMPLAUSIBLE:g} (a like-cost reference "
    f"keeps real ratios within 0.14 to 4 here), or its own rounds (`stats.data`) or its "
    f"reference's interleaved rounds spread as no timing of one call does: a median over "
    f"{HICCUP:g}x the fastest round (more than half the rounds were slowed), or an IQR over "
    f"{SPREAD:g}x the median. Another process on the machine makes such calls 10 to 35 "
    f"times slower, and its stalls of tens of milliseconds, landing on some rounds of a "
    f"sub-millisecond call, spread them so. A benchmark slowed through every round is not "
    f"seen in its own file: the gate and `history add` compare it with other runs."
)


def _median(rounds) -> float:
    return float(np.median(rounds)) if isinstance(rounds, (list, tuple, np.ndarray)) else (
        np.nan)


def _spread(rounds) -> str:
    """Why a benchmark's rounds are not one call's timing ("" when they may be): a median
    over HICCUP times the fastest round, or an IQR over SPREAD times the median."""
    if not isinstance(rounds, (list, tuple, np.ndarray)):
        return ""
    t = np.asarray(rounds, dtype=float)
    t = t[np.isfinite(t) & (t > 0)]
    if len(t) < 2:
        return ""
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    if med > HICCUP * t.min():
        return f"median {med / t.min():.3g}x the fastest round"
    if q3 - q1 > SPREAD * med:
        return f"IQR {(q3 - q1) / med:.3g}x the median"
    return ""


def with_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``ratio`` and ``ratio_kind`` (``reports.record.ratio_to_reference``: paired
    rounds when timed interleaved, else against the rounds of the row's reference in the
    same file, group and device; none, and ``ratio_kind`` "no reference timed on cuda",
    where its group timed the reference on other devices only), ``gflops``
    (``reports.record.achieved_gflops``), ``memory_ratio``
    (``reports.record.memory_ratio``: against the record's ``reference_peak_bytes`` when
    written, else the reference's own benchmark) and
    ``disturbed`` (why the row is not to be trusted, "" when it is; DISTURBED_RULE)."""
    df = df.copy()
    # a group can hold several references (GD: lstsq for the closed form, torch.optim.SGD
    # for the loop), so the join is on the reference's method name too; and on the device:
    # a kernel on cuda over its reference on the cpu is no ratio (a user's group may hold
    # both devices)
    ref = df[df["method"] == df["reference"]][
        ["source", "group", "device", "method", "shape", "data", "median", "peak_bytes"]]
    ref = ref.rename(columns={"method": "reference", "data": "ref_rounds",
                              "median": "ref_median", "peak_bytes": "ref_peak_bytes"})
    on = ["source", "group", "device", "reference"]
    ref = ref.drop_duplicates([*on, "shape"], keep="last")
    # the reference of the same shape (a group may hold several: a parametrised test under
    # one group), else the group's only one of that method on that device (timed once for
    # every shape), as reports.load.find_row pairs them
    joined = df.merge(ref, on=[*on, "shape"], how="left")
    lone = ref[ref.groupby(on)["shape"].transform("size") == 1]
    fallback = df[on].merge(lone.drop(columns="shape"), on=on, how="left")
    missing = joined["ref_median"].isna().to_numpy()
    for col in ("ref_rounds", "ref_median", "ref_peak_bytes"):
        joined.loc[missing, col] = fallback.loc[missing, col].to_numpy()
    df = joined
    ratios = [ratio_to_reference(r.data, r.reference_data, r.ref_rounds)
              for r in df.itertuples(index=False)]
    df["ratio"] = [r for r, _ in ratios]
    df["ratio_kind"] = [k for _, k in ratios]
    # a kernel whose reference was timed in its group on other devices only: no ratio, and
    # the table says why, where it would otherwise leave the reader to guess
    timed_on: dict[tuple, set] = {}
    for k in zip(ref["source"], ref["group"], ref["reference"], ref["device"]):
        timed_on.setdefault(k[:3], set()).add(k[3])
    unpaired = (df["ratio_kind"] == "") & (df["method"] != df["reference"]) & pd.Series(
        [d not in timed_on.get(k, {d}) for k, d in zip(
            zip(df["source"], df["group"], df["reference"]), df["device"])],
        index=df.index, dtype=bool)
    df.loc[unpaired, "ratio_kind"] = [f"no reference timed on {d}"
                                      for d in df.loc[unpaired, "device"]]
    df["gflops"] = achieved_gflops(df["flops"], df["median"])
    own = df["reference_peak_bytes"].where(df["reference_peak_bytes"].notna(),
                                           df["ref_peak_bytes"])
    df["memory_ratio"] = memory_ratio(df["peak_bytes"], own)
    df["disturbed"] = _disturbed(df)
    return df


def _disturbed(df: pd.DataFrame) -> list[str]:
    why = [""] * len(df)
    flagged_refs = {}
    for i, r in enumerate(df.itertuples(index=False)):
        moved = _median(r.reference_data) / r.ref_median
        if np.isfinite(moved) and not 1 / DISTURBED <= moved <= DISTURBED:
            why[i] = f"reference rounds {moved:.3g}x its own median"
            flagged_refs[(r.source, r.group, r.device, r.reference)] = r.method
        elif np.isfinite(r.ratio) and not 1 / IMPLAUSIBLE <= r.ratio <= IMPLAUSIBLE:
            why[i] = f"ratio {r.ratio:.3g} implausible"
        else:
            # the reference's rounds the ratio is taken against: interleaved, else its own
            paired = isinstance(r.reference_data, (list, tuple, np.ndarray))
            own = _spread(r.data)
            ref = _spread(r.reference_data if paired else r.ref_rounds)
            if own or ref:
                why[i] = f"rounds: {own}" if own else f"reference rounds: {ref}"
    for i, r in enumerate(df.itertuples(index=False)):
        kernel = flagged_refs.get((r.source, r.group, r.device, r.method))
        if r.method == r.reference and kernel is not None:
            why[i] = f"its rounds interleaved with {kernel} differ >{DISTURBED:g}x"
    return why


def _integers(col: pd.Series) -> pd.Series:
    """A numeric column whose every value is a whole number, as integers (pandas' Int64:
    a missing one stays missing, written as an empty cell); any other column as it is."""
    if not pd.api.types.is_float_dtype(col):
        return col
    present = col.dropna()
    if not np.isfinite(present).all() or not (present == np.round(present)).all():
        return col
    return col.astype("Int64")


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The report's main table: one row per benchmark, times in milliseconds, kernels
    before their references within each shape. ``peak_mib`` and
    ``memory_ratio`` only when a row recorded its peak memory, ``timer`` and ``cache``
    only when a file wrote them (older files hold neither: reported as lacking, not shown
    as a default), ``compile_mode`` and ``compile_s`` only for compiled methods,
    ``slowed_by`` only when a run was slowed on purpose, ``disturbed`` only when a row is
    flagged."""
    df = with_counts(with_ratios(df))
    keys = [c for c in key_columns(df) if c in df.columns and df[c].notna().any()]
    out = df[["run", "machine", "kernel", "role", "method", "reference", "device", "dtype",
              "threads", *keys]].copy()
    for c in keys:  # a shape is integers: a column is float only where some rows lack it
        out[c] = _integers(out[c])
    out["median_ms"] = df["median"] * 1e3
    out["iqr_ms"] = df["iqr"] * 1e3
    out["ratio_to_ref"] = df["ratio"]
    out["ratio_kind"] = df["ratio_kind"]
    out["gflop_s"] = df["gflops"]
    if df["peak_bytes"].notna().any():  # CUDA runs that measured memory
        out["peak_mib"] = pd.to_numeric(df["peak_bytes"]) / 2**20
        out["memory_ratio"] = df["memory_ratio"]
    if df["instructions"].notna().any():  # an instruction-count run (--bench-instructions)
        out["kinstr"] = pd.to_numeric(df["instructions"]) / 1e3
        out["instr_ratio"] = df["instr_ratio"]
    out["rounds"] = df["rounds"]
    written = frozenset().union(*df["fields_written"]) if "fields_written" in df else set()
    for field in ("timer", "cache"):  # how each time was taken, where the record says
        if field in written:
            out[field] = [v if field in w else None
                          for v, w in zip(df[field], df["fields_written"])]
    if df["compile_mode"].notna().any():  # compiled methods: mode, and compile time (s)
        out["compile_mode"] = df["compile_mode"]
        out["compile_s"] = df["compile_s"]
    if df["slowed_by"].notna().any():  # a run slowed on purpose (--bench-slow) says so
        out["slowed_by"] = df["slowed_by"]
    if (df["disturbed"] != "").any():
        out["disturbed"] = df["disturbed"]
    return out.sort_values(["kernel", "run", "device", *keys, "role", "method"],
                           na_position="first").reset_index(drop=True)


COUNT_RULE = (
    "`kinstr` is thousands of instructions per call (valgrind's callgrind, one thread, "
    "warm-up outside the count: `pytest bench --bench-instructions`) and `instr_ratio` "
    "the method's count over its reference's on the same inputs. A counted run's own times "
    "were taken under valgrind and are not shown; given beside a timed run, its counts join "
    "the timed rows of the same benchmark (group and method)."
)


def with_counts(df: pd.DataFrame) -> pd.DataFrame:
    """``instr_ratio`` (instructions over the reference's), and the rows of an instruction
    run (timer 'callgrind') joined into the timed rows of the same group and method: a
    timed row gains their ``instructions`` and ``instr_ratio``, the counted row goes. A
    counted row with no timed twin stays, its valgrind times blanked (NaN)."""
    df = df.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        df["instr_ratio"] = (pd.to_numeric(df["instructions"])
                             / pd.to_numeric(df["reference_instructions"]))
    counted = df["timer"] == "callgrind"
    if not counted.any():
        return df
    for col in ("median", "iqr", "ratio", "gflops"):
        df.loc[counted, col] = np.nan
    df.loc[counted, "ratio_kind"] = ""
    timed = df[~counted]
    if timed.empty:
        return df
    # a benchmark is its group, method and shape (reports.load.BENCHMARK_KEY)
    counts = df[counted].drop_duplicates(BENCHMARK_KEY, keep="last").set_index(BENCHMARK_KEY)
    keys = list(zip(timed["group"], timed["method"], timed["shape"]))
    hit = [k in counts.index for k in keys]
    for col in ("instructions", "instr_ratio"):
        df.loc[~counted, col] = [counts.at[k, col] if h else v
                                 for k, h, v in zip(keys, hit, timed[col])]
    joined = {k for k, h in zip(keys, hit) if h}
    drop = counted & pd.Series([k in joined for k in zip(df["group"], df["method"],
                                                         df["shape"])], index=df.index)
    return df[~drop].reset_index(drop=True)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured markdown table (pandas' own needs the tabulate package). A
    missing number is an empty cell, never "nan"."""

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if pd.isna(v) else format(v, floatfmt)
        return "" if v is None or v is pd.NA else str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
