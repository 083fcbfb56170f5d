"""VPPO, PGPO and NoisyRollout wired into PAPOTrainer on the tiny Qwen2.5-VL: off = exactly GRPO/PAPO, the
per-token-advantage extension point gives the gradient of a gated/weighted loss, composition with the PAPO
term, d_t at generation, the mini-batch score range, mask granularity and the NoisyRollout generation hook."""

import copy

import pytest
import torch
from trainer_testing import G, synthetic_train_rows, tiny_config, tiny_trainer
from trainer_testing import generation_inputs as _rows  # each row G times, as TRL's sampler
from trainer_testing import loss_and_grads as _loss_and_grads
from trl import GRPOTrainer

import papo.trainer as trainer_module
from papo.families import image_forward_kwargs
from papo.followups import pgpo_token_weights, visual_dependency, vppo_token_gate
from papo.rewards import make_reward_funcs
from papo.trainer import PAPOTrainer


@pytest.fixture(scope="module")
def train_dataset():
    return synthetic_train_rows(8)


def _config(tmp_path, **overrides):
    return tiny_config(tmp_path, **{"perception_loss": False, **overrides})


def _length_reward(completions, **kwargs):
    """A reward that varies within a group (the tiny model never answers correctly): distinct advantages."""
    return [float(len(str(c))) % 7 for c in completions]


def _trainer(cls, model_dir, dataset, args, model=None, reward_funcs=None):
    return tiny_trainer(
        cls,
        model_dir,
        dataset,
        args,
        model=model,
        reward_funcs=reward_funcs or [*make_reward_funcs()[:1], _length_reward],
    )


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def _differs(a, b):
    return any(not torch.allclose(a[1][n], b[1][n]) for n in a[1])


@pytest.fixture(scope="module")
def setup(tiny_model_dirs, train_dataset, tmp_path_factory):
    """One VPPO-gating trainer and its generation batch (d_t computed), reused by the loss tests."""
    tmp_path = tmp_path_factory.mktemp("followups")
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    trainer = _trainer(PAPOTrainer, model_dir, train_dataset, _config(tmp_path, vppo_token_gating=True))
    trainer.model.train()
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(_rows(train_dataset))
    assert inputs["advantages"].abs().sum() > 0  # informative advantages
    return trainer, inputs, model_dir, tmp_path


def _variant(setup, cls=PAPOTrainer, **overrides):
    trainer, _, model_dir, tmp_path = setup
    return _trainer(
        cls,
        model_dir,
        trainer.train_dataset,
        _config(tmp_path, **overrides),
        model=copy.deepcopy(trainer.model),
    )


def _policy_logps(trainer, inputs):
    """log π_θ of the completions on the original image, with gradient (a separate forward)."""
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, input_ids, attention_mask, inputs["completion_ids"].size(1),
        **image_forward_kwargs(inputs, inputs["pixel_values"]),
    )  # fmt: skip
    return logps


def test_generation_adds_visual_dependency_from_the_old_policy(setup, monkeypatch):
    trainer, inputs, _, _ = setup
    d = inputs["visual_dependency"]
    assert d.shape == inputs["completion_ids"].shape and not d.requires_grad
    assert (d[inputs["completion_mask"] == 0] == 0).all() and d.sum() > 0
    assert "old_per_token_logps" not in inputs  # TRL skipped it (one update per generation): computed by us
    with torch.no_grad():
        old = _policy_logps(trainer, inputs)
    expected = visual_dependency(old, inputs["masked_per_token_logps"], inputs["completion_mask"])
    torch.testing.assert_close(d, expected, atol=1e-5, rtol=1e-4)


