"""An ipywidgets explorer of next-token distributions: pick a context, n and the smoothing parameter.

It has to work twice: in a live notebook and in the static book, which has no kernel. So every chart the
controls can reach is precomputed as plain HTML and placed in nested `Stack`s (preset x n x k), and
`jslink` ties each control to the matching Stacks' `selected_index`: the browser switches charts by itself.
Only the "your own context" box needs Python (it recomputes on `.observe`), and it says so.
"""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np

from .corpus import Vocab, char_tokens
from .ngram import SMOOTHINGS, NgramCounts, NgramLM
from .viz import html_bar_chart, visible_token


def _model(counts: NgramCounts, n: int, smoothing: str, param: float) -> NgramLM:
    # One slider drives whichever parameter the smoothing has: add-k's k, or Kneser-Ney's discount D.
    if smoothing == "kneser-ney":
        return NgramLM(counts, n, smoothing, discount=param)
    return NgramLM(counts, n, smoothing, k=param)


def _chart(counts: NgramCounts, vocab: Vocab, tokens: list[str], n: int, smoothing: str, param: float,
           top: int, joiner: str) -> str:
    """The top-`top` next tokens after the context `tokens`, as an HTML bar chart."""
    used = tokens[len(tokens) - (n - 1):] if n > 1 else []
    shown = joiner.join(visible_token(t) for t in used)
    pname = {"add-k": "k", "kneser-ney": "D", "mle": None}[smoothing]
    setting = f"n={n}, {smoothing}" + (f", {pname}={param:g}" if pname else "")
    title = (f'P(next | "{shown}")' if n > 1 else "P(next)  (n=1 ignores the context)") + f"   [{setting}]"
    try:
        p = _model(counts, n, smoothing, param).distribution(vocab.encode(used))
    except ValueError:  # MLE after a context never seen in training: 0/0
        return (f'<div style="max-width:34em;font-size:13px"><b>{html.escape(title)}</b><br>'
                f'The context <code>{html.escape(shown)}</code> never occurs in training, so the MLE is undefined '
                "(0/0): every next token is unseen. Smoothing fixes this.</div>")
    best = np.argsort(-p, kind="stable")[:top]  # stable: ties go to the lower id, so charts are reproducible
    return html_bar_chart([vocab.itos[i] for i in best], p[best], title=title, max_value=None)


def ngram_explorer(counts: NgramCounts, vocab: Vocab, presets: Sequence[str],
                   ns: Sequence[int] = (1, 2, 3, 4, 5), ks: Sequence[float] = (0.01, 0.1, 1.0),
                   smoothing: str = "add-k", top: int = 10,
                   tokenize: Callable[[str], list[str]] = char_tokens) -> widgets.Widget:
    """A widget showing P(next token | context) for preset contexts, n in `ns` and parameter in `ks`.

    `ks` is add-k's k, or Kneser-Ney's discount D when smoothing="kneser-ney" (ignored for "mle").
    Layout (a VBox): [controls HBox(Dropdown, n slider, k slider), charts Stack (presets) of Stacks (n) of
    Stacks (k) of HTML, live Text box, its note (HTML), live HTML chart].
    """
    if not isinstance(counts, NgramCounts):
        raise TypeError(f"counts must be NgramCounts (from fit_counts), got {type(counts).__name__}")
    if not isinstance(vocab, Vocab) or len(vocab) != counts.vocab_size:
        raise ValueError(f"vocab must be the Vocab the counts were built with ({counts.vocab_size} tokens)")
    presets = list(presets)
    if not presets or not all(isinstance(p, str) for p in presets):
        raise ValueError("presets must be a non-empty list of context strings")
    ns = [int(n) for n in ns]
    if not ns or any(not 1 <= n <= counts.max_order for n in ns) or len(set(ns)) != len(ns):
        raise ValueError(f"ns must be distinct orders in [1, {counts.max_order}] (the counts' max_order), got {ns}")
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")
    ks = [0.0] if smoothing == "mle" else [float(k) for k in ks]
    if not ks or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be a non-empty list of distinct values, got {ks}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")
    for k in ks:  # fail here, with the model's own message, rather than half-way through building
        _model(counts, ns[0], smoothing, k)
    joiner = "" if tokenize is char_tokens else " "

    n0 = ns.index(3) if 3 in ns else 0
    pname = {"add-k": "k", "kneser-ney": "D", "mle": "k"}[smoothing]
    preset_box = widgets.Dropdown(options=[(repr(p), i) for i, p in enumerate(presets)], index=0,
                                  description="context")
    n_slider = widgets.SelectionSlider(options=[(str(n), n) for n in ns], index=n0, description="n")
    k_slider = widgets.SelectionSlider(options=[(f"{k:g}", k) for k in ks], index=0, description=pname,
                                       disabled=smoothing == "mle")

    # The precomputed charts: charts.children[preset].children[n index].children[k index].
    per_preset = []
    for text in presets:
        tokens = tokenize(text)
        per_n = [widgets.Stack([widgets.HTML(_chart(counts, vocab, tokens, n, smoothing, k, top, joiner))
                                for k in ks], selected_index=0) for n in ns]
        per_preset.append(widgets.Stack(per_n, selected_index=n0))
    charts = widgets.Stack(per_preset, selected_index=0)
    # jslink runs in the browser, so the static page responds without a kernel.
    widgets.jslink((preset_box, "index"), (charts, "selected_index"))
    for by_n in per_preset:
        widgets.jslink((n_slider, "index"), (by_n, "selected_index"))
        for by_k in by_n.children:
            widgets.jslink((k_slider, "index"), (by_k, "selected_index"))

    # "Your own context": recomputed in Python, so it only updates with a running kernel.
    own = widgets.Text(value=presets[0], description="your own", placeholder="type a context")
    note = widgets.HTML("<small>↑ type a context: this chart is computed by the Python kernel, "
                        "so it updates only in a running notebook, not in the static book</small>")
    live = widgets.HTML()

    def update(_change=None) -> None:
        live.value = _chart(counts, vocab, tokenize(own.value), n_slider.value, smoothing, k_slider.value,
                            top, joiner)

    update()
    for control in (own, n_slider, k_slider):
        control.observe(update, names="value")
    return widgets.VBox([widgets.HBox([preset_box, n_slider, k_slider]), charts, own, note, live])
