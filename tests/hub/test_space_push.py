"""`papo push space` through the real huggingface_hub client against the loopback fake Hub (in a subprocess),
and the dry-run folder started the way a Space starts it (`python app.py`) with papo-hub from its own wheel."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

import yaml
from hub_testlib import TEST_TOKEN, run_python

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "space"))  # the Space tests' space_testing
from space_testing import SPACE_DIR, serve_and_compare  # noqa: E402

ADAPTER = "papo-tester/papo-g-tiny"
EVAL = "papo-tester/papo-g-tiny-eval"
SPACE = "papo-tester/papo-demo"
TINY_BASE = (
    "papo-tests/tiny-qwen2_5_vl"  # in the HF cache (fixture cached_base_configs), as `hf download` leaves it
)
SPACE_MODULES = sorted(p.stem for p in SPACE_DIR.glob("*.py"))  # app and its space_* modules


def _front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _publish_adapter_and_eval(adapter_dir: Path, eval_dir: Path) -> str:
    return (
        "from papo.hub import push_adapter, push_eval\n"
        f"push_adapter({str(adapter_dir)!r}, {ADAPTER!r}, base_model={TINY_BASE!r})\n"
        f"push_eval({str(eval_dir)!r}, {EVAL!r})\n"
    )


def test_push_space_with_adapter_and_eval_examples(
    hub, push_env, tiny_adapter_dir, eval_run_dir, cached_base_configs, tmp_path
):
    code = (
        _publish_adapter_and_eval(tiny_adapter_dir, eval_run_dir)
        + f"""
import json
from papo.hub import push_space
kwargs = dict(adapter={ADAPTER!r}, eval_dataset={EVAL!r}, hardware="zero-a10g", dtype="bfloat16",
              retry_base_delay=0.01)
first = push_space({SPACE!r}, **kwargs)
second = push_space({SPACE!r}, **kwargs)
print(json.dumps([first, second]))
"""
    )
    result = run_python(code, push_env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = json.loads(result.stdout.splitlines()[-1])

    space = hub.repo(SPACE, "space")
    assert space.sdk == "gradio"
    # One commit for the Space; the identical re-push makes none and changes no setting.
    assert [c.summary for c in space.commits] == ["initial commit", "Deploy the PAPO comparison Space"]
    assert first["url"] == second["url"] == f"{hub.endpoint}/spaces/{SPACE}/commit/{space.head}"
    assert first["changes"] == [
        f"variable PAPO_BASE_MODEL={TINY_BASE}",
        f"variable PAPO_ADAPTER={ADAPTER}",
        "variable PAPO_DTYPE=bfloat16",
        "hardware zero-a10g requested",
    ]
    assert second["changes"] == []
    assert space.variables == {
        "PAPO_BASE_MODEL": TINY_BASE,
        "PAPO_ADAPTER": ADAPTER,
        "PAPO_DTYPE": "bfloat16",
    }
    assert space.hardware == "zero-a10g"

    files = space.files
    wheels = [p for p in files if p.endswith(".whl")]
    assert wheels == ["papo_hub-0.1.0-py3-none-any.whl"]
    for name in ("requirements.txt", "README.md", "examples/examples.json"):
        assert name in files, name
    for module in SPACE_MODULES:  # every module of the Space, as in the checkout
        assert files[f"{module}.py"] == (SPACE_DIR / f"{module}.py").read_bytes(), module

    # The wheel: papo-hub at this version, without the embedded demo models (a real adapter does not use them).
    with zipfile.ZipFile(io.BytesIO(files[wheels[0]])) as wheel:
        names = wheel.namelist()
        metadata = wheel.read("papo_hub-0.1.0.dist-info/METADATA").decode()
    assert "papo/hub/space.py" in names and "papo/cards/space_card.md" in names
    assert not any(n.startswith("papo/assets/") for n in names)
    assert "Version: 0.1.0" in metadata and "Requires-Dist: transformers" in metadata

    # requirements.txt: papo-hub's dependencies and its `space` extra, as pinned in pyproject.toml.
    import tomllib

    from packaging.requirements import Requirement

    lines = files["requirements.txt"].decode().splitlines()
    requirements = [Requirement(line) for line in lines if line and line[0] != "#"]
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    pinned = {r.name: r.specifier for r in requirements}
    for spec in project["dependencies"] + project["optional-dependencies"]["space"]:
        assert pinned[Requirement(spec).name] == Requirement(spec).specifier, spec
    assert set(pinned) == {Requirement(s).name for s in project["dependencies"]} | {"gradio", "spaces"}

    meta = _front_matter(files["README.md"])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["python_version"] == "3.12" and meta["sdk_version"].startswith("6.")
    assert meta["models"] == [TINY_BASE, ADAPTER]
    assert meta["datasets"] == [EVAL]
    assert "papo" in meta["tags"] and meta["suggested_hardware"] == "zero-a10g"
    card = files["README.md"].decode()
    assert f"papo push space --repo-id {SPACE} --base-model {TINY_BASE} --adapter {ADAPTER}" in card
    assert TEST_TOKEN not in card and str(tmp_path) not in card

    # The examples: every eval question (4 < NUM_EXAMPLES), taken in turn from each benchmark, images as PNG.
    manifest = json.loads(files["examples/examples.json"])
    examples = manifest["examples"]
    assert [e["source"] for e in examples] == ["eval:Geo3k", "eval:count_shapes"] * 2
    assert {e["id"] for e in examples} == {"Geo3k-0", "Geo3k-1", "count_shapes-0", "count_shapes-1"}
    from PIL import Image

    colours = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 128, 0), "white": (255, 255, 255)}
    for example in examples:
        with Image.open(io.BytesIO(files[f"examples/{example['image']}"])) as image:
            assert image.format == "PNG" and image.getpixel((0, 0)) == colours[example["reference"]]
        assert example["question"].startswith("What colour is the square?")

    # Other arguments: the managed variables follow them (PAPO_DTYPE deleted, 4-bit set); one set by hand stays.
    space.variables["PAPO_MAX_NEW_TOKENS"] = "64"
    code = f"""
