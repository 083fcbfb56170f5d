"""The `papo train` recipe: YAML preset + CLI overrides -> model, data, rewards -> PAPOTrainer.

    papo train                                   # the `demo` preset: warm-started small model, synthetic data, CPU
    papo train --config papo-g-qwen2.5vl-3b-lora # a shipped preset (papo/configs/<name>.yaml)
    papo train --config my.yaml --max_steps 50   # any YAML; command-line flags override it

Arguments are TRL's: `PAPOConfig` (a `GRPOConfig`), TRL's `ModelConfig` (model id, dtype, LoRA,
4-bit) and `PAPOScriptArguments` below, parsed by `trl.TrlParser`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from transformers import TrainerCallback

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "demo"


@dataclass
class PAPOScriptArguments:
    """Data and reward choices of a `papo train` run (the algorithm lives in PAPOConfig)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, local dir or parquet in the official schema; default: the synthetic data."
        },
    )
    dataset_split: str = field(default="train")
    max_train_samples: int | None = field(default=None)
    skip_invalid: bool = field(
        default=False, metadata={"help": "skip and count invalid rows instead of failing."}
    )
    grader: str = field(default="mathruler", metadata={"help": "mathruler (official) | math_verify."})
    format_pattern: str = field(default="strict", metadata={"help": "strict (Qwen2.5) | relaxed (Qwen3)."})
    lora_vision_tower: bool = field(default=False, metadata={"help": "also put LoRA on the vision tower."})
    resume: str | None = field(
        default=None,
        metadata={
            "help": "resume training: 'latest' (newest complete checkpoint in output_dir) or a checkpoint path."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "skip/reject prompts longer than this many tokens, images included (official 4096)."
        },
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "image processor lower bound (official 200704)."}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "image processor upper bound (official 1003520)."}
    )
    embedded_dir: str = field(
        default="outputs", metadata={"help": "where the embedded model / synthetic data are built if absent."}
    )


def resolve_config_argument(argv: list[str]) -> list[str]:
    """Default to the demo preset; let `--config NAME` name a shipped preset."""
    argv = list(argv)
    if "--config" not in argv:
        return ["--config", str(CONFIG_DIR / f"{DEFAULT_PRESET}.yaml"), *argv]
    index = argv.index("--config") + 1
    if index >= len(argv):
        raise ValueError("--config needs a YAML path or a preset name: " + ", ".join(available_presets()))
    value = argv[index]
    if not os.path.exists(value):
        preset = CONFIG_DIR / f"{value.removesuffix('.yaml')}.yaml"
        if not preset.exists():
            raise FileNotFoundError(
                f"--config {value}: no such file and no such preset; presets: {', '.join(available_presets())}"
            )
        argv[index] = str(preset)
    return argv


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def parse_train_args(argv: list[str]):
    from trl import ModelConfig, TrlParser

    from papo.trainer import PAPOConfig

    parser = TrlParser((PAPOScriptArguments, PAPOConfig, ModelConfig), prog="papo train")
    return parser.parse_args_and_config(resolve_config_argument(argv))


def build_peft_config(model_args, script_args, model=None):
    """TRL's LoRA config from ModelConfig, targeting the language model unless told otherwise.

    `model`: the loaded model; its family (`papo.families`) decides the module names (Qwen's if None).
    """
    from trl import get_peft_config

    from papo.families import family_of
    from papo.modeling import lora_target_modules

    peft_config = get_peft_config(model_args)
    if peft_config is not None and model_args.lora_target_modules is None:
        family = family_of(model) if model is not None else None
        peft_config.target_modules = lora_target_modules(script_args.lora_vision_tower, family)
    return peft_config


