"""Building the repo folders (what `papo push ... --dry-run` writes): files, metadata, cards, loading back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hub_testlib import EVAL_RESULTS, PAPO_CONFIG, TEST_TOKEN

from papo.hub import HubPushError, build_adapter_repo, build_eval_dataset_repo
from papo.hub.transport import _push_folder

ADAPTER_REPO_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "metrics.jsonl",
    "papo_config.yaml",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _assert_tables_well_formed(markdown: str) -> None:
    """Every table row has as many cells as its header (no stray '|' from values such as π(·|I))."""
    tables = re.findall(r"(?:^\|.*\|\n)+", markdown, flags=re.MULTILINE)
    assert tables
    for table in tables:
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(widths) == 1, table


def _write_config(adapter_dir: Path, **changes) -> None:
    (adapter_dir / "papo_config.yaml").write_text(yaml.safe_dump({**PAPO_CONFIG, **changes}, sort_keys=True))


def test_adapter_folder_is_exactly_the_adapter_and_card(tiny_adapter_dir, tmp_path):
    from huggingface_hub import ModelCard, metadata_load

    out = build_adapter_repo(
        tiny_adapter_dir, tmp_path / "repo", eval_results=EVAL_RESULTS, repo_id="me/papo-g"
    )

    assert (
        _files(out) == ADAPTER_REPO_FILES
    )  # no training_args.bin, optimizer.pt, rng_state.pth, checkpoint-5/
    for name in ADAPTER_REPO_FILES - {"README.md", "adapter_config.json"}:
        assert (out / name).read_bytes() == (tiny_adapter_dir / name).read_bytes(), name
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    original = json.loads((tiny_adapter_dir / "adapter_config.json").read_text())
    assert original["base_model_name_or_path"] != "Qwen/Qwen2.5-VL-3B-Instruct"  # a local path before
    assert adapter_config == {**original, "base_model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct"}

    meta = metadata_load(out / "README.md")
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert meta["license"] == "mit"
    assert meta["tags"] == ["papo", "trl", "peft", "lora", "grpo", "vision-language"]
    assert meta["datasets"] == ["PAPOGalaxy/PAPO_ViRL39K_train"]

    card = ModelCard.load(out / "README.md")
    assert card.data.model_name == "me/papo-g"
    results = {r.dataset_name: r for r in card.data.eval_results}
    assert results["Geo3k"].metric_value == 50.0
    assert results["Geo3k"].metric_name == "accuracy (avg@2)"  # k from the protocol
    assert results["Geo3k"].dataset_type == "PAPO-Galaxy/PAPO_eval"
    # Only what was evaluated on a complete Hub split: not the synthetic count_shapes, hence no averages
    # (they include it) either.
    assert set(results) == {"Geo3k"}

    text = card.text
    assert "# PAPO-G LoRA adapter for Qwen2.5-VL-3B-Instruct" in text
    assert "| Geo3k | 50.00 | 2 | `PAPO-Galaxy/PAPO_eval` |" in text
    assert "| count_shapes | 25.00 | 2 | local data |" in text
    assert "**Overall: 37.50**" in text
    assert "| `perception_kl_coef` | 0.02 |" in text and "| `loss_type` | bnpo |" in text
    assert "PeftModel.from_pretrained(model, adapter_id)" in text and 'adapter_id = "me/papo-g"' in text
    assert "AutoModelForImageTextToText.from_pretrained(base_id" in text
    assert "hf download me/papo-g" in text and "hf download Qwen/Qwen2.5-VL-3B-Instruct" in text
    assert "arXiv:2507.06448" in text
    assert "TRL's card" not in text
    _assert_tables_well_formed(text)


def test_card_without_eval_results_has_no_model_index(tiny_adapter_dir, tmp_path):
    from huggingface_hub import metadata_load

    out = build_adapter_repo(tiny_adapter_dir, tmp_path / "repo")
    meta = metadata_load(out / "README.md")
    assert "model-index" not in meta
    text = (out / "README.md").read_text()
    assert "## Evaluation" not in text
    assert "<your-username>/<repo-name>" in text  # no repo id yet: a placeholder in the snippet


def test_card_code_snippet_is_valid_python(tiny_adapter_dir, tmp_path):
    out = build_adapter_repo(tiny_adapter_dir, tmp_path / "repo", repo_id="me/papo-g")
    blocks = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), flags=re.DOTALL)
    assert len(blocks) == 1
    compile(blocks[0], "README.md", "exec")


def test_qlora_dapo_run_is_tagged_and_named(adapter_copy, tmp_path):
    from huggingface_hub import metadata_load

    _write_config(adapter_copy, load_in_4bit=True, dynamic_sampling=True, beta=0.0, perception_kl_coef=0.01)
    out = build_adapter_repo(adapter_copy, tmp_path / "repo")
    assert metadata_load(out / "README.md")["tags"] == [
        "papo",
        "trl",
        "peft",
        "qlora",
        "dapo",
        "vision-language",
    ]
    text = (out / "README.md").read_text()
    assert "# PAPO-D QLoRA adapter" in text and "4-bit (NF4)" in text


def test_baseline_run_is_named_grpo(adapter_copy, tmp_path):
    _write_config(adapter_copy, perception_loss=False)
    text = (build_adapter_repo(adapter_copy, tmp_path / "repo") / "README.md").read_text()
    assert "# GRPO LoRA adapter" in text and "baseline (no perception loss)" in text


def test_local_base_model_needs_a_hub_id(adapter_copy, tiny_base_dir, tmp_path):
    _write_config(adapter_copy, model_name_or_path=str(tiny_base_dir))
    with pytest.raises(ValueError, match="--base-model <hub id>"):
        build_adapter_repo(adapter_copy, tmp_path / "repo")
    with pytest.raises(ValueError, match="not a Hub model id"):
        build_adapter_repo(adapter_copy, tmp_path / "repo", base_model=str(tiny_base_dir))
    out = build_adapter_repo(adapter_copy, tmp_path / "repo", base_model="papo-tests/tiny-qwen2_5_vl")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "papo-tests/tiny-qwen2_5_vl"
    )


def test_relative_embedded_base_path_is_local(adapter_copy, tmp_path):
    _write_config(adapter_copy, model_name_or_path="outputs/tiny-qwen2_5_vl", embedded_dir="outputs")
    with pytest.raises(ValueError, match="--base-model"):
        build_adapter_repo(adapter_copy, tmp_path / "repo")


def test_tokens_in_the_run_config_are_redacted(adapter_copy, tmp_path):
    _write_config(adapter_copy, hub_token=TEST_TOKEN)
    out = build_adapter_repo(adapter_copy, tmp_path / "repo")
    config = yaml.safe_load((out / "papo_config.yaml").read_text())
    assert config["hub_token"] == "<redacted>"
    assert config["perception_kl_coef"] == 0.02
    assert all(TEST_TOKEN.encode() not in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_a_folder_containing_the_token_is_never_pushed(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "notes.txt").write_text(f"token={TEST_TOKEN}\n")
    with pytest.raises(HubPushError, match="notes.txt contains your Hugging Face token") as info:
        _push_folder(folder, "me/x", "model", private=False, token=TEST_TOKEN, commit_message="x")
    assert TEST_TOKEN not in str(info.value)


def test_adapter_dir_errors(tmp_path, tiny_adapter_dir):
    with pytest.raises(ValueError, match="does not exist"):
        build_adapter_repo(tmp_path / "nope", tmp_path / "repo")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_config.json").write_text("{}")
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"\x80")
    with pytest.raises(ValueError, match="safe_serialization"):
        build_adapter_repo(tmp_path / "pickled", tmp_path / "repo")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_adapter_repo(tiny_adapter_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").exists()
    build_adapter_repo(tiny_adapter_dir, tmp_path / "busy", overwrite=True)
    assert not (tmp_path / "busy" / "keep.txt").exists()
    with pytest.raises(ValueError, match="inside"):
        build_adapter_repo(tiny_adapter_dir, tiny_adapter_dir / "repo")


def test_built_folder_loads_with_peft_on_the_tiny_base(tiny_adapter_dir, tiny_base_dir, tmp_path):
    """The card's recipe, on the tiny model: base + PeftModel.from_pretrained(folder) + processor + generate."""
    import torch
    from peft import PeftModel
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = build_adapter_repo(tiny_adapter_dir, tmp_path / "repo", base_model="papo-tests/tiny-qwen2_5_vl")
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_base_dir), out)
    saved = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(saved) == len(loaded) > 0
    for key, value in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == key]
        assert len(match) == 1, key
        torch.testing.assert_close(match[0], value)
        assert value.abs().sum() > 0  # init_lora_weights=False: B is not zero, so the check means something

    processor = AutoProcessor.from_pretrained(out)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (56, 56), "red")},
                {"type": "text", "text": "?"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def test_eval_dataset_folder(eval_run_dir, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    out = build_eval_dataset_repo(eval_run_dir, tmp_path / "repo", repo_id="me/papo-eval")
    assert _files(out) == {
        "README.md",
        "results.json",
        "results.md",
        "comparison.png",
        "data/Geo3k/test-00000-of-00001.parquet",
        "data/count_shapes/test-00000-of-00001.parquet",
    }
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "mit"
    assert meta["task_categories"] == ["image-text-to-text", "visual-question-answering"]
    assert {"papo", "evaluation"} <= set(meta["tags"])
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {
            "config_name": "Geo3k",
            "data_files": [{"split": "test", "path": "data/Geo3k/test-00000-of-00001.parquet"}],
        },
        {
            "config_name": "count_shapes",
            "data_files": [{"split": "test", "path": "data/count_shapes/test-00000-of-00001.parquet"}],
        },
    ]
    text = card.text
    assert "PAPO-Galaxy/PAPO_eval" in text and "upstream licence" in text
    assert "count_shapes: the synthetic perception set" in text and "MIT" in text
    assert "| Geo3k | 50.00 |" in text  # results.md, verbatim
    assert "| `samples_per_question` | 2 |" in text and "| `grader` | mathruler |" in text
    assert "KL(π(·|q, I, o_<t) ‖ π(·|q, I_mask, o_<t))" in text
    assert 'load_dataset("me/papo-eval", "Geo3k", split="test")' in text
    assert "`papo-tester/papo-g-tiny`" in text  # the adapter, from results.json
    _assert_tables_well_formed(text)

    ds = datasets.load_dataset(
        "parquet", data_files={"test": str(out / "data/Geo3k/test-00000-of-00001.parquet")}, split="test"
    )
    assert ds.num_rows == 2 and ds[0]["image"].size == (8, 8) and ds[0]["extracted"] == ["red", None]


def test_eval_dir_errors(tmp_path):
    with pytest.raises(ValueError, match="results.json"):
        build_eval_dataset_repo(tmp_path, tmp_path / "repo")
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="parquet"):
        build_eval_dataset_repo(tmp_path, tmp_path / "repo")


