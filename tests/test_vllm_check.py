"""vLLM rollouts without vLLM: TRL 1.16's own vLLM code path, with the vLLM engine replaced at its edge.

vLLM cannot run here, so `VLLMGeneration._init_vllm` (the one place TRL starts vLLM) is replaced by a
stand-in that attaches a fake engine: `FakeLLM` (colocate: `LLM.generate` / `load_weights`) or
`FakeServer` (server: `VLLMClient`). Everything between the trainer and that edge is TRL's real code:
how prompts and images are sent, how weights are merged and walked at a sync. The fakes can misbehave
the way the upstream bugs do (TRL #6294: image placeholders expanded again; #6401: the server's image
processor makes another number of image tokens), and papo's checks must then stop the run.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
import trl.generation.vllm_generation as vllm_generation
from peft import LoraConfig
from PIL import Image
from trainer_testing import generation_inputs, synthetic_train_rows, tiny_config, tiny_trainer
from trl.generation.vllm_client import VLLMClient
from trl.generation.vllm_generation import VLLMGeneration

from papo.modeling import LANGUAGE_LORA_TARGETS, load_processor
from papo.trainer import PAPOConfig, PAPOTrainer
from papo.vllm_check import (
    ScoredPrompt,
    SyncRecord,
    VLLMPromptMismatch,
    VLLMWeightSyncError,
    check_server_image_tokens,
    check_synced_weights,
    check_vllm_prompts,
    has_4bit_layers,
    image_digest,
    image_token_runs,
    weight_fingerprint,
)

IMAGE = 7  # a stand-in image token id for the unit tests


# --- the pure checks ----------------------------------------------------------------------------------


def test_image_token_runs():
    assert image_token_runs([1, 7, 7, 7, 2, 7, 3], IMAGE) == [3, 1]
    assert image_token_runs([7, 7], IMAGE) == [2]
    assert image_token_runs([1, 2], IMAGE) == []


def _scored(ids, tokens, images):
    return ScoredPrompt(token_ids=ids, image_tokens=tokens, images=[image_digest(i) for i in images])


def test_check_vllm_prompts_accepts_the_scored_prompt_and_names_each_kind_of_mismatch():
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    scored = [_scored([1, 7, 7, 2], [2], [red])]
    check_vllm_prompts([[1, 7, 7, 2]], [[red]], scored, IMAGE)  # the same prompt: no error
    with pytest.raises(VLLMPromptMismatch, match=r"image-token runs \[3\].*runs \[2\].*#6294"):
        check_vllm_prompts([[1, 7, 7, 7, 2]], [[red]], scored, IMAGE)  # placeholders expanded again
    with pytest.raises(VLLMPromptMismatch, match="first difference at token 3"):
        check_vllm_prompts([[1, 7, 7, 5]], [[red]], scored, IMAGE)
    with pytest.raises(VLLMPromptMismatch, match=r"given 1 image\(s\)"):
        check_vllm_prompts([[1, 7, 7, 2]], [[blue]], scored, IMAGE)
    with pytest.raises(VLLMPromptMismatch, match="returned 2 prompts for 1 rollouts"):
        check_vllm_prompts([[1, 7, 7, 2]] * 2, [[red]] * 2, scored, IMAGE)


def test_check_server_image_tokens():
    features = [{"mm_placeholders": {"image": [{"offset": 3, "length": 2}]}}, None]
    check_server_image_tokens([[1, 7, 7, 2], [1, 2]], features, IMAGE)
    with pytest.raises(VLLMPromptMismatch, match=r"into \[4\] image tokens.*runs of \[2\]"):
        check_server_image_tokens(
            [[1, 7, 7, 2]], [{"mm_placeholders": {"image": [{"offset": 3, "length": 4}]}}], IMAGE
        )


def test_check_synced_weights_names_every_problem():
    weight = torch.randn(6, 5)
    expected = {"a.weight": weight_fingerprint(weight), "b.weight": weight_fingerprint(weight)}
    good = SyncRecord(fingerprints=dict(expected), merged={"a.weight": True, "b.weight": True})
    check_synced_weights(["a.weight", "b.weight"], expected, good, step=3)
    stale = SyncRecord(
        fingerprints={"a.weight": weight_fingerprint(weight + 1e-3)},
        merged={"a.weight": False},
        adapter_tensors=["a.lora_A.weight"],
    )
    with pytest.raises(VLLMWeightSyncError) as err:
        check_synced_weights(["a.weight", "b.weight"], expected, stale, step=3)
    for part in (
        "step 3",
        "never sent, e.g. ['b.weight']",
        "adapter tensors",
        "without their adapter merged",
        "differ",
    ):
        assert part in str(err.value)


def test_weight_fingerprint_sees_small_differences():
    weight = torch.randn(64, 32)
    delta = torch.zeros_like(weight)
    delta[3, 4] = 1e-3 * weight.abs().max()
    assert weight_fingerprint(weight) == weight_fingerprint(weight.clone())
    assert weight_fingerprint(weight) != weight_fingerprint(weight + delta)


def test_has_4bit_layers():
    class Linear4bit(torch.nn.Linear):  # the class name bitsandbytes and PEFT use
        pass

    assert has_4bit_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), Linear4bit(2, 2)))
    assert not has_4bit_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# --- TRL's vLLM path with a fake engine ------------------------------------------------------------------


class FakeLLM:
    """vLLM's `LLM` as TRL 1.16 uses it in colocate mode; records requests and loaded weights.

    `expand_again=True` re-expands each image placeholder run the way TRL #6294 describes: the first
    image token of a run is replaced by the whole run again.
    """

    def __init__(self, image_token_id: int, completion: list[int], expand_again: bool = False):
        self.image_token_id, self.completion, self.expand_again = image_token_id, completion, expand_again
        self.requests: list[dict] = []
        self.loaded: list[tuple[str, torch.Tensor]] = []
        model = SimpleNamespace(load_weights=self.load_weights)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model))
            )
        )

    def _processed(self, ids: list[int]) -> list[int]:
        """The prompt ids vLLM ends up running: `ids`, or with each run of L image tokens made 2L - 1 long."""
        if not self.expand_again:
            return list(ids)
        out, i = [], 0
        while i < len(ids):
            if ids[i] != self.image_token_id:
                out.append(ids[i])
                i += 1
                continue
            length = image_token_runs(ids[i:], self.image_token_id)[0]
            out += [self.image_token_id] * (2 * length - 1)
            i += length
        return out

    def load_weights(self, weights):
        """vLLM copies each tensor into its own model at once (TRL unmerges right after)."""
        self.loaded += [(name, tensor.detach().clone()) for name, tensor in weights]

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        self.requests += prompts
        logprobs = [{token: SimpleNamespace(logprob=-1.0, rank=1)} for token in self.completion]
        return [
            SimpleNamespace(
                prompt_token_ids=self._processed(prompt["prompt_token_ids"]),
                outputs=[SimpleNamespace(token_ids=list(self.completion), logprobs=logprobs)],
            )
            for prompt in prompts
        ]

    def reset_prefix_cache(self):
        pass


class FakeServer:
    """TRL's `VLLMClient` as a `trl vllm-serve` would answer it; `tokens_per_image` is the server's processor."""

    def __init__(self, tokens_per_image, completion: list[int]):
        self.tokens_per_image, self.completion = tokens_per_image, completion
        self.generated: list[list[int]] = []
        self.received: list[str] = []

    def get_server_info(self):
        return {"model_config": {"logprobs_mode": "processed_logprobs"}}

    def image_features(self, images):
        return [
            None
            if not prompt_images
            else {
                "mm_placeholders": {
                    "image": [{"offset": 0, "length": self.tokens_per_image(i)} for i in prompt_images]
                }
            }
            for prompt_images in images
        ]

    def generate(self, prompts, features=None, n=1, **sampling):
        self.generated += prompts
        count = n * len(prompts)
        return {
            "prompt_ids": list(prompts),
            "completion_ids": [list(self.completion)] * count,
            "logprobs": [[[-1.0]] * len(self.completion)] * count,
            "logprob_token_ids": [[[t] for t in self.completion]] * count,
        }

    def update_named_params(self, metadata, params):
        self.received += [name for name, _ in params]

    def reset_prefix_cache(self):
        pass


@pytest.fixture(scope="module")
def dataset():
    return synthetic_train_rows(8, tasks="drawn")  # 64-px images


def _completion(processor) -> list[int]:
    tokenizer = processor.tokenizer
    return tokenizer("<think>count</think> \\boxed{3}", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]


def _tokens_per_image(processor, max_pixels=None):
    image_processor = processor.image_processor

    def count(image):
        kwargs = {"max_pixels": max_pixels} if max_pixels else {}
        grid = image_processor(images=[image], return_tensors="pt", **kwargs)["image_grid_thw"]
        return int(grid.prod() // image_processor.merge_size**2)

    return count


def vllm_trainer(tmp_path, model_dir, dataset, monkeypatch, engine, mode="colocate", **overrides):
    """A PAPOTrainer with use_vllm=True whose vLLM engine is `engine` (TRL's VLLMGeneration otherwise)."""

    def attach_engine(self):
        if self.mode == "colocate":
            self.llm = engine
        else:
            self.vllm_client = engine

    monkeypatch.setattr(VLLMGeneration, "_init_vllm", attach_engine)
    monkeypatch.setattr(vllm_generation, "SamplingParams", dict, raising=False)  # vllm's, absent here
    args = tiny_config(
        tmp_path, max_completion_length=16, max_steps=1, use_vllm=True, vllm_mode=mode, **overrides
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_LORA_TARGETS)
    return tiny_trainer(PAPOTrainer, model_dir, dataset, args, peft_config=lora)


def test_colocate_rollouts_pass_the_check_and_masked_logps_come_from_the_training_model(
    tmp_path, tiny_model_dirs, dataset, monkeypatch
):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    processor = load_processor(model_dir)
    engine = FakeLLM(processor.image_token_id, _completion(processor))
    trainer = vllm_trainer(tmp_path, model_dir, dataset, monkeypatch, engine)
    trainer.model.train()
    inputs = generation_inputs(dataset)
    forwards = []
    original_forward = trainer._get_per_token_logps_and_entropies

    def counting_forward(*args, **kwargs):
        forwards.append(kwargs["pixel_values"])
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", counting_forward)
    output = trainer._generate_and_score_completions(inputs)

    # vLLM got each rollout's prompt once, with the original image only (never the masked one) ...
    assert len(engine.requests) == len(inputs)
    sent = [image_digest(request["multi_modal_data"]["image"]) for request in engine.requests]
    assert sent == [image_digest(row["images"][0]) for row in inputs]
    # ... and the masked-image log-probs come from a forward of the training model on other pixels.
    assert output["masked_per_token_logps"].shape == output["completion_ids"].shape
    assert any(not torch.equal(pixels, output["pixel_values"]) for pixels in forwards)
    assert output["completion_ids"][0].tolist() == engine.completion
    # the first generation synced the weights: every LoRA layer's merged weight, none of the adapter tensors
    lora_names = set(trainer._lora_layers())
    assert lora_names and lora_names <= {name for name, _ in engine.loaded}
    assert not any("lora_" in name for name, _ in engine.loaded)
    assert trainer._metrics["train"]["vllm/verified_lora_weights"] == [float(len(lora_names))]


def test_colocate_reexpanded_placeholders_stop_the_run(tmp_path, tiny_model_dirs, dataset, monkeypatch):
    """TRL #6294: vLLM expands the (already expanded) image placeholders again."""
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    processor = load_processor(model_dir)
    engine = FakeLLM(processor.image_token_id, _completion(processor), expand_again=True)
    trainer = vllm_trainer(tmp_path, model_dir, dataset, monkeypatch, engine)
    trainer.model.train()
    with pytest.raises(
        VLLMPromptMismatch, match=r"rollout 0: vLLM ran a prompt of \d+ tokens with image-token runs"
    ):
        trainer._generate_and_score_completions(generation_inputs(dataset))


def test_checks_can_be_turned_off(tmp_path, tiny_model_dirs, dataset, monkeypatch):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    processor = load_processor(model_dir)
    engine = FakeLLM(processor.image_token_id, _completion(processor), expand_again=True)
    trainer = vllm_trainer(tmp_path, model_dir, dataset, monkeypatch, engine, vllm_checks=False)
    trainer.model.train()
    trainer._generate_and_score_completions(generation_inputs(dataset))  # corrupted, unchecked: no error
    assert trainer._vllm_calls == []


@pytest.mark.parametrize("server_max_pixels, fails", [(None, False), (1024, True)])
def test_server_image_tokens_must_match_the_prompt(
    tmp_path, tiny_model_dirs, dataset, monkeypatch, server_max_pixels, fails
):
    """TRL #6401: the server's image processor (other pixel bounds) makes another number of image tokens."""
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    processor = load_processor(model_dir)
    engine = FakeServer(_tokens_per_image(processor, server_max_pixels), _completion(processor))
    trainer = vllm_trainer(tmp_path, model_dir, dataset, monkeypatch, engine, mode="server")
    trainer.model.train()
    inputs = generation_inputs(dataset)
    if fails:
        with pytest.raises(VLLMPromptMismatch, match="prompt 0: the vLLM server processed its images into"):
            trainer._generate_and_score_completions(inputs)
        assert engine.generated == []  # stopped before generating
    else:
        output = trainer._generate_and_score_completions(inputs)
        assert len(engine.generated) == 2  # one request per prompt, G completions each
        assert "masked_per_token_logps" in output
        assert set(trainer._lora_layers()) <= set(engine.received)


def _train_lora(trainer):
    """Give every LoRA layer a non-zero ΔW, as training would (lora_B starts at zero)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_weight_sync_is_verified_and_a_missing_merge_is_caught(
    tmp_path, tiny_model_dirs, dataset, monkeypatch
):
    model_dir = tiny_model_dirs["qwen2_5_vl"]
    processor = load_processor(model_dir)
    engine = FakeLLM(processor.image_token_id, _completion(processor))
    trainer = vllm_trainer(tmp_path, model_dir, dataset, monkeypatch, engine)
    _train_lora(trainer)
    trainer.vllm_generation.sync_weights()  # TRL merges, sends W + ΔW, unmerges: verified
    lora = trainer._lora_layers()
    sent = dict(engine.loaded)
    name, layer = next(iter(lora.items()))
    base = layer.get_base_layer().weight
    assert not torch.allclose(sent[name], base)  # ΔW reached "vLLM" ...
    torch.testing.assert_close(sent[name], base + layer.get_delta_weight("default"))  # ... merged

    # A merge that silently does nothing (what a broken 4-bit or sharded merge amounts to) is caught.
    monkeypatch.setattr(trainer.vllm_generation.model, "merge_adapter", lambda *a, **k: None)
    monkeypatch.setattr(trainer.vllm_generation.model, "unmerge_adapter", lambda *a, **k: None)
    with pytest.raises(VLLMWeightSyncError, match=r"sent without their adapter merged.*differ from W \+ ΔW"):
        trainer.vllm_generation.sync_weights()


def test_qlora_with_vllm_is_refused_before_vllm_starts(tmp_path):
    class Linear4bit(torch.nn.Linear):
        pass

    args = PAPOConfig(output_dir=str(tmp_path), use_vllm=True, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="use_vllm with a 4-bit .*#4973"):
        PAPOTrainer(model=torch.nn.Sequential(Linear4bit(2, 2)), reward_funcs=[], args=args)


def test_trl_vllm_internals_we_wrap():
    """Contract with TRL 1.16's vLLM integration (see papo.trainer._install_vllm_checks)."""
    params = list(inspect.signature(VLLMGeneration.generate).parameters)
    assert params == ["self", "prompts", "images", "num_generations", "profiler"], params
    assert list(inspect.signature(VLLMGeneration.sync_weights).parameters) == ["self"]
    assert list(inspect.signature(VLLMGeneration._iter_named_params).parameters) == ["self"]
    assert list(inspect.signature(VLLMClient.image_features).parameters)[:2] == ["self", "images"]
    assert list(inspect.signature(VLLMClient.generate).parameters)[:3] == ["self", "prompts", "features"]
    # TRL sends vLLM the processor-expanded ids (`prompt_ids`) and discards vLLM's: the check compares them.
    source = inspect.getsource(vllm_generation.VLLMGeneration.generate)
    assert 'row = {"prompt_token_ids": ids}' in source and "output.prompt_token_ids" in source
