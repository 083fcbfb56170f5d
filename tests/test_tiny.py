"""Tiny random-weight VLMs of the real architectures: built offline, loaded by the Auto classes."""

import json
import os

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from papo.generation import generate, generate_completions, render_prompt
from papo.modeling import load_processor, load_vlm
from papo.tiny import ARCHITECTURES, QWEN_SPECIAL_TOKENS, build_tiny_vlm, build_tokenizer, save_tiny_vlm

MODEL_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
PROCESSOR_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}


def _prompt(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def test_offline_environment_is_set():
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_auto_classes_load_the_saved_tiny_model(arch, tiny_model_dirs):
    path = tiny_model_dirs[arch]
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == MODEL_CLASSES[arch]
    assert type(processor).__name__ == PROCESSOR_CLASSES[arch]
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    tokenizer = processor.tokenizer
    assert tokenizer.padding_side == "left"
    for token in QWEN_SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    config = json.load(open(os.path.join(path, "config.json")))
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config["vision_start_token_id"] == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.text_config.vocab_size == len(tokenizer)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chat_template_places_image_tokens(arch, tiny_model_dirs):
    processor = load_processor(tiny_model_dirs[arch])
    text = render_prompt(processor, _prompt("How many circles?"))
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many circles?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert ("You are a helpful assistant." in text) == (arch == "qwen2_5_vl")
    inputs = processor(text=[text], images=[Image.new("RGB", (64, 64))], return_tensors="pt")
    # transformers 5 Qwen models need the multimodal token types the processor returns
    assert "mm_token_type_ids" in inputs
    n_image_tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    merge = processor.image_processor.merge_size
    assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // merge**2 > 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_from_image_and_text_chat(arch, tiny_model_dirs):
    model, processor = load_vlm(tiny_model_dirs[arch])
    images = [[Image.new("RGB", (64, 64), (255, 0, 0))], [Image.new("RGB", (96, 48), (0, 0, 255))]]
    prompts = [_prompt("Hi?"), _prompt("A much longer question about this picture, please?")]
    out = generate(model, processor, prompts, images, max_new_tokens=6, seed=0, show_progress=False)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    again = generate(model, processor, prompts, images, max_new_tokens=6, seed=0, show_progress=False)
    assert out == again


def test_right_padding_is_refused(tiny_model_dirs):
    model, processor = load_vlm(tiny_model_dirs["qwen2_5_vl"])
    processor.tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match="pad on the left"):
        generate(model, processor, [_prompt("x")], [[Image.new("RGB", (64, 64))]], show_progress=False)


def test_load_processor_forces_left_padding(tmp_path, tiny_model_dirs):
    processor = AutoProcessor.from_pretrained(tiny_model_dirs["qwen2_5_vl"])
    processor.tokenizer.padding_side = "right"
    processor.save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).tokenizer.padding_side == "right"
    assert load_processor(tmp_path).tokenizer.padding_side == "left"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_backward_on_a_64px_image(arch):
    model, processor = build_tiny_vlm(arch)
    model.train()
    text = render_prompt(processor, _prompt("Count."))
    inputs = processor(text=[text], images=[Image.new("RGB", (64, 64))], return_tensors="pt")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.model.visual.parameters() if p.requires_grad)


def test_same_seed_same_weights_and_tokenizer():
    a, _ = build_tiny_vlm("qwen2_5_vl", seed=3)
    b, _ = build_tiny_vlm("qwen2_5_vl", seed=3)
    c, _ = build_tiny_vlm("qwen2_5_vl", seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(
        not torch.equal(pa, pc)
        for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )
    assert build_tokenizer().get_vocab() == build_tokenizer().get_vocab()


def test_building_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_vlm("qwen3_vl", seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_save_is_atomic_and_keeps_existing(tmp_path):
    target = tmp_path / "m"
    save_tiny_vlm(target)
    stamp = os.path.getmtime(target / "model.safetensors")
    save_tiny_vlm(target)  # an existing model is kept
    assert os.path.getmtime(target / "model.safetensors") == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dirs left behind
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileExistsError, match="holds no model"):
        save_tiny_vlm(tmp_path / "junk")


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="architecture='llava'.*qwen2_5_vl"):
        build_tiny_vlm("llava")


def test_generation_never_samples_image_placeholders():
    """A sampled <|image_pad|> would not match any image features and crash every later forward."""
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    prompts, images = [_prompt("Count.")], [[Image.new("RGB", (64, 64), (9, 9, 9))]]
    first = generate_completions(model, processor, prompts, images, max_new_tokens=1, do_sample=False)[0][1][
        0
    ]
    image_id = model.config.image_token_id
    with torch.no_grad():  # make <|image_pad|> the greedy choice: its logit becomes 50x the top one
        model.lm_head.weight[image_id] = 50 * model.lm_head.weight[first]
    inputs = processor(text=[render_prompt(processor, prompts[0])], images=images[0], return_tensors="pt")
    raw = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert image_id in raw.tolist()  # unguarded generation does emit it
    ids = generate_completions(model, processor, prompts, images, max_new_tokens=3, do_sample=False)[0][1]
    assert image_id not in ids
