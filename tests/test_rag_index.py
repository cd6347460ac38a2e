"""labkit.rag.index: the chapter's index equals its parts (BM25, DenseIndex, RRF) on a small corpus built here,
maps chunks to sections, refuses bad input clearly, and the saved embeddings of the course corpus are current."""
import pytest
import torch

from labkit.course import saved
from labkit.rag import index as rag_index
from labkit.rag.bm25 import BM25
from labkit.rag.chunking import chunk_documents
from labkit.rag.dense import DenseIndex, embed
from labkit.rag.documents import pydoc_document
from labkit.rag.evalset import Question
from labkit.rag.fusion import reciprocal_rank_fusion
from labkit.rag.index import Index, corpus_index, evaluate, tokenize

# Four small documents in the pydoc format (reST headings), with sections long and short enough that fixed-size
# windows of 200 words straddle headings and heading chunks cut a long section in two.
FILLER = ("The interpreter reads each statement, compiles it to bytecode and runs it in a frame that holds "
          "the local names. ")
TEXTS = {
    "loops": "The for statement\n*****************\n\nThe for statement iterates over the elements of a sequence "
             "or other iterable object. " + FILLER * 12 + "\n\nThe break clause\n================\n\nbreak "
             "terminates the nearest enclosing loop, skipping the optional else clause.\n\nThe else clause\n"
             "===============\n\nThe else clause of a loop runs when the loop finishes without break.\n",
    "dicts": "Mapping types\n*************\n\nA dictionary maps hashable keys to arbitrary values. "
             "Dictionaries preserve insertion order since Python 3.7.\n\nDictionary views\n================\n\n"
             "keys(), values() and items() return dynamic views that reflect changes to the dictionary. "
             + FILLER * 20 + "\n",
    "with": "The with statement\n******************\n\nThe with statement wraps the execution of a block with "
            "methods defined by a context manager: __enter__ runs first and __exit__ runs last, even when the "
            "block raises an exception.\n",
    "strings": "String methods\n**************\n\nstr.split() breaks a string into a list of words; str.join() "
               "glues an iterable of strings back together with a separator.\n\nFormatting\n==========\n\n"
               "f-strings format values inline: f'{x!r}' shows the repr of x. " + FILLER * 4 + "\n",
}
QUERIES = ["how do I stop a loop early", "dictionary keys order", "context manager __enter__ __exit__",
           "split a string into words", "what runs when a loop ends without break", "bytecode frame local names"]


@pytest.fixture(scope="module")
def docs():
    return [pydoc_document(name, text) for name, text in TEXTS.items()]


@pytest.fixture(scope="module")
def heading(docs):
    return Index.from_documents(docs, "heading")


def _random_unit_vectors(n):
    return torch.nn.functional.normalize(torch.randn(n, 384, generator=torch.Generator().manual_seed(0)), dim=1)


@pytest.fixture(scope="module")
def fixed(docs):  # the section tests need no real vectors: save embedding the corpus once more
    return Index.from_documents(docs, "fixed", embeddings=_random_unit_vectors(len(chunk_documents(docs, "fixed"))))


def test_tokenize_lowercases_words_and_numbers_and_drops_punctuation():
    assert tokenize("What does os.path.join() return, 2 times?") == \
        ["what", "does", "os", "path", "join", "return", "2", "times"]
    assert tokenize("Call __init__ on MyClass_2!") == ["call", "__init__", "on", "myclass_2"]
    assert tokenize(" \n\t") == []
    with pytest.raises(TypeError, match="tokenize expects a str, got bytes"):
        tokenize(b"abc")


def test_the_small_corpus_exercises_what_it_should(heading, fixed):
    # a long section is cut into several heading chunks, and some fixed window straddles a heading
    assert len(heading.chunks) > sum(len(d.sections) for d in heading.docs)
    assert any(len(fixed.chunk_sections(c.id)) > 1 for c in fixed.chunks)
    assert all(len(heading.chunk_sections(c.id)) == 1 for c in heading.chunks)  # heading chunks never straddle


@pytest.mark.parametrize("k", [1, 3, 50])
def test_bm25_ranking_equals_the_bm25_module(heading, k):
    ref = BM25("lucene").index([tokenize(c.text) for c in heading.chunks])
    for q in QUERIES:
        top = ref.top_k(tokenize(q), k)
        got = heading.search(q, k, "bm25")
        assert got.ids == [heading.chunks[i].id for i in top.indices]
        assert [s for _, s in got] == pytest.approx(top.scores.tolist(), abs=0)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_dense_ranking_equals_the_dense_module(heading, k):
    ref = DenseIndex(heading.embeddings, [c.id for c in heading.chunks])  # embed() made them (test below)
    for q in QUERIES:
        got, want = heading.search(q, k, "dense"), ref.search(q, k)
        assert got.ids == want.ids
        # the index embeds the query once (cached) and passes the vector, which DenseIndex normalises again:
        # the same cosines up to float32 rounding
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)


