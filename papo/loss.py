"""The PAPO objective as small pure functions: tensors in, tensors out (no trainer code here).

PAPO (Perception-Aware Policy Optimization) adds to the RL loss of GRPO/DAPO (spec §1.2)::

    L_papo = − γ · agg( w · KL_prcp )  +  η1 · H[π_θ(·|q, I)]  +  η2 · H[π(·|q, I_mask)]

* ``KL_prcp`` is the per-token estimate of KL(π_θ(·|q, I) ‖ π(·|q, I_mask)) on the sampled completion tokens:
  the policy on the original image against the policy on a patch-masked copy of it. It is **maximised**
  (minus sign) so that the answer depends on the image ("implicit perception loss").
* The two "entropies" are the official sampled-token estimator ``token_mean(−log p)``. Both are **added**,
  i.e. both are minimised (the "double entropy loss", which guards against the KL term's collapse).

Shapes used throughout:

* ``logp``        (B, T) log π_θ(o_t | q, I, o_<t) of the sampled tokens, original image, with gradient.
* ``masked_logp`` (B, T) log π(o_t | q, I_mask, o_<t) of the same tokens, masked image. In the default
  (official) mode it comes from the old policy under ``torch.no_grad()``, i.e. it is a frozen target.
* ``mask``        (B, T) completion mask, 1 for real tokens and 0 for padding (any dtype, bool included).

Padding never changes a result: every reduction selects with ``torch.where`` rather than multiplying by
the mask, so a nan/inf at a padded position cannot poison a sum (``nan * 0 == nan``).

The official code is EasyR1/verl (``dp_actor.update_policy`` and ``core_algos.compute_kl``); the section
numbers below refer to ``PAPO_SPEC.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ESTIMATORS = ("k1", "k2", "k3")
LOSS_TYPES = ("grpo", "sapo", "bnpo", "dr_grpo", "dapo", "cispo", "vespo", "luspo")
APPLY_MODES = ("all", "correct_only", "weighted")
SCHEDULES = ("fixed", "linear")
DISCOUNT_RULES = ("official", "start")
ENTROPY_MODES = ("sampled", "full")

# verl's low_var_kl clamps: the log-ratio to [-20, 20] (exp stays finite), the estimate to [-10, 10].
_LOG_RATIO_CLAMP = 20.0
_K3_CLAMP = 10.0


def _upcast(x: Tensor) -> Tensor:
    # verl computes the KL in fp32 (`log_probs.float()`); keep fp64 as fp64 (tests, finite differences).
    return x if x.dtype == torch.float64 else x.float()


def per_token_kl(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(π ‖ ref) from tokens sampled from π (Schulman's k1/k2/k3).

    Args:
        logp:     (B, T) log π(o_t) of the sampled tokens.
        ref_logp: (B, T) log ref(o_t) of the same tokens.
        estimator: "k1" | "k2" | "k3".

    Returns:
        (B, T) float32 (or float64 for float64 inputs). With ``x = ref_logp − logp``:

        * k1 = logp − ref_logp = −x                           (verl ``"kl"``, unbiased, can be < 0)
        * k2 = ½ x²                                            (verl ``"mse"``)
        * k3 = clamp(exp(x') − x' − 1, −10, 10), x' = clamp(x, −20, 20)
                                                               (verl ``"low_var_kl"``, the PAPO default; ≥ 0)

    Only k3 is clamped, exactly as verl's ``compute_kl``: k1 and k2 are left unclamped there. Where a clamp
    is active (|x| > 20 or k3 > 10) the token gets zero gradient.
    """
    logp, ref_logp = _upcast(logp), _upcast(ref_logp)
    x = ref_logp - logp
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x.square()
    if estimator == "k3":
        x = x.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return (torch.exp(x) - x - 1.0).clamp(-_K3_CLAMP, _K3_CLAMP)
    raise ValueError(f"Unknown KL estimator {estimator!r}; valid values are {ESTIMATORS}.")


