"""The comparison: one answer from the baseline and one from the PAPO model, each token scored by its
perception KL (`compare`), and the same answers re-scored against another mask (`remask`).

Both answers come from the same prompt, seed, temperature and token budget (the baseline is the base model,
PAPO the base model with the PAPO adapter, or a separate PAPO model); every generated token is then scored
with the perception KL of `papo.analysis`: KL(π(·|q, I, o_<t) ‖ π(·|q, I_mask, o_<t)) over the full
vocabulary, the masked image drawn exactly as in training (`papo.masking`, seeded). Higher = that token
depended more on seeing the image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image
from space_models import Models
from space_uploads import IMAGE_PLACEHOLDER, Settings, SpaceError, clean_question, load_image

logger = logging.getLogger("papo.space")

SIDES = ("baseline", "papo")
LABELS = {"baseline": "Baseline", "papo": "PAPO"}
TOP_K = 5  # most image-dependent tokens listed per answer


# --- tokens ------------------------------------------------------------------------------------------


def displayed(piece: str) -> str:
    """A token piece for the inline heat map: real text, but control characters made visible."""
    return "".join(chr(0x2400 + ord(c)) if ord(c) < 0x20 and c not in "\n\t" else c for c in piece)


# --- the comparison ----------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    tokens: list[str]  # the text each token adds ("" for bytes of a character completed later)
    raw_tokens: list[str] = field(default_factory=list)  # the tokenizer's own strings (byte-level BPE)
    kl: list[float] = field(default_factory=list)
    extracted: str | None = None
    correct: bool | None = None
    # d_t per token: k3 on the answer's own tokens, what VPPO gates and PGPO weights by (papo.followups)
    dependency: list[float] = field(default_factory=list)

    def label(self, position: int) -> str:
        """A readable label of one token; a partial character shows the tokenizer's byte token."""
        from papo.analysis import readable

        piece = self.tokens[position]
        if piece or not self.raw_tokens:
            return readable(piece)
        return f"[{self.raw_tokens[position]}]"

    def summary(self, top_k: int = TOP_K) -> dict[str, Any]:
        kl = self.kl
        order = sorted(range(len(kl)), key=lambda i: -kl[i])[:top_k]
        return {
            "n_tokens": len(kl),
            "mean_kl": sum(kl) / len(kl) if kl else 0.0,
            "max_kl": max(kl) if kl else 0.0,
            "mean_dependency": sum(self.dependency) / len(self.dependency) if self.dependency else 0.0,
            "top_tokens": [{"position": i, "token": self.label(i), "kl": kl[i]} for i in order],
        }


@dataclass
class Comparison:
    """One comparison: both answers with per-token KL, the images and everything needed to redo the mask."""

    question: str
    reference: str | None
    settings: Settings
    image: Image.Image
    masked_image: Image.Image
    prompt: list[dict[str, Any]]
    answers: dict[str, Answer]
    notes: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)

    @property
    def kl_scale(self) -> float:
        """The colour scale's top (`papo.analysis.kl_colour_scale`): one scale for both answers."""
        from papo.analysis import kl_colour_scale

        return kl_colour_scale(a.kl for a in self.answers.values())

    def to_json(self) -> dict[str, Any]:
        """Everything but the images, JSON-safe: the API's detailed result."""
        out: dict[str, Any] = {
            "question": self.question,
            "reference": self.reference,
            "settings": asdict(self.settings) | {"mask_seed": self.settings.mask_seed, "top_p": 1.0},
            "kl_scale": self.kl_scale,
            "identical_answers": self.answers["baseline"].token_ids == self.answers["papo"].token_ids,
            "image_size": list(self.image.size),
            "notes": list(self.notes),
            "models": dict(self.models),
        }
        for side, answer in self.answers.items():
            out[side] = {
                "answer": answer.text,
                "extracted": answer.extracted,
                "correct": answer.correct,
                "tokens": answer.tokens,
                "raw_tokens": answer.raw_tokens,
                "token_ids": answer.token_ids,
                "kl": answer.kl,
                "visual_dependency": answer.dependency,
                **answer.summary(),
            }
        return json.loads(json.dumps(out))


