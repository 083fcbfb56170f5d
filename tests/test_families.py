"""PAPO beyond Qwen: Gemma 3 and SmolVLM2 (Idefics3-style processor) on tiny models of their real classes.

Family detection from the config, the masked pass (same processor call; only the image tensors differ,
checked per family), one PAPO-G step through `papo train` with each family's presets, `papo eval` with
per-token perception KL, and `mask_grid: model` where the family allows it.
"""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from papo.analysis import perception_kl_per_token, processor_inputs
from papo.families import (
    FAMILIES,
    check_masked_layout,
    family_of,
    image_forward_kwargs,
    per_sample_pixel_values,
)
from papo.masking import MaskingConfig, mask_images, model_size
from papo.modeling import lora_target_modules, set_pixel_bounds
from papo.tiny import ALL_ARCHITECTURES, OTHER_ARCHITECTURES

FAMILY_PRESETS = {
    "gemma3": ["papo-g-gemma3-4b-lora", "papo-g-gemma3-4b-qlora"],
    "smolvlm": ["papo-g-smolvlm2-2.2b-lora", "papo-g-smolvlm2-2.2b-qlora"],
}
PROCESSOR_CLASSES = {"gemma3": "Gemma3Processor", "smolvlm": "SmolVLMProcessor"}
MODEL_CLASSES = {"gemma3": "Gemma3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}
# A CPU run of a preset: the tiny model and data, one short step, fp32 (as tests/test_presets.py).
CPU_OVERRIDES = [
    "--max_steps", "1", "--per_device_train_batch_size", "2", "--num_generations", "2",
    "--gradient_accumulation_steps", "1", "--steps_per_generation", "1", "--max_completion_length", "8",
    "--max_train_samples", "2", "--bf16", "false", "--dtype", "float32",
    "--use_cpu", "true", "--save_strategy", "no", "--logging_steps", "1",
]  # fmt: skip


def _prompt(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = torch.Generator().manual_seed(seed)
    return Image.fromarray(
        torch.randint(0, 256, (height, width, 3), generator=rng, dtype=torch.uint8).numpy()
    )


@pytest.fixture(scope="module")
def family_dirs(tiny_model_dirs):
    return tiny_model_dirs


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from papo.data.synthetic import save_synthetic_dataset

    path = tmp_path_factory.mktemp("family-data") / "synthetic"
    save_synthetic_dataset(path, num_train=4, num_test=2, seed=0)
    return path


# --- detection and the tiny models ------------------------------------------------------------------


@pytest.mark.parametrize("arch", OTHER_ARCHITECTURES)
def test_tiny_model_loads_with_the_auto_classes_and_its_family_is_detected(arch, family_dirs):
    model = AutoModelForImageTextToText.from_pretrained(family_dirs[arch])
    processor = AutoProcessor.from_pretrained(family_dirs[arch])
    assert type(model).__name__ == MODEL_CLASSES[arch]
    assert type(processor).__name__ == PROCESSOR_CLASSES[arch]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert family_of(AutoConfig.from_pretrained(family_dirs[arch])).name == arch
    assert family_of(model).name == arch
    tokenizer = processor.tokenizer
    assert tokenizer.padding_side == "left"
    specials = (
        ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
        if arch == "gemma3"
        else ["<fake_token_around_image>", "<image>", "<global-img>", "<row_1_col_1>", "<end_of_utterance>"]
    )
    for token in specials:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token


def test_an_unsupported_family_gets_one_sentence_naming_the_supported_ones():
    with pytest.raises(
        ValueError, match=r"model_type='llava' is not supported by PAPO; supported families"
    ) as err:
        family_of("llava")
    for family in FAMILIES.values():
        assert family.label in str(err.value)


@pytest.mark.parametrize("arch", OTHER_ARCHITECTURES)
def test_chat_template_and_image_tokens(arch, family_dirs):
    processor = AutoProcessor.from_pretrained(family_dirs[arch])
    inputs = processor_inputs(processor, [_prompt("How many?")], [[_picture(64, 48)]])
    ids = inputs["input_ids"][0]
    tok = processor.tokenizer
    if arch == "gemma3":
        text = tok.decode(ids)
        assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<start_of_turn>model\n")
        assert int((ids == tok.convert_tokens_to_ids("<image_soft_token>")).sum()) == 4  # mm_tokens_per_image
        assert torch.equal(
            inputs["token_type_ids"][0].bool(), ids == tok.convert_tokens_to_ids("<image_soft_token>")
        )
    else:
        # 64x48 -> longest edge 64 -> 2x2 tiles of 32 px + the global view, 4 tokens each
        assert tuple(inputs["pixel_values"].shape) == (1, 5, 3, 32, 32)
        assert int((ids == tok.convert_tokens_to_ids("<image>")).sum()) == 5 * 4
        assert tok.decode(ids).endswith("Assistant:")


@pytest.mark.parametrize("arch", OTHER_ARCHITECTURES)
def test_lora_targets_are_the_language_model_only_by_default(arch, family_dirs):
    import re

    model = AutoModelForImageTextToText.from_pretrained(family_dirs[arch])
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    language = [n for n in names if re.fullmatch(lora_target_modules(family=model.config), n)]
    both = [n for n in names if re.fullmatch(lora_target_modules(True, family=model.config), n)]
    lm = "language_model" if arch == "gemma3" else "text_model"
    assert language and all(f".{lm}." in n for n in language)
    assert len(language) == 7 * model.config.text_config.num_hidden_layers
    vision = set(both) - set(language)
    assert vision and all(("vision_tower" if arch == "gemma3" else "vision_model") in n for n in vision)
    with pytest.raises(ValueError, match="min_pixels/max_pixels"):
        set_pixel_bounds(AutoProcessor.from_pretrained(family_dirs[arch]), 3136, None)


# --- the masked pass --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", OTHER_ARCHITECTURES)
def test_masked_pass_changes_only_the_image_tensors(arch, family_dirs):
    """Same processor call on original and masked images: identical ids, masks, tiles; other pixels."""
    processor = AutoProcessor.from_pretrained(family_dirs[arch])
    prompts = [_prompt("Short?"), _prompt("A longer question about the picture?")]
    images = [[_picture(64, 48, 1)], [_picture(30, 90, 2)]]
    masked = [
        mask_images(row, MaskingConfig(), seed=i, image_processor=processor.image_processor)
        for i, row in enumerate(images)
    ]
    original_inputs = processor_inputs(processor, prompts, images)
    masked_inputs = processor_inputs(processor, prompts, masked)
    check_masked_layout(original_inputs, masked_inputs, arch)
    for key in original_inputs:
        same = torch.equal(original_inputs[key], masked_inputs[key])
        assert same == (key != "pixel_values"), key
    if arch == "smolvlm":
        assert torch.equal(original_inputs["pixel_attention_mask"], masked_inputs["pixel_attention_mask"])
    # The trainer's masked-forward kwargs: the generation batch's layout with only pixel_values swapped.
    output = dict(original_inputs)
    output["num_images"] = [1, 1]
    kwargs = image_forward_kwargs(output, masked_inputs["pixel_values"])
    assert kwargs["pixel_values"] is masked_inputs["pixel_values"]
    for key, value in kwargs.items():
        if key not in ("pixel_values", "num_images"):
            assert value is output[key], key
    rows = per_sample_pixel_values(output, masked_inputs["pixel_values"])
    assert len(rows) == 2 and torch.equal(torch.cat(rows), masked_inputs["pixel_values"])


def test_masked_pass_fails_loudly_when_the_tiles_change(family_dirs):
    """SmolVLM: an image of another size is split into other tiles: the layout check must refuse it."""
    processor = AutoProcessor.from_pretrained(family_dirs["smolvlm"])
    prompts = [_prompt("x?")]
    original = processor_inputs(processor, prompts, [[_picture(64, 64)]])
    other = processor_inputs(processor, prompts, [[_picture(64, 16)]])  # 1x2 tiles + global, not 2x2
    with pytest.raises(ValueError, match="masked pass \\(smolvlm\\)"):
        check_masked_layout(original, other, "smolvlm")


def test_gemma3_pan_and_scan_is_refused_in_training():
    from papo.families import check_training_layout

    output = {"pixel_values": torch.zeros(3, 3, 56, 56), "num_images": [1]}  # one image, two crops
    with pytest.raises(ValueError, match="do_pan_and_scan"):
        check_training_layout(output, "gemma3")


def test_mask_grid_model_on_gemma3_blackens_whole_patches_of_the_resized_image(family_dirs):
    processor = AutoProcessor.from_pretrained(family_dirs["gemma3"])
    image = _picture(90, 40)
    [masked] = mask_images([image], MaskingConfig(grid="model", mask_ratio=0.5), 0, processor.image_processor)
    assert masked.size == (56, 56) and model_size(40, 90, processor.image_processor) == (56, 56)
    pixels = torch.from_numpy(__import__("numpy").asarray(masked)).float()
    blocks = pixels.reshape(4, 14, 4, 14, 3).permute(0, 2, 1, 3, 4).reshape(16, -1)
    black = (blocks == 0).all(-1)
    assert 0 < int(black.sum()) < 16  # whole 14-px patches black, the others untouched
    original = processor_inputs(processor, [_prompt("x?")], [[image]])
    after = processor_inputs(processor, [_prompt("x?")], [[masked]])
    check_masked_layout(original, after, "gemma3")


def test_mask_grid_model_is_refused_for_smolvlm(family_dirs):
    processor = AutoProcessor.from_pretrained(family_dirs["smolvlm"])
    with pytest.raises(ValueError, match="tiles plus a downscaled global view.*mask_grid: image"):
        mask_images([_picture(64, 64)], MaskingConfig(grid="model"), 0, processor.image_processor)


# --- training, evaluation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, preset", [(arch, preset) for arch, presets in FAMILY_PRESETS.items() for preset in presets]
)
def test_preset_runs_one_papo_step_through_papo_train(arch, preset, family_dirs, tiny_data, tmp_path):
    from papo.train import available_presets, parse_train_args, train

    assert preset in available_presets()
    script_args, training_args, model_args = parse_train_args(["--config", preset, "--bf16", "false"])
    qlora = preset.endswith("qlora")
    assert model_args.load_in_4bit == qlora and model_args.use_peft
    assert script_args.min_pixels is None and script_args.max_pixels is None  # Qwen-only bounds
    assert training_args.perception_kl_coef == 0.02 and training_args.beta == 0.01
    assert training_args.mask_patch_size == 14 and training_args.mask_grid == "image"
    # The preset on the tiny model (only sizes, steps and precision overridden). LoRA presets also re-run
    # the masked branch with gradient (recompute_masked_logps): per-sample masked pixel values.
    out = tmp_path / "run"
    argv = ["--config", preset, "--model_name_or_path", family_dirs[arch], "--dataset_name", str(tiny_data)]
    argv += ["--output_dir", str(out), *CPU_OVERRIDES, "--recompute_masked_logps", str(not qlora).lower()]
    trainer = train(*parse_train_args(argv))
    assert trainer.state.global_step == 1
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = next(log for log in logs if "reward" in log)
    assert "perception_kl" in step and 0 < step["perception_kl"] < float("inf")  # the image matters
    lora = {n for n, _ in trainer.model.named_parameters() if "lora_" in n}
    lm = "language_model" if arch == "gemma3" else "text_model"
    assert lora and all(f".{lm}." in n for n in lora)  # language model only by default
    four_bit = {n for n, m in trainer.model.named_modules() if type(m).__name__ == "Linear4bit"}
    if qlora:  # the language model in 4-bit; vision tower, projector/connector and lm_head are not
        assert four_bit and all(f".{lm}." in n for n in four_bit)
    else:
        assert not four_bit


@pytest.mark.parametrize("arch", OTHER_ARCHITECTURES)
def test_papo_eval_two_questions_with_per_token_kl(arch, family_dirs, tiny_data, tmp_path, capsys):
    from papo.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "--model", family_dirs[arch], "--data", str(tiny_data), "--output_dir", str(out)]
    argv += ["--samples", "1", "--max_new_tokens", "6", "--max_questions", "2", "--batch_size", "2"]
    assert main(argv) == 0
    results = json.loads(next(out.rglob("results.json")).read_text())
    text = json.dumps(results)
    assert "perception_kl_mean" in text
    predictions = list(out.rglob("*.jsonl")) + list(out.rglob("*.parquet"))
    assert predictions


