"""Eval sets: the training schema, or the published PAPO_eval layout (ShareGPT JSON + image folder).

PAPO_eval (``PAPO-Galaxy/PAPO_eval``) distributes each benchmark as a ShareGPT-style JSON file —
records with ``messages`` (a user turn containing ``<image>``, an assistant turn holding the
answer) and ``images`` (paths relative to the JSON's folder) — next to its image folder. Both
layouts are turned into the training schema (``problem``, ``answer``, ``images``, ``id``) so that
the same prompt builder, checks and grader serve training and evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
from datasets import Dataset

from papo.data.loading import load_papo_dataset

EVAL_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
    }
)


def is_sharegpt_source(source: str | os.PathLike) -> bool:
    """A ShareGPT JSON file, or a folder holding exactly one such JSON file."""
    return _sharegpt_file(Path(source)) is not None


def load_sharegpt_eval(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a PAPO_eval split (ShareGPT JSON) into the training schema.

    `image_dir` is where relative image paths start (default: the JSON file's folder). A record
    without a user or assistant turn raises ValueError naming the record and the field.
    """
    json_path = _sharegpt_file(Path(path))
    if json_path is None:
        raise FileNotFoundError(f"{path}: no ShareGPT JSON file (a list of records with 'messages')")
    base = Path(image_dir) if image_dir is not None else json_path.parent
    records = json.loads(json_path.read_text())
    rows = {"id": [], "problem": [], "answer": [], "images": []}
    for index, record in enumerate(records):
        turns = {m.get("role"): m.get("content") for m in record.get("messages", [])}
        for role in ("user", "assistant"):
            if not isinstance(turns.get(role), str):
                raise ValueError(
                    f"{json_path.name} record {index}, field 'messages': no {role} turn with text content"
                )
        paths = record.get("images") or []
        rows["id"].append(str(record.get("id", index)))
        rows["problem"].append(turns["user"])
        rows["answer"].append(turns["assistant"])
        rows["images"].append([{"path": str(_resolve(base, p)), "bytes": None} for p in paths])
    return Dataset.from_dict(rows, features=EVAL_FEATURES)


def load_eval_set(source: str | os.PathLike, split: str = "test", image_dir: str | os.PathLike | None = None):
    """(name, dataset in the training schema) for a training-schema source or a ShareGPT split."""
    if is_sharegpt_source(source):
        json_path = _sharegpt_file(Path(source))
        return json_path.stem, load_sharegpt_eval(source, image_dir)
    dataset = load_papo_dataset(source, split)
    name = Path(str(source).rstrip("/")).name or str(source)
    if "id" not in dataset.column_names:
        dataset = dataset.add_column("id", [str(i) for i in range(len(dataset))])
    return name, dataset


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


def _resolve(base: Path, image_path: str) -> Path:
    path = Path(image_path)
    return path if path.is_absolute() else base / path