def compare(
    models: Models,
    image: Any,
    question: Any,
    reference: Any = None,
    seed: Any = 0,
    temperature: Any = 1.0,
    max_new_tokens: Any = 256,
    mask_ratio: Any = 0.6,
    mask_draw: Any = 0,
    progress: Callable[[float, str], Any] | None = None,
) -> Comparison:
    """Answer `question` about `image` with the baseline and the PAPO model; score every token's KL.

    Raises SpaceError (worded for the user) for bad inputs, models not ready or a failed generation.
    `progress(fraction, description)` is called before each step.
    """
    progress = progress or (lambda fraction, description: None)
    settings = Settings.checked(
        seed,
        temperature,
        max_new_tokens,
        mask_ratio,
        mask_draw,
        max_tokens_limit=models.config.max_new_tokens_limit,
    )
    text = clean_question(question, models.config.max_question_chars)
    reference = str(reference).strip() if reference is not None and str(reference).strip() else None
    _require_ready(models)
    picture, notes = load_image(image, models.pixel_budget())

    from papo.analysis import token_pieces
    from papo.evaluation.run import eval_prompt
    from papo.generation import generate_completions
    from papo.rewards import extract_boxed_answer, grade

    prompt = eval_prompt(IMAGE_PLACEHOLDER + text)  # the training prompt: the official instruction appended
    answers: dict[str, Answer] = {}
    with _model_errors(), models.lock:
        for number, side in enumerate(SIDES):
            progress(0.1 + 0.4 * number, f"{LABELS[side]}: generating ...")
            with models.policy(side) as model:
                [(answer_text, ids)] = generate_completions(
                    model,
                    models.processor,
                    [prompt],
                    [[picture]],
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=settings.temperature > 0,
                    temperature=settings.temperature or 1.0,
                    top_p=1.0,
                    batch_size=1,
                    seed=settings.seed,
                    show_progress=False,
                )
            tokenizer = models.processor.tokenizer
            answers[side] = Answer(
                answer_text, ids, token_pieces(tokenizer, ids), tokenizer.convert_ids_to_tokens(ids)
            )
        progress(0.85, "Per-token KL against the masked image ...")
        masked = _score(models, prompt, picture, answers, settings)
    for answer in answers.values():
        answer.extracted = extract_boxed_answer(answer.text)
        answer.correct = None if reference is None else grade(answer.extracted, reference)
    if answers["baseline"].token_ids == answers["papo"].token_ids:
        notes.append("Both models gave the same answer (same tokens): only the KL values can differ.")
    return Comparison(text, reference, settings, picture, masked, prompt, answers, notes, dict(models.names))


def remask(models: Models, comparison: Comparison, mask_ratio: Any, mask_draw: Any) -> Comparison:
    """The same answers scored against another mask (ratio and/or draw); no new generation."""
    if comparison is None:
        raise SpaceError("Run a comparison first: a new mask re-scores the answers it produced.")
    settings = Settings.checked(
        comparison.settings.seed,
        comparison.settings.temperature,
        comparison.settings.max_new_tokens,
        mask_ratio,
        mask_draw,
        max_tokens_limit=models.config.max_new_tokens_limit,
    )
    _require_ready(models)
    answers = {
        side: Answer(a.text, a.token_ids, a.tokens, a.raw_tokens, [], a.extracted, a.correct)
        for side, a in comparison.answers.items()
    }
    with _model_errors(), models.lock:
        masked = _score(models, comparison.prompt, comparison.image, answers, settings)
    return Comparison(
        comparison.question,
        comparison.reference,
        settings,
        comparison.image,
        masked,
        comparison.prompt,
        answers,
        list(comparison.notes),
        comparison.models,
    )


def _score(models: Models, prompt, picture: Image.Image, answers: dict[str, Answer], settings: Settings):
    """Fill each answer's per-token KL (hold models.lock); returns the masked image used for both."""
    from papo.analysis import perception_per_token
    from papo.masking import MaskingConfig, masked_copies

    masking = MaskingConfig(mask_ratio=settings.mask_ratio)
    eos = models.processor.tokenizer.eos_token_id
    for side in SIDES:
        answer = answers[side]
        with models.policy(side) as model:
            both = perception_per_token(
                model,
                models.processor,
                [prompt],
                [[picture]],
                [answer.token_ids or [eos]],
                masking=masking,
                seed=settings.mask_seed,
            )
        answer.kl = [float(v) for v in both["perception_kl"][0][: len(answer.token_ids)]]
        answer.dependency = [float(v) for v in both["visual_dependency"][0][: len(answer.token_ids)]]
    # The exact copy perception_per_token masked with (same prompt, images, config and seed).
    [masked] = masked_copies(prompt, [picture], masking, settings.mask_seed, models.processor.image_processor)
    return masked


def _require_ready(models: Models) -> None:
    if models.state == "failed":
        raise SpaceError(f"The models failed to load, so nothing can be generated: {models.error}")
    if not models.ready:
        raise SpaceError(f"The models are not ready yet: {models.status()} Try again in a moment.")


@contextmanager
def _model_errors():
    """Generation failures become a SpaceError for this request only; the models stay usable."""
    try:
        yield
    except SpaceError:
        raise
    except Exception as err:
        import torch

        logger.exception("generation failed")
        if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise SpaceError(
                "Out of memory while generating: lower 'Max new tokens' or use a smaller image, then retry."
            ) from None
        raise SpaceError(
            f"Generation failed ({type(err).__name__}: {err}). Try again or change the inputs."
        ) from None
