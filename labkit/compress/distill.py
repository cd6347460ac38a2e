"""Knowledge distillation: a tiny student learns from a teacher's whole next-token distribution, not one token.

The corpus says which token came next; a teacher (SmolLM2-135M) says how likely every token was. Hinton, Vinyals
& Dean (2015) train the student on those "soft targets", both softened by a temperature T:

    p = softmax(v / T)   teacher        q = softmax(z / T)   student        (v, z: logits)
    loss = T^2 * KL(p || q) = T^2 * sum_i p_i (log p_i - log q_i)

The gradient of KL(p || q) with respect to z_i is (q_i - p_i) / T, and at a high T, q_i - p_i ~ (z_i - v_i) / (N T)
for zero-mean logits over N tokens: softening alone shrinks the gradients like 1/T^2. The T^2 factor undoes that
(the gradient tends to (z_i - v_i) / N), so the soft loss keeps one scale whatever T is and can be mixed with the
hard loss:

    loss = alpha * T^2 * KL(p || q) + (1 - alpha) * cross_entropy(z, corpus token)

Why it helps: a hard target carries at most log2(V) bits and says nothing about the runners-up; a soft target
says that after "for x in" the token " range" is likely and " the" is not, at every position. That matters most
when the student sees few positions, as here: the teacher's forward pass is the expensive part.

    compact_log_probs   the teacher's log-probabilities over a small vocabulary (its ids + one "other" class)
    teacher_topk        run the teacher once and keep the top-k log-probabilities of every position (a cache)
    distill_loss        T^2 KL(p || q) from full teacher logits (the reference)
    topk_distill_loss   the same from a top-k cache: the teacher renormalised over its k most likely tokens
    train_student       hard, soft or mixed targets, same windows, same steps, same seed
    distill_run         chapter 9's saved run: SmolLM2 -> a tiny GPT, hard vs soft, held-out perplexity of both

The student uses SmolLM2's tokenizer (soft targets need the teacher's vocabulary: a character model's "next
character" is not something a token model's distribution gives directly), but not its 49,152-way output layer:
on this corpus that layer would cost more than the whole student. `CompactVocab` keeps the token ids that occur
in the training text and pools every other id into one class, for the teacher as for the student.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..transformer import GPTConfig, TinyGPT, TrainConfig, make_optimizer, update


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_logits(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        got = (tuple(x.shape), x.dtype) if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point tensor [..., vocab], got {got}")
    return x


# ---------------------------------------------------------------------------------------------------------
# the loss

def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """sum_i p_i (log p_i - log q_i) over the last dim; a token the teacher rules out (p_i = 0) adds 0."""
    return torch.where(log_p > -math.inf, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over positions (all dims but the last).

    The teacher is a target: no gradient flows into it."""
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape [..., vocab], got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    t = _check_temperature(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    return t * t * _kl(log_p, log_q).mean()


def topk_distill_loss(student_logits: Tensor, topk_logits: Tensor, topk_ids: Tensor,
                      temperature: float = 1.0) -> Tensor:
    """`distill_loss` with the teacher given by its k largest logits (or log-probabilities) per position.

    The teacher's distribution at temperature T is renormalised over those k tokens (the tail is dropped: with
    k large enough it holds little probability); the student's log q_T is its full softmax, read at the k ids.
    With k = vocab it equals `distill_loss`."""
    _check_logits(student_logits, "student_logits")
    _check_logits(topk_logits, "topk_logits")
    if not isinstance(topk_ids, Tensor) or topk_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"topk_ids must be an integer tensor, got "
                        f"{topk_ids.dtype if isinstance(topk_ids, Tensor) else type(topk_ids).__name__}")
    if topk_logits.shape != topk_ids.shape or topk_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"topk_logits and topk_ids must be [..., k] over the student's positions "
                         f"{tuple(student_logits.shape[:-1])}, got {tuple(topk_logits.shape)} and "
                         f"{tuple(topk_ids.shape)}")
    vocab = student_logits.shape[-1]
    if topk_logits.shape[-1] > vocab:
        raise ValueError(f"k = {topk_logits.shape[-1]} exceeds the student's vocabulary of {vocab}")
    if topk_ids.numel() and (topk_ids.min() < 0 or topk_ids.max() >= vocab):
        raise ValueError(f"topk_ids must lie in [0, {vocab}), got [{int(topk_ids.min())}, {int(topk_ids.max())}]")
    t = _check_temperature(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, topk_ids.long())
    log_p = F.log_softmax(topk_logits.detach().float() / t, dim=-1)
    return t * t * _kl(log_p, log_q).mean()


