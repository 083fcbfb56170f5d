"""Tests for papo.rewards: the official PAPO math reward and its TRL reward-function wrappers."""

import pickle
import time
from types import SimpleNamespace

import pytest

from papo import rewards
from papo.rewards import (
    PAPO_REWARD_FUNCS,
    PAPO_REWARD_WEIGHTS,
    accuracy_reward,
    accuracy_score,
    completion_text,
    extract_boxed_answer,
    format_reward,
    format_score,
    grade,
    make_reward_funcs,
    papo_reward,
    papo_score,
)

CORRECT = r"<think>1 + 2 = 3</think> The answer is \boxed{3}"
INCORRECT = r"<think>1 + 2 = 4</think> The answer is \boxed{4}"
NO_THINK = r"The answer is \boxed{3}"
NO_BOX = "<think>1 + 2 = 3</think> The answer is 3"
TRUNCATED = "<think>Let me add 1 and 2 carefully. First"
TRUNCATED_IN_BOX = r"<think>1 + 2 = 3</think> The answer is \boxed{3"


# --------------------------------------------------------------------------------------------------------
# The official score on hand-written completions
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grader", rewards.GRADERS)
@pytest.mark.parametrize(
    ("text", "gold", "expected"),
    [
        pytest.param(CORRECT, "3", {"overall": 1.0, "accuracy": 1.0, "format": 1.0}, id="correct"),
        pytest.param(INCORRECT, "3", {"overall": 0.1, "accuracy": 0.0, "format": 1.0}, id="incorrect"),
        pytest.param(
            NO_THINK, "3", {"overall": 0.9, "accuracy": 1.0, "format": 0.0}, id="malformed-no-think"
        ),
        pytest.param(NO_BOX, "3", {"overall": 0.0, "accuracy": 0.0, "format": 0.0}, id="no-boxed"),
        # mathruler's extractor says "None" for a missing box; that must not match a gold of "None".
        pytest.param(
            NO_BOX, "None", {"overall": 0.0, "accuracy": 0.0, "format": 0.0}, id="no-boxed-gold-None"
        ),
        pytest.param(TRUNCATED, "3", {"overall": 0.0, "accuracy": 0.0, "format": 0.0}, id="truncated"),
        pytest.param(
            TRUNCATED, "None", {"overall": 0.0, "accuracy": 0.0, "format": 0.0}, id="truncated-gold-None"
        ),
        pytest.param(
            TRUNCATED_IN_BOX, "3", {"overall": 0.0, "accuracy": 0.0, "format": 0.0}, id="truncated-inside-box"
        ),
        pytest.param(
            "< think >1 + 2 = 3< / think >\n The answer is \\boxed{3}",
            "3",
            {"overall": 1.0, "accuracy": 1.0, "format": 1.0},
            id="whitespace-in-tags",
        ),
        pytest.param(
            r"<think>half</think> \boxed{\frac{1}{2}}",
            "1/2",
            {"overall": 1.0, "accuracy": 1.0, "format": 1.0},
            id="nested-braces",
        ),
        pytest.param(
            r"<think>first \boxed{4}, no wait</think> \boxed{3}",
            "3",
            {"overall": 1.0, "accuracy": 1.0, "format": 1.0},
            id="last-box-wins",
        ),
        pytest.param("", "3", {"overall": 0.0, "accuracy": 0.0, "format": 0.0}, id="empty"),
    ],
)
def test_papo_score(text, gold, expected, grader):
    assert papo_score(text, gold, grader=grader) == pytest.approx(expected)


