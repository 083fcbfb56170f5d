"""Rendering the cards (``README.md``) of what papo-hub publishes, from the templates in ``papo/cards/``.

The templates are Jinja files, kept apart from the code (``papo/cards/*.md``), rendered through
``huggingface_hub``'s ``ModelCard`` / ``DatasetCard`` / ``SpaceCard.from_template`` so the metadata is
valid Hub metadata. Here: the adapter's model card (``_adapter_card``: title and tags from the algorithm the
run used), the eval predictions' dataset card (``_eval_dataset_card``), and the text helpers the cards share
(``_tidy``, ``_short``, ``_size_category``). The Space's card is rendered by ``papo.hub.space``.
"""

from __future__ import annotations

import re
from pathlib import Path

from papo.hub.checks import PROCESSOR_FILES, _looks_local, _scrub_local_paths
from papo.hub.tables import (
    _COLUMN_DOCS,
    DEFAULT_METRIC_NAME,
    _cell,
    _config_rows,
    _lora_rows,
    _model_index,
    _normalise_eval_results,
    _protocol_summary,
    _results_table,
)

CARDS_DIR = Path(__file__).resolve().parent.parent / "cards"


ADAPTER_CARD_TEMPLATE = CARDS_DIR / "adapter_card.md"


EVAL_CARD_TEMPLATE = CARDS_DIR / "eval_dataset_card.md"


