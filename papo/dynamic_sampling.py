"""DAPO's dynamic sampling, the parts that need no trainer (the trainer's `_dynamic_sampling` wires them).

* `informative_groups` — the official keep rule (EasyR1 ``online_filtering``): a group is kept when its
  mean accuracy is in (0.01, 0.99); a draw where no group survives is kept whole.
* `RefillPass` — the prompts of refill draws: a seeded pass over the training set without replacement,
  reshuffled each epoch of its own, the same on every rank, saved in each checkpoint so a resume continues it.
* `row_piece` / `gather_rows` — one generation batch rebuilt from rows of several draws, whose prompt and
  completion widths differ (re-padded per key: prompts left, completions right, token types in two parts).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

REFILL_STATE = "papo_dynamic_sampling.json"  # in each checkpoint: where the refill pass stands
ACCURACY_BOUNDS = (0.01, 0.99)  # official: groups strictly between are informative


def informative_groups(accuracy: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups of one draw to keep.

    accuracy: (groups * group_size,) per-completion accuracy in [0, 1], group-major.
    Returns a bool (groups,) mask: low < mean_g(accuracy) < high; all True when none is (official: keep
    the whole draw rather than nothing).
    """
    low, high = ACCURACY_BOUNDS
    mean = accuracy.view(-1, group_size).float().mean(1)
    keep = (mean > low) & (mean < high)
    return keep if keep.any() else torch.ones_like(keep)


@dataclass
class RefillPass:
    """A seeded pass over `size` training rows without replacement; a new permutation per epoch.

    The permutation of epoch e is seeded by (seed, e) only, so every rank draws the same prompts and a
    resumed run rebuilds the pass in progress from (epoch, cursor).
    """

    seed: int
    size: int
    epoch: int = 0  # epochs started so far
    cursor: int = 0  # position in the current epoch's order
    order: list[int] = field(default_factory=list)

    def next_indices(self, count: int) -> list[int]:
        indices = []
        for _ in range(count):
            if self.cursor >= len(self.order):
                self._start_epoch()
            indices.append(self.order[self.cursor])
            self.cursor += 1
        return indices

    def _start_epoch(self) -> None:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * self.epoch + 1)
        self.order = torch.randperm(self.size, generator=generator).tolist()
        self.epoch += 1
        self.cursor = 0

    def save(self, folder: str | os.PathLike) -> None:
        with open(os.path.join(folder, REFILL_STATE), "w") as f:
            json.dump({"refill_epoch": self.epoch, "refill_cursor": self.cursor}, f)

    def load(self, folder: str | os.PathLike) -> None:
        """Continue where the pass saved in `folder` stood (nothing saved: unchanged)."""
        path = os.path.join(folder, REFILL_STATE)
        if not os.path.isfile(path):
            return
        with open(path) as f:
            state = json.load(f)
        if state["refill_epoch"] > 0:  # rebuild the epoch in progress (seeded), then its position
            self.epoch = state["refill_epoch"] - 1
            self._start_epoch()
            self.cursor = state["refill_cursor"]


class DynamicSamplingExhausted(RuntimeError):
    """Dynamic sampling could not fill a batch with informative groups within its draws (official: raise)."""


def row_piece(batch: dict[str, Any], i: int, device) -> dict[str, Any]:
    """Row `i` of a per-sample batch (pixel values split by sample) as a one-row batch on `device`."""
    piece = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            if value.ndim:
                piece[key] = value[i : i + 1].to(device)
        elif isinstance(value, list):
            item = value[i]
            piece[key] = [item.to(device) if isinstance(item, torch.Tensor) else item]
    return piece


def to_device(piece: dict[str, Any], device) -> dict[str, Any]:
    return {
        key: value.to(device)
        if isinstance(value, torch.Tensor)
        else [v.to(device) if isinstance(v, torch.Tensor) else v for v in value]
        for key, value in piece.items()
    }


# per-row tensors whose second dimension is the prompt (left-padded) rather than the completion
_PROMPT_KEYS = ("prompt_ids", "prompt_mask")
# per-row tensors over prompt + completion: TRL extends the processor's token types with zeros for the
# completion, so each is re-padded in two parts (prompt on the left, completion on the right).
_SEQUENCE_KEYS = ("mm_token_type_ids", "token_type_ids")


def gather_rows(rows: list[tuple[dict[str, Any], int]], pad_token_id: int) -> dict[str, Any]:
    """Build one generation output from (output, row index) pairs taken from several outputs.

    Per-row tensors are re-padded to the longest piece: prompt-side keys on the left (prompts are
    left-padded), completion-side keys on the right, prompt+completion keys (token types) in two parts;
    lists are gathered item by item. Scalars (the token count) are left for the caller to recompute.
    The pieces may come from draws of different prompt and completion widths.
    """
    prompt_width = max(piece["prompt_ids"].size(-1) for piece, _ in rows)
    completion_width = max(piece["completion_ids"].size(-1) for piece, _ in rows)

    def pad(item: torch.Tensor, width: int, left: bool, value: int = 0) -> torch.Tensor:
        extra = width - item.size(-1)
        return torch.nn.functional.pad(item, (extra, 0) if left else (0, extra), value=value)

    merged: dict[str, Any] = {}
    for key, value in rows[0][0].items():
        if isinstance(value, torch.Tensor) and value.ndim == 0:
            continue
        items = [piece[key][i] for piece, i in rows]
        if not isinstance(value, torch.Tensor):
            merged[key] = items
        elif value.ndim == 1:
            merged[key] = torch.stack(items)
        elif key in _PROMPT_KEYS:
            pad_value = pad_token_id if key == "prompt_ids" else 0
            merged[key] = torch.stack([pad(item, prompt_width, left=True, value=pad_value) for item in items])
        elif key in _SEQUENCE_KEYS:
            parts = []
            for (piece, _), item in zip(rows, items, strict=True):
                width = piece["prompt_ids"].size(-1)
                if item.size(-1) != width + piece["completion_ids"].size(-1):
                    raise ValueError(f"{key} has {item.size(-1)} columns; expected prompt + completion")
                prompt_part = pad(item[..., :width], prompt_width, left=True)
                parts.append(
                    torch.cat([prompt_part, pad(item[..., width:], completion_width, left=False)], -1)
                )
            merged[key] = torch.stack(parts)
        else:
            width = max(item.size(-1) for item in items)
            merged[key] = torch.stack([pad(item, width, left=False) for item in items])
    return merged
