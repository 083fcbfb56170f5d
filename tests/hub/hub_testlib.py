"""Constants and helpers shared by the Hub publishing tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# A token-shaped secret, unique per session so that "it appears nowhere" is a meaningful check.
TEST_TOKEN = "hf_papoTest" + secrets.token_hex(12)

PAPO_CONFIG = {
    "model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct",
    "dataset_name": "PAPOGalaxy/PAPO_ViRL39K_train",
    "load_in_4bit": False,
    "perception_loss": True,
    "perception_kl_coef": 0.02,
    "perception_kl_estimator": "k3",
    "mask_ratio": 0.6,
    "mask_patch_size": 14,
    "entropy_original_coef": 0.0,
    "entropy_masked_coef": 0.0,
    "loss_type": "bnpo",
    "beta": 0.01,
    "epsilon": 0.2,
    "epsilon_high": 0.3,
    "num_generations": 5,
    "learning_rate": 1.0e-5,
    "lora_r": 4,
    "lora_alpha": 8,
    "dynamic_sampling": False,
    "hub_token": None,
    "output_dir": "outputs/papo-g-tiny",
}


EVAL_RESULTS = {
    "model": "Qwen/Qwen2.5-VL-3B-Instruct",
    "adapter": "papo-tester/papo-g-tiny",
    "protocol": {
        "samples_per_question": 2,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 64,
        "grader": "mathruler",
        "mask_ratio": 0.6,
    },
    "benchmarks": {
        "Geo3k": {
            "accuracy": 50.0,
            "n": 2,
            "perception_kl_mean": 0.12,
            "perception_kl_share_above": 0.3,
            "dataset": "PAPO-Galaxy/PAPO_eval",  # as `papo eval` records a complete published split
            "split_rows": 2,
            "complete": True,
        },
        "count_shapes": {
            "accuracy": 25.0,
            "n": 2,
            "perception_kl_mean": 0.2,
            "perception_kl_share_above": 0.4,
        },
    },
    "groups": {"General": 50.0, "Vision-dependent": 25.0},
    "overall": 37.5,
}


# The shapes of Qwen2.5-VL-3B-Instruct's config (text hidden 2048, vision hidden 1280), for the base check.
QWEN25_VL_3B_SHAPES = {
    "text_config": {
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
    },
    "vision_config": {
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
    },
}


def cache_model_config(repo_id: str, config: dict) -> Path:
    """Put `config` in the HF cache as the config.json of model `repo_id` (what `hf download` leaves)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    revision = "1" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    return repo


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` with the venv's Python in a fresh process; stdout/stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
