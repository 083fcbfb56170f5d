"""The warm start (papo.warm_start): targets in the official format, seeded SFT, atomic saves."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from papo.data.synthetic import TASKS
from papo.rewards import papo_score
from papo.tiny import TinyVLMSpec
from papo.warm_start import WarmStartConfig, build_sft_dataset, describe, sft_completion, train_warm_start

SMALL = TinyVLMSpec()  # the 224k-parameter test model: the mechanics, not the quality
FEW_STEPS = WarmStartConfig(num_train=24, max_steps=3, batch_size=4)


@pytest.mark.parametrize("task", list(TASKS))
def test_targets_get_the_full_official_reward_and_state_what_is_seen(task):
    from papo.data.synthetic import _row_rng

    sample = TASKS[task](_row_rng(0, "sft", 0), 64)
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


def test_sft_rows_are_conversational_prompt_completion_with_images():
    sft = build_sft_dataset(10, seed=1)
    assert set(sft.column_names) == {"prompt", "completion", "images", "task"}
    assert sft["task"][:5] == list(TASKS)  # round-robin over the tasks
    first = sft[0]
    assert first["prompt"][0]["role"] == "user" and first["prompt"][0]["content"][0]["type"] == "image"
    assert first["completion"][0]["role"] == "assistant"
    assert first["completion"][0]["content"][0]["text"].startswith("<think>")
    assert first["images"][0].size == (64, 64)
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
    moved = [k for k in initial if not torch.allclose(trained[k], initial[k], atol=1e-3)]
    assert not any("visual" in k for k in moved), "the vision tower is frozen by default"
    assert any("language_model" in k for k in moved), "SFT did not move the language model"
    assert not list(tmp_path.glob(".*")), "temporary folders left behind"


def test_existing_checkpoint_is_kept_unless_overwrite(tmp_path):
    path = train_warm_start(tmp_path / "ws", FEW_STEPS, spec=SMALL)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert train_warm_start(path, FEW_STEPS, spec=SMALL) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
