"""Multi-query (RAG-fusion) and LLM reranking: parsing the model's rewrites, the fusion wiring, the reranker's
ordering, bad input. The wiring is tested on a deterministic fake LLM over a tiny real index; the judge's
prompt and scores on the real SmolLM2 (one small call), and the saved run's recorded scores re-scored."""
from __future__ import annotations

import pytest

from labkit.llm.base import LLM, Completion
from labkit.rag import advanced
from labkit.rag.dense import Results
from labkit.rag.documents import Document, Section
from labkit.rag.fusion import reciprocal_rank_fusion
from labkit.rag.index import Index

TEXTS = {
    "loops": "The for statement iterates over the items of a sequence. A break statement ends the loop early.",
    "files": "Open a file with open(); iterate over the file object to read it line by line.",
    "errors": "The try statement catches exceptions. An except clause names the exception class it handles.",
    "context": "The with statement calls __enter__ on entry and __exit__ when the block is left.",
}


def _doc(name: str, text: str) -> Document:
    doc_id = f"toy/{name}"
    return Document(doc_id, name, "test", (Section(f"{doc_id}@0", name, text, 0),))


@pytest.fixture(scope="module")
def index() -> Index:
    return Index.from_documents([_doc(n, t) for n, t in TEXTS.items()], strategy="heading")


class ScriptedLLM(LLM):
    """generate() returns `replies` in turn (one per sample); logprobs scores "Yes" higher when the passage in
    the prompt contains `relevant`, so the reranker's order is known in advance. Records every call."""
    name = "scripted"

    def __init__(self, replies=(" first rewrite",), relevant="__enter__"):
        super().__init__()
        self.replies, self.relevant, self.calls = list(replies), relevant, []

    def _generate(self, prompt, *, n, temperature, seed, **settings):
        self.calls.append(("generate", n, temperature, seed))
        start = sum(c[1] for c in self.calls[:-1] if c[0] == "generate")
        return [Completion(self.replies[(start + i) % len(self.replies)], 3, "stop") for i in range(n)]

    def _logprobs(self, prompt, continuations):
        text = prompt[-1].content
        self.calls.append(("logprobs", text))
        yes = 0.0 if self.relevant in text else -3.0
        return [yes if c == advanced.YES else -1.0 for c in continuations]


# ---------------------------------------------------------------- parsing rewrites

def test_parse_queries_strips_list_marks_labels_and_quotes():
    text = "1. iterate file lines\n2) \"open a text file\"\n- Query: read lines of a file\n* 'file reading'"
    assert advanced.parse_queries(text, "How do I read a file?", n=4) == [
        "iterate file lines", "open a text file", "read lines of a file", "file reading"]


def test_parse_queries_drops_echoes_repeats_empty_and_long_lines_and_caps_at_n():
    q = "What does the with statement call?"
    text = ("What does the WITH statement call\n\n   \n!!!\nwith statement enter\nwith statement enter.\n"
            + " ".join(["word"] * (advanced.MAX_QUERY_WORDS + 1)) + "\nexit method\nthird one\n")
    assert advanced.parse_queries(text, q, n=2) == ["with statement enter", "exit method"]


def test_parse_queries_on_malformed_text_gives_nothing_and_never_evaluates_it():
    assert advanced.parse_queries("", "q?") == []
    assert advanced.parse_queries("1.\n---\n\"\"\n", "q?") == []
    hostile = "__import__('os').system('touch /tmp/pwned')"
    assert advanced.parse_queries(hostile, "q?") == [hostile]  # kept as a string: only split and stripped


def test_rewrite_prompt_ends_where_the_model_continues():
    p = advanced.rewrite_prompt("  How   many heads?\n")
    assert p.endswith("Question: How many heads?\nQuery:")
    assert p.count("Query:") == len(advanced.REWRITE_EXAMPLES) + 1


def test_rewrite_queries_greedy_first_then_seeded_samples_and_fallback():
    llm = ScriptedLLM(replies=[" with statement enter method\nmore text", " 1. exit method", " with statement enter method"])
    assert advanced.rewrite_queries(llm, "What does with call?", n=3, seed=7) == [
        "with statement enter method", "exit method"]  # the third repeats the first: dropped
    assert llm.calls == [("generate", 1, 0.0, 0), ("generate", 2, 0.7, 7)]
    junk = ScriptedLLM(replies=[" What does with call?", "", "  ***"])
    assert advanced.rewrite_queries(junk, "What does with call?", n=3) == []  # the caller keeps the question alone
    one = ScriptedLLM()
    assert advanced.rewrite_queries(one, "q?", n=1) == ["first rewrite"] and len(one.calls) == 1


# ---------------------------------------------------------------- fusion wiring

def test_multi_query_search_with_the_question_alone_is_the_plain_search(index):
    q = "how do I read a file line by line"
    assert advanced.multi_query_search(index, [q], k=4, depth=4).ids == index.search(q, 4).ids


def test_multi_query_search_is_rrf_of_each_querys_ranking(index):
    queries = ["how do I read a file", "catching exceptions", "what does with call on entry"]
    got = advanced.multi_query_search(index, queries, k=4, depth=4)
    want = reciprocal_rank_fusion([index.search(q, 4).ids for q in queries])
    assert got.hits == want[:4]
    assert len({d for d in got.ids}) == 4  # every toy chunk found by some query, each once