def perception_kl(
    logp: Tensor,
    masked_logp: Tensor,
    mask: Tensor,
    estimator: str = "k3",
    clip: float | None = None,
    top_p: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token perception KL, KL(π_θ(·|q, I) ‖ π(·|q, I_mask)), plus the mask of tokens it acts on.

    Args:
        logp:        (B, T) log-probs on the original image (plays "p", with gradient).
        masked_logp: (B, T) log-probs on the masked image (plays "ref"; spec §1.3: the code's direction,
                     ``compute_kl(log_probs=log_probs, ref_log_probs=aug_log_probs)``).
        mask:        (B, T) completion mask.
        estimator:   see `per_token_kl`; for k3 the value is ``exp(a − l) − (a − l) − 1`` with
                     ``a = masked_logp``, ``l = logp``.
        clip:        official experimental ``kl_prcp_clipping`` (off by default): clamp the per-token KL to
                     [0, clip], so tokens above ``clip`` get zero gradient.
        top_p:       official experimental token-level mask (off by default), in (0, 1): per sample, keep only
                     the tokens whose KL is ≥ the ``1 − top_p`` quantile (``torch.nanquantile``) of that
                     sample's KL over its valid tokens, i.e. its top ``top_p`` fraction. The threshold is
                     computed on detached values. The later average still divides by *all* valid tokens
                     (official behaviour), so dropped tokens count as zeros.

    Returns:
        ``(kl, keep)``: ``kl`` (B, T), exactly 0 at padding (clipped when ``clip`` is set); ``keep`` (B, T)
        = ``mask · top_p_mask`` in ``mask``'s dtype (just ``mask`` when ``top_p`` is None).

    Order as in the official code: the top-p threshold is taken on the unclipped KL, then the clip. (The
    official code applies the per-sample weight before both; with positive weights the top-p mask is the
    same, and the clip differs only for weights other than 0/1, which the official code never produces.)
    """
    valid = mask.bool()
    # Zero the padding *before* the estimator: the value there is then 0 and, unlike a `where` after
    # exp(), its gradient is exactly 0 too (no 0 · inf = nan flowing back into the model).
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    masked_logp = torch.where(valid, masked_logp, torch.zeros_like(masked_logp))
    kl = per_token_kl(logp, masked_logp, estimator)

    keep = mask
    if top_p is not None:
        if not 0.0 < top_p < 1.0:
            raise ValueError(f"top_p must be in (0, 1), got {top_p}.")
        # NaN at padding so that nanquantile sees only this sample's valid tokens.
        scores = kl.detach().masked_fill(~valid, float("nan"))
        threshold = torch.nanquantile(scores, 1.0 - top_p, dim=1, keepdim=True)  # (B, 1)
        keep = mask * (scores >= threshold).to(mask.dtype)  # nan >= thr is False: padding stays dropped
    if clip is not None:
        kl = kl.clamp(0.0, clip)
    return kl, keep


def aggregate(
    values: Tensor,
    mask: Tensor,
    loss_type: str = "bnpo",
    *,
    max_completion_length: int | None = None,
    num_items: Tensor | float | None = None,
) -> Tensor:
    """Reduce per-token ``values`` (B, T) to a scalar exactly like TRL's ``loss_type`` does.

    This is TRL's reduction *before* its division by the gradient-accumulation steps (the caller does that
    for the loss types whose normaliser does not already include it). With ``v = values`` at valid tokens
    and 0 at padding, and ``m = mask``:

    * "grpo", "sapo":           mean_b( Σ_t v_bt / max(Σ_t m_bt, 1) )         (sequence-mean)
    * "bnpo":                   Σ v / max(Σ m, 1)                             (token-mean = official "token")
    * "dr_grpo":                Σ v / (B · max_completion_length)
    * "dapo", "cispo", "vespo": Σ v / num_items       (num_items: TRL's global normaliser, from the caller)
    * "luspo":                  mean_b( Σ_t v_bt )

    Returns:
        0-dim tensor. Raises ValueError for an unknown ``loss_type`` or a missing required keyword.
    """
    valid = mask.bool()
    v = torch.where(valid, values, torch.zeros_like(values))  # `where`, not `*`: nan/inf at padding stay out
    m = valid.to(v.dtype)
    if loss_type in ("grpo", "sapo"):
        return (v.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return v.sum() / m.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length.")
        return v.sum() / (mask.size(0) * max_completion_length)
    if loss_type in ("dapo", "cispo", "vespo"):
        if num_items is None:
            raise ValueError(f"loss_type={loss_type!r} needs num_items (TRL's global token normaliser).")
        return v.sum() / num_items
    if loss_type == "luspo":
        return v.sum(-1).mean()
    raise ValueError(f"Unknown loss_type {loss_type!r}; valid values are {LOSS_TYPES}.")


def token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Token-mean over valid tokens: Σ values·mask / max(Σ mask, 1). values, mask: (B, T) → 0-dim.

    verl's ``masked_mean``; padded values (even nan/inf) do not matter.
    """
    valid = mask.bool()
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1).to(total.dtype)


