"""Checks on vLLM rollouts: vLLM runs the prompt the training model scores, and gets the merged LoRA weights.

Why. TRL 1.16 hands vLLM the *processor-expanded* prompt token ids (one ``<|image_pad|>`` per image
token, as the training forward scores them) together with the raw PIL images, and vLLM runs its own
image processor on them. When the two disagree the rollouts come from a prompt the training model
never scores: vLLM expanding the placeholders a second time (TRL issue #6294, SmolVLM), or vLLM's
image processor making another number of image tokens than the training processor (TRL issue
#6401, Qwen3-VL with other pixel bounds) — silently, or with an M-RoPE shape crash steps later.
The log-probs PAPO trains on (original and masked image) always come from the training model, never
from vLLM, so a corrupted rollout prompt is the one way vLLM can poison a step unnoticed.

What is compared (the trainer records it at TRL's vLLM boundary, see `papo.trainer`):

* colocate: the prompt token ids vLLM reports it ran on (its `RequestOutput.prompt_token_ids`, after
  its own multimodal processing) and the images it was given, against the training batch's prompt
  ids, images and image grid (`check_vllm_prompts`);
* server: TRL 1.16 pre-processes the images on the server and pairs those features with the
  trainer's token ids, so the server's own image-token count per image must equal the length of the
  matching ``<|image_pad|>`` run (`check_server_image_tokens`);
* weight sync: every LoRA layer's weight is sent once, under its base-model name, merged, and equal
  to W + ΔW computed by PEFT before the sync (`check_synced_weights`, with `weight_fingerprint`).

Every check raises with the row or weight name, what differs, and what to do; nothing is repaired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

FIX_PROMPTS = (
    "The rollouts would be generated from a prompt the training model never scores (TRL issues #6294, "
    "#6401). vLLM must make as many image tokens per image as the training processor: in server mode "
    "start it with papo's pixel bounds (`trl vllm-serve ... --mm-processor-kwargs "
    '\'{"min_pixels": MIN, "max_pixels": MAX}\'`); in colocate mode vLLM builds its processor from '
    "the model folder, so train from a copy whose saved processor has papo's min_pixels/max_pixels (README, "
    "Scaling out). Keep trl at the version pinned in pyproject.toml, or use_vllm: false."
)


class VLLMPromptMismatch(RuntimeError):
    """vLLM ran (or would run) a different prompt from the one the training model scores."""


class VLLMWeightSyncError(RuntimeError):
    """The weights sent to vLLM are not the training model's merged LoRA weights."""


# --- prompts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredPrompt:
    """One rollout's prompt as the training forward scores it."""

    token_ids: list[int]  # unpadded prompt ids
    image_tokens: list[int]  # image tokens each of its images gives (from the processor's image grid)
    images: list[str]  # `image_digest` of each image, in order


