"""The transformer block and a tiny GPT: RMSNorm, SwiGLU, a pre-norm block with RoPE attention, training, scoring.

One block (Llama's layout, which SmolLM2 in chapter 4 uses too):

    h   = x + attention(RMSNorm(x))        tokens exchange information (the only place they do)
    out = h + SwiGLU(RMSNorm(h))           each token is transformed on its own

"Pre-norm": the norms sit inside the residual branches, so the residual stream x -> out is a plain sum and
gradients reach early layers unchanged, which makes deep stacks train without warm-up tricks.
RMSNorm (Zhang & Sennrich 2019) rescales by the root mean square (no mean subtraction, no bias);
SwiGLU (Shazeer 2020) gates one projection by silu of another. Parameter names follow transformers' Llama
(`weight`; `gate_proj`, `up_proj`, `down_proj`; `input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`)
so real weights load by name.

`TinyGPT` stacks these blocks between a token embedding and a (tied) output layer. It has no position
embedding table: RoPE inside attention carries position, so it runs at any length, and `rope_scaling` selects
position interpolation or YaRN to run it beyond the length it was trained on.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import corpus, mlp_lm  # chapters 1-2: the corpus, and the MLP that chapter3_run trains for comparison
from .attention import MultiHeadAttention
from .rope import ROPE_SCALINGS, rope_tables


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, over the last dim, computed in float32 (as Llama does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"RMSNorm({self.weight.shape[0]}) got input with last dim {x.shape[-1]}")
        dtype = x.dtype
        x = x.float()  # squares of half-precision activations overflow or lose digits
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SwiGLU(nn.Module):
    """The gated feed-forward layer: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # silu(g) = g * sigmoid(g) decides, per hidden unit, how much of up_proj's value passes
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, ffn_hidden: int | None = None,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.input_layernorm = RMSNorm(d_model, norm_eps)
        self.self_attn = MultiHeadAttention(d_model, n_heads, n_kv_heads)
        self.post_attention_layernorm = RMSNorm(d_model, norm_eps)
        self.mlp = SwiGLU(d_model, ffn_hidden or swiglu_hidden(d_model))

    def forward(self, x: Tensor, cos: Tensor | None = None, sin: Tensor | None = None,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        attn = self.self_attn(self.input_layernorm(x), cos, sin, causal=True, return_weights=return_weights)
        attn, weights = attn if return_weights else (attn, None)
        h = x + attn
        out = h + self.mlp(self.post_attention_layernorm(h))
        return (out, weights) if return_weights else out


def swiglu_hidden(d_model: int, multiple_of: int = 32) -> int:
    """Llama's feed-forward width: 2/3 of 4 d_model (SwiGLU has three matrices, not two, so the parameter
    count matches a 4x MLP), rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass(frozen=True)
class GPTConfig:
    """A tiny GPT's shape. `context` is the training length (RoPE itself has no maximum)."""
    vocab_size: int
    context: int = 64
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    ffn_hidden: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "context", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be an int >= 1, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even "
                             "size (RoPE rotates pairs)")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class TinyGPT(nn.Module):
    """Token embedding -> n_layers pre-norm blocks (RoPE attention + SwiGLU) -> RMSNorm -> logits."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config.d_model, config.n_heads, config.n_kv_heads, config.ffn_hidden,
                                          config.norm_eps) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:  # one matrix reads tokens in and scores them out: fewer parameters
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)
        # GPT-2's trick: shrink the projections that write into the residual stream by 1/sqrt(2 n_layers),
        # so the stream's variance does not grow with depth at initialisation
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def forward(self, idx: Tensor, rope_scaling: str | None = None, return_attention: bool = False,
                yarn_betas: tuple[float, float] = (32.0, 1.0)) -> Tensor | tuple[Tensor, list[Tensor]]:
        """idx [B, T] token ids -> logits [B, T, vocab]: position t's logits predict token t+1.

        rope_scaling: None, "pi" or "yarn" (see `labkit.rope.rope_tables`; yarn_betas = (beta_fast,
        beta_slow)); it only changes anything when T > config.context. return_attention=True also returns
        each layer's weights [B, n_heads, T, T].
        """
        if not isinstance(idx, Tensor) or idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            shape = (tuple(idx.shape), idx.dtype) if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"TinyGPT expects integer token ids [B, T], got {shape}")
        if rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"rope_scaling must be one of {ROPE_SCALINGS}, got {rope_scaling!r}")
        c = self.config
        x = self.embed_tokens(idx)
        cos, sin = rope_tables(idx.shape[1], c.head_dim, c.rope_theta, rope_scaling, train_len=c.context,
                               beta_fast=yarn_betas[0], beta_slow=yarn_betas[1])
        cos, sin = cos.to(x.device, x.dtype), sin.to(x.device, x.dtype)
        attention = []
        for layer in self.layers:
            if return_attention:
                x, weights = layer(x, cos, sin, return_weights=True)
                attention.append(weights)
            else:
                x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        return (logits, attention) if return_attention else logits


# ----------------------------------------------------------------------------------------------------------
# training and scoring

def _as_ids(ids: object, vocab_size: int, name: str = "ids") -> Tensor:
    arr = np.asarray(ids)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.astype(np.int64)  # np.asarray([]) is float64
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integer token ids, got shape {arr.shape}, dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"{name} must lie in [0, {vocab_size}), got values in [{arr.min()}, {arr.max()}]")
    return torch.from_numpy(arr.astype(np.int64))


@dataclass(frozen=True)
class TrainConfig:
    """How to train a TinyGPT: AdamW, linear warm-up then cosine decay to lr * min_lr_ratio, random windows."""
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup < 0:
            raise ValueError(f"need lr > 0, 0 <= min_lr_ratio <= 1 and warmup >= 0, got lr={self.lr}, "
                             f"min_lr_ratio={self.min_lr_ratio}, warmup={self.warmup}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate at `step` (0-based): linear warm-up, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with cfg's learning rate and weight decay, betas (0.9, 0.95). Only the matrices decay: norms' gains
    and embeddings keep their scale. Every training loop in the course built on TinyGPT starts from this one."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                             fused=True)  # one kernel for all parameters: a third faster for a model this small


def update(model: nn.Module, opt: torch.optim.Optimizer, loss: Tensor, step: int, cfg: TrainConfig) -> None:
    """One optimiser step on `loss`: the schedule's learning rate for `step` (lr_at), gradients, clipping to
    cfg.grad_clip, AdamW. train_gpt and chapter 9's loops (distillation, MoE, sparse training) differ only in
    the loss they hand to it."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()