# ---------------------------------------------------------------------------------------------------------
# a vocabulary the student can afford, and the teacher's cache

@dataclass(frozen=True)
class CompactVocab:
    """Tokenizer ids `kept` become 0..len(kept)-1; every other id of the tokenizer becomes `other` = len(kept)."""
    kept: tuple[int, ...]
    full_size: int

    def __post_init__(self):
        if not self.kept or len(set(self.kept)) != len(self.kept):
            raise ValueError("kept must hold at least one id, each once")
        if min(self.kept) < 0 or max(self.kept) >= self.full_size:
            raise ValueError(f"kept ids must lie in [0, {self.full_size})")

    @classmethod
    def from_ids(cls, ids: Sequence[int] | Tensor, full_size: int) -> CompactVocab:
        """The distinct ids of a token stream (sorted), e.g. the training text's."""
        return cls(tuple(int(i) for i in torch.as_tensor(ids).unique().tolist()), full_size)

    @property
    def other(self) -> int:
        return len(self.kept)

    def __len__(self) -> int:
        return len(self.kept) + 1

    def table(self) -> Tensor:
        """[full_size] int64: the compact id of every tokenizer id."""
        table = torch.full((self.full_size,), self.other, dtype=torch.int64)
        table[torch.tensor(self.kept)] = torch.arange(len(self.kept))
        return table

    def encode(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("ids must be an integer tensor of tokenizer ids")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.full_size):
            raise ValueError(f"ids must lie in [0, {self.full_size})")
        return self.table()[ids.long()]


def compact_log_probs(logits: Tensor, vocab: CompactVocab) -> Tensor:
    """[..., full_size] logits -> [..., len(vocab)] log-probabilities: the kept ids' own, then log of the summed
    probability of every other id (so the compact distribution is the full one with the rest pooled)."""
    _check_logits(logits, "logits")
    if logits.shape[-1] != vocab.full_size:
        raise ValueError(f"logits must have the tokenizer's {vocab.full_size} entries in the last dim, got "
                         f"{logits.shape[-1]}")
    log_p = F.log_softmax(logits.float(), dim=-1)
    kept = torch.tensor(vocab.kept)
    rest = torch.ones(vocab.full_size, dtype=torch.bool)
    rest[kept] = False
    other = torch.logsumexp(log_p[..., rest], dim=-1, keepdim=True) if rest.any() else \
        torch.full_like(log_p[..., :1], -math.inf)
    return torch.cat([log_p[..., kept], other], dim=-1)


@torch.no_grad()
def teacher_topk(teacher: nn.Module, windows: Tensor, vocab: CompactVocab, k: int = 32, batch_size: int = 8,
                 progress: bool = False) -> tuple[Tensor, Tensor]:
    """Run the teacher once on windows [B, T+1] of tokenizer ids (inputs windows[:, :-1]) and keep, at each of the
    B x T positions, the k largest compact log-probabilities and their compact ids: ([B, T, k] float32, int64)."""
    if not isinstance(windows, Tensor) or windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError("windows must be a [B, T+1] tensor of token ids with T >= 1")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(vocab):
        raise ValueError(f"k must be an int in 1..{len(vocab)} (the compact vocabulary), got {k!r}")
    values, ids = [], []
    starts = range(0, windows.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="teacher")
    for b in starts:
        log_p = compact_log_probs(teacher(windows[b:b + batch_size, :-1]), vocab)
        top = log_p.topk(k, dim=-1)
        values.append(top.values)
        ids.append(top.indices)
    return torch.cat(values), torch.cat(ids)


# ---------------------------------------------------------------------------------------------------------
# training

