"""PAPOTrainer: TRL's GRPOTrainer plus the PAPO perception loss (its settings: `papo.config.PAPOConfig`).

This file is the only place that touches TRL internals. It wraps (never copies) these methods of
`trl.GRPOTrainer` (contract-tested in `tests/test_trainer_contract.py`); the last two serve only the
follow-ups of issue 19 (VPPO, PGPO, NoisyRollout; the math is in `papo.followups`):

* `_generate_and_score_completions` — after TRL has generated and scored a generation batch, mask
  each prompt's image(s) (`papo.masking`: one mask per prompt shared by its G rollouts, drawn from
  the trainer seed, the step and the prompt's content, so every rank agrees), and add one batch-first
  tensor, `masked_per_token_logps`: log π_θold(o_t | q, I_mask), computed without gradient by the same
  model on the *same* token ids, attention mask and M-RoPE positions — only the image tensors differ.
  This is the official default (one extra no-grad forward per step). With
  `recompute_masked_logps=True` the masked pixel values travel with the batch instead and the masked
  branch is re-run with gradient inside the loss.
* `_get_per_token_logps_and_entropies` — a pass-through that hands the training forward's per-token
  log-probs (with gradient) to `compute_loss`, so PAPO needs no third forward pass.
* `compute_loss` (public) — TRL's loss with TRL's reference KL switched off (`beta` is 0 for that call),
  plus the official reference KL ``+ β·agg(k3_clamped(ref − logp))`` (`papo.loss.reference_kl`: no
  importance weighting, k3 clamped like verl's `low_var_kl`) and the PAPO terms from `papo.loss`:
  ``− γ·agg(w·KL_prcp) + d·(η1·H[π_θ] + η2·H[π_mask])``, aggregated like TRL's `loss_type`
  (`bnpo` = the official token-mean) and scaled for gradient accumulation like TRL's own loss.
  With VPPO/PGPO on it first replaces the batch's advantages by TRL's documented per-token form
  A_{i,t} = w_{i,t}·A_i (w: VPPO's gate × advantage scale, or PGPO's weights, from d_t computed at
  generation: `visual_dependency`), the same gradient as weighting each token's policy-gradient loss.
* `_prepare_inputs` — TRL's buffering unchanged; after a generation batch is split, VPPO's score range
  (min/max of S_i over each optimizer step's micro-batches on this device) is attached to them.
* `_generate_single_turn` — NoisyRollout: the second half of each group is generated from a
  diffusion-noised copy of its image; TRL's `_generate` returns its own clean images, from which every
  scoring forward (and so every loss term) is built.

Dynamic sampling (DAPO) is wired here (`_dynamic_sampling`: draws, gathering across processes, metrics);
its rules and batch surgery are pure functions in `papo.dynamic_sampling`.
Everything else — generation, rewards, advantages, clipping, the reference log-probs, PEFT, logging,
checkpoints, `push_to_hub` — is TRL's, including vLLM rollouts (`use_vllm`). With vLLM the masked-image
log-probs still come from the training model; `vllm_checks` (on by default) wraps the trainer's own
`vllm_generation` object to check, with `papo.vllm_check`, that vLLM ran every rollout on the prompt the
model scores and received the merged LoRA weights at every sync.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import textwrap
import warnings
from typing import Any

import numpy as np
import torch
from transformers.trainer_utils import rotate_checkpoints
from trl import GRPOTrainer
from trl.data_utils import apply_chat_template, prepare_multimodal_messages
from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from papo.config import PAPOConfig
from papo.dynamic_sampling import (
    DynamicSamplingExhausted,
    RefillPass,
    gather_rows,
    informative_groups,
    row_piece,
    to_device,
)
from papo.families import (
    check_masked_layout,
    check_training_layout,
    family_of,
    image_forward_kwargs,
    per_sample_pixel_values,
)
from papo.followups import (
    diffusion_alpha_bars,
    noise_step,
    noisy_rows,
    pgpo_token_weights,
    token_advantages,
    visual_dependency,
    vppo_advantage_scale,
    vppo_score_range,
    vppo_sensitivity,
    vppo_token_gate,
)
from papo.guards import CollapseGuard, check_finite
from papo.loss import apply_mode_weights, gamma_schedule, papo_terms, per_token_kl, reference_kl
from papo.masking import (
    check_same_grid,
    diffusion_noise,
    mask_seed,
    masked_copies,
    prompt_key,
)
from papo.vllm_check import (
    SyncRecord,
    check_server_image_tokens,
    check_synced_weights,
    check_vllm_prompts,
    has_4bit_layers,
    scored_prompts,
    weight_fingerprint,
)

logger = logging.getLogger(__name__)


# loss types whose normaliser already covers gradient accumulation (TRL divides the others by it)
_GLOBAL_NORMALISED = ("dapo", "cispo", "vespo")


class PAPOTrainer(GRPOTrainer):
    """GRPOTrainer with PAPO's implicit perception loss. Use it exactly like `trl.GRPOTrainer`."""

    _tag_names = ["trl", "papo"]
    _name = "PAPO"
    _paper = {
        "title": "Perception-Aware Policy Optimization for Multimodal Reasoning",
        "id": "2507.06448",
        "citation": textwrap.dedent("""\
            @inproceedings{wang2026papo,
                title     = {{Perception-Aware Policy Optimization for Multimodal Reasoning}},
                author    = {Zhenhailong Wang and others},
                booktitle = {International Conference on Learning Representations},
                year      = 2026,
                eprint    = {arXiv:2507.06448},
            }"""),
    }

    def __init__(self, *args, **kwargs):
        model, config = kwargs.get("model", args[0] if args else None), kwargs.get("args")
        if (
            getattr(config, "use_vllm", False)
            and isinstance(model, torch.nn.Module)
            and has_4bit_layers(model)
        ):
            raise ValueError(
                "use_vllm with a 4-bit (QLoRA) model: TRL cannot sync 4-bit LoRA weights to vLLM (TRL issue "
                "#4973). Use bf16 LoRA with vLLM (load_in_4bit: false), or QLoRA with use_vllm: false."
            )
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PAPOConfig):
            raise TypeError("PAPOTrainer needs a PAPOConfig (a GRPOConfig with the PAPO settings)")
        self._papo_capture: list | None = None  # set while compute_loss runs TRL's loss
        self._noisy_generation: dict | None = None  # NoisyRollout: what the last generation call saw
        dropout = _active_dropout(self.model)
        # With dropout on, the masked branch is re-run next to the training forward with its dropout masks.
        self._dropout_active = bool(dropout) and self.args.perception_loss
        if dropout:
            _warn_dropout_once(dropout, self.args.perception_loss)
        self._papo_rewards: torch.Tensor | None = None
        self._papo_global_accuracy: torch.Tensor | None = None  # every rank's rows, last generation
        # dynamic sampling's own pass over the training set, for refill draws
        self._refill = RefillPass(
            self.args.seed, len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else 0
        )
        self.dynamic_sampling_kept: list[list[tuple[int, int]]] = []  # per batch: (draw, group) kept
        self.collapse_guard = CollapseGuard(
            self.args.collapse_guard if self.args.perception_loss else "off",
            window=self.args.collapse_window,
            gamma_factor=self.args.collapse_gamma_factor,
        )
        self.add_callback(self.collapse_guard)
        self._vllm_calls: list[tuple[list, list | None]] = []  # (prompt ids vLLM ran, images it got) per call
        self._vllm_syncs: list[SyncRecord] = []
        if self.use_vllm and self.args.vllm_checks:
            self._install_vllm_checks()

    # --- checkpoints: written to a staging folder, then renamed into place -------------------
    def _save_checkpoint(self, model, trial):
        """Write `checkpoint-N` atomically: build it under `<output_dir>/.staging/`, then rename.

        A run killed mid-save leaves only a staging folder, which `--resume latest` never picks
        (it only sees complete `checkpoint-N` folders). `save_total_limit` is applied after the
        rename. With several processes every rank writes into the staging folder (its RNG state,
        DeepSpeed's optimizer shards), so the main process renames only once all ranks are done.
        """
        run_dir = self._get_output_dir(trial=trial)
        name = f"checkpoint-{self.state.global_step}"
        staging_root = os.path.join(run_dir, ".staging")
        self._get_output_dir = lambda trial=None: staging_root  # shadows the method for this save only
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        if self.args.should_save and self.args.dynamic_sampling:
            self._refill.save(os.path.join(staging_root, name))
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        final = os.path.join(run_dir, name)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(os.path.join(staging_root, name), final)
        if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging_root):
            self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(
                staging_root, run_dir, 1
            )
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
        )

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Trainer.train, plus restoring dynamic sampling's refill position from the checkpoint."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str | os.PathLike):
            self._refill.load(checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # --- wrapped TRL method 1: generation ------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = self._generate_once(inputs)
        if self.args.dynamic_sampling and self.model.training:
            output = self._dynamic_sampling(output)
        return output

    def _generate_once(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation and scoring, plus the masked-image log-probs (and per-row accuracy if needed)."""
        self._vllm_calls.clear()
        output = super()._generate_and_score_completions(inputs)
        if self._vllm_calls:
            self._check_vllm_prompts(inputs, output)
        if self._papo_rewards is not None:
            output["papo_accuracy"] = self._local_accuracy(len(inputs), output["completion_ids"].device)
        if self.args.needs_masked_logps:
            self._add_masked_logps(inputs, output)
        if self.args.uses_visual_dependency:
            self._add_visual_dependency(output)
        return output

    def _add_visual_dependency(self, output: dict[str, Any]) -> None:
        """d_t (`papo.followups.visual_dependency`) between the old policy on the original and masked image.

        The old policy's original-image log-probs are TRL's ``old_per_token_logps`` when TRL computed them
        (several updates per generation batch, or vLLM); otherwise (one update per generation batch, where TRL
        skips them because they equal the training forward's) one no-grad forward computes them here.
        """
        old = output.get("old_per_token_logps")
        if old is None:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            mode = "train" if self.model.training else "eval"
            batch_size = (
                self.args.per_device_train_batch_size
                if mode == "train"
                else self.args.per_device_eval_batch_size
            )
            with torch.no_grad():
                old, _, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    input_ids,
                    attention_mask,
                    output["completion_ids"].size(1),
                    batch_size=batch_size,
                    **image_forward_kwargs(output, output["pixel_values"]),
                )
        output["visual_dependency"] = visual_dependency(
            old, output["masked_per_token_logps"], output["completion_mask"]
        )

    def _add_masked_logps(self, inputs: list[dict[str, Any]], output: dict[str, Any]) -> None:
        images = [_row_images(row) for row in inputs]
        if any(not row_images for row_images in images):
            raise ValueError(
                "PAPO needs an image in every prompt: a row without 'images'/'image' reached the trainer "
                "(prepare the dataset with papo.data.loading.prepare_papo_dataset, which rejects such rows)"
            )
        mode = "train" if self.model.training else "eval"
        # One draw per generation round: the step is shared by all ranks; eval draws are kept apart.
        draw = self.state.global_step if mode == "train" else -1 - self.state.global_step
        masked_images = []
        first_row = self.accelerator.process_index * len(inputs)  # global row index of this rank's first row
        for i, (row, row_images) in enumerate(zip(inputs, images, strict=True)):
            masked_images.append(  # per "response" (VPPO) the global row index is in the seed too
                masked_copies(
                    row["prompt"],
                    row_images,
                    self.args.masking,
                    self.args.seed,
                    self.processing_class.image_processor,
                    draw=draw,
                    row=first_row + i,
                )
            )
        masked_pixel_values = self._masked_pixel_values(inputs, images, masked_images, output)

        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        batch_size = (
            self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        )
        with torch.no_grad():
            masked_logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                output["completion_ids"].size(1),
                batch_size=batch_size,
                **image_forward_kwargs(output, masked_pixel_values),
            )
        output["masked_per_token_logps"] = masked_logps
        if self.args.recompute_masked_logps or self._dropout_active:
            # A list (one tensor per sample) so TRL's shuffle/split carries each sample's patches with its row.
            output["masked_pixel_values"] = per_sample_pixel_values(output, masked_pixel_values)

    def _masked_pixel_values(self, inputs, images, masked_images, output) -> torch.Tensor:
        """The masked images through the same processor call TRL made for the originals (same text, same
        settings), checked to differ from the originals' only in pixel values (`papo.families`)."""
        family = family_of(self.model.config if hasattr(self.model, "config") else self.model).name
        check_training_layout(output, family)
        texts = [
            apply_chat_template(
                {"prompt": prepare_multimodal_messages(row["prompt"], images=row_images)},
                self.processing_class,
                tools=self.tools or None,
                **self.chat_template_kwargs,
            )["prompt"]
            for row, row_images in zip(inputs, images, strict=True)
        ]
        call = dict(text=texts, padding=True, return_tensors="pt")
        original = self.processing_class(images=images, **call)
        masked = self.processing_class(images=masked_images, **call)
        check_masked_layout(original, masked, family)
        if tuple(original["pixel_values"].shape) != tuple(output["pixel_values"].shape):
            raise ValueError(
                f"masked pass ({family}): re-processing the original images gave pixel_values of shape "
                f"{tuple(original['pixel_values'].shape)}, TRL's generation batch has "
                f"{tuple(output['pixel_values'].shape)}: the processor call differs from TRL's"
            )
        return masked["pixel_values"].to(output["pixel_values"].device, output["pixel_values"].dtype)

    def _dynamic_sampling(self, output: dict[str, Any]) -> dict[str, Any]:
        """DAPO's dynamic sampling with the official rules (EasyR1 ``_make_batch_data``, ``online_filtering``).

        A *draw* is one generation batch (all processes together; the first is TRL's). In each draw the
        groups whose mean accuracy is in (0.01, 0.99) are kept; if **no** group of a draw survives, the
        whole draw is kept (official). Kept groups are appended in draw order until the batch has as many
        groups as one draw, then truncated to that size. Refill draws take prompts without replacement
        within an epoch of their own pass over the training set (as a dataloader would). After
        ``dynamic_sampling_max_tries`` draws (the first included) without filling the batch it raises
        (official), or, with ``dynamic_sampling_on_exhaust: top_up``, fills it with the dropped groups
        and warns.

        Several processes: the rewards are gathered over all ranks, so every rank takes the same keep
        decision on the same global groups; a group is never split across draws; each rank then gets its
        slice of the final global batch (rows another rank generated are sent with ``gather_object``).
        """
        args = self.args
        group = self.num_generations
        nproc, rank = self.accelerator.num_processes, self.accelerator.process_index
        local_rows = output["completion_ids"].size(0)
        if (local_rows * nproc) % group:
            raise ValueError("dynamic_sampling needs whole groups in each generation batch")
        needed = local_rows * nproc // group  # groups in one global draw
        draws: list[dict[str, Any]] = []
        kept: list[tuple[int, int]] = []
        dropped: list[tuple[int, int]] = []
        current = output
        while True:
            draws.append(split_pixel_values_by_grid(current))
            keep = informative_groups(self._papo_global_accuracy, group)
            draw = len(draws) - 1
            kept += [(draw, g) for g in keep.nonzero().flatten().tolist()]
            dropped += [(draw, g) for g in (~keep).nonzero().flatten().tolist()]
            if len(kept) >= needed:
                break
            if 0 < args.dynamic_sampling_max_tries <= len(draws):
                if args.dynamic_sampling_on_exhaust == "raise":
                    raise DynamicSamplingExhausted(
                        f"dynamic sampling: {len(kept)}/{needed} groups after {len(draws)} draws "
                        f"(dynamic_sampling_max_tries={args.dynamic_sampling_max_tries}); too few prompts are "
                        "neither always solved nor never solved. Check the data and rewards, raise "
                        "dynamic_sampling_max_tries, or set dynamic_sampling_on_exhaust: top_up."
                    )
                logger.warning(
                    "dynamic sampling: only %d/%d informative groups after %d draws; topping up with "
                    "uninformative ones",
                    len(kept),
                    needed,
                    len(draws),
                )
                kept += dropped[: needed - len(kept)]
                break
            prompts = self._next_refill_prompts(needed)
            rows = [prompt for prompt in prompts for _ in range(group)]
            current = self._generate_once(rows[rank * local_rows : (rank + 1) * local_rows])

        chosen = kept[:needed]
        self.dynamic_sampling_kept.append(chosen)
        self._metrics["train"]["dynamic_sampling/draws"].append(float(len(draws)))
        self._metrics["train"]["dynamic_sampling/kept_groups"].append(
            float(sum(1 for d, g in chosen if (d, g) not in dropped))
        )
        final = [(d, g * group + i) for d, g in chosen for i in range(group)]  # global rows
        mine = final[rank * local_rows : (rank + 1) * local_rows]
        device = output["completion_ids"].device
        if nproc == 1:
            pieces = [(draws[d], r) for d, r in mine]
        else:
            from accelerate.utils import gather_object

            held = {
                (d, r): row_piece(draws[d], r - rank * local_rows, "cpu")
                for d, r in final
                if r // local_rows == rank
            }
            everything: dict = {}
            for part in gather_object([held]):
                everything.update(part)
            pieces = [(to_device(everything[(d, r)], device), 0) for d, r in mine]
        merged = gather_rows(pieces, pad_token_id=self._pad_token_id)
        tokens = merged["completion_mask"].sum().to(output["num_items_in_batch"].dtype)
        merged["num_items_in_batch"] = self.accelerator.reduce(tokens, reduction="sum")  # global, like TRL's
        return unsplit_pixel_values_by_grid(merged)

    @property
    def _pad_token_id(self) -> int:
        return getattr(self.processing_class, "tokenizer", self.processing_class).pad_token_id

    def _next_refill_prompts(self, count: int) -> list[dict[str, Any]]:
        """`count` training prompts for a refill draw, the same on every rank: a seeded pass over the
        training set without replacement, reshuffled at the end of each of its epochs."""
        return [self.train_dataset[i] for i in self._refill.next_indices(count)]

    # --- vLLM rollouts: TRL's integration, checked at its boundary -------------------------------
    def _install_vllm_checks(self) -> None:
        """Wrap this trainer's `vllm_generation` (instance attributes; TRL's methods run unchanged).

        `generate` records the images sent and the prompt ids vLLM reports it ran on; in server mode
        (main process) the client's `image_features` records the server's image-token counts, which
        its `generate` checks before sending; `sync_weights` / `_iter_named_params` record every
        weight sent and check the LoRA layers after each sync.
        """
        family = family_of(self.model.config)
        if not family.name.startswith("qwen"):
            raise ValueError(
                f"vllm_checks: the vLLM prompt checks know Qwen's image-token layout only, not {family.label}'s. "
                "Set vllm_checks: false to run vLLM unchecked, or use_vllm: false (HF generation)."
            )
        backend = self.vllm_generation
        generate, sync_weights, walk = backend.generate, backend.sync_weights, backend._iter_named_params

        def recorded_generate(prompts, images, num_generations, profiler=None):
            result = generate(
                prompts=prompts, images=images, num_generations=num_generations, profiler=profiler
            )
            self._vllm_calls.append((result[0], images))
            return result

        def checked_sync_weights():
            lora = self._lora_layers()
            expected = (
                {}
                if self._vllm_params_sharded
                else {name: _merged_fingerprint(layer) for name, layer in lora.items()}
            )
            self._vllm_syncs.clear()
            sync_weights()
            for record in self._vllm_syncs:
                check_synced_weights(list(lora), expected, record, self.state.global_step)
            self._metrics["train"]["vllm/verified_lora_weights"].append(float(len(lora)))

        def recorded_walk():
            record, lora = SyncRecord(), self._lora_layers()
            self._vllm_syncs.append(record)
            for name, tensor in walk():
                _note_sent_weight(record, name, tensor, lora.get(name))
                yield name, tensor

        backend.generate, backend.sync_weights, backend._iter_named_params = (
            recorded_generate,
            checked_sync_weights,
            recorded_walk,
        )
        client = getattr(backend, "vllm_client", None)
        if backend.mode == "server" and client is not None:
            image_features, client_generate = client.image_features, client.generate
            server_features: list = []

            def recorded_image_features(images, *args, **kwargs):
                server_features[:] = image_features(images, *args, **kwargs)
                return server_features

            def checked_client_generate(prompts, features=None, **kwargs):
                if features is not None:
                    check_server_image_tokens(prompts, server_features, self.processing_class.image_token_id)
                return client_generate(prompts, features=features, **kwargs)

            client.image_features, client.generate = recorded_image_features, checked_client_generate

    def _check_vllm_prompts(self, inputs: list[dict[str, Any]], output: dict[str, Any]) -> None:
        """The prompt ids vLLM ran and the images it got equal the training batch's, row by row."""
        vllm_ids, vllm_images = self._vllm_calls[0]
        expected_images = [_row_images(row) for row in inputs]
        if self._noisy_generation is not None:  # NoisyRollout: those rows were generated on the noised copies
            expected_images = [list(images or []) for images in self._noisy_generation["images"]]
        scored = scored_prompts(
            output["prompt_ids"],
            output["prompt_mask"],
            output.get("image_grid_thw"),
            output.get("num_images") or [0] * len(inputs),
            self.processing_class.image_processor.merge_size,
            expected_images,
        )
        check_vllm_prompts(vllm_ids, vllm_images, scored, self.processing_class.image_token_id)

    @property
    def _vllm_params_sharded(self) -> bool:
        """ZeRO-3 / FSDP: full weights exist only inside TRL's gather, so only the structure is checked."""
        plugin = self.accelerator.state.deepspeed_plugin
        return self.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3)

    def _lora_layers(self) -> dict[str, Any]:
        """The PEFT LoRA layers of the model TRL syncs, by the name vLLM gets their weight under."""
        from peft.tuners.lora import LoraLayer

        return {
            name.removeprefix("base_model.model.") + ".weight": module
            for name, module in self.vllm_generation.model.named_modules()
            if isinstance(module, LoraLayer)
        }

    # --- wrapped TRL method 4: the split of a generation batch into micro-batches (VPPO's statistics) ---
    def _prepare_inputs(self, generation_batch):
        """TRL's buffering, plus VPPO's score range per mini-batch when a new generation batch was split.

        VPPO normalises its per-response scores S_i over the *mini-batch* on each device, i.e. the rows of
        one optimizer step: here the ``gradient_accumulation_steps`` consecutive micro-batches TRL will use
        for that step (TRL consumes ``_buffered_inputs[step % steps_per_generation]`` in order). Each of
        them gets ``vppo_score_range`` (B, 2): (min S, max S) of its mini-batch, NaN when undefined.
        """
        before = getattr(self, "_buffered_inputs", None)
        inputs = super()._prepare_inputs(generation_batch)
        if self.args.vppo_advantage_scaling and self.model.training and self._buffered_inputs is not before:
            self._add_vppo_score_ranges(self._buffered_inputs)
        return inputs

    def _add_vppo_score_ranges(self, micro_batches: list[dict[str, Any]]) -> None:
        per_step = max(int(self.args.gradient_accumulation_steps), 1)
        for start in range(0, len(micro_batches), per_step):
            chunk = micro_batches[start : start + per_step]
            scores = torch.cat(
                [vppo_sensitivity(b["visual_dependency"], b["completion_mask"]) for b in chunk]
            )
            lengths = torch.cat([b["completion_mask"].sum(-1) for b in chunk])
            score_range = vppo_score_range(scores, lengths)
            if score_range is None:
                score_range = torch.full((2,), float("nan"), device=scores.device, dtype=scores.dtype)
            for batch in chunk:
                batch["vppo_score_range"] = score_range[None].expand(batch["completion_ids"].size(0), 2)

    def _shape_advantages(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """VPPO / PGPO as TRL's per-token advantages (B, T): A_{i,t} = weight_{i,t} · A_i (a new dict).

        TRL 1.16 uses (B, T) advantages as they are (documented for subclasses); for weights ≥ 0 this is the
        same gradient as multiplying each token's policy-gradient loss by the weight with the loss type's
        denominator unchanged (`papo.followups.token_advantages`; tested in tests/test_followups_trainer.py).
        """
        args = self.args
        advantages = inputs["advantages"]
        if advantages.dim() != 1:
            raise ValueError(
                f"VPPO / PGPO expect TRL's per-response advantages (B,), got {tuple(advantages.shape)}"
            )
        d, mask = inputs["visual_dependency"], inputs["completion_mask"]
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        weights = torch.ones_like(d)
        if args.vppo_token_gating:
            gate = vppo_token_gate(d, mask, args.vppo_top_fraction)
            weights = weights * gate
            metrics["vppo/gated_token_fraction"].append(self._global_token_mean(gate, mask))
        if args.vppo_advantage_scaling:
            scores, lengths = vppo_sensitivity(d, mask), mask.sum(-1)
            score_range = inputs.get("vppo_score_range")
            if score_range is None:  # eval, or a direct compute_loss call: this micro-batch is the mini-batch
                score_range = vppo_score_range(scores, lengths)
            else:
                score_range = score_range[0] if bool(torch.isfinite(score_range[0]).all()) else None
            scale = vppo_advantage_scale(scores, lengths, score_range, args.vppo_beta_min)
            weights = weights * scale[:, None]
            metrics["vppo/advantage_scale_mean"].append(float(scale.mean()))
        if args.pgpo:
            weights = pgpo_token_weights(d, mask, args.pgpo_tau, args.pgpo_beta)
            metrics["pgpo/weight_max"].append(float(torch.where(mask.bool(), weights, 0.0).max()))
        metrics["visual_dependency"].append(self._global_token_mean(d, mask))
        return {**inputs, "advantages": token_advantages(advantages, weights).to(advantages.dtype)}

    # --- wrapped TRL method 5: one generation call (NoisyRollout's hook) ------------------------
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        """NoisyRollout: the second half of each group is generated on a diffusion-noised copy of its image.

        Only what this call generates from changes: ``images`` (vLLM) and ``multimodal_fields`` (pixel values,
        for transformers' generate) of the noised rows. TRL's ``_generate`` returns its own clean ``images``,
        from which it builds the pixel values every later forward uses (old/ref log-probs, the loss, the PAPO
        masks), so every loss term scores the clean image. The noised copy has the same size, hence the same
        image grid and image-token count (checked). One noised copy per prompt and draw, shared by the noised
        rollouts (released code: one augmented batch per step), seeded like the masks.
        """
        self._noisy_generation = None
        if not (self.args.noisy_rollout and self.model.training and images is not None):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs
            )
        rows = noisy_rows(
            len(prompt_ids), self.num_generations, self.accelerator.process_index * len(prompt_ids)
        )
        step = noise_step(
            self.state.global_step + 1,
            max(self.state.max_steps or self.args.max_steps, 1),  # state.max_steps is 0 outside train()
            max_step=self.args.noisy_rollout_max_step,
            decay=self.args.noisy_rollout_decay,
            coef=self.args.noisy_rollout_decay_coef,
            mid_step=self.args.noisy_rollout_decay_mid_step,
        )
        alpha_bar = float(diffusion_alpha_bars()[step])
        noised_images = []
        for ids, row_images, noised in zip(prompt_ids, images, rows, strict=True):
            if not noised or not row_images:
                noised_images.append(row_images)
                continue
            key = prompt_key(row_images, json.dumps([int(t) for t in ids])) + b"/noisy-rollout"
            rng = np.random.default_rng(mask_seed(self.args.seed, self.state.global_step, key))
            noised_images.append([diffusion_noise(image, alpha_bar, rng) for image in row_images])
        fields = dict(multimodal_fields)
        if isinstance(fields.get("pixel_values"), torch.Tensor):
            flat = [image for row_images in noised_images if row_images for image in row_images]
            processed = self.processing_class.image_processor(images=flat, return_tensors="pt")
            if "image_grid_thw" in fields:
                check_same_grid(fields["image_grid_thw"], processed["image_grid_thw"])
            fields["pixel_values"] = processed["pixel_values"].to(
                fields["pixel_values"].device, fields["pixel_values"].dtype
            )
        self._noisy_generation = {"rows": rows, "images": noised_images, "noise_step": step}
        self._metrics["train"]["noisy_rollout/noise_step"].append(float(step))
        return super()._generate_single_turn(
            prompt_ids, noised_images, fields, num_generations, *args, **kwargs
        )

    # --- wrapped TRL method 2: per-token log-probs ---------------------------------------------
    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._papo_capture is not None and not self._papo_capture:
            self._papo_capture.append(result)  # the training forward of TRL's loss: reuse it
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        needs_accuracy = self.args.dynamic_sampling or (
            self.args.perception_loss and self.args.perception_kl_apply_mode != "all"
        )
        if needs_accuracy:
            self._papo_rewards = rewards
        return rewards

    # --- wrapped TRL method 3 (public): the loss ------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss with its reference KL switched off, plus the official reference KL and the PAPO terms.

        TRL's own reference term differs from the official one (importance-weighted when
        ``use_bias_correction_kl``, k3 not clamped), so TRL runs with ``beta = 0`` inside this call and the
        official term (`papo.loss.reference_kl`) is added here from the reference log-probs TRL computed at
        generation. Both reuse the log-probs of TRL's one training forward.
        """
        if self.args.uses_visual_dependency:
            inputs = self._shape_advantages(inputs)
        beta = self.beta
        if not self.args.perception_loss and beta == 0.0:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            check_finite(self.state.global_step, loss=loss)
            return loss
        self._papo_capture = []
        rng = _rng_snapshot(inputs["completion_ids"].device) if self._dropout_active else None
        self.beta = 0.0
        try:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            (logp, entropies, _aux) = self._papo_capture[0]
        finally:
            self.beta = beta
            self._papo_capture = None
        extra = {}
        if beta != 0.0:
            extra["ref_kl_loss"] = self._reference_kl_loss(inputs, logp, beta)
        if self.args.perception_loss:
            extra["papo_loss"] = self._papo_loss(model, inputs, logp, entropies, rng)
        # before backward: a NaN/inf step is never applied, so no NaN adapter can be saved
        check_finite(self.state.global_step, rl_loss=loss, **extra)
        return loss + sum(extra.values())

    def _loss_normalisation(self, inputs) -> tuple[torch.Tensor | None, float]:
        """(num_items, accumulation): TRL's reduction constants for this micro-batch and loss type.

        The global-token normalisers (dapo, ...) already cover gradient accumulation (num_items is set);
        the other loss types are divided by the accumulation steps (num_items is None).
        """
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        num_items = None
        if self.loss_type in _GLOBAL_NORMALISED:
            num_items = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                num_items = num_items * accumulation / self.args.steps_per_generation
        return num_items, accumulation

    def _loss_mask(self, inputs) -> torch.Tensor:
        mask = inputs["completion_mask"]
        return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask

    def _reference_kl_loss(self, inputs, logp: torch.Tensor, beta: float) -> torch.Tensor:
        """The official reference KL (spec §1.5), aggregated and scaled like TRL's loss; logged as `kl`."""
        mask = self._loss_mask(inputs)
        num_items, accumulation = self._loss_normalisation(inputs)
        term, kl = reference_kl(
            logp,
            inputs["ref_per_token_logps"],
            mask,
            beta=beta,
            loss_type=self.loss_type,
            max_completion_length=self.args.max_completion_length,
            num_items=num_items,
        )
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["kl"].append(self._global_token_mean(kl.detach(), mask))
        return term if num_items is not None else term / accumulation

    def _papo_loss(
        self, model, inputs, logp: torch.Tensor, entropies: torch.Tensor | None, rng=None
    ) -> torch.Tensor:
        args = self.args
        mode = "train" if self.model.training else "eval"
        mask = self._loss_mask(inputs)
        masked_logp = inputs["masked_per_token_logps"]
        if args.recompute_masked_logps:
            masked_logp = self._masked_logps_with_grad(model, inputs, rng)
        elif rng is not None:
            # dropout is on: re-run the masked branch (no grad) with the training forward's dropout masks
            with torch.no_grad():
                masked_logp = self._masked_logps_with_grad(model, inputs, rng)

        total_steps = max(self.state.max_steps, 1)
        gamma, discount = gamma_schedule(
            self.state.global_step,
            total_steps,
            gamma=args.perception_kl_coef,
            schedule=args.perception_kl_schedule,
            start=args.perception_kl_coef_start,
            end=args.perception_kl_coef_end,
            annealing_ratio=args.perception_kl_annealing_ratio,
            discount_rule=args.perception_kl_discount,
        )
        accuracy = inputs.get("papo_accuracy")
        if accuracy is None:
            accuracy = torch.ones(logp.size(0), device=logp.device)
        weights = apply_mode_weights(
            args.perception_kl_apply_mode, accuracy, args.perception_kl_incorrect_weight
        )
        # Same reduction and gradient-accumulation scaling as TRL's own loss for this loss_type.
        num_items, accumulation = self._loss_normalisation(inputs)
        # entropies are token-means whatever the loss type: scale them for accumulation here
        eta_scale = discount / accumulation if num_items is not None else discount
        terms = papo_terms(
            logp,
            masked_logp,
            mask,
            gamma=gamma,
            eta_original=eta_scale * args.entropy_original_coef,
            eta_masked=eta_scale * args.entropy_masked_coef,
            estimator=args.perception_kl_estimator,
            loss_type=self.loss_type,
            weights=weights,
            clip=args.perception_kl_clip,
            top_p=args.perception_kl_top_p,
            max_completion_length=args.max_completion_length,
            num_items=num_items,
            entropy=args.entropy_estimator,
            full_entropies=entropies,
        )

        metrics = self._metrics[mode]
        kl = per_token_kl(logp.detach(), masked_logp.detach(), args.perception_kl_estimator)
        metrics["perception_kl"].append(self._global_token_mean(kl, mask))
        metrics["entropy/original"].append(self._global_token_mean(-logp.detach(), mask))
        metrics["entropy/masked"].append(self._global_token_mean(-masked_logp.detach(), mask))
        metrics["perception_kl_coef"].append(gamma)
        return terms.loss if num_items is not None else terms.loss / accumulation

    def _masked_logps_with_grad(self, model, inputs, rng=None) -> torch.Tensor:
        """The masked branch re-run by the current model (with gradient unless under no_grad).

        ``rng``: the RNG state taken just before TRL's training forward; when given, this forward runs
        from the same state, so with dropout on it draws the same dropout masks as the training forward
        (same shapes, same module order) and the two passes differ only by the image.
        """
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        pixel_values = torch.cat(inputs["masked_pixel_values"])
        device = inputs["completion_ids"].device
        with _rng_restored(device, rng):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                inputs["completion_ids"].size(1),
                **image_forward_kwargs(inputs, pixel_values),
            )
        return logps

    def _global_token_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        local = torch.stack([torch.where(mask.bool(), values, 0.0).sum(), mask.sum().float()])
        total = self.accelerator.reduce(local, reduction="sum")
        return (total[0] / total[1].clamp(min=1.0)).item()

    def _local_accuracy(self, batch_size: int, device) -> torch.Tensor:
        names = [
            getattr(f, "__name__", getattr(getattr(f, "func", None), "__name__", ""))
            for f in self.reward_funcs
        ]
        name = self.args.perception_kl_accuracy_reward
        if name not in names:
            raise ValueError(
                f"dynamic_sampling / perception_kl_apply_mode={self.args.perception_kl_apply_mode!r} need a reward "
                f"function named {name!r} (perception_kl_accuracy_reward); the reward functions are {names}"
            )
        everyone = torch.nan_to_num(self._papo_rewards[:, names.index(name)], nan=0.0).to(device)
        self._papo_rewards = None
        self._papo_global_accuracy = everyone  # TRL gathers the rewards of all ranks, in rank order
        start = self.accelerator.process_index * batch_size
        return everyone[start : start + batch_size]


