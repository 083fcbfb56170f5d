"""Tiny random-weight VLMs of the real Qwen architectures, built offline.

Nothing can be downloaded from the Hub on our machines (or in CI), so every test, notebook, the
Space and the demo run on models built here: the *real* model, processor and tokenizer classes
(`Qwen2_5_VLForConditionalGeneration`, `Qwen2_5_VLProcessor`, `Qwen2Tokenizer`, ...) with tiny
sizes and random weights from a fixed seed. They are saved with `save_pretrained`, so the product's
ordinary loading code (`AutoModelForImageTextToText.from_pretrained(path)`,
`AutoProcessor.from_pretrained(path)`) is what loads them, with `HF_HUB_OFFLINE=1`.

The tokenizer is a byte-level BPE trained here, deterministically, on a small corpus of the
prompts and answers PAPO uses, wrapped in the real `Qwen2Tokenizer` pipeline, with the real Qwen
special tokens (`<|im_start|>`, `<|vision_start|>`, `<|image_pad|>`, ...) and a Qwen-style chat
template written for this package. It pads on the *left*: batched VLM prompts of different lengths
padded on the right put the image tokens at different offsets than generation expects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

ARCHITECTURES = ("qwen2_5_vl", "qwen3_vl")
# Non-Qwen families (papo.families), built by `papo.tiny_families`: Gemma 3 and SmolVLM2 (Idefics3-style).
OTHER_ARCHITECTURES = ("gemma3", "smolvlm")
ALL_ARCHITECTURES = ARCHITECTURES + OTHER_ARCHITECTURES

# The special tokens of the Qwen2.5-VL / Qwen3-VL tokenizers, in their real order.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen3 tokenizers carry the reasoning tags as (non-special) added tokens; Qwen2.5 treats them as text.
QWEN3_ADDED_TOKENS = ["<think>", "</think>"]

# The same pre-tokenisation split as Qwen2's tokenizer, so our BPE merges fit its pipeline.
_QWEN_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# A Qwen-style chat template (written for this package; same rendered format as Qwen2.5-VL's):
# a default system turn when none is given, image parts rendered as
# <|vision_start|><|image_pad|><|vision_end|> in place, and `{% generation %}` around assistant
# turns so TRL's SFT `assistant_only_loss` works.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# Qwen3-VL's instruct template has no default system turn.
QWEN3_VL_CHAT_TEMPLATE = QWEN2_5_VL_CHAT_TEMPLATE.replace(
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}", ""
)

# What the tokenizer's BPE merges are learnt from: the official prompt suffix, the answer format and
# the kinds of questions the synthetic data asks. Fixed text -> deterministic merges.
_TOKENIZER_CORPUS = [
    "You first think through the reasoning process as an internal monologue, enclosed within "
    "<think> </think> tags. Then, provide your final answer enclosed within \\boxed{}.",
    "<think> I count the shapes in the image. There are 3 red circles. </think> The answer is \\boxed{3}.",
    "<think>The tallest bar is B.</think>\\boxed{B}",
    "<think>The left side has more dots.</think>\\boxed{left}",
    "<think>The right side has more dots.</think>\\boxed{right}",
    "How many red circles are in the image? How many blue squares are there? How many green triangles?",
    "What number is written in the image? Which bar is the tallest? Answer with its letter.",
    "Which side of the image has more dots, left or right? What is 3 + 4? What is 12 - 5?",
    "count shapes colour color yellow purple orange black white square circle triangle bar dot",
    "Find the value of x. The area of the triangle is \\frac{1}{2} b h. \\sqrt{2} \\pi \\times \\cdot",
    "A B C D E 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 = + - * / ( ) [ ] { }",
]


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of a tiny model. Defaults: ~1M parameters, a 64x64 image forward+backward in milliseconds."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vision_hidden_size: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 64
    bpe_vocab_size: int = 1024
    # Image processor bounds (pixels). Small so tests stay fast; the real models use 3136..1003520.
    min_pixels: int = 32 * 32
    max_pixels: int = 128 * 128

    def text_sizes(self, vocab_size: int) -> dict[str, int]:
        """The language model's sizes, shared by every family's text config."""
        return dict(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=4096,
        )


def build_tokenizer(architecture: str = "qwen2_5_vl", vocab_size: int = 1024):
    """A Qwen2Tokenizer with a small BPE vocabulary learnt on a fixed corpus, real special tokens,
    left padding and the architecture's chat template."""
    from transformers import Qwen2Tokenizer

    _check_architecture(architecture)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]

    extra = QWEN_SPECIAL_TOKENS[1:]  # <|endoftext|> is the tokenizer's own pad/unk token
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=extra,
        padding_side="left",
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    if architecture == "qwen3_vl":
        tokenizer.add_tokens(QWEN3_ADDED_TOKENS)
    tokenizer.chat_template = _chat_template(architecture)
    return tokenizer


