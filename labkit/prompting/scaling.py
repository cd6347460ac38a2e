"""Scaling: how much compute a training run costs, and why some abilities seem to appear all at once.

Training compute. A dense transformer with N parameters spends about 2N floating-point operations per token
in the forward pass (one multiply and one add per weight) and about 4N in the backward pass (gradients for the
activations and for the weights), so training on D tokens costs

    C ≈ 6 N D  FLOPs                               (Kaplan et al. 2020, "Scaling Laws for Neural Language Models")

(attention's own cost, ~ layers · context · width per token, is left out: small next to N for short contexts).
Given a budget C and a model size N, the tokens it buys are D = C / (6N). Hoffmann et al. 2022 ("Chinchilla")
found that for a fixed budget loss is lowest with about 20 tokens per parameter, i.e. D ≈ 20 N, so
C = 6 N (20 N) = 120 N² and N = sqrt(C / 120).

Emergence and the metric. Wei et al. 2022 ("Emergent Abilities of Large Language Models") call an ability
emergent when it is absent (near chance) in smaller models and present in larger ones, with a sharp jump that
does not extrapolate from the small ones. Schaeffer et al. 2023 ("Are Emergent Abilities a Mirage?") showed
that part of the sharpness is the metric: if the per-token accuracy p rises smoothly with scale, an exact-match
score on an L-token answer is p^L, which stays near 0 and then shoots up -- the same model family, scored per
token or by edit distance, improves smoothly. `per_token_accuracy` and `exact_match` compute that argument.
"""
from __future__ import annotations

import math

import torch

CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: compute-optimal data is about 20 tokens per parameter
SMOLLM2_135M_TOKENS = 2e12          # SmolLM2-135M's pretraining tokens, per its model card ("2T")


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def training_flops(n_params: float, n_tokens: float) -> float:
    """C ≈ 6 N D: the FLOPs to train N parameters on D tokens (2N per token forward, 4N backward)."""
    return 6.0 * _positive("n_params", n_params) * _positive("n_tokens", n_tokens)


def tokens_for_budget(flops: float, n_params: float) -> float:
    """D = C / (6N): how many training tokens a budget of C FLOPs buys for a model of N parameters."""
    return _positive("flops", flops) / (6.0 * _positive("n_params", n_params))


def chinchilla_optimal(flops: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> tuple[float, float]:
    """(N, D) that spend C FLOPs with D = r N tokens (r = 20 per Hoffmann et al. 2022): C = 6 r N², N = sqrt(C/6r)."""
    r = _positive("tokens_per_param", tokens_per_param)
    n = math.sqrt(_positive("flops", flops) / (6.0 * r))
    return n, r * n


def per_token_accuracy(n_params: torch.Tensor, c: float = 5e7, alpha: float = 0.5) -> torch.Tensor:
    """An illustrative smooth scaling curve: per-token cross-entropy falls as a power law, L(N) = (N / c)^-alpha
    nats, and the probability of the right token is p = exp(-L(N)). (Schaeffer et al. 2023 use this form; c and
    alpha here are illustrative, not fitted to any model.)"""
    if not isinstance(n_params, torch.Tensor) or not n_params.is_floating_point() or (n_params <= 0).any():
        raise ValueError("n_params must be a floating-point tensor of positive parameter counts")
    _positive("c", c), _positive("alpha", alpha)
    return torch.exp(-(n_params / c) ** -alpha)


def exact_match(p_token: torch.Tensor, length: int) -> torch.Tensor:
    """The chance that all `length` tokens of an answer are right when each is right with probability p
    (independently): p^L. Smooth in p, but for large L it stays near 0 until p is close to 1, then rises
    steeply -- a sharp 'emergent' curve made by the metric."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an int >= 1 (tokens in the answer), got {length!r}")
    if not isinstance(p_token, torch.Tensor) or ((p_token < 0) | (p_token > 1)).any():
        raise ValueError("p_token must be a tensor of probabilities in [0, 1]")
    return p_token ** length


def token_errors(p_token: torch.Tensor, length: int) -> torch.Tensor:
    """Expected number of wrong tokens in an L-token answer, L (1 - p): a linear (edit-distance-like) metric of
    the same model, which improves smoothly where exact match jumps."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an int >= 1 (tokens in the answer), got {length!r}")
    return length * (1 - p_token)


def crossing_scale(n_params: torch.Tensor, score: torch.Tensor, level: float = 0.5) -> float:
    """The parameter count at which a rising score first reaches `level`, interpolated linearly in log N
    between the two grid points around it (nan if it never does)."""
    if n_params.shape != score.shape or n_params.dim() != 1:
        raise ValueError(f"n_params and score must be 1-D of equal length, got {tuple(n_params.shape)} and "
                         f"{tuple(score.shape)}")
    above = torch.nonzero(score >= level)
    if len(above) == 0:
        return math.nan
    i = int(above[0])
    if i == 0:
        return float(n_params[0])
    x0, x1 = math.log(float(n_params[i - 1])), math.log(float(n_params[i]))
    y0, y1 = float(score[i - 1]), float(score[i])
    return math.exp(x0 + (level - y0) / (y1 - y0) * (x1 - x0))
