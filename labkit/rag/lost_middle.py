"""Lost in the middle: does it matter *where* in the prompt the passage with the answer sits? (chapter 12)

Liu et al. (2024, TACL, "Lost in the Middle: How Language Models Use Long Contexts") gave a model one passage
that holds the answer among k - 1 distractors that do not, and moved the answer passage through every position.
Accuracy traced a U: best with the answer first or last, worst in the middle. The experiment needs three
pieces, and this module holds them:

    place(gold, distractors, position)   the k passages with the gold one at `position` (1 = first), the
                                         distractors in their given order around it
    clip_around(text, golds, words)      a window of `words` words of a passage that keeps its answer, so that
                                         every passage has the same length and position is the only change
    distractors(...)                     retrieved passages that do *not* contain the answer (hard distractors,
                                         as in the paper: on topic, but useless)

and `lost_middle_run`, the sweep over positions on the evaluation set, through any `labkit.llm` backend.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from labkit.rag.generate import answer, passage_has_answer
from labkit.rag.metrics import normalize_answer

if TYPE_CHECKING:
    from labkit.llm import LLM


def place(gold: str, distractors: Sequence[str], position: int) -> list[str]:
    """The passages with `gold` inserted at `position` (1-based: 1 = first, len(distractors) + 1 = last); the
    distractors keep their order, so two positions differ only in where the gold passage sits."""
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a str, got {type(gold).__name__}")
    if isinstance(distractors, (str, bytes)) or not all(isinstance(d, str) for d in distractors):
        raise TypeError("distractors must be a list of str")
    k = len(distractors) + 1
    if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= k:
        raise ValueError(f"position must be an int in 1..{k} (the gold passage among {k} passages), "
                         f"got {position!r}")
    out = list(distractors)
    out.insert(position - 1, gold)
    return out


def _answer_word(words: list[str], golds: Sequence[str]) -> int | None:
    """Index of the first word where some gold answer starts (words compared after normalisation)."""
    norm = [normalize_answer(w) for w in words]
    for g in golds:
        target = normalize_answer(g).split()
        if not target:
            continue
        for i in range(len(norm)):
            # collect the normalised tokens from word i on until there are enough to compare
            got: list[str] = []
            j = i
            while len(got) < len(target) and j < len(norm):
                got.extend(norm[j].split())
                j += 1
            if got[:len(target)] == target and norm[i]:
                return i
    return None


def clip_around(text: str, golds: Sequence[str] | None, words: int) -> str:
    """`words` words of text: centred on the first occurrence of a gold answer when golds are given and one is
    found, else the first `words` words. Whitespace is collapsed (passages are shown on one line anyway)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(words, bool) or not isinstance(words, int) or words < 1:
        raise ValueError(f"words must be an int >= 1, got {words!r}")
    ws = text.split()
    start = 0
    if golds:
        at = _answer_word(ws, golds)
        if at is not None:
            start = max(0, min(at - words // 2, len(ws) - words))
    return " ".join(ws[start:start + words])


def distractors(passages: Sequence[str], golds: Sequence[str], k: int) -> list[str]:
    """The first k passages (in the order given: best retrieved first) that hold no gold answer."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    out = [p for p in passages if not passage_has_answer(p, golds)][:k]
    if len(out) < k:
        raise ValueError(f"only {len(out)} of the {len(passages)} passages hold no answer; {k} distractors needed")
    return out


def lost_middle_run(llm: LLM, items: Sequence[dict[str, Any]], positions: Sequence[int],
                    progress: bool = True) -> list[dict[str, Any]]:
    """For each item {"id", "question", "answers", "gold_passage", "distractors"} and each position: the greedy
    reply with the gold passage there, and whether it contains a gold answer. One row per item."""
    rows = []
    bar: Any = items
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(items, desc="lost in the middle")
    for it in bar:
        row: dict[str, Any] = {"id": it["id"], "by_position": {}}
        for pos in positions:
            ps = place(it["gold_passage"], it["distractors"], pos)
            a = answer(llm, it["question"], ps, it["answers"], score_citation=False)
            row["by_position"][str(pos)] = {"text": a.text, "contains": a.contains, "f1": a.f1}
        rows.append(row)
    return rows


def accuracy_by_position(rows: Sequence[dict[str, Any]]) -> dict[int, float]:
    """Mean answer_in accuracy at each position over the rows of `lost_middle_run`."""
    if not rows:
        raise ValueError("no rows")
    positions = sorted(int(p) for p in rows[0]["by_position"])
    return {p: sum(r["by_position"][str(p)]["contains"] for r in rows) / len(rows) for p in positions}


def shape(accuracy: dict[int, float], tolerance: float = 0.0) -> str:
    """Name the curve: "U-shaped" (both ends beat the middle), "recency" (rises toward the end: the last beats
    the first and the middle), "primacy" (the first beats the middle and the last), else "flat". The middle is
    the mean of the inner positions; a difference must exceed `tolerance` to count."""
    if len(accuracy) < 3:
        raise ValueError(f"need at least 3 positions to name a shape, got {len(accuracy)}")
    ps = sorted(accuracy)
    first, last = accuracy[ps[0]], accuracy[ps[-1]]
    middle = sum(accuracy[p] for p in ps[1:-1]) / (len(ps) - 2)
    if first > middle + tolerance and last > middle + tolerance:
        return "U-shaped"
    if last > first + tolerance and last > middle + tolerance:
        return "recency"
    if first > last + tolerance and first > middle + tolerance:
        return "primacy"
    return "flat"
