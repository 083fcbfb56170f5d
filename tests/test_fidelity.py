"""Official-fidelity checks that need the real trainer (issue 14): dropout, the update schedule, and
which weights and pixels the masked branch uses."""

import json

import pytest
import torch
from trainer_testing import G, synthetic_train_rows, tiny_config, tiny_trainer

from papo.cli import main
from papo.families import image_forward_kwargs
from papo.modeling import LANGUAGE_LORA_TARGETS
from papo.trainer import PAPOTrainer


@pytest.fixture(scope="module")
def train_dataset():
    return synthetic_train_rows(16)


def _random_rewards():
    """accuracy/format stand-ins with random 0/1 values: the tiny model never earns reward, and the
    adapter only moves when a group's rewards differ."""
    generator = torch.Generator().manual_seed(0)

    def accuracy_reward(completions, **kwargs):
        return torch.randint(0, 2, (len(completions),), generator=generator).float().tolist()

    def format_reward(completions, **kwargs):
        return [0.0] * len(completions)

    return [accuracy_reward, format_reward]


def _trainer(tmp_path, model_dir, dataset, lora_dropout=0.0, **overrides):
    from peft import LoraConfig

    return tiny_trainer(
        PAPOTrainer,
        model_dir,
        dataset,
        tiny_config(tmp_path, **{"learning_rate": 5e-2, **overrides}),  # a large step: the adapter moves
        reward_funcs=_random_rewards(),
        peft_config=LoraConfig(
            r=4, lora_alpha=8, lora_dropout=lora_dropout, target_modules=LANGUAGE_LORA_TARGETS
        ),
    )


def _perception_kls(run_dir) -> list[float]:
    logs = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return [log["perception_kl"] for log in logs if "perception_kl" in log]


@pytest.mark.parametrize("disable_dropout", ["true", "false"])
def test_papo_train_mask_ratio_zero_with_lora_dropout_logs_zero_perception_kl(tmp_path, disable_dropout):
    """With the masked copy equal to the original, the perception KL must be 0 whatever LoRA dropout is
    requested: by default dropout is off (official); if the user turns it on, both passes draw the same
    dropout masks. (Before: 0.67-2.5 nats per token, dropout noise measured as "perception".)"""
    out = tmp_path / "run"
    argv = ["train", "--output_dir", str(out), "--embedded_dir", str(tmp_path / "emb"), "--max_steps", "3"]
    argv += ["--mask_ratio", "0.0", "--lora_dropout", "0.3", "--learning_rate", "0.05"]
    argv += ["--disable_dropout", disable_dropout]
    if disable_dropout == "false":
        with pytest.warns(UserWarning, match="biases the perception KL"):
            assert main(argv) == 0
    else:
        assert main(argv) == 0
    kls = _perception_kls(out)
    assert len(kls) == 3
    assert all(abs(kl) <= 1e-6 for kl in kls), kls


def test_dropout_on_without_consistent_passes_would_show_in_the_kl(tmp_path, tiny_model_dirs, train_dataset):
    """The check above can fail: with dropout on and the masked branch taken from generation time (no
    shared dropout masks), the same images give a perception KL far from 0."""
    trainer = _trainer(
        tmp_path,
        tiny_model_dirs["qwen2_5_vl"],
        train_dataset,
        lora_dropout=0.5,
        disable_dropout=False,
        mask_ratio=0.0,
    )
    assert trainer._dropout_active
    for module in trainer.model.modules():  # make the adapter non-zero, so its dropout matters
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=1.0)
    trainer.model.train()
    inputs = trainer._generate_and_score_completions([train_dataset[i] for i in (0, 1) for _ in range(G)])
    trainer.current_gradient_accumulation_steps = 1
    trainer.compute_loss(trainer.model, inputs)
    consistent = trainer._metrics["train"]["perception_kl"][-1]
    trainer._dropout_active = False  # the masked log-probs of generation time, as without the fix
    trainer.compute_loss(trainer.model, inputs)
    inconsistent = trainer._metrics["train"]["perception_kl"][-1]
    assert consistent <= 1e-6 and inconsistent > 1e-3, (consistent, inconsistent)


def test_masked_logps_are_the_old_policys_once_per_generation_batch(
    tmp_path, tiny_model_dirs, train_dataset, monkeypatch
):
    """steps_per_generation = 3 × accumulation (the presets' official schedule): one masked forward per
    generation batch, by the weights that generated it (π_θold with its adapter, not π_ref), so with
    mask_ratio 0 the masked log-probs equal TRL's old log-probs in every micro-batch, while the current
    policy moves away from them (importance ratio ≠ 1)."""
    trainer = _trainer(
        tmp_path,
        tiny_model_dirs["qwen2_5_vl"],
        train_dataset,
        max_steps=6,
        steps_per_generation=3,
        gradient_accumulation_steps=1,
        mask_ratio=0.0,
        beta=0.01,
    )
    masked_passes, checked = [], []
    add_masked = PAPOTrainer._add_masked_logps

    def counting(self, inputs, output):
        masked_passes.append(self.state.global_step)
        return add_masked(self, inputs, output)

    compute_loss = PAPOTrainer.compute_loss

    def checking(self, model, inputs, *args, **kwargs):
        old = inputs["old_per_token_logps"]
        mask = inputs["completion_mask"].bool()
        torch.testing.assert_close(inputs["masked_per_token_logps"][mask], old[mask], rtol=0, atol=1e-5)
        checked.append(not torch.allclose(inputs["ref_per_token_logps"][mask], old[mask], atol=1e-4))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(PAPOTrainer, "_add_masked_logps", counting)
    monkeypatch.setattr(PAPOTrainer, "compute_loss", checking)
    trainer.train()
    assert masked_passes == [0, 3]  # once per generation batch of 3 optimizer steps
    assert len(checked) == 6
    assert checked[3:] == [True] * 3  # the second batch's old policy is not the reference (adapter on)
    kls = [log["perception_kl"] for log in trainer.state.log_history if "perception_kl" in log]
    assert len(kls) == 6 and kls[0] <= 1e-6 and kls[3] <= 1e-6  # first update of each batch: θ == θold
    assert kls[1] > 1e-6 and kls[4] > 1e-6  # later updates: θ has moved, the target stays θold


def test_recompute_path_runs_the_masked_pixels(tmp_path, tiny_model_dirs, train_dataset):
    """recompute_masked_logps: the re-run masked branch equals the generation-time masked log-probs
    (same weights, same masked pixels), not the original-image log-probs."""
    trainer = _trainer(
        tmp_path,
        tiny_model_dirs["qwen2_5_vl"],
        train_dataset,
        recompute_masked_logps=True,
        mask_ratio=1.0,
    )
    trainer.model.train()
    inputs = trainer._generate_and_score_completions([train_dataset[i] for i in (0, 1) for _ in range(G)])
    recomputed = trainer._masked_logps_with_grad(trainer.model, inputs)
    assert recomputed.requires_grad
    mask = inputs["completion_mask"].bool()
    torch.testing.assert_close(recomputed[mask], inputs["masked_per_token_logps"][mask], rtol=0, atol=1e-5)
    original, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model,
        torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
        torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
        inputs["completion_ids"].size(1),
        **image_forward_kwargs(inputs, inputs["pixel_values"]),
    )
    assert (recomputed[mask] - original[mask]).abs().max() > 1e-3
