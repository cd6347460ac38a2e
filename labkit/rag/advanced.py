"""Advanced RAG: ask the question several ways (multi-query, RAG-fusion), then let the model reorder (reranking).

"Naive" RAG embeds the question once and takes the top chunks. The "advanced" paradigm adds a step on each side
of the search (Gao et al. 2023, "Retrieval-Augmented Generation for Large Language Models: A Survey"):

- **before** it, query rewriting / multi-query (RAG-Fusion: Rackauckas 2024, "RAG-Fusion: a New Take on
  Retrieval-Augmented Generation", after Raudaschl's 2023 implementation): an LLM writes n other phrasings of
  the question; each is searched, and the n + 1 ranked lists are merged by reciprocal rank fusion
  (`labkit.rag.fusion`). A chunk that several phrasings find rises; a phrasing that misses adds nothing.
- **after** it, reranking: a slower, better judge re-scores only the top N candidates. Production systems use a
  cross-encoder (e.g. bge-reranker); here the judge is the course's own LLM, asked whether a passage answers
  the question, and the score is how much more probable "Yes" is than "No" (as monoT5 reads "true"/"false":
  Nogueira et al. 2020, "Document Ranking with a Pretrained Sequence-to-Sequence Model"):

      s(q, p) = log p("Yes" | prompt(q, p)) - log p("No" | prompt(q, p))

  read with `llm.logprobs` (no text is generated, so nothing has to be parsed). Each passage is judged alone
  (pointwise), so a score does not depend on which other passages are in the list, and one score per
  (question, chunk) pair serves every depth N.

Everything model-facing goes through `labkit.llm.base.LLM`, so a bigger model plugs in unchanged; everything
search-facing goes through an index with `search(query, k, method)` and `chunk(id)` (`labkit.rag.index.Index`).
The model's text is untrusted: `parse_queries` reads lines out of it and never evaluates anything.

The chapter's experiment, `advanced_run` (saved as "12-advanced"), measures both on the evaluation set.
"""
from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from labkit.rag.dense import Results
from labkit.rag.fusion import DEFAULT_K, reciprocal_rank_fusion
from labkit.rag.metrics import normalize_answer

if TYPE_CHECKING:
    from labkit.llm.base import LLM

# A few-shot prompt: plain text, so the model continues a pattern instead of answering the question (asked in
# a chat, SmolLM2-135M answers it, or repeats it). The examples are not from the evaluation set.
REWRITE_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("How do I read a file line by line?", "iterate over the lines of a text file"),
    ("What is the default value of the sep argument of print?", "print function separator default"),
    ("Why does attention scale the scores by the square root of the dimension?",
     "reason for dividing attention logits by sqrt(d)"),
)
MAX_QUERY_WORDS = 24  # a "rewrite" longer than this is the model rambling (an answer, a list), not a query

RELEVANCE_WORDS = 48  # the passage is cut to its first 48 words for the judge: its cost grows with the length
YES, NO = "Yes", "No"


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


# ---------------------------------------------------------------- query rewriting

def rewrite_prompt(question: str) -> str:
    """The few-shot prompt whose continuation (up to the end of the line) is one rewrite of `question`."""
    question = _check_str("question", question).strip()
    if not question:
        raise ValueError("question is empty: there is nothing to rewrite")
    shots = "".join(f"Question: {q}\nQuery: {r}\n\n" for q, r in REWRITE_EXAMPLES)
    return ("Rewrite each question as a different search query with the same meaning.\n\n"
            f"{shots}Question: {' '.join(question.split())}\nQuery:")


_LIST_MARK = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.):]|[a-z][.)])(?:\s+|$)", re.IGNORECASE)  # "1. ", "- ", "a) "
_LABEL = re.compile(r"^\s*(?:search\s+)?(?:query|rewrite|question)\s*\d*\s*:\s*", re.IGNORECASE)


