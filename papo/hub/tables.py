"""The tables and Hub metadata the cards show, from a run's config and ``papo eval``'s results.

The PAPO / GRPO settings and LoRA settings of a run (``_config_rows``, ``_lora_rows``), eval results as
table rows (``_normalise_eval_results``, ``_results_table``, the paired statistics of ``_comparison_rows``),
the ``model-index`` metadata (``_model_index``: only complete splits of Hub datasets), and the small helpers
they share (``_cell``: a value as one markdown cell; ``_config_name``: a benchmark as a dataset config).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

DEFAULT_METRIC_NAME = "accuracy (avg@8)"


SYNTHETIC_TASKS = (
    *("count_shapes", "read_number", "compare_bars", "which_side", "text_arithmetic"),
    *("digit_read", "digit_sum", "digit_larger", "digit_count", "digit_sum_text"),
)


# (key in papo_config.yaml, meaning): the PAPO / GRPO settings shown on the card, in this order.
CONFIG_TABLE: tuple[tuple[str, str], ...] = (
    ("model_name_or_path", "base model the run loaded"),
    ("dataset_name", "training data"),
    ("perception_loss", "PAPO perception loss on (off: GRPO/DAPO baseline)"),
    ("perception_kl_coef", "γ, weight of the perception KL (maximised)"),
    ("perception_kl_estimator", "KL estimator (k3 = verl low_var_kl)"),
    ("perception_kl_schedule", "γ schedule"),
    ("recompute_masked_logps", "gradient through the masked branch"),
    ("mask_strategy", "how the image is masked"),
    ("mask_ratio", "probability each patch is blackened"),
    ("mask_patch_size", "patch side, in pixels"),
    ("entropy_original_coef", "η1, entropy penalty on π_θ(·|I)"),
    ("entropy_masked_coef", "η2, entropy penalty on π_θ(·|I_mask)"),
    ("beta", "β, reference-model KL (0: no reference model)"),
    ("loss_type", "loss aggregation (bnpo: token mean)"),
    ("epsilon", "clip ratio, low"),
    ("epsilon_high", "clip ratio, high"),
    ("delta", "dual-clip bound"),
    ("scale_rewards", "advantage normalisation"),
    ("reward_weights", "weights of accuracy, format"),
    ("dynamic_sampling", "DAPO dynamic sampling (drop all-0/all-1 groups)"),
    ("num_generations", "G, rollouts per prompt"),
    ("temperature", "rollout temperature"),
    ("top_p", "rollout top-p"),
    ("max_completion_length", "max generated tokens"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "LR schedule"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max optimizer steps"),
    ("per_device_train_batch_size", "completions per device micro-batch"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("steps_per_generation", "micro-batches per generation batch (3 × accumulation: 3 updates)"),
    ("disable_dropout", "dropout off everywhere (official)"),
    ("lora_r", "LoRA rank"),
    ("lora_alpha", "LoRA alpha"),
    ("lora_dropout", "LoRA dropout"),
    ("lora_vision_tower", "LoRA on the vision tower too"),
    ("load_in_4bit", "QLoRA: base in 4-bit NF4"),
    ("min_pixels", "min image pixels"),
    ("max_pixels", "max image pixels"),
    ("seed", "seed"),
)


def _config_rows(run_config: dict) -> list[dict[str, str]]:
    rows = []
    for key, meaning in CONFIG_TABLE:
        if key not in run_config or run_config[key] is None:
            continue
        if key == "max_steps" and isinstance(run_config[key], int) and run_config[key] <= 0:
            continue
        rows.append({"key": key, "value": _cell(run_config[key]), "meaning": _cell(meaning)})
    return rows


def _lora_rows(adapter_config: dict) -> list[str]:
    rows = []
    if adapter_config.get("peft_type"):
        rows.append(f"PEFT type: `{adapter_config['peft_type']}`")
    for key in ("r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora"):
        if adapter_config.get(key) not in (None, False):
            rows.append(f"`{key}`: {_cell(adapter_config[key])}")
    targets = adapter_config.get("target_modules")
    if targets:
        targets = sorted(targets) if isinstance(targets, list) else targets
        rows.append(f"`target_modules`: {_cell(targets)}")
    return rows


def _cell(value: Any) -> str:
    """A value as one markdown table cell."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(_cell(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _accuracy(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("accuracy", value.get("avg", value.get("mean")))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _run_view(results: dict) -> dict:
    """`papo eval`'s results.json keeps the grouping under "groups" and this run's averages under
    "summary"; the cards want the averages."""
    summary = results.get("summary")
    if isinstance(summary, dict):
        return {**results, "groups": summary.get("groups", {}), "overall": summary.get("overall")}
    return results


