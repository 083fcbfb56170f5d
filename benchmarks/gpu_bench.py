"""GRPO vs PAPO-G on the real Qwen2.5-VL-3B/-7B configurations: step time split, tokens/s, peak memory.

The models have random weights built from the published configs (nothing can be downloaded on the
GPU machines): the figures measure cost, not quality. For each model x {LoRA bf16, QLoRA 4-bit} x
G in {4, 8} x completion length in {256, 1024} (generation forced to exactly that many tokens), one
generation round is run once and shared by the three algorithms:

| phase | GRPO | PAPO-G | PAPO-G + recompute_masked_logps |
|---|---|---|---|
| generation (TRL: sampling, rewards, old/ref log-probs) | yes | yes | yes |
| masked forward (no grad, training model) | - | yes | yes |
| update (loss + backward + clip + optimizer step) | TRL's loss | + PAPO terms | + masked branch with grad |

step = generation + masked + update; tokens/s = completion tokens / step; peak memory = the maximum
CUDA allocation over the algorithm's phases (on the CPU: the process's max RSS so far).

    python -m benchmarks.gpu_bench --json gpu_bench.json    # one GPU, the whole matrix within --time-budget-s
    python -m benchmarks.gpu_bench --tiny --json tiny.json  # the same code on the CPU with the tiny model

Rows are run in order (3B before 7B, LoRA before QLoRA, short before long); a row whose predicted
time (from the generation speed already measured) would overrun the time budget is skipped and
listed as skipped, so one command always finishes in time. The JSON is rewritten after every row
("partial": true until the end), so a run stopped from outside keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass

from benchmarks.step_overhead import QWEN2_5_VL_3B

# Published Qwen2.5-VL-7B-Instruct config values (config.json of the Hub repo); weights are random.
QWEN2_5_VL_7B = {
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    "tie_word_embeddings": False,
}
MODEL_CONFIGS = {"qwen2.5-vl-3b": QWEN2_5_VL_3B, "qwen2.5-vl-7b": QWEN2_5_VL_7B}
# Estimated seconds (one H100/H200-class GPU) to build and save a random-weight model / to load it, for
# the time budget; generation time is predicted from the measured decode speed instead.
BUILD_S, LOAD_S = 90.0, 30.0
ALGORITHMS = {  # name -> (perception_loss, recompute_masked_logps)
    "grpo": (False, False),
    "papo-g": (True, False),
    "papo-g-recompute": (True, True),
}


@dataclass(frozen=True)
class Row:
    """One benchmark configuration."""

    model: str
    quant: str
    generations: int
    completion_tokens: int


def matrix(models, quants, generations, lengths) -> list[Row]:
    """All rows, model-major (each model is built once), then quantisation, then length, then G."""
    return [Row(m, q, g, n) for m in models for q in quants for n in lengths for g in generations]


def predicted_seconds(row: Row, seconds_per_token: dict[tuple[str, str], float]) -> float:
    """Expected wall time of `row`: its generation at the decode speed measured so far, x1.5 for the rest.

    Unknown speeds are guessed from a measured neighbour (QLoRA decodes ~2x slower than LoRA, 7B ~1.5x
    slower than 3B); with nothing measured yet the prediction is 0 (the row is tried).
    """
    rate = seconds_per_token.get((row.model, row.quant))
    if rate is None:
        other_quant = "lora" if row.quant == "qlora" else "qlora"
        neighbour = seconds_per_token.get((row.model, other_quant))
        if neighbour is not None:
            rate = neighbour * (2.0 if row.quant == "qlora" else 0.5)
        elif row.model == "qwen2.5-vl-7b" and ("qwen2.5-vl-3b", row.quant) in seconds_per_token:
            rate = 1.5 * seconds_per_token[("qwen2.5-vl-3b", row.quant)]
    return 0.0 if rate is None else 1.5 * rate * row.completion_tokens


# --- models ---------------------------------------------------------------------------------------------


def build_model_dir(model: str, root: str) -> str:
    """A saved model + processor: the tiny model, or random bf16 weights with a published config."""
    from papo.tiny import TinyVLMSpec, build_processor, save_tiny_vlm

    if model == "tiny":
        return str(save_tiny_vlm(os.path.join(root, "tiny")))
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = build_processor("qwen2_5_vl", TinyVLMSpec(min_pixels=200704, max_pixels=1003520))
    tokens = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    ids = dict(zip(tokens, processor.tokenizer.convert_tokens_to_ids(list(tokens)), strict=True))
    config = Qwen2_5_VLConfig(
        **MODEL_CONFIGS[model],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        weights = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    path = os.path.join(root, f"{model}-random")
    weights.save_pretrained(path)
    processor.save_pretrained(path)
    del weights
    return path


# --- measuring ------------------------------------------------------------------------------------------


def peak_mb(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, cuda: bool):
    """(fn(), seconds, peak MB during the call) with CUDA synchronised around it."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    return result, time.perf_counter() - start, peak_mb(cuda)


