"""What the `papo` commands print: known third-party noise silenced, one compact line per logged step,
a summary at the end of a run. The full per-step metrics always go to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from transformers.trainer_callback import ProgressCallback

# The metrics worth a glance during a run, in the order shown: (metrics.jsonl key, label, format).
COMPACT_METRICS = (
    ("reward", "reward", ".3f"),
    ("rewards/accuracy_reward/mean", "acc", ".3f"),
    ("perception_kl", "perception_kl", ".4g"),
    ("entropy", "entropy", ".3f"),
    ("step_time", "s/step", ".1f"),
)


def quiet_known_noise() -> None:
    """Silence the third-party messages we understand, and only those (called by the CLI, not the library).

    - transformers 5 renamed ``gradient_checkpointing*`` to ``activation_checkpointing*``; TRL 1.16 (which
      we pin) still calls the old names and transformers says so on every run. Harmless until v6.
    - DeepSpeed (imported by accelerate to probe for it) logs "Setting accelerator to CPU ... unable to
      detect it" on every CPU-only run. Naming the CPU accelerator up front is what it asks for; it is
      only set when no CUDA device exists, so GPU runs detect theirs as before.
    """
    warnings.filterwarnings(
        "ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning
    )
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def compact_line(logs: dict, step: int, max_steps: int) -> str | None:
    """``step 3/10 | reward 0.450 | acc 0.400 | perception_kl 0.0123 | entropy 0.812 | s/step 8.7``, or
    None for a log without training metrics (the end-of-run totals: `run_summary` covers those)."""
    shown = [
        f"{label} {logs[key]:{fmt}}"
        for key, label, fmt in COMPACT_METRICS
        if isinstance(logs.get(key), (int, float))
    ]
    if "reward" not in logs and "loss" not in logs:
        return None
    return " | ".join([f"step {step}/{max_steps}", *shown])


class CompactProgressCallback(ProgressCallback):
    """TRL's progress bar, with one short line per logged step instead of a ~32-key dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            line = compact_line(logs, state.global_step, state.max_steps)
            if line:
                self.training_bar.write(line)


def use_compact_progress(trainer) -> None:
    """Swap the trainer's progress callback for `CompactProgressCallback` (no-op when tqdm is off)."""
    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(CompactProgressCallback())


def run_summary(output_dir: str | os.PathLike) -> str:
    """One paragraph from ``metrics.jsonl``: steps, first vs last reward and perception KL, where things went."""
    path = Path(output_dir) / "metrics.jsonl"
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )
    steps = [row for row in rows if "reward" in row]
    lines = [f"Run summary ({output_dir}):"]
    if steps:
        first, last = steps[0], steps[-1]
        lines.append(f"  steps {first['step']}-{last['step']} logged")
        for key, label in (("reward", "reward"), ("perception_kl", "perception KL")):
            if key in first and key in last:
                lines.append(f"  {label}: {first[key]:.4g} (first) -> {last[key]:.4g} (last)")
    runtime = next((row["train_runtime"] for row in reversed(rows) if "train_runtime" in row), None)
    if runtime is not None:
        lines.append(f"  training time {runtime / 60:.1f} min")
    lines.append(f"  adapter/model, processor, papo_config.yaml and metrics.jsonl in {output_dir}")
    return "\n".join(lines)
