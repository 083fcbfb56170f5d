"""PAPOTrainer on the tiny Qwen models: equivalence with GRPO at γ=0, where gradients flow, what the
masked pass sees, and short real training runs."""

import copy
import json

import pytest
import torch
from trainer_testing import (
    G,
    generation_inputs,
    loss_and_grads,
    synthetic_train_rows,
    tiny_config,
    tiny_trainer,
)
from trl import GRPOTrainer

import papo.trainer as trainer_module
from papo.dynamic_sampling import gather_rows
from papo.trainer import PAPOTrainer


@pytest.fixture(scope="module")
def train_dataset():
    return synthetic_train_rows(16)


def test_gamma_zero_matches_grpo_loss_and_gradients(tmp_path, tiny_model_dirs, train_dataset):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    args = tiny_config(tmp_path, perception_kl_coef=0.0, beta=0.01)
    papo = tiny_trainer(PAPOTrainer, model_dir, train_dataset, args)
    grpo = tiny_trainer(GRPOTrainer, model_dir, train_dataset, args, model=copy.deepcopy(papo.model))
    papo.model.train()
    torch.manual_seed(0)
    inputs = papo._generate_and_score_completions(generation_inputs(train_dataset))
    assert inputs["masked_per_token_logps"].shape == inputs["completion_ids"].shape
    papo_loss, papo_grads = loss_and_grads(papo, inputs)
    grpo_loss, grpo_grads = loss_and_grads(grpo, inputs)
    torch.testing.assert_close(papo_loss, grpo_loss)
    assert papo_grads.keys() == grpo_grads.keys() and papo_grads
    for name in papo_grads:
        torch.testing.assert_close(papo_grads[name], grpo_grads[name], msg=name)
    # and with γ > 0 they differ: the test can fail
    papo.args.perception_kl_coef = 0.5
    loss_with_kl, grads_with_kl = loss_and_grads(papo, inputs)
    assert not torch.allclose(loss_with_kl, grpo_loss)
    assert any(not torch.allclose(grads_with_kl[n], grpo_grads[n]) for n in grpo_grads)


def _count_forwards(trainer, monkeypatch):
    calls = []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    return calls


@pytest.mark.parametrize("recompute", [False, True])
def test_masked_branch_gradient_only_when_recomputed(
    tmp_path, tiny_model_dirs, train_dataset, monkeypatch, recompute
):
    """Default: the masked log-probs are a detached target (one no-grad forward at generation);
    with recompute_masked_logps the masked branch is re-run with gradient inside the loss."""
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    # only the masked-entropy term: its gradient exists iff the masked branch has one
    args = tiny_config(
        tmp_path, perception_kl_coef=0.0, entropy_masked_coef=1.0, recompute_masked_logps=recompute
    )
    trainer = tiny_trainer(PAPOTrainer, model_dir, train_dataset, args)
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(generation_inputs(train_dataset))
    assert not inputs["masked_per_token_logps"].requires_grad
    assert ("masked_pixel_values" in inputs) == recompute
    calls = _count_forwards(trainer, monkeypatch)
    _, grads = loss_and_grads(trainer, inputs)
    assert len(calls) == (2 if recompute else 1)  # TRL's training forward is reused, never repeated

    args0 = tiny_config(tmp_path, perception_kl_coef=0.0, recompute_masked_logps=recompute)
    baseline = tiny_trainer(PAPOTrainer, model_dir, train_dataset, args0, model=copy.deepcopy(trainer.model))
    _, base_grads = loss_and_grads(baseline, inputs)
    differs = any(not torch.allclose(grads[n], base_grads[n]) for n in base_grads)
    assert differs == recompute


