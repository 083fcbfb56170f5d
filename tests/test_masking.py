"""Masking: official random patch blackening, seeding, group sharing, the model-grid option, noise."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from papo.masking import (
    MaskingConfig,
    blacken_patches,
    check_same_grid,
    mask_image,
    mask_images,
    mask_seed,
    prompt_key,
    resize_like_processor,
)
from papo.tiny import build_processor


@pytest.fixture(scope="module")
def processors():
    return {arch: build_processor(arch) for arch in ("qwen2_5_vl", "qwen3_vl")}


def _white(width=140, height=140):
    return Image.new("RGB", (width, height), (255, 255, 255))


def _square_states(image: Image.Image, patch: int) -> np.ndarray:
    """Per square: 1 if all black, 0 if untouched (white); raises if a square is partly black."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    states = []
    for top in range(0, height, patch):
        row = []
        for left in range(0, width, patch):
            square = pixels[top : top + patch, left : left + patch]
            black, white = (square == 0).all(), (square == 255).all()
            assert black or white, f"square at ({top},{left}) is partly masked"
            row.append(int(black))
        states.append(row)
    return np.array(states)


def test_blackened_fraction_matches_mask_ratio():
    rng = np.random.default_rng(0)
    fractions = [_square_states(blacken_patches(_white(), 0.6, 14, rng), 14).mean() for _ in range(200)]
    assert abs(np.mean(fractions) - 0.6) < 0.02
    assert _square_states(blacken_patches(_white(), 0.0, 14, rng), 14).sum() == 0
    assert _square_states(blacken_patches(_white(), 1.0, 14, rng), 14).all()


def test_whole_squares_with_partial_edges():
    masked = blacken_patches(_white(97, 53), 0.5, 14, np.random.default_rng(1))
    states = _square_states(masked, 14)  # partly black squares would fail inside
    assert states.shape == (4, 7) and 0 < states.mean() < 1
    assert masked.size == (97, 53) and masked.mode == "RGB"


def test_seeding_and_inputs_untouched():
    image = _white()
    config = MaskingConfig()
    a, b, c = (
        mask_images([image], config, 5),
        mask_images([image], config, 5),
        mask_images([image], config, 6),
    )
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert np.asarray(image).min() == 255


def test_seed_and_key_identify_prompt_and_round():
    img_a, img_b = _white(), Image.new("RGB", (140, 140), (250, 255, 255))
    key = prompt_key([img_a], "How many?")
    assert key == prompt_key([img_a.copy()], "How many?")  # the G copies of a group
    assert key != prompt_key([img_b], "How many?") and key != prompt_key([img_a], "How many!")
    assert mask_seed(0, 3, key) == mask_seed(0, 3, key)
    assert len({mask_seed(0, 3, key), mask_seed(0, 4, key), mask_seed(1, 3, key)}) == 3
    assert 0 <= mask_seed(0, 3, key) < 2**63


def test_seed_is_process_independent():
    code = "from papo.masking import mask_seed; print(mask_seed(7, 2, b'abc'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": s},
        ).stdout
        for s in ("1", "12345")
    }
    assert outputs == {f"{mask_seed(7, 2, b'abc')}\n"}


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("size", [(64, 64), (97, 53), (300, 41), (20, 20)])
@pytest.mark.parametrize(
    "config", [MaskingConfig(), MaskingConfig(grid="model"), MaskingConfig(strategy="noise")]
)
def test_masked_images_keep_the_image_grid(processors, arch, size, config):
    image_processor = processors[arch].image_processor
    image = Image.new("RGB", size, (120, 200, 40))
    masked = mask_image(image, config, np.random.default_rng(0), image_processor)
    original = image_processor(images=[image], return_tensors="pt")
    after = image_processor(images=[masked], return_tensors="pt")
    check_same_grid(original["image_grid_thw"], after["image_grid_thw"])
    assert original["pixel_values"].shape == after["pixel_values"].shape


def test_check_same_grid_raises_on_mismatch():
    with pytest.raises(ValueError, match="different image grid"):
        check_same_grid(torch.tensor([[1, 4, 4]]), torch.tensor([[1, 4, 6]]))


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_model_grid_masks_whole_vit_patches(processors, arch):
    image_processor = processors[arch].image_processor
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(1, 255, size=(75, 113, 3), dtype=np.uint8))
    masked = mask_image(image, MaskingConfig(grid="model"), np.random.default_rng(0), image_processor)
    resized = np.asarray(resize_like_processor(image, image_processor))
    out = np.asarray(masked)
    assert out.shape == resized.shape
    patch = image_processor.patch_size
    assert out.shape[0] % patch == 0 and out.shape[1] % patch == 0
    states = []
    for top in range(0, out.shape[0], patch):
        for left in range(0, out.shape[1], patch):
            square = out[top : top + patch, left : left + patch]
            black = (square == 0).all()
            assert black or np.array_equal(square, resized[top : top + patch, left : left + patch])
            states.append(black)
    assert 0 < np.mean(states) < 1


def test_model_grid_needs_the_image_processor():
    with pytest.raises(ValueError, match="image_processor"):
        mask_image(_white(), MaskingConfig(grid="model"), np.random.default_rng(0))


def test_noise_grows_with_std_and_stays_in_range():
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    changes = []
    for std in (0.1, 0.6):
        noisy = mask_image(image, MaskingConfig(strategy="noise", noise_std=std), np.random.default_rng(0))
        changes.append(np.abs(np.asarray(noisy, dtype=float) - 128).mean())
    assert changes[0] < changes[1]
    again = mask_image(image, MaskingConfig(strategy="noise", noise_std=0.6), np.random.default_rng(0))
    assert np.array_equal(np.asarray(again), np.asarray(noisy))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"strategy": "blur"}, "strategy"),
        ({"grid": "pixel"}, "grid"),
        ({"mask_ratio": 1.5}, "mask_ratio"),
        ({"patch_size": 0}, "patch_size"),
        ({"noise_std": -1.0}, "noise_std"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MaskingConfig(**kwargs)