def test_dry_run_replaces_only_an_earlier_build(tiny_adapter_dir, eval_run_dir, tmp_path):
    from papo.hub import push_adapter, push_eval

    dry = tmp_path / "dry"
    assert push_adapter(tiny_adapter_dir, "me/papo-g", dry_run_dir=dry) == str(dry)
    assert push_adapter(tiny_adapter_dir, "me/papo-g", dry_run_dir=dry) == str(dry)  # again: replaced
    assert push_eval(eval_run_dir, "me/papo-eval", dry_run_dir=dry) == str(dry)  # a papo build: replaced
    assert (dry / "results.json").is_file() and not (dry / "adapter_config.json").exists()
    home_like = tmp_path / "home"
    home_like.mkdir()
    (home_like / "README.md").write_text("# my notes\n")
    with pytest.raises(FileExistsError):
        push_adapter(tiny_adapter_dir, "me/papo-g", dry_run_dir=home_like)
    assert (home_like / "README.md").read_text() == "# my notes\n"
    with pytest.raises(ValueError, match="invalid repo id"):
        push_adapter(tiny_adapter_dir, "not a repo id", dry_run_dir=tmp_path / "x")


def test_eval_card_without_results_md(eval_run_dir, tmp_path):
    import shutil

    run = Path(shutil.copytree(eval_run_dir, tmp_path / "run"))
    (run / "results.md").unlink()
    (run / "comparison.png").unlink()
    out = build_eval_dataset_repo(run, tmp_path / "repo", model="my/base", adapter=None)
    text = (out / "README.md").read_text()
    assert "| Geo3k | 50.00 | 2 |" in text and "| **Overall** | **37.50** | |" in text  # from results.json
    assert "comparison.png" not in text and "`my/base`" in text
    assert not (out / "results.md").exists()
    _assert_tables_well_formed(text)


