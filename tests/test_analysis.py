"""Per-token perception KL of given answers (what `papo eval` stores and the Space shows)."""

import pytest
import torch
from PIL import Image

from papo.analysis import completion_logprobs, perception_kl_per_token
from papo.generation import generate_completions
from papo.masking import MaskingConfig
from papo.modeling import load_vlm


@pytest.fixture(scope="module")
def setup(tiny_model_dirs):
    model, processor = load_vlm(tiny_model_dirs["qwen2_5_vl"])
    prompts = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}],
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "A longer question here?"}],
            }
        ],
    ]
    rng = torch.Generator().manual_seed(0)
    images = [
        [Image.fromarray(torch.randint(0, 255, (64, 64, 3), generator=rng, dtype=torch.uint8).numpy())]
        for _ in prompts
    ]
    outputs = generate_completions(
        model, processor, prompts, images, max_new_tokens=6, seed=0, show_progress=False
    )
    return model, processor, prompts, images, [ids for _, ids in outputs]


def test_kl_per_token_shape_sign_and_mask_dependence(setup):
    model, processor, prompts, images, completions = setup
    kl = perception_kl_per_token(model, processor, prompts, images, completions, seed=0)
    assert [len(k) for k in kl] == [len(c) for c in completions]
    assert all(v >= 0 for row in kl for v in row) and any(v > 0 for row in kl for v in row)
    none = perception_kl_per_token(
        model, processor, prompts, images, completions, masking=MaskingConfig(mask_ratio=0.0)
    )
    assert max(v for row in none for v in row) < 1e-6  # unmasked image: identical distributions
    again = perception_kl_per_token(model, processor, prompts, images, completions, seed=0)
    assert again == kl  # seeded masks


def test_batched_equals_one_by_one(setup):
    model, processor, prompts, images, completions = setup
    batched = perception_kl_per_token(model, processor, prompts, images, completions)
    for i in range(2):
        single = perception_kl_per_token(
            model, processor, prompts[i : i + 1], images[i : i + 1], completions[i : i + 1]
        )
        torch.testing.assert_close(torch.tensor(single[0]), torch.tensor(batched[i]), atol=1e-5, rtol=1e-4)


def test_logprobs_score_the_generated_tokens(setup):
    """Greedy decoding picks the argmax: the analysis forward must agree at every position."""
    model, processor, prompts, images, _ = setup
    greedy = generate_completions(
        model, processor, prompts, images, max_new_tokens=5, do_sample=False, show_progress=False
    )
    ids = [g[1] for g in greedy]
    logp, mask = completion_logprobs(model, processor, prompts, images, ids)
    for row, completion in enumerate(ids):
        assert logp[row, : len(completion)].argmax(-1).tolist() == completion


def test_k3_estimator_and_bad_estimator(setup):
    model, processor, prompts, images, completions = setup
    k3 = perception_kl_per_token(model, processor, prompts, images, completions, estimator="k3")
    assert all(v >= 0 for row in k3 for v in row)
    with pytest.raises(ValueError, match="estimator"):
        perception_kl_per_token(model, processor, prompts, images, completions, estimator="k4")
