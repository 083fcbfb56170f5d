"""Guards: collapse signs (spec §5), NaN/inf steps never applied, OOM explained with the adapter kept."""

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl

import papo.guards as guards
from papo.cli import main
from papo.guards import CollapseGuard, NonFiniteLossError, check_finite, collapse_signs


def _history(n=12, kl=lambda i: 0.01, clip=lambda i: 0.01, ent=lambda i: 2.0, ent_masked=None):
    ent_masked = ent_masked or ent
    return [
        {
            "perception_kl": kl(i),
            "clip_ratio/high_mean": clip(i),
            "entropy/original": ent(i),
            "entropy/masked": ent_masked(i),
        }
        for i in range(n)
    ]


def test_healthy_run_shows_no_signs():
    assert collapse_signs(_history(), window=10) == []
    assert collapse_signs(_history(n=5, kl=lambda i: 10.0**i), window=10) == []  # too few logs yet


def test_each_sign_is_detected():
    surge = _history(kl=lambda i: 0.01 * 1.8**i)
    assert collapse_signs(surge) == ["perception_kl surging"]
    clip = _history(clip=lambda i: 0.001 * (i + 1))
    assert collapse_signs(clip) == ["clip_ratio/high_mean rising steadily"]
    entropies = _history(ent=lambda i: 1.0 + 0.1 * i)
    assert collapse_signs(entropies) == ["both entropies rising"]
    one_entropy = _history(ent=lambda i: 1.0 + 0.1 * i, ent_masked=lambda i: 1.0)
    assert collapse_signs(one_entropy) == []
    noisy_clip = _history(clip=lambda i: [0.01, 0.05][i % 2])
    assert collapse_signs(noisy_clip) == []


def _collapsing():
    return _history(kl=lambda i: 0.01 * 1.8**i, clip=lambda i: 0.001 * (i + 1), ent=lambda i: 1 + 0.1 * i)


@pytest.mark.parametrize("action", ["warn", "reduce_gamma", "stop"])
def test_guard_actions(action, caplog):
    guard = CollapseGuard(action, window=10)
    args, control = SimpleNamespace(perception_kl_coef=0.02), TrainerControl()
    with caplog.at_level(logging.WARNING):
        for step, log in enumerate(_collapsing()):
            guard.on_log(args, SimpleNamespace(global_step=step), control, logs=log)
    assert guard.triggered_at and "perception_kl surging" in caplog.text
    assert (args.perception_kl_coef < 0.02) == (action == "reduce_gamma")
    assert control.should_training_stop == (action == "stop") == guard.stopped


def test_bad_guard_action():
    with pytest.raises(ValueError, match="collapse_guard='panic'"):
        CollapseGuard("panic")


def test_check_finite_names_the_bad_values():
    check_finite(3, loss=torch.tensor(1.0))
    with pytest.raises(NonFiniteLossError, match=r"step 3: non-finite papo_loss=nan.*not applied"):
        check_finite(3, loss=torch.tensor(1.0), papo_loss=torch.tensor(float("nan")))


def _train_argv(tmp_path, *extra):
    return ["train", "--output_dir", str(tmp_path / "run"), "--embedded_dir", str(tmp_path / "emb"), *extra]


@pytest.mark.slow
def test_nan_step_stops_the_run_and_saves_no_adapter(tmp_path, capsys):
    assert main(_train_argv(tmp_path, "--max_steps", "3", "--perception_kl_coef", "nan")) == 2
    err = capsys.readouterr().err
    assert "non-finite papo_loss=nan" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_collapse_guard_stop_keeps_no_collapsed_adapter(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        guards, "collapse_signs", lambda history, window: ["a", "b"] if len(history) >= 2 else []
    )
    argv = _train_argv(tmp_path, "--max_steps", "6", "--collapse_guard", "stop", "--save_strategy", "steps")
    assert main([*argv, "--save_steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "Stopped on collapse signs at step 2" in out
    assert (tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_oom_is_explained_and_the_adapter_kept(tmp_path, monkeypatch, capsys):
    from papo.trainer import PAPOTrainer

    original = PAPOTrainer.training_step
    calls = []

    def flaky_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PAPOTrainer, "training_step", flaky_step)
    assert main(_train_argv(tmp_path, "--max_steps", "4")) == 3
    err = capsys.readouterr().err
    assert "num_generations" in err and "max_completion_length" in err and "max_pixels" in err
    assert (tmp_path / "run" / "interrupted-step-1" / "adapter_model.safetensors").exists()
