r"""PAPO's verifiable math reward, ported from the official PAPO code (``examples/reward_function/math.py``).

For one completion and its ground truth::

    response = re.sub(r"\s*(<|>|/)\s*", r"\1", completion)   # "< think >" -> "<think>" (Qwen2.5-VL-32B habit)
    format   = 1.0 if re.fullmatch(r"<think>.*</think>.*\\boxed\{.*\}.*", response, re.DOTALL) else 0.0
    accuracy = 1.0 if grade(<content of the last \boxed{...} in response>, ground_truth) else 0.0
    overall  = 0.9 * accuracy + 0.1 * format                 # (1 - format_weight), format_weight = 0.1

``grade`` is ``mathruler.grader.grade_answer`` (the official grader) or, on request, Hugging Face's
``math_verify``. The Qwen3 branch of the official code relaxes the format to ``.*</think>.*\\boxed\{.*\}.*``
(its chat template opens ``<think>`` in the prompt); pass ``format_pattern="relaxed"`` for that.
Evaluation uses the same grader without the format term: that is :func:`accuracy_score`.

Where this port is deliberately stricter than the official code:

* A response with no closed ``\boxed{}`` gets accuracy 0. mathruler's extractor returns the *string*
  ``"None"`` in that case, so officially an answerless (e.g. truncated) response matches a ground truth of
  ``"None"``.
* A grader that raises, or runs past :data:`GRADER_TIMEOUT_S`, scores 0 instead of crashing or hanging
  the training run.

With TRL's ``GRPOTrainer`` use either the split pair (logged separately) or the single combined function::

    GRPOTrainer(..., reward_funcs=PAPO_REWARD_FUNCS, args=GRPOConfig(reward_weights=PAPO_REWARD_WEIGHTS, ...))
    GRPOTrainer(..., reward_funcs=papo_reward, ...)

The ground truth must be in a dataset column named ``answer``. With the split pair, TRL 1.16 logs
``rewards/accuracy_reward/mean`` and ``rewards/format_reward/mean`` (it names functions by ``__name__``) and,
under the default ``multi_objective_aggregation="sum_then_normalize"``, its per-completion reward is
``(rewards_per_func * reward_weights).nansum(dim=1)`` = ``0.9 * accuracy + 0.1 * format``, the official
``overall``, before group normalisation. (``"normalize_then_sum"`` normalises each term per group first,
which is not the official reward; use ``papo_reward`` there.)
"""

from __future__ import annotations

import functools
import re
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from math_verify import parse as _mv_parse
from math_verify import verify as _mv_verify
from mathruler.grader import extract_boxed_content as _mathruler_extract_boxed
from mathruler.grader import grade_answer as _mathruler_grade

GRADERS = ("mathruler", "math_verify")
FORMAT_PATTERNS = {
    "strict": re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL),
    "relaxed": re.compile(r".*</think>.*\\boxed\{.*\}.*", re.DOTALL),
}
FORMAT_WEIGHT = 0.1
# Seconds one grading call may take before it counts as wrong. Enforced with SIGALRM, hence only on the
# main thread of a POSIX process (where TRL calls synchronous reward functions); elsewhere graders run
# unguarded, relying on their own guards (mathruler refuses to sympify exponents like "^{" and "^10").
GRADER_TIMEOUT_S = 5

_WHITESPACE_AROUND_TAG_CHARS = re.compile(r"\s*(<|>|/)\s*")
_BOXED_OPEN = r"\boxed{"
# mathruler strips the box content, so a genuine "\boxed{None}" is exactly this after the last "\boxed{".
_GENUINE_NONE_BOX = re.compile(r"\s*None\s*\}")


class GraderTimeout(Exception):
    """Raised inside a grader that ran past :data:`GRADER_TIMEOUT_S`; it is scored as a wrong answer."""


# --------------------------------------------------------------------------------------------------------
# Per-response pieces
# --------------------------------------------------------------------------------------------------------


def normalize_response(text: str) -> str:
    """Drop whitespace around ``<``, ``>`` and ``/``, as the official reward does before scoring."""
    return _WHITESPACE_AROUND_TAG_CHARS.sub(r"\1", text)


