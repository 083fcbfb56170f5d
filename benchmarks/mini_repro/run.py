"""The miniature reproduction: warm start -> GRPO vs PAPO-G (x seeds) -> evaluation -> RESULTS.

    python -m benchmarks.mini_repro                  # the full experiment (~1 h on 2 CPU cores)
    python -m benchmarks.mini_repro --quick          # pipeline smoke test (< 3 min; CI runs it)
    python -m benchmarks.mini_repro --methods grpo papo-g dapo papo-d --seeds 0 1 2

Stages, each cached in ``--out`` (rerunning skips what is already there, and keeps the timings measured
when each stage ran):
1. the warm start (`papo.warm_start`: SFT of a ~2.4M-parameter Qwen2.5-VL from random init on the
   handwritten-digit tasks, so it reads the digits and RL has reward to work with);
2. one `papo train` run per (method, seed), from the warm start, on the synthetic training split,
   with a LoRA adapter checkpoint every ``eval_every`` steps; runs go ``--parallel`` at a time, one
   thread each (two single-thread runs beat one two-thread run on a 2-core machine);
3. every checkpoint evaluated greedily on the synthetic test split (digits never seen in training),
   with the image and "blind" (image all black), plus the mean perception KL of its answers, and the
   final one also with k sampled answers per question (temperature 1, as RL samples);
4. ``results.json``, ``RESULTS.md`` and ``curves.png``: mean ± std over seeds, and each PAPO arm minus
   its baseline paired by seed with a bootstrap 95% CI and a paired t-test (`papo.stats`).

Both arms of a seed share the seed, hence the data order, the LoRA init and the sampling streams (until
their policies differ). The GRPO arm is `papo train` with ``perception_kl_coef: 0``: its loss and
gradients equal TRL's GRPOTrainer's (tests/test_trainer.py checks this), and the masked forward still
runs, so the perception KL is logged for both arms on the same footing. The ``papo-g-high`` arm uses
10x the PAPO-G γ, to show the paper's "KL_prcp hacking" collapse (spec §5) and whether
``collapse_guard`` (warn mode: it logs, the run goes on) sees it.
"""

from __future__ import annotations

import argparse
import contextlib
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
    # 10x the demo preset's γ = 0.02: the over-weighted perception KL of the paper's collapse study.
    "papo-g-high": {"perception_kl_coef": 0.2},
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
    # Issue 19's follow-ups, each on its paper's base (VPPO, PGPO: DAPO; NoisyRollout: GRPO without KL is the
    # paper's, here the GRPO arm's β so that only the generation differs). The method's own switches are the
    # paper's; the rest (reward, batch sizes, clip) stays its baseline arm's, so the paired difference isolates
    # the method. Not in the default --methods (run with --methods grpo dapo vppo pgpo noisyrollout; RESULTS.md).
    "vppo": {
        "perception_kl_coef": 0.0,
        "collapse_guard": "off",
        "beta": 0.0,
        "epsilon_high": 0.28,
        "dynamic_sampling": True,
        "vppo_token_gating": True,
        "vppo_top_fraction": 0.4,
        "vppo_advantage_scaling": True,
        "vppo_beta_min": 0.9,
        "entropy_original_coef": 0.06,
        "mask_per": "response",
        "mask_ratio": 0.5,
    },
    "pgpo": {
        "perception_kl_coef": 0.0,
        "collapse_guard": "off",
        "beta": 0.0,
        "epsilon_high": 0.28,
        "dynamic_sampling": True,
        "pgpo": True,
        "pgpo_tau": 0.4,
        "pgpo_beta": 2.0,
    },
    "noisyrollout": {
        "perception_kl_coef": 0.0,
        "collapse_guard": "off",
        "noisy_rollout": True,
        "noisy_rollout_max_step": 500,
        "noisy_rollout_decay": "sigmoid",
        "noisy_rollout_decay_coef": 30.0,
        # the released midpoint, 40 of 60 steps, at this run's length
        "noisy_rollout_decay_mid_step": lambda config: round(config.rl_steps * 40 / 60),
    },
}


