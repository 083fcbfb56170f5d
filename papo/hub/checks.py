"""What may be published: the checks every repo folder passes before it goes to the Hub.

The allow-list of an adapter's files (never a pickle or trainer state), secrets redacted from a run's config,
absolute local paths scrubbed from what a card or config shows (and a built folder refused when one slipped
through), and the base model: a Hub id (never a local folder) whose modules the adapter's LoRA shapes fit
(``check_adapter_fits_base``, checked on the ``meta`` device from the base model's config).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


# The files of a PEFT adapter directory written by `trainer.save_model()` + `processor.save_pretrained()`
# that belong in the repo. Everything else is left out (and logged), in particular TRL's README.md.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


PROCESSOR_FILES = (
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "merges.txt",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "video_preprocessor_config.json",
    "vocab.json",
)


RUN_FILES = ("papo_config.yaml", "metrics.jsonl")


# Never uploaded, whatever the allow-list says: pickles and trainer state.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


_STATE_PREFIXES = ("training_args", "optimizer", "rng_state", "scheduler", "trainer_state")


_SECRET_KEY = re.compile(r"(^|_)(token|api_key|apikey|secret|password|passwd)$", re.IGNORECASE)


_REDACTED = "<redacted>"


def _is_pickle_or_state(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_PICKLE_SUFFIXES) or lower.startswith(_STATE_PREFIXES)


def _redact_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (_REDACTED if _SECRET_KEY.search(str(k)) and isinstance(v, str) and v else _redact_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact_secrets(v) for v in value]
    return value


def _is_local_absolute(text: str) -> bool:
    return text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", text) is not None


def _scrub_local_paths(value: Any) -> Any:
    """Every absolute local path in `value` (nested) replaced by ``<local>/<its last component>``."""
    if isinstance(value, dict):
        return {k: _scrub_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_local_paths(v) for v in value]
    if isinstance(value, str) and _is_local_absolute(value):
        return f"<local>/{Path(value.rstrip('/')).name}"
    return value


def _public(source: str | None) -> str | None:
    """A Hub id as is; a local folder as ``<local>/<its name>`` (nothing pushed names a local path)."""
    if source is None or not Path(source).expanduser().exists():
        return source
    return f"<local>/{Path(source).expanduser().resolve().name}"


# The files a build writes or rewrites (tokenizer vocabularies and model outputs may hold any string).
_WRITTEN_FILES = (
    *("README.md", "adapter_config.json", "papo_config.yaml", "results.json", "results.md"),
    "examples/examples.json",  # a Space's examples (papo.hub.space_examples)
)


def _refuse_local_paths(folder: Path, source: Path) -> None:
    """Refuse a built folder whose card, configs or results name the source folder or the home directory."""
    needles = {str(source.resolve()), str(source.absolute()), str(Path.home())}
    needles = {n.encode() for n in needles if len(n) > 1}
    for name in _WRITTEN_FILES:
        path = folder / name
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                if needle in data:
                    raise ValueError(
                        f"refusing to publish {path.relative_to(folder)}: it contains the local path "
                        f"{needle.decode()!r}; nothing pushed to the Hub may name a local path"
                    )


def _looks_local(text: str) -> bool:
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
        or re.match(r"^[A-Za-z]:", text) is not None
        or Path(text).expanduser().exists()
    )


def _resolve_base_model(base_model: str | None, run_config: dict, adapter_config: dict) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if base_model:
        try:
            validate_repo_id(base_model)
        except HFValidationError:
            raise ValueError(
                f"--base-model {base_model!r} is not a Hub model id (<namespace>/<name>), e.g. "
                "Qwen/Qwen2.5-VL-3B-Instruct"
            ) from None
        return base_model
    recorded = run_config.get("model_name_or_path") or adapter_config.get("base_model_name_or_path")
    if not recorded:
        raise ValueError("the base model is not recorded: pass --base-model <hub id>")
    recorded = str(recorded)
    embedded = run_config.get("embedded_dir")
    local = _looks_local(recorded) or (embedded and recorded.startswith(str(embedded)))
    try:
        validate_repo_id(recorded)
    except HFValidationError:
        local = True
    if local:
        raise ValueError(
            f"the adapter was trained on a local base model ({recorded}); pass --base-model <hub id> with the "
            "Hub id of that base model (e.g. Qwen/Qwen2.5-VL-3B-Instruct)"
        )
    return recorded


class BaseModelMismatchError(ValueError):
    """The adapter's weights cannot load on the named base model (their shapes or modules differ)."""


def _base_model_config(base: str, ask_hub: bool = True):
    """The base model's config from the HF cache, else (`ask_hub`) the Hub; None when neither has it."""
    from transformers import AutoConfig

    for local_only in (True, False) if ask_hub else (True,):
        try:
            return AutoConfig.from_pretrained(base, local_files_only=local_only)
        except Exception:  # not cached / offline / not on the Hub: try the next source
            continue
    return None


def check_adapter_fits_base(adapter_weights: str | os.PathLike, base: str, *, ask_hub: bool = True) -> bool:
    """Refuse an adapter whose LoRA shapes do not match the modules of `base` (a Hub id).

    The base model is built from its config on the ``meta`` device (no weights are read or downloaded),
    and every ``lora_A`` (``[r, in_features]``) / ``lora_B`` (``[out_features, r]``) of the adapter is
    compared with the linear layer it wraps. Returns True when checked, False (with a warning) when the
    base model's config is neither in the HF cache nor (with `ask_hub`) on the Hub. Raises
    :class:`BaseModelMismatchError` naming the first mismatching modules.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    config = _base_model_config(base, ask_hub)
    if config is None:
        logger.warning(
            "could not read the config of %s (not in the HF cache%s): the adapter's shapes were NOT checked "
            "against it; `hf download %s config.json` to check offline",
            base,
            ", not found on the Hub" if ask_hub else "; a dry run does not ask the Hub",
            base,
        )
        return False
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    modules = dict(model.named_modules())
    problems: list[str] = []
    with safe_open(str(adapter_weights), framework="pt") as weights:
        for key in weights.keys():
            match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.[\w-]+)?\.weight", key)
            if not match:
                continue
            path, which = match.groups()
            module = modules.get(path) or _module_by_suffix(modules, path)
            if module is None:
                problems.append(f"{path}: no such module in {base}")
                continue
            shape = tuple(weights.get_slice(key).get_shape())
            expected = getattr(module, "in_features" if which == "lora_A" else "out_features", None)
            actual = shape[1] if which == "lora_A" else shape[0]
            if expected is not None and actual != expected:
                side = "in" if which == "lora_A" else "out"
                problems.append(f"{path}.{which} {list(shape)}: {base} has {side}_features={expected}")
            if len(problems) >= 3:
                break
    if problems:
        raise BaseModelMismatchError(
            f"the adapter does not fit --base-model {base}: "
            + "; ".join(problems)
            + ". Pass the Hub id of the "
            "model the adapter was trained on (its weights could not be loaded on this one)."
        )
    return True


def _module_by_suffix(modules: dict, path: str):
    """A module named `path` under a renamed prefix (adapters saved by older transformers: model.layers...)."""
    tail = path.split(".", 1)[-1]
    found = [m for name, m in modules.items() if name.endswith("." + tail) or name == tail]
    return found[0] if len(found) == 1 else None
