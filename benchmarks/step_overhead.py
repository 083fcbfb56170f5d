"""PAPO vs GRPO: wall time per training step and peak memory, on the tiny model (CPU) or a GPU.

    python benchmarks/step_overhead.py                # both, 3 warm-up + 10 timed steps each
    python benchmarks/step_overhead.py --recompute    # PAPO with recompute_masked_logps=True

Each variant runs in its own process so peak memory (max RSS on CPU, max allocated on CUDA) is its own.
Prints a table and the PAPO/GRPO ratios. Target for the default (no-grad masked pass): time ratio <= 1.35.
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


def run_variant(variant: str, steps: int, warmup: int, recompute: bool) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, TrainerCallback
    from trl import GRPOTrainer

    from papo.data.loading import load_training_dataset
    from papo.data.synthetic import make_synthetic_dataset
    from papo.modeling import LANGUAGE_LORA_TARGETS, load_processor
    from papo.rewards import PAPO_REWARD_WEIGHTS, make_reward_funcs
    from papo.tiny import save_tiny_vlm
    from papo.trainer import PAPOConfig, PAPOTrainer

    root = tempfile.mkdtemp(prefix="papo-bench-")
    model_dir = save_tiny_vlm(os.path.join(root, "model"))
    data = load_training_dataset(
        make_synthetic_dataset(num_train=64, num_test=1)["train"], show_progress=False
    )[0]
    args = PAPOConfig(
        output_dir=os.path.join(root, "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=32,
        max_steps=warmup + steps,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        seed=0,
        loss_type="bnpo",
        beta=0.01,
        reward_weights=PAPO_REWARD_WEIGHTS,
        recompute_masked_logps=recompute,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    cls = PAPOTrainer if variant == "papo" else GRPOTrainer
    trainer = cls(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        processing_class=load_processor(model_dir),
        reward_funcs=make_reward_funcs(),
        args=args,
        train_dataset=data,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=LANGUAGE_LORA_TARGETS),
        callbacks=[timer],
    )
    trainer.train()
    timed = timer.times[warmup:]
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "step_s": sum(timed) / len(timed), "peak_mb": peak_mb, "steps": len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--recompute", action="store_true")
    parser.add_argument("--variant", choices=["grpo", "papo"], help="(internal) run one variant, print JSON")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.warmup, args.recompute)))
        return
    results = {}
    for variant in ("grpo", "papo"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        if args.recompute:
            cmd.append("--recompute")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[variant] = json.loads(out)
    print(f"{'variant':8} {'step (s)':>10} {'peak (MB)':>10}")
    for r in results.values():
        print(f"{r['variant']:8} {r['step_s']:10.3f} {r['peak_mb']:10.1f}")
    time_ratio = results["papo"]["step_s"] / results["grpo"]["step_s"]
    mem_ratio = results["papo"]["peak_mb"] / results["grpo"]["peak_mb"]
    mode = "recompute_masked_logps" if args.recompute else "default (no-grad masked pass)"
    print(f"PAPO/GRPO step-time ratio: {time_ratio:.2f}  peak-memory ratio: {mem_ratio:.2f}  [{mode}]")


if __name__ == "__main__":
    main()
