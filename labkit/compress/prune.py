"""Pruning: set weights to zero, and choose which ones by a score — magnitude alone, or magnitude x activation.

A pruned linear layer keeps its shape; a boolean mask says which weights survive (True = kept). Two questions
define a method: how a weight is *scored*, and *among which weights* the lowest scores are removed.

    magnitude   score |W_ij|. The classic baseline (Han et al. 2015): small weights matter least.
    Wanda       score |W_ij| * ||X_j||_2 (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
                Language Models", arXiv:2306.11695). ||X_j|| is the L2 norm of input feature j over a few
                calibration tokens: a small weight that multiplies a huge activation still moves the output.
                No retraining and no weight update, just a better score.

Comparison groups. `unstructured_mask(scores, s)` removes the fraction s of lowest scores of the whole tensor
(what `torch.nn.utils.prune.l1_unstructured` does); `per_row=True` removes s of every output row, the group
Wanda uses (row i of W makes output i; comparing within it keeps every output equally served). With uniform
activation norms Wanda's score is |W| times a constant, so Wanda = per-row magnitude: the tests check it.

N:M (semi-structured) sparsity keeps the N highest scores of every M consecutive weights along a row (the
input dimension, the one a matrix product sums over). 2:4 is what NVIDIA's sparse tensor cores execute at
twice the dense math rate (Ampere and later; Mishra et al. 2021, arXiv:2104.08378). Unstructured masks save
nothing on such hardware unless the sparsity is very high; a dense CPU matmul skips no zeros at all.

    magnitude_scores, wanda_scores     the two scores, [out, in]
    unstructured_mask, nm_mask         masks from scores: per tensor / per row, or N of every M
    input_norms                        ||X_j|| for every linear layer of a labkit Llama, from calibration ids
    prune_llama                        a pruned copy of a labkit Llama (every linear layer of its blocks)
    linear_sparsity                    the fraction of zeros in those layers (what was reached)
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..llama import Llama

# the linear layers of every Llama block; the embedding (tied to the output head) and the norms are kept whole
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
METHODS = ("magnitude", "wanda")


def _check_weight(weight: object, name: str = "weight") -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.ndim != 2 or weight.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 2-D tensor [out_features, in_features], "
                         f"got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {weight.dtype}")
    return weight


def _check_sparsity(sparsity: object) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of weights removed), got {sparsity!r}")
    return float(sparsity)


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W|: the magnitude score, same shape as the weight [out, in]."""
    return _check_weight(weight).detach().abs()


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * norms_j for a weight [out, in] and the L2 norms of its input features over calibration tokens
    [in] (`input_norms`): weight j of every row is scaled by how large input j gets."""
    weight = _check_weight(weight)
    if not isinstance(norms, torch.Tensor) or norms.shape != (weight.shape[1],):
        got = tuple(norms.shape) if isinstance(norms, torch.Tensor) else type(norms).__name__
        raise ValueError(f"norms must be a tensor [in_features] = [{weight.shape[1]}] (one per input feature), "
                         f"got {got}")
    if (norms < 0).any() or not torch.isfinite(norms).all():
        raise ValueError("norms must be finite and >= 0 (they are L2 norms of activations)")
    return weight.detach().abs() * norms.to(weight.dtype)[None, :]


def _keep_all_but_lowest(groups: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask [G, n] removing the k lowest scores of every row of `groups`; ties at the threshold go in
    index order (what a stable sort would pick), so a mask is the same on every machine even for quantised
    weights, where many magnitudes are exactly equal. A k-th value per row costs far less than sorting it."""
    if k == 0:
        return torch.ones_like(groups, dtype=torch.bool)
    threshold = groups.kthvalue(k, dim=1, keepdim=True).values
    below = groups < threshold
    at = groups == threshold
    still = k - below.sum(1, keepdim=True)  # how many of the tied scores must go too, first ones first
    return ~(below | (at & (at.cumsum(1) <= still)))


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool = False) -> torch.Tensor:
    """Boolean mask (True = keep) removing the round(sparsity * n) lowest scores of the tensor (n = its size),
    or with per_row=True the round(sparsity * in) lowest of every row, so each output keeps the same count."""
    scores = _check_weight(scores, "scores")
    sparsity = _check_sparsity(sparsity)
    groups = scores if per_row else scores.reshape(1, -1)
    # Python's round, as torch.nn.utils.prune does: the two agree on how many weights a fraction means
    return _keep_all_but_lowest(groups, round(sparsity * groups.shape[1])).reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping the n highest scores of every m consecutive entries of each row (N:M sparsity,
    e.g. 2:4). The row length must be a multiple of m: groups never straddle two rows."""
    scores = _check_weight(scores, "scores")
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if n > m:
        raise ValueError(f"N:M sparsity keeps n of every m weights, so n <= m; got n={n} > m={m}")
    if scores.shape[1] % m:
        raise ValueError(f"rows of {scores.shape[1]} weights do not split into groups of m={m}: "
                         f"m must divide the row length")
    return _keep_all_but_lowest(scores.reshape(-1, m), m - n).reshape(scores.shape)  # m consecutive per group


def _linears(model: Llama) -> dict[str, nn.Linear]:
    """Every prunable linear layer of the model's blocks, by name ('layers.3.mlp.up_proj')."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    return {f"layers.{i}.{name}": block.get_submodule(name) for i, block in enumerate(model.layers) for name in LINEARS}