def train_gpt(model: TinyGPT, train_ids: object, cfg: TrainConfig = TrainConfig(),
              log_every: int = 0, log: Callable[[str], None] = print,
              stop_after: int | None = None) -> dict[str, list[float]]:
    """Train on random windows of config.context + 1 tokens (inputs and next-token targets).

    Seeded: the same model init, ids and cfg give the same losses. Returns {"step": [...], "loss": [...]}
    (every step's training loss); with log_every > 0, calls log() with the mean loss every log_every steps.
    `stop_after` runs only the first steps of cfg's schedule: a live slice of a saved full run.
    """
    if stop_after is not None and not (isinstance(stop_after, int) and 1 <= stop_after <= cfg.steps):
        raise ValueError(f"stop_after must be an int in 1..{cfg.steps} (cfg.steps), got {stop_after!r}")
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
    ids = _as_ids(train_ids, model.config.vocab_size, "train_ids")
    t = model.config.context
    if ids.numel() < t + 2:
        raise ValueError(f"need more than context + 1 = {t + 1} training tokens, got {ids.numel()}")
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    offsets = torch.arange(t + 1)
    history: dict[str, list[float]] = {"step": [], "loss": []}
    model.train()
    for step in range(cfg.steps if stop_after is None else stop_after):
        starts = torch.randint(0, ids.numel() - t - 1, (cfg.batch_size,), generator=generator)
        batch = ids[starts[:, None] + offsets]  # [B, T+1]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        update(model, opt, loss, step, cfg)
        history["step"].append(step)
        history["loss"].append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = history["loss"][-log_every:]
            log(f"step {step + 1:5d}  train loss {sum(recent) / len(recent):.3f}")
    model.eval()
    return history


@torch.no_grad()
def token_log_probs(model: TinyGPT, ids: object, context: int | None = None, stride: int | None = None,
                    batch_size: int = 64) -> np.ndarray:
    """log P(ids[i] | up to `context` previous ids) for i = 1..N-1, as a float64 array of N-1 values.

    Sliding windows of `context` tokens (default: the training length) advance by `stride` (default
    context // 2); each window scores only the tokens the previous one did not, so after the first window
    every token is predicted from at least context - stride tokens of history.
    """
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
    ids = _as_ids(ids, model.config.vocab_size)
    context = context or model.config.context
    stride = stride or max(1, context // 2)
    if not 1 <= stride <= context:
        raise ValueError(f"need 1 <= stride <= context, got stride={stride}, context={context}")
    n = ids.numel()
    if n < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n}")
    out = torch.empty(n - 1, dtype=torch.float64)
    # window w covers ids[s : s + context + 1] with s = w * stride; it scores targets s+1 .. s+context
    starts = list(range(0, max(n - context - 1, 0) + 1, stride))
    if starts[-1] + context + 1 < n:
        starts.append(n - context - 1)
    was_training = model.training
    model.eval()
    scored_up_to = 0  # targets 1..scored_up_to are done
    for b in range(0, len(starts), batch_size):
        chunk = starts[b:b + batch_size]
        length = min(context + 1, n)
        batch = torch.stack([ids[s:s + length] for s in chunk])
        logp = torch.log_softmax(model(batch[:, :-1]).double(), dim=-1)
        target_logp = logp.gather(-1, batch[:, 1:, None])[..., 0]  # [b, length-1], target s+1+j
        for row, s in zip(target_logp, chunk):
            first = max(scored_up_to, s) + 1  # first target this window still has to score
            last = s + length - 1
            if last >= first:
                out[first - 1:last] = row[first - s - 1:]
                scored_up_to = last
    model.train(was_training)
    return out.numpy()