@pytest.mark.parametrize("candidates,k", [(100, 10), (4, 3), (4, 6)])
def test_hybrid_is_rrf_of_the_two_lists(docs, heading, candidates, k):
    ix = Index.from_documents(docs, "heading", embeddings=heading.embeddings, candidates=candidates)
    depth = max(k, candidates)
    for q in QUERIES:
        lexical = ix.search(q, depth, "bm25").ids
        semantic = ix.search(q, depth, "dense").ids
        assert ix.search(q, k, "hybrid").hits == reciprocal_rank_fusion([lexical, semantic], k=60)[:k]
    assert heading.search(QUERIES[0], 5).hits == heading.search(QUERIES[0], 5, "hybrid").hits  # the default


def test_hybrid_keeps_dense_hits_when_no_query_word_is_in_the_corpus(heading):
    got = heading.search("zzyzx qwerty", 3, "hybrid")
    assert heading.search("zzyzx qwerty", 3, "bm25").hits == []
    assert got.ids == heading.search("zzyzx qwerty", 3, "dense").ids


def test_given_embeddings_equal_embedding_now(docs, heading):
    ix = Index.from_documents(docs, "heading", embeddings=embed([c.text for c in heading.chunks]))
    assert torch.equal(ix.embeddings, heading.embeddings)


def _overlaps_by_brute_force(doc, chunk):
    """Sections holding a non-whitespace character of the chunk, by looking at every character."""
    text = doc.text
    return tuple(s.id for s in doc.sections
                 if any(not text[i].isspace() for i in range(max(s.start, chunk.start), min(s.end, chunk.end))))


@pytest.mark.parametrize("strategy", ["fixed", "sentence", "heading"])
def test_each_chunk_maps_to_every_section_it_overlaps(docs, heading, strategy):
    ix = Index.from_documents(docs, strategy, embeddings=_random_unit_vectors(len(chunk_documents(docs, strategy))))
    by_id = {d.id: d for d in docs}
    for c in ix.chunks:
        assert ix.chunk(c.id) is c
        assert ix.chunk_sections(c.id) == _overlaps_by_brute_force(by_id[c.doc_id], c)
        assert ix.chunk_sections(c.id)  # every chunk has a word, so some section


def test_sections_are_deduplicated_in_order_of_first_appearance(fixed):
    # a window straddling a heading, and a later window of its document that starts in the second section it
    # covers (windows overlap by 40 words): both map to that section
    straddler, later = next((s, c) for s in fixed.chunks for c in fixed.chunks
                            if len(fixed.chunk_sections(s.id)) > 1 and c.doc_id == s.doc_id and c.start > s.start
                            and fixed.chunk_sections(c.id)[0] == fixed.chunk_sections(s.id)[1])
    first, second = fixed.chunk_sections(straddler.id)[:2]
    other = next(c for c in fixed.chunks if c.doc_id != straddler.doc_id)
    ranking = [later.id, straddler.id, other.id, later.id]
    want = list(fixed.chunk_sections(later.id))  # `second` first, as the top chunk lists it, and only once
    want += [s for s in fixed.chunk_sections(straddler.id) if s not in want] + list(fixed.chunk_sections(other.id))
    assert want[0] == second and first in want and len(want) == len(set(want))
    assert fixed.sections(ranking) == want
    assert fixed.sections(ranking, k=2) == want[:2]
    assert fixed.sections([(cid, 1.0) for cid in ranking]) == want  # (id, score) pairs, as Results holds them
    results = fixed.search("dictionary views", 4, "bm25")
    assert fixed.sections(results) == fixed.sections(results.ids)
    assert fixed.sections([]) == []


@pytest.mark.parametrize("method", ["bm25", "dense", "hybrid"])
@pytest.mark.parametrize("query", ["", "   ", "\n\t "])
def test_an_empty_query_returns_empty_results_with_a_reason(heading, method, query):
    got = heading.search(query, 5, method)
    assert got.hits == [] and "empty query" in got.reason


@pytest.mark.parametrize("method", ["bm25", "dense", "hybrid"])
def test_k_below_one_and_unknown_methods_are_refused(heading, method):
    for k in (0, -3):
        with pytest.raises(ValueError, match=f"k must be >= 1, got k={k}"):
            heading.search("loop", k, method)
    with pytest.raises(TypeError, match="k must be an int >= 1, got float"):
        heading.search("loop", 2.0, method)
    with pytest.raises(ValueError, match=r"k must be >= 1, got k=0"):
        heading.sections(["pydoc/loops#0"], k=0)
    with pytest.raises(TypeError, match="query must be a str, got list"):
        heading.search(["loop"], 3, method)