import json
from papo.hub import push_space
print(json.dumps(push_space({SPACE!r}, adapter={ADAPTER!r}, eval_dataset={EVAL!r}, load_in_4bit=True)))
"""
    result = run_python(code, push_env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    third = json.loads(result.stdout.splitlines()[-1])
    assert third["changes"] == ["variable PAPO_LOAD_IN_4BIT=true", "variable PAPO_DTYPE deleted"]
    assert space.variables == {
        "PAPO_BASE_MODEL": TINY_BASE,
        "PAPO_ADAPTER": ADAPTER,
        "PAPO_LOAD_IN_4BIT": "true",
        "PAPO_MAX_NEW_TOKENS": "64",
    }
    assert set(space.commits[-1].added) == {"README.md"} and not space.commits[-1].deleted  # the card only
    assert "--load-in-4bit" in space.files["README.md"].decode() and space.hardware == "zero-a10g"

    # The Space's own code reads the examples (space/space_examples.make_examples, from the pushed files), and
    # each of its modules imports from the pushed folder.
    pulled = tmp_path / "pulled"
    for path, data in files.items():
        (pulled / path).parent.mkdir(parents=True, exist_ok=True)
        (pulled / path).write_bytes(data)
    saved = {name: sys.modules.pop(name, None) for name in SPACE_MODULES}  # tests/space's, if loaded
    saved_path = list(sys.path)  # importing app puts the shipped wheel on sys.path
    sys.path.insert(0, str(pulled))
    try:
        import importlib

        space_examples = importlib.import_module("space_examples")
        gallery = space_examples.make_examples(
            tmp_path / "cache", shipped=pulled / "examples" / "examples.json"
        )
        import pytest

        with pytest.warns(RuntimeWarning, match="before the shipped papo_hub-0.1.0-py3-none-any.whl"):
            import app  # this process imported papo from the checkout already: app says it keeps that copy

        assert "differed most" in app.examples_label(gallery)
        for name in SPACE_MODULES:
            assert Path(sys.modules[name].__file__).parent == pulled, name
    finally:
        sys.path[:] = saved_path
        for name, module in saved.items():
            sys.modules.pop(name, None)
            if module is not None:
                sys.modules[name] = module
    assert [e.reference for e in gallery] == [e["reference"] for e in examples]
    assert all(Path(e.image).is_file() for e in gallery)


def test_push_space_checks_before_pushing(hub, push_env, tiny_adapter_dir, eval_run_dir, cached_base_configs):
    code = (
        _publish_adapter_and_eval(tiny_adapter_dir, eval_run_dir)
        + f"""
import json
from papo.hub import push_space
errors = {{}}
cases = {{
    "mismatch": dict(adapter={ADAPTER!r}, base_model="Qwen/Qwen2.5-VL-3B-Instruct"),
    "no_adapter_repo": dict(adapter="papo-tester/nothing-here"),
    "local_adapter": dict(adapter={str(tiny_adapter_dir)!r}),
    "base_without_adapter": dict(base_model={TINY_BASE!r}),
    "unknown_base": dict(adapter={ADAPTER!r}, base_model="papo-tests/no-such-base"),
    "bad_hardware": dict(adapter={ADAPTER!r}, hardware="a-big-gpu"),
    "no_eval_repo": dict(adapter={ADAPTER!r}, eval_dataset="papo-tester/no-eval"),
}}
for name, kwargs in cases.items():
    try:
        push_space({SPACE!r}, retries=1, **kwargs)
        errors[name] = None
    except Exception as exc:
        errors[name] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps(errors))
