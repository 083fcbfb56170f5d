"""The model families PAPO supports, and everything that differs between them, in one table.

PAPO needs nothing family-specific in principle: the mask is drawn on the raw image, the masked image
goes through the *same* processor call with the same settings, and the masked forward reuses the
original token ids, attention mask and positions, so only the image tensors differ. What does differ
per family is kept here and nowhere else:

* which config ``model_type`` belongs to the family (`family_of`; anything else is refused with one
  sentence naming the supported families);
* LoRA target regexes: the language model's projections by default, the vision tower's optionally;
* the modules kept out of 4-bit (vision tower, projector, ``lm_head``);
* how ``mask_grid: model`` finds the vision patch grid (`model_grid`), where the family allows it;
* the image-layout rules the masked pass checks (`check_masked_layout`): the masked processor output
  must give the same token ids, image grids / tiles / crops and masks as the original, else it fails.

Families (see the README's "Supported model families" for their caveats):

* ``qwen2_5_vl`` / ``qwen3_vl``: dynamic resolution (``smart_resize``), 14/16-px patches merged 2x2,
  ``image_grid_thw``; ``mask_grid: model`` supported.
* ``gemma3``: fixed-size square SigLIP input (896 px, 14-px patches pooled to 256 tokens), optional
  pan-and-scan crops; ``mask_grid: model`` supported (without pan-and-scan); pan-and-scan is refused in
  training because TRL's batching slices ``pixel_values`` one row per image and crops add rows.
* ``smolvlm`` (SmolVLM/SmolVLM2, and Idefics3, whose processor SmolVLM's is): the image is resized,
  split into tiles plus a downscaled global view, ``pixel_values`` padded per sample with a
  ``pixel_attention_mask``; ``mask_grid: model`` is refused (no single pixel grid aligns with both the
  tiles and the global view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# LoRA regexes share the projection names; the prefixes differ per family.
_LM_PROJ = r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_SIGLIP_PROJ = r"\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"


@dataclass(frozen=True)
class Family:
    name: str
    label: str  # for messages and the README
    model_types: tuple[str, ...]  # config.model_type values
    language_lora_targets: str
    vision_lora_targets: str
    quantization_skip_modules: tuple[str, ...]  # prefixes kept out of 4-bit (lm_head is added for all)
    mask_grid_model: bool  # whether mask_grid: model is supported
    pixel_bounds: bool  # whether min_pixels/max_pixels (Qwen's dynamic-resolution bounds) apply


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "qwen2_5_vl",
            "Qwen2.5-VL",
            ("qwen2_5_vl", "qwen2_vl"),
            rf".*language_model.*{_LM_PROJ}",
            r".*visual\.blocks.*\.(qkv|proj|gate_proj|up_proj|down_proj)",
            ("model.visual", "visual"),
            True,
            True,
        ),
        Family(
            "qwen3_vl",
            "Qwen3-VL",
            ("qwen3_vl", "qwen3_vl_moe"),
            rf".*language_model.*{_LM_PROJ}",
            r".*visual\.blocks.*\.(qkv|proj|gate_proj|up_proj|down_proj)",
            ("model.visual", "visual"),
            True,
            True,
        ),
        Family(
            "gemma3",
            "Gemma 3",
            ("gemma3",),
            rf".*language_model.*{_LM_PROJ}",
            rf".*vision_tower.*{_SIGLIP_PROJ}",
            ("model.vision_tower", "model.multi_modal_projector"),
            True,
            False,
        ),
        Family(
            "smolvlm",
            "SmolVLM2 / Idefics3",
            ("smolvlm", "idefics3"),
            rf".*text_model.*{_LM_PROJ}",
            rf".*vision_model.*{_SIGLIP_PROJ}",
            ("model.vision_model", "model.connector"),
            False,
            False,
        ),
    )
}
# Gemma 3's SigLIP patch side in pixels (all released Gemma 3 vision towers; not in the image processor).
GEMMA3_PATCH_SIZE = 14


def supported_families_sentence() -> str:
    labels = ", ".join(f"{f.label} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    return f"supported families (config model_type): {labels}"


def family_of(config_or_model_type: Any) -> Family:
    """The family of a model config (or a model, or a ``model_type`` string); one clear error otherwise."""
    model_type = config_or_model_type
    if hasattr(model_type, "config"):
        model_type = model_type.config
    if not isinstance(model_type, str):
        model_type = getattr(model_type, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ValueError(f"model_type={model_type!r} is not supported by PAPO; {supported_families_sentence()}.")


def quantization_skip_modules() -> list[str]:
    """Every family's unquantised modules (prefixes of module names) plus lm_head, for any model."""
    skip = [prefix for family in FAMILIES.values() for prefix in family.quantization_skip_modules]
    return list(dict.fromkeys([*skip, "lm_head"]))


