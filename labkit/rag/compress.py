"""Context compression: keep only the sentences of the retrieved passages that matter to the question (chapter 12).

Retrieved passages are mostly noise for any one question: a 200-word chunk may hold the answer in one sentence.
Zhu et al. (2024, "An Information Bottleneck Perspective for Effective Noise Filtering on Retrieval-Augmented
Generation", arXiv:2406.01549) state the goal as an information bottleneck: find a compression X~ of the
retrieved text X that keeps what predicts the output Y and drops the rest,

    min  I(X~; X) - beta * I(X~; Y)

(little information about the passages, much about the answer). They train a filter model towards it. This
module does the extractive, training-free version a course can run on a CPU: score every sentence against the
question and keep the best until a word budget is spent. The budget plays the role of I(X~; X) (how much is
kept); the relevance score stands in for I(X~; Y) (we cannot see the answer, so the question is the proxy).

    sentence_scores(question, sentences, method)   BM25 (labkit.rag.bm25) or MiniLM cosine (labkit.rag.dense)
    compress(question, passages, ratio, method)    the kept sentences, in their original order, passage by
                                                   passage, within ratio x the words; `Compressed` says what
                                                   was kept and how many words that saved
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from labkit.rag.chunking import split_sentences
from labkit.rag.generate import _check_passages, _check_question

METHODS = ("bm25", "dense")


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return str(method)


def sentence_scores(question: str, sentences: Sequence[str], method: str = "bm25") -> list[float]:
    """How related each sentence is to the question: BM25 (Lucene variant, the sentences as the collection, so
    IDF rewards words rare among *these* sentences) or the cosine of MiniLM embeddings."""
    question = _check_question(question)
    _check_method(method)
    if isinstance(sentences, (str, bytes)) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a list of str")
    if not sentences:
        return []
    if method == "bm25":
        from labkit.rag.bm25 import BM25
        from labkit.rag.index import tokenize

        return [float(x) for x in BM25("lucene").index([tokenize(s) for s in sentences]).scores(tokenize(question))]
    from labkit.rag.dense import embed

    vectors = embed([question, *sentences])   # rows are L2-normalised, so a dot product is the cosine
    return [float(x) for x in vectors[1:] @ vectors[0]]


@dataclass(frozen=True)
class Compressed:
    """passages: the compressed passages (passages with nothing kept are dropped, so the numbering shown to the
    model stays 1..n); kept[i]: indices of the sentences kept from input passage i; words_before/after: word
    counts of all passages together."""
    passages: list[str]
    kept: list[list[int]]
    words_before: int
    words_after: int

    @property
    def saved(self) -> float:
        """The share of words removed (0 = nothing, 1 = everything)."""
        return 1 - self.words_after / self.words_before if self.words_before else 0.0


def compress(question: str, passages: Sequence[str], ratio: float = 0.5, method: str = "bm25") -> Compressed:
    """Keep the sentences most related to the question, best first, while their words fit in
    ceil(ratio x all words); a sentence that does not fit is skipped and smaller ones after it may still fit.
    The kept sentences keep their original order inside each passage (the text stays readable, and the order
    of the passages, which the retriever ranked, is not disturbed). ratio = 1 keeps everything."""
    passages = _check_passages(passages)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be a number in (0, 1] (the share of words kept), got {ratio!r}")
    _check_method(method)
    sentences = [split_sentences(p) for p in passages]
    flat = [(i, j, s) for i, ss in enumerate(sentences) for j, s in enumerate(ss)]
    sizes = [len(s.split()) for _, _, s in flat]
    total = sum(sizes)
    budget = math.ceil(ratio * total)
    scores = sentence_scores(question, [s for _, _, s in flat], method)
    # best score first; ties go to the earlier sentence (the retriever ranked earlier passages higher)
    order = sorted(range(len(flat)), key=lambda n: (-scores[n], n))
    chosen: set[int] = set()
    used = 0
    for n in order:
        if used + sizes[n] <= budget:
            chosen.add(n)
            used += sizes[n]
    kept: list[list[int]] = [[] for _ in passages]
    for n in sorted(chosen):
        kept[flat[n][0]].append(flat[n][1])
    out = [" ".join(" ".join(sentences[i][j].split()) for j in js) for i, js in enumerate(kept) if js]
    return Compressed(out, kept, total, used)