@pytest.mark.parametrize("arch", OTHER_ARCHITECTURES)
def test_per_token_kl_is_zero_without_masking_and_positive_with_it(arch, family_dirs):
    model = AutoModelForImageTextToText.from_pretrained(family_dirs[arch]).eval()
    processor = AutoProcessor.from_pretrained(family_dirs[arch])
    processor.tokenizer.padding_side = "left"
    prompts, images = (
        [_prompt("How many?"), _prompt("Which side?")],
        [[_picture(64, 48, 3)], [_picture(40, 40, 4)]],
    )
    completions = [processor.tokenizer.encode("<think>3</think>", add_special_tokens=False)] * 2
    none = perception_kl_per_token(
        model, processor, prompts, images, completions, masking=MaskingConfig(mask_ratio=0.0)
    )
    full = perception_kl_per_token(
        model, processor, prompts, images, completions, masking=MaskingConfig(mask_ratio=1.0)
    )
    assert [len(k) for k in full] == [len(c) for c in completions]
    assert max(abs(v) for row in none for v in row) < 1e-5
    assert sum(v for row in full for v in row) > 1e-4  # the image reaches the language model


# --- the Space ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", OTHER_ARCHITECTURES)
def test_space_loads_each_family_and_scores_both_answers(arch, family_dirs, tmp_path):
    import sys
    from pathlib import Path

    from peft import LoraConfig, get_peft_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "space"))
    from space_comparison import compare
    from space_config import SpaceConfig
    from space_models import Models

    base = AutoModelForImageTextToText.from_pretrained(family_dirs[arch])
    torch.manual_seed(0)
    lora = LoraConfig(
        r=4, lora_alpha=32, target_modules=lora_target_modules(family=base.config), init_lora_weights=False
    )
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    config = SpaceConfig(base_model=family_dirs[arch], adapter=str(tmp_path / "adapter"), device="cpu")
    models = Models(config)
    models.load()
    assert models.ready and models.names["family"] == FAMILIES[arch].label
    result = compare(models, _picture(64, 48), "How many circles?", seed=0, max_new_tokens=6, mask_ratio=0.6)
    for answer in result.answers.values():
        assert len(answer.kl) == len(answer.token_ids) > 0
    assert result.masked_image.size == result.image.size and result.models["family"] == FAMILIES[arch].label
    with pytest.raises(ValueError, match="min_pixels/max_pixels"):
        Models(
            SpaceConfig(
                base_model=family_dirs[arch], adapter=str(tmp_path / "adapter"), device="cpu", min_pixels=3136
            )
        ).load()


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_left_padded_batch_matches_single_prompt_generation(arch, family_dirs):
    """Every family (Qwen included): batched greedy generation (left padding, images of different sizes nested
    per prompt) gives what each prompt gives alone."""
    from papo.generation import generate
    from papo.modeling import load_vlm

    model, processor = load_vlm(family_dirs[arch])
    images = [[_picture(64, 48, 5)], [_picture(40, 80, 6)]]
    prompts = [_prompt("Short?"), _prompt("This prompt is quite a lot longer than the first one, is it not?")]
    kwargs = dict(max_new_tokens=8, do_sample=False, show_progress=False)
    batched = generate(model, processor, prompts, images, batch_size=2, **kwargs)
    single = [
        generate(model, processor, [p], [i], batch_size=1, **kwargs)[0]
        for p, i in zip(prompts, images, strict=True)
    ]
    assert batched == single
