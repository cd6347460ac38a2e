"""The chapter-12 evaluation set: well-formed, answerable from its gold sections, split as its README says."""
import collections
import json
import re
import warnings

import pytest

from labkit.rag import evalset
from labkit.rag.documents import load_documents
from labkit.rag.evalset import Question, load_questions, qrels, stratified_split
from labkit.rag.metrics import normalize_answer

QUESTIONS = load_questions()


@pytest.fixture(scope="module")
def sections():
    with warnings.catch_warnings():  # a Python whose pydoc topics differ from the pinned ones warns; the checks
        warnings.simplefilter("ignore")  # below then tell exactly which questions no longer hold
        return {s.id: s for d in load_documents() for s in d.sections}


def _copy_key(text: str) -> str:
    """A section's text with whitespace and reST underlines dropped: two pydoc topics that include the same
    section differ only there (one underlines with '*', the other with '=')."""
    return " ".join(w for w in text.split() if not re.fullmatch(r"([*=\-^~\"#+])\1{2,}", w))


def test_sizes_and_fields():
    assert len(QUESTIONS) >= 120
    by_source = collections.Counter(q.source for q in QUESTIONS)
    assert by_source["pydoc"] >= 85 and by_source["course"] >= 25
    assert all(isinstance(q, Question) and q.question.strip() and q.answers and q.gold for q in QUESTIONS)


def test_ids_unique_and_in_file_order():
    ids = [q.id for q in QUESTIONS]
    assert len(set(ids)) == len(ids)
    assert ids == [f"q{i:03d}" for i in range(1, len(ids) + 1)]


def test_every_gold_id_exists_in_the_corpus(sections):
    missing = [(q.id, g) for q in QUESTIONS for g in q.gold if g not in sections]
    assert not missing
    assert all(len(set(q.gold)) == len(q.gold) for q in QUESTIONS)
    # and the source field says which half of the corpus the gold comes from
    assert all(all(g.startswith(q.source + "/") for g in q.gold) for q in QUESTIONS)


def test_every_copy_of_a_gold_section_is_gold(sections):
    copies = collections.defaultdict(set)
    for s in sections.values():
        copies[_copy_key(s.text)].add(s.id)
    incomplete = [(q.id, sorted(copies[_copy_key(sections[g].text)] - set(q.gold)))
                  for q in QUESTIONS for g in q.gold if copies[_copy_key(sections[g].text)] - set(q.gold)]
    assert not incomplete
    assert sum(len(q.gold) > 1 for q in QUESTIONS) >= 10  # the copies are common enough to matter


def test_every_answer_occurs_in_a_gold_section(sections):
    def occurs(answer, q):  # whole words: "type" must not match inside "prototype"
        a = normalize_answer(answer)
        return any(f" {a} " in f" {normalize_answer(sections[g].text)} " for g in q.gold)

    missing = [(q.id, a) for q in QUESTIONS for a in q.answers if not occurs(a, q)]
    assert not missing


def test_answers_are_short():
    lengths = [len(normalize_answer(a).split()) for q in QUESTIONS for a in q.answers]
    assert min(lengths) >= 1 and max(lengths) <= 6


def test_questions_paraphrase_their_sections(sections):
    """No question copies a run of 6 words from its gold sections (so retrieval is not string matching)."""
    def grams(text, n=6):
        w = normalize_answer(text).split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    copied = [q.id for q in QUESTIONS if grams(q.question) & set().union(*(grams(sections[g].text) for g in q.gold))]
    assert not copied


def test_split_is_half_and_half_within_each_source():
    counts = collections.Counter((q.source, q.split) for q in QUESTIONS)
    for source in evalset.SOURCES:
        n = counts[source, "dev"] + counts[source, "test"]
        assert counts[source, "dev"] == n // 2 and counts[source, "test"] == n - n // 2


def test_split_is_the_seeded_stratified_shuffle():
    expected = stratified_split([(q.id, q.source) for q in QUESTIONS], seed=evalset.SPLIT_SEED)
    assert {q.id: q.split for q in QUESTIONS} == expected
    # another seed gives another split (the stored one is not an accident of the ordering)
    assert stratified_split([(q.id, q.source) for q in QUESTIONS], seed=evalset.SPLIT_SEED + 1) != expected


def test_stratified_split_on_a_small_case():
    items = [(f"a{i}", "x") for i in range(5)] + [(f"b{i}", "y") for i in range(4)]
    split = stratified_split(items, seed=0)
    assert split == stratified_split(items, seed=0)
    assert sorted(split) == sorted(i for i, _ in items)
    assert collections.Counter(split[f"a{i}"] for i in range(5)) == {"dev": 2, "test": 3}
    assert collections.Counter(split[f"b{i}"] for i in range(4)) == {"dev": 2, "test": 2}


def test_load_questions_by_split():
    dev, test = load_questions("dev"), load_questions("test")
    assert {q.id for q in dev} | {q.id for q in test} == {q.id for q in QUESTIONS}
    assert not {q.id for q in dev} & {q.id for q in test}
    assert [q.id for q in dev] == [q.id for q in QUESTIONS if q.split == "dev"]  # file order kept


def test_qrels():
    qs = QUESTIONS[:3]
    assert qrels(qs) == {q.id: {g: 1 for g in q.gold} for q in qs}
    assert qrels([]) == {}


@pytest.mark.parametrize("split", ["train", "Test", "", 0])
def test_bad_split_is_refused(split):
    with pytest.raises(ValueError, match="split must be one of"):
        load_questions(split)


def test_qrels_refuses_what_is_not_questions():
    with pytest.raises(TypeError, match="sequence of Question"):
        qrels(QUESTIONS[0])
    with pytest.raises(TypeError, match="sequence of Question"):
        qrels([{"id": "q001"}])


def test_malformed_lines_are_refused(tmp_path):
    good = {"id": "q1", "question": "?", "answers": ["a"], "gold": ["pydoc/if@0"], "split": "dev", "source": "pydoc"}
    for bad, message in [({**good, "split": "train"}, "split must be one of"),
                         ({**good, "extra": 1}, "exactly the keys"),
                         ({**good, "answers": []}, "at least one answer")]:
        path = tmp_path / "q.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=message):
            load_questions(path=path)
    path.write_text(json.dumps(good) + "\n\n")
    assert load_questions(path=path) == [Question("q1", "?", ("a",), ("pydoc/if@0",), "dev", "pydoc")]
