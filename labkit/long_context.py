"""Long context beyond RoPE: stretching a model past the length it was trained on, and positions that count content.

A RoPE model trained on windows of L tokens has seen the angles p * w_i for p < L only. Run it on s * L tokens
and every rotation speed w_i whose wavelength 2 pi / w_i is longer than L produces angles it never saw. The
remedies here all change the D/2 rotation speeds (and some the attention temperature), never the weights:

* Position interpolation (PI; Chen et al. 2023, arXiv:2306.15595): divide every speed by s. Positions
  0..sL-1 then land on the angles of 0..L-1, at the price of packing neighbours s times closer.
* NTK-aware scaling (bloc97, 2023, a Reddit post; the formula transformers calls "dynamic" when s follows the
  length): raise the base theta to theta * s^(D/(D-2)). The fastest pair keeps its speed, the slowest is
  divided by exactly s, the pairs between by a geometric in-between.
* YaRN (Peng et al. 2023, arXiv:2309.00071): count the turns r_i = L w_i / 2 pi each pair makes within L.
  Pairs with r > beta_fast keep their speed, pairs with r < beta_slow are interpolated by s, and a linear ramp
  joins them; the logits are sharpened by t^-1 = (0.1 ln s + 1)^2, applied as 0.1 ln s + 1 on both q and k.
  The paper writes the ramp in r; its reference code and transformers ramp linearly in the pair index between
  the (rounded) indices where r = beta_fast and r = beta_slow. `yarn_parameters` follows the code (the one
  that models ship with); `labkit.rope.yarn_inv_freq` is the paper's equation.
* LongRoPE (Ding et al. 2024, arXiv:2402.13753): one rescale factor per pair, lambda_i, found by search on
  perplexity instead of by formula (PI is lambda_i = s for all i; NTK and YaRN are two particular curves).
  `longrope_parameters` applies given factors, with the attention factor sqrt(1 + ln s / ln L) that transformers
  uses for LongRoPE models (Phi-3); `search_factors` is a small coordinate search in LongRoPE's spirit.
* CoPE (Golovneva et al. 2024, arXiv:2405.18719) changes what a position *is*: query i opens a gate
  g_ij = sigmoid(q_i . k_j) on each earlier token and the position of j is the number of open gates between
  them, p_ij = sum_{t=j..i} g_it, so a head can count words or sentences instead of tokens.

`ExtendedGPT` runs chapter 3's TinyGPT with one of these schedules, so the same weights can be compared at
1x, 2x, 4x, 8x their training length, and fine-tuned with the schedule switched on (`labkit.transformer`'s
`train_gpt` trains it unchanged).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from . import corpus
from .rope import _check_head_dim, _check_positive, rope_cos_sin, rope_inv_freq, yarn_attention_factor
from .transformer import GPTConfig, TinyGPT, TrainConfig, loss_by_position, train_gpt

METHODS: tuple[str, ...] = ("none", "pi", "ntk", "yarn", "longrope")


# ---------------------------------------------------------------------------------------------------------
# rotation-speed schedules: each returns (inv_freq [D/2] float32, attention_factor)

def _check_scale(scale: object) -> float:
    scale = _check_positive(scale, "scale")
    if scale < 1:
        raise ValueError(f"scale must be >= 1 (the new length over the trained one), got {scale!r}")
    return scale


def pi_parameters(head_dim: int, theta: float, scale: float) -> tuple[Tensor, float]:
    """Position interpolation: every speed divided by s (the same as positions p / s). transformers: 'linear'."""
    return rope_inv_freq(head_dim, theta) / _check_scale(scale), 1.0


def ntk_parameters(head_dim: int, theta: float, scale: float) -> tuple[Tensor, float]:
    """NTK-aware scaling: the base theta becomes theta * s^(D/(D-2)), so the slowest of the D/2 speeds,
    theta^-(D-2)/D, is divided by exactly s and the fastest (1) is unchanged. transformers' 'dynamic' is this
    with s computed from the current length."""
    head_dim = _check_head_dim(head_dim)
    return rope_inv_freq(head_dim, theta * _check_scale(scale) ** (head_dim / (head_dim - 2))), 1.0


def yarn_ramp_bounds(head_dim: int, theta: float, train_len: int, beta_fast: float = 32.0,
                     beta_slow: float = 1.0) -> tuple[float, float]:
    """The pair indices (low, high) where the ramp starts and ends: pair i turns r_i = L / (2 pi theta^(2i/D))
    times within L, so r_i = beta at i = D ln(L / (2 pi beta)) / (2 ln theta); low is rounded down, high up,
    both clipped to [0, D - 1] (as the reference code does)."""
    head_dim, theta = _check_head_dim(head_dim), _check_positive(theta, "theta")
    train_len = _check_positive(train_len, "train_len")
    if not 0 < beta_slow < beta_fast:
        raise ValueError(f"need 0 < beta_slow < beta_fast, got beta_slow={beta_slow}, beta_fast={beta_fast}")

    def index(turns: float) -> float:
        return head_dim * math.log(train_len / (2 * math.pi * turns)) / (2 * math.log(theta))

    return max(math.floor(index(beta_fast)), 0), min(math.ceil(index(beta_slow)), head_dim - 1)


def yarn_parameters(head_dim: int, theta: float, scale: float, train_len: int, beta_fast: float = 32.0,
                    beta_slow: float = 1.0) -> tuple[Tensor, float]:
    """YaRN ("NTK-by-parts" + temperature), as its reference code and transformers' 'yarn' compute it.

    keep_i = 1 - clamp((i - low) / (high - low), 0, 1) is 1 for the fast pairs (i <= low) and 0 for the slow
    ones (i >= high); speed_i = keep_i * w_i + (1 - keep_i) * w_i / s. Attention factor 0.1 ln s + 1.
    """
    scale = _check_scale(scale)
    low, high = yarn_ramp_bounds(head_dim, theta, train_len, beta_fast, beta_slow)
    if low == high:
        high += 0.001  # a one-index ramp would divide by zero (same guard as the reference code)
    wavelength_shape = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # 1 / w_i
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    inv_freq = (1.0 / (scale * wavelength_shape)) * (1 - keep) + (1.0 / wavelength_shape) * keep
    return inv_freq, yarn_attention_factor(scale)


def longrope_attention_factor(scale: float, train_len: int) -> float:
    """sqrt(1 + ln s / ln L) for s > 1, else 1: the attention factor transformers uses for LongRoPE (Phi-3)."""
    scale, train_len = _check_positive(scale, "scale"), _check_positive(train_len, "train_len")
    return 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(train_len))


def longrope_parameters(head_dim: int, theta: float, factors: object, scale: float,
                        train_len: int) -> tuple[Tensor, float]:
    """Non-uniform interpolation: speed_i = w_i / lambda_i with one factor per pair (transformers' 'longrope',
    whose short_factor / long_factor are two such lists, for short and long inputs)."""
    head_dim = _check_head_dim(head_dim)
    factors = torch.as_tensor(factors, dtype=torch.float32)
    if factors.shape != (head_dim // 2,) or not bool((factors > 0).all()):
        raise ValueError(f"factors must be {head_dim // 2} positive numbers (one per pair), got shape "
                         f"{tuple(factors.shape)}")
    inv_freq = 1.0 / (factors * theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return inv_freq, longrope_attention_factor(scale, train_len)


@dataclass(frozen=True)
class Extension:
    """Which schedule a model runs with. scale=None fits the window: s = max(1, T / train_len) for input length T
    (no change up to the training length); a number fixes s, as a fine-tuned model's config does."""
    method: str = "none"
    train_len: int = 64
    scale: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    factors: tuple[float, ...] | None = None  # LongRoPE's lambda_i

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.train_len, bool) or not isinstance(self.train_len, int) or self.train_len < 1:
            raise ValueError(f"train_len must be an int >= 1, got {self.train_len!r}")
        if self.scale is not None:
            _check_scale(self.scale)
        if (self.method == "longrope") != (self.factors is not None):
            raise ValueError("factors go with method='longrope', and only with it")

    def scale_for(self, seq_len: int) -> float:
        return float(self.scale) if self.scale is not None else max(1.0, seq_len / self.train_len)

    def parameters(self, seq_len: int, head_dim: int, theta: float) -> tuple[Tensor, float]:
        """(inv_freq, attention_factor) for inputs of seq_len tokens."""
        s = self.scale_for(seq_len)
        if self.method == "none":
            return rope_inv_freq(head_dim, theta), 1.0
        if self.method == "pi":
            return pi_parameters(head_dim, theta, s)
        if self.method == "ntk":
            return ntk_parameters(head_dim, theta, s)
        if self.method == "yarn":
            return yarn_parameters(head_dim, theta, s, self.train_len, self.beta_fast, self.beta_slow)
        return longrope_parameters(head_dim, theta, self.factors, s, self.train_len)


