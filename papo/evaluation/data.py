"""Eval sets: the training schema, the published ``PAPO-Galaxy/PAPO_eval`` snapshot, or a prepared ShareGPT JSON.

All three are turned into the training schema (``problem``, ``answer``, ``images``, ``id``) so that the
same prompt builder, checks and grader serve training and evaluation.

* **The published snapshot** (a Hub id resolved through the HF cache with ``huggingface_hub``, or a
  folder from ``hf download PAPO-Galaxy/PAPO_eval --repo-type dataset --local-dir X``): one parquet per
  split at ``data/<split>-00000-of-00001.parquet`` with columns ``messages`` (ShareGPT: the user turn holds
  ``<image>``, the question and the instruction; the assistant turn the gold answer), ``images`` (relative
  path strings such as ``./data/images/<folder>/<file>.png``) and ``id``; the images are in one zip per
  split at the root. Each zip is extracted once into a cache folder (:mod:`papo.data.archives`),
  never into the snapshot, which is only read; image paths must stay inside the extracted folder.
* **A prepared ShareGPT JSON** (what PAPO-Eval writes: ``<split>.json`` next to an ``images/`` folder):
  image paths are looked up under ``--image_dir`` or, by default, next to the JSON and in its
  ``images/`` folder; an image found nowhere is an error that names ``--image_dir``.
* Anything else is read by :func:`papo.data.loading.load_papo_dataset` (Hub id, folder, parquet).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import datasets
from datasets import Dataset

from papo.data.archives import UnsafeArchiveError, extract_zip_cached, find_image, path_variants
from papo.data.loading import load_papo_dataset, looks_like_hub_id
from papo.evaluation.report import canonical_name

logger = logging.getLogger(__name__)

EVAL_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
    }
)

PAPO_EVAL_REPO = "PAPO-Galaxy/PAPO_eval"
# Table 1 name -> (image zip at the snapshot's root, rows of the published split), as published.
PUBLISHED_SPLITS: dict[str, tuple[str, int]] = {
    "Geo3k": ("hiyouga_geometry3k_images.zip", 601),
    "MathVista": ("AI4Math_MathVista_images.zip", 1000),
    "We-Math": ("We-Math_We-Math_images.zip", 1740),
    "MMK12": ("PAPO_MMK12_test_images.zip", 2000),
    "MathVerse": ("AI4Math_MathVerse_images.zip", 2180),
    "MathVerse_V": ("AI4Math_MathVerse_vision_dependent_images.zip", 1308),
    "LogicVista": ("lscpku_LogicVista_images.zip", 447),
    "Counting": ("BUAADreamer_clevr_count_70k_images.zip", 200),
    "MMMU-Pro": ("MMMU_MMMU_Pro_images.zip", 1730),
}
_SHARD = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}\.parquet$")
_ZIP_SUFFIX = "_images.zip"
_USER_ROLES, _ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------


class EvalSet(NamedTuple):
    """One benchmark to evaluate. `hub_dataset` is the Hub dataset whose complete published split these rows
    are (None for local data, or rows that differ from the published split): only such results may be
    reported as results on that dataset (a model card's ``model-index``)."""

    name: str
    dataset: Dataset
    hub_dataset: str | None


def load_eval_sets(
    source: str | os.PathLike,
    split: str = "test",
    image_dir: str | os.PathLike | None = None,
    *,
    benchmarks: Iterable[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[EvalSet]:
    """The :class:`EvalSet` s of one ``--data`` source.

    A PAPO_eval snapshot (folder or Hub id) gives every split, or those named in `benchmarks` (Table 1
    names or split names); the other layouts give one set and ignore `benchmarks`.
    """
    root = papo_eval_root(source)
    if root is not None:
        return load_papo_eval(root, benchmarks, cache_dir=cache_dir)
    name, dataset = load_eval_set(source, split, image_dir)
    if is_sharegpt_source(source):
        hub = PAPO_EVAL_REPO if _is_published_size(name, len(dataset)) else None
    else:
        hub = str(source) if not Path(source).exists() and looks_like_hub_id(str(source)) else None
    return [EvalSet(name, dataset, hub)]


def _is_published_size(name: str, rows: int) -> bool:
    return PUBLISHED_SPLITS.get(canonical_name(name), (None, None))[1] == rows


def load_eval_set(source: str | os.PathLike, split: str = "test", image_dir: str | os.PathLike | None = None):
    """(name, dataset in the training schema) for a training-schema source or a ShareGPT JSON split."""
    if is_sharegpt_source(source):
        json_path = _sharegpt_file(Path(source))
        return json_path.stem, load_sharegpt_eval(source, image_dir)
    dataset = load_papo_dataset(source, split)
    name = Path(str(source).rstrip("/")).name or str(source)
    if "id" not in dataset.column_names:
        dataset = dataset.add_column("id", [str(i) for i in range(len(dataset))])
    return name, dataset


# ------------------------------------------------------------------------------------------------
# ShareGPT records (shared by the parquet snapshot and the prepared JSON)
# ------------------------------------------------------------------------------------------------


def _turns(record: dict, where: str) -> tuple[str, str]:
    """(user text, assistant text) of a ShareGPT record (``role``/``content`` or ``from``/``value``)."""
    user = assistant = None
    for message in record.get("messages") or []:
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if role in _USER_ROLES and user is None:
            user = content
        elif role in _ASSISTANT_ROLES:
            assistant = content
    for role, text in (("user", user), ("assistant", assistant)):
        if not isinstance(text, str):
            raise ValueError(f"{where}, field 'messages': no {role} turn with text content")
    return user, assistant


def _rows_from_records(records: Iterable[dict], source_name: str, resolve) -> Dataset:
    rows: dict[str, list] = {"id": [], "problem": [], "answer": [], "images": []}
    for index, record in enumerate(records):
        where = f"{source_name} record {index}"
        user, assistant = _turns(record, where)
        paths = record.get("images") or []
        if isinstance(paths, str):
            paths = [paths]
        rows["id"].append(str(record["id"]) if record.get("id") is not None else str(index))
        rows["problem"].append(user)
        rows["answer"].append(assistant)
        rows["images"].append([{"path": str(resolve(p, where)), "bytes": None} for p in paths])
    return Dataset.from_dict(rows, features=EVAL_FEATURES)


# ------------------------------------------------------------------------------------------------
# Prepared ShareGPT JSON
# ------------------------------------------------------------------------------------------------


def is_sharegpt_source(source: str | os.PathLike) -> bool:
    """A ShareGPT JSON file, or a folder holding exactly one such JSON file."""
    return _sharegpt_file(Path(source)) is not None


def load_sharegpt_eval(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a prepared PAPO_eval split (ShareGPT JSON) into the training schema.

    Relative image paths are looked up under `image_dir` when given, else next to the JSON file and in
    its ``images/`` folder (with PAPO-Eval's ``./data/images/`` prefix or without). An image found
    nowhere raises FileNotFoundError naming the record and ``--image_dir``; a record without a user or
    assistant turn raises ValueError naming the record and the field.
    """
    json_path = _sharegpt_file(Path(path))
    if json_path is None:
        raise FileNotFoundError(f"{path}: no ShareGPT JSON file (a list of records with 'messages')")
    roots = [Path(image_dir)] if image_dir is not None else [json_path.parent, json_path.parent / "images"]

    def resolve(image_path: str, where: str) -> Path:
        if Path(image_path).is_absolute():
            if Path(image_path).is_file():
                return Path(image_path)
            candidates = [Path(image_path)]
        else:
            candidates = [root / v for root in roots for v in path_variants(image_path)]
            for candidate in candidates:
                if candidate.is_file():
                    return candidate
        searched = ", ".join(str(r) for r in roots)
        raise FileNotFoundError(
            f"{where}: image {image_path!r} not found (looked under {searched}). Pass --image_dir "
            "<the folder the images were extracted to> (PAPO-Eval extracts each split's zip into an "
            "images/ folder next to the JSON)."
        )

    return _rows_from_records(json.loads(json_path.read_text()), json_path.name, resolve)


def _sharegpt_file(path: Path) -> Path | None:
    candidates = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    found = [p for p in candidates if p.suffix == ".json" and _looks_like_sharegpt(p)]
    if len(found) > 1:
        raise ValueError(
            f"{path} holds several ShareGPT JSON files ({[p.name for p in found]}); pass one file"
        )
    return found[0] if found else None


def _looks_like_sharegpt(path: Path) -> bool:
    try:
        with open(path) as f:
            head = f.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith("[") and '"messages"' in head


# ------------------------------------------------------------------------------------------------
# The published PAPO_eval snapshot
# ------------------------------------------------------------------------------------------------


def snapshot_splits(root: str | os.PathLike) -> dict[str, list[Path]]:
    """``{split: [parquet shards]}`` of a snapshot folder in the published layout (empty if not one)."""
    data = Path(root) / "data"
    splits: dict[str, list[Path]] = {}
    if data.is_dir():
        for path in sorted(data.glob("*.parquet")):
            match = _SHARD.match(path.name)
            if match:
                splits.setdefault(match["split"], []).append(path)
    return splits


def papo_eval_root(source: str | os.PathLike) -> Path | None:
    """The snapshot folder for a PAPO_eval source (local folder, or the Hub id via the HF cache), else None."""
    path = Path(source)
    if path.is_dir():
        return path if _has_messages_parquet(path) else None
    if str(source).strip("/").casefold() == PAPO_EVAL_REPO.casefold():
        return _snapshot_from_hub(PAPO_EVAL_REPO, ["data/*.parquet"])
    return None


def _has_messages_parquet(root: Path) -> bool:
    import pyarrow.parquet as pq

    shards = [p for paths in snapshot_splits(root).values() for p in paths]
    return bool(shards) and "messages" in pq.read_schema(shards[0]).names


def _snapshot_from_hub(repo_id: str, allow_patterns: list[str]) -> Path:
    """``huggingface_hub.snapshot_download`` (the cached copy when offline) with a message that says how."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=allow_patterns))
    except Exception as err:  # offline with no cache, no access, network errors
        raise ValueError(
            f"could not get {repo_id} ({', '.join(allow_patterns)}) from the Hub or the HF cache: "
            f"{type(err).__name__}: {err}. Download it ahead of time with `hf download {repo_id} --repo-type "
            "dataset` (or `--local-dir X` and pass --data X)."
        ) from err


def select_splits(splits: Iterable[str], benchmarks: Iterable[str] | None) -> list[str]:
    """The splits named in `benchmarks` (Table 1 names or split names, any case), in the snapshot's order."""
    splits = list(splits)
    if benchmarks is None:
        return splits
    wanted = [b.strip() for b in benchmarks if b.strip()]
    by_name = {canonical_name(s): s for s in splits}
    chosen: list[str] = []
    for name in wanted:
        exact = [s for s in splits if s.casefold() == name.casefold()]
        split = exact[0] if exact else by_name.get(canonical_name(name))
        if split is None:
            known = ", ".join(f"{canonical_name(s)} ({s})" for s in splits)
            raise ValueError(
                f"--benchmarks: {name!r} is not a split of this PAPO_eval snapshot; it has {known}"
            )
        if split not in chosen:
            chosen.append(split)
    return [s for s in splits if s in chosen]


def _zip_for(root: Path, split: str) -> Path | None:
    zips = sorted(root.glob("*.zip"))
    name = canonical_name(split)
    published = PUBLISHED_SPLITS.get(name, (None, 0))[0]
    for candidate in zips:
        if candidate.name in (f"{split}{_ZIP_SUFFIX}", published):
            return candidate
    matches = [
        z for z in zips if canonical_name(z.name.removesuffix(_ZIP_SUFFIX).removesuffix(".zip")) == name
    ]
    return matches[0] if len(matches) == 1 else None


def load_papo_eval(
    root: str | os.PathLike,
    benchmarks: Iterable[str] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    hub_repo: str | None = None,
) -> list[EvalSet]:
    """Every selected split of a PAPO_eval snapshot as :class:`EvalSet` s named with Table 1's names.

    The snapshot is only read: each split's zip is extracted (once, safely) under `cache_dir`. Row
    counts that differ from the published ones are warned about with the split named.
    """
    root = Path(root)
    splits = snapshot_splits(root)
    if not splits:
        raise ValueError(f"{root}: no data/<split>-00000-of-00001.parquet files (the PAPO_eval layout)")
    out = []
    for split in select_splits(splits, benchmarks):
        name = canonical_name(split)
        dataset = _load_snapshot_split(root, split, splits[split], cache_dir)
        out.append(EvalSet(name, dataset, PAPO_EVAL_REPO if _is_published_size(name, len(dataset)) else None))
    return out


def _load_snapshot_split(root: Path, split: str, shards: list[Path], cache_dir) -> Dataset:
    name = canonical_name(split)
    zip_path = _zip_for(root, split)
    if zip_path is None and _is_hf_snapshot(root):
        expected = PUBLISHED_SPLITS.get(name, (f"{split}{_ZIP_SUFFIX}", 0))[0]
        snapshot = _snapshot_from_hub(PAPO_EVAL_REPO, [expected])
        zip_path = _zip_for(snapshot, split)
    image_roots = [extract_zip_cached(zip_path, cache_dir)] if zip_path is not None else []
    image_roots.append(root)  # images already extracted inside a --local-dir copy (as PAPO-Eval does)
    where_zip = zip_path.name if zip_path is not None else f"no {split}{_ZIP_SUFFIX} at {root}"

    def resolve(image_path: str, where: str) -> Path:
        found = find_image(image_roots, image_path, where)
        if found is not None:
            return found
        raise FileNotFoundError(
            f"{where}: image {image_path!r} is not in the split's images ({where_zip}); the snapshot may be "
            "incomplete: download it again with `hf download PAPO-Galaxy/PAPO_eval --repo-type dataset`"
        )

    table = datasets.Dataset.from_parquet([str(p) for p in shards], keep_in_memory=True)
    dataset = _rows_from_records(table, f"{split} (data/{shards[0].name})", resolve)
    expected_rows = PUBLISHED_SPLITS.get(name, (None, None))[1]
    if expected_rows is not None and len(dataset) != expected_rows:
        message = (
            f"PAPO_eval split {split!r} ({name}) has {len(dataset)} rows; the published split has "
            f"{expected_rows}: results are not comparable with the paper's"
        )
        warnings.warn(message, stacklevel=3)
        logger.warning(message)
    return dataset


def _is_hf_snapshot(root: Path) -> bool:
    return root.parent.name == "snapshots" and root.parent.parent.name.startswith("datasets--")


__all__ = [
    "EVAL_FEATURES",
    "EvalSet",
    "PAPO_EVAL_REPO",
    "PUBLISHED_SPLITS",
    "UnsafeArchiveError",
    "is_sharegpt_source",
    "load_eval_set",
    "load_eval_sets",
    "load_papo_eval",
    "load_sharegpt_eval",
    "papo_eval_root",
    "select_splits",
    "snapshot_splits",
]
