"""The notebooks in notebooks/: committed without outputs, and executed headless end to end.

Each notebook runs under papermill with CI parameters injected after its `parameters` cell: the tiny
random-weight Qwen2.5-VL and the synthetic data built here, no install, no push (dry runs only).
The kernel is the ipykernel of this interpreter (the venv's python), started with this process's
environment: conftest.py's throw-away HOME/HF_HOME/Jupyter dirs and the offline variables. An
IPython startup file in that throw-away IPYTHONDIR refuses non-loopback connections in the kernel,
as conftest.py does here. A cell that raises fails the test (papermill raises
PapermillExecutionError naming the cell).
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from IPython.core.inputtransformer2 import TransformerManager

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
TRAIN_COLAB = NOTEBOOK_DIR / "01_train_papo_qlora_colab.ipynb"
TRAIN_KAGGLE = NOTEBOOK_DIR / "02_train_papo_kaggle_2xT4.ipynb"
EVALUATE = NOTEBOOK_DIR / "03_evaluate_and_compare.ipynb"

# the replica of the published PAPO_eval snapshot that tests/evaluation uses, whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from papo_eval_fixture import write_snapshot  # noqa: E402

NOTEBOOKS = [TRAIN_COLAB, TRAIN_KAGGLE, EVALUATE]

OFFLINE_STARTUP = '''
"""Written by tests/notebooks: the kernel may only connect to loopback / unix sockets (tests are offline)."""
import socket

_real_connect = socket.socket.connect


def _guarded_connect(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if sock.family == socket.AF_UNIX or (isinstance(host, str) and host.startswith(("127.", "::1", "localhost"))):
        return _real_connect(sock, address)
    raise OSError(f"papo notebook tests are offline: refused a connection to {address!r}")


socket.socket.connect = _guarded_connect
'''

# Settings shared by both training notebooks in CI: QLoRA (4-bit) on the CPU in fp32, 2 tiny steps.
TINY_TRAINING = {
    "INSTALL": False,
    "MAX_TRAIN_SAMPLES": 32,
    "STEPS": 2,
    "NUM_GENERATIONS": 4,
    "PER_DEVICE_BATCH": 4,
    "GRAD_ACCUM": 1,
    "MAX_COMPLETION_LENGTH": 16,
    "MIN_PIXELS": 1024,  # the tiny model's own bounds: the synthetic images stay 64 px
    "MAX_PIXELS": 16384,
    "VISION_FP32": True,  # --vision_dtype float32 runs too (a no-op cast in fp32, but its autocast wrapper is used)
    "PUSH_TO_HUB": False,
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, sandbox_dir, tiny_model_dirs) -> dict[str, str]:
    """The tiny model, the synthetic data, a ShareGPT (PAPO_eval-layout) copy of its test split."""
    from papo.data.synthetic import save_synthetic_dataset

    startup = Path(os.environ["IPYTHONDIR"], "profile_default", "startup")
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-papo-tests-offline.py").write_text(OFFLINE_STARTUP)

    root = tmp_path_factory.mktemp("notebook-assets")
    model = tiny_model_dirs["qwen2_5_vl"]
    data = root / "synthetic"
    test_split = save_synthetic_dataset(data, num_train=64, num_test=8, seed=0)["test"]
    sharegpt = root / "sharegpt"
    (sharegpt / "images").mkdir(parents=True)
    records = []
    for i, row in enumerate(test_split.select(range(4))):
        row["images"][0].save(sharegpt / "images" / f"{i}.png")
        records.append(
            {
                "messages": [
                    {"role": "user", "content": row["problem"]},
                    {"role": "assistant", "content": row["answer"]},
                ],
                "images": [f"images/{i}.png"],
            }
        )
    (sharegpt / "synthetic_sharegpt.json").write_text(json.dumps(records))
    return {
        "model": str(model),
        "data": str(data),
        "sharegpt": str(sharegpt / "synthetic_sharegpt.json"),
    }


def execute(notebook: Path, workdir: Path, parameters: dict) -> nbformat.NotebookNode:
    """Run `notebook` in `workdir` with `parameters` injected; raise on the first failing cell."""
    workdir.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(
        str(notebook),
        str(workdir / notebook.name),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(workdir),
        progress_bar=False,
        execution_timeout=300,
    )


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(value) for value in output.get("data", {}).values())
    return "\n".join(parts)


@pytest.fixture(scope="module")
def colab_run(assets, tmp_path_factory):
    """Notebook 01 on the tiny model; its adapter is what notebook 03 evaluates."""
    workdir = tmp_path_factory.mktemp("nb01")
    output_dir = workdir / "papo-g-tiny"
    parameters = {
        **TINY_TRAINING,
        "MODEL_ID": assets["model"],
        "DATASET": assets["data"],
        "OUTPUT_DIR": str(output_dir),
    }
    return execute(TRAIN_COLAB, workdir, parameters), output_dir


def test_colab_training_notebook_runs_end_to_end(colab_run):
    nb, output_dir = colab_run
    assert (output_dir / "adapter_model.safetensors").is_file()
    steps = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [log["step"] for log in steps if "perception_kl" in log] == [1, 2]
    preview = Path(f"{output_dir}-hub-preview")
    assert (preview / "README.md").is_file() and (preview / "adapter_model.safetensors").is_file()
    text = outputs_text(nb)
    assert sys.executable in text, "the kernel must run this interpreter (the venv's python)"
    assert "PUSH_TO_HUB is False: nothing was uploaded" in text
    assert "vision tower in fp32: True" in text and "'perception_kl': " in text  # live per-step logs
    assert any(
        output.get("output_type") == "display_data" for cell in nb.cells for output in cell.get("outputs", [])
    )


def test_kaggle_notebook_trains_with_two_processes(assets, tmp_path):
    output_dir = tmp_path / "papo-g-tiny-2proc"
    parameters = {
        **TINY_TRAINING,
        "NUM_PROCESSES": 2,
        "GRAD_ACCUM": 1,
        "MODEL_ID": assets["model"],
        "DATASET": assets["data"],
        "OUTPUT_DIR": str(output_dir),
    }
    nb = execute(TRAIN_KAGGLE, tmp_path / "run", parameters)
    text = outputs_text(nb)
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in text
    assert text.count("After the prompt-length filter") == 2  # each of the two processes loaded the data
    assert (output_dir / "adapter_model.safetensors").is_file()
    logs = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [log for log in logs if "perception_kl" in log]
    assert [log["step"] for log in steps] == [1, 2]  # written once (main process), not once per rank
    assert (Path(f"{output_dir}-hub-preview") / "README.md").is_file()


def test_evaluation_notebook_compares_and_previews_the_push(assets, tmp_path):
    """On the embedded pair (the shipped warm start vs its PAPO-G adapter): the offline try-out."""
    from papo.embedded import PAPO_ADAPTER_ASSET, WARM_START_ASSET

    output_dir = tmp_path / "eval"
    parameters = {
        "INSTALL": False,
        "MODEL_ID": str(WARM_START_ASSET),
        "ADAPTER": str(PAPO_ADAPTER_ASSET),
        # the training schema, a ShareGPT JSON and a replica of the published PAPO_eval snapshot
        "EVAL_SOURCES": [assets["data"], assets["sharegpt"], str(write_snapshot(tmp_path / "PAPO_eval"))],
        "EVAL_SPLITS": ["Counting"],  # of the snapshot's two splits
        "MAX_QUESTIONS": 4,
        "SAMPLES": 2,
        "MAX_NEW_TOKENS": 32,
        "BATCH_SIZE": 8,
        "HEATMAP_EXAMPLES": 2,
        "VISION_FP32": True,
        "OUTPUT_DIR": str(output_dir),
        "PUSH_TO_HUB": False,
        "HUB_ADAPTER_REPO_ID": "me/papo-tiny",
    }
    nb = execute(EVALUATE, tmp_path / "run", parameters)
    results = json.loads((output_dir / "papo" / "results.json").read_text())
    assert set(results["benchmarks"]) == {"synthetic", "synthetic_sharegpt", "Counting"}
    assert (output_dir / "papo" / "comparison.png").is_file()
    text = outputs_text(nb)
    assert "Δ%rel" in text and '<span title="KL' in text  # the table and the heat map were displayed
    assert (output_dir / "hub-preview-predictions" / "README.md").is_file()
    assert "model-index" in (output_dir / "hub-preview-adapter" / "README.md").read_text()
    # The warm start answers in the official format: its boxed answers are graded, some right.
    baseline = json.loads((output_dir / "baseline" / "results.json").read_text())
    assert baseline["benchmarks"]["synthetic"]["accuracy"] > 0


# ----------------------------------------------------------------------------------------------------
# The committed files
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"
        assert "execution" not in cell.metadata, f"{path.name} cell {index} has execution timing metadata"
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    """One `parameters` cell, a badge, the formula, estimates flagged, valid (IPython) Python in every cell."""
    nb = nbformat.read(path, as_version=4)
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    for name in ("INSTALL", "MODEL_ID", "OUTPUT_DIR", "PUSH_TO_HUB"):
        assert f"\n{name} = " in f"\n{tagged[0].source}", f"{path.name}: parameter {name} missing"
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert "Open In Colab" in markdown or "Open In Kaggle" in markdown
    assert "\\mathrm{k}_3" in markdown and "ESTIMATE" in markdown
    transform = TransformerManager().transform_cell
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            source = cell.source
            if source.startswith("%%writefile"):
                source = source.split("\n", 1)[1]  # the file it writes must be valid Python too
            try:
                ast.parse(transform(source))
            except SyntaxError as err:
                pytest.fail(f"{path.name} cell {index}: {err}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_needs_the_repo_and_installs_from_it(path, monkeypatch):
    import subprocess

    nb = nbformat.read(path, as_version=4)
    install = next(
        c.source
        for c in nb.cells
        if c.cell_type == "code" and "subprocess.run" in c.source and "if INSTALL" in c.source
    )
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: ran.append(command))
    placeholder = {"INSTALL": True, "REPO": "YOUR-ORG/papo-hub", "PAPO_PIP_SPEC": None}
    with pytest.raises(ValueError, match=r"Set REPO in the Parameters cell to the GitHub OWNER/NAME"):
        exec(install, dict(placeholder))
    exec(install, {**placeholder, "REPO": "alice/papo-hub"})
    exec(install, {**placeholder, "PAPO_PIP_SPEC": "papo-hub==0.3.0"})
    assert [command[-1] for command in ran] == [
        "papo-hub @ git+https://github.com/alice/papo-hub",
        "papo-hub==0.3.0",
    ]


def test_set_repo_points_badges_and_install_at_the_repository(tmp_path):
    import shutil

    sys.path.insert(0, str(NOTEBOOK_DIR))
    try:
        from set_repo import set_repo
    finally:
        sys.path.remove(str(NOTEBOOK_DIR))
    for path in NOTEBOOKS:
        shutil.copy(path, tmp_path / path.name)
    assert len(set_repo("alice/papo-hub", tmp_path)) == len(NOTEBOOKS)
    for path in NOTEBOOKS:
        text = (tmp_path / path.name).read_text()
        assert "github/YOUR-ORG" not in text and "github.com/YOUR-ORG" not in text
        assert f"github/alice/papo-hub/blob/main/notebooks/{path.name}" in text or (
            f"github.com/alice/papo-hub/blob/main/notebooks/{path.name}" in text
        )
        nb = nbformat.read(tmp_path / path.name, as_version=4)
        parameters = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert 'REPO = "alice/papo-hub"' in parameters
    assert set_repo("bob/papo", tmp_path) and set_repo("bob/papo", tmp_path) == []  # re-target; idempotent
    with pytest.raises(ValueError, match="OWNER/NAME"):
        set_repo("not a repo", tmp_path)
