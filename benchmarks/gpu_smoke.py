"""GPU smoke check: random-weight Qwen2.5-VL-3B (the real config), 2 PAPO steps with LoRA and with
QLoRA (G=4, 256 completion tokens), step time and peak GPU memory for GRPO vs PAPO. < 8 minutes on
one H100/H200-class GPU. `--tiny` runs the same matrix on the tiny model (CPU) to check the script.

    python benchmarks/gpu_smoke.py --json gpu_smoke.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import step_overhead  # benchmarks/ is the working directory or on sys.path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU (checks the script only)")
    p.add_argument("--json", help="write all results here")
    args = p.parse_args()
    start = time.time()
    kind = "tiny" if args.tiny else "qwen2.5-vl-3b"
    scratch = tempfile.TemporaryDirectory(prefix="papo-gpu-smoke-")  # removed at exit
    model_dir = step_overhead.build_model_dir(kind, scratch.name)
    print(f"built {kind} in {time.time() - start:.0f} s")
    rows = []
    for quant in ("lora", "qlora"):
        opts = step_overhead.parser().parse_args(
            [
                "--model-dir",
                model_dir,
                "--quant",
                quant,
                "--generations",
                "4",
                "--prompts",
                "1",
                "--completion-length",
                "256",
                "--image-size",
                "448",
                "--steps",
                "2",
                "--warmup",
                "1",
            ]
        )
        result = step_overhead.compare(opts)
        rows.append({"quant": quant, **result})
        for name in ("grpo", "papo"):
            r = result[name]
            print(
                f"{quant:6} {name:5} step {r['step_s']:7.2f} s  peak {r['peak_mb']:9.0f} MB  "
                f"{r['completion_tokens_per_s']:8.1f} tok/s"
            )
        print(f"{quant:6} PAPO/GRPO time {result['time_ratio']:.2f}  memory {result['memory_ratio']:.2f}")
    print(f"total {time.time() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": kind, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