def test_multi_query_search_ignores_a_query_that_finds_nothing(index):
    q = "how do I read a file line by line"
    assert advanced.multi_query_search(index, [q, "   "], k=4, depth=4).ids == index.search(q, 4).ids


def test_multi_query_search_bad_input(index):
    with pytest.raises(ValueError, match="at least the original question"):
        advanced.multi_query_search(index, [])
    with pytest.raises(TypeError, match="list of strings"):
        advanced.multi_query_search(index, "a question")
    with pytest.raises(TypeError, match=r"queries\[1\] must be a str"):
        advanced.multi_query_search(index, ["q", 3])
    with pytest.raises(ValueError, match="k must be >= 1"):
        advanced.multi_query_search(index, ["q"], k=0)


# ---------------------------------------------------------------- reranking

def test_rerank_orders_the_top_n_by_score_and_keeps_the_rest():
    hits = Results([("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.5)], reason=None)
    out = advanced.rerank(hits, {"a": -1.0, "b": 2.0, "c": 2.0, "z": 9.0}, top_n=3)
    assert out.ids == ["b", "c", "a", "d", "e"]  # b and c tie: first-stage order kept
    assert out.hits[0] == ("b", 2.0) and out.hits[3] == ("d", 0.6)
    assert advanced.rerank(hits, {"a": 0.0}, top_n=1).ids == hits.ids  # N = 1 changes nothing


def test_rerank_bad_input():
    hits = [("a", 1.0), ("b", 0.5)]
    with pytest.raises(ValueError, match="no relevance score for 1 of the top 2"):
        advanced.rerank(hits, {"a": 1.0}, top_n=2)
    with pytest.raises(ValueError, match="top_n must be >= 1"):
        advanced.rerank(hits, {}, top_n=0)
    with pytest.raises(TypeError, match=r"\(id, score\) pairs"):
        advanced.rerank(["a", "b"], {"a": 1.0, "b": 1.0}, top_n=2)


def test_llm_rerank_moves_the_judged_relevant_chunk_up_and_scores_each_chunk_once(index):
    llm = ScriptedLLM(relevant="__enter__")
    q = "how do I read a file line by line"
    first = index.search(q, 4)
    assert first.ids[0] != "toy/context#0"
    cache = {}
    out = advanced.llm_rerank(llm, index, q, first, top_n=4, cache=cache)
    assert out.ids[0] == "toy/context#0" and out.ids[1:] == [i for i in first.ids if i != "toy/context#0"]
    assert cache["toy/context#0"] == pytest.approx(1.0) and sorted(cache.values())[0] == pytest.approx(-2.0)
    advanced.llm_rerank(llm, index, q, first, top_n=4, cache=cache)
    assert sum(c[0] == "logprobs" for c in llm.calls) == 4  # the second pass scored nothing again


def test_relevance_prompt_cuts_the_passage_and_refuses_bad_input():
    msg = advanced.relevance_prompt("Why?", "one two three four", max_words=2)[0]["content"]
    assert msg.startswith("Question: Why?\n") and "Passage:\none two ...\n" in msg
    assert msg.endswith("Answer Yes or No.")
    with pytest.raises(ValueError, match="question is empty"):
        advanced.relevance_prompt("  ", "text")
    with pytest.raises(TypeError, match="passage must be a str"):
        advanced.relevance_prompt("q", None)
    with pytest.raises(ValueError, match="max_words must be >= 1"):
        advanced.relevance_prompt("q", "text", max_words=0)


def test_relevance_score_on_smollm2_is_the_yes_no_logprob_gap():
    from labkit.llm import connect

    llm = connect()
    q = "Which method does the with statement call when the block is entered?"
    s = advanced.relevance_score(llm, q, TEXTS["context"])
    yes, no = llm.logprobs(advanced.relevance_prompt(q, TEXTS["context"]), ["Yes", "No"])
    # 1e-3, not equality: the second call reuses the prompt's cached keys and values, which moves the last digits
    assert s == pytest.approx(yes - no, abs=1e-3) and -30 < s < 30 and s != 0


def test_saved_run_slice_reproduces():
    """The saved run "12-advanced": a recorded fused ranking re-searched, and two recorded judge scores re-scored."""
    from labkit.course import saved
    from labkit.llm import connect
    from labkit.rag.evalset import load_questions
    from labkit.rag.index import corpus_index

    rec = saved.load("12-advanced").record
    index, questions = corpus_index("heading"), {q.id: q for q in load_questions()}
    r = rec["questions"][10]
    q = questions[r["id"]]
    n = rec["chosen"]["n"]
    fused = advanced.multi_query_search(index, [q.question, *r["rewrites"][:n]], k=rec["depth"], depth=rec["depth"])
    assert index.sections(fused, 10) == rec["runs"][f"multi-query n={n}"][q.id]
    assert fused.ids[:10] == r["first"][str(n)]
    llm = connect()
    for c in r["first"]["0"][:2]:
        assert abs(advanced.relevance_score(llm, q.question, index.chunk(c).text) - r["scores"][c]) < 1e-3
