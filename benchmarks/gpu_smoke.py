"""GPU smoke check, kept for the commands that name it: `benchmarks.gpu_bench` on the Qwen2.5-VL-3B
configuration only, LoRA and QLoRA, G=4, 256 completion tokens (GRPO vs PAPO-G, with and without
recompute_masked_logps). `--tiny` runs the same code on the CPU with the tiny model.

    python benchmarks/gpu_smoke.py --json gpu_smoke.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `benchmarks.*` imports from any directory

from benchmarks.gpu_bench import main  # noqa: E402

SMOKE = ["--models", "qwen2.5-vl-3b", "--generations", "4", "--lengths", "256"]

if __name__ == "__main__":
    main([*SMOKE, *sys.argv[1:]])
