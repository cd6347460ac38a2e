"""Short-term memory (the context and its KV-cache) against long-term memory (a vector store), measured.

A model can "know" a document two ways at answer time:

- **In the context** (short-term memory): the text is in the prompt, so the model holds a key and a value per
  token per layer per key/value head — chapter 5's KV-cache, `2 · L · H_kv · d_h · bytes · tokens` — and its
  prefill must run every token through the model, attention comparing each with all before it. Both grow with
  everything that is kept, relevant or not, and the context is capped (8,192 tokens for SmolLM2).
- **In a vector store** (long-term memory): the text stays outside, as chunks with one embedding each
  (`labkit.rag.index`); a query fetches the top k, and only those enter the context.

`memory_run` (the saved run "12-memory") asks SmolLM2 the evaluation-set questions (`labkit.rag.evalset`) with
contexts built both ways and records, per query: the prompt's tokens, the KV-cache bytes they cost, the measured
prefill time, whether the gold text was in the context, and the answer with its exact match, token F1 and
whether it contains a gold answer (`contains`, the accuracy of Liu et al. 2023, *Lost in the Middle*: a
135M model rarely answers in exactly the gold words, and a verbose right answer should count):

- `gold`: the chunk that holds the answer, alone (the best any memory can do: an oracle);
- `context-T`: that chunk among randomly drawn other chunks, filling the prompt up to T tokens (everything
  "kept in mind"; the gold chunk at a seeded random place among them);
- `top-k`: the k chunks the hybrid retriever ranks first for the question (the vector store).
"""
from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence

from labkit.kvcache import cache_bytes
from labkit.llm.base import LLM, Message
from labkit.rag.evalset import Question, load_questions
from labkit.rag.index import Index
from labkit.rag.chunking import Chunk
from labkit.rag.metrics import exact_match, normalize_answer, token_f1

# SmolLM2-135M's config.json (chapter 4): the three numbers the cache size depends on, besides the tokens
N_LAYERS, N_KV_HEADS, HEAD_DIM = 30, 3, 64
CONTEXT = 8192          # SmolLM2's context window (max_position_embeddings)
ANSWER_TOKENS = 16      # room left for the answer in the window
SYSTEM = "Answer the question using the context. Reply with a few words only, copied from the context."


def kv_bytes(tokens: int, bytes_per_value: int = 4) -> int:
    """Bytes of SmolLM2's KV-cache for `tokens` tokens (fp32 by default): chapter 5's formula, `kvcache.cache_bytes`."""
    return cache_bytes(N_LAYERS, N_KV_HEADS, HEAD_DIM, tokens, bytes_per_value)


