"""One rank of the multi-process test (tests/test_distributed.py): `papo train`, recording what it saw.

Run under `accelerate launch` with `papo train`'s own flags. Before training it wraps two methods of
papo's PAPOTrainer (test-only instrumentation; the training itself is the unmodified `papo train`):

* `_add_masked_logps`: for every rollout on this rank, a digest of the prompt (text + original image
  bytes) and of the masked pixel values that the masked forward actually received, per generation round;
* `log`: every dict of metrics this rank logs;
* `_dynamic_sampling` (DAPO/PAPO-D): a digest (prompt token ids + original pixels) of every row of the
  batch it returns, per generation round.

`PAPO_TEST_SCRIPTED_ACCURACY=1` replaces the accuracy reward by one that depends only on the prompt and
the rollout's position (so 1- and 2-process runs take the same keep decisions): by a hash of the prompt
text, a group is all wrong, all right, or half right (alternating, so whole groups split evenly over ranks).

At exit it writes `<PAPO_TEST_RECORD_DIR>/rank<R>.json` = {"rank", "world_size", "distributed_type",
"wrapped" (the class wrapping the model), "zero_stage", "rollouts", "logs"}.
`PAPO_TEST_DISABLE_DS_SHM=1` skips DeepSpeed's CPU shared-memory all-reduce kernel, which DeepSpeed
compiles on first use (over a minute on 2 cores, in a throw-away HOME every test session); plain gloo
all-reduce is used instead.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import torch

import papo.trainer
from papo.cli import main

RECORD_DIR = Path(os.environ["PAPO_TEST_RECORD_DIR"])
RANK = int(os.environ.get("RANK", "0"))

rollouts: list[dict] = []
kept_rows: list[dict] = []
logs: list[dict] = []
engine: dict = {}


def _digest(*chunks: bytes) -> str:
    h = hashlib.blake2b(digest_size=12)
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()


def _per_row(batch: dict, pixel_values: torch.Tensor) -> list[bytes]:
    """One byte string per row (rollout) of `pixel_values`, laid out like `batch`'s (any model family)."""
    from papo.families import per_sample_pixel_values

    return [p.detach().float().cpu().numpy().tobytes() for p in per_sample_pixel_values(batch, pixel_values)]


_add_masked_logps = papo.trainer.PAPOTrainer._add_masked_logps
_log = papo.trainer.PAPOTrainer.log


def recording_add_masked_logps(self, inputs, output):
    captured = []
    forward = self._get_per_token_logps_and_entropies

    def capture(*args, **kwargs):
        captured.append(kwargs["pixel_values"])
        return forward(*args, **kwargs)

    self._get_per_token_logps_and_entropies = capture  # instance attribute: this call only
    try:
        _add_masked_logps(self, inputs, output)
    finally:
        del self._get_per_token_logps_and_entropies
    (masked,) = captured
    plugin = self.accelerator.state.deepspeed_plugin
    engine.update(
        distributed_type=str(self.accelerator.distributed_type).removeprefix("DistributedType."),
        wrapped=type(self.model_wrapped).__name__,
        zero_stage=plugin.zero_stage if plugin is not None else None,
    )
    original_rows = _per_row(output, output["pixel_values"])
    masked_rows = _per_row(output, masked)
    for row, original, masked_bytes in zip(inputs, original_rows, masked_rows, strict=True):
        images = row.get("images") or [row["image"]]
        prompt = _digest(json.dumps(row["prompt"], default=str).encode(), *(im.tobytes() for im in images))
        rollouts.append(
            {
                "step": self.state.global_step,
                "prompt": prompt,
                "original": _digest(original),
                "masked": _digest(masked_bytes),
            }
        )


_dynamic_sampling = papo.trainer.PAPOTrainer._dynamic_sampling


def recording_dynamic_sampling(self, output):
    result = _dynamic_sampling(self, output)
    per_row = _per_row(result, result["pixel_values"])
    for ids, mask, pixels in zip(result["prompt_ids"], result["prompt_mask"], per_row, strict=True):
        kept_rows.append(
            {"step": self.state.global_step, "row": _digest(ids[mask.bool()].numpy().tobytes(), pixels)}
        )
    return result


def scripted_accuracy_reward(completions, prompts, **kwargs):
    scores = []
    for i, prompt in enumerate(prompts):
        # text parts only: TRL puts the PIL images into the prompt, whose repr holds a memory address
        text = [part.get("text") for turn in prompt for part in turn["content"] if isinstance(part, dict)]
        kind = int(_digest(json.dumps(text).encode()), 16) % 3
        scores.append(float(i % 2) if kind == 2 else float(kind))
    return scores


scripted_accuracy_reward.__name__ = "accuracy_reward"


def recording_log(self, logs_dict, *args, **kwargs):
    result = _log(self, logs_dict, *args, **kwargs)  # TRL adds its (cross-rank) metrics to logs_dict in place
    logs.append({"step": self.state.global_step, **logs_dict})
    return result


if __name__ == "__main__":
    if os.environ.get("PAPO_TEST_DISABLE_DS_SHM") == "1":
        # by module path: the attribute `deepspeed.comm.torch` is the `torch` package itself
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    papo.trainer.PAPOTrainer._add_masked_logps = recording_add_masked_logps
    papo.trainer.PAPOTrainer.log = recording_log
    papo.trainer.PAPOTrainer._dynamic_sampling = recording_dynamic_sampling
    if os.environ.get("PAPO_TEST_SCRIPTED_ACCURACY") == "1":
        import papo.rewards

        make_reward_funcs = papo.rewards.make_reward_funcs
        papo.rewards.make_reward_funcs = lambda *a, **k: [
            scripted_accuracy_reward,
            make_reward_funcs(*a, **k)[1],
        ]
    code = main(["train", *sys.argv[1:]])
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": RANK,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        **engine,
        "rollouts": rollouts,
        "kept_rows": kept_rows,
    }
    (RECORD_DIR / f"rank{RANK}.json").write_text(json.dumps({**record, "logs": logs}, default=str))
    sys.exit(code)
