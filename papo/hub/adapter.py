"""A PEFT (LoRA/QLoRA) adapter as a Hub model repo: ``papo push adapter``.

``build_adapter_repo`` writes, in a local folder, *exactly* the files of the repo: the adapter weights and
processor files (never a pickle), the run's config with secrets redacted and local paths scrubbed, and a card
rendered from ``papo/cards/adapter_card.md`` with valid Hub metadata; ``push_adapter`` builds that folder in
a temporary directory and pushes it in one commit (``papo.hub.transport``). ``write_training_card`` puts the
same card in a ``papo train`` output folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from papo.hub.cards import _adapter_card
from papo.hub.checks import (
    ADAPTER_FILES,
    PROCESSOR_FILES,
    RUN_FILES,
    _is_pickle_or_state,
    _redact_secrets,
    _refuse_local_paths,
    _resolve_base_model,
    _scrub_local_paths,
    check_adapter_fits_base,
)
from papo.hub.tables import _run_view
from papo.hub.transport import _build_atomically, _build_then_push

logger = logging.getLogger(__name__)


def build_adapter_repo(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
    eval_results: dict | str | os.PathLike | None = None,
    datasets: list[str] | None = None,
    license: str = "mit",
    repo_id: str | None = None,
    overwrite: bool = False,
    base_config_from_hub: bool = True,
) -> Path:
    """Write in ``out_dir`` the exact folder ``push_adapter`` uploads for the PEFT adapter in ``adapter_dir``.

    Args:
        adapter_dir: a directory written by ``trainer.save_model()`` (``adapter_config.json`` and
            ``adapter_model.safetensors``), optionally with the processor files, ``papo_config.yaml`` (the
            resolved training config) and ``metrics.jsonl``. Pickles, trainer state and ``checkpoint-*``
            directories are never copied.
        out_dir: where to build; must not exist or be empty, unless ``overwrite=True`` (then it is replaced).
        base_model: Hub id of the base model, written into ``adapter_config.json`` and the card. Default:
            ``model_name_or_path`` of ``papo_config.yaml`` (or of ``adapter_config.json``), which must then be a
            Hub id, not a local path.
        eval_results: ``{"benchmarks": {"Geo3k": 30.95 | {"accuracy": 30.95, "n": 601}, ...},
            "groups": {...}, "overall": ..., "protocol": {...} | "metric name"}`` (accuracy in percent), or the
            path of a ``results.json`` of ``papo eval``. Adds a ``model-index`` and an evaluation table.
        datasets: Hub ids of the training data for the card metadata (default: ``dataset_name`` of the config
            when it is a Hub id).
        license: the licence id of the card metadata.
        repo_id: the target repo, used in the card's usage snippet.
        base_config_from_hub: where the base model's config, against which the adapter's shapes are checked
            (:func:`check_adapter_fits_base`), may come from: the HF cache, then the Hub; False: the cache only.

    Returns the built folder. Raises ``ValueError`` on a missing/invalid adapter or when no Hub id of the base
    model is known, ``FileExistsError`` when ``out_dir`` is a non-empty directory and ``overwrite`` is false.
    """

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ValueError(f"adapter directory {str(adapter_dir)!r} does not exist")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(
            f"{adapter_dir} has no adapter_config.json: give the output directory of a PEFT (LoRA/QLoRA) run "
            "(the one `trainer.save_model()` wrote)"
        )
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        hint = (
            " (it only has adapter_model.bin, a pickle: re-save with safe_serialization=True)"
            if (adapter_dir / "adapter_model.bin").exists()
            else ""
        )
        raise ValueError(f"{adapter_dir} has no adapter_model.safetensors{hint}")
    if eval_results is not None and not isinstance(eval_results, dict):
        eval_results = json.loads(Path(eval_results).read_text())
    if eval_results is not None:
        eval_results = _run_view(eval_results)

    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config_path = adapter_dir / "papo_config.yaml"
    run_config: dict[str, Any] = {}
    if config_path.is_file():
        run_config = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(run_config, dict):
            raise ValueError(f"{config_path} is not a YAML mapping")
    base = _resolve_base_model(base_model, run_config, adapter_config)
    check_adapter_fits_base(adapter_dir / "adapter_model.safetensors", base, ask_hub=base_config_from_hub)

    def write(folder: Path) -> None:
        copied = _copy_adapter_files(adapter_dir, folder)
        if "papo_config.yaml" in copied:
            # never publish a token that ended up in the resolved config, nor a local path
            published = _scrub_local_paths(_redact_secrets(run_config))
            if published != run_config:
                (folder / "papo_config.yaml").write_text(yaml.safe_dump(published, sort_keys=True))
        adapter_config["base_model_name_or_path"] = base
        (folder / "adapter_config.json").write_text(
            json.dumps(adapter_config, indent=2, sort_keys=True) + "\n"
        )

        card = _adapter_card(
            folder,
            base=base,
            run_config=run_config,
            adapter_config=adapter_config,
            eval_results=eval_results,
            datasets=datasets,
            license=license,
            repo_id=repo_id,
        )
        (folder / "README.md").write_text(card, encoding="utf-8")
        _refuse_local_paths(folder, adapter_dir)

    return _build_atomically(Path(out_dir), write, overwrite=overwrite, source=adapter_dir)


def write_training_card(adapter_dir: str | os.PathLike) -> Path:
    """Put our card (``README.md``) in a `papo train` output folder, in place of PEFT's boilerplate.

    The base model is linked when it was loaded by Hub id; a local base is named by its folder name only
    (``papo push adapter --base-model <hub id>`` writes the card that is published).
    """
    from papo.files import write_text_atomically

    adapter_dir = Path(adapter_dir)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config_path = adapter_dir / "papo_config.yaml"
    run_config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    try:
        base, local = _resolve_base_model(None, run_config, adapter_config), None
    except ValueError:
        recorded = run_config.get("model_name_or_path") or adapter_config.get("base_model_name_or_path")
        base, local = None, Path(str(recorded or "its base model").rstrip("/")).name
    card = _adapter_card(
        adapter_dir, base=base, run_config=run_config, adapter_config=adapter_config, local_base=local
    )
    return write_text_atomically(adapter_dir / "README.md", card)


def push_adapter(
    adapter_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    base_model: str | None = None,
    eval_results: dict | str | os.PathLike | None = None,
    datasets: list[str] | None = None,
    license: str = "mit",
    token: str | None = None,
    commit_message: str = "Upload PAPO adapter",
    dry_run_dir: str | os.PathLike | None = None,
    retries: int = 3,
    retry_base_delay: float = 2.0,
) -> str:
    """Push the adapter in ``adapter_dir`` to the model repo ``repo_id`` in one commit; returns the commit URL.

    The folder is built by ``build_adapter_repo`` (same arguments). With ``dry_run_dir`` it is only built
    there, nothing goes over the network, and the folder's path is returned; ``dry_run_dir`` must be empty,
    new, or the output of an earlier dry run (which is replaced). The repo is created if needed
    (``private`` applies only then); the commit adds every file and deletes remote files that are not in the
    folder (``.gitattributes`` is kept). Unchanged files are skipped; when nothing changed, no commit is made
    and the URL of the current head commit is returned. ``token``: default is huggingface_hub's own (``HF_TOKEN`` or
    ``hf auth login``). ``retries`` tries in all for transient errors, waiting ``retry_base_delay * 2**i`` s.

    Raises ``HubAuthError`` on HTTP 401/403, ``HubPushError`` when retries are exhausted.
    """
    build = partial(
        build_adapter_repo,
        adapter_dir,
        repo_id=repo_id,
        base_model=base_model,
        eval_results=eval_results,
        datasets=datasets,
        license=license,
        base_config_from_hub=dry_run_dir is None,  # a dry run makes no request
    )
    return _build_then_push(
        build,
        repo_id,
        "model",
        dry_run_dir,
        private=private,
        token=token,
        commit_message=commit_message,
        retries=retries,
        retry_base_delay=retry_base_delay,
    )


def _copy_adapter_files(adapter_dir: Path, folder: Path) -> list[str]:
    allowed = set(ADAPTER_FILES + PROCESSOR_FILES + RUN_FILES)
    copied, skipped = [], []
    for path in sorted(adapter_dir.iterdir()):
        name = path.name
        if path.is_file() and name in allowed and not _is_pickle_or_state(name):
            shutil.copyfile(path, folder / name)
            copied.append(name)
        else:
            skipped.append(name + ("/" if path.is_dir() else ""))
    if skipped:
        logger.info("not uploaded from %s: %s", adapter_dir, ", ".join(skipped))
    return copied
