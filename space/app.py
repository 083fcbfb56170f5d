"""PAPO Space: baseline vs PAPO answers side by side, each token coloured by how much it needed the image.

Run locally: `python space/app.py` (then open http://127.0.0.1:7860). With no environment variables it
compares the embedded warm start with its PAPO-G adapter, both shipped in papo/assets (papo.embedded).
Configuration (environment variables) is `space_config.py`, the models `space_models.py`, the upload checks
`space_uploads.py`, the comparison `space_comparison.py`, the example gallery `space_examples.py` and what
the components show of a comparison `space_render.py`; this file is the UI's layout and wiring only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import gradio as gr

sys.path.insert(0, str(Path(__file__).resolve().parent))  # space_*.py, when started from elsewhere

from space_config import use_shipped_wheel  # noqa: E402

# A Space built by `papo push space` runs the papo-hub wheel shipped next to this file (before papo is imported).
SHIPPED_PAPO = use_shipped_wheel()

from space_comparison import LABELS, SIDES, TOP_K, compare, remask  # noqa: E402
from space_config import SpaceConfig  # noqa: E402
from space_examples import Example, make_examples  # noqa: E402
from space_models import Models  # noqa: E402
from space_render import TOP_K_COLUMNS, render  # noqa: E402
from space_uploads import SpaceError  # noqa: E402

try:  # ZeroGPU: each request gets a GPU for the decorated function; elsewhere it is absent or a no-op
    import spaces
except ImportError:
    spaces = None

logger = logging.getLogger("papo.space")

INTRO = """\
# PAPO vs baseline: which answer tokens needed the image?

