"""Constants and helpers shared by the Hub publishing tests (imported by conftest.py and the tests)."""

from __future__ import annotations

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
        "Geo3k": {"accuracy": 50.0, "n": 2, "perception_kl_mean": 0.12, "perception_kl_share_above": 0.3},
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


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` with the venv's Python in a fresh process; stdout/stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
