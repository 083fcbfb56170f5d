"""The Space's logic (space/papo_space.py) without the UI: config, images, questions, tokens, comparison."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import papo_space as ps
import pytest
from PIL import Image
from space_testing import MAX_NEW_TOKENS

# --- configuration -----------------------------------------------------------------------------------


def test_config_defaults_are_the_embedded_models():
    config = ps.SpaceConfig.from_env({})
    assert config.embedded
    assert config.cache_dir == ps.SPACE_DIR / ".cache"
    assert (config.dtype, config.load_in_4bit, config.concurrency) == ("auto", False, 1)


def test_config_reads_a_real_deployment():
    config = ps.SpaceConfig.from_env(
        {
            "PAPO_BASE_MODEL": "Qwen/Qwen2.5-VL-3B-Instruct",
            "PAPO_ADAPTER": "someone/papo-g-qwen2.5vl-3b-lora",
            "PAPO_DEVICE": "cuda",
            "PAPO_DTYPE": "bfloat16",
            "PAPO_LOAD_IN_4BIT": "true",
            "PAPO_CONCURRENCY": "2",
        }
    )
    assert not config.embedded
    assert (config.device, config.dtype, config.load_in_4bit, config.concurrency) == (
        "cuda",
        "bfloat16",
        True,
        2,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAPO_ADAPTER": "a", "PAPO_MODEL": "b", "PAPO_BASE_MODEL": "c"}, "not both"),
        ({"PAPO_BASE_MODEL": "c"}, "also set PAPO_ADAPTER"),
        ({"PAPO_MODEL": "b"}, "also set PAPO_BASE_MODEL"),
        ({"PAPO_DTYPE": "float8"}, "PAPO_DTYPE"),
        ({"PAPO_LOAD_IN_4BIT": "maybe"}, "PAPO_LOAD_IN_4BIT"),
        ({"PAPO_CONCURRENCY": "0"}, "PAPO_CONCURRENCY"),
        ({"PAPO_MAX_NEW_TOKENS": "4096"}, "PAPO_MAX_NEW_TOKENS_LIMIT"),
    ],
)
def test_config_errors_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        ps.SpaceConfig.from_env(env)


# --- embedded models ---------------------------------------------------------------------------------


def _no_training(*args, **kwargs):
    raise AssertionError("the models are present: nothing should be trained")


def test_embedded_models_are_the_shipped_warm_start_and_papo_adapter(tmp_path, monkeypatch):
    from papo import embedded

    monkeypatch.setattr(subprocess, "run", _no_training)
    base, adapter = ps.ensure_embedded_models(tmp_path / "cache")
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
    base, adapter = ps.ensure_embedded_models(space_cache)
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
    base, adapter = ps.ensure_embedded_models(tmp_path / "cache", log=messages.append)
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
        ps.ensure_embedded_models(tmp_path, log=lambda message: None)
    assert not (tmp_path / "demo-train").exists()


def test_models_that_fail_to_load_say_why_and_refuse_requests(space_cache, tmp_path):
    config = ps.SpaceConfig(
        base_model=str(space_cache / "tiny-qwen2_5_vl"), adapter=str(tmp_path / "missing-adapter")
    )
    models = ps.Models(config)
    models.load_in_background().join(timeout=60)
    assert models.state == "failed"
    assert "the models failed to load" in models.status() and "missing-adapter" in models.status()
    with pytest.raises(ps.SpaceError, match="failed to load"):
        ps.compare(models, Image.new("RGB", (32, 32)), "What is this?")


def test_models_not_ready_yet():
    models = ps.Models(ps.SpaceConfig())
    with pytest.raises(ps.SpaceError, match="not ready yet"):
        ps.compare(models, Image.new("RGB", (32, 32)), "What is this?")


# --- images ------------------------------------------------------------------------------------------


def _save(image: Image.Image, path: Path, **kwargs) -> str:
    image.save(path, **kwargs)
    return str(path)


def test_rgb_image_passes_unchanged(tmp_path):
    original = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    image, notes = ps.load_image(_save(original, tmp_path / "x.png"), pixel_budget=16384)
    assert image.mode == "RGB" and notes == []
    assert np.array_equal(np.asarray(image), np.asarray(original))


def test_grayscale_rgba_palette_and_16_bit_images_become_rgb_with_a_note(tmp_path):
    gray = Image.new("L", (40, 40), 128)
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red -> white
    palette = Image.new("RGB", (40, 40), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    sixteen = Image.fromarray((np.arange(1600, dtype=np.uint16) * 40).reshape(40, 40))  # mode I;16
    cases = {
        "gray.png": (gray, "grayscale"),
        "rgba.png": (rgba, "transparency"),
        "p.png": (palette, "palette"),
    }
    cases["16.png"] = (sixteen, "16-bit")
    for name, (original, word) in cases.items():
        image, notes = ps.load_image(_save(original, tmp_path / name), pixel_budget=16384)
        assert image.mode == "RGB" and image.size == (40, 40), name
        assert any(word in note for note in notes), (name, notes)
    rgba_image, _ = ps.load_image(str(tmp_path / "rgba.png"))
    assert rgba_image.getpixel((0, 0)) == (255, 255, 255)


def test_huge_image_is_downscaled_at_once(tmp_path):
    path = _save(Image.new("RGB", (10000, 10000), (250, 250, 250)), tmp_path / "big.png", compress_level=1)
    image, notes = ps.load_image(path, pixel_budget=16384)
    assert image.width * image.height <= ps.DOWNSCALE_FLOOR and image.size[0] == image.size[1]
    assert "10000x10000" in notes[0] and "downscaled" in notes[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some text, not an image", "is not an image this app can read"),
        (None, "could not be decoded"),  # a truncated PNG
    ],
)
def test_unreadable_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "upload.png"
    if content is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
        content = buffer.getvalue()[:60]
    path.write_bytes(content)
    with pytest.raises(ps.SpaceError, match=message):
        ps.load_image(str(path))


def test_no_image_missing_file_and_extreme_aspect_ratio(tmp_path):
    with pytest.raises(ps.SpaceError, match="No image"):
        ps.load_image(None)
    with pytest.raises(ps.SpaceError, match="could not be found"):
        ps.load_image(str(tmp_path / "gone.png"))
    with pytest.raises(ps.SpaceError, match="aspect ratio"):
        ps.load_image(Image.new("RGB", (1000, 2)))


def test_exif_rotation_and_animation_first_frame(tmp_path):
    upright = Image.new("RGB", (30, 20), (255, 0, 0))
    exif = upright.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated, notes = ps.load_image(_save(upright, tmp_path / "r.jpg", exif=exif))
    assert rotated.size == (20, 30) and any("EXIF" in n for n in notes)
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = _save(frames[0], tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    first, notes = ps.load_image(path)
    assert first.getpixel((5, 5))[0] > 200 and any("first frame" in n for n in notes)


# --- questions, settings, tokens ---------------------------------------------------------------------


def test_questions_are_checked():
    assert ps.clean_question("  <image>How many?  ", 2000) == "How many?"
    with pytest.raises(ps.SpaceError, match="question is empty"):
        ps.clean_question("   ", 2000)
    with pytest.raises(ps.SpaceError, match="20,000 characters long; the limit is 2,000"):
        ps.clean_question("x" * 20_000, 2000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": 1.5}, "Seed must be a whole number"),
        ({"temperature": float("nan")}, "Temperature must be between"),
        ({"max_new_tokens": 0}, "Max new tokens must be between 1 and 64"),
        ({"mask_ratio": "lots"}, "Mask ratio must be a number"),
    ],
)
def test_settings_are_checked(kwargs, message):
    values = {"seed": 0, "temperature": 1.0, "max_new_tokens": 8, "mask_ratio": 0.6} | kwargs
    with pytest.raises(ps.SpaceError, match=message):
        ps.Settings.checked(**values, max_tokens_limit=64)


# --- the comparison ----------------------------------------------------------------------------------


def test_compare_gives_both_answers_with_aligned_kl_and_the_training_mask(models, example_image):
    from papo.analysis import masked_copies
    from papo.masking import MaskingConfig

    result = ps.compare(models, example_image, "Which month is highest?", "Mar", 3, 1.0, MAX_NEW_TOKENS, 0.6)
    data = result.to_json()
    for side in ps.SIDES:
        answer = data[side]
        assert answer["answer"] and len(answer["token_ids"]) > 0
        assert (
            len(answer["tokens"])
            == len(answer["kl"])
            == len(answer["token_ids"])
            == len(answer["raw_tokens"])
        )
        assert all(v >= 0 for v in answer["kl"]) and max(answer["kl"]) > 0
        # d_t next to the full-vocabulary KL, token for token (what VPPO / PGPO act on)
        assert len(answer["visual_dependency"]) == len(answer["kl"])
        assert all(0 <= v <= 10 for v in answer["visual_dependency"]) and answer["mean_dependency"] >= 0
        assert answer["correct"] is False  # the embedded models never write "Mar" in a box
        assert len(answer["top_tokens"]) == min(ps.TOP_K, len(answer["kl"]))
    # The adapter changes the model: on this off-task question the sampled tokens may coincide, the
    # per-token KL (each side scored by its own model) cannot.
    assert data["baseline"]["kl"] != data["papo"]["kl"]
    assert data["kl_scale"] == max(max(data[s]["kl"]) for s in ps.SIDES)
    [expected] = masked_copies(
        result.prompt, [result.image], MaskingConfig(mask_ratio=0.6), 3, models.processor.image_processor
    )
    assert np.array_equal(np.asarray(result.masked_image), np.asarray(expected))
    again = ps.compare(models, example_image, "Which month is highest?", "Mar", 3, 1.0, MAX_NEW_TOKENS, 0.6)
    assert again.to_json()["papo"]["kl"] == data["papo"]["kl"]  # seeded: same seed, same everything


def test_baseline_is_the_base_model_without_the_adapter(models, example_image):
    from papo import embedded
    from papo.evaluation.run import eval_prompt, load_model_and_adapter
    from papo.generation import generate_completions

    result = ps.compare(models, example_image, "What is shown?", None, 5, 0.0, MAX_NEW_TOKENS, 0.6)
    assert models.names["baseline"] == str(embedded.WARM_START_ASSET)  # the embedded default
    base, processor = load_model_and_adapter(models.names["baseline"])
    [(_, ids)] = generate_completions(
        base, processor, [eval_prompt("<image>What is shown?")], [[result.image]],
        max_new_tokens=MAX_NEW_TOKENS, do_sample=False, show_progress=False,
    )  # fmt: skip
    assert result.answers["baseline"].token_ids == ids
    assert result.answers["papo"].correct is None  # no reference, no verdict


def test_remask_rescores_the_same_answers_with_another_mask(models, example_image):
    first = ps.compare(models, example_image, "Which month?", None, 0, 1.0, MAX_NEW_TOKENS, 0.6)
    other = ps.remask(models, first, 0.6, 1)
    assert other.settings.mask_seed == 1
    assert other.answers["papo"].token_ids == first.answers["papo"].token_ids
    assert other.answers["papo"].kl != first.answers["papo"].kl
    assert not np.array_equal(np.asarray(other.masked_image), np.asarray(first.masked_image))
    nothing_masked = ps.remask(models, first, 0.0, 0)
    assert nothing_masked.kl_scale == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ps.SpaceError, match="Run a comparison first"):
        ps.remask(models, None, 0.6, 1)


def test_examples_are_generated_small_and_complete(space_cache, app_url):
    from papo import embedded
    from papo.data.digits import DIGIT_TASKS

    examples = ps.make_examples(space_cache / "examples")
    assert [e.source for e in examples[-3:]] == ["bundled"] * 3
    picked = embedded.shipped_space_examples()
    assert picked, "the shipped adapter lists the questions on which the two models differ"
    assert [e.question for e in examples[: len(picked)]] == [item["question"] for item in picked]
    assert {e.source.split(":")[1] for e in examples[:-3]} == set(DIGIT_TASKS)
    for example in examples:
        assert Path(example.image).stat().st_size < 50_000 and example.question and example.reference


def test_background_loading_reports_its_status(space_config):
    models = ps.Models(space_config)
    assert models.status().startswith("**Waiting:**")
    models.load_in_background().join(timeout=120)
    assert models.ready and models.status().startswith("**Ready.** Baseline:")
    assert "embedded demo models" in models.status()


def test_adapter_only_deployment_in_4_bit(space_cache, example_image):
    """PAPO_ADAPTER alone names its base model; non-embedded models get the official pixel bounds."""
    config = ps.SpaceConfig.from_env(
        {"PAPO_ADAPTER": str(space_cache / "demo-train"), "PAPO_LOAD_IN_4BIT": "1", "PAPO_DEVICE": "cpu"}
    )
    models = ps.Models(config)
    models.load()
    assert models.names["baseline"] == str(space_cache / "tiny-qwen2_5_vl")
    assert dict(models.processor.image_processor.size) == {
        "shortest_edge": ps.OFFICIAL_MIN_PIXELS,
        "longest_edge": ps.OFFICIAL_MAX_PIXELS,
    }
    assert any(type(m).__name__ == "Linear4bit" for m in models.model.modules())
    result = ps.compare(models, example_image, "Which month?", None, 0, 1.0, 4, 0.6)
    assert all(len(a.kl) == len(a.token_ids) > 0 for a in result.answers.values())


def test_full_papo_model_deployment(space_cache, example_image):
    """PAPO_MODEL: two separate models (here the same weights, so the same answer and the same KL)."""
    base = str(space_cache / "tiny-qwen2_5_vl")
    models = ps.Models(ps.SpaceConfig.from_env({"PAPO_BASE_MODEL": base, "PAPO_MODEL": base}))
    models.load()
    assert models.papo is not None and models.papo is not models.model
    result = ps.compare(models, example_image, "Which month?", None, 1, 1.0, 6, 0.6)
    baseline, papo = result.answers["baseline"], result.answers["papo"]
    assert baseline.token_ids == papo.token_ids and baseline.kl == pytest.approx(papo.kl)