def test_masked_pass_reuses_tokens_and_positions_only_images_differ(
    tmp_path, tiny_model_dirs, train_dataset, monkeypatch
):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    trainer = tiny_trainer(PAPOTrainer, model_dir, train_dataset, tiny_config(tmp_path, beta=0.01))
    trainer.model.train()
    calls = _count_forwards(trainer, monkeypatch)
    out = trainer._generate_and_score_completions(generation_inputs(train_dataset))
    # calls: the reference pass (original images, adapterless/ref) then PAPO's masked pass
    (ref_args, ref_kwargs, _), (masked_args, masked_kwargs, masked_result) = calls[-2], calls[-1]
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    for original, masked in zip(ref_args[1:4], masked_args[1:4], strict=True):  # ids, attention mask, n keep
        assert torch.equal(torch.as_tensor(original), torch.as_tensor(masked))
    assert torch.equal(masked_args[1], input_ids)
    for key in ("image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(ref_kwargs[key], masked_kwargs[key]), key
    assert ref_kwargs["num_images"] == masked_kwargs["num_images"]
    assert ref_kwargs["pixel_values"].shape == masked_kwargs["pixel_values"].shape
    assert not torch.equal(ref_kwargs["pixel_values"], masked_kwargs["pixel_values"])
    torch.testing.assert_close(masked_result[0], out["masked_per_token_logps"])
    # M-RoPE positions are computed from ids, token types, grid and attention mask: the same for both passes
    rope = trainer.model.model.get_rope_index

    def positions(args, kwargs):
        types = kwargs["mm_token_type_ids"]
        types = torch.nn.functional.pad(types, (0, args[1].size(1) - types.size(1)))  # completions are text
        return rope(args[1], types, image_grid_thw=kwargs["image_grid_thw"], attention_mask=args[2])[0]

    assert torch.equal(positions(ref_args, ref_kwargs), positions(masked_args, masked_kwargs))


def test_one_mask_per_prompt_shared_by_its_group(tmp_path, tiny_model_dirs, train_dataset, monkeypatch):
    """per_device_train_batch_size < num_generations: a group spans micro-batches, its mask does not change."""
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    args = tiny_config(tmp_path, per_device_train_batch_size=2, steps_per_generation=4)
    trainer = tiny_trainer(PAPOTrainer, model_dir, train_dataset, args)
    import papo.masking

    seeds = []
    original = papo.masking.mask_images

    def recording(images, config, seed, image_processor=None):
        seeds.append(seed)
        return original(images, config, seed, image_processor)

    monkeypatch.setattr(papo.masking, "mask_images", recording)  # what masked_copies draws with
    trainer.model.train()
    trainer._generate_and_score_completions(generation_inputs(train_dataset, rows=(0, 1)))
    assert seeds[:G] == [seeds[0]] * G and seeds[G:] == [seeds[G]] * G and seeds[0] != seeds[G]
    trainer.state.global_step += 1  # the next generation round draws fresh masks
    trainer._generate_and_score_completions(generation_inputs(train_dataset, rows=(0, 1)))
    assert seeds[2 * G] != seeds[0]


def _adapter_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_short_lora_training_run_logs_perception_kl(tmp_path, tiny_model_dirs, train_dataset, arch):
    from peft import LoraConfig

    from papo.modeling import LANGUAGE_LORA_TARGETS
    from papo.train import JsonlMetricsCallback

    model_dir = tiny_model_dirs[arch]
    args = tiny_config(tmp_path, max_steps=2, beta=0.01, perception_kl_coef=0.02)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_LORA_TARGETS)
    trainer = tiny_trainer(PAPOTrainer, model_dir, train_dataset, args, peft_config=peft_config)
    trainer.add_callback(JsonlMetricsCallback(tmp_path / "metrics.jsonl"))
    before = _adapter_weights(trainer.model)
    assert before and not any("visual" in n for n in before)  # vision tower frozen under LoRA
    trainer.train()
    after = _adapter_weights(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    logs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    step_logs = [log for log in logs if "perception_kl" in log]
    assert len(step_logs) == 2
    for log in step_logs:
        assert log["perception_kl"] > 0 and torch.isfinite(torch.tensor(log["perception_kl"]))
        assert 0 <= log["kl"] < 1  # the official reference KL, logged by PAPOTrainer (TRL's own is off)
        for key in (
            "entropy/original",
            "entropy/masked",
            "clip_ratio/low_mean",
            "clip_ratio/high_mean",
            "reward",
        ):
            assert key in log, key


def test_correct_only_mode_weights_by_accuracy(tmp_path, tiny_model_dirs, train_dataset):
    args = tiny_config(tmp_path, perception_kl_apply_mode="correct_only")
    trainer = tiny_trainer(PAPOTrainer, tiny_model_dirs["qwen2_5_vl"], train_dataset, args)
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(generation_inputs(train_dataset))
    # an untrained model answers nothing correctly: every rollout gets weight 0, the KL term vanishes
    assert torch.equal(inputs["papo_accuracy"], torch.zeros(2 * G))
    loss, _ = loss_and_grads(trainer, inputs)
    trainer.args.perception_kl_coef = 0.0
    loss_without, _ = loss_and_grads(trainer, inputs)
    torch.testing.assert_close(loss, loss_without)


def test_bad_papo_settings_fail_at_configuration(tmp_path):
    with pytest.raises(ValueError, match="mask_ratio|ratio"):
        tiny_config(tmp_path, mask_ratio=1.5)
    with pytest.raises(ValueError, match="schedule"):
        tiny_config(tmp_path, perception_kl_schedule="cosine")
    with pytest.raises(ValueError, match="entropy_estimator"):
        tiny_config(tmp_path, entropy_estimator="nope")


def _scripted_accuracy(script):
    """An `accuracy_reward` stand-in: call k returns script(k, n) for n completions (the tiny model
    never answers correctly, so tests that need informative groups script the accuracy)."""
    calls = []

    def accuracy_reward(completions, **kwargs):
        calls.append(len(completions))
        return script(len(calls), len(completions))

    return accuracy_reward, calls


def _format_reward(completions, **kwargs):
    return [0.0] * len(completions)


def test_perception_loss_off_is_plain_grpo(tmp_path, tiny_model_dirs, train_dataset, monkeypatch):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    args = tiny_config(tmp_path, perception_loss=False, beta=0.01)
    papo = tiny_trainer(PAPOTrainer, model_dir, train_dataset, args)
    grpo = tiny_trainer(GRPOTrainer, model_dir, train_dataset, args, model=copy.deepcopy(papo.model))
    papo.model.train()
    calls = _count_forwards(papo, monkeypatch)
    inputs = papo._generate_and_score_completions(generation_inputs(train_dataset))
    assert "masked_per_token_logps" not in inputs
    assert len(calls) == 1  # the reference pass only: no masked forward
    papo_loss, papo_grads = loss_and_grads(papo, inputs)
    grpo_loss, grpo_grads = loss_and_grads(grpo, inputs)
    torch.testing.assert_close(papo_loss, grpo_loss)
    for name in grpo_grads:
        torch.testing.assert_close(papo_grads[name], grpo_grads[name])


def test_gather_rows_rebuilds_the_batch(tmp_path, tiny_model_dirs, train_dataset):
    trainer = tiny_trainer(PAPOTrainer, tiny_model_dirs["qwen2_5_vl"], train_dataset, tiny_config(tmp_path))
    trainer.model.train()
    output = trainer._generate_and_score_completions(generation_inputs(train_dataset))
    # the layout gather_rows re-pads by (papo.dynamic_sampling): TRL's token types span prompt + completion
    width = output["prompt_ids"].size(1) + output["completion_ids"].size(1)
    assert output["mm_token_type_ids"].size(1) == width
    split = trainer_module.split_pixel_values_by_grid(output)
    rows = [(split, i) for i in range(output["completion_ids"].size(0))]
    rebuilt = trainer_module.unsplit_pixel_values_by_grid(gather_rows(rows, trainer._pad_token_id))
    for key, value in output.items():
        if key == "num_items_in_batch":
            continue
        if isinstance(value, torch.Tensor):
            assert torch.equal(rebuilt[key], value), key
        else:
            assert rebuilt[key] == value, key


def _dapo_trainer(tmp_path, tiny_model_dirs, train_dataset, script, **overrides):
    accuracy, calls = _scripted_accuracy(script)
    args = tiny_config(tmp_path, dynamic_sampling=True, perception_kl_coef=0.01, **overrides)
    trainer = tiny_trainer(
        PAPOTrainer,
        tiny_model_dirs["qwen2_5_vl"],
        train_dataset,
        args,
        reward_funcs=[accuracy, _format_reward],
    )
    trainer.model.train()
    return trainer, calls


def _half_right(n):
    return [float(i % 2) for i in range(n)]


def test_dynamic_sampling_refills_with_informative_groups(tmp_path, tiny_model_dirs, train_dataset):
    # draw 1: group 0 informative, group 1 all wrong; draw 2: both informative -> keep (1, 0) and (2, 0)
    def script(k, n):
        return _half_right(n // 2) + [0.0] * (n // 2) if k == 1 else _half_right(n)

    trainer, calls = _dapo_trainer(tmp_path, tiny_model_dirs, train_dataset, script)
    output = trainer._generate_and_score_completions(generation_inputs(train_dataset))
    assert len(calls) == 2  # one refill draw, of a whole generation batch (official fixed-size draws)
    assert trainer.dynamic_sampling_kept == [[(0, 0), (1, 0)]]  # draw order, truncated to one batch
    assert output["completion_ids"].size(0) == 2 * G
    assert torch.equal(output["papo_accuracy"].view(-1, G).mean(1), torch.full((2,), 0.5))
    assert output["image_grid_thw"].size(0) == sum(output["num_images"])
    assert output["pixel_values"].size(0) == int(output["image_grid_thw"].prod(-1).sum())
    assert int(output["num_items_in_batch"]) == int(output["completion_mask"].sum())
    assert trainer._metrics["train"]["dynamic_sampling/draws"] == [2.0]
    assert output["masked_per_token_logps"].shape == output["completion_ids"].shape
    loss, _ = loss_and_grads(trainer, output)
    assert torch.isfinite(loss)


def test_dynamic_sampling_keeps_a_draw_where_no_group_survives(tmp_path, tiny_model_dirs, train_dataset):
    """Official rule: if every group of a draw is all right or all wrong, the whole draw is kept."""
    trainer, calls = _dapo_trainer(tmp_path, tiny_model_dirs, train_dataset, lambda k, n: [0.0] * n)
    output = trainer._generate_and_score_completions(generation_inputs(train_dataset))
    assert len(calls) == 1 and trainer.dynamic_sampling_kept == [[(0, 0), (0, 1)]]
    assert output["completion_ids"].size(0) == 2 * G


def _one_group_informative(k, n):
    return _half_right(n // 2) + [1.0] * (n // 2)


def test_dynamic_sampling_raises_after_max_tries(tmp_path, tiny_model_dirs, train_dataset):
    from papo.dynamic_sampling import DynamicSamplingExhausted

    trainer, calls = _dapo_trainer(
        tmp_path, tiny_model_dirs, train_dataset, _one_group_informative, dynamic_sampling_max_tries=1
    )
    with pytest.raises(DynamicSamplingExhausted, match="1/2 groups after 1 draws"):
        trainer._generate_and_score_completions(generation_inputs(train_dataset))
    assert len(calls) == 1


def test_dynamic_sampling_top_up_option(tmp_path, tiny_model_dirs, train_dataset, caplog):
    trainer, calls = _dapo_trainer(
        tmp_path,
        tiny_model_dirs,
        train_dataset,
        _one_group_informative,
        dynamic_sampling_max_tries=1,
        dynamic_sampling_on_exhaust="top_up",
    )
    output = trainer._generate_and_score_completions(generation_inputs(train_dataset))
    assert len(calls) == 1 and output["completion_ids"].size(0) == 2 * G
    assert trainer.dynamic_sampling_kept == [[(0, 0), (0, 1)]]
    assert "only 1/2 informative groups after 1 draws" in caplog.text


def test_dynamic_sampling_refills_without_replacement(tmp_path, tiny_model_dirs, train_dataset):
    trainer, _ = _dapo_trainer(tmp_path, tiny_model_dirs, train_dataset, lambda k, n: [0.0] * n)
    trainer.train_dataset = [{"id": i} for i in range(16)]  # only its length and rows are used

    def drawn(count):
        return [row["id"] for row in trainer._next_refill_prompts(count)]

    epoch = drawn(5) + drawn(5) + drawn(6)
    assert sorted(epoch) == list(range(16))  # one pass: every prompt once
    second = drawn(16)
    assert sorted(second) == list(range(16)) and second != epoch  # reshuffled for the next pass


# The four algorithms of the presets (spec §3), at tiny sizes.
ALGORITHMS = {
    "grpo": dict(perception_loss=False, beta=0.01, epsilon_high=0.3),
    "papo-g": dict(perception_loss=True, beta=0.01, epsilon_high=0.3, perception_kl_coef=0.02),
    "dapo": dict(perception_loss=False, beta=0.0, epsilon_high=0.28, dynamic_sampling=True),
    "papo-d": dict(
        perception_loss=True,
        beta=0.0,
        epsilon_high=0.28,
        dynamic_sampling=True,
        perception_kl_coef=0.01,
        entropy_original_coef=0.03,
        entropy_masked_coef=0.03,
    ),
}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_algorithm_trains_the_adapter(tmp_path, tiny_model_dirs, train_dataset, algorithm):
    from peft import LoraConfig

    from papo.modeling import LANGUAGE_LORA_TARGETS

    generator = torch.Generator().manual_seed(0)
    accuracy, _ = _scripted_accuracy(
        lambda k, n: torch.randint(0, 2, (n,), generator=generator).float().tolist()
    )
    args = tiny_config(tmp_path, max_steps=2, **ALGORITHMS[algorithm])
    trainer = tiny_trainer(
        PAPOTrainer,
        tiny_model_dirs["qwen2_5_vl"],
        train_dataset,
        args,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_LORA_TARGETS),
        reward_funcs=[accuracy, _format_reward],
    )
    before = _adapter_weights(trainer.model)
    trainer.train()
    after = _adapter_weights(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    logged = {k for log in trainer.state.log_history for k in log}
    assert ("perception_kl" in logged) == ALGORITHMS[algorithm]["perception_loss"]
    assert ("dynamic_sampling/draws" in logged) == ALGORITHMS[algorithm].get("dynamic_sampling", False)


def test_micro_batch_smaller_than_group_trains(tmp_path, tiny_model_dirs, train_dataset):
    """per_device_train_batch_size < num_generations: TRL spreads a group over micro-batches."""
    from peft import LoraConfig

    from papo.modeling import LANGUAGE_LORA_TARGETS

    args = tiny_config(tmp_path, per_device_train_batch_size=2, steps_per_generation=2, max_steps=2)
    trainer = tiny_trainer(
        PAPOTrainer,
        tiny_model_dirs["qwen2_5_vl"],
        train_dataset,
        args,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_LORA_TARGETS),
    )
    trainer.train()
    kls = [log["perception_kl"] for log in trainer.state.log_history if "perception_kl" in log]
    assert len(kls) == 2 and all(kl > 0 for kl in kls)


def test_entropy_estimators_and_accumulation_scaling(tmp_path, tiny_model_dirs, train_dataset):
    """η1 with the sampled (official) or full-vocabulary entropy; PAPO terms scale with accumulation
    exactly like TRL's loss (bnpo: divided by the accumulation steps)."""
    args = tiny_config(tmp_path, perception_kl_coef=0.0, entropy_original_coef=1.0)
    trainer = tiny_trainer(PAPOTrainer, tiny_model_dirs["qwen2_5_vl"], train_dataset, args)
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(generation_inputs(train_dataset))
    trainer.args.entropy_original_coef = 0.0
    base, _ = loss_and_grads(trainer, inputs)
    trainer.args.entropy_original_coef = 1.0
    sampled, _ = loss_and_grads(trainer, inputs)
    trainer.args.entropy_estimator = "full"
    full, _ = loss_and_grads(trainer, inputs)
    assert sampled > base and full > base and not torch.isclose(sampled, full)
    trainer.current_gradient_accumulation_steps = 4
    trainer.model.zero_grad()
    scaled = trainer.compute_loss(trainer.model, inputs).detach()
    torch.testing.assert_close(scaled, full / 4)


def test_dynamic_sampling_refill_position_survives_a_resume(tmp_path, tiny_model_dirs, train_dataset):
    """The refill pass's position is saved with each checkpoint and restored by train(resume_from_checkpoint)."""

    def script(k, n):  # draw 1: one informative group of two -> one refill draw
        return _one_group_informative(k, n) if k == 1 else _half_right(n)

    save = dict(max_steps=1, save_strategy="steps", save_steps=1, per_device_train_batch_size=2 * G)
    trainer, calls = _dapo_trainer(tmp_path, tiny_model_dirs, train_dataset, script, **save)
    trainer.train()
    assert len(calls) == 2 and (trainer._refill.epoch, trainer._refill.cursor) == (1, 2)
    checkpoint = tmp_path / "checkpoint-1"
    state = json.loads((checkpoint / "papo_dynamic_sampling.json").read_text())
    assert state == {"refill_epoch": 1, "refill_cursor": 2}
    expected = trainer._refill.next_indices(20)  # crosses into the next pass

    resumed, _ = _dapo_trainer(
        tmp_path, tiny_model_dirs, train_dataset, script, **dict(save, max_steps=2, save_strategy="no")
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))  # step 2: one more refill draw of 2 prompts
    assert (resumed._refill.epoch, resumed._refill.cursor) == (1, 4)  # continued from (1, 2)
    assert resumed._refill.next_indices(18) == expected[2:]
