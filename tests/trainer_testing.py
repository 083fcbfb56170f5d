"""The tiny PAPOTrainer setup shared by the trainer tests (test_trainer, test_followups_trainer, test_fidelity).

The tiny model itself is the session fixture `tiny_model_dirs` (tests/conftest.py); this module builds the
rest: synthetic training rows, a PAPOConfig at tiny sizes, the trainer, and the helpers that drive one
generation batch and one loss/gradient by hand.
"""

from __future__ import annotations

from papo.data.loading import load_training_dataset
from papo.data.synthetic import make_synthetic_dataset
from papo.modeling import load_processor
from papo.rewards import PAPO_REWARD_WEIGHTS, make_reward_funcs
from papo.trainer import PAPOConfig

G = 4  # completions per prompt


def synthetic_train_rows(num_train: int = 16, **options):
    """`num_train` synthetic training rows in the training schema (seed 0; `options`: e.g. tasks="drawn")."""
    data = make_synthetic_dataset(num_train=num_train, num_test=1, seed=0, **options)["train"]
    return load_training_dataset(data, show_progress=False)[0]


def tiny_config(tmp_path, **overrides) -> PAPOConfig:
    """A PAPOConfig for two CPU steps of 2 prompts x G completions of 8 tokens (token-mean loss, no ref KL)."""
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=G,
        num_generations=G,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        loss_type="bnpo",
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.3,
        reward_weights=PAPO_REWARD_WEIGHTS,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return PAPOConfig(**values)


def tiny_trainer(cls, model_dir, dataset, args, model=None, peft_config=None, reward_funcs=None):
    """`cls` (PAPOTrainer or TRL's GRPOTrainer) on the tiny model saved in `model_dir` (or `model`)."""
    from transformers import AutoModelForImageTextToText

    model = model if model is not None else AutoModelForImageTextToText.from_pretrained(model_dir)
    return cls(
        model=model,
        processing_class=load_processor(model_dir),
        reward_funcs=reward_funcs or make_reward_funcs(),
        args=args,
        train_dataset=dataset,
        peft_config=peft_config,
    )


def generation_inputs(dataset, rows=(0, 1)):
    """What TRL's RepeatSampler hands to generation: each row repeated G times, consecutively."""
    return [dataset[i] for i in rows for _ in range(G)]


def loss_and_grads(trainer, inputs):
    """(loss, {parameter name: gradient}) of one compute_loss on `inputs`, in training mode."""
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads
