"""heatmap.html: one self-contained page (inline CSS, no scripts, no external assets).

Each completion token is one ``<span class="tok">`` coloured by the Monte Carlo success of the prefix
that ends with that token, over a strip coloured by the learned value at the same prefix, with every
estimator in its hover text; a trace's forking token can be outlined. Colours follow the
colour-blind-safe cividis scale.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...formatting import general
from ..scoring import EvalResult

NO_LABEL_COLOUR = "#e6e6e6"


#: matplotlib's cividis colour map (colour-blind safe, readable in greyscale) sampled at 0, 0.1, ..., 1
_CIVIDIS = (
    (0, 34, 78),
    (8, 51, 112),
    (53, 69, 108),
    (79, 87, 108),
    (102, 105, 112),
    (125, 124, 120),
    (148, 142, 119),
    (174, 163, 113),
    (200, 184, 102),
    (229, 207, 82),
    (254, 232, 56),
)


def value_colour(v: float) -> str:
    """Hex colour of a success probability on the cividis scale: dark blue (0) → grey → yellow (1)."""
    v = float(np.clip(v, 0.0, 1.0)) * (len(_CIVIDIS) - 1)
    i = min(int(v), len(_CIVIDIS) - 2)
    a, b, t = _CIVIDIS[i], _CIVIDIS[i + 1], v - i
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b))
    return f"#{r:02x}{g:02x}{bl:02x}"


def text_colour(v: float) -> str:
    """Black or white, whichever reads on `value_colour(v)`."""
    return "#000" if float(np.clip(v, 0.0, 1.0)) >= 0.5 else "#fff"


def token_texts(ids: Sequence[int], tokenizer: Any) -> list[str]:
    """The text each token adds to the decoded completion (``"".join`` gives the decoded text).

    Decoded as growing prefixes, not token by token: a byte-level BPE token is shown as its text
    (never as ``Ġ`` or ``Ċ``), and the tokens of one multi-byte character give it, whole, to the token
    that completes it (the others give ""; token-by-token decoding would show ``�``). Without a
    tokenizer, ``[id]``."""
    if tokenizer is None:
        return [f"[{i}]" for i in ids]
    ids = [int(i) for i in ids]
    out: list[str] = []
    prev = ""
    decoded = tokenizer.batch_decode(
        [ids[: k + 1] for k in range(len(ids))], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    for k, text in enumerate(decoded):
        if text.endswith("\ufffd") and k + 1 < len(ids):  # a character cut between tokens: wait for its end
            out.append("")
            continue
        n = len(prev) if text.startswith(prev) else len(_common_prefix(prev, text))
        out.append(text[n:])
        prev = text
    return out


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def render_heatmap(
    result: EvalResult, indices: list[int], tokenizer: Any = None, forks: dict[int, int] | None = None
) -> str:
    """Self-contained HTML: per trace, one ``<span class="tok">`` per completion token.

    Token i is coloured by the MC success of the prefix ending with it (position i + 1); tokens at
    unlabelled positions are light grey. Under each token a strip (``<span class="lv">``) is coloured
    by the learned value at the same position, so the learned model's disagreement with MC shows at a
    glance. Hover text (``title``) gives position, MC k/n with its CI and every estimator's value there
    (value models as probabilities, soft values in logit units). `forks` maps a trace index to the
    token index of its forking token, outlined and named above the trace.
    """
    forks = forks or {}
    info = result.estimator_info
    names = list(result.curves[0]) if result.curves else []
    # value models first (learned, learned_*), then the other estimators in their own order
    names = sorted(names, key=lambda n: (not n.startswith("learned"), names.index(n)))
    strip = "learned" if "learned" in names else None
    legend = "".join(
        f"<span style='background:{value_colour(v)};color:{text_colour(v)}'>{v:.1f}</span>"
        for v in np.linspace(0, 1, 6)
    )
    parts = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'><title>prefixvalue token heatmap</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.4}"
        ".trace{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}"
        ".prompt{color:#555;font-family:monospace;white-space:pre-wrap;margin-bottom:.4em}"
        ".cell{display:inline-block;vertical-align:top;margin:0 1px .5em 0;min-width:.5em}"
        ".tok{display:block;font-family:monospace;font-size:1.15em;white-space:pre;padding:2px 1px;"
        "border-radius:2px 2px 0 0}.tok:empty::before{content:'\\200b'}.lv{display:block;height:.6em;border-top:1px solid #fff;border-radius:0 0 2px 2px}"
        ".legend span{display:inline-block;width:3em;text-align:center;font-size:.8em}"
        ".meta{font-size:.85em;color:#444}.fork{outline:2px solid #d00;outline-offset:1px}</style></head><body>",
        "<h1>Token heatmap</h1>",
        "<p>Each token is coloured by the Monte Carlo success rate of the prefix that ends with that token "
        "(resampling continuations from there); grey tokens have no MC label. "
        + (
            "The strip under each token is coloured by the learned value P̂ at the same prefix, on the same "
            "scale: where the strip and the token differ, the value model disagrees with MC. "
            if strip
            else ""
        )
        + "Hover a token for its position, MC k/n and 95% CI, and every estimator's value there "
        "(probabilities; soft values in logit units). Colours: cividis, colour-blind safe.</p>",
        f"<p class='legend'>success probability: {legend} <span style='background:{NO_LABEL_COLOUR}'>none</span></p>",
    ]
    pos_col = result.prefixes["position"]
    for i in indices:
        t, cur = result.traces[i], result.curves[i]
        rows = {p: j for j, (tid, p) in enumerate(zip(result.prefixes["trace_id"], pos_col)) if tid == t.trace_id}
        texts = token_texts(t.completion_ids, tokenizer)
        head = f"trace {html.escape(t.trace_id)} · prompt {html.escape(t.prompt_id)} · outcome {t.outcome:g}"
        p0 = rows.get(0)
        if p0 is not None:
            head += (
                f" · bare prompt MC {general(result.prefixes['successes'][p0])}/{result.prefixes['n'][p0]}"
                f" = {result.prefixes['mc_mean'][p0]:.2f}"
            )
        fork = forks.get(i)
        if fork is not None and fork < len(texts):
            head += f" · <b>forking token {html.escape(repr(texts[fork]))} at token {fork}</b> (outlined)"
        prompt_text = t.prompt or (tokenizer.decode(t.prompt_ids) if tokenizer is not None else "")
        parts.append(
            f"<div class='trace' data-trace-id='{html.escape(t.trace_id)}'>"
            f"<div class='meta'>{head}</div><div class='prompt'>{html.escape(prompt_text)}</div><div>"
        )
        for k, text in enumerate(texts):
            p = k + 1
            j = rows.get(p)
            tip = [f"position {p}"]
            if j is not None:
                mc = result.prefixes["mc_mean"][j]
                colour, fg = value_colour(mc), text_colour(mc)
                tip.append(
                    f"MC {general(result.prefixes['successes'][j])}/{result.prefixes['n'][j]} = "
                    f"{mc:.3f} [{result.prefixes['ci_low'][j]:.2f}, {result.prefixes['ci_high'][j]:.2f}]"
                )
                mc_attr = f"{mc:.6g}"
            else:
                colour, fg, mc_attr = NO_LABEL_COLOUR, "#000", ""
                tip.append("MC: not labelled")
            for n in names:
                unit = "" if info.get(n, {}).get("probability", n.startswith("learned")) else " (logit units)"
                tip.append(f"{n} {float(cur[n][p]):.3f}{unit}")
            if text == "":
                tip.append("part of a character that the next token completes")
            shown = text.replace("\n", "↵")
            cls = "tok fork" if k == fork else "tok"
            strip_html = ""
            if strip:
                lv = float(cur[strip][p])
                strip_html = f"<span class='lv' style='background:{value_colour(lv)}' data-learned='{lv:.6g}'></span>"
            parts.append(
                f"<span class='cell' title='{html.escape('; '.join(tip), quote=True)}'>"
                f"<span class='{cls}' style='background:{colour};color:{fg}' data-position='{p}' data-mc='{mc_attr}'>"
                f"{html.escape(shown)}</span>{strip_html}</span>" + ("<br>" if "\n" in text else "")
            )
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "".join(parts)


__all__ = ["NO_LABEL_COLOUR", "render_heatmap", "text_colour", "token_texts", "value_colour"]