_DROPOUT_WARNED = False


def _warn_dropout_once(names: list[str], perception_loss: bool) -> None:
    global _DROPOUT_WARNED
    if _DROPOUT_WARNED:
        return
    _DROPOUT_WARNED = True
    detail = (
        "PAPO keeps the two passes consistent by re-running the masked branch next to each training forward "
        "with the same dropout masks (one extra forward per micro-batch; its target is then the current "
        "policy, not the old one)"
        if perception_loss
        else "the importance ratio and the reference KL then include dropout noise"
    )
    warnings.warn(
        f"dropout is on in {len(names)} modules (e.g. {names[0]}; disable_dropout: false). The official runs "
        f"have no dropout, and dropout makes a second forward differ from the first even on the same input, "
        f"which biases the perception KL: {detail}. Set disable_dropout: true (the default) to match them.",
        UserWarning,
        stacklevel=3,
    )


def _active_dropout(model: torch.nn.Module) -> list[str]:
    """Names of the dropout modules of `model` that would drop something in train mode."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0
    ]


def _rng_snapshot(device: torch.device) -> tuple:
    """The CPU RNG state and, on an accelerator, that device's RNG state."""
    if device.type == "cpu":
        return (torch.get_rng_state(), None)
    return (torch.get_rng_state(), torch.get_device_module(device.type).get_rng_state(device))


