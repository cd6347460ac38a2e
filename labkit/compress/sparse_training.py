"""Sparsity-accelerated training, in miniature: a feed-forward layer that uses only some of its hidden units.

A SwiGLU feed-forward layer (chapter 3) computes h = silu(x W_gate^T) * (x W_up^T), a vector of `hidden` units
per token, and returns h W_down^T. In trained models most units of h are near zero for any one token, so
skipping them looks free. Whether it saves *time* depends on the shape of what is skipped:

    "topk"      each token keeps its k largest |h| and zeroes the rest. Different units per token, so the
                matrices stay whole: computed with dense matmuls it costs the full product (a dense kernel
                multiplies zeros like any other number), plus the top-k itself. Only a kernel that gathers the
                kept units per token, or hardware that skips zeros in a fixed pattern (2:4 sparse tensor
                cores), turns it into time.
    "channels"  the whole batch keeps the same k units ("channels"), chosen by their importance: the mean |h|
                each had the last time it ran (Ma et al. 2024's Sparsity-Accelerated Training selects heads
                and channels by importance in the same spirit). Dropping a channel drops a row of W_gate and
                W_up and a column of W_down, so all three matmuls and their gradients shrink to k / hidden of
                their size on any hardware: structured sparsity, the kind a dense kernel can use.

`keep_schedule` is a ladder in the spirit of SAT's Ladder Omission Rate Scheduler: a constant share of channels
for the first part of training, then rungs back up to the dense layer, so the trained model is used dense.

    SparseSwiGLU        the layer; it shares (not copies) a SwiGLU's three projections
    sparsify_ffn        a TinyGPT with every feed-forward layer made sparse (shared weights)
    keep_schedule       the share of channels kept at each step
    train_sparse        chapter 3's training loop (same optimizer, batches, seeds) with the schedule, timed
    train_step_seconds  one training step per mode, timed in turns: ratios on one machine, never a test
    ffn_step_seconds    one forward + backward of a lone feed-forward layer per mode, the same way
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..transformer import SwiGLU, TinyGPT, TrainConfig, make_optimizer, update

MODES = ("dense", "topk", "channels")


def _check_keep(keep: object) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a number in (0, 1] (the share of hidden units kept), got {keep!r}")
    return float(keep)


def topk_mask(h: Tensor, k: int) -> Tensor:
    """Boolean mask over the last dim keeping the k largest |h| of every row (every token)."""
    if not isinstance(h, Tensor) or h.ndim < 1:
        raise ValueError(f"h must be a tensor [..., hidden], got {type(h).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= h.shape[-1]:
        raise ValueError(f"k must be an int in 1..{h.shape[-1]} (the hidden width), got {k!r}")
    mask = torch.zeros_like(h, dtype=torch.bool)
    return mask.scatter_(-1, h.detach().abs().topk(k, dim=-1).indices, True)


class SparseSwiGLU(nn.Module):
    """A SwiGLU feed-forward layer that keeps a share `keep` of its hidden units: per token ("topk") or the
    same channels for the whole batch ("channels"); "dense" (or keep = 1) is the plain layer. Parameters keep
    SwiGLU's names (gate_proj, up_proj, down_proj), so state dicts load either way."""

    def __init__(self, mlp: SwiGLU, mode: str = "channels", keep: float = 0.5):
        super().__init__()
        if not isinstance(mlp, SwiGLU):
            raise TypeError(f"mlp must be labkit.transformer.SwiGLU, got {type(mlp).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.mode, self.keep = mode, _check_keep(keep)
        self.hidden = mlp.gate_proj.out_features
        # each channel's mean |h| the last time it ran; +inf until then, so every channel is tried early
        self.register_buffer("importance", torch.full((self.hidden,), math.inf), persistent=False)

    @property
    def k(self) -> int:
        """How many hidden units are kept now (at least one)."""
        return max(1, round(self.keep * self.hidden))

    def forward(self, x: Tensor) -> Tensor:
        k = self.k
        if self.mode == "dense" or k == self.hidden:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if self.mode == "topk":  # masked, computed densely: the zeros are multiplied all the same
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
            return self.down_proj(h * topk_mask(h, k))
        if not self.training:  # channel omission is a training device: the trained layer is used whole
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # stable sort: equal importances (the +inf of channels not tried yet) go in index order, on every CPU
        idx = torch.sort(self.importance, descending=True, stable=True).indices[:k]
        h = F.silu(F.linear(x, self.gate_proj.weight[idx])) * F.linear(x, self.up_proj.weight[idx])  # [..., k]
        with torch.no_grad():
            self.importance[idx] = h.detach().abs().reshape(-1, k).mean(0)
        return F.linear(h, self.down_proj.weight[:, idx])

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, keep={self.keep}, hidden={self.hidden}"


def sparsify_ffn(model: TinyGPT, mode: str, keep: float) -> TinyGPT:
    """Replace every block's feed-forward layer by a SparseSwiGLU sharing its weights (in place; returns the
    model). Attention, embeddings and norms are untouched."""
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
    for block in model.layers:
        mlp = block.mlp
        block.mlp = SparseSwiGLU(mlp if isinstance(mlp, SwiGLU) else _as_swiglu(mlp), mode, keep)
    return model


def _as_swiglu(layer: nn.Module) -> SwiGLU:
    """The SwiGLU under a SparseSwiGLU (to change its mode), sharing the same projections."""
    if not isinstance(layer, SparseSwiGLU):
        raise TypeError(f"expected a SwiGLU or SparseSwiGLU feed-forward layer, got {type(layer).__name__}")
    with torch.device("meta"):
        plain = SwiGLU(layer.gate_proj.in_features, layer.hidden)
    plain.gate_proj, plain.up_proj, plain.down_proj = layer.gate_proj, layer.up_proj, layer.down_proj
    return plain


def keep_schedule(step: int, steps: int, keep: float, sparse_share: float = 0.5, rungs: int = 3) -> float:
    """The share of channels kept at `step` (0-based) of `steps`: `keep` for the first sparse_share of the
    steps, then `rungs` equal stretches keeping keep + (1 - keep) * r / rungs, r = 1..rungs: the last is dense."""
    keep = _check_keep(keep)
    if not 0 <= sparse_share <= 1 or isinstance(rungs, bool) or not isinstance(rungs, int) or rungs < 1:
        raise ValueError(f"need 0 <= sparse_share <= 1 and an int rungs >= 1, got {sparse_share!r}, {rungs!r}")
    start = round(sparse_share * steps)
    if step < start:
        return keep
    rung = min(rungs, 1 + (step - start) * rungs // max(1, steps - start))
    return keep + (1 - keep) * rung / rungs


def train_sparse(model: TinyGPT, train_ids: object, cfg: TrainConfig = TrainConfig(),
                 schedule: Callable[[int], float] | None = None, stop_after: int | None = None,
                 progress: bool = False) -> dict[str, list[float]]:
    """Chapter 3's `train_gpt` loop (same AdamW, warm-up and cosine, clipping, seeded random windows), with
    `schedule(step)` setting every SparseSwiGLU's `keep` before the step, and each step timed.

    With no sparse layer (or keep 1) it gives train_gpt's losses exactly (tests/test_sparse_training.py).
    Returns {"step", "loss", "seconds" (wall time of each step), "keep" (the share kept at each step)}."""
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if stop_after is not None and not (isinstance(stop_after, int) and 1 <= stop_after <= cfg.steps):
        raise ValueError(f"stop_after must be an int in 1..{cfg.steps} (cfg.steps), got {stop_after!r}")
    arr = np.asarray(train_ids)
    t = model.config.context
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.size < t + 2:
        raise ValueError(f"train_ids must be a 1-D array of more than context + 1 = {t + 1} integer token ids, "
                         f"got shape {arr.shape}, dtype {arr.dtype}")
    ids = torch.from_numpy(arr.astype(np.int64))
    sparse = [m for m in model.modules() if isinstance(m, SparseSwiGLU)]
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    offsets = torch.arange(t + 1)
    history: dict[str, list[float]] = {"step": [], "loss": [], "seconds": [], "keep": []}
    steps = range(cfg.steps if stop_after is None else stop_after)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="steps", leave=False)
    model.train()
    for step in steps:
        start = time.perf_counter()
        keep = 1.0 if schedule is None else _check_keep(schedule(step))
        for layer in sparse:
            layer.keep = keep
        batch = ids[torch.randint(0, ids.numel() - t - 1, (cfg.batch_size,), generator=generator)[:, None] + offsets]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        update(model, opt, loss, step, cfg)
        history["seconds"].append(time.perf_counter() - start)
        history["step"].append(step)
        history["loss"].append(loss.item())
        history["keep"].append(keep)
    model.eval()
    return history


def _interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each callable, timed in turns (a, b, c, a, b, c, ...) after one untimed call each:
    on a machine shared with other work a slow moment then falls on every variant alike."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def ffn_step_seconds(dim: int, hidden: int, tokens: int, keep: float, repeats: int = 20,
                     seed: int = 0) -> dict[str, float]:
    """Median seconds of one forward + backward of a lone SwiGLU [dim -> hidden -> dim] on `tokens` tokens, in
    each mode at the same `keep`, timed in turns. Timings: read them as ratios on one machine, never as a test."""
    torch.manual_seed(seed)
    base = SwiGLU(dim, hidden)
    x = torch.randn(tokens, dim)

    def step(layer: SparseSwiGLU) -> Callable[[], None]:
        def run() -> None:
            layer.zero_grad(set_to_none=True)
            layer(x).sum().backward()
        return run

    return _interleaved_medians({mode: step(SparseSwiGLU(base, mode, keep).train()) for mode in MODES}, repeats)


