"""Publish PAPO adapters (model repos) and eval predictions (dataset repos) on the Hugging Face Hub.

Two steps each, so that what is pushed can be inspected first (`papo push ... --dry-run DIR`):

- ``build_adapter_repo`` / ``build_eval_dataset_repo`` write, in a local folder, *exactly* the files of the
  repo: the adapter weights and processor files (never a pickle), or one parquet per benchmark, plus a card
  (``README.md``) rendered from the templates in ``papo/cards/`` with valid Hub metadata.
- ``push_adapter`` / ``push_eval`` build that folder in a temporary directory and push it in **one commit**
  that mirrors it: every file is added, and every remote file that is not in the folder is deleted (only
  ``.gitattributes`` is kept), so pushing again leaves no stale files. Files whose content did not change are
  skipped by ``huggingface_hub``; when nothing changed at all no commit is made and the URL of the current head
  commit is returned.

``papo.hub_space`` builds and pushes the comparison Space (``papo push space``) with the same transport.

Pushing retries transient failures (HTTP 408/429/5xx, connection errors) with exponential backoff, and turns
HTTP 401/403 into a ``HubAuthError`` whose message says how to log in. The token is taken from the ``token``
argument, else from huggingface_hub itself (``HF_TOKEN``, or the token stored by ``hf auth login``); it is
never printed, logged or written into a file, and a push refuses to upload a folder that contains it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from papo.files import write_dir_atomically

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CARD_TEMPLATE",
    "BaseModelMismatchError",
    "EVAL_CARD_TEMPLATE",
    "HubAuthError",
    "HubPushError",
    "build_adapter_repo",
    "build_eval_dataset_repo",
    "check_adapter_fits_base",
    "write_training_card",
    "main",
    "push_adapter",
    "push_eval",
]

CARDS_DIR = Path(__file__).resolve().parent / "cards"
ADAPTER_CARD_TEMPLATE = CARDS_DIR / "adapter_card.md"
EVAL_CARD_TEMPLATE = CARDS_DIR / "eval_dataset_card.md"

PAPO_EVAL_DATASET = "PAPO-Galaxy/PAPO_eval"
DEFAULT_METRIC_NAME = "accuracy (avg@8)"

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

EVAL_FILES = ("results.json", "results.md", "comparison.png")
SYNTHETIC_TASKS = (
    *("count_shapes", "read_number", "compare_bars", "which_side", "text_arithmetic"),
    *("digit_read", "digit_sum", "digit_larger", "digit_count", "digit_sum_text"),
)

# Remote files a mirroring push never deletes (the Hub creates .gitattributes with the repo: LFS rules).
KEEP_REMOTE = frozenset({".gitattributes"})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
AUTH_STATUS = frozenset({401, 403})

_SECRET_KEY = re.compile(r"(^|_)(token|api_key|apikey|secret|password|passwd)$", re.IGNORECASE)
_REDACTED = "<redacted>"


class HubPushError(RuntimeError):
    """A push to the Hub failed (after retries for transient errors)."""


class HubAuthError(HubPushError):
    """The Hub refused the credentials (HTTP 401/403)."""


# --------------------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------------------


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


def _adapter_card(
    folder: Path,
    *,
    base: str | None,
    run_config: dict,
    adapter_config: dict,
    eval_results: dict | None = None,
    datasets: list[str] | None = None,
    license: str = "mit",
    repo_id: str | None = None,
    local_base: str | None = None,
) -> str:
    """The model card of the adapter whose files are in `folder`: metadata and text from the run's config.

    `base` is the base model's Hub id; None when it is only known as a local folder (`local_base`, shown by
    name, with no metadata link): the card of a `papo train` output folder before it is pushed.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    copied = {p.name for p in folder.iterdir() if p.is_file()}
    peft_method = "QLoRA" if run_config.get("load_in_4bit") else "LoRA"
    algorithm, perception = _algorithm(run_config)
    train_data = list(datasets) if datasets else _training_datasets(run_config)
    tags = ["papo", "trl", "peft", peft_method.lower()]
    if algorithm is not None:
        tags.append("dapo" if run_config.get("dynamic_sampling") else "grpo")
        tags += [name.lower() for name in _followups(run_config)]
    tags.append("vision-language")
    title_algorithm = algorithm or "PAPO"
    base_label = base or local_base or "its base model"
    title = f"{title_algorithm} {peft_method} adapter for {base_label.split('/')[-1]}"

    evals = _normalise_eval_results(eval_results) if eval_results else None
    card_data = ModelCardData(
        base_model=base,
        library_name="peft",
        pipeline_tag="image-text-to-text",
        license=license,
        datasets=train_data or None,
        tags=tags,
        model_name=repo_id or title,
        eval_results=(_model_index(evals, EvalResult) or None) if evals else None,
    )
    has_processor = any((folder / name).is_file() for name in PROCESSOR_FILES)
    card = ModelCard.from_template(
        card_data,
        template_path=str(ADAPTER_CARD_TEMPLATE),
        title=title,
        base_model=base or "<base-model-hub-id>",
        base_label=base_label,
        base_on_hub=base is not None,
        repo_id=repo_id or "<your-username>/<repo-name>",
        peft_method=peft_method,
        qlora=peft_method == "QLoRA",
        algorithm=algorithm or "GRPO",
        perception=perception,
        config_rows=_config_rows(_scrub_local_paths(run_config)),
        lora_rows=_lora_rows(adapter_config),
        eval_rows=evals["benchmarks"] if evals else [],
        group_rows=evals["groups"] if evals else [],
        overall=evals["overall"] if evals else None,
        comparison_rows=evals["comparison_rows"] if evals else [],
        comparison_note=evals["comparison_note"] if evals else "",
        metric_name=evals["metric_name"] if evals else DEFAULT_METRIC_NAME,
        protocol_text=evals["protocol_text"] if evals else "",
        processor_source="adapter_id" if has_processor else "base_id",
        has_processor=has_processor,
        has_config="papo_config.yaml" in copied,
        has_metrics="metrics.jsonl" in copied,
        license=license,
    )
    return _tidy(str(card))


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


