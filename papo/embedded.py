"""The embedded defaults every command falls back on offline: a tiny model and the synthetic data.

Built on first use under one root folder (``outputs/`` by default) and reused afterwards, so
`papo train`, `papo eval` and `papo demo` agree on where they live.
"""

from __future__ import annotations

import os
from pathlib import Path


def embedded_model(root: str | os.PathLike, arch: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """`<root>/tiny-<arch>`: the tiny random-weight model + processor, built if absent."""
    from papo.tiny import save_tiny_vlm

    path = Path(root) / f"tiny-{arch}"
    if not (path / "config.json").exists():
        print(f"Building the tiny {arch} model in {path} ...")
    return save_tiny_vlm(path, arch, seed=seed)


def embedded_dataset(root: str | os.PathLike, seed: int = 0) -> Path:
    """`<root>/synthetic`: the synthetic perception dataset (train/test), built if absent."""
    from papo.data.synthetic import save_synthetic_dataset

    path = Path(root) / "synthetic"
    if not path.exists():
        print(f"Building the synthetic perception dataset in {path} ...")
        save_synthetic_dataset(path, seed=seed)
    return path
