"""Short- vs long-term memory: cache bytes by chapter 5's formula, contexts built as documented, rows recorded."""
import warnings

import pytest
import torch

from labkit.kvcache import KVCache
from labkit.llama import LlamaConfig
from labkit.llm.base import LLM, Completion, Message
from labkit.rag import memory
from labkit.rag.evalset import load_questions
from labkit.rag.metrics import normalize_answer

QUESTIONS = load_questions()


@pytest.fixture(scope="module")
def index():
    from labkit.rag.index import corpus_index

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return corpus_index("heading")


def words(messages):  # a stand-in token counter: one token per whitespace-separated word
    return sum(len(m.content.split()) for m in messages)


def test_kv_bytes_is_chapter_5s_formula_and_a_real_cache_s_size():
    assert memory.kv_bytes(1) == 2 * 30 * 3 * 64 * 4 == 46080
    assert memory.kv_bytes(8192) == 360 * 2**20  # chapter 5: 360 MiB for SmolLM2's full context in fp32
    assert memory.kv_bytes(10, bytes_per_value=2) == memory.kv_bytes(10) // 2
    cfg = LlamaConfig()  # SmolLM2-135M's shape (chapter 4)
    assert (cfg.n_layers, cfg.n_kv_heads, cfg.dim // cfg.n_heads) == (memory.N_LAYERS, memory.N_KV_HEADS,
                                                                      memory.HEAD_DIM)
    assert cfg.max_seq_len == memory.CONTEXT
    assert KVCache(cfg, batch=1, max_len=100).nbytes == memory.kv_bytes(100)


def test_prompt():
    p = memory.prompt("Why?", ["first passage \n", "second"])
    assert [m.role for m in p] == ["system", "user"]
    assert p[1].content == "Context:\nfirst passage\n\nsecond\n\nQuestion: Why?"
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        memory.prompt("  ", ["x"])
    with pytest.raises(TypeError, match="passages must be a list of strings"):
        memory.prompt("Why?", "one string")


def test_every_question_has_a_gold_chunk_that_holds_its_answer(index):
    for q in QUESTIONS:
        c = memory.gold_chunk(q, index)
        assert set(index.chunk_sections(c.id)) & set(q.gold)
        assert any(f" {normalize_answer(a)} " in f" {normalize_answer(c.text)} " for a in q.answers)


def test_stuffed_context_fits_the_budget_and_holds_the_gold_chunk_once(index):
    q = QUESTIONS[0]
    gold = memory.gold_chunk(q, index)
    for budget in (300, 1000, 3000):
        ctx = memory.stuffed_context(q, index, budget, words, seed=1)
        total = words(memory.prompt(q.question, [c.text for c in ctx]))
        assert budget - 60 <= total <= budget  # filled up, never over
        assert [c.id for c in ctx].count(gold.id) == 1
        others = [c for c in ctx if c.id != gold.id]
        assert not any(set(index.chunk_sections(c.id)) & set(q.gold) for c in others)
        assert len({c.id for c in ctx}) == len(ctx)
        assert ctx == memory.stuffed_context(q, index, budget, words, seed=1)  # seeded
    assert memory.stuffed_context(q, index, 1000, words, seed=2) != memory.stuffed_context(q, index, 1000, words, 1)
    with pytest.raises(ValueError, match="smaller than"):
        memory.stuffed_context(q, index, 5, words)


def test_distractors_never_hold_an_answer(index):
    q = next(q for q in QUESTIONS if q.source == "course")
    pool = memory.distractors(q, index, seed=0)
    assert len(pool) > 0.9 * len(index.chunks)
    assert not any(f" {normalize_answer(a)} " in f" {normalize_answer(c.text)} " for c in pool for a in q.answers)


def test_retrieved_context_is_the_index_ranking(index):
    q = QUESTIONS[5]
    got = memory.retrieved_context(q, index, 3, method="bm25")
    assert [c.id for c in got] == index.search(q.question, 3, "bm25").ids


class Scripted(LLM):
    """A backend that replies with a fixed text and counts words as tokens (no model needed)."""
    name = "scripted"

    def __init__(self, reply):
        super().__init__()
        self.reply = reply

    def prompt_ids(self, messages):
        return list(range(words(messages)))

    def _generate(self, prompt, **settings):
        self.usage.prompt_tokens += words(prompt)
        return [Completion(self.reply, 3, "stop")]

    def _logprobs(self, prompt, continuations):
        raise NotImplementedError


def test_ask_records_one_row(index):
    q = next(q for q in QUESTIONS if q.id == "q004")  # "In x += 1 ...": answer "only evaluated once"
    gold = memory.gold_chunk(q, index)
    row = memory.ask(Scripted("It is only evaluated once."), q, [gold])
    n = words(memory.prompt(q.question, [gold.text]))
    assert row["prompt_tokens"] == row["prefilled_tokens"] == n and row["kv_bytes"] == memory.kv_bytes(n)
    assert row["gold_in_context"] and row["contains"] and row["em"] == 0.0 and 0.5 < row["f1"] < 1
    assert row["chunks"] == [gold.id] and row["prefill_s"] >= 0
    assert memory.ask(Scripted("twice"), q, [gold])["contains"] is False


def test_sample_questions_is_seeded_and_stratified():
    qs = memory.sample_questions(4, 2, seed=3)
    assert [q.source for q in qs].count("pydoc") == 4 and [q.source for q in qs].count("course") == 2
    assert all(q.split == "test" for q in qs) and qs == memory.sample_questions(4, 2, seed=3)
    assert [q.id for q in qs] == sorted(q.id for q in qs)
    with pytest.raises(ValueError, match="n for course must be between"):
        memory.sample_questions(1, 999)


def test_memory_run_with_a_scripted_backend(index):
    record = memory.memory_run(Scripted("no idea"), index, budgets=(400,), ks=(2,), long_budgets=(900,),
                               n_pydoc=2, n_course=1, progress=False)
    conditions = [r["condition"] for r in record["rows"]]
    assert conditions == ["gold"] * 3 + ["context-400"] * 3 + ["top-2"] * 3 + ["context-900"]
    assert all(r["prompt_tokens"] <= 400 for r in record["rows"] if r["condition"] == "context-400")
    assert all(len(r["chunks"]) == 2 for r in record["rows"] if r["condition"] == "top-2")
    assert record["questions"] == [q.id for q in memory.sample_questions(2, 1, 0)]
    assert torch.tensor([r["em"] for r in record["rows"]]).sum() == 0
