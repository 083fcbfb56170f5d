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
