"""Tests for the synthetic perception dataset (the drawn task set here; the digit tasks: test_digits.py)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import Counter

import datasets
import numpy as np
import pytest

from papo.data.synthetic import (
    DIGIT_TASKS,
    FEATURES,
    SHAPE_COLOURS,
    SHAPE_KINDS,
    TASKS,
    VISION_DEPENDENCY,
    generate_example,
    make_synthetic_dataset,
    save_synthetic_dataset,
)

ALL_TASKS = list(TASKS)


@pytest.fixture(scope="module")
def small() -> datasets.DatasetDict:
    return make_synthetic_dataset(num_train=40, num_test=15, seed=0, tasks="drawn")


def _pixels(row: dict) -> list[np.ndarray]:
    return [np.asarray(image) for image in row["images"]]


def _same_rows(a: datasets.Dataset, b: datasets.Dataset) -> bool:
    """True when two splits have identical text columns and pixel-identical images."""
    text_columns = [c for c in FEATURES if c != "images"]
    if a.select_columns(text_columns).to_list() != b.select_columns(text_columns).to_list():
        return False
    return all(
        len(ra["images"]) == len(rb["images"])
        and all(np.array_equal(x, y) for x, y in zip(_pixels(ra), _pixels(rb), strict=True))
        for ra, rb in zip(a, b, strict=True)
    )


def _components(mask: np.ndarray) -> int:
    """Number of 8-connected blobs of True pixels (a tiny flood fill: scipy is not a dependency)."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    count = 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        count += 1
        seen[y, x] = True
        stack = [(y, x)]
        while stack:
            cy, cx = stack.pop()
            for ny in range(max(0, cy - 1), min(height, cy + 2)):
                for nx in range(max(0, cx - 1), min(width, cx + 2)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return count


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` index ranges of consecutive True values."""
    runs, start = [], None
    for i, flag in enumerate([*flags.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


# --------------------------------------------------------------------------------------------- schema


def test_schema(small: datasets.DatasetDict) -> None:
    assert set(small) == {"train", "test"}
    assert (small["train"].num_rows, small["test"].num_rows) == (40, 15)
    for split, ds in small.items():
        assert ds.features == FEATURES
        assert list(ds.features) == ["id", "task", "problem", "answer", "images", "vision_dependency"]
        assert isinstance(ds.features["images"], datasets.List)
        assert isinstance(ds.features["images"].feature, datasets.Image)
        for name in ("id", "task", "problem", "answer", "vision_dependency"):
            assert ds.features[name] == datasets.Value("string")
        assert ds.cache_files == []  # built in memory: nothing in (or from) the HF cache
        assert len(set(ds["id"])) == ds.num_rows
        for row in ds:
            assert re.fullmatch(rf"{split}-\d{{6}}", row["id"])
            assert row["task"] in TASKS
            assert row["problem"].startswith("<image>")
            assert row["problem"].count("<image>") == len(row["images"]) == 1
            assert row["answer"].strip() == row["answer"] and row["answer"]
            assert row["vision_dependency"] == VISION_DEPENDENCY[row["task"]]
            image = row["images"][0]
            assert image.mode == "RGB" and image.size == (64, 64)


def test_answer_formats(small: datasets.DatasetDict) -> None:
    patterns = {
        "count_shapes": r"[1-6]",
        "read_number": r"\d{1,2}",
        "compare_bars": r"[ABCD]",
        "which_side": r"left|right",
        "text_arithmetic": r"\d{1,2}",
    }
    for row in small["train"]:
        assert re.fullmatch(patterns[row["task"]], row["answer"]), row


def test_vision_dependency_labels() -> None:
    assert set(VISION_DEPENDENCY) == set(TASKS) | set(DIGIT_TASKS)
    assert {t for t, v in VISION_DEPENDENCY.items() if v == "low"} == {"text_arithmetic", "digit_sum_text"}
    high = {t for t, v in VISION_DEPENDENCY.items() if v == "high"}
    assert high == (set(TASKS) | set(DIGIT_TASKS)) - {"text_arithmetic", "digit_sum_text"}


def test_every_task_in_near_equal_shares() -> None:
    ds = make_synthetic_dataset(num_train=23, num_test=7, seed=1, tasks="drawn")
    for split in ("train", "test"):
        counts = Counter(ds[split]["task"])
        assert set(counts) == set(TASKS)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_task_subset_and_order() -> None:
    ds = make_synthetic_dataset(num_train=6, num_test=2, tasks=["which_side", "text_arithmetic"])
    assert ds["train"]["task"] == ["which_side", "text_arithmetic"] * 3
    assert ds["train"]["vision_dependency"] == ["high", "low"] * 3
    single = make_synthetic_dataset(num_train=3, num_test=1, tasks="read_number")
    assert set(single["train"]["task"]) == {"read_number"}


def test_image_size_is_respected() -> None:
    ds = make_synthetic_dataset(num_train=5, num_test=1, image_size=96, tasks="drawn")
    assert {row["images"][0].size for row in ds["train"]} == {(96, 96)}


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_is_identical(small: datasets.DatasetDict) -> None:
    again = make_synthetic_dataset(num_train=40, num_test=15, seed=0, tasks="drawn")
    assert _same_rows(small["train"], again["train"])
    assert _same_rows(small["test"], again["test"])


def test_different_seed_differs(small: datasets.DatasetDict) -> None:
    other = make_synthetic_dataset(num_train=40, num_test=15, seed=1, tasks="drawn")
    assert small["train"]["answer"] != other["train"]["answer"]
    differing = sum(
        not np.array_equal(_pixels(a)[0], _pixels(b)[0])
        for a, b in zip(small["train"], other["train"], strict=True)
    )
    assert differing > 30


def test_train_and_test_differ(small: datasets.DatasetDict) -> None:
    train, test = small["train"].select(range(15)), small["test"]
    assert train["task"] == test["task"]  # same round-robin ...
    assert not _same_rows(train, test)  # ... but different content
    differing = sum(
        not np.array_equal(_pixels(a)[0], _pixels(b)[0]) for a, b in zip(train, test, strict=True)
    )
    assert differing > 10


def test_rows_do_not_depend_on_split_size(small: datasets.DatasetDict) -> None:
    short = make_synthetic_dataset(num_train=7, num_test=3, seed=0, tasks="drawn")
    assert _same_rows(short["train"], small["train"].select(range(7)))
    assert _same_rows(short["test"], small["test"].select(range(3)))


# Run verbatim both here and in a fresh interpreter, so both sides compute the fingerprint the same way.
_FINGERPRINT_CODE = """
import hashlib, json
import numpy as np
from papo.data.synthetic import FEATURES, make_synthetic_dataset

def fingerprint():
    ds = make_synthetic_dataset(num_train=10, num_test=5, seed=7, tasks="drawn")
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for row in ds[split]:
            digest.update(json.dumps([row[c] for c in FEATURES if c != "images"]).encode())
            for image in row["images"]:
                digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()
"""


@pytest.mark.slow
def test_deterministic_across_processes() -> None:
    """A fresh interpreter with another hash seed must draw the same data (no hash()/set-order leaks)."""
    namespace: dict = {}
    exec(_FINGERPRINT_CODE, namespace)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    code = _FINGERPRINT_CODE + "\nprint(fingerprint())\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip().splitlines()[-1] == namespace["fingerprint"]()


# ----------------------------------------------------------------------------------------- truthfulness


def _samples(task: str, n: int = 60, sizes: tuple[int, ...] = (32, 64, 100)):
    for size in sizes:
        for i in range(n):
            yield size, TASKS[task](random.Random(f"test/{task}/{size}/{i}"), size)


@pytest.mark.slow
def test_count_shapes_is_truthful() -> None:
    for size, sample in _samples("count_shapes"):
        truth = sample.truth
        shapes = truth["shapes"]
        assert 1 <= len(shapes) <= 6
        expected = sum(
            1 for s in shapes if truth["colour"] in (None, s["colour"]) and truth["kind"] in (None, s["kind"])
        )
        assert sample.answer == str(expected) and expected >= 1
        # The question names exactly the attributes that were counted.
        words = set(re.findall(r"[a-z]+", sample.question.lower()))
        assert (words & set(SHAPE_COLOURS)) == ({truth["colour"]} if truth["colour"] else set())
        assert (words & {k + "s" for k in SHAPE_KINDS}) == ({truth["kind"] + "s"} if truth["kind"] else set())
        # Pixel check: each colour's separate blobs match how many shapes of that colour were drawn.
        pixels = np.asarray(sample.image)
        assert sample.image.size == (size, size)
        for name, rgb in SHAPE_COLOURS.items():
            blobs = _components(np.all(pixels == rgb, axis=-1))
            assert blobs == sum(s["colour"] == name for s in shapes), (size, name, shapes)


def _bar_heights(pixels: np.ndarray) -> list[int]:
    """Heights of the bars, left to right, measured from coloured (non-grey) pixels only."""
    channels = pixels.astype(int)
    coloured = channels.max(axis=-1) - channels.min(axis=-1) > 60  # black labels and white bg are grey
    return [int(coloured[:, a:b].any(axis=1).sum()) for a, b in _runs(coloured.any(axis=0))]


def test_compare_bars_is_truthful() -> None:
    for size, sample in _samples("compare_bars"):
        bars = sample.truth["bars"]
        heights = _bar_heights(np.asarray(sample.image))
        assert heights == [b["height"] for b in bars], size
        assert len(set(heights)) == len(heights) and 2 <= len(heights) <= 4
        tallest = "tallest" in sample.question
        assert tallest == sample.truth["tallest"] and ("shortest" in sample.question) != tallest
        pick = int(np.argmax(heights) if tallest else np.argmin(heights))
        assert sample.answer == "ABCD"[pick]


def test_compare_bars_pixels_in_dataset(small: datasets.DatasetDict) -> None:
    """The stored (PNG round-tripped) images alone give the stored answer."""
    rows = [r for r in small["train"] if r["task"] == "compare_bars"]
    assert rows
    for row in rows:
        heights = _bar_heights(np.asarray(row["images"][0]))
        pick = np.argmax(heights) if "tallest" in row["problem"] else np.argmin(heights)
        assert row["answer"] == "ABCD"[int(pick)]


def _dots_per_half(pixels: np.ndarray) -> tuple[int, int]:
    dark = np.all(pixels < 100, axis=-1)  # dots are black; the light-grey midline is not dark
    half = pixels.shape[1] // 2
    assert not dark[:, half].any(), "no dot may straddle the midline"
    return _components(dark[:, :half]), _components(dark[:, half:])


def test_which_side_is_truthful() -> None:
    for size, sample in _samples("which_side"):
        left, right = sample.truth["left"], sample.truth["right"]
        assert left != right and 1 <= left <= 6 and 1 <= right <= 6
        assert sample.answer == ("left" if left > right else "right")
        assert _dots_per_half(np.asarray(sample.image)) == (left, right), size


def test_which_side_pixels_in_dataset(small: datasets.DatasetDict) -> None:
    rows = [r for r in small["train"] if r["task"] == "which_side"]
    assert rows
    for row in rows:
        left, right = _dots_per_half(np.asarray(row["images"][0]))
        assert row["answer"] == ("left" if left > right else "right")


def test_which_side_answers_are_balanced() -> None:
    answers = Counter(sample.answer for _, sample in _samples("which_side", n=100, sizes=(64,)))
    assert 30 <= answers["left"] <= 70


def test_read_number_is_truthful() -> None:
    for _, sample in _samples("read_number"):
        assert sample.answer == str(sample.truth["number"]) and 0 <= sample.truth["number"] <= 99
        assert sample.answer not in sample.question  # the number is only in the image
        assert (np.asarray(sample.image) < 128).any()  # something dark was actually written


def test_text_arithmetic_is_a_text_only_control() -> None:
    for _, sample in _samples("text_arithmetic"):
        match = re.search(r"(\d) ([+-]) (\d)", sample.question)
        assert match, sample.question  # the expression is in the text, so no image is needed
        a, op, b = int(match[1]), match[2], int(match[3])
        assert (a, op, b) == (sample.truth["a"], sample.truth["op"], sample.truth["b"])
        assert sample.answer == str(a + b if op == "+" else a - b) and int(sample.answer) >= 0


@pytest.mark.parametrize("task", ALL_TASKS)
def test_generate_example_row(task: str) -> None:
    row = generate_example(task, random.Random(3), image_size=48)
    assert set(row) == set(FEATURES) - {"id"}
    assert row["task"] == task and row["vision_dependency"] == VISION_DEPENDENCY[task]
    assert row["problem"].startswith("<image>") and row["problem"].count("<image>") == 1
    assert len(row["images"]) == 1 and row["images"][0].mode == "RGB" and row["images"][0].size == (48, 48)
    again = generate_example(task, random.Random(3), image_size=48)
    assert again["problem"] == row["problem"] and again["answer"] == row["answer"]
    assert np.array_equal(np.asarray(again["images"][0]), np.asarray(row["images"][0]))


def test_high_dependency_questions_do_not_leak_answers() -> None:
    """For "high" tasks the question text must not determine the answer: across many rows, each
    distinct question text co-occurs with several different answers."""
    ds = make_synthetic_dataset(num_train=400, num_test=1, seed=5, tasks=["read_number", "which_side"])
    answers_by_question: dict[str, set[str]] = {}
    for row in ds["train"]:
        answers_by_question.setdefault(row["problem"], set()).add(row["answer"])
    assert all(len(answers) > 1 for answers in answers_by_question.values())


# ------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_train": 0}, "num_train"),
        ({"num_train": 2.5}, "num_train"),
        ({"num_train": True}, "num_train"),
        ({"num_test": -1}, "num_test"),
        ({"image_size": 31}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"seed": "0"}, "seed"),
        ({"tasks": []}, "tasks"),
        ({"tasks": ["count_shapes", "count_shapes"]}, "tasks"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_synthetic_dataset(**{"num_train": 2, "num_test": 1, **kwargs})


def test_unknown_task_lists_valid_tasks() -> None:
    with pytest.raises(ValueError) as excinfo:
        make_synthetic_dataset(num_train=2, num_test=1, tasks=["count_shapes", "read_clock"])
    message = str(excinfo.value)
    assert "read_clock" in message and all(task in message for task in TASKS)
    with pytest.raises(ValueError, match="read_clock"):
        generate_example("read_clock", random.Random(0))


def test_generate_example_checks_image_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        generate_example("count_shapes", random.Random(0), image_size=16)


# ----------------------------------------------------------------------------------------------- saving


def test_save_round_trip(tmp_path) -> None:
    out = tmp_path / "synthetic"
    built = save_synthetic_dataset(out, num_train=10, num_test=5, seed=3, tasks="drawn")
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"train", "test"}
    for split in ("train", "test"):
        assert loaded[split].features == FEATURES
        assert _same_rows(loaded[split], built[split])
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temp dirs left behind


def test_save_replaces_a_previous_dataset(tmp_path) -> None:
    out = tmp_path / "synthetic"
    save_synthetic_dataset(out, num_train=4, num_test=2, seed=0, tasks="drawn")
    second = save_synthetic_dataset(out, num_train=6, num_test=3, seed=1, tasks="drawn")
    loaded = datasets.load_from_disk(str(out))
    assert loaded["train"].num_rows == 6 and _same_rows(loaded["train"], second["train"])
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]


def test_save_refuses_to_clobber_other_directories(tmp_path) -> None:
    out = tmp_path / "not-a-dataset"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        save_synthetic_dataset(out, num_train=2, num_test=1, tasks="drawn")
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dataset"]


def test_save_validates_before_writing(tmp_path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        save_synthetic_dataset(tmp_path / "x", image_size=8)
    assert list(tmp_path.iterdir()) == []