def parse_queries(text: str, question: str, n: int = 3) -> list[str]:
    """Up to n distinct rewrites read from the model's text, one per line, in order.

    Each line loses list marks ("1.", "-", "a)"), a "Query:" label and surrounding quotes. A line is dropped
    when nothing with a letter or digit is left, when it is longer than MAX_QUERY_WORDS words, or when it only
    repeats the question or an earlier rewrite (compared after `normalize_answer`). Malformed text gives [],
    and the caller searches with the original question alone. The text is only split and stripped, never
    evaluated.
    """
    _check_str("text", text)
    _check_str("question", question)
    _check_int("n", n, 1)
    seen = {normalize_answer(question)}
    out: list[str] = []
    for line in text.splitlines():
        line = _LABEL.sub("", _LIST_MARK.sub("", line.strip()), count=1)
        line = line.strip().strip("\"'`“”‘’").strip()
        key = normalize_answer(line)
        if not key or len(line.split()) > MAX_QUERY_WORDS or key in seen:
            continue
        seen.add(key)
        out.append(line)
        if len(out) == n:
            break
    return out


def rewrite_queries(llm: LLM, question: str, n: int = 3, temperature: float = 0.7, seed: int = 0,
                    max_tokens: int = 16) -> list[str]:
    """Up to n distinct rewrites of `question` by `llm`: the greedy continuation of `rewrite_prompt`, then
    n - 1 samples at `temperature` (seeded, so a run repeats), each cut at the end of its first line.
    Fewer than n come back when samples repeat each other or the question, or are malformed (`parse_queries`).
    """
    prompt = rewrite_prompt(question)
    _check_int("n", n, 1)
    texts = [c.text for c in llm.generate(prompt, max_tokens=max_tokens, stop=["\n"])]
    if n > 1:
        texts += [c.text for c in llm.generate(prompt, max_tokens=max_tokens, temperature=temperature, n=n - 1,
                                               seed=seed, stop=["\n"])]
    return parse_queries("\n".join(t.split("\n", 1)[0] for t in texts), question, n)


def multi_query_search(index: Any, queries: Sequence[str], k: int = 10, depth: int = 100,
                       method: str = "hybrid", rrf_k: float = DEFAULT_K) -> Results:
    """RAG-fusion: search each query (the original question first, then its rewrites) `depth` deep and fuse the
    lists by reciprocal rank fusion; the k best chunks of the fused ranking, score = fused RRF score.

    With one query this is that query's own ranking (RRF of a single list keeps its order). A query that finds
    nothing (empty, all stop words) contributes an empty list, which adds nothing to the fusion.
    """
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise TypeError(f"queries must be a list of strings (the question, then its rewrites), got "
                        f"{type(queries).__name__}")
    if not queries:
        raise ValueError("queries is empty: pass at least the original question")
    for i, q in enumerate(queries):
        _check_str(f"queries[{i}]", q)
    _check_int("k", k, 1)
    _check_int("depth", depth, 1)
    lists = [index.search(q, max(k, depth), method).ids for q in queries]
    fused = reciprocal_rank_fusion(lists, k=rrf_k)[:k]
    return Results(fused, reason=None if fused else "no query found anything")


# ---------------------------------------------------------------- reranking

def relevance_prompt(question: str, passage: str, max_words: int = RELEVANCE_WORDS) -> list[dict[str, str]]:
    """The chat message asking whether `passage` (cut to its first `max_words` words) answers `question`;
    the model's reply is scored as "Yes" or "No"."""
    _check_str("question", question)
    _check_str("passage", passage)
    _check_int("max_words", max_words, 1)
    if not question.strip():
        raise ValueError("question is empty: there is nothing to judge the passage against")
    words = passage.split()
    cut = " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
    # the question comes first, so that all the passages judged for one question share a cached prefix
    return [{"role": "user", "content": f"Question: {' '.join(question.split())}\n\nPassage:\n{cut}\n\n"
                                        "Does the passage answer the question? Answer Yes or No."}]


def relevance_score(llm: LLM, question: str, passage: str, max_words: int = RELEVANCE_WORDS) -> float:
    """log p("Yes") - log p("No") for the relevance prompt: > 0 when the model leans to "the passage answers it"."""
    yes, no = llm.logprobs(relevance_prompt(question, passage, max_words), [YES, NO])
    return yes - no