def use_algorithm(trainer, name: str) -> None:
    """Switch the trainer's PAPO settings to GRPO, PAPO-G or PAPO-G with recompute (same model, same rollouts)."""
    trainer.args.perception_loss, trainer.args.recompute_masked_logps = ALGORITHMS[name]


def update(trainer, batch: dict, optimizer, params) -> None:
    """One optimizer step on `batch` as transformers' training_step takes it: the trainer's loss (under its
    autocast context), backward through accelerate, gradient clipping (1.0), optimizer step."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = 1
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(trainer.model, batch)
    trainer.accelerator.backward(loss)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def make_trainer(model, processor, dataset, row: Row, opts, output_dir: str, peft_config):
    from papo.config import PAPOConfig
    from papo.rewards import PAPO_REWARD_WEIGHTS, make_reward_funcs
    from papo.trainer import PAPOTrainer

    cuda = not opts.tiny
    args = PAPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=row.generations * opts.prompts,
        num_generations=row.generations,
        max_completion_length=row.completion_tokens,
        generation_kwargs={"min_new_tokens": row.completion_tokens},  # every rollout exactly this long
        max_steps=1,
        learning_rate=1e-5,
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
        loss_type="bnpo",
        beta=0.01,  # PAPO-G: the reference KL, computed with the adapter disabled
        epsilon=0.2,
        epsilon_high=0.3,
        delta=3.0,
        reward_weights=PAPO_REWARD_WEIGHTS,
        perception_kl_coef=0.02,
        activation_checkpointing=opts.gradient_checkpointing,
        disable_tqdm=True,
    )
    return PAPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=make_reward_funcs(),
        args=args,
        train_dataset=dataset,
        peft_config=peft_config,
    )


def fresh_trainer(model, processor, dataset, row: Row, opts, output_dir: str):
    """(trainer, optimizer, trainable params) with a fresh adapter on the base model, as `papo train` makes it
    (TRL wraps it)."""
    import torch
    from peft import LoraConfig

    from papo.modeling import LANGUAGE_LORA_TARGETS

    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_LORA_TARGETS)
    trainer = make_trainer(model, processor, dataset, row, opts, output_dir, peft_config)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return trainer, torch.optim.AdamW(params, lr=1e-5), params


def measure_row(trainer, inputs: list, optimizer, params, cuda: bool) -> dict:
    """One generation round shared by the three algorithms; per algorithm its phase times and peak."""
    trainer.model.train()
    use_algorithm(trainer, "grpo")
    batch, generation_s, generation_mb = timed(lambda: trainer._generate_and_score_completions(inputs), cuda)
    tokens = int(batch["completion_mask"].sum())
    results = {}
    for name, (perception, _) in ALGORITHMS.items():
        use_algorithm(trainer, name)
        algorithm_batch = dict(batch)
        masked_s, masked_mb = 0.0, 0.0
        if perception:
            _, masked_s, masked_mb = timed(
                lambda b=algorithm_batch: trainer._add_masked_logps(inputs, b), cuda
            )
        _, update_s, update_mb = timed(lambda b=algorithm_batch: update(trainer, b, optimizer, params), cuda)
        step_s = generation_s + masked_s + update_s
        results[name] = {
            "generation_s": generation_s,
            "masked_forward_s": masked_s,
            "update_s": update_s,
            "step_s": step_s,
            "completion_tokens_per_s": tokens / step_s,
            "peak_mb": max(generation_mb, masked_mb, update_mb),
        }
    grpo = results["grpo"]
    for result in results.values():
        result["time_vs_grpo"] = result["step_s"] / grpo["step_s"]
        result["memory_vs_grpo"] = result["peak_mb"] / grpo["peak_mb"]
    return {"completion_tokens_generated": tokens, "algorithms": results}


def run(opts) -> dict:
    import torch

    from papo.data.loading import load_training_dataset
    from papo.data.synthetic import make_synthetic_dataset
    from papo.modeling import load_model_for_training

    cuda = torch.cuda.is_available() and not opts.tiny
    start = time.perf_counter()
    rows = matrix(opts.models, opts.quants, opts.generations, opts.lengths)
    data = make_synthetic_dataset(num_train=16, num_test=1, image_size=opts.image_size)["train"]
    data = load_training_dataset(data, show_progress=False)[0]
    inputs_for = lambda g: [data[i] for i in range(opts.prompts) for _ in range(g)]  # noqa: E731
    seconds_per_token: dict[tuple[str, str], float] = {}
    done, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="papo-gpu-bench-") as scratch:
        for model_name in opts.models:
            model_dir = None
            for quant in opts.quants:
                todo = [r for r in rows if (r.model, r.quant) == (model_name, quant)]
                model = None
                for row in todo:
                    left = opts.time_budget_s - (time.perf_counter() - start)
                    setup = 0.0 if model is not None else LOAD_S if model_dir else BUILD_S
                    if setup + predicted_seconds(row, seconds_per_token) > left:
                        skipped.append(row.__dict__)
                        print(f"skipped (time budget, {left:.0f} s left): {row}", flush=True)
                        continue
                    if model is None:
                        model_dir = model_dir or build_model_dir(model_name, scratch)
                        model, processor = load_model_for_training(
                            model_dir, dtype="bfloat16" if cuda else "float32", load_in_4bit=quant == "qlora"
                        )
                    warm = None
                    if opts.warmup and row is todo[0]:
                        # an untimed first round (CUDA context, kernels, allocator); --warmup-tokens shortens it
                        tokens = min(opts.warmup_tokens or row.completion_tokens, row.completion_tokens)
                        warm = Row(row.model, row.quant, row.generations, tokens)
                        trainer, optimizer, params = fresh_trainer(
                            model, processor, data, warm, opts, scratch
                        )
                        measure_row(trainer, inputs_for(warm.generations), optimizer, params, cuda)
                        if warm != row:  # a fresh adapter for the measured round
                            model = trainer.model.unload()
                            del trainer, optimizer, params
                    if warm != row:
                        trainer, optimizer, params = fresh_trainer(model, processor, data, row, opts, scratch)
                    result = measure_row(trainer, inputs_for(row.generations), optimizer, params, cuda)
                    generation_s = result["algorithms"]["grpo"]["generation_s"]
                    seconds_per_token[(model_name, quant)] = generation_s / row.completion_tokens
                    done.append({**row.__dict__, **result})
                    print_row(done[-1], flush=True)
                    write_json(opts.json, {"partial": True, "rows": done, "skipped": skipped})
                    model = trainer.model.unload()  # the base model again, without this row's adapter
                    del trainer, optimizer, params
                del model
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            if model_dir:
                shutil.rmtree(model_dir)  # 7.5 GB (3B) / 16.6 GB (7B) of random weights
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    return {
        "partial": False,
        "device": device,
        "torch": torch.__version__,
        "options": {k: v for k, v in vars(opts).items() if k != "json"},
        "wall_s": time.perf_counter() - start,
        "rows": done,
        "skipped": skipped,
    }


# --- output ---------------------------------------------------------------------------------------------


def write_json(path: str | None, results: dict) -> None:
    """Write `results` to `path` (if given) atomically: after every row, so a killed run keeps its rows."""
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, path)


HEADER = (
    f"{'model':14} {'quant':5} {'G':>2} {'tokens':>6} {'algorithm':16} {'gen s':>7} {'masked s':>8} "
    f"{'update s':>8} {'step s':>7} {'tok/s':>8} {'peak MB':>9} {'x GRPO t':>8} {'x GRPO mem':>10}"
)


def print_row(row: dict, flush: bool = False) -> None:
    for name, r in row["algorithms"].items():
        print(
            f"{row['model']:14} {row['quant']:5} {row['generations']:>2} {row['completion_tokens']:>6} {name:16} "
            f"{r['generation_s']:7.2f} {r['masked_forward_s']:8.2f} {r['update_s']:8.2f} {r['step_s']:7.2f} "
            f"{r['completion_tokens_per_s']:8.1f} {r['peak_mb']:9.0f} {r['time_vs_grpo']:8.2f} "
            f"{r['memory_vs_grpo']:10.2f}",
            flush=flush,
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tiny", action="store_true", help="the tiny model on the CPU, short rollouts (checks the script)"
    )
    p.add_argument("--models", nargs="+", choices=sorted(MODEL_CONFIGS), default=sorted(MODEL_CONFIGS))
    p.add_argument("--quants", nargs="+", choices=["lora", "qlora"], default=["lora", "qlora"])
    p.add_argument("--generations", nargs="+", type=int, default=[4, 8], help="G values")
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 1024], help="completion tokens")
    p.add_argument(
        "--tiny-lengths", nargs="+", type=int, default=[8, 16], help="completion tokens with --tiny"
    )
    p.add_argument("--prompts", type=int, default=1, help="prompts per micro-batch (G rollouts each)")
    p.add_argument("--image-size", type=int, default=448, help="448 px: 256 image tokens per prompt")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed first round")
    p.add_argument(
        "--warmup-tokens",
        type=int,
        help="completion tokens of the untimed first round (default: the row's own length)",
    )
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=420.0,
        help="skip rows predicted to overrun this (imports not counted)",
    )
    p.add_argument("--json", help="write the results here")
    return p


def main(argv: list[str] | None = None) -> dict:
    opts = parser().parse_args(argv)
    if opts.tiny:  # the same matrix shape, scaled to the tiny model on the CPU
        opts.models, opts.lengths, opts.image_size = ["tiny"], opts.tiny_lengths, 64
    elif not __import__("torch").cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device; run with --tiny to check the script on the CPU")
    print(HEADER, flush=True)
    results = run(opts)
    print(
        f"{len(results['rows'])} rows, {len(results['skipped'])} skipped, {results['wall_s']:.0f} s on {results['device']}"
    )
    write_json(opts.json, results)
    return results


if __name__ == "__main__":
    main()
