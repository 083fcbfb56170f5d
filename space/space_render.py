"""Rendering: a `Comparison` as the values the app's components show (heat maps, KL bar charts, verdicts,
summaries, the top-k table), in the order of app.py's outputs.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd
from space_comparison import LABELS, SIDES, TOP_K, Comparison, displayed

TOP_K_COLUMNS = ["answer", "rank", "token", "position", "KL (nats)"]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def heat_map(comparison: Comparison, side: str) -> list[tuple[str, float]]:
    """(token text, KL / scale) pairs for gr.HighlightedText's score mode (0 = white, 1 = full red)."""
    answer, scale = comparison.answers[side], comparison.kl_scale
    return [
        (displayed(piece), round(kl / scale, 4) if scale > 0 else 0.0)
        for piece, kl in zip(answer.tokens, answer.kl, strict=True)
    ]


def legend(comparison: Comparison) -> tuple[list[tuple[str, float]], str]:
    """A legend drawn with the heat map's own colours, and its caption."""
    scale = comparison.kl_scale
    stops = [0.0, 0.25, 0.5, 0.75, 1.0]
    chips = [(f" {_fmt(s * scale)} ", s) for s in stops]
    chips[-1] = (f" {_fmt(scale)} nats (max) ", 1.0)
    caption = (
        f"Colour = per-token KL ÷ **{_fmt(scale)} nats**, the largest value in either answer (one scale for "
        "both). The bar charts give each token's exact KL on hover."
        if scale > 0
        else "All KL values are 0: with mask ratio 0 the masked image equals the original."
    )
    return chips, caption


def kl_frame(comparison: Comparison, side: str) -> pd.DataFrame:
    answer = comparison.answers[side]
    return pd.DataFrame(
        {
            "position": list(range(len(answer.kl))),
            "token": [answer.label(i) for i in range(len(answer.tokens))],
            "kl": answer.kl,
        }
    )


def verdict(comparison: Comparison, side: str) -> str:
    answer = comparison.answers[side]
    if answer.extracted is None:
        text = "Extracted answer: *none* (no `\\boxed{}` in the answer)"
    else:
        text = f"Extracted answer: `{answer.extracted}`"
    if comparison.reference is None:
        return text + " · no reference given"
    mark = "✓ **correct**" if answer.correct else "✗ **incorrect**"
    return f"{text} · {mark} (reference `{comparison.reference}`)"


def summary_text(comparison: Comparison, side: str) -> str:
    s = comparison.answers[side].summary()
    if not s["n_tokens"]:
        return "No tokens generated."
    top = s["top_tokens"][0]
    return (
        f"Mean KL **{_fmt(s['mean_kl'])}** nats/token over {s['n_tokens']} tokens · max **{_fmt(s['max_kl'])}** "
        f"(`{top['token']}` at position {top['position']})"
        + (
            f" · mean visual dependency d_t **{_fmt(s['mean_dependency'])}** (the sampled-token k3 VPPO/PGPO act on)"
            if comparison.answers[side].dependency
            else ""
        )
    )


def top_k_frame(comparison: Comparison) -> pd.DataFrame:
    rows = []
    for side in SIDES:
        for rank, item in enumerate(comparison.answers[side].summary(TOP_K)["top_tokens"], start=1):
            rows.append([LABELS[side], rank, item["token"], item["position"], round(item["kl"], 6)])
    return pd.DataFrame(rows, columns=TOP_K_COLUMNS)


def run_info(comparison: Comparison, seconds: float) -> str:
    s = comparison.settings
    base, papo = (comparison.answers[side].summary()["mean_kl"] for side in SIDES)
    lines = [
        f"**Done in {seconds:.1f} s.** Seed {s.seed}, temperature {s.temperature:g}, up to {s.max_new_tokens} new "
        f"tokens; mask ratio {s.mask_ratio:g}, mask draw {s.mask_draw} (mask seed {s.mask_seed}).",
        f"Mean KL: baseline **{_fmt(base)}**, PAPO **{_fmt(papo)}** nats/token.",
    ]
    lines += [f"**Note:** {note}" for note in comparison.notes]
    return "\n\n".join(lines)


def render(comparison: Comparison, seconds: float) -> list:
    """The values of app.build_demo's outputs, in order (app.OUTPUT_NAMES, then the session State)."""
    scale = comparison.kl_scale
    chips, caption = legend(comparison)
    values = [
        run_info(comparison, seconds),
        comparison.image,
        gr.Image(
            value=comparison.masked_image,
            label=f"Masked copy (ratio {comparison.settings.mask_ratio:g}, mask seed {comparison.settings.mask_seed})",
        ),
        gr.HighlightedText(value=chips, visible=True),
        caption,
    ]
    for side in SIDES:
        values += [
            comparison.answers[side].text,
            verdict(comparison, side),
            heat_map(comparison, side),
            gr.BarPlot(value=kl_frame(comparison, side), y_lim=[0, scale * 1.05 if scale > 0 else 1.0]),
            summary_text(comparison, side),
        ]
    values += [top_k_frame(comparison), comparison.to_json(), comparison]
    return values