def rerank(results: Results | Sequence[tuple[Hashable, float]], scores: Mapping[Hashable, float],
           top_n: int) -> Results:
    """Reorder the first `top_n` hits by `scores[id]` (highest first; equal scores keep the first-stage order);
    hits below top_n keep their place after them. The returned scores are the new ones for the top_n, the
    first stage's for the rest (only the order is meant to be compared)."""
    _check_int("top_n", top_n, 1)
    hits = list(results.hits if isinstance(results, Results) else results)
    for i, h in enumerate(hits):
        if not (isinstance(h, tuple) and len(h) == 2):
            raise TypeError(f"hits must be (id, score) pairs; hit {i} is {h!r:.60}")
    head = hits[:top_n]
    missing = [doc for doc, _ in head if doc not in scores]
    if missing:
        raise ValueError(f"no relevance score for {len(missing)} of the top {top_n} hits, e.g. {missing[0]!r}")
    order = sorted(range(len(head)), key=lambda i: -scores[head[i][0]])  # sorted() is stable: ties keep order
    return Results([(head[i][0], float(scores[head[i][0]])) for i in order] + hits[top_n:],
                   reason=getattr(results, "reason", None))


def llm_rerank(llm: LLM, index: Any, question: str, results: Results, top_n: int = 10,
               max_words: int = RELEVANCE_WORDS, cache: dict[Hashable, float] | None = None) -> Results:
    """Rerank the top `top_n` chunks of `results` by `relevance_score`; `cache` (chunk id -> score, for this
    question only) saves scoring a chunk twice when several rankings of one question are reranked."""
    cache = {} if cache is None else cache
    for doc, _ in list(results)[:top_n]:
        if doc not in cache:
            cache[doc] = relevance_score(llm, question, index.chunk(doc).text, max_words)
    return rerank(results, cache, top_n)


# ---------------------------------------------------------------- the experiment (saved run "12-advanced")

REWRITES = 3             # rewrites asked per question (the fusion uses the first n, n = 0..REWRITES)
RERANK_DEPTHS = (3, 5)  # how many of the first stage's chunks the judge reorders (N): each costs a model call
SECTIONS = 10            # section rankings are cut here (Recall@10, nDCG@10)