[PAPO](https://arxiv.org/abs/2507.06448) (Perception-Aware Policy Optimization) trains a vision-language
model to *use* the image: it maximises the KL divergence between the model's predictions given the image
and given a copy with random patches blacked out. Ask a question about an image: the **baseline** (base
model) and the **PAPO** model answer with the same seed, temperature and token budget, and every answer
token is coloured by **KL(π(·|image) ‖ π(·|masked image))** at that position: the darker, the more that
token depended on seeing the image.
"""


# What /compare and /new_mask return, in order (the session State is not part of the API).
OUTPUT_NAMES = ["info", "original", "masked", "legend", "legend_caption"]
OUTPUT_NAMES += [
    f"{side}_{part}" for side in SIDES for part in ("answer", "verdict", "heatmap", "kl_plot", "summary")
]
OUTPUT_NAMES += ["top_k", "details"]
STATE_TTL_S = 3600  # a session's last comparison (images included) is dropped after an hour ...
STATE_SESSIONS = 200  # ... and at most this many sessions keep one


def gpu(fn, duration: int):
    """`spaces.GPU(duration=...)` when the `spaces` package is installed (Hugging Face Spaces), else `fn`."""
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn


def image_upload(**kwargs) -> gr.Image:
    """A `gr.Image` (type="filepath") that passes the uploaded file's path on without decoding it.

    gr.Image would open the file itself and fail with a bare PIL error on a non-image file; the app
    checks the file instead (`space_uploads.load_image`), says what is wrong, and shrinks a huge image right
    after decoding. The override is set on the instance: subclassing a Gradio component would make
    Gradio write a .pyi stub next to this file at import time.
    """
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    decode = component.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return decode(payload)

    component.preprocess = preprocess
    return component


# --- the app -----------------------------------------------------------------------------------------


def build_demo(models: Models, examples: list[Example] | None = None) -> gr.Blocks:
    """The Blocks app around `models` (loaded or loading). `examples` default: `make_examples(cache)`."""
    config = models.config
    if examples is None:
        try:
            examples = make_examples(config.cache_dir / "examples")
        except Exception:  # the app works without its gallery
            logger.exception("building the example images failed")
            examples = []

    def on_compare(
        image, question, reference, seed, temperature, max_new_tokens, mask_ratio,
        progress=gr.Progress(),  # noqa: B008 (Gradio's way to ask for a progress tracker)
    ):  # fmt: skip
        start = time.monotonic()
        progress(0.05, desc="Generating both answers and their per-token KL ...")
        try:
            comparison = compare(
                models, image, question, reference, seed, temperature, max_new_tokens, mask_ratio,
                progress=lambda fraction, description: progress(fraction, desc=description),
            )  # fmt: skip
        except SpaceError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return render(comparison, time.monotonic() - start)

    def on_new_mask(comparison, mask_ratio, next_draw: bool):
        if comparison is None:
            if next_draw:
                raise gr.Error("Run a comparison first: a new mask re-scores the answers it produced.")
            return [gr.skip()] * len(outputs)
        start = time.monotonic()
        draw = comparison.settings.mask_draw + (1 if next_draw else 0)
        try:
            updated = remask(models, comparison, mask_ratio, draw)
        except SpaceError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return render(updated, time.monotonic() - start)

    def new_mask(comparison, mask_ratio):
        return on_new_mask(comparison, mask_ratio, True)

    def same_mask_new_ratio(comparison, mask_ratio):
        return on_new_mask(comparison, mask_ratio, False)

    def poll_status():
        done = models.state in ("ready", "failed")
        return models.status(), gr.Timer(active=not done)

    with gr.Blocks(title="PAPO: baseline vs PAPO, per-token perception KL") as demo:
        gr.Markdown(INTRO)
        model_status = gr.Markdown(models.status(), elem_id="model-status")
        timer = gr.Timer(1.0, active=models.state not in ("ready", "failed"))
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                image = image_upload(
                    label="Image",
                    sources=["upload", "clipboard"],
                    height=280,
                    elem_id="image-input",
                )
                question = gr.Textbox(
                    label="Question",
                    lines=2,
                    max_lines=6,
                    placeholder="Ask about the image, e.g. How many circles are there?",
                    elem_id="question",
                )
                reference = gr.Textbox(
                    label="Reference answer (optional: grades both extracted answers)", elem_id="reference"
                )
                with gr.Accordion("Generation and mask settings (shared by both models)", open=True):
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=2**31 - 1)
                        temperature = gr.Slider(
                            0.0, 2.0, value=1.0, step=0.05, label="Temperature (0 = greedy)"
                        )
                    with gr.Row():
                        max_new_tokens = gr.Slider(
                            1, config.max_new_tokens_limit, value=config.default_max_new_tokens, step=1,
                            label="Max new tokens",
                        )  # fmt: skip
                        mask_ratio = gr.Slider(
                            0.0, 1.0, value=0.6, step=0.05, label="Mask ratio (14-px patches)"
                        )
                compare_btn = gr.Button("Compare baseline vs PAPO", variant="primary", elem_id="compare")
                info = gr.Markdown(elem_id="run-info")
            with gr.Column(scale=3):
                with gr.Row():
                    original = gr.Image(
                        label="Image as given to the models", type="pil", format="png", interactive=False,
                        height=260, elem_id="original-image",
                    )  # fmt: skip
                    masked = gr.Image(
                        label="Masked copy", type="pil", format="png", interactive=False, height=260,
                        elem_id="masked-image",
                    )  # fmt: skip
                new_mask_btn = gr.Button("New mask (re-score the same answers)", elem_id="new-mask")
                if examples:
                    gr.Examples(
                        examples=[[e.image, e.question, e.reference] for e in examples],
                        inputs=[image, question, reference],
                        label=examples_label(examples),
                        examples_per_page=len(examples),
                        visible_columns=[0],  # a gallery of thumbnails; a click fills all three inputs
                        cache_examples=False,
                        elem_id="examples",
                    )
        gr.Markdown("## Answers, each token coloured by its perception KL")
        with gr.Row():
            legend_chips = gr.HighlightedText(
                label="Colour scale (KL, nats)", show_legend=False, interactive=False, elem_id="legend", scale=2,
                visible=False,
            )  # fmt: skip
            legend_caption = gr.Markdown(elem_id="legend-caption")
        panels = []
        with gr.Row(equal_height=False):
            for side in SIDES:
                with gr.Column():
                    name = (
                        "Baseline (base model)" if side == "baseline" else "PAPO (base model + PAPO adapter)"
                    )
                    panels += [
                        gr.Textbox(
                            label=f"{name}: answer", lines=4, max_lines=12, interactive=False,
                            elem_id=f"{side}-answer", buttons=["copy"],
                        ),
                        gr.Markdown(elem_id=f"{side}-verdict"),
                        gr.HighlightedText(
                            label=f"{LABELS[side]}: tokens coloured by KL (darker = needed the image more)",
                            show_legend=False, interactive=False, elem_id=f"{side}-heatmap",
                        ),
                        gr.BarPlot(
                            x="position", y="kl", tooltip=["position", "token", "kl"], x_title="token position",
                            y_title="KL (nats)", label=f"{LABELS[side]}: KL per token (hover for values)",
                            height=220, elem_id=f"{side}-kl-plot",
                        ),
                        gr.Markdown(elem_id=f"{side}-summary"),
                    ]  # fmt: skip
        top_k = gr.Dataframe(
            headers=TOP_K_COLUMNS, label=f"Top-{TOP_K} most image-dependent tokens per answer", interactive=False,
            elem_id="top-k",
        )  # fmt: skip
        with gr.Accordion(
            "Full result (JSON): tokens, token ids and per-token KL of both answers", open=False
        ):
            details = gr.JSON(elem_id="details")
        state = gr.State(None, time_to_live=STATE_TTL_S)  # the last comparison, for "New mask"
        outputs = [info, original, masked, legend_chips, legend_caption, *panels, top_k, details, state]
        assert len(outputs) == len(OUTPUT_NAMES) + 1

        inputs = [image, question, reference, seed, temperature, max_new_tokens, mask_ratio]
        compare_fn = gpu(on_compare, config.gpu_duration)
        compare_btn.click(compare_fn, inputs, outputs, api_name="compare", concurrency_id="models")
        question.submit(compare_fn, inputs, outputs, api_visibility="private", concurrency_id="models")
        new_mask_btn.click(
            gpu(new_mask, config.gpu_duration), [state, mask_ratio], outputs, api_name="new_mask",
            concurrency_id="models",
        )  # fmt: skip
        mask_ratio.release(
            gpu(same_mask_new_ratio, config.gpu_duration), [state, mask_ratio], outputs,
            api_visibility="private", concurrency_id="models", show_progress="minimal",
        )  # fmt: skip
        timer.tick(poll_status, None, [model_status, timer], api_visibility="private", concurrency_limit=None,
                   show_progress="hidden")  # fmt: skip
        demo.load(
            poll_status, None, [model_status, timer], api_visibility="private", concurrency_limit=None,
            show_progress="hidden",
        )  # fmt: skip
    return demo


def examples_label(examples: list[Example]) -> str:
    """The gallery's caption, by where its examples come from (`Example.source`)."""
    sources = {e.source.split(":")[0] for e in examples}
    if sources == {"eval"}:
        return (
            "Examples (click one): evaluation questions on which the two models' answers differed most "
            "(from the published eval predictions)"
        )
    if sources == {"bundled"}:
        return "Examples (click one): three drawn figures"
    return (
        "Examples (click one): held-out handwritten-digit questions (the first ones: the two models "
        "answer differently), then three drawn figures"
    )


def launch_kwargs(config: SpaceConfig) -> dict:
    return {
        "max_file_size": f"{config.max_file_mb}mb",
        # the gallery's images: drawn into the cache, or shipped next to the app by `papo push space`
        "allowed_paths": [
            str(config.cache_dir / "examples"),
            str(Path(__file__).resolve().parent / "examples"),
        ],
        "show_error": True,
        "state_session_capacity": STATE_SESSIONS,
    }


def queue(demo: gr.Blocks, config: SpaceConfig) -> gr.Blocks:
    """Requests wait in a bounded queue; `config.concurrency` run at once (the models allow one)."""
    return demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if SHIPPED_PAPO is not None:
        logger.info("papo-hub from the shipped wheel, extracted in %s", SHIPPED_PAPO)
    config = SpaceConfig.from_env()
    models = Models(config)
    zero_gpu = spaces is not None and os.environ.get("SPACES_ZERO_GPU")
    if zero_gpu:
        models.load(quiet=True)  # ZeroGPU wants the weights placed at startup, in the main process
    # Built before the background load starts: both import transformers/datasets, which must not be
    # imported from two threads at once.
    demo = queue(build_demo(models), config)
    if not zero_gpu:
        models.load_in_background()  # the page is up at once; its status line follows the loading
    demo.launch(**launch_kwargs(config))


if __name__ == "__main__":
    main()
