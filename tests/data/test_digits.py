"""The handwritten-digit tasks: truthful answers, held-out scans, one visual token per digit."""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pytest

from papo.data.digits import (
    DIGIT_SIZE,
    DIGIT_TASKS,
    DIGIT_VISION_DEPENDENCY,
    _scans,
    digit_image,
    digit_pool,
    digit_thought,
)
from papo.data.synthetic import DEFAULT_TASKS, draw_task, make_synthetic_dataset


def test_pools_are_disjoint_and_cover_every_scan():
    train, test = digit_pool("train"), digit_pool("test")
    train_ids = {i for ids in train.values() for i in ids}
    test_ids = {i for ids in test.values() for i in ids}
    assert not train_ids & test_ids
    assert len(train_ids) + len(test_ids) == len(_scans()[1]) == 1797
    assert len(test_ids) == 299
    assert digit_pool("sft") == train  # the warm start only ever sees training scans
    _, labels = _scans()
    for pool in (train, test):
        assert set(pool) == set(range(10))
        for digit, ids in pool.items():
            assert len(ids) >= 25 and all(labels[i] == digit for i in ids)


def test_digit_image_is_dark_ink_on_white_at_28px():
    scans, _ = _scans()
    image = digit_image(0)
    assert image.mode == "RGB" and image.size == (DIGIT_SIZE, DIGIT_SIZE)
    pixels = np.asarray(image.convert("L"))
    assert pixels.max() == 255 and pixels.min() < 60  # white background, dark strokes
    # The ink sits where the scan has ink: downsample back to 8x8 and compare.
    small = np.asarray(image.convert("L").resize((8, 8)))
    assert np.corrcoef(255 - small.ravel(), scans[0].ravel())[0, 1] > 0.8


@pytest.mark.parametrize("task", list(DIGIT_TASKS))
def test_answers_are_truthful(task):
    _, labels = _scans()
    for i in range(60):
        split = "test" if i % 2 else "train"
        sample = draw_task(task, random.Random(f"t/{task}/{i}"), split=split)
        digits, scans = sample.truth["digits"], sample.truth["scans"]
        assert [int(labels[s]) for s in scans] == digits  # the image shows what truth says
        pool = {s for ids in digit_pool(split).values() for s in ids}
        assert set(scans) <= pool
        assert sample.image.size == (DIGIT_SIZE * len(digits), DIGIT_SIZE)
        if task == "digit_read":
            expected = digits[0]
        elif task == "digit_larger":
            expected = max(digits)
        elif task == "digit_count":
            expected = digits.count(sample.truth["target"])
        else:
            expected = sum(digits)
        assert sample.answer == str(expected)
        # Vision-dependent questions never give the digits away; the control spells them out.
        shown = re.findall(r"\d", sample.question)
        if task == "digit_sum_text":
            assert shown == [str(d) for d in digits]
        elif task == "digit_count":
            assert shown == [str(sample.truth["target"])]
        else:
            assert shown == []
        if task == "digit_larger":
            assert digits[0] != digits[1]


def test_count_answers_cover_zero_to_four():
    answers = Counter(draw_task("digit_count", random.Random(i)).answer for i in range(300))
    assert set(answers) == {"0", "1", "2", "3", "4"}


def test_thoughts_name_the_digits():
    truth = {"digits": [4, 7], "scans": [0, 1]}
    assert digit_thought("digit_sum", truth) == "4+7"
    assert digit_thought("digit_larger", truth) == "4,7"
    assert digit_thought("digit_read", {"digits": [3]}) == "3"
    assert digit_thought("digit_count", {"digits": [3, 1, 3, 8]}) == "3 1 3 8"
    with pytest.raises(ValueError, match="not a digit task"):
        digit_thought("count_shapes", truth)


def test_default_dataset_is_the_digit_tasks_with_a_held_out_test_split():
    assert DEFAULT_TASKS == tuple(DIGIT_TASKS)
    ds = make_synthetic_dataset(num_train=20, num_test=10, seed=0)
    assert ds["train"]["task"][:5] == list(DIGIT_TASKS)
    assert ds["train"]["vision_dependency"][:5] == [DIGIT_VISION_DEPENDENCY[t] for t in DIGIT_TASKS]
    both = make_synthetic_dataset(num_train=10, num_test=2, tasks=["digits", "drawn"])
    assert Counter(both["train"]["task"]) == Counter(
        {
            t: 1
            for t in (
                *DIGIT_TASKS,
                "count_shapes",
                "read_number",
                "compare_bars",
                "which_side",
                "text_arithmetic",
            )
        }
    )


def test_one_visual_token_per_digit():
    """With the warm start's processor bounds, a k-digit strip becomes exactly k merged visual tokens."""
    from papo.tiny import build_processor
    from papo.warm_start import WARM_START_SPEC

    processor = build_processor("qwen2_5_vl", WARM_START_SPEC)
    for task, k in (("digit_read", 1), ("digit_sum", 2), ("digit_count", 4)):
        image = draw_task(task, random.Random(0)).image
        grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert grid == [1, 2, 2 * k], task  # (t, h, w) in 14-px patches; 2x2 merge -> k tokens
