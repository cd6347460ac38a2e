"""Multi-head latent attention (MLA, DeepSeek-V2 2024), the cache-compression idea: store a small latent, not k, v.

GQA shrinks the cache by sharing heads. MLA instead compresses: each token's keys and values of a layer are
made from one latent vector c = W_down x of r numbers, and only c is cached:

    c = W_down x            [r]            cached: r numbers per token per layer (SmolLM2's GQA: 2*3*64 = 384)
    k = W_uk c, v = W_uv c  [H_kv * D]     rebuilt from the cached latents when attending

Here the factorisation comes from a trained model rather than training: stack SmolLM2's k_proj and v_proj
weights into W = [W_k; W_v] (384 x 576) and keep its best rank-r approximation, the truncated SVD
W ~ U_r S_r V_r^T, as W_up = U_r S_r (split into W_uk, W_uv) and W_down = V_r^T. Rank 384 loses nothing.
`whitening` makes it activation-aware: what matters is the error on the inputs the layer really sees,
||(W - W_r) X||, which the SVD of W L minimises, where L L^T is the inputs' covariance (measured on training
text by `input_covariances`); then W_down = V_r^T L^{-1}.

The RoPE complication. Without RoPE, q . k = q . (W_uk c) = (W_uk^T q) . c, so W_uk can be absorbed into the
query projection and attention can run on the latents directly, never rebuilding k. With RoPE the key is
rotated by its position *after* the up-projection, R_p W_uk c, and R_p changes with p, so no single matrix
absorbs W_uk. DeepSeek-V2 therefore splits each head: a part without RoPE (computed from the latent, absorbable)
and a small decoupled RoPE key shared by all heads (64 numbers per token, cached beside c). SmolLM2 was trained
with RoPE on the whole key, so this module does the plain, correct thing: it caches c, rebuilds k = W_uk c
for every cached token at every step and rotates it by that token's position. Memory shrinks as MLA's does;
compute does not (the up-projection runs over the whole cache each step).

    low_rank_kv            W_down, W_uk, W_uv of rank r from one attention layer (plain or whitened SVD)
    kv_factors, KVFactors  the same SVD kept for every rank (model_kv_factors: all layers), for rank sweeps
    input_covariances      per-layer covariance of the attention inputs on calibration text (needs >= dim
                           positions: a covariance from N < dim inputs has rank <= N, see below)
    LatentAttention        attention whose cache holds c; drop-in for labkit.llama.LlamaAttention
    LatentCache            preallocated [layers, batch, max_len, r] latents, the update/advance/seen interface
    to_latent_kv           SmolLM2 with every layer's k_proj, v_proj replaced by a rank-r latent
    chapter6_run           chapter 6's saved rank sweep (labkit.course.saved): per-window held-out losses

Why the calibration must be large: C is estimated from N inputs x_1 .. x_N, so C = X X^T / N has rank at most
N. With N < dim some input directions were never seen; whitening gives them no weight, the fit can put
anything there, and held-out inputs that do have those directions are mapped badly. `input_covariances`
refuses N < dim, and `kv_factors` warns when a covariance is numerically rank-deficient (e.g. repeated text).
Use several times dim positions so the small eigenvalues are estimated too, not merely nonzero.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .attention import repeat_kv, scaled_dot_product_attention
from .gqa import _check_int, convert_kv_heads, heldout_windows, share_except_attention, window_losses
from .llama import Llama, LlamaAttention, LlamaConfig
from .rope import apply_rope, rope_cos_sin, rope_inv_freq


@dataclass(frozen=True)
class KVFactors:
    """One layer's [w_k; w_v] ~ up[:, :r] @ down[:r] for every rank r at once (float64): the SVD is computed
    once, and each rank keeps its leading part, so a sweep over ranks does not repeat it."""
    up: torch.Tensor    # [2 * H_kv * D, full]: U S
    down: torch.Tensor  # [full, dim]: V^T (plain) or V^T L^{-1} (whitened)
    n_k: int            # the rows of w_k: up[:n_k] makes keys, up[n_k:] values

    def truncate(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_down [rank, dim], W_uk [H_kv * D, rank], W_uv [H_kv * D, rank]) in float32."""
        full = self.down.shape[0]
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
            raise ValueError(f"rank must be an int in [1, {full}] (the rank of the stacked [w_k; w_v]), got {rank!r}")
        up = self.up[:, :rank]
        return self.down[:rank].float(), up[:self.n_k].float(), up[self.n_k:].float()


