"""`papo eval`: the paper's protocol on one or more eval sets, with per-token perception KL.

Protocol (spec §5, PAPO-Eval): k = 8 samples per question at temperature 1.0, top_p 1.0, up to
2048 new tokens; each sample's last ``\\boxed{}`` is graded with the reward's grader (mathruler),
with no format requirement; a question scores the mean over its k samples, a benchmark the mean
over its questions (avg@k). Everything is configurable.

Outputs in ``output_dir``: ``predictions/<benchmark>.parquet`` (question, image, reference, every
sample, extracted answer, correctness, tokens and per-token perception KL), ``results.json``,
``results.md`` and, with a comparison run, ``comparison.png``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from papo.analysis import perception_per_token, token_pieces
from papo.data.loading import PROMPT_SUFFIX, build_prompt, prepare_papo_dataset
from papo.generation import generate_completions
from papo.masking import MaskingConfig
from papo.rewards import extract_boxed_answer, grade

PREDICTION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "benchmark": datasets.Value("string"),
        "question": datasets.Value("string"),
        "image": datasets.Image(),
        "reference": datasets.Value("string"),
        "samples": datasets.List(datasets.Value("string")),
        "extracted": datasets.List(datasets.Value("string")),
        "correct": datasets.List(datasets.Value("bool")),
        "accuracy": datasets.Value("float64"),
        "tokens": datasets.List(datasets.List(datasets.Value("string"))),
        "perception_kl": datasets.List(datasets.List(datasets.Value("float32"))),
        # d_t per token (papo.followups.visual_dependency): what VPPO gates and PGPO weights by
        "visual_dependency": datasets.List(datasets.List(datasets.Value("float32"))),
    }
)


@dataclass
class EvalConfig:
    """Generation and analysis settings; defaults are the official protocol (avg@8).

    `papo eval` takes each field as ``--<name>`` (generated from this class; help from ``metadata``).
    """

    samples_per_question: int = field(
        default=8, metadata={"help": "answers sampled per question (avg@k; official 8)", "alias": "--samples"}
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (official 1.0)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (official 1.0)"})
    max_new_tokens: int = field(default=2048, metadata={"help": "answer length limit in tokens"})
    batch_size: int = field(default=8, metadata={"help": "questions generated at once"})
    grader: str = field(
        default="mathruler", metadata={"help": "answer grader", "choices": ("mathruler", "math_verify")}
    )
    seed: int = field(default=0, metadata={"help": "sampling and mask seed"})
    max_questions: int | None = field(default=None, metadata={"help": "first N questions of each set"})
    perception_kl: bool = field(
        default=True,
        metadata={"help": "per-token perception KL vs a masked image (--no_perception_kl skips it)"},
    )
    kl_estimator: str = field(
        default="full",
        metadata={
            "help": "per-token KL: full vocabulary, or the training estimators",
            "choices": ("full", "k1", "k2", "k3"),
        },
    )
    kl_threshold: float = field(
        default=0.1, metadata={"help": "KL (nats) above which a token counts as image-dependent"}
    )
    mask_ratio: float = field(default=0.6, metadata={"help": "share of patches masked (as in training)"})
    mask_patch_size: int = field(
        default=14, metadata={"help": "mask patch side in pixels (Qwen2.5-VL 14, Qwen3-VL 16)"}
    )
    mask_grid: str = field(
        default="image",
        metadata={
            "help": "mask on the raw image or on the model's resized grid",
            "choices": ("image", "model"),
        },
    )
    skip_invalid: bool = field(
        default=True, metadata={"help": "skip and count invalid rows (--fail_on_invalid stops at the first)"}
    )

    def __post_init__(self):
        for name in ("samples_per_question", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}"
            )

    @property
    def masking(self) -> MaskingConfig:
        return MaskingConfig(mask_ratio=self.mask_ratio, patch_size=self.mask_patch_size, grid=self.mask_grid)


def eval_prompt(problem: str) -> list[dict[str, Any]]:
    """The training prompt; PAPO_eval questions that already carry the instruction keep it once."""
    if PROMPT_SUFFIX in problem:
        problem = problem.replace(PROMPT_SUFFIX, "").rstrip()
    return build_prompt(problem)


def evaluate_benchmark(model, processor, dataset: datasets.Dataset, name: str, config: EvalConfig):
    """Generate, grade and analyse one benchmark. Returns (predictions Dataset, summary dict)."""
    if config.max_questions is not None:
        dataset = dataset.select(range(min(config.max_questions, len(dataset))))
    dataset, report = prepare_papo_dataset(dataset, skip_invalid=config.skip_invalid, show_progress=False)
    k = config.samples_per_question
    prompts = [eval_prompt(problem) for problem in dataset["problem"]]
    images = dataset["images"]
    # k consecutive copies of each question; seeded, so a rerun gives the same samples
    outputs = generate_completions(
        model,
        processor,
        [p for p in prompts for _ in range(k)],
        [i for i in images for _ in range(k)],
        max_new_tokens=config.max_new_tokens,
        do_sample=config.temperature > 0,
        temperature=config.temperature or 1.0,
        top_p=config.top_p,
        batch_size=config.batch_size,
        seed=config.seed,
        show_progress=True,
    )
    kls: list[list[float]] = [[] for _ in outputs]
    dependencies: list[list[float]] = [[] for _ in outputs]
    if config.perception_kl:
        kls, dependencies = [], []
        starts = range(0, len(outputs), config.batch_size)
        for start in tqdm(starts, desc=f"Perception KL [{name}]", unit="batch"):
            chunk = slice(start, start + config.batch_size)
            rows = range(len(outputs))[chunk]
            both = perception_per_token(
                model,
                processor,
                [prompts[i // k] for i in rows],
                [images[i // k] for i in rows],
                [outputs[i][1] or [processor.tokenizer.eos_token_id] for i in rows],
                masking=config.masking,
                seed=config.seed,
                estimator=config.kl_estimator,
            )
            kls += both["perception_kl"]
            dependencies += both["visual_dependency"]

    records = {key: [] for key in PREDICTION_FEATURES}
    first_images = [embedded_image(images[0]) for images in _undecoded_images(dataset)]
    for q, row in enumerate(dataset):
        samples = outputs[q * k : (q + 1) * k]
        texts = [text for text, _ in samples]
        extracted = [extract_boxed_answer(text) for text in texts]
        correct = [grade(e, row["answer"], config.grader) for e in extracted]
        records["id"].append(str(row["id"]))
        records["benchmark"].append(name)
        records["question"].append(row["problem"])
        records["image"].append(first_images[q])
        records["reference"].append(row["answer"])
        records["samples"].append(texts)
        records["extracted"].append(extracted)
        records["correct"].append(correct)
        records["accuracy"].append(sum(correct) / k)
        # the text each token adds (papo.analysis.token_pieces): "".join(pieces) is the answer
        records["tokens"].append([token_pieces(processor.tokenizer, ids) for _, ids in samples])
        records["perception_kl"].append(kls[q * k : (q + 1) * k])
        records["visual_dependency"].append(dependencies[q * k : (q + 1) * k])
    predictions = datasets.Dataset.from_dict(records, features=PREDICTION_FEATURES)
    all_kl = torch.tensor([v for sample in kls for v in sample]) if config.perception_kl else torch.tensor([])
    summary = {
        "accuracy": 100.0 * sum(records["accuracy"]) / max(len(records["accuracy"]), 1),
        "n": len(predictions),
        "samples_per_question": k,
        "skipped_rows": report.skipped,
    }
    if all_kl.numel():
        summary["perception_kl_mean"] = float(all_kl.mean())
        summary["perception_kl_share_above"] = float((all_kl > config.kl_threshold).float().mean())
        summary["perception_kl_threshold"] = config.kl_threshold
        summary["visual_dependency_mean"] = float(torch.tensor([v for s in dependencies for v in s]).mean())
    return predictions, summary


def _undecoded_images(dataset: datasets.Dataset) -> list[list[dict]]:
    feature = dataset.features["images"]
    inner = feature.feature if isinstance(feature, datasets.List) else feature
    if isinstance(inner, datasets.Image):
        undecoded = datasets.Image(decode=False)
        feature = datasets.List(undecoded) if isinstance(feature, datasets.List) else undecoded
        dataset = dataset.cast_column("images", feature)
    return [imgs if isinstance(imgs, list) else [imgs] for imgs in dataset["images"]]


def embedded_image(image: dict) -> dict:
    """The image's bytes with only its file name: a predictions file carries no local path and no dangling one."""
    path = image.get("path")
    data = image.get("bytes") or (Path(path).read_bytes() if path else None)
    return {"bytes": data, "path": Path(path).name if path else None}