def test_unknown_method_and_strategy_and_chunk_are_refused(docs, heading):
    with pytest.raises(ValueError, match=r"method must be one of \('bm25', 'dense', 'hybrid'\), got 'sparse'"):
        heading.search("loop", 3, "sparse")
    with pytest.raises(ValueError, match=r"strategy must be one of \['fixed', 'heading', 'sentence'\], got 'para'"):
        Index.from_documents(docs, "para", embeddings=heading.embeddings)
    with pytest.raises(KeyError, match="no chunk 'pydoc/nope#0' in this 'heading' index"):
        heading.chunk("pydoc/nope#0")
    with pytest.raises(KeyError, match="no chunk"):
        heading.sections(["pydoc/nope#0"])


def test_mismatched_embeddings_are_refused(docs, heading):
    n = len(heading.chunks)
    for shape in [(n, 383), (n - 1, 384), (n + 1, 384), (n * 384,)]:
        with pytest.raises(ValueError, match=rf"embeddings must have shape \[n_chunks, 384\] = \[{n}, 384\] .*got "
                                             rf"\({', '.join(map(str, shape))},?\)"):
            Index.from_documents(docs, "heading", embeddings=torch.ones(shape))


def test_an_empty_corpus_is_refused():
    with pytest.raises(ValueError, match="cannot build an index over an empty corpus: docs is empty"):
        Index.from_documents([], "heading")
    blank = pydoc_document("blank", "   \n\n  \n")
    with pytest.raises(ValueError, match="cannot build an index over an empty corpus: there are no chunks"):
        Index.from_documents([blank], "heading")
    with pytest.raises(TypeError, match="docs must hold labkit.rag.documents.Document objects; docs\\[0\\] is str"):
        Index.from_documents(["some text"], "heading")
    with pytest.raises(TypeError, match="docs must be a list of Documents, got str"):
        Index.from_documents("some text", "heading")


def _question(qid, question, gold):
    return Question(id=qid, question=question, answers=("x",), gold=gold, split="dev", source="pydoc")


def test_evaluate_scores_the_section_rankings(heading):
    q = "how does the with statement use a context manager"
    top = heading.sections(heading.search(q, 100, "bm25"))
    found = _question("q1", q, (top[0],))            # its gold section is ranked first
    second = _question("q2", q, (top[1],))           # ranked second: reciprocal rank 1/2, nDCG 1/log2(3)
    missed = _question("q3", q, ("pydoc/nowhere@0",))  # never retrieved: every metric 0
    got = evaluate(heading, [found, second, missed], k=10, method="bm25")
    assert got == pytest.approx({"recall@10": 2 / 3, "mrr": (1 + 1 / 2) / 3,
                                 "ndcg@10": (1 + 1 / torch.log2(torch.tensor(3.0)).item()) / 3})
    with pytest.raises(ValueError, match="evaluate needs at least one question"):
        evaluate(heading, [])
    with pytest.raises(ValueError, match="method must be one of"):
        evaluate(heading, [found], method="tfidf")


# ---------------------------------------------------------------- the course corpus and its saved embeddings

def test_corpus_index_refuses_embeddings_of_another_corpus(monkeypatch):
    real = saved.load(rag_index.SAVED_RUN)
    for change, message in [({"fingerprint": "0" * 64}, "computed on a different corpus: fingerprint 000000000000"),
                            (None, "hold 3 vectors but the corpus has")]:
        record = dict(real.record, **change) if change else real.record
        tensors = real.tensors if change else dict(real.tensors, heading=real.tensors["heading"][:3])
        monkeypatch.setattr(saved, "load", lambda name, **_: saved.SavedRun(name, record, real.meta, tensors))
        rag_index.corpus_index.cache_clear()
        with pytest.raises(ValueError, match=message + r".*python -m labkit.course save 12-embeddings"):
            corpus_index("heading")
    rag_index.corpus_index.cache_clear()


@pytest.mark.parametrize("strategy", ["fixed", "sentence", "heading"])
def test_saved_embeddings_equal_embedding_a_few_chunks_now(strategy):
    ix = corpus_index(strategy)
    assert ix.embeddings.shape == (saved.load(rag_index.SAVED_RUN).record["strategies"][strategy]["chunks"], 384)
    picks = torch.randperm(len(ix.chunks), generator=torch.Generator().manual_seed(12))[:4].tolist()
    live = embed([ix.chunks[i].text for i in picks])
    assert torch.nn.functional.cosine_similarity(live, ix.embeddings[picks]).min() >= 0.9999


def test_a_prebuilt_bm25_must_index_the_same_chunks(heading):
    args = (heading.docs, heading.chunks, heading.embeddings)
    with pytest.raises(ValueError, match=f"bm25 must index these {len(heading.chunks)} chunks with variant 'lucene'"):
        Index(*args, bm25=BM25("lucene").index([["a"]]))
    with pytest.raises(ValueError, match="with variant 'lucene', got BM25\\('atire'"):
        Index(*args, bm25=BM25("atire").index([tokenize(c.text) for c in heading.chunks]))
    same = Index(*args, bm25=heading.bm25)
    assert same.search("break a loop", 5, "bm25").hits == heading.search("break a loop", 5, "bm25").hits
