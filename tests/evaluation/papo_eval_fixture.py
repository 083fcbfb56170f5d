"""A small PAPO_eval snapshot in the published layout, built locally (the Hub is not reachable in tests).

``data/<split>-00000-of-00001.parquet`` with ``messages`` (ShareGPT), ``images`` (relative path strings
``./data/images/<folder>/<file>.png``) and ``id``; one ``<split>_images.zip`` per split at the root
whose members are ``<folder>/<file>.png``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import datasets
from PIL import Image

from papo.data.loading import PROMPT_SUFFIX

# split -> (image folder inside the zip, [(question, gold answer)])
SPLITS = {
    "BUAADreamer_clevr_count_70k": (
        "clevr_count",
        [("How many objects are there?", "3"), ("How many cubes?", "2"), ("How many spheres?", "0")],
    ),
    "lscpku_LogicVista": (
        "logicvista",
        [
            ("Which options are right? A. x B. y C. z", "A, C"),
            ("Pick one. A. x B. y", "B"),
        ],
    ),
}


def png_bytes(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40 + 4 * index, 32), (30 * index % 255, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_snapshot(root: Path, splits: dict = SPLITS) -> Path:
    (root / "data").mkdir(parents=True)
    for split, (folder, items) in splits.items():
        records = {"messages": [], "images": [], "id": []}
        with zipfile.ZipFile(root / f"{split}_images.zip", "w") as archive:
            for i, (question, answer) in enumerate(items):
                archive.writestr(f"{folder}/{i}.png", png_bytes(i))
                user = f"<image>{question}\n\n{PROMPT_SUFFIX}"
                records["messages"].append(
                    [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
                )
                records["images"].append([f"./data/images/{folder}/{i}.png"])
                records["id"].append(f"{split}-{i}")
        datasets.Dataset.from_dict(records).to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256 of content, or 'link -> target'} of everything under `root`."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link -> {path.readlink()}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out
