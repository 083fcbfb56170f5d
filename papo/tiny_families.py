"""Tiny random-weight Gemma 3 and SmolVLM2 models of the real architectures, built offline.

Like `papo.tiny` for Qwen: the *real* model, config, processor, image-processor and tokenizer classes
(`Gemma3ForConditionalGeneration` + `Gemma3Processor` + `GemmaTokenizer`;
`SmolVLMForConditionalGeneration` + `SmolVLMProcessor` + `GPT2Tokenizer`, the Idefics3-style
processor that splits an image into tiles plus a global view), at tiny sizes with random weights from
a fixed seed, a small tokenizer learnt here on a fixed corpus with each family's special tokens, and a
chat template in each family's format. Loaded back by `AutoModelForImageTextToText` / `AutoProcessor`.

Sizes differ from the real models only where the real ones would be slow on a CPU, and keep each
family's *structure*:

* Gemma 3: a fixed-size square SigLIP input (56 px here, 896 in the real models), 14-px patches and
  average pooling of the patch grid to ``mm_tokens_per_image`` tokens (4 here, 256 real), framed by
  ``<start_of_image>`` ... ``<end_of_image>``; ``token_type_ids`` mark the image tokens.
* SmolVLM2: the image is resized so its longest edge is ``size.longest_edge`` (64 px here, 1536 real),
  split into ``max_image_size`` tiles (32 px here, 384 real) plus one global view, each tile
  ``(image_size / patch_size)² / scale_factor²`` tokens (4 here, 81 real for 2.2B), with
  ``<fake_token_around_image>``, ``<row_i_col_j>`` and ``<global-img>`` markers; ``pixel_values`` is
  padded per sample with a ``pixel_attention_mask``.
"""

from __future__ import annotations

import json

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from papo.tiny import _TOKENIZER_CORPUS, TinyVLMSpec, _seeded, sampling_generation_config

# --- Gemma 3 ---------------------------------------------------------------------------------------

# The base special tokens (ids 0-4 as in Gemma's vocabulary), the turn markers and the image markers.
GEMMA3_SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
# Gemma 3's chat format (written for this package, same rendered text as the released template):
# the system turn is folded into the first user turn, the assistant role is "model", an image part
# is <start_of_image> (the processor expands it), `{% generation %}` marks assistant turns.
GEMMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') -}}"
    "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] | trim -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_turn>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}{{- '<start_of_image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] | trim -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

GEMMA3_IMAGE_SIZE = 56  # SigLIP input side (real: 896); 4x4 patches of 14 px
GEMMA3_TOKENS_PER_IMAGE = 4  # 2x2 after average pooling (real: 256 = 16x16)

# --- SmolVLM2 --------------------------------------------------------------------------------------

SMOLVLM_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
# SmolVLM2's chat format: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant:".
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_TILE_SIZE = 32  # max_image_size.longest_edge: one tile / the global view (real: 384)
SMOLVLM_LONGEST_EDGE = 64  # size.longest_edge: up to 2x2 tiles (real: 1536 = 4x384)
SMOLVLM_PATCH_SIZE = 8  # (real: 14 for 2.2B, 16 for 256M/500M)
SMOLVLM_SCALE_FACTOR = 2  # pixel shuffle (real: 3 for 2.2B, 4 for 256M/500M)