def extract_boxed_answer(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (nested braces allowed, stripped), or ``None`` when there is none.

    An unclosed last box (generation cut off at max length) also gives ``None``.
    """
    content = _mathruler_extract_boxed(text)
    if content != "None":
        return content
    # mathruler also returns "None" for "no box" and "unclosed box"; only a literal \boxed{None} is an answer.
    start = text.rfind(_BOXED_OPEN)
    if start != -1 and _GENUINE_NONE_BOX.match(text, start + len(_BOXED_OPEN)):
        return "None"
    return None


def _check_grader(grader: str) -> None:
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {list(GRADERS)}, got {grader!r}")


def _check_format_pattern(pattern: str) -> None:
    if pattern not in FORMAT_PATTERNS:
        raise ValueError(f"format_pattern must be one of {list(FORMAT_PATTERNS)}, got {pattern!r}")


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _call_with_timeout(fn: Callable[..., bool], *args: Any) -> bool:
    """Run ``fn(*args)``, raising :class:`GraderTimeout` after :data:`GRADER_TIMEOUT_S` where that is possible."""
    if not GRADER_TIMEOUT_S or not _can_use_alarm():
        return fn(*args)

    def _on_alarm(signum: int, frame: Any) -> None:
        raise GraderTimeout(f"grader ran past {GRADER_TIMEOUT_S}s")

    previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, GRADER_TIMEOUT_S)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)


def _grade_math_verify(prediction: str, ground_truth: str) -> bool:
    # math_verify arms its own SIGALRM timeouts, which cannot be nested inside ours and raise off the main
    # thread; so hand it the timeout where signals work and disable it elsewhere.
    timeout = GRADER_TIMEOUT_S if _can_use_alarm() else None
    # Both sides are wrapped in \boxed{}: math_verify then reads bare LaTeX ("\frac{1}{2}", "\sqrt 2") and
    # letters ("B"), which it drops when they come without a delimiter. A gold that does not parse that way
    # (unbalanced braces) is retried as-is.
    gold = _mv_parse(f"\\boxed{{{ground_truth}}}", parsing_timeout=timeout) or _mv_parse(
        ground_truth, parsing_timeout=timeout
    )
    answer = _mv_parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout)
    if not gold or not answer:
        return False
    return bool(_mv_verify(gold, answer, timeout_seconds=timeout))


# A multi-select gold such as "A, C" (LogicVista): two or more option letters separated by commas.
_MULTI_SELECT_GOLD = re.compile(r"\s*[A-Z]\s*(?:,\s*[A-Z]\s*)+")
# An answer made only of option letters, optionally in parentheses, separated by commas, ";", "&" or "and".
_LETTER_LIST = re.compile(r"\s*\(?[A-Z]\)?\s*(?:(?:,|;|&|\band\b)?\s*\(?[A-Z]\)?\s*)*")
_LETTER = re.compile(r"(?<![A-Za-z])[A-Z](?![a-z])")


def multi_select_letters(text: str) -> frozenset[str] | None:
    """The option letters of a letter-list answer (``"A, C"``, ``"(C) and (A)"``), or None for anything else."""
    if not _LETTER_LIST.fullmatch(text):
        return None
    return frozenset(_LETTER.findall(text))


def grade(prediction: str | None, ground_truth: str, grader: str = "mathruler") -> bool:
    """Whether the extracted ``prediction`` is equivalent to ``ground_truth`` according to ``grader``.

    ``None`` (no answer found) is never correct; any grader exception or timeout counts as incorrect.
    A multi-select gold (``"A, C"``, as in LogicVista) is graded as a set of letters: ``"C, A"`` is
    right, ``"A"`` or ``"A, B, C"`` is wrong (mathruler alone would reject ``"C, A"``).
    """
    _check_grader(grader)
    if prediction is None:
        return False
    ground_truth = str(ground_truth)  # datasets sometimes store numeric answers as numbers
    if _MULTI_SELECT_GOLD.fullmatch(ground_truth):
        letters = multi_select_letters(prediction)
        if letters is not None:
            return letters == multi_select_letters(ground_truth)
    try:
        if grader == "mathruler":
            return bool(_call_with_timeout(_mathruler_grade, prediction, ground_truth))
        return _grade_math_verify(prediction, ground_truth)
    except Exception:  # a reward must never crash a training step; unparseable answers are wrong answers
        return False


def format_score(text: str, pattern: str = "strict") -> float:
    r"""1.0 if the (normalised) response is ``<think>...</think>...\boxed{...}...``, else 0.0."""
    _check_format_pattern(pattern)
    return 1.0 if FORMAT_PATTERNS[pattern].fullmatch(normalize_response(text)) else 0.0


def accuracy_score(text: str, ground_truth: str, grader: str = "mathruler") -> float:
    r"""1.0 if the last ``\boxed{}`` of the (normalised) response grades equal to ``ground_truth``, else 0.0."""
    return 1.0 if grade(extract_boxed_answer(normalize_response(text)), ground_truth, grader) else 0.0


def papo_score(
    text: str,
    ground_truth: str,
    grader: str = "mathruler",
    format_pattern: str = "strict",
    format_weight: float = FORMAT_WEIGHT,
) -> dict[str, float]:
    """The official score dict: ``overall = (1 - format_weight) * accuracy + format_weight * format``."""
    accuracy = accuracy_score(text, ground_truth, grader)
    fmt = format_score(text, format_pattern)
    return {
        "overall": (1 - format_weight) * accuracy + format_weight * fmt,
        "accuracy": accuracy,
        "format": fmt,
    }


# --------------------------------------------------------------------------------------------------------
# TRL reward functions
# --------------------------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or a list of parts of which the ``text`` ones count."""
    if content is None:  # e.g. an assistant message that only carries tool calls
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part if isinstance(part, str) else part.get("text") or ""
        for part in content
        if isinstance(part, str) or part.get("type") == "text"
    )