def test_options_off_and_neutral_settings_are_exactly_grpo(setup, train_dataset):
    trainer, inputs, _, _ = setup
    grpo = _loss_and_grads(_variant(setup, cls=GRPOTrainer), inputs)
    off = _variant(setup)  # every follow-up off, perception_loss off
    assert not off.args.needs_masked_logps
    _assert_same(_loss_and_grads(off, inputs), grpo)
    # neutral settings of each option reduce to GRPO: all tokens kept, β_min = 1
    _assert_same(
        _loss_and_grads(_variant(setup, vppo_token_gating=True, vppo_top_fraction=1.0), inputs), grpo
    )
    _assert_same(
        _loss_and_grads(_variant(setup, vppo_advantage_scaling=True, vppo_beta_min=1.0), inputs), grpo
    )
    # with PAPO's term on, the neutral follow-up settings are exactly PAPO
    papo = _loss_and_grads(_variant(setup, perception_loss=True, perception_kl_coef=0.5), inputs)
    neutral = _variant(
        setup, perception_loss=True, perception_kl_coef=0.5, vppo_token_gating=True, vppo_top_fraction=1.0
    )
    _assert_same(_loss_and_grads(neutral, inputs), papo)
    assert _differs(papo, grpo)
    # and the real settings change the gradient (the tests can fail)
    assert _differs(_loss_and_grads(trainer, inputs), grpo)
    assert _differs(_loss_and_grads(_variant(setup, pgpo=True), inputs), grpo)
    assert _differs(_loss_and_grads(_variant(setup, vppo_advantage_scaling=True), inputs), grpo)


def test_vppo_gating_value_denominator_and_gradient(setup):
    """Per-token advantages A·g give the loss −Σ g·A·r / N over ALL response tokens (bnpo, r = 1 on-policy)
    and the gradient of that explicitly gated loss."""
    trainer, inputs, _, _ = setup
    mask = inputs["completion_mask"]
    gate = vppo_token_gate(inputs["visual_dependency"], mask, 0.4)
    assert 0 < gate.sum() < mask.sum()
    adv = inputs["advantages"]
    loss, grads = _loss_and_grads(trainer, inputs)
    torch.testing.assert_close(loss, -(adv[:, None] * gate * mask).sum() / mask.sum())

    trainer.model.zero_grad()
    logp = _policy_logps(trainer, inputs)
    ratio = torch.exp(logp - logp.detach())
    reference = (-(adv[:, None] * ratio) * gate * mask).sum() / mask.sum()
    reference.backward()
    for name, grad in grads.items():
        torch.testing.assert_close(dict(trainer.model.named_parameters())[name].grad, grad, msg=name)


def test_per_token_advantages_equal_a_weighted_clipped_loss_off_policy(setup):
    """With old log-probs away from the current ones (clipping and the dual clip active), TRL's loss with
    A_{i,t} = w_t·A_i equals Σ w_t·ℓ_t(A_i) / N: the extension point is the weighted loss, for VPPO and PGPO."""
    trainer, inputs, _, _ = setup
    torch.manual_seed(3)
    with torch.no_grad():
        current = _policy_logps(trainer, inputs)
    shifted = {**inputs, "old_per_token_logps": current + 0.5 * torch.randn_like(current)}
    mask, adv = inputs["completion_mask"], inputs["advantages"]
    for variant, weights in (
        (trainer, vppo_token_gate(inputs["visual_dependency"], mask, 0.4)),
        (_variant(setup, pgpo=True), pgpo_token_weights(inputs["visual_dependency"], mask)),
    ):
        loss, grads = _loss_and_grads(variant, shifted)
        variant.model.zero_grad()
        logp = _policy_logps(variant, shifted)
        ratio = torch.exp(logp - shifted["old_per_token_logps"])
        clipped = torch.clamp(ratio, 1 - 0.2, 1 + 0.3)
        a = adv[:, None]
        per_token = -torch.min(torch.clamp(ratio, max=3.0) * a, clipped * a)  # TRL's clip + delta (dual clip)
        reference = (per_token * weights * mask).sum() / mask.sum()
        assert ((ratio > 1.3) & mask.bool()).any() and ((ratio < 0.8) & mask.bool()).any()
        torch.testing.assert_close(loss, reference.detach())
        reference.backward()
        params = dict(variant.model.named_parameters())
        for name, grad in grads.items():
            torch.testing.assert_close(params[name].grad, grad, msg=name)


