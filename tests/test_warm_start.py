"""The warm start (papo.warm_start): targets in the official format, seeded SFT, atomic saves."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from papo.data.synthetic import ALL_TASKS, DIGIT_TASKS, draw_task
from papo.rewards import papo_score
from papo.tiny import TinyVLMSpec
from papo.warm_start import WarmStartConfig, build_sft_dataset, describe, sft_completion, train_warm_start

SMALL = TinyVLMSpec()  # the 224k-parameter test model: the mechanics, not the quality
FEW_STEPS = WarmStartConfig(num_train=24, max_steps=3, batch_size=4)


@pytest.mark.parametrize("task", list(ALL_TASKS))
def test_targets_get_the_full_official_reward_and_state_what_is_seen(task):
    from papo.data.synthetic import _row_rng

    sample = draw_task(task, _row_rng(0, "sft", 0), 64, split="sft")
    target = sft_completion(task, sample.truth, sample.answer)
    assert papo_score(target, sample.answer)["overall"] == pytest.approx(1.0)
    wrong = target.replace(f"{{{sample.answer}}}", "{x}")
    assert papo_score(wrong, sample.answer)["overall"] == pytest.approx(0.1)
    assert describe(task, sample.truth, sample.answer) in target


def test_thoughts_describe_the_drawing():
    truth = {"left": 3, "right": 5, "dots": []}
    assert describe("which_side", truth, "right") == "Left 3 dots, right 5 dots."
    assert describe("read_number", {}, "47") == "The digits are 4 7."
    assert describe("text_arithmetic", {"a": 9, "b": 6, "op": "-"}, "3") == "9 - 6 = 3."
    assert describe("digit_sum", {"digits": [4, 7]}, "11") == "4+7"
    assert sft_completion("digit_sum", {"digits": [4, 7]}, "11") == "<think>4+7</think>\\boxed{11}"


def test_sft_rows_are_conversational_prompt_completion_with_images():
    sft = build_sft_dataset(10, seed=1)
    assert set(sft.column_names) == {"prompt", "completion", "images", "task"}
    assert sft["task"][:5] == list(DIGIT_TASKS)  # round-robin over the (default) digit tasks
    first = sft[0]
    assert first["prompt"][0]["role"] == "user" and first["prompt"][0]["content"][0]["type"] == "image"
    assert first["completion"][0]["role"] == "assistant"
    assert first["completion"][0]["content"][0]["text"].startswith("<think>")
    assert first["images"][0].size == (28, 28)  # digit_read: one 28-px digit
    again = build_sft_dataset(10, seed=1)
    assert again["completion"] == sft["completion"]
    assert build_sft_dataset(10, seed=2)["completion"] != sft["completion"]


def test_task_weights_repeat_a_task_within_each_round_robin_turn():
    weighted = build_sft_dataset(14, seed=1, task_weights={"digit_sum": 2, "digit_count": 3})
    turn = [
        "digit_read",
        "digit_sum",
        "digit_sum",
        "digit_larger",
        "digit_count",
        "digit_count",
        "digit_count",
    ]
    assert [t for t in DIGIT_TASKS if t not in turn] == ["digit_sum_text"]
    assert weighted["task"][:8] == turn + ["digit_sum_text"]
    assert weighted["completion"][1] != weighted["completion"][2]  # two different sum rows, not a copy
    # the shipped default: sum and count at twice the share of the others
    assert WarmStartConfig().task_weights == {"digit_sum": 2, "digit_count": 2}
    with pytest.raises(ValueError, match="task_weights names 'digit_sums'"):
        build_sft_dataset(4, seed=1, task_weights={"digit_sums": 2})
    with pytest.raises(ValueError, match=r"task_weights\['digit_sum'\] must be an integer >= 1"):
        build_sft_dataset(4, seed=1, task_weights={"digit_sum": 0})
    # a weight for a task that is not selected is unused (the default weights with the drawn tasks)
    drawn = build_sft_dataset(4, seed=1, tasks=("drawn",), task_weights={"digit_sum": 2})
    assert "digit_sum" not in drawn["task"]


def test_training_is_seeded_and_changes_the_weights(tmp_path):
    from papo.tiny import build_tiny_vlm

    first = train_warm_start(tmp_path / "a", FEW_STEPS, spec=SMALL)
    second = train_warm_start(tmp_path / "b", FEW_STEPS, spec=SMALL)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from transformers import AutoModelForImageTextToText

    initial = build_tiny_vlm(seed=FEW_STEPS.model_seed, spec=SMALL)[0].state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(first).state_dict()
    assert trained.keys() == initial.keys()
    # The vision side learns at vision_lr_scale (0.1) x the language model's rate: Adam's first steps move
    # each weight by about lr, so its largest change is ~10x smaller, but not zero.
    change = {k: (trained[k].float() - initial[k].float()).abs().max().item() for k in initial}
    vision = max(v for k, v in change.items() if "visual" in k)
    language = max(v for k, v in change.items() if "language_model" in k)
    assert 0 < vision < 0.3 * language, (vision, language)
    assert not list(tmp_path.glob(".*")), "temporary folders left behind"


def test_existing_checkpoint_is_kept_unless_overwrite(tmp_path):
    path = train_warm_start(tmp_path / "ws", FEW_STEPS, spec=SMALL)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert train_warm_start(path, FEW_STEPS, spec=SMALL) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_vision_learning_rate_groups():
    from papo.tiny import build_tiny_vlm
    from papo.warm_start import _optimizer

    model = build_tiny_vlm(spec=SMALL)[0]
    groups = _optimizer(model, WarmStartConfig(learning_rate=1e-3, vision_lr_scale=0.1)).param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4])
    visual = {id(p) for p in model.model.visual.parameters()}
    assert {id(p) for p in groups[1]["params"]} == visual
    assert not visual & {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    frozen = _optimizer(model, WarmStartConfig(vision_lr_scale=0.0)).param_groups
    assert len(frozen) == 1 and not any(p.requires_grad for p in model.model.visual.parameters())


def test_sft_batches_carry_the_images_and_label_only_the_completion(tmp_path):
    """The SFT pipeline feeds the pixels to the model and trains only on the answer (issue 13's check of why
    the first warm start stayed blind: it was not this plumbing)."""
    from trl import SFTConfig, SFTTrainer

    from papo.tiny import build_tiny_vlm
    from papo.warm_start import WARM_START_SPEC, _optimizer

    spec = TinyVLMSpec(min_pixels=WARM_START_SPEC.min_pixels)  # 28-px digits stay one visual token
    model, processor = build_tiny_vlm(spec=spec)
    rows = build_sft_dataset(4, seed=1)  # digit_read, digit_sum, digit_larger, digit_count
    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        completion_only_loss=True,
        max_length=None,
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        save_strategy="no",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=processor,
        optimizers=(_optimizer(model, WarmStartConfig()), None),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # One merged visual token per digit (rows come shuffled): 1, 2, 2 and 4 digits, 4 patches each.
    tokens = (batch["input_ids"] == image_pad).sum(dim=1).tolist()
    assert sorted(tokens) == [1, 2, 2, 4]
    assert (batch["image_grid_thw"].prod(dim=1) // 4).tolist() == tokens
    targets = [completion[0]["content"][0]["text"] for completion in rows["completion"]]
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        labelled = processor.tokenizer.decode(ids[labels != -100])
        assert any(labelled.startswith(target) for target in targets) and "<|im_end|>" in labelled, labelled
        assert "<|vision_start|>" not in labelled and "user" not in labelled
    pixels = batch["pixel_values"].clone().requires_grad_(True)
    model(**{**batch, "pixel_values": pixels}).loss.backward()
    assert pixels.grad.abs().sum() > 0, "the loss does not depend on the image"