def test_literal_boxed_none_is_an_answer():
    assert extract_boxed_answer(r"\boxed{None}") == "None"
    assert extract_boxed_answer(r"\boxed{ None }") == "None"
    assert accuracy_score(r"<think>x</think> \boxed{None}", "None") == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{3}", "3"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"a \boxed{1} b \boxed{ \sqrt{2} } c", r"\sqrt{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        ("no box", None),
        (r"\boxed{3", None),
        ("", None),
    ],
)
def test_extract_boxed_answer(text, expected):
    assert extract_boxed_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "strict", "relaxed"),
    [
        (CORRECT, 1.0, 1.0),
        # Qwen3's template opens <think> in the prompt, so the completion only closes it.
        (r"reasoning</think> \boxed{3}", 0.0, 1.0),
        (NO_THINK, 0.0, 0.0),
        (NO_BOX, 0.0, 0.0),
        (r"<think>a</think>\boxed{3} trailing text", 1.0, 1.0),
        (r"preamble <think>a</think>\boxed{3}", 0.0, 1.0),  # strict is a fullmatch: nothing before <think>
        # opened and never closed: no format reward under either pattern (both need "</think>")
        (r"<think>reasoning \boxed{3}", 0.0, 0.0),
        (r"<think>reasoning <think> \boxed{3}", 0.0, 0.0),
        (r"<think>reasoning \boxed{3}</think>", 0.0, 0.0),  # the box must come after </think>
    ],
)
def test_format_patterns(text, strict, relaxed):
    assert format_score(text, "strict") == strict
    assert format_score(text, "relaxed") == relaxed


# --------------------------------------------------------------------------------------------------------
# Golden table: what each grader actually says. Pinned so that an upgrade of mathruler or math_verify that
# changes a verdict fails here instead of silently changing training rewards.
# --------------------------------------------------------------------------------------------------------

GOLDEN = [
    # (prediction, gold, mathruler, math_verify)
    (r"\frac{1}{2}", "0.5", True, True),
    ("0.5", "1/2", True, True),
    (r"\sqrt{2}", "1.414", False, False),
    (r"\sqrt{2}", r"\sqrt 2", True, True),
    ("B", "B", True, True),
    ("(B)", "B", True, True),
    ("B", r"\text{B}", True, True),
    ("3", "3.0", True, True),
    ("1,000", "1000", True, True),
    ("left", "left", True, True),
    ("Left", "left", True, True),  # both are case-insensitive for letters
    (r"10\%", "10", True, True),  # both drop the percent sign against an integer gold
    ("x=3", "3", True, True),
    (r"\pi", "3.14159", False, False),
    ("B", "C", False, False),
    # The two graders disagree on every row below.
    # math_verify reads words as products of symbols (left = l*e*f*t), so anagrams match.
    ("felt", "left", False, True),
    # math_verify evaluates 50\% to 1/2; mathruler strips "%" and compares 50 with 0.5.
    (r"50\%", "0.5", False, True),
    # mathruler strips a leading "x=" / "y=" from both sides; math_verify compares the equations.
    ("x=3", "y=3", True, False),
    # math_verify compares sets as sets; mathruler compares the elements in order.
    (r"\{2,1\}", r"\{1,2\}", False, True),
    # mathruler refuses to sympify "^{" (a hang guard), so it cannot evaluate the power.
    ("2^{10}", "1024", False, True),
    # mathruler evaluates scientific notation; math_verify parses "1e3" as 1*e*3.
    ("1e3", "1000", True, False),
]


@pytest.mark.parametrize(("pred", "gold", "expected_mathruler", "expected_math_verify"), GOLDEN)
def test_golden_table(pred, gold, expected_mathruler, expected_math_verify):
    assert grade(pred, gold, "mathruler") is expected_mathruler
    assert grade(pred, gold, "math_verify") is expected_math_verify


@pytest.mark.parametrize("grader", rewards.GRADERS)
def test_grade_none_prediction_is_wrong(grader):
    assert grade(None, "None", grader) is False
    assert grade(None, "3", grader) is False


@pytest.mark.parametrize("grader", rewards.GRADERS)
def test_grade_accepts_numeric_ground_truth(grader):
    assert grade("3", 3, grader) is True


