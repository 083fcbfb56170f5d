"""PAPO accuracy: an ``evaluate`` metric that grades the last boxed answer like the PAPO evaluation.

Load it offline from this package (no Hub access)::

    import evaluate
    from papo.metrics import PAPO_ACCURACY_METRIC_PATH

    metric = evaluate.load(PAPO_ACCURACY_METRIC_PATH)
    metric.compute(predictions=[...], references=[...])  # {"accuracy": fraction in [0, 1]}

``evaluate`` copies this script into its modules cache before importing it, so it must use absolute
imports only (``papo`` has to be installed); relative imports would not resolve there.
"""

import datasets
import evaluate

from papo.rewards import GRADERS, accuracy_score

_CITATION = """
@article{wang2025papo,
  title   = {Perception-Aware Policy Optimization for Multimodal Reasoning},
  author  = {Wang, Zhenhailong and Guo, Xuehang and Stoica, Sofia and Xu, Haiyang and Wang, Hongru and
             Ha, Hyeonjeong and Chen, Xiusi and Chen, Yangyi and Yan, Ming and Huang, Fei and Ji, Heng},
  journal = {arXiv preprint arXiv:2507.06448},
  year    = {2025},
  note    = {ICLR 2026},
  url     = {https://arxiv.org/abs/2507.06448}
}
"""

_DESCRIPTION = """
Accuracy of model completions on verifiable (math-style) questions, scored as in PAPO's evaluation
protocol (PAPO-Eval, arXiv 2507.06448): whitespace around '<', '>' and '/' is normalised, the content of
the last \\boxed{...} of each completion is extracted and graded against the ground truth with hiyouga's
mathruler (default) or Hugging Face's math_verify. There is no format requirement; a completion without a
closed \\boxed{} is wrong. The score is the fraction of correct completions:

    accuracy = (1 / N) * sum_i accuracy_score(predictions[i], references[i])

For the paper's avg@k, pass all k completions of every question (each paired with its question's answer):
with the same k for every question this equals the mean over questions of their per-question means. The
paper reports percentages: multiply by 100.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): model completions, full text (reasoning included); the last \\boxed{} is graded.
    references (list of str): the ground-truth answers, one per prediction.
    grader (str, optional): "mathruler" (default, the official PAPO grader) or "math_verify".
Returns:
    accuracy (float): fraction of predictions whose last boxed answer matches its reference, in [0, 1].
Examples:
    >>> metric = evaluate.load(PAPO_ACCURACY_METRIC_PATH)
    >>> metric.compute(predictions=["<think>1+1</think> \\\\boxed{2}"], references=["2"])
    {'accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PapoAccuracy(evaluate.Metric):
    """Last-``\\boxed{}`` accuracy graded with mathruler (or math_verify), as in PAPO's evaluation."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            homepage="https://github.com/MikeWangWZHL/PAPO",
            reference_urls=["https://arxiv.org/abs/2507.06448", "https://github.com/hiyouga/MathRuler"],
        )

    def _compute(self, predictions, references, grader: str = "mathruler") -> dict[str, float]:
        if grader not in GRADERS:
            raise ValueError(f"grader must be one of {list(GRADERS)}, got {grader!r}")
        if not predictions:
            raise ValueError("papo_accuracy: no predictions to score")
        scores = [
            accuracy_score(str(p), str(r), grader=grader)
            for p, r in zip(predictions, references, strict=True)
        ]
        return {"accuracy": float(sum(scores) / len(scores))}
