"""benchmarks/gpu_bench.py: the GPU benchmark's code, run on the CPU with the tiny model.

The real runs need a GPU; here the same command (`python -m benchmarks.gpu_bench --tiny`) runs the
whole matrix shape (LoRA and QLoRA, G=4/8, two lengths, three algorithms) on the tiny model, and the
published-config models are checked for their parameter counts on the meta device.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of scripts at the repo root, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_bench import MODEL_CONFIGS, Row, matrix, predicted_seconds  # noqa: E402


@pytest.mark.parametrize("name, billions", [("qwen2.5-vl-3b", 3.75), ("qwen2.5-vl-7b", 8.29)])
def test_model_configs_have_the_published_sizes(name, billions):
    """Qwen2.5-VL-3B-Instruct has 3.75 B parameters, -7B-Instruct 8.29 B (their Hub model cards)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**MODEL_CONFIGS[name]))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.005)


def test_rows_are_planned_against_the_time_budget():
    rows = matrix(["qwen2.5-vl-3b", "qwen2.5-vl-7b"], ["lora", "qlora"], [4, 8], [256, 1024])
    assert len(rows) == 16 and rows[0] == Row("qwen2.5-vl-3b", "lora", 4, 256)
    assert [r.completion_tokens for r in rows[:4]] == [256, 256, 1024, 1024]  # short rows first
    assert predicted_seconds(rows[0], {}) == 0.0  # nothing measured yet: try it
    speeds = {("qwen2.5-vl-3b", "lora"): 0.02}
    assert predicted_seconds(Row("qwen2.5-vl-3b", "lora", 8, 1024), speeds) == pytest.approx(
        1.5 * 0.02 * 1024
    )
    assert predicted_seconds(Row("qwen2.5-vl-3b", "qlora", 4, 256), speeds) == pytest.approx(1.5 * 0.04 * 256)
    assert predicted_seconds(Row("qwen2.5-vl-7b", "lora", 4, 256), speeds) == pytest.approx(1.5 * 0.03 * 256)


def test_tiny_benchmark_command(tmp_path):
    out = tmp_path / "tiny.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_bench", "--tiny", "--json", str(out)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["skipped"] == [] and results["partial"] is False
    rows = results["rows"]
    assert [(r["quant"], r["generations"], r["completion_tokens"]) for r in rows] == [
        (q, g, n) for q in ("lora", "qlora") for n in (8, 16) for g in (4, 8)
    ]
    for row in rows:
        assert row["completion_tokens_generated"] == row["generations"] * row["completion_tokens"]
        algorithms = row["algorithms"]
        assert list(algorithms) == ["grpo", "papo-g", "papo-g-recompute"]
        assert len({a["generation_s"] for a in algorithms.values()}) == 1  # one shared generation round
        assert algorithms["grpo"]["masked_forward_s"] == 0 and algorithms["grpo"]["time_vs_grpo"] == 1
        for a in algorithms.values():
            assert a["step_s"] == pytest.approx(a["generation_s"] + a["masked_forward_s"] + a["update_s"])
            assert a["completion_tokens_per_s"] == pytest.approx(
                row["completion_tokens_generated"] / a["step_s"]
            )
            assert a["update_s"] > 0 and a["peak_mb"] > 0
        assert (
            algorithms["papo-g"]["masked_forward_s"] > 0
            and algorithms["papo-g-recompute"]["masked_forward_s"] > 0
        )
    table = [line for line in done.stdout.splitlines() if line.startswith("tiny ")]
    assert len(table) == 3 * len(rows)


def test_time_budget_skips_rows_and_the_smoke_alias_runs(tmp_path, monkeypatch):
    """With no time left every row is skipped (and listed); gpu_smoke.py is gpu_bench's 3B/G=4/256 subset."""
    out = tmp_path / "smoke.json"
    monkeypatch.setattr(sys, "argv", ["gpu_smoke.py", "--tiny", "--time-budget-s", "0", "--json", str(out)])
    runpy.run_path(str(REPO / "benchmarks" / "gpu_smoke.py"), run_name="__main__")
    results = json.loads(out.read_text())
    assert results["rows"] == []
    assert [(r["generations"], r["completion_tokens"]) for r in results["skipped"]] == [(4, 8), (4, 16)] * 2
