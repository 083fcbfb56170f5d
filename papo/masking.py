"""Image corruption for the perception loss: seeded random patch blackening (official) and options.

Official method (spec §2.1): walk a grid of ``patch_size``x``patch_size`` (14) pixel squares over the
*raw* image, before the processor's resize, and set each square to black (RGB 0) independently with
probability ``mask_ratio`` (0.6). One masked copy per prompt, shared by its G rollouts; a fresh draw
each time the prompt is sampled.

Ours differs in two documented ways:

* **Seeded.** The official code uses the global ``np.random`` with no seed. Here every mask comes
  from a seed derived (`mask_seed`) from the trainer seed, the generation round and the prompt's
  content (`prompt_key`) — values every GPU rank shares — so runs are reproducible and a prompt's G
  rollouts get the same mask wherever they land.
* **``grid="model"``** (our improvement, off by default). The official squares live in
  original-resolution coordinates; after the processor resizes the image they straddle the ViT's
  14-px patches (16-px for Qwen3-VL), so most patches are partly masked. With ``grid="model"`` the
  image is first resized exactly as the processor would (transformers' ``smart_resize``), then whole
  ViT patches are blackened: each patch the model sees is either intact or fully black. The
  processor then leaves the size unchanged, so the image grid is the same as the original's.

``strategy="noise"`` adds Gaussian noise (std on [0, 1] pixel values, clipped) instead: the paper
shows it as a corruption but the official code never implemented it.

"Black" is RGB 0 before normalisation, not 0 in the normalised ``pixel_values``. The masked image
must give the same ``image_grid_thw`` (hence the same number of image tokens) as the original, since
the masked forward reuses the original token ids: `check_same_grid` asserts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

STRATEGIES = ("patch", "noise")
GRIDS = ("image", "model")


@dataclass(frozen=True)
class MaskingConfig:
    """How masked images are made. Defaults are the official ones."""

    strategy: str = "patch"
    mask_ratio: float = 0.6
    patch_size: int = 14
    grid: str = "image"
    noise_std: float = 0.6

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"mask strategy={self.strategy!r} is not one of {STRATEGIES}")
        if self.grid not in GRIDS:
            raise ValueError(f"mask grid={self.grid!r} is not one of {GRIDS}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if self.patch_size < 1:
            raise ValueError(f"mask patch_size must be >= 1, got {self.patch_size}")
        if self.noise_std < 0:
            raise ValueError(f"mask noise_std must be >= 0, got {self.noise_std}")


def prompt_key(images: Sequence[Image.Image], text: str) -> bytes:
    """Content fingerprint of one prompt: equal for the G copies of a group, different across prompts."""
    digest = hashlib.blake2b(text.encode(), digest_size=16)
    for image in images:
        digest.update(f"{image.size}{image.mode}".encode())
        digest.update(image.tobytes())
    return digest.digest()


def mask_seed(base_seed: int, draw: int, key: bytes) -> int:
    """A 63-bit seed from (trainer seed, generation round, prompt key); process-independent (no `hash()`)."""
    digest = hashlib.blake2b(f"{base_seed}/{draw}/".encode() + key, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def blacken_patches(
    image: Image.Image, mask_ratio: float, patch_size: int, rng: np.random.Generator
) -> Image.Image:
    """Black out each `patch_size` square of `image` with probability `mask_ratio`.

    Pixels (H, W, 3) -> grid (ceil(H/p), ceil(W/p)) of Bernoulli(mask_ratio) draws, upsampled to
    pixels; squares at the right/bottom edges may be partial, as in the official loop.
    """
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    grid = rng.random((-(-height // patch_size), -(-width // patch_size))) < mask_ratio
    black = np.repeat(np.repeat(grid, patch_size, axis=0), patch_size, axis=1)[:height, :width]
    return Image.fromarray(np.where(black[..., None], 0, pixels).astype(np.uint8))


def add_gaussian_noise(image: Image.Image, noise_std: float, rng: np.random.Generator) -> Image.Image:
    """x' = clip(x + N(0, noise_std^2), 0, 1) on [0, 1]-scaled RGB pixels."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    noisy = np.clip(pixels + rng.normal(0.0, noise_std, size=pixels.shape), 0.0, 1.0)
    return Image.fromarray(np.round(noisy * 255.0).astype(np.uint8))


def resize_like_processor(image: Image.Image, image_processor) -> Image.Image:
    """Resize `image` to the size a Qwen2-VL-family image processor will resize it to."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    height, width = smart_resize(
        image.height, image.width, factor=factor, min_pixels=size.shortest_edge, max_pixels=size.longest_edge
    )
    return image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def mask_image(
    image: Image.Image, config: MaskingConfig, rng: np.random.Generator, image_processor=None
) -> Image.Image:
    """One corrupted copy of `image` (same size unless grid="model", which returns the resized image)."""
    patch_size = config.patch_size
    if config.grid == "model":
        if image_processor is None:
            raise ValueError("grid='model' needs the model's image_processor to know its patch grid")
        image = resize_like_processor(image, image_processor)
        patch_size = image_processor.patch_size
    if config.strategy == "noise":
        return add_gaussian_noise(image, config.noise_std, rng)
    return blacken_patches(image, config.mask_ratio, patch_size, rng)


def mask_images(
    images: Sequence[Image.Image], config: MaskingConfig, seed: int, image_processor=None
) -> list[Image.Image]:
    """Masked copies of one prompt's images, from one generator seeded with `seed`; inputs untouched."""
    rng = np.random.default_rng(seed)
    return [mask_image(image, config, rng, image_processor) for image in images]


def check_same_grid(original_grid_thw: torch.Tensor, masked_grid_thw: torch.Tensor) -> None:
    """Raise if the masked images would give a different image grid (hence image-token count)."""
    if original_grid_thw.shape != masked_grid_thw.shape or not torch.equal(
        original_grid_thw.to(masked_grid_thw.dtype), masked_grid_thw
    ):
        raise ValueError(
            "the masked images give a different image grid than the originals "
            f"({masked_grid_thw.tolist()} vs {original_grid_thw.tolist()}); the masked forward reuses the "
            "original token ids, so masking must not change image sizes"
        )
