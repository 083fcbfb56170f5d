"""Contract with TRL: the GRPOTrainer internals PAPOTrainer wraps. If a TRL upgrade changes any of
them, this file fails first, with a message naming what moved — instead of PAPO silently training
GRPO (or crashing mid-run). Update papo/trainer.py, re-run the whole suite, then widen the pin."""

import inspect

import trl
from packaging.version import Version
from trl import GRPOTrainer

from papo.trainer import PAPOTrainer

TESTED_TRL = (Version("1.16.0"), Version("1.17.0"))  # [low, high): keep in sync with pyproject.toml

# method -> the parameters (in order) our wrappers pass or read
WRAPPED = {
    "_generate_and_score_completions": ["self", "inputs"],
    "_get_per_token_logps_and_entropies": [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
        "compute_aux_loss",
        "pixel_values",
        "image_grid_thw",
        "num_images",
    ],
    "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
    "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
    # VPPO's mini-batch score range; NoisyRollout's generation hook (issue 19)
    "_prepare_inputs": ["self", "generation_batch"],
    "_generate_single_turn": ["self", "prompt_ids", "images", "multimodal_fields", "num_generations"],
}


def test_trl_version_is_the_tested_one():
    version = Version(trl.__version__)
    assert TESTED_TRL[0] <= version < TESTED_TRL[1], (
        f"trl {version} is outside the range PAPOTrainer was tested with {TESTED_TRL}; see this file's docstring"
    )


def test_wrapped_methods_keep_their_signatures():
    for name, expected in WRAPPED.items():
        method = getattr(GRPOTrainer, name, None)
        assert method is not None, f"GRPOTrainer.{name} no longer exists: PAPOTrainer wraps it"
        params = list(inspect.signature(method).parameters)
        assert params[: len(expected)] == expected, f"GRPOTrainer.{name} signature changed: {params}"
        assert name in PAPOTrainer.__dict__, f"PAPOTrainer should wrap {name}"


def test_checkpoint_saving_internals_we_redirect():
    """PAPOTrainer._save_checkpoint stages checkpoints by shadowing `_get_output_dir` (transformers'
    Trainer) and applies `rotate_checkpoints` itself after the rename."""
    import transformers
    from transformers import Trainer
    from transformers.trainer_utils import rotate_checkpoints

    assert Version("5.24") <= Version(transformers.__version__) < Version("6"), transformers.__version__
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert list(inspect.signature(Trainer._get_output_dir).parameters) == ["self", "trial"]
    source = inspect.getsource(Trainer._save_checkpoint)
    assert "run_dir = self._get_output_dir(trial=trial)" in source, (
        "Trainer no longer takes run_dir from there"
    )
    assert "output_dir" in inspect.signature(rotate_checkpoints).parameters


def test_loss_reuses_one_training_forward():
    """PAPO takes the training forward's log-probs from the one call in TRL's `_compute_loss`."""
    source = inspect.getsource(GRPOTrainer._compute_loss)
    assert source.count("self._get_per_token_logps_and_entropies(") == 1, "TRL's loss forward changed"
    assert "compute_loss" in inspect.getsource(GRPOTrainer.compute_loss)


def test_generation_output_keys_and_loss_normalisation_we_rely_on():
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for key in (
        "prompt_ids",
        "prompt_mask",
        "completion_ids",
        "completion_mask",
        "num_items_in_batch",
        "pixel_values",
        "image_grid_thw",
        "num_images",
    ):
        assert f'"{key}"' in source, f"generation output no longer carries {key!r}"
    loss_source = inspect.getsource(GRPOTrainer._compute_loss)
    # PAPO mirrors these reductions (papo.loss.aggregate) and the gradient-accumulation scaling
    for fragment in (
        'self.loss_type == "bnpo"',
        "(per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)",
        'inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes',
        "self.current_gradient_accumulation_steps / self.args.steps_per_generation",
    ):
        assert fragment in loss_source, f"TRL's loss aggregation changed: {fragment!r} not found"


