"""The Space's logic, without any UI: configuration, model loading, input checks and the comparison.

`app.py` is a thin Gradio layer over this module; every function here is testable on its own.

A comparison generates one answer with the baseline (the base model) and one with the PAPO model (the
base model with the PAPO adapter, or a separate PAPO model) from the same prompt, seed, temperature and
token budget, then scores every generated token with the perception KL of `papo.analysis`:
KL(π(·|q, I, o_<t) ‖ π(·|q, I_mask, o_<t)) over the full vocabulary, the masked image drawn exactly as in
training (`papo.masking`, seeded). Higher = that token depended more on seeing the image.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger("papo.space")

SPACE_DIR = Path(__file__).resolve().parent
IMAGE_PLACEHOLDER = "<image>"
SIDES = ("baseline", "papo")
LABELS = {"baseline": "Baseline", "papo": "PAPO"}
TOP_K = 5  # most image-dependent tokens listed per answer
# Images above this many times the processor's pixel budget are downscaled right after decoding (the
# processor would shrink them anyway); below it the raw image is masked exactly as in training.
DOWNSCALE_FACTOR = 4
DOWNSCALE_FLOOR = 1024 * 1024  # ... but never below this many pixels (tiny models have tiny budgets)
MAX_ASPECT_RATIO = 200  # Qwen's smart_resize refuses more extreme images
# The official training bounds (papo/configs/*-qwen2.5vl-3b-*.yaml): applied to any model but the tiny one.
OFFICIAL_MIN_PIXELS = 200_704  # 256 * 28 * 28
OFFICIAL_MAX_PIXELS = 1_003_520  # 1280 * 28 * 28
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class SpaceError(ValueError):
    """A problem with the user's request, worded for the user (shown as is in the UI)."""


# --- configuration -----------------------------------------------------------------------------------


