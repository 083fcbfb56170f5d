"""Loading for training: QLoRA 4-bit on the tiny model (CPU), LoRA targets, pixel bounds."""

import re

import pytest
import torch
from PIL import Image

from papo.generation import generate
from papo.modeling import (
    four_bit_config,
    keep_4bit_weights_unpacked_on_cpu,
    load_model_for_training,
    lora_target_modules,
    set_pixel_bounds,
)
from papo.tiny import build_processor


def test_four_bit_config_is_qlora():
    config = four_bit_config()
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == (
        torch.float32 if not torch.cuda.is_available() else config.bnb_4bit_compute_dtype
    )
    assert "model.visual" in config.llm_int8_skip_modules and "lm_head" in config.llm_int8_skip_modules


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_4bit_quantises_the_language_model_only(arch, tiny_model_dirs):
    model, _ = load_model_for_training(tiny_model_dirs[arch], dtype="float32", load_in_4bit=True)
    four_bit = [name for name, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert four_bit and all("language_model" in name for name in four_bit)
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())
    assert keep_4bit_weights_unpacked_on_cpu(model) == 0  # already done by the loader


def test_qlora_train_eval_train(tmp_path, tiny_model_dirs):
    """bitsandbytes repacks 4-bit weights at the first eval-mode no-grad forward on AVX512-BF16 CPUs,
    after which training crashed; the loader prevents it. Train, generate (eval), train again."""
    from peft import LoraConfig

    from papo.data.loading import load_training_dataset
    from papo.data.synthetic import make_synthetic_dataset
    from papo.rewards import PAPO_REWARD_WEIGHTS, make_reward_funcs
    from papo.trainer import PAPOConfig, PAPOTrainer

    model, processor = load_model_for_training(
        tiny_model_dirs["qwen2_5_vl"], dtype="float32", load_in_4bit=True
    )
    data = load_training_dataset(
        make_synthetic_dataset(num_train=8, num_test=1)["train"], show_progress=False
    )[0]

    def run(steps):
        args = PAPOConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=8,
            max_steps=steps,
            learning_rate=1e-3,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            reward_weights=PAPO_REWARD_WEIGHTS,
            loss_type="bnpo",
        )
        trainer = PAPOTrainer(
            model=model,
            processing_class=processor,
            reward_funcs=make_reward_funcs(),
            args=args,
            train_dataset=data,
            peft_config=None
            if hasattr(model, "peft_config")
            else LoraConfig(r=4, target_modules=lora_target_modules()),
        )
        trainer.train()
        return trainer

    trainer = run(1)
    model = trainer.model
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    model.eval()
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]}]
    generate(
        model, processor, [prompt], [[Image.new("RGB", (64, 64))]], max_new_tokens=4, show_progress=False
    )
    model.train()
    run(2)
    assert any(not torch.equal(lora[n], p) for n, p in model.named_parameters() if "lora_" in n)


def test_lora_targets_language_model_only(tiny_model_dirs):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dirs["qwen2_5_vl"])
    names = [name for name, _ in model.named_modules()]
    language = [n for n in names if re.fullmatch(lora_target_modules(), n)]
    both = [n for n in names if re.fullmatch(lora_target_modules(include_vision=True), n)]
    assert language and all("language_model" in n for n in language)
    assert any("visual.blocks" in n for n in both) and set(language) < set(both)
    assert not any("merger" in n for n in both)


def test_pixel_bounds():
    processor = build_processor()
    set_pixel_bounds(processor, 56 * 56, 112 * 112)
    grid = processor.image_processor(images=[Image.new("RGB", (400, 400))], return_tensors="pt")[
        "image_grid_thw"
    ]
    assert int(grid.prod()) * 14 * 14 <= 112 * 112
    with pytest.raises(ValueError, match="min_pixels"):
        set_pixel_bounds(processor, 10_000, 100)


def test_bad_dtype_is_named(tiny_model_dirs):
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_model_for_training(tiny_model_dirs["qwen2_5_vl"], dtype="float8")


def test_missing_hub_id_offline_names_the_repo_and_hf_download():
    from papo.modeling import load_vlm

    with pytest.raises(ValueError, match=r"'nobody/missing-vlm'.*hf download nobody/missing-vlm"):
        load_vlm("nobody/missing-vlm")
    with pytest.raises(ValueError, match="hf download nobody/missing-vlm"):
        load_model_for_training("nobody/missing-vlm")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_vision_dtype_float32_keeps_the_vision_side_in_fp32_under_autocast(arch, tiny_model_dirs):
    from papo.data.loading import IMAGE_PLACEHOLDER, build_prompt
    from papo.modeling import load_model_and_adapter

    model, processor = load_model_and_adapter(tiny_model_dirs[arch], dtype="bfloat16", vision_dtype="float32")
    visual = model.model.visual
    assert all(p.dtype == torch.float32 for p in visual.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.model.language_model.parameters())
    seen = []
    inner = visual.blocks[0]  # runs inside the vision tower's forward
    inner.register_forward_hook(
        lambda m, args, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
    )
    text = processor.apply_chat_template(
        build_prompt(IMAGE_PLACEHOLDER + "What?"), add_generation_prompt=True
    )
    batch = processor(text=[text], images=[Image.new("RGB", (56, 56), (200, 10, 10))], return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        logits = model(**batch).logits
    assert seen == [(False, torch.float32)] and torch.isfinite(logits).all()  # outside autocast, in fp32
    plain, _ = load_model_and_adapter(tiny_model_dirs[arch], dtype="bfloat16")
    assert next(plain.model.visual.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="vision_dtype='float16'"):
        load_model_and_adapter(tiny_model_dirs[arch], vision_dtype="float16")