# --------------------------------------------------------------------------------------------------------
# Eval predictions
# --------------------------------------------------------------------------------------------------------


def build_eval_dataset_repo(
    eval_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model: str | None = None,
    adapter: str | None = None,
    license: str = "mit",
    overwrite: bool = False,
) -> Path:
    """Write in ``out_dir`` the dataset repo ``push_eval`` uploads for the ``papo eval`` run in ``eval_dir``.

    ``eval_dir`` holds ``results.json``, optionally ``results.md`` and ``comparison.png``, and
    ``predictions/<benchmark>.parquet``. The repo gets ``data/<config>/test-00000-of-00001.parquet`` per
    benchmark, those files, and a dataset card whose ``configs`` metadata maps each benchmark to its parquet,
    so ``load_dataset(repo_id, "<config>", split="test")`` works. ``model``/``adapter`` override the ones
    recorded in ``results.json`` for the card; ``license`` is its metadata licence (the card says that the
    upstream benchmarks' licences apply to their questions, images and answers).
    """
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard, DatasetCardData

    eval_dir = Path(eval_dir)
    results_path = eval_dir / "results.json"
    if not results_path.is_file():
        raise ValueError(f"{eval_dir} has no results.json: give the output directory of `papo eval`")
    results = _run_view(json.loads(results_path.read_text()))
    parquets = sorted((eval_dir / "predictions").glob("*.parquet"))
    if not parquets:
        raise ValueError(f"{eval_dir / 'predictions'} holds no <benchmark>.parquet files")
    model = _scrub_local_paths(model or results.get("model") or "unknown model")
    adapter = _scrub_local_paths(adapter if adapter is not None else results.get("adapter"))

    benchmarks, configs, columns = [], [], {}
    for parquet in parquets:
        name = parquet.stem
        config = _config_name(name)
        if any(b["config"] == config for b in benchmarks):
            raise ValueError(f"two prediction files map to the dataset configuration {config!r}")
        meta = pq.read_metadata(parquet)
        for column in meta.schema.to_arrow_schema().names:
            columns.setdefault(column, None)
        path_in_repo = f"data/{config}/test-00000-of-00001.parquet"
        synthetic = _is_synthetic(name)
        benchmarks.append(
            dict(
                name=name,
                config=config,
                rows=meta.num_rows,
                file=parquet,
                path_in_repo=path_in_repo,
                synthetic=synthetic,
                source=_eval_source(results, name, synthetic),
            )
        )
        configs.append({"config_name": config, "data_files": [{"split": "test", "path": path_in_repo}]})

    protocol = results.get("protocol") or {}
    if not isinstance(protocol, dict):
        protocol = {"protocol": protocol}

    def write(folder: Path) -> None:
        for b in benchmarks:
            target = folder / b["path_in_repo"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(b["file"], target)
        for name in EVAL_FILES:
            if (eval_dir / name).is_file():
                shutil.copyfile(eval_dir / name, folder / name)
        if (
            eval_dir / "results.json"
        ).is_file():  # `papo eval` records the model/adapter as given: maybe paths
            raw = json.loads((eval_dir / "results.json").read_text())
            (folder / "results.json").write_text(
                json.dumps(_scrub_local_paths(raw), indent=2, ensure_ascii=False) + "\n"
            )
        model_label = f"{model} + adapter {adapter}" if adapter else model
        card_data = DatasetCardData(
            license=license,
            task_categories=["image-text-to-text", "visual-question-answering"],
            tags=["papo", "evaluation", "vision-language", "model-predictions"],
            pretty_name=f"PAPO eval predictions: {_short(adapter) if adapter else _short(model)}",
            size_categories=[_size_category(sum(b["rows"] for b in benchmarks))],
            configs=configs,
        )
        metrics_md = (
            (eval_dir / "results.md").read_text().strip() if (eval_dir / "results.md").is_file() else ""
        )
        card = DatasetCard.from_template(
            card_data,
            template_path=str(EVAL_CARD_TEMPLATE),
            repo_id=repo_id or "<your-username>/<repo-name>",
            model=model,
            adapter=adapter,
            model_label=model_label,
            first_config=benchmarks[0]["config"],
            benchmarks=benchmarks,
            has_comparison=(eval_dir / "comparison.png").is_file(),
            protocol_rows=[{"key": k, "value": _cell(v)} for k, v in protocol.items()],
            protocol_summary=_protocol_summary(protocol),
            mask_ratio=protocol.get("mask_ratio"),
            kl_threshold=next((v for k, v in protocol.items() if "threshold" in k), None),
            metrics_table=metrics_md or _results_table(results),
            columns=[{"name": c, "description": _cell(_COLUMN_DOCS.get(c, ""))} for c in columns],
            papo_eval_benchmarks=[b["name"] for b in benchmarks if not b["synthetic"]],
            synthetic_benchmarks=[b["name"] for b in benchmarks if b["synthetic"]],
        )
        (folder / "README.md").write_text(_tidy(str(card)), encoding="utf-8")
        _refuse_local_paths(folder, eval_dir)

    return _build_atomically(Path(out_dir), write, overwrite=overwrite, source=eval_dir)


def push_eval(
    eval_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload PAPO eval predictions",
    dry_run_dir: str | os.PathLike | None = None,
    model: str | None = None,
    adapter: str | None = None,
    license: str = "mit",
    retries: int = 3,
    retry_base_delay: float = 2.0,
) -> str:
    """Push the ``papo eval`` run in ``eval_dir`` to the dataset repo ``repo_id`` in one commit.

    Same behaviour as ``push_adapter`` (dry run, mirroring commit, retries, auth errors); the folder is built
    by ``build_eval_dataset_repo``. Returns the commit URL (or the dry-run folder).
    """
    build = partial(
        build_eval_dataset_repo, eval_dir, repo_id=repo_id, model=model, adapter=adapter, license=license
    )
    return _build_then_push(
        build,
        repo_id,
        "dataset",
        dry_run_dir,
        private=private,
        token=token,
        commit_message=commit_message,
        retries=retries,
        retry_base_delay=retry_base_delay,
    )


# --------------------------------------------------------------------------------------------------------
# Pushing a folder in one commit
# --------------------------------------------------------------------------------------------------------


def _build_then_push(build, repo_id: str, repo_type: str, dry_run_dir, **push_kwargs) -> str:
    """`build(out_dir, overwrite=...)` the repo folder; with `dry_run_dir` stop there (no network),
    else build it in a temporary folder and push it in one commit. Returns the dry-run dir or the URL."""
    _check_repo_id(repo_id)
    if dry_run_dir is not None:
        return str(build(dry_run_dir, overwrite=_is_previous_build(dry_run_dir)))
    with tempfile.TemporaryDirectory(prefix="papo-push-") as tmp:
        return _push_folder(build(Path(tmp) / "repo"), repo_id, repo_type, **push_kwargs)


def _push_folder(
    folder: Path,
    repo_id: str,
    repo_type: str,
    *,
    private: bool,
    token: str | None,
    commit_message: str,
    retries: int = 3,
    retry_base_delay: float = 2.0,
    create_kwargs: dict | None = None,
) -> str:
    """Mirror ``folder`` into the repo in one commit, with retries; returns the commit URL.

    ``create_kwargs``: extra arguments of ``HfApi.create_repo`` (a Space's ``space_sdk``)."""
    local_files = _list_files(folder)
    _refuse_if_contains(folder, local_files, token or _stored_token())
    push = partial(
        _push_once, folder, local_files, repo_id, repo_type, private, token, commit_message, create_kwargs
    )
    return _with_retries(push, repo_id, token=token, retries=retries, retry_base_delay=retry_base_delay)


def _stored_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _with_retries(
    call: Callable[[], Any],
    repo_id: str,
    *,
    token: str | None,
    retries: int = 3,
    retry_base_delay: float = 2.0,
    what: str = "push to",
) -> Any:
    """``call()`` with retries of transient failures; HTTP 401/403 -> ``HubAuthError`` saying how to log in,
    offline mode -> ``HubPushError``; the token never appears in a message."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    resolved_token = token or _stored_token()
    tries = max(1, int(retries))
    for attempt in range(1, tries + 1):
        try:
            return call()
        except OfflineModeIsEnabled:
            raise HubPushError(
                f"cannot push {repo_id}: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set); "
                "unset it and retry"
            ) from None
        except Exception as exc:
            status = _status_code(exc)
            if status in AUTH_STATUS:
                missing = "" if resolved_token else " (no Hugging Face token was found)"
                raise HubAuthError(
                    f"authentication failed for {repo_id} (HTTP {status}){missing}: log in with "
                    "`hf auth login` or set HF_TOKEN; the token needs write access"
                ) from None
            if not _is_transient(exc, status):
                raise
            message = _redact(f"{type(exc).__name__}: {exc}".splitlines()[0], resolved_token)
            if attempt == tries:
                raise HubPushError(f"{what} {repo_id} failed after {tries} tries: {message}") from None
            delay = retry_base_delay * 2 ** (attempt - 1)
            logger.warning(
                "%s %s: try %d/%d failed (%s); retrying in %.3g s",
                what,
                repo_id,
                attempt,
                tries,
                message,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _push_once(
    folder: Path,
    local_files: list[str],
    repo_id: str,
    repo_type: str,
    private: bool,
    token: str | None,
    commit_message: str,
    create_kwargs: dict | None = None,
) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **(create_kwargs or {}))
    if private:
        info = api.repo_info(repo_id, repo_type=repo_type)
        if info.private is False:
            logger.warning(
                "%s already exists and is public: `private` only applies when a repo is created", repo_id
            )
    try:
        remote = set(api.list_repo_files(repo_id, repo_type=repo_type))
    except (EntryNotFoundError, RevisionNotFoundError):  # an empty repo (no commit on main yet)
        remote = set()
    operations: list = [
        CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in local_files
    ]
    stale = sorted(remote - set(local_files) - KEEP_REMOTE)
    operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
    if stale:
        logger.info("deleting %d remote file(s) no longer in the folder: %s", len(stale), ", ".join(stale))
    info = api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type)
    return info.commit_url


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_transient(exc: BaseException, status: int | None) -> bool:
    if status is not None:
        return status in TRANSIENT_STATUS
    transport: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    for module in ("httpx2", "httpx", "requests"):
        mod = sys.modules.get(module)
        for name in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(getattr(mod, "exceptions", mod), name, None) if mod else None
            if isinstance(cls, type) and issubclass(cls, BaseException):
                transport += (cls,)
    return isinstance(exc, transport)


def _list_files(folder: Path) -> list[str]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise HubPushError(f"{path} is a symbolic link; the folder to push must hold plain files")
        if path.is_file():
            files.append(path.relative_to(folder).as_posix())
    if not files:
        raise HubPushError(f"{folder} is empty: nothing to push")
    return files


def _refuse_if_contains(folder: Path, files: Iterable[str], secret: str | None) -> None:
    """Refuse to upload a folder in which the token appears (read in chunks; the overlap catches splits)."""
    if not secret:
        return
    needle = secret.encode()
    for rel in files:
        with open(folder / rel, "rb") as f:
            tail = b""
            while chunk := f.read(8 << 20):
                if needle in tail + chunk:
                    raise HubPushError(f"refusing to push: {rel} contains your Hugging Face token")
                tail = chunk[-len(needle) :]


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, _REDACTED) if secret else text


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"invalid repo id {repo_id!r}: expected <namespace>/<name> ({exc})") from None


# --------------------------------------------------------------------------------------------------------
# Building folders
# --------------------------------------------------------------------------------------------------------


def _build_atomically(out_dir: Path, write: Callable[[Path], None], *, overwrite: bool, source: Path) -> Path:
    """Run ``write(tmp)`` in a sibling temporary directory, then move it to ``out_dir``."""
    out_dir = out_dir.expanduser()
    if out_dir.resolve() == source.resolve() or source.resolve() in out_dir.resolve().parents:
        raise ValueError(f"out_dir {str(out_dir)!r} must not be {source} or inside it")
    if out_dir.resolve() in source.resolve().parents:
        raise ValueError(f"out_dir {str(out_dir)!r} must not contain {source}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose an empty directory")
    return write_dir_atomically(out_dir, write)


def _is_previous_build(path: str | os.PathLike) -> bool:
    """Whether a dry run may replace ``path``: a folder an earlier build wrote (a card tagged papo, no .git)."""
    path = Path(path).expanduser()
    readme = path / "README.md"
    if not path.is_dir() or (path / ".git").exists() or not readme.is_file():
        return False
    match = re.match(r"^---\n(.*?)\n---\n", readme.read_text(encoding="utf-8", errors="replace"), re.DOTALL)
    try:
        metadata = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return False
    return isinstance(metadata, dict) and "papo" in (metadata.get("tags") or [])


def _is_pickle_or_state(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_PICKLE_SUFFIXES) or lower.startswith(_STATE_PREFIXES)


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


# The files a build writes or rewrites (tokenizer vocabularies and model outputs may hold any string).
_WRITTEN_FILES = (
    *("README.md", "adapter_config.json", "papo_config.yaml", "results.json", "results.md"),
    "examples/examples.json",  # a Space's examples (papo.hub_space)
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


def _training_datasets(run_config: dict) -> list[str]:
    name = run_config.get("dataset_name")
    if isinstance(name, str) and not _looks_local(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return [name]
    return []


def _algorithm(run_config: dict) -> tuple[str | None, bool]:
    """(variant name, perception loss on) from the resolved config: PAPO-G, PAPO-G-NRef, PAPO-D, GRPO, DAPO."""
    if not run_config:
        return None, True
    perception = bool(run_config.get("perception_loss", (run_config.get("perception_kl_coef") or 0) > 0))
    dapo = bool(run_config.get("dynamic_sampling"))
    followups = _followups(run_config)
    if followups:  # VPPO / PGPO / NoisyRollout (issue 19), with PAPO's KL term when γ > 0
        kl_on = perception and (run_config.get("perception_kl_coef") or 0) > 0
        return ("PAPO + " if kl_on else "") + " + ".join(followups), kl_on
    if not perception:
        return ("DAPO" if dapo else "GRPO"), False
    if dapo:
        return "PAPO-D", True
    return ("PAPO-G-NRef" if run_config.get("beta", 0.0) == 0 else "PAPO-G"), True


def _followups(run_config: dict) -> list[str]:
    """The follow-up methods a run used (papo.followups): VPPO, PGPO, NoisyRollout."""
    names = []
    if run_config.get("vppo_token_gating") or run_config.get("vppo_advantage_scaling"):
        names.append("VPPO")
    if run_config.get("pgpo"):
        names.append("PGPO")
    if run_config.get("noisy_rollout"):
        names.append("NoisyRollout")
    return names


# (key in papo_config.yaml, meaning): the PAPO / GRPO settings shown on the card, in this order.
CONFIG_TABLE: tuple[tuple[str, str], ...] = (
    ("model_name_or_path", "base model the run loaded"),
    ("dataset_name", "training data"),
    ("perception_loss", "PAPO perception loss on (off: GRPO/DAPO baseline)"),
    ("perception_kl_coef", "γ, weight of the perception KL (maximised)"),
    ("perception_kl_estimator", "KL estimator (k3 = verl low_var_kl)"),
    ("perception_kl_schedule", "γ schedule"),
    ("recompute_masked_logps", "gradient through the masked branch"),
    ("mask_strategy", "how the image is masked"),
    ("mask_ratio", "probability each patch is blackened"),
    ("mask_patch_size", "patch side, in pixels"),
    ("entropy_original_coef", "η1, entropy penalty on π_θ(·|I)"),
    ("entropy_masked_coef", "η2, entropy penalty on π_θ(·|I_mask)"),
    ("beta", "β, reference-model KL (0: no reference model)"),
    ("loss_type", "loss aggregation (bnpo: token mean)"),
    ("epsilon", "clip ratio, low"),
    ("epsilon_high", "clip ratio, high"),
    ("delta", "dual-clip bound"),
    ("scale_rewards", "advantage normalisation"),
    ("reward_weights", "weights of accuracy, format"),
    ("dynamic_sampling", "DAPO dynamic sampling (drop all-0/all-1 groups)"),
    ("num_generations", "G, rollouts per prompt"),
    ("temperature", "rollout temperature"),
    ("top_p", "rollout top-p"),
    ("max_completion_length", "max generated tokens"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "LR schedule"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max optimizer steps"),
    ("per_device_train_batch_size", "completions per device micro-batch"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("steps_per_generation", "micro-batches per generation batch (3 × accumulation: 3 updates)"),
    ("disable_dropout", "dropout off everywhere (official)"),
    ("lora_r", "LoRA rank"),
    ("lora_alpha", "LoRA alpha"),
    ("lora_dropout", "LoRA dropout"),
    ("lora_vision_tower", "LoRA on the vision tower too"),
    ("load_in_4bit", "QLoRA: base in 4-bit NF4"),
    ("min_pixels", "min image pixels"),
    ("max_pixels", "max image pixels"),
    ("seed", "seed"),
)


def _config_rows(run_config: dict) -> list[dict[str, str]]:
    rows = []
    for key, meaning in CONFIG_TABLE:
        if key not in run_config or run_config[key] is None:
            continue
        if key == "max_steps" and isinstance(run_config[key], int) and run_config[key] <= 0:
            continue
        rows.append({"key": key, "value": _cell(run_config[key]), "meaning": _cell(meaning)})
    return rows


def _lora_rows(adapter_config: dict) -> list[str]:
    rows = []
    if adapter_config.get("peft_type"):
        rows.append(f"PEFT type: `{adapter_config['peft_type']}`")
    for key in ("r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora"):
        if adapter_config.get(key) not in (None, False):
            rows.append(f"`{key}`: {_cell(adapter_config[key])}")
    targets = adapter_config.get("target_modules")
    if targets:
        targets = sorted(targets) if isinstance(targets, list) else targets
        rows.append(f"`target_modules`: {_cell(targets)}")
    return rows


def _cell(value: Any) -> str:
    """A value as one markdown table cell."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(_cell(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _accuracy(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("accuracy", value.get("avg", value.get("mean")))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _run_view(results: dict) -> dict:
    """`papo eval`'s results.json keeps the grouping under "groups" and this run's averages under
    "summary"; the cards want the averages."""
    summary = results.get("summary")
    if isinstance(summary, dict):
        return {**results, "groups": summary.get("groups", {}), "overall": summary.get("overall")}
    return results


def _normalise_eval_results(eval_results: dict) -> dict[str, Any]:
    """{"benchmarks": [{name, accuracy, value, n}], "groups": [...], "overall": str|None, metric_name, ...}."""
    protocol = eval_results.get("protocol")
    if isinstance(protocol, str) and protocol:
        metric_name, protocol_text = protocol, ""
    elif isinstance(protocol, dict):
        k = protocol.get("samples_per_question")
        metric_name = f"accuracy (avg@{k})" if k else DEFAULT_METRIC_NAME
        protocol_text = _protocol_summary(protocol, short=True)
    else:
        metric_name, protocol_text = DEFAULT_METRIC_NAME, ""

    def rows(mapping: Any) -> list[dict[str, Any]]:
        out = []
        for name, value in (mapping or {}).items():
            acc = _accuracy(value)
            if acc is None:
                continue
            n = value.get("n") if isinstance(value, dict) else None
            dataset = value.get("dataset") if isinstance(value, dict) else None
            complete = bool(value.get("complete")) if isinstance(value, dict) else False
            cited = bool(dataset) and complete and not _is_synthetic(str(name))
            source = f"`{dataset}`" if dataset else "local data"
            if dataset and not complete:
                source += " (part)"
            out.append(
                {
                    "name": str(name),
                    "value": acc,
                    "accuracy": f"{acc:.2f}",
                    "n": n if n else "—",
                    "dataset": dataset if cited else None,
                    "source": source,
                }
            )
        return out

    overall = _accuracy(eval_results.get("overall"))
    benchmarks = rows(eval_results.get("benchmarks"))
    cited = {row["dataset"] for row in benchmarks}
    return {
        "benchmarks": benchmarks,
        "groups": rows(eval_results.get("groups")),
        "overall": None if overall is None else f"{overall:.2f}",
        "overall_value": overall,
        "metric_name": metric_name,
        "protocol_text": protocol_text,
        # averages are cited only when every benchmark behind them is a complete split of one Hub dataset
        "averages_dataset": next(iter(cited)) if len(cited) == 1 and None not in cited else None,
        **_comparison_rows(eval_results.get("comparison")),
    }


def _comparison_rows(comparison: Any) -> dict[str, Any]:
    """The card's paired-statistics table from results.json's "comparison" (papo.stats via `papo eval --compare`)."""
    if not isinstance(comparison, dict) or not isinstance(comparison.get("benchmarks"), dict):
        return {"comparison_rows": [], "comparison_note": ""}

    def row(name: str, r: dict, q: Any) -> dict[str, str]:
        return {
            "name": _cell(name),
            "n": str(r.get("n", "—")),
            "diff": f"{r['diff']:+.2f}",
            "ci": f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]",
            "p": f"{r['mcnemar_p']:.3g}",
            "q": "–" if q is None else f"{q:.3g}",
            "verdict": _cell(r.get("verdict", "")),
        }

    rows = [row(name, r, r.get("q_value")) for name, r in comparison["benchmarks"].items()]
    if isinstance(comparison.get("overall"), dict):
        rows.append(row("Overall", comparison["overall"], None))
    note = (
        f"Δ = this adapter − {_cell(comparison.get('baseline') or 'the baseline')}, in percentage points; "
        f"{comparison.get('confidence', 0.95):.0%} CI by paired bootstrap over questions "
        f"({comparison.get('n_resamples', 10000):,} replicates, seed {comparison.get('seed', 0)}); McNemar's exact "
        f"test on {comparison.get('mcnemar_on', 'per-question correctness')}; q: Benjamini-Hochberg across "
        "benchmarks. A Δ whose CI contains 0 is inside the noise."
    )
    return {"comparison_rows": rows, "comparison_note": note}


