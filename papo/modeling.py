"""Loading a VLM and its processor, from a Hub id or a local directory, ready for batched prompts."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from papo.families import FAMILIES, family_of, quantization_skip_modules

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextmanager
def explain_missing(name_or_path: str | os.PathLike):
    """Turn "not found / offline" errors of `from_pretrained` into one that names the repo and the fix.

    Hub ids work wherever a path does (they download to the normal cache); offline with no cached
    copy the user needs to know which id and how to fetch it.
    """
    try:
        yield
    except (OSError, ValueError) as err:
        # PEFT reports a missing adapter as ValueError("Can't find 'adapter_config.json' ...")
        if os.path.exists(str(name_or_path)) or (
            isinstance(err, ValueError) and "Can't find" not in str(err)
        ):
            raise
        raise ValueError(
            f"could not load {str(name_or_path)!r}: it is not a local folder and is not in the Hugging Face cache "
            f"(offline, or a wrong id?). Download it first with `hf download {name_or_path}`. "
            f"({type(err).__name__}: {err})"
        ) from err


def load_processor(name_or_path: str | os.PathLike, **kwargs):
    """`AutoProcessor.from_pretrained`, with the tokenizer padding on the left.

    Batched VLM prompts of different lengths must be left-padded: with right padding the prompts'
    last tokens are padding, generation continues from them, and the image tokens sit at offsets
    the model never saw in training. Qwen checkpoints do not all set this, so we always do.
    """
    from transformers import AutoProcessor

    with explain_missing(name_or_path):
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
    with explain_missing(name_or_path):
        model = AutoModelForImageTextToText.from_pretrained(str(name_or_path), dtype=DTYPES[dtype], **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval(), load_processor(name_or_path)


# Kept out of 4-bit: the vision tower and projector of every supported family (small, and they overflow
# in fp16 on T4s) and the output head (`papo.families`).
QUANTIZATION_SKIP_MODULES = quantization_skip_modules()
# LoRA on the language model's projections only: the vision tower stays frozen (the default under
# LoRA), and the vision MLP's gate/up/down_proj — same names as the LM's — are not caught.
# (Qwen's; other families' are in papo.families.FAMILIES, chosen by `lora_target_modules(family=...)`.)
LANGUAGE_LORA_TARGETS = FAMILIES["qwen2_5_vl"].language_lora_targets
VISION_LORA_TARGETS = FAMILIES["qwen2_5_vl"].vision_lora_targets


def compute_dtype() -> torch.dtype:
    """bf16 where the GPU has it, fp16 on older GPUs (T4), fp32 on the CPU."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def four_bit_config(quant_type: str = "nf4", double_quant: bool = True):
    """QLoRA's 4-bit config: NF4, double quantisation, compute dtype from the device, vision unquantised."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype(),
        llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES,
    )


def keep_4bit_weights_unpacked_on_cpu(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, the first no-grad forward in eval mode (generation, evaluation)
    repacks each `Linear4bit` weight in place for a faster kernel; the next training forward then
    fails ("a view of a leaf Variable that requires grad is being used in an in-place operation").
    Training alternates the two modes, so on the CPU we keep the training layout. Returns the
    number of layers changed.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


VISION_DTYPES = ("auto", "float32")


def keep_vision_in_fp32(model) -> list[str]:
    """Vision tower and projector weights in fp32, their forward outside autocast; returns the modules.

    On a T4 (fp16, no bf16) Qwen2.5-VL's vision MLPs overflow (activations above 65,504: inf, then NaN
    logits). fp32 weights alone would not help: fp16 autocast would run their matmuls in fp16 again. The
    modules are the family's non-quantised vision side (`papo.families`, also kept out of 4-bit); frozen
    under LoRA, so the cost is memory only (~1.3 GB for Qwen2.5-VL-3B's 670 M vision parameters).
    """
    kept = []
    for prefix in family_of(model).quantization_skip_modules:
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            continue
        module.float()
        forward = module.forward

        def forward_fp32(*args, _forward=forward, _module=module, **kwargs):
            device = next(_module.parameters()).device.type
            with torch.autocast(device, enabled=False):
                return _forward(*args, **kwargs)

        module.forward = forward_fp32
        kept.append(prefix)
    return kept


def _check_vision_dtype(vision_dtype: str | None) -> None:
    if vision_dtype not in (None, *VISION_DTYPES):
        raise ValueError(
            f"vision_dtype={vision_dtype!r}: use float32 (vision tower in fp32, e.g. under fp16 on a T4) or "
            "auto (the model's dtype)"
        )


def load_model_and_adapter(
    model_id: str | os.PathLike,
    adapter: str | os.PathLike | None = None,
    *,
    dtype: str = "auto",
    device: str | None = None,
    load_in_4bit: bool = False,
    vision_dtype: str | None = None,
):
    """(model, processor) for inference: a base model (Hub id or path), optionally in 4-bit NF4 (QLoRA's
    config, vision side unquantised), plus an optional PEFT adapter; eval mode. The one loader of eval,
    the Space, the notebooks and the benchmarks. Offline with no cached copy: a message naming ``hf download``.
    """
    _check_vision_dtype(vision_dtype)
    if load_in_4bit:
        model, processor = load_vlm(
            model_id, dtype=dtype, quantization_config=four_bit_config(), device_map=device
        )
    else:
        model, processor = load_vlm(model_id, dtype=dtype, device=device)
    if vision_dtype == "float32":
        keep_vision_in_fp32(model)
    if adapter is not None:
        from peft import PeftModel

        with explain_missing(adapter):
            model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return model, processor


def load_model_for_training(
    name_or_path: str | os.PathLike,
    *,
    dtype: str | None = "auto",
    load_in_4bit: bool = False,
    revision: str = "main",
    attn_implementation: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    vision_dtype: str | None = None,
):
    """(policy model, processor) for training, optionally in 4-bit for QLoRA; ``vision_dtype="float32"``
    keeps the vision side in fp32 (`keep_vision_in_fp32`)."""
    _check_vision_dtype(vision_dtype)
    from transformers import AutoModelForImageTextToText

    torch_dtype = DTYPES.get(dtype or "auto")
    if torch_dtype is None:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    from transformers import AutoConfig

    with explain_missing(name_or_path):
        family_of(
            AutoConfig.from_pretrained(str(name_or_path), revision=revision)
        )  # unsupported: one sentence
    quantization_config = four_bit_config() if load_in_4bit else None
    try:
        with explain_missing(name_or_path):
            model = AutoModelForImageTextToText.from_pretrained(
                str(name_or_path),
                revision=revision,
                dtype=torch_dtype,
                attn_implementation=attn_implementation,
                quantization_config=quantization_config,
            )
    except (ImportError, RuntimeError) as err:
        if not load_in_4bit:
            raise
        raise ValueError(
            f"load_in_4bit: 4-bit loading failed on this machine ({type(err).__name__}: {err}). QLoRA needs "
            "bitsandbytes with a backend for this device; run without --load_in_4bit (plain LoRA) instead."
        ) from err
    if load_in_4bit and not torch.cuda.is_available():
        keep_4bit_weights_unpacked_on_cpu(model)
    if vision_dtype == "float32":
        keep_vision_in_fp32(model)
    processor = load_processor(name_or_path, revision=revision)
    set_pixel_bounds(processor, min_pixels, max_pixels)
    return model, processor


def set_pixel_bounds(processor, min_pixels: int | None, max_pixels: int | None) -> None:
    """Set the Qwen image processor's resize bounds (pixels), as the official `process_image` does.

    Nothing to do when both are None. Other families have no pixel bounds (Gemma 3 always resizes to
    its square input; SmolVLM to its longest edge): setting them there is an error that says so.
    """
    if min_pixels is None and max_pixels is None:
        return
    current = processor.image_processor.size
    get = current.get if isinstance(current, dict) else lambda name: getattr(current, name, None)
    if not get("shortest_edge") or not get("longest_edge"):
        raise ValueError(
            f"min_pixels/max_pixels set the pixel bounds of Qwen2-VL-family image processors; "
            f"{type(processor.image_processor).__name__} has none (size={dict(current) if isinstance(current, dict) else current}). "
            "Leave min_pixels and max_pixels unset for this model (Gemma 3 resizes to its fixed square input, "
            "SmolVLM to size.longest_edge in its processor config)."
        )
    size = {"shortest_edge": current["shortest_edge"], "longest_edge": current["longest_edge"]}
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    if size["shortest_edge"] > size["longest_edge"]:
        raise ValueError(
            f"min_pixels ({size['shortest_edge']}) must not exceed max_pixels ({size['longest_edge']})"
        )
    processor.image_processor.size = size


def lora_target_modules(include_vision: bool = False, family=None) -> str:
    """The LoRA target regex: the language model's projections, plus the vision blocks if asked.

    `family`: a `papo.families.Family`, a config/model, or a model_type (default: Qwen's names).
    """
    family = FAMILIES["qwen2_5_vl"] if family is None else family
    if not hasattr(family, "language_lora_targets"):
        family = family_of(family)
    if include_vision:
        return f"({family.language_lora_targets})|({family.vision_lora_targets})"
    return family.language_lora_targets