class JsonlMetricsCallback(TrainerCallback):
    """Append every log (reward, perception_kl, entropies, clip fractions, ...) to metrics.jsonl."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def train(script_args, training_args, model_args):
    """Run one training job; returns the trainer (after `train()` and `save_model()`)."""
    import torch

    from papo.data.loading import filter_long_prompts, load_training_dataset
    from papo.embedded import embedded_dataset, embedded_model
    from papo.guards import OOM_ADVICE
    from papo.modeling import load_model_for_training
    from papo.rewards import make_reward_funcs
    from papo.trainer import PAPOTrainer

    if model_args.model_name_or_path is None:
        model_args.model_name_or_path = str(embedded_model(script_args.embedded_dir))
        print(
            f"No model given: using the embedded warm-started Qwen2.5-VL in {model_args.model_name_or_path}"
        )
    dataset_source = script_args.dataset_name
    if dataset_source is None:
        dataset_source = embedded_dataset(script_args.embedded_dir, seed=training_args.seed)
        print(f"No dataset given: using the synthetic perception dataset in {dataset_source}")
    train_dataset, report = load_training_dataset(
        dataset_source,
        script_args.dataset_split,
        skip_invalid=script_args.skip_invalid,
        max_samples=script_args.max_train_samples,
    )
    print(f"Training data {dataset_source} [{script_args.dataset_split}]: {report}")

    if model_args.load_in_8bit:
        raise ValueError("load_in_8bit is not supported; use load_in_4bit (QLoRA) or neither (LoRA)")
    model, processor = load_model_for_training(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        load_in_4bit=model_args.load_in_4bit,
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        min_pixels=script_args.min_pixels,
        max_pixels=script_args.max_pixels,
    )
    if script_args.max_prompt_length is not None:
        train_dataset, report = filter_long_prompts(
            train_dataset,
            processor,
            script_args.max_prompt_length,
            skip_invalid=script_args.skip_invalid,
            report=report,
        )
        print(f"After the prompt-length filter (max {script_args.max_prompt_length} tokens): {report}")
    # One trainer for all four algorithms: GRPO/DAPO are PAPOTrainer with perception_loss: false.
    trainer = PAPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=make_reward_funcs(script_args.grader, script_args.format_pattern),
        args=training_args,
        train_dataset=train_dataset,
        peft_config=build_peft_config(model_args, script_args, model),
        callbacks=[JsonlMetricsCallback(Path(training_args.output_dir) / "metrics.jsonl")],
    )
    save_resolved_config(
        Path(training_args.output_dir) / "papo_config.yaml", script_args, training_args, model_args
    )
    resume_from = (
        resolve_resume(script_args.resume, training_args.output_dir) or training_args.resume_from_checkpoint
    )
    if resume_from:
        print(f"Resuming from {resume_from}")
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError as err:
        # The adapter weights are intact after an OOM: keep them, then explain what to lower.
        rescue = Path(training_args.output_dir) / f"interrupted-step-{trainer.state.global_step}"
        trainer.save_model(str(rescue))
        raise TrainingOutOfMemory(f"{OOM_ADVICE}. The adapter so far was saved to {rescue}.") from err
    print(f"Training data summary: {report}")
    if trainer.collapse_guard.stopped:
        print(
            f"Stopped on collapse signs at step {trainer.state.global_step}: the final adapter was not saved; "
            f"use the last checkpoint in {training_args.output_dir}."
        )
        return trainer
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    if (Path(training_args.output_dir) / "adapter_config.json").is_file():
        from papo.hub import write_training_card

        write_training_card(training_args.output_dir)  # our card, not PEFT's "More Information Needed"
    return trainer


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """`latest` -> the newest complete `checkpoint-N` in output_dir; a path -> itself (checked)."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume is None:
        return None
    if resume == "latest":
        found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if found is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint-N folder in {output_dir}")
        return found
    if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no trainer_state.json)")
    return resume


class TrainingOutOfMemory(RuntimeError):
    """CUDA ran out of memory during training; the message says which settings to lower."""


def save_resolved_config(path: Path, script_args, training_args, model_args) -> None:
    """Everything the run used (script, model and training arguments), as one YAML for the record."""
    resolved = {}
    for args in (script_args, model_args, training_args):
        for key, value in asdict(args).items():
            if key in ("masking",) or key.startswith("_"):
                continue
            value = getattr(value, "value", value)  # enums (save_strategy, ...) as their plain values
            plain = isinstance(value, str | int | float | bool | type(None) | list | dict)
            resolved[key] = value if plain else str(value)
    from papo.files import write_text_atomically

    write_text_atomically(path, yaml.safe_dump(resolved, sort_keys=True))
