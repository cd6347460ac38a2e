"""Embedding fine-tuning: the mined triplets, the false-negative-free batcher, the loss against
sentence-transformers' MultipleNegativesRankingLoss (test-time oracle), and the saved run's first steps."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.course.saved import RESULTS
from labkit.rag.chunking import chunk_documents
from labkit.rag.documents import load_documents
from labkit.rag.embed_finetune import (Config, Triplet, chunk_sections, encode, finetune, in_batch_negatives_loss,
                                       mine_triplets, no_duplicate_batches, section_run)


@pytest.fixture(scope="module")
def docs():
    return load_documents()


@pytest.fixture(scope="module")
def triplets(docs):
    return mine_triplets(docs)


# ---------------------------------------------------------------- the loss

def _mnrl():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(model=None)  # scale 20, cosine: the defaults we reproduce


@pytest.mark.parametrize("negatives", [True, False])
@pytest.mark.parametrize("b", [1, 2, 7])
def test_loss_equals_sentence_transformers(b, negatives):
    g = torch.Generator().manual_seed(b)
    q, p, n = (torch.randn(b, 384, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ours = in_batch_negatives_loss(q, p, n if negatives else None)
    ref = _mnrl().compute_loss_from_embeddings([q, p, n] if negatives else [q, p], labels=None)
    assert abs(ours.item() - ref.item()) < 1e-12
    g_ours = torch.autograd.grad(ours, (q, p, n), allow_unused=True)
    g_ref = torch.autograd.grad(ref, (q, p, n), allow_unused=True)
    for a, r in zip(g_ours, g_ref):
        assert (a is None) == (r is None)
        if a is not None:
            assert torch.allclose(a, r, atol=1e-12)


def test_sentence_transformers_default_scale_is_20():
    assert _mnrl().scale == 20.0


def test_loss_by_hand():
    # two orthogonal pairs, no negatives: row i's logits are [20, 0] (own positive first) or [0, 20]
    q = torch.eye(2, 4)
    loss = in_batch_negatives_loss(q, q.clone())
    assert abs(float(loss) - torch.log1p(torch.exp(torch.tensor(-20.0))).item()) < 1e-6
    # the batch's other positive as the answer instead: swapped positives give a loss near 20
    assert abs(float(in_batch_negatives_loss(q, q.flip(0))) - 20.0) < 1e-6
    # one query alone with no negatives has nothing to confuse: loss 0
    assert float(in_batch_negatives_loss(q[:1], torch.randn(1, 4))) == 0.0


def test_loss_refuses_bad_shapes():
    q = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"queries and positives must both be \[b, d\], got \(3, 8\) and \(2, 8\)"):
        in_batch_negatives_loss(q, torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"negatives must be \[b, d\] like the queries"):
        in_batch_negatives_loss(q, q, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"scale must be > 0, got 0"):
        in_batch_negatives_loss(q, q, scale=0)


# ---------------------------------------------------------------- the batcher

def violations(batch: list[Triplet]) -> list[str]:
    """What makes a batch hold a false negative (empty when it holds none)."""
    out = []
    anchors = [t.anchor.lower() for t in batch]
    positives = [t.section for t in batch]
    if len(set(anchors)) < len(anchors):
        out.append("an anchor twice")
    if len(set(positives)) < len(positives):
        out.append("a positive section twice")
    if {t.negative_section for t in batch} & set(positives):
        out.append("a negative from a positive's section")
    return out


def test_violations_detects_what_it_should():
    t = Triplet("a", "p", "n", "s1", "s9", "heading")
    assert violations([t, Triplet("A", "p2", "n2", "s2", "s8", "sentence")]) == ["an anchor twice"]
    assert violations([t, Triplet("b", "p2", "n2", "s1", "s8", "sentence")]) == ["a positive section twice"]
    assert violations([t, Triplet("b", "p2", "n2", "s2", "s1", "sentence")]) == ["a negative from a positive's section"]
    assert violations([t, Triplet("b", "p2", "n2", "s2", "s8", "sentence")]) == []


triplet_lists = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8), st.integers(0, 8)), min_size=0, max_size=60)


@settings(max_examples=60, deadline=None)
@given(rows=triplet_lists, batch_size=st.integers(1, 6), seed=st.integers(0, 3))
def test_batches_never_hold_false_negatives(rows, batch_size, seed):
    trips = [Triplet(f"q{a}", f"p{i}", f"n{i}", f"s{s}", f"s{n}", "heading") for i, (a, s, n) in enumerate(rows)]
    batches = no_duplicate_batches(trips, batch_size, seed=seed)
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))  # each triplet at most once
    assert all(len(b) == batch_size for b in batches)
    for b in batches:
        assert violations([trips[i] for i in b]) == []
    assert batches == no_duplicate_batches(trips, batch_size, seed=seed)  # seeded


def test_naive_batches_would_hold_false_negatives(triplets):
    # consecutive triplets share sections (mining makes a heading and a sentence query per section), so cutting
    # the list in order puts a section's two queries in one batch: each would be the other's false negative
    naive = [triplets[i:i + 16] for i in range(0, len(triplets) - 15, 16)]
    assert sum(bool(violations(b)) for b in naive) > len(naive) // 2
    ours = no_duplicate_batches(triplets, 16)
    assert not any(violations([triplets[i] for i in b]) for b in ours)
    assert len(ours) * 16 >= 0.9 * len(triplets)  # the constraints cost few triplets


def test_batcher_refuses_bad_input():
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        no_duplicate_batches([], 0)
    with pytest.raises(TypeError, match=r"triplets must be Triplets"):
        no_duplicate_batches([("a", "b", "c")], 1)


# ---------------------------------------------------------------- mining

def test_triplets_are_well_formed(docs, triplets):
    sections = {s.id: s for d in docs for s in d.sections}
    assert len(triplets) > 800
    assert {t.kind for t in triplets} == {"heading", "sentence"}
    for t in triplets:
        assert t.section in sections and t.negative_section in sections
        assert t.negative_section != t.section
        squashed = " ".join(t.negative.split()).lower()
        assert t.anchor.lower() not in squashed  # a negative containing the query verbatim could be relevant
        assert t.positive in sections[t.section].text or t.kind == "sentence"
        if t.kind == "sentence":  # inverse cloze: the sentence is cut out of its passage
            assert t.anchor not in " ".join(t.positive.split())
            assert t.anchor in " ".join(sections[t.section].text.split())


def test_heading_positive_drops_its_heading(docs, triplets):
    t = next(t for t in triplets if t.section == "pydoc/assert@0" and t.kind == "heading")
    assert t.anchor == 'The "assert" statement'
    assert t.positive.startswith("Assert statements are")


def starts_with_heading(text: str) -> bool:
    """A markdown heading, or a reST title (a line underlined by one repeated mark), as the first line."""
    lines = text.lstrip().splitlines()
    return bool(lines) and (lines[0].startswith("#") or (len(lines) > 1 and len(set(lines[1].strip())) == 1
                                                          and len(lines[1].strip()) >= 3
                                                          and lines[1].strip()[0] in "*=-^~#+"))


def heading_gap(triplets: list[Triplet], kind: str) -> float:
    """Share of negatives minus share of positives that start with a heading line, for one kind of query."""
    sub = [t for t in triplets if t.kind == kind]
    return (sum(map(starts_with_heading, (t.negative for t in sub)))
            - sum(map(starts_with_heading, (t.positive for t in sub)))) / len(sub)


def test_fixed_mining_leaves_no_heading_cue(docs, triplets):
    # as built: a heading query's positive never starts with a heading line, most of its negatives do
    assert heading_gap(triplets, "heading") > 0.5
    fixed = mine_triplets(docs, strip_all_headings=True)
    for kind in ("heading", "sentence"):
        assert abs(heading_gap(fixed, kind)) < 0.01
    assert sum(starts_with_heading(t.negative) for t in fixed) == 0
    # the same queries and positive sections; the negatives are whole passages, cut like the positives
    assert [(t.anchor, t.section, t.kind) for t in fixed] == [(t.anchor, t.section, t.kind) for t in triplets]
    assert min(len(t.negative.split()) for t in fixed) >= 20
    t = next(t for t in fixed if t.negative_section == "pydoc/identifiers@1")
    assert t.negative.startswith("The following identifiers") and "Keywords" in next(
        u.negative for u in triplets if u.anchor == t.anchor)
    with pytest.raises(TypeError, match=r"strip_all_headings must be a bool, got int"):
        mine_triplets(docs[:2], strip_all_headings=1)


def test_mining_is_seeded_and_never_sees_the_questions(docs, triplets):
    from labkit.rag.evalset import load_questions

    assert mine_triplets(docs, seed=0) == triplets
    assert mine_triplets(docs, seed=1) != triplets
    questions = {" ".join(q.question.split()).lower() for q in load_questions()}
    assert not questions & {t.anchor.lower() for t in triplets}


def test_mining_refuses_bad_input(docs):
    with pytest.raises(TypeError, match=r"docs must be a non-empty list of Documents"):
        mine_triplets([])
    with pytest.raises(ValueError, match=r"candidates must be an int >= 1, got 0"):
        mine_triplets(docs[:2], candidates=0)


def test_chunk_sections(docs):
    chunks = chunk_documents(docs[:3], "heading")
    for c, s in zip(chunks, chunk_sections(docs[:3], chunks)):
        sec = next(x for x in docs[:3] for x in x.sections if x.id == s)
        assert c.doc_id == s.split("@")[0] and sec.start <= c.start < sec.end
    with pytest.raises(ValueError, match=r"which is not among the docs"):
        chunk_sections(docs[3:4], chunks)


# ---------------------------------------------------------------- the model: our encoder, the saved run's first step

@pytest.fixture(scope="module")
def minilm():
    from labkit.models import load_minilm

    return load_minilm()


def test_encode_equals_dense_embed(minilm):
    from labkit.rag.dense import embed

    texts = ["The with statement wraps a block.", "BM25 scores a document for a query, term by term."]
    with torch.no_grad():
        ours = encode(*minilm, texts)
    assert torch.allclose(ours, embed(texts), atol=1e-5)


def test_first_step_matches_the_saved_run(triplets):
    path = RESULTS / "12-embed-finetune.json"
    if not path.is_file():
        pytest.skip("results/12-embed-finetune.json not saved yet")
    record = json.loads(path.read_text())["record"]
    config = Config(**{**record["config"], "steps": 1})
    _, losses = finetune(triplets, config)
    assert abs(losses[0] - record["losses"][0]) < 1e-3
    # the second training of the run: the same seed on the triplets mined without the heading cue
    _, losses = finetune(mine_triplets(load_documents(), strip_all_headings=True), config)
    assert abs(losses[0] - record["fixed"]["losses"][0]) < 1e-3


def test_section_run_maps_dense_hits_to_sections(docs):
    from labkit.rag.index import Index

    small = docs[:3]
    g = torch.Generator().manual_seed(0)
    n = len(chunk_documents(small, "heading"))
    index = Index.from_documents(small, "heading", embeddings=torch.randn(n, 384, generator=g))
    q = index.embeddings[[0, 4]]  # each query is a chunk's own vector: its section must come first
    run = section_run(index, q, ["a", "b"], k=3)
    assert [r[0] for r in run.values()] == [index.chunk_sections(index.ids[i])[0] for i in (0, 4)]
    assert all(len(r) == 3 == len(set(r)) for r in run.values())
    with pytest.raises(ValueError, match=r"need one query vector per query id: 2 vectors, 1 ids"):
        section_run(index, q, ["a"])
