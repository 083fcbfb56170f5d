"""The example gallery shipped with the comparison Space (``papo push space``).

``pick_space_examples`` picks, from an adapter's eval predictions (a Hub dataset pushed with ``papo push
eval``, or a local ``papo eval`` folder), the questions on which the baseline and the PAPO model differ most,
and writes them with their images as ``examples/examples.json``; without predictions, the Space's drawn
figures (``space/space_examples.py``, imported from the Space folder).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from papo.hub.checks import _public
from papo.hub.wheel import SPACE_SOURCE

EXAMPLES_MANIFEST = "examples.json"  # what space/space_examples.py's make_examples reads (SHIPPED_EXAMPLES)


NUM_EXAMPLES = 6


def pick_space_examples(
    out_dir: str | os.PathLike,
    *,
    adapter: str | None,
    eval_dataset: str | None = None,
    baseline_eval_dataset: str | None = None,
    num_examples: int = NUM_EXAMPLES,
    token: str | None = None,
) -> list[dict] | None:
    """The examples shipped with the Space, written as ``out_dir/examples.json`` plus their images.

    - No adapter: None (nothing written): the Space builds the embedded pair's examples itself
      (``space_examples.make_examples``: the held-out digit questions on which the pair differs, then figures).
    - ``eval_dataset`` (the PAPO model's predictions, pushed with ``papo push eval``; a Hub dataset id or a
      local ``papo eval`` output folder): its questions on which the two models differ most, by
      ``|accuracy(PAPO) − accuracy(baseline)|`` per question when ``baseline_eval_dataset`` (the base model's
      predictions) is given, else by the PAPO answers' mean perception KL (the questions whose answers leaned
      most on the image); taken in turn from each benchmark.
    - Otherwise a small neutral set: the Space's three drawn figures (``space_examples.figure_examples``).
    """
    if adapter is None:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if eval_dataset is None:
        space_examples = _load_space_module()
        picked = [
            {
                "image": Path(e.image).name,
                "question": e.question,
                "reference": e.reference,
                "source": e.source,
            }
            for e in space_examples.figure_examples(out_dir)
        ]
        how = "space_examples.figure_examples (no eval predictions given)"
    else:
        rows = _eval_rows(eval_dataset, token)
        baseline = None
        if baseline_eval_dataset is not None:
            baseline = {
                (r["benchmark"], r["id"]): r["accuracy"] for r in _eval_rows(baseline_eval_dataset, token)
            }
        picked = []
        for number, row in enumerate(_most_different(rows, baseline, num_examples), start=1):
            name = f"{number:02d}-{_slug(row['benchmark'])}-{_slug(row['id'])}.png"
            _save_image(row["image"], out_dir / name)
            entry = {
                "image": name,
                "question": _clean_question(row["question"]),
                "reference": row["reference"],
            }
            entry |= {"source": f"eval:{row['benchmark']}", "id": row["id"], "papo_accuracy": row["accuracy"]}
            if baseline is not None:
                entry["baseline_accuracy"] = baseline[(row["benchmark"], row["id"])]
            picked.append(entry)
        if not picked:
            raise ValueError(f"--eval-dataset {eval_dataset}: no prediction rows to pick examples from")
        how = (
            f"|accuracy difference| per question, {_public(eval_dataset)} vs {_public(baseline_eval_dataset)}"
            if baseline is not None
            else f"mean perception KL of the PAPO answers in {_public(eval_dataset)} (no baseline predictions given)"
        )
    manifest = {"picked_by": f"papo.hub.space_examples.pick_space_examples: {how}", "examples": picked}
    (out_dir / EXAMPLES_MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return picked


def _most_different(rows: list[dict], baseline: dict | None, n: int) -> list[dict]:
    """`n` rows by score (best first), taken in turn from each benchmark among the rows whose score is above
    0 (the two models differ there), then, if too few differ, the best of the rest. Rows of no score (no
    baseline prediction for that question) or no image are never picked."""

    def score(row: dict) -> float:
        if baseline is not None:
            other = baseline.get((row["benchmark"], row["id"]))
            return -1.0 if other is None else abs(row["accuracy"] - other)
        values = [v for sample in row.get("perception_kl") or [] for v in sample or []]
        return sum(values) / len(values) if values else 0.0

    ranked = sorted(
        ((score(r), r) for r in rows if r.get("image") is not None),
        key=lambda sr: (-sr[0], -sr[1]["accuracy"], sr[1]["benchmark"], sr[1]["id"]),
    )
    queues: dict[str, list[dict]] = {}  # per benchmark, best first; benchmarks in the order of their best row
    for value, row in ranked:
        if value > 0:
            queues.setdefault(row["benchmark"], []).append(row)
    picked: list[dict] = []
    while len(picked) < n and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    picked += [row for value, row in ranked if value == 0][: n - len(picked)]
    return picked


def _eval_rows(source: str, token: str | None) -> list[dict]:
    """Every prediction row (id, benchmark, question, image, reference, accuracy, perception_kl) of a pushed
    eval dataset (Hub id) or a local `papo eval` output / built dataset folder."""
    import pyarrow.parquet as pq

    local = Path(source).expanduser()
    if local.is_dir():
        files = sorted(local.glob("predictions/*.parquet")) or sorted(local.glob("data/*/*.parquet"))
    else:
        files = _download_eval_parquets(source, token)
    if not files:
        raise ValueError(
            f"--eval-dataset {source}: no prediction parquet found (expected the dataset `papo push eval` "
            "pushed, or a `papo eval` output folder)"
        )
    columns = ["id", "benchmark", "question", "image", "reference", "accuracy", "perception_kl"]
    rows = []
    for path in files:
        table = pq.read_table(path)
        missing = [c for c in columns[:6] if c not in table.column_names]
        if missing:
            raise ValueError(
                f"--eval-dataset {source}: {Path(path).name} has no column(s) {', '.join(missing)}"
            )
        rows += table.select([c for c in columns if c in table.column_names]).to_pylist()
    return rows


def _download_eval_parquets(repo_id: str, token: str | None) -> list[str]:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        names = HfApi(token=token).list_repo_files(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        raise ValueError(
            f"--eval-dataset {repo_id}: no such dataset repo on the Hub (or your token cannot read it); push the "
            f"predictions with `papo push eval EVAL_DIR --repo-id {repo_id}`"
        ) from None
    names = sorted(n for n in names if n.startswith("data/") and n.endswith(".parquet"))
    return [hf_hub_download(repo_id, name, repo_type="dataset", token=token) for name in names]


def _save_image(image: Any, path: Path) -> None:
    from PIL import Image

    data = image.get("bytes") if isinstance(image, dict) else image
    if not data:
        raise ValueError(f"a picked example has no image bytes ({path.name})")
    with Image.open(io.BytesIO(data)) as picture:
        picture = picture.convert("RGB") if picture.mode not in ("RGB", "L") else picture.copy()
    picture.save(path, format="PNG", optimize=True)


def _clean_question(question: str) -> str:
    from papo.data.loading import PROMPT_SUFFIX

    return question.replace(PROMPT_SUFFIX, "").replace("<image>", "").strip()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))[:40].strip("_") or "x"


def _load_space_module():
    """space/space_examples.py (the Space's module, not part of the package), imported with ``space/`` first on
    sys.path for the duration: it imports its sibling modules (space_config, space_uploads) as in the Space."""
    folder = str(SPACE_SOURCE)
    sys.path.insert(0, folder)
    try:
        return importlib.import_module("space_examples")
    finally:
        sys.path.remove(folder)
