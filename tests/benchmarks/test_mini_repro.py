"""The mini reproduction pipeline (benchmarks/mini_repro) at toy size: every stage runs and is reported."""

from __future__ import annotations

import json
import subprocess

import pytest
from PIL import Image

from benchmarks.mini_repro import run as mini
from benchmarks.mini_repro.evaluate import blind_images
from benchmarks.mini_repro.report import BASELINE_OF, mean_std, summarise


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini_repro_quick")
    assert mini.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_mode_trains_evaluates_and_reports_both_arms(quick_results):
    out, results = quick_results
    assert set(results["runs"]) == {"grpo-seed0", "papo-g-seed0"}
    for name, run in results["runs"].items():
        assert sorted(int(step) for step in run["evals"]) == [2, 4], name
        steps = [row["step"] for row in run["metrics"] if "perception_kl" in row]
        assert steps == [1, 2, 3, 4], f"{name}: perception KL must be logged every step, got {steps}"
        for evaluation in run["evals"].values():
            assert evaluation["with_image"]["n"] == evaluation["blind"]["n"] == 40
            assert evaluation["with_image"]["perception_kl"] > 0
        final = run["evals"]["4"]["with_image"]["sampled"]
        assert final["k"] == 2 and 0 <= final["mixed"] <= 1
        assert "sampled" not in run["evals"]["2"]["with_image"]  # sampled answers at the end only
        assert (out / "runs" / name / "train.log").read_text().strip()
    stats = results["summary"]["deltas"]["papo-g - grpo"]["stats"]["accuracy"]
    assert stats["n"] == 1 and stats["verdict"].startswith("one pair only")
    assert "--perception_kl_coef 0.0" in results["runs"]["grpo-seed0"]["command"]
    assert "--perception_kl_coef" not in results["runs"]["papo-g-seed0"]["command"]  # the demo preset's 0.02
    report = (out / "RESULTS.md").read_text()
    assert "| grpo | 1 |" in report and "| papo-g | 1 |" in report and "Δ papo-g - grpo" in report
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_shipped_warm_start_reads_the_images(quick_results):
    """The embedded warm start: far better with the image than with an all-black one (vision-high tasks)."""
    _, results = quick_results
    assert results["config"]["warm_start"], "quick mode should evaluate the shipped warm start"
    ws = results["warm_start"]["eval"]
    seeing, blind = ws["with_image"]["by_dependency"]["high"], ws["blind"]["by_dependency"]["high"]
    # 32 vision-dependent test items: the shipped warm start gains ~19 points from the image (200 items,
    # RESULTS.md); a blind model (the previous warm start) gained 0.6.
    assert seeing - blind >= 0.1, (seeing, blind)
    assert ws["with_image"]["perception_kl_by_dependency"]["high"] > 0.05


def test_rerun_reuses_every_stage_and_keeps_the_timings(quick_results, monkeypatch):
    out, before = quick_results

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(subprocess, "run", no_training)
    again = mini.run_experiment(mini.ExperimentConfig.quick_mode(out=str(out)), log=lambda message: None)
    # as JSON: the summary holds NaN p-values (one seed), and nan != nan
    assert json.dumps(again["summary"], sort_keys=True) == json.dumps(before["summary"], sort_keys=True)
    assert again["timings"] == before["timings"]  # a cached rerun adds no invocation
    assert len(before["timings"]["invocations"]) == 1 and before["timings"]["compute_seconds"] > 0
    assert f"{before['timings']['compute_seconds'] / 60:.1f} min" in (out / "RESULTS.md").read_text()


def test_median_seed_picks_the_seed_closest_to_the_median():
    runs = {
        f"papo-g-seed{s}": _run("papo-g", s, _evaluation(acc, 0.8, 0.2, 0.05))
        for s, acc in enumerate([0.1, 0.9, 0.5, 0.45, 0.7])
    }
    # accuracies (4*high + 0.8)/5: the median is seed 2's
    assert mini.median_seed({"runs": runs}, "papo-g") == 2
    with pytest.raises(ValueError, match="no evaluated grpo run"):
        mini.median_seed({"runs": runs}, "grpo")


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown method 'ppo'.*grpo, papo-g, papo-g-high, dapo, papo-d"):
        mini.run_experiment(mini.ExperimentConfig(methods=("ppo",)))


def test_blind_images_are_black_and_keep_their_size():
    images = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (32, 32), (255, 255, 255))]
    blind = blind_images(images)
    assert [b.size for b in blind] == [(64, 48), (32, 32)]
    assert all(b.getextrema() == ((0, 0), (0, 0), (0, 0)) for b in blind)


def _evaluation(acc_high: float, acc_low: float, blind_high: float, kl: float) -> dict:
    def split(high, low):
        return {
            "accuracy": (4 * high + low) / 5,
            "format": 1.0,
            "by_task": {"read_number": high, "text_arithmetic": low},
            "by_dependency": {"high": high, "low": low},
            "n": 10,
        }

    return {
        "with_image": split(acc_high, acc_low) | {"perception_kl": kl},
        "blind": split(blind_high, acc_low),
    }


