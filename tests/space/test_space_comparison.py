"""The comparison (space/space_comparison.py): both answers, their per-token KL, the mask, remasking."""

from __future__ import annotations

import numpy as np
import pytest
from space_comparison import SIDES, TOP_K, compare, remask
from space_testing import MAX_NEW_TOKENS
from space_uploads import SpaceError

# --- the comparison ----------------------------------------------------------------------------------


def test_compare_gives_both_answers_with_aligned_kl_and_the_training_mask(models, example_image):
    from papo.masking import MaskingConfig, masked_copies

    result = compare(models, example_image, "Which month is highest?", "Mar", 3, 1.0, MAX_NEW_TOKENS, 0.6)
    data = result.to_json()
    for side in SIDES:
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
        assert len(answer["top_tokens"]) == min(TOP_K, len(answer["kl"]))
    # The adapter changes the model: on this off-task question the sampled tokens may coincide, the
    # per-token KL (each side scored by its own model) cannot.
    assert data["baseline"]["kl"] != data["papo"]["kl"]
    assert data["kl_scale"] == max(max(data[s]["kl"]) for s in SIDES)
    [expected] = masked_copies(
        result.prompt, [result.image], MaskingConfig(mask_ratio=0.6), 3, models.processor.image_processor
    )
    assert np.array_equal(np.asarray(result.masked_image), np.asarray(expected))
    again = compare(models, example_image, "Which month is highest?", "Mar", 3, 1.0, MAX_NEW_TOKENS, 0.6)
    assert again.to_json()["papo"]["kl"] == data["papo"]["kl"]  # seeded: same seed, same everything


def test_baseline_is_the_base_model_without_the_adapter(models, example_image):
    from papo import embedded
    from papo.evaluation.run import eval_prompt
    from papo.generation import generate_completions
    from papo.modeling import load_model_and_adapter

    result = compare(models, example_image, "What is shown?", None, 5, 0.0, MAX_NEW_TOKENS, 0.6)
    assert models.names["baseline"] == str(embedded.WARM_START_ASSET)  # the embedded default
    base, processor = load_model_and_adapter(models.names["baseline"])
    [(_, ids)] = generate_completions(
        base, processor, [eval_prompt("<image>What is shown?")], [[result.image]],
        max_new_tokens=MAX_NEW_TOKENS, do_sample=False, show_progress=False,
    )  # fmt: skip
    assert result.answers["baseline"].token_ids == ids
    assert result.answers["papo"].correct is None  # no reference, no verdict


def test_remask_rescores_the_same_answers_with_another_mask(models, example_image):
    first = compare(models, example_image, "Which month?", None, 0, 1.0, MAX_NEW_TOKENS, 0.6)
    other = remask(models, first, 0.6, 1)
    assert other.settings.mask_seed == 1
    assert other.answers["papo"].token_ids == first.answers["papo"].token_ids
    assert other.answers["papo"].kl != first.answers["papo"].kl
    assert not np.array_equal(np.asarray(other.masked_image), np.asarray(first.masked_image))
    nothing_masked = remask(models, first, 0.0, 0)
    assert nothing_masked.kl_scale == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SpaceError, match="Run a comparison first"):
        remask(models, None, 0.6, 1)
