"""Greedy accuracy of a policy on the synthetic test split, per task, with and without the image.

The "blind" control replaces every image by an all-black image of the same size (a 100% patch mask):
the question text is unchanged, so the gap between normal and blind accuracy measures how much the
policy actually uses the image.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import datasets
from PIL import Image

from papo.analysis import perception_kl_per_token
from papo.data.loading import build_prompt
from papo.generation import generate_completions
from papo.rewards import accuracy_score, format_score


def blind_images(images: list[Image.Image]) -> list[Image.Image]:
    """All-black copies of `images` (same sizes): the image carries no information."""
    return [Image.new("RGB", image.size, (0, 0, 0)) for image in images]


def evaluate_policy(
    model,
    processor,
    rows: datasets.Dataset,
    *,
    blind: bool = False,
    perception_kl: bool = False,
    samples: int = 0,
    sample_seed: int = 0,
    max_new_tokens: int = 32,
    batch_size: int = 50,
) -> dict[str, Any]:
    """Greedy-decode every row of `rows` (synthetic schema) and grade it like the reward does.

    Returns ``{"accuracy": float, "format": float, "by_task": {task: acc}, "by_dependency":
    {"high"|"low": acc}, "n": int}``; accuracies are fractions in [0, 1]. With `perception_kl`, also
    ``"perception_kl"``: the token mean of KL(π(·|I) ‖ π(·|I_mask)) over the answers (full vocabulary,
    training's mask: 60% of 14-px patches blackened, seeded per prompt as in training), overall,
    ``"perception_kl_by_dependency"`` and ``"perception_kl_by_task"``. With `samples` = k > 0, also ``"sampled"``: k completions per row
    at temperature 1 (seeded by `sample_seed`), as RL draws them: mean accuracy overall / per task /
    per dependency, and ``mixed``, the fraction of rows whose k samples are neither all right nor all
    wrong (the rows on which a GRPO group of k has a learning signal).
    """
    prompts = [build_prompt(problem) for problem in rows["problem"]]
    images = [blind_images(row) if blind else row for row in rows["images"]]
    completions = generate_completions(
        model,
        processor,
        prompts,
        images,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        batch_size=batch_size,
        show_progress=False,
    )
    correct: dict[str, list[float]] = defaultdict(list)
    by_dependency: dict[str, list[float]] = defaultdict(list)
    formats = []
    for (text, _), task, dependency, answer in zip(
        completions, rows["task"], rows["vision_dependency"], rows["answer"], strict=True
    ):
        score = accuracy_score(text, answer)
        correct[task].append(score)
        by_dependency[dependency].append(score)
        formats.append(format_score(text))
    result: dict[str, Any] = {}
    if perception_kl:
        ids = [completion for _, completion in completions]
        per_row = perception_kl_per_token(model, processor, prompts, images, ids, batch_size=batch_size)
        result["perception_kl"] = _token_mean(per_row)
        for key, column in (
            ("perception_kl_by_dependency", "vision_dependency"),
            ("perception_kl_by_task", "task"),
        ):
            groups = rows[column]
            result[key] = {
                group: _token_mean([row for row, g in zip(per_row, groups, strict=True) if g == group])
                for group in sorted(set(groups))
            }
    if samples:
        result["sampled"] = _sampled_accuracy(
            model, processor, rows, prompts, images, samples, sample_seed, max_new_tokens, batch_size
        )
    every = [score for scores in correct.values() for score in scores]
    return result | {
        "accuracy": sum(every) / len(every),
        "format": sum(formats) / len(formats),
        "by_task": {task: sum(s) / len(s) for task, s in sorted(correct.items())},
        "by_dependency": {dep: sum(s) / len(s) for dep, s in sorted(by_dependency.items())},
        "n": len(every),
    }


def _token_mean(rows: list[list[float]]) -> float:
    values = [value for row in rows for value in row]
    return sum(values) / max(len(values), 1)


def _sampled_accuracy(
    model, processor, rows, prompts, images, samples: int, seed: int, max_new_tokens: int, batch_size: int
) -> dict[str, Any]:
    """k sampled completions per row (temperature 1, top_p 1, seeded): accuracy and the mixed fraction."""
    per_row: list[list[float]] = [[] for _ in prompts]
    for k in range(samples):
        completions = generate_completions(
            model,
            processor,
            prompts,
            images,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            batch_size=batch_size,
            seed=seed * 1000 + k,
            show_progress=False,
        )
        for scores, (text, _), answer in zip(per_row, completions, rows["answer"], strict=True):
            scores.append(accuracy_score(text, answer))
    by_task: dict[str, list[float]] = defaultdict(list)
    by_dependency: dict[str, list[float]] = defaultdict(list)
    for scores, task, dependency in zip(per_row, rows["task"], rows["vision_dependency"], strict=True):
        by_task[task] += scores
        by_dependency[dependency] += scores
    every = [score for scores in per_row for score in scores]
    return {
        "k": samples,
        "accuracy": sum(every) / len(every),
        "mixed": sum(0 < sum(scores) < len(scores) for scores in per_row) / len(per_row),
        "by_task": {task: sum(v) / len(v) for task, v in sorted(by_task.items())},
        "by_dependency": {dep: sum(v) / len(v) for dep, v in sorted(by_dependency.items())},
    }