class ExtendedGPT(TinyGPT):
    """Chapter 3's TinyGPT with its RoPE speeds (and attention factor) set by an `Extension`.

    config.context is the length it trains on (train_gpt samples windows of that length); the extension's
    train_len is the length the weights were first trained on, against which s is measured.
    """

    def __init__(self, config: GPTConfig, extension: Extension):
        super().__init__(config)
        if not isinstance(extension, Extension):
            raise TypeError(f"extension must be an Extension, got {type(extension).__name__}")
        self.extension = extension

    @classmethod
    def from_model(cls, model: TinyGPT, extension: Extension, context: int | None = None) -> ExtendedGPT:
        """A copy of `model`'s weights that runs with `extension` (and trains on windows of `context`)."""
        out = cls(replace(model.config, context=context or model.config.context), extension)
        out.load_state_dict(model.state_dict())
        return out.train(model.training)

    def forward(self, idx: Tensor, rope_scaling: str | None = None, return_attention: bool = False,
                yarn_betas: tuple[float, float] = (32.0, 1.0)) -> Tensor:
        if rope_scaling is not None or return_attention:
            raise ValueError("ExtendedGPT takes its scaling from its Extension: call it with token ids only")
        if not isinstance(idx, Tensor) or idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ExtendedGPT expects integer token ids [B, T], got {getattr(idx, 'shape', idx)!r}")
        c = self.config
        inv_freq, factor = self.extension.parameters(idx.shape[1], c.head_dim, c.rope_theta)
        cos, sin = rope_cos_sin(torch.arange(idx.shape[1]), inv_freq, attention_factor=factor)
        x = self.embed_tokens(idx)
        cos, sin = cos.to(x.device, x.dtype), sin.to(x.device, x.dtype)
        for layer in self.layers:  # the same loop as TinyGPT.forward, with these tables
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def perplexity(model: TinyGPT, ids: object, seq_len: int) -> float:
    """exp(mean next-token loss) over consecutive windows of seq_len tokens (each target scored once, from the
    tokens before it in its window). With len(ids) - 1 a multiple of every seq_len compared, every length
    scores exactly the same tokens."""
    return float(np.exp(loss_by_position(model, ids, seq_len).mean()))


