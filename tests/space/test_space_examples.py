"""The example gallery (space/space_examples.py): generated small and complete."""

from __future__ import annotations

from pathlib import Path

from space_examples import make_examples


def test_examples_are_generated_small_and_complete(space_cache, app_url):
    from papo import embedded
    from papo.data.digits import DIGIT_TASKS

    examples = make_examples(space_cache / "examples")
    assert [e.source for e in examples[-3:]] == ["bundled"] * 3
    picked = embedded.shipped_space_examples()
    assert picked, "the shipped adapter lists the questions on which the two models differ"
    assert [e.question for e in examples[: len(picked)]] == [item["question"] for item in picked]
    assert {e.source.split(":")[1] for e in examples[:-3]} == set(DIGIT_TASKS)
    for example in examples:
        assert Path(example.image).stat().st_size < 50_000 and example.question and example.reference
