"""The Qwen3-VL (2B/4B/8B, Instruct/Thinking) and Qwen2.5-VL-7B (LoRA/QLoRA) presets: each one runs one PAPO
step through the real `papo train` path (TrlParser -> PAPOConfig/ModelConfig -> PAPOTrainer) on a tiny random
model of the same architecture, and the PAPO term has a gradient on Qwen3-VL."""

import copy
import json

import pytest
import torch

from papo.train import available_presets, parse_train_args, train

NEW_PRESETS = [
    *(
        f"papo-g-qwen3vl-{size}-{kind}-lora"
        for size in ("2b", "4b", "8b")
        for kind in ("instruct", "thinking")
    ),
    "grpo-qwen3vl-2b-instruct-lora",
    "papo-g-qwen2.5vl-7b-lora",
    "papo-g-qwen2.5vl-7b-qlora",
]
# Only what a CPU run needs changed: the tiny model, a tiny data set, one short step, small images, fp32.
CPU_OVERRIDES = [
    "--max_steps", "1", "--per_device_train_batch_size", "2", "--num_generations", "2",
    "--gradient_accumulation_steps", "1", "--steps_per_generation", "1", "--max_completion_length", "8",
    "--max_train_samples", "2",
    "--min_pixels", "3136", "--max_pixels", "12544", "--bf16", "false", "--dtype", "float32",
    "--use_cpu", "true", "--save_strategy", "no", "--logging_steps", "1",
]  # fmt: skip


def test_the_presets_exist():
    assert set(NEW_PRESETS) <= set(available_presets())


def run_preset_one_step(preset: str, model_dir: str, data, out):
    """`papo train --config <preset>` with only CPU_OVERRIDES changed: (trainer, first logged step)."""
    argv = ["--config", preset, "--model_name_or_path", model_dir, "--dataset_name", str(data)]
    script_args, training_args, model_args = parse_train_args(
        [*argv, "--output_dir", str(out), *CPU_OVERRIDES]
    )
    trainer = train(script_args, training_args, model_args)
    assert trainer.state.global_step == 1
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return trainer, next(log for log in logs if "reward" in log)


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_preset_runs_one_papo_step_on_a_tiny_model_of_its_architecture(
    preset, tiny_model_dirs, preset_data, tmp_path
):
    arch = "qwen3_vl" if "qwen3vl" in preset else "qwen2_5_vl"
    # "--bf16 false" only because this CPU has no bf16; everything else is the preset's.
    script_args, training_args, model_args = parse_train_args(["--config", preset, "--bf16", "false"])
    # The preset's own settings, as the paper's (checked before the CPU overrides replace a few).
    if "qwen3vl" in preset:
        assert model_args.model_name_or_path.startswith("Qwen/Qwen3-VL-")
        assert training_args.perception_kl_coef == 0.01 and training_args.beta == 0.01
        assert training_args.entropy_original_coef == 0.0 and training_args.entropy_masked_coef == 0.0
        assert script_args.format_pattern == ("relaxed" if "thinking" in preset else "strict")
    else:
        assert model_args.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
        assert model_args.load_in_4bit == preset.endswith("qlora")
    assert training_args.perception_loss == preset.startswith("papo")

    out = tmp_path / "run"
    trainer, step = run_preset_one_step(preset, tiny_model_dirs[arch], preset_data, out)
    assert ("perception_kl" in step) == preset.startswith("papo")
    if preset.startswith("papo"):
        assert step["perception_kl"] > 0
    if model_args.load_in_4bit:
        assert any(type(m).__name__ == "Linear4bit" for m in trainer.model.modules())
    assert (out / "adapter_model.safetensors").is_file()


def test_papo_term_has_a_gradient_on_qwen3_vl(tmp_path, tiny_model_dirs):
    """The official Qwen3 branch never back-propagates the PAPO terms; here they change the gradient."""
    from transformers import AutoModelForImageTextToText

    from papo.data.loading import load_training_dataset
    from papo.data.synthetic import make_synthetic_dataset
    from papo.modeling import load_processor
    from papo.rewards import PAPO_REWARD_WEIGHTS, make_reward_funcs
    from papo.trainer import PAPOConfig, PAPOTrainer

    model_dir = tiny_model_dirs["qwen3_vl"]
    data = load_training_dataset(
        make_synthetic_dataset(num_train=4, num_test=1, seed=0)["train"], show_progress=False
    )[0]

    def trainer(gamma, model=None):
        args = PAPOConfig(
            output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
            max_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0, beta=0.01,
            loss_type="bnpo", reward_weights=PAPO_REWARD_WEIGHTS, perception_kl_coef=gamma,
        )  # fmt: skip
        return PAPOTrainer(
            model=model or AutoModelForImageTextToText.from_pretrained(model_dir),
            processing_class=load_processor(model_dir),
            reward_funcs=make_reward_funcs(format_pattern="relaxed"),
            args=args,
            train_dataset=data,
        )

    def grads(t, inputs):
        t.model.train()
        t.model.zero_grad()
        t.current_gradient_accumulation_steps = 1
        t.compute_loss(t.model, inputs).backward()
        return {n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None}

    papo = trainer(1.0)
    papo.model.train()
    torch.manual_seed(0)
    inputs = papo._generate_and_score_completions([data[i] for i in (0,) for _ in range(4)])
    with_papo = grads(papo, inputs)
    without = grads(trainer(0.0, model=copy.deepcopy(papo.model)), inputs)
    assert with_papo.keys() == without.keys() and with_papo
    difference = sum(float((with_papo[n] - without[n]).abs().sum()) for n in with_papo)
    assert difference > 0  # the perception KL term reaches the parameters
