"""A ``papo eval`` run as a Hub dataset repo of its predictions: ``papo push eval``.

``build_eval_dataset_repo`` writes, in a local folder, one parquet per benchmark
(``data/<config>/test-00000-of-00001.parquet``), ``results.json`` (local paths scrubbed), ``results.md``,
``comparison.png`` and a dataset card rendered from ``papo/cards/eval_dataset_card.md`` whose ``configs``
metadata maps each benchmark to its parquet; ``push_eval`` builds that folder in a temporary directory and
pushes it in one commit (``papo.hub.transport``).
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

from papo.hub.cards import _eval_dataset_card
from papo.hub.checks import _refuse_local_paths, _scrub_local_paths
from papo.hub.tables import (
    _config_name,
    _eval_source,
    _is_synthetic,
    _run_view,
)
from papo.hub.transport import _build_atomically, _build_then_push

EVAL_FILES = ("results.json", "results.md", "comparison.png")


def build_eval_dataset_repo(
    eval_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model: str | None = None,
    adapter: str | None = None,
    license: str = "mit",
    overwrite: bool = False,
) -> Path:
    """Write in ``out_dir`` the dataset repo ``push_eval`` uploads for the ``papo eval`` run in ``eval_dir``.

    ``eval_dir`` holds ``results.json``, optionally ``results.md`` and ``comparison.png``, and
    ``predictions/<benchmark>.parquet``. The repo gets ``data/<config>/test-00000-of-00001.parquet`` per
    benchmark, those files, and a dataset card whose ``configs`` metadata maps each benchmark to its parquet,
    so ``load_dataset(repo_id, "<config>", split="test")`` works. ``model``/``adapter`` override the ones
    recorded in ``results.json`` for the card; ``license`` is its metadata licence (the card says that the
    upstream benchmarks' licences apply to their questions, images and answers).
    """
    import pyarrow.parquet as pq

    eval_dir = Path(eval_dir)
    results_path = eval_dir / "results.json"
    if not results_path.is_file():
        raise ValueError(f"{eval_dir} has no results.json: give the output directory of `papo eval`")
    results = _run_view(json.loads(results_path.read_text()))
    parquets = sorted((eval_dir / "predictions").glob("*.parquet"))
    if not parquets:
        raise ValueError(f"{eval_dir / 'predictions'} holds no <benchmark>.parquet files")
    model = _scrub_local_paths(model or results.get("model") or "unknown model")
    adapter = _scrub_local_paths(adapter if adapter is not None else results.get("adapter"))

    benchmarks, configs, columns = [], [], {}
    for parquet in parquets:
        name = parquet.stem
        config = _config_name(name)
        if any(b["config"] == config for b in benchmarks):
            raise ValueError(f"two prediction files map to the dataset configuration {config!r}")
        meta = pq.read_metadata(parquet)
        for column in meta.schema.to_arrow_schema().names:
            columns.setdefault(column, None)
        path_in_repo = f"data/{config}/test-00000-of-00001.parquet"
        synthetic = _is_synthetic(name)
        benchmarks.append(
            dict(
                name=name,
                config=config,
                rows=meta.num_rows,
                file=parquet,
                path_in_repo=path_in_repo,
                synthetic=synthetic,
                source=_eval_source(results, name, synthetic),
            )
        )
        configs.append({"config_name": config, "data_files": [{"split": "test", "path": path_in_repo}]})

    def write(folder: Path) -> None:
        for b in benchmarks:
            target = folder / b["path_in_repo"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(b["file"], target)
        for name in EVAL_FILES:
            if (eval_dir / name).is_file():
                shutil.copyfile(eval_dir / name, folder / name)
        if (
            eval_dir / "results.json"
        ).is_file():  # `papo eval` records the model/adapter as given: maybe paths
            raw = json.loads((eval_dir / "results.json").read_text())
            (folder / "results.json").write_text(
                json.dumps(_scrub_local_paths(raw), indent=2, ensure_ascii=False) + "\n"
            )
        card = _eval_dataset_card(
            eval_dir,
            results=results,
            benchmarks=benchmarks,
            configs=configs,
            columns=list(columns),
            model=model,
            adapter=adapter,
            repo_id=repo_id,
            license=license,
        )
        (folder / "README.md").write_text(card, encoding="utf-8")
        _refuse_local_paths(folder, eval_dir)

    return _build_atomically(Path(out_dir), write, overwrite=overwrite, source=eval_dir)


def push_eval(
    eval_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload PAPO eval predictions",
    dry_run_dir: str | os.PathLike | None = None,
    model: str | None = None,
    adapter: str | None = None,
    license: str = "mit",
    retries: int = 3,
    retry_base_delay: float = 2.0,
) -> str:
    """Push the ``papo eval`` run in ``eval_dir`` to the dataset repo ``repo_id`` in one commit.

    Same behaviour as ``push_adapter`` (dry run, mirroring commit, retries, auth errors); the folder is built
    by ``build_eval_dataset_repo``. Returns the commit URL (or the dry-run folder).
    """
    build = partial(
        build_eval_dataset_repo, eval_dir, repo_id=repo_id, model=model, adapter=adapter, license=license
    )
    return _build_then_push(
        build,
        repo_id,
        "dataset",
        dry_run_dir,
        private=private,
        token=token,
        commit_message=commit_message,
        retries=retries,
        retry_base_delay=retry_base_delay,
    )
