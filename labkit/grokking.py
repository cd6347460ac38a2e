"""Grokking: a network that memorises its training set first and generalises thousands of steps later.

Power et al. (2022, arXiv:2201.02177) trained small networks on tables of a binary operation modulo a prime,
such as (a + b) mod p, showing them a fraction of the p*p pairs. Training accuracy reached 100% early;
accuracy on the held-out pairs stayed at chance for far longer, then rose to ~100%. They named the delayed
jump *grokking* and found weight decay the intervention that shortened it most. Explanations followed:
Nanda et al. (2023, arXiv:2301.05217) reverse-engineered the generalising solution for modular addition
(rotations by a few frequencies) and saw it form gradually during the plateau, weight decay then removing the
memorising part; Liu et al. (2022, arXiv:2205.10343) relate the delay to the weights' norm: from a large
initialisation, weight decay slowly shrinks it into the range where the generalising solutions lie.

This module is the experiment at a CPU's scale:

    modular_table(p, op)        every pair (a, b) with its label a op b mod p
    split(n, fraction, seed)    a seeded random choice of the training pairs; the rest are held out
    ModularMLP                  embed a and b, concatenate, one ReLU layer, logits over the p residues
    train(config)               full-batch AdamW; curves of accuracy, loss and weight norm every few steps
    first_step_at(curve, level) the first logged step where a curve reaches a level (e.g. 95% accuracy)
    fourier_power(embedding)    how an embedding table's norm spreads over the frequencies of the residues
    grokking_run()              the saved run (labkit.course.saved): weight decay on and off, several seeds

The model is chapter 2's MLP language model with a window of two tokens (and ReLU instead of tanh).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, math.isqrt(n) + 1))


def modular_table(p: int, op: str = "+") -> tuple[torch.Tensor, torch.Tensor]:
    """All p*p pairs as ids [p*p, 2] (row a*p + b holds (a, b)) and their labels (a op b) mod p, [p*p]."""
    if isinstance(p, bool) or not isinstance(p, int) or not _is_prime(p):
        raise ValueError(f"p must be a prime number (the residues mod p then form a field), got {p!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {sorted(OPS)}, got {op!r}")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b], 1), OPS[op](a, b) % p  # torch's % is non-negative for a positive modulus


def split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of round(fraction * n) training examples, chosen at random (seeded), and of the other ones."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction!r}")
    n_train = round(fraction * n)
    if not 0 < n_train < n:
        raise ValueError(f"fraction {fraction} of {n} examples leaves an empty training or held-out set")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_train].sort().values, order[n_train:].sort().values


@dataclass(frozen=True)
class GrokConfig:
    """The task, the model and its full-batch AdamW run."""
    p: int = 59                   # the modulus (a prime); p*p = 3481 pairs
    op: str = "+"
    train_fraction: float = 0.4   # of the p*p pairs the model trains on; the rest are held out
    embed_dim: int = 64
    hidden: int = 128
    init_scale: float = 1.0       # multiplies every initial weight (Liu et al. relate the delay to the initial norm)
    lr: float = 5e-3
    weight_decay: float = 1.0     # AdamW's decoupled decay, on every parameter: each step w -= lr * wd * w
    betas: tuple[float, float] = (0.9, 0.98)
    steps: int = 6000
    log_every: int = 10           # evaluate every pair (train and held-out) every this many steps
    seed: int = 0                 # the split and the initial weights
    threads: int = 1              # torch.set_num_threads during training: results may depend on the split

    def __post_init__(self) -> None:
        for name in ("p", "embed_dim", "hidden", "steps", "log_every", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GrokConfig.{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"GrokConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.init_scale, (int, float)) and 0 < self.init_scale < math.inf):
            raise ValueError(f"GrokConfig.init_scale must be a finite number > 0, got {self.init_scale!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"GrokConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")


class ModularMLP(nn.Module):
    """logits = W2 relu(W1 [E[a]; E[b]] + b1) + b2: two embedded operands, one hidden layer, p outputs."""

    def __init__(self, p: int, embed_dim: int, hidden: int):
        super().__init__()
        self.p = p
        self.embed = nn.Embedding(p, embed_dim)  # N(0, 1) entries: a large initial norm (see the docstring)
        self.hidden = nn.Linear(2 * embed_dim, hidden)
        self.out = nn.Linear(hidden, p)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Logits [B, p] for operand ids [B, 2]."""
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must have shape [batch, 2], got {tuple(pairs.shape)}")
        if pairs.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"pairs must hold integer operand ids, got {pairs.dtype}")
        return self.out(F.relu(self.hidden(self.embed(pairs).flatten(1))))


def weight_norm(model: nn.Module) -> float:
    """The L2 norm of all parameters together, sqrt(sum of w^2): what weight decay pulls down."""
    return math.sqrt(sum(float(w.detach().pow(2).sum()) for w in model.parameters()))


CURVES = ("train_acc", "heldout_acc", "train_loss", "heldout_loss", "weight_norm")


