"""Attention from first principles: scores, masks, heads, and grouped-query attention.

A query asks "what am I looking for?", each key says "what do I contain?", each value is "what I hand over".
Scaled dot-product attention (Vaswani et al. 2017) turns that into three steps:

    scores  = q @ k^T / sqrt(D)          how relevant each key is to each query   [..., Tq, Tk]
    weights = softmax(scores, over keys)  a probability distribution per query     [..., Tq, Tk]
    out     = weights @ v                 a weighted average of the values         [..., Tq, Dv]

The 1/sqrt(D) keeps the scores' spread independent of the head size: a dot product of D independent unit-variance
terms has variance D, and softmax of large scores saturates to one-hot, which stops gradients.

A causal mask lets query i see keys j <= i only (plus the offset Tk - Tq when the queries are the *last* Tq
positions of a longer key sequence, as with a KV cache). Multi-head attention runs several attentions side by
side on slices of the model width; grouped-query attention (Ainslie et al. 2023) lets groups of query heads share
one key/value head, which shrinks the KV cache. The projection names (q_proj, k_proj, v_proj, o_proj) are the
ones transformers' Llama uses, so its weights load by name.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rope import apply_rope


def _check_tensor(x: object, name: str, min_rank: int = 2) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < min_rank:
        raise ValueError(f"{name} must have rank >= {min_rank} ([..., T, D]), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """Boolean [t_q, t_k] mask, True where query i may attend to key j: j <= i + (t_k - t_q).

    With t_q == t_k this is the lower triangle (diagonal included: a token sees itself). With t_q < t_k the
    queries are the last t_q positions of the key sequence, so query i sits at absolute position i + t_k - t_q.
    """
    if t_q > t_k:
        raise ValueError(f"causal attention needs at most as many queries as keys (the queries are the last "
                         f"positions of the key sequence), got Tq={t_q} > Tk={t_k}")
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                                 mask: Tensor | None = None,
                                 return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(D) + mask) v for q [..., Tq, D], k [..., Tk, D], v [..., Tk, Dv] -> [..., Tq, Dv].

    `mask` follows torch's convention: a bool tensor is True where attention is *allowed*; a float tensor is
    added to the scores (use -inf to forbid). It broadcasts against the scores [..., Tq, Tk]. `causal=True`
    also forbids key j for query i when j > i + (Tk - Tq). With return_weights=True, returns (out, weights).
    A query whose every key is masked gets NaN weights, as in torch: there is nothing to average.
    """
    q, k, v = _check_tensor(q, "q"), _check_tensor(k, "k"), _check_tensor(v, "v")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head size (last dim), got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions (dim -2), got {k.shape[-2]} "
                         f"and {v.shape[-2]}")
    t_q, t_k = q.shape[-2], k.shape[-2]

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [..., Tq, Tk]: one score per (query, key)
    if causal:
        scores = scores.masked_fill(~causal_mask(t_q, t_k, scores.device), float("-inf"))
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores "
                             f"{tuple(scores.shape)} ([..., Tq, Tk])") from None
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1)  # over the keys: each query's weights sum to 1
    out = weights @ v
    return (out, weights) if return_weights else out


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """[B, H_kv, T, D] -> [B, H_kv * n_rep, T, D], each kv head repeated n_rep times in a row.

    So query head h reads kv head h // n_rep: heads 0..n_rep-1 share kv head 0, and so on (transformers' order).
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"repeat_kv expects a tensor [B, H_kv, T, D], got {shape}")
    if isinstance(n_rep, bool) or not isinstance(n_rep, int) or n_rep < 1:
        raise ValueError(f"n_rep must be an int >= 1, got {n_rep!r}")
    if n_rep == 1:
        return x
    b, h_kv, t, d = x.shape
    # expand makes a view (no copy); reshape then lays the copies of each head next to each other
    return x[:, :, None].expand(b, h_kv, n_rep, t, d).reshape(b, h_kv * n_rep, t, d)


def grouped_query_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None,
                            return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Attention with H query heads sharing H_kv key/value heads: q [B, H, Tq, D], k/v [B, H_kv, Tk, D].

    H must be a multiple of H_kv; query head h uses kv head h // (H // H_kv). H_kv == H is plain multi-head
    attention, H_kv == 1 is multi-query attention. Returns [B, H, Tq, Dv] (and weights [B, H, Tq, Tk]).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(x, name)
        if x.ndim != 4:
            raise ValueError(f"{name} must be [B, heads, T, D] (rank 4), got shape {tuple(x.shape)}")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k and v must have the same batch and head count, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    n_heads, n_kv = q.shape[1], k.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"the number of query heads ({n_heads}) must be a multiple of the number of "
                         f"key/value heads ({n_kv})")
    n_rep = n_heads // n_kv
    return scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), causal=causal, mask=mask,
                                        return_weights=return_weights)


class MultiHeadAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention with optional rotary position embeddings.

    x [B, T, d_model] -> q, k, v projections split into heads -> (RoPE on q and k) -> attention per head ->
    heads concatenated -> o_proj. n_kv_heads=None means n_kv_heads = n_heads (plain multi-head attention).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False,
                 head_dim: int | None = None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}), "
                                 "or pass head_dim explicitly")
            head_dim = d_model // n_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def forward(self, x: Tensor, cos: Tensor | None = None, sin: Tensor | None = None, causal: bool = True,
                mask: Tensor | None = None, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x [B, T, d_model] -> [B, T, d_model]; (cos, sin) [T, head_dim] from `labkit.rope` apply RoPE.

        With return_weights=True also returns the attention weights [B, n_heads, T, T].
        """
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"MultiHeadAttention expects x [B, T, d_model={self.d_model}], got {shape}")
        if (cos is None) != (sin is None):
            raise ValueError("pass both cos and sin (RoPE) or neither")
        b, t, _ = x.shape
        # [B, T, H*D] -> [B, H, T, D]: each head attends independently over the T positions
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if return_weights:
            out, weights = grouped_query_attention(q, k, v, causal=causal, mask=mask, return_weights=True)
        elif mask is None:
            # torch's fused kernel computes the same thing (tests/test_attention.py checks) without storing the
            # [T, T] weights, which makes training faster; the weights path above is the readable one
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=self.n_kv_heads < self.n_heads)
        else:
            out = grouped_query_attention(q, k, v, causal=causal, mask=mask)
        out = self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
        return (out, weights) if return_weights else out


