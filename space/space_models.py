"""The Space's models: the embedded default pair (`ensure_embedded_models`) and `Models`, which loads the
baseline and PAPO models once, through the library's loader (`papo.modeling.load_model_and_adapter`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from space_config import SpaceConfig

logger = logging.getLogger("papo.space")

# The official training bounds (papo/configs/*-qwen2.5vl-3b-*.yaml): applied to any model but the tiny one.
OFFICIAL_MIN_PIXELS = 200_704  # 256 * 28 * 28
OFFICIAL_MAX_PIXELS = 1_003_520  # 1280 * 28 * 28


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
