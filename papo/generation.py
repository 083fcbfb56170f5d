"""Batched generation from TRL-style conversational prompts with images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm


def render_prompt(processor, prompt: list[dict[str, Any]]) -> str:
    """The chat-template text of a conversational prompt, with the generation prompt appended."""
    return processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def generate(model, processor, prompts, images, **kwargs) -> list[str]:
    """Generate one completion per prompt and decode it; see `generate_completions` for the arguments."""
    return [text for text, _ in generate_completions(model, processor, prompts, images, **kwargs)]


@torch.no_grad()
def generate_completions(
    model,
    processor,
    prompts: Sequence[list[dict[str, Any]]],
    images: Sequence[Sequence[Any]],
    *,
    max_new_tokens: int = 256,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int | None = None,
    show_progress: bool = True,
) -> list[tuple[str, list[int]]]:
    """Generate one completion per prompt, in batches (left-padded): (decoded text, token ids) each.

    The token ids stop at the first end-of-sequence token (included) and never contain padding.

    `prompts[i]` is a conversational prompt whose image parts are filled, in order, by `images[i]`.
    With `seed` set, sampling is reproducible (torch's global RNG is forked, not disturbed).
    """
    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts but {len(images)} image lists")
    if processor.tokenizer.padding_side != "left":
        raise ValueError("the processor's tokenizer must pad on the left for batched generation")
    completions: list[tuple[str, list[int]]] = []
    stop_ids = _stop_token_ids(model, processor)
    starts = range(0, len(prompts), batch_size)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for start in tqdm(starts, desc="Generating", disable=not show_progress, unit="batch"):
            batch_prompts = prompts[start : start + batch_size]
            # Images nested per prompt: Gemma 3 / SmolVLM processors need to know which prompt each belongs to.
            batch_images = [list(row) for row in images[start : start + batch_size]]
            texts = [render_prompt(processor, prompt) for prompt in batch_prompts]
            inputs = processor(
                text=texts,
                images=batch_images if any(batch_images) else None,
                padding=True,
                return_tensors="pt",
            )
            inputs = inputs.to(model.device)
            sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                suppress_tokens=_vision_placeholder_ids(model),
                **sampling,
            )
            for row in output[:, inputs["input_ids"].shape[1] :].tolist():
                ids = _cut_at_stop(row, stop_ids)
                completions.append((processor.decode(ids, skip_special_tokens=True), ids))
    return completions


def _vision_placeholder_ids(model) -> list[int]:
    """Image/video placeholder ids: a sampled one would not match any image features (as TRL does)."""
    config = model.config
    return [
        i
        for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
        if i is not None
    ]


def _stop_token_ids(model, processor) -> set[int]:
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if processor.tokenizer.eos_token_id is not None:
        stop.add(processor.tokenizer.eos_token_id)
    return stop


def _cut_at_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    """Ids up to and including the first stop token (generate pads finished rows after it)."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[: position + 1]
    return ids