@torch.no_grad()
def window_nll(model: nn.Module, windows: Tensor) -> Tensor:
    """The mean next-token loss (nats, float64) of each window [B, T+1]: model(windows[:, :-1]) predicts [:, 1:]."""
    logits = model(windows[:, :-1]).double()
    return F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").mean(1)


def train_student(model: TinyGPT, windows: Tensor, cfg: TrainConfig, alpha: float = 0.0,
                  topk: tuple[Tensor, Tensor] | None = None, temperature: float = 1.0,
                  eval_windows: Tensor | None = None, eval_every: int = 0, stop_after: int | None = None,
                  progress: bool = False) -> dict[str, list[float]]:
    """Train on batches of whole windows [N, T+1] drawn at random (seeded by cfg.seed) with
    alpha * T^2 KL(teacher || student) + (1 - alpha) * cross-entropy on the windows' own next tokens.

    alpha = 0 is the hard-label baseline (topk not needed); alpha > 0 needs topk = teacher_topk(...) of the same
    windows. The batches, the schedule (`labkit.transformer.lr_at`) and the optimiser do not depend on alpha, so
    runs that differ only in alpha see the same tokens in the same order. Returns {"loss": every step's training
    loss, "eval_step", "eval_loss": mean loss on eval_windows every eval_every steps}."""
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
    if not isinstance(windows, Tensor) or windows.ndim != 2 or windows.shape[1] != model.config.context + 1:
        raise ValueError(f"windows must be [N, context + 1 = {model.config.context + 1}] token ids, got "
                         f"{tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the soft loss's weight) must lie in [0, 1], got {alpha!r}")
    t = _check_temperature(temperature)
    if alpha > 0:
        if topk is None or topk[0].shape[:2] != (windows.shape[0], windows.shape[1] - 1):
            raise ValueError("alpha > 0 needs topk = (values, ids) [N, T, k] from teacher_topk on the same windows")
    if stop_after is not None and not (isinstance(stop_after, int) and 1 <= stop_after <= cfg.steps):
        raise ValueError(f"stop_after must be an int in 1..{cfg.steps} (cfg.steps), got {stop_after!r}")
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    history: dict[str, list[float]] = {"loss": [], "eval_step": [], "eval_loss": []}
    steps = range(cfg.steps if stop_after is None else stop_after)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"alpha={alpha:g}", leave=False)
    model.train()
    for step in steps:
        rows = torch.randint(0, windows.shape[0], (cfg.batch_size,), generator=generator)
        batch = windows[rows]
        logits = model(batch[:, :-1])
        loss = torch.zeros(())
        if alpha < 1:
            loss = loss + (1 - alpha) * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        if alpha > 0:
            loss = loss + alpha * topk_distill_loss(logits, topk[0][rows], topk[1][rows], t)
        update(model, opt, loss, step, cfg)
        history["loss"].append(loss.item())
        if eval_windows is not None and eval_every and (step + 1) % eval_every == 0:
            model.eval()
            history["eval_step"].append(step + 1)
            history["eval_loss"].append(float(window_nll(model, eval_windows).mean()))
            model.train()
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------------------
# chapter 9's saved run

DISTILL_STUDENT = dict(context=64, d_model=64, n_layers=2, n_heads=4)
DISTILL_TRAIN = dict(steps=150, batch_size=8, lr=1e-3, warmup=20, seed=0)
# the students of the run: (name, alpha, temperature); alpha = 0 is the hard-label baseline
DISTILL_STUDENTS = (("hard", 0.0, 1.0), ("soft-T1", 1.0, 1.0), ("soft-T2", 1.0, 2.0))
SAVED_STUDENTS = ("hard", "soft-T1")  # the weights kept in the saved run (the tied head is the embedding)


