"""A Bengio-style feed-forward neural language model (Bengio et al. 2003), plus two small history lessons.

The model reads a fixed window of the last `context` token ids, looks each one up in a learned embedding
table, concatenates the embeddings, and maps them through one tanh hidden layer to logits over the
vocabulary:

    x = [E[w_{t-c}]; ...; E[w_{t-1}]]            (c * d numbers)
    h = tanh(W1 x + b1)
    P(w_t | window) = softmax(W2 h + b2)

It is an n-gram model (n = context + 1) that *shares statistical strength*: similar tokens get similar
embeddings, so a window never seen in training still gets a sensible prediction. Unlike the count tables of
chapter 1, its size does not grow with n.

Public API (chapter 3 imports these to compare its transformer on the same split; keep them stable):
  MLPConfig, CHAPTER2_CONFIG, MLPLanguageModel, TrainingHistory,
  train_mlp_lm(train_ids, vocab_size, config, heldout_ids=None, progress=True) -> (model, history)
  log_probs(model, ids, context=None), perplexity(model, ids, context=None), sample(model, prompt_ids, length)
  nearest_neighbours(embeddings, query, k), tanh_rnn_gradient_norms(lengths, ...)
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    """Hyperparameters of the model and of its training run."""
    context: int = 6           # tokens the model sees before the one it predicts (n-gram order - 1)
    embed_dim: int = 48        # d: size of each token's embedding
    hidden: int = 512          # width of the tanh hidden layer
    embed_std: float = 1.0     # initial embeddings ~ N(0, embed_std^2), as nn.Embedding's default
    steps: int = 4000          # optimiser steps
    batch_size: int = 256      # windows per step, sampled uniformly from the training text
    lr: float = 3e-3           # peak AdamW learning rate; cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01  # on the weight matrices only (not biases or embeddings)
    eval_every: int = 400      # measure (and print) losses every this many steps
    seed: int = 0              # seeds the initial weights and the batch order
    # torch.set_num_threads during training. One thread: matrices this small gain little from a second one,
    # and when other processes share the cores, two threads were measured 4x *slower* (they wait for each
    # other). The losses came out identical with 1 and 2 threads here, but fix it anyway: in general, float
    # results may depend on how a matmul is split between threads.
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("context", "embed_dim", "hidden", "steps", "batch_size", "eval_every", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPConfig.{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"MLPConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"MLPConfig.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if not (isinstance(self.embed_std, (int, float)) and 0 < self.embed_std < math.inf):
            raise ValueError(f"MLPConfig.embed_std must be a finite number > 0, got {self.embed_std!r}")
        if self.weight_decay < 0:
            raise ValueError(f"MLPConfig.weight_decay must be >= 0, got {self.weight_decay!r}")


# The configuration chapter 2's notebook trains at the character level (~35 s on one idle CPU core; held-out
# perplexity ~4.0 on chapter 1's split). Chapter 3 trains the same model with it to compare its transformer
# on the same split and tokens.
CHAPTER2_CONFIG = MLPConfig()


class MLPLanguageModel(nn.Module):
    """Embeddings -> concatenation -> tanh hidden layer -> logits, over a fixed window of `context` tokens."""

    def __init__(self, vocab_size: int, config: MLPConfig):
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        if not isinstance(config, MLPConfig):
            raise TypeError(f"config must be an MLPConfig, got {type(config).__name__}")
        self.vocab_size, self.config = vocab_size, config
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        nn.init.normal_(self.embed.weight, std=config.embed_std)
        self.hidden = nn.Linear(config.context * config.embed_dim, config.hidden)
        self.out = nn.Linear(config.hidden, vocab_size)

    @property
    def context(self) -> int:
        return self.config.context

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab_size] of the token after each window of ids [B, context]."""
        if windows.ndim != 2 or windows.shape[1] != self.context:
            raise ValueError(f"windows must have shape [batch, {self.context}], got {tuple(windows.shape)}")
        if windows.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"windows must hold integer token ids, got {windows.dtype}")
        x = self.embed(windows).flatten(1)  # [B, context * d]: the concatenated embeddings
        return self.out(torch.tanh(self.hidden(x)))


@dataclass
class TrainingHistory:
    """Losses (mean cross-entropy in nats per token) measured every `eval_every` steps."""
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)    # mean over the steps since the last report
    heldout_loss: list[float] = field(default_factory=list)  # whole held-out text (empty if none given)
    seconds: float = 0.0                                     # wall-clock training time (varies run to run)


