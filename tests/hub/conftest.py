"""Fixtures for the Hub publishing tests: a fake Hub on loopback, a real tiny PEFT adapter, an eval run.

Pushes run in a **subprocess** (``run_python``): huggingface_hub reads ``HF_ENDPOINT`` and offline mode
when it is imported, and the suite's conftest sets ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` for the
whole process. The subprocess gets ``HF_ENDPOINT`` = the fake Hub, ``HF_HUB_DISABLE_XET=1`` and no offline
variables; everything else (the sandboxed HOME / HF_HOME) is inherited.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import yaml
from fake_hub import FakeHub
from hub_testlib import (
    EVAL_RESULTS,
    PAPO_CONFIG,
    QWEN25_VL_3B_SHAPES,
    REPO_ROOT,
    TEST_TOKEN,
    cache_model_config,
)


@pytest.fixture
def hub():
    server = FakeHub(token=TEST_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def push_env(hub) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")
    }
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_TOKEN=TEST_TOKEN,
        PYTHONPATH=str(REPO_ROOT),
        NO_PROXY="127.0.0.1,localhost",
    )
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(proxy, None)
    return env


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_model_dirs) -> Path:
    """The session's tiny Qwen2.5-VL (tests/conftest.py), shared with the rest of the suite: read only."""
    return Path(tiny_model_dirs["qwen2_5_vl"])


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory, tiny_base_dir) -> Path:
    """A real LoRA adapter on the tiny Qwen2.5-VL, saved like `papo train` leaves it (plus junk to skip)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path_factory.mktemp("hub-adapter") / "run"
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(tiny_base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny_base_dir).save_pretrained(out)
    (out / "papo_config.yaml").write_text(yaml.safe_dump(PAPO_CONFIG, sort_keys=True))
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.25, "perception_kl": 0.01}) + "\n")
    # What a TRL run also leaves behind and must never be uploaded.
    (out / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (out / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (out / "rng_state.pth").write_bytes(b"\x80\x04pickle")
    (out / "README.md").write_text("---\nlibrary_name: transformers\n---\n# TRL's card\n")
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"old")
    return out


@pytest.fixture
def adapter_copy(tiny_adapter_dir, tmp_path) -> Path:
    """A private copy of the adapter directory that a test may change."""
    import shutil

    return Path(shutil.copytree(tiny_adapter_dir, tmp_path / "adapter"))


def _png(colour: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def eval_run_dir(tmp_path_factory) -> Path:
    """A `papo eval` output directory: results.json/md, comparison.png, predictions/<benchmark>.parquet."""
    import datasets

    out = tmp_path_factory.mktemp("hub-eval") / "eval"
    (out / "predictions").mkdir(parents=True)
    from papo.evaluation.run import PREDICTION_FEATURES as features  # the schema `papo eval` writes

    for benchmark, colours in (("Geo3k", ("red", "blue")), ("count_shapes", ("green", "white"))):
        rows = {k: [] for k in features}
        for i, colour in enumerate(colours):
            rows["id"].append(f"{benchmark}-{i}")
            rows["benchmark"].append(benchmark)
            rows["question"].append(f"What colour is the square? ({i})")
            rows["image"].append({"bytes": _png(colour), "path": None})
            rows["reference"].append(colour)
            rows["samples"].append([f"\\boxed{{{colour}}}", "no idea"])
            rows["extracted"].append([colour, None])
            rows["correct"].append([True, False])
            rows["accuracy"].append(0.5)
            rows["tokens"].append([["\\boxed{", colour, "}"], ["no", " idea"]])
            rows["perception_kl"].append([[0.015625, 0.875, 0.03125], [0.0, 0.125]])  # exact in float32
            rows["visual_dependency"].append([[0.0078125, 0.5, 0.015625], [0.0, 0.0625]])
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            out / "predictions" / f"{benchmark}.parquet"
        )
    (out / "results.json").write_text(json.dumps(EVAL_RESULTS, indent=2))
    (out / "results.md").write_text(
        "| Benchmark | Accuracy (%) |\n|---|---|\n| Geo3k | 50.00 |\n| count_shapes | 25.00 |\n| **Overall** | **37.50** |\n"
    )
    (out / "comparison.png").write_bytes(_png("black"))
    return out


@pytest.fixture
def cached_base_configs(tiny_base_dir):
    """Base-model configs in the HF cache: the tiny model's as ``papo-tests/tiny-qwen2_5_vl``, and one with the
    shapes of Qwen2.5-VL-3B as ``Qwen/Qwen2.5-VL-3B-Instruct``. Removed afterwards (the cache is per session)."""
    import shutil

    tiny = json.loads((tiny_base_dir / "config.json").read_text())
    big = json.loads(json.dumps(tiny))
    for section, values in QWEN25_VL_3B_SHAPES.items():
        big[section].update(values)
    repos = [
        cache_model_config("papo-tests/tiny-qwen2_5_vl", tiny),
        cache_model_config("Qwen/Qwen2.5-VL-3B-Instruct", big),
    ]
    yield
    for repo in repos:
        shutil.rmtree(repo, ignore_errors=True)