def pixel_budget(image_processor) -> int | None:
    """Roughly how many pixels of an image the processor keeps (for downscaling huge uploads), or None.

    Qwen2-VL family: max_pixels (size.longest_edge is a pixel count there); Gemma 3: its square input;
    SmolVLM/Idefics3: size.longest_edge is an edge length, so its square.
    """
    size = getattr(image_processor, "size", None)
    if size is None:
        return None
    get = size.get if isinstance(size, dict) else lambda name: getattr(size, name, None)
    if hasattr(image_processor, "merge_size"):
        value = get("longest_edge") or get("max_pixels")
        return int(value) if value else None
    if get("height") and get("width"):
        return int(get("height")) * int(get("width"))
    if get("longest_edge"):
        return int(get("longest_edge")) ** 2
    return None


# --- mask_grid: model ------------------------------------------------------------------------------


def model_grid(image_processor, height: int, width: int) -> tuple[tuple[int, int], int]:
    """((H', W'), patch): the size the processor resizes an (height, width) image to and its patch side.

    Qwen2-VL-family image processors: ``smart_resize`` to a multiple of patch x merge within the pixel
    bounds. Gemma 3 (no pan-and-scan): the fixed square input, 14-px SigLIP patches. Other processors
    (SmolVLM/Idefics3 tiles + global view) have no single grid: a clear error.
    """
    if image_processor is None:
        raise ValueError("mask_grid: model needs the model's image_processor to know its patch grid")
    kind = type(image_processor).__name__
    if hasattr(image_processor, "merge_size") and hasattr(image_processor, "patch_size"):
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        size = image_processor.size
        get = size.get if isinstance(size, dict) else lambda name: getattr(size, name, None)
        min_pixels, max_pixels = get("shortest_edge"), get("longest_edge")
        if not min_pixels or not max_pixels:
            raise ValueError(
                f"mask_grid: model needs an image_processor with size={{'shortest_edge', 'longest_edge'}} "
                f"(a Qwen2VLImageProcessor), got size={size}"
            )
        factor = image_processor.patch_size * image_processor.merge_size
        target = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return target, int(image_processor.patch_size)
    if kind.startswith("Gemma3ImageProcessor"):
        if getattr(image_processor, "do_pan_and_scan", None):
            raise ValueError(
                "mask_grid: model with Gemma 3 needs do_pan_and_scan off: pan-and-scan crops are resized "
                "separately, so no single patch grid covers them; use mask_grid: image"
            )
        size = image_processor.size
        get = size.get if isinstance(size, dict) else lambda name: getattr(size, name, None)
        return (int(get("height")), int(get("width"))), GEMMA3_PATCH_SIZE
    raise ValueError(
        f"mask_grid: model is supported for Qwen2-VL-family and Gemma 3 image processors, not {kind}: "
        "SmolVLM/Idefics3 split the image into tiles plus a downscaled global view, so no single pixel "
        "grid aligns with the vision patches of both; use mask_grid: image"
    )


