"""What the commands print (papo.console): compact step lines and the end-of-run summary."""

import json

from papo.console import compact_line, run_summary


def test_compact_line_shows_the_metrics_that_matter_in_a_fixed_order():
    logs = {"loss": 0.1, "reward": 0.45, "rewards/accuracy_reward/mean": 0.4, "perception_kl": 0.0123}
    logs |= {"entropy": 0.8123, "step_time": 8.71, "grad_norm": 0.3, "clip_ratio/low_mean": 0.0}
    assert compact_line(logs, 3, 10) == (
        "step 3/10 | reward 0.450 | acc 0.400 | perception_kl 0.0123 | entropy 0.812 | s/step 8.7"
    )
    grpo = {"loss": 0.1, "reward": 0.5, "entropy": 0.7}  # no perception KL in a baseline run
    assert compact_line(grpo, 1, 2) == "step 1/2 | reward 0.500 | entropy 0.700"
    assert compact_line({"train_runtime": 14.3, "train_loss": 0.1}, 2, 2) is None  # the totals


def test_run_summary_compares_the_first_and_last_logged_steps(tmp_path):
    rows = [
        {"step": 1, "reward": 0.5, "perception_kl": 0.02},
        {"step": 2, "reward": 0.75, "perception_kl": 0.03},
        {"step": 2, "train_runtime": 90.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = run_summary(tmp_path)
    assert "steps 1-2" in text and "reward: 0.5 (first) -> 0.75 (last)" in text
    assert "perception KL: 0.02 (first) -> 0.03 (last)" in text and "training time 1.5 min" in text
    assert str(tmp_path) in run_summary(tmp_path / "missing")  # no metrics yet: still says where
