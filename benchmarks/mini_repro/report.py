"""Summaries of the mini reproduction: mean ± std over seeds, paired comparisons with CIs, tables, plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

ACCURACY_KEY = "rewards/accuracy_reward/mean"  # training accuracy of the sampled rollouts (TRL's log)
PERCEPTION_KL_KEY = "perception_kl"  # k3 estimate of KL(pi(.|I) || pi(.|I_mask)), token mean (ours)
# Each method is compared with its baseline, paired by seed (run.py runs the arms; this module only reads).
BASELINE_OF = {
    "papo-g": "grpo",
    "papo-g-high": "grpo",
    "papo-d": "dapo",
    "vppo": "dapo",
    "pgpo": "dapo",
    "noisyrollout": "grpo",
}

# Final-checkpoint metrics reported per method: name -> how to read it from an evaluation.
FINAL_METRICS = {
    "accuracy": lambda e: e["with_image"]["accuracy"],
    "accuracy_high": lambda e: e["with_image"]["by_dependency"].get("high", float("nan")),
    "accuracy_low": lambda e: e["with_image"]["by_dependency"].get("low", float("nan")),
    "blind_accuracy": lambda e: e["blind"]["accuracy"],
    "blind_accuracy_high": lambda e: e["blind"]["by_dependency"].get("high", float("nan")),
    "image_gain_high": lambda e: (
        e["with_image"]["by_dependency"].get("high", float("nan"))
        - e["blind"]["by_dependency"].get("high", float("nan"))
    ),
    "perception_kl": lambda e: e["with_image"]["perception_kl"],
    "perception_kl_high": lambda e: (
        e["with_image"].get("perception_kl_by_dependency", {}).get("high", float("nan"))
    ),
    "sampled_accuracy": lambda e: e["with_image"].get("sampled", {}).get("accuracy", float("nan")),
    "sampled_mixed": lambda e: e["with_image"].get("sampled", {}).get("mixed", float("nan")),
    "format": lambda e: e["with_image"]["format"],
}
# The metrics each PAPO arm is compared with its baseline on (paired by seed, bootstrap CI + t-test).
COMPARED = (
    "accuracy",
    "accuracy_high",
    "accuracy_low",
    "blind_accuracy_high",
    "image_gain_high",
    "sampled_accuracy",
    "perception_kl",
)


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value); nan in, nan out (a metric not measured)."""
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "n": len(values),
    }


def final_eval(run: dict[str, Any]) -> dict[str, Any]:
    """The evaluation of a run's last checkpoint."""
    return run["evals"][max(run["evals"], key=int)]


