"""Tests for papo.loss: hand-computed values, padding invariance, and gradients."""

import math

import pytest
import torch

from papo.loss import (
    ESTIMATORS,
    LOSS_TYPES,
    PAPOTerms,
    aggregate,
    apply_mode_weights,
    gamma_schedule,
    papo_terms,
    per_token_kl,
    perception_kl,
    reference_kl,
    sampled_token_entropy,
    token_mean,
)

D = torch.float64
PAD_FILLS = ["random", 1e9, -1e9, float("nan"), float("inf"), float("-inf")]
AGG_KWARGS = {"max_completion_length": 4, "num_items": 10.0}


def t(x):
    return torch.tensor(x, dtype=D)


def fill_padding(x: torch.Tensor, mask: torch.Tensor, fill) -> torch.Tensor:
    """Copy of x whose padded positions hold `fill` ("random" = large random values)."""
    pad = torch.randn_like(x) * 1e3 if fill == "random" else torch.full_like(x, fill)
    return torch.where(mask.bool(), x, pad)


def k3(a: float, lp: float) -> float:
    """k3 of x = a − lp (ref − logp), by hand, with verl's clamps."""
    x = min(max(a - lp, -20.0), 20.0)
    return min(max(math.exp(x) - x - 1.0, -10.0), 10.0)


# --- per-token estimators ------------------------------------------------------------------------


def test_estimators_hand_values():
    logp, ref = t([[-1.0, -2.0]]), t([[-1.5, -1.0]])
    # x = ref − logp = [-0.5, 1.0]
    torch.testing.assert_close(per_token_kl(logp, ref, "k1"), t([[0.5, -1.0]]))
    torch.testing.assert_close(per_token_kl(logp, ref, "k2"), t([[0.125, 0.5]]))
    expected_k3 = [[math.exp(-0.5) + 0.5 - 1.0, math.exp(1.0) - 1.0 - 1.0]]  # [0.10653, 0.71828]
    torch.testing.assert_close(per_token_kl(logp, ref, "k3"), t(expected_k3))
    torch.testing.assert_close(per_token_kl(logp, ref), t(expected_k3))  # k3 is the default


def test_k3_clamps_and_k1_k2_unclamped():
    # x = ref − logp: 2 (k3 = e²−3 = 4.389), 3 (e³−4 = 16.09 → 10), 25 (→ 10), −25 (19+e⁻²⁰ → 10), +inf
    logp = t([[0.0, 0.0, 0.0, 0.0, float("-inf")]])
    ref = t([[2.0, 3.0, 25.0, -25.0, -1.0]])
    k3v = per_token_kl(logp, ref, "k3")
    torch.testing.assert_close(k3v, t([[math.exp(2.0) - 3.0, 10.0, 10.0, 10.0, 10.0]]))
    assert torch.isfinite(k3v).all()  # the x clamp at ±20 keeps exp(inf) − inf = nan out
    # verl's "kl" and "mse" are not clamped
    torch.testing.assert_close(per_token_kl(logp[:, :4], ref[:, :4], "k1"), t([[-2.0, -3.0, -25.0, 25.0]]))
    torch.testing.assert_close(per_token_kl(logp[:, :4], ref[:, :4], "k2"), t([[2.0, 4.5, 312.5, 312.5]]))


def test_k3_zero_gradient_where_clamped():
    logp = t([[0.0, 0.0, 0.0, -30.0]]).requires_grad_()
    ref = t([[3.0, -25.0, 0.5, 0.0]])  # k3 > 10, x < −20 (k3 clamped too), normal, x > 20
    per_token_kl(logp, ref).sum().backward()
    g = logp.grad[0]
    assert g[0] == 0 and g[1] == 0 and g[3] == 0
    torch.testing.assert_close(g[2], t(1.0 - math.exp(0.5)))


def test_k3_nonnegative_and_zero_on_equal():
    torch.manual_seed(0)
    logp, ref = -torch.rand(4, 7, dtype=D) * 5, -torch.rand(4, 7, dtype=D) * 5
    assert (per_token_kl(logp, ref, "k3") >= 0).all()
    assert torch.equal(per_token_kl(logp, logp, "k3"), torch.zeros_like(logp))


def test_unknown_estimator():
    with pytest.raises(ValueError, match="k4.*k1"):
        per_token_kl(t([[0.0]]), t([[0.0]]), "k4")
    assert ESTIMATORS == ("k1", "k2", "k3")