def _run(method: str, seed: int, final: dict) -> dict:
    metrics = [
        {"step": s, "perception_kl": 0.01 * s, "rewards/accuracy_reward/mean": 0.5} for s in range(1, 5)
    ]
    return {
        "method": method,
        "seed": seed,
        "wall_seconds": 10.0,
        "metrics": metrics,
        "evals": {"2": final, "4": final},
    }


def test_summary_is_mean_and_sample_std_over_seeds_with_deltas_paired_by_seed():
    runs = {
        "grpo-seed0": _run("grpo", 0, _evaluation(0.4, 0.8, 0.3, 0.02)),
        "grpo-seed1": _run("grpo", 1, _evaluation(0.6, 0.8, 0.3, 0.04)),
        "papo-g-seed0": _run("papo-g", 0, _evaluation(0.5, 0.8, 0.2, 0.05)),
        "papo-g-seed1": _run("papo-g", 1, _evaluation(0.9, 0.8, 0.2, 0.07)),
    }
    summary = summarise({"runs": runs})
    grpo = summary["methods"]["grpo"]["accuracy_high"]
    assert grpo["mean"] == pytest.approx(0.5) and grpo["std"] == pytest.approx(0.1414213, rel=1e-5)
    delta = summary["deltas"]["papo-g - grpo"]
    # Paired: (0.5-0.4, 0.9-0.6) = (0.1, 0.3)
    assert delta["accuracy_high"]["mean"] == pytest.approx(0.2) and delta["accuracy_high"]["n"] == 2
    assert delta["image_gain_high"]["mean"] == pytest.approx(0.3)  # gains 0.1 vs 0.3 -> 0.3 vs 0.7
    assert summary["methods"]["papo-g"]["train_perception_kl_last20"]["mean"] == pytest.approx(0.025)
    assert mean_std([1.0])["std"] == 0.0
    stats = delta["stats"]["accuracy_high"]  # papo.stats.compare_paired(grpo, papo-g) over the 2 seeds
    assert stats["mean_diff"] == pytest.approx(0.2) and stats["n"] == 2
    assert stats["ci_low"] == pytest.approx(0.1) and stats["ci_high"] == pytest.approx(0.3)
    assert delta["stats_by_task"]["read_number"]["mean_diff"] == pytest.approx(0.2)


def test_collapse_warnings_are_read_from_the_train_log(tmp_path):
    config = mini.ExperimentConfig(out=str(tmp_path))
    log = mini.run_dir(config, "papo-g-high", 3) / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "INFO papo.train: starting\n"
        "WARNING papo.guards: step 37: signs of PAPO collapse (KL_prcp hacking, spec §5): perception_kl surging, "
        "both entropies rising; consider collapse_guard: reduce_gamma\n"
        "{'loss': 0.1, 'step': 38}\n"
        "WARNING papo.guards: step 41: signs of PAPO collapse (KL_prcp hacking, spec §5): a, b\n"
    )
    assert mini.collapse_warnings(config, "papo-g-high", 3) == [37, 41]
    assert mini.collapse_warnings(config, "grpo", 3) == []


def test_jobs_run_the_paired_arms_first_and_the_restricted_arm_on_its_seeds():
    config = mini.ExperimentConfig(seeds=(0, 1, 2), method_seeds={"papo-g-high": (0, 2, 7)})
    assert mini.experiment_jobs(config) == [
        *[("grpo", 0), ("papo-g", 0), ("grpo", 1), ("papo-g", 1), ("grpo", 2), ("papo-g", 2)],
        ("papo-g-high", 0),
        ("papo-g-high", 2),
    ]


@pytest.mark.parametrize("method", ["vppo", "pgpo", "noisyrollout"])
def test_followup_arms_are_valid_papo_train_commands(method, tmp_path):
    """Issue 19's arms: each command parses into the method's switches on its baseline arm's settings."""
    from papo.train import parse_train_args

    config = mini.ExperimentConfig(out=str(tmp_path), rl_steps=60)
    command = mini.train_command(config, method, 0, tmp_path / "warm", tmp_path / "data")
    assert command[:2] == ["papo", "train"]
    _, args, _ = parse_train_args(command[2:])
    assert BASELINE_OF[method] == ("grpo" if method == "noisyrollout" else "dapo")
    if method == "vppo":
        assert args.vppo_token_gating and args.vppo_advantage_scaling and args.mask_per == "response"
    if method == "pgpo":
        assert args.pgpo and args.dynamic_sampling and args.beta == 0.0
    if method == "noisyrollout":
        assert (
            args.noisy_rollout and args.noisy_rollout_decay_mid_step == 40 and args.num_generations % 2 == 0
        )