def train_step_seconds(make_model: Callable[[], TinyGPT], batch: Tensor, keep: float, repeats: int = 30
                       ) -> dict[str, float]:
    """Median seconds of one whole training step (forward, backward, AdamW) of the model `make_model()` builds,
    with each mode's feed-forward layers at `keep`, on the same batch [B, T + 1], timed in turns."""
    def step(mode: str) -> Callable[[], None]:
        model = sparsify_ffn(make_model(), mode, keep).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

        def run() -> None:
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    return _interleaved_medians({mode: step(mode) for mode in MODES}, repeats)


def chapter9_sparse_training_run(keep: float = 0.25, steps: int = 900, seed: int = 0
                                 ) -> tuple[dict, dict[str, Tensor]]:
    """Chapter 9's saved run (labkit.course.saved): chapter 3's tiny GPT and training (its config, 900 steps,
    seed 0) three times, with a dense, a top-k and a channel-omitting feed-forward layer keeping `keep` of the
    hidden units (the channels on the ladder schedule, dense for its last half); each one's time per step and
    held-out perplexity on the same characters as chapter 3. Then the lone layer's forward + backward at this
    model's size and at SmolLM2's, and a matmul with 1 - keep zeros against one without. One thread.
    Returns (record, {}): each mode's losses and keep share per step and held-out perplexity; the median
    seconds of a training step per mode and of the lone layer, timed in turns apart from the runs."""
    from ..corpus import Vocab, char_tokens, load_corpus
    from ..transformer import GPTConfig, token_log_probs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gpt_config = dict(context=64, d_model=96, n_layers=3, n_heads=4)
        text = load_corpus()
        vocab = Vocab.build(char_tokens(text.train))
        train_ids = vocab.encode(char_tokens(text.train))
        heldout_ids = vocab.encode(char_tokens(text.heldout))
        cfg = TrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup=30, seed=seed)
        schedules = {"dense": None, "topk": lambda s: keep, "channels": lambda s: keep_schedule(s, steps, keep)}
        runs = {}
        for mode, schedule in schedules.items():
            torch.manual_seed(seed)
            gpt = sparsify_ffn(TinyGPT(GPTConfig(vocab_size=len(vocab), **gpt_config)), mode, keep)
            history = train_sparse(gpt, train_ids, cfg, schedule, progress=True)
            logp = token_log_probs(gpt, heldout_ids, stride=16)[gpt_config["context"] - 1:]
            runs[mode] = {"loss": history["loss"], "keep": history["keep"],
                          "train_seconds": round(sum(history["seconds"]), 1),
                          "heldout_ppl": float(np.exp(-logp.mean()))}

        # time per step, apart from the runs and in turns (the runs ran one after another on a shared machine)
        def make_model() -> TinyGPT:
            torch.manual_seed(seed)
            return TinyGPT(GPTConfig(vocab_size=len(vocab), **gpt_config))

        batch = torch.from_numpy(np.asarray(train_ids[: cfg.batch_size * (gpt_config["context"] + 1)], dtype=np.int64))
        step_seconds = train_step_seconds(make_model, batch.reshape(cfg.batch_size, -1), keep)
        layer = {f"{dim}x{hidden}": ffn_step_seconds(dim, hidden, 1024, keep)
                 for dim, hidden in ((96, 256), (576, 1536))}
        torch.manual_seed(seed)
        h, w = torch.randn(1024, 1536), torch.randn(576, 1536)
        h_sparse = h * topk_mask(h, round(keep * 1536))  # 3 of every 4 entries zero
        matmul = _interleaved_medians({"dense": lambda: h @ w.T, "zeros": lambda: h_sparse @ w.T}, 20)
    finally:
        torch.set_num_threads(threads)
    record = {"seed": seed, "torch_threads": 1, "keep": keep, "gpt_config": gpt_config, "train_config": vars(cfg),
              "runs": runs, "train_step_seconds": step_seconds, "ffn_step_seconds": layer,
              "matmul_seconds_1024x1536x576": matmul,
              "heldout_tokens_scored": int(len(heldout_ids) - gpt_config["context"])}
    return record, {}