def test_unknown_grader_raises():
    with pytest.raises(ValueError, match=r"grader.*mathruler.*math_verify.*'sympy'"):
        grade("3", "3", grader="sympy")
    with pytest.raises(ValueError, match="grader"):
        accuracy_score(CORRECT, "3", grader="sympy")
    with pytest.raises(ValueError, match="grader"):
        make_reward_funcs(grader="sympy")
    with pytest.raises(ValueError, match="grader"):
        accuracy_reward([CORRECT], ["3"], grader="sympy")


def test_unknown_format_pattern_raises():
    with pytest.raises(ValueError, match=r"format_pattern.*strict.*relaxed"):
        format_score(CORRECT, "loose")
    with pytest.raises(ValueError, match="format_pattern"):
        make_reward_funcs(format_pattern="loose")


def test_grader_exception_scores_zero(monkeypatch):
    def boom(*args):
        raise RuntimeError("grader bug")

    monkeypatch.setattr(rewards, "_mathruler_grade", boom)
    assert grade("3", "3", "mathruler") is False
    assert papo_score(CORRECT, "3") == {"overall": pytest.approx(0.1), "accuracy": 0.0, "format": 1.0}


def test_grader_timeout_scores_zero(monkeypatch):
    def hang(*args):
        time.sleep(30)
        return True

    monkeypatch.setattr(rewards, "_mathruler_grade", hang)
    monkeypatch.setattr(rewards, "GRADER_TIMEOUT_S", 0.2)
    start = time.monotonic()
    assert grade("3", "3", "mathruler") is False
    assert time.monotonic() - start < 5


# --------------------------------------------------------------------------------------------------------
# TRL reward-function shape
# --------------------------------------------------------------------------------------------------------

TEXTS = [CORRECT, INCORRECT, NO_THINK, NO_BOX, TRUNCATED]
ANSWERS = ["3"] * len(TEXTS)
EXPECTED_ACCURACY = [1.0, 0.0, 1.0, 0.0, 0.0]
EXPECTED_FORMAT = [1.0, 1.0, 0.0, 0.0, 0.0]
EXPECTED_OVERALL = [1.0, 0.1, 0.9, 0.0, 0.0]


def _conversational(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


def _conversational_parts(texts):
    return [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in texts]


def _trl_call(func, completions):
    """Call a reward function the way TRL 1.16's GRPOTrainer._calculate_rewards does."""
    return func(
        prompts=["What is 1 + 2?"] * len(completions),
        completions=completions,
        completion_ids=[[0]] * len(completions),
        answer=ANSWERS,
        image=[None] * len(completions),  # other dataset columns arrive as kwargs too
        trainer_state=None,
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
    )


@pytest.mark.parametrize(
    "shape", [list, _conversational, _conversational_parts], ids=["plain", "chat", "parts"]
)
def test_trl_reward_functions(shape):
    completions = shape(TEXTS)
    accuracy = _trl_call(accuracy_reward, completions)
    fmt = _trl_call(format_reward, completions)
    overall = _trl_call(papo_reward, completions)
    assert len(accuracy) == len(fmt) == len(overall) == len(TEXTS)
    assert accuracy == EXPECTED_ACCURACY
    assert fmt == EXPECTED_FORMAT
    assert overall == pytest.approx(EXPECTED_OVERALL)


def test_weighted_split_rewards_equal_papo_reward():
    # TRL: rewards = (rewards_per_func * reward_weights).nansum(dim=1) under sum_then_normalize.
    per_func = [_trl_call(f, TEXTS) for f in PAPO_REWARD_FUNCS]
    weighted = [
        sum(w * r for w, r in zip(PAPO_REWARD_WEIGHTS, row, strict=True))
        for row in zip(*per_func, strict=True)
    ]
    assert weighted == pytest.approx(_trl_call(papo_reward, TEXTS))
    assert PAPO_REWARD_WEIGHTS == pytest.approx([0.9, 0.1])


class _TrainerStub:
    """Just the attributes GRPOTrainer._calculate_rewards reads, so the real TRL code calls our functions."""

    def __init__(self, reward_funcs):
        from accelerate import Accelerator
        from trl.trainer.utils import get_callable_name

        self.accelerator = Accelerator(cpu=True)
        self.reward_funcs = reward_funcs
        self.reward_processing_classes = [None] * len(reward_funcs)
        self.reward_func_names = [get_callable_name(f) for f in reward_funcs]
        self.state = SimpleNamespace(global_step=0)
        self.args = SimpleNamespace(report_to=[])
        self.environments = None
        self._log_completion_extra = lambda *a, **k: None
        self._log_metric = lambda *a, **k: None


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "chat"])
def test_trl_calculate_rewards_weighted_sum_is_official_overall(conversational):
    import torch
    from trl import GRPOTrainer

    if conversational:
        prompts, completions = [[{"role": "user", "content": "q"}]] * len(TEXTS), _conversational(TEXTS)
    else:
        prompts, completions = ["q"] * len(TEXTS), TEXTS
    inputs = [{"prompt": p, "answer": a, "image": None} for p, a in zip(prompts, ANSWERS, strict=True)]
    stub = _TrainerStub([*PAPO_REWARD_FUNCS, papo_reward])

    per_func = GRPOTrainer._calculate_rewards(stub, inputs, prompts, completions, [[0]] * len(TEXTS))

    assert stub.reward_func_names == ["accuracy_reward", "format_reward", "papo_reward"]
    assert per_func[:, 0].tolist() == EXPECTED_ACCURACY
    assert per_func[:, 1].tolist() == EXPECTED_FORMAT
    # What GRPOTrainer does with reward_weights (sum_then_normalize): weighted nansum over the functions.
    weights = torch.tensor(PAPO_REWARD_WEIGHTS, dtype=torch.float32)
    total = (per_func[:, :2] * weights.unsqueeze(0)).nansum(dim=1)
    assert total.tolist() == pytest.approx(per_func[:, 2].tolist(), abs=1e-6)
    assert total.tolist() == pytest.approx(EXPECTED_OVERALL, abs=1e-6)