@dataclass
class ExperimentConfig:
    """Everything that defines one run of the experiment (recorded in results.json)."""

    out: str = "outputs/mini_repro"
    methods: tuple[str, ...] = ("grpo", "papo-g", "papo-g-high")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # Fewer seeds for some methods (the collapse arm shows its point on three); others use `seeds`.
    method_seeds: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"papo-g-high": (0, 1, 2)})
    rl_steps: int = 200
    eval_every: int = 50
    num_train: int = 1000  # synthetic training split for RL (digit tasks, seed `data_seed`)
    num_test: int = 200  # synthetic test split: 40 per task, from the held-out scans
    data_seed: int = 0
    batch_size: int = 16  # completions per step (4 prompts x G)
    num_generations: int = 4
    max_completion_length: int = 32
    learning_rate: float = 5e-4
    samples: int = 4  # sampled answers per test question at the final checkpoint (and the warm start)
    warm_start_steps: int = 1500
    warm_start_rows: int = 48000
    warm_start: str | None = None  # use this checkpoint instead of training one
    parallel: int = 2  # (method, seed) jobs at a time, one thread each
    quick: bool = False
    extra: list[str] = field(default_factory=list)  # more `papo train` flags, applied to every run

    @classmethod
    def quick_mode(cls, **overrides: Any) -> ExperimentConfig:
        """Every stage at toy size: checks the pipeline, not the outcome."""
        settings = dict(
            out="outputs/mini_repro_quick",
            methods=("grpo", "papo-g"),
            seeds=(0,),
            rl_steps=4,
            eval_every=2,
            num_train=64,
            num_test=40,
            batch_size=8,
            max_completion_length=24,
            samples=2,
            warm_start_steps=20,
            warm_start_rows=640,
            parallel=1,
            quick=True,
            method_seeds={},
        )
        # The shipped warm start (papo/assets), so the quick run also checks that it reads the images.
        from papo.embedded import shipped_warm_start

        shipped = shipped_warm_start()
        settings["warm_start"] = str(shipped) if shipped else None
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


