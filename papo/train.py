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
from dataclasses import fields as dataclass_fields
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
    vision_dtype: str | None = field(
        default=None,
        metadata={
            "help": "float32: keep the vision tower and projector in fp32, outside fp16 autocast (a T4 with "
            "fp16: Qwen2.5-VL's vision MLPs overflow); default: the model's dtype."
        },
    )
    embedded_dir: str = field(
        default="outputs", metadata={"help": "where the embedded model / synthetic data are built if absent."}
    )


def resolve_config_argument(argv: list[str]) -> list[str]:
    """Default to the demo preset; let `--config NAME` (or `--config=NAME`) name a shipped preset."""
    argv = [piece for arg in argv for piece in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
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


def train_help() -> str:
    """`papo train --help`: usage, the presets and the PAPO options; TRL's ~200 options are behind
    `--help-all` (they are all accepted, but listed first they buried everything else)."""
    from dataclasses import MISSING, fields

    from papo.config import PAPOConfig

    def options(cls, names=None) -> list[str]:
        lines = []
        for f in fields(cls):
            if names is not None and f.name not in names:
                continue
            default = f.default if f.default is not MISSING else "…"
            lines.append(f"  --{f.name} (default: {default})")
            if f.metadata.get("help"):
                lines.append(f"      {f.metadata['help']}")
        return lines

    own = set(PAPOConfig.__annotations__)  # declared (or re-defaulted) by PAPOConfig itself
    return "\n".join(
        [
            "usage: papo train [--config PRESET | --config FILE.yaml] [--OPTION VALUE ...]",
            "",
            f"Train with PAPO (or the GRPO/DAPO baseline) on TRL's GRPOTrainer. Without --config: the "
            f"`{DEFAULT_PRESET}` preset (the embedded warm start on synthetic digits, CPU). Options given on the "
            "command line override the YAML.",
            "",
            "presets (papo/configs/<name>.yaml):",
            *(f"  {name}" for name in available_presets()),
            "",
            "PAPO options (PAPOConfig; defaults are the official PAPO-G 3B values):",
            *options(PAPOConfig, own),
            "",
            "data and run options:",
            *options(PAPOScriptArguments),
            "",
            "Common TRL options: --output_dir, --max_steps, --learning_rate, --per_device_train_batch_size, "
            "--num_generations, --model_name_or_path, --use_peft, --lora_r, --load_in_4bit, --dtype, --seed.",
            "Every option (TRL's GRPOConfig, TrainingArguments and ModelConfig too): papo train --help-all",
        ]
    )


def parse_train_args(argv: list[str]):
    """(PAPOScriptArguments, PAPOConfig, ModelConfig) from a YAML (`--config`) and command-line flags.

    Errors a first run meets say what to change: an unknown key or flag gets "did you mean"; bf16 on a
    machine without it names the device and the setting (TRL's own message only says "bf16/gpu").
    """
    import torch
    from trl import ModelConfig, TrlParser

    from papo.config import PAPOConfig

    classes = (PAPOScriptArguments, PAPOConfig, ModelConfig)
    known = {f.name for cls in classes for f in dataclass_fields(cls)}
    argv = resolve_config_argument(argv)
    config_path = argv[argv.index("--config") + 1]
    config = yaml.safe_load(Path(config_path).read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(
            f"--config {config_path}: expected a YAML mapping of option: value, got {type(config).__name__}"
        )
    for key in config:
        if key not in known:
            raise ValueError(f"--config {config_path}: unknown key {key!r}{_did_you_mean(key, known)}")
    bf16_given = "bf16" in config or any(a == "--bf16" or a.startswith("--bf16=") for a in argv)
    if not torch.cuda.is_available():
        if not bf16_given:
            argv += ["--bf16", "false"]  # TRL defaults to bf16, which a CPU cannot run: train in float32
        elif _flag_value(argv, "bf16", config.get("bf16")) in (True, "true", "True", "1"):
            raise ValueError(
                f"bf16 is set (in {config_path} or on the command line) but this machine has no CUDA GPU: "
                "set `bf16: false` (a CPU run trains in float32), e.g. --bf16 false"
            )
    parser = TrlParser(classes, prog="papo train")
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as err:
        if "not used by the HfArgumentParser" in str(err):
            flags = [a[2:].split("=")[0] for a in argv if a.startswith("--")]
            unknown = [f for f in flags if f not in known | {"config"} and f.removeprefix("no_") not in known]
            hints = "; ".join(f"--{f}{_did_you_mean(f, known)}" for f in unknown)
            raise ValueError(
                f"unknown option(s): {hints or err}. `papo train --help` lists the options"
            ) from err
        if "bf16/gpu" in str(err):
            name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
            raise ValueError(
                f"bf16 is on but this device ({name}) does not support it: set `bf16: false` and `fp16: true` "
                "(T4, V100), e.g. --bf16 false --fp16 true"
            ) from err
        raise


def _did_you_mean(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _flag_value(argv: list[str], name: str, default):
    """The last value given to --name on the command line (which overrides the YAML), else `default`."""
    value = default
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


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
    """Run one training job; returns the trainer (after `train()` and `save_model()`), or None when
    `--resume` points at a run that already reached `max_steps` (then nothing is changed)."""
    import torch

    from papo.console import use_compact_progress
    from papo.data.loading import filter_long_prompts, load_training_dataset
    from papo.embedded import embedded_dataset, embedded_model
    from papo.guards import OOM_ADVICE
    from papo.modeling import load_model_for_training
    from papo.rewards import make_reward_funcs
    from papo.trainer import PAPOTrainer

    resume_from = (
        resolve_resume(script_args.resume, training_args.output_dir) or training_args.resume_from_checkpoint
    )
    finished = finished_step(resume_from, training_args.max_steps)
    if finished is not None:
        # Re-running a finished run's command with --resume (after a disconnect, or by habit) must not
        # train a step past max_steps nor touch its outputs.
        print(
            f"This run is complete: {resume_from} is at step {finished}, its last (max_steps "
            f"{training_args.max_steps if training_args.max_steps > 0 else finished}). Nothing was changed; "
            "raise --max_steps to train further."
        )
        return None
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
        vision_dtype=script_args.vision_dtype,
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
    use_compact_progress(trainer)
    save_resolved_config(
        Path(training_args.output_dir) / "papo_config.yaml", script_args, training_args, model_args
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


def finished_step(checkpoint: str | None, max_steps: int) -> int | None:
    """The checkpoint's step if it already reached the run's last step (`max_steps`, or with
    `max_steps` <= 0 the one its own trainer_state recorded), else None."""
    if not checkpoint:
        return None
    state = json.loads(Path(checkpoint, "trainer_state.json").read_text())
    last = max_steps if max_steps > 0 else state.get("max_steps", 0)
    step = state.get("global_step", 0)
    return step if last > 0 and step >= last else None


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