def sampled_token_entropy(logp: Tensor, mask: Tensor) -> Tensor:
    """Official entropy estimator: H ≈ token_mean(−log p(o_t)) over the sampled tokens. (B, T) → 0-dim.

    It is an unbiased Monte-Carlo estimate of the per-token entropy for tokens sampled from p (not the
    full-vocabulary entropy), and always a token-mean whatever the loss type (spec §1.4).
    """
    return token_mean(-logp, mask)


def apply_mode_weights(mode: str, accuracy: Tensor, incorrect_weight: float = 0.1) -> Tensor:
    """Per-sample weight w on the perception KL (official ``kl_prcp_apply_mode``).

    Args:
        mode: "all" | "correct_only" | "weighted".
        accuracy: (B,) accuracy reward of each rollout in [0, 1]; > 0.5 counts as correct (nan: incorrect).
        incorrect_weight: weight of incorrect rollouts in "weighted" mode (official ``incorrect_weighting``).

    Returns:
        (B,) floating weights:

        * "all":          1 everywhere (official, and the only mode the official code implements).
        * "correct_only": 1 where correct, else 0 — maximise image reliance only on trajectories that reached
                          the right answer.
        * "weighted":     1 where correct, ``incorrect_weight`` where not.

    The official code names "correct_only"/"weighted" but raises NotImplementedError, and declares
    ``incorrect_weighting: 0.1`` without using it: these two definitions are ours.
    """
    accuracy = torch.as_tensor(accuracy)
    dtype = accuracy.dtype if accuracy.is_floating_point() else torch.get_default_dtype()
    if mode == "all":
        return torch.ones(accuracy.shape, dtype=dtype, device=accuracy.device)
    correct = accuracy > 0.5
    if mode == "correct_only":
        return correct.to(dtype)
    if mode == "weighted":
        return torch.where(correct, 1.0, float(incorrect_weight)).to(dtype)
    raise ValueError(f"Unknown perception-KL apply mode {mode!r}; valid values are {APPLY_MODES}.")


