"""Multi-process training: `papo train` under `accelerate launch` with 2 processes on the CPU (gloo).

Each launch uses a shipped `configs/accelerate/*.yaml` unchanged (papo's `--use_cpu true` moves it
to the CPU). Each rank runs tests/distributed_worker.py, which is `papo train` plus a record of the
masked pixel values every rollout was scored on and of the metrics the rank logged. A prompt's G=4
rollouts are split over both ranks (2 per rank), which is exactly where a rank-local mask RNG would
give one group two different masked images. DeepSpeed ZeRO-2 and ZeRO-3 run the same job and must
end with the same metrics and the same adapter as DDP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "papo" / "configs" / "accelerate"
WORKER = Path(__file__).with_name("distributed_worker.py")
G = 4
STEPS = 2
RANK_LOCAL_METRICS = {
    "step_time"
}  # TRL's wall-clock time of the step on this rank; everything else is reduced


def group_masks(records: list[dict]) -> dict[tuple[int, str], dict]:
    """(step, prompt) -> {"ranks": set of ranks, "masked": set of masked digests, "original": set}."""
    groups: dict[tuple[int, str], dict] = defaultdict(
        lambda: {"ranks": set(), "masked": set(), "original": set()}
    )
    for record in records:
        for rollout in record["rollouts"]:
            group = groups[(rollout["step"], rollout["prompt"])]
            group["ranks"].add(record["rank"])
            group["masked"].add(rollout["masked"])
            group["original"].add(rollout["original"])
    return dict(groups)


def inconsistent_groups(groups: dict[tuple[int, str], dict]) -> list[tuple[int, str]]:
    """The groups whose rollouts were scored on more than one masked image."""
    return [key for key, group in groups.items() if len(group["masked"]) != 1]


def step_metrics(record: dict) -> list[dict]:
    """The per-step logs of one rank, without the rank-local wall-clock keys."""
    return [
        {k: v for k, v in log.items() if k not in RANK_LOCAL_METRICS}
        for log in record["logs"]
        if "perception_kl" in log
    ]


def test_inconsistent_groups_flags_a_group_with_two_masks():
    """The mask check below can fail: one group, two ranks, two different masked images."""
    records = [
        {"rank": 0, "rollouts": [{"step": 0, "prompt": "p", "original": "o", "masked": "a"}]},
        {"rank": 1, "rollouts": [{"step": 0, "prompt": "p", "original": "o", "masked": "b"}]},
    ]
    assert inconsistent_groups(group_masks(records)) == [(0, "p")]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> str:
    from papo.data.synthetic import save_synthetic_dataset

    root = tmp_path_factory.mktemp("distributed-data") / "synthetic"
    save_synthetic_dataset(root, num_train=16, num_test=1, seed=0)
    return str(root)


def launch(
    config: str,
    workdir: Path,
    model_dir: str,
    dataset_dir: str,
    env: dict | None = None,
    flags: dict | None = None,
    processes: int = 2,
):
    """`accelerate launch --config_file <config> --num_processes 2 worker.py <papo train flags>`
    (`processes=1`: the worker alone, no launcher). `flags` override the default train flags.

    Returns (the ranks' records, the run's output_dir).
    """
    record_dir = workdir / "records"
    output_dir = workdir / "run"
    train_flags = {
        "config": "demo",
        "model_name_or_path": model_dir,
        "dataset_name": dataset_dir,
        "max_train_samples": 16,
        "max_steps": STEPS,
        "per_device_train_batch_size": 2,  # 2 processes x 2 = one group of G=4 per step, split over both ranks
        "num_generations": G,
        "max_completion_length": 8,
        "perception_kl_coef": 0.02,
        "use_cpu": "true",
        "ddp_find_unused_parameters": "false",
        "disable_tqdm": "true",
        "save_strategy": "steps",
        "save_steps": 1,  # a checkpoint per step, written by both ranks (each its own RNG state)
        "output_dir": output_dir,
        **(flags or {}),
    }
    launcher = [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE_CONFIGS / config),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
    ]
    command = [
        sys.executable,
        *(launcher if processes == 2 else []),
        str(WORKER),
        *[word for key, value in train_flags.items() for word in (f"--{key}", str(value))],
    ]
    run_env = {**os.environ, "PAPO_TEST_RECORD_DIR": str(record_dir), "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command, cwd=workdir, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{config} launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return [
        json.loads((record_dir / f"rank{rank}.json").read_text()) for rank in range(processes)
    ], output_dir


def check_two_rank_run(records: list[dict], output_dir: Path) -> None:
    """Both ranks trained, each group's rollouts saw one mask across ranks, and the ranks agree on the metrics."""
    assert [r["world_size"] for r in records] == [2, 2]
    for record in records:  # every rank scored G/2 rollouts per step
        steps = [rollout["step"] for rollout in record["rollouts"]]
        assert sorted(steps) == [s for s in range(STEPS) for _ in range(G // 2)], steps

    groups = group_masks(records)
    assert len(groups) == STEPS  # one prompt per step
    for (step, _), group in groups.items():
        assert group["ranks"] == {0, 1}, f"step {step}: the group was not split over both ranks"
        assert len(group["original"]) == 1
        assert group["masked"].isdisjoint(group["original"]), "the masked pass saw the original image"
    assert inconsistent_groups(groups) == [], "a group's rollouts saw different masks on different ranks"

    metrics = [step_metrics(record) for record in records]
    assert [log["step"] for log in metrics[0]] == list(range(1, STEPS + 1))
    assert metrics[0] == metrics[1], "the ranks logged different metrics"
    for log in metrics[0]:
        assert log["perception_kl"] > 0 and log["entropy/original"] > 0 and log["perception_kl_coef"] == 0.02
    written = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    logged_steps = [log["step"] for log in written if "perception_kl" in log]
    assert logged_steps == list(range(1, STEPS + 1))  # once, by rank 0
    assert (output_dir / "adapter_model.safetensors").is_file()
    for step in range(1, STEPS + 1):  # complete: the main process renamed it only once both ranks had written
        files = {p.name for p in (output_dir / f"checkpoint-{step}").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= files, (step, files)
    staging = output_dir / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), f"left in staging: {list(staging.rglob('*'))}"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_model_dirs, dataset_dir):
    workdir = tmp_path_factory.mktemp("ddp")
    return launch("ddp.yaml", workdir, tiny_model_dirs["qwen2_5_vl"], dataset_dir)


def test_two_processes_ddp_train_papo_with_one_mask_per_group(ddp_run):
    records, output_dir = ddp_run
    assert {(r["distributed_type"], r["wrapped"]) for r in records} == {
        ("MULTI_CPU", "DistributedDataParallel")
    }
    check_two_rank_run(records, output_dir)


def test_two_processes_ddp_train_papo_on_smolvlm(tmp_path, dataset_dir, tiny_model_dirs):
    """A non-Qwen family under 2 processes: SmolVLM2's tiles + global view, padded per sample with a
    pixel_attention_mask; one mask per group across ranks, the same metrics on both ranks."""
    model_dir = tiny_model_dirs["smolvlm"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    records, output_dir = launch("ddp.yaml", workdir, model_dir, dataset_dir)
    check_two_rank_run(records, output_dir)


@pytest.mark.parametrize("config, stage", [("zero2.yaml", 2), ("zero3.yaml", 3)])
def test_two_processes_deepspeed_match_ddp(config, stage, ddp_run, tmp_path, tiny_model_dirs, dataset_dir):
    """The shipped ZeRO-2/3 configs on the CPU (DeepSpeed's CPU accelerator, gloo): same run as DDP."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("deepspeed is not installed (pip install -e '.[deepspeed]'); CI installs it")
    records, output_dir = launch(
        config, tmp_path, tiny_model_dirs["qwen2_5_vl"], dataset_dir, env={"PAPO_TEST_DISABLE_DS_SHM": "1"}
    )
    assert {(r["distributed_type"], r["wrapped"], r["zero_stage"]) for r in records} == {
        ("DEEPSPEED", "DeepSpeedEngine", stage)
    }
    check_two_rank_run(records, output_dir)

    ddp_records, ddp_output_dir = ddp_run
    for ours, theirs in zip(step_metrics(records[0]), step_metrics(ddp_records[0]), strict=True):
        for key in ("loss", "grad_norm", "perception_kl", "entropy/original", "entropy/masked", "kl"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-7), key
    adapter = load_file(output_dir / "adapter_model.safetensors")
    ddp_adapter = load_file(ddp_output_dir / "adapter_model.safetensors")
    assert adapter.keys() == ddp_adapter.keys()
    for name, tensor in adapter.items():
        torch.testing.assert_close(tensor, ddp_adapter[name], rtol=1e-4, atol=1e-6, msg=name)


DAPO_FLAGS = {  # PAPO-D's algorithm at tiny sizes: 3 groups per draw, the middle one split over the ranks
    "beta": 0.0,
    "epsilon_high": 0.28,
    "dynamic_sampling": "true",
    "perception_kl_coef": 0.01,
    "entropy_original_coef": 0.03,
    "entropy_masked_coef": 0.03,
    "save_strategy": "no",
    "max_steps": 3,
}


def kept_groups(records: list[dict]) -> dict[int, list[tuple[str, ...]]]:
    """step -> the batch's groups (G row digests each), in global row order (rank 0's rows first)."""
    rows: dict[int, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["rank"]):
        for row in record["kept_rows"]:
            rows[row["step"]].append(row["row"])
    return {step: [tuple(r[i : i + G]) for i in range(0, len(r), G)] for step, r in rows.items()}


def test_two_processes_dynamic_sampling_keeps_the_same_groups_as_one(tmp_path, tiny_model_dirs, dataset_dir):
    """PAPO-D (DAPO's dynamic sampling) with 2 processes keeps exactly the groups a 1-process run keeps:
    the keep decision is taken on the gathered rewards, refills are drawn alike on every rank, groups stay
    whole, and each rank trains on its slice of the same global batch."""
    env = {"PAPO_TEST_SCRIPTED_ACCURACY": "1"}
    model, two_dir, one_dir = tiny_model_dirs["qwen2_5_vl"], tmp_path / "two", tmp_path / "one"
    two_dir.mkdir()
    one_dir.mkdir()
    two, _ = launch(
        "ddp.yaml", two_dir, model, dataset_dir, env, {**DAPO_FLAGS, "per_device_train_batch_size": 6}
    )
    one, _ = launch(
        "ddp.yaml", one_dir, model, dataset_dir, env, {**DAPO_FLAGS, "per_device_train_batch_size": 12}, 1
    )
    groups = kept_groups(two)
    assert groups == kept_groups(one)
    assert sorted(groups) == [0, 1, 2] and all(len(step) == 3 for step in groups.values())
    for step in groups.values():
        for group in step:
            assert len(set(group)) == 1  # a group's G rows: one prompt and image
    draws = [log["dynamic_sampling/draws"] for log in one[0]["logs"] if "dynamic_sampling/draws" in log]
    assert max(draws) > 1, "no refill happened: the test would not exercise the cross-rank path"
    two_draws = [log["dynamic_sampling/draws"] for log in two[0]["logs"] if "dynamic_sampling/draws" in log]
    assert two_draws == draws


@pytest.mark.parametrize("name", ["ddp.yaml", "zero2.yaml", "zero3.yaml"])
def test_accelerate_configs_load(name):
    """The shipped launcher configs parse with accelerate's own loader and leave precision to papo."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / name))
    raw = yaml.safe_load((ACCELERATE_CONFIGS / name).read_text())
    assert config.mixed_precision == "no" and config.num_processes == raw["num_processes"] == 2
    if name.startswith("zero"):
        assert config.distributed_type == "DEEPSPEED"
        assert config.deepspeed_config["zero_stage"] == int(name[4])
    else:
        assert config.distributed_type == "MULTI_GPU"