# ---------------------------------------------------------------------------------------------------------
# LongRoPE in miniature: search the per-pair factors

def factors_of(inv_freq: Tensor, head_dim: int, theta: float) -> tuple[float, ...]:
    """A schedule's speeds as LongRoPE factors lambda_i = w_i / speed_i."""
    return tuple((rope_inv_freq(head_dim, theta) / inv_freq).tolist())


def search_factors(model: TinyGPT, ids: object, seq_len: int, start: tuple[float, ...],
                   steps: tuple[float, ...] = (0.5, 0.8, 1.25, 2.0), rounds: int = 2) -> tuple[tuple[float, ...], list]:
    """Coordinate search for per-pair factors minimising the perplexity of `model` on `ids` at seq_len.

    LongRoPE searches with an evolutionary algorithm and keeps the factors non-decreasing from fast to slow
    pairs; this keeps that constraint and the factors >= 1, and tries each pair's factor times each of `steps`
    in turn, keeping any change that lowers the perplexity. Returns (factors, history of (ppl, factors)).
    """
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
    c = model.config
    if len(start) != c.head_dim // 2:
        raise ValueError(f"start must hold {c.head_dim // 2} factors, got {len(start)}")

    def score(f: tuple[float, ...]) -> float:
        ext = Extension("longrope", c.context, scale=seq_len / c.context, factors=f)
        return perplexity(ExtendedGPT.from_model(model, ext), ids, seq_len)

    best = tuple(float(f) for f in start)
    best_ppl = score(best)
    history = [(best_ppl, best)]
    for _ in range(rounds):
        for i in range(len(best)):
            for step in steps:
                trial = list(best)
                trial[i] = best[i] * step
                lo = best[i - 1] if i else 1.0
                hi = best[i + 1] if i + 1 < len(best) else math.inf
                if not lo <= trial[i] <= hi:  # keep 1 <= lambda_0 <= lambda_1 <= ...
                    continue
                ppl = score(tuple(trial))
                if ppl < best_ppl:
                    best, best_ppl = tuple(trial), ppl
                    history.append((best_ppl, best))
    return best, history


