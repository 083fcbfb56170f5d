"""Perception tasks on real handwritten digits: the data the embedded model learns to *see* with.

The images are scikit-learn's bundled copy of the test file of the UCI "Optical Recognition of
Handwritten Digits" set (`sklearn.datasets.load_digits`: 1,797 scans of 8x8 pixels, 17 grey levels,
written by 13 people; it ships inside the scikit-learn wheel, so nothing is downloaded; E. Alpaydin
and C. Kaynak, 1998, CC BY 4.0 per the UCI repository). Each digit is drawn at
28x28 px, dark ink on white: with Qwen2.5-VL's 14-px patches merged 2x2 that is exactly **one
visual token per digit**, small enough for a ~2.4M-parameter model to learn to read in minutes on
two CPU cores, and the official 14-px patch mask covers a digit with four squares.

Train and test never share a scan: scan ``i`` belongs to the test pool when ``i % 6 == 5`` (299
scans), to the train pool otherwise (1,498). The 13 writers appear in both pools (a writer-dependent
split: new scans, familiar handwriting). The "train",
"sft" (warm start) and any other split draw from the train pool; only the "test" split draws from
the test pool. Questions never contain the answer, and for the vision-dependent tasks they do not
depend on it either, so a policy that ignores the image is at chance.

Tasks (answer in brackets; the thought is what the warm start is taught to write before the box):

* ``digit_read`` (high): one digit, "Which digit is shown?" [``7``]; thought ``7``.
* ``digit_sum`` (high): two digits side by side, "What is the sum of the two digits?" [``11``];
  thought ``4+7``.
* ``digit_larger`` (high): two different digits, "Which is the larger digit?" [``7``]; thought ``4,7``.
* ``digit_count`` (high): four digits in a row, "How many of the digits are N?" [``2``]; thought
  ``3 1 3 8``.
* ``digit_sum_text`` (low, the text-only control): two digits side by side and the question spells
  them out, "The image shows the digits 4 and 7. What is their sum?" [``11``]: the text suffices.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "DIGIT_SIZE",
    "DIGIT_TASKS",
    "DIGIT_VISION_DEPENDENCY",
    "digit_pool",
    "digit_image",
    "digits_strip",
    "digit_thought",
]

DIGIT_SIZE = 28  # px per digit: one Qwen2.5-VL visual token (14-px patches, 2x2 merge)
TEST_EVERY = 6  # scan i is held out for testing when i % TEST_EVERY == TEST_EVERY - 1
COUNT_DIGITS = 4  # digits in a digit_count row


@lru_cache(maxsize=1)
def _scans() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scans as ``(N, 8, 8)`` uint8 in 0..16 and their ``(N,)`` labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError(
            "the digit tasks need scikit-learn (it ships the handwritten digits): pip install scikit-learn"
        ) from err
    digits = load_digits()
    return digits.images.astype(np.uint8), digits.target.astype(np.int64)


@lru_cache(maxsize=2)
def digit_pool(split: str) -> dict[int, tuple[int, ...]]:
    """Scan indices by digit for `split`: the test pool for "test", the train pool for anything else."""
    _, labels = _scans()
    held_out = split == "test"
    pool: dict[int, list[int]] = {d: [] for d in range(10)}
    for index, label in enumerate(labels):
        if (index % TEST_EVERY == TEST_EVERY - 1) == held_out:
            pool[int(label)].append(index)
    return {d: tuple(indices) for d, indices in pool.items()}


def digit_image(scan_index: int, size: int = DIGIT_SIZE) -> Image.Image:
    """Scan `scan_index` as an RGB image, `size` x `size` px, dark ink (16) on white (0), bilinear."""
    scans, _ = _scans()
    grey = (255 - scans[scan_index].astype(np.float64) * (255 / 16)).round().astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def digits_strip(scan_indices: list[int]) -> Image.Image:
    """The scans side by side, left to right: a ``28 * n`` x 28 px RGB image (one visual token each)."""
    strip = Image.new("RGB", (DIGIT_SIZE * len(scan_indices), DIGIT_SIZE), (255, 255, 255))
    for position, index in enumerate(scan_indices):
        strip.paste(digit_image(index), (position * DIGIT_SIZE, 0))
    return strip


def _draw_digits(rng: random.Random, split: str, values: list[int]) -> tuple[Image.Image, list[int]]:
    pool = digit_pool(split)
    scans = [rng.choice(pool[value]) for value in values]
    return digits_strip(scans), scans


# ------------------------------------------------------------------------------------------------ tasks
# Each returns a papo.data.synthetic.TaskSample: (image, question, answer, truth). `truth["digits"]` is
# what the image shows, left to right; `truth["scans"]` the scan indices drawn.


def _sample(image: Image.Image, question: str, answer: Any, digits: list[int], scans: list[int], **extra):
    from papo.data.synthetic import TaskSample

    return TaskSample(image, question, str(answer), {"digits": digits, "scans": scans, **extra})


def digit_read(rng: random.Random, split: str):
    """One digit; ask which."""
    value = rng.randrange(10)
    image, scans = _draw_digits(rng, split, [value])
    question = rng.choice(
        (
            "Which digit is shown in the image?",
            "What digit is written in the image? Answer with the digit.",
        )
    )
    return _sample(image, question, value, [value], scans)


def digit_sum(rng: random.Random, split: str):
    """Two digits; ask for their sum (0..18)."""
    values = [rng.randrange(10), rng.randrange(10)]
    image, scans = _draw_digits(rng, split, values)
    question = rng.choice(
        (
            "What is the sum of the two digits in the image?",
            "Add the two digits shown in the image. What is the result?",
        )
    )
    return _sample(image, question, sum(values), values, scans)


def digit_larger(rng: random.Random, split: str):
    """Two different digits; ask for the larger one."""
    values = rng.sample(range(10), 2)
    image, scans = _draw_digits(rng, split, values)
    question = rng.choice(
        (
            "Which of the two digits in the image is larger? Answer with the digit.",
            "The image shows two digits. What is the larger one?",
        )
    )
    return _sample(image, question, max(values), values, scans)


def digit_count(rng: random.Random, split: str):
    """Four digits; ask how many equal a target N (0..4 of them, uniformly)."""
    target = rng.randrange(10)
    hits = rng.randint(0, COUNT_DIGITS)
    others = [d for d in range(10) if d != target]
    values = [target] * hits + [rng.choice(others) for _ in range(COUNT_DIGITS - hits)]
    rng.shuffle(values)
    image, scans = _draw_digits(rng, split, values)
    question = rng.choice(
        (
            f"How many of the digits in the image are {target}?",
            f"Count the digits equal to {target} in the image. Answer with a number.",
        )
    )
    return _sample(image, question, hits, values, scans, target=target)


def digit_sum_text(rng: random.Random, split: str):
    """Control: the same two-digit image, but the question spells the digits out (text suffices)."""
    values = [rng.randrange(10), rng.randrange(10)]
    image, scans = _draw_digits(rng, split, values)
    question = f"The image shows the digits {values[0]} and {values[1]}. What is their sum?"
    return _sample(image, question, sum(values), values, scans)


# Fixed order: round-robin assignment of rows to tasks depends on it.
DIGIT_TASKS: dict[str, Callable[[random.Random, str], Any]] = {
    "digit_read": digit_read,
    "digit_sum": digit_sum,
    "digit_larger": digit_larger,
    "digit_count": digit_count,
    "digit_sum_text": digit_sum_text,
}

DIGIT_VISION_DEPENDENCY: dict[str, str] = {
    "digit_read": "high",
    "digit_sum": "high",
    "digit_larger": "high",
    "digit_count": "high",
    "digit_sum_text": "low",
}


def digit_thought(task: str, truth: dict[str, Any]) -> str:
    """The short thought the warm start writes before its answer: what the image shows, tersely.

    Naming the digits first gives the answer tokens something image-dependent to condition on (with
    the answer alone a model this small learns the sum far worse: 60 % vs 92 % in our trials).
    """
    digits = truth["digits"]
    if task == "digit_read":
        return str(digits[0])
    if task in ("digit_sum", "digit_sum_text"):
        return f"{digits[0]}+{digits[1]}"
    if task == "digit_larger":
        return f"{digits[0]},{digits[1]}"
    if task == "digit_count":
        return " ".join(str(d) for d in digits)
    raise ValueError(f"not a digit task: {task!r}")
