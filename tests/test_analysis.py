"""Per-token perception KL of given answers (what `papo eval` stores and the Space shows)."""

import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from papo.analysis import completion_logprobs, perception_kl_per_token, perception_per_token
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


def test_kl_direction_with_hand_set_distributions(monkeypatch):
    """KL(π(·|I) ‖ π(·|I_mask)), not the reverse: p = [0.9, 0.1] on the original image and q = [0.5, 0.5]
    on the masked one give 0.368 nats (the reverse would be 0.511). On the tiny model the two
    directions differ by < 1e-6, so only hand-set distributions can tell them apart."""
    import papo.analysis as analysis

    p = torch.tensor([0.9, 0.1]).log().view(1, 1, 2)
    q = torch.tensor([0.5, 0.5]).log().view(1, 1, 2)
    monkeypatch.setattr(analysis, "masked_copies", lambda prompt, row, *a, **k: ["masked"] * len(row))

    def logprobs(model, processor, prompts, images, completions):
        return (q if images[0][0] == "masked" else p), torch.ones(1, 1, dtype=torch.long)

    monkeypatch.setattr(analysis, "completion_logprobs", logprobs)
    processor = SimpleNamespace(image_processor=None)
    [full] = analysis.perception_kl_per_token(None, processor, [[]], [["original"]], [[0]])
    assert full == [pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-6)]
    assert full[0] == pytest.approx(0.368, abs=1e-3) and abs(full[0] - 0.511) > 0.1
    # the training estimator on the sampled token 0: k3 of x = log q − log p
    [k3] = analysis.perception_kl_per_token(None, processor, [[]], [["original"]], [[0]], estimator="k3")
    x = math.log(0.5 / 0.9)
    assert k3 == [pytest.approx(math.exp(x) - x - 1, abs=1e-6)]


def test_visual_dependency_next_to_the_full_kl(setup):
    """d_t (what VPPO/PGPO act on) is the k3 estimate on the answer's own tokens, from the same two forwards."""
    model, processor, prompts, images, completions = setup
    both = perception_per_token(model, processor, prompts, images, completions, seed=0)
    assert both["perception_kl"] == perception_kl_per_token(
        model, processor, prompts, images, completions, seed=0
    )
    k3 = perception_kl_per_token(model, processor, prompts, images, completions, seed=0, estimator="k3")
    for d, ref in zip(both["visual_dependency"], k3, strict=True):
        assert len(d) == len(ref)
        torch.testing.assert_close(torch.tensor(d), torch.tensor(ref).clamp(0.0, 10.0))
    assert any(v > 0 for row in both["visual_dependency"] for v in row)


def test_token_pieces_rebuild_the_text_and_keep_characters_whole():
    from papo.analysis import readable, token_pieces
    from papo.embedded import WARM_START_ASSET
    from papo.modeling import load_processor

    tokenizer = load_processor(str(WARM_START_ASSET)).tokenizer
    text = "Réponse: 3 ≤ 4 \\boxed{3}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)
    assert readable(" a\nb\x07") == "␣a↵b␇" and readable("") == "∅"


def test_one_colour_scale_for_every_heat_map():
    from papo.analysis import kl_colour_scale, kl_heatmap_html

    assert kl_colour_scale([[0.1, 0.4], [], [0.2]]) == 0.4 and kl_colour_scale([[], []]) == 0.0
    html = kl_heatmap_html(["<b>", "4"], [0.2, 0.4], 0.4)
    assert html.count("<span") == 2 and "&lt;b&gt;" in html  # token text is escaped
    assert "rgba(220, 40, 40, 0.50)" in html and "rgba(220, 40, 40, 1.00)" in html
    assert "rgba(220, 40, 40, 0.00)" in kl_heatmap_html(["x"], [0.0], 0.0)  # nothing masked: no colour
