"""Dense retrieval: our MiniLM embeddings equal sentence-transformers'; exact cosine top-k; bad input."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from labkit.rag import dense
from labkit.rag.dense import DIM, MAX_LENGTH, DenseIndex, Results, embed, l2_normalize, mean_pool

# --- pooling, without the model ----------------------------------------------------------------------------


def test_mean_pool_hand_computed_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                      [[5.0, 6.0], [-1.0, 0.0], [7.0, 8.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = torch.tensor([[2.0, 3.0], [11 / 3, 14 / 3]])
    torch.testing.assert_close(mean_pool(h, mask), expected)


def test_mean_pool_does_not_depend_on_padding_length_or_values():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(1, 4, 8, generator=gen)
    padded = torch.cat([h, 1e3 * torch.randn(1, 5, 8, generator=gen)], dim=1)
    mask = torch.tensor([[1] * 4 + [0] * 5])
    torch.testing.assert_close(mean_pool(padded, mask), h.mean(dim=1))


def test_mean_pool_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"attention_mask \[b, t\]"):
        mean_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))


def test_l2_normalize_gives_unit_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(l2_normalize(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_max_length_is_the_one_sentence_transformers_reads_from_the_model_folder():
    from labkit.models import minilm_dir
    config = json.loads((minilm_dir() / "sentence_bert_config.json").read_text())
    assert MAX_LENGTH == config["max_seq_length"] == 256


# --- embed(): input checks that need no model -----------------------------------------------------------------


def test_embed_of_nothing_is_an_empty_matrix():
    assert embed([]).shape == (0, DIM)


@pytest.mark.parametrize("texts,match", [("a string", "list of strings"), (["ok", 3], r"texts\[1\] is int")])
def test_embed_rejects_non_strings(texts, match):
    with pytest.raises(TypeError, match=match):
        embed(texts)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_embed_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        embed(["a"], batch_size=batch_size)


# --- equality with sentence-transformers (one model load for the module) ----------------------------------------

LONG = " ".join(f"The retriever ranks chunk {i} by cosine similarity to the query." for i in range(60))
TEXTS = [
    "hi",
    "",
    "What does BM25's k1 parameter control?",
    "Reciprocal rank fusion merges ranked lists using only positions, with k = 60.",
    "def f(x):\n    return x ** 2  # code, punctuation and Ünïcödé 東京",
    "A medium-length passage about dense retrieval. " * 8,
    LONG,                         # far beyond 256 word pieces: truncation must match
    LONG + " A different tail that only truncation hides.",
]


@pytest.fixture(scope="module")
def oracle():
    from sentence_transformers import SentenceTransformer

    from labkit.models import minilm_dir
    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    ref = torch.as_tensor(model.encode(TEXTS, batch_size=4, convert_to_numpy=True))
    # modules.json lists Normalize, so ST's output is unit length already; normalising again changes nothing
    # and keeps the comparison right should a folder without the Normalize module be used.
    ref = torch.nn.functional.normalize(ref, dim=1)
    tokenizer, _ = dense._minilm()
    return {"st": model, "ref": ref, "ours": embed(TEXTS, batch_size=4), "tokenizer": tokenizer}


def cosines(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


@pytest.mark.slow
def test_sentence_transformers_builds_mean_pooling_normalize_and_256(oracle):
    st_model = oracle["st"]
    assert st_model.max_seq_length == MAX_LENGTH
    assert [type(m).__name__ for m in st_model] == ["Transformer", "Pooling", "Normalize"]


@pytest.mark.slow
def test_the_long_text_is_longer_than_max_length(oracle):
    n = len(oracle["tokenizer"](LONG)["input_ids"])
    assert n > 2 * MAX_LENGTH


@pytest.mark.slow
def test_embeddings_equal_sentence_transformers(oracle):
    ours, ref = oracle["ours"], oracle["ref"]
    assert ours.shape == (len(TEXTS), DIM) and ours.dtype == torch.float32
    assert cosines(ours, ref).min() >= 0.9999
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(TEXTS)))


@pytest.mark.slow
def test_truncation_at_256_word_pieces(oracle):
    ours = oracle["ours"]
    torch.testing.assert_close(ours[6], ours[7])  # the tails differ only after word piece 256
    # Without max_length=256 (the tokenizer alone would allow 512), the long text no longer matches.
    tokenizer, model = dense._minilm()
    batch = tokenizer([LONG], truncation=True, max_length=512, return_tensors="pt")
    with torch.inference_mode():
        untruncated = l2_normalize(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]))
    assert cosines(untruncated, oracle["ref"][6:7]).item() < 0.9999


@pytest.mark.slow
def test_a_pooling_that_counts_padding_is_caught(oracle, monkeypatch):
    monkeypatch.setattr(dense, "mean_pool", lambda h, mask: h.mean(dim=1))  # the mutant: padding counted
    mutant = embed(TEXTS, batch_size=len(TEXTS))  # one batch: "hi" is padded to 256 positions
    assert cosines(mutant, oracle["ref"]).min() < 0.9999


@pytest.mark.slow
def test_embedding_does_not_depend_on_batch_companions(oracle):
    alone = embed(["hi"])
    torch.testing.assert_close(alone[0], oracle["ours"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(embed(TEXTS, batch_size=1), oracle["ours"], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_progress_bar(oracle, capsys):
    out = embed(TEXTS[:3], batch_size=1, progress=True)
    torch.testing.assert_close(out, oracle["ours"][:3], atol=1e-5, rtol=0)
    assert "embedding" in capsys.readouterr().err


@pytest.mark.slow
def test_text_search_ranks_the_matching_passage_first(oracle):
    index = DenseIndex(oracle["ours"], [f"c{i}" for i in range(len(TEXTS))])
    query = "How are ranked lists merged with reciprocal rank fusion?"
    hits = index.search(query, k=3)
    assert hits.ids[0] == "c3" and hits.reason is None
    assert list(hits) == list(index.search(embed([query])[0], k=3))


@pytest.mark.slow
def test_the_cached_model_still_works_with_autograd_after_embed(oracle):
    # Regression: under torch.inference_mode() embed() left inference tensors that made any later forward
    # with gradients (e.g. fine-tuning the same model) fail with "Inference tensors cannot be saved for backward".
    tokenizer, model = dense._minilm()
    loss = model(**tokenizer(["hi there"], return_tensors="pt")).last_hidden_state.sum()
    loss.backward()
    model.zero_grad(set_to_none=True)


# --- DenseIndex ------------------------------------------------------------------------------------------------


def random_index(n=50, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), [f"d{i}" for i in range(n)]


def brute_force(vectors, q, k):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (q / np.linalg.norm(q))
    return list(np.argsort(-scores, kind="stable")[:k]), scores


@pytest.mark.parametrize("k", [1, 5, 50, 80])
def test_exact_top_k_equals_brute_force_argsort(k):
    vectors, ids = random_index()
    q = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    order, scores = brute_force(vectors, q, k)
    hits = DenseIndex(vectors, ids).search(q, k=k)
    assert hits.ids == [ids[i] for i in order]
    assert len(hits) == min(k, 50)
    np.testing.assert_allclose([s for _, s in hits], scores[order], atol=1e-6)


def test_ties_keep_insertion_order():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    hits = DenseIndex(vectors, ["a", "b", "c", "d"]).search(np.array([1.0, 0.0]), k=4)
    assert hits.ids == ["a", "c", "d", "b"]
    assert [s for _, s in hits] == pytest.approx([1.0, 1.0, 1.0, 0.0])


vector_sets = st.integers(1, 20).flatmap(lambda n: st.integers(1, 8).flatmap(lambda d: st.tuples(
    arrays(np.float32, (n, d), elements=st.floats(-10, 10, width=32)),
    arrays(np.float32, (d,), elements=st.floats(-10, 10, width=32)))))


@settings(max_examples=100, deadline=None)
@given(vector_sets, st.integers(1, 25))
def test_property_search_is_sorted_cosine_top_k(data, k):
    vectors, q = data
    norms = np.linalg.norm(vectors, axis=1)
    if (norms < 1e-3).any() or np.linalg.norm(q) < 1e-3:
        return  # zero vectors are refused (tested below); near-zero ones make cosine ill-conditioned
    index = DenseIndex(vectors, list(range(len(vectors))))
    hits = index.search(q, k=k)
    scores = [s for _, s in hits]
    assert len(hits) == min(k, len(vectors))
    assert scores == sorted(scores, reverse=True)
    assert all(-1 - 1e-5 <= s <= 1 + 1e-5 for s in scores)
    _, exact = brute_force(vectors.astype(np.float64), q.astype(np.float64), k)
    # every returned score is the true cosine, and nothing left out scores clearly higher than the last kept
    np.testing.assert_allclose(scores, exact[[i for i, _ in hits]], atol=1e-5)
    left_out = set(range(len(vectors))) - set(hits.ids)
    assert all(exact[i] <= scores[-1] + 1e-5 for i in left_out)
    # cosine ignores the query's length (compare scores: near-ties may swap ids in the last float bit)
    np.testing.assert_allclose([s for _, s in index.search(q * 3.0, k=k)], scores, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 30), st.integers(2, 8), st.integers(0, 2**32 - 1))
def test_property_a_stored_vector_finds_itself_first(n, d, seed):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    i = int(rng.integers(n))
    hits = DenseIndex(vectors, [f"x{j}" for j in range(n)]).search(vectors[i], k=1)
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert hits[0][0] == f"x{i}"  # Gaussian rows: no two are parallel


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_is_refused(k):
    vectors, ids = random_index()
    with pytest.raises(ValueError, match="k must be >= 1"):
        DenseIndex(vectors, ids).search(vectors[0], k=k)


@pytest.mark.parametrize("k", [2.0, "3", True, None])
def test_non_int_k_is_refused(k):
    vectors, ids = random_index()
    with pytest.raises(TypeError, match="k must be an int"):
        DenseIndex(vectors, ids).search(vectors[0], k=k)


def test_empty_corpus_is_refused():
    with pytest.raises(ValueError, match="empty corpus"):
        DenseIndex(np.zeros((0, 384)), [])


def test_mismatched_query_dimension_is_refused():
    vectors, ids = random_index(d=16)
    with pytest.raises(ValueError, match=r"vector of 16 numbers .* got shape \(384,\)"):
        DenseIndex(vectors, ids).search(np.ones(384), k=3)


def test_text_query_on_an_index_of_another_dimension_is_refused():
    vectors, ids = random_index(d=16)
    with pytest.raises(ValueError, match="384 dims.*stores 16-dim"):
        DenseIndex(vectors, ids).search("a real question", k=3)


@pytest.mark.parametrize("query", ["", "   ", "\n\t "])
def test_empty_or_whitespace_query_returns_empty_results_with_a_reason(query):
    vectors, ids = random_index()
    hits = DenseIndex(vectors, ids).search(query, k=3)
    assert hits == Results([], reason="empty query")
    assert list(hits) == [] and len(hits) == 0


def test_zero_query_vector_returns_empty_results_with_a_reason():
    vectors, ids = random_index()
    hits = DenseIndex(vectors, ids).search(np.zeros(16), k=3)
    assert len(hits) == 0 and "all zeros" in hits.reason


@pytest.mark.parametrize("embeddings,ids,match", [
    (np.ones(5), list("abcde"), "2-D"),
    (np.ones((3, 4)), ["a", "b"], "3 embeddings, 2 ids"),
    (np.ones((2, 4)), ["a", "a"], "unique"),
    (np.array([[1.0, 0.0], [0.0, 0.0]]), ["a", "b"], "'b' is all zeros"),
    (np.array([[1.0, np.nan]]), ["a"], "NaN"),
    (np.ones((2, 0)), ["a", "b"], "dim >= 1"),
])
def test_bad_index_input_is_refused(embeddings, ids, match):
    with pytest.raises(ValueError, match=match):
        DenseIndex(embeddings, ids)
