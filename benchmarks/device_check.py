"""The one-call GPU check (Python part of benchmarks/device_check.sh): versions, then gpu_bench stages.

On the GPU machine, after device_check.sh has installed the carried wheels (.device/wheels) into a target
folder on PYTHONPATH, this script, within --budget-s of wall time:

1. records the machine (nvidia-smi, Python) and the versions actually imported (the carried wheels must
   shadow the machine's own), and checks every carried wheel's requirements against what is installed;
2. runs `benchmarks.gpu_bench` stages in order of value, each in its own process (a crash or an
   out-of-memory costs that stage only), stopping the one in flight when the budget ends:

   | stage | rows |
   |---|---|
   | 3b | Qwen2.5-VL-3B (random weights, published config): bf16 LoRA, then QLoRA (4-bit NF4, bf16 compute) |
   | 7b | Qwen2.5-VL-7B: bf16 LoRA (skipped when the 3B speed predicts it cannot finish) |

   Each row: G = 8 rollouts of 1024 completion tokens, forced (min_new_tokens = max_completion_length, so
   every arm generates the same number of tokens), HF generation, one generation round shared by GRPO,
   PAPO-G (no-grad masked pass) and PAPO-G with recompute_masked_logps; step = generation + masked
   forward + update; completion tokens/s; peak CUDA memory. A short untimed round (32 tokens) warms
   each model up first;
3. rewrites OUT/device_check.json (everything, the raw gpu_bench results included) and
   OUT/device_check.md (the table) after every finished row, so a run stopped from outside keeps them.

    python -m benchmarks.device_check --out "$OUT" --budget-s 420         # GPU (via device_check.sh)
    python -m benchmarks.device_check --tiny --out /tmp/dc                  # the same code, tiny model, CPU
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.prepare_device_carry import needed, wheel_metadata  # noqa: E402

GENERATIONS, TOKENS, WARMUP_TOKENS = 8, 1024, 32
TINY_TOKENS, TINY_WARMUP_TOKENS = 8, 4
# Seconds a stage needs beyond its rows (guesses for one H100/H200-class GPU, not measured): imports, building
# and saving the random model (7.5 GB for 3B, 16.6 GB for 7B), loading it. Only the last stage (7B) is ever
# skipped on this prediction, and trying costs nothing but the budget's end: these lean optimistic.
SETUP_S = {"qwen2.5-vl-3b": 100.0, "qwen2.5-vl-7b": 150.0}
IMPORT_S = 25.0  # a stage's imports, before gpu_bench's own time budget starts counting
KILL_MARGIN_S = 5.0  # the stage in flight is stopped this long before the budget ends, to write the results
PACKAGES = [
    "torch",
    "torchvision",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "pyarrow",
    "regex",
    "mathruler",
    "math-verify",
]
NOTES = [
    "Random weights from the published Qwen2.5-VL configs (nothing can be downloaded there): the figures "
    "measure cost (time, memory), not quality.",
    "Generation length is forced: min_new_tokens = max_completion_length (1024 tokens; --tiny: 8), so GRPO and "
    "both PAPO-G arms generate the same number of tokens (G = 8 rollouts of one prompt, one 448 px image).",
    "One generation round per row is shared by the three algorithms; step = generation + masked forward + update.",
    "Peak memory: torch.cuda.max_memory_allocated over the algorithm's phases (on the CPU: max RSS).",
]


@dataclass(frozen=True)
class Stage:
    name: str
    model: str
    quants: tuple[str, ...]
    what: str


STAGES = (
    Stage("3b", "qwen2.5-vl-3b", ("lora", "qlora"), "3B: bf16 LoRA, then QLoRA (4-bit NF4, bf16 compute)"),
    Stage("7b", "qwen2.5-vl-7b", ("lora",), "7B: bf16 LoRA"),
)


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- environment ----------------------------------------------------------------------------------------


def installed(name: str) -> dict:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return {"version": None, "location": None}
    return {"version": dist.version, "location": str(dist.locate_file(""))}


def requirement_check(wheels_dir: Path | None) -> tuple[list[dict], list[dict]]:
    """(carried wheels with the version imported here, their requirements judged against what is installed)."""
    from packaging.utils import canonicalize_name

    carried, rows = [], []
    for wheel in sorted(wheels_dir.glob("*.whl")) if wheels_dir and wheels_dir.is_dir() else []:
        name, version, requires = wheel_metadata(wheel)
        here = installed(name)["version"]
        carried.append({"wheel": wheel.name, "name": name, "version": version, "imported_version": here})
        for req in needed(requires):
            have = installed(canonicalize_name(req.name))["version"]
            ok = have is not None and req.specifier.contains(have, prereleases=True)
            rows.append({"wheel": f"{name} {version}", "requires": str(req), "installed": have, "ok": ok})
    return carried, rows


def nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    query = "--query-gpu=name,memory.total,driver_version"
    done = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()


def environment(wheels_dir: Path | None) -> dict:
    carried, requirements = requirement_check(wheels_dir)
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "machine": platform.machine(),
        "gpu": nvidia_smi(),
        "packages": {name: installed(name) for name in PACKAGES},
        "carried": carried,
        "carried_not_imported": [c["wheel"] for c in carried if c["imported_version"] != c["version"]],
        "requirements_unmet": [r for r in requirements if not r["ok"]],
        "requirements_checked": len(requirements),
    }


# --- stages ---------------------------------------------------------------------------------------------


def stage_command(stage: Stage, json_path: Path, budget_s: float, tiny: bool) -> list[str]:
    tokens, warmup = (TINY_TOKENS, TINY_WARMUP_TOKENS) if tiny else (TOKENS, WARMUP_TOKENS)
    command = [sys.executable, "-m", "benchmarks.gpu_bench", "--quants", *stage.quants]
    # --tiny replaces the model with the tiny one; the real name is left out of its command line
    command += [] if tiny else ["--models", stage.model]
    command += ["--generations", str(GENERATIONS), "--lengths", str(TOKENS), "--warmup-tokens", str(warmup)]
    command += ["--time-budget-s", f"{max(budget_s, 0.0):.0f}", "--json", str(json_path)]
    return command + (["--tiny", "--tiny-lengths", str(tokens)] if tiny else [])


def predicted_stage_s(stage: Stage, done: list[dict], tiny: bool) -> float | None:
    """Seconds `stage` needs, from the generation speed measured in earlier stages (None: nothing measured).

    A row takes ~1.5x its generation (masked pass, update), plus a short warm-up; 7B decodes ~1.5x slower
    than 3B (gpu_bench.predicted_seconds' factors)."""
    if tiny:
        return None
    rates = [
        row["algorithms"]["grpo"]["generation_s"] / row["completion_tokens"]
        for result in done
        for row in (result.get("bench") or {}).get("rows", [])
        if row["quant"] == "lora"
    ]
    if not rates:
        return None
    rate = rates[0] * (1.5 if stage.model == "qwen2.5-vl-7b" else 1.0)
    per_quant = [rate * (2.0 if q == "qlora" else 1.0) for q in stage.quants]
    return SETUP_S[stage.model] + sum(1.5 * r * (TOKENS + WARMUP_TOKENS) for r in per_quant)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_stage(stage: Stage, record: dict, deadline: float, scratch: Path, tiny: bool, publish) -> None:
    """Run one gpu_bench stage, publishing its rows as they land; stop it at the deadline."""
    json_path = scratch / f"{stage.name}.json"
    left = deadline - time.monotonic()
    command = stage_command(stage, json_path, left - IMPORT_S - KILL_MARGIN_S, tiny)
    record.update(status="running", command=" ".join(command[1:]), started_utc=now_utc())
    publish()
    start, seen = time.monotonic(), None
    process = subprocess.Popen(command, cwd=REPO)
    stopped = False
    while process.poll() is None:
        time.sleep(0.5)
        stamp = json_path.stat().st_mtime_ns if json_path.exists() else None
        if stamp != seen:
            seen, record["bench"] = stamp, read_json(json_path) or record.get("bench")
            publish()
        if time.monotonic() > deadline - KILL_MARGIN_S:
            stopped = True
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    record["bench"] = read_json(json_path) or record.get("bench")
    record["wall_s"] = round(time.monotonic() - start, 1)
    record["returncode"] = process.returncode
    if stopped:
        record["status"] = "stopped at the budget"
    elif process.returncode == 0:
        record["status"] = "done"
    else:
        record["status"] = f"failed (exit {process.returncode}; see device_check.log)"
    publish()


# --- output ---------------------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(results: dict) -> str:
    env = results["environment"]
    packages = ", ".join(f"{n} {p['version']}" for n, p in env["packages"].items() if p["version"])
    lines = [
        "# GPU check (benchmarks/device_check.py)",
        "",
        f"- started {results['started_utc']}, {'finished' if not results['partial'] else 'in progress'}"
        f" {results.get('finished_utc') or ''}; budget {results['budget_s']:.0f} s"
        + ("; **--tiny (tiny model, CPU)**" if results["tiny"] else ""),
        f"- machine: {env['gpu'] or 'no nvidia-smi'}; Python {env['python']} ({env['machine']})",
        f"- packages: {packages}",
        f"- carried wheels not the ones imported: {env['carried_not_imported'] or 'none'}; "
        f"requirements unmet: {len(env['requirements_unmet'])} of {env['requirements_checked']}",
        *[f"- {note}" for note in results["notes"]],
        "",
        "| stage | model | quant | G | tokens/rollout | tokens (all) | algorithm | gen s | masked s | update s "
        "| step s | tok/s | peak MiB | × GRPO time | × GRPO memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in results["stages"]:
        for row in (stage.get("bench") or {}).get("rows", []):
            for name, a in row["algorithms"].items():
                lines.append(
                    f"| {stage['name']} | {row['model']} | {row['quant']} | {row['generations']} "
                    f"| {row['completion_tokens']} | {row['completion_tokens_generated']} | {name} "
                    f"| {a['generation_s']:.2f} "
                    f"| {a['masked_forward_s']:.2f} | {a['update_s']:.2f} | {a['step_s']:.2f} "
                    f"| {a['completion_tokens_per_s']:.1f} | {a['peak_mb']:.0f} | {a['time_vs_grpo']:.3f} "
                    f"| {a['memory_vs_grpo']:.3f} |"
                )
    lines += ["", "| stage | what | status | wall s | rows | skipped rows |", "|---|---|---|---|---|---|"]
    for stage in results["stages"]:
        bench = stage.get("bench") or {}
        skipped = [
            f"{r['quant']} G{r['generations']} {r['completion_tokens']}" for r in bench.get("skipped", [])
        ]
        lines.append(
            f"| {stage['name']} | {stage['what']} | {stage['status']} | {stage.get('wall_s', '')} "
            f"| {len(bench.get('rows', []))} | {', '.join(skipped)} |"
        )
    for r in env["requirements_unmet"]:
        lines.append(f"\n- unmet: {r['wheel']} needs {r['requires']}, installed {r['installed']}")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", default=os.environ.get("OUT") or "device-out", help="results folder (default $OUT)"
    )
    p.add_argument("--budget-s", type=float, default=420.0, help="wall seconds for this script, all stages")
    p.add_argument("--wheels", default=str(REPO / ".device" / "wheels"), help="the carried wheels (checked)")
    p.add_argument("--stages", nargs="+", choices=[s.name for s in STAGES], help="default: all, in order")
    p.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the script)")
    return p


