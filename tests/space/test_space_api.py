"""The running app driven through its API with gradio_client: results, bad inputs, errors, isolation.

Every bad input must come back as a clear message, and the next normal request must still work.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import app
import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from space_comparison import displayed
from space_testing import MAX_NEW_TOKENS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _named(result) -> dict:
    assert len(result) == len(app.OUTPUT_NAMES)
    return dict(zip(app.OUTPUT_NAMES, result, strict=True))


def _compare(client, image, question="Which bar is the tallest?", reference="Mar", **settings):
    values = {"seed": 0, "temperature": 1.0, "max_new_tokens": MAX_NEW_TOKENS, "mask_ratio": 0.6} | settings
    image = handle_file(image) if image is not None else None
    result = client.predict(
        image, question, reference, values["seed"], values["temperature"], values["max_new_tokens"],
        values["mask_ratio"], api_name="/compare",
    )  # fmt: skip
    return _named(result)


def _path(value) -> Path:
    """An image output: a path, or an update dict holding one."""
    return Path(value["value"] if isinstance(value, dict) else value)


def assert_normal_request_works(client, example_image):
    out = _compare(client, example_image)
    assert out["baseline_answer"] and out["papo_answer"]
    assert len(out["details"]["papo"]["kl"]) == len(out["details"]["papo"]["tokens"]) > 0


def test_compare_returns_both_answers_per_token_kl_and_a_png_mask(client, example_image):
    out = _compare(client, example_image, seed=7)
    details = out["details"]
    assert out["baseline_answer"] == details["baseline"]["answer"] and out["baseline_answer"]
    assert out["papo_answer"] == details["papo"]["answer"] and out["papo_answer"]
    scale = details["kl_scale"]
    assert scale > 0
    for side in ("baseline", "papo"):
        answer = details[side]
        n = len(answer["token_ids"])
        assert n > 0 and len(answer["tokens"]) == len(answer["kl"]) == n
        heat = out[f"{side}_heatmap"]  # [{"token", "class_or_confidence"}] in generation order
        assert [h["token"] for h in heat] == [displayed(t) for t in answer["tokens"]]  # controls made visible
        assert [h["class_or_confidence"] for h in heat] == pytest.approx(
            [v / scale for v in answer["kl"]], abs=1e-4
        )
        plot = out[f"{side}_kl_plot"]["value"]
        assert plot["columns"] == ["position", "token", "kl"]
        # The plot payload carries 10 decimals: exact for the KL sizes shown, to 1e-10 absolute.
        assert [row[2] for row in plot["data"]] == pytest.approx(answer["kl"], rel=1e-6, abs=1e-10)
        assert "Extracted answer" in out[f"{side}_verdict"] and "reference `Mar`" in out[f"{side}_verdict"]
        assert f"over {n} tokens" in out[f"{side}_summary"]
    assert details["settings"]["seed"] == 7 and details["settings"]["mask_seed"] == 7
    for key in ("original", "masked"):
        path = _path(out[key])
        assert path.suffix == ".png" and path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(_path(out["masked"])) as masked, Image.open(_path(out["original"])) as original:
        assert masked.size == original.size
        assert (np.asarray(masked.convert("RGB")) == 0).all(axis=-1).mean() > 0.3  # ~60% of squares black
    assert "Masked copy (ratio 0.6, mask seed 7)" == out["masked"]["label"]
    assert len(out["top_k"]["data"]) == 2 * 5 and out["legend"]["visible"]
    assert "nats" in out["legend_caption"] and "Mean KL" in out["info"]


def test_new_mask_rescores_the_same_answers(client, example_image):
    first = _compare(client, example_image)
    second = _named(client.predict(0.6, api_name="/new_mask"))
    assert second["details"]["settings"]["mask_draw"] == 1
    assert second["papo_answer"] == first["papo_answer"]
    assert second["details"]["papo"]["kl"] != first["details"]["papo"]["kl"]
    assert "mask seed 1" in second["masked"]["label"]


def test_new_mask_before_any_comparison_says_so(client, example_image):
    with pytest.raises(AppError, match="Run a comparison first"):
        client.predict(0.6, api_name="/new_mask")
    assert_normal_request_works(client, example_image)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no image", "No image: upload an image"),
        ("text file", "'notes.txt' is not an image this app can read"),
        ("empty question", "The question is empty"),
        ("20k question", "The question is 20,000 characters long; the limit is 2,000"),
        ("temperature 5", "greater than maximum"),
    ],
)
def test_bad_input_gives_a_message_and_the_app_keeps_working(client, example_image, tmp_path, case, message):
    image, question, settings = example_image, "How many?", {}
    if case == "no image":
        image = None
    elif case == "text file":
        image = tmp_path / "notes.txt"
        image.write_text("not an image")
        image = str(image)
    elif case == "empty question":
        question = "   "
    elif case == "20k question":
        question = "x" * 20_000
    elif case == "temperature 5":
        settings = {"temperature": 5.0}
    with pytest.raises(AppError, match=message):
        _compare(client, image, question, **settings)
    assert_normal_request_works(client, example_image)


def _image(kind: str) -> Image.Image:
    if kind == "grayscale":
        return Image.new("L", (64, 48), 90)
    if kind == "rgba":
        return Image.new("RGBA", (64, 48), (200, 0, 0, 100))
    if kind == "palette":
        return Image.new("RGB", (64, 48), (0, 120, 0)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return Image.new("RGB", (10000, 10000), (240, 240, 240))


@pytest.mark.parametrize(
    ("kind", "note"),
    [
        ("grayscale", "grayscale (L) image was converted to RGB"),
        ("rgba", "transparency is shown on white"),
        ("palette", "palette (P) image was converted to RGB"),
        ("10000x10000", "The image is 10000x10000 (100,000,000 pixels): it was downscaled"),
    ],
)
def test_unusual_images_work_with_a_note(client, example_image, tmp_path, kind, note):
    path = tmp_path / f"{kind}.png"
    _image(kind).save(path, compress_level=1)
    out = _compare(client, str(path))
    assert out["baseline_answer"] and out["papo_answer"]
    assert note in out["info"] and any(note in n for n in out["details"]["notes"])
    width, height = out["details"]["image_size"]
    assert width * height <= 1024 * 1024
    assert_normal_request_works(client, example_image)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (RuntimeError("boom"), r"Generation failed \(RuntimeError: boom\)"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "Out of memory while generating"),
    ],
)
def test_generation_errors_are_shown_and_do_not_break_the_models(
    client, example_image, models, monkeypatch, error, message
):
    import papo.generation

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(papo.generation, "generate_completions", failing)
    with pytest.raises(AppError, match=message):
        _compare(client, example_image)
    monkeypatch.undo()
    assert not models.lock.locked()
    assert_normal_request_works(client, example_image)


def test_one_users_error_does_not_affect_another(app_url, example_image):
    """Two sessions at once: a bad request and a good one, queued together; only the bad one fails."""
    from gradio_client import Client

    bad, good = (Client(app_url, verbose=False) for _ in range(2))
    with ThreadPoolExecutor(2) as pool:
        failing = pool.submit(_compare, bad, example_image, "")
        working = pool.submit(_compare, good, example_image, "Which month?")
        with pytest.raises(AppError, match="question is empty"):
            failing.result(timeout=120)
        assert working.result(timeout=120)["papo_answer"]