def train(config: GrokConfig, stop_after: int | None = None, progress: bool = False,
          ) -> tuple[ModularMLP, dict[str, list]]:
    """Train a ModularMLP on config's task, full batch. Returns (model, curves): `step` (0, log_every, ...) and
    for each logged step the accuracy and mean cross-entropy on the training and held-out pairs and the
    weight norm. stop_after=N stops after N steps (the same first N steps as the full run: a live slice)."""
    if not isinstance(config, GrokConfig):
        raise TypeError(f"config must be a GrokConfig, got {type(config).__name__}")
    last = config.steps if stop_after is None else stop_after
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= config.steps:
        raise ValueError(f"stop_after must be an int in 1..{config.steps}, got {stop_after!r}")
    pairs, labels = modular_table(config.p, config.op)
    train_idx, heldout_idx = split(len(labels), config.train_fraction, config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        model = ModularMLP(config.p, config.embed_dim, config.hidden)
        if config.init_scale != 1:
            with torch.no_grad():
                for w in model.parameters():
                    w.mul_(config.init_scale)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                betas=config.betas)
        curves: dict[str, list] = {"step": [], **{name: [] for name in CURVES}}

        def log(step: int) -> None:
            with torch.no_grad():
                logits = model(pairs)  # one pass over every pair, then split into train and held-out
                losses = F.cross_entropy(logits, labels, reduction="none")
                correct = (logits.argmax(-1) == labels).double()
            curves["step"].append(step)
            for part, idx in (("train", train_idx), ("heldout", heldout_idx)):
                curves[f"{part}_acc"].append(float(correct[idx].mean()))
                curves[f"{part}_loss"].append(float(losses[idx].double().mean()))
            curves["weight_norm"].append(weight_norm(model))

        steps = range(1, last + 1)
        if progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc=f"wd={config.weight_decay:g} seed={config.seed}", leave=False)
        x, y = pairs[train_idx], labels[train_idx]
        log(0)
        for step in steps:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % config.log_every == 0:
                log(step)
    finally:
        torch.set_num_threads(threads)
    return model, curves


def first_step_at(steps: list[int], curve: list[float], level: float) -> int | None:
    """The first logged step where curve >= level, or None if it never gets there."""
    if len(steps) != len(curve):
        raise ValueError(f"steps and curve differ in length: {len(steps)} vs {len(curve)}")
    return next((s for s, v in zip(steps, curve) if v >= level), None)


def fourier_power(embedding: torch.Tensor) -> torch.Tensor:
    """For an embedding table [p, d] (row a embeds residue a), the share of its squared norm at each frequency
    k = 0..p//2 along the residue axis: the discrete Fourier transform over a, with k and p - k counted together.
    Nanda et al. found the generalising solution embeds a through cos(2 pi k a / p) and sin(2 pi k a / p) for a
    few k; a lookup table of memorised answers has no reason to prefer any frequency."""
    if embedding.ndim != 2 or embedding.shape[0] < 3 or embedding.shape[0] % 2 == 0:
        raise ValueError(f"embedding must be a table [p, d] with p odd (a prime > 2), got {tuple(embedding.shape)}")
    power = torch.fft.rfft(embedding.detach().double(), dim=0).abs().pow(2).sum(1)  # [p // 2 + 1]
    power[1:] *= 2  # p is odd: every k >= 1 has its mirror p - k, which rfft leaves out (same magnitude)
    return power / power.sum()


def run_key(weight_decay: float, seed: int) -> str:
    """The saved run's name for one (weight decay, seed) pair, as its tensors are stored: 'wd0_5_seed1'."""
    return f"wd{weight_decay:g}_seed{seed}".replace(".", "_")


# The saved run: weight decay 1 (as Nanda et al.), a weaker 0.5, and none, each with three seeds (a seed draws
# both the split and the initial weights). `python -m labkit.course save 02-grokking` runs it (~3 CPU-minutes).
SAVED_CONFIG = GrokConfig()
SAVED_DECAYS = (1.0, 0.5, 0.0)
SAVED_SEEDS = (0, 1, 2)


def grokking_run(config: GrokConfig = SAVED_CONFIG, decays: tuple[float, ...] = SAVED_DECAYS,
                 seeds: tuple[int, ...] = SAVED_SEEDS, progress: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train config once per (weight decay, seed). Returns (record, tensors): the config and, per run, its
    curves (rounded to 6 significant digits); the tensors are the final weights of each, under run_key()."""
    runs, tensors = [], {}
    for wd in decays:
        for seed in seeds:
            cfg = GrokConfig(**{**asdict(config), "weight_decay": wd, "seed": seed})
            model, curves = train(cfg, progress=progress)
            runs.append({"weight_decay": wd, "seed": seed,
                         **{k: v if k == "step" else [float(f"{x:.6g}") for x in v] for k, v in curves.items()}})
            tensors.update({f"{run_key(wd, seed)}.{k}": v for k, v in model.state_dict().items()})
    return {"config": asdict(config), "runs": runs}, tensors
