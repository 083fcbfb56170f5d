"""Deterministic synthetic perception data in the official PAPO training schema.

PAPO (Perception-Aware Policy Optimization) rewards a vision-language policy for *using* the image: its
implicit perception loss compares the policy on the real image with the policy on a masked copy. To test,
demo and reproduce that at small scale without downloading anything, this module draws tiny images with
PIL and pairs each one with a question whose answer can be checked exactly.

Every row follows the schema the PAPO training data uses::

    id                 "train-000042"
    task               "count_shapes"
    problem            "<image>How many red shapes are in the image?"   (one <image> per entry of images)
    answer             "3"                                              (short, verifiable)
    images             [PIL.Image (RGB)]                                (feature List(Image()))
    vision_dependency  "high" | "low"

For the "high" tasks the answer lives *only* in the image: the question text is drawn from a handful of
templates that do not depend on the answer, so a policy that ignores the image cannot beat chance. The
"low" task (``text_arithmetic``) is a control whose question spells out the expression that the image also
shows, so the text alone suffices; experiments can then split accuracy by ``vision_dependency`` and see
whether a perception-aware objective helps where perception is actually needed.

Everything is deterministic: each row has its own ``random.Random`` seeded from ``(seed, split, index)``,
so the same seed gives byte-identical images, train and test differ, and row ``i`` is the same whatever
the split size. Only PIL and the standard library's ``random`` are used to draw.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import datasets
from PIL import Image, ImageDraw, ImageFont

from papo.data.digits import DIGIT_TASKS, DIGIT_VISION_DEPENDENCY
from papo.data.loading import IMAGE_PLACEHOLDER

__all__ = [
    "FEATURES",
    "TASKS",
    "DIGIT_TASKS",
    "ALL_TASKS",
    "TASK_SETS",
    "DEFAULT_TASKS",
    "draw_task",
    "synthetic_row",
    "VISION_DEPENDENCY",
    "IMAGE_PLACEHOLDER",
    "MIN_IMAGE_SIZE",
    "TaskSample",
    "generate_example",
    "make_synthetic_dataset",
    "save_synthetic_dataset",
]

MIN_IMAGE_SIZE = 32  # below this the digits and bar labels stop being legible

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "task": datasets.Value("string"),
        "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "vision_dependency": datasets.Value("string"),
    }
)

WHITE = (255, 255, 255)
# Saturated, well-separated colours: easy to name, and exact RGB values let tests find them pixel by pixel.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 150, 40),
    "blue": (30, 70, 220),
}
SHAPE_KINDS = ("circle", "square", "triangle")
BAR_COLOURS = ((70, 110, 200), (200, 90, 40), (60, 150, 90), (130, 70, 170))
TEXT_COLOURS = ((0, 0, 0), (20, 20, 110), (110, 20, 20), (20, 80, 20))
DOT_COLOUR = (0, 0, 0)
MIDLINE_COLOUR = (200, 200, 200)  # light enough that a dark-pixel threshold never mistakes it for a dot
BAR_LABELS = "ABCD"


class TaskSample(NamedTuple):
    """What a task generator returns: the image, the question (without placeholder), the answer, and the
    ground-truth structure the image was drawn from, so tests can check the generator is truthful."""

    image: Image.Image
    question: str
    answer: str
    truth: dict[str, Any]


# --------------------------------------------------------------------------------------------- drawing


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's embedded Aileron font at ``size`` px (cached: decoding it costs more than drawing a row).

    ``load_default(size=...)`` needs FreeType; without it we fall back to the fixed bitmap font, which is
    smaller but still deterministic and offline.
    """
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _fit_font(
    draw: ImageDraw.ImageDraw, text: str, max_w: float, max_h: float
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest font whose rendering of ``text`` fits in ``max_w`` x ``max_h`` pixels."""
    size = max(6, int(max_h * 1.4))  # glyph ink is shorter than the nominal size, so start above max_h
    while size > 6:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=_font(size))
        if right - left <= max_w and bottom - top <= max_h:
            break
        size -= 1
    return _font(size)


def _draw_centered_text(
    draw: ImageDraw.ImageDraw,
    text: str,
    center: tuple[float, float],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    fill: tuple[int, int, int],
) -> None:
    """Draw ``text`` with its ink box (not its nominal line box) centred on ``center``."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = center[0] - (left + right) / 2
    y = center[1] - (top + bottom) / 2
    draw.text((round(x), round(y)), text, font=font, fill=fill)


def _blank(image_size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (image_size, image_size), WHITE)
    return image, ImageDraw.Draw(image)


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # pragma: no cover - guarded by SHAPE_KINDS
        raise ValueError(f"unknown shape kind {kind!r}")


def _cell_box(
    rng: random.Random, cell: tuple[int, int, int, int], diameter: int, pad: int = 1
) -> tuple[int, int, int, int]:
    """A ``diameter``-sized box placed at a random spot strictly inside ``cell``.

    Keeping every object inside its own grid cell (with ``pad`` px to spare) is the cheap way to guarantee
    no two objects touch, so each is one connected blob that a counter, human or test, can separate.
    """
    x0, y0, x1, y1 = cell
    max_x = max(x0 + pad, x1 - pad - diameter)
    max_y = max(y0 + pad, y1 - pad - diameter)
    x = rng.randint(x0 + pad, max_x)
    y = rng.randint(y0 + pad, max_y)
    return (x, y, x + diameter - 1, y + diameter - 1)


def _grid_cells(x0: int, y0: int, x1: int, y1: int, cols: int, rows: int) -> list[tuple[int, int, int, int]]:
    """Split the box ``[x0, x1) x [y0, y1)`` into ``cols * rows`` disjoint integer cells, row-major."""
    xs = [x0 + (x1 - x0) * i // cols for i in range(cols + 1)]
    ys = [y0 + (y1 - y0) * j // rows for j in range(rows + 1)]
    return [(xs[i], ys[j], xs[i + 1] - 1, ys[j + 1] - 1) for j in range(rows) for i in range(cols)]


# ---------------------------------------------------------------------------------------------- tasks


def count_shapes(rng: random.Random, image_size: int) -> TaskSample:
    """1-6 coloured circles/squares/triangles in a 3x3 grid; ask how many match a colour and/or kind.

    The asked-for attribute is taken from a shape that is present, so the answer is always >= 1 and "0"
    is never a free guess.
    """
    cells = _grid_cells(0, 0, image_size, image_size, 3, 3)
    n = rng.randint(1, 6)
    diameter = int(image_size / 3 * 0.7)
    shapes = []
    for cell in rng.sample(cells, n):
        colour = rng.choice(list(SHAPE_COLOURS))
        kind = rng.choice(SHAPE_KINDS)
        shapes.append({"kind": kind, "colour": colour, "box": _cell_box(rng, cell, diameter)})

    image, draw = _blank(image_size)
    for shape in shapes:
        _draw_shape(draw, shape["kind"], shape["box"], SHAPE_COLOURS[shape["colour"]])

    target = rng.choice(shapes)
    mode = rng.choice(("colour", "kind", "both"))
    colour = target["colour"] if mode in ("colour", "both") else None
    kind = target["kind"] if mode in ("kind", "both") else None
    answer = sum(
        1 for s in shapes if (colour is None or s["colour"] == colour) and (kind is None or s["kind"] == kind)
    )
    noun = f"{colour + ' ' if colour else ''}{kind + 's' if kind else 'shapes'}"
    template = rng.choice(
        (
            "How many {} are in the image?",
            "Count the {} in the image. Answer with a number.",
            "How many {} can you see?",
        )
    )
    truth = {"shapes": shapes, "colour": colour, "kind": kind}
    return TaskSample(image, template.format(noun), str(answer), truth)


def read_number(rng: random.Random, image_size: int) -> TaskSample:
    """An integer 0-99 written large in a dark colour, slightly off-centre; ask what it is."""
    number = rng.randint(0, 99)
    text = str(number)
    image, draw = _blank(image_size)
    # "0" and "00" must both look like big numbers, so fit the two-digit width: all digits share a width.
    font = _fit_font(draw, "00", image_size * 0.7, image_size * 0.55)
    jitter = image_size * 0.08
    center = (image_size / 2 + rng.uniform(-jitter, jitter), image_size / 2 + rng.uniform(-jitter, jitter))
    _draw_centered_text(draw, text, center, font, rng.choice(TEXT_COLOURS))
    question = rng.choice(
        (
            "What number is written in the image?",
            "Which number is shown in the image? Answer with the number only.",
            "Read the number in the image.",
        )
    )
    return TaskSample(image, question, text, {"number": number})


def compare_bars(rng: random.Random, image_size: int) -> TaskSample:
    """2-4 vertical bars labelled A-D with distinct heights; ask which is the tallest (or shortest)."""
    k = rng.randint(2, 4)
    margin = max(2, image_size // 16)
    label_band = max(10, round(image_size * 0.2))
    base = image_size - label_band  # bars stand on this row; labels sit below it
    area = base - margin
    # Heights come from a coarse grid of levels so any two bars differ by >= area/8 px: visibly, not by 1px.
    levels = 8
    chosen = rng.sample(range(2, levels + 1), k)
    heights = [round(area * level / levels) for level in chosen]

    image, draw = _blank(image_size)
    colour = rng.choice(BAR_COLOURS)
    slot = (image_size - 2 * margin) / k
    bar_w = max(3, round(slot * 0.6))
    font = _fit_font(draw, "D", slot * 0.9, label_band * 0.75)
    bars = []
    for i, height in enumerate(heights):
        cx = margin + slot * (i + 0.5)
        x0 = round(cx - bar_w / 2)
        box = (x0, base - height, x0 + bar_w - 1, base - 1)
        draw.rectangle(box, fill=colour)
        _draw_centered_text(draw, BAR_LABELS[i], (cx, base + label_band / 2), font, (0, 0, 0))
        bars.append({"label": BAR_LABELS[i], "height": height, "box": box})

    tallest = rng.random() < 0.75  # mostly the canonical question, sometimes its mirror image
    pick = max if tallest else min
    answer = pick(bars, key=lambda b: b["height"])["label"]
    word = "tallest" if tallest else "shortest"
    question = rng.choice(
        (
            f"Which bar is the {word}? Answer with its letter.",
            f"Look at the bar chart. Which bar is the {word}? Answer with a letter.",
        )
    )
    return TaskSample(image, question, answer, {"bars": bars, "colour": colour, "tallest": tallest})


def which_side(rng: random.Random, image_size: int) -> TaskSample:
    """Black dots in the left and right halves (1-6 each, never equal); ask which side has more."""
    left_n, right_n = rng.sample(range(1, 7), 2)
    half = image_size // 2
    gap = max(2, image_size // 16)  # keeps dots off the midline so each half is unambiguous
    margin = max(1, image_size // 32)
    diameter = max(4, round(image_size * 0.1))
    image, draw = _blank(image_size)
    for y in range(0, image_size, 4):  # dashed light-grey divider: marks the halves, not counted as a dot
        draw.line([(half, y), (half, y + 1)], fill=MIDLINE_COLOUR)

    dots: dict[str, list[tuple[int, int, int, int]]] = {}
    for side, n, (x0, x1) in (
        ("left", left_n, (margin, half - gap)),
        ("right", right_n, (half + gap + 1, image_size - margin)),
    ):
        cells = _grid_cells(x0, margin, x1, image_size - margin, 2, 3)
        dots[side] = [_cell_box(rng, cell, diameter) for cell in rng.sample(cells, n)]
        for box in dots[side]:
            draw.ellipse(box, fill=DOT_COLOUR)

    answer = "left" if left_n > right_n else "right"
    question = rng.choice(
        (
            "Which side of the image has more dots, left or right?",
            "Are there more dots on the left or on the right? Answer left or right.",
        )
    )
    return TaskSample(image, question, answer, {"left": left_n, "right": right_n, "dots": dots})


def text_arithmetic(rng: random.Random, image_size: int) -> TaskSample:
    """Control task: the image shows "a + b" / "a - b" and the question repeats it, so text suffices."""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    op = rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a  # keep answers non-negative, like the other tasks
    expression = f"{a} {op} {b}"
    value = a + b if op == "+" else a - b
    image, draw = _blank(image_size)
    font = _fit_font(draw, expression, image_size * 0.9, image_size * 0.4)
    _draw_centered_text(draw, expression, (image_size / 2, image_size / 2), font, rng.choice(TEXT_COLOURS))
    question = rng.choice(
        (
            f"What is {expression}?",
            f"Compute {expression}. Answer with a number.",
            f"The image shows {expression}. What is the result?",
        )
    )
    return TaskSample(image, question, str(value), {"a": a, "b": b, "op": op})


# Fixed order: round-robin assignment of rows to tasks depends on it.
TASKS: dict[str, Callable[[random.Random, int], TaskSample]] = {
    "count_shapes": count_shapes,
    "read_number": read_number,
    "compare_bars": compare_bars,
    "which_side": which_side,
    "text_arithmetic": text_arithmetic,
}

# The drawn tasks' vision dependency, then the digit tasks' (papo.data.digits): one table for all.
VISION_DEPENDENCY: dict[str, str] = {
    "count_shapes": "high",
    "read_number": "high",
    "compare_bars": "high",
    "which_side": "high",
    "text_arithmetic": "low",
    **DIGIT_VISION_DEPENDENCY,
}

# Named task sets. "digits" (real handwritten digits, one visual token each) is the default: it is what
# the embedded warm start learnt to read. "drawn" are the PIL-drawn shapes/bars/dots/number tasks.
TASK_SETS: dict[str, tuple[str, ...]] = {"digits": tuple(DIGIT_TASKS), "drawn": tuple(TASKS)}
DEFAULT_TASKS: tuple[str, ...] = TASK_SETS["digits"]
ALL_TASKS: tuple[str, ...] = (*DIGIT_TASKS, *TASKS)


# ------------------------------------------------------------------------------------------ validation


def _check_task(task: str) -> None:
    if task not in VISION_DEPENDENCY:
        raise ValueError(
            f"unknown synthetic task {task!r}; valid tasks are: {', '.join(ALL_TASKS)} "
            f"(task sets: {', '.join(TASK_SETS)})"
        )


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; True as a split size is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _resolve_tasks(tasks: Sequence[str] | str | None) -> list[str]:
    """Task names from a list of names and/or task-set names ("digits", "drawn"); default `DEFAULT_TASKS`."""
    if tasks is None:
        return list(DEFAULT_TASKS)
    if isinstance(tasks, str):  # a bare name would otherwise be iterated character by character
        tasks = [tasks]
    tasks = [name for entry in tasks for name in TASK_SETS.get(entry, (entry,))]
    if not tasks:
        raise ValueError(f"tasks must name at least one task; valid tasks are: {', '.join(ALL_TASKS)}")
    for task in tasks:
        _check_task(task)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must not repeat a task, got {tasks!r}")
    return tasks


# ------------------------------------------------------------------------------------------------ API


def draw_task(task: str, rng: random.Random, image_size: int = 64, split: str = "train") -> TaskSample:
    """One sample of `task` drawn with `rng`.

    Drawn tasks use `image_size` (square side, px); digit tasks draw each digit at 28 px from the scans of
    `split`'s pool ("test": the held-out scans; anything else: the training scans, see papo.data.digits).
    """
    _check_task(task)
    if task in DIGIT_TASKS:
        return DIGIT_TASKS[task](rng, split)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    return TASKS[task](rng, image_size)


def generate_example(
    task: str, rng: random.Random, image_size: int = 64, split: str = "train"
) -> dict[str, Any]:
    """One row of the PAPO schema (without ``id``) for ``task``, drawn with ``rng`` (see `draw_task`)."""
    sample = draw_task(task, rng, image_size, split)
    return {
        "task": task,
        "problem": IMAGE_PLACEHOLDER + sample.question,
        "answer": sample.answer,
        "images": [sample.image],
        "vision_dependency": VISION_DEPENDENCY[task],
    }


def _row_rng(seed: int, split: str, index: int) -> random.Random:
    # A str seed is hashed with SHA-512 by random.Random, so this is stable across processes and
    # PYTHONHASHSEED, and row i does not depend on how many rows come before or after it.
    return random.Random(f"papo-synthetic/{seed}/{split}/{index}")


def synthetic_row(
    index: int,
    split: str = "test",
    seed: int = 0,
    image_size: int = 64,
    tasks: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """Row `index` of `split` exactly as `make_synthetic_dataset(seed=seed, tasks=tasks, ...)` draws it
    (PIL images, with its ``id``), without building the split: rows depend only on (seed, split, index)."""
    task_list = _resolve_tasks(tasks)
    row = generate_example(task_list[index % len(task_list)], _row_rng(seed, split, index), image_size, split)
    return row | {"id": f"{split}-{index:06d}"}


def _png_bytes(image: Image.Image) -> dict[str, Any]:
    """Encode once, ourselves, so the stored bytes depend only on the pixels (no file name, no metadata)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _make_split(split: str, size: int, seed: int, image_size: int, tasks: list[str]) -> datasets.Dataset:
    columns: dict[str, list[Any]] = {name: [] for name in FEATURES}
    for index in range(size):
        # Round-robin over `tasks`: every split gets near-equal shares of each task.
        row = synthetic_row(index, split, seed, image_size, tasks)
        row["images"] = [_png_bytes(image) for image in row["images"]]
        for name in FEATURES:
            columns[name].append(row[name])
    # from_dict builds an in-memory Arrow table: nothing is written to (or read back from) the HF cache.
    return datasets.Dataset.from_dict(columns, features=FEATURES, split=split)


def make_synthetic_dataset(
    num_train: int = 1000,
    num_test: int = 200,
    seed: int = 0,
    image_size: int = 64,
    tasks: Sequence[str] | str | None = None,
) -> datasets.DatasetDict:
    """Build the synthetic perception dataset as a ``DatasetDict`` with "train" and "test" splits.

    Args:
        num_train: rows in the train split (>= 1).
        num_test: rows in the test split (>= 1).
        seed: base seed; each row's RNG is derived from ``(seed, split, index)``.
        image_size: side of the square RGB images of the drawn tasks, in pixels (>= 32); digit tasks
            draw each digit at 28 px.
        tasks: task names and/or task-set names ("digits", "drawn") to include, in round-robin order;
            default ``DEFAULT_TASKS`` (the digit tasks).
    """
    _check_int("num_train", num_train, 1)
    _check_int("num_test", num_test, 1)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    task_list = _resolve_tasks(tasks)
    return datasets.DatasetDict(
        {
            "train": _make_split("train", num_train, seed, image_size, task_list),
            "test": _make_split("test", num_test, seed, image_size, task_list),
        }
    )


def save_synthetic_dataset(output_dir: str | os.PathLike[str], **kwargs: Any) -> datasets.DatasetDict:
    """Build the dataset with ``make_synthetic_dataset(**kwargs)`` and ``save_to_disk`` it atomically.

    The dataset is written to a temporary directory next to ``output_dir`` and renamed into place, so a
    reader never sees a half-written dataset. An existing saved dataset at ``output_dir`` is replaced; any
    other non-empty directory is left alone and raises ``FileExistsError`` rather than being deleted.
    """
    dataset = make_synthetic_dataset(**kwargs)
    target = Path(output_dir)
    if target.exists() and not (
        (target / "dataset_dict.json").is_file() or (target.is_dir() and not any(target.iterdir()))
    ):
        raise FileExistsError(
            f"output_dir {str(target)!r} exists and is not a saved dataset; not replacing it"
        )
    from papo.files import write_dir_atomically

    # Replaced only once the new one is saved; on failure the previous dataset stays (papo.files).
    write_dir_atomically(target, lambda tmp: dataset.save_to_disk(str(tmp)))
    return dataset