# ----------------------------------------------------------------------------------------------------------
# looking at the weights

def head_summary(weights: Tensor) -> dict[str, float]:
    """Where one head's attention goes, averaged over the queries of a [T, T] causal weight matrix: the share
    on the query itself, on the previous token, on the first token (when it is neither), and everywhere else."""
    if not isinstance(weights, Tensor) or weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"head_summary expects a square [T, T] weight matrix, got "
                         f"{tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__}")
    w = weights.double()
    t = w.shape[0]
    self_, prev = w.diagonal().mean(), (w.diagonal(-1).sum() / t if t > 1 else w.new_zeros(()))
    # the first token, from queries i >= 2 only: for i = 0 it is "self", for i = 1 it is "previous"
    first = w[2:, 0].sum() / t if t > 2 else w.new_zeros(())
    return {"self": float(self_), "previous": float(prev), "first": float(first),
            "other": float(1 - self_ - prev - first)}


def _heatmap_pngs(matrices: list[Tensor], labels: list[str], titles: list[str]) -> list[bytes]:
    """[T, T] weight matrices as PNG heatmaps (queries down, keys across).

    Drawing dozens of tick labels is most of matplotlib's work, so the axes are drawn once and only the heatmap
    and its title are drawn again for each matrix ("blitting"); PIL writes the PNGs.
    """
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    t = len(labels)
    size = 1.6 + 0.14 * t
    fig = Figure(figsize=(size + 0.8, size), dpi=72)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(False)
    image = ax.imshow(np.zeros((t, t)), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(t), labels, fontsize=8, family="monospace")
    ax.set_yticks(range(t), labels, fontsize=8, family="monospace")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title(max(titles, key=len), fontsize=9)
    fig.tight_layout()  # leaves room for the longest title
    ax.set_title("")
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    pngs = []
    for weights, title in zip(matrices, titles):
        canvas.restore_region(background)
        image.set_data(weights.numpy())
        ax.title.set_text(title)
        for artist in (image, ax.title, *ax.spines.values()):
            ax.draw_artist(artist)
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buffer, format="png")
        pngs.append(buffer.getvalue())
    return pngs