def prompt(question: str, passages: Sequence[str]) -> list[Message]:
    """The chat prompt: an instruction, then the passages (blank lines between them) and the question."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r:.80}")
    if isinstance(passages, str) or not all(isinstance(p, str) for p in passages):
        raise TypeError("passages must be a list of strings (one per chunk), not a single string")
    context = "\n\n".join(p.strip() for p in passages)
    return [Message("system", SYSTEM), Message("user", f"Context:\n{context}\n\nQuestion: {question}")]


@functools.lru_cache(maxsize=8192)
def _normalized(text: str) -> str:  # chunk texts are normalised again and again: once each is enough
    return f" {normalize_answer(text)} "


def _holds(text: str, answers: Sequence[str]) -> bool:
    """Does `text` contain one of the answers, as whole words after normalisation?"""
    padded = _normalized(text)
    return any(f" {normalize_answer(a)} " in padded for a in answers)


def gold_chunk(question: Question, index: Index) -> Chunk:
    """The first chunk (in corpus order) that overlaps a gold section and contains a gold answer: the passage a
    perfect retriever would return. (The evaluation set guarantees the answer is in a gold section; a long
    section is several chunks, and only the ones holding the answer can answer.)"""
    gold = set(question.gold)
    for c in index.chunks:
        if gold & set(index.chunk_sections(c.id)) and _holds(c.text, question.answers):
            return c
    raise ValueError(f"no chunk of {question.id}'s gold sections {sorted(gold)} contains one of its answers "
                     f"{list(question.answers)} (cut at a chunk boundary?)")


def distractors(question: Question, index: Index, seed: int) -> list[Chunk]:
    """Every chunk that neither overlaps a gold section nor contains an answer, in a seeded random order."""
    gold = set(question.gold)
    pool = [c for c in index.chunks
            if not gold & set(index.chunk_sections(c.id)) and not _holds(c.text, question.answers)]
    random.Random(seed).shuffle(pool)
    return pool


def stuffed_context(question: Question, index: Index, budget: int, count: Callable[[list[Message]], int],
                    seed: int = 0) -> list[Chunk]:
    """The gold chunk plus distractors, as many as fit a prompt of at most `budget` tokens (`count` gives a
    prompt's tokens), the gold chunk at a seeded random place: the context of a model that keeps everything.

    The distractors' order depends on (seed, budget), so two budgets' prompts share no long prefix (a prefix
    cache would otherwise hide part of the prefill being measured)."""
    gold = gold_chunk(question, index)
    if count(prompt(question.question, [gold.text])) > budget:
        raise ValueError(f"budget {budget} tokens is smaller than {question.id}'s prompt with its gold chunk alone")
    rng = random.Random(f"{seed}/{question.id}/{budget}")
    pool = distractors(question, index, rng.randrange(2**32))
    chosen: list[Chunk] = []
    base = count(prompt(question.question, [gold.text]))
    used = base
    for c in pool:
        # each chunk's own tokens plus the blank line that joins it (counted once, then checked exactly below)
        extra = count(prompt(question.question, [gold.text, c.text])) - base
        if used + extra > budget:
            continue  # a smaller chunk further on may still fit
        chosen.append(c)
        used += extra
        if budget - used < 8:
            break
    at = rng.randrange(len(chosen) + 1)
    passages = chosen[:at] + [gold] + chosen[at:]
    while count(prompt(question.question, [c.text for c in passages])) > budget:  # token merges at the joins
        passages.remove(next(c for c in reversed(passages) if c is not gold))
    return passages


def retrieved_context(question: Question, index: Index, k: int, method: str = "hybrid") -> list[Chunk]:
    """The vector store: the k chunks the index ranks first for the question, best first."""
    return [index.chunk(cid) for cid in index.search(question.question, k, method).ids]


def ask(llm: LLM, question: Question, passages: Sequence[Chunk], max_tokens: int = ANSWER_TOKENS) -> dict:
    """Prefill the prompt once, timed (a 1-token generate: the prefill plus one decode step), then decode the
    answer greedily (the prompt's keys and values come from the backend's prefix cache where it has one).
    Returns the row the saved run records for one query."""
    messages = prompt(question.question, [c.text for c in passages])
    before = llm.usage.prompt_tokens
    start = time.perf_counter()
    llm.generate(messages, max_tokens=1)
    seconds = time.perf_counter() - start
    prefilled = llm.usage.prompt_tokens - before
    answer = llm.generate(messages, max_tokens=max_tokens, stop=("\n",))[0].text.strip()
    tokens = len(llm.prompt_ids(messages)) if hasattr(llm, "prompt_ids") else prefilled
    return {"id": question.id, "chunks": [c.id for c in passages], "prompt_tokens": tokens,
            "prefilled_tokens": prefilled, "kv_bytes": kv_bytes(tokens), "prefill_s": round(seconds, 3),
            "gold_in_context": any(_holds(c.text, question.answers) for c in passages),
            "answer": answer, "contains": _holds(answer, question.answers),
            "em": exact_match(answer, list(question.answers)),
            "f1": round(token_f1(answer, list(question.answers)), 6)}


def sample_questions(n_pydoc: int = 9, n_course: int = 3, seed: int = 0) -> list[Question]:
    """A seeded sample of the held-out (test) questions, n of each source, in file order."""
    test = load_questions("test")
    rng = random.Random(seed)
    picked = set()
    for source, n in (("pydoc", n_pydoc), ("course", n_course)):
        ids = [q.id for q in test if q.source == source]
        if not 0 <= n <= len(ids):
            raise ValueError(f"n for {source} must be between 0 and {len(ids)}, got {n}")
        picked |= set(rng.sample(ids, n))
    return [q for q in test if q.id in picked]


def memory_run(llm: LLM | None = None, index: Index | None = None, *, budgets: Sequence[int] = (1024, 2048),
               ks: Sequence[int] = (1, 3), long_budgets: Sequence[int] = (4096, CONTEXT - ANSWER_TOKENS),
               n_pydoc: int = 9, n_course: int = 3, seed: int = 0, progress: bool = True) -> dict:
    """Saved run `12-memory`: every sampled question asked with its gold chunk alone, with stuffed contexts of
    each budget, and with the top-k retrieved chunks for each k; the first question also with each of
    `long_budgets` (up to the full window: minutes of prefill on a CPU, so once)."""
    from labkit.llm import connect
    from labkit.rag.index import corpus_index

    llm = llm if llm is not None else connect()
    index = index if index is not None else corpus_index("heading")
    count = (lambda m: len(llm.prompt_ids(m))) if hasattr(llm, "prompt_ids") else None
    if count is None:
        raise TypeError(f"{llm.name}: the memory run needs a backend that counts prompt tokens (prompt_ids)")
    questions = sample_questions(n_pydoc, n_course, seed)
    jobs = [(q, "gold", None) for q in questions]
    # one condition after another over all questions: two prompts of one question that share a prefix (top-1's
    # chunk starts top-3's context) are then far apart, gone from the backend's few prefix caches, so every
    # timed prefill runs its whole prompt but the shared instruction
    jobs += [(q, f"context-{b}", b) for b in budgets for q in questions]
    jobs += [(q, f"top-{k}", k) for k in ks for q in questions]
    jobs += [(questions[0], f"context-{b}", b) for b in long_budgets]
    bar = jobs
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(jobs, desc="memory: queries")
    rows = []
    for q, condition, size in bar:
        if condition == "gold":
            passages = [gold_chunk(q, index)]
        elif condition.startswith("context-"):
            passages = stuffed_context(q, index, size, count, seed)
        else:
            passages = retrieved_context(q, index, size)
        rows.append({"condition": condition, **ask(llm, q, passages)})
    return {"seed": seed, "model": llm.name, "questions": [q.id for q in questions], "budgets": list(budgets),
            "ks": list(ks), "long_budgets": list(long_budgets), "rows": rows}
