"""Deploy the comparison Space (``space/``) to the Hugging Face Hub in one command: ``papo push space``.

``build_space_repo`` writes, in a local folder, exactly the files of the Space repo:

- the app (``app.py`` and its ``space_*.py`` modules, copied from ``space/``);
- papo-hub itself as a wheel built from this source tree (``papo.hub.wheel``), so the Space runs the code that
  built it, before papo-hub is on PyPI and without a git URL. The embedded demo models (``papo/assets``, about
  5 MB) go into the wheel only when the Space runs them (no adapter given);
- ``requirements.txt``: papo-hub's dependencies and its ``space`` extra, pinned as in ``pyproject.toml`` (read
  from the wheel's metadata). The wheel itself is imported by the app (``space_config.use_shipped_wheel``), not
  installed by ``requirements.txt``: a Space's build may install that file before the rest of the repo is in
  place, where a relative path to the wheel would not resolve;
- ``examples/``: with an adapter, the example gallery (``papo.hub.space_examples``); without, the Space builds
  the embedded pair's own examples;
- ``README.md``: the Space card, its front matter filled in (sdk and version, python 3.12, the base model and
  adapter under ``models:`` and the eval sets under ``datasets:``, so the Space is listed on their Hub pages).

``push_space`` checks the adapter and the base model first (they exist on the Hub, and the adapter's LoRA
shapes fit the base: ``check_adapter_fits_base``, the check ``papo push adapter`` makes), creates the Space
(Gradio SDK), sets its variables (``PAPO_BASE_MODEL``, ``PAPO_ADAPTER``, ``PAPO_LOAD_IN_4BIT``,
``PAPO_DTYPE``, ``PAPO_DEVICE``) through the Hub API, then pushes the folder in one mirroring commit with
``papo.hub.transport`` (retries, ``hf auth login`` hint on 401/403, no stale files, no commit when nothing
changed) and requests the hardware if asked. Re-pushing the same arguments makes no commit and changes no
variable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from papo import __version__
from papo.hub.cards import CARDS_DIR, _tidy
from papo.hub.checks import (
    _looks_local,
    _public,
    _refuse_local_paths,
    _resolve_base_model,
    check_adapter_fits_base,
)
from papo.hub.space_examples import pick_space_examples
from papo.hub.transport import (
    _build_atomically,
    _check_repo_id,
    _is_previous_build,
    _push_folder,
    _with_retries,
)
from papo.hub.wheel import SPACE_SOURCE, _sdk_version, _space_requirements, build_wheel

logger = logging.getLogger(__name__)


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


# The variables this command owns: set from its arguments, deleted when an argument no longer asks for them.
# Other variables (PAPO_MAX_NEW_TOKENS, ...) set by hand in the Space's settings are left alone.
MANAGED_VARIABLES = ("PAPO_BASE_MODEL", "PAPO_ADAPTER", "PAPO_LOAD_IN_4BIT", "PAPO_DTYPE", "PAPO_DEVICE")


PYTHON_VERSION = "3.12"


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