def _env_str(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be an integer >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be an integer >= {minimum}")
    return value


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ValueError(f"{name}={env[name]!r} must be one of {TRUE_WORDS + FALSE_WORDS[:-1]}")


@dataclass(frozen=True)
class SpaceConfig:
    """What the Space runs, read from environment variables by `from_env` (all optional).

    With none set, the embedded defaults are used: the warm-started small Qwen2.5-VL (baseline) and the
    PAPO-G adapter trained from it, both shipped with the package (`papo.embedded`), offline.
    """

    base_model: str | None = None  # PAPO_BASE_MODEL: Hub id or path of the baseline model
    adapter: str | None = None  # PAPO_ADAPTER: the PAPO PEFT adapter (Hub id or path) on top of base_model
    papo_model: str | None = None  # PAPO_MODEL: a full (merged) PAPO model instead of an adapter
    device: str | None = None  # PAPO_DEVICE: "cuda", "cpu", "cuda:1", ...; default cuda if available
    dtype: str = "auto"  # PAPO_DTYPE: auto | bfloat16 | float16 | float32
    load_in_4bit: bool = False  # PAPO_LOAD_IN_4BIT: NF4 (bitsandbytes), vision tower and lm_head kept
    min_pixels: int | None = None  # PAPO_MIN_PIXELS; default: official 200,704 (the tiny model: its own)
    max_pixels: int | None = None  # PAPO_MAX_PIXELS; default: official 1,003,520 (the tiny model: its own)
    cache_dir: Path = SPACE_DIR / ".cache"  # PAPO_SPACE_CACHE: embedded models and example images
    default_max_new_tokens: int = 256  # PAPO_MAX_NEW_TOKENS: the slider's initial value
    max_new_tokens_limit: int = 1024  # PAPO_MAX_NEW_TOKENS_LIMIT: the slider's maximum
    max_question_chars: int = 2000  # PAPO_MAX_QUESTION_CHARS
    concurrency: int = 1  # PAPO_CONCURRENCY: requests running at once (they share one model)
    queue_size: int = 32  # PAPO_QUEUE_SIZE: requests waiting at most
    max_file_mb: int = 50  # PAPO_MAX_FILE_MB: largest upload
    gpu_duration: int = 120  # PAPO_GPU_DURATION: seconds of ZeroGPU time asked per request

    def __post_init__(self):
        from papo.modeling import DTYPES

        if self.adapter and self.papo_model:
            raise ValueError("set PAPO_ADAPTER or PAPO_MODEL, not both")
        if self.base_model and not (self.adapter or self.papo_model):
            raise ValueError(
                "PAPO_BASE_MODEL is set but no PAPO model: also set PAPO_ADAPTER (a PEFT adapter trained "
                "on that base) or PAPO_MODEL (a full PAPO model)"
            )
        if self.papo_model and not self.base_model:
            raise ValueError("PAPO_MODEL is set: also set PAPO_BASE_MODEL (the baseline to compare with)")
        if self.dtype not in DTYPES:
            raise ValueError(f"PAPO_DTYPE={self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"PAPO_MAX_NEW_TOKENS ({self.default_max_new_tokens}) exceeds PAPO_MAX_NEW_TOKENS_LIMIT "
                f"({self.max_new_tokens_limit})"
            )

    @property
    def embedded(self) -> bool:
        """No models configured: the shipped warm start (baseline) and PAPO-G adapter."""
        return not (self.base_model or self.adapter or self.papo_model)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpaceConfig:
        env = os.environ if env is None else env
        cache = _env_str(env, "PAPO_SPACE_CACHE")
        return cls(
            base_model=_env_str(env, "PAPO_BASE_MODEL"),
            adapter=_env_str(env, "PAPO_ADAPTER"),
            papo_model=_env_str(env, "PAPO_MODEL"),
            device=_env_str(env, "PAPO_DEVICE"),
            dtype=_env_str(env, "PAPO_DTYPE") or "auto",
            load_in_4bit=_env_bool(env, "PAPO_LOAD_IN_4BIT"),
            min_pixels=_env_int(env, "PAPO_MIN_PIXELS", 0) or None,
            max_pixels=_env_int(env, "PAPO_MAX_PIXELS", 0) or None,
            cache_dir=Path(cache).expanduser() if cache else SPACE_DIR / ".cache",
            default_max_new_tokens=_env_int(env, "PAPO_MAX_NEW_TOKENS", 256),
            max_new_tokens_limit=_env_int(env, "PAPO_MAX_NEW_TOKENS_LIMIT", 1024),
            max_question_chars=_env_int(env, "PAPO_MAX_QUESTION_CHARS", 2000),
            concurrency=_env_int(env, "PAPO_CONCURRENCY", 1),
            queue_size=_env_int(env, "PAPO_QUEUE_SIZE", 32),
            max_file_mb=_env_int(env, "PAPO_MAX_FILE_MB", 50),
            gpu_duration=_env_int(env, "PAPO_GPU_DURATION", 120),
        )


# --- papo-hub shipped as a wheel (a Space built by `papo push space`) ----------------------------------


def use_shipped_wheel(space_dir: Path = SPACE_DIR, env: Mapping[str, str] | None = None) -> Path | None:
    """Import papo from the papo-hub wheel shipped next to the app, if there is one; returns where it is.

    `papo push space` ships papo-hub as ``papo_hub-<version>-py3-none-any.whl`` in the Space repo: the Space
    runs the code that built it, with no git URL and before papo-hub is on PyPI. Its dependencies are in
    ``requirements.txt``; the wheel itself is not, because a Space's build may install ``requirements.txt``
    before the rest of the repo is in place, where a relative path to the wheel would not resolve. A
    pure-Python wheel is a zip of the installed files: it is extracted once (keyed by its hash, into the
    cache folder, ``PAPO_SPACE_CACHE``) and put first on ``sys.path``. The ``space/`` folder of a papo-hub
    checkout has no wheel: nothing changes there.
    """
    import hashlib
    import tempfile
    import zipfile

    wheels = sorted(Path(space_dir).glob("papo_hub-*-py3-none-any.whl"))
    if not wheels:
        return None
    if len(wheels) > 1:
        raise RuntimeError(
            f"more than one papo-hub wheel in {space_dir}: {', '.join(w.name for w in wheels)}"
        )
    wheel = wheels[0]
    env = os.environ if env is None else env
    cache = Path(_env_str(env, "PAPO_SPACE_CACHE") or Path(space_dir) / ".cache").expanduser()
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    target = cache / "papo-hub" / f"{wheel.stem}-{digest}"
    if not (target / "papo" / "__init__.py").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Not papo.files.write_dir_atomically: papo is what this makes importable.
        partial = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(partial)
        try:
            os.replace(partial, target)
        except OSError:  # another process extracted it first
            shutil.rmtree(partial, ignore_errors=True)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    loaded = sys.modules.get("papo")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(target)):
        warnings.warn(
            f"papo was imported from {loaded.__file__} before the shipped {wheel.name}: that copy is used",
            RuntimeWarning,
            stacklevel=2,
        )
    return target


