"""PAPO's follow-ups as small pure functions: VPPO, PGPO and NoisyRollout (tensors in, tensors out).

All three reuse what PAPO already computes: the policy's log-probs of the sampled tokens on the original
image and on a masked copy (or, for NoisyRollout, only a corrupted copy at generation time). The trainer
(`papo.trainer`) turns them into TRL's documented extension point, per-token advantages ``(B, T)``.

Shapes used throughout:

* ``old_logp``    (B, T) log π_θold(o_t | q, I, o_<t) of the sampled tokens, original image, no gradient.
* ``masked_logp`` (B, T) log π_θold(o_t | q, I_mask, o_<t) of the same tokens, masked image, no gradient.
* ``mask``        (B, T) completion (response) mask, 1 for real tokens, 0 for padding (any dtype).
* ``d``           (B, T) per-token visual dependency (`visual_dependency`), 0 at padding.
* ``advantages``  (B,) one advantage per response (GRPO/DAPO group-normalised).

Sources: VPPO (arXiv 2510.09285) from its released code ``huaixuheqing/VPPO-RL`` (``dp_actor.update_policy``,
read at a23c54b); PGPO (arXiv 2604.01840) has **no public code**: implemented from the formulas in the paper as
quoted in issue 19; NoisyRollout (arXiv 2504.13055) from its released code (``verl/utils/image_aug.py`` and
``ray_trainer.fit`` of NUS-TRAIL/NoisyRollout). Where paper and released code disagree the released code is
followed and the docstring says so.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_RATIO_CLAMP = 20.0
_D_MAX = 10.0


def visual_dependency(old_logp: Tensor, masked_logp: Tensor, mask: Tensor) -> Tensor:
    """Per-token visual dependency d_t: the k3 estimate between the old policy on the original and masked image.

    ``d_t = clamp(exp(x) − x − 1, 0, 10)``, ``x = clamp(a_t − l_t, −20, 20)``, with ``a = masked_logp``,
    ``l = old_logp``. Same value as PAPO's per-token perception KL (`papo.loss.per_token_kl`, k3), which is ≥ 0,
    so the lower clamp only documents VPPO's ``clamp(min=0.0, max=10.0)``.

    Args: old_logp, masked_logp, mask: (B, T). Returns: (B, T) detached, float32 (float64 for float64 inputs),
    exactly 0 at padding (a nan/inf there does not leak).
    """
    dtype = torch.float64 if old_logp.dtype == torch.float64 else torch.float32
    valid = mask.bool()
    old = torch.where(valid, old_logp.detach().to(dtype), 0.0)
    masked = torch.where(valid, masked_logp.detach().to(dtype), 0.0)
    x = (masked - old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    d = (torch.exp(x) - x - 1.0).clamp(0.0, _D_MAX)
    return torch.where(valid, d, 0.0)


# --- VPPO -------------------------------------------------------------------------------------------


def vppo_token_gate(d: Tensor, mask: Tensor, top_fraction: float = 0.4) -> Tensor:
    """VPPO's token gate: per response keep the k_i = ceil(top_fraction · |o_i|) tokens with the largest d_t.

    Args:
        d:    (B, T) visual dependency. mask: (B, T) response mask. top_fraction: in (0, 1] (VPPO: 0.4).

    Returns:
        (B, T) gate in ``d``'s dtype: 1 on the kept tokens, 0 elsewhere (always 0 at padding). Exactly
        ``min(k_i, |o_i|)`` ones per row. Ties are broken by position (earlier token first: a stable sort; the
        released code uses ``torch.sort``, whose order among ties is unspecified).

    The policy-gradient loss is multiplied by this gate but still averaged over **all** response tokens
    (released code: ``final_pg_loss * loss_token_mask`` then ``average_loss(..., response_mask)``).
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"vppo_top_fraction must be in (0, 1], got {top_fraction}")
    valid = mask.bool()
    lengths = valid.sum(-1)
    k = torch.ceil(lengths.to(torch.float64) * top_fraction).long()  # (B,)
    scores = torch.where(valid, d, torch.full_like(d, -math.inf))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (B, T)
    ranks = torch.arange(d.size(-1), device=d.device).expand_as(d)
    keep_sorted = ranks < k[:, None]
    gate = torch.zeros_like(valid).scatter(-1, order, keep_sorted) & valid
    return gate.to(d.dtype)