def test_a_base_whose_shapes_do_not_fit_the_adapter_is_refused(
    tiny_adapter_dir, tmp_path, cached_base_configs
):
    from papo.cli import main
    from papo.hub import BaseModelMismatchError

    with pytest.raises(
        BaseModelMismatchError,
        match=r"does not fit --base-model Qwen/Qwen2.5-VL-3B-Instruct: "
        r"model\.(language_model\.)?layers\.0\.self_attn\.q_proj\.lora_A \[4, 64\]: .* in_features=2048",
    ):
        build_adapter_repo(tiny_adapter_dir, tmp_path / "repo", base_model="Qwen/Qwen2.5-VL-3B-Instruct")
    assert not (tmp_path / "repo").exists()
    args = [
        "push",
        "adapter",
        str(tiny_adapter_dir),
        "--repo-id",
        "me/x",
        "--dry-run",
        str(tmp_path / "repo"),
    ]
    assert main([*args, "--base-model", "Qwen/Qwen2.5-VL-3B-Instruct"]) == 1
    assert main([*args, "--base-model", "papo-tests/tiny-qwen2_5_vl"]) == 0  # the config it was trained on


def test_an_unreadable_base_config_is_reported_as_unchecked(tiny_adapter_dir, caplog):
    from papo.hub import check_adapter_fits_base

    with caplog.at_level("WARNING", logger="papo.hub"):
        assert (
            check_adapter_fits_base(tiny_adapter_dir / "adapter_model.safetensors", "nobody/nothing") is False
        )
    assert "NOT checked" in caplog.text and "hf download nobody/nothing config.json" in caplog.text


