"""Per-token perception KL of given answers: how much each generated token depended on the image.

For an answer o to prompt q with image I, and the masked image I_mask drawn exactly as in training
(`papo.masking`, seeded), the value at position t is the full-vocabulary KL

    KL_t = Σ_v π(v | q, I, o_<t) · [log π(v | q, I, o_<t) − log π(v | q, I_mask, o_<t)]

(the direction of the training loss, KL(π(·|I) ‖ π(·|I_mask)); spec §1.3). Training estimates it
from the sampled token only (k3); at analysis time the whole distribution is at hand, so the exact
value is used (``estimator="k3"`` gives the training estimator instead). Both forwards use the same
token ids, attention mask and positions; only the image differs. This is what `papo eval` stores
with each prediction and what the Space colours tokens by.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from papo.generation import render_prompt
from papo.loss import per_token_kl
from papo.masking import MaskingConfig, mask_images, mask_seed, prompt_key


def masked_copies(
    prompt: list[dict[str, Any]],
    images: Sequence,
    config: MaskingConfig,
    seed: int,
    image_processor,
    draw: int = 0,
) -> list:
    """The masked images for one prompt, seeded like training (trainer seed, draw, prompt content)."""
    key = prompt_key(list(images), json.dumps(prompt, default=str))
    return mask_images(list(images), config, mask_seed(seed, draw, key), image_processor)


@torch.no_grad()
def completion_logprobs(
    model,
    processor,
    prompts: Sequence[list[dict[str, Any]]],
    images: Sequence[Sequence],
    completions: Sequence[list[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities over the vocabulary at each completion position.

    Returns (logprobs (B, T, V) float32, mask (B, T)), T the longest completion; prompts left-padded
    by the processor, completions right-padded.
    """
    texts = [render_prompt(processor, prompt) for prompt in prompts]
    flat_images = [image for row in images for image in row]
    inputs = processor(text=texts, images=flat_images or None, padding=True, return_tensors="pt").to(
        model.device
    )
    width = max(len(c) for c in completions)
    pad = processor.tokenizer.pad_token_id
    completion_ids = torch.tensor(
        [list(c) + [pad] * (width - len(c)) for c in completions], device=model.device
    )
    completion_mask = torch.tensor(
        [[1] * len(c) + [0] * (width - len(c)) for c in completions], device=model.device
    )
    prompt_length = inputs["input_ids"].size(1)
    forward = dict(inputs)
    forward["input_ids"] = torch.cat([inputs["input_ids"], completion_ids], dim=1)
    forward["attention_mask"] = torch.cat([inputs["attention_mask"], completion_mask], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in forward:  # completions are text: type 0
            forward[key] = torch.nn.functional.pad(forward[key], (0, width))
    logits = model(**forward).logits[:, prompt_length - 1 : prompt_length - 1 + width]
    return torch.log_softmax(logits.float(), dim=-1), completion_mask


def perception_per_token(
    model,
    processor,
    prompts: Sequence[list[dict[str, Any]]],
    images: Sequence[Sequence],
    completions: Sequence[list[int]],
    *,
    masking: MaskingConfig | None = None,
    seed: int = 0,
    estimator: str = "full",
) -> dict[str, list[list[float]]]:
    """Both per-token quantities from one pair of forwards (original image, masked image), as lists of each
    completion's length:

    * ``"perception_kl"``: KL(π(·|I) ‖ π(·|I_mask)), full-vocabulary by default (see the module docstring;
      ``estimator`` k1/k2/k3 gives the training estimators on the answer's tokens instead);
    * ``"visual_dependency"``: d_t = clamp(exp(x) − x − 1, 0, 10), x = clamp(log π(o_t|I_mask) −
      log π(o_t|I), ±20) on the answer's own tokens: the quantity VPPO gates and PGPO weights by
      (`papo.followups.visual_dependency`), i.e. the training k3 estimate of the KL above.
    """
    from papo.followups import visual_dependency

    if estimator not in ("full", "k1", "k2", "k3"):
        raise ValueError(f"estimator must be 'full', 'k1', 'k2' or 'k3', got {estimator!r}")
    masking = masking or MaskingConfig()
    masked = [
        masked_copies(p, row, masking, seed, processor.image_processor)
        for p, row in zip(prompts, images, strict=True)
    ]
    logp, mask = completion_logprobs(model, processor, prompts, images, completions)
    logq, _ = completion_logprobs(model, processor, prompts, masked, completions)
    ids = torch.tensor([list(c) + [0] * (mask.size(1) - len(c)) for c in completions], device=logp.device)
    sampled_p = logp.gather(-1, ids[..., None]).squeeze(-1)
    sampled_q = logq.gather(-1, ids[..., None]).squeeze(-1)
    if estimator == "full":
        kl = (logp.exp() * (logp - logq)).sum(-1).clamp(min=0.0)  # >= 0; clamp float round-off only
    else:
        kl = per_token_kl(sampled_p, sampled_q, estimator)
    d = visual_dependency(sampled_p, sampled_q, mask)
    return {
        name: [row[: len(c)].tolist() for row, c in zip(values.cpu(), completions, strict=True)]
        for name, values in (("perception_kl", kl), ("visual_dependency", d))
    }


def perception_kl_per_token(
    model,
    processor,
    prompts: Sequence[list[dict[str, Any]]],
    images: Sequence[Sequence],
    completions: Sequence[list[int]],
    *,
    masking: MaskingConfig | None = None,
    seed: int = 0,
    estimator: str = "full",
) -> list[list[float]]:
    """KL(π(·|I) ‖ π(·|I_mask)) at every token of every completion (lists of each completion's length)."""
    return perception_per_token(
        model, processor, prompts, images, completions, masking=masking, seed=seed, estimator=estimator
    )["perception_kl"]


# --- showing per-token values: one token text and one colour scale for eval, the notebooks, the Space -----


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds, so that "".join(pieces) is the decoded answer (special tokens kept).

    Decoding the growing prefix (not each id alone) keeps multi-byte characters whole: a character split
    over byte-level tokens appears on the token that completes it, the others get "".
    """
    pieces, previous = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.startswith(previous) and not text.endswith("\ufffd"):
            pieces.append(text[len(previous) :])
            previous = text
        else:  # an incomplete character: wait for the token that completes it
            pieces.append("")
    full = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if pieces and "".join(pieces) != full:  # bytes that never formed a character, at the end
        pieces[-1] += full[len(previous) :] if full.startswith(previous) else "\ufffd"
    return pieces


def readable(piece: str) -> str:
    """A token piece made visible for labels: spaces as ␣, newlines as ↵, control characters as symbols."""
    if piece == "":
        return "∅"
    out = []
    for char in piece:
        if char == " ":
            out.append("␣")
        elif char == "\n":
            out.append("↵")
        elif char == "\t":
            out.append("⇥")
        elif ord(char) < 0x20:
            out.append(chr(0x2400 + ord(char)))  # U+2400 Control Pictures
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def kl_colour_scale(values: Iterable[Sequence[float]]) -> float:
    """The top of the heat-map colour scale: the largest value shown (0 if none).

    One rule everywhere a heat map is drawn (the Space, notebook 03), with one scale for everything on
    view, so the same KL has the same colour in both answers and the strongest token is full colour.
    """
    return max((max(row) for row in values if len(row)), default=0.0)


def kl_heatmap_html(pieces: Sequence[str], values: Sequence[float], scale: float) -> str:
    """Inline HTML spans, each token's text on a red background of opacity value / scale (hover: the value)."""
    import html

    return "".join(
        f'<span title="KL {value:.4f}" style="background: rgba(220, 40, 40, '
        f'{min(value / scale, 1.0) if scale > 0 else 0.0:.2f})">{html.escape(piece)}</span>'
        for piece, value in zip(pieces, values, strict=True)
    )
