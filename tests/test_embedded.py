"""The embedded defaults (papo.embedded): the shipped warm start + PAPO-G adapter, and the fallbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from papo import embedded


def test_the_warm_start_ships_and_loads_as_float32():
    from papo.modeling import load_vlm

    path = embedded.shipped_warm_start()
    assert path == embedded.WARM_START_ASSET
    assert (path / "model.safetensors").stat().st_size < 6_000_000, "keep the shipped weights small"
    model, processor = load_vlm(path)  # dtype="auto": config.json says float32 (weights stored in bf16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 3_000_000
    assert processor.tokenizer.padding_side == "left"
    record = json.loads((path / "warm_start.json").read_text())
    assert record["config"]["max_steps"] > 0 and record["train_seconds"] > 0


def test_the_shipped_papo_adapter_changes_the_warm_start():
    from papo.evaluation.run import load_model_and_adapter

    model, processor = load_model_and_adapter(
        str(embedded.WARM_START_ASSET), str(embedded.shipped_papo_adapter())
    )
    lora = {name: p for name, p in model.named_parameters() if "lora_B" in name}
    assert lora and any(p.abs().sum() > 0 for p in lora.values()), "the adapter's LoRA B weights are all zero"
    ids = processor.tokenizer("What number is shown?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        papo = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert not torch.allclose(papo, base)


def test_embedded_model_is_the_shipped_warm_start(tmp_path):
    assert embedded.embedded_model(tmp_path) == embedded.WARM_START_ASSET
    assert not any(tmp_path.iterdir()), "nothing is built when the package ships the warm start"


def test_without_the_shipped_copy_the_warm_start_is_trained_under_root(tmp_path, monkeypatch, capsys):
    import papo.warm_start

    calls = []
    monkeypatch.setattr(embedded, "shipped_warm_start", lambda: None)
    monkeypatch.setattr(
        papo.warm_start, "train_warm_start", lambda path: calls.append(Path(path)) or Path(path)
    )
    assert embedded.embedded_model(tmp_path) == tmp_path / "warm-start-qwen2_5_vl"
    assert calls == [tmp_path / "warm-start-qwen2_5_vl"]
    assert "Training the warm-start Qwen2.5-VL" in capsys.readouterr().out


def test_qwen3_vl_is_the_tiny_random_model(tmp_path):
    path = embedded.embedded_model(tmp_path, "qwen3_vl")
    assert path == tmp_path / "tiny-qwen3_vl" and (path / "config.json").exists()
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen3_vl"


@pytest.mark.parametrize("name", ["WARM_START_ASSET", "PAPO_ADAPTER_ASSET"])
def test_assets_are_package_data(name):
    """pyproject's package-data must carry papo/assets/* into wheels (not only editable installs)."""
    import tomllib

    pyproject = tomllib.loads((Path(embedded.__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["papo"]
    relative = getattr(embedded, name).relative_to(Path(embedded.__file__).parent)
    assert any(Path(relative, "x").match(pattern) for pattern in patterns), patterns


def test_shipped_cards_and_configs_name_no_path_of_the_machine_that_built_them():
    from papo.embedded import ASSETS_DIR

    texts = [p for p in ASSETS_DIR.rglob("*") if p.suffix in (".md", ".yaml", ".json") and p.is_file()]
    assert texts
    for path in texts:
        text = path.read_text()
        for local in ("/work/", "/tmp/", "/home/", "/root/"):
            assert local not in text, f"{path.relative_to(ASSETS_DIR)} names {local}"