def vppo_sensitivity(d: Tensor, mask: Tensor) -> Tensor:
    """S_i = mean_t d_t over response i's tokens (0 for an empty response). (B, T) → (B,)."""
    valid = mask.bool()
    total = torch.where(valid, d, 0.0).sum(-1)
    return total / valid.sum(-1).clamp(min=1).to(total.dtype)


def vppo_score_range(scores: Tensor, lengths: Tensor) -> Tensor | None:
    """(min S, max S) over the responses with at least one token, or None if fewer than two (released code).

    Args: scores (N,) from `vppo_sensitivity`; lengths (N,) response lengths. Returns a (2,) tensor or None.
    VPPO computes it over the mini-batch (the rows of one optimizer step) on each device, not across devices.
    """
    valid = scores[lengths > 0]
    if valid.numel() <= 1:
        return None
    return torch.stack([valid.min(), valid.max()])


def vppo_advantage_scale(
    scores: Tensor, lengths: Tensor, score_range: Tensor | None, beta_min: float = 0.9, eps: float = 1e-8
) -> Tensor:
    """VPPO's per-response advantage scale (trajectory-level shaping): Â_i ← Â_i · scale_i.

    With (m, M) = ``score_range`` (from `vppo_score_range` over the mini-batch)::

        Ŝ_i     = clamp((S_i − m)/(M − m), 0, 1)
        β_max   = β_min + (1 − β_min) / (mean_i Ŝ_i + eps)
        scale_i = β_min + Ŝ_i · (β_max − β_min)

    so mean_i scale_i = 1 over the rows the mean is taken on.

    Args:
        scores: (B,) S_i of this micro-batch's responses; lengths: (B,) their lengths.
        score_range: (2,) (m, M) or None. beta_min: β_min (VPPO 0.9). eps: 1e-8 (released code).

    Returns:
        (B,) scales, 1.0 for empty responses, and 1.0 everywhere when ``score_range`` is None or
        M − m ≤ 1e-6 (released code).

    **Released code vs paper:** the min/max come from the mini-batch, but ``mean Ŝ`` in β_max is taken over
    the *micro-batch* passed here (the code's ``normalized_scores.mean()`` inside the micro-batch loop), and eps
    is added; we follow the code. Pass the whole mini-batch to get the paper's "mean over the batch".
    """
    if not 0.0 <= beta_min <= 1.0:
        raise ValueError(f"vppo_beta_min must be in [0, 1], got {beta_min}")
    scale = torch.ones_like(scores)
    if score_range is None:
        return scale
    low, high = score_range[0].to(scores.dtype), score_range[1].to(scores.dtype)
    if not (high - low) > 1e-6:
        return scale
    valid = lengths > 0
    if not valid.any():
        return scale
    normalised = ((scores[valid] - low) / (high - low)).clamp(0.0, 1.0)
    beta_max = beta_min + (1.0 - beta_min) / (normalised.mean() + eps)
    scale[valid] = beta_min + normalised * (beta_max - beta_min)
    return scale


# --- PGPO -------------------------------------------------------------------------------------------