def gamma_schedule(
    step: int,
    total_steps: int,
    *,
    gamma: float,
    schedule: str = "fixed",
    start: float = 0.01,
    end: float = 0.0,
    annealing_ratio: float = 0.5,
    discount_rule: str = "official",
) -> tuple[float, float]:
    """Perception-KL coefficient γ_t and entropy discount d_t at optimizer step ``step`` (0-based).

    * "fixed":  (γ, 1.0).
    * "linear" (official "annealing", ``AnnealingKLController``): with N = max(1, int(annealing_ratio ·
      total_steps)), γ_t = start + (end − start) · min(step / N, 1), i.e. linear from ``start`` to ``end``
      over N steps and then constant at ``end``; ``gamma`` only sets the discount.

    Both entropy coefficients are multiplied by d_t (the official code scales them by the same ratio as γ):

    * ``discount_rule="official"`` (default; dp_actor.py): d_t = γ_t / γ, with γ the configured
      ``kl_prcp_coef`` (here ``gamma``), and 1.0 when γ_t == γ. γ = 0 raises ValueError (the official
      code divides by zero there).
    * ``discount_rule="start"`` (ours): d_t = γ_t / start (1.0 if start is 0), so d_0 = 1 whatever γ is.

    The two agree when γ == start; e.g. γ = 0.02, start = 0.01: d_0 = 0.5 officially, 1.0 with "start".
    """
    if discount_rule not in DISCOUNT_RULES:
        raise ValueError(
            f"Unknown entropy discount rule {discount_rule!r}; valid values are {DISCOUNT_RULES}."
        )
    if schedule == "fixed":
        return float(gamma), 1.0
    if schedule == "linear":
        anneal_steps = max(1, int(annealing_ratio * total_steps))
        progress = min(max(step, 0) / anneal_steps, 1.0)
        gamma_t = start + (end - start) * progress
        if discount_rule == "official":
            if gamma == 0:
                raise ValueError(
                    "the linear γ schedule's official entropy discount is γ_t / perception_kl_coef: set "
                    "perception_kl_coef > 0 (usually = perception_kl_coef_start), or use discount rule 'start'."
                )
            discount = 1.0 if gamma_t == gamma else gamma_t / gamma
        else:
            discount = gamma_t / start if start != 0 else 1.0
        return float(gamma_t), float(discount)
    raise ValueError(f"Unknown perception-KL schedule {schedule!r}; valid values are {SCHEDULES}.")