# --- the embedded default models ----------------------------------------------------------------------


def ensure_embedded_models(cache_dir: Path, log=logger.info) -> tuple[Path, Path]:
    """(baseline model dir, PAPO adapter dir): the embedded pair, shipped or built under `cache_dir`.

    Shipped with the package (`papo.embedded`): the warm-started small Qwen2.5-VL as the baseline and the
    PAPO-G adapter the mini reproduction trained from it (its median seed), so the two answers really differ.
    Without them (a trimmed install) the base is `papo.embedded.embedded_model(cache_dir)` and the adapter
    is the README's demo run, `papo train --output_dir <cache>/demo-train --embedded_dir <cache>`, run once
    in a subprocess (its seeding and threads stay out of this process) into a temporary folder renamed
    into place, so an interrupted first start never leaves a half adapter.
    """
    from papo import embedded

    base, adapter = embedded.shipped_warm_start(), embedded.shipped_papo_adapter()
    if base is not None and adapter is not None:
        return base, adapter
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if base is None:
        log(f"Building the embedded base model under {cache_dir} ...")
        base = embedded.embedded_model(cache_dir)
    adapter = cache_dir / "demo-train"
    if (adapter / "adapter_model.safetensors").exists():
        return base, adapter
    partial = cache_dir / ".demo-train.partial"
    shutil.rmtree(partial, ignore_errors=True)
    log_path = cache_dir / "demo-train.log"
    command = [sys.executable, "-m", "papo.cli", "train", "--output_dir", str(partial)]
    command += ["--embedded_dir", str(cache_dir)]
    log(
        "Training the embedded demo PAPO adapter (first start only; 10 s to 2 min on a CPU): "
        f"`papo train --output_dir {adapter} --embedded_dir {cache_dir}`, log in {log_path}"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log_file:
        done = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0 or not (partial / "adapter_model.safetensors").exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(
            f"building the demo adapter failed (exit {done.returncode}); end of {log_path}:\n{tail}"
        )
    if adapter.exists():
        shutil.rmtree(adapter)
    os.replace(partial, adapter)
    log(f"Demo adapter ready in {adapter}")
    return base, adapter


# --- models ------------------------------------------------------------------------------------------


def _pixel_budget(image_processor) -> int | None:
    """About how many pixels the processor keeps (`papo.families.pixel_budget`), or None if unknown."""
    from papo.families import pixel_budget

    return pixel_budget(image_processor)


class Models:
    """The baseline and PAPO models, loaded once (in the background or on demand) and shared by requests.

    With an adapter, ONE `PeftModel` serves both answers: the baseline runs inside
    `model.disable_adapter()`, PAPO with the adapter on. That halves the memory of a 3B deployment; the
    price is that requests must not overlap, which `lock` guarantees (and the queue's concurrency limit
    keeps them from waiting on it). With PAPO_MODEL, two full models are loaded.
    """

    def __init__(self, config: SpaceConfig):
        self.config = config
        self.lock = threading.Lock()  # one request at a time on the models
        self._load_lock = threading.Lock()
        self.state = "not loaded"  # not loaded | loading | ready | failed
        self.message = "Models not loaded yet."
        self.error: str | None = None
        self.started_at: float | None = None
        self.model = None  # PeftModel (adapter) or the base model (PAPO_MODEL)
        self.papo = None  # the separate PAPO model (PAPO_MODEL) or None
        self.processor = None
        self.names: dict[str, str] = {}

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _set(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        logger.info(message)

    def status(self) -> str:
        """A one-paragraph status for the UI."""
        if self.state == "loading" and self.started_at is not None:
            return f"**Loading** ({time.monotonic() - self.started_at:.0f} s): {self.message}"
        if self.state == "failed":
            return f"**Error:** the models failed to load: {self.error}"
        if self.state == "ready":
            return f"**Ready.** {self.message}"
        return f"**Waiting:** {self.message}"

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(
            target=self.load, kwargs={"quiet": True}, name="papo-space-load", daemon=True
        )
        thread.start()
        return thread

    def load(self, quiet: bool = False) -> None:
        """Load (building the embedded defaults first if needed). Idempotent; failures are kept in `error`."""
        with self._load_lock:
            if self.ready:
                return
            self.started_at = time.monotonic()
            self.error = None
            self._set("loading", "Loading the models ...")
            try:
                self._load()
            except Exception as err:  # shown in the UI; the app keeps running
                self.error = f"{type(err).__name__}: {err}"
                self._set("failed", f"Models failed to load: {self.error}")
                logger.exception("loading the models failed")
                if not quiet:
                    raise
                return
            self._set("ready", self.describe())

    def _load(self) -> None:
        import torch

        from papo.families import family_of
        from papo.modeling import load_model_and_adapter, set_pixel_bounds

        config = self.config
        base, adapter, papo_model = config.base_model, config.adapter, config.papo_model
        if config.embedded:
            self.message = "Finding the embedded models (built on first start if this install lacks them) ..."
            base, adapter = (str(p) for p in ensure_embedded_models(config.cache_dir, log=self._building))
        elif base is None:  # adapter only: its config names the base model
            base = _adapter_base_model(adapter)
        device = config.device or (
            "cuda" if torch.cuda.is_available() or os.environ.get("SPACES_ZERO_GPU") else "cpu"
        )
        self.message = f"Loading {base} + {adapter or papo_model} on {device} ..."
        logger.info(self.message)
        load = {"dtype": config.dtype, "device": device, "load_in_4bit": config.load_in_4bit}
        self.model, self.processor = load_model_and_adapter(base, adapter, **load)
        if papo_model:
            self.papo, _ = load_model_and_adapter(papo_model, **load)
        family = family_of(self.model)  # an unsupported family: one sentence naming the supported ones
        if config.embedded or not family.pixel_bounds:
            # the small embedded model keeps its own bounds unless told otherwise; Gemma 3 / SmolVLM have
            # none (PAPO_MIN_PIXELS / PAPO_MAX_PIXELS set for them are refused by set_pixel_bounds)
            set_pixel_bounds(self.processor, config.min_pixels, config.max_pixels)
        else:
            min_pixels, max_pixels = (
                config.min_pixels or OFFICIAL_MIN_PIXELS,
                config.max_pixels or OFFICIAL_MAX_PIXELS,
            )
            set_pixel_bounds(self.processor, min(min_pixels, max_pixels), max_pixels)
        self.names = {
            "baseline": base,
            "papo": f"{base} + adapter {adapter}" if adapter else str(papo_model),
            "device": str(device),
            "embedded": str(config.embedded),
            "family": family.label,
        }

    def _building(self, message: str) -> None:
        self.message = message
        logger.info(message)

    def describe(self) -> str:
        names = self.names
        text = f"Baseline: `{names['baseline']}` · PAPO: `{names['papo']}` · device `{names['device']}`"
        if self.config.embedded:
            text += (
                " · embedded demo models: a ~2.4M-parameter warm start that reads small handwritten digits "
                "(28 px each, like the examples) and its PAPO-G adapter; outside those tasks they write nonsense. "
                "Set PAPO_BASE_MODEL / PAPO_ADAPTER for real models."
            )
        return text

    def pixel_budget(self) -> int | None:
        return _pixel_budget(self.processor.image_processor)

    @contextmanager
    def policy(self, which: str) -> Iterator[Any]:
        """The model for `which` ("baseline" | "papo"); hold `lock` around its use."""
        if which == "papo":
            yield self.papo if self.papo is not None else self.model
        elif which == "baseline":
            if self.papo is None and hasattr(self.model, "disable_adapter"):
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model
        else:
            raise ValueError(f"which must be 'baseline' or 'papo', got {which!r}")


def _adapter_base_model(adapter: str) -> str:
    from peft import PeftConfig

    from papo.modeling import explain_missing

    with explain_missing(adapter):
        base = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    if not base:
        raise ValueError(f"adapter {adapter!r} does not name its base model: set PAPO_BASE_MODEL")
    return base


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


# --- tokens ------------------------------------------------------------------------------------------


def displayed(piece: str) -> str:
    """A token piece for the inline heat map: real text, but control characters made visible."""
    return "".join(chr(0x2400 + ord(c)) if ord(c) < 0x20 and c not in "\n\t" else c for c in piece)


# --- the comparison ----------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    tokens: list[str]  # the text each token adds ("" for bytes of a character completed later)
    raw_tokens: list[str] = field(default_factory=list)  # the tokenizer's own strings (byte-level BPE)
    kl: list[float] = field(default_factory=list)
    extracted: str | None = None
    correct: bool | None = None
    # d_t per token: k3 on the answer's own tokens, what VPPO gates and PGPO weights by (papo.followups)
    dependency: list[float] = field(default_factory=list)

    def label(self, position: int) -> str:
        """A readable label of one token; a partial character shows the tokenizer's byte token."""
        from papo.analysis import readable

        piece = self.tokens[position]
        if piece or not self.raw_tokens:
            return readable(piece)
        return f"[{self.raw_tokens[position]}]"

    def summary(self, top_k: int = TOP_K) -> dict[str, Any]:
        kl = self.kl
        order = sorted(range(len(kl)), key=lambda i: -kl[i])[:top_k]
        return {
            "n_tokens": len(kl),
            "mean_kl": sum(kl) / len(kl) if kl else 0.0,
            "max_kl": max(kl) if kl else 0.0,
            "mean_dependency": sum(self.dependency) / len(self.dependency) if self.dependency else 0.0,
            "top_tokens": [{"position": i, "token": self.label(i), "kl": kl[i]} for i in order],
        }


@dataclass
class Comparison:
    """One comparison: both answers with per-token KL, the images and everything needed to redo the mask."""

    question: str
    reference: str | None
    settings: Settings
    image: Image.Image
    masked_image: Image.Image
    prompt: list[dict[str, Any]]
    answers: dict[str, Answer]
    notes: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)

    @property
    def kl_scale(self) -> float:
        """The colour scale's top (`papo.analysis.kl_colour_scale`): one scale for both answers."""
        from papo.analysis import kl_colour_scale

        return kl_colour_scale(a.kl for a in self.answers.values())

    def to_json(self) -> dict[str, Any]:
        """Everything but the images, JSON-safe: the API's detailed result."""
        out: dict[str, Any] = {
            "question": self.question,
            "reference": self.reference,
            "settings": asdict(self.settings) | {"mask_seed": self.settings.mask_seed, "top_p": 1.0},
            "kl_scale": self.kl_scale,
            "identical_answers": self.answers["baseline"].token_ids == self.answers["papo"].token_ids,
            "image_size": list(self.image.size),
            "notes": list(self.notes),
            "models": dict(self.models),
        }
        for side, answer in self.answers.items():
            out[side] = {
                "answer": answer.text,
                "extracted": answer.extracted,
                "correct": answer.correct,
                "tokens": answer.tokens,
                "raw_tokens": answer.raw_tokens,
                "token_ids": answer.token_ids,
                "kl": answer.kl,
                "visual_dependency": answer.dependency,
                **answer.summary(),
            }
        return json.loads(json.dumps(out))


def compare(
    models: Models,
    image: Any,
    question: Any,
    reference: Any = None,
    seed: Any = 0,
    temperature: Any = 1.0,
    max_new_tokens: Any = 256,
    mask_ratio: Any = 0.6,
    mask_draw: Any = 0,
    progress: Callable[[float, str], Any] | None = None,
) -> Comparison:
    """Answer `question` about `image` with the baseline and the PAPO model; score every token's KL.

    Raises SpaceError (worded for the user) for bad inputs, models not ready or a failed generation.
    `progress(fraction, description)` is called before each step.
    """
    progress = progress or (lambda fraction, description: None)
    settings = Settings.checked(
        seed,
        temperature,
        max_new_tokens,
        mask_ratio,
        mask_draw,
        max_tokens_limit=models.config.max_new_tokens_limit,
    )
    text = clean_question(question, models.config.max_question_chars)
    reference = str(reference).strip() if reference is not None and str(reference).strip() else None
    _require_ready(models)
    picture, notes = load_image(image, models.pixel_budget())

    from papo.analysis import token_pieces
    from papo.evaluation.run import eval_prompt
    from papo.generation import generate_completions
    from papo.rewards import extract_boxed_answer, grade

    prompt = eval_prompt(IMAGE_PLACEHOLDER + text)  # the training prompt: the official instruction appended
    answers: dict[str, Answer] = {}
    with _model_errors(), models.lock:
        for number, side in enumerate(SIDES):
            progress(0.1 + 0.4 * number, f"{LABELS[side]}: generating ...")
            with models.policy(side) as model:
                [(answer_text, ids)] = generate_completions(
                    model,
                    models.processor,
                    [prompt],
                    [[picture]],
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=settings.temperature > 0,
                    temperature=settings.temperature or 1.0,
                    top_p=1.0,
                    batch_size=1,
                    seed=settings.seed,
                    show_progress=False,
                )
            tokenizer = models.processor.tokenizer
            answers[side] = Answer(
                answer_text, ids, token_pieces(tokenizer, ids), tokenizer.convert_ids_to_tokens(ids)
            )
        progress(0.85, "Per-token KL against the masked image ...")
        masked = _score(models, prompt, picture, answers, settings)
    for answer in answers.values():
        answer.extracted = extract_boxed_answer(answer.text)
        answer.correct = None if reference is None else grade(answer.extracted, reference)
    if answers["baseline"].token_ids == answers["papo"].token_ids:
        notes.append("Both models gave the same answer (same tokens): only the KL values can differ.")
    return Comparison(text, reference, settings, picture, masked, prompt, answers, notes, dict(models.names))


def remask(models: Models, comparison: Comparison, mask_ratio: Any, mask_draw: Any) -> Comparison:
    """The same answers scored against another mask (ratio and/or draw); no new generation."""
    if comparison is None:
        raise SpaceError("Run a comparison first: a new mask re-scores the answers it produced.")
    settings = Settings.checked(
        comparison.settings.seed,
        comparison.settings.temperature,
        comparison.settings.max_new_tokens,
        mask_ratio,
        mask_draw,
        max_tokens_limit=models.config.max_new_tokens_limit,
    )
    _require_ready(models)
    answers = {
        side: Answer(a.text, a.token_ids, a.tokens, a.raw_tokens, [], a.extracted, a.correct)
        for side, a in comparison.answers.items()
    }
    with _model_errors(), models.lock:
        masked = _score(models, comparison.prompt, comparison.image, answers, settings)
    return Comparison(
        comparison.question,
        comparison.reference,
        settings,
        comparison.image,
        masked,
        comparison.prompt,
        answers,
        list(comparison.notes),
        comparison.models,
    )


def _score(models: Models, prompt, picture: Image.Image, answers: dict[str, Answer], settings: Settings):
    """Fill each answer's per-token KL (hold models.lock); returns the masked image used for both."""
    from papo.analysis import perception_per_token
    from papo.masking import MaskingConfig, masked_copies

    masking = MaskingConfig(mask_ratio=settings.mask_ratio)
    eos = models.processor.tokenizer.eos_token_id
    for side in SIDES:
        answer = answers[side]
        with models.policy(side) as model:
            both = perception_per_token(
                model,
                models.processor,
                [prompt],
                [[picture]],
                [answer.token_ids or [eos]],
                masking=masking,
                seed=settings.mask_seed,
            )
        answer.kl = [float(v) for v in both["perception_kl"][0][: len(answer.token_ids)]]
        answer.dependency = [float(v) for v in both["visual_dependency"][0][: len(answer.token_ids)]]
    # The exact copy perception_per_token masked with (same prompt, images, config and seed).
    [masked] = masked_copies(prompt, [picture], masking, settings.mask_seed, models.processor.image_processor)
    return masked


def _require_ready(models: Models) -> None:
    if models.state == "failed":
        raise SpaceError(f"The models failed to load, so nothing can be generated: {models.error}")
    if not models.ready:
        raise SpaceError(f"The models are not ready yet: {models.status()} Try again in a moment.")


@contextmanager
def _model_errors():
    """Generation failures become a SpaceError for this request only; the models stay usable."""
    try:
        yield
    except SpaceError:
        raise
    except Exception as err:
        import torch

        logger.exception("generation failed")
        if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise SpaceError(
                "Out of memory while generating: lower 'Max new tokens' or use a smaller image, then retry."
            ) from None
        raise SpaceError(
            f"Generation failed ({type(err).__name__}: {err}). Try again or change the inputs."
        ) from None


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
