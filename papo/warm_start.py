"""A warm-started small VLM that *sees*: supervised fine-tuning on the handwritten-digit tasks.

RL needs a policy that already solves some prompts: a random model's reward is always 0, so GRPO's
group advantages are all 0 and nothing moves. And PAPO needs a policy whose answers depend on the
image, or there is nothing for its perception loss to act on. This module builds the small policy the
demo, the Space, the notebooks and the mini reproduction (``benchmarks/mini_repro``) start from: a
~2.4M-parameter model of the real Qwen2.5-VL architecture, trained from random init with TRL's
``SFTTrainer`` on the digit tasks (`papo.data.digits`: real handwritten scans, one visual token per
digit), answering in the official format after a short thought that names what it sees::

    <think>4+7</think>\\boxed{11}

The prompt is the one RL trains on (`papo.data.loading.build_prompt`: the problem plus the official
instruction), and the loss covers only the completion. The vision tower and merger train at a tenth of
the language model's learning rate: at the full rate they collapse to one large image-independent
output within a few hundred steps and the model answers blind (what happened to the first warm start,
trained on the 64-px drawn tasks). Everything is seeded, so the same call on the same software gives
the same checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets

from papo.tiny import TinyVLMSpec

__all__ = [
    "WARM_START_SPEC",
    "WarmStartConfig",
    "describe",
    "sft_completion",
    "build_sft_dataset",
    "train_warm_start",
]

# ~2.4M parameters: big enough to learn the tasks in minutes on 2 CPU cores, small enough to ship.
WARM_START_SPEC = TinyVLMSpec(
    hidden_size=192,
    num_layers=4,
    num_heads=6,
    num_kv_heads=2,
    intermediate_size=512,
    vision_hidden_size=96,
    vision_depth=3,
    vision_heads=4,
    vision_intermediate_size=256,
    # 28 px (one digit) must stay 28 px: Qwen's processor upscales anything below min_pixels.
    min_pixels=28 * 28,
)


def describe(task: str, truth: dict[str, Any], answer: str) -> str:
    """A short thought that states what the image shows (from the sample's ground truth).

    Saying *what is seen* before answering gives image-dependent target tokens ahead of the answer, so
    the answer can condition on them (`papo.data.digits.digit_thought` for the digit tasks).
    """
    from papo.data.digits import DIGIT_TASKS, digit_thought

    if task in DIGIT_TASKS:
        return digit_thought(task, truth)
    if task == "count_shapes":
        return f"I see {len(truth['shapes'])} shapes; {answer} match."
    if task == "read_number":
        return f"The digits are {' '.join(answer)}."
    if task == "compare_bars":
        word = "tallest" if truth["tallest"] else "shortest"
        return f"There are {len(truth['bars'])} bars; the {word} is {answer}."
    if task == "which_side":
        return f"Left {truth['left']} dots, right {truth['right']} dots."
    if task == "text_arithmetic":
        return f"{truth['a']} {truth['op']} {truth['b']} = {answer}."
    return "I look at the image."


@dataclass
class WarmStartConfig:
    """How the warm start is trained (defaults: the shipped checkpoint)."""

    tasks: tuple[str, ...] = ("digits",)  # task or task-set names (papo.data.synthetic.TASK_SETS)
    # Rows per round-robin turn for each task (default 1). The sum and count tasks need two digits read
    # and combined; at equal shares they were still near chance after 500 steps (sum 11 %, count 21 %)
    # while reading one digit reached 75 %.
    task_weights: dict[str, int] = field(default_factory=lambda: {"digit_sum": 2, "digit_count": 2})
    num_train: int = 48000  # SFT rows (seeded; split "sft", drawn from the training scans)
    data_seed: int = 1
    model_seed: int = 0
    max_steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 2e-3
    # The vision tower and merger learn at this fraction of `learning_rate`. At the full rate they blew up
    # (visual-token norm ~70 vs ~0.4 for text embeddings, spread across images ~1 % of the mean) and the
    # model answered blind; frozen they stay a fixed random feature extractor, which also works.
    vision_lr_scale: float = 0.1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0


def sft_completion(task: str, truth: dict[str, Any], answer: str) -> str:
    """The target completion: what the image shows, then the boxed answer (the official format)."""
    return f"<think>{describe(task, truth, answer)}</think>\\boxed{{{answer}}}"


def build_sft_dataset(
    num_rows: int,
    seed: int,
    tasks: tuple[str, ...] | list[str] = ("digits",),
    image_size: int = 64,
    task_weights: dict[str, int] | None = None,
) -> datasets.Dataset:
    """`num_rows` synthetic items (tasks round-robin, each task `task_weights[task]` rows per turn
    (default 1), seeded, split name "sft" so they differ from the train/test splits and digits come from
    the training scans) in TRL's conversational prompt-completion format with an ``images`` column."""
    from papo.data.loading import IMAGE_PLACEHOLDER, build_prompt
    from papo.data.synthetic import ALL_TASKS, _resolve_tasks, _row_rng, draw_task

    names = _resolve_tasks(tasks)
    weights = dict(task_weights or {})
    for task, weight in weights.items():
        if task not in ALL_TASKS:  # a weight for a known task that is not selected is simply unused
            raise ValueError(
                f"task_weights names {task!r}, which is not a task; valid tasks: {', '.join(ALL_TASKS)}"
            )
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"task_weights[{task!r}] must be an integer >= 1, got {weight!r}")
    task_list = [task for task in names for _ in range(weights.get(task, 1))]
    columns: dict[str, list[Any]] = {"prompt": [], "completion": [], "images": [], "task": []}
    for index in range(num_rows):
        task = task_list[index % len(task_list)]
        sample = draw_task(task, _row_rng(seed, "sft", index), image_size, split="sft")
        text = sft_completion(task, sample.truth, sample.answer)
        columns["prompt"].append(build_prompt(IMAGE_PLACEHOLDER + sample.question))
        columns["completion"].append([{"role": "assistant", "content": [{"type": "text", "text": text}]}])
        columns["images"].append([sample.image])
        columns["task"].append(task)
    return datasets.Dataset.from_dict(columns)


