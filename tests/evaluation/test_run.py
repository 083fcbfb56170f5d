"""`papo eval`: eval-set layouts, avg@k grading against a hand count, outputs, the CLI end to end."""

import json

import datasets
import pytest
from PIL import Image

import papo.evaluation.run as run_module
from papo.cli import main
from papo.data.loading import PROMPT_SUFFIX
from papo.evaluation.data import is_sharegpt_source, load_eval_set, load_sharegpt_eval
from papo.evaluation.run import EvalConfig, eval_prompt, run_eval

# (question, reference) of the fixture, and the k=2 scripted answers per question
FIXTURE = [
    ("<image>How many circles are there?", "3", ["<think>count</think>\\boxed{3}", "\\boxed{3.0}"]),  # 2/2
    (
        "<image>Which bar is tallest?",
        "B",
        ["<think>x</think>\\boxed{B}", "<think>x</think>\\boxed{C}"],
    ),  # 1/2
    ("<image>What number is shown?", "42", ["no box at all", "<think>x</think>\\boxed{24}"]),  # 0/2
]
HAND_COUNT = 100 * (2 / 2 + 1 / 2 + 0 / 2) / 3  # 50.0


def write_sharegpt_fixture(root):
    """A PAPO_eval-style split: ShareGPT JSON + relative image paths in an image folder."""
    (root / "images").mkdir(parents=True)
    records = []
    for i, (question, answer, _) in enumerate(FIXTURE):
        Image.new("RGB", (48 + 8 * i, 40), (40 * i, 100, 200)).save(root / "images" / f"{i}.png")
        records.append(
            {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "images": [f"images/{i}.png"],
            }
        )
    path = root / "fixture_bench.json"
    path.write_text(json.dumps(records))
    return path


def test_sharegpt_layout_loads_into_the_training_schema(tmp_path):
    path = write_sharegpt_fixture(tmp_path)
    assert is_sharegpt_source(path) and is_sharegpt_source(tmp_path)
    name, dataset = load_eval_set(tmp_path)
    assert name == "fixture_bench"
    assert dataset["answer"] == ["3", "B", "42"] and dataset[1]["problem"] == FIXTURE[1][0]
    assert dataset[2]["images"][0].size == (64, 40)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text(
        json.dumps([{"messages": [{"role": "user", "content": "<image>q"}], "images": []}])
    )
    with pytest.raises(ValueError, match="record 0, field 'messages': no assistant turn"):
        load_sharegpt_eval(bad / "x.json")


def test_instruction_is_never_duplicated():
    prompt = eval_prompt("<image>How many?\n\n" + PROMPT_SUFFIX)
    text = "".join(part["text"] or "" for part in prompt[0]["content"])
    assert text.count(PROMPT_SUFFIX) == 1


def test_accuracy_matches_a_hand_count(tmp_path, tiny_model_dirs, monkeypatch):
    fixture = write_sharegpt_fixture(tmp_path / "data")
    scripted = [answer for _, _, answers in FIXTURE for answer in answers]

    def scripted_generation(model, processor, prompts, images, **kwargs):
        assert len(prompts) == len(scripted)  # k consecutive copies of each question
        return [(text, processor.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in scripted]

    monkeypatch.setattr(run_module, "generate_completions", scripted_generation)
    config = EvalConfig(samples_per_question=2, max_new_tokens=8)
    result = run_eval(tiny_model_dirs["qwen2_5_vl"], [str(fixture)], tmp_path / "out", config, label="tiny")
    summary = result["summaries"]["fixture_bench"]
    assert summary["accuracy"] == pytest.approx(HAND_COUNT) and summary["n"] == 3
    predictions = datasets.Dataset.from_parquet(
        str(tmp_path / "out" / "predictions" / "fixture_bench.parquet")
    )
    assert predictions["correct"] == [[True, True], [True, False], [False, False]]
    assert predictions["extracted"][2] == [None, "24"]
    assert [len(kl) for kl in predictions["perception_kl"][0]] == [len(t) for t in predictions["tokens"][0]]
    # d_t (VPPO/PGPO's quantity) next to the full-vocabulary KL, token for token
    assert [len(d) for d in predictions["visual_dependency"][0]] == [len(t) for t in predictions["tokens"][0]]
    assert all(0 <= v <= 10 for sample in predictions["visual_dependency"][0] for v in sample)
    assert "visual_dependency_mean" in summary
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["benchmarks"]["fixture_bench"]["accuracy"] == pytest.approx(HAND_COUNT)
    assert results["protocol"]["samples_per_question"] == 2
    assert "50.00" in (tmp_path / "out" / "results.md").read_text()


def test_cli_eval_on_the_synthetic_split_and_a_comparison(tmp_path, capsys):
    common = ["--embedded_dir", str(tmp_path / "emb"), "--samples", "2", "--max_questions", "3"]
    common += ["--max_new_tokens", "6", "--batch_size", "4"]
    assert main(["eval", "--output_dir", str(tmp_path / "base"), "--label", "base", *common]) == 0
    base = json.loads((tmp_path / "base" / "results.json").read_text())
    assert base["benchmarks"]["synthetic"]["n"] == 3
    assert "perception_kl_mean" in base["benchmarks"]["synthetic"]
    args = ["eval", "--output_dir", str(tmp_path / "new"), "--label", "new", "--compare"]
    assert main([*args, str(tmp_path / "base" / "results.json"), *common, "--seed", "1"]) == 0
    assert (tmp_path / "new" / "comparison.png").exists()
    table = (tmp_path / "new" / "results.md").read_text()
    assert "base" in table and "new" in table


def test_offline_missing_model_names_hf_download(tmp_path):
    with pytest.raises(ValueError, match="hf download nobody/no-such-model"):
        run_module.load_model_and_adapter("nobody/no-such-model")


def test_bad_eval_config_names_the_field():
    with pytest.raises(ValueError, match="samples_per_question"):
        EvalConfig(samples_per_question=0)


def test_offline_missing_adapter_names_hf_download(tiny_model_dirs):
    with pytest.raises(ValueError, match="hf download nobody/no-such-adapter"):
        run_module.load_model_and_adapter(tiny_model_dirs["qwen2_5_vl"], "nobody/no-such-adapter")