def kv_factors(w_k: torch.Tensor, w_v: torch.Tensor, whitening: torch.Tensor | None = None) -> KVFactors:
    """The SVD behind `low_rank_kv`, for every rank at once (see KVFactors)."""
    for name, w in (("w_k", w_k), ("w_v", w_v)):
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            raise ValueError(f"{name} must be a 2-D weight [H_kv * head_dim, dim], got "
                             f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w_k.shape != w_v.shape:
        raise ValueError(f"w_k and w_v must have the same shape, got {tuple(w_k.shape)} and {tuple(w_v.shape)}")
    w = torch.cat([w_k, w_v]).double()
    if whitening is None:
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        down = vt
    else:
        dim = w.shape[1]
        if not isinstance(whitening, torch.Tensor) or tuple(whitening.shape) != (dim, dim):
            raise ValueError(f"whitening must be the [{dim}, {dim}] covariance of the layer's inputs")
        c = whitening.double()
        eig = torch.linalg.eigvalsh(c)
        # torch.linalg.matrix_rank's default tolerance, at the precision the covariance was computed in
        eps = torch.finfo(whitening.dtype if whitening.is_floating_point() else c.dtype).eps
        tol = dim * eps * float(eig.abs().max())
        rank = int((eig > tol).sum())
        if rank < dim:
            warnings.warn(f"whitening covariance has numerical rank {rank} < {dim}: {dim - rank} input directions "
                          "were never seen in calibration, and the fit is arbitrary along them; calibrate on "
                          "more (and more varied) text, several times dim positions", RuntimeWarning, stacklevel=3)
        c = c + 1e-6 * c.diagonal().mean() * torch.eye(dim, dtype=c.dtype)  # a ridge keeps it invertible
        chol = torch.linalg.cholesky(c)  # C = L L^T, so ||W X||^2 summed over inputs = ||W L||^2 (times N)
        u, s, vt = torch.linalg.svd(w @ chol, full_matrices=False)
        # W ~ U_r S_r V_r^T L^{-1}: solve L^T Z = V_r rather than forming the inverse
        down = torch.linalg.solve_triangular(chol.T, vt.T, upper=True).T
    return KVFactors(up=u * s, down=down, n_k=w_k.shape[0])


def low_rank_kv(w_k: torch.Tensor, w_v: torch.Tensor, rank: int, whitening: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-`rank` factors of the stacked projection [w_k; w_v] ([2 * H_kv * D, dim]):
    (W_down [rank, dim], W_uk [H_kv * D, rank], W_uv [H_kv * D, rank]) with [W_uk; W_uv] W_down ~ [w_k; w_v].

    `whitening` (the inputs' covariance C [dim, dim], from `input_covariances`) makes the approximation best on
    those inputs instead of best for the bare matrix. Computed in float64, returned as float32."""
    return kv_factors(w_k, w_v, whitening).truncate(rank)


def model_kv_factors(model: Llama, covariances: list[torch.Tensor] | None = None) -> list[KVFactors]:
    """`kv_factors` of every layer of `model` (plain, or whitened by `covariances`): pass them to
    `to_latent_kv(..., factors=...)` to try many ranks for the price of one SVD per layer."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    if covariances is not None and len(covariances) != model.cfg.n_layers:
        raise ValueError(f"covariances must hold one matrix per layer ({model.cfg.n_layers}), got {len(covariances)}")
    return [kv_factors(layer.self_attn.k_proj.weight.detach(), layer.self_attn.v_proj.weight.detach(),
                       None if covariances is None else covariances[i]) for i, layer in enumerate(model.layers)]


@torch.no_grad()
def input_covariances(model: Llama, windows: torch.Tensor) -> list[torch.Tensor]:
    """E[x x^T] of each layer's attention input x (the normed residual stream, [dim, dim] float64), over every
    position of `windows` [B, T]. Fit on TRAINING text; evaluate what it produces on held-out text."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise ValueError(f"windows must be a token-id tensor [batch, T], got {shape}")
    if windows.numel() < model.cfg.dim:
        raise ValueError(f"a covariance of {model.cfg.dim} dimensions fitted on {windows.numel()} positions has rank "
                         f"at most {windows.numel()}: calibrate on at least {model.cfg.dim} positions (several times "
                         "that for a stable estimate)")
    sums = [torch.zeros(model.cfg.dim, model.cfg.dim, dtype=torch.float64) for _ in model.layers]
    count = [0]

    def hook(i):
        def record(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[i].add_(x.T @ x)
            if i == 0:
                count[0] += x.shape[0]
        return record

    handles = [layer.self_attn.register_forward_pre_hook(hook(i)) for i, layer in enumerate(model.layers)]
    try:
        model(windows)
    finally:
        for h in handles:
            h.remove()
    return [s / count[0] for s in sums]


class LatentCache:
    """The MLA cache: latents c [layers, batch, max_len, rank], preallocated and filled in place.

    Same interface as `labkit.kvcache.KVCache` (`update`, `advance`, `seen`), but `update(layer, c)` takes the
    latent instead of k and v: r numbers per token per layer instead of 2 * H_kv * D."""

    def __init__(self, cfg: LlamaConfig, rank: int, batch: int = 1, max_len: int = 2048,
                 dtype: torch.dtype = torch.float32):
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"cfg must be a LlamaConfig (model.cfg), got {type(cfg).__name__}")
        _check_int(rank, "rank")
        _check_int(batch, "batch")
        _check_int(max_len, "max_len")
        self.c = torch.zeros(cfg.n_layers, batch, max_len, rank, dtype=dtype)
        self.seen = 0

    @property
    def max_len(self) -> int:
        return self.c.shape[2]

    @property
    def nbytes(self) -> int:
        return self.c.nbytes

    def update(self, layer: int, c: torch.Tensor) -> torch.Tensor:
        """Store c [batch, T, rank] of `layer` after the `seen` tokens; return all of that layer's latents,
        [batch, seen + T, rank], oldest first."""
        if not 0 <= layer < self.c.shape[0]:
            raise ValueError(f"layer must lie in [0, {self.c.shape[0]}), got {layer}")
        if c.ndim != 3 or (c.shape[0], c.shape[2]) != (self.c.shape[1], self.c.shape[3]):
            raise ValueError(f"c must be [batch, T, rank] with (batch, rank) = {(self.c.shape[1], self.c.shape[3])}, "
                             f"got {tuple(c.shape)}")
        end = self.seen + c.shape[1]
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} tokens; storing {c.shape[1]} more after {self.seen} "
                             f"would need {end}")
        self.c[layer, :, self.seen:end] = c
        return self.c[layer, :, :end]

    def advance(self, n: int) -> None:
        self.seen += n

    def reset(self) -> None:
        self.seen = 0


class LatentAttention(nn.Module):
    """LlamaAttention with k_proj, v_proj factored through a rank-r latent: kv_down (dim -> r) is all a
    cache keeps; k_up, v_up (r -> H_kv * D) rebuild keys and values, and RoPE rotates the rebuilt keys.

    With a `LatentCache` the cached keys sit at positions 0 .. seen + T - 1 (a contiguous sequence)."""

    def __init__(self, q_proj: nn.Linear, o_proj: nn.Linear, w_down: torch.Tensor, w_uk: torch.Tensor,
                 w_uv: torch.Tensor, n_heads: int, n_kv_heads: int, rope_theta: float):
        super().__init__()
        rank = w_down.shape[0]
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = q_proj.weight.shape[0] // n_heads
        if w_uk.shape != (n_kv_heads * self.head_dim, rank) or w_uv.shape != w_uk.shape:
            raise ValueError(f"w_uk and w_uv must be [{n_kv_heads * self.head_dim}, {rank}], got "
                             f"{tuple(w_uk.shape)} and {tuple(w_uv.shape)}")
        self.q_proj, self.o_proj = q_proj, o_proj
        self.kv_down = self._linear(w_down)
        self.k_up, self.v_up = self._linear(w_uk), self._linear(w_uv)
        self.register_buffer("inv_freq", rope_inv_freq(self.head_dim, rope_theta), persistent=False)

    @staticmethod
    def _linear(w: torch.Tensor) -> nn.Linear:
        with torch.device("meta"):
            linear = nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight = nn.Parameter(w.float().contiguous(), requires_grad=False)
        return linear

    @property
    def rank(self) -> int:
        return self.kv_down.weight.shape[0]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LatentCache | None = None,
                layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        c = self.kv_down(x)  # [B, T, r]: the only thing a cache stores
        if cache is not None:
            if not isinstance(cache, LatentCache):
                raise TypeError(f"a latent-attention model needs a LatentCache, got {type(cache).__name__}")
            c = cache.update(layer, c)  # [B, Tk, r], every latent of this layer so far
            # the rebuilt keys need their own positions' rotation: RoPE comes after the up-projection
            cos_k, sin_k = rope_cos_sin(torch.arange(c.shape[1], device=x.device), self.inv_freq)
        else:
            cos_k, sin_k = cos, sin
        Tk = c.shape[1]
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_up(c).view(B, Tk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_up(c).view(B, Tk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos_k, sin_k)
        n_rep = self.n_heads // self.n_kv_heads
        y = scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), causal=mask is None, mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def to_latent_kv(model: Llama, rank: int, covariances: list[torch.Tensor] | None = None,
                 factors: list[KVFactors] | None = None) -> Llama:
    """`model` with every layer's keys and values made from a rank-`rank` latent (plain SVD, or whitened by
    `covariances` from `input_covariances`; or truncated from `factors`, see `model_kv_factors`). Shares all
    other weights with `model`; use a `LatentCache`."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    cfg = model.cfg
    if factors is None:
        factors = model_kv_factors(model, covariances)
    elif covariances is not None:
        raise ValueError("pass covariances or factors, not both (factors already hold the whitening)")
    if len(factors) != cfg.n_layers:
        raise ValueError(f"factors must hold one KVFactors per layer ({cfg.n_layers}), got {len(factors)}")

    def make_attention(i: int, attn: LlamaAttention) -> LatentAttention:
        down, uk, uv = factors[i].truncate(rank)
        return LatentAttention(attn.q_proj, attn.o_proj, down, uk, uv, cfg.n_heads, cfg.n_kv_heads, cfg.rope_theta)

    return share_except_attention(model, cfg, make_attention)


def chapter6_run(n_eval: int = 24, n_calibration: int = 16, length: int = 257,
                 ranks: tuple[int, ...] = (256, 192, 128, 64, 32), ranks_b: tuple[int, ...] = (128, 64)
                 ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Chapter 6's saved run (labkit.course.saved): SmolLM2, its mean-pooled MQA, and latent caches of each rank
    (plain SVD; activation-aware SVD fitted on calibration set A of the training text, and at `ranks_b` also on a
    disjoint set B, to see how much the fit depends on its text), each scored on the same `n_eval` held-out
    windows. One thread, as the notebook. Returns (record, {}): the record holds every variant's per-window
    losses, so the notebook can print means with their spread."""
    from tqdm.auto import tqdm

    from .models import load_smollm2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Llama.from_pretrained()
        tokenizer, _ = load_smollm2()
        windows = heldout_windows(tokenizer, n_eval, length)
        train = heldout_windows(tokenizer, 2 * n_calibration, length, split="train")
        factors = {"plain": model_kv_factors(model)}
        numerical_rank = {}
        for name, cal in (("A", train[:n_calibration]), ("B", train[n_calibration:])):
            cov = input_covariances(model, cal)
            numerical_rank[name] = [int(torch.linalg.matrix_rank(c)) for c in cov]
            factors[f"whitened-{name}"] = model_kv_factors(model, cov)
        variants = {"gqa": lambda: model, "mqa": lambda: convert_kv_heads(model, 1)}
        for r in ranks:
            for name, f in factors.items():
                if name != "whitened-B" or r in ranks_b:
                    variants[f"{name}/{r}"] = lambda r=r, f=f: to_latent_kv(model, r, factors=f)
        losses = {}
        for key, make in tqdm(variants.items(), desc="variants"):
            losses[key] = [float(x) for x in window_losses(make(), windows)]
    finally:
        torch.set_num_threads(threads)
    record = {"torch_threads": 1, "length": length, "eval_windows": n_eval, "calibration_windows": n_calibration,
              "calibration_positions": n_calibration * length, "dim": model.cfg.dim, "ranks": list(ranks),
              "ranks_b": list(ranks_b), "numerical_rank": numerical_rank, "losses": losses}
    return record, {}