def test_papo_term_composes_with_vppo_gating(setup):
    """PAPO + VPPO: the PAPO term is added unchanged to the gated policy-gradient loss."""
    _, inputs, _, _ = setup
    losses = {}
    for gamma in (0.0, 0.5):
        for gating in (False, True):
            trainer = _variant(
                setup, perception_loss=True, perception_kl_coef=gamma, vppo_token_gating=gating
            )
            losses[gamma, gating] = _loss_and_grads(trainer, inputs)
    papo_term = losses[0.5, False][0] - losses[0.0, False][0]
    assert papo_term.abs() > 0
    torch.testing.assert_close(losses[0.5, True][0] - losses[0.0, True][0], papo_term)
    for name, grad in losses[0.5, True][1].items():
        expected = losses[0.0, True][1][name] + losses[0.5, False][1][name] - losses[0.0, False][1][name]
        torch.testing.assert_close(grad, expected, msg=name, atol=1e-6, rtol=1e-4)


def test_vppo_score_range_is_per_mini_batch(setup, train_dataset):
    """steps_per_generation = 2 × gradient_accumulation_steps: two mini-batches per generation batch, each with
    the (min, max) of its own rows' S_i, shared by its micro-batches."""
    trainer = _variant(
        setup, vppo_advantage_scaling=True, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        steps_per_generation=4,
    )  # fmt: skip
    trainer.model.train()
    trainer._step = 0
    trainer._prepare_inputs(_rows(train_dataset))
    buffered = trainer._buffered_inputs
    assert len(buffered) == 4
    from papo.followups import vppo_score_range, vppo_sensitivity

    for start in (0, 2):
        chunk = buffered[start : start + 2]
        scores = torch.cat([vppo_sensitivity(b["visual_dependency"], b["completion_mask"]) for b in chunk])
        lengths = torch.cat([b["completion_mask"].sum(-1) for b in chunk])
        expected = vppo_score_range(scores, lengths)
        for batch in chunk:
            assert batch["vppo_score_range"].shape == (2, 2)
            torch.testing.assert_close(batch["vppo_score_range"][0], expected)
            torch.testing.assert_close(batch["vppo_score_range"][1], expected)


def test_mask_per_response_draws_one_mask_per_rollout(setup, train_dataset, monkeypatch):
    import papo.masking

    seeds = []
    original = papo.masking.mask_images

    def recording(images, config, seed, image_processor=None):
        seeds.append(seed)
        return original(images, config, seed, image_processor)

    monkeypatch.setattr(papo.masking, "mask_images", recording)  # what masked_copies draws with
    trainer = _variant(setup, vppo_token_gating=True, mask_per="response", mask_ratio=0.5)
    trainer.model.train()
    trainer._generate_and_score_completions(_rows(train_dataset))
    assert len(seeds) == 2 * G and len(set(seeds)) == 2 * G  # every rollout its own mask
    seeds.clear()
    trainer = _variant(setup, vppo_token_gating=True)  # default per prompt: the group shares one
    trainer.model.train()
    trainer._generate_and_score_completions(_rows(train_dataset))
    assert seeds[:G] == [seeds[0]] * G and seeds[G:] == [seeds[G]] * G


def test_followup_settings_fail_at_configuration(tmp_path):
    with pytest.raises(ValueError, match="pgpo"):
        _config(tmp_path, pgpo=True, vppo_token_gating=True)
    with pytest.raises(ValueError, match="vppo_top_fraction"):
        _config(tmp_path, vppo_top_fraction=1.5)
    with pytest.raises(ValueError, match="vppo_beta_min"):
        _config(tmp_path, vppo_beta_min=-0.1)
    with pytest.raises(ValueError, match="pgpo_tau"):
        _config(tmp_path, pgpo=True, pgpo_tau=0.0)
    with pytest.raises(ValueError, match="num_generations"):
        _config(tmp_path, noisy_rollout=True, num_generations=3, per_device_train_batch_size=3)
    with pytest.raises(ValueError, match="mask_per"):
        _config(tmp_path, mask_per="token")
    with pytest.raises(ValueError, match="loss_type"):
        _config(tmp_path, pgpo=True, loss_type="cispo")