"""
    )
    result = run_python(code, push_env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.splitlines()[-1])
    assert errors["mismatch"].startswith(
        "BaseModelMismatchError: the adapter does not fit --base-model Qwen/"
    )
    assert (
        "no such model repo on the Hub" in errors["no_adapter_repo"]
        and "papo push adapter" in errors["no_adapter_repo"]
    )
    assert (
        "is not a Hub model id" in errors["local_adapter"] and "papo push adapter" in errors["local_adapter"]
    )
    assert errors["base_without_adapter"].startswith("ValueError: --base-model needs --adapter")
    assert "--base-model papo-tests/no-such-base: no config.json" in errors["unknown_base"]
    assert "--hardware 'a-big-gpu' is not a Space hardware flavour" in errors["bad_hardware"]
    assert "zero-a10g" in errors["bad_hardware"]
    assert "--eval-dataset papo-tester/no-eval: no such dataset repo" in errors["no_eval_repo"]
    # Nothing was created: every check ran before the Space existed.
    assert ("space", SPACE) not in hub.repos


def test_push_space_bad_token_says_how_to_log_in(hub, push_env):
    env = {**push_env, "HF_TOKEN": "hf_wrongToken" + TEST_TOKEN[-12:]}
    cli = ["push", "space", "--repo-id", SPACE, "--retries", "1"]
    result = run_python(f"import sys; from papo.cli import main; sys.exit(main({cli!r}))", env, timeout=300)
    assert result.returncode == 1
    assert f"authentication failed for {SPACE} (HTTP 401)" in result.stderr
    assert "`hf auth login`" in result.stderr and "Traceback" not in result.stderr
    assert TEST_TOKEN not in result.stderr + result.stdout and hub.repos == {}


def test_dry_run_folder_starts_with_python_app_py_and_answers(hub, push_env, tmp_path):
    """No adapter: the embedded pair, so the wheel carries the demo models and the Space runs offline. papo is
    imported from the shipped wheel (as on the Hub), not from this checkout."""
    folder = tmp_path / "space"
    cli = ["push", "space", "--repo-id", SPACE, "--dry-run", str(folder)]
    result = run_python(
        f"import sys; from papo.cli import main; sys.exit(main({cli!r}))", push_env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Built {folder}" in result.stdout and "none (the embedded demo pair)" in result.stdout
    assert hub.requests == []  # no adapter, no eval set: a dry run asks the Hub nothing
    assert not (folder / "examples").exists()  # the Space draws the embedded pair's own examples
    meta = _front_matter((folder / "README.md").read_bytes())
    assert "models" not in meta and meta["python_version"] == "3.12"

    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPO_") and k != "PYTHONPATH"}
    result = serve_and_compare([sys.executable, "app.py"], env, tmp_path / "cache", tmp_path, cwd=folder)
    details = result[-1]
    assert details["baseline"]["answer"] and details["papo"]["answer"]
    assert details["models"]["embedded"] == "True"
    # papo (and its warm start) came from the shipped wheel, extracted into the cache, not from this checkout.
    [extracted] = (tmp_path / "cache" / "papo-hub").iterdir()
    assert extracted.name.startswith("papo_hub-0.1.0-py3-none-any-")
    assert details["models"]["baseline"] == str(extracted / "papo" / "assets" / "warm-start-qwen2_5_vl")
    assert f"papo-hub from the shipped wheel, extracted in {extracted}" in (tmp_path / "app.log").read_text()


def test_examples_are_the_questions_where_the_models_differ_most(eval_run_dir, tmp_path):
    """With the base model's predictions too: by |accuracy difference|, in turn per benchmark; a question on
    which they agree comes only after every one on which they differ."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from papo.hub import pick_space_examples

    baseline = Path(shutil.copytree(eval_run_dir, tmp_path / "baseline-eval"))
    accuracy = {
        "Geo3k-0": 0.5,
        "Geo3k-1": 0.0,
        "count_shapes-0": 1.0,
        "count_shapes-1": 0.25,
    }  # PAPO: all 0.5
    for path in (baseline / "predictions").glob("*.parquet"):
        table = pq.read_table(path)
        column = pa.array([accuracy[i] for i in table.column("id").to_pylist()], pa.float64())
        pq.write_table(table.set_column(table.schema.get_field_index("accuracy"), "accuracy", column), path)

    def ids(n: int, **kwargs) -> list[str]:
        out = tmp_path / f"examples-{n}-{len(kwargs)}"
        picked = pick_space_examples(
            out, adapter="me/adapter", eval_dataset=str(eval_run_dir), num_examples=n, **kwargs
        )
        manifest = json.loads((out / "examples.json").read_text())
        assert str(tmp_path) not in json.dumps(manifest)  # local eval folders are named <local>/<name>
        assert manifest["examples"] == picked and all((out / e["image"]).is_file() for e in picked)
        return [e["id"] for e in picked]

    assert ids(2, baseline_eval_dataset=str(baseline)) == ["Geo3k-1", "count_shapes-0"]
    assert ids(4, baseline_eval_dataset=str(baseline)) == [
        "Geo3k-1",
        "count_shapes-0",
        "count_shapes-1",
        "Geo3k-0",
    ]
    assert pick_space_examples(tmp_path / "none", adapter=None) is None  # the Space draws the embedded pair's
    assert not (tmp_path / "none").exists()
    neutral = pick_space_examples(tmp_path / "neutral", adapter="me/adapter")
    assert [e["source"] for e in neutral] == ["bundled"] * 3
    assert all((tmp_path / "neutral" / e["image"]).is_file() for e in neutral)