@torch.no_grad()
def loss_by_position(model: TinyGPT, ids: object, seq_len: int, n_windows: int | None = None,
                     rope_scaling: str | None = None, batch_size: int = 16,
                     yarn_betas: tuple[float, float] = (32.0, 1.0), start: int = 0) -> np.ndarray:
    """Mean next-token loss (nats) at each position 0..seq_len-1 of windows of seq_len + 1 tokens.

    Position p predicts token p+1 of the window from the p+1 tokens before it: the curve shows how the model
    uses more context, and how it copes past its training length (try rope_scaling "pi" or "yarn").
    n_windows=None: consecutive windows from `start` on, advancing by seq_len, so target tokens start+1,
    start+2, ... are each scored exactly once, at position (t - start - 1) % seq_len. Otherwise n_windows
    windows spread evenly over ids[start:].
    """
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
    ids = _as_ids(ids, model.config.vocab_size)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    available = ids.numel() - start
    if available < seq_len + 1:
        raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens after start, got {available}")
    if n_windows is None:
        starts = np.arange(start, ids.numel() - seq_len, seq_len)
    else:
        starts = start + np.linspace(0, available - seq_len - 1, n_windows).astype(np.int64)
    total = torch.zeros(seq_len, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for b in range(0, len(starts), batch_size):
        batch = torch.stack([ids[s:s + seq_len + 1] for s in starts[b:b + batch_size]])
        logits = model(batch[:, :-1], rope_scaling=rope_scaling, yarn_betas=yarn_betas).double()
        loss = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # [b, seq_len]
        total += loss.sum(0)
    model.train(was_training)
    return (total / len(starts)).numpy()


@torch.no_grad()
def generate(model: TinyGPT, prompt_ids: object, n_new: int, temperature: float = 1.0, seed: int = 0) -> list[int]:
    """Sample n_new tokens after the prompt (at most config.context tokens of history), seeded."""
    ids = _as_ids(prompt_ids, model.config.vocab_size, "prompt_ids").tolist()
    if not ids:
        raise ValueError("the prompt must hold at least one token")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    new: list[int] = []
    for _ in range(n_new):
        x = torch.tensor([(ids + new)[-model.config.context:]])
        probs = torch.softmax(model(x)[0, -1].double() / temperature, dim=-1)
        new.append(int(torch.multinomial(probs, 1, generator=generator)))
    return new


def chapter3_run(seeds: tuple[int, ...] = (0, 1, 2)) -> tuple[dict, dict[str, Tensor]]:
    """Chapter 3's saved run (labkit.course.saved): the tiny GPT, 900 steps on the character corpus, and
    chapter 2's MLP beside it, once per seed; the held-out perplexity of each on the same characters (every
    one from position 64 on; the GPT in windows of 64 sliding by 16). One thread, as the notebook.
    Returns (record, tensors): the first seed's losses and both models' weights, every seed's perplexities."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dict(context=64, d_model=96, n_layers=3, n_heads=4)
        text = corpus.load_corpus()
        vocab = corpus.Vocab.build(corpus.char_tokens(text.train))
        train_ids = vocab.encode(corpus.char_tokens(text.train))
        heldout_ids = vocab.encode(corpus.char_tokens(text.heldout))
        first = cfg["context"]
        runs = []
        for seed in seeds:
            train_cfg = TrainConfig(steps=900, batch_size=16, lr=3e-3, warmup=30, seed=seed)
            torch.manual_seed(seed)
            gpt = TinyGPT(GPTConfig(vocab_size=len(vocab), **cfg))
            start = time.perf_counter()
            history = train_gpt(gpt, train_ids, train_cfg)
            gpt_seconds = time.perf_counter() - start
            mlp, mlp_history = mlp_lm.train_mlp_lm(train_ids, len(vocab), replace(mlp_lm.CHAPTER2_CONFIG, seed=seed),
                                                   progress=False)
            gpt_ppl = float(np.exp(-token_log_probs(gpt, heldout_ids, stride=16)[first - 1:].mean()))
            mlp_ppl = float(np.exp(-mlp_lm.log_probs(mlp, heldout_ids, context=first).mean()))
            runs.append((train_cfg, history, gpt_seconds, gpt, mlp, mlp_history, gpt_ppl, mlp_ppl))
    finally:
        torch.set_num_threads(threads)
    train_cfg, history, gpt_seconds, gpt, mlp, mlp_history = runs[0][:6]
    record = {"seed": train_cfg.seed, "torch_threads": 1, "gpt_config": cfg, "train_config": vars(train_cfg),
              "loss": history["loss"], "gpt_seconds": round(gpt_seconds, 1),
              "mlp_config": vars(mlp_lm.CHAPTER2_CONFIG), "mlp_seconds": round(mlp_history.seconds, 1),
              "seeds": list(seeds), "gpt_heldout_ppl": [r[6] for r in runs], "mlp_heldout_ppl": [r[7] for r in runs]}
    tensors = {**{f"gpt.{k}": v for k, v in gpt.state_dict().items()},
               **{f"mlp.{k}": v for k, v in mlp.state_dict().items()}}
    return record, tensors
