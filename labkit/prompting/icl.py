"""In-context learning, measured: few-shot topic classification scored by label log-probabilities.

A prompt that shows k labelled sentences ("demonstrations") and then an unlabelled one lets a model classify
without any training: the model's next token after "Topic:" is its answer. We read the answer as the model's
log-probability of each label's text (`llm.logprobs`), renormalised over the labels, so every query gets a full
probability distribution rather than a string that may not be a label at all.

What this module measures on SmolLM2-135M (`icl_run`, saved as the run `10-icl`):
  * accuracy against the number of shots k, over several random draws and orders of the demonstrations;
  * majority-label bias: skew the demonstrations' label counts and the predictions drift to the majority;
  * recency bias: the label of the *last* demonstration is predicted more often;
  * contextual calibration (Zhao et al. 2021, "Calibrate before use"): estimate the prompt's own bias from
    content-free inputs ("N/A", "", "[MASK]"), divide it out, and measure the accuracy before and after.

The data set is data/classification/ (256 sentences written for the course, four topics; its README).
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence

import torch

from labkit.course.manifest import ROOT
from labkit.llm.base import LLM

DATA = ROOT / "data" / "classification" / "data.jsonl"
LABELS: tuple[str, ...] = ("sports", "food", "science", "music")
SPLITS = ("train", "dev", "test")
INSTRUCTION = "Classify the topic of each sentence as sports, food, science or music.\n\n"
CONTENT_FREE = ("N/A", "", "[MASK]")  # the content-free inputs Zhao et al. 2021 average over


def load_classification(split: str | None = None) -> list[dict]:
    """The course's topic-classification set: [{"id", "text", "label", "split"}], in file order.
    split: "train" (the pool demonstrations are drawn from), "dev", "test", or None for all 256 rows."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line]
    return [r for r in rows if split is None or r["split"] == split]


# ---- calibration ------------------------------------------------------------------------------------------------

def contextual_calibrate(label_probs: torch.Tensor, content_free_probs: torch.Tensor) -> torch.Tensor:
    """Contextual calibration (Zhao et al. 2021): q = W p with W = diag(p_cf)^-1, each row renormalised to sum 1.

    label_probs [N, L]: the model's probabilities over the L labels for N inputs (renormalised over the labels).
    content_free_probs [L]: the mean label distribution the *same prompt* gives content-free inputs ("N/A", "",
    "[MASK]"). A prompt that leans towards one label leans that way for a content-free input too, so dividing
    by p_cf removes the lean: a content-free input itself comes out uniform.
    """
    for name, t, rank in (("label_probs", label_probs, 2), ("content_free_probs", content_free_probs, 1)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            raise ValueError(f"{name} must have {rank} dimension(s) "
                             f"({'[N, L]' if rank == 2 else '[L]'}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"{name} must be finite and non-negative (probabilities)")
    if label_probs.shape[1] != content_free_probs.shape[0]:
        raise ValueError(f"label_probs has {label_probs.shape[1]} labels per row but content_free_probs has "
                         f"{content_free_probs.shape[0]}")
    if (content_free_probs == 0).any():
        raise ValueError("content_free_probs has a zero: W = diag(p_cf)^-1 would divide by zero")
    if (label_probs.sum(dim=1) == 0).any():
        raise ValueError("a row of label_probs is all zeros: it cannot be renormalised")
    q = label_probs / content_free_probs  # W p, row by row: each label's probability divided by its prior lean
    return q / q.sum(dim=1, keepdim=True)


# ---- prompts and scoring -------------------------------------------------------------------------------------------

def format_example(text: str, label: str | None = None) -> str:
    """One demonstration ("Sentence: ...\\nTopic: sports\\n\\n"), or, without a label, the query ending at "Topic:"."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return f"Sentence: {text}\nTopic:" + ("" if label is None else f" {label}\n\n")


def few_shot_prompt(demos: Sequence[dict], text: str, instruction: str = INSTRUCTION) -> str:
    """instruction + the demonstrations in the given order + the query. Every query with the same demos shares
    the same prefix, which the local backend runs once (prefix caching)."""
    return instruction + "".join(format_example(d["text"], d["label"]) for d in demos) + format_example(text)


def label_probs(llm: LLM, prompt: str, labels: Sequence[str] = LABELS) -> torch.Tensor:
    """[L] probabilities of the labels as the next words, renormalised over the labels (a softmax of their
    log-probabilities). Each label is scored as " label" (a space, then the word), the way demos show it."""
    scores = torch.tensor(llm.logprobs(prompt, [" " + label for label in labels]), dtype=torch.float64)
    return torch.softmax(scores, dim=0)


def draw_demos(pool: Sequence[dict], counts: dict[str, int], seed: int) -> list[dict]:
    """A seeded random draw of demonstrations with counts[label] of each label, in a random order."""
    rng = random.Random(seed)
    demos = []
    for label in sorted(counts):
        candidates = [r for r in pool if r["label"] == label]
        if counts[label] > len(candidates):
            raise ValueError(f"asked for {counts[label]} {label!r} demonstrations; the pool has {len(candidates)}")
        demos += rng.sample(candidates, counts[label])
    rng.shuffle(demos)
    return demos


def balanced_counts(k: int, seed: int, labels: Sequence[str] = LABELS) -> dict[str, int]:
    """k demonstrations spread as evenly as possible over the labels; which labels get the extra one (when k is
    not a multiple of L) is drawn with the seed, so over draws no label is favoured."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    extra = random.Random(seed).sample(list(labels), k % len(labels))
    return {label: k // len(labels) + (label in extra) for label in labels}


def evaluate(llm: LLM, demos: Sequence[dict], queries: Sequence[dict],
             labels: Sequence[str] = LABELS) -> dict:
    """Score every query after the same demonstrations, and the content-free inputs for calibration.

    Returns {"probs" [N, L], "content_free" [L], "calibrated" [N, L], "gold" [N] (label indices),
    "accuracy", "calibrated_accuracy"}."""
    probs = torch.stack([label_probs(llm, few_shot_prompt(demos, q["text"]), labels) for q in queries])
    p_cf = torch.stack([label_probs(llm, few_shot_prompt(demos, t), labels) for t in CONTENT_FREE]).mean(0)
    calibrated = contextual_calibrate(probs, p_cf)
    gold = torch.tensor([labels.index(q["label"]) for q in queries])
    return {"probs": probs, "content_free": p_cf, "calibrated": calibrated, "gold": gold,
            "accuracy": float((probs.argmax(1) == gold).float().mean()),
            "calibrated_accuracy": float((calibrated.argmax(1) == gold).float().mean())}
