"""Helpers shared by the Space's tests (a plain module: test files never import conftest)."""

from __future__ import annotations

import socket
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parents[2] / "space"
MAX_NEW_TOKENS = 24  # small: the tests are about plumbing, the tiny model writes gibberish anyway


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_test_adapter(base_dir: Path, adapter_dir: Path) -> Path:
    """A LoRA adapter on the tiny model's language projections with random (non-zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from papo.modeling import LANGUAGE_LORA_TARGETS, load_vlm

    model, _ = load_vlm(base_dir)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=LANGUAGE_LORA_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(adapter_dir)
    return adapter_dir