def distill_data(n_train: int = 128, n_eval: int = 32, context: int = 64):
    """(tokenizer, vocab, train windows, held-out windows) in compact ids, plus both in tokenizer ids.

    Training windows: the first n_train windows of context + 1 tokens of the course corpus's training text;
    held-out: the first n_eval of its held-out text (`labkit.gqa.heldout_windows`). The compact vocabulary keeps
    the ids of the whole training text (every held-out id outside it is scored as the "other" class)."""
    from ..corpus import load_corpus
    from ..gqa import heldout_windows
    from ..models import _quiet_transformers, smollm2_dir

    from transformers import AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())  # the tokenizer alone: no model to load
    train_full = tokenizer(load_corpus().train, return_tensors="pt")["input_ids"][0]
    vocab = CompactVocab.from_ids(train_full, len(tokenizer))
    train = heldout_windows(tokenizer, n_train, context + 1, split="train")
    heldout = heldout_windows(tokenizer, n_eval, context + 1)
    return tokenizer, vocab, vocab.encode(train), vocab.encode(heldout), train, heldout


def distill_run(k: int = 32, n_train: int = 96, n_eval: int = 24, eval_every: int = 15
                ) -> tuple[dict, dict[str, Tensor]]:
    """Chapter 9's saved run: SmolLM2-135M teaches a tiny GPT (`DISTILL_STUDENT`) on n_train windows.

    The teacher runs once over the training windows (top-k cache) and over the held-out windows (its own
    perplexity, the ceiling). Three students (`DISTILL_STUDENTS`) from the same initial weights, the same batches
    and steps: one on the corpus tokens (alpha = 0), two on the teacher's soft targets only (alpha = 1) at
    temperatures 1 and 2. All are scored on the same held-out windows. One thread, as the notebook.
    Returns (record, tensors): per-window held-out losses, training and held-out curves; the weights of
    `SAVED_STUDENTS` (without lm_head.weight, which is embed_tokens.weight) and the teacher's top-k cache."""
    from tqdm.auto import tqdm

    from ..llama import Llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, vocab, train, heldout, train_tok, heldout_tok = distill_data(n_train, n_eval, DISTILL_STUDENT["context"])
        teacher = Llama.from_pretrained()
        start = time.perf_counter()
        values, ids = teacher_topk(teacher, train_tok, vocab, k, progress=True)
        values = values.half().float()  # the cache is saved in float16: train on exactly what is saved
        teacher_seconds = time.perf_counter() - start
        with torch.no_grad():
            log_p = compact_log_probs(teacher(heldout_tok[:, :-1]), vocab).double()
        teacher_losses = -log_p.gather(-1, heldout[:, 1:, None])[..., 0].mean(1)
        del teacher
        cfg = TrainConfig(**DISTILL_TRAIN)
        students, histories, seconds = {}, {}, {}
        for name, alpha, temperature in tqdm(DISTILL_STUDENTS, desc="students"):
            torch.manual_seed(cfg.seed)
            model = TinyGPT(GPTConfig(vocab_size=len(vocab), **DISTILL_STUDENT))
            start = time.perf_counter()
            histories[name] = train_student(model, train, cfg, alpha, (values, ids), temperature, heldout,
                                            eval_every, progress=True)
            seconds[name] = round(time.perf_counter() - start, 1)
            students[name] = model
        losses = {name: window_nll(m, heldout) for name, m in students.items()}
    finally:
        torch.set_num_threads(threads)
    top_mass = float(values.double().exp().sum(-1).mean())
    record = {"seed": cfg.seed, "torch_threads": 1, "students": [list(s) for s in DISTILL_STUDENTS], "k": k,
              "n_train": n_train, "n_eval": n_eval, "student_config": DISTILL_STUDENT, "train_config": vars(cfg),
              "compact_vocab": len(vocab), "full_vocab": vocab.full_size, "topk_mass": top_mass,
              "teacher_seconds": round(teacher_seconds, 1), "student_seconds": seconds,
              "student_parameters": students["hard"].num_parameters(),
              "teacher_losses": teacher_losses.tolist(),
              "heldout_losses": {name: v.tolist() for name, v in losses.items()},
              "train_loss": {name: h["loss"] for name, h in histories.items()},
              "eval_step": histories["hard"]["eval_step"],
              "eval_loss": {name: h["eval_loss"] for name, h in histories.items()}}
    tensors = {**{f"{name}.{key}": v for name in SAVED_STUDENTS for key, v in students[name].state_dict().items()
                  if key != "lm_head.weight"},
               "topk.values": values.half(), "topk.ids": ids.to(torch.int16)}
    return record, tensors
