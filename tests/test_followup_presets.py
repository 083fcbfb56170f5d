"""The VPPO, PGPO and NoisyRollout presets (Qwen2.5-VL-3B, LoRA/QLoRA): each carries its paper's settings and
trains one step through the real `papo train` path on a tiny Qwen2.5-VL (CPU), logging its own metrics."""

import pytest
from test_presets import run_preset_one_step  # one definition of a preset's CPU step

from papo.train import available_presets, parse_train_args

PRESETS = [
    f"{method}-qwen2.5vl-3b-{kind}"
    for method in ("vppo", "pgpo", "noisyrollout")
    for kind in ("lora", "qlora")
]


def test_the_presets_exist():
    assert set(PRESETS) <= set(available_presets())


def _check_paper_settings(preset, args, model_args):
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert model_args.load_in_4bit == preset.endswith("qlora")
    assert model_args.lora_dropout == 0.0 and args.disable_dropout
    if preset.startswith("vppo"):
        assert args.vppo_token_gating and args.vppo_top_fraction == 0.4
        assert args.vppo_advantage_scaling and args.vppo_beta_min == 0.9
        assert args.mask_per == "response" and args.mask_ratio == 0.5 and args.mask_patch_size == 14
        assert args.entropy_original_coef == 0.06 and args.perception_kl_coef == 0.0
        assert list(args.reward_weights) == [1.0, 0.0]  # accuracy only
        assert args.num_generations == 8 and args.steps_per_generation == 3 * args.gradient_accumulation_steps
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 128
    if preset.startswith("pgpo"):
        assert args.pgpo and args.pgpo_tau == 0.4 and args.pgpo_beta == 2.0 and not args.perception_loss
    if preset.startswith(("vppo", "pgpo")):  # both on DAPO
        assert args.beta == 0.0 and args.epsilon == 0.2 and args.epsilon_high == 0.28
        assert args.dynamic_sampling and args.loss_type == "dapo"
    if preset.startswith("noisyrollout"):
        assert args.noisy_rollout and args.num_generations == 12 and args.beta == 0.0
        assert args.noisy_rollout_max_step == 500 and args.noisy_rollout_decay == "sigmoid"
        assert args.noisy_rollout_decay_coef == 30.0
        updates = args.steps_per_generation // args.gradient_accumulation_steps
        assert updates == 4 and args.max_steps == 60 * updates
        assert args.noisy_rollout_decay_mid_step == 40 * updates
        assert not args.needs_masked_logps


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_one_step_on_a_tiny_model(preset, tiny_model_dirs, preset_data, tmp_path):
    _, training_args, model_args = parse_train_args(["--config", preset, "--bf16", "false"])
    _check_paper_settings(preset, training_args, model_args)

    out = tmp_path / "run"
    trainer, step = run_preset_one_step(preset, tiny_model_dirs["qwen2_5_vl"], preset_data, out)
    expected = {
        "vppo": (
            "visual_dependency",
            "vppo/gated_token_fraction",
            "vppo/advantage_scale_mean",
            "entropy/original",
        ),
        "pgpo": ("visual_dependency", "pgpo/weight_max"),
        "noisyrollout": ("noisy_rollout/noise_step",),
    }[preset.split("-")[0]]
    for key in expected:
        assert key in step, (key, sorted(step))
    if preset.startswith("vppo"):
        assert 0 < step["vppo/gated_token_fraction"] <= 1
    if preset.startswith("noisyrollout"):
        assert step["noisy_rollout/noise_step"] == 500  # k_1 of a 1-step run
    if model_args.load_in_4bit:
        assert any(type(m).__name__ == "Linear4bit" for m in trainer.model.modules())
    assert (out / "adapter_model.safetensors").is_file()
