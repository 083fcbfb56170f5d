"""The user's request, checked: the uploaded image (`load_image`), the question (`clean_question`) and the
settings (`Settings`); each problem is a `SpaceError` worded for the user.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

IMAGE_PLACEHOLDER = "<image>"
# Images above this many times the processor's pixel budget are downscaled right after decoding (the
# processor would shrink them anyway); below it the raw image is masked exactly as in training.
DOWNSCALE_FACTOR = 4
DOWNSCALE_FLOOR = 1024 * 1024  # ... but never below this many pixels (tiny models have tiny budgets)
MAX_ASPECT_RATIO = 200  # Qwen's smart_resize refuses more extreme images


class SpaceError(ValueError):
    """A problem with the user's request, worded for the user (shown as is in the UI)."""


# --- input checks ------------------------------------------------------------------------------------

_MODE_NAMES = {
    "L": "grayscale (L)",
    "LA": "grayscale-with-alpha (LA)",
    "P": "palette (P)",
    "PA": "palette-with-alpha (PA)",
    "1": "black-and-white (1)",
    "RGBA": "RGBA",
    "I": "32-bit integer (I)",
    "I;16": "16-bit (I;16)",
    "F": "floating-point (F)",
    "CMYK": "CMYK",
}
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def load_image(value: Any, pixel_budget: int | None = None) -> tuple[Image.Image, list[str]]:
    """The user's image as an RGB `PIL.Image` the models and the masking both use, plus notes for the user.

    `value` is a file path (what the UI passes), a PIL image or None. Non-RGB modes are converted the way
    the processors do (transparency composited onto white; 16-bit and float images rescaled to 8 bits),
    EXIF rotation is applied, animations give their first frame. An image above DOWNSCALE_FACTOR times
    `pixel_budget` is shrunk right after decoding (JPEGs are even decoded at reduced size), so a huge upload
    is never held at full size for long; the processor then resizes it into its pixel bounds as usual.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SpaceError("No image: upload an image (or pick an example) before comparing.")
    notes: list[str] = []
    if isinstance(value, Image.Image):
        return _to_rgb(value, notes, pixel_budget), notes
    path = Path(str(value))
    name = path.name
    if not path.is_file():
        raise SpaceError(f"The image file {name!r} could not be found; upload it again.")
    try:
        with warnings.catch_warnings():
            # Between 89M and 179M pixels PIL only warns: such images are shrunk at once, below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _to_rgb(image, notes, pixel_budget), notes
    except Image.DecompressionBombError as err:
        raise SpaceError(
            f"The image {name!r} is too large to open safely ({err}). Use a smaller image."
        ) from None
    except UnidentifiedImageError:
        raise SpaceError(
            f"{name!r} is not an image this app can read: upload a PNG, JPEG, WebP, GIF, BMP or TIFF file."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt files
        raise SpaceError(f"The image {name!r} could not be decoded ({err}); is the file complete?") from None


def _to_rgb(image: Image.Image, notes: list[str], pixel_budget: int | None) -> Image.Image:
    width, height = image.size
    if min(width, height) < 1:
        raise SpaceError("The image is empty (0 pixels wide or high).")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise SpaceError(
            f"The image is {width}x{height}: its aspect ratio exceeds {MAX_ASPECT_RATIO}:1, which the model's "
            "processor cannot handle. Crop it first."
        )
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        notes.append("The image is animated: its first frame is used.")
    orientation = image.getexif().get(0x0112, 1)
    mode = image.mode
    cap = max(DOWNSCALE_FACTOR * pixel_budget, DOWNSCALE_FLOOR) if pixel_budget else None
    if cap and width * height > cap:
        scale = math.sqrt(cap / (width * height))
        target = (max(1, int(width * scale)), max(1, int(height * scale)))
        if image.format == "JPEG":
            image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 size: the full image is never in memory
        if image.mode in ("P", "PA", "1"):  # palettes would resize with nearest-neighbour
            has_alpha = "A" in image.mode or image.info.get("transparency") is not None
            image = image.convert("RGBA" if has_alpha else "RGB")
        elif image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = _eight_bit(image)
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
        notes.append(
            f"The image is {width}x{height} ({width * height:,} pixels): it was downscaled to "
            f"{target[0]}x{target[1]} right away; the model's processor resizes it within its pixel budget "
            f"({pixel_budget:,} pixels) as always."
        )
    else:
        image.load()
    if orientation in _EXIF_TRANSPOSE:
        image = image.transpose(_EXIF_TRANSPOSE[orientation])
        notes.append("The EXIF rotation was applied.")
    if mode != "RGB":
        image = _eight_bit(image)
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            notes.append(
                f"The {_MODE_NAMES.get(mode, mode)} image's transparency is shown on white, as the model's "
                "processor does."
            )
        else:
            notes.append(f"The {_MODE_NAMES.get(mode, mode)} image was converted to RGB for the models.")
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as err:
            raise SpaceError(
                f"The image's colour mode {mode!r} cannot be converted to RGB ({err})."
            ) from None
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float images rescaled to 8-bit grayscale; others unchanged."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return image
    import numpy as np

    array = np.asarray(image, dtype=np.float64)
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
    return Image.fromarray(np.nan_to_num(scaled).round().astype(np.uint8))  # mode L


def clean_question(question: Any, max_chars: int) -> str:
    """The question, trimmed; `<image>` placeholders dropped (the app places the image itself)."""
    if question is not None and not isinstance(question, str):
        raise SpaceError(f"The question must be text, got {type(question).__name__}.")
    text = (question or "").replace(IMAGE_PLACEHOLDER, " ").strip()
    if not text:
        raise SpaceError("The question is empty: type a question about the image.")
    if len(text) > max_chars:
        raise SpaceError(
            f"The question is {len(text):,} characters long; the limit is {max_chars:,}. Shorten it (the "
            "instruction to think and answer in \\boxed{} is added by the app)."
        )
    return text


def _number(value: Any, name: str, low: float, high: float, integer: bool = False) -> float | int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpaceError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise SpaceError(f"{name} must be between {low:g} and {high:g}, got {value!r}.")
    if integer:
        if number != int(number):
            raise SpaceError(f"{name} must be a whole number, got {value!r}.")
        return int(number)
    return number


@dataclass(frozen=True)
class Settings:
    """Generation and masking settings shared by both answers."""

    seed: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 256
    mask_ratio: float = 0.6
    mask_draw: int = 0  # "new mask" increments it: the mask seed is seed + mask_draw

    @property
    def mask_seed(self) -> int:
        return self.seed + self.mask_draw

    @classmethod
    def checked(cls, seed, temperature, max_new_tokens, mask_ratio, mask_draw=0, *, max_tokens_limit: int):
        return cls(
            seed=_number(seed, "Seed", 0, 2**31 - 1, integer=True),
            temperature=_number(temperature, "Temperature", 0.0, 2.0),
            max_new_tokens=_number(max_new_tokens, "Max new tokens", 1, max_tokens_limit, integer=True),
            mask_ratio=_number(mask_ratio, "Mask ratio", 0.0, 1.0),
            mask_draw=_number(mask_draw, "Mask draw", 0, 2**31 - 1, integer=True),
        )
