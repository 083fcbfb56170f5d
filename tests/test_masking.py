"""Masking: official random patch blackening, seeding, group sharing, the model-grid option, noise."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from papo.masking import (
    MaskingConfig,
    blacken_patches,
    blackened_fraction,
    check_same_grid,
    mask_image,
    mask_images,
    mask_seed,
    model_size,
    prompt_key,
    resize_like_processor,
)
from papo.tiny import build_processor

ARCHS = ("qwen2_5_vl", "qwen3_vl")
ODD_SIZES = [(64, 64), (97, 53), (300, 41), (20, 20)]  # (width, height)


@pytest.fixture(scope="module")
def processors():
    return {arch: build_processor(arch) for arch in ARCHS}


def _white(width=140, height=140):
    return Image.new("RGB", (width, height), (255, 255, 255))


def _noise_image(width, height, seed=0):
    """Random RGB pixels in [1, 254], so no pixel is black (or white) before masking."""
    pixels = np.random.default_rng(seed).integers(1, 255, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _square_states(masked: Image.Image, original: Image.Image, patch: int) -> np.ndarray:
    """(ceil(H/p), ceil(W/p)) array: 1 where the square is all black, 0 where it equals the original.

    Fails if any square (partial edge squares included) is partly masked.
    """
    out, ref = np.asarray(masked), np.asarray(original)
    assert out.shape == ref.shape
    states = []
    for top in range(0, out.shape[0], patch):
        row = []
        for left in range(0, out.shape[1], patch):
            square = out[top : top + patch, left : left + patch]
            black = bool((square == 0).all())
            assert black or np.array_equal(square, ref[top : top + patch, left : left + patch]), (
                f"square at ({top},{left}) is partly masked"
            )
            row.append(int(black))
        states.append(row)
    return np.array(states)


# --- the official corruption ------------------------------------------------------------------------


def test_blackened_fraction_matches_mask_ratio():
    image, config, fractions = _white(), MaskingConfig(), []
    for seed in range(200):
        masked = mask_images([image], config, seed)[0]
        fraction = _square_states(masked, image, 14).mean()
        assert fraction == pytest.approx(blackened_fraction(image, masked, 14))
        fractions.append(fraction)
    assert abs(np.mean(fractions) - 0.6) < 0.02
    rng = np.random.default_rng(0)
    assert np.array_equal(np.asarray(blacken_patches(image, 0.0, 14, rng)), np.asarray(image))
    assert np.asarray(blacken_patches(image, 1.0, 14, rng)).max() == 0
    assert blackened_fraction(image, image) == 0.0


@pytest.mark.parametrize("size", [(97, 53), (140, 140), (13, 30), (1, 1)])
def test_whole_squares_with_partial_edges(size):
    image = _noise_image(*size)
    masked = mask_image(image, MaskingConfig(mask_ratio=0.5), np.random.default_rng(1))
    states = _square_states(masked, image, 14)  # a partly black square fails inside
    width, height = size
    assert states.shape == (-(-height // 14), -(-width // 14))
    assert masked.size == image.size and masked.mode == "RGB"
    if states.size > 8:
        assert 0 < states.mean() < 1


def test_patch_size_is_configurable():
    image = _noise_image(50, 50)
    masked = mask_image(image, MaskingConfig(patch_size=10, mask_ratio=0.5), np.random.default_rng(2))
    assert _square_states(masked, image, 10).shape == (5, 5)


# --- seeding ----------------------------------------------------------------------------------------


def test_same_seed_same_mask_and_inputs_untouched():
    image, config = _noise_image(140, 140), MaskingConfig()
    before = np.asarray(image).copy()
    a, b, c = (mask_images([image], config, s)[0] for s in (5, 5, 6))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.array_equal(np.asarray(image), before)
    assert a is not image


def test_mask_images_uses_one_generator_in_order():
    first, second = _noise_image(56, 56, seed=1), _noise_image(56, 56, seed=2)
    both = mask_images([first, second], MaskingConfig(), 11)
    rng = np.random.default_rng(11)
    expected = [mask_image(image, MaskingConfig(), rng) for image in (first, second)]
    for got, want in zip(both, expected, strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(want))
    # The second image's mask continues the stream: it is not the first image's mask again.
    assert not np.array_equal(_square_states(both[0], first, 14), _square_states(both[1], second, 14))


def test_prompt_key_and_mask_seed_identify_prompt_and_round():
    img_a, img_b = _white(), Image.new("RGB", (140, 140), (250, 255, 255))
    key = prompt_key([img_a], "How many?")
    assert isinstance(key, bytes)
    group = [prompt_key([img_a.copy()], "How many?") for _ in range(4)]  # the G copies of a group
    assert set(group) == {key}
    others = {
        prompt_key([img_b], "How many?"),  # different pixels
        prompt_key([img_a], "How many!"),  # different text
        prompt_key([_white(70, 280)], "How many?"),  # same bytes, different size
        prompt_key([img_a.convert("L")], "How many?"),  # different mode
        prompt_key([img_a, img_a], "How many?"),  # different image count
        prompt_key([], "How many?"),
    }
    assert key not in others and len(others) == 6
    assert mask_seed(0, 3, key) == mask_seed(0, 3, bytes(key))
    seeds = {mask_seed(0, 3, key), mask_seed(0, 4, key), mask_seed(1, 3, key), mask_seed(0, 3, others.pop())}
    assert len(seeds) == 4
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert mask_seed(1, 23, b"") != mask_seed(12, 3, b"")  # fields cannot run into each other


_SUBPROCESS_CODE = """
import hashlib, numpy as np
from PIL import Image
from papo.masking import MaskingConfig, mask_images, mask_seed, prompt_key
image = Image.fromarray(np.arange(97 * 53 * 3, dtype=np.uint8).reshape(53, 97, 3))
seed = mask_seed(1234, 7, prompt_key([image], "Which one?"))
masked = mask_images([image], MaskingConfig(), seed)[0]
print(seed, hashlib.sha256(masked.tobytes()).hexdigest())
"""


def test_masks_reproduce_in_other_processes():
    outputs = set()
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS_CODE], capture_output=True, text=True, check=True, env=env
        )
        outputs.add(result.stdout.strip())
    image = Image.fromarray(np.arange(97 * 53 * 3, dtype=np.uint8).reshape(53, 97, 3))
    seed = mask_seed(1234, 7, prompt_key([image], "Which one?"))
    masked = mask_images([image], MaskingConfig(), seed)[0]
    assert outputs == {f"{seed} {hashlib.sha256(masked.tobytes()).hexdigest()}"}


# --- modes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_non_rgb_inputs_become_rgb_and_stay_untouched(mode):
    image = _noise_image(60, 45).convert(mode)
    before = image.tobytes()
    masked = mask_image(image, MaskingConfig(), np.random.default_rng(0))
    assert masked.mode == "RGB" and masked.size == image.size
    assert image.mode == mode and image.tobytes() == before
    # Untouched squares hold what the processor would see (transparency composited onto white).
    from transformers.image_transforms import convert_to_rgb

    _square_states(masked, Image.fromarray(convert_to_rgb(image, return_numpy=True)), 14)


def test_transparency_is_composited_onto_white():
    image = Image.new("RGBA", (28, 28), (10, 20, 30, 0))  # fully transparent
    masked = mask_image(image, MaskingConfig(mask_ratio=0.0), np.random.default_rng(0))
    assert np.asarray(masked).min() == 255


# --- the image grid is kept -------------------------------------------------------------------------


CONFIGS = {
    "image": MaskingConfig(),
    "model": MaskingConfig(grid="model"),
    "noise": MaskingConfig(strategy="noise"),
    "noise-model": MaskingConfig(strategy="noise", grid="model"),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_masked_images_keep_the_image_grid(processors, arch, size, name):
    image_processor = processors[arch].image_processor
    images = [_noise_image(*size), _noise_image(size[1], size[0], seed=1)]
    masked = mask_images(images, CONFIGS[name], 0, image_processor)
    original = image_processor(images=images, return_tensors="pt")
    after = image_processor(images=masked, return_tensors="pt")
    check_same_grid(original["image_grid_thw"], after["image_grid_thw"])
    assert original["pixel_values"].shape == after["pixel_values"].shape
    if CONFIGS[name].grid == "image":
        assert [m.size for m in masked] == [i.size for i in images]
    else:
        assert all(
            m.size[::-1] == model_size(i.height, i.width, image_processor)
            for m, i in zip(masked, images, strict=True)
        )


def test_check_same_grid_raises_on_mismatch():
    grid = torch.tensor([[1, 4, 4], [1, 2, 6]])
    check_same_grid(grid, grid.clone())
    with pytest.raises(ValueError, match="different image grid"):
        check_same_grid(grid, torch.tensor([[1, 4, 4], [1, 4, 6]]))
    with pytest.raises(ValueError, match="different image grid"):
        check_same_grid(grid, grid[:1])


def test_model_grid_mask_made_for_another_processor_is_caught(processors):
    """The guard catches a real mismatch: a mask resized for other pixel bounds gives another grid."""
    small = processors["qwen2_5_vl"].image_processor
    image = _noise_image(300, 200)
    masked = mask_image(image, MaskingConfig(grid="model"), np.random.default_rng(0), small)
    big = build_processor("qwen2_5_vl").image_processor
    big.size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    with pytest.raises(ValueError, match="image_grid_thw"):
        check_same_grid(
            big(images=[image], return_tensors="pt")["image_grid_thw"],
            big(images=[masked], return_tensors="pt")["image_grid_thw"],
        )


# --- grid="model": whole ViT patches ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [(113, 75), *ODD_SIZES])
def test_model_grid_masks_whole_vit_patches(processors, arch, size):
    image_processor = processors[arch].image_processor
    patch = image_processor.patch_size
    image = _noise_image(*size, seed=3)
    masked = mask_image(image, MaskingConfig(grid="model"), np.random.default_rng(0), image_processor)
    resized = resize_like_processor(image, image_processor)
    assert masked.size == resized.size
    assert masked.height % patch == 0 and masked.width % patch == 0
    states = _square_states(masked, resized, patch)  # every ViT patch: all black or the resized original
    assert 0 < states.mean() < 1
    assert blackened_fraction(resized, masked, patch) == pytest.approx(states.mean())


@pytest.mark.parametrize("arch", ARCHS)
def test_model_grid_pixel_values_are_original_or_black_per_patch(processors, arch):
    """In the model's input, each patch row is bit-identical to the original's or is normalised black.

    This holds because the resize is the processor's own op (same backend, resample and antialias).
    """
    image_processor = processors[arch].image_processor
    image = _noise_image(97, 53, seed=4)
    masked = mask_image(image, MaskingConfig(grid="model"), np.random.default_rng(0), image_processor)
    original = image_processor(images=[image], return_tensors="pt")["pixel_values"]
    after = image_processor(images=[masked], return_tensors="pt")["pixel_values"]
    black = image_processor(images=[Image.new("RGB", masked.size)], return_tensors="pt")["pixel_values"]
    same, blackened = (after == original).all(-1), (after == black).all(-1)
    assert bool((same | blackened).all())
    assert 0 < blackened.float().mean() < 1
    assert black.abs().min() > 0  # "black" is RGB 0 before normalisation, not 0 in pixel_values


def test_official_grid_straddles_vit_patches(processors):
    """Why grid="model" exists: after the resize, the official squares leave partly masked patches."""
    image_processor = processors["qwen2_5_vl"].image_processor
    image = _noise_image(97, 53, seed=5)
    masked = mask_image(image, MaskingConfig(), np.random.default_rng(0))
    resized_masked = np.asarray(resize_like_processor(masked, image_processor))
    resized = np.asarray(resize_like_processor(image, image_processor))
    patch, partial = image_processor.patch_size, 0
    for top in range(0, resized.shape[0], patch):
        for left in range(0, resized.shape[1], patch):
            square = resized_masked[top : top + patch, left : left + patch]
            if not (square == 0).all() and not np.array_equal(
                square, resized[top : top + patch, left : left + patch]
            ):
                partial += 1
    assert partial > 0


def test_model_grid_needs_the_image_processor():
    with pytest.raises(ValueError, match="image_processor"):
        mask_image(_white(), MaskingConfig(grid="model"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="image_processor"):
        mask_images([_white()], MaskingConfig(grid="model", strategy="noise"), 0)


def test_model_grid_refuses_a_size_the_processor_would_resize_again(processors):
    image_processor = processors["qwen2_5_vl"].image_processor
    thin = _noise_image(5000, 30)  # smart_resize clamps the short side up, exceeding max_pixels
    with pytest.raises(ValueError, match="image grid"):
        mask_image(thin, MaskingConfig(grid="model"), np.random.default_rng(0), image_processor)


# --- noise ------------------------------------------------------------------------------------------


def test_noise_grows_with_std_stays_in_range_and_is_seeded():
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    changes = []
    for std in (0.0, 0.1, 0.3, 0.6, 0.8):
        config = MaskingConfig(strategy="noise", noise_std=std)
        noisy = mask_image(image, config, np.random.default_rng(0))
        pixels = np.asarray(noisy)
        assert noisy.size == image.size and noisy.mode == "RGB" and pixels.dtype == np.uint8
        assert 0 <= pixels.min() and pixels.max() <= 255
        changes.append(np.abs(pixels.astype(float) - 128).mean())
        again = mask_image(image, config, np.random.default_rng(0))
        assert np.array_equal(np.asarray(again), pixels)
    assert changes[0] == 0 and all(a < b for a, b in zip(changes[:-1], changes[1:], strict=True))
    assert not np.array_equal(
        np.asarray(mask_images([image], MaskingConfig(strategy="noise"), 1)[0]),
        np.asarray(mask_images([image], MaskingConfig(strategy="noise"), 2)[0]),
    )
    # Large noise saturates: clipping to [0, 1] puts mass at both ends.
    saturated = np.asarray(mask_image(image, MaskingConfig(strategy="noise"), np.random.default_rng(0)))
    assert (saturated == 0).any() and (saturated == 255).any()


# --- configuration ----------------------------------------------------------------------------------


def test_defaults_are_the_official_ones():
    config = MaskingConfig()
    assert (config.strategy, config.mask_ratio, config.patch_size, config.grid) == ("patch", 0.6, 14, "image")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"strategy": "blur"}, "strategy"),
        ({"grid": "pixel"}, "grid"),
        ({"mask_ratio": 1.5}, "mask_ratio"),
        ({"mask_ratio": -0.1}, "mask_ratio"),
        ({"mask_ratio": float("nan")}, "mask_ratio"),
        ({"mask_ratio": "0.6"}, "mask_ratio"),
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": 2.5}, "patch_size"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"noise_std": float("inf")}, "noise_std"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MaskingConfig(**kwargs)


def test_strategy_error_lists_valid_values():
    with pytest.raises(ValueError, match="patch.*noise"):
        MaskingConfig(strategy="semantic")
    with pytest.raises(ValueError, match="image.*model"):
        MaskingConfig(grid="vit")
