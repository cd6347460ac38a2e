"""How many key/value heads? MHA, GQA and MQA, and converting a model from one to another without training.

Every query head needs keys and values to read, but they need not be its own. With H query heads and H_kv
key/value heads, query head h reads kv head h // (H / H_kv):

    MHA  (Vaswani et al. 2017)   H_kv = H   every query head has its own k, v       cache 2 * H * D per token
    GQA  (Ainslie et al. 2023)   1 < H_kv < H   groups of H / H_kv query heads share   cache 2 * H_kv * D
    MQA  (Shazeer 2019)          H_kv = 1   all query heads share one k, v           cache 2 * D

The cache is what decoding reads every step, so fewer kv heads means less memory and less traffic. The
attention itself is chapter 3's `labkit.attention.grouped_query_attention` (MHA and MQA are its two ends).

    kv_head_of_query   the query head -> kv head map: [0, 0, 0, 1, 1, 1, 2, 2, 2] for SmolLM2 (9 -> 3)
    pool_kv_heads      mean-pool the rows of a k_proj / v_proj weight, head by head, into fewer heads
    convert_kv_heads   a labkit Llama with another number of kv heads: pooled (fewer) or repeated (more)
    share_except_attention  a new Llama sharing every weight of another except the attention modules
    cache_table        bytes per token and at N tokens of the KV-cache for MHA, GQA, MQA and MLA latents
    perplexity, heldout_windows   perplexity on a batch of windows of the course corpus (held-out or training)
    window_losses, loss_spread    the loss of each window, and its mean with a standard error (or a paired
                                  difference between two models), so a difference can be read against noise
    plot_head_sharing, kv_heads_explorer   the head-sharing figure and a kernel-free widget of the variants

Ainslie et al. turn a multi-head checkpoint into a GQA/MQA one by mean-pooling the key and value heads of each
group, then train briefly ("uptraining"). `convert_kv_heads` does the first step only. Why pooling the weights
is the right thing: k_proj's output rows come in H_kv blocks of D rows, one block per kv head, so averaging the
blocks of a group averages that group's keys. RoPE is applied after the projection, and rotating is linear,
so rotate(mean of keys) = mean of rotated keys: pooling the weights pools the keys the attention really uses.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from .kvcache import cache_bytes
from .llama import Llama, LlamaAttention, LlamaBlock, LlamaConfig


def _check_int(value: object, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def kv_head_of_query(n_heads: int, n_kv_heads: int) -> list[int]:
    """For each of the n_heads query heads, the kv head it reads: head h reads h // (n_heads // n_kv_heads).

    Consecutive query heads form a group (transformers' order, the one `labkit.attention.repeat_kv` builds)."""
    _check_int(n_heads, "n_heads")
    _check_int(n_kv_heads, "n_kv_heads")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads}): "
                         "every kv head serves the same number of query heads")
    group = n_heads // n_kv_heads
    return [h // group for h in range(n_heads)]


def pool_kv_heads(weight: torch.Tensor, n_kv_heads: int, n_groups: int) -> torch.Tensor:
    """Mean-pool a k_proj or v_proj weight [n_kv_heads * D, dim] into [n_groups * D, dim].

    Rows h*D .. (h+1)*D - 1 produce kv head h. New head g is the mean of the old heads
    g*s .. (g+1)*s - 1 with s = n_kv_heads // n_groups: consecutive heads, because consecutive query heads
    share a kv head, so new group g holds exactly the query heads of old heads g*s .. (g+1)*s - 1."""
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 2-D tensor [n_kv_heads * head_dim, dim], got {shape}")
    _check_int(n_kv_heads, "n_kv_heads")
    _check_int(n_groups, "n_groups")
    if weight.shape[0] % n_kv_heads:
        raise ValueError(f"weight has {weight.shape[0]} rows, not a multiple of n_kv_heads = {n_kv_heads}")
    if n_kv_heads % n_groups:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must be a multiple of n_groups ({n_groups}) to pool "
                         "whole heads into equal groups")
    head_dim = weight.shape[0] // n_kv_heads
    # [groups, heads per group, D, dim] -> average over the heads of each group
    return weight.reshape(n_groups, n_kv_heads // n_groups, head_dim, -1).mean(dim=1).reshape(n_groups * head_dim, -1)


def _repeat_kv_heads(weight: torch.Tensor, n_kv_heads: int, n_new: int) -> torch.Tensor:
    """[n_kv * D, dim] -> [n_new * D, dim], each head copied n_new // n_kv times in a row (exact: MHA from GQA)."""
    head_dim = weight.shape[0] // n_kv_heads
    return weight.reshape(n_kv_heads, 1, head_dim, -1).expand(-1, n_new // n_kv_heads, -1, -1).reshape(
        n_new * head_dim, -1)


def share_except_attention(model: Llama, cfg: LlamaConfig,
                           make_attention: Callable[[int, LlamaAttention], nn.Module]) -> Llama:
    """A new Llama with config `cfg` that SHARES every module of `model` (embedding, norms, MLPs: no copy)
    except each block's attention, which is `make_attention(layer_index, old_attention)`."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    with torch.device("meta"):  # the skeleton holds no memory: every part is replaced below
        new = Llama(cfg)
    new.embed_tokens, new.norm, new.lm_head = model.embed_tokens, model.norm, model.lm_head
    for i, (old, block) in enumerate(zip(model.layers, new.layers)):
        block: LlamaBlock
        block.input_layernorm, block.post_attention_layernorm = old.input_layernorm, old.post_attention_layernorm
        block.mlp = old.mlp
        block.self_attn = make_attention(i, old.self_attn)
    return new.train(model.training)


def convert_kv_heads(model: Llama, n_kv_heads: int,
                     pool: Callable[[torch.Tensor, int, int], torch.Tensor] = pool_kv_heads) -> Llama:
    """SmolLM2 with `n_kv_heads` key/value heads instead of its 3, without training.

    Fewer heads (n_kv_heads divides the model's): each group's k_proj and v_proj rows are mean-pooled with
    `pool(weight, old_n_kv_heads, n_kv_heads)` (Ainslie et al. 2023's initialisation), e.g. 1 gives MQA.
    More heads (a multiple of the model's, up to n_heads): heads are copied, which changes nothing (9 gives MHA).
    Everything else (queries, output projection, MLPs, embeddings) is shared with `model`, not copied."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    cfg = model.cfg
    _check_int(n_kv_heads, "n_kv_heads")
    old = cfg.n_kv_heads
    if cfg.n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads must divide the {cfg.n_heads} query heads, got {n_kv_heads}")
    if old % n_kv_heads and n_kv_heads % old:
        raise ValueError(f"n_kv_heads must divide the model's {old} kv heads (to pool) or be a multiple of them "
                         f"(to copy), got {n_kv_heads}")
    new_cfg = replace(cfg, n_kv_heads=n_kv_heads)  # LlamaConfig is frozen: a new one, same everything else

    def make_attention(_: int, attn: LlamaAttention) -> LlamaAttention:
        with torch.device("meta"):
            new = LlamaAttention(cfg.dim, cfg.n_heads, n_kv_heads)
        new.q_proj, new.o_proj = attn.q_proj, attn.o_proj
        for name in ("k_proj", "v_proj"):
            w = getattr(attn, name).weight.detach()
            w = pool(w, old, n_kv_heads) if n_kv_heads <= old else _repeat_kv_heads(w, old, n_kv_heads)
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != (n_kv_heads * cfg.head_dim, cfg.dim):
                got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
                raise ValueError(f"pooling {name} should give a [{n_kv_heads * cfg.head_dim}, {cfg.dim}] weight, "
                                 f"got {got}")
            linear = nn.Linear(cfg.dim, n_kv_heads * cfg.head_dim, bias=False)
            linear.weight = nn.Parameter(w.to(torch.float32).contiguous(), requires_grad=False)
            setattr(new, name, linear)
        return new

    return share_except_attention(model, new_cfg, make_attention)


def cache_table(cfg: LlamaConfig = LlamaConfig(), latent_ranks: Sequence[int] = (), tokens: int = 8192,
                bytes_per_value: int = 2, rope_dim: int = 0) -> list[dict]:
    """The KV-cache of `cfg`'s shape as MHA, GQA (the config's own kv heads), MQA, and an MLA latent per rank.

    Per token and layer MHA/GQA/MQA store 2 * H_kv * D numbers; an MLA latent stores r (plus `rope_dim` for
    DeepSeek-V2's decoupled RoPE key, shared by all heads). Rows: variant, kv_heads, per_layer (numbers per
    token per layer), bytes_per_token (all layers), bytes_at_tokens, share (of MHA's)."""
    if not isinstance(cfg, LlamaConfig):
        raise TypeError(f"cfg must be a LlamaConfig, got {type(cfg).__name__}")
    _check_int(tokens, "tokens")
    _check_int(bytes_per_value, "bytes_per_value")
    _check_int(rope_dim, "rope_dim", low=0)
    L, D = cfg.n_layers, cfg.head_dim
    rows = []
    heads = {"MHA": cfg.n_heads, "GQA": cfg.n_kv_heads, "MQA": 1}
    for name, h in heads.items():
        if name == "GQA" and h in (1, cfg.n_heads):
            continue  # the config is MHA or MQA itself
        per_token = cache_bytes(L, h, D, 1, bytes_per_value)
        rows.append({"variant": f"{name} ({h} kv head{'s' * (h > 1)})", "kv_heads": h, "per_layer": 2 * h * D,
                     "bytes_per_token": per_token, "bytes_at_tokens": cache_bytes(L, h, D, tokens, bytes_per_value)})
    full = 2 * cfg.n_kv_heads * D
    for r in latent_ranks:
        _check_int(r, "latent rank")
        if r > full:
            raise ValueError(f"a latent rank above 2 * n_kv_heads * head_dim = {full} stores more than GQA itself, "
                             f"got {r}")
        per_layer = r + rope_dim
        rows.append({"variant": f"MLA latent r={r}" + (f" + RoPE key {rope_dim}" if rope_dim else ""),
                     "kv_heads": None, "per_layer": per_layer, "bytes_per_token": L * per_layer * bytes_per_value,
                     "bytes_at_tokens": L * per_layer * bytes_per_value * tokens})
    mha = rows[0]["bytes_per_token"]
    for row in rows:
        row["share"] = row["bytes_per_token"] / mha
    return rows


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor) -> float:
    """exp(mean next-token loss) over a batch of independent token windows [B, T] (each predicts ids[:, 1:])."""
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.shape[1] < 2:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise ValueError(f"windows must be a token-id tensor [batch, T] with T >= 2, got {shape}")
    logits = model(windows[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), windows[:, 1:].reshape(-1))
    return math.exp(float(loss))


@torch.no_grad()
def window_losses(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """The mean next-token loss (nats, float64) of each window [B, T]: `perplexity` is exp of their mean (the
    windows have equal length), and their spread says how much that perplexity depends on which text was read."""
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.shape[1] < 2:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise ValueError(f"windows must be a token-id tensor [batch, T] with T >= 2, got {shape}")
    logits = model(windows[:, :-1]).double()
    loss = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")  # [B, T - 1]
    return loss.mean(dim=1)


def loss_spread(losses: Sequence[float] | torch.Tensor, baseline: Sequence[float] | torch.Tensor | None = None
                ) -> tuple[float, float]:
    """(mean, standard error of the mean) of per-window losses, from at least two windows.

    With `baseline` (the same windows scored by another model) it is the mean and standard error of the paired
    differences losses - baseline. Pairing cancels what the two models share (a hard window is hard for both),
    so it resolves differences far smaller than the spread of either model's own losses. The standard error
    treats windows as independent samples; consecutive windows of one text are not quite, so read it as a
    lower bound on the uncertainty."""
    x = torch.as_tensor(losses, dtype=torch.float64)
    if x.ndim != 1 or x.numel() < 2:
        raise ValueError(f"losses must be a 1-D sequence of at least 2 per-window losses, got shape {tuple(x.shape)}")
    if baseline is not None:
        b = torch.as_tensor(baseline, dtype=torch.float64)
        if b.shape != x.shape:
            raise ValueError(f"baseline must score the same windows: shape {tuple(x.shape)}, got {tuple(b.shape)}")
        x = x - b
    return float(x.mean()), float(x.std(correction=1) / math.sqrt(x.numel()))


def heldout_windows(tokenizer, n_windows: int = 4, length: int = 257, split: str = "heldout") -> torch.Tensor:
    """The first n_windows * length tokens of the course corpus's held-out (or training) text, as [n_windows,
    length] windows for `perplexity`. Training text is for fitting (calibration), held-out text for scoring."""
    from .corpus import load_corpus

    _check_int(n_windows, "n_windows")
    _check_int(length, "length", low=2)
    if split not in ("heldout", "train"):
        raise ValueError(f"split must be 'heldout' or 'train', got {split!r}")
    corpus = load_corpus()
    text = corpus.heldout if split == "heldout" else corpus.train
    # the corpus is ~465k characters; a generous slice holds far more than the tokens asked for
    ids = tokenizer(text[: 8 * n_windows * length], return_tensors="pt")["input_ids"][0]
    if ids.numel() < n_windows * length:
        raise ValueError(f"the {split} text has {ids.numel()} tokens, fewer than {n_windows} x {length}")
    return ids[: n_windows * length].reshape(n_windows, length)


# ----------------------------------------------------------------------------------------------------------
# pictures

def plot_head_sharing(n_heads: int = 9, kv_heads: Sequence[int] = (9, 3, 1), latent_rank: int | None = 128):
    """A matplotlib figure: for each kv-head count, the query heads (top) linked to the kv head they read
    (bottom); with `latent_rank`, one more panel where every kv head is rebuilt from one cached latent (MLA)."""
    import matplotlib.pyplot as plt

    panels = [(h, None) for h in kv_heads] + ([(n_heads, latent_rank)] if latent_rank else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    axes = [axes] if len(panels) == 1 else list(axes)
    names = {n_heads: "MHA", 1: "MQA"}
    for ax, (h_kv, rank) in zip(axes, panels):
        groups = kv_head_of_query(n_heads, h_kv)
        colors = plt.cm.tab10(torch.linspace(0, 1, 10).numpy())
        xs_kv = [(g + 0.5) * n_heads / h_kv - 0.5 for g in range(h_kv)]
        for q, g in enumerate(groups):
            ax.plot([q, xs_kv[g]], [2, 1], color=colors[g % 10], lw=1.2)
            ax.add_patch(plt.Rectangle((q - 0.35, 1.95), 0.7, 0.35, color="#dddddd", ec="black", lw=0.5))
        for g, x in enumerate(xs_kv):
            ax.add_patch(plt.Rectangle((x - 0.4, 0.65), 0.8, 0.35, color=colors[g % 10], ec="black", lw=0.5,
                                       alpha=0.3 if rank else 0.9))
        if rank:
            for x in xs_kv:
                ax.plot([x, (n_heads - 1) / 2], [0.65, -0.05], color="gray", lw=0.6, ls="--")
            ax.add_patch(plt.Rectangle((n_heads / 2 - 2, -0.45), 3, 0.4, color="tab:purple", ec="black", lw=0.5))
            ax.text((n_heads - 1) / 2, -0.25, f"latent c ({rank})", ha="center", va="center", color="white",
                    fontsize=8)
            title, cached = "MLA: k, v rebuilt from a latent", f"cached: c, {rank} per layer"
        else:
            title = f"{names.get(h_kv, 'GQA')}: {h_kv} kv head{'s' * (h_kv > 1)}"
            cached = f"cached: 2 x {h_kv} x D per layer"
        ax.text(n_heads / 2 - 0.5, 2.5, "query heads", ha="center", fontsize=8)
        if not rank:
            ax.text(n_heads / 2 - 0.5, 0.45, "k, v heads", ha="center", va="top", fontsize=8)
        ax.set_title(f"{title}\n{cached}", fontsize=9)
        ax.set_xlim(-1, n_heads)
        ax.set_ylim(-0.6, 2.7)
        ax.axis("off")
    fig.tight_layout()
    return fig


def _html_heads(n_heads: int, n_kv_heads: int | None, rank: int | None) -> str:
    """A small HTML diagram: query heads coloured by the kv head they read (or the latent they all share)."""
    palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
    groups = kv_head_of_query(n_heads, n_kv_heads or n_heads)

    def box(text, color):
        return (f"<span style='display:inline-block;width:2.2em;margin:2px;padding:2px;text-align:center;"
                f"background:{color};color:white;border-radius:3px;font-size:80%'>{text}</span>")

    row_q = "".join(box(f"q{h}", palette[g % 9]) for h, g in enumerate(groups))
    row_kv = "".join(box(f"kv{g}", palette[g % 9]) for g in range(n_kv_heads or n_heads))
    html = f"<div>{row_q}</div><div>{row_kv}</div>"
    if rank:
        html += f"<div>{box('c', '#6a3d9a')} <small>the cached latent, {rank} numbers, rebuilds every kv head</small></div>"
    return html


def kv_heads_explorer(rows: Sequence[dict], n_heads: int = 9):
    """An ipywidgets explorer: pick a variant, see which heads share what, its cache and its perplexity.

    `rows`: dicts with variant, kv_heads (or None for a latent), rank (or None), bytes_per_token,
    bytes_at_tokens, tokens, perplexity (or None). Every view is precomputed HTML in a `Stack` switched by
    `jslink`, so the published book responds without a kernel."""
    import ipywidgets as widgets

    if not rows:
        raise ValueError("rows must hold at least one variant")
    views = []
    for row in rows:
        ppl = "not measured" if row.get("perplexity") is None else f"{row['perplexity']:.4g}"
        views.append(widgets.HTML(
            _html_heads(n_heads, row.get("kv_heads"), row.get("rank"))
            + f"<p><b>{row['variant']}</b>: {row['bytes_per_token']:,} bytes per token; "
              f"{row['bytes_at_tokens'] / 2**20:.1f} MiB at {row['tokens']:,} tokens; "
              f"held-out perplexity {ppl}</p>"))
    pick = widgets.Dropdown(options=[(row["variant"], i) for i, row in enumerate(rows)], value=0,
                            description="variant")
    stack = widgets.Stack(views, selected_index=0)
    widgets.jslink((pick, "index"), (stack, "selected_index"))  # runs in the browser: no kernel needed
    return widgets.VBox([pick, stack])
