r"""Report evaluation results the way the PAPO paper does (Table 1, spec §5).

Every accuracy here is a **percentage in [0, 100]**, like the paper's tables: the caller converts a
fraction ``a`` in [0, 1] with ``100 * a``. (Fractions cannot be told apart from low percentages, so
this module does not guess.)

For one run with per-benchmark accuracies ``acc[b]`` and a grouping ``G -> [b_1, ..., b_n]``::

    group_avg[G] = mean(acc[b] for b in G if b is present)              # e.g. "General AVG"
    overall      = mean(acc[b] for every benchmark b present)            # Table 1: mean of the 9 benchmarks

(Table 1's Overall is the mean of all nine benchmarks, *not* the mean of the two group averages:
GRPO-3B has 47.92 = mean of its nine columns, while (51.89 + 42.97) / 2 = 47.43.)

The paper's relative improvement of a candidate ``c`` over a baseline ``b`` ("Δ%rel") is the **mean of
the per-task relative gains**, not the gain of the mean::

    gain[t]      = 100 * (c[t] - b[t]) / b[t]                             # per benchmark t
    Δ%rel[G]     = mean(gain[t] for t in G present in both runs)
    Δ%rel overall = mean(gain[t] for every t present in both runs)
    # differs from 100 * (mean(c) - mean(b)) / mean(b) in general

Benchmark names are mapped to Table 1's names with :func:`canonical_name` (PAPO_eval split names such
as ``hiyouga_geometry3k`` become ``Geo3k``), so results keyed by split name land in the right group.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from papo.files import write_bytes_atomically, write_file_atomically

# Table 1's grouping (spec §5). The paper's "Overall" is the mean over all nine benchmarks.
#
# NB: the official PAPO-Eval script (run_eval.py:17-28) has its own "vision-dependent" aggregate that
# differs: it pools the *questions* of clevr_count (Counting), MMMU_Pro and the FULL AI4Math_MathVerse,
# and has neither LogicVista nor MathVerse_V. It therefore does not reproduce Table 1's "Vision-Dependent
# AVG"; Table 1's grouping (a mean of per-benchmark accuracies) is the default here.
TABLE1_GROUPS: dict[str, list[str]] = {
    "General": ["Geo3k", "MathVista", "We-Math", "MMK12", "MathVerse"],
    "Vision-Dependent": ["LogicVista", "Counting", "MMMU-Pro", "MathVerse_V"],
}

# PAPO_eval split / file names (and a few spellings seen elsewhere) -> Table 1 names. The split names
# come from PAPO-Eval's download/inference scripts (e.g. SPLIT_NAME="We_Math", DATASET="We-Math_We-Math",
# "MMMU_MMMU_Pro", "PAPO_MMK12"); not every spelling in the wild is known, so this map is meant to be
# extended: add ``"<name as it appears>": "<Table 1 name>"``. Lookup is exact first, then
# case-insensitive; a name that is not found passes through unchanged (see :func:`canonical_name`).
BENCHMARK_ALIASES: dict[str, str] = {
    # General
    "hiyouga_geometry3k": "Geo3k",
    "geometry3k": "Geo3k",
    "Geo3K": "Geo3k",
    "AI4Math_MathVista": "MathVista",
    "We_Math": "We-Math",
    "We-Math_We-Math": "We-Math",
    "We_Math_We_Math": "We-Math",
    "WeMath": "We-Math",
    "MMK12": "MMK12",
    "PAPO_MMK12": "MMK12",
    "FanqingM_MMK12": "MMK12",
    "PAPO_MMK12_test": "MMK12",
    "AI4Math_MathVerse": "MathVerse",
    # Vision-dependent
    "lscpku_LogicVista": "LogicVista",
    "BUAADreamer_clevr_count_70k": "Counting",
    "clevr_count_70k": "Counting",
    "clevr_count": "Counting",
    "MMMU_Pro": "MMMU-Pro",
    "MMMU_MMMU_Pro": "MMMU-Pro",
    "AI4Math_MathVerse_vision_dependent": "MathVerse_V",
    "MathVerse_vision_dependent": "MathVerse_V",
    "MathVerse-V": "MathVerse_V",
    "AI4Math_MathVerse_vision": "MathVerse_V",
}

_UP, _DOWN, _FLAT = "↑", "↓", "±"
_MISSING_CELL = "–"


# --------------------------------------------------------------------------------------------------------
# Names and validation
# --------------------------------------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """Table 1's name for a benchmark (``"hiyouga_geometry3k"`` -> ``"Geo3k"``); unknown names pass through.

    Exact lookup in :data:`BENCHMARK_ALIASES` first, then a case-insensitive match against its keys and
    against Table 1's own names (so ``"geo3k"`` -> ``"Geo3k"``).
    """
    if name in BENCHMARK_ALIASES:
        return BENCHMARK_ALIASES[name]
    folded = name.casefold()
    for alias, canonical in BENCHMARK_ALIASES.items():
        if alias.casefold() == folded:
            return canonical
    for members in TABLE1_GROUPS.values():
        for canonical in members:
            if canonical.casefold() == folded:
                return canonical
    return name


def _canonical_accuracies(accuracy: Mapping[str, float], what: str = "accuracy") -> dict[str, float]:
    """Map names to Table 1 names and check every value is a finite percentage in [0, 100]."""
    out: dict[str, float] = {}
    sources: dict[str, str] = {}
    for raw, value in accuracy.items():
        name = canonical_name(str(raw))
        if name in out:
            raise ValueError(f"{what}: {sources[name]!r} and {raw!r} are both the benchmark {name!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what}[{raw!r}] = {value!r} is not a number") from err
        if not math.isfinite(number) or not 0.0 <= number <= 100.0:
            raise ValueError(f"{what}[{raw!r}] = {value!r}: accuracies are percentages in [0, 100]")
        out[name] = number
        sources[name] = str(raw)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _ordered_benchmarks(present: set[str] | list[str], groups: Mapping[str, list[str]] | None) -> list[str]:
    """Present benchmarks in group order, then the ungrouped ones in first-seen order."""
    present_list = list(dict.fromkeys(present))
    grouped = [b for members in (groups or {}).values() for b in members if b in present_list]
    grouped = list(dict.fromkeys(grouped))
    return grouped + [b for b in present_list if b not in grouped]


def _grouped_names(groups: Mapping[str, list[str]] | None) -> set[str]:
    return {b for members in (groups or {}).values() for b in members}


# --------------------------------------------------------------------------------------------------------
# Summaries and relative gains
# --------------------------------------------------------------------------------------------------------


def summarize(
    accuracy: Mapping[str, float], groups: Mapping[str, list[str]] | None = TABLE1_GROUPS
) -> dict[str, Any]:
    """Per-benchmark accuracies, group averages and the overall average of one run (all in percent).

    Returns ``{"benchmarks": {name: acc}, "groups": {group: avg}, "overall": avg, "missing": {group: [...]}}``
    where ``groups[G] = mean(acc[b] for b in G present)`` (a group with no present member is omitted),
    ``overall = mean(acc[b] for every present b)`` (benchmarks outside every group count too), and
    ``missing[G]`` lists the members of a partially present group that are absent (their group average
    is then not comparable with the paper's). Names are mapped with :func:`canonical_name`.
    """
    acc = _canonical_accuracies(accuracy)
    if not acc:
        raise ValueError("summarize: no benchmark accuracies given")
    group_avgs: dict[str, float] = {}
    missing: dict[str, list[str]] = {}
    for group, members in (groups or {}).items():
        present = [acc[b] for b in members if b in acc]
        if not present:
            continue
        group_avgs[group] = _mean(present)
        absent = [b for b in members if b not in acc]
        if absent:
            missing[group] = absent
    ordered = _ordered_benchmarks(list(acc), groups)
    return {
        "benchmarks": {b: acc[b] for b in ordered},
        "groups": group_avgs,
        "overall": _mean(list(acc.values())),
        "missing": missing,
    }


def relative_gain(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    groups: Mapping[str, list[str]] | None = TABLE1_GROUPS,
) -> dict[str, Any]:
    """The paper's Δ%rel of ``candidate`` over ``baseline``: the mean of per-task relative gains.

    ``gain[t] = 100 * (candidate[t] - baseline[t]) / baseline[t]`` for each benchmark ``t`` in both runs;
    ``groups[G] = mean(gain[t] for t in G)`` and ``overall = mean(gain[t] for every t)``. This is *not*
    ``100 * (mean(candidate) - mean(baseline)) / mean(baseline)``.

    A task whose baseline accuracy is 0 has no relative gain: it is left out of every mean and listed in
    ``"skipped"`` with the reason, as are benchmarks present in only one of the two runs.

    Returns ``{"benchmarks": {t: gain}, "groups": {G: gain}, "overall": gain or None, "skipped": {t: reason}}``.
    """
    base = _canonical_accuracies(baseline, "baseline")
    cand = _canonical_accuracies(candidate, "candidate")
    gains: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in _ordered_benchmarks(list(base) + [b for b in cand if b not in base], groups):
        if name not in cand:
            skipped[name] = "missing from the candidate"
        elif name not in base:
            skipped[name] = "missing from the baseline"
        elif base[name] == 0.0:
            skipped[name] = "baseline accuracy is 0: relative gain undefined"
        else:
            gains[name] = 100.0 * (cand[name] - base[name]) / base[name]
    group_gains = {
        group: _mean([gains[b] for b in members if b in gains])
        for group, members in (groups or {}).items()
        if any(b in gains for b in members)
    }
    return {
        "benchmarks": gains,
        "groups": group_gains,
        "overall": _mean(list(gains.values())) if gains else None,
        "skipped": skipped,
    }


# --------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------


def _format_gain(gain: float, digits: int) -> str:
    """``3.38`` -> ``"↑3.38"``, ``-43.15`` -> ``"↓43.15"``, a gain that rounds to zero -> ``"±0.00"``."""
    rounded = round(gain, digits)
    arrow = _UP if rounded > 0 else _DOWN if rounded < 0 else _FLAT
    return f"{arrow}{abs(rounded):.{digits}f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _columns(
    summaries: Mapping[str, dict[str, Any]], groups: Mapping[str, list[str]] | None
) -> list[tuple[str, str, str | None]]:
    """Table columns as ``(kind, header, key)``: kind is "bench", "group" or "overall"."""
    present = {b for s in summaries.values() for b in s["benchmarks"]}
    columns: list[tuple[str, str, str | None]] = []
    for group, members in (groups or {}).items():
        shown = [b for b in members if b in present]
        if not shown:
            continue
        columns += [("bench", b, b) for b in shown]
        columns.append(("group", f"{group} AVG", group))
    grouped = _grouped_names(groups)
    ungrouped = [b for s in summaries.values() for b in s["benchmarks"] if b not in grouped]
    columns += [("bench", b, b) for b in dict.fromkeys(ungrouped)]
    columns.append(("overall", "Overall", None))
    return columns


def markdown_table(
    runs: Mapping[str, Mapping[str, float]],
    groups: Mapping[str, list[str]] | None = TABLE1_GROUPS,
    baseline: str | None = None,
    digits: int = 2,
) -> str:
    """A GitHub-markdown table like Table 1: one row per run (in the order given).

    Columns: each group's benchmarks followed by the group's ``AVG``, then benchmarks outside every
    group, then ``Overall``. With ``baseline`` (a key of ``runs``), every other row's AVG and Overall
    cells carry the Δ%rel of :func:`relative_gain` against it, e.g. ``53.39 (↑3.38)``. A benchmark a run
    lacks shows ``–``; an AVG over an incomplete group is marked ``*`` and explained under the table.
    """
    if not runs:
        raise ValueError("markdown_table: no runs given")
    if baseline is not None and baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(runs)}")
    summaries = {label: summarize(acc, groups) for label, acc in runs.items()}
    gains = (
        {
            label: relative_gain(runs[baseline], acc, groups)
            for label, acc in runs.items()
            if label != baseline
        }
        if baseline is not None
        else {}
    )
    columns = _columns(summaries, groups)
    all_present = {b for s in summaries.values() for b in s["benchmarks"]}
    lines = [
        "| Method | " + " | ".join(_md_escape(header) for _, header, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    partial = False
    for label, summary in summaries.items():
        gain = gains.get(label)
        cells = []
        for kind, _, key in columns:
            if kind == "bench":
                value = summary["benchmarks"].get(key)
                cells.append(_MISSING_CELL if value is None else f"{value:.{digits}f}")
                continue
            if kind == "group":
                value = summary["groups"].get(key)
                delta = None if gain is None else gain["groups"].get(key)
                incomplete = any(b in all_present and b not in summary["benchmarks"] for b in groups[key])
            else:
                value = summary["overall"]
                delta = None if gain is None else gain["overall"]
                incomplete = any(b not in summary["benchmarks"] for b in all_present)
            if value is None:
                cells.append(_MISSING_CELL)
                continue
            cell = f"{value:.{digits}f}" + ("*" if incomplete else "")
            partial = partial or incomplete
            if delta is not None:
                cell += f" ({_format_gain(delta, digits)})"
            cells.append(cell)
        lines.append(f"| {_md_escape(label)} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    notes = ["Accuracies in %."]
    if baseline is not None:
        notes.append(
            f"(↑x) = Δ%rel vs {_md_escape(baseline)}: the mean over benchmarks of 100·(run − baseline)/baseline."
        )
    if partial:
        notes.append("\\* averaged over the benchmarks this run has; not comparable with complete rows.")
    return table + "\n" + " ".join(notes) + "\n"


# --------------------------------------------------------------------------------------------------------
# Paired statistics (papo.stats) on two runs' per-question predictions
# --------------------------------------------------------------------------------------------------------


def paired_comparison(
    baseline_dir: str | os.PathLike,
    candidate_dir: str | os.PathLike,
    benchmarks: list[str],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """:func:`papo.stats.compare_benchmarks` of two `papo eval` runs, questions paired by ``id``.

    Reads ``predictions/<benchmark>.parquet`` of both runs (``id``, ``accuracy``, ``correct``). Benchmarks
    missing from either run are listed under ``"unpaired"``; questions only one run has are left out and
    counted. Returns None when no benchmark can be paired.
    """
    import pyarrow.parquet as pq

    from papo.stats import compare_benchmarks

    data: dict[str, dict[str, list]] = {}
    unpaired: dict[str, str] = {}
    dropped: dict[str, int] = {}
    for name in benchmarks:
        paths = [Path(d) / "predictions" / f"{name}.parquet" for d in (baseline_dir, candidate_dir)]
        if not all(p.is_file() for p in paths):
            unpaired[name] = "no per-question predictions in " + " and ".join(
                str(p.parent.parent.name) for p in paths if not p.is_file()
            )
            continue
        base, cand = (pq.read_table(p, columns=["id", "accuracy", "correct"]).to_pylist() for p in paths)
        base_by_id = {row["id"]: row for row in base}
        common = [row for row in cand if row["id"] in base_by_id]
        dropped[name] = len(base) + len(cand) - 2 * len(common)
        if not common:
            unpaired[name] = "no question id in common"
            continue
        data[name] = {
            "baseline": [base_by_id[row["id"]]["accuracy"] for row in common],
            "candidate": [row["accuracy"] for row in common],
            "baseline_correct": [base_by_id[row["id"]]["correct"] for row in common],
            "candidate_correct": [row["correct"] for row in common],
        }
    if not data:
        return None
    result = compare_benchmarks(data, n_resamples=n_resamples, seed=seed)
    result["unpaired"] = unpaired
    result["unpaired_questions"] = {k: v for k, v in dropped.items() if v}
    return result


def comparison_markdown(comparison: Mapping[str, Any], baseline: str, candidate: str, digits: int = 2) -> str:
    """The paired-statistics table under Table 1: Δ, CI, McNemar p and BH q per benchmark and overall."""
    level = f"{comparison['confidence']:.0%}"
    lines = [
        f"Paired comparison, {_md_escape(candidate)} − {_md_escape(baseline)} (percentage points):",
        "",
        f"| Benchmark | Questions | Δ | {level} CI | McNemar p | BH q | |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, r: Mapping[str, Any], q: str) -> str:
        ci = f"[{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]"
        return (
            f"| {_md_escape(name)} | {r['n']} | {r['diff']:+.{digits}f} | {ci} | {r['mcnemar_p']:.3g} | {q} | "
            f"{r['verdict']} |"
        )

    for name, r in comparison["benchmarks"].items():
        lines.append(row(name, r, f"{r['q_value']:.3g}"))
    if comparison.get("overall"):
        lines.append(row("**Overall**", comparison["overall"], "–"))
    notes = [
        f"CI: percentile bootstrap over questions ({comparison['n_resamples']:,} replicates, seed "
        f"{comparison['seed']}); Overall resamples within each benchmark. McNemar: exact test on "
        f"{comparison['mcnemar_on']}. q: {comparison['q_values']}. A Δ whose CI contains 0 is inside the noise."
    ]
    for name, reason in (comparison.get("unpaired") or {}).items():
        notes.append(f"{_md_escape(name)}: not compared ({reason}).")
    for name, count in (comparison.get("unpaired_questions") or {}).items():
        notes.append(f"{_md_escape(name)}: {count} questions not in both runs left out.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def seed_spreads(runs_by_seed: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """:func:`papo.stats.seed_spread` per benchmark and Overall over runs of one model with different seeds.

    `runs_by_seed` maps a run's name (its seed) to its per-benchmark accuracies (percent); a benchmark counts
    only the runs that have it.
    """
    from papo.stats import seed_spread

    per_run = {run: summarize(acc) for run, acc in runs_by_seed.items()}
    names = _ordered_benchmarks([b for s in per_run.values() for b in s["benchmarks"]], TABLE1_GROUPS)
    out = {
        name: seed_spread([s["benchmarks"][name] for s in per_run.values() if name in s["benchmarks"]])
        for name in names
    }
    out["Overall"] = seed_spread([s["overall"] for s in per_run.values()])
    return {"runs": list(runs_by_seed), "benchmarks": out}


def seed_spread_markdown(spreads: Mapping[str, Any], label: str, digits: int = 2) -> str:
    lines = [
        f"Seed spread of {_md_escape(label)} over {len(spreads['runs'])} runs ({', '.join(map(str, spreads['runs']))}):",
        "",
        "| Benchmark | Runs | Mean | SD | Min | Max |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in spreads["benchmarks"].items():
        sd = "–" if math.isnan(r["sd"]) else f"{r['sd']:.{digits}f}"
        lines.append(
            f"| {_md_escape(name)} | {r['n']} | {r['mean']:.{digits}f} | {sd} | {r['min']:.{digits}f} | "
            f"{r['max']:.{digits}f} |"
        )
    return "\n".join(lines) + "\n\nSD: sample standard deviation over the runs (ddof 1), in percent.\n"


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------


def plot_comparison(
    runs: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    groups: Mapping[str, list[str]] | None = TABLE1_GROUPS,
    title: str | None = None,
    comparison: Mapping[str, Any] | None = None,
    candidate: str | None = None,
) -> Path:
    """Write a grouped bar chart (PNG) comparing runs: one bar per run for each benchmark, group AVG and Overall.

    Categories follow :func:`markdown_table`'s column order; the AVG and Overall categories sit on a grey
    band. With a `comparison` (:func:`paired_comparison`), the `candidate` run's bars for each compared benchmark
    and Overall carry error bars: the CI of the paired difference placed on the candidate's accuracy, so a bar
    whose error bar reaches the baseline's height is a difference inside the noise. Rendered with matplotlib's Agg canvas (no display, no pyplot global state) and written
    atomically (`papo.files.write_file_atomically`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("plot_comparison: no runs given")

    summaries = {label: summarize(acc, groups) for label, acc in runs.items()}
    columns = _columns(summaries, groups)
    labels = [header for _, header, _ in columns]
    n_runs, n_cats = len(summaries), len(columns)

    width_in = max(8.0, 0.32 * n_cats * max(n_runs, 2) + 3.0)
    fig = Figure(figsize=(min(width_in, 30.0), 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bar_w = 0.8 / n_runs
    top = 0.0
    for i, (label, summary) in enumerate(summaries.items()):
        heights = []
        for kind, _, key in columns:
            if kind == "bench":
                value = summary["benchmarks"].get(key)
            elif kind == "group":
                value = summary["groups"].get(key)
            else:
                value = summary["overall"]
            heights.append(math.nan if value is None else value)
        xs = [c - 0.4 + bar_w * (i + 0.5) for c in range(n_cats)]
        yerr = None
        if comparison is not None and label == candidate:
            yerr = [[math.nan] * n_cats, [math.nan] * n_cats]
            for c, (kind, _, key) in enumerate(columns):
                stats_row = comparison["benchmarks"].get(key) if kind == "bench" else None
                if kind == "overall":
                    stats_row = comparison.get("overall")
                if stats_row and not math.isnan(heights[c]):
                    yerr[0][c] = max(stats_row["diff"] - stats_row["ci_low"], 0.0)
                    yerr[1][c] = max(stats_row["ci_high"] - stats_row["diff"], 0.0)
        bars = ax.bar(
            xs, heights, width=bar_w * 0.95, label=label, zorder=3, yerr=yerr, capsize=3 if yerr else 0
        )
        if n_runs * n_cats <= 60:  # value labels only while they stay legible
            ax.bar_label(
                bars,
                labels=["" if math.isnan(h) else f"{h:.1f}" for h in heights],
                fontsize=7,
                padding=1,
                rotation=90 if n_runs > 2 else 0,
            )
        top = max([top] + [h for h in heights if not math.isnan(h)])
    for c, (kind, _, _) in enumerate(columns):
        if kind != "bench":
            ax.axvspan(c - 0.5, c + 0.5, color="0.92", zorder=0)
    ax.set_xticks(range(n_cats))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=9)
    for tick, (kind, _, _) in zip(ax.get_xticklabels(), columns, strict=True):
        if kind != "bench":
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, n_cats - 0.4)
    ax.set_ylim(0, min(100.0, top * 1.15 + 2.0) if top > 0 else 1.0)
    ax.set_ylabel("Accuracy (%)")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, ncol=min(n_runs, 4), loc="upper left")
    default_title = "Accuracy by benchmark (avg@k, %)"
    if comparison is not None:
        default_title += f"; error bars: {comparison['confidence']:.0%} CI of the paired difference"
    ax.set_title(title or default_title, fontsize=10)

    return write_file_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def write_report(
    output_dir: str | os.PathLike,
    runs: Mapping[str, Mapping[str, float]],
    groups: Mapping[str, list[str]] | None = TABLE1_GROUPS,
    baseline: str | None = None,
    extra: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
    candidate: str | None = None,
    seeds: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and, for two or more runs, ``comparison.png`` (all atomically).

    ``results.json`` holds ``{"units": "percent", "groups": <grouping>, "baseline": ..., "runs": {label:
    summarize(...)}, "relative_gain": {label: relative_gain(baseline, run)}}`` (``relative_gain`` only with a
    baseline) with ``extra``'s keys merged in at the top level; a key of ``extra`` that collides with one of
    those raises ``ValueError``. Returns ``{"json": ..., "markdown": ..., "plot": ...}`` paths.
    """
    if not runs:
        raise ValueError("write_report: no runs given")
    if baseline is not None and baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(runs)}")
    output_dir = Path(output_dir)
    payload: dict[str, Any] = {
        "units": "percent",
        "groups": {g: list(m) for g, m in (groups or {}).items()},
        "baseline": baseline,
        "runs": {label: summarize(acc, groups) for label, acc in runs.items()},
    }
    if comparison is not None:
        payload["comparison"] = {"baseline": baseline, "candidate": candidate, **comparison}
    if seeds is not None:
        payload["seed_spread"] = dict(seeds)
    if baseline is not None:
        payload["relative_gain"] = {
            label: relative_gain(runs[baseline], acc, groups)
            for label, acc in runs.items()
            if label != baseline
        }
    extra = dict(extra or {})
    clash = sorted(set(extra) & (set(payload) | {"relative_gain", "comparison", "seed_spread"}))
    if clash:
        raise ValueError(f"write_report: extra keys {clash} collide with the report's own keys")
    paths: dict[str, Path] = {}
    if len(runs) >= 2:
        paths["plot"] = plot_comparison(
            runs, output_dir / "comparison.png", groups, comparison=comparison, candidate=candidate
        )
    payload.update(extra)
    text = json.dumps(payload, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    paths["json"] = write_bytes_atomically(output_dir / "results.json", text.encode("utf-8"))
    table = markdown_table(runs, groups, baseline)
    if comparison is not None and baseline is not None and candidate is not None:
        table += "\n" + comparison_markdown(comparison, baseline, candidate)
    if seeds is not None:
        table += "\n" + seed_spread_markdown(seeds, candidate or "this run")
    paths["markdown"] = write_bytes_atomically(output_dir / "results.md", table.encode("utf-8"))
    return dict(sorted(paths.items(), key=lambda kv: ["json", "markdown", "plot"].index(kv[0])))