def _normalise_eval_results(eval_results: dict) -> dict[str, Any]:
    """{"benchmarks": [{name, accuracy, value, n}], "groups": [...], "overall": str|None, metric_name, ...}."""
    protocol = eval_results.get("protocol")
    if isinstance(protocol, str) and protocol:
        metric_name, protocol_text = protocol, ""
    elif isinstance(protocol, dict):
        k = protocol.get("samples_per_question")
        metric_name = f"accuracy (avg@{k})" if k else DEFAULT_METRIC_NAME
        protocol_text = _protocol_summary(protocol, short=True)
    else:
        metric_name, protocol_text = DEFAULT_METRIC_NAME, ""

    def rows(mapping: Any) -> list[dict[str, Any]]:
        out = []
        for name, value in (mapping or {}).items():
            acc = _accuracy(value)
            if acc is None:
                continue
            n = value.get("n") if isinstance(value, dict) else None
            dataset = value.get("dataset") if isinstance(value, dict) else None
            complete = bool(value.get("complete")) if isinstance(value, dict) else False
            cited = bool(dataset) and complete and not _is_synthetic(str(name))
            source = f"`{dataset}`" if dataset else "local data"
            if dataset and not complete:
                source += " (part)"
            out.append(
                {
                    "name": str(name),
                    "value": acc,
                    "accuracy": f"{acc:.2f}",
                    "n": n if n else "—",
                    "dataset": dataset if cited else None,
                    "source": source,
                }
            )
        return out

    overall = _accuracy(eval_results.get("overall"))
    benchmarks = rows(eval_results.get("benchmarks"))
    cited = {row["dataset"] for row in benchmarks}
    return {
        "benchmarks": benchmarks,
        "groups": rows(eval_results.get("groups")),
        "overall": None if overall is None else f"{overall:.2f}",
        "overall_value": overall,
        "metric_name": metric_name,
        "protocol_text": protocol_text,
        # averages are cited only when every benchmark behind them is a complete split of one Hub dataset
        "averages_dataset": next(iter(cited)) if len(cited) == 1 and None not in cited else None,
        **_comparison_rows(eval_results.get("comparison")),
    }


def _comparison_rows(comparison: Any) -> dict[str, Any]:
    """The card's paired-statistics table from results.json's "comparison" (papo.stats via `papo eval --compare`)."""
    if not isinstance(comparison, dict) or not isinstance(comparison.get("benchmarks"), dict):
        return {"comparison_rows": [], "comparison_note": ""}

    def row(name: str, r: dict, q: Any) -> dict[str, str]:
        return {
            "name": _cell(name),
            "n": str(r.get("n", "—")),
            "diff": f"{r['diff']:+.2f}",
            "ci": f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]",
            "p": f"{r['mcnemar_p']:.3g}",
            "q": "–" if q is None else f"{q:.3g}",
            "verdict": _cell(r.get("verdict", "")),
        }

    rows = [row(name, r, r.get("q_value")) for name, r in comparison["benchmarks"].items()]
    if isinstance(comparison.get("overall"), dict):
        rows.append(row("Overall", comparison["overall"], None))
    note = (
        f"Δ = this adapter − {_cell(comparison.get('baseline') or 'the baseline')}, in percentage points; "
        f"{comparison.get('confidence', 0.95):.0%} CI by paired bootstrap over questions "
        f"({comparison.get('n_resamples', 10000):,} replicates, seed {comparison.get('seed', 0)}); McNemar's exact "
        f"test on {comparison.get('mcnemar_on', 'per-question correctness')}; q: Benjamini-Hochberg across "
        "benchmarks. A Δ whose CI contains 0 is inside the noise."
    )
    return {"comparison_rows": rows, "comparison_note": note}