def _model_index(evals: dict[str, Any], eval_result_cls: type) -> list:
    """Results on Hub datasets only: a benchmark evaluated on a complete split of a Hub dataset (recorded by
    `papo eval` as ``dataset`` and ``complete``); group and overall averages only when all benchmarks are.
    Local, partial or synthetic evaluations stay in the card's table, never in the metadata."""

    def result(name: str, value: float, config: str, dataset: str) -> Any:
        return eval_result_cls(
            task_type="image-text-to-text",
            task_name="Multimodal reasoning",
            dataset_type=dataset,
            dataset_name=name,
            dataset_config=config,
            dataset_split="test",
            metric_type="accuracy",
            metric_name=evals["metric_name"],
            metric_value=round(value, 2),
        )

    # The Hub groups model-index entries by (task, dataset type, config, split): each needs its own config.
    results = [
        result(row["name"], row["value"], _config_name(row["name"]), row["dataset"])
        for row in evals["benchmarks"]
        if row["dataset"]
    ]
    averages = evals["averages_dataset"]
    if averages:
        results += [
            result(f"{row['name']} (average)", row["value"], "average-" + _config_name(row["name"]), averages)
            for row in evals["groups"]
        ]
        if evals["overall_value"] is not None:
            results.append(result("Overall (average)", evals["overall_value"], "average-overall", averages))
    return results


