"""The example gallery: the embedded pair's digit questions and three drawn figures, made on first use,
or the examples a pushed Space ships (`make_examples`); the figures alone (`figure_examples`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from space_config import SPACE_DIR
from space_uploads import IMAGE_PLACEHOLDER

# --- examples ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    image: str  # path of a PNG
    question: str
    reference: str
    source: str  # "bundled" | "synthetic:<task>"


BUNDLED = (
    ("bar-chart.png", "Which month had the highest sales? Answer with the month's abbreviation.", "Mar"),
    ("clock.png", "What time does the clock show? Answer in the form H:MM.", "2:45"),
    ("triangle.png", "The two legs of the right triangle are labelled. How long is the hypotenuse?", "10"),
)


SHIPPED_EXAMPLES = SPACE_DIR / "examples" / "examples.json"  # written by `papo push space`


def make_examples(
    directory: Path, num_synthetic: int = 5, shipped: Path | None = SHIPPED_EXAMPLES
) -> list[Example]:
    """The example gallery.

    A Space deployed with a real adapter by `papo push space` ships its own (`shipped`, a manifest
    ``{"examples": [{"image", "question", "reference", "source"}]}`` next to its images): eval questions on
    which the two models differ most, or the drawn figures. Otherwise the embedded pair's: first the digit
    questions on which the embedded baseline and PAPO models answer differently with the default settings
    (`papo.embedded.shipped_space_examples`, picked when the assets were exported), then one question per
    digit task from the test split (held-out scans), then the drawn figures. These images are regenerated
    by code (deterministic) into `directory` on first use, so the repository holds no binaries.
    """
    if shipped is not None and Path(shipped).is_file():
        manifest = json.loads(Path(shipped).read_text())
        return [
            Example(str(Path(shipped).parent / item["image"]), item["question"], str(item["reference"]),
                    item.get("source", "shipped"))
            for item in manifest["examples"]
        ]  # fmt: skip
    from papo import embedded
    from papo.data.synthetic import synthetic_row

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [(item["seed"], item["index"]) for item in embedded.shipped_space_examples()]
    rows += [(0, index) for index in range(num_synthetic) if (0, index) not in rows]
    examples = []
    for seed, index in rows:
        row = synthetic_row(index, "test", seed)
        path = directory / f"digits-{seed}-{row['id']}.png"
        if not path.exists():
            _save_png(row["images"][0], path)
        question = row["problem"].replace(IMAGE_PLACEHOLDER, "").strip()
        examples.append(Example(str(path), question, str(row["answer"]), f"synthetic:{row['task']}"))
    return examples + figure_examples(directory)


def figure_examples(directory: Path) -> list[Example]:
    """Three drawn "real-looking" figures (a bar chart, a clock, a right triangle): a neutral set for any
    model, drawn into `directory` on first use."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    drawers = {"bar-chart.png": _draw_bar_chart, "clock.png": _draw_clock, "triangle.png": _draw_triangle}
    examples = []
    for name, question, reference in BUNDLED:
        path = directory / name
        if not path.exists():
            _save_png(drawers[name](), path)
        examples.append(Example(str(path), question, reference, "bundled"))
    return examples


def _save_png(image: Image.Image, path: Path) -> None:
    from papo.files import write_file_atomically

    write_file_atomically(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def _figure_to_image(fig) -> Image.Image:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def _draw_bar_chart() -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months, sales = ["Jan", "Feb", "Mar", "Apr", "May"], [42, 35, 58, 47, 51]
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.bar(range(len(months)), sales, color="#4c72b0")
    ax.set_xticks(range(len(months)), months)
    ax.set_title("Monthly sales (units)")
    ax.set_ylabel("Units sold")
    ax.set_ylim(0, 65)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _figure_to_image(fig)


def _draw_clock() -> Image.Image:
    from PIL import ImageDraw

    size, centre = 256, 128
    image = Image.new("RGB", (size, size), (250, 248, 240))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, size - 8, size - 8), fill="white", outline=(40, 40, 40), width=6)
    for tick in range(60):
        angle = math.radians(tick * 6 - 90)
        inner = 100 if tick % 5 == 0 else 108
        draw.line(
            (centre + inner * math.cos(angle), centre + inner * math.sin(angle),
             centre + 114 * math.cos(angle), centre + 114 * math.sin(angle)),
            fill=(40, 40, 40), width=3 if tick % 5 == 0 else 1,
        )  # fmt: skip
    from PIL import ImageFont

    font = ImageFont.load_default(size=22)
    for hour in range(1, 13):
        angle = math.radians(hour * 30 - 90)
        draw.text((centre + 84 * math.cos(angle), centre + 84 * math.sin(angle)), str(hour), fill="black",
                  font=font, anchor="mm")  # fmt: skip
    for minutes_angle, length, width in ((2 * 30 + 45 * 0.5, 55, 8), (45 * 6, 90, 4)):  # 2:45
        angle = math.radians(minutes_angle - 90)
        draw.line((centre, centre, centre + length * math.cos(angle), centre + length * math.sin(angle)),
                  fill=(20, 20, 20), width=width)  # fmt: skip
    draw.ellipse((centre - 6, centre - 6, centre + 6, centre + 6), fill=(180, 30, 30))
    return image


def _draw_triangle() -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    xs, ys = [0, 8, 0, 0], [0, 0, 6, 0]
    ax.fill(xs, ys, color="#dde8f5")
    ax.plot(xs, ys, color="#1f3b63", linewidth=2)
    ax.plot([0, 0.6, 0.6], [0.6, 0.6, 0], color="#1f3b63", linewidth=1)  # right-angle mark
    ax.text(4, -0.6, "8 cm", ha="center", va="top", fontsize=13)
    ax.text(-0.5, 3, "6 cm", ha="right", va="center", fontsize=13)
    ax.text(4.4, 3.4, "?", ha="center", va="center", fontsize=16, color="#b03030")
    ax.text(-0.3, -0.3, "A", ha="right", va="top")
    ax.text(8.2, -0.3, "B", ha="left", va="top")
    ax.text(-0.3, 6.2, "C", ha="right", va="bottom")
    ax.set_xlim(-2, 9.5)
    ax.set_ylim(-2, 7)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return _figure_to_image(fig)