def pgpo_token_weights(d: Tensor, mask: Tensor, tau: float = 0.4, beta: float = 2.0) -> Tensor:
    """PGPO's per-token advantage weights (arXiv 2604.01840; no public code: from the paper's formulas).

    Per response i, over its tokens::

        Ĩ_t = (log(1 + d_t) − min_t log(1 + d)) / (max_t log(1 + d) − min_t log(1 + d))      (min-max in [0, 1])
        w_t = Ĩ_t / τ                           if Ĩ_t < τ
              1 + β · (Ĩ_t − τ) / (1 − τ)        otherwise
        w_t ← w_t · |o_i| / Σ_t w_t                                                          (Σ_t w_t = |o_i|)

    and the advantage becomes A_{i,t} = w_t · A_i.

    Args: d, mask: (B, T); tau in (0, 1) (0.4); beta ≥ 0 (2.0).

    Returns:
        (B, T) weights ≥ 0, 0 at padding, each row summing to its length. Our choices where the paper is silent:
        a response whose d is constant (max = min, e.g. one token) gets w_t = 1 (no information to reweight);
        the min-max and renormalisation use only the response's own tokens.
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"pgpo_tau must be in (0, 1), got {tau}")
    if beta < 0:
        raise ValueError(f"pgpo_beta must be >= 0, got {beta}")
    valid = mask.bool()
    info = torch.log1p(d.clamp(min=0.0))
    low = torch.where(valid, info, math.inf).amin(-1, keepdim=True)
    high = torch.where(valid, info, -math.inf).amax(-1, keepdim=True)
    span = high - low
    flat = ~(span > 0)  # constant rows and empty rows
    scaled = torch.where(flat, 0.0, (info - low) / torch.where(flat, 1.0, span)).clamp(0.0, 1.0)
    w = torch.where(scaled < tau, scaled / tau, 1.0 + beta * (scaled - tau) / (1.0 - tau))
    w = torch.where(valid, w, 0.0)
    lengths = valid.sum(-1, keepdim=True).to(w.dtype)
    total = w.sum(-1, keepdim=True)
    w = torch.where(total > 0, w * lengths / torch.where(total > 0, total, 1.0), 0.0)
    return torch.where(valid & flat, torch.ones_like(w), w)


def token_advantages(advantages: Tensor, weights: Tensor) -> Tensor:
    """A_{i,t} = weights_{i,t} · A_i: (B,) × (B, T) → (B, T) (TRL 1.16 takes (B, T) advantages as they are).

    For weights ≥ 0 this is exactly "multiply the per-token policy-gradient loss by the weight": TRL's
    ``−min(r·A·w, clip(r)·A·w) = w · (−min(r·A, clip(r)·A))`` (and its delta clamp acts on r only), with the
    loss type's denominator unchanged. That is VPPO's gate (w ∈ {0, 1}) times its scale, and PGPO's w_t.
    """
    return advantages.to(weights.dtype)[:, None] * weights


# --- NoisyRollout -----------------------------------------------------------------------------------


def diffusion_alpha_bars(num_steps: int = 1000, beta_start: float = 1e-5, beta_end: float = 5e-3) -> Tensor:
    """ᾱ_k = Π_{i ≤ k} (1 − β_i), k = 0..num_steps−1, with β = sigmoid(linspace(−6, 6)) · (end − start) + start.

    NoisyRollout's (released code) 1000-step schedule. Returns (num_steps,) float64 (the released code uses
    float32; float64 changes ᾱ by < 1e-6).
    """
    betas = torch.sigmoid(torch.linspace(-6.0, 6.0, num_steps, dtype=torch.float64)) * (beta_end - beta_start)
    return torch.cumprod(1.0 - (betas + beta_start), dim=0)


def _sigmoid(x: float) -> float:
    """σ(x) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def noise_step(
    step: int,
    total_steps: int,
    *,
    max_step: int = 500,
    decay: str = "sigmoid",
    coef: float = 30.0,
    mid_step: float = 40.0,
) -> int:
    """The noise step k_t of training step ``step`` (NoisyRollout's annealing).

    * "sigmoid": k_t = ⌊α₀ · (1 − σ(λ · (t − γ) / t_max))⌋ with α₀ = ``max_step``, λ = ``coef``,
      γ = ``mid_step``, t_max = ``total_steps`` (7B Geo3K: 500, 30, 40 of 60).
    * "linear":  k_t = ⌊α₀ · (1 − t / t_max)⌋.    * "none": k_t = α₀.

    ``step`` counts from 1 at the first update, as the released code's ``global_step`` (the trainer passes
    TRL's 0-based ``global_step + 1``). The result is clamped to [0, 999] (valid indices of ᾱ).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if decay == "sigmoid":
        x = coef * (step - mid_step) / total_steps
        factor = 1.0 - _sigmoid(x)
    elif decay == "linear":
        factor = 1.0 - step / total_steps
    elif decay == "none":
        factor = 1.0
    else:
        raise ValueError(f"noisy_rollout_decay must be sigmoid, linear or none, got {decay!r}")
    return int(min(max(int(max_step * factor), 0), 999))


def noisy_rows(num_rows: int, group_size: int, first_row: int = 0) -> list[bool]:
    """Which rows of a generation batch are generated on the noised image: the second half of each group.

    Rows are in TRL's order (each prompt's G rollouts consecutive); ``first_row`` is the global index of this
    process's first row. Row r is noised iff ``(first_row + r) % G >= G // 2`` (released code: within a group of
    2n, the first n see the clean image, the next n the noised one).
    """
    if group_size < 2 or group_size % 2:
        raise ValueError(f"NoisyRollout needs an even num_generations >= 2, got {group_size}")
    return [(first_row + r) % group_size >= group_size // 2 for r in range(num_rows)]
