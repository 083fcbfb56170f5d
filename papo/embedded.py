"""The embedded defaults every command falls back on offline: a small model and the synthetic data.

* Qwen2.5-VL: the **warm start** (`papo.warm_start`: a ~2.4M-parameter Qwen2.5-VL fine-tuned on the
  handwritten-digit tasks, so it reads the image and RL has reward to work with). It ships in the package (``papo/assets``, weights
  stored in bf16, loaded as float32); without the shipped copy it is trained once under the root
  folder (about ten minutes on two CPU cores, with a progress bar).
* Qwen3-VL: the tiny random-weight model (`papo.tiny`), built under the root folder.
* The PAPO-G adapter trained from the warm start by the mini reproduction (its median seed), shipped next
  to it: the Space's and notebooks' default "PAPO" model, the warm start being the baseline; with it, the
  held-out questions on which the two answer differently (the Space's first examples).
* The synthetic perception dataset (train/test), built under the root folder.

The root folder is ``outputs/`` by default, so `papo train`, `papo eval` and `papo demo` agree on
where things live. Rebuild the shipped assets with ``python -m benchmarks.mini_repro --export``.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).parent / "assets"
WARM_START_ASSET = ASSETS_DIR / "warm-start-qwen2_5_vl"
PAPO_ADAPTER_ASSET = ASSETS_DIR / "papo-g-adapter"


def shipped_warm_start() -> Path | None:
    """The warm start shipped in the package, or None if this install lacks it."""
    return WARM_START_ASSET if (WARM_START_ASSET / "config.json").exists() else None


def shipped_papo_adapter() -> Path | None:
    """The PAPO-G adapter (on the warm start) shipped in the package, or None."""
    return PAPO_ADAPTER_ASSET if (PAPO_ADAPTER_ASSET / "adapter_model.safetensors").exists() else None


SPACE_EXAMPLES_FILE = "space_examples.json"


def shipped_space_examples() -> list[dict]:
    """Held-out digit questions on which the shipped warm start and PAPO-G adapter answer differently
    (picked by ``python -m benchmarks.mini_repro --export``): ``[{"seed", "index", "task", ...}]``, or []."""
    import json

    path = PAPO_ADAPTER_ASSET / SPACE_EXAMPLES_FILE
    return json.loads(path.read_text())["examples"] if path.exists() else []


def embedded_model(root: str | os.PathLike, arch: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """The default model of `arch`: the warm start for Qwen2.5-VL (`seed` unused), else a tiny random model.

    Qwen2.5-VL: the shipped warm start, else ``<root>/warm-start-qwen2_5_vl`` (trained if absent).
    Qwen3-VL: ``<root>/tiny-qwen3_vl`` (random weights from `seed`, built if absent).
    """
    if arch == "qwen2_5_vl":
        shipped = shipped_warm_start()
        if shipped is not None:
            return shipped
        from papo.warm_start import train_warm_start

        path = Path(root) / "warm-start-qwen2_5_vl"
        if not (path / "config.json").exists():
            print(f"Training the warm-start Qwen2.5-VL in {path} (once; 25-45 min on 2 CPU cores) ...")
        return train_warm_start(path)
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