def test_reward_function_names_as_trl_logs_them():
    from trl.trainer.utils import get_callable_name

    assert [get_callable_name(f) for f in PAPO_REWARD_FUNCS] == ["accuracy_reward", "format_reward"]
    made = make_reward_funcs(grader="math_verify", format_pattern="relaxed")
    assert [f.__name__ for f in made] == ["accuracy_reward", "format_reward"]
    assert [get_callable_name(f) for f in made] == ["accuracy_reward", "format_reward"]
    assert get_callable_name(papo_reward) == "papo_reward"


def test_make_reward_funcs_binds_options():
    accuracy, fmt = make_reward_funcs(grader="math_verify", format_pattern="relaxed")
    qwen3 = [r"reasoning</think> \boxed{\{2,1\}}"]
    assert fmt(prompts=[""], completions=qwen3) == [1.0]
    assert format_reward(completions=qwen3) == [0.0]  # the default is strict
    # Set comparison is a math_verify-only equivalence (see the golden table).
    assert accuracy(prompts=[""], completions=qwen3, answer=[r"\{1,2\}"]) == [1.0]
    assert accuracy_reward(completions=qwen3, answer=[r"\{1,2\}"]) == [0.0]


def test_made_reward_funcs_pickle():
    # TRL / accelerate may pickle reward functions (e.g. into worker processes).
    for func in make_reward_funcs(grader="math_verify"):
        clone = pickle.loads(pickle.dumps(func))
        assert clone(completions=[CORRECT], answer=["3"]) == func(completions=[CORRECT], answer=["3"])


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        accuracy_reward(completions=[CORRECT, CORRECT], answer=["3"])


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "chat"}], "chat"),
        ({"role": "assistant", "content": "single"}, "single"),
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "ab",
        ),
        ([{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "t"}]}], "t"),
        ([{"role": "assistant", "content": None}], ""),
        (
            [
                {"role": "assistant", "content": "call"},
                {"role": "tool", "content": r"\boxed{99}"},
                {"role": "assistant", "content": "done"},
            ],
            "call\ndone",
        ),
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected
