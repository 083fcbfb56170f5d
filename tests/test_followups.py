"""VPPO, PGPO and NoisyRollout formulas (papo.followups, papo.masking) against hand computations (float64)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from papo.followups import (
    diffusion_alpha_bars,
    noise_step,
    noisy_rows,
    pgpo_token_weights,
    token_advantages,
    visual_dependency,
    vppo_advantage_scale,
    vppo_score_range,
    vppo_sensitivity,
    vppo_token_gate,
)
from papo.loss import per_token_kl
from papo.masking import MaskingConfig, diffusion_noise, mask_seed, response_key

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


# --- d_t ------------------------------------------------------------------------------------------


def test_visual_dependency_by_hand_with_padding_and_clamps():
    old = t([[-1.0, -2.0, -0.5, 0.0], [-1.0, -30.0, 0.0, 0.0]])
    masked = t([[-1.0, -1.0, -3.0, float("nan")], [-1.0, -4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    d = visual_dependency(old, masked, mask)
    expected = t(
        [
            [0.0, math.e - 2.0, math.exp(-2.5) + 2.5 - 1.0, 0.0],  # x = 0, 1, −2.5; padding (nan) → 0
            [0.0, 10.0, 0.0, 0.0],  # x = 26 → clamp 20 → exp(20) − 21 → clamp 10
        ]
    )
    torch.testing.assert_close(d, expected)
    assert d.dtype == F64 and not d.requires_grad
    # the same quantity as PAPO's per-token perception KL (k3) on valid tokens
    torch.testing.assert_close(d[0, :3], per_token_kl(old[0, :3], masked[0, :3], "k3"))


# --- VPPO -----------------------------------------------------------------------------------------


def test_vppo_gate_keeps_ceil_share_per_response():
    d = t(
        [
            [0.1, 0.5, 0.3, 0.9, 0.2],  # |o| = 5 → k = ceil(2.0) = 2: tokens 3 (0.9) and 1 (0.5)
            [0.3, 0.1, 0.3, 7.0, 7.0],  # |o| = 3 → k = ceil(1.2) = 2: tokens 0 and 2; padding never kept
            [0.5, 0.5, 0.1, 0.0, 0.0],  # |o| = 2 → k = 1, a tie: the earlier token
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    gate = vppo_token_gate(d, mask, 0.4)
    expected = t([[0, 1, 0, 1, 0], [1, 0, 1, 0, 0], [1, 0, 0, 0, 0]])
    torch.testing.assert_close(gate, expected)
    assert gate.sum(-1).tolist() == [2, 2, 1]
    # share 1.0 keeps every real token (and no padding)
    torch.testing.assert_close(vppo_token_gate(d, mask, 1.0), mask.to(F64))
    with pytest.raises(ValueError, match="vppo_top_fraction"):
        vppo_token_gate(d, mask, 0.0)


def test_vppo_gate_count_for_many_lengths():
    torch.manual_seed(0)
    for length in range(1, 30):
        d = torch.rand(1, 32, dtype=F64)
        mask = (torch.arange(32) < length)[None]
        assert int(vppo_token_gate(d, mask, 0.4).sum()) == math.ceil(length * 0.4)


def test_vppo_sensitivity_and_range():
    d = t([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = vppo_sensitivity(d, mask)
    torch.testing.assert_close(scores, t([2.0, 2.0, 0.0]))
    lengths = mask.sum(-1)
    torch.testing.assert_close(vppo_score_range(scores, lengths), t([2.0, 2.0]))  # the empty row is left out
    assert vppo_score_range(scores[:1], lengths[:1]) is None  # one response: no range (released code)


def test_vppo_advantage_scale_beta_max_rule_by_hand():
    scores, lengths = t([0.2, 0.6, 1.0, 0.4]), torch.tensor([3, 3, 3, 3])
    score_range = vppo_score_range(scores, lengths)  # (0.2, 1.0)
    scale = vppo_advantage_scale(scores, lengths, score_range, beta_min=0.9, eps=0.0)
    # Ŝ = (0, 0.5, 1, 0.25), mean 0.4375, β_max = 0.9 + 0.1/0.4375
    beta_max = 0.9 + 0.1 / 0.4375
    expected = t([0.9, 0.9 + 0.5 * (beta_max - 0.9), beta_max, 0.9 + 0.25 * (beta_max - 0.9)])
    torch.testing.assert_close(scale, expected)
    assert scale.mean().item() == pytest.approx(1.0)  # the rule keeps the mean advantage scale at 1
    # released code: the mean of Ŝ is over the micro-batch passed, the range over the mini-batch
    micro = vppo_advantage_scale(scores[:2], lengths[:2], score_range, beta_min=0.9, eps=0.0)
    torch.testing.assert_close(micro, t([0.9, 0.9 + 0.5 * (0.9 + 0.1 / 0.25 - 0.9)]))  # β_max = 1.3
    # clamp to [0, 1] outside the range; empty rows and degenerate ranges scale by 1
    out = vppo_advantage_scale(t([1.5, 0.0, 0.6]), torch.tensor([2, 2, 0]), t([0.2, 1.0]), 0.9, eps=0.0)
    torch.testing.assert_close(out, t([0.9 + 1.0 * (0.1 / 0.5), 0.9, 1.0]))  # Ŝ = (1, 0) → mean 0.5
    torch.testing.assert_close(vppo_advantage_scale(scores, lengths, None), torch.ones(4, dtype=F64))
    flat = vppo_advantage_scale(scores, lengths, t([0.5, 0.5 + 1e-7]))
    torch.testing.assert_close(flat, torch.ones(4, dtype=F64))
    # β_min = 1 → all scales 1
    torch.testing.assert_close(
        vppo_advantage_scale(scores, lengths, score_range, 1.0), torch.ones(4, dtype=F64)
    )


# --- PGPO -----------------------------------------------------------------------------------------


def test_pgpo_weights_by_hand_and_renormalised():
    info = [0.0, 0.5, 1.0, 0.2]  # log(1 + d): min 0, max 1 → Ĩ = info
    d = t([[math.expm1(v) for v in info] + [0.0], [0.3, 0.3, 0.0, 0.0, 0.0], [0.0] * 5])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    w = pgpo_token_weights(d, mask, tau=0.4, beta=2.0)
    raw = [
        0.0 / 0.4,
        1 + 2 * 0.1 / 0.6,
        1 + 2 * 0.6 / 0.6,
        0.2 / 0.4,
    ]  # Ĩ < τ: Ĩ/τ; else 1 + β(Ĩ − τ)/(1 − τ)
    expected0 = [v * 4 / sum(raw) for v in raw] + [0.0]
    torch.testing.assert_close(w[0], t(expected0))
    assert w[0].sum().item() == pytest.approx(4.0)  # Σ_t w_t = |o_i|
    torch.testing.assert_close(w[1], t([1.0, 1.0, 0.0, 0.0, 0.0]))  # constant d: uniform weights (our choice)
    torch.testing.assert_close(w[2], torch.zeros(5, dtype=F64))  # empty response
    with pytest.raises(ValueError, match="pgpo_tau"):
        pgpo_token_weights(d, mask, tau=1.0)


def test_pgpo_rows_sum_to_length_random():
    torch.manual_seed(1)
    d = torch.rand(6, 11, dtype=F64) * 3
    mask = torch.arange(11)[None] < torch.tensor([11, 7, 3, 2, 1, 5])[:, None]
    w = pgpo_token_weights(d, mask)
    torch.testing.assert_close(w.sum(-1), mask.sum(-1).to(F64))
    assert (w >= 0).all() and (w[~mask] == 0).all()


def test_token_advantages_broadcast():
    adv = t([1.0, -2.0])
    weights = t([[1.0, 0.0, 0.5], [2.0, 1.0, 0.0]])
    torch.testing.assert_close(token_advantages(adv, weights), t([[1.0, 0.0, 0.5], [-4.0, -2.0, 0.0]]))


# --- NoisyRollout -----------------------------------------------------------------------------------


def test_diffusion_schedule_by_hand():
    alpha_bars = diffusion_alpha_bars()
    assert alpha_bars.shape == (1000,) and alpha_bars.dtype == F64
    beta = lambda x: 1 / (1 + math.exp(-x)) * (5e-3 - 1e-5) + 1e-5  # noqa: E731
    assert alpha_bars[0].item() == pytest.approx(1 - beta(-6.0), rel=1e-12)
    assert alpha_bars[1].item() == pytest.approx((1 - beta(-6.0)) * (1 - beta(-6.0 + 12 / 999)), rel=1e-12)
    assert (alpha_bars.diff() < 0).all()
    assert alpha_bars[500].item() == pytest.approx(
        float(torch.prod(1 - torch.tensor([beta(-6 + 12 * i / 999) for i in range(501)], dtype=F64))),
        rel=1e-9,
    )


def test_noise_step_sigmoid_annealing_by_hand():
    kwargs = dict(max_step=500, decay="sigmoid", coef=30.0, mid_step=40.0)
    # k_t = floor(500 · (1 − σ(30 (t − 40) / 60)))
    assert noise_step(40, 60, **kwargs) == 250
    assert noise_step(1, 60, **kwargs) == int(500 * (1 - 1 / (1 + math.exp(30 * 39 / 60)))) == 499
    assert noise_step(60, 60, **kwargs) == 0
    assert noise_step(50, 60, **kwargs) == int(500 * (1 - 1 / (1 + math.exp(-5.0))))
    assert noise_step(30, 60, max_step=500, decay="linear") == 250
    assert noise_step(30, 60, max_step=500, decay="none") == 500
    with pytest.raises(ValueError, match="noisy_rollout_decay"):
        noise_step(1, 60, decay="cosine")


def test_noisy_rows_are_the_second_half_of_each_group():
    assert noisy_rows(8, 4) == [False, False, True, True, False, False, True, True]
    assert noisy_rows(2, 4, first_row=2) == [True, True]  # this rank holds the end of a group
    assert noisy_rows(3, 6, first_row=3) == [True, True, True]
    with pytest.raises(ValueError, match="even"):
        noisy_rows(5, 5)


def test_diffusion_noise_keeps_size_and_follows_the_formula():
    rng_pixels = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    image = Image.fromarray(rng_pixels)
    alpha_bar = 0.7
    noised = diffusion_noise(image, alpha_bar, np.random.default_rng(5))
    assert noised.size == image.size and noised.mode == "RGB"
    eps = np.random.default_rng(5).standard_normal(size=(20, 30, 3))
    x = rng_pixels / 255.0
    expected = (np.clip(math.sqrt(alpha_bar) * x + math.sqrt(1 - alpha_bar) * eps, 0, 1) * 255).astype(
        np.uint8
    )
    assert np.array_equal(np.asarray(noised), expected)
    clean = np.asarray(diffusion_noise(image, 1.0, np.random.default_rng(5))).astype(int)
    assert np.abs(clean - rng_pixels.astype(int)).max() <= 1  # ᾱ = 1: the image (up to the uint8 truncation)
    with pytest.raises(ValueError, match="alpha_bar"):
        diffusion_noise(image, 1.5, np.random.default_rng(0))


# --- mask granularity -------------------------------------------------------------------------------


def test_mask_granularity_option():
    assert MaskingConfig().per == "prompt"
    assert MaskingConfig(per="response").per == "response"
    with pytest.raises(ValueError, match="mask_per"):
        MaskingConfig(per="token")
    key = b"k" * 16
    seeds = {mask_seed(0, 3, response_key(key, row)) for row in range(8)}
    assert len(seeds) == 8 and mask_seed(0, 3, key) not in seeds
    assert response_key(key, 2) == response_key(key, 2)


def test_model_cards_name_the_followups():
    from papo.hub.cards import _algorithm

    assert _algorithm({"perception_loss": False, "dynamic_sampling": True}) == ("DAPO", False)  # unchanged
    vppo = {
        "perception_loss": True,
        "perception_kl_coef": 0.0,
        "vppo_token_gating": True,
        "dynamic_sampling": True,
    }
    assert _algorithm(vppo) == ("VPPO", False)
    assert _algorithm({**vppo, "perception_kl_coef": 0.01}) == ("PAPO + VPPO", True)
    assert _algorithm({"perception_loss": False, "pgpo": True}) == ("PGPO", False)
    assert _algorithm({"perception_loss": False, "noisy_rollout": True}) == ("NoisyRollout", False)