def build_processor(architecture: str = "qwen2_5_vl", spec: TinyVLMSpec | None = None):
    """The real processor class of `architecture` with a tiny tokenizer and small pixel bounds."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen3VLProcessor

    spec = spec or TinyVLMSpec()
    tokenizer = build_tokenizer(architecture, spec.bpe_vocab_size)
    size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    if architecture == "qwen2_5_vl":
        from transformers import Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        video_processor = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        cls = Qwen2_5_VLProcessor
    else:
        from transformers import Qwen3VLVideoProcessor

        # Qwen3-VL: 16-px patches, mean/std 0.5 (values as in the published preprocessor config).
        norm = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
        image_processor = Qwen2VLImageProcessor(
            size=size, patch_size=16, merge_size=2, temporal_patch_size=2, **norm
        )
        video_processor = Qwen3VLVideoProcessor(
            size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels * 4},
            patch_size=16,
            merge_size=2,
            temporal_patch_size=2,
            **norm,
        )
        cls = Qwen3VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=_chat_template(architecture),
    )


def build_config(architecture: str, tokenizer, spec: TinyVLMSpec | None = None):
    """The real config class of `architecture` at tiny sizes, with token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    spec = spec or TinyVLMSpec()
    head_dim = spec.hidden_size // spec.num_heads
    if head_dim % 2 or head_dim < 8:
        raise ValueError(f"hidden_size/num_heads must be an even number >= 8, got head_dim={head_dim}")
    # M-RoPE splits the head_dim/2 rotary frequencies over (temporal, height, width).
    mrope_section = _mrope_section(head_dim // 2)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text = spec.text_sizes(len(tokenizer)) | dict(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    if architecture == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section}
        vision.update(patch_size=14, window_size=112, fullatt_block_indexes=[spec.vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
    text.pop("bos_token_id")
    text.pop("eos_token_id")
    text["head_dim"] = head_dim
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5e6,
        "mrope_section": mrope_section,
        "mrope_interleaved": True,
    }
    vision.update(patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids)


def build_tiny_vlm(architecture: str = "qwen2_5_vl", seed: int = 0, spec: TinyVLMSpec | None = None):
    """Build (model, processor): a tiny random-weight VLM of a real architecture, in eval mode, fp32.

    The weights depend only on `seed` (and `spec`): the same call gives the same model anywhere.
    """
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen3VLForConditionalGeneration,
    )

    if architecture in OTHER_ARCHITECTURES:
        from papo.tiny_families import build_tiny_family_vlm

        return build_tiny_family_vlm(architecture, seed, spec)
    _check_architecture(architecture)
    spec = spec or TinyVLMSpec()
    processor = build_processor(architecture, spec)
    config = build_config(architecture, processor.tokenizer, spec)
    model_cls = (
        Qwen2_5_VLForConditionalGeneration
        if architecture == "qwen2_5_vl"
        else Qwen3VLForConditionalGeneration
    )
    with _seeded(seed):
        model = model_cls(config)
    tok = processor.tokenizer
    model.generation_config = sampling_generation_config(
        bos=tok.convert_tokens_to_ids("<|endoftext|>"),
        stop=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
        pad=tok.pad_token_id,
    )
    return model.eval(), processor


def sampling_generation_config(bos: int, stop: list[int], pad: int):
    """What every tiny model samples with: plain sampling at T = 1 (no top-p/top-k), stopping at `stop`."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=bos,
        eos_token_id=stop,
        pad_token_id=pad,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )


def save_tiny_vlm(
    output_dir: str | os.PathLike,
    architecture: str = "qwen2_5_vl",
    seed: int = 0,
    spec: TinyVLMSpec | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a tiny VLM and `save_pretrained` it with its processor into `output_dir`.

    Written to a temporary sibling directory and renamed into place, so an interrupted build never
    leaves a half-written model that later loads fail on. An existing directory is kept unless
    `overwrite=True`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        if (output_dir / "config.json").exists():
            return output_dir
        raise FileExistsError(f"{output_dir} exists but holds no model; remove it or pass overwrite=True")
    from papo.files import write_dir_atomically

    model, processor = build_tiny_vlm(architecture, seed, spec)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return write_dir_atomically(output_dir, write)


def _mrope_section(half: int) -> list[int]:
    """Split `half` rotary frequencies over (t, h, w) like Qwen does (16/24/24 of 64 at 3B)."""
    t = half // 4 if half >= 8 else half // 3
    hw = half - t
    return [t, hw - hw // 2, hw // 2]


def _chat_template(architecture: str) -> str:
    return QWEN2_5_VL_CHAT_TEMPLATE if architecture == "qwen2_5_vl" else QWEN3_VL_CHAT_TEMPLATE


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} is not supported; choose one of {ALL_ARCHITECTURES}")


class _seeded:
    """Fork torch's RNG, seed it, and restore it on exit: building a model must not disturb callers."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)
