"""The upload checks (space/space_uploads.py): images, questions and settings, refused in plain words."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from space_uploads import DOWNSCALE_FLOOR, Settings, SpaceError, clean_question, load_image

# --- images ------------------------------------------------------------------------------------------


def _save(image: Image.Image, path: Path, **kwargs) -> str:
    image.save(path, **kwargs)
    return str(path)


def test_rgb_image_passes_unchanged(tmp_path):
    original = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    image, notes = load_image(_save(original, tmp_path / "x.png"), pixel_budget=16384)
    assert image.mode == "RGB" and notes == []
    assert np.array_equal(np.asarray(image), np.asarray(original))


def test_grayscale_rgba_palette_and_16_bit_images_become_rgb_with_a_note(tmp_path):
    gray = Image.new("L", (40, 40), 128)
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red -> white
    palette = Image.new("RGB", (40, 40), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    sixteen = Image.fromarray((np.arange(1600, dtype=np.uint16) * 40).reshape(40, 40))  # mode I;16
    cases = {
        "gray.png": (gray, "grayscale"),
        "rgba.png": (rgba, "transparency"),
        "p.png": (palette, "palette"),
    }
    cases["16.png"] = (sixteen, "16-bit")
    for name, (original, word) in cases.items():
        image, notes = load_image(_save(original, tmp_path / name), pixel_budget=16384)
        assert image.mode == "RGB" and image.size == (40, 40), name
        assert any(word in note for note in notes), (name, notes)
    rgba_image, _ = load_image(str(tmp_path / "rgba.png"))
    assert rgba_image.getpixel((0, 0)) == (255, 255, 255)


def test_huge_image_is_downscaled_at_once(tmp_path):
    path = _save(Image.new("RGB", (10000, 10000), (250, 250, 250)), tmp_path / "big.png", compress_level=1)
    image, notes = load_image(path, pixel_budget=16384)
    assert image.width * image.height <= DOWNSCALE_FLOOR and image.size[0] == image.size[1]
    assert "10000x10000" in notes[0] and "downscaled" in notes[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some text, not an image", "is not an image this app can read"),
        (None, "could not be decoded"),  # a truncated PNG
    ],
)
def test_unreadable_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "upload.png"
    if content is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
        content = buffer.getvalue()[:60]
    path.write_bytes(content)
    with pytest.raises(SpaceError, match=message):
        load_image(str(path))


def test_no_image_missing_file_and_extreme_aspect_ratio(tmp_path):
    with pytest.raises(SpaceError, match="No image"):
        load_image(None)
    with pytest.raises(SpaceError, match="could not be found"):
        load_image(str(tmp_path / "gone.png"))
    with pytest.raises(SpaceError, match="aspect ratio"):
        load_image(Image.new("RGB", (1000, 2)))


def test_exif_rotation_and_animation_first_frame(tmp_path):
    upright = Image.new("RGB", (30, 20), (255, 0, 0))
    exif = upright.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated, notes = load_image(_save(upright, tmp_path / "r.jpg", exif=exif))
    assert rotated.size == (20, 30) and any("EXIF" in n for n in notes)
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = _save(frames[0], tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    first, notes = load_image(path)
    assert first.getpixel((5, 5))[0] > 200 and any("first frame" in n for n in notes)


# --- questions and settings ---------------------------------------------------------------------------


def test_questions_are_checked():
    assert clean_question("  <image>How many?  ", 2000) == "How many?"
    with pytest.raises(SpaceError, match="question is empty"):
        clean_question("   ", 2000)
    with pytest.raises(SpaceError, match="20,000 characters long; the limit is 2,000"):
        clean_question("x" * 20_000, 2000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": 1.5}, "Seed must be a whole number"),
        ({"temperature": float("nan")}, "Temperature must be between"),
        ({"max_new_tokens": 0}, "Max new tokens must be between 1 and 64"),
        ({"mask_ratio": "lots"}, "Mask ratio must be a number"),
    ],
)
def test_settings_are_checked(kwargs, message):
    values = {"seed": 0, "temperature": 1.0, "max_new_tokens": 8, "mask_ratio": 0.6} | kwargs
    with pytest.raises(SpaceError, match=message):
        Settings.checked(**values, max_tokens_limit=64)