# --- NoisyRollout -----------------------------------------------------------------------------------


def _record_generation(monkeypatch):
    calls = []
    original = GRPOTrainer._generate_single_turn

    def recording(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        calls.append((images, dict(multimodal_fields)))
        return original(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", recording)
    return calls


def test_noisy_rollout_half_of_each_group_generates_on_noise_every_loss_term_scores_clean(
    setup, train_dataset, monkeypatch
):
    calls = _record_generation(monkeypatch)
    rows = _rows(train_dataset)
    clean_trainer = _variant(setup, perception_loss=True)
    clean_trainer.model.train()
    torch.manual_seed(0)
    clean = clean_trainer._generate_and_score_completions(rows)
    clean_images, clean_fields = calls[-1]

    trainer = _variant(setup, perception_loss=True, vppo_token_gating=True, noisy_rollout=True, max_steps=60)
    trainer.model.train()
    forwards = []
    original_logps = PAPOTrainer._get_per_token_logps_and_entropies

    def recording_logps(self, *args, **kwargs):
        forwards.append(kwargs.get("pixel_values"))
        return original_logps(self, *args, **kwargs)

    monkeypatch.setattr(PAPOTrainer, "_get_per_token_logps_and_entropies", recording_logps)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(rows)
    images, fields = calls[-1]

    # generation: rows 0, 1 of each group on the clean image, rows 2, 3 on the noised one (same size)
    noised = [i for i in range(2 * G) if i % G >= G // 2]
    for i, (got, original) in enumerate(zip(images, clean_images, strict=True)):
        assert [im.size for im in got] == [im.size for im in original]
        same = all(a.tobytes() == b.tobytes() for a, b in zip(got, original, strict=True))
        assert same == (i not in noised), i
    assert trainer._noisy_generation["rows"] == [i in noised for i in range(2 * G)]
    # the noised copies are NoisyRollout's x_k at the scheduled step (k_1 = 499 of 60 steps), one per prompt
    assert trainer._noisy_generation["noise_step"] == 499
    assert images[2][0].tobytes() == images[3][0].tobytes() != images[6][0].tobytes()
    # transformers' generate received the noised pixel values for those rows only
    lengths = clean_fields["image_grid_thw"].prod(-1).tolist()  # one image per row
    noised_blocks = torch.split(fields["pixel_values"], lengths)
    for i, clean_block in enumerate(torch.split(clean_fields["pixel_values"], lengths)):
        assert torch.equal(noised_blocks[i], clean_block) == (i not in noised), i
    assert torch.equal(fields["image_grid_thw"], clean_fields["image_grid_thw"])

    # the batch every loss term uses, and every forward after generation, carry the clean image: the d_t pass
    # (old policy, original image) runs on exactly the clean pixel values, the masked pass on masked ones
    torch.testing.assert_close(out["pixel_values"], clean["pixel_values"])
    assert len(forwards) == 2
    assert not any(torch.equal(pv, fields["pixel_values"]) for pv in forwards)
    assert torch.equal(forwards[1], out["pixel_values"])
    # advantages are normalised over the whole group (clean and noised rollouts together)
    groups = out["advantages"].view(-1, G)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(2), atol=1e-5, rtol=0)


def test_noisy_rollout_off_and_in_eval_generate_on_clean_images(setup, train_dataset, monkeypatch):
    calls = _record_generation(monkeypatch)
    monkeypatch.setattr(trainer_module, "diffusion_noise", lambda *a, **k: pytest.fail("noised"))
    rows = _rows(train_dataset)
    trainer = _variant(setup, noisy_rollout=True)
    trainer.model.eval()  # evaluation rollouts are never noised
    trainer._generate_and_score_completions(rows)
    off = _variant(setup)  # and nothing is noised when the option is off
    off.model.train()
    off._generate_and_score_completions(rows)
    assert trainer._noisy_generation is None and off._noisy_generation is None
    for images, _ in calls[-2:]:
        for got, row in zip(images, rows, strict=True):
            assert [im.tobytes() for im in got] == [im.tobytes() for im in trainer_module._row_images(row)]
