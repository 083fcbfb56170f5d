"""Deploy the comparison Space (``space/``) to the Hugging Face Hub in one command: ``papo push space``.

``build_space_repo`` writes, in a local folder, exactly the files of the Space repo:

- the app (``app.py`` and its ``space_*.py`` modules, copied from ``space/``);
- papo-hub itself as a wheel built from this source tree (``papo_hub-<version>-py3-none-any.whl``), so the Space
  runs the code that built it, before papo-hub is on PyPI and without a git URL. The embedded demo models
  (``papo/assets``, about 5 MB) go into the wheel only when the Space runs them (no adapter given);
- ``requirements.txt``: papo-hub's dependencies and its ``space`` extra, pinned as in ``pyproject.toml`` (read
  from the wheel's metadata). The wheel itself is imported by the app (``space_config.use_shipped_wheel``), not
  installed by ``requirements.txt``: a Space's build may install that file before the rest of the repo is in
  place, where a relative path to the wheel would not resolve;
- ``examples/``: with an adapter, the example gallery (``pick_space_examples``); without, the Space builds the
  embedded pair's own examples;
- ``README.md``: the Space card, its front matter filled in (sdk and version, python 3.12, the base model and
  adapter under ``models:`` and the eval sets under ``datasets:``, so the Space is listed on their Hub pages).

``push_space`` checks the adapter and the base model first (they exist on the Hub, and the adapter's LoRA
shapes fit the base: ``papo.hub.check_adapter_fits_base``, the check ``papo push adapter`` makes), creates the
Space (Gradio SDK), sets its variables (``PAPO_BASE_MODEL``, ``PAPO_ADAPTER``, ``PAPO_LOAD_IN_4BIT``,
``PAPO_DTYPE``, ``PAPO_DEVICE``) through the Hub API, then pushes the folder in one mirroring commit with
``papo.hub``'s transport (retries, ``hf auth login`` hint on 401/403, no stale files, no commit when nothing
changed) and requests the hardware if asked. Re-pushing the same arguments makes no commit and changes no
variable.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from papo import __version__
from papo.hub import (
    CARDS_DIR,
    _build_atomically,
    _check_repo_id,
    _is_previous_build,
    _looks_local,
    _push_folder,
    _refuse_local_paths,
    _resolve_base_model,
    _tidy,
    _with_retries,
    check_adapter_fits_base,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MANAGED_VARIABLES",
    "build_space_repo",
    "build_wheel",
    "pick_space_examples",
    "push_space",
    "resolve_space_models",
    "space_variables",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPACE_SOURCE = PROJECT_ROOT / "space"
SPACE_APP_FILES = (
    "app.py",
    "space_config.py",
    "space_models.py",
    "space_uploads.py",
    "space_comparison.py",
    "space_examples.py",
    "space_render.py",
)
SPACE_CARD_TEMPLATE = CARDS_DIR / "space_card.md"
EXAMPLES_DIR = "examples"
EXAMPLES_MANIFEST = "examples.json"  # what space/space_examples.py's make_examples reads (SHIPPED_EXAMPLES)
NUM_EXAMPLES = 6
# The variables this command owns: set from its arguments, deleted when an argument no longer asks for them.
# Other variables (PAPO_MAX_NEW_TOKENS, ...) set by hand in the Space's settings are left alone.
MANAGED_VARIABLES = ("PAPO_BASE_MODEL", "PAPO_ADAPTER", "PAPO_LOAD_IN_4BIT", "PAPO_DTYPE", "PAPO_DEVICE")
PYTHON_VERSION = "3.12"
# Zip timestamps of the wheel (1980-01-01, the zip epoch): the same source gives the same bytes, so an
# unchanged re-push uploads nothing.
WHEEL_EPOCH = "315532800"
SPACE_TAGS = ["papo", "vision-language-model", "reinforcement-learning", "grpo", "trl", "peft"]
SHORT_DESCRIPTION = "Baseline vs PAPO answers with a per-token image-KL heat map"


@dataclass(frozen=True)
class SpaceModels:
    """What the Space compares: Hub ids, or both None for the embedded pair shipped with papo-hub."""

    base_model: str | None = None
    adapter: str | None = None

    @property
    def embedded(self) -> bool:
        return self.adapter is None


# --------------------------------------------------------------------------------------------------------
# Models and variables
# --------------------------------------------------------------------------------------------------------


def resolve_space_models(
    base_model: str | None, adapter: str | None, *, token: str | None = None
) -> SpaceModels:
    """The Space's models, checked before anything is pushed.

    No adapter: the embedded pair (then no base model either). With an adapter (a Hub id, as the Space loads
    it from the Hub): its ``adapter_config.json`` and weights are fetched (HF cache, else the Hub), the base
    model defaults to the one it records, and the base model's config must be found (cache or Hub) and fit
    the adapter's LoRA shapes (the adapter's weights are downloaded for that, as `papo push adapter` reads
    them locally).

    Raises ``ValueError`` naming the argument and the fix, ``BaseModelMismatchError`` when the shapes differ;
    HTTP errors (401/403 included) propagate for the caller's retry/auth handling.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if adapter is None:
        if base_model:
            raise ValueError(
                "--base-model needs --adapter: the Space compares the base model with base + your PAPO adapter "
                "(push it with `papo push adapter`); with neither, it runs the embedded demo pair"
            )
        return SpaceModels()
    local = _looks_local(adapter)
    if not local:
        try:
            validate_repo_id(adapter)
        except HFValidationError:
            local = True
    if local:
        raise ValueError(
            f"--adapter {adapter!r} is not a Hub model id (<namespace>/<name>): the Space loads the adapter from "
            "the Hub; push it first with `papo push adapter DIR --repo-id <you>/<name>` and pass that id"
        )
    config_path, weights_path = _download_adapter(adapter, token)
    adapter_config = json.loads(Path(config_path).read_text())
    base = _resolve_base_model(base_model, {}, adapter_config)
    if not check_adapter_fits_base(weights_path, base, ask_hub=True):
        raise ValueError(
            f"--base-model {base}: no config.json of that model was found in the HF cache or on the Hub, so the "
            "Space could not load it; check the id (and that your token can read it)"
        )
    return SpaceModels(base, adapter)