def image_digest(image) -> str:
    """Content digest of a PIL image (size, mode, pixels): equal images give equal digests."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{image.width}x{image.height}:{image.mode}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def image_token_runs(token_ids: Sequence[int], image_token_id: int) -> list[int]:
    """Lengths of the runs of `image_token_id` in `token_ids`, in order (one run per image)."""
    runs, length = [], 0
    for token in token_ids:
        if token == image_token_id:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    if length:
        runs.append(length)
    return runs


def image_tokens_per_image(image_grid_thw: torch.Tensor, merge_size: int) -> list[int]:
    """(num_images, 3) grids of (t, h, w) patches -> image tokens per image, t·h·w / merge_size²."""
    return (torch.as_tensor(image_grid_thw).long().prod(-1) // merge_size**2).tolist()


def scored_prompts(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    image_grid_thw: torch.Tensor,
    num_images: Sequence[int],
    merge_size: int,
    images: Sequence[Sequence],
) -> list[ScoredPrompt]:
    """The (B, P) left-padded training prompts, their image grids and images, one `ScoredPrompt` per row.

    `image_grid_thw` is None for a batch without images.
    """
    tokens = [] if image_grid_thw is None else image_tokens_per_image(image_grid_thw, merge_size)
    bounds = torch.tensor([0, *num_images]).cumsum(0).tolist()
    return [
        ScoredPrompt(
            token_ids=ids[mask.bool()].tolist(),
            image_tokens=tokens[bounds[i] : bounds[i + 1]],
            images=[image_digest(image) for image in images[i]],
        )
        for i, (ids, mask) in enumerate(zip(prompt_ids.cpu(), prompt_mask.cpu(), strict=True))
    ]


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def check_vllm_prompts(
    vllm_ids: Sequence[Sequence[int]],
    vllm_images: Sequence[Sequence | None] | None,
    scored: Sequence[ScoredPrompt],
    image_token_id: int,
) -> None:
    """Raise VLLMPromptMismatch unless every rollout's vLLM prompt is the scored one.

    `vllm_ids[i]` are the prompt token ids vLLM ran rollout i on, `vllm_images[i]` the images it was
    given (None for none); `scored[i]` what the training model scores for that rollout.
    """
    if len(vllm_ids) != len(scored):
        raise VLLMPromptMismatch(
            f"vLLM returned {len(vllm_ids)} prompts for {len(scored)} rollouts on this process. {FIX_PROMPTS}"
        )
    for row, (ids, prompt) in enumerate(zip(vllm_ids, scored, strict=True)):
        ids = list(ids)
        runs, scored_runs = (
            image_token_runs(ids, image_token_id),
            image_token_runs(prompt.token_ids, image_token_id),
        )
        if scored_runs != prompt.image_tokens:
            raise VLLMPromptMismatch(
                f"rollout {row}: the training prompt has image-token runs {scored_runs} but its images give "
                f"{prompt.image_tokens} image tokens (image_grid_thw); the training batch itself is inconsistent"
            )
        if ids != prompt.token_ids:
            at = _first_difference(ids, prompt.token_ids)
            raise VLLMPromptMismatch(
                f"rollout {row}: vLLM ran a prompt of {len(ids)} tokens with image-token runs {runs}, the "
                f"training model scores {len(prompt.token_ids)} tokens with runs {prompt.image_tokens} "
                f"(first difference at token {at}: vLLM {ids[at : at + 3]} vs training "
                f"{prompt.token_ids[at : at + 3]}). {FIX_PROMPTS}"
            )
        given = [] if vllm_images is None or vllm_images[row] is None else list(vllm_images[row])
        given_digests = [image_digest(image) for image in given]
        if given_digests != prompt.images:
            raise VLLMPromptMismatch(
                f"rollout {row}: vLLM was given {len(given)} image(s) {given_digests}, the training model "
                f"scores {len(prompt.images)} {prompt.images} (digests of size, mode and pixels). {FIX_PROMPTS}"
            )


def server_image_tokens(features: dict | None) -> list[int]:
    """Image tokens the vLLM server made of each image of one prompt (its `mm_placeholders` lengths)."""
    if not features:
        return []
    return [int(placeholder["length"]) for placeholder in features["mm_placeholders"]["image"]]


def check_server_image_tokens(
    prompt_ids: Sequence[Sequence[int]], features: Sequence[dict | None], image_token_id: int
):
    """Raise VLLMPromptMismatch unless the server's image-token count of each image equals the prompt's run.

    `prompt_ids[j]` are the token ids sent for unique prompt j, `features[j]` the server's processed
    images for it (`VLLMClient.image_features`), before TRL re-points them at the prompt's runs.
    """
    if len(prompt_ids) != len(features):
        raise VLLMPromptMismatch(
            f"{len(prompt_ids)} prompts but {len(features)} image features. {FIX_PROMPTS}"
        )
    for j, (ids, prompt_features) in enumerate(zip(prompt_ids, features, strict=True)):
        runs, server = image_token_runs(ids, image_token_id), server_image_tokens(prompt_features)
        if runs != server:
            raise VLLMPromptMismatch(
                f"prompt {j}: the vLLM server processed its images into {server} image tokens, but the "
                f"training prompt holds runs of {runs} (the server's image processor uses other pixel "
                f"bounds or another processor). {FIX_PROMPTS}"
            )


# --- LoRA weight sync ---------------------------------------------------------------------------------


def weight_fingerprint(weight: torch.Tensor) -> tuple[float, float]:
    """(uᵀ·W·v, ‖W‖) with fixed random u, v (seeded by the shape), in float32 on W's device.

    Equal tensors give equal fingerprints; a difference δ shows as uᵀ·δ·v, about ‖δ‖ in size.
    """
    matrix = weight.detach().reshape(weight.shape[0], -1).float()
    rows, cols = matrix.shape
    generator = torch.Generator().manual_seed(rows * 1_000_003 + cols)
    u = torch.randn(rows, generator=generator).to(matrix.device)
    v = torch.randn(cols, generator=generator).to(matrix.device)
    return float(u @ matrix @ v), float(matrix.norm())


def same_fingerprint(sent: tuple[float, float], expected: tuple[float, float], rtol: float = 1e-5) -> bool:
    """True if two fingerprints agree up to float32 summation noise (`rtol` of the weight's norm)."""
    scale = expected[1] + abs(expected[0]) + 1e-12
    return abs(sent[0] - expected[0]) <= rtol * scale and abs(sent[1] - expected[1]) <= rtol * scale


@dataclass
class SyncRecord:
    """What one walk over the weights sent to vLLM contained, for the LoRA layers."""

    fingerprints: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> of the tensor sent
    merged: dict[str, bool] = field(default_factory=dict)  # name -> was the layer's adapter merged when sent
    duplicates: list[str] = field(default_factory=list)
    adapter_tensors: list[str] = field(default_factory=list)  # LoRA A/B tensors sent (vLLM has none)


def check_synced_weights(
    lora_names: Sequence[str], expected: dict[str, tuple[float, float]], record: SyncRecord, step: int
) -> None:
    """Raise VLLMWeightSyncError unless every LoRA layer in `lora_names` reached vLLM merged, once.

    `expected[name]` (may cover only some names, e.g. none under ZeRO-3) is the fingerprint of
    W + ΔW computed by PEFT before the sync; the sent tensor's must match it.
    """
    problems = []
    missing = [name for name in lora_names if name not in record.fingerprints]
    if missing:
        problems.append(f"{len(missing)} LoRA weight(s) never sent, e.g. {missing[:3]}")
    if record.adapter_tensors:
        problems.append(f"LoRA adapter tensors sent as model weights, e.g. {record.adapter_tensors[:3]}")
    if record.duplicates:
        problems.append(f"weights sent twice in one sync, e.g. {record.duplicates[:3]}")
    unmerged = [name for name in lora_names if name in record.merged and not record.merged[name]]
    if unmerged:
        problems.append(f"{len(unmerged)} weight(s) sent without their adapter merged, e.g. {unmerged[:3]}")
    differ = [
        name
        for name, fingerprint in expected.items()
        if name in record.fingerprints and not same_fingerprint(record.fingerprints[name], fingerprint)
    ]
    if differ:
        problems.append(f"{len(differ)} weight(s) differ from W + ΔW (PEFT's merge), e.g. {differ[:3]}")
    if problems:
        raise VLLMWeightSyncError(
            f"weight sync to vLLM at step {step}: " + "; ".join(problems) + ". vLLM would generate with "
            "other weights than the policy being trained. Use bf16 LoRA (not QLoRA, TRL #4973) with the trl "
            "version pinned in pyproject.toml, or train with use_vllm: false."
        )


def has_4bit_layers(model: torch.nn.Module) -> bool:
    """True if `model` holds bitsandbytes 4-bit linear layers (QLoRA), PEFT-wrapped or not."""
    return any(type(module).__name__ == "Linear4bit" for module in model.modules())