def _optimizer(model, config: WarmStartConfig):
    """AdamW with the vision tower + merger (``model.model.visual``) at ``vision_lr_scale`` x the rate."""
    import torch

    visual = {id(p) for p in model.model.visual.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in visual], "lr": config.learning_rate},
        {
            "params": [p for p in model.model.visual.parameters()],
            "lr": config.learning_rate * config.vision_lr_scale,
        },
    ]
    groups = [g for g in groups if g["lr"] > 0]
    if config.vision_lr_scale == 0:
        model.model.visual.requires_grad_(False)
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def save_compact(model, processor, path: Path) -> Path:
    """Save with the weights stored in bf16 (half the bytes) but ``dtype: float32`` in config.json,
    so ``from_pretrained(dtype="auto")`` loads float32 weights: small enough to ship in the package."""
    import torch

    model.to(torch.bfloat16).save_pretrained(path)
    model.to(torch.float32)
    processor.save_pretrained(path)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def train_warm_start(
    output_dir: str | os.PathLike,
    config: WarmStartConfig | None = None,
    spec: TinyVLMSpec = WARM_START_SPEC,
    overwrite: bool = False,
) -> Path:
    """Train the warm start and save model + processor to `output_dir` (atomically: temp dir, rename).

    An existing checkpoint (a directory with ``config.json``) is kept unless `overwrite=True`.
    Weights are stored in bf16 and load as float32 (`save_compact`); ``warm_start.json`` records the
    settings and the training time.
    """
    import torch
    from trl import SFTConfig, SFTTrainer

    from papo.files import write_dir_atomically
    from papo.tiny import build_tiny_vlm

    config = config or WarmStartConfig()
    output_dir = Path(output_dir)
    if (output_dir / "config.json").exists() and not overwrite:
        return output_dir
    train_dataset = build_sft_dataset(
        config.num_train, config.data_seed, config.tasks, task_weights=config.task_weights
    )
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=config.model_seed, spec=spec)
    model.train()
    optimizer = _optimizer(model, config)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # The trainer's own output folder (nothing is saved: save_strategy "no") stays out of the checkpoint.
    with tempfile.TemporaryDirectory(prefix=f".{output_dir.name}.trainer-", dir=output_dir.parent) as scratch:
        args = SFTConfig(
            output_dir=scratch,
            max_steps=config.max_steps,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=int(config.warmup_ratio * config.max_steps),
            weight_decay=config.weight_decay,
            completion_only_loss=True,
            max_length=None,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            seed=config.model_seed,
            data_seed=config.data_seed,
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processor,
            optimizers=(optimizer, None),  # the trainer adds the cosine schedule to both groups
        )
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
    record = {"config": asdict(config), "spec": asdict(spec), "train_seconds": train_seconds}

    def write(folder: Path) -> None:
        save_compact(model.eval(), processor, folder)
        (folder / "warm_start.json").write_text(json.dumps(record, indent=1))

    return write_dir_atomically(output_dir, write)
