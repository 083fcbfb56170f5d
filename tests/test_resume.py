"""Exact resume: a run interrupted after step k and resumed matches an uninterrupted one; checkpoints
are atomic (a half-written one is never picked up) and save_total_limit holds."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from papo.train import parse_train_args, resolve_resume, train

STEPS = 4


class Interrupt(Exception):
    pass


class InterruptAfterSave(TrainerCallback):
    """Dies right after checkpoint-`step` is written: like a Colab timeout between steps."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupt(f"interrupted at step {state.global_step}")


def _args(tmp_path, out, *extra):
    argv = ["--output_dir", str(out), "--embedded_dir", str(tmp_path / "emb"), "--max_steps", str(STEPS)]
    argv += ["--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "2", *extra]
    return parse_train_args(argv)


def _metrics(out):
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return {r["step"]: r for r in rows if "perception_kl" in r}


def test_interrupted_and_resumed_run_matches_the_uninterrupted_one(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(*_args(tmp_path, straight))

    resumed = tmp_path / "resumed"
    script, training, model = _args(tmp_path, resumed)
    from papo.trainer import PAPOTrainer

    init = PAPOTrainer.__init__

    def init_with_interrupt(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), InterruptAfterSave(2)]
        init(self, *args, **kwargs)

    monkeypatch.setattr(PAPOTrainer, "__init__", init_with_interrupt)
    with pytest.raises(Interrupt):
        train(script, training, model)
    monkeypatch.setattr(PAPOTrainer, "__init__", init)
    assert resolve_resume("latest", str(resumed)).endswith("checkpoint-2")
    train(*_args(tmp_path, resumed, "--resume", "latest"))

    a, b = _metrics(straight), _metrics(resumed)
    for step in range(3, STEPS + 1):
        for key in ("perception_kl", "loss", "entropy/original", "completions/mean_length"):
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-5, abs=1e-7), (step, key)
    weights_a = load_file(straight / "adapter_model.safetensors")
    weights_b = load_file(resumed / "adapter_model.safetensors")
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], msg=name)
    # save_total_limit=2: only the two newest checkpoints are kept, and no staging leftovers are visible
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]

    # The same command again with --resume latest (a finished run): says so and changes nothing.
    before = {p: p.read_bytes() for p in resumed.rglob("*") if p.is_file()}
    assert train(*_args(tmp_path, resumed, "--resume", "latest")) is None
    assert {p: p.read_bytes() for p in resumed.rglob("*") if p.is_file()} == before


def test_half_written_checkpoint_is_never_picked(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (out / ".staging" / "checkpoint-2").mkdir(parents=True)  # a save killed midway
    assert resolve_resume("latest", str(out)).endswith("checkpoint-1")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(out / ".staging" / "checkpoint-2"), str(out))
    with pytest.raises(FileNotFoundError, match="no checkpoint-N folder"):
        resolve_resume("latest", str(tmp_path / "empty"))