def _eval_source(results: dict, name: str, synthetic: bool) -> str:
    """Where a benchmark's questions came from, as recorded by `papo eval` (never guessed from the name)."""
    recorded = (results.get("benchmarks") or {}).get(name)
    dataset = recorded.get("dataset") if isinstance(recorded, dict) else None
    if dataset:
        return f"`{dataset}`" + ("" if recorded.get("complete") else " (part of the split)")
    return "papo-hub synthetic (MIT)" if synthetic else "local data"


def _protocol_summary(protocol: dict, short: bool = False) -> str:
    k = protocol.get("samples_per_question")
    parts = []
    if k:
        parts.append(f"{k} samples per question" if short else f"avg@{k} ({k} samples per question)")
    for key, label in (
        ("temperature", "temperature"),
        ("top_p", "top-p"),
        ("max_new_tokens", "max new tokens"),
    ):
        if protocol.get(key) is not None:
            parts.append(f"{label} {_cell(protocol[key])}")
    if protocol.get("grader"):
        parts.append(f"grader `{protocol['grader']}`")
    if short:
        return ", ".join(parts)
    if not parts:
        return "The protocol is recorded in `results.json`."
    return "Sampling and grading: " + ", ".join(parts) + "; no format requirement."


def _results_table(results: dict) -> str:
    lines = ["| Benchmark | Accuracy (%) | Questions |", "|---|---|---|"]
    for name, value in (results.get("benchmarks") or {}).items():
        acc = _accuracy(value)
        n = value.get("n", "—") if isinstance(value, dict) else "—"
        lines.append(f"| {name} | {'—' if acc is None else f'{acc:.2f}'} | {n} |")
    for name, value in (results.get("groups") or {}).items():
        acc = _accuracy(value)
        if acc is not None:
            lines.append(f"| **{name}** | **{acc:.2f}** | |")
    overall = _accuracy(results.get("overall"))
    if overall is not None:
        lines.append(f"| **Overall** | **{overall:.2f}** | |")
    return "\n".join(lines)


_COLUMN_DOCS = {
    "id": "question id in the source benchmark",
    "benchmark": "benchmark name",
    "question": "the question as given to the model (the image is passed separately)",
    "image": "the question's image",
    "reference": "the reference answer",
    "samples": "the k sampled answers (full text, including the reasoning)",
    "extracted": "per sample, the content of its last `\\boxed{}` (null if none)",
    "correct": "per sample, whether the grader accepted the extracted answer",
    "accuracy": "mean of `correct` for this question (0 to 1)",
    "tokens": "per sample, the text each generated token adds (joined, they give the answer; a character split over several tokens appears on the last)",
    "perception_kl": "per sample, per generated token: KL(π(·|I) ‖ π(·|I_mask)), aligned with `tokens`",
    "visual_dependency": "per sample, per generated token: d_t, the k3 estimate of that KL on the generated token "
    "(what VPPO/PGPO act on), aligned with `tokens`",
}


def _config_name(benchmark: str) -> str:
    name = re.sub(r"[^\w.-]+", "_", benchmark).strip("_.-")
    if not name:
        raise ValueError(f"cannot make a dataset configuration name from {benchmark!r}")
    return name


def _is_synthetic(name: str) -> bool:
    lower = name.lower()
    return "synthetic" in lower or lower in SYNTHETIC_TASKS


