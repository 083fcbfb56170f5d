"""PAPOConfig: TRL's GRPOConfig plus the PAPO settings (and those of its follow-ups), checked at construction.

Kept apart from the trainer as TRL keeps `GRPOConfig` apart from `GRPOTrainer`: `papo train` builds it from
YAML and flags (`papo.train`), `papo.trainer.PAPOTrainer` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from papo.guards import COLLAPSE_ACTIONS
from papo.loss import apply_mode_weights, gamma_schedule
from papo.masking import MaskingConfig


@dataclass
class PAPOConfig(GRPOConfig):
    """GRPOConfig plus the PAPO settings. Defaults are the official PAPO-G 3B values (spec §1.5, §3).

    Where TRL's GRPOConfig defaults differ from the official recipe they are overridden here, so a bare
    ``PAPOConfig()`` trains the paper's PAPO-G: token-mean loss (``bnpo``), ε 0.2/0.3, dual-clip 3.0,
    reference KL β = 0.01 (k3, clamped, not importance-weighted), no dropout, γ = 0.02, masks p = 0.6.
    The official 3 optimizer updates per generation batch depend on the batch sizes: set
    ``steps_per_generation = 3 × gradient_accumulation_steps`` (the full-run presets do).
    """

    # --- TRL settings whose defaults are not the official ones ---
    loss_type: str = field(
        default="bnpo",
        metadata={"help": "bnpo = the official token-mean per micro-batch (TRL's default: dapo)."},
    )
    epsilon_high: float | None = field(
        default=0.3, metadata={"help": "upper clip ε_high (official GRPO/PAPO-G 0.3; DAPO/PAPO-D 0.28)."}
    )
    delta: float | None = field(
        default=3.0, metadata={"help": "dual-clip bound (official clip_ratio_dual 3.0)."}
    )
    beta: float = field(
        default=0.01, metadata={"help": "reference KL β (official kl_coef 0.01; 0 = no reference model)."}
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={
            "help": "not used by PAPOTrainer: the reference KL is the official one (never importance-weighted)."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "turn every dropout off (official: no dropout; dropout biases the perception KL)."},
    )

    perception_loss: bool = field(
        default=True,
        metadata={"help": "add the PAPO terms; false = the GRPO/DAPO baseline (no masked forward at all)."},
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={"help": "DAPO: drop groups whose accuracy is all 0 or all 1 and refill the batch."},
    )
    dynamic_sampling_max_tries: int = field(
        default=20,
        metadata={
            "help": "generation draws per batch, the first included (official max_try_make_batch); 0 = no limit."
        },
    )
    dynamic_sampling_on_exhaust: str = field(
        default="raise",
        metadata={
            "help": "when the draws run out before the batch is full: raise (official) | top_up (fill with "
            "uninformative groups and warn)."
        },
    )
    perception_kl_coef: float = field(
        default=0.02,
        metadata={"help": "γ, weight of the perception KL, which is maximised (official kl_prcp_coef)."},
    )
    perception_kl_estimator: str = field(
        default="k3", metadata={"help": "k1 | k2 | k3 (official low_var_kl, with its clamps)."}
    )
    perception_kl_schedule: str = field(
        default="fixed", metadata={"help": "fixed | linear (official annealing)."}
    )
    perception_kl_coef_start: float = field(default=0.01, metadata={"help": "linear schedule: γ at step 0."})
    perception_kl_coef_end: float = field(default=0.0, metadata={"help": "linear schedule: final γ."})
    perception_kl_annealing_ratio: float = field(
        default=0.5, metadata={"help": "linear schedule: fraction of training over which γ moves."}
    )
    perception_kl_discount: str = field(
        default="official",
        metadata={
            "help": "linear schedule's entropy discount d_t: official (γ_t / perception_kl_coef) | start (γ_t / start)."
        },
    )
    perception_kl_apply_mode: str = field(
        default="all",
        metadata={"help": "all | correct_only | weighted: which rollouts get the perception KL."},
    )
    perception_kl_incorrect_weight: float = field(
        default=0.1, metadata={"help": "weighted mode: weight of incorrect rollouts."}
    )
    perception_kl_accuracy_reward: str = field(
        default="accuracy_reward", metadata={"help": "reward function whose value decides 'correct' (> 0.5)."}
    )
    perception_kl_clip: float | None = field(
        default=None,
        metadata={"help": "clamp per-token KL to [0, clip] (official experimental option, off)."},
    )
    perception_kl_top_p: float | None = field(
        default=None,
        metadata={"help": "keep only the top-p share of tokens by KL per sample (experimental, off)."},
    )
    entropy_original_coef: float = field(default=0.0, metadata={"help": "η1, entropy penalty on π_θ(·|I)."})
    entropy_masked_coef: float = field(
        default=0.0,
        metadata={
            "help": "η2, entropy penalty on π(·|I_mask); has a gradient only with recompute_masked_logps."
        },
    )
    entropy_estimator: str = field(
        default="sampled",
        metadata={"help": "sampled (official: mean −log p of sampled tokens) | full (vocabulary)."},
    )
    recompute_masked_logps: bool = field(
        default=False,
        metadata={"help": "re-run the masked branch with gradient in the loss (≈2× update cost)."},
    )
    collapse_guard: str = field(
        default="warn",
        metadata={"help": "off | warn | reduce_gamma | stop: what to do on the spec §5 collapse signs."},
    )
    collapse_window: int = field(
        default=10, metadata={"help": "logged steps the collapse signs are judged on."}
    )
    collapse_gamma_factor: float = field(
        default=0.5, metadata={"help": "reduce_gamma: γ is multiplied by this."}
    )
    mask_strategy: str = field(default="patch", metadata={"help": "patch (random black squares) | noise."})
    mask_ratio: float = field(default=0.6, metadata={"help": "probability each square is blackened."})
    mask_patch_size: int = field(default=14, metadata={"help": "square side in original-image pixels."})
    mask_grid: str = field(
        default="image", metadata={"help": "image (official) | model (squares on the ViT patch grid)."}
    )
    mask_noise_std: float = field(default=0.6, metadata={"help": "noise strategy: std on [0,1] pixels."})
    mask_per: str = field(
        default="prompt",
        metadata={
            "help": "mask granularity: prompt (PAPO: one mask shared by a prompt's G rollouts) | response "
            "(VPPO: one mask per rollout)."
        },
    )
    # --- follow-ups (papo.followups); all off = exactly PAPO / GRPO ---
    vppo_token_gating: bool = field(
        default=False,
        metadata={
            "help": "VPPO: per response, keep the policy-gradient loss only on the top vppo_top_fraction of "
            "tokens by visual dependency d_t (still averaged over all tokens)."
        },
    )
    vppo_top_fraction: float = field(
        default=0.4, metadata={"help": "VPPO: share of tokens kept, k = ceil(p·|o|)."}
    )
    vppo_advantage_scaling: bool = field(
        default=False,
        metadata={
            "help": "VPPO: scale each response's advantage by its mean d_t, normalised over the mini-batch."
        },
    )
    vppo_beta_min: float = field(default=0.9, metadata={"help": "VPPO: smallest advantage scale β_min."})
    pgpo: bool = field(
        default=False,
        metadata={
            "help": "PGPO: per-token advantages A·w_t with w_t from the min-max of log(1 + d_t) in the response."
        },
    )
    pgpo_tau: float = field(default=0.4, metadata={"help": "PGPO: threshold τ in (0, 1)."})
    pgpo_beta: float = field(default=2.0, metadata={"help": "PGPO: slope β above the threshold."})
    noisy_rollout: bool = field(
        default=False,
        metadata={
            "help": "NoisyRollout: generate the second half of each group on a diffusion-noised image; every "
            "loss term still scores the clean image (needs an even num_generations)."
        },
    )
    noisy_rollout_max_step: int = field(
        default=500, metadata={"help": "NoisyRollout: initial noise step α₀ of the 1000-step schedule."}
    )
    noisy_rollout_decay: str = field(
        default="sigmoid", metadata={"help": "NoisyRollout: noise-step annealing, sigmoid | linear | none."}
    )
    noisy_rollout_decay_coef: float = field(default=30.0, metadata={"help": "NoisyRollout: sigmoid slope λ."})
    noisy_rollout_decay_mid_step: float = field(
        default=40.0, metadata={"help": "NoisyRollout: sigmoid midpoint γ, in training steps."}
    )
    vllm_checks: bool = field(
        default=True,
        metadata={
            "help": "with use_vllm: check that vLLM runs each rollout on the prompt the model scores and gets "
            "the merged LoRA weights at each sync (papo.vllm_check); raise on a mismatch."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.masking = MaskingConfig(
            strategy=self.mask_strategy,
            mask_ratio=self.mask_ratio,
            patch_size=self.mask_patch_size,
            grid=self.mask_grid,
            noise_std=self.mask_noise_std,
            per=self.mask_per,
        )
        self._check_followups()
        # Fail at configuration time, not at the first step.
        gamma_schedule(
            0,
            1,
            gamma=self.perception_kl_coef,
            schedule=self.perception_kl_schedule,
            start=self.perception_kl_coef_start,
            end=self.perception_kl_coef_end,
            discount_rule=self.perception_kl_discount,
        )
        apply_mode_weights(self.perception_kl_apply_mode, torch.ones(1), self.perception_kl_incorrect_weight)
        if self.dynamic_sampling_on_exhaust not in ("raise", "top_up"):
            raise ValueError(
                f"dynamic_sampling_on_exhaust must be 'raise' or 'top_up', got {self.dynamic_sampling_on_exhaust!r}"
            )
        if self.collapse_guard not in COLLAPSE_ACTIONS:
            raise ValueError(f"collapse_guard must be one of {COLLAPSE_ACTIONS}, got {self.collapse_guard!r}")
        if self.entropy_estimator not in ("sampled", "full"):
            raise ValueError(f"entropy_estimator must be 'sampled' or 'full', got {self.entropy_estimator!r}")

    @property
    def uses_visual_dependency(self) -> bool:
        """VPPO or PGPO is on: they act on the per-token visual dependency d_t."""
        return self.vppo_token_gating or self.vppo_advantage_scaling or self.pgpo

    @property
    def needs_masked_logps(self) -> bool:
        """The masked-image forward runs for the PAPO terms and for d_t (VPPO, PGPO)."""
        return self.perception_loss or self.uses_visual_dependency

    def _check_followups(self) -> None:
        if self.pgpo and (self.vppo_token_gating or self.vppo_advantage_scaling):
            raise ValueError(
                "pgpo and vppo_token_gating / vppo_advantage_scaling both reshape the advantages from d_t: turn "
                "one off (pgpo: false, or vppo_token_gating: false and vppo_advantage_scaling: false)."
            )
        if not 0.0 < self.vppo_top_fraction <= 1.0:
            raise ValueError(f"vppo_top_fraction must be in (0, 1] (VPPO: 0.4), got {self.vppo_top_fraction}")
        if not 0.0 <= self.vppo_beta_min <= 1.0:
            raise ValueError(f"vppo_beta_min must be in [0, 1] (VPPO: 0.9), got {self.vppo_beta_min}")
        if not 0.0 < self.pgpo_tau < 1.0:
            raise ValueError(f"pgpo_tau must be in (0, 1) (PGPO: 0.4), got {self.pgpo_tau}")
        if self.pgpo_beta < 0:
            raise ValueError(f"pgpo_beta must be >= 0 (PGPO: 2.0), got {self.pgpo_beta}")
        if self.uses_visual_dependency and self.loss_type in ("cispo", "vespo", "sapo"):
            raise ValueError(
                f"vppo_* / pgpo reshape the advantages of a clipped surrogate; loss_type={self.loss_type!r} is not "
                "one: use loss_type dapo (VPPO/PGPO's mini-batch token-mean) or bnpo."
            )
        if self.noisy_rollout:
            generations = self.num_generations or 0
            if generations < 2 or generations % 2:
                raise ValueError(
                    f"noisy_rollout generates half of each group on the noised image: num_generations must be "
                    f"even and >= 2, got {self.num_generations} (the released recipe: 6 clean + 6 noised = 12)."
                )
            if not 0 <= self.noisy_rollout_max_step <= 999:
                raise ValueError(
                    f"noisy_rollout_max_step must be in [0, 999] (a step of the 1000-step schedule), got "
                    f"{self.noisy_rollout_max_step}"
                )
            if self.noisy_rollout_decay not in ("sigmoid", "linear", "none"):
                raise ValueError(
                    f"noisy_rollout_decay must be sigmoid, linear or none, got {self.noisy_rollout_decay!r}"
                )
