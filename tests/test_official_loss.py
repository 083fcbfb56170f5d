"""The whole micro-batch loss of PAPOTrainer (TRL's policy loss + our reference KL + the PAPO terms)
against a reference written from the official formulas (shared PAPO_SPEC.md §1.2-1.5, verl's
`compute_policy_loss`, `compute_kl("low_var_kl")`, `masked_mean`), in float64, value and gradient.

The training forward is replaced by a float64 leaf tensor, so the test sees exactly what the trainer
does with the log-probs: clipping, dual-clip, reference KL, perception KL, entropies, reductions and
gradient-accumulation scaling. The inputs include extreme importance ratios (log-ratio up to ±25)
and extreme reference / masked log-probs (log-ratio up to ±30), where the clamps act.
"""

import math

import pytest
import torch
from trl import GRPOTrainer

from papo.data.loading import load_training_dataset
from papo.data.synthetic import make_synthetic_dataset
from papo.modeling import load_processor
from papo.rewards import make_reward_funcs
from papo.trainer import PAPOConfig, PAPOTrainer

D = torch.float64
B, T = 6, 7
ACCUMULATION = 2


# --- the reference, written from the spec (verl/EasyR1), not from TRL -----------------------------
def masked_mean(values, mask):
    return (values * mask).sum() / (mask.sum() + 1e-8)  # verl VF.masked_mean


def low_var_kl(log_probs, ref_log_probs):
    kl = (ref_log_probs - log_probs).clamp(-20.0, 20.0)
    return (kl.exp() - kl - 1).clamp(min=-10.0, max=10.0)


def official_loss(logp, old, ref, aug, adv, mask, *, eps_low, eps_high, dual, beta, gamma, eta1, eta2):
    """dp_actor.update_policy for one micro-batch, `loss_avg_mode: token`, divided by accumulation."""
    adv = adv[:, None].expand_as(logp)
    neg_kl = (logp - old).clamp(-20.0, 20.0)
    ratio = neg_kl.exp()
    clipped = neg_kl.clamp(math.log(1 - eps_low), math.log(1 + eps_high)).exp()
    pg1, pg2, pg3 = -adv * ratio, -adv * clipped, -adv * dual
    higher = torch.max(pg1, pg2)
    lower = torch.min(higher, pg3)
    loss = masked_mean(torch.where(adv < 0, lower, higher), mask)
    if beta:
        loss = loss + beta * masked_mean(low_var_kl(logp, ref), mask)
    if gamma:
        loss = loss - gamma * masked_mean(low_var_kl(logp, aug), mask)
        loss = loss + eta2 * masked_mean(-aug, mask)
    loss = loss + eta1 * masked_mean(-logp, mask)
    return loss / ACCUMULATION


ALGORITHMS = {
    # bare PAPOConfig(): must be the official PAPO-G 3B (β 0.01, ε 0.2/0.3, dual 3, γ 0.02, bnpo)
    "papo-g (bare config)": dict(config={}, beta=0.01, eps_high=0.3, gamma=0.02, eta1=0.0, eta2=0.0),
    "grpo": dict(config=dict(perception_loss=False), beta=0.01, eps_high=0.3, gamma=0.0, eta1=0.0, eta2=0.0),
    "papo-d": dict(
        config=dict(
            beta=0.0,
            epsilon_high=0.28,
            perception_kl_coef=0.01,
            entropy_original_coef=0.03,
            entropy_masked_coef=0.03,
        ),
        beta=0.0,
        eps_high=0.28,
        gamma=0.01,
        eta1=0.03,
        eta2=0.03,
    ),
}


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    for row, length in enumerate([7, 5, 1, 6, 3, 7]):
        mask[row, length:] = 0
    logp = -torch.rand(B, T, generator=g, dtype=D) * 3 - 0.05
    # importance log-ratios: near 1, inside and outside both clips, past the dual clip, past ±20
    log_ratio = torch.tensor([0.0, 0.1, -0.1, 0.3, -0.4, 1.5, -2.0], dtype=D)
    log_ratio = torch.stack([log_ratio.roll(i) for i in range(B)])
    log_ratio[0, 0], log_ratio[1, 1], log_ratio[3, 2], log_ratio[5, 3] = 25.0, -25.0, 21.0, -22.0
    old = logp - log_ratio
    # reference and masked log-probs: k3 clamped at 10 (x > ~2.53), x clamped at ±20, and ordinary values
    offsets = torch.tensor([0.0, 3.0, -30.0, 30.0, 0.5, -2.0, 25.0], dtype=D)
    ref = logp + torch.stack([offsets.roll(i) for i in range(B)])
    aug = logp + torch.stack([offsets.roll(i + 3) for i in range(B)]) * 0.9
    adv = torch.tensor([1.5, -1.5, 0.7, -0.3, 0.0, -2.0], dtype=D)
    # padding holds finite garbage (the official masked_mean multiplies by the mask)
    pad = ~mask.bool()
    for x in (logp, old, ref, aug):
        x[pad] = torch.randn(int(pad.sum()), generator=g, dtype=D)
    return logp, old, ref, aug, adv, mask


@pytest.fixture(scope="module")
def dataset():
    data = make_synthetic_dataset(num_train=4, num_test=1, seed=0)["train"]
    return load_training_dataset(data, show_progress=False)[0]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_whole_loss_and_gradient_equal_the_official_formulas(
    name, tmp_path, tiny_model_dirs, dataset, monkeypatch
):
    from transformers import AutoModelForImageTextToText

    spec = ALGORITHMS[name]
    args = PAPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=B,
        num_generations=B,
        use_cpu=True,
        report_to="none",
        **spec["config"],
    )
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    trainer = PAPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        processing_class=load_processor(model_dir),
        reward_funcs=make_reward_funcs(),
        args=args,
        train_dataset=dataset,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = ACCUMULATION

    for seed in range(3):
        logp0, old, ref, aug, adv, mask = _inputs(seed)
        leaf = logp0.clone().requires_grad_(True)

        def forward(self, *a, leaf=leaf, **k):
            return leaf, torch.zeros_like(leaf), None

        monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", forward)
        inputs = {
            "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
            "prompt_mask": torch.ones(B, 1, dtype=torch.long),
            "completion_ids": torch.zeros(B, T, dtype=torch.long),
            "completion_mask": mask,
            "advantages": adv,
            "old_per_token_logps": old,
            "ref_per_token_logps": ref,
            "masked_per_token_logps": aug,
            "num_items_in_batch": mask.sum(),
        }
        loss = trainer.compute_loss(trainer.model, inputs)
        (grad,) = torch.autograd.grad(loss, leaf)

        ref_leaf = logp0.clone().requires_grad_(True)
        expected = official_loss(
            ref_leaf,
            old,
            ref,
            aug,
            adv,
            mask.to(D),
            eps_low=0.2,
            eps_high=spec["eps_high"],
            dual=3.0,
            beta=spec["beta"],
            gamma=spec["gamma"],
            eta1=spec["eta1"],
            eta2=spec["eta2"],
        )
        (expected_grad,) = torch.autograd.grad(expected, ref_leaf)
        assert loss.dtype == D
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-8)
        torch.testing.assert_close(grad * mask, expected_grad * mask, rtol=0, atol=1e-8)
        assert torch.all(grad[~mask.bool()] == 0)