def build_gemma3_tokenizer(vocab_size: int = 1024):
    """A GemmaTokenizer (byte-fallback BPE, '▁' for spaces) learnt on the fixed corpus, Gemma 3's tokens."""
    from transformers import GemmaTokenizer

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(byte_tokens),
        special_tokens=GEMMA3_SPECIAL_TOKENS[:5] + byte_tokens,
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    named = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tokenizer = GemmaTokenizer(
        vocab=state["vocab"],
        merges=merges,
        padding_side="left",
        add_bos_token=False,  # the chat template writes <bos> (TRL tokenizes the rendered text again)
        model_max_length=32768,
        extra_special_tokens=named,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": GEMMA3_SPECIAL_TOKENS[5:]}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    return tokenizer


def build_smolvlm_tokenizer(vocab_size: int = 1024):
    """A GPT2Tokenizer (byte-level BPE, as SmolLM2) learnt on the fixed corpus, SmolVLM2's special tokens."""
    from transformers import GPT2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    extra = SMOLVLM_SPECIAL_TOKENS[1:]
    named = {
        "fake_image_token": "<fake_token_around_image>",
        "image_token": "<image>",
        "end_of_utterance_token": "<end_of_utterance>",
        "global_image_token": "<global-img>",
    }
    tokenizer = GPT2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        padding_side="left",
        model_max_length=32768,
        extra_special_tokens=named,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    tokenizer.chat_template = SMOLVLM_CHAT_TEMPLATE
    return tokenizer


def build_family_processor(architecture: str, spec: TinyVLMSpec | None = None):
    """The real processor class of `architecture` ('gemma3' | 'smolvlm') with a tiny tokenizer and images."""
    spec = spec or TinyVLMSpec()
    half = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # both families' published values
    if architecture == "gemma3":
        from transformers import Gemma3ImageProcessor, Gemma3Processor

        tokenizer = build_gemma3_tokenizer(spec.bpe_vocab_size)
        image_processor = Gemma3ImageProcessor(
            size={"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE}, resample=2, **half
        )
        return Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=GEMMA3_CHAT_TEMPLATE,
            image_seq_length=GEMMA3_TOKENS_PER_IMAGE,
        )
    if architecture == "smolvlm":
        from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

        tokenizer = build_smolvlm_tokenizer(spec.bpe_vocab_size)
        sizes = dict(
            size={"longest_edge": SMOLVLM_LONGEST_EDGE}, max_image_size={"longest_edge": SMOLVLM_TILE_SIZE}
        )
        image_processor = SmolVLMImageProcessor(do_image_splitting=True, **sizes, **half)
        video_processor = SmolVLMVideoProcessor(**sizes, **half)
        tokens_per_tile = (SMOLVLM_TILE_SIZE // SMOLVLM_PATCH_SIZE) ** 2 // SMOLVLM_SCALE_FACTOR**2
        return SmolVLMProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            image_seq_len=tokens_per_tile,
            chat_template=SMOLVLM_CHAT_TEMPLATE,
        )
    raise ValueError(f"architecture={architecture!r} is not one of ('gemma3', 'smolvlm')")


def build_family_config(architecture: str, tokenizer, spec: TinyVLMSpec | None = None):
    """The real config class of `architecture` at tiny sizes, token ids taken from `tokenizer`."""
    spec = spec or TinyVLMSpec()
    head_dim = spec.hidden_size // spec.num_heads
    ids = tokenizer.convert_tokens_to_ids
    vision = dict(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_hidden_layers=spec.vision_depth,
        num_attention_heads=spec.vision_heads,
    )
    text = spec.text_sizes(len(tokenizer))
    if architecture == "gemma3":
        from transformers import Gemma3Config

        text.update(
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=64,
            layer_types=["sliding_attention"] * (spec.num_layers - 1) + ["full_attention"],
            pad_token_id=ids("<pad>"),
            eos_token_id=[ids("<eos>"), ids("<end_of_turn>")],
            bos_token_id=ids("<bos>"),
        )
        vision.update(image_size=GEMMA3_IMAGE_SIZE, patch_size=14, vision_use_head=False)  # as released
        return Gemma3Config(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"),
        )
    from transformers import SmolVLMConfig

    text.update(
        model_type="llama",
        head_dim=head_dim,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=ids("<end_of_utterance>"),
        tie_word_embeddings=False,
    )
    vision.update(image_size=SMOLVLM_TILE_SIZE, patch_size=SMOLVLM_PATCH_SIZE)
    return SmolVLMConfig(
        text_config=text,
        vision_config=vision,
        scale_factor=SMOLVLM_SCALE_FACTOR,
        image_token_id=ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_family_vlm(architecture: str, seed: int = 0, spec: TinyVLMSpec | None = None):
    """(model, processor) for 'gemma3' or 'smolvlm': real classes, tiny sizes, weights from `seed`, eval, fp32."""

    spec = spec or TinyVLMSpec()
    processor = build_family_processor(architecture, spec)
    tok = processor.tokenizer
    config = build_family_config(architecture, tok, spec)
    if architecture == "gemma3":
        from transformers import Gemma3ForConditionalGeneration as model_cls

        stop = [tok.convert_tokens_to_ids("<end_of_turn>"), tok.convert_tokens_to_ids("<eos>")]
        bos = tok.convert_tokens_to_ids("<bos>")
    else:
        from transformers import SmolVLMForConditionalGeneration as model_cls

        stop = [tok.convert_tokens_to_ids("<end_of_utterance>")]
        bos = tok.convert_tokens_to_ids("<|im_start|>")
    with _seeded(seed):
        model = model_cls(config)
        if architecture == "gemma3":
            # Gemma 3 creates its image projection as zeros (the checkpoint fills it): left so, the image
            # would not reach the language model at all and every perception KL would be exactly 0.
            weight = model.model.multi_modal_projector.mm_input_projection_weight
            with torch.no_grad():
                weight.normal_(0.0, weight.size(0) ** -0.5)
    model.generation_config = sampling_generation_config(bos=bos, stop=stop, pad=tok.pad_token_id)
    return model.eval(), processor
