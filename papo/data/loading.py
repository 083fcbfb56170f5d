"""Load datasets in the official PAPO training schema and turn them into TRL prompts.

The official schema (``PAPOGalaxy/PAPO_ViRL39K_train``, spec §4): ``problem`` (text with one
``<image>`` placeholder per image), ``answer`` (the verifiable final answer) and ``images`` (a list
of images). Each row becomes a TRL *conversational* prompt: one user turn whose content has an
``{"type": "image"}`` part where each ``<image>`` stood, and the official instruction appended to
the problem text (think inside ``<think></think>``, final answer in ``\\boxed{}``). TRL's
GRPOTrainer fills those image parts, in order, from the ``images`` column.

Every row is checked before training starts, so a bad row fails here with its index and field
named, rather than as a shape error deep inside a training step; ``skip_invalid=True`` drops bad
rows instead and reports how many were dropped, per field.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
# The official `math_perception.jinja` instruction, appended after a blank line.
PROMPT_SUFFIX = (
    "You first think through the reasoning process as an internal monologue, enclosed within "
    "<think> </think> tags. Then, provide your final answer enclosed within \\boxed{}."
)


class InvalidRowError(ValueError):
    """A dataset row that cannot be trained on; names the row, the field and the fix."""

    def __init__(self, row: int, field: str, reason: str, row_id: str | None = None):
        self.row, self.field, self.reason, self.row_id = row, field, reason, row_id
        where = f"row {row}" + (f" (id={row_id!r})" if row_id is not None else "")
        super().__init__(
            f"Invalid dataset {where}, field '{field}': {reason}. Fix the data, or skip invalid rows and "
            "count them: --skip_invalid (papo train, papo check-data), leave out --fail_on_invalid (papo eval), "
            "skip_invalid=True (Python)."
        )


@dataclass
class ValidationReport:
    """What `prepare_papo_dataset` kept and skipped."""

    total: int = 0
    kept: int = 0
    skipped_by_field: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.total - self.kept

    def __str__(self) -> str:
        if not self.skipped:
            return f"{self.kept}/{self.total} rows valid"
        by_field = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_by_field.items()))
        return f"{self.kept}/{self.total} rows kept, {self.skipped} skipped ({by_field})"


def format_problem(problem: str) -> str:
    """The official prompt text: the problem, trimmed, a blank line, then the instruction."""
    return f"{problem.strip()}\n\n{PROMPT_SUFFIX}"


def build_prompt(problem: str) -> list[dict[str, Any]]:
    """One user turn in TRL's conversational format, an image part where each `<image>` stood.

    Every part carries both keys (`text` is None for images) so that Arrow stores the column with
    one struct type.
    """
    content: list[dict[str, Any]] = []
    for i, piece in enumerate(format_problem(problem).split(IMAGE_PLACEHOLDER)):
        if i > 0:
            content.append({"type": "image", "text": None})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


def load_papo_dataset(source: str | os.PathLike | Dataset | DatasetDict, split: str = "train") -> Dataset:
    """Load a dataset in the official schema from a Hub id, a local directory or a data file.

    `source` may be a `Dataset`/`DatasetDict`; a directory written by `save_to_disk`; a directory
    of parquet/json files; a `.parquet`, `.json` or `.jsonl` file; or a Hub dataset id
    (e.g. ``PAPOGalaxy/PAPO_ViRL39K_train``). `split` picks the split where there are several.

    ``images`` may hold embedded images or relative path strings (both forms of
    ``PAPOGalaxy/PAPO_ViRL39K_train`` are published); paths are looked up next to the data, in the
    folder above a ``data/`` folder, then in the zips found there (extracted once, safely, into a
    cache folder: :mod:`papo.data.archives`), and become image features.
    """
    dataset = _load_any(source, split)
    return images_from_paths(dataset, lambda: _local_roots(source), name=str(source))


def images_from_paths(dataset: Dataset, roots, *, name: str, image_key: str = "images") -> Dataset:
    """`dataset` with an ``images`` column of relative path strings turned into image features.

    `roots` is a callable giving the folders to look the paths up in (called only when needed). Paths
    must stay inside those folders; an image found nowhere is an error naming the row.
    """
    feature = dataset.features.get(image_key) if image_key in dataset.column_names else None
    inner = feature.feature if isinstance(feature, datasets.List) else feature
    if not (isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string")):
        return dataset
    from papo.data.archives import default_cache_dir, extract_zip_cached, find_image

    folders = [Path(r) for r in roots()]
    with_zips: list[Path] | None = None

    def resolve(paths, index):
        nonlocal with_zips
        paths = [paths] if isinstance(paths, str) else paths or []
        out = []
        for position, image_path in enumerate(paths):
            where = f"{name} row {index}, image {position}"
            found = find_image(folders, image_path, where)
            if found is None:
                if with_zips is None:
                    zips = sorted({z for folder in folders for z in folder.glob("*.zip")})
                    with_zips = [extract_zip_cached(z, default_cache_dir()) for z in zips]
                found = find_image(with_zips, image_path, where)
            if found is None:
                raise FileNotFoundError(
                    f"{where}: {image_path!r} not found under {[str(f) for f in folders]} or in their zips; "
                    "download the dataset's images too (e.g. `hf download <repo> --repo-type dataset`)"
                )
            out.append({"path": str(found), "bytes": None})
        return {image_key: out}

    converted = dataset.map(
        resolve,
        input_columns=[image_key],
        with_indices=True,
        features=datasets.Features({**dataset.features, image_key: datasets.List(datasets.Image())}),
        desc="Resolving image paths",
    )
    return converted


def _local_roots(source) -> list[Path]:
    """Folders a dataset's relative image paths may start from (downloading a Hub repo's files)."""
    if isinstance(source, Dataset | DatasetDict):
        return [Path.cwd()]
    path = Path(source)
    if path.is_dir():
        return [path] + ([path.parent] if path.name == "data" else [])
    if path.is_file():
        return [path.parent] + ([path.parent.parent] if path.parent.name == "data" else [])
    from huggingface_hub import snapshot_download

    return [Path(snapshot_download(str(source), repo_type="dataset"))]


def _load_any(source: str | os.PathLike | Dataset | DatasetDict, split: str) -> Dataset:
    if isinstance(source, DatasetDict):
        return _pick_split(source, split, str(source))
    if isinstance(source, Dataset):
        return source
    path = Path(source)
    if path.exists():
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            return _pick_split(loaded, split, str(path)) if isinstance(loaded, DatasetDict) else loaded
        if path.is_file():
            builder = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(
                path.suffix
            )
            if builder is None:
                raise ValueError(
                    f"dataset file {path} has an unsupported suffix; use .parquet, .json or .jsonl"
                )
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        return _pick_split(datasets.load_dataset(str(path)), split, str(path))
    if os.sep in str(source) and not looks_like_hub_id(str(source)):
        raise FileNotFoundError(f"dataset path {source} does not exist")
    try:
        return datasets.load_dataset(str(source), split=split)
    except Exception as err:  # datasets raises several types for offline / missing repos
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = (
            " (HF_HUB_OFFLINE is set: only local paths and cached datasets can be loaded)" if offline else ""
        )
        raise ValueError(
            f"could not load dataset {source!r}, split {split!r}: it is not a local path and loading it "
            f"from the Hugging Face Hub failed{hint}: {type(err).__name__}: {err}"
        ) from err


def prepare_papo_dataset(
    dataset: Dataset,
    *,
    skip_invalid: bool = False,
    problem_key: str = "problem",
    answer_key: str = "answer",
    image_key: str = "images",
    show_progress: bool = True,
) -> tuple[Dataset, ValidationReport]:
    """Check every row and add the TRL `prompt` column.

    Returns the dataset (rows kept, all original columns, plus `prompt`; images stay in
    `image_key` for TRL to fill the prompt's image parts) and a `ValidationReport`.

    A row is invalid when: `problem` is missing or empty; `answer` is missing or empty; it has no
    image (PAPO's perception loss needs one); an image cannot be decoded; or the number of images
    differs from the number of `<image>` placeholders. With ``skip_invalid=False`` the first invalid
    row raises `InvalidRowError`; with ``True`` invalid rows are dropped and counted per field.
    """
    _check_columns(dataset, problem_key, answer_key, image_key)
    report = ValidationReport(total=len(dataset))
    # Read images undecoded: we decode them ourselves to catch corrupt bytes row by row.
    view = dataset.select_columns(
        [c for c in (problem_key, answer_key, image_key, "id") if c in dataset.column_names]
    )
    view = view.cast_column(image_key, _undecoded(dataset.features[image_key]))
    image_decoder = datasets.Image()

    kept: list[int] = []
    prompts: list[list[dict[str, Any]]] = []
    rows = tqdm(view, total=len(view), desc="Checking rows", disable=not show_progress, unit="row")
    for index, row in enumerate(rows):
        problem_text = row[problem_key]
        failure = _row_failure(row, problem_key, answer_key, image_key, image_decoder)
        if failure is not None:
            field_name, reason = failure
            error = InvalidRowError(index, field_name, reason, row_id=row.get("id"))
            if not skip_invalid:
                raise error
            report.skipped_by_field[field_name] += 1
            if len(report.first_errors) < 5:
                report.first_errors.append(str(error).split(". Fix the data")[0])
            continue
        kept.append(index)
        prompts.append(build_prompt(problem_text))

    report.kept = len(kept)
    if report.skipped:
        logger.warning("Skipped invalid rows: %s. First: %s", report, "; ".join(report.first_errors))
    if not kept:
        raise ValueError(f"no valid rows left in the dataset ({report})")
    if len(kept) < len(dataset):
        dataset = dataset.select(kept)
    answer_feature = dataset.features[answer_key]
    if isinstance(answer_feature, datasets.Value) and answer_feature.dtype not in ("string", "large_string"):
        dataset = dataset.cast_column(answer_key, datasets.Value("string"))
    if "prompt" in dataset.column_names:
        dataset = dataset.remove_columns("prompt")
    # add_column keeps the (possibly large) image data where it is instead of rewriting every row.
    return dataset.add_column("prompt", prompts), report


def prompt_token_count(processor, prompt: list[dict[str, Any]], image_sizes: list[tuple[int, int]]) -> int:
    """Tokens the model sees for `prompt`, image tokens included, without processing any pixels.

    The chat template puts one image placeholder per image; the processor expands each to
    `image_grid_thw.prod() / merge_size**2` tokens, which `_get_num_multimodal_tokens` computes from
    the image size alone.
    """
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    text_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    if not image_sizes:
        return text_tokens
    per_image = processor._get_num_multimodal_tokens(image_sizes=image_sizes)["num_image_tokens"]
    return text_tokens + sum(n - 1 for n in per_image)  # each placeholder token becomes n tokens


def filter_long_prompts(
    dataset: Dataset,
    processor,
    max_prompt_length: int,
    *,
    skip_invalid: bool = False,
    image_key: str = "images",
    report: ValidationReport | None = None,
    show_progress: bool = True,
) -> tuple[Dataset, ValidationReport]:
    """Drop (or reject) rows whose prompt is longer than `max_prompt_length` tokens, images included.

    The official recipe filters overlong prompts (> 4096 tokens) out of the data. We never truncate
    a prompt: cutting it would remove image tokens (or the question after them) and silently
    misalign the image features. A too-long row raises `InvalidRowError` (field 'prompt') or, with
    `skip_invalid`, is skipped and counted in the report.
    """
    report = report or ValidationReport(total=len(dataset), kept=len(dataset))
    sizes_view = dataset.select_columns(["prompt", image_key])
    kept = []
    rows = tqdm(sizes_view, total=len(dataset), desc="Counting prompt tokens", disable=not show_progress)
    for index, row in enumerate(rows):
        images = row[image_key] or []
        length = prompt_token_count(processor, row["prompt"], [(im.height, im.width) for im in images])
        if length <= max_prompt_length:
            kept.append(index)
            continue
        error = InvalidRowError(
            index,
            "prompt",
            f"{length} tokens with image tokens > max_prompt_length={max_prompt_length} (prompts are never "
            "truncated: that would cut image tokens; raise max_prompt_length or lower max_pixels)",
        )
        if not skip_invalid:
            raise error
        report.skipped_by_field["prompt"] += 1
        if len(report.first_errors) < 5:
            report.first_errors.append(str(error).split(". Fix the data")[0])
    report.kept -= len(dataset) - len(kept)
    if not kept:
        raise ValueError(f"no valid rows left in the dataset ({report})")
    return (dataset.select(kept) if len(kept) < len(dataset) else dataset), report


def load_training_dataset(
    source: str | os.PathLike | Dataset | DatasetDict,
    split: str = "train",
    *,
    skip_invalid: bool = False,
    max_samples: int | None = None,
    **keys: str,
) -> tuple[Dataset, ValidationReport]:
    """`load_papo_dataset` then `prepare_papo_dataset`; `max_samples` keeps the first N rows."""
    dataset = load_papo_dataset(source, split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return prepare_papo_dataset(dataset, skip_invalid=skip_invalid, **keys)


def _row_failure(
    row: dict[str, Any], problem_key: str, answer_key: str, image_key: str, decoder: datasets.Image
) -> tuple[str, str] | None:
    """(field, reason) for the first problem found in `row`, or None when it is valid."""
    problem = row[problem_key]
    if not isinstance(problem, str) or not problem.strip():
        return problem_key, "the problem text is missing or empty"
    answer = row[answer_key]
    if answer is None or not str(answer).strip():
        return answer_key, "the answer is missing or empty"
    images = row[image_key]
    if images is None:
        images = []
    elif not isinstance(images, list):
        images = [images]
    if not images:
        return image_key, "the row has no image (text-only rows cannot get a perception loss)"
    placeholders = problem.count(IMAGE_PLACEHOLDER)
    if placeholders != len(images):
        return (
            image_key,
            f"{len(images)} image(s) but {placeholders} '{IMAGE_PLACEHOLDER}' placeholder(s) in '{problem_key}'",
        )
    for position, image in enumerate(images):
        if image is None or (isinstance(image, dict) and not image.get("bytes") and not image.get("path")):
            return image_key, f"image {position} is missing"
        try:
            decoder.decode_example(image).load()
        except Exception as err:  # PIL raises many types for corrupt / truncated / unreadable files
            return image_key, f"image {position} cannot be decoded ({type(err).__name__}: {err})"
    return None


def _check_columns(dataset: Dataset, *required: str) -> None:
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the dataset has no column(s) {missing}; it has {dataset.column_names}. The official PAPO schema "
            "is 'problem' (with '<image>' placeholders), 'answer' and 'images'; pass problem_key=/answer_key=/"
            "image_key= to map other names."
        )


def _undecoded(feature):
    """The same feature with image decoding switched off (a single Image or a list of them)."""
    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.List | list):
        inner = feature[0] if isinstance(feature, list) else feature.feature
        return datasets.List(_undecoded(inner))
    return feature


def _pick_split(dataset_dict: DatasetDict, split: str, name: str) -> Dataset:
    if split not in dataset_dict:
        raise ValueError(f"dataset {name} has no split {split!r}; its splits are {list(dataset_dict)}")
    return dataset_dict[split]


def looks_like_hub_id(text: str) -> bool:
    """``namespace/name``: the shape of a Hub repo id (whether it exists is not checked)."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/"))
