"""Image corruption for the perception loss: seeded random patch blackening (official) and options.

Official method (spec §2.1, ``verl/trainer/papo_utils.py:random_patch_blackening``): walk a grid of
``patch_size``x``patch_size`` (14) pixel squares over the *raw* image, before the processor's resize
(squares at the right/bottom edge may be partial), and set each square to black (RGB 0) independently
with probability ``mask_ratio`` (0.6). One masked copy per prompt, shared by its G rollouts; a fresh
draw each time the prompt is sampled. ``per="response"`` (VPPO, ``mask_per``) draws one mask per rollout
instead (`response_key`). `diffusion_noise` is NoisyRollout's generation-time corruption.

Ours differs from the official code in three documented ways:

* **Seeded.** The official code uses the global ``np.random`` with no seed. Here every mask comes from
  a seed derived (`mask_seed`) from the trainer seed, the draw counter (training step of the generation
  round) and the prompt's content (`prompt_key`), values every GPU rank shares, so runs are
  reproducible and a prompt's G rollouts get the same mask wherever they land. Python's ``hash()`` is
  never used: it is salted per process (PYTHONHASHSEED) and would differ across ranks.
* **``grid="model"``** (our improvement, off by default). The official squares live in
  original-resolution coordinates. The processor then resizes the image (``smart_resize`` to a
  multiple of ``patch_size * merge_size`` with the pixel count in [min_pixels, max_pixels]), so the
  squares no longer align with the ViT's 14-px patches (16-px for Qwen3-VL): most patches come out
  partly masked, and bicubic resampling smears the black edges into neighbouring patches. With
  ``grid="model"`` the image is first resized exactly as the processor would (transformers' own
  ``smart_resize`` and the processor's own resize op), then whole ViT patches are blackened, so each
  patch the model sees is either identical to the original's or fully black. The processor leaves
  the size of the returned image unchanged, so ``image_grid_thw`` equals the original's.
  ``strategy="noise"`` with ``grid="model"`` likewise adds the noise in the resized pixel space.
* **``strategy="noise"``** adds Gaussian noise (std on [0, 1]-scaled pixels, clipped to [0, 1]). The
  paper shows it as a corruption (std 0.6 / 0.8) but the official code never implemented it.

"Black" is RGB 0 before normalisation: it is *not* 0 in the normalised ``pixel_values``
(it is ``-mean/std`` per channel). The masked image must give the same ``image_grid_thw`` (hence the
same number of ``<|image_pad|>`` tokens) as the original, because the masked forward reuses the
original ``input_ids`` / M-RoPE positions: `check_same_grid` asserts it.

Non-RGB inputs are converted to RGB the way transformers' processors do (transparency composited onto
white), so the untouched parts of a masked image are exactly what the processor would see.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

STRATEGIES = ("patch", "noise")
GRIDS = ("image", "model")
GRANULARITIES = ("prompt", "response")


@dataclass(frozen=True)
class MaskingConfig:
    """How masked images are made. Defaults are the official ones (spec §2.1, config_grpo_papo.yaml)."""

    strategy: str = "patch"  # "patch": random patch blackening | "noise": Gaussian noise corruption
    mask_ratio: float = 0.6  # probability each square is blackened (the paper's "masking ratio")
    patch_size: int = 14  # square side in original-image pixels (grid="image")
    grid: str = "image"  # "image": official, original pixel space | "model": the ViT patch grid
    noise_std: float = 0.6  # strategy="noise": std of the noise on [0, 1]-scaled pixels
    per: str = (
        "prompt"  # "prompt": one mask shared by a prompt's G rollouts (PAPO) | "response": one each (VPPO)
    )

    def __post_init__(self):
        if self.per not in GRANULARITIES:
            raise ValueError(f"masking per={self.per!r} (mask_per) is not one of {GRANULARITIES}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"masking strategy={self.strategy!r} is not one of {STRATEGIES}")
        if self.grid not in GRIDS:
            raise ValueError(f"masking grid={self.grid!r} is not one of {GRIDS}")
        # `not 0 <= x <= 1` also rejects NaN; bools are ints in Python but never a meaningful value here.
        if isinstance(self.mask_ratio, bool) or not isinstance(self.mask_ratio, numbers.Real):
            raise ValueError(f"masking mask_ratio must be a number in [0, 1], got {self.mask_ratio!r}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"masking mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, numbers.Integral):
            raise ValueError(f"masking patch_size must be an integer >= 1, got {self.patch_size!r}")
        if self.patch_size < 1:
            raise ValueError(f"masking patch_size must be >= 1, got {self.patch_size}")
        if isinstance(self.noise_std, bool) or not isinstance(self.noise_std, numbers.Real):
            raise ValueError(f"masking noise_std must be a finite number >= 0, got {self.noise_std!r}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"masking noise_std must be a finite number >= 0, got {self.noise_std}")


# --- seeding ----------------------------------------------------------------------------------------


def _update_framed(digest, data: bytes) -> None:
    """Feed `data` with an 8-byte length prefix, so concatenations cannot collide ("ab"+"c" vs "a"+"bc")."""
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def prompt_key(images: Sequence[Image.Image], text: str) -> bytes:
    """Content fingerprint of one prompt (16 bytes): equal for a group's G copies, different across prompts.

    Hashes the text and, for each image in order, its size, mode, palette (if any) and raw pixel bytes.
    """
    digest = hashlib.blake2b(digest_size=16, person=b"papo-prompt-key")
    _update_framed(digest, text.encode("utf-8"))
    digest.update(len(images).to_bytes(8, "little"))
    for image in images:
        _update_framed(digest, f"{image.width}x{image.height}:{image.mode}".encode())
        palette = image.getpalette() if image.mode in ("P", "PA") else None
        _update_framed(digest, bytes(palette) if palette else b"")
        _update_framed(digest, image.tobytes())
    return digest.digest()


def response_key(key: bytes, row: int) -> bytes:
    """Key of one response (mask granularity "response", VPPO): the prompt key plus the row's global index.

    Rows are global positions in the generation batch (every rank agrees on them), so each of a prompt's G
    rollouts gets its own mask while the mask stays reproducible and rank-independent.
    """
    return bytes(key) + b"/response/" + str(int(row)).encode()


def mask_seed(base_seed: int, draw: int, key: bytes) -> int:
    """Deterministic seed in [0, 2**63) from (trainer seed, draw counter, prompt key).

    blake2b of the three values, so it is the same in every process and on every rank.
    """
    digest = hashlib.blake2b(digest_size=8, person=b"papo-mask-seed")
    _update_framed(digest, str(int(base_seed)).encode())
    _update_framed(digest, str(int(draw)).encode())
    _update_framed(digest, bytes(key))
    return int.from_bytes(digest.digest(), "little") >> 1  # 64 -> 63 bits: fits a signed int64


# --- pixel operations -------------------------------------------------------------------------------


def _rgb_pixels(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB copy of `image`; transparency composited onto white, as the processors do."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # Same as transformers.image_transforms.convert_to_rgb (what Qwen2VLImageProcessor applies).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _blacken(pixels: np.ndarray, mask_ratio: float, patch_size: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8 with each `patch_size` square black with prob. `mask_ratio`.

    One uniform draw per square on a (ceil(H/p), ceil(W/p)) grid, in row-major order; the grid is
    upsampled to pixels with np.repeat and cropped, so squares at the right/bottom edges are partial.
    """
    height, width = pixels.shape[:2]
    grid_shape = (-(-height // patch_size), -(-width // patch_size))
    # `random() < r` is Bernoulli(r), exact at both ends: r=0 never masks, r=1 always masks.
    keep = ~(rng.random(grid_shape) < mask_ratio)
    keep = np.repeat(np.repeat(keep, patch_size, axis=0), patch_size, axis=1)[:height, :width]
    return pixels * keep[..., None].astype(np.uint8)


def _add_noise(pixels: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8: round(255 * clip(x + N(0, std^2), 0, 1)) with x = pixels / 255."""
    x = pixels.astype(np.float64) / 255.0
    noisy = np.clip(x + rng.normal(0.0, noise_std, size=x.shape), 0.0, 1.0)
    return np.round(noisy * 255.0).astype(np.uint8)


def _diffuse(pixels: np.ndarray, alpha_bar: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8: x_k = √ᾱ·x + √(1 − ᾱ)·ε on x = pixels / 255, clipped to [0, 1].

    Back to uint8 by truncation, ``floor(255·x_k)``, as the released NoisyRollout code does
    (torchvision ``ToPILImage`` on a float tensor is ``mul(255).byte()``).
    """
    x = pixels.astype(np.float64) / 255.0
    noisy = math.sqrt(alpha_bar) * x + math.sqrt(1.0 - alpha_bar) * rng.standard_normal(size=x.shape)
    return (np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)


def diffusion_noise(image: Image.Image, alpha_bar: float, rng: np.random.Generator) -> Image.Image:
    """NoisyRollout's corruption: the forward-diffusion sample x_k of `image` at ᾱ_k = ``alpha_bar``.

    (W, H) image -> new (W, H) RGB image (same size, so the processor gives the same image grid and the
    prompt's image-token count stays valid). ᾱ_k comes from `papo.followups.diffusion_alpha_bars`.
    """
    if not 0.0 <= alpha_bar <= 1.0:
        raise ValueError(f"alpha_bar must be in [0, 1], got {alpha_bar}")
    return Image.fromarray(_diffuse(_rgb_pixels(image), alpha_bar, rng))


def blacken_patches(
    image: Image.Image, mask_ratio: float, patch_size: int, rng: np.random.Generator
) -> Image.Image:
    """The official corruption: each `patch_size` square of `image` black with probability `mask_ratio`.

    (W, H) image -> new (W, H) RGB image; a (ceil(H/p), ceil(W/p)) grid of Bernoulli draws from `rng`.
    """
    return Image.fromarray(_blacken(_rgb_pixels(image), mask_ratio, patch_size, rng))


def add_gaussian_noise(image: Image.Image, noise_std: float, rng: np.random.Generator) -> Image.Image:
    """x' = clip(x + N(0, noise_std^2), 0, 1) on [0, 1]-scaled RGB pixels; (W, H) -> new (W, H) RGB image."""
    return Image.fromarray(_add_noise(_rgb_pixels(image), noise_std, rng))


# --- the model's patch grid -------------------------------------------------------------------------


def _pixel_bounds(image_processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2-VL-family image processor (`size` is a SizeDict or a dict)."""
    size = image_processor.size
    get = size.get if isinstance(size, dict) else lambda name: getattr(size, name, None)
    min_pixels, max_pixels = get("shortest_edge"), get("longest_edge")
    if not min_pixels or not max_pixels:
        raise ValueError(
            f"grid='model' needs an image_processor with size={{'shortest_edge', 'longest_edge'}} "
            f"(a Qwen2VLImageProcessor), got size={size}"
        )
    return int(min_pixels), int(max_pixels)


def model_size(height: int, width: int, image_processor) -> tuple[int, int]:
    """(height, width) the processor resizes an (height, width) image to: transformers' `smart_resize`."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    min_pixels, max_pixels = _pixel_bounds(image_processor)
    factor = image_processor.patch_size * image_processor.merge_size
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def resize_like_processor(image: Image.Image, image_processor) -> Image.Image:
    """`image` resized to the processor's target size with the processor's own resize op (RGB, new image).

    (W, H) -> (W', H') with (H', W') = `model_size(H, W)`. The processor resizes a uint8 tensor with
    its `resample` (bicubic) through its backend (torchvision, antialiased; or PIL), so we call that same
    backend op: the unmasked patches are then bit-identical to what the processor makes of the original.
    """
    if image_processor is None:
        raise ValueError("grid='model' needs the model's image_processor (processor.image_processor)")
    if getattr(image_processor, "do_resize", True) is False:
        raise ValueError("grid='model' needs an image_processor with do_resize=True (it resizes to its grid)")
    pixels = _rgb_pixels(image)
    height, width = pixels.shape[:2]
    target = model_size(height, width, image_processor)
    # The processor resizes the masked image again: that must be a no-op, or its grid would change.
    if model_size(*target, image_processor) != target:
        raise ValueError(
            f"grid='model': the processor would resize the {height}x{width} image to {target} and that again "
            f"to {model_size(*target, image_processor)}; the masked image would not keep the image grid"
        )
    if target == (height, width):
        return Image.fromarray(pixels)

    from transformers.image_utils import PILImageResampling, SizeDict

    resample = getattr(image_processor, "resample", None)
    resample = PILImageResampling.BICUBIC if resample is None else resample
    size = SizeDict(height=target[0], width=target[1])
    backend = getattr(image_processor, "backend", None)
    if backend == "torchvision":
        import torch
        from transformers.image_processing_backends import TorchvisionBackend

        # The base-class resize (Qwen's override would re-run smart_resize): tvF.resize, antialias=True.
        chw = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        out = TorchvisionBackend.resize(image_processor, chw, size=size, resample=resample)
        resized = out.permute(1, 2, 0).numpy()
    elif backend == "pil":
        from transformers.image_processing_backends import PilBackend

        out = PilBackend.resize(
            image_processor, np.ascontiguousarray(pixels.transpose(2, 0, 1)), size, resample
        )
        resized = np.asarray(out).transpose(1, 2, 0)
    else:  # an unknown processor: PIL with its resample filter
        pil = Image.fromarray(pixels).resize((target[1], target[0]), Image.Resampling(int(resample)))
        resized = np.asarray(pil)
    if resized.dtype != np.uint8:
        resized = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(resized))


# --- the API the trainer calls ----------------------------------------------------------------------


def mask_image(
    image: Image.Image, config: MaskingConfig, rng: np.random.Generator, image_processor=None
) -> Image.Image:
    """One corrupted RGB copy of `image`; `image` itself is not modified.

    grid="image": same (W, H) as `image`, squares of `config.patch_size` in original pixels.
    grid="model": the processor-resized (W', H') image, squares of `image_processor.patch_size`.
    """
    if config.grid == "model":
        if image_processor is None:
            raise ValueError("grid='model' needs the model's image_processor to know its patch grid")
        pixels = np.asarray(resize_like_processor(image, image_processor))
        patch_size = int(image_processor.patch_size)
    else:
        pixels = _rgb_pixels(image)
        patch_size = config.patch_size
    if config.strategy == "noise":
        return Image.fromarray(_add_noise(pixels, config.noise_std, rng))
    return Image.fromarray(_blacken(pixels, config.mask_ratio, patch_size, rng))


def mask_images(
    images: Sequence[Image.Image], config: MaskingConfig, seed: int, image_processor=None
) -> list[Image.Image]:
    """Masked copies of one prompt's images: one numpy Generator from `seed`, used on the images in order."""
    rng = np.random.default_rng(seed)
    return [mask_image(image, config, rng, image_processor) for image in images]


def blackened_fraction(original: Image.Image, masked: Image.Image, patch_size: int = 14) -> float:
    """Fraction of `patch_size` squares that masking turned entirely black (a diagnostic).

    Counts squares (partial at the edges) that are all RGB 0 in `masked` among those that are not all
    black in `original` (an already-black square cannot show a mask); 0.0 if there are none. Both
    images must have the same size (for grid="model", pass the `resize_like_processor` original).
    """
    if original.size != masked.size:
        raise ValueError(f"image sizes differ: original {original.size} vs masked {masked.size}")
    black = []
    for image in (original, masked):
        pixels = _rgb_pixels(image)
        height, width = pixels.shape[:2]
        grid_h, grid_w = -(-height // patch_size), -(-width // patch_size)
        # Pad to whole squares with black so a partial square is black iff its real pixels are.
        padded = np.zeros((grid_h * patch_size, grid_w * patch_size), dtype=bool)
        padded[:height, :width] = pixels.any(axis=-1)
        lit = padded.reshape(grid_h, patch_size, grid_w, patch_size).any(axis=(1, 3))
        black.append(~lit)
    candidates = ~black[0]
    return float((black[1] & candidates).sum() / candidates.sum()) if candidates.any() else 0.0


def check_same_grid(original_grid_thw: torch.Tensor, masked_grid_thw: torch.Tensor) -> None:
    """Raise ValueError if the masked images give a different image grid (hence image-token count).

    Both are (num_images, 3) tensors of (t, h, w) patches, as the image processor returns them.
    """
    import torch

    original = torch.as_tensor(original_grid_thw).cpu().long()
    masked = torch.as_tensor(masked_grid_thw).cpu().long()
    if original.shape != masked.shape or not torch.equal(original, masked):
        raise ValueError(
            "the masked images give a different image grid than the originals: "
            f"masked image_grid_thw={masked.tolist()} vs original {original.tolist()} "
            f"({int(masked.prod(-1).sum())} vs {int(original.prod(-1).sum())} patches). The masked forward "
            "reuses the original input_ids, so the image-token counts must match: masking must not change "
            "image sizes (grid='model' returns the processor-resized size, which the processor keeps)."
        )