def main(argv: list[str] | None = None) -> dict:
    opts = parser().parse_args(argv)
    deadline = time.monotonic() + opts.budget_s
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = [s for s in STAGES if opts.stages is None or s.name in opts.stages]
    results = {
        "check": "benchmarks/device_check.py",
        "started_utc": now_utc(),
        "partial": True,
        "tiny": opts.tiny,
        "budget_s": opts.budget_s,
        "notes": NOTES,
        "environment": environment(Path(opts.wheels)),
        "stages": [{"name": s.name, "what": s.what, "status": "pending"} for s in stages],
    }

    def publish() -> None:
        write_atomically(out / "device_check.json", json.dumps(results, indent=1) + "\n")
        write_atomically(out / "device_check.md", markdown(results))

    env = results["environment"]
    print(json.dumps({k: env[k] for k in ("python", "gpu", "carried_not_imported")}), flush=True)
    print("packages:", {n: p["version"] for n, p in env["packages"].items()}, flush=True)
    for r in env["requirements_unmet"]:
        print(f"UNMET: {r['wheel']} needs {r['requires']}, installed {r['installed']}", flush=True)
    publish()
    with tempfile.TemporaryDirectory(prefix="papo-device-check-") as scratch:
        for stage, record in zip(stages, results["stages"], strict=True):
            left = deadline - time.monotonic()
            need = predicted_stage_s(stage, results["stages"], opts.tiny)
            if left < KILL_MARGIN_S + 1 or (need is not None and need > left):
                why = f"{max(left, 0.0):.0f} s left" + (
                    f", predicted {need:.0f} s" if need is not None else ""
                )
                record["status"] = f"skipped ({why})"
                print(f"device_check: stage {stage.name} {record['status']}", flush=True)
                publish()
                continue
            print(f"device_check: stage {stage.name} ({stage.what}), {left:.0f} s left", flush=True)
            run_stage(stage, record, deadline, Path(scratch), opts.tiny, publish)
    results.update(
        partial=False, finished_utc=now_utc(), wall_s=round(opts.budget_s - (deadline - time.monotonic()), 1)
    )
    publish()
    print(markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
