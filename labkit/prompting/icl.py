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
from collections import Counter
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


def sweep_demos(pool: Sequence[dict], k: int, draw: int, seed: int = 0) -> list[dict]:
    """The demonstrations of draw number `draw` with k shots in icl_run's sweep: balanced, in a random order.
    One seed per (k, draw), so adding a k or a draw leaves the others as they were."""
    s = seed + 100 * k + draw
    return draw_demos(pool, balanced_counts(k, s), s)


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


# ---- the experiment (saved run 10-icl) ------------------------------------------------------------------------------

def eval_queries(per_label: int = 10) -> list[dict]:
    """The first `per_label` test sentences of each label, in file order (a balanced subset of the test split)."""
    if isinstance(per_label, bool) or not isinstance(per_label, int) or not 1 <= per_label <= 20:
        raise ValueError(f"per_label must be an int in 1..20 (the test split has 20 per label), got {per_label!r}")
    seen: Counter[str] = Counter()
    out = []
    for r in load_classification("test"):
        seen[r["label"]] += 1
        if seen[r["label"]] <= per_label:
            out.append(r)
    return out


def label_shares(preds: Sequence[int], n_labels: int = len(LABELS)) -> list[float]:
    """The fraction of predictions that are each label (label indices in, one share per label out)."""
    if not preds:
        raise ValueError("preds is empty")
    return [sum(p == j for p in preds) / len(preds) for j in range(n_labels)]


def bias_summary(record: dict) -> dict:
    """Majority-label and recency bias from a saved icl_run record, raw and calibrated.

    majority: the share of predictions that are the demonstrations' majority label, against the share of that
      same label when it is a minority (the other skewed prompts) -- each label counted once as each.
    recency: the share of predictions that are the last demonstration's label, against the share of that label
      in the orders where it is not last (the same four demonstrations, rotated)."""
    out = {}
    for kind, key in (("majority", "majority"), ("recency", "last")):
        configs = record[kind]
        for preds in ("preds", "calibrated_preds"):
            hit, other = [], []
            for c in configs:
                j = record["labels"].index(c[key])
                hit.append(label_shares(c[preds])[j])
                other += [label_shares(o[preds])[j] for o in configs if o[key] != c[key]]
            out[f"{kind}_{preds}"] = {"when_favoured": round(sum(hit) / len(hit), 6),
                                      "otherwise": round(sum(other) / len(other), 6)}
    return out


def _summary(values: Sequence[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": round(float(t.mean()), 6), "std": round(float(t.std(correction=0)), 6),
            "min": round(float(t.min()), 6), "max": round(float(t.max()), 6)}


def _config(llm: LLM, demos: list[dict], queries: list[dict], **about) -> dict:
    """One evaluation, as plain numbers: predictions raw and calibrated, and the content-free distribution."""
    r = evaluate(llm, demos, queries)
    raw, cal = r["probs"].argmax(1), r["calibrated"].argmax(1)
    return {**about, "demo_ids": [d["id"] for d in demos], "demo_labels": [d["label"] for d in demos],
            "accuracy": r["accuracy"], "calibrated_accuracy": r["calibrated_accuracy"],
            "preds": raw.tolist(), "calibrated_preds": cal.tolist(),
            "content_free": [round(float(p), 6) for p in r["content_free"]], "_probs": r["probs"]}


def icl_run(llm: LLM | None = None, seed: int = 0, shots: Sequence[int] = (0, 1, 2, 4, 8), draws: int = 5,
            per_label: int = 10, slice_k: int = 2, slice_queries: int = 10, progress: bool = True) -> dict:
    """The chapter's ICL measurements as a plain dict (saved run 10-icl). Every draw is seeded from `seed`.

    sweep: for k in shots and each of `draws` draws (k = 0 has one: there is nothing to draw), balanced
      demonstrations in a random order; accuracy before and after contextual calibration.
    majority: 8 demonstrations, 5 of one label and 1 of each other, each label the majority once.
    recency: one demonstration per label in four orders (a cyclic rotation), each label last once.
    slice: the label probabilities of the first `slice_queries` queries in the k = slice_k, draw 0 prompt, for
      the notebook's live re-run.
    """
    from tqdm.auto import tqdm

    from labkit.llm import connect

    llm = llm if llm is not None else connect()
    pool, queries = load_classification("train"), eval_queries(per_label)
    plan = [("sweep", k, d) for k in shots for d in range(1 if k == 0 else draws)]
    plan += [("majority", 8, i) for i in range(len(LABELS))] + [("recency", 4, i) for i in range(len(LABELS))]
    sweep, majority, recency, slice_ = [], [], [], None
    recency_demos = draw_demos(pool, {label: 1 for label in LABELS}, seed + 2000)
    for kind, k, i in tqdm(plan, desc="prompts", disable=not progress):
        if kind == "sweep":
            out = _config(llm, sweep_demos(pool, k, i, seed), queries, k=k, draw=i)
            if k == slice_k and i == 0:
                slice_ = {"k": k, "draw": 0, "query_ids": [q["id"] for q in queries[:slice_queries]],
                          "probs": [[round(float(p), 6) for p in row] for row in out["_probs"][:slice_queries]]}
            sweep.append(out)
        elif kind == "majority":
            counts = {label: 5 if j == i else 1 for j, label in enumerate(LABELS)}
            majority.append(_config(llm, draw_demos(pool, counts, seed + 1000 + i), queries, majority=LABELS[i]))
        else:
            # rotate the same four demonstrations so that recency_demos[i] comes last
            order = recency_demos[i + 1:] + recency_demos[:i + 1]
            recency.append(_config(llm, order, queries, last=order[-1]["label"]))
    for config in sweep + majority + recency:
        del config["_probs"]
    summary = {str(k): {"accuracy": _summary([c["accuracy"] for c in sweep if c["k"] == k]),
                        "calibrated_accuracy": _summary([c["calibrated_accuracy"] for c in sweep if c["k"] == k])}
               for k in shots}
    return {"seed": seed, "model": llm.name, "labels": list(LABELS), "instruction": INSTRUCTION,
            "content_free_inputs": list(CONTENT_FREE), "query_ids": [q["id"] for q in queries],
            "gold": [LABELS.index(q["label"]) for q in queries], "shots": list(shots), "draws": draws,
            "sweep": sweep, "summary": summary, "majority": majority, "recency": recency, "slice": slice_}


def chapter10_icl_run() -> tuple[dict, dict]:
    """Saved run 10-icl: icl_run on the local SmolLM2 (no tensors)."""
    return icl_run(), {}