# --- the masked pass: same processor call, same layout ---------------------------------------------

# Processor outputs that carry image *content*: the only ones allowed to differ in the masked pass.
IMAGE_CONTENT_KEYS = ("pixel_values",)


def check_masked_layout(original: dict[str, Any], masked: dict[str, Any], family: str | None = None) -> None:
    """Raise ValueError unless the masked processor output differs from the original only in pixel values.

    ``original`` / ``masked``: the outputs of the same processor call on the original and the masked
    images. Token ids (hence image-token counts and positions), attention masks, image grids, tiles,
    crops (``num_crops``), ``pixel_attention_mask``, token types and image sizes must all be identical,
    and ``pixel_values`` must keep its shape (same number of tiles/crops/patches).
    """
    where = f" ({family})" if family else ""
    keys = sorted(set(original) | set(masked))
    for key in keys:
        if key not in original or key not in masked:
            raise ValueError(
                f"masked pass{where}: the processor output key {key!r} is only in one of the two calls"
            )
        a, b = original[key], masked[key]
        if key in IMAGE_CONTENT_KEYS:
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(
                    f"masked pass{where}: {key} has shape {tuple(b.shape)} for the masked images vs "
                    f"{tuple(a.shape)} for the originals: the number of tiles/crops/patches changed"
                )
            continue
        same = torch.equal(torch.as_tensor(a), torch.as_tensor(b)) if _tensorish(a) else a == b
        if not same:
            raise ValueError(
                f"masked pass{where}: the processor gives a different {key!r} for the masked images than for the "
                "originals. The masked forward reuses the original token ids, so the image-token counts, "
                "tiles/crops and masks must match: masking must not change what the processor does with the "
                "image (keep image sizes; with mask_grid: model the processor must leave the resized size as is)."
            )


def _tensorish(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, list) and value and isinstance(value[0], int | float | list)
    )


def check_training_layout(output: dict[str, Any], family: str | None = None) -> None:
    """Refuse image layouts TRL's batching cannot slice per sample (Gemma 3 pan-and-scan crops)."""
    pixel_values, num_images = output.get("pixel_values"), output.get("num_images")
    if pixel_values is None or num_images is None:
        return
    tiled = {"image_grid_thw", "pixel_attention_mask", "spatial_shapes", "num_tiles", "image_position_ids"}
    if tiled & set(output):
        return
    if pixel_values.size(0) != sum(num_images):
        raise ValueError(
            f"{family or 'this model'}: the processor returned {pixel_values.size(0)} image crops for "
            f"{sum(num_images)} images (Gemma 3 pan-and-scan?). TRL slices pixel_values one row per image, so "
            "crops would be misassigned to samples: turn do_pan_and_scan off in the processor config."
        )


def per_sample_pixel_values(output: dict[str, Any], pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """`pixel_values` (laid out like ``output["pixel_values"]``) as one tensor per sample, for TRL's shuffles."""
    from trl.trainer.utils import split_pixel_values_by_grid

    batch = {k: v for k, v in output.items() if k in _LAYOUT_KEYS}
    split = split_pixel_values_by_grid({**batch, "pixel_values": pixel_values})["pixel_values"]
    if isinstance(split, torch.Tensor):  # already one row per sample (SmolVLM/Idefics3)
        return list(split.split(1))
    return split


# TRL's multimodal forward kwargs besides pixel_values (GRPOTrainer._compute_loss passes these).
_LAYOUT_KEYS = (
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def image_forward_kwargs(batch: dict[str, Any], pixel_values: torch.Tensor) -> dict[str, Any]:
    """The multimodal forward kwargs of `batch` (as TRL passes them) with its pixel values replaced."""
    kwargs = {"pixel_values": pixel_values}
    for key in _LAYOUT_KEYS:
        if batch.get(key) is not None:
            kwargs[key] = batch[key]
    return kwargs