# ---------------------------------------------------------------------------------------------------------
# CoPE: positions counted by content

def cope_positions(gates: Tensor) -> Tensor:
    """p[..., i, j] = sum_{t=j..i} gates[..., i, t] for j <= i (0 above the diagonal): the number of open gates
    between key j and query i, counted from the query's own point of view. gates [..., T, T] in [0, 1]."""
    if not isinstance(gates, Tensor) or gates.ndim < 2 or gates.shape[-1] != gates.shape[-2]:
        raise ValueError(f"gates must be a tensor [..., T, T], got {getattr(gates, 'shape', type(gates).__name__)}")
    t = gates.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=gates.device).tril()
    g = gates.masked_fill(~causal, 0)
    # a reversed cumulative sum along the keys: position j collects gates j, j+1, ..., i
    return g.flip(-1).cumsum(-1).flip(-1).masked_fill(~causal, 0)


def cope_logits(q: Tensor, k: Tensor, pos_emb: Tensor) -> Tensor:
    """CoPE's attention logits q_i . k_j + q_i . e[p_ij], causal (-inf above the diagonal), [..., T, T].

    gates = sigmoid(q k^T); p is clamped to the table's last row; e at a fractional p interpolates between
    rows floor(p) and ceil(p). As in the paper, q . e[n] is computed for the integer n only and then
    interpolated, which costs T x n_pos products instead of T x T x D. pos_emb [n_pos, D].
    """
    if not all(isinstance(t, Tensor) for t in (q, k, pos_emb)):
        raise TypeError("q, k and pos_emb must be torch.Tensors")
    if q.shape != k.shape or q.ndim < 2 or pos_emb.ndim != 2 or pos_emb.shape[1] != q.shape[-1]:
        raise ValueError(f"need q, k [..., T, D] of one shape and pos_emb [n_pos, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(pos_emb.shape)}")
    scores = q @ k.transpose(-2, -1)
    p = cope_positions(torch.sigmoid(scores)).clamp(max=pos_emb.shape[0] - 1)
    q_e = q @ pos_emb.T  # [..., T, n_pos]: q_i . e[n] for every integer n
    lo, hi = p.floor().long(), p.ceil().long()
    w = p - lo
    pos_term = q_e.gather(-1, hi) * w + q_e.gather(-1, lo) * (1 - w)
    causal = torch.ones(q.shape[-2], q.shape[-2], dtype=torch.bool, device=q.device).tril()
    return (scores + pos_term).masked_fill(~causal, float("-inf"))


# ---------------------------------------------------------------------------------------------------------
# the saved run (labkit.course.saved): train short, measure long

TRAIN_LEN = 64
LENGTHS = (64, 128, 256, 512)           # 1x, 2x, 4x, 8x the training length
EVAL_TOKENS = 16_384                    # held-out characters scored at every length (a multiple of each)
BASE_CONFIG = dict(context=TRAIN_LEN, d_model=96, n_layers=3, n_heads=4)   # chapter 3's tiny GPT
BASE_TRAIN = TrainConfig(steps=900, batch_size=16, lr=3e-3, warmup=30, seed=0)
FINETUNE_LEN = 256                      # fine-tune at 4x
FINETUNE = TrainConfig(steps=200, batch_size=4, lr=1e-3, warmup=10, seed=1)  # as many tokens per step as training
FINETUNE_SEEDS = (1, 2, 3)              # which windows each fine-tune sees: its spread says what is noise
ZERO_SHOT = ("none", "pi", "ntk", "yarn")
FINETUNED = ("none", "pi", "yarn")


def data() -> tuple[corpus.Vocab, np.ndarray, np.ndarray]:
    """The course corpus at the character level: (vocab, training ids, the first EVAL_TOKENS + 1 held-out ids)."""
    text = corpus.load_corpus()
    vocab = corpus.Vocab.build(corpus.char_tokens(text.train))
    train_ids = np.asarray(vocab.encode(corpus.char_tokens(text.train)))
    heldout = np.asarray(vocab.encode(corpus.char_tokens(text.heldout)))[:EVAL_TOKENS + 1]
    return vocab, train_ids, heldout


