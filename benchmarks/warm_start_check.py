"""Does a warm start look at the image? Greedy accuracy per task with the image and with an all-black one.

    python -m benchmarks.warm_start_check                         # the shipped warm start (papo/assets)
    python -m benchmarks.warm_start_check --model PATH --data_seed 2027 --num_test 400 --samples 4

Draws a fresh test split (`--data_seed`: pick one no training used; its digits are the held-out scans),
then prints, per task: accuracy with the image, with an all-black image of the same size, the gap, the
token-mean perception KL (full vocabulary, 60 % of 14-px patches masked, seeded as in training) and,
with `--samples k`, sampled accuracy at temperature 1 and the share of questions whose k samples are
mixed (neither all right nor all wrong: where a GRPO group has signal). Ends with the averages over the
vision-dependent ("high") tasks and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.mini_repro.evaluate import evaluate_policy
from papo.data.synthetic import make_synthetic_dataset


def check(model_path: str, data_seed: int, num_test: int, samples: int, tasks: list[str] | None) -> dict:
    from papo.modeling import load_model_and_adapter

    rows = make_synthetic_dataset(num_train=1, num_test=num_test, seed=data_seed, tasks=tasks)["test"]
    model, processor = load_model_and_adapter(model_path, None, dtype="float32")
    start = time.perf_counter()
    seeing = evaluate_policy(model, processor, rows, perception_kl=True, samples=samples)
    blind = evaluate_policy(model, processor, rows, blind=True)
    return {
        "model": model_path,
        "data_seed": data_seed,
        "num_test": num_test,
        "with_image": seeing,
        "blind": blind,
        "seconds": time.perf_counter() - start,
    }


def table(result: dict) -> str:
    seeing, blind = result["with_image"], result["blind"]
    sampled = seeing.get("sampled", {}).get("by_task", {})
    lines = [
        "| task | with image % | black image % | gap pts | perception KL (nats/token) | sampled % (T=1) |",
        "|---|---|---|---|---|---|",
    ]
    for task, accuracy in seeing["by_task"].items():
        lines.append(
            f"| {task} | {100 * accuracy:.1f} | {100 * blind['by_task'][task]:.1f} | "
            f"{100 * (accuracy - blind['by_task'][task]):+.1f} | {seeing['perception_kl_by_task'][task]:.4f} | "
            + (f"{100 * sampled[task]:.1f} |" if task in sampled else "– |")
        )
    high, black = (
        seeing["by_dependency"].get("high", float("nan")),
        blind["by_dependency"].get("high", float("nan")),
    )
    kl_high = seeing["perception_kl_by_dependency"].get("high", float("nan"))
    line = f"| **vision-high average** | {100 * high:.1f} | {100 * black:.1f} | {100 * (high - black):+.1f} | {kl_high:.4f} | "
    if "sampled" in seeing:
        s = seeing["sampled"]
        line += f"{100 * s['by_dependency'].get('high', float('nan')):.1f} (mixed items: {100 * s['mixed']:.0f} %) |"
    else:
        line += "– |"
    return "\n".join([*lines, line])


def main(argv: list[str] | None = None) -> int:
    from papo.embedded import shipped_warm_start

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped warm start)")
    parser.add_argument("--data_seed", type=int, default=2027, help="test draw; use one no training used")
    parser.add_argument("--num_test", type=int, default=400)
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per question (0: none)")
    parser.add_argument("--tasks", nargs="+", default=None, help="task names or sets (default: digits)")
    args = parser.parse_args(argv)
    model = args.model or str(shipped_warm_start())
    result = check(model, args.data_seed, args.num_test, args.samples, args.tasks)
    print(f"{model}: {args.num_test} test rows, data seed {args.data_seed}, {result['seconds']:.0f} s")
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