def _short(name: str | None) -> str:
    return str(name).rstrip("/").split("/")[-1] if name else "model"


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return label
    return "1M<n<10M"


def _tidy(text: str) -> str:
    """Collapse the blank lines Jinja leaves behind (outside of code blocks) and end with one newline."""
    out, fenced, blank = [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and not line.strip():
            if blank:
                continue
            blank = True
        else:
            blank = False
        out.append(line.rstrip() if not fenced else line)
    return "\n".join(out).strip() + "\n"


# --------------------------------------------------------------------------------------------------------
# A minimal command line (`python -m papo.hub`); `papo push` wraps the same functions.
# --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="papo push",
        description="Push a PAPO adapter, eval predictions or the comparison Space to the Hugging Face Hub. "
        "The token comes from "
        "HF_TOKEN or `hf auth login` (never from the command line).",
    )
    sub = parser.add_subparsers(dest="what", required=True)
    adapter = sub.add_parser("adapter", help="push a LoRA/QLoRA adapter directory as a model repo")
    adapter.add_argument("adapter_dir", help="the adapter folder written by `papo train` (its output_dir)")
    adapter.add_argument("--repo-id", required=True, help="e.g. your-name/papo-g-qwen2.5vl-3b-lora")
    adapter.add_argument("--base-model", default=None, help="Hub id of the base model")
    adapter.add_argument("--eval-results", default=None, help="results.json of `papo eval` for the card")
    adapter.add_argument("--dataset", action="append", default=None, help="training dataset id (repeatable)")
    adapter.add_argument("--license", default="mit")
    evals = sub.add_parser("eval", help="push a `papo eval` output directory as a dataset repo")
    evals.add_argument("eval_dir", help="the output_dir of `papo eval`")
    evals.add_argument("--repo-id", required=True, help="e.g. your-name/papo-eval-predictions")
    evals.add_argument("--model", default=None)
    evals.add_argument("--adapter", default=None)
    evals.add_argument("--license", default="mit")
    space = sub.add_parser(
        "space",
        help="deploy the comparison Space (baseline vs base + adapter, per-token perception KL) as a Gradio Space",
    )
    space.add_argument("--repo-id", required=True, help="the Space, e.g. your-name/papo-demo")
    space.add_argument("--base-model", default=None, help="Hub id of the base model (default: the adapter's)")
    space.add_argument(
        "--adapter",
        default=None,
        help="Hub id of the PAPO adapter (papo push adapter); none: the embedded demo pair",
    )
    space.add_argument(
        "--eval-dataset",
        default=None,
        help="the adapter's eval predictions (papo push eval): the examples are its questions where the models "
        "differ most",
    )
    space.add_argument(
        "--baseline-eval-dataset",
        default=None,
        help="the base model's eval predictions: with --eval-dataset, 'differ most' = per-question accuracy",
    )
    space.add_argument(
        "--hardware",
        default=None,
        help="request this hardware, e.g. zero-a10g, t4-small (omitted: left as it is)",
    )
    space.add_argument(
        "--load-in-4bit", action="store_true", help="set PAPO_LOAD_IN_4BIT (QLoRA-style NF4 base)"
    )
    space.add_argument(
        "--dtype", default=None, help="set PAPO_DTYPE: bfloat16, float16, float32 (default auto)"
    )
    space.add_argument("--device", default=None, help="set PAPO_DEVICE (default: cuda if available)")
    for p in (adapter, evals, space):
        p.add_argument("--private", action="store_true", help="create the repo private")
        p.add_argument("--dry-run", default=None, metavar="DIR", help="only build the repo folder in DIR")
        p.add_argument("--commit-message", default=None)
        p.add_argument("--retries", type=int, default=3)
        p.add_argument("--retry-base-delay", type=float, default=2.0)
    args = parser.parse_args(argv)
    common = dict(private=args.private, dry_run_dir=args.dry_run, retries=args.retries)
    common["retry_base_delay"] = args.retry_base_delay
    if args.commit_message:
        common["commit_message"] = args.commit_message
    try:
        if args.what == "adapter":
            result = push_adapter(
                args.adapter_dir,
                args.repo_id,
                base_model=args.base_model,
                eval_results=args.eval_results,
                datasets=args.dataset,
                license=args.license,
                **common,
            )
        elif args.what == "space":
            from papo.hub_space import push_space

            pushed = push_space(
                args.repo_id,
                base_model=args.base_model,
                adapter=args.adapter,
                eval_dataset=args.eval_dataset,
                baseline_eval_dataset=args.baseline_eval_dataset,
                hardware=args.hardware,
                load_in_4bit=args.load_in_4bit,
                dtype=args.dtype,
                device=args.device,
                **common,
            )
            result = pushed.get("folder") or pushed["url"]
            settings = [f"{k}={v}" for k, v in pushed["variables"].items()]
            if pushed["hardware"]:
                settings.append(f"hardware {pushed['hardware']}")
            verb = "to set" if args.dry_run else "set"
            print(f"Space settings {verb}: {', '.join(settings) or 'none (the embedded demo pair)'}")
        else:
            result = push_eval(
                args.eval_dir,
                args.repo_id,
                model=args.model,
                adapter=args.adapter,
                license=args.license,
                **common,
            )
    except (HubPushError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Built {result}" if args.dry_run else f"Pushed: {result}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)  # our own progress notes, without the HTTP client's request log
    sys.exit(main())