def write_predictions(predictions: datasets.Dataset, path: Path) -> Path:
    """Parquet, written atomically (`papo.files`): a crash never leaves half a file."""
    from papo.files import write_file_atomically

    return write_file_atomically(path, lambda tmp: predictions.to_parquet(str(tmp)))


def protocol(config: EvalConfig) -> dict[str, Any]:
    return {**asdict(config), "metric": f"accuracy (avg@{config.samples_per_question})"}


def load_model_and_adapter(
    model_id: str, adapter: str | None = None, *, dtype: str = "auto", device: str | None = None
):
    """Base model (+ PEFT adapter), Hub ids or paths. Offline with no cached copy: a clear message."""
    from papo.modeling import explain_missing, load_vlm

    model, processor = load_vlm(model_id, dtype=dtype, device=device)
    if adapter is not None:
        from peft import PeftModel

        with explain_missing(adapter):
            model = PeftModel.from_pretrained(model, adapter).eval()
    return model, processor


def run_eval(
    model_id: str,
    sources: list[str],
    output_dir: str | os.PathLike,
    config: EvalConfig,
    *,
    adapter: str | None = None,
    label: str | None = None,
    split: str = "test",
    image_dir: str | None = None,
    compare: str | os.PathLike | None = None,
    dtype: str = "auto",
    device: str | None = None,
    benchmarks: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed_runs: list[str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Evaluate one model on every source; write predictions, results.json, results.md (+ plot)."""
    import json

    from papo.evaluation.data import load_eval_sets
    from papo.evaluation.report import (
        canonical_name,
        paired_comparison,
        seed_spreads,
        summarize,
        write_report,
    )

    output_dir = Path(output_dir)
    # Load (and check) every eval set before the model: a bad path fails in seconds, not after a download.
    eval_sets = [
        (canonical_name(raw_name), dataset, hub_dataset)
        for source in sources
        for raw_name, dataset, hub_dataset in load_eval_sets(
            source, split, image_dir, benchmarks=benchmarks, cache_dir=cache_dir
        )
    ]
    model, processor = load_model_and_adapter(model_id, adapter, dtype=dtype, device=device)
    label = label or Path(str(adapter or model_id).rstrip("/")).name
    summaries: dict[str, dict[str, Any]] = {}
    for name, dataset, hub_dataset in eval_sets:
        if name in summaries:
            raise ValueError(f"two --data sources are both the benchmark {name!r}; pass each benchmark once")
        shown = len(dataset) if config.max_questions is None else min(config.max_questions, len(dataset))
        of_total = f" of {len(dataset)}" if shown < len(dataset) else ""
        print(f"Evaluating {label} on {name}: {shown}{of_total} questions, k={config.samples_per_question}")
        predictions, summary = evaluate_benchmark(model, processor, dataset, name, config)
        # What this result is a result on: the Hub dataset (None: local data), and whether every row of it
        # was evaluated (not with --max_questions or skipped rows). Cards cite only complete Hub results.
        summary["dataset"] = hub_dataset
        summary["split_rows"] = len(dataset)
        summary["complete"] = summary["n"] == len(dataset)
        write_predictions(predictions, output_dir / "predictions" / f"{name}.parquet")
        summaries[name] = summary
        skipped = f", {summary['skipped_rows']} invalid rows skipped" if summary["skipped_rows"] else ""
        print(f"{label} on {name}: {summary['accuracy']:.2f}% over {summary['n']} questions{skipped}")
    runs = {label: {name: s["accuracy"] for name, s in summaries.items()}}
    baseline = comparison = None
    if compare is not None:
        other = json.loads(Path(compare).read_text())
        other_label = other.get("label", "baseline")
        runs = {other_label: {n: b["accuracy"] for n, b in other["benchmarks"].items()}, **runs}
        baseline = other_label
        if baseline == label:
            raise ValueError(f"--compare: the baseline run is also labelled {label!r}; pass --label")
        comparison = paired_comparison(Path(compare).parent, output_dir, list(summaries), seed=config.seed)
        if comparison is None:
            print(f"No per-question predictions of {baseline} next to {compare}: no confidence intervals")
    extra = {
        "label": label,
        "model": model_id,
        "adapter": adapter,
        "protocol": protocol(config),
        "benchmarks": summaries,
        "summary": summarize(runs[label]),  # this run: per-benchmark, group averages, overall (percent)
    }
    seeds = None
    if seed_runs:  # the same model evaluated with other seeds: this run's spread over seeds
        by_seed = {f"seed {config.seed}": runs[label]}
        for path in seed_runs:
            other = json.loads(Path(path).read_text())
            key = f"seed {other.get('protocol', {}).get('seed', len(by_seed))}"
            if key in by_seed:
                raise ValueError(
                    f"--seed_runs {path}: {key} is already one of the runs; give runs with other seeds"
                )
            by_seed[key] = {n: b["accuracy"] for n, b in other["benchmarks"].items()}
        seeds = seed_spreads(by_seed)
    paths = write_report(
        output_dir, runs, baseline=baseline, extra=extra, comparison=comparison, candidate=label, seeds=seeds
    )
    return {"paths": paths, "summaries": summaries, "runs": runs}