def smoothed_tail(metrics: list[dict[str, Any]], key: str, last: int = 20) -> float:
    """Mean of `key` over the last `last` logged steps (nan if never logged)."""
    values = [row[key] for row in metrics if key in row][-last:]
    return statistics.fmean(values) if values else float("nan")


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per method: final metrics and per-task accuracy as mean +- std over seeds; paired deltas."""
    runs = results["runs"]
    methods = list(dict.fromkeys(run["method"] for run in runs.values()))
    summary: dict[str, Any] = {"methods": {}, "deltas": {}}
    for method in methods:
        mine = [run for run in runs.values() if run["method"] == method and run["evals"]]
        if not mine:
            continue
        finals = [final_eval(run) for run in mine]
        entry = {name: mean_std([read(e) for e in finals]) for name, read in FINAL_METRICS.items()}
        entry["train_perception_kl_last20"] = mean_std(
            [smoothed_tail(r["metrics"], PERCEPTION_KL_KEY) for r in mine]
        )
        entry["train_accuracy_last20"] = mean_std([smoothed_tail(r["metrics"], ACCURACY_KEY) for r in mine])
        entry["wall_seconds"] = mean_std([r["wall_seconds"] for r in mine])
        tasks = sorted(finals[0]["with_image"]["by_task"])
        entry["by_task"] = {t: mean_std([e["with_image"]["by_task"][t] for e in finals]) for t in tasks}
        entry["blind_by_task"] = {t: mean_std([e["blind"]["by_task"][t] for e in finals]) for t in tasks}
        entry["seeds"] = [r["seed"] for r in mine]
        summary["methods"][method] = entry
    # Paired by seed: PAPO minus its baseline, same seed (same data order, same LoRA init).
    from papo.stats import compare_paired

    for method, baseline in BASELINE_OF.items():
        pairs = [
            (runs[f"{method}-seed{s}"], runs[f"{baseline}-seed{s}"])
            for s in sorted({r["seed"] for r in runs.values()})
            if f"{method}-seed{s}" in runs and f"{baseline}-seed{s}" in runs
        ]
        pairs = [(final_eval(a), final_eval(b)) for a, b in pairs if a["evals"] and b["evals"]]
        if not pairs:
            continue
        delta: dict[str, Any] = {
            name: mean_std([read(a) - read(b) for a, b in pairs]) for name, read in FINAL_METRICS.items()
        }
        delta["stats"] = {
            name: compare_paired(
                [FINAL_METRICS[name](b) for _, b in pairs], [FINAL_METRICS[name](a) for a, _ in pairs]
            ).to_dict()
            for name in COMPARED
        }
        tasks = sorted(pairs[0][0]["with_image"]["by_task"])
        delta["stats_by_task"] = {
            task: compare_paired(
                [b["with_image"]["by_task"][task] for _, b in pairs],
                [a["with_image"]["by_task"][task] for a, _ in pairs],
            ).to_dict()
            for task in tasks
        }
        summary["deltas"][f"{method} - {baseline}"] = delta
    return summary


def _fmt(stat: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _row_of(evaluation: dict[str, Any]) -> dict[str, float]:
    return {name: read(evaluation) for name, read in FINAL_METRICS.items()}


MAIN_COLUMNS = (  # (metric, header, scale, digits)
    ("accuracy", "test acc %", 100, 1),
    ("accuracy_high", "vision-high acc %", 100, 1),
    ("accuracy_low", "text (low) acc %", 100, 1),
    ("blind_accuracy_high", "blind high %", 100, 1),
    ("image_gain_high", "image gain (high) pts", 100, 1),
    ("sampled_accuracy", "sampled acc % (T=1)", 100, 1),
    ("sampled_mixed", "mixed items %", 100, 1),
    ("perception_kl", "perception KL (test, ×1e3)", 1e3, 1),
    ("format", "format %", 100, 1),
)


def tables_markdown(results: dict[str, Any]) -> str:
    """The result tables (markdown) of a results dict."""
    summary = results["summary"]
    ws = results["warm_start"]["eval"]
    ws_row = _row_of(ws)
    header = " | ".join(h for _, h, _, _ in MAIN_COLUMNS)
    lines = [
        f"| method | seeds | {header} | train perception KL (last 20, ×1e3) | wall s/run |",
        "|---|---|" + "---|" * len(MAIN_COLUMNS) + "---|---|",
        "| warm start | – | "
        + " | ".join(f"{ws_row[m] * sc:.{d}f}" for m, _, sc, d in MAIN_COLUMNS)
        + " | – | – |",
    ]
    for method, m in summary["methods"].items():
        cells = " | ".join(_fmt(m[name], sc, d) for name, _, sc, d in MAIN_COLUMNS)
        lines.append(
            f"| {method} | {len(m['seeds'])} | {cells} | {_fmt(m['train_perception_kl_last20'], 1e3, 1)} | "
            f"{m['wall_seconds']['mean']:.0f} |"
        )
    for name, delta in summary["deltas"].items():
        cells = " | ".join(_fmt(delta[metric], sc, d) for metric, _, sc, d in MAIN_COLUMNS)
        lines.append(f"| **Δ {name}** (paired by seed) | {delta['accuracy']['n']} | {cells} | – | – |")
    for name, delta in summary["deltas"].items():
        lines += [
            "",
            f"**{name}**, paired by seed (final checkpoints; bootstrap 95% CI over seeds, paired t-test):",
            "",
        ]
        lines += ["| metric | mean Δ | 95% CI | p | verdict |", "|---|---|---|---|---|"]
        for metric, stat in [
            *delta["stats"].items(),
            *((f"task {t}", v) for t, v in delta["stats_by_task"].items()),
        ]:
            scale, unit = (1e3, " ×1e-3") if "perception_kl" in metric else (100, " pts")
            lines.append(
                f"| {metric} | {stat['mean_diff'] * scale:+.2f}{unit} | [{stat['ci_low'] * scale:+.2f}, "
                f"{stat['ci_high'] * scale:+.2f}] | {_p(stat['p_value'])} | {stat['verdict']} |"
            )
    tasks = sorted(ws["with_image"]["by_task"])
    lines += ["", "Per task (test accuracy %, with the image / blind):", ""]
    lines.append("| method | " + " | ".join(tasks) + " |")
    lines.append("|---|" + "---|" * len(tasks))
    lines.append(
        "| warm start | "
        + " | ".join(
            f"{100 * ws['with_image']['by_task'][t]:.1f} / {100 * ws['blind']['by_task'][t]:.1f}"
            for t in tasks
        )
        + " |"
    )
    for method, m in summary["methods"].items():
        cells = [f"{_fmt(m['by_task'][t])} / {_fmt(m['blind_by_task'][t])}" for t in tasks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _p(p: float) -> str:
    return "–" if p != p else f"{p:.3f}"


def collapse_markdown(results: dict[str, Any]) -> str:
    """Per method: how many runs' collapse guard warned, and at which steps."""
    lines = ["| method | runs where collapse_guard warned | first warning step per seed |", "|---|---|---|"]
    for method in results["summary"]["methods"]:
        runs = [r for r in results["runs"].values() if r["method"] == method]
        warned = [r for r in runs if r.get("collapse_warnings")]
        firsts = ", ".join(
            f"seed {r['seed']}: {r['collapse_warnings'][0] if r.get('collapse_warnings') else '–'}"
            for r in runs
        )
        lines.append(f"| {method} | {len(warned)}/{len(runs)} | {firsts} |")
    return "\n".join(lines)


def curves(results: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """Per method: (step, mean, std) over seeds of training accuracy, training perception KL and test accuracy."""
    out: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    ws = results["warm_start"]["eval"]
    for method in results["summary"]["methods"]:
        runs = [r for r in results["runs"].values() if r["method"] == method]
        series: dict[str, list[tuple[int, float, float]]] = {}
        for name, key in (("train_accuracy", ACCURACY_KEY), ("train_perception_kl", PERCEPTION_KL_KEY)):
            by_step: dict[int, list[float]] = {}
            for run in runs:
                for row in run["metrics"]:
                    if key in row:
                        by_step.setdefault(int(row["step"]), []).append(row[key])
            series[name] = [(s, *_ms(v)) for s, v in sorted(by_step.items())]
        test: dict[int, list[float]] = {0: [ws["with_image"]["accuracy"]] * len(runs)}
        blind: dict[int, list[float]] = {0: [ws["blind"]["accuracy"]] * len(runs)}
        for run in runs:
            for step, evaluation in run["evals"].items():
                test.setdefault(int(step), []).append(evaluation["with_image"]["accuracy"])
                blind.setdefault(int(step), []).append(evaluation["blind"]["accuracy"])
        series["test_accuracy"] = [(s, *_ms(v)) for s, v in sorted(test.items())]
        series["blind_accuracy"] = [(s, *_ms(v)) for s, v in sorted(blind.items())]
        out[method] = series
    return out


def _ms(values: list[float]) -> tuple[float, float]:
    stat = mean_std(values)
    return stat["mean"], stat["std"]


def _moving_average(points: list[tuple[int, float, float]], window: int) -> tuple[list[int], list[float]]:
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    smoothed = [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
    return steps, smoothed


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """curves.png: training accuracy, training perception KL and test accuracy vs step, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    window = max(1, results["config"]["rl_steps"] // 20)
    for method, series in data.items():
        steps, values = _moving_average(series["train_accuracy"], window)
        axes[0].plot(steps, values, label=method)
        steps, values = _moving_average(series["train_perception_kl"], window)
        axes[1].plot(steps, values, label=method)
        test = series["test_accuracy"]
        line = axes[2].errorbar(
            [p[0] for p in test],
            [p[1] for p in test],
            yerr=[p[2] for p in test],
            marker="o",
            capsize=3,
            label=method,
        )
        blind = series["blind_accuracy"]
        axes[2].plot(
            [p[0] for p in blind],
            [p[1] for p in blind],
            linestyle="--",
            color=line[0].get_color(),
            label=f"{method} (blind)",
        )
    axes[0].set(title=f"training accuracy (rollouts, moving avg {window})", xlabel="step", ylabel="accuracy")
    axes[1].set(title="training perception KL (k3, token mean)", xlabel="step", ylabel="KL")
    axes[2].set(title="test accuracy, greedy (mean ± std over seeds)", xlabel="step", ylabel="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def headline(results: dict[str, Any]) -> str:
    """One bullet per comparison: the paired difference in final test accuracy (vision-dependent tasks
    and all tasks) with its CI and p-value, and whether it is inside the noise."""
    lines = []
    for name, delta in results["summary"]["deltas"].items():
        parts = []
        for metric, label in (("accuracy_high", "vision-dependent tasks"), ("accuracy", "all tasks")):
            stat = delta["stats"][metric]
            parts.append(
                f"{label} {100 * stat['mean_diff']:+.1f} pts (95% CI [{100 * stat['ci_low']:+.1f}, "
                f"{100 * stat['ci_high']:+.1f}], paired t-test p = {_p(stat['p_value'])}): {stat['verdict']}"
            )
        kl = delta["stats"]["perception_kl"]
        parts.append(f"test perception KL {1e3 * kl['mean_diff']:+.1f} ×1e-3 nats/token ({kl['verdict']})")
        lines.append(
            f"- **{name}** over {delta['accuracy']['n']} paired seeds, final greedy test accuracy: "
            + "; ".join(parts)
            + "."
        )
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> Path:
    """RESULTS.md (tables, statistics, collapse, timings, commands, machine) and curves.png in `out`."""
    plot_curves(results, out / "curves.png")
    config = results["config"]
    machine = results["machine"]
    timings = results["timings"]
    ws_seconds = results["warm_start"]["train_seconds"]
    commands = "\n".join(run["command"] for run in results["runs"].values())
    invocations = "\n".join(
        f"  - {entry['date']}: {entry['seconds'] / 60:.1f} min, computed {', '.join(entry['computed'])}"
        for entry in timings["invocations"]
    )
    text = f"""# Mini reproduction: results (generated by `python -m benchmarks.mini_repro{" --quick" if config["quick"] else ""}`)

{headline(results)}

{tables_markdown(results)}

Collapse guard (`collapse_guard: warn`; GRPO runs it off):

{collapse_markdown(results)}

![curves](curves.png)

- Warm start: `{results["warm_start"]["path"]}` (SFT: {"%.1f min" % (ws_seconds / 60) if ws_seconds else "time not recorded"}, as measured when it was trained).
- {len(results["runs"])} RL runs × {config["rl_steps"]} steps, {config["batch_size"]} completions per step
  (G={config["num_generations"]}), {config["parallel"]} at a time; greedy eval every {config["eval_every"]} steps on
  {config["num_test"]} test rows, with and without the image; {config["samples"]} sampled answers per row at the end.
- Wall time spent computing these results: {timings["compute_seconds"] / 60:.1f} min, in {len(timings["invocations"])} invocation(s)
  (a cached rerun adds nothing):
{invocations}
- Machine: {machine["platform"]}, {machine["cpu_count"]} CPUs, torch {machine["torch"]},
  transformers {machine["transformers"]}, trl {machine["trl"]}, CUDA: {machine["cuda"]}.

Commands (`papo train`, one per run):

```
{commands}
```
"""
    path = out / "RESULTS.md"
    path.write_text(text)
    return path
