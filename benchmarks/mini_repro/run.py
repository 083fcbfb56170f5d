"""The miniature reproduction: warm start -> GRPO vs PAPO-G (x seeds) -> evaluation -> RESULTS.

    python -m benchmarks.mini_repro                  # the full experiment (~45 min on 2 CPU cores)
    python -m benchmarks.mini_repro --quick          # pipeline smoke test (< 5 min; CI runs it)
    python -m benchmarks.mini_repro --methods grpo papo-g dapo papo-d --seeds 0 1 2

Stages, each cached in ``--out`` (rerunning skips what is already there):
1. the warm start (`papo.warm_start`: SFT of a ~2.4M-parameter Qwen2.5-VL from random init);
2. one `papo train` run per (method, seed), from the warm start, on the synthetic training split,
   with a LoRA adapter checkpoint every ``eval_every`` steps;
3. every checkpoint evaluated greedily on the synthetic test split, with the image and "blind"
   (image all black), plus the mean perception KL of its answers;
4. ``results.json``, ``RESULTS.md`` and ``curves.png`` summarising mean +- std over seeds.

The GRPO arm is `papo train` with ``perception_kl_coef: 0``: its loss and gradients equal TRL's
GRPOTrainer's (tests/test_trainer.py checks this), and the masked forward still runs, so the perception
KL is logged for both arms on the same footing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# Overrides of the `demo` preset (PAPO-G, spec §3 settings at tiny sizes) per method.
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {"perception_kl_coef": 0.0, "collapse_guard": "off"},
    "papo-g": {},
    "dapo": {
        "perception_kl_coef": 0.0,
        "collapse_guard": "off",
        "beta": 0.0,
        "epsilon_high": 0.28,
        "dynamic_sampling": True,
    },
    "papo-d": {
        "perception_kl_coef": 0.01,
        "beta": 0.0,
        "epsilon_high": 0.28,
        "dynamic_sampling": True,
        "entropy_original_coef": 0.03,
        "entropy_masked_coef": 0.03,
    },
}
BASELINE_OF = {"papo-g": "grpo", "papo-d": "dapo"}


@dataclass
class ExperimentConfig:
    """Everything that defines one run of the experiment (recorded in results.json)."""

    out: str = "outputs/mini_repro"
    methods: tuple[str, ...] = ("grpo", "papo-g")
    seeds: tuple[int, ...] = (0, 1, 2)
    rl_steps: int = 200
    eval_every: int = 50
    num_train: int = 1000  # synthetic training split for RL (seed 0)
    num_test: int = 200  # synthetic test split (seed 0), 40 per task
    data_seed: int = 0
    batch_size: int = 16  # completions per step (4 prompts x G)
    num_generations: int = 4
    max_completion_length: int = 32
    learning_rate: float = 5e-4
    warm_start_steps: int = 1500
    warm_start_rows: int = 12000
    warm_start: str | None = None  # use this checkpoint instead of training one
    quick: bool = False
    extra: list[str] = field(default_factory=list)  # more `papo train` flags, applied to every run

    @classmethod
    def quick_mode(cls, **overrides: Any) -> ExperimentConfig:
        """Every stage at toy size: checks the pipeline, not the outcome."""
        settings = dict(
            out="outputs/mini_repro_quick",
            seeds=(0,),
            rl_steps=4,
            eval_every=2,
            num_train=64,
            num_test=10,
            batch_size=8,
            max_completion_length=24,
            warm_start_steps=20,
            warm_start_rows=320,
            quick=True,
        )
        settings.update(overrides)
        return cls(**settings)


# ------------------------------------------------------------------------------------------ stages


def prepare_warm_start(config: ExperimentConfig, log=print) -> Path:
    """The warm-start checkpoint: `config.warm_start` if given, else trained (once) under `out`."""
    from papo.warm_start import WarmStartConfig, train_warm_start

    if config.warm_start:
        return Path(config.warm_start)
    path = Path(config.out) / "warm-start"
    if not (path / "config.json").exists():
        log(f"[mini_repro] training the warm start ({config.warm_start_steps} SFT steps) -> {path}")
    ws = WarmStartConfig(max_steps=config.warm_start_steps, num_train=config.warm_start_rows)
    return train_warm_start(path, ws)


def prepare_data(config: ExperimentConfig) -> Path:
    """The synthetic train/test splits RL trains and evaluates on, saved once under `out`."""
    from papo.data.synthetic import save_synthetic_dataset

    path = Path(config.out) / "data"
    if not (path / "dataset_dict.json").exists():
        save_synthetic_dataset(
            path, num_train=config.num_train, num_test=config.num_test, seed=config.data_seed
        )
    return path


def train_command(
    config: ExperimentConfig, method: str, seed: int, warm_start: Path, data: Path
) -> list[str]:
    """The exact `papo train` command line of one (method, seed) run."""
    flags: dict[str, Any] = {
        "model_name_or_path": warm_start,
        "dataset_name": data,
        "output_dir": run_dir(config, method, seed),
        "seed": seed,
        "max_steps": config.rl_steps,
        "per_device_train_batch_size": config.batch_size,
        "num_generations": config.num_generations,
        "max_completion_length": config.max_completion_length,
        "learning_rate": config.learning_rate,
        "save_strategy": "steps",
        "save_steps": config.eval_every,
        **METHODS[method],
    }
    command = ["papo", "train", "--config", "demo"]
    for name, value in flags.items():
        command += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return command + list(config.extra)


def run_dir(config: ExperimentConfig, method: str, seed: int) -> Path:
    return Path(config.out) / "runs" / f"{method}-seed{seed}"


def train_run(
    config: ExperimentConfig, method: str, seed: int, warm_start: Path, data: Path, log=print
) -> float:
    """Run one `papo train` job in a subprocess (skipped if its final adapter exists); wall seconds."""
    out = run_dir(config, method, seed)
    timing = out / "wall_seconds.json"
    if (out / "adapter_model.safetensors").exists() and timing.exists():
        return json.loads(timing.read_text())["wall_seconds"]
    command = train_command(config, method, seed, warm_start, data)
    log(f"[mini_repro] {' '.join(command)}")
    start = time.perf_counter()
    # `python -m papo.cli` is `papo` without relying on the console script being on PATH.
    subprocess.run([sys.executable, "-m", "papo.cli", *command[1:]], check=True)
    wall = time.perf_counter() - start
    timing.write_text(json.dumps({"wall_seconds": wall}))
    return wall


def checkpoints(config: ExperimentConfig, method: str, seed: int) -> list[tuple[int, Path]]:
    """(step, adapter dir) for every saved checkpoint of a run, by step."""
    found = []
    for path in run_dir(config, method, seed).glob("checkpoint-*"):
        if (path / "adapter_model.safetensors").exists():
            found.append((int(path.name.split("-")[1]), path))
    return sorted(found)


def evaluate_checkpoint(
    warm_start: Path, adapter: Path | None, test_rows, cache: Path, log=print
) -> dict[str, Any]:
    """Greedy test accuracy with and without the image + perception KL of one policy (cached as JSON)."""
    if cache.exists():
        return json.loads(cache.read_text())
    from benchmarks.mini_repro.evaluate import evaluate_policy
    from papo.evaluation.run import load_model_and_adapter
    from papo.files import write_text_atomically

    model, processor = load_model_and_adapter(
        str(warm_start), str(adapter) if adapter else None, dtype="float32"
    )
    start = time.perf_counter()
    result = {
        "with_image": evaluate_policy(model, processor, test_rows, perception_kl=True),
        "blind": evaluate_policy(model, processor, test_rows, blind=True),
    }
    result["eval_seconds"] = time.perf_counter() - start
    write_text_atomically(cache, json.dumps(result, indent=1))
    log(
        f"[mini_repro] eval {adapter or warm_start}: acc {result['with_image']['accuracy']:.3f} "
        f"blind {result['blind']['accuracy']:.3f} KL {result['with_image']['perception_kl']:.4f}"
    )
    return result


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The per-step training logs of a run (metrics.jsonl), training-step entries only."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "loss" in row or "reward" in row]


# ------------------------------------------------------------------------------------------ the whole


def run_experiment(config: ExperimentConfig, log=print) -> dict[str, Any]:
    """Run (or resume) every stage and return the results dict written to ``out/results.json``."""
    import datasets

    from benchmarks.mini_repro.report import summarise, write_report

    for method in config.methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stage_start = time.perf_counter()
    warm_start = prepare_warm_start(config, log)
    warm_start_seconds = time.perf_counter() - stage_start
    data = prepare_data(config)
    test_rows = datasets.load_from_disk(str(data))["test"]

    evals: dict[str, Any] = {
        "warm_start": evaluate_checkpoint(warm_start, None, test_rows, out / "evals" / "warm-start.json", log)
    }
    runs: dict[str, Any] = {}
    for seed in config.seeds:
        for method in config.methods:
            wall = train_run(config, method, seed, warm_start, data, log)
            name = f"{method}-seed{seed}"
            runs[name] = {
                "method": method,
                "seed": seed,
                "wall_seconds": wall,
                "command": " ".join(train_command(config, method, seed, warm_start, data)),
                "metrics": read_metrics(run_dir(config, method, seed) / "metrics.jsonl"),
                "evals": {
                    str(step): evaluate_checkpoint(  # str keys, as results.json gives them back
                        warm_start, path, test_rows, out / "evals" / f"{name}-step{step}.json", log
                    )
                    for step, path in checkpoints(config, method, seed)
                },
            }
    results = {
        "config": asdict(config),
        "machine": machine_info(),
        "warm_start": {
            "path": str(warm_start),
            "train_seconds": warm_start_seconds,
            "eval": evals["warm_start"],
        },
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
    }
    results["summary"] = summarise(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, out)
    log(f"[mini_repro] wrote {out / 'results.json'}, {out / 'RESULTS.md'}, {out / 'curves.png'}")
    return results


def export_assets(
    config: ExperimentConfig, assets: Path | None = None, method: str = "papo-g", seed: int = 0
) -> Path:
    """Copy the warm start and the final `method` adapter of `seed` into the package's embedded assets.

    These become the defaults of `papo train`/`eval`/`demo`, the Space and the notebooks (`papo.embedded`).
    """
    import shutil

    from papo import embedded
    from papo.files import write_dir_atomically

    assets = Path(assets or embedded.ASSETS_DIR)
    warm_start = Path(config.warm_start) if config.warm_start else Path(config.out) / "warm-start"
    adapter = run_dir(config, method, seed)
    if not (warm_start / "config.json").exists() or not (adapter / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"nothing to export: run the experiment first ({warm_start}, {adapter})")
    targets = {
        warm_start: assets / embedded.WARM_START_ASSET.name,
        adapter: assets / embedded.PAPO_ADAPTER_ASSET.name,
    }
    skipped = ("metrics.jsonl", "wall_seconds.json", "training_args.bin")

    def copy_from(source: Path) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            for path in source.iterdir():
                if path.is_file() and path.name not in skipped:
                    shutil.copy2(path, folder / path.name)
            if (folder / "adapter_config.json").exists():
                adapter_config = json.loads((folder / "adapter_config.json").read_text())
                adapter_config["base_model_name_or_path"] = str(
                    embedded.WARM_START_ASSET.relative_to(embedded.ASSETS_DIR.parents[1])
                )
                (folder / "adapter_config.json").write_text(
                    json.dumps(adapter_config, indent=2, sort_keys=True) + "\n"
                )

        return write

    for source, target in targets.items():
        write_dir_atomically(target, copy_from(source))
    return assets


def machine_info() -> dict[str, Any]:
    import torch
    import transformers
    import trl

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mini_repro", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the pipeline in < 5 min")
    parser.add_argument("--out", help="output folder (default outputs/mini_repro[_quick])")
    parser.add_argument("--methods", nargs="+", help=f"from {', '.join(METHODS)} (default grpo papo-g)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2")
    parser.add_argument("--rl_steps", type=int)
    parser.add_argument("--eval_every", type=int)
    parser.add_argument("--warm_start", help="an existing warm-start checkpoint (skips the SFT stage)")
    parser.add_argument(
        "--export",
        action="store_true",
        help="then copy the warm start and the papo-g seed-0 adapter into papo/assets (the embedded defaults)",
    )
    args, extra = parser.parse_known_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("quick", "export") and v is not None}
    for key in ("methods", "seeds"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    if extra:
        overrides["extra"] = extra
    config = (
        ExperimentConfig.quick_mode(**overrides) if args.quick else replace(ExperimentConfig(), **overrides)
    )
    run_experiment(config)
    if args.export:
        print(f"[mini_repro] exported the embedded defaults to {export_assets(config)}")
    return 0