def reference_kl(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    beta: float,
    loss_type: str = "bnpo",
    max_completion_length: int | None = None,
    num_items: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """The official reference-KL penalty of one micro-batch (spec §1.5; verl ``use_kl_loss``)::

        term = + β · aggregate(k3(ref_logp − logp), mask, loss_type)

    Args:
        logp:     (B, T) log π_θ(o_t) of the sampled tokens, with gradient.
        ref_logp: (B, T) log π_ref(o_t), no gradient.
        mask:     (B, T) completion mask.
        beta:     β (official ``kl_coef`` 0.01).
        loss_type, max_completion_length, num_items: see `aggregate` (``bnpo`` = the official token-mean).

    Returns:
        ``(term, kl)``: ``term`` 0-dim, to add to the loss (no gradient-accumulation scaling applied);
        ``kl`` (B, T) the per-token k3 (0 at padding), for logging.

    The per-token value is verl's ``low_var_kl``: k3 = clamp(exp(x') − x' − 1, −10, 10) with
    x' = clamp(ref_logp − logp, −20, 20) (`per_token_kl`). Unlike TRL's default it is **not** multiplied by
    the importance ratio π_θ/π_θold (TRL's ``use_bias_correction_kl``), and it is clamped (TRL's is not:
    at x = 3 TRL gives 16.09, verl 10). Gradient per valid token for bnpo:
    ∂term/∂l_t = −β · (exp(x_t) − 1) / N where no clamp is active, 0 where one is.
    """
    valid = mask.bool()
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    ref_logp = torch.where(valid, ref_logp, torch.zeros_like(ref_logp))
    kl = per_token_kl(logp, ref_logp, "k3")
    term = beta * aggregate(
        kl, mask, loss_type, max_completion_length=max_completion_length, num_items=num_items
    )
    return term, kl


@dataclass
class PAPOTerms:
    """What `papo_terms` returns. All are 0-dim tensors; only ``loss`` carries gradient."""

    loss: Tensor  # add to the RL loss (then scale for gradient accumulation like it)
    perception_kl: Tensor  # token-mean of the per-token KL over valid tokens (log it; official logs −this)
    entropy_original: Tensor  # H[π_θ(·|q, I)] as used in the loss
    entropy_masked: Tensor  # H[π(·|q, I_mask)] as used in the loss
    kl_term: Tensor  # − γ · agg(w · KL · keep)
    entropy_term: Tensor  # η1 · H_orig + η2 · H_masked


def papo_terms(
    logp: Tensor,
    masked_logp: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    eta_original: float = 0.0,
    eta_masked: float = 0.0,
    estimator: str = "k3",
    loss_type: str = "bnpo",
    weights: Tensor | None = None,
    clip: float | None = None,
    top_p: float | None = None,
    max_completion_length: int | None = None,
    num_items: Tensor | float | None = None,
    entropy: str = "sampled",
    full_entropies: Tensor | None = None,
    full_entropies_masked: Tensor | None = None,
) -> PAPOTerms:
    """The PAPO terms to add to the RL loss of one micro-batch (spec §1.2)::

        loss = − γ · aggregate(w · KL_prcp · keep, mask, loss_type)      # KL_prcp is MAXIMISED
               + η1 · H_orig + η2 · H_masked                             # both entropies minimised

    Args:
        logp, masked_logp, mask: (B, T), see the module docstring.
        gamma: γ (use `gamma_schedule` for γ_t). eta_original / eta_masked: η1 / η2; multiply them by the
            schedule's discount d_t before passing them.
        estimator, clip, top_p: see `perception_kl`.
        loss_type, max_completion_length, num_items: see `aggregate` (applies to the KL term only).
        weights: (B,) per-sample w from `apply_mode_weights`; None means all ones.
        entropy: "sampled" (official): H_orig = token_mean(−logp), H_masked = token_mean(−masked_logp).
            "full": H_orig = token_mean(full_entropies) with ``full_entropies`` (B, T) the full-vocabulary
            entropy of π_θ(·|q, I) given by the caller (it has gradient only if the caller's tensor does);
            H_masked uses ``full_entropies_masked`` if given, else the sampled estimator on masked_logp.

    The entropy terms are always token-means (official), whatever ``loss_type``. No gradient-accumulation
    scaling is applied here.

    Gradient: with the default frozen target (masked_logp detached) and k3/bnpo, each valid token gets
    ∂loss/∂l_t = −γ · w · (1 − exp(a_t − l_t)) / N (N valid tokens): π_θ(o_t | I) is pushed away from the
    masked-image probability. The η2 term then has **no gradient** (official issue #20: in all published
    runs "double entropy" was effectively the original-image entropy alone); it has one only when
    masked_logp is recomputed with gradient.
    """
    kl, keep = perception_kl(logp, masked_logp, mask, estimator, clip, top_p)
    if weights is not None:
        kl_weighted = weights.to(kl.dtype)[:, None] * kl
    else:
        kl_weighted = kl
    kl_weighted = torch.where(keep.bool(), kl_weighted, torch.zeros_like(kl_weighted))
    kl_term = -gamma * aggregate(
        kl_weighted, mask, loss_type, max_completion_length=max_completion_length, num_items=num_items
    )

    if entropy == "sampled":
        h_orig = sampled_token_entropy(logp, mask)
    elif entropy == "full":
        if full_entropies is None:
            raise ValueError("entropy='full' needs full_entropies (B, T).")
        h_orig = token_mean(full_entropies, mask)
    else:
        raise ValueError(f"Unknown entropy mode {entropy!r}; valid values are {ENTROPY_MODES}.")
    if entropy == "full" and full_entropies_masked is not None:
        h_masked = token_mean(full_entropies_masked, mask)
    else:
        h_masked = sampled_token_entropy(masked_logp, mask)
    entropy_term = eta_original * h_orig + eta_masked * h_masked

    return PAPOTerms(
        loss=kl_term + entropy_term,
        perception_kl=token_mean(kl.detach(), mask),
        entropy_original=h_orig.detach(),
        entropy_masked=h_masked.detach(),
        kl_term=kl_term.detach(),
        entropy_term=entropy_term.detach(),
    )
