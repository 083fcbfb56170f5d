"""Loading a VLM and its processor, from a Hub id or a local directory, ready for batched prompts."""

from __future__ import annotations

import os

import torch

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_processor(name_or_path: str | os.PathLike, **kwargs):
    """`AutoProcessor.from_pretrained`, with the tokenizer padding on the left.

    Batched VLM prompts of different lengths must be left-padded: with right padding the prompts'
    last tokens are padding, generation continues from them, and the image tokens sit at offsets
    the model never saw in training. Qwen checkpoints do not all set this, so we always do.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(name_or_path), **kwargs)
    processor.tokenizer.padding_side = "left"
    return processor


def load_vlm(
    name_or_path: str | os.PathLike,
    *,
    dtype: str = "auto",
    device: str | None = None,
    **kwargs,
):
    """(model, processor) via `AutoModelForImageTextToText` / `AutoProcessor`, in eval mode."""
    from transformers import AutoModelForImageTextToText

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    model = AutoModelForImageTextToText.from_pretrained(str(name_or_path), dtype=DTYPES[dtype], **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval(), load_processor(name_or_path)
