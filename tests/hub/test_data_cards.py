"""The static data cards in data_cards/ carry valid dataset-card metadata and don't invent licences."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_testlib import REPO_ROOT

from papo.hub import EVAL_CARD_TEMPLATE

CARDS = REPO_ROOT / "data_cards"
EXPECTED_LICENCE = {
    "papo_virl39k_train.md": "unknown",  # upstream licences apply; none was verified
    "papo_eval.md": "unknown",
    "synthetic_perception.md": "mit",
    "digit_perception.md": "cc-by-4.0",  # the UCI digits' licence (scikit-learn redistributes them)
}


@pytest.mark.parametrize("name", sorted(EXPECTED_LICENCE))
def test_data_card_metadata(name):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(CARDS / name, ignore_metadata_errors=False)
    meta = card.data.to_dict()
    assert meta["license"] == EXPECTED_LICENCE[name]
    assert meta["pretty_name"]
    assert "image-text-to-text" in meta["task_categories"]
    assert "papo" in meta["tags"]
    assert card.text.lstrip().startswith("# ")


def test_card_facts():
    train = (CARDS / "papo_virl39k_train.md").read_text()
    assert "TIGER-Lab/ViRL39K" in train and "38,870" in train and "upstream" in train.lower()
    evals = (CARDS / "papo_eval.md").read_text()
    for benchmark in (
        "Geo3K",
        "MathVista",
        "We-Math",
        "MMK12",
        "MathVerse",
        "LogicVista",
        "Counting",
        "MMMU-Pro",
    ):
        assert benchmark in evals
    assert "MathVerse_V" in evals and "ShareGPT" in evals
    synthetic = (CARDS / "synthetic_perception.md").read_text()
    for column in ("id", "task", "problem", "answer", "images", "vision_dependency"):
        assert f"| `{column}` |" in synthetic


def test_eval_template_is_linked_from_data_cards():
    link = CARDS / "eval_predictions_template.md"
    assert link.is_symlink() and link.resolve() == EVAL_CARD_TEMPLATE
    assert "eval_dataset_card.md" in (CARDS / "README.md").read_text()


def test_templates_are_in_the_package():
    import papo

    cards = Path(papo.__file__).parent / "cards"
    assert {p.name for p in cards.glob("*.md")} >= {"adapter_card.md", "eval_dataset_card.md"}