def _adapter_card(
    folder: Path,
    *,
    base: str | None,
    run_config: dict,
    adapter_config: dict,
    eval_results: dict | None = None,
    datasets: list[str] | None = None,
    license: str = "mit",
    repo_id: str | None = None,
    local_base: str | None = None,
) -> str:
    """The model card of the adapter whose files are in `folder`: metadata and text from the run's config.

    `base` is the base model's Hub id; None when it is only known as a local folder (`local_base`, shown by
    name, with no metadata link): the card of a `papo train` output folder before it is pushed.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    copied = {p.name for p in folder.iterdir() if p.is_file()}
    peft_method = "QLoRA" if run_config.get("load_in_4bit") else "LoRA"
    algorithm, perception = _algorithm(run_config)
    train_data = list(datasets) if datasets else _training_datasets(run_config)
    tags = ["papo", "trl", "peft", peft_method.lower()]
    if algorithm is not None:
        tags.append("dapo" if run_config.get("dynamic_sampling") else "grpo")
        tags += [name.lower() for name in _followups(run_config)]
    tags.append("vision-language")
    title_algorithm = algorithm or "PAPO"
    base_label = base or local_base or "its base model"
    title = f"{title_algorithm} {peft_method} adapter for {base_label.split('/')[-1]}"

    evals = _normalise_eval_results(eval_results) if eval_results else None
    card_data = ModelCardData(
        base_model=base,
        library_name="peft",
        pipeline_tag="image-text-to-text",
        license=license,
        datasets=train_data or None,
        tags=tags,
        model_name=repo_id or title,
        eval_results=(_model_index(evals, EvalResult) or None) if evals else None,
    )
    has_processor = any((folder / name).is_file() for name in PROCESSOR_FILES)
    card = ModelCard.from_template(
        card_data,
        template_path=str(ADAPTER_CARD_TEMPLATE),
        title=title,
        base_model=base or "<base-model-hub-id>",
        base_label=base_label,
        base_on_hub=base is not None,
        repo_id=repo_id or "<your-username>/<repo-name>",
        peft_method=peft_method,
        qlora=peft_method == "QLoRA",
        algorithm=algorithm or "GRPO",
        perception=perception,
        config_rows=_config_rows(_scrub_local_paths(run_config)),
        lora_rows=_lora_rows(adapter_config),
        eval_rows=evals["benchmarks"] if evals else [],
        group_rows=evals["groups"] if evals else [],
        overall=evals["overall"] if evals else None,
        comparison_rows=evals["comparison_rows"] if evals else [],
        comparison_note=evals["comparison_note"] if evals else "",
        metric_name=evals["metric_name"] if evals else DEFAULT_METRIC_NAME,
        protocol_text=evals["protocol_text"] if evals else "",
        processor_source="adapter_id" if has_processor else "base_id",
        has_processor=has_processor,
        has_config="papo_config.yaml" in copied,
        has_metrics="metrics.jsonl" in copied,
        license=license,
    )
    return _tidy(str(card))


def _eval_dataset_card(
    eval_dir: Path,
    *,
    results: dict,
    benchmarks: list[dict],
    configs: list[dict],
    columns: list[str],
    model: str,
    adapter: str | None,
    repo_id: str | None,
    license: str,
) -> str:
    """The dataset card of the predictions of the ``papo eval`` run in `eval_dir` (``build_eval_dataset_repo``):
    one ``configs`` entry per benchmark, the protocol, the metrics table and the columns of the parquets."""
    from huggingface_hub import DatasetCard, DatasetCardData

    protocol = results.get("protocol") or {}
    if not isinstance(protocol, dict):
        protocol = {"protocol": protocol}
    model_label = f"{model} + adapter {adapter}" if adapter else model
    card_data = DatasetCardData(
        license=license,
        task_categories=["image-text-to-text", "visual-question-answering"],
        tags=["papo", "evaluation", "vision-language", "model-predictions"],
        pretty_name=f"PAPO eval predictions: {_short(adapter) if adapter else _short(model)}",
        size_categories=[_size_category(sum(b["rows"] for b in benchmarks))],
        configs=configs,
    )
    metrics_md = (eval_dir / "results.md").read_text().strip() if (eval_dir / "results.md").is_file() else ""
    card = DatasetCard.from_template(
        card_data,
        template_path=str(EVAL_CARD_TEMPLATE),
        repo_id=repo_id or "<your-username>/<repo-name>",
        model=model,
        adapter=adapter,
        model_label=model_label,
        first_config=benchmarks[0]["config"],
        benchmarks=benchmarks,
        has_comparison=(eval_dir / "comparison.png").is_file(),
        protocol_rows=[{"key": k, "value": _cell(v)} for k, v in protocol.items()],
        protocol_summary=_protocol_summary(protocol),
        mask_ratio=protocol.get("mask_ratio"),
        kl_threshold=next((v for k, v in protocol.items() if "threshold" in k), None),
        metrics_table=metrics_md or _results_table(results),
        columns=[{"name": c, "description": _cell(_COLUMN_DOCS.get(c, ""))} for c in columns],
        papo_eval_benchmarks=[b["name"] for b in benchmarks if not b["synthetic"]],
        synthetic_benchmarks=[b["name"] for b in benchmarks if b["synthetic"]],
    )
    return _tidy(str(card))


def _training_datasets(run_config: dict) -> list[str]:
    name = run_config.get("dataset_name")
    if isinstance(name, str) and not _looks_local(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return [name]
    return []


def _algorithm(run_config: dict) -> tuple[str | None, bool]:
    """(variant name, perception loss on) from the resolved config: PAPO-G, PAPO-G-NRef, PAPO-D, GRPO, DAPO."""
    if not run_config:
        return None, True
    perception = bool(run_config.get("perception_loss", (run_config.get("perception_kl_coef") or 0) > 0))
    dapo = bool(run_config.get("dynamic_sampling"))
    followups = _followups(run_config)
    if followups:  # VPPO / PGPO / NoisyRollout (issue 19), with PAPO's KL term when γ > 0
        kl_on = perception and (run_config.get("perception_kl_coef") or 0) > 0
        return ("PAPO + " if kl_on else "") + " + ".join(followups), kl_on
    if not perception:
        return ("DAPO" if dapo else "GRPO"), False
    if dapo:
        return "PAPO-D", True
    return ("PAPO-G-NRef" if run_config.get("beta", 0.0) == 0 else "PAPO-G"), True


def _followups(run_config: dict) -> list[str]:
    """The follow-up methods a run used (papo.followups): VPPO, PGPO, NoisyRollout."""
    names = []
    if run_config.get("vppo_token_gating") or run_config.get("vppo_advantage_scaling"):
        names.append("VPPO")
    if run_config.get("pgpo"):
        names.append("PGPO")
    if run_config.get("noisy_rollout"):
        names.append("NoisyRollout")
    return names


def _short(name: str | None) -> str:
    return str(name).rstrip("/").split("/")[-1] if name else "model"


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return label
    return "1M<n<10M"


def _tidy(text: str) -> str:
    """Collapse the blank lines Jinja leaves behind (outside of code blocks) and end with one newline."""
    out, fenced, blank = [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and not line.strip():
            if blank:
                continue
            blank = True
        else:
            blank = False
        out.append(line.rstrip() if not fenced else line)
    return "\n".join(out).strip() + "\n"
