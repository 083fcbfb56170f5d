"""The Space's models (space/space_models.py): the embedded pair, loading, its status and each deployment."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image
from space_comparison import compare
from space_config import SpaceConfig
from space_models import OFFICIAL_MAX_PIXELS, OFFICIAL_MIN_PIXELS, Models, ensure_embedded_models
from space_uploads import SpaceError

# --- embedded models ---------------------------------------------------------------------------------


def _no_training(*args, **kwargs):
    raise AssertionError("the models are present: nothing should be trained")


def test_embedded_models_are_the_shipped_warm_start_and_papo_adapter(tmp_path, monkeypatch):
    from papo import embedded

    monkeypatch.setattr(subprocess, "run", _no_training)
    base, adapter = ensure_embedded_models(tmp_path / "cache")
    assert (base, adapter) == (embedded.WARM_START_ASSET, embedded.PAPO_ADAPTER_ASSET)
    assert not (tmp_path / "cache").exists(), "nothing is built when the package ships the models"


@pytest.fixture
def without_shipped_models(monkeypatch):
    from papo import embedded

    monkeypatch.setattr(embedded, "shipped_warm_start", lambda: None)
    monkeypatch.setattr(embedded, "shipped_papo_adapter", lambda: None)


def test_embedded_models_in_the_cache_are_reused(space_cache, monkeypatch, without_shipped_models):
    import papo.embedded

    monkeypatch.setattr(subprocess, "run", _no_training)
    monkeypatch.setattr(papo.embedded, "embedded_model", lambda root: Path(root) / "tiny-qwen2_5_vl")
    base, adapter = ensure_embedded_models(space_cache)
    assert (base, adapter) == (space_cache / "tiny-qwen2_5_vl", space_cache / "demo-train")


def _fake_tiny(path, *args, **kwargs):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


def test_embedded_models_are_built_on_first_start(tmp_path, monkeypatch, without_shipped_models):
    """Not shipped: the base is built, then `papo train` (the README's demo run) into a folder renamed into place."""
    import papo.embedded

    calls, messages = [], []

    def fake_train(command, stdout, **kwargs):
        calls.append(command)
        out = Path(command[command.index("--output_dir") + 1])
        out.mkdir(parents=True)
        (out / "adapter_model.safetensors").write_bytes(b"weights")
        stdout.write("step 10/10\n")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(papo.embedded, "embedded_model", _fake_tiny)
    monkeypatch.setattr(subprocess, "run", fake_train)
    base, adapter = ensure_embedded_models(tmp_path / "cache", log=messages.append)
    [command] = calls
    assert command[1:4] == ["-m", "papo.cli", "train"]
    assert command[command.index("--embedded_dir") + 1] == str(tmp_path / "cache")
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "cache" / ".demo-train.partial").exists()
    assert any("Training the embedded demo PAPO adapter" in m for m in messages)
    assert "step 10/10" in (tmp_path / "cache" / "demo-train.log").read_text()


def test_embedded_models_failed_training_leaves_no_adapter(tmp_path, monkeypatch, without_shipped_models):
    import papo.embedded

    def failing_train(command, stdout, **kwargs):
        stdout.write("Traceback: something broke\n")
        return subprocess.CompletedProcess(command, 2)

    monkeypatch.setattr(papo.embedded, "embedded_model", _fake_tiny)
    monkeypatch.setattr(subprocess, "run", failing_train)
    with pytest.raises(RuntimeError, match="something broke"):
        ensure_embedded_models(tmp_path, log=lambda message: None)
    assert not (tmp_path / "demo-train").exists()


# --- loading and deployments -------------------------------------------------------------------------


def test_models_that_fail_to_load_say_why_and_refuse_requests(tiny_base, tmp_path):
    config = SpaceConfig(base_model=str(tiny_base), adapter=str(tmp_path / "missing-adapter"))
    models = Models(config)
    models.load_in_background().join(timeout=60)
    assert models.state == "failed"
    assert "the models failed to load" in models.status() and "missing-adapter" in models.status()
    with pytest.raises(SpaceError, match="failed to load"):
        compare(models, Image.new("RGB", (32, 32)), "What is this?")


def test_models_not_ready_yet():
    models = Models(SpaceConfig())
    with pytest.raises(SpaceError, match="not ready yet"):
        compare(models, Image.new("RGB", (32, 32)), "What is this?")


def test_background_loading_reports_its_status(space_config):
    models = Models(space_config)
    assert models.status().startswith("**Waiting:**")
    models.load_in_background().join(timeout=120)
    assert models.ready and models.status().startswith("**Ready.** Baseline:")
    assert "embedded demo models" in models.status()


def test_adapter_only_deployment_in_4_bit(space_cache, tiny_base, example_image):
    """PAPO_ADAPTER alone names its base model; non-embedded models get the official pixel bounds."""
    config = SpaceConfig.from_env(
        {"PAPO_ADAPTER": str(space_cache / "demo-train"), "PAPO_LOAD_IN_4BIT": "1", "PAPO_DEVICE": "cpu"}
    )
    models = Models(config)
    models.load()
    assert models.names["baseline"] == str(tiny_base)
    assert dict(models.processor.image_processor.size) == {
        "shortest_edge": OFFICIAL_MIN_PIXELS,
        "longest_edge": OFFICIAL_MAX_PIXELS,
    }
    assert any(type(m).__name__ == "Linear4bit" for m in models.model.modules())
    result = compare(models, example_image, "Which month?", None, 0, 1.0, 4, 0.6)
    assert all(len(a.kl) == len(a.token_ids) > 0 for a in result.answers.values())


def test_full_papo_model_deployment(tiny_base, example_image):
    """PAPO_MODEL: two separate models (here the same weights, so the same answer and the same KL)."""
    base = str(tiny_base)
    models = Models(SpaceConfig.from_env({"PAPO_BASE_MODEL": base, "PAPO_MODEL": base}))
    models.load()
    assert models.papo is not None and models.papo is not models.model
    result = compare(models, example_image, "Which month?", None, 1, 1.0, 6, 0.6)
    baseline, papo = result.answers["baseline"], result.answers["papo"]
    assert baseline.token_ids == papo.token_ids and baseline.kl == pytest.approx(papo.kl)
