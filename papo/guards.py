"""Guards for PAPO runs: non-finite losses stop the step, collapse signs are watched, OOM is explained.

PAPO maximises a KL that is unbounded, and the paper documents a failure mode, "KL_prcp hacking"
(spec §5): the logged KL_prcp metric (our `perception_kl`, sign flipped) moves sharply, the
clip-high fraction rises steadily, the entropies of both the original and the masked rollouts rise,
and then the reward falls. `collapse_signs` detects those signs on a window of logged steps;
`CollapseGuard` warns, lowers γ, or stops the run (`collapse_guard: warn | reduce_gamma | stop`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from statistics import mean

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

COLLAPSE_ACTIONS = ("off", "warn", "reduce_gamma", "stop")
OOM_ADVICE = (
    "out of memory: lower, in this order, num_generations (G), max_completion_length, max_pixels (image "
    "size), per_device_train_batch_size (raise gradient_accumulation_steps to keep the batch), or use "
    "load_in_4bit (QLoRA) and activation_checkpointing"
)


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN/inf: the step is not applied (no NaN adapter is ever saved)."""


def check_finite(step: int, **values: torch.Tensor) -> None:
    """Raise `NonFiniteLossError` naming every non-finite value (before backward, so nothing is applied)."""
    bad = {name: float(value) for name, value in values.items() if not torch.isfinite(value).all()}
    if bad:
        raise NonFiniteLossError(
            f"step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}; the step was not applied. "
            "Lower learning_rate or perception_kl_coef, set perception_kl_clip, or resume from the last checkpoint."
        )


def _thirds(values: Sequence[float]) -> tuple[float, float]:
    third = max(len(values) // 3, 1)
    return mean(values[:third]), mean(values[-third:])


def collapse_signs(history: Sequence[dict], window: int = 10) -> list[str]:
    """Which collapse signs the last `window` logs show (empty when fewer logs or metrics are missing).

    * ``perception_kl surging``: mean of the window's last third > 3x its first third (the official
      metric, −KL_prcp, "drops sharply");
    * ``clip_ratio/high_mean rising steadily``: >= 70% of step-to-step changes are increases and the
      last third is > 2x the first (and non-zero);
    * ``both entropies rising``: entropy/original and entropy/masked both end > 10% above where the
      window started.
    """
    logs = [log for log in history if "perception_kl" in log][-window:]
    if len(logs) < window:
        return []
    signs = []
    kl = [log["perception_kl"] for log in logs]
    first, last = _thirds(kl)
    if last > 3 * max(first, 1e-8):
        signs.append("perception_kl surging")
    clip = [log.get("clip_ratio/high_mean", 0.0) for log in logs]
    ups = sum(b > a for a, b in zip(clip, clip[1:], strict=False)) / (len(clip) - 1)
    first, last = _thirds(clip)
    if ups >= 0.7 and last > 0 and last > 2 * first:
        signs.append("clip_ratio/high_mean rising steadily")
    rising = []
    for key in ("entropy/original", "entropy/masked"):
        values = [log[key] for log in logs if key in log]
        if len(values) == len(logs):
            first, last = _thirds(values)
            rising.append(last > 1.1 * first)
    if len(rising) == 2 and all(rising):
        signs.append("both entropies rising")
    return signs


class CollapseGuard(TrainerCallback):
    """Watch the logged metrics for the collapse signs and act: warn, reduce γ, or stop."""

    def __init__(self, action: str = "warn", window: int = 10, min_signs: int = 2, gamma_factor: float = 0.5):
        if action not in COLLAPSE_ACTIONS:
            raise ValueError(f"collapse_guard={action!r} is not one of {COLLAPSE_ACTIONS}")
        self.action, self.window, self.min_signs, self.gamma_factor = action, window, min_signs, gamma_factor
        self.history: list[dict] = []
        self.triggered_at: list[int] = []
        self.stopped = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.action == "off" or not logs:
            return
        self.history.append(dict(logs))
        signs = collapse_signs(self.history, self.window)
        if len(signs) < self.min_signs:
            return
        self.triggered_at.append(state.global_step)
        message = (
            f"step {state.global_step}: signs of PAPO collapse (KL_prcp hacking, spec §5): {', '.join(signs)}"
        )
        if self.action == "reduce_gamma" and hasattr(args, "perception_kl_coef"):
            args.perception_kl_coef *= self.gamma_factor
            message += f"; perception_kl_coef lowered to {args.perception_kl_coef:g}"
            self.history.clear()  # judge the new γ on fresh logs
        elif self.action == "stop":
            control.should_training_stop = True
            self.stopped = True
            message += "; stopping (the last saved checkpoint is kept; the final adapter is not saved)"
        else:
            message += (
                "; consider collapse_guard: reduce_gamma, a lower perception_kl_coef or entropy_original_coef"
            )
        logger.warning(message)