def section_metrics(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean section-level Recall@10, MRR and nDCG@10 of a run {question id: [section ids, best first]}, as
    `labkit.rag.index.evaluate` reports them."""
    from labkit.rag import metrics

    return {"recall@10": metrics.mean(metrics.recall_at_k(run, qrels, SECTIONS)),
            "mrr": metrics.mean(metrics.mrr(run, qrels)),
            "ndcg@10": metrics.mean(metrics.ndcg_at_k(run, qrels, 10))}


def _best(scores: Mapping[Any, Mapping[str, float]]) -> Any:
    """The knob value with the highest dev nDCG@10 (then MRR; then the first listed, the cheaper one)."""
    keys = list(scores)
    return max(keys, key=lambda kv: (round(scores[kv]["ndcg@10"], 12), round(scores[kv]["mrr"], 12),
                                     -keys.index(kv)))


def advanced_run(llm: LLM | None = None, questions: Sequence[Any] | None = None, index: Any = None,
                 depth: int = 100, progress: bool = True) -> tuple[dict, dict]:
    """Multi-query and LLM reranking on the evaluation set, section level; knobs chosen on dev, reported on test.

    1. every question: REWRITES rewrites (`rewrite_queries`, seed 0); the fused chunk ranking with the first n
       of them, n = 0 (the hybrid baseline) .. REWRITES; n* = the best on dev.
    2. every question: relevance scores of the top max(RERANK_DEPTHS) chunks of the baseline and of the n*
       fusion; reranked rankings for N in RERANK_DEPTHS; N* for "reranked" and for "both" (n* then rerank)
       chosen on dev. The baseline's test scores are also computed by `labkit.rag.index.evaluate`, as a check.
    Also the long-document comparison (`labkit.rag.long_docs.long_docs_run`) on all questions (nothing in it
    is tuned). Returns (record, {"documents": the whole-document embeddings}).
    """
    import time

    from tqdm.auto import tqdm

    from labkit.llm import connect
    from labkit.rag import long_docs
    from labkit.rag.evalset import load_questions, qrels
    from labkit.rag.index import corpus_index, evaluate

    llm = connect() if llm is None else llm
    index = corpus_index("heading") if index is None else index
    questions = load_questions() if questions is None else list(questions)
    judged = qrels(questions)
    splits = {s: [q.id for q in questions if q.split == s] for s in ("dev", "test")}
    if not all(splits.values()):
        raise ValueError(f"advanced_run needs dev questions (to choose knobs) and test questions (to report on), "
                         f"got {({s: len(ids) for s, ids in splits.items()})}")

    def scores_on(runs: Mapping[str, Sequence[str]], split: str) -> dict[str, float]:
        return section_metrics({i: runs[i] for i in splits[split]}, {i: judged[i] for i in splits[split]})

    start = time.perf_counter()
    llm.usage.reset()
    per: dict[str, dict[str, Any]] = {}
    for q in tqdm(questions, desc="rewrites", disable=not progress):
        rewrites = rewrite_queries(llm, q.question, REWRITES, seed=0)
        fused = {n: multi_query_search(index, [q.question, *rewrites[:n]], k=depth, depth=depth)
                 for n in range(REWRITES + 1)}
        per[q.id] = {"rewrites": rewrites, "fused": fused}
    rewrite_seconds = time.perf_counter() - start
    runs: dict[str, dict[str, list[str]]] = {
        f"multi-query n={n}": {i: index.sections(p["fused"][n], SECTIONS) for i, p in per.items()}
        for n in range(REWRITES + 1)}
    dev_mq = {n: scores_on(runs[f"multi-query n={n}"], "dev") for n in range(1, REWRITES + 1)}
    n_best = _best(dev_mq)

    start = time.perf_counter()
    tokens = llm.usage.prompt_tokens
    for q in tqdm(questions, desc="reranking", disable=not progress):
        p, cache = per[q.id], {}
        for name, first in (("reranked", p["fused"][0]), ("both", p["fused"][n_best])):
            for top_n in RERANK_DEPTHS:
                runs.setdefault(f"{name} N={top_n}", {})[q.id] = index.sections(
                    llm_rerank(llm, index, q.question, first, top_n, cache=cache), SECTIONS)
        p["scores"] = cache
    rerank_seconds = time.perf_counter() - start
    judge_tokens = llm.usage.prompt_tokens - tokens
    dev_rr = {n: scores_on(runs[f"reranked N={n}"], "dev") for n in RERANK_DEPTHS}
    dev_both = {n: scores_on(runs[f"both N={n}"], "dev") for n in RERANK_DEPTHS}
    n_rr, n_both = _best(dev_rr), _best(dev_both)
    chosen = {"baseline (hybrid)": "multi-query n=0", f"multi-query (n={n_best})": f"multi-query n={n_best}",
              f"reranked (N={n_rr})": f"reranked N={n_rr}", f"both (n={n_best}, N={n_both})": f"both N={n_both}"}

    doc_index = long_docs.DocumentIndex(index.docs, progress=progress)
    record = {
        "model": llm.name, "seed": 0, "rewrites": REWRITES, "depth": depth, "rerank_depths": list(RERANK_DEPTHS),
        "relevance_words": RELEVANCE_WORDS, "strategy": index.strategy, "fingerprint": index.fingerprint,
        "splits": {s: len(ids) for s, ids in splits.items()},
        "chosen": {"n": n_best, "N reranked": n_rr, "N both": n_both},
        "dev": {name: scores_on(run, "dev") for name, run in runs.items()},
        "test": {label: scores_on(runs[name], "test") for label, name in chosen.items()},
        "table": chosen,
        "evaluate_test": evaluate(index, [q for q in questions if q.split == "test"], k=SECTIONS, method="hybrid"),
        "questions": [{"id": q.id, "split": q.split, "rewrites": per[q.id]["rewrites"],
                       "first": {n: [c for c, _ in per[q.id]["fused"][n]][:10] for n in (0, n_best)},
                       "scores": {c: round(s, 6) for c, s in per[q.id]["scores"].items()}} for q in questions],
        "runs": runs,
        "cost": {"rewrite_seconds": round(rewrite_seconds, 1), "rerank_seconds": round(rerank_seconds, 1),
                 "judged_chunks": sum(len(p["scores"]) for p in per.values()), "judge_prompt_tokens": judge_tokens,
                 "usage": vars(llm.usage).copy()},
        "long_docs": long_docs.long_docs_run(index, questions, doc_index, depth=depth),
    }
    return record, {"documents": doc_index.embeddings.clone()}