def _as_ids(ids: object, vocab_size: int | None, name: str) -> torch.Tensor:
    """Validate a 1-D integer id sequence and return it as an int64 tensor."""
    if isinstance(ids, torch.Tensor):
        arr = ids.detach().cpu()
        is_int = not arr.is_floating_point() and not arr.is_complex() and arr.dtype != torch.bool
    else:
        arr = np.asarray(ids)
        is_int = arr.size == 0 or np.issubdtype(arr.dtype, np.integer)
        arr = torch.from_numpy(arr.astype(np.int64)) if is_int else arr
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {tuple(arr.shape)}")
    if not is_int:
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    arr = arr.to(torch.int64)
    if arr.numel() and (int(arr.min()) < 0 or (vocab_size is not None and int(arr.max()) >= vocab_size)):
        raise ValueError(f"{name} must lie in [0, {vocab_size}), got values in [{int(arr.min())}, {int(arr.max())}]")
    return arr


def _windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (window of `context` ids, next id) pairs of a sequence: [N - context, context] and [N - context]."""
    return ids.unfold(0, context, 1)[:-1], ids[context:]


def _lr_at(step: int, config: MLPConfig) -> float:
    """Cosine decay from lr to lr * min_lr_ratio over the run (step counts from 0)."""
    progress = step / max(config.steps - 1, 1)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _mean_nll(model: MLPLanguageModel, ids: torch.Tensor, start: int, batch: int = 8192) -> torch.Tensor:
    """-log P(ids[i] | the model's window before it), float64, for every i >= start."""
    x, y = _windows(ids, model.context)
    x, y = x[start - model.context:], y[start - model.context:]
    out = torch.empty(y.numel(), dtype=torch.float64)
    for i in range(0, y.numel(), batch):  # in chunks: the logits of 47k windows at once would be big
        logits = model(x[i:i + batch]).double()
        out[i:i + batch] = F.cross_entropy(logits, y[i:i + batch], reduction="none")
    return out


def train_mlp_lm(train_ids: Sequence[int] | np.ndarray | torch.Tensor, vocab_size: int, config: MLPConfig,
                 heldout_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
                 progress: bool | Callable[[str], None] = True) -> tuple[MLPLanguageModel, TrainingHistory]:
    """Train an MLPLanguageModel with AdamW on random windows of `train_ids`; return (model in eval mode, history).

    Every `config.eval_every` steps (and after the last) it records the mean training loss since the last
    report and, if `heldout_ids` is given, the loss on the whole held-out text. `progress=True` prints one line
    per report, a callable receives that line instead, False is silent. With the same config, data and thread
    count the run is deterministic: the initial weights are those of `MLPLanguageModel(vocab_size, config)`
    built right after `torch.manual_seed(config.seed)`, and a generator seeded with config.seed draws the batches.
    """
    if not isinstance(config, MLPConfig):
        raise TypeError(f"config must be an MLPConfig, got {type(config).__name__}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    vocab_size = int(vocab_size)
    train = _as_ids(train_ids, vocab_size, "train_ids")
    if train.numel() <= config.context:
        raise ValueError(f"train_ids has {train.numel()} tokens: need more than context = {config.context}")
    heldout = None if heldout_ids is None else _as_ids(heldout_ids, vocab_size, "heldout_ids")
    if heldout is not None and heldout.numel() <= config.context:
        raise ValueError(f"heldout_ids has {heldout.numel()} tokens: need more than context = {config.context}")
    report = print if progress is True else (progress or None)

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)  # matmul results (hence every printed loss) depend on the thread count
    try:
        torch.manual_seed(config.seed)
        model = MLPLanguageModel(vocab_size, config)
        decay = [p for name, p in model.named_parameters() if name.endswith("weight") and p.ndim == 2
                 and not name.startswith("embed")]
        no_decay = [p for name, p in model.named_parameters() if all(p is not q for q in decay)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
        gen = torch.Generator().manual_seed(config.seed)
        x_all, y_all = _windows(train, config.context)
        history, running, since = TrainingHistory(), 0.0, 0
        start = time.perf_counter()
        for step in range(config.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, config)
            idx = torch.randint(0, y_all.numel(), (config.batch_size,), generator=gen)
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running, since = running + loss.item(), since + 1
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                history.steps.append(step + 1)
                history.train_loss.append(running / since)
                line = f"step {step + 1:>5}/{config.steps}  train loss {running / since:.3f}"
                running, since = 0.0, 0
                if heldout is not None:
                    model.eval()
                    held = float(_mean_nll(model, heldout, config.context).mean())
                    model.train()
                    history.heldout_loss.append(held)
                    line += f"  held-out loss {held:.3f} (perplexity {math.exp(held):.2f})"
                if report:
                    report(line)
        history.seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return model.eval(), history


def log_probs(model: MLPLanguageModel, ids: Sequence[int] | np.ndarray | torch.Tensor,
              context: int | None = None) -> np.ndarray:
    """Natural-log P(ids[i] | the model.context ids before it) for i = context, ..., len(ids) - 1 (float64).

    The first `context` tokens are only read, never scored, because the model needs a full window before it
    can predict. `context` defaults to the model's window and may be larger (never smaller): pass e.g. a
    transformer's block size to score exactly the same tokens as that model does.
    """
    if not isinstance(model, MLPLanguageModel):
        raise TypeError(f"model must be an MLPLanguageModel, got {type(model).__name__}")
    context = model.context if context is None else context
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < model.context:
        raise ValueError(f"context must be an int >= the model's window ({model.context}), got {context!r}")
    ids = _as_ids(ids, model.vocab_size, "ids")
    if ids.numel() <= context:
        raise ValueError(f"ids has {ids.numel()} tokens: need more than context = {context} to score any")
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(model.config.threads)  # the thread count training used (see MLPConfig.threads)
    try:
        return -_mean_nll(model, ids, int(context)).numpy()
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)


def perplexity(model: MLPLanguageModel, ids: Sequence[int] | np.ndarray | torch.Tensor,
               context: int | None = None) -> float:
    """exp(-mean log P) over ids[context:], each token predicted from the model's window before it.

    See `log_probs` for which tokens are scored: the first `context` ones (default: the model's window) are
    context only.
    """
    return float(np.exp(-log_probs(model, ids, context).mean()))


@torch.no_grad()
def sample(model: MLPLanguageModel, prompt_ids: Sequence[int] | np.ndarray | torch.Tensor, length: int,
           temperature: float = 1.0, seed: int = 0) -> list[int]:
    """Sample `length` ids after `prompt_ids` (at least model.context of them), with a temperature."""
    if not isinstance(model, MLPLanguageModel):
        raise TypeError(f"model must be an MLPLanguageModel, got {type(model).__name__}")
    history = _as_ids(prompt_ids, model.vocab_size, "prompt_ids").tolist()
    if len(history) < model.context:
        raise ValueError(f"prompt_ids needs at least context = {model.context} ids, got {len(history)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[int] = []
    for _ in range(length):
        window = torch.tensor([history[-model.context:]])
        probs = torch.softmax(model(window)[0].double() / temperature, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=gen))
        out.append(token)
        history.append(token)
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------------------
# looking inside: which tokens did the model put close together?

def nearest_neighbours(embeddings: torch.Tensor, query: int, k: int = 5) -> list[tuple[int, float]]:
    """The k rows most similar to row `query` by cosine similarity, as (row, cosine), most similar first.

    The query itself is left out; ties go to the lower row, so the answer is reproducible.
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        raise ValueError("embeddings must be a 2-D tensor [vocab, dim]")
    n = embeddings.shape[0]
    if isinstance(query, bool) or not isinstance(query, (int, np.integer)) or not 0 <= query < n:
        raise ValueError(f"query must be a row index in [0, {n}), got {query!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an int in [1, {n - 1}], got {k!r}")
    unit = F.normalize(embeddings.detach().double(), dim=1)
    cos = unit @ unit[int(query)]
    cos[int(query)] = -math.inf
    order = np.argsort(-cos.numpy(), kind="stable")[:k]
    return [(int(i), float(cos[i])) for i in order]


# ----------------------------------------------------------------------------------------------------------
# why recurrent networks struggled: vanishing gradients (Hochreiter 1991; Bengio et al. 1994)

def tanh_rnn_gradient_norms(lengths: Sequence[int], hidden: int = 64, weight_scale: float = 1.0,
                            seed: int = 0, trials: int = 8) -> list[float]:
    """||d h_T / d x_1||: how much a plain tanh RNN's last state depends on its first input, per length T.

    The RNN is h_t = tanh(W h_{t-1} + U x_t) with random W, U ~ N(0, weight_scale^2 / hidden) and random
    inputs. Backpropagation multiplies one Jacobian diag(1 - h_t^2) W per step; with the weights at this
    scale each factor shrinks vectors on average, so the gradient decays roughly exponentially in T.
    Returns the norm of the gradient of sum(h_T) w.r.t. x_1, averaged over `trials` random draws.
    """
    lengths = [int(t) for t in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be a non-empty list of ints >= 1, got {lengths}")
    if hidden < 1 or trials < 1 or not weight_scale > 0:
        raise ValueError("hidden and trials must be >= 1 and weight_scale > 0")
    gen = torch.Generator().manual_seed(seed)
    norms = []
    for T in lengths:
        total = 0.0
        for _ in range(trials):
            W = torch.randn(hidden, hidden, generator=gen, dtype=torch.float64) * weight_scale / math.sqrt(hidden)
            U = torch.randn(hidden, hidden, generator=gen, dtype=torch.float64) / math.sqrt(hidden)
            xs = torch.randn(T, hidden, generator=gen, dtype=torch.float64).requires_grad_(True)
            h = torch.zeros(hidden, dtype=torch.float64)
            for t in range(T):
                h = torch.tanh(W @ h + U @ xs[t])
            (grad,) = torch.autograd.grad(h.sum(), xs)
            total += float(grad[0].norm())
        norms.append(total / trials)
    return norms