def completion_text(completion: str | Sequence[dict[str, Any]] | dict[str, Any]) -> str:
    """The assistant text of a TRL completion: a plain string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    # Tool results and other non-assistant turns are not the model's answer; skip them.
    return "\n".join(
        _content_text(message.get("content"))
        for message in completion
        if message.get("role", "assistant") == "assistant"
    )


def accuracy_reward(
    completions: Sequence[Any], answer: Sequence[Any], *, grader: str = "mathruler", **kwargs: Any
) -> list[float]:
    """TRL reward: 1.0 per completion whose last ``\\boxed{}`` matches the ``answer`` column, else 0.0."""
    _check_grader(grader)
    return [accuracy_score(completion_text(c), gt, grader) for c, gt in zip(completions, answer, strict=True)]


def format_reward(
    completions: Sequence[Any], *, format_pattern: str = "strict", **kwargs: Any
) -> list[float]:
    """TRL reward: 1.0 per completion shaped ``<think>...</think>...\\boxed{...}``, else 0.0."""
    _check_format_pattern(format_pattern)
    return [format_score(completion_text(c), format_pattern) for c in completions]


def papo_reward(
    completions: Sequence[Any],
    answer: Sequence[Any],
    *,
    grader: str = "mathruler",
    format_pattern: str = "strict",
    format_weight: float = FORMAT_WEIGHT,
    **kwargs: Any,
) -> list[float]:
    """TRL reward: the official combined scalar ``0.9 * accuracy + 0.1 * format`` in one function."""
    _check_grader(grader)
    _check_format_pattern(format_pattern)
    return [
        papo_score(completion_text(c), gt, grader, format_pattern, format_weight)["overall"]
        for c, gt in zip(completions, answer, strict=True)
    ]


def make_reward_funcs(
    grader: str = "mathruler", format_pattern: str = "strict"
) -> list[Callable[..., list[float]]]:
    """``[accuracy_reward, format_reward]`` bound to ``grader`` / ``format_pattern``; use with PAPO_REWARD_WEIGHTS.

    They are ``functools.partial`` objects of the module-level functions, so they pickle, and they keep the
    ``__name__`` that TRL logs under (``rewards/accuracy_reward/mean``, ``rewards/format_reward/mean``).
    """
    _check_grader(grader)  # fail at setup time, not at the first reward computation
    _check_format_pattern(format_pattern)
    accuracy = functools.update_wrapper(functools.partial(accuracy_reward, grader=grader), accuracy_reward)
    fmt = functools.update_wrapper(
        functools.partial(format_reward, format_pattern=format_pattern), format_reward
    )
    return [accuracy, fmt]


# With GRPOConfig(reward_weights=PAPO_REWARD_WEIGHTS) TRL's weighted nansum is the official `overall`
# (see the module docstring for the exact TRL code path and the normalize_then_sum caveat).
PAPO_REWARD_FUNCS: list[Callable[..., list[float]]] = [accuracy_reward, format_reward]
PAPO_REWARD_WEIGHTS: list[float] = [1 - FORMAT_WEIGHT, FORMAT_WEIGHT]
