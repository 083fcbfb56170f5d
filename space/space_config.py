"""The Space's configuration: what it runs, read from environment variables (`SpaceConfig`), and the
papo-hub wheel a pushed Space ships next to the app (`use_shipped_wheel`, run before papo is imported).
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parent
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


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