def test_nothing_built_names_a_local_path(adapter_copy, eval_run_dir, tmp_path, tiny_base_dir):
    import shutil

    _write_config(
        adapter_copy,
        output_dir=str(adapter_copy),
        dataset_name=str(tmp_path / "data"),
        embedded_dir=str(tmp_path / "emb"),
        logging_dir=str(Path.home() / "logs"),
    )
    out = build_adapter_repo(adapter_copy, tmp_path / "repo", base_model="papo-tests/tiny-qwen2_5_vl")
    run = Path(shutil.copytree(eval_run_dir, tmp_path / "run"))
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(
        json.dumps({**results, "model": str(tiny_base_dir), "adapter": str(adapter_copy)})
    )
    data = build_eval_dataset_repo(run, tmp_path / "data_repo")
    for folder in (out, data):
        for path in folder.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                for local in (str(tmp_path), str(Path.home()), str(tiny_base_dir)):
                    assert local.encode() not in content, (path, local)
    config = yaml.safe_load((out / "papo_config.yaml").read_text())
    assert config["output_dir"] == "<local>/adapter" and config["logging_dir"] == "<local>/logs"
    assert json.loads((data / "results.json").read_text())["adapter"] == "<local>/adapter"


def test_a_local_path_slipping_into_the_card_is_refused(adapter_copy, tmp_path, monkeypatch):
    import papo.hub.adapter
    import papo.hub.cards

    for module in (papo.hub.adapter, papo.hub.cards):  # where the config and the card scrub local paths
        monkeypatch.setattr(module, "_scrub_local_paths", lambda value: value)  # as if scrubbing missed one
    _write_config(adapter_copy, output_dir=str(adapter_copy))
    with pytest.raises(ValueError, match="refusing to publish .*local path"):
        build_adapter_repo(adapter_copy, tmp_path / "repo")


def test_card_reports_the_paired_statistics(tiny_adapter_dir, tmp_path):
    comparison = {
        "baseline": "GRPO",
        "candidate": "PAPO-G",
        "confidence": 0.95,
        "n_resamples": 10000,
        "seed": 0,
        "mcnemar_on": "per-question correctness by strict majority of the k samples",
        "benchmarks": {
            "Geo3k": {
                "n": 2,
                "diff": 50.0,
                "ci_low": 0.0,
                "ci_high": 100.0,
                "mcnemar_p": 0.5,
                "q_value": 0.5,
                "verdict": "inside the noise",
            },
        },
        "overall": {
            "n": 2,
            "diff": 50.0,
            "ci_low": 0.0,
            "ci_high": 100.0,
            "mcnemar_p": 0.5,
            "verdict": "inside the noise",
        },
    }
    out = build_adapter_repo(
        tiny_adapter_dir, tmp_path / "repo", eval_results={**EVAL_RESULTS, "comparison": comparison}
    )
    text = (out / "README.md").read_text()
    assert "Δ = this adapter − GRPO, in percentage points; 95% CI by paired bootstrap" in text
    assert "| Geo3k | 2 | +50.00 | [+0.00, +100.00] | 0.5 | 0.5 | inside the noise |" in text
    assert "| Overall | 2 | +50.00 | [+0.00, +100.00] | 0.5 | – | inside the noise |" in text
    _assert_tables_well_formed(text)
