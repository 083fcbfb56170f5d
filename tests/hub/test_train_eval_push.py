"""The whole user path on the tiny model: papo train -> papo eval -> papo push (dry run) -> PEFT load."""

import json

import yaml
from huggingface_hub import DatasetCard, ModelCard

from papo.cli import main


def test_train_eval_push_dry_run(tmp_path, capsys, tiny_base_dir, cached_base_configs):
    from hub_testlib import cache_model_config
    from huggingface_hub import metadata_load

    emb = str(tmp_path / "emb")
    train = tmp_path / "run"
    assert main(["train", "--output_dir", str(train), "--embedded_dir", emb, "--max_steps", "1"]) == 0
    # The folder papo train writes has our card, not PEFT's boilerplate.
    train_card = (train / "README.md").read_text()
    assert "More Information Needed" not in train_card and "# PAPO-G LoRA adapter" in train_card
    assert metadata_load(train / "README.md")["pipeline_tag"] == "image-text-to-text"
    assert str(tmp_path) not in train_card
    from papo.embedded import embedded_model

    embedded_base = json.loads((embedded_model(emb) / "config.json").read_text())
    cached = cache_model_config("papo-tests/embedded-base", embedded_base)
    args = ["eval", "--adapter", str(train), "--embedded_dir", emb, "--output_dir", str(tmp_path / "eval")]
    assert main([*args, "--samples", "2", "--max_questions", "2", "--max_new_tokens", "4"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    overall = results["summary"]["overall"]

    repo = tmp_path / "repo"
    push = ["push", "adapter", str(train), "--repo-id", "me/papo-tiny", "--dry-run", str(repo)]
    push += ["--eval-results", str(tmp_path / "eval" / "results.json")]
    assert main([*push, "--base-model", "Qwen/Qwen2.5-VL-3B-Instruct"]) == 1  # shapes of the 3B: refused
    assert "does not fit --base-model Qwen/Qwen2.5-VL-3B-Instruct" in capsys.readouterr().err
    assert main([*push, "--base-model", "papo-tests/embedded-base"]) == 0
    import shutil

    shutil.rmtree(cached)
    card = ModelCard.load(repo / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "papo-tests/embedded-base"
    assert card.data.eval_results is None  # a synthetic eval is never cited as a Hub dataset
    assert f"{overall:.2f}" in card.text and "Overall" in card.text
    assert not (repo / "training_args.bin").exists()
    assert json.loads((repo / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "papo-tests/embedded-base"
    )
    assert yaml.safe_load((repo / "papo_config.yaml").read_text())["perception_kl_coef"] == 0.02

    data_repo = tmp_path / "data_repo"
    assert (
        main(
            ["push", "eval", str(tmp_path / "eval"), "--repo-id", "me/papo-eval", "--dry-run", str(data_repo)]
        )
        == 0
    )
    data_card = DatasetCard.load(data_repo / "README.md")
    assert data_card.data.configs and "synthetic" in json.dumps(data_card.data.configs)
    assert any(p.suffix == ".parquet" for p in data_repo.rglob("*"))
