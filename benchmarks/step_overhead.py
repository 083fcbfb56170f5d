"""PAPO vs GRPO: wall time per training step and peak memory.

    python benchmarks/step_overhead.py                      # tiny model, CPU: 3 warm-up + 10 timed steps each
    python benchmarks/step_overhead.py --recompute          # PAPO with recompute_masked_logps=True
    python benchmarks/step_overhead.py --model qwen2.5-vl-3b --quant qlora --completion-length 256   # GPU

Each variant runs in its own process, so its peak memory (max RSS on CPU, max allocated on CUDA)
is its own. Prints a table, the PAPO/GRPO ratios, and (with --json) writes the figures. Target for
the default (no-grad masked pass): step-time ratio <= 1.35.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# Published Qwen2.5-VL-3B-Instruct config values (no weights can be downloaded here: random init).
QWEN2_5_VL_3B = {
    "text_config": {
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": True,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    "tie_word_embeddings": True,
}


def build_model_dir(kind: str, root: str) -> str:
    """A saved model + processor: the tiny model, or random weights with the real 3B config."""
    from papo.tiny import TinyVLMSpec, build_processor, save_tiny_vlm

    if kind == "tiny":
        return str(save_tiny_vlm(os.path.join(root, "tiny")))
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = build_processor("qwen2_5_vl", TinyVLMSpec(min_pixels=200704, max_pixels=1003520))
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
    starts = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")}
    config = Qwen2_5_VLConfig(
        **QWEN2_5_VL_3B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=starts["<|vision_start|>"],
        vision_end_token_id=starts["<|vision_end|>"],
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    path = os.path.join(root, "qwen2.5-vl-3b-random")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    del model
    return path


def run_variant(variant: str, opts: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback

    from papo.config import PAPOConfig
    from papo.data.loading import load_training_dataset
    from papo.data.synthetic import make_synthetic_dataset
    from papo.modeling import LANGUAGE_LORA_TARGETS, load_model_for_training
    from papo.rewards import PAPO_REWARD_WEIGHTS, make_reward_funcs
    from papo.trainer import PAPOTrainer

    cuda = torch.cuda.is_available()
    model, processor = load_model_for_training(
        opts.model_dir, dtype="bfloat16" if cuda else "float32", load_in_4bit=opts.quant == "qlora"
    )
    data = make_synthetic_dataset(num_train=64, num_test=1, image_size=opts.image_size)["train"]
    data = load_training_dataset(data, show_progress=False)[0]
    args = PAPOConfig(
        output_dir=opts.output_dir,
        per_device_train_batch_size=opts.generations * opts.prompts,
        num_generations=opts.generations,
        max_completion_length=opts.completion_length,
        max_steps=opts.warmup + opts.steps,
        learning_rate=1e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
        loss_type="bnpo",
        beta=0.01,
        reward_weights=PAPO_REWARD_WEIGHTS,
        perception_loss=variant == "papo",
        recompute_masked_logps=opts.recompute,
        disable_tqdm=True,
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    trainer = PAPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=make_reward_funcs(),
        args=args,
        train_dataset=data,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_LORA_TARGETS),
        callbacks=[timer],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = timer.times[opts.warmup :]
    step = sum(timed) / len(timed)
    tokens = opts.generations * opts.prompts * opts.completion_length
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"variant": variant, "step_s": step, "completion_tokens_per_s": tokens / step, "peak_mb": peak}


def compare(opts: argparse.Namespace) -> dict:
    """GRPO and PAPO, each in a fresh process; returns both results and the ratios."""
    results = {}
    for variant in ("grpo", "papo"):
        cmd = [sys.executable, __file__, "--variant", variant, "--model-dir", opts.model_dir]
        for flag in ("quant", "generations", "prompts", "completion_length", "image_size", "steps", "warmup"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(opts, flag))]
        if opts.recompute:
            cmd.append("--recompute")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{variant} failed:\n{done.stderr[-4000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    results["time_ratio"] = results["papo"]["step_s"] / results["grpo"]["step_s"]
    results["memory_ratio"] = results["papo"]["peak_mb"] / results["grpo"]["peak_mb"]
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "qwen2.5-vl-3b"], default="tiny")
    p.add_argument("--model-dir", help="an already built model directory (skips building)")
    p.add_argument("--quant", choices=["lora", "qlora"], default="lora")
    p.add_argument("--generations", type=int, default=4, help="G")
    p.add_argument("--prompts", type=int, default=2, help="prompts per micro-batch")
    p.add_argument("--completion-length", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--recompute", action="store_true", help="PAPO with recompute_masked_logps=True")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--variant", choices=["grpo", "papo"], help=argparse.SUPPRESS)
    return p


def main() -> None:
    opts = parser().parse_args()
    if opts.variant:
        with tempfile.TemporaryDirectory(prefix="papo-bench-out-") as opts.output_dir:
            print(json.dumps(run_variant(opts.variant, opts)))
        return
    with tempfile.TemporaryDirectory(prefix="papo-bench-") as scratch:
        if opts.model_dir is None:
            opts.model_dir = build_model_dir(opts.model, scratch)
        results = compare(opts)
    mode = "recompute_masked_logps" if opts.recompute else "default no-grad masked pass"
    print(
        f"model={opts.model} quant={opts.quant} G={opts.generations} completion={opts.completion_length} [{mode}]"
    )
    print(f"{'variant':8} {'step (s)':>10} {'tok/s':>10} {'peak (MB)':>10}")
    for name in ("grpo", "papo"):
        r = results[name]
        print(f"{name:8} {r['step_s']:10.3f} {r['completion_tokens_per_s']:10.1f} {r['peak_mb']:10.1f}")
    print(
        f"PAPO/GRPO step-time ratio: {results['time_ratio']:.2f}  peak-memory ratio: {results['memory_ratio']:.2f}"
    )
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(
                {"options": {k: v for k, v in vars(opts).items() if k != "variant"}, **results}, f, indent=1
            )


if __name__ == "__main__":
    main()