def attention_explorer(attention: list[Tensor], tokens: list[str]):
    """A widget to browse attention weights by layer and head: one precomputed PNG heatmap per (layer, head).

    attention: one [n_heads, T, T] tensor per layer (e.g. TinyGPT(..., return_attention=True) for one
    sequence); tokens: the T token strings. Layout: VBox([HBox([layer, head]), Stack (layers) of Stacks
    (heads) of VBox([Image, HTML summary])]). `jslink` ties the controls to the Stacks in the browser, so the
    static book responds without a kernel.
    """
    import html

    import ipywidgets as widgets

    from .viz import visible_token

    if not attention or not all(isinstance(a, Tensor) and a.ndim == 3 for a in attention):
        raise ValueError("attention must be a non-empty list of [n_heads, T, T] tensors, one per layer")
    n_heads, t, _ = attention[0].shape
    if any(tuple(a.shape) != (n_heads, t, t) for a in attention):
        raise ValueError(f"every layer's weights must have shape {(n_heads, t, t)}, got "
                         f"{[tuple(a.shape) for a in attention]}")
    if len(tokens) != t:
        raise ValueError(f"need one token per position: {t} positions, got {len(tokens)} tokens")
    labels = [visible_token(tok) for tok in tokens]

    matrices = [weights[head].detach().float().cpu() for weights in attention for head in range(n_heads)]
    names = [f"layer {layer}, head {head}" for layer in range(len(attention)) for head in range(n_heads)]
    pngs = iter(_heatmap_pngs(matrices, labels, names))
    per_layer = []
    for layer in range(len(attention)):
        views = []
        for head in range(n_heads):
            s = head_summary(matrices[layer * n_heads + head])
            summary = (f"<small>layer {layer}, head {head}: on average a query puts "
                       f"{s['self']:.0%} of its attention on itself, {s['previous']:.0%} on the previous token, "
                       f"{s['first']:.0%} on the first token and {s['other']:.0%} elsewhere.</small>")
            views.append(widgets.VBox([widgets.Image(value=next(pngs), format="png"), widgets.HTML(summary)]))
        per_layer.append(widgets.Stack(views, selected_index=0))
    heatmaps = widgets.Stack(per_layer, selected_index=0)
    layer_box = widgets.ToggleButtons(options=[(str(i), i) for i in range(len(attention))], index=0,
                                      description="layer", style={"button_width": "3em"})
    head_box = widgets.ToggleButtons(options=[(str(i), i) for i in range(n_heads)], index=0,
                                     description="head", style={"button_width": "3em"})
    widgets.jslink((layer_box, "index"), (heatmaps, "selected_index"))
    for by_head in per_layer:
        widgets.jslink((head_box, "index"), (by_head, "selected_index"))
    caption = widgets.HTML("<small>Text: <code>" + html.escape("".join(labels)) + "</code>. Row i shows where "
                           "the query at position i looks; the causal mask keeps everything above the diagonal "
                           "at zero.</small>")
    return widgets.VBox([widgets.HBox([layer_box, head_box]), caption, heatmaps])
