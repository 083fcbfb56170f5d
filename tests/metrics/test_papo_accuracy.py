"""The local `evaluate` metric papo_accuracy: loads offline, grades the last \\boxed{} like PAPO-Eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate  # a dependency: a missing one must fail, not skip
import pytest

from papo.metrics import PAPO_ACCURACY_METRIC_PATH

CASES = [
    # (completion, ground truth, correct?)
    ("<think>3 + 4 = 7</think> The answer is \\boxed{7}.", "7", True),
    ("<think>3 + 4 = 8</think> \\boxed{8}", "7", False),
    ("<think>It is seven.</think> The answer is 7.", "7", False),  # no box: wrong, no format needed
    ("\\boxed{\\frac{1}{2}}", "0.5", True),  # equivalent forms
    ("first \\boxed{3}, on second thought \\boxed{5}", "5", True),  # the last box counts
    ("no think tags at all: \\boxed{12}", "12", True),  # no format requirement in evaluation
    ("<think>cut off mid-answer \\boxed{1", "1", False),  # unclosed box
]


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(PAPO_ACCURACY_METRIC_PATH)


def test_metric_path_points_at_the_script():
    assert Path(PAPO_ACCURACY_METRIC_PATH).is_absolute()
    assert (Path(PAPO_ACCURACY_METRIC_PATH) / "papo_accuracy.py").is_file()


def test_metric_info(metric):
    assert metric.name == "papo_accuracy"
    assert "2507.06448" in metric.citation
    assert set(metric.features) == {"predictions", "references"}
    assert all(feature.dtype == "string" for feature in metric.features.values())


@pytest.mark.parametrize(("completion", "answer", "correct"), CASES)
@pytest.mark.parametrize("grader", ["mathruler", "math_verify"])
def test_each_case(metric, grader, completion, answer, correct):
    result = metric.compute(predictions=[completion], references=[answer], grader=grader)
    assert result == {"accuracy": 1.0 if correct else 0.0}


def test_batch_accuracy_is_fraction_correct(metric):
    predictions = [c for c, _, _ in CASES]
    references = [a for _, a, _ in CASES]
    expected = sum(ok for _, _, ok in CASES) / len(CASES)
    assert metric.compute(predictions=predictions, references=references)["accuracy"] == pytest.approx(
        expected
    )
    # avg@k: all k samples of each question, each paired with its answer
    samples = ["\\boxed{2}", "\\boxed{3}", "\\boxed{2}", "\\boxed{2}"] + ["\\boxed{x}"] * 4
    answers = ["2"] * 4 + ["5"] * 4
    assert metric.compute(predictions=samples, references=answers)["accuracy"] == pytest.approx(3 / 8)


def test_add_batch_then_compute(metric):
    metric.add_batch(predictions=["\\boxed{1}", "\\boxed{2}"], references=["1", "3"])
    metric.add(predictions="\\boxed{4}", references="4")
    assert metric.compute() == {"accuracy": pytest.approx(2 / 3)}


def test_unknown_grader_is_rejected(metric):
    with pytest.raises(ValueError, match="grader"):
        metric.compute(predictions=["\\boxed{1}"], references=["1"], grader="exact")


@pytest.mark.slow
def test_loads_offline_in_a_fresh_process(tmp_path):
    """HF_HUB_OFFLINE / HF_EVALUATE_OFFLINE, an empty HOME and HF_HOME; both the folder and the .py path."""
    home = tmp_path / "home"
    env = {
        **os.environ,
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    script = (
        "import json, evaluate\n"
        "from papo.metrics import PAPO_ACCURACY_METRIC_PATH as P\n"
        "out = []\n"
        "for path in (P, P + '/papo_accuracy.py'):\n"
        "    m = evaluate.load(path)\n"
        "    out.append(m.compute(predictions=['\\\\boxed{\\\\frac{1}{2}}', '\\\\boxed{2}'], references=['0.5', '3']))\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [{"accuracy": 0.5}, {"accuracy": 0.5}]
    assert (home / "hf").exists()  # its module cache went to the temporary HF_HOME