def warm_start_seconds(path: Path) -> float | None:
    """The SFT time recorded in the checkpoint when it was trained (None for a checkpoint without it)."""
    record = path / "warm_start.json"
    return json.loads(record.read_text()).get("train_seconds") if record.exists() else None


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
        **{name: value(config) if callable(value) else value for name, value in METHODS[method].items()},
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
    """Run one `papo train` job in a subprocess (skipped if its final adapter exists); wall seconds.

    Its output goes to ``train.log`` in the run folder (the collapse guard's warnings among it).
    """
    out = run_dir(config, method, seed)
    timing = out / "wall_seconds.json"
    if (out / "adapter_model.safetensors").exists() and timing.exists():
        return json.loads(timing.read_text())["wall_seconds"]
    command = train_command(config, method, seed, warm_start, data)
    log(f"[mini_repro] {' '.join(command)}")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if config.parallel > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    # `python -m papo.cli` is `papo` without relying on the console script being on PATH.
    with open(out / "train.log", "w") as train_log:
        subprocess.run(
            [sys.executable, "-m", "papo.cli", *command[1:]],
            check=True,
            stdout=train_log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    wall = time.perf_counter() - start
    timing.write_text(json.dumps({"wall_seconds": wall}))
    return wall


COLLAPSE_WARNING = "signs of PAPO collapse"


def collapse_warnings(config: ExperimentConfig, method: str, seed: int) -> list[int]:
    """Steps at which the run's collapse guard warned (from its train.log)."""
    path = run_dir(config, method, seed) / "train.log"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text(errors="replace").splitlines():
        if COLLAPSE_WARNING in line and "step " in line:
            word = line.split("step ", 1)[1].split(":", 1)[0]
            if word.isdigit():
                steps.append(int(word))
    return steps


def checkpoints(config: ExperimentConfig, method: str, seed: int) -> list[tuple[int, Path]]:
    """(step, adapter dir) for every saved checkpoint of a run, by step."""
    found = []
    for path in run_dir(config, method, seed).glob("checkpoint-*"):
        if (path / "adapter_model.safetensors").exists():
            found.append((int(path.name.split("-")[1]), path))
    return sorted(found)


def evaluate_checkpoint(
    warm_start: Path, adapter: Path | None, test_rows, cache: Path, samples: int = 0, log=print
) -> dict[str, Any]:
    """Greedy test accuracy with and without the image + perception KL of one policy (cached as JSON);
    with `samples` > 0 also sampled accuracy (k per question)."""
    if cache.exists():
        return json.loads(cache.read_text())
    from benchmarks.mini_repro.evaluate import evaluate_policy
    from papo.files import write_text_atomically
    from papo.modeling import load_model_and_adapter

    model, processor = load_model_and_adapter(
        str(warm_start), str(adapter) if adapter else None, dtype="float32"
    )
    start = time.perf_counter()
    result = {
        "with_image": evaluate_policy(model, processor, test_rows, perception_kl=True, samples=samples),
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


def _eval_cache(config: ExperimentConfig, name: str, step: int) -> Path:
    return Path(config.out) / "evals" / f"{name}-step{step}.json"


def run_job(
    config: ExperimentConfig, method: str, seed: int, warm_start: Path, data: Path, log=print
) -> dict:
    """Train one (method, seed) run and evaluate its checkpoints (each step cached); its results entry."""
    import datasets

    if config.parallel > 1:
        import torch

        torch.set_num_threads(1)
    wall = train_run(config, method, seed, warm_start, data, log)
    test_rows = datasets.load_from_disk(str(data))["test"]
    name = f"{method}-seed{seed}"
    found = checkpoints(config, method, seed)
    evals = {
        str(step): evaluate_checkpoint(  # str keys, as results.json gives them back
            warm_start,
            path,
            test_rows,
            _eval_cache(config, name, step),
            samples=config.samples if step == found[-1][0] else 0,
            log=log,
        )
        for step, path in found
    }
    return {
        "method": method,
        "seed": seed,
        "wall_seconds": wall,
        "command": " ".join(train_command(config, method, seed, warm_start, data)),
        "metrics": read_metrics(run_dir(config, method, seed) / "metrics.jsonl"),
        "collapse_warnings": collapse_warnings(config, method, seed),
        "evals": evals,
    }


def experiment_jobs(config: ExperimentConfig) -> list[tuple[str, int]]:
    """(method, seed) runs in the order they are run: seed by seed for the methods with every seed (so
    the paired comparisons fill up first), then the methods restricted by `method_seeds`."""
    full = [m for m in config.methods if m not in config.method_seeds]
    jobs = [(m, s) for s in config.seeds for m in full]
    for method in config.methods:
        if method in config.method_seeds:
            jobs += [(method, s) for s in config.method_seeds[method] if s in config.seeds]
    return jobs


def _job_done(config: ExperimentConfig, method: str, seed: int) -> bool:
    out = run_dir(config, method, seed)
    if not ((out / "adapter_model.safetensors").exists() and (out / "wall_seconds.json").exists()):
        return False
    name = f"{method}-seed{seed}"
    return all(_eval_cache(config, name, step).exists() for step, _ in checkpoints(config, method, seed))


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
    computed: list[str] = []
    if not config.warm_start and not (out / "warm-start" / "config.json").exists():
        computed.append("warm start")
    warm_start = prepare_warm_start(config, log)
    data = prepare_data(config)
    test_rows = datasets.load_from_disk(str(data))["test"]
    if not (out / "evals" / "warm-start.json").exists():
        computed.append("warm-start eval")
    ws_eval = evaluate_checkpoint(
        warm_start, None, test_rows, out / "evals" / "warm-start.json", samples=config.samples, log=log
    )
    jobs = experiment_jobs(config)
    todo = [job for job in jobs if not _job_done(config, *job)]
    computed += [f"{method}-seed{seed}" for method, seed in todo]
    if todo and config.parallel > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with ProcessPoolExecutor(max_workers=config.parallel, mp_context=context) as pool:
            for future in [pool.submit(run_job, config, m, s, warm_start, data) for m, s in todo]:
                future.result()  # re-raise a failed job here
    runs = {f"{m}-seed{s}": run_job(config, m, s, warm_start, data, log) for m, s in jobs}
    elapsed = time.perf_counter() - started
    timings = record_timings(out, elapsed, computed)
    results = {
        "config": asdict(config),
        "machine": machine_info(),
        "warm_start": {
            "path": str(warm_start),
            "train_seconds": warm_start_seconds(warm_start),
            "eval": ws_eval,
        },
        "runs": runs,
        "timings": timings,
    }
    results["summary"] = summarise(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, out)
    log(f"[mini_repro] wrote {out / 'results.json'}, {out / 'RESULTS.md'}, {out / 'curves.png'}")
    return results


def record_timings(out: Path, elapsed: float, computed: list[str]) -> dict[str, Any]:
    """Append this invocation to ``out/timings.json`` if it computed anything; return all invocations.

    A fully cached rerun adds nothing, so the reported wall time stays the one measured when the stages
    actually ran (``compute_seconds``: the sum over the invocations that computed something).
    """
    from papo.files import write_text_atomically

    path = out / "timings.json"
    record = json.loads(path.read_text()) if path.exists() else {"invocations": []}
    if computed:
        record["invocations"].append(
            {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": elapsed, "computed": computed}
        )
        write_text_atomically(path, json.dumps(record, indent=1))
    record["compute_seconds"] = sum(entry["seconds"] for entry in record["invocations"])
    return record


def median_seed(results: dict[str, Any], method: str = "papo-g") -> int:
    """The seed whose final test accuracy (with the image) is closest to the median over `method`'s seeds."""
    import statistics

    from benchmarks.mini_repro.report import final_eval

    finals = {
        run["seed"]: final_eval(run)["with_image"]["accuracy"]
        for run in results["runs"].values()
        if run["method"] == method and run["evals"]
    }
    if not finals:
        raise ValueError(f"no evaluated {method} run to pick from")
    middle = statistics.median(finals.values())
    return min(finals, key=lambda seed: (abs(finals[seed] - middle), seed))


def export_assets(
    config: ExperimentConfig, assets: Path | None = None, method: str = "papo-g", seed: int = 0
) -> Path:
    """Copy the warm start and the final `method` adapter of `seed` into the package's embedded assets,
    with the held-out questions on which the two answer differently (`pick_space_examples`).

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
    skipped = ("metrics.jsonl", "wall_seconds.json", "training_args.bin", "train.log")

    # The card and the resolved config name the paths of this machine's run: ship them as the package's own
    # (the warm start asset) and as the default output folder of the experiment.
    shipped_base = str(embedded.WARM_START_ASSET.relative_to(embedded.ASSETS_DIR.parents[1]))
    local_paths = {str(warm_start.resolve()): shipped_base, str(warm_start): shipped_base}
    local_paths[str(Path(config.out).resolve())] = "outputs/mini_repro"
    local_paths[str(Path(config.out))] = "outputs/mini_repro"

    def copy_from(source: Path) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            for path in source.iterdir():
                if path.is_file() and path.name not in skipped:
                    shutil.copy2(path, folder / path.name)
            for name in ("README.md", "papo_config.yaml"):
                if (folder / name).exists():
                    text = (folder / name).read_text()
                    for local, shipped in sorted(local_paths.items(), key=lambda kv: -len(kv[0])):
                        text = text.replace(local, shipped)
                    (folder / name).write_text(text)
            if (folder / "adapter_config.json").exists():
                adapter_config = json.loads((folder / "adapter_config.json").read_text())
                adapter_config["base_model_name_or_path"] = shipped_base
                (folder / "adapter_config.json").write_text(
                    json.dumps(adapter_config, indent=2, sort_keys=True) + "\n"
                )

        return write

    examples = pick_space_examples(warm_start, adapter)
    for source, target in targets.items():
        write = copy_from(source)
        if source == adapter:

            def write(folder: Path, copy=write) -> None:
                copy(folder)
                record = {"picked_by": "benchmarks.mini_repro.run.pick_space_examples", "examples": examples}
                (folder / embedded.SPACE_EXAMPLES_FILE).write_text(json.dumps(record, indent=1) + "\n")

        write_dir_atomically(target, write)
    return assets


def pick_space_examples(
    warm_start: Path, adapter: Path, data_seed: int = 2026, candidates: int = 120, keep: int = 4
) -> list[dict[str, Any]]:
    """Held-out questions on which the warm start and the adapter give different boxed answers when
    generating as the Space does by default (its prompt, seed 0, temperature 1, one question at a time).

    Candidates are the vision-dependent rows of the digit test split drawn with `data_seed` (a seed no
    training used; its scans are the held-out ones). At most one row per task first, then the rest in order.
    """
    from papo.data.loading import IMAGE_PLACEHOLDER
    from papo.data.synthetic import VISION_DEPENDENCY, synthetic_row
    from papo.evaluation.run import eval_prompt
    from papo.generation import generate_completions
    from papo.modeling import load_model_and_adapter
    from papo.rewards import extract_boxed_answer

    model, processor = load_model_and_adapter(str(warm_start), str(adapter), dtype="float32")
    found: list[dict[str, Any]] = []
    for index in range(candidates):
        row = synthetic_row(index, "test", data_seed)
        if VISION_DEPENDENCY[row["task"]] != "high":
            continue
        question = row["problem"].replace(IMAGE_PLACEHOLDER, "").strip()
        prompt = eval_prompt(IMAGE_PLACEHOLDER + question)
        answers = {}
        for side, policy in (("baseline", model.disable_adapter), ("papo", contextlib.nullcontext)):
            with policy():  # the Space's baseline is the same PeftModel with its adapter disabled
                [(answers[side], _)] = generate_completions(
                    model, processor, [prompt], [row["images"]], max_new_tokens=64, do_sample=True,
                    temperature=1.0, top_p=1.0, batch_size=1, seed=0, show_progress=False,
                )  # fmt: skip
        if extract_boxed_answer(answers["baseline"]) != extract_boxed_answer(answers["papo"]):
            found.append(
                {"seed": data_seed, "index": index, "task": row["task"], "question": question}
                | {"answer": row["answer"], "baseline": answers["baseline"], "papo": answers["papo"]}
            )
    chosen: list[dict[str, Any]] = []
    for item in found:  # one per task first (in order), then the other differing rows
        if item["task"] not in {c["task"] for c in chosen}:
            chosen.append(item)
    chosen += [item for item in found if item not in chosen]
    return chosen[:keep]


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
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the pipeline in < 3 min")
    parser.add_argument("--out", help="output folder (default outputs/mini_repro[_quick])")
    parser.add_argument(
        "--methods", nargs="+", help=f"from {', '.join(METHODS)} (default grpo papo-g papo-g-high)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 3 4")
    parser.add_argument("--rl_steps", type=int)
    parser.add_argument("--eval_every", type=int)
    parser.add_argument("--warm_start", help="an existing warm-start checkpoint (skips the SFT stage)")
    parser.add_argument("--parallel", type=int, help="runs at a time, one thread each (default 2)")
    parser.add_argument(
        "--export",
        action="store_true",
        help="then copy the warm start and the papo-g adapter of the median seed into papo/assets "
        "(the embedded defaults)",
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
    results = run_experiment(config)
    if args.export:
        seed = median_seed(results, "papo-g")
        print(
            f"[mini_repro] exported the embedded defaults (papo-g seed {seed}) to {export_assets(config, seed=seed)}"
        )
    return 0