@torch.no_grad()
def input_norms(model: Llama, calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    """For every linear layer of the blocks, the L2 norm of each input feature over all calibration tokens:
    norms_j = sqrt(sum over tokens of x_j^2), float64 [in_features]. Calibration ids [B, T] should come from
    text disjoint from the text the pruned model is scored on. One forward pass of the dense model."""
    layers = _linears(model)
    if (not isinstance(calibration, torch.Tensor) or calibration.ndim != 2 or calibration.numel() == 0
            or calibration.dtype not in (torch.int64, torch.int32)):
        got = (tuple(calibration.shape), calibration.dtype) if isinstance(calibration, torch.Tensor) \
            else type(calibration).__name__
        raise ValueError(f"calibration must be integer token ids [batch, T], got {got}")
    sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}

    def hook(name):
        def accumulate(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] += (x * x).sum(0)
        return accumulate

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        model(calibration)
    finally:
        for handle in handles:
            handle.remove()
    return {name: s.sqrt() for name, s in sums.items()}


def prune_llama(model: Llama, method: str = "wanda", sparsity: float | None = 0.5,
                n_m: tuple[int, int] | None = None, norms: dict[str, torch.Tensor] | None = None,
                per_row: bool | None = None) -> Llama:
    """A copy of `model` with every linear layer of its blocks pruned; the original is untouched.

    method "magnitude" or "wanda" (which needs `norms` from `input_norms`). Either `sparsity` (unstructured;
    the comparison group is the whole tensor for magnitude and each row for Wanda, as in Sun et al., unless
    `per_row` says otherwise) or `n_m=(n, m)` for N:M sparsity (then pass sparsity=None)."""
    layers = _linears(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if (sparsity is None) == (n_m is None):
        raise ValueError("give exactly one of sparsity (unstructured) and n_m (N:M), got "
                         f"sparsity={sparsity!r}, n_m={n_m!r}")
    if sparsity is not None:
        _check_sparsity(sparsity)
    elif not (isinstance(n_m, tuple) and len(n_m) == 2):
        raise ValueError(f"n_m must be a pair (n, m), e.g. (2, 4), got {n_m!r}")
    if method == "wanda":
        if not isinstance(norms, dict) or set(norms) != set(layers):
            raise ValueError("Wanda needs norms={layer name: input feature norms} for every linear layer "
                             "(from input_norms(model, calibration))")
    elif norms is not None:
        raise ValueError("magnitude pruning uses no activation norms; pass norms=None")
    per_row = (method == "wanda") if per_row is None else per_row
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in _linears(pruned).items():
            w = layer.weight
            scores = magnitude_scores(w) if method == "magnitude" else wanda_scores(w, norms[name])
            mask = nm_mask(scores, *n_m) if n_m is not None else unstructured_mask(scores, sparsity, per_row)
            w.mul_(mask)
    return pruned


def linear_sparsity(model: Llama) -> float:
    """The fraction of exact zeros among the weights of the blocks' linear layers."""
    layers = _linears(model).values()
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    return zeros / sum(layer.weight.numel() for layer in layers)


# ----------------------------------------------------------------------------------------------------------
# chapter 9's saved run

SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def chapter9_pruning_run(n_eval: int = 8, length: int = 257, calibration_tokens: tuple[int, ...] = (128, 512, 2048),
                         window: int = 128, sparsities: tuple[float, ...] = SWEEP) -> tuple[dict, dict]:
    """Chapter 9's saved pruning sweep (labkit.course.saved): SmolLM2 pruned by magnitude (per tensor) and by
    Wanda (per row, calibrated on calibration_tokens[1] training tokens) at each sparsity, both also at 2:4, and
    at 50%: magnitude per row (to separate the comparison group from the score) and Wanda calibrated on the other
    token counts. Every variant is scored on the same `n_eval` held-out windows. One thread, as the notebook.
    Returns (record, {}): per-window losses and KL divergences to the dense model (`labkit.compress.evaluate`) of
    each variant, the sparsity each reached, and how uneven the input feature norms are (each layer's largest
    norm over its median)."""
    from tqdm.auto import tqdm

    from ..gqa import heldout_windows
    from ..models import load_smollm2
    from .evaluate import evaluate, reference_logprobs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Llama.from_pretrained()
        tokenizer, _ = load_smollm2()
        windows = heldout_windows(tokenizer, n_eval, length)
        reference = reference_logprobs(model, windows)  # the dense model's next-token distributions
        train = heldout_windows(tokenizer, max(calibration_tokens) // window, window, split="train")
        norms = {t: input_norms(model, train[: t // window]) for t in calibration_tokens}
        default = calibration_tokens[1]
        variants = {"dense": lambda: model}
        for s in sparsities:
            variants[f"magnitude/{s}"] = lambda s=s: prune_llama(model, "magnitude", s)
            variants[f"wanda/{s}"] = lambda s=s: prune_llama(model, "wanda", s, norms=norms[default])
        variants["magnitude-row/0.5"] = lambda: prune_llama(model, "magnitude", 0.5, per_row=True)
        variants["magnitude/2:4"] = lambda: prune_llama(model, "magnitude", None, n_m=(2, 4))
        variants["wanda/2:4"] = lambda: prune_llama(model, "wanda", None, n_m=(2, 4), norms=norms[default])
        for t in calibration_tokens:
            if t != default:
                variants[f"wanda/0.5/cal{t}"] = lambda t=t: prune_llama(model, "wanda", 0.5, norms=norms[t])
        losses, kls, reached = {}, {}, {}
        for key, make in tqdm(variants.items(), desc="variants"):
            pruned = make()
            reached[key] = linear_sparsity(pruned)
            scores = evaluate(pruned, windows, reference)
            losses[key], kls[key] = scores["losses"], scores["kls"]
            del pruned
        outliers = {name: [] for name in LINEARS}
        for name, v in norms[default].items():
            outliers[name.split(".", 2)[2]].append(float(v.max() / v.median()))
    finally:
        torch.set_num_threads(threads)
    record = {"torch_threads": 1, "length": length, "eval_windows": n_eval, "calibration_window": window,
              "calibration_tokens": list(calibration_tokens), "default_calibration": default,
              "sparsities": list(sparsities), "losses": losses, "kl_to_dense": kls,
              "sparsity_reached": reached,
              "norm_max_over_median": outliers}
    return record, {}