def test_prepare_inputs_carries_extra_batch_first_keys():
    """Our extra keys (masked log-probs, per-sample masked pixels) ride TRL's shuffle and split."""
    import torch
    from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

    batch = {
        "a": torch.arange(4),
        "masked_per_token_logps": torch.arange(8).view(4, 2),
        "masked_pixel_values": [torch.full((1,), i) for i in range(4)],
    }
    shuffled = shuffle_sequence_dict(batch)
    for i in range(4):
        j = int(shuffled["a"][i])
        assert torch.equal(shuffled["masked_per_token_logps"][i], batch["masked_per_token_logps"][j])
        assert int(shuffled["masked_pixel_values"][i]) == j
    halves = split_tensor_dict(shuffled, 2)
    assert len(halves[0]["masked_pixel_values"]) == 2 and halves[1]["masked_per_token_logps"].shape == (2, 2)


def test_reference_kl_switch_we_rely_on():
    """PAPOTrainer computes the official reference KL itself: it sets `self.beta = 0` while TRL's loss runs
    (TRL's reference term is gated on it) and reads the reference log-probs TRL computed at generation
    (also gated on `self.beta`, which is restored by then)."""
    loss_source = inspect.getsource(GRPOTrainer._compute_loss)
    assert loss_source.count("if self.beta != 0.0:") >= 2, (
        "TRL's reference KL is no longer gated on self.beta"
    )
    assert "self.beta * per_token_kl" in loss_source
    generation = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "if self.beta != 0.0:" in generation and '"ref_per_token_logps"' in generation


def _squashed(source: str) -> str:
    return " ".join(source.split())


def test_per_token_advantages_extension_point():
    """VPPO/PGPO hand TRL (B, T) advantages: TRL must keep using them as they are, multiplying the ratio terms,
    so that A·w is the loss weighted by w (tests/test_followups_trainer.py checks the gradient)."""
    source = _squashed(inspect.getsource(GRPOTrainer._compute_loss))
    for fragment in (
        'advantages = inputs["advantages"]',
        "if advantages.dim() == 1: advantages = advantages.unsqueeze(1)",
        "per_token_loss1 = coef_1 * advantages",
        "per_token_loss2 = coef_2 * advantages",
        "per_token_loss = -torch.min(per_token_loss1, per_token_loss2)",
    ):
        assert fragment in source, f"TRL's use of per-token advantages changed: {fragment!r} not found"


def test_micro_batch_buffer_vppo_reads():
    """VPPO's score range is per optimizer step: PAPOTrainer reads TRL's buffer of micro-batches right after
    a generation batch is split, in the order TRL consumes them."""
    source = _squashed(inspect.getsource(GRPOTrainer._prepare_inputs))
    for fragment in (
        "generation_batches = split_tensor_dict(generation_batch, self.args.steps_per_generation)",
        "self._buffered_inputs = [unsplit_pixel_values_by_grid(batch) for batch in generation_batches]",
        "inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]",
    ):
        assert fragment in source, f"TRL's generation buffering changed: {fragment!r} not found"


def test_noisy_rollout_hook_changes_only_what_is_generated_from():
    """NoisyRollout swaps the images/pixel values passed to `_generate_single_turn`; TRL's `_generate` must
    return its *own* images (from `_tokenize_prompts`), from which the scoring forwards' pixel values are built,
    so every loss term sees the clean image."""
    generate = _squashed(inspect.getsource(GRPOTrainer._generate))
    for fragment in (
        "prompt_ids, images, multimodal_fields = self._tokenize_prompts(prompts)",
        "completion_ids, logprobs = self._generate_single_turn( prompt_ids, images, multimodal_fields, num_generations )",
        "return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images",
    ):
        assert fragment in generate, f"TRL's _generate changed: {fragment!r} not found"
    scoring = _squashed(inspect.getsource(GRPOTrainer._generate_and_score_completions))
    for fragment in (
        ") = self._generate(prompts)",
        'prompt_inputs = self.processing_class(images=images, text=prompts_text, padding=True, return_tensors="pt")',
    ):
        assert fragment in scoring, f"TRL's scoring inputs changed: {fragment!r} not found"
    single = _squashed(inspect.getsource(GRPOTrainer._generate_single_turn))
    assert "images=images" in single and "for k, v in multimodal_fields.items():" in single, (
        "_generate_single_turn no longer generates from its images / multimodal_fields arguments"
    )