def test_fp32_upcast_for_low_precision():
    out = per_token_kl(torch.zeros(1, 2, dtype=torch.bfloat16), torch.zeros(1, 2, dtype=torch.bfloat16))
    assert out.dtype == torch.float32


# --- perception KL -------------------------------------------------------------------------------


def test_perception_kl_direction():
    logp, masked = t([[-1.0, -2.0]]), t([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    kl, keep = perception_kl(logp, masked, mask)
    # x = masked − logp, i.e. KL(π_θ(·|I) ‖ π(·|I_mask)) with the original image as "p"
    torch.testing.assert_close(kl, t([[k3(-1.5, -1.0), k3(-1.0, -2.0)]]))
    torch.testing.assert_close(kl, per_token_kl(logp, masked))
    assert not torch.allclose(kl, per_token_kl(masked, logp))  # the other direction differs
    assert torch.equal(keep, mask)
    kl1, _ = perception_kl(logp, masked, mask, "k1")
    torch.testing.assert_close(kl1, logp - masked)


def test_perception_kl_zero_at_padding_even_for_nan():
    logp = t([[-1.0, float("nan")]])
    masked = t([[-2.0, float("inf")]])
    kl, keep = perception_kl(logp, masked, torch.tensor([[1, 0]]))
    torch.testing.assert_close(kl, t([[k3(-2.0, -1.0), 0.0]]))
    assert keep.tolist() == [[1, 0]]


def test_clip():
    logp = torch.zeros(1, 3, dtype=D, requires_grad=True)
    masked = t([[0.1, 1.0, -1.0]])  # k3 = 0.00517, 0.71828, 0.36788
    kl, _ = perception_kl(logp, masked, torch.ones(1, 3), clip=0.2)
    torch.testing.assert_close(kl.detach(), t([[k3(0.1, 0.0), 0.2, 0.2]]))
    kl.sum().backward()
    assert logp.grad[0, 0] != 0 and logp.grad[0, 1] == 0 and logp.grad[0, 2] == 0  # clipped: no gradient


def test_clip_floors_negative_k1_at_zero():
    kl, _ = perception_kl(t([[-1.0, -2.0]]), t([[-1.5, -1.0]]), torch.ones(1, 2), "k1", clip=0.2)
    torch.testing.assert_close(kl, t([[0.2, 0.0]]))


def test_top_p_keeps_top_20_percent_per_sample():
    # Row 0: 10 valid tokens with KL 0..9 (k1 with logp=0, masked=−kl); row 1: 5 valid, then padding.
    kl0 = torch.arange(10, dtype=D)
    kl1 = t([5.0, 1.0, 4.0, 2.0, 3.0, 0, 0, 0, 0, 0])
    target = torch.stack([kl0, kl1])
    mask = torch.tensor([[1] * 10, [1] * 5 + [0] * 5])
    logp = torch.zeros(2, 10, dtype=D)
    kl, keep = perception_kl(logp, -target, mask, "k1", top_p=0.2)
    torch.testing.assert_close(kl, target * mask)
    # row 0: 0.8-quantile of 0..9 is 7.2 → keep 8, 9; row 1: 0.8-quantile of 1..5 is 4.2 → keep 5 only
    expected_keep = torch.zeros(2, 10, dtype=mask.dtype)
    expected_keep[0, 8:] = 1
    expected_keep[1, 0] = 1
    assert torch.equal(keep, expected_keep)
    assert keep.dtype == mask.dtype
    # the average still divides by ALL valid tokens (15), not by the 3 kept ones
    terms = papo_terms(logp, -target, mask, gamma=1.0, estimator="k1", top_p=0.2)
    torch.testing.assert_close(terms.loss, t(-(8.0 + 9.0 + 5.0) / 15.0))


def test_top_p_threshold_ignores_padding_values():
    target = t([[1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    logp = torch.zeros(1, 7, dtype=D)
    _, keep = perception_kl(logp, -target, mask, "k1", top_p=0.2)
    assert keep.tolist() == [[0, 0, 0, 0, 1, 0, 0]]


def test_top_p_with_bool_mask_and_range():
    mask = torch.tensor([[True, True, True, True, True]])
    _, keep = perception_kl(
        torch.zeros(1, 5, dtype=D), -t([[1.0, 2.0, 3.0, 4.0, 5.0]]), mask, "k1", top_p=0.2
    )
    assert keep.dtype == torch.bool and keep.tolist() == [[False, False, False, False, True]]
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            perception_kl(torch.zeros(1, 5), torch.zeros(1, 5), mask, top_p=bad)


# --- aggregation ---------------------------------------------------------------------------------

VALUES = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
EXPECTED = {
    "grpo": (6 / 3 + 9 / 2) / 2,  # 3.25
    "sapo": (6 / 3 + 9 / 2) / 2,
    "bnpo": 15 / 5,
    "dr_grpo": 15 / (2 * 4),  # B · max_completion_length
    "dapo": 15 / 10,  # / num_items
    "cispo": 15 / 10,
    "vespo": 15 / 10,
    "luspo": (6 + 9) / 2,
}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_aggregate_hand_values(loss_type):
    out = aggregate(t(VALUES), torch.tensor(MASK), loss_type, **AGG_KWARGS)
    assert out.dim() == 0
    torch.testing.assert_close(out, t(EXPECTED[loss_type]))


def test_aggregate_bnpo_is_default_and_num_items_tensor():
    torch.testing.assert_close(aggregate(t(VALUES), torch.tensor(MASK)), t(3.0))
    out = aggregate(t(VALUES), torch.tensor(MASK), "dapo", num_items=torch.tensor(10.0, dtype=D))
    torch.testing.assert_close(out, t(1.5))


def test_aggregate_all_padding_row():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    torch.testing.assert_close(aggregate(t(VALUES), mask, "grpo"), t((6 / 3 + 0) / 2))
    torch.testing.assert_close(aggregate(t(VALUES), torch.zeros(2, 3), "bnpo"), t(0.0))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("fill", PAD_FILLS)
def test_aggregate_padding_changes_nothing(loss_type, fill):
    torch.manual_seed(0)
    mask = torch.tensor(MASK)
    values = fill_padding(t(VALUES), mask, fill)
    out = aggregate(values, mask, loss_type, **AGG_KWARGS)
    torch.testing.assert_close(out, t(EXPECTED[loss_type]))


def test_aggregate_errors():
    v, m = t(VALUES), torch.tensor(MASK)
    with pytest.raises(ValueError, match="'foo'.*bnpo"):
        aggregate(v, m, "foo")
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(v, m, "dr_grpo")
    for lt in ("dapo", "cispo", "vespo"):
        with pytest.raises(ValueError, match="num_items"):
            aggregate(v, m, lt)


@pytest.mark.parametrize("fill", PAD_FILLS)
def test_token_mean_and_entropy(fill):
    mask = torch.tensor([[1, 1, 0]])
    logp = fill_padding(t([[-1.0, -3.0, 0.0]]), mask, fill)
    torch.testing.assert_close(token_mean(logp, mask), t(-2.0))
    torch.testing.assert_close(sampled_token_entropy(logp, mask), t(2.0))
    torch.testing.assert_close(token_mean(logp, torch.zeros(1, 3)), t(0.0))  # no valid token: 0, not nan


# --- weights and schedule ------------------------------------------------------------------------


def test_apply_mode_weights():
    acc = torch.tensor([1.0, 0.0, 0.6, 0.5, float("nan")])
    assert apply_mode_weights("all", acc).tolist() == [1.0] * 5
    assert apply_mode_weights("correct_only", acc).tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(apply_mode_weights("weighted", acc), torch.tensor([1.0, 0.1, 1.0, 0.1, 0.1]))
    torch.testing.assert_close(
        apply_mode_weights("weighted", acc, incorrect_weight=0.3), torch.tensor([1.0, 0.3, 1.0, 0.3, 0.3])
    )
    assert apply_mode_weights("all", torch.tensor([1, 0])).is_floating_point()
    with pytest.raises(ValueError, match="'bogus'.*correct_only"):
        apply_mode_weights("bogus", acc)


def test_gamma_schedule_fixed():
    assert gamma_schedule(0, 100, gamma=0.02) == (0.02, 1.0)
    assert gamma_schedule(99, 100, gamma=0.02, schedule="fixed") == (0.02, 1.0)


def test_gamma_schedule_linear_start_rule():
    # ours: d_t = γ_t / start
    kw = dict(gamma=0.02, schedule="linear", start=0.01, end=0.0, annealing_ratio=0.5, discount_rule="start")
    assert gamma_schedule(0, 100, **kw) == pytest.approx((0.01, 1.0))
    assert gamma_schedule(25, 100, **kw) == pytest.approx((0.005, 0.5))  # midway (50 annealing steps)
    assert gamma_schedule(50, 100, **kw) == pytest.approx((0.0, 0.0))  # end of annealing
    assert gamma_schedule(80, 100, **kw) == pytest.approx((0.0, 0.0))  # stays at end
    kw2 = dict(kw, start=0.02, end=0.01)
    assert gamma_schedule(25, 100, **kw2) == pytest.approx((0.015, 0.75))
    assert gamma_schedule(90, 100, **kw2) == pytest.approx((0.01, 0.5))


def test_gamma_schedule_linear_official_rule_is_default():
    # official (dp_actor.py): d_t = γ_t / kl_prcp_coef, 1 when they are equal
    kw = dict(gamma=0.02, schedule="linear", start=0.01, end=0.0, annealing_ratio=0.5)
    assert gamma_schedule(0, 100, **kw) == pytest.approx((0.01, 0.5))  # "start" would give 1.0
    assert gamma_schedule(25, 100, **kw) == pytest.approx((0.005, 0.25))
    assert gamma_schedule(80, 100, **kw) == pytest.approx((0.0, 0.0))
    kw2 = dict(kw, start=0.02, end=0.01)  # γ == start: both rules agree
    assert gamma_schedule(0, 100, **kw2) == (0.02, 1.0)
    assert gamma_schedule(25, 100, **kw2) == pytest.approx((0.015, 0.75))
    with pytest.raises(ValueError, match="perception_kl_coef > 0"):
        gamma_schedule(0, 100, **dict(kw, gamma=0.0))
    with pytest.raises(ValueError, match="discount rule"):
        gamma_schedule(0, 100, **dict(kw, discount_rule="bogus"))


def test_gamma_schedule_unknown():
    with pytest.raises(ValueError, match="'cosine'.*linear"):
        gamma_schedule(0, 10, gamma=0.02, schedule="cosine")


# --- papo_terms ----------------------------------------------------------------------------------


def _batch():
    logp = t([[-0.5, -1.0, -2.0, -0.1], [-0.3, -1.5, -0.7, -0.2]])
    masked = t([[-1.0, -0.8, -2.5, -0.4], [-0.9, -1.0, -0.7, -3.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return logp, masked, mask


def _hand_kl(logp, masked, mask):
    """Per-token k3 and list of valid (row, col) positions, by hand."""
    valid = [(b, j) for b in range(mask.size(0)) for j in range(mask.size(1)) if mask[b, j]]
    kl = {(b, j): k3(masked[b, j].item(), logp[b, j].item()) for (b, j) in valid}
    return kl, valid


def test_papo_terms_sampled_matches_hand_formula():
    logp, masked, mask = _batch()
    gamma, eta1, eta2 = 0.02, 0.03, 0.05
    terms = papo_terms(logp, masked, mask, gamma=gamma, eta_original=eta1, eta_masked=eta2)
    assert isinstance(terms, PAPOTerms)
    kl, valid = _hand_kl(logp, masked, mask)
    n = len(valid)  # 5
    kl_mean = sum(kl.values()) / n
    h_orig = -sum(logp[p].item() for p in valid) / n
    h_mask = -sum(masked[p].item() for p in valid) / n
    torch.testing.assert_close(terms.loss, t(-gamma * kl_mean + eta1 * h_orig + eta2 * h_mask))
    torch.testing.assert_close(terms.perception_kl, t(kl_mean))
    torch.testing.assert_close(terms.entropy_original, t(h_orig))
    torch.testing.assert_close(terms.entropy_masked, t(h_mask))
    torch.testing.assert_close(terms.kl_term, t(-gamma * kl_mean))
    torch.testing.assert_close(terms.entropy_term, t(eta1 * h_orig + eta2 * h_mask))


def test_papo_terms_full_entropy_matches_hand_formula():
    logp, masked, mask = _batch()
    ent = t([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 99.0, 99.0]])
    ent_m = t([[0.5, 0.5, 0.5, 99.0], [1.5, 1.5, 99.0, 99.0]])
    kl, valid = _hand_kl(logp, masked, mask)
    kl_mean = sum(kl.values()) / 5
    h_mask_sampled = -sum(masked[p].item() for p in valid) / 5
    kw = dict(gamma=0.02, eta_original=0.03, eta_masked=0.05, entropy="full")
    terms = papo_terms(logp, masked, mask, full_entropies=ent, **kw)
    torch.testing.assert_close(terms.entropy_original, t(15.0 / 5))
    torch.testing.assert_close(terms.entropy_masked, t(h_mask_sampled))  # masked falls back to sampled
    torch.testing.assert_close(terms.loss, t(-0.02 * kl_mean + 0.03 * 3.0 + 0.05 * h_mask_sampled))
    terms = papo_terms(logp, masked, mask, full_entropies=ent, full_entropies_masked=ent_m, **kw)
    torch.testing.assert_close(terms.entropy_masked, t(4.5 / 5))
    torch.testing.assert_close(terms.loss, t(-0.02 * kl_mean + 0.03 * 3.0 + 0.05 * 0.9))
    with pytest.raises(ValueError, match="full_entropies"):
        papo_terms(logp, masked, mask, **kw)
    with pytest.raises(ValueError, match="'exact'.*sampled"):
        papo_terms(logp, masked, mask, gamma=0.02, entropy="exact")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_papo_terms_kl_uses_loss_type_entropy_is_token_mean(loss_type):
    logp, masked, mask = _batch()
    terms = papo_terms(logp, masked, mask, gamma=0.5, eta_original=0.1, loss_type=loss_type, **AGG_KWARGS)
    kl, _ = perception_kl(logp, masked, mask)
    torch.testing.assert_close(terms.kl_term, -0.5 * aggregate(kl, mask, loss_type, **AGG_KWARGS))
    torch.testing.assert_close(terms.entropy_term, 0.1 * token_mean(-logp, mask))


def test_papo_terms_weights():
    logp, masked, mask = _batch()
    base = papo_terms(logp, masked, mask, gamma=0.02)
    ones = papo_terms(logp, masked, mask, gamma=0.02, weights=torch.ones(2))
    torch.testing.assert_close(base.loss, ones.loss)
    # w = [1, 0]: only row 0's KL counts, still divided by all 5 valid tokens (bnpo)
    kl, _ = _hand_kl(logp, masked, mask)
    only_row0 = papo_terms(logp, masked, mask, gamma=0.02, weights=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(only_row0.loss, t(-0.02 * sum(v for (b, _), v in kl.items() if b == 0) / 5))


def test_papo_terms_logged_values_detached():
    logp, masked, mask = _batch()
    logp.requires_grad_()
    masked.requires_grad_()
    terms = papo_terms(logp, masked, mask, gamma=0.02, eta_original=0.1, eta_masked=0.1)
    assert terms.loss.requires_grad
    for name in ("perception_kl", "entropy_original", "entropy_masked", "kl_term", "entropy_term"):
        assert not getattr(terms, name).requires_grad, name


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("fill", PAD_FILLS)
def test_papo_terms_padding_changes_nothing(loss_type, fill):
    torch.manual_seed(0)
    logp, masked, mask = _batch()
    kw = dict(gamma=0.02, eta_original=0.03, eta_masked=0.05, loss_type=loss_type, **AGG_KWARGS)
    ent = t([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]])

    def run(lp, mk, en, **extra):
        lp = lp.clone().requires_grad_()
        terms = papo_terms(lp, mk, mask, full_entropies=en, **kw, **extra)
        terms.loss.backward()
        return terms, lp.grad

    for extra in ({}, {"entropy": "full"}, {"top_p": 0.5, "clip": 0.3}):
        ref_terms, ref_grad = run(logp, masked, ent, **extra)
        terms, grad = run(
            fill_padding(logp, mask, fill),
            fill_padding(masked, mask, fill),
            fill_padding(ent, mask, fill),
            **extra,
        )
        for name in (
            "loss",
            "perception_kl",
            "entropy_original",
            "entropy_masked",
            "kl_term",
            "entropy_term",
        ):
            torch.testing.assert_close(getattr(terms, name), getattr(ref_terms, name))
        torch.testing.assert_close(grad, ref_grad)  # also finite: exactly 0 at padding
        assert (grad[~mask.bool()] == 0).all()


# --- gradients -----------------------------------------------------------------------------------


def test_gradient_detached_target_is_reverse_kl_gradient():
    logp, masked, mask = _batch()
    logp.requires_grad_()
    gamma = 0.02
    papo_terms(logp, masked, mask, gamma=gamma, eta_masked=0.7).loss.backward()  # eta_masked: no gradient
    n = mask.sum()
    expected = torch.where(mask.bool(), -gamma * (1.0 - torch.exp(masked - logp.detach())) / n, 0.0)
    torch.testing.assert_close(logp.grad, expected)


def test_gradient_sign_pushes_away_from_masked_probability():
    # a > l (masked image likes the token more): ∂loss/∂l = −γ(1 − e^{a−l})/N > 0, descent lowers l.
    # a < l: ∂loss/∂l < 0, descent raises l. Either way π_θ(o_t|I) moves away from π_mask(o_t).
    logp = t([[-1.0, -1.0]]).requires_grad_()
    masked = t([[-0.5, -2.0]])
    papo_terms(logp, masked, torch.ones(1, 2), gamma=1.0).loss.backward()
    assert logp.grad[0, 0] > 0 and logp.grad[0, 1] < 0


def test_gradient_finite_difference_one_token():
    logp, masked, mask = _batch()
    gamma, h = 0.02, 1e-6

    def f(lp):
        return papo_terms(lp, masked, mask, gamma=gamma, eta_original=0.03).loss

    lp = logp.clone().requires_grad_()
    f(lp).backward()
    plus, minus = logp.clone(), logp.clone()
    plus[1, 1] += h
    minus[1, 1] -= h
    numeric = (f(plus) - f(minus)) / (2 * h)
    torch.testing.assert_close(lp.grad[1, 1], numeric, rtol=1e-6, atol=1e-9)
    # and the analytic value, including the η1 · token_mean(−logp) term
    lv, a = logp[1, 1].item(), masked[1, 1].item()
    torch.testing.assert_close(lp.grad[1, 1], t(-gamma * (1 - math.exp(a - lv)) / 5 - 0.03 / 5))


def test_gradcheck_k3_term():
    logp, masked, mask = _batch()
    lp = logp.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: papo_terms(x, masked, mask, gamma=0.3).loss, (lp,))


def test_recompute_mode_masked_branch_gets_gradient():
    logp, masked, mask = _batch()
    logp.requires_grad_()
    masked.requires_grad_()
    gamma, eta2 = 0.02, 0.05
    papo_terms(logp, masked, mask, gamma=gamma, eta_masked=eta2).loss.backward()
    assert masked.grad is not None and masked.grad.abs().sum() > 0
    n = mask.sum()
    # ∂k3/∂a = e^{a−l} − 1; the η2 term adds −η2/N
    expected = -gamma * (torch.exp(masked.detach() - logp.detach()) - 1.0) / n - eta2 / n
    torch.testing.assert_close(masked.grad, torch.where(mask.bool(), expected, 0.0))


def test_zero_coefficients_zero_loss_and_gradient():
    logp, masked, mask = _batch()
    logp.requires_grad_()
    masked.requires_grad_()
    terms = papo_terms(logp, masked, mask, gamma=0.0)
    assert terms.loss.item() == 0.0
    terms.loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert torch.equal(masked.grad, torch.zeros_like(masked))


# --- reference_kl (the official reference KL) ------------------------------------------------------


def test_reference_kl_is_clamped_k3_token_mean_without_importance_weight():
    mask = t([[1, 1, 1], [1, 0, 0]])
    logp = t([[-1.0, -2.0, -0.5], [-1.0, 7.0, 7.0]])
    ref = logp + t([[3.0, 0.0, -30.0], [0.5, 99.0, 99.0]])  # x = ref − logp
    term, kl = reference_kl(logp, ref, mask, beta=0.01)
    expected = [k3(3.0, 0.0), 0.0, k3(-30.0, 0.0), k3(0.5, 0.0)]
    assert expected[0] == 10.0  # TRL's unclamped k3 would give exp(3) − 4 = 16.09
    assert math.isclose(math.exp(3) - 4, 16.0855, rel_tol=1e-4)
    torch.testing.assert_close(kl[mask.bool()], t(expected))
    assert torch.all(kl[~mask.bool()] == 0)
    torch.testing.assert_close(term, t(0.01 * sum(expected) / 4))


def test_reference_kl_gradient_and_loss_types():
    mask = t([[1, 1], [1, 0]])
    logp = t([[-1.0, -2.0], [-0.3, 0.0]]).requires_grad_(True)
    ref = t([[-1.5, -1.0], [-0.3, 5.0]])
    term, _ = reference_kl(logp, ref, mask, beta=0.5)
    (grad,) = torch.autograd.grad(term, logp)
    x = (ref - logp).detach()
    torch.testing.assert_close(grad, torch.where(mask.bool(), -0.5 * (x.exp() - 1) / 3, 0.0))
    seq, _ = reference_kl(logp, ref, mask, beta=0.5, loss_type="grpo")
    assert not torch.isclose(seq, term)
    with pytest.raises(ValueError, match="num_items"):
        reference_kl(logp, ref, mask, beta=0.5, loss_type="dapo")