def _model_index(evals: dict[str, Any], eval_result_cls: type) -> list:
    """Results on Hub datasets only: a benchmark evaluated on a complete split of a Hub dataset (recorded by
    `papo eval` as ``dataset`` and ``complete``); group and overall averages only when all benchmarks are.
    Local, partial or synthetic evaluations stay in the card's table, never in the metadata."""

    def result(name: str, value: float, config: str, dataset: str) -> Any:
        return eval_result_cls(
            task_type="image-text-to-text",
            task_name="Multimodal reasoning",
            dataset_type=dataset,
            dataset_name=name,
            dataset_config=config,
            dataset_split="test",
            metric_type="accuracy",
            metric_name=evals["metric_name"],
            metric_value=round(value, 2),
        )

    # The Hub groups model-index entries by (task, dataset type, config, split): each needs its own config.
    results = [
        result(row["name"], row["value"], _config_name(row["name"]), row["dataset"])
        for row in evals["benchmarks"]
        if row["dataset"]
    ]
    averages = evals["averages_dataset"]
    if averages:
        results += [
            result(f"{row['name']} (average)", row["value"], "average-" + _config_name(row["name"]), averages)
            for row in evals["groups"]
        ]
        if evals["overall_value"] is not None:
            results.append(result("Overall (average)", evals["overall_value"], "average-overall", averages))
    return results


def _eval_source(results: dict, name: str, synthetic: bool) -> str:
    """Where a benchmark's questions came from, as recorded by `papo eval` (never guessed from the name)."""
    recorded = (results.get("benchmarks") or {}).get(name)
    dataset = recorded.get("dataset") if isinstance(recorded, dict) else None
    if dataset:
        return f"`{dataset}`" + ("" if recorded.get("complete") else " (part of the split)")
    return "papo-hub synthetic (MIT)" if synthetic else "local data"


def _protocol_summary(protocol: dict, short: bool = False) -> str:
    k = protocol.get("samples_per_question")
    parts = []
    if k:
        parts.append(f"{k} samples per question" if short else f"avg@{k} ({k} samples per question)")
    for key, label in (
        ("temperature", "temperature"),
        ("top_p", "top-p"),
        ("max_new_tokens", "max new tokens"),
    ):
        if protocol.get(key) is not None:
            parts.append(f"{label} {_cell(protocol[key])}")
    if protocol.get("grader"):
        parts.append(f"grader `{protocol['grader']}`")
    if short:
        return ", ".join(parts)
    if not parts:
        return "The protocol is recorded in `results.json`."
    return "Sampling and grading: " + ", ".join(parts) + "; no format requirement."


def _results_table(results: dict) -> str:
    lines = ["| Benchmark | Accuracy (%) | Questions |", "|---|---|---|"]
    for name, value in (results.get("benchmarks") or {}).items():
        acc = _accuracy(value)
        n = value.get("n", "—") if isinstance(value, dict) else "—"
        lines.append(f"| {name} | {'—' if acc is None else f'{acc:.2f}'} | {n} |")
    for name, value in (results.get("groups") or {}).items():
        acc = _accuracy(value)
        if acc is not None:
            lines.append(f"| **{name}** | **{acc:.2f}** | |")
    overall = _accuracy(results.get("overall"))
    if overall is not None:
        lines.append(f"| **Overall** | **{overall:.2f}** | |")
    return "\n".join(lines)


_COLUMN_DOCS = {
    "id": "question id in the source benchmark",
    "benchmark": "benchmark name",
    "question": "the question as given to the model (the image is passed separately)",
    "image": "the question's image",
    "reference": "the reference answer",
    "samples": "the k sampled answers (full text, including the reasoning)",
    "extracted": "per sample, the content of its last `\\boxed{}` (null if none)",
    "correct": "per sample, whether the grader accepted the extracted answer",
    "accuracy": "mean of `correct` for this question (0 to 1)",
    "tokens": "per sample, the text each generated token adds (joined, they give the answer; a character split over several tokens appears on the last)",
    "perception_kl": "per sample, per generated token: KL(π(·|I) ‖ π(·|I_mask)), aligned with `tokens`",
    "visual_dependency": "per sample, per generated token: d_t, the k3 estimate of that KL on the generated token "
    "(what VPPO/PGPO act on), aligned with `tokens`",
}


def _config_name(benchmark: str) -> str:
    name = re.sub(r"[^\w.-]+", "_", benchmark).strip("_.-")
    if not name:
        raise ValueError(f"cannot make a dataset configuration name from {benchmark!r}")
    return name


def _is_synthetic(name: str) -> bool:
    lower = name.lower()
    return "synthetic" in lower or lower in SYNTHETIC_TASKS