class _rng_restored:
    """Run a block from the RNG state `rng` (a `_rng_snapshot`), then put the RNG back as it was."""

    def __init__(self, device: torch.device, rng: tuple | None):
        self.device, self.rng, self.saved = device, rng, None

    def __enter__(self):
        if self.rng is not None:
            self.saved = _rng_snapshot(self.device)
            _set_rng(self.device, self.rng)

    def __exit__(self, *exc):
        if self.saved is not None:
            _set_rng(self.device, self.saved)
        return False


def _set_rng(device: torch.device, rng: tuple) -> None:
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.get_device_module(device.type).set_rng_state(rng[1], device)


def _merged_fingerprint(layer) -> tuple[float, float]:
    """Fingerprint of W + ΔW for a LoRA layer, merged the way PEFT merges (in W's dtype, in place on a copy)."""
    with torch.no_grad():
        merged = layer.get_base_layer().weight.detach().clone()
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A and adapter not in layer.lora_variant:
                merged += layer.get_delta_weight(adapter)
        return weight_fingerprint(merged)


def _note_sent_weight(record: SyncRecord, name: str, tensor: torch.Tensor, lora_layer) -> None:
    """Record one weight TRL sends to vLLM: adapter tensors, duplicates and, for LoRA layers, its fingerprint."""
    if "lora_" in name:
        record.adapter_tensors.append(name)
    if lora_layer is None:
        return
    if name in record.fingerprints:
        record.duplicates.append(name)
    record.fingerprints[name] = weight_fingerprint(tensor)
    record.merged[name] = bool(lora_layer.merged)


def _row_images(row: dict[str, Any]) -> list:
    if row.get("images"):
        return list(row["images"])
    return [row["image"]] if row.get("image") is not None else []
