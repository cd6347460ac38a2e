"""Grounded generation: answer from numbered passages and cite them, and measure what retrieval buys (chapter 12).

Retrieval-augmented generation (Lewis et al. 2020) puts the retrieved text in the prompt and asks the model to
answer from it. Numbering the passages lets the model say *where* an answer came from, "[2]", and lets us check
that claim: a citation is right when the cited passage really contains the answer. This module holds:

    build_prompt(question, passages)   chat messages: the numbered passages, the question, a one-line format
                                       (no passages: the closed-book prompt, the same question on its own)
    parse_citations(text, n_passages)  the answer and the passage numbers it cites, never by eval: a regular
                                       expression reads "[2]", "[1, 3]", "[2][3]"; anything else in brackets
                                       that looks like a citation (out of range, [0], "[2" unclosed) is counted
                                       as malformed and cites nothing
    answer(llm, question, passages)    one greedy call through `labkit.llm` and its parsed reply
    answer_in(prediction, golds)       Liu et al.'s accuracy: some gold answer occurs in the normalised reply
    citation_precision(...)            the share of cited passages that contain a gold answer

Exact match and token F1 come from `labkit.rag.metrics` (SQuAD's definitions). A model that answers in a full
sentence scores 0 exact match even when the sentence holds the answer: that is why `answer_in` is reported too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from labkit.rag.metrics import exact_match, normalize_answer, token_f1

if TYPE_CHECKING:
    from labkit.llm import LLM

SYSTEM = ("Answer the question using only the numbered passages. Reply with a short answer of a few words, "
          "then the number of the passage that contains it in square brackets. Example: __init__ [2]")
CLOSED_BOOK_SYSTEM = "Answer the question with a short answer of a few words."
MAX_TOKENS = 16  # a short answer and its citation fit; a longer reply is the small model rambling on
STOP = ("\n",)   # one line: the answer and its citation; what follows is the small model wandering off

# a citation: [2], [1, 3], [1;3], [passage 2]; at most 3 digits per number, so a huge number cannot make a huge int
_CITATION = re.compile(r"\[\s*(?:passages?\s*|sources?\s*|doc(?:ument)?s?\s*)?(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]",
                       re.IGNORECASE)
# anything in brackets that holds a digit, or an opening bracket never closed on that line: it tried to cite
_BRACKETED = re.compile(r"\[[^\[\]\n]*\d[^\[\]\n]*\]|\[[^\]\n]*$|\[\s*\]")
_MARKDOWN_LINK = re.compile(r"\[[^\[\]\n]*\]\([^)\n]*\)")


def _check_question(question: object) -> str:
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("question is empty or whitespace only")
    return question.strip()


def _check_passages(passages: object) -> list[str]:
    if isinstance(passages, (str, bytes)) or not isinstance(passages, Sequence):
        raise TypeError(f"passages must be a list of str, got {type(passages).__name__}")
    for i, p in enumerate(passages):
        if not isinstance(p, str):
            raise TypeError(f"passage {i + 1} must be a str, got {type(p).__name__}")
        if not p.strip():
            raise ValueError(f"passage {i + 1} is empty or whitespace only")
    return list(passages)


def _check_golds(golds: object) -> list[str]:
    golds = [golds] if isinstance(golds, str) else golds
    if not isinstance(golds, Sequence) or not golds or not all(isinstance(g, str) and g.strip() for g in golds):
        raise TypeError(f"golds must be a str or a non-empty list of non-empty str, got {golds!r:.80}")
    return list(golds)


def format_passages(passages: Sequence[str]) -> str:
    """'[1] text\\n\\n[2] text...': each passage numbered from 1, its inner whitespace collapsed to one space
    (pydoc's indented code would otherwise spend tokens on runs of spaces)."""
    return "\n\n".join(f"[{i}] {' '.join(p.split())}" for i, p in enumerate(_check_passages(passages), 1))


def build_prompt(question: str, passages: Sequence[str] = ()) -> list[dict[str, str]]:
    """Chat messages for a grounded answer: system = the format, user = the numbered passages, then the question
    last (the question sits next to where the answer starts, as in Liu et al.'s prompts). With no passages,
    the closed-book prompt: the same question with no context and no citation asked for.

    No worked example is shown: tried on SmolLM2-135M, a one-shot example made it copy the example's answer
    ("100 degrees Celsius [2]") for questions about Python -- the small model imitates rather than follows."""
    question, passages = _check_question(question), _check_passages(passages)
    if not passages:
        return [{"role": "system", "content": CLOSED_BOOK_SYSTEM},
                {"role": "user", "content": f"Question: {question}"}]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Passages:\n{format_passages(passages)}\n\nQuestion: {question}"}]


@dataclass(frozen=True)
class Parsed:
    """A reply read apart. answer: the text without its citation markers; citations: the valid passage numbers
    (1-based, in order of first appearance, no repeats); status: "cited" (at least one valid citation), "none"
    (no attempt to cite), or "malformed" (brackets that tried to cite but named no valid passage: out of range,
    [0], empty, unclosed, or words with a number in them) -- malformed output cites nothing."""
    answer: str
    citations: tuple[int, ...]
    status: str
    malformed: int = 0   # how many bracketed pieces could not be read as citations


def parse_citations(text: str, n_passages: int) -> Parsed:
    """Read the passage numbers a reply cites (see `Parsed`). Pure regular expressions: the reply is untrusted
    text and is never evaluated. Numbers outside 1..n_passages are not citations (a model may invent [7])."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(n_passages, bool) or not isinstance(n_passages, int) or n_passages < 0:
        raise ValueError(f"n_passages must be an int >= 0, got {n_passages!r}")
    text_wo_links = _MARKDOWN_LINK.sub(lambda m: m.group().replace("[", "(").replace("]", ")"), text)
    cited: list[int] = []
    malformed = 0
    for m in _CITATION.finditer(text_wo_links):
        numbers = [int(x) for x in re.split(r"\s*[,;]\s*", m.group(1))]
        valid = [x for x in numbers if 1 <= x <= n_passages]
        if len(valid) < len(numbers):
            malformed += 1
        cited.extend(x for x in valid if x not in cited)
    rest = _CITATION.sub(" ", text_wo_links)
    malformed += len(_BRACKETED.findall(rest))
    answer = " ".join(_BRACKETED.sub(" ", rest).split()).strip(" .,;:")
    status = "cited" if cited else "malformed" if malformed else "none"
    return Parsed(answer, tuple(cited), status, malformed)


def answer_in(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if some normalised gold answer occurs in the normalised prediction as whole words, else 0.0 (the
    accuracy of Liu et al. 2024: "whether any of the correct answers is contained in the predicted output")."""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str, got {type(prediction).__name__}")
    pred = f" {normalize_answer(prediction)} "
    return float(any(f" {g} " in pred for g in map(normalize_answer, _check_golds(golds)) if g))


def passage_has_answer(passage: str, golds: str | Sequence[str]) -> bool:
    """Does the passage contain some gold answer (normalised, as whole words)? The evaluation set's answers
    occur verbatim in their gold sections, so this is how a citation is judged."""
    return answer_in(passage, golds) == 1.0


@dataclass(frozen=True)
class Answer:
    """One grounded (or closed-book) answer: the raw reply, its parse, how its answer part scores, and the
    passage the model's log-probabilities point to (`scored_citation`, None when not asked for)."""
    text: str
    parsed: Parsed
    exact_match: float
    f1: float
    contains: float
    finish_reason: str
    scored_citation: int | None = None


def score(text: str, golds: Sequence[str], n_passages: int, finish_reason: str = "stop",
          scored_citation: int | None = None) -> Answer:
    """Parse a reply and score its answer part against the golds (EM, token F1, answer_in)."""
    golds = _check_golds(golds)
    parsed = parse_citations(text, n_passages)
    return Answer(text, parsed, exact_match(parsed.answer, golds), token_f1(parsed.answer, golds),
                  answer_in(parsed.answer, golds), finish_reason, scored_citation)


def scored_citation(llm: LLM, messages: Sequence[dict[str, str]], reply: str, n_passages: int) -> int:
    """The passage the model would cite after its answer: argmax over n of log p(reply + " [n]" | prompt).

    The prompt and the reply are the same for every n, so only the citation's tokens decide. A model too small
    to write citations on its own (SmolLM2-135M almost never does) still ranks them, which is what this reads;
    ties go to the lower number. Needs a backend that returns log-probabilities."""
    if isinstance(n_passages, bool) or not isinstance(n_passages, int) or n_passages < 1:
        raise ValueError(f"n_passages must be an int >= 1, got {n_passages!r}")
    reply = reply.strip() or "-"
    lps = llm.logprobs(list(messages), [f"{reply} [{i}]" for i in range(1, n_passages + 1)])
    return max(range(n_passages), key=lambda i: (lps[i], -i)) + 1


def answer(llm: LLM, question: str, passages: Sequence[str], golds: Sequence[str], *,
           max_tokens: int = MAX_TOKENS, score_citation: bool = True) -> Answer:
    """One greedy answer through any `labkit.llm` backend, parsed and scored. passages=() is closed-book.
    score_citation: also read the citation from log-probabilities (`scored_citation`) when there are passages
    and the backend can score."""
    messages = build_prompt(question, passages)
    out = llm.chat(messages, max_tokens=max_tokens, stop=STOP)[0]
    cite = None
    if score_citation and passages and llm.supports_logprobs:
        cite = scored_citation(llm, messages, parse_citations(out.text, len(passages)).answer, len(passages))
    return score(out.text, golds, len(passages), out.finish_reason, cite)


def citation_precision(answers: Sequence[Answer], passages: Sequence[Sequence[str]],
                       golds: Sequence[Sequence[str]]) -> dict[str, float | int | None]:
    """Over a set of answers (each with the passages it was shown and its golds): how many wrote a citation,
    how many were malformed, and of all passages cited the share that contains a gold answer (precision; None
    when nothing was cited). The same for the log-probability citations (`scored_*`)."""
    if not (len(answers) == len(passages) == len(golds)):
        raise ValueError(f"answers, passages and golds must have the same length, got "
                         f"{len(answers)}, {len(passages)}, {len(golds)}")
    cited = correct = scored = scored_correct = 0
    for a, ps, g in zip(answers, passages, golds):
        for c in a.parsed.citations:
            cited += 1
            correct += passage_has_answer(ps[c - 1], g)
        if a.scored_citation is not None:
            scored += 1
            scored_correct += passage_has_answer(ps[a.scored_citation - 1], g)
    statuses = [a.parsed.status for a in answers]
    return {"answers": len(answers), "with_citation": statuses.count("cited"),
            "malformed": statuses.count("malformed"), "no_citation": statuses.count("none"),
            "citations": cited, "correct_citations": correct, "precision": correct / cited if cited else None,
            "scored": scored, "scored_correct": scored_correct,
            "scored_precision": scored_correct / scored if scored else None}


# ---- the experiment (saved run `12-generation`) -------------------------------------------------------------------

LOST_MIDDLE_WORDS = 50        # every passage in the position sweep is clipped to this many words
COMPRESSIONS = (("bm25", 0.5), ("bm25", 0.25))   # (sentence scorer, share of words kept)


def gold_passage(index, question) -> str | None:
    """The text of the first chunk of `index` that overlaps one of the question's gold sections and contains
    one of its answers (None if no chunk does)."""
    gold = set(question.gold)
    for c in index.chunks:
        if gold.intersection(index.chunk_sections(c.id)) and passage_has_answer(c.text, question.answers):
            return c.text
    return None


def _tokens(llm: LLM, passages: Sequence[str]) -> int:
    """Tokens of the passages as the prompt shows them: the model's own tokenizer where the backend has one,
    else words (an HTTP server does not expose its tokenizer)."""
    if not passages:
        return 0
    text = format_passages(passages)
    return len(llm.encode(text)) if hasattr(llm, "encode") else len(text.split())


def _row(a: Answer) -> dict:
    return {"text": a.text, "answer": a.parsed.answer, "citations": list(a.parsed.citations),
            "status": a.parsed.status, "scored_citation": a.scored_citation, "em": a.exact_match, "f1": a.f1,
            "contains": a.contains, "finish": a.finish_reason}


def generation_run(llm: LLM | None = None, *, split: str = "test", limit: int | None = 24, k: int = 3,
                   lost_middle_questions: int = 16, n_passages: int = 5, progress: bool = True) -> dict:
    """Saved run `12-generation`. On the evaluation set's `split`: closed-book, top-k retrieved (hybrid) and
    gold-passage answers, the top-k answers with their citations, the same top-k passages compressed
    (`COMPRESSIONS`), and the lost-in-the-middle sweep (the first `lost_middle_questions` questions, the gold
    passage at each of `n_passages` positions among retrieved distractors). Greedy throughout; every passage
    shown is stored, so the notebook can re-run any answer without retrieving again.

    Sized for a loaded 2-core CPU (about 3-4 s per SmolLM2 call there): the first 24 test questions x 3
    conditions + 2 compressions, and 16 questions x 5 positions -- about 200 generations. A faster backend
    (LABKIT_LLM_URL) can run the whole split: limit=None, lost_middle_questions=80."""
    from labkit.llm import connect
    from labkit.rag.compress import compress
    from labkit.rag.evalset import load_questions
    from labkit.rag.index import corpus_index
    from labkit.rag.lost_middle import clip_around, distractors, lost_middle_run

    llm = llm if llm is not None else connect()
    index = corpus_index()
    questions = load_questions(split)[:limit]
    bar: Sequence = questions
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(questions, desc="grounded answers")
    rows, items = [], []
    for q in bar:
        hits = index.search(q.question, k=10, method="hybrid")
        texts = [index.chunk(cid).text for cid in hits.ids]
        top = texts[:k]
        gold = gold_passage(index, q)
        row = {"id": q.id, "source": q.source, "answers": list(q.answers), "retrieved": hits.ids[:k],
               "top_has_answer": [passage_has_answer(t, q.answers) for t in top],
               "closed": _row(answer(llm, q.question, (), q.answers)),
               "top": _row(answer(llm, q.question, top, q.answers)), "top_tokens": _tokens(llm, top),
               "gold_passage": gold,
               "gold": _row(answer(llm, q.question, [gold], q.answers, score_citation=False)) if gold else None,
               "compressed": {}}
        for method, ratio in COMPRESSIONS:
            c = compress(q.question, top, ratio, method)
            a = answer(llm, q.question, c.passages, q.answers, score_citation=False)
            row["compressed"][f"{method}@{ratio}"] = {
                **_row(a), "passages": c.passages, "words_before": c.words_before, "words_after": c.words_after,
                "tokens": _tokens(llm, c.passages),
                "has_answer": [passage_has_answer(p, q.answers) for p in c.passages]}
        rows.append(row)
        if gold is not None and len(items) < lost_middle_questions:
            others = [t for t in texts if t != gold]
            try:
                ds = distractors(others, q.answers, n_passages - 1)
            except ValueError:   # too few answer-free passages in the top 10: leave the question out
                continue
            clipped = clip_around(gold, q.answers, LOST_MIDDLE_WORDS)
            if passage_has_answer(clipped, q.answers):
                items.append({"id": q.id, "question": q.question, "answers": list(q.answers),
                              "gold_passage": clipped,
                              "distractors": [clip_around(d, None, LOST_MIDDLE_WORDS) for d in ds]})
    positions = list(range(1, n_passages + 1))
    middle = lost_middle_run(llm, items, positions, progress=progress)
    for it, r in zip(items, middle):
        r.update(question=it["question"], answers=it["answers"], gold_passage=it["gold_passage"],
                 distractors=it["distractors"])
    return {"model": llm.name, "split": split, "k": k, "method": "hybrid", "max_tokens": MAX_TOKENS,
            "system": SYSTEM, "closed_book_system": CLOSED_BOOK_SYSTEM, "compressions": [list(c) for c in COMPRESSIONS],
            "questions": rows, "lost_middle": {"positions": positions, "words": LOST_MIDDLE_WORDS, "rows": middle},
            "usage": {"calls": llm.usage.calls, "prompt_tokens": llm.usage.prompt_tokens,
                      "completion_tokens": llm.usage.completion_tokens}}


def summarize(record: dict) -> dict:
    """The chapter's tables from a `generation_run` record: pure counting over stored texts and scores, so it
    prints the same on every CPU. Means are over the questions that have each condition."""
    from labkit.rag.lost_middle import accuracy_by_position, shape

    rows = record["questions"]
    if not rows:
        raise ValueError("the record has no questions")

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    conditions = {}
    for name in ("closed", "top", "gold"):
        got = [r[name] for r in rows if r[name] is not None]
        conditions[name] = {"n": len(got), "em": mean([a["em"] for a in got]), "f1": mean([a["f1"] for a in got]),
                            "contains": mean([a["contains"] for a in got]),
                            "right": int(sum(a["contains"] for a in got))}
    both = [(r["closed"]["contains"], r["top"]["contains"]) for r in rows]
    statuses = [r["top"]["status"] for r in rows]
    free = [(r, c) for r in rows for c in r["top"]["citations"]]
    scored = [r for r in rows if r["top"]["scored_citation"] is not None]
    citation = {"answers": len(rows), "with_citation": statuses.count("cited"),
                "malformed": statuses.count("malformed"), "no_citation": statuses.count("none"),
                "citations": len(free), "correct": sum(r["top_has_answer"][c - 1] for r, c in free),
                "scored": len(scored),
                "scored_correct": sum(r["top_has_answer"][r["top"]["scored_citation"] - 1] for r in scored),
                "first_passage_correct": sum(r["top_has_answer"][0] for r in scored),
                "any_passage_correct": sum(any(r["top_has_answer"]) for r in scored)}
    compression = {"top": {"tokens": mean([r["top_tokens"] for r in rows]), "kept": 1.0,
                           "contains": conditions["top"]["contains"], "f1": conditions["top"]["f1"],
                           "answer_in_context": mean([float(any(r["top_has_answer"])) for r in rows])}}
    for key in rows[0]["compressed"]:
        cs = [r["compressed"][key] for r in rows]
        compression[key] = {"tokens": mean([c["tokens"] for c in cs]),
                            "kept": sum(c["words_after"] for c in cs) / sum(c["words_before"] for c in cs),
                            "contains": mean([c["contains"] for c in cs]), "f1": mean([c["f1"] for c in cs]),
                            "answer_in_context": mean([float(any(c["has_answer"])) for c in cs])}
    lm = record["lost_middle"]["rows"]
    acc = accuracy_by_position(lm) if lm else {}
    return {"conditions": conditions,
            "closed_only": sum(1 for c, t in both if c and not t), "top_only": sum(1 for c, t in both if t and not c),
            "citation": citation, "compression": compression,
            "lost_middle": {"n": len(lm), "accuracy": acc, "shape": shape(acc) if len(acc) >= 3 else None}}