def _download_adapter(adapter: str, token: str | None) -> tuple[str, str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    paths = []
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        try:
            paths.append(hf_hub_download(adapter, filename, token=token))
        except RepositoryNotFoundError:  # (a 401 for a bad token is an HfHubHTTPError: HubAuthError above)
            raise ValueError(
                f"--adapter {adapter}: no such model repo on the Hub (or your token cannot read it); push it "
                f"with `papo push adapter DIR --repo-id {adapter}`"
            ) from None
        except (EntryNotFoundError, RevisionNotFoundError):
            raise ValueError(
                f"--adapter {adapter}: the repo has no {filename} on main: it is not a PEFT (LoRA) adapter "
                "pushed with `papo push adapter`"
            ) from None
    return paths[0], paths[1]


def space_variables(
    models: SpaceModels, *, load_in_4bit: bool = False, dtype: str | None = None, device: str | None = None
) -> dict[str, str]:
    """The Space variables (the environment the app reads, ``space/space_config.py``'s ``SpaceConfig``)."""
    from papo.modeling import DTYPES

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    variables: dict[str, str] = {}
    if models.adapter:
        variables["PAPO_BASE_MODEL"] = str(models.base_model)
        variables["PAPO_ADAPTER"] = models.adapter
    if load_in_4bit:
        variables["PAPO_LOAD_IN_4BIT"] = "true"
    if dtype and dtype != "auto":
        variables["PAPO_DTYPE"] = dtype
    if device:
        variables["PAPO_DEVICE"] = device
    return variables


def _check_hardware(hardware: str | None) -> None:
    from huggingface_hub import SpaceHardware

    known = sorted(h.value for h in SpaceHardware)
    if hardware is not None and hardware not in known:
        raise ValueError(
            f"--hardware {hardware!r} is not a Space hardware flavour; one of: {', '.join(known)}"
        )


# --------------------------------------------------------------------------------------------------------
# The wheel
# --------------------------------------------------------------------------------------------------------


def build_wheel(out_dir: str | os.PathLike, *, with_assets: bool) -> Path:
    """Build the wheel of this papo-hub source tree into ``out_dir`` (offline: setuptools, no isolation).

    ``with_assets=False`` leaves ``papo/assets`` (the embedded demo models) out. The zip timestamps are fixed,
    so the same source gives the same bytes. Raises ``ValueError`` when papo is not run from its source tree.
    """
    pyproject = PROJECT_ROOT / "pyproject.toml"
    if not pyproject.is_file() or tomllib.loads(pyproject.read_text())["project"]["name"] != "papo-hub":
        raise ValueError(
            f"papo push space builds papo-hub from its source tree, which was not found at {PROJECT_ROOT}: "
            "run it from a clone of papo-hub installed with `pip install -e .`"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skip = ["__pycache__", "*.pyc", ".*"] + ([] if with_assets else ["assets"])
    with tempfile.TemporaryDirectory(prefix="papo-wheel-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(PROJECT_ROOT / "papo", source / "papo", ignore=shutil.ignore_patterns(*skip))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (PROJECT_ROOT / name).is_file():
                shutil.copyfile(PROJECT_ROOT / name, source / name)
        dist = Path(tmp) / "dist"
        code = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
        env = {**os.environ, "SOURCE_DATE_EPOCH": WHEEL_EPOCH, "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            [sys.executable, "-c", code, str(dist)], cwd=source, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"building the papo-hub wheel failed:\n{(done.stdout + done.stderr)[-3000:]}")
        name = done.stdout.strip().splitlines()[-1]
        target = out_dir / name
        shutil.copyfile(dist / name, target)
    return target


def _space_requirements(wheel: Path) -> str:
    """requirements.txt: papo-hub's dependencies and its `space` extra, as the wheel's metadata pins them
    (so they match pyproject.toml), and `spaces`. The wheel itself is not listed: the app imports it from
    the Space folder (``space_config.use_shipped_wheel``), because a Space may install requirements.txt before
    the rest of the repo is in place, where a relative path to the wheel would not resolve."""
    from email.parser import Parser

    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    lines = [
        f"# Written by `papo push space`: the dependencies of papo-hub {__version__} and of its `space` extra.",
        f"# papo-hub itself is {wheel.name}, next to app.py, which app.py imports (see space_config.use_shipped_wheel).",
    ]
    for spec in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(spec)
        marker = str(requirement.marker) if requirement.marker else ""
        if marker and marker.replace("'", '"') != 'extra == "space"':
            continue  # another extra (deepspeed, vllm, dev)
        requirement.marker = None
        lines.append(str(requirement))
    lines += [
        "# ZeroGPU: `spaces` (preinstalled there) gives the GPU per request; elsewhere the app runs without it.",
        "spaces",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------------


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
    manifest = {"picked_by": f"papo.hub_space.pick_space_examples: {how}", "examples": picked}
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


def _public(source: str | None) -> str | None:
    """A Hub id as is; a local folder as ``<local>/<its name>`` (nothing pushed names a local path)."""
    if source is None or not Path(source).expanduser().exists():
        return source
    return f"<local>/{Path(source).expanduser().resolve().name}"


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


# --------------------------------------------------------------------------------------------------------
# The Space folder
# --------------------------------------------------------------------------------------------------------


def build_space_repo(
    out_dir: str | os.PathLike,
    *,
    repo_id: str,
    models: SpaceModels,
    variables: dict[str, str],
    eval_dataset: str | None = None,
    baseline_eval_dataset: str | None = None,
    hardware: str | None = None,
    token: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write in ``out_dir`` the exact folder ``push_space`` uploads (models already resolved and checked)."""
    for name in SPACE_APP_FILES:
        if not (SPACE_SOURCE / name).is_file():
            raise ValueError(
                f"the Space's source {SPACE_SOURCE / name} is missing: run papo push space from a clone of "
                "papo-hub (pip install -e .)"
            )

    def write(folder: Path) -> None:
        for name in SPACE_APP_FILES:
            shutil.copyfile(SPACE_SOURCE / name, folder / name)
        wheel = build_wheel(folder, with_assets=models.embedded)
        (folder / "requirements.txt").write_text(_space_requirements(wheel))
        examples = pick_space_examples(
            folder / EXAMPLES_DIR,
            adapter=models.adapter,
            eval_dataset=eval_dataset,
            baseline_eval_dataset=baseline_eval_dataset,
            token=token,
        )
        card = _space_card(
            repo_id=repo_id,
            models=models,
            variables=variables,
            eval_dataset=eval_dataset,
            baseline_eval_dataset=baseline_eval_dataset,
            hardware=hardware,
            wheel=wheel,
            examples=examples,
        )
        (folder / "README.md").write_text(card, encoding="utf-8")
        for source in (eval_dataset, baseline_eval_dataset):
            if source and _public(source) != source:
                _refuse_local_paths(folder, Path(source).expanduser())

    return _build_atomically(Path(out_dir), write, overwrite=overwrite, source=SPACE_SOURCE)


def _sdk_version() -> str:
    """The Gradio the Space runs: the installed one when it is in the `space` extra's range, else its floor."""
    import re

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    spec = next(s for s in project["optional-dependencies"]["space"] if s.startswith("gradio"))
    floor = re.search(r">=\s*([\d.]+)", spec).group(1)
    try:
        from importlib.metadata import version

        from packaging.requirements import Requirement

        installed = version("gradio")
        if Requirement(spec).specifier.contains(installed):
            return installed
    except Exception:  # gradio not installed here: the floor of the range
        pass
    return floor + ".0" * (2 - floor.count("."))


def _space_card(
    *,
    repo_id: str,
    models: SpaceModels,
    variables: dict[str, str],
    eval_dataset: str | None,
    baseline_eval_dataset: str | None,
    hardware: str | None,
    wheel: Path,
    examples: list[dict] | None,
) -> str:
    from huggingface_hub import SpaceCard, SpaceCardData

    datasets = [d for d in (eval_dataset, baseline_eval_dataset) if d and _public(d) == d]
    extra: dict[str, Any] = {}
    if hardware:
        extra["suggested_hardware"] = hardware
    card_data = SpaceCardData(
        title="PAPO vs baseline",
        sdk="gradio",
        sdk_version=_sdk_version(),
        python_version=PYTHON_VERSION,
        app_file="app.py",
        license="mit",
        models=[m for m in (models.base_model, models.adapter) if m] or None,
        datasets=datasets or None,
        tags=SPACE_TAGS,
        emoji="👁️",
        colorFrom="red",
        colorTo="indigo",
        pinned=False,
        short_description=SHORT_DESCRIPTION,
        **extra,
    )
    if examples is None:
        examples_text = "held-out handwritten-digit questions on which the embedded pair answers differently, then three drawn figures."
    elif examples and examples[0]["source"].startswith("eval:"):
        how = (
            "their per-question accuracy differs most"
            if baseline_eval_dataset
            else "the PAPO answers leaned most on the image (mean perception KL)"
        )
        examples_text = (
            f"{len(examples)} questions from the eval predictions `{_public(eval_dataset)}` on which {how}."
        )
    else:
        examples_text = "three drawn figures (a bar chart, a clock, a right triangle)."
    data = wheel.read_bytes()
    title = (
        f"PAPO vs baseline: {models.adapter.split('/')[-1]}"
        if models.adapter
        else "PAPO vs baseline (embedded demo models)"
    )
    card = SpaceCard.from_template(
        card_data,
        template_path=str(SPACE_CARD_TEMPLATE),
        title=title,
        base_model=models.base_model,
        adapter=models.adapter,
        examples_text=examples_text,
        variables=variables,
        hardware=hardware,
        version=__version__,
        command=_command(repo_id, models, variables, eval_dataset, baseline_eval_dataset, hardware),
        wheel_name=wheel.name,
        wheel_kb=f"{len(data) / 1024:,.0f}",
        wheel_sha=hashlib.sha256(data).hexdigest()[:16],
        wheel_has_assets=models.embedded,
    )
    return _tidy(str(card))


def _command(repo_id, models, variables, eval_dataset, baseline_eval_dataset, hardware) -> str:
    parts = ["papo", "push", "space", "--repo-id", repo_id]
    if models.adapter:
        parts += ["--base-model", str(models.base_model), "--adapter", models.adapter]
    for flag, value in (("--eval-dataset", eval_dataset), ("--baseline-eval-dataset", baseline_eval_dataset)):
        if value:
            parts += [flag, _public(value)]
    if hardware:
        parts += ["--hardware", hardware]
    if variables.get("PAPO_LOAD_IN_4BIT"):
        parts.append("--load-in-4bit")
    if "PAPO_DTYPE" in variables:
        parts += ["--dtype", variables["PAPO_DTYPE"]]
    if "PAPO_DEVICE" in variables:
        parts += ["--device", variables["PAPO_DEVICE"]]
    return shlex.join(parts)


# --------------------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------------------


def push_space(
    repo_id: str,
    *,
    base_model: str | None = None,
    adapter: str | None = None,
    eval_dataset: str | None = None,
    baseline_eval_dataset: str | None = None,
    hardware: str | None = None,
    private: bool = False,
    load_in_4bit: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    token: str | None = None,
    commit_message: str = "Deploy the PAPO comparison Space",
    dry_run_dir: str | os.PathLike | None = None,
    retries: int = 3,
    retry_base_delay: float = 2.0,
) -> dict[str, Any]:
    """Build the Space for ``adapter`` on ``base_model`` (neither: the embedded pair) and push it to ``repo_id``.

    Returns ``{"url": commit URL, "variables": {...}, "hardware": ...}``; with ``dry_run_dir`` the folder is
    only built there (``{"folder": path, "variables": ...}``): the models are still checked and eval
    predictions read from the Hub, but nothing is written to it. Raises ``ValueError`` (bad argument, missing
    or mismatching model), ``HubAuthError`` on HTTP 401/403, ``HubPushError`` when retries are exhausted.
    """
    _check_repo_id(repo_id)
    _check_hardware(hardware)
    retry = partial(_with_retries, token=token, retries=retries, retry_base_delay=retry_base_delay)
    models = retry(
        partial(resolve_space_models, base_model, adapter, token=token),
        adapter or repo_id,
        what="checking the models of",
    )
    variables = space_variables(models, load_in_4bit=load_in_4bit, dtype=dtype, device=device)
    build = partial(
        build_space_repo,
        repo_id=repo_id,
        models=models,
        variables=variables,
        eval_dataset=eval_dataset,
        baseline_eval_dataset=baseline_eval_dataset,
        hardware=hardware,
        token=token,
    )
    if dry_run_dir is not None:
        folder = retry(
            partial(build, dry_run_dir, overwrite=_is_previous_build(dry_run_dir)),
            eval_dataset or repo_id,
            what="reading the eval predictions of",
        )
        return {"folder": str(folder), "variables": variables, "hardware": hardware}
    with tempfile.TemporaryDirectory(prefix="papo-space-") as tmp:
        folder = retry(
            partial(build, Path(tmp) / "repo"),
            eval_dataset or repo_id,
            what="reading the eval predictions of",
        )
        # The Space exists with its variables before the commit, so the build it triggers runs the right models.
        changes = retry(partial(_configure_space, repo_id, variables, private, token), repo_id)
        url = _push_folder(
            folder,
            repo_id,
            "space",
            private=private,
            token=token,
            commit_message=commit_message,
            retries=retries,
            retry_base_delay=retry_base_delay,
            create_kwargs={"space_sdk": "gradio"},
        )
    if hardware:
        changes += retry(partial(_request_hardware, repo_id, hardware, token), repo_id)
    for change in changes:
        logger.info("%s: %s", repo_id, change)
    return {"url": url, "variables": variables, "hardware": hardware, "changes": changes}


def _configure_space(repo_id: str, variables: dict[str, str], private: bool, token: str | None) -> list[str]:
    """Create the Space if needed and make its managed variables equal to `variables`; returns what changed."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    current = {key: var.value for key, var in api.get_space_variables(repo_id).items()}
    changes = []
    for key, value in variables.items():
        if current.get(key) != value:
            api.add_space_variable(repo_id, key, value, description="set by `papo push space`")
            changes.append(f"variable {key}={value}")
    for key in MANAGED_VARIABLES:
        if key in current and key not in variables:
            api.delete_space_variable(repo_id, key)
            changes.append(f"variable {key} deleted")
    return changes


def _request_hardware(repo_id: str, hardware: str, token: str | None) -> list[str]:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    runtime = api.get_space_runtime(repo_id)
    if runtime.requested_hardware == hardware or (
        runtime.requested_hardware is None and runtime.hardware == hardware
    ):
        return []
    api.request_space_hardware(repo_id, hardware)
    return [f"hardware {hardware} requested"]
