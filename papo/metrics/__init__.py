"""Local ``evaluate`` metrics shipped with papo, usable offline (``evaluate``'s own metrics live on the Hub).

``PAPO_ACCURACY_METRIC_PATH`` is the folder holding ``papo_accuracy.py``; pass it to ``evaluate.load``::

    import evaluate
    from papo.metrics import PAPO_ACCURACY_METRIC_PATH

    accuracy = evaluate.load(PAPO_ACCURACY_METRIC_PATH)
    accuracy.compute(predictions=completions, references=answers)  # {"accuracy": ...} in [0, 1]
"""

from pathlib import Path

PAPO_ACCURACY_METRIC_PATH: str = str(Path(__file__).resolve().parent / "papo_accuracy")

__all__ = ["PAPO_ACCURACY_METRIC_PATH"]