def base_model(vocab_size: int) -> TinyGPT:
    torch.manual_seed(BASE_TRAIN.seed)
    return TinyGPT(GPTConfig(vocab_size=vocab_size, **BASE_CONFIG))


def finetuned_model(base: TinyGPT, method: str) -> ExtendedGPT:
    """The base weights set up to fine-tune on FINETUNE_LEN windows with `method` at the fixed scale 4."""
    scale = None if method == "none" else FINETUNE_LEN / TRAIN_LEN
    return ExtendedGPT.from_model(base, Extension(method, TRAIN_LEN, scale=scale), context=FINETUNE_LEN)


def zero_shot_table(model: TinyGPT, heldout: np.ndarray, methods: tuple[str, ...] = ZERO_SHOT,
                    lengths: tuple[int, ...] = LENGTHS) -> dict[str, list[float]]:
    """Held-out perplexity of the same weights at each length, each method with s fitted to the length."""
    return {m: [perplexity(ExtendedGPT.from_model(model, Extension(m, TRAIN_LEN)), heldout, n) for n in lengths]
            for m in methods}


def run() -> tuple[dict, dict[str, Tensor]]:
    """Train the tiny GPT on 64-character windows, measure it at 1x-8x with each schedule, fine-tune it at 4x
    with none / PI / YaRN (once per seed in FINETUNE_SEEDS; finetuned_ppl[method][seed][length]) and measure
    again, and search LongRoPE-style factors for 4x on training text.
    One thread, as the notebook. Returns (record, the base model's weights)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vocab, train_ids, heldout = data()
        base = base_model(len(vocab))
        start = time.perf_counter()
        history = train_gpt(base, train_ids, BASE_TRAIN)
        seconds = {"base": round(time.perf_counter() - start, 1)}
        zero_shot = zero_shot_table(base, heldout)
        finetuned, ft_losses = {m: [] for m in FINETUNED}, {}
        start = time.perf_counter()
        for seed in FINETUNE_SEEDS:
            for method in FINETUNED:
                model = finetuned_model(base, method)
                losses = train_gpt(model, train_ids, replace(FINETUNE, seed=seed))["loss"]
                ft_losses.setdefault(method, losses)  # the first seed's, for the live slice
                finetuned[method].append([perplexity(model, heldout, n) for n in LENGTHS])
        seconds["finetunes"] = round(time.perf_counter() - start, 1)
        # LongRoPE in miniature: factors for 4x searched on training text, starting from YaRN's
        search_ids = train_ids[:EVAL_TOKENS // 2 + 1]
        yarn_start = factors_of(yarn_parameters(base.config.head_dim, base.config.rope_theta, 4.0, TRAIN_LEN)[0],
                                base.config.head_dim, base.config.rope_theta)
        start = time.perf_counter()
        factors, search = search_factors(base, search_ids, FINETUNE_LEN, yarn_start)
        seconds["search"] = round(time.perf_counter() - start, 1)
        longrope = ExtendedGPT.from_model(base, Extension("longrope", TRAIN_LEN, scale=4.0, factors=factors))
        longrope_ppl = perplexity(longrope, heldout, FINETUNE_LEN)
    finally:
        torch.set_num_threads(threads)
    record = {"seed": BASE_TRAIN.seed, "torch_threads": 1, "gpt_config": BASE_CONFIG,
              "train_config": vars(BASE_TRAIN), "finetune_config": vars(FINETUNE),
              "finetune_seeds": list(FINETUNE_SEEDS), "finetune_len": FINETUNE_LEN,
              "lengths": list(LENGTHS), "eval_tokens": EVAL_TOKENS, "loss": history["loss"],
              "zero_shot_ppl": zero_shot, "finetune_loss": ft_losses, "finetuned_ppl": finetuned,
              "longrope_start": list(yarn_start), "longrope_factors": list(factors),
              "longrope_search": [[p, list(f)] for p, f in search], "longrope_heldout_ppl_4x": longrope_ppl,
              "seconds": seconds}
    return record, {f"gpt.{k}": v for k, v in base.state_dict().items()}
