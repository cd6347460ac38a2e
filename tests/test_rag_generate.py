"""Grounded generation (labkit.rag.generate): prompts, the citation parser, scoring, and the metrics built on them."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.llm.base import LLM, Completion
from labkit.rag import generate as G


class Scripted(LLM):
    """A backend that replies with fixed text and scores continuations from a table: enough to test the
    plumbing around the model (the live model is checked by the notebook's slice against the saved run)."""
    name = "scripted"

    def __init__(self, reply: str, scores: dict[str, float] | None = None):
        super().__init__()
        self.reply, self.scores, self.seen = reply, scores or {}, []

    def _generate(self, prompt, **settings):
        self.seen.append(prompt)
        return [Completion(self.reply, 3, "stop")]

    def _logprobs(self, prompt, continuations):
        return [self.scores.get(c, -10.0) for c in continuations]


# ---------------------------------------------------------------- prompts

def test_grounded_prompt_numbers_passages_in_order_and_ends_with_the_question():
    msgs = G.build_prompt("Which keyword defines a function?", ["first  passage\n  here", "second one"])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == G.SYSTEM and "[" in G.SYSTEM
    user = msgs[1]["content"]
    assert user.index("[1] first passage here") < user.index("[2] second one") < user.index("Question:")
    assert user.endswith("Question: Which keyword defines a function?")


def test_closed_book_prompt_has_no_passages_and_asks_no_citation():
    msgs = G.build_prompt("  What is 2?  ")
    assert msgs == [{"role": "system", "content": G.CLOSED_BOOK_SYSTEM},
                    {"role": "user", "content": "Question: What is 2?"}]
    assert "[" not in G.CLOSED_BOOK_SYSTEM


def test_format_passages_collapses_whitespace():
    assert G.format_passages(["a\n\n   b\tc", "d"]) == "[1] a b c\n\n[2] d"


@pytest.mark.parametrize("question, passages, error, match", [
    ("", ["x"], ValueError, "question is empty"),
    ("   ", ["x"], ValueError, "question is empty"),
    (3, ["x"], TypeError, "question must be a str"),
    ("q", "one passage", TypeError, "passages must be a list of str"),
    ("q", ["ok", 5], TypeError, "passage 2 must be a str"),
    ("q", ["ok", "  \n"], ValueError, "passage 2 is empty"),
])
def test_build_prompt_refuses_bad_input(question, passages, error, match):
    with pytest.raises(error, match=match):
        G.build_prompt(question, passages)


# ---------------------------------------------------------------- the citation parser

@pytest.mark.parametrize("text, n, answer, cites, status, malformed", [
    ("__enter__ [2]", 3, "__enter__", (2,), "cited", 0),
    ("def [1, 3].", 3, "def", (1, 3), "cited", 0),
    ("def [3][1]", 3, "def", (3, 1), "cited", 0),
    ("break [Passage 2]", 3, "break", (2,), "cited", 0),
    ("break [2] and again [2]", 3, "break and again", (2,), "cited", 0),
    ("break [1; 2]", 2, "break", (1, 2), "cited", 0),
    ("break", 3, "break", (), "none", 0),
    ("break [7]", 3, "break", (), "malformed", 1),          # out of range: invented passage
    ("break [0]", 3, "break", (), "malformed", 1),          # citations count from 1
    ("break [2, 9]", 3, "break", (2,), "cited", 1),          # the valid part counts, the rest is malformed
    ("break [2", 3, "break", (), "malformed", 1),           # never closed
    ("break []", 3, "break", (), "malformed", 1),
    ("break [see 2 above]", 3, "break", (), "malformed", 1),
    ("break [99999999999999999999]", 3, "break", (), "malformed", 1),   # no giant int is ever built
    ("see [the docs](https://x.org/2)", 3, "see (the docs)(https://x.org/2)", (), "none", 0),
    ("[1]", 0, "", (), "malformed", 1),                      # closed-book: no passage can be cited
])
def test_parse_citations(text, n, answer, cites, status, malformed):
    p = G.parse_citations(text, n)
    assert (p.answer, p.citations, p.status, p.malformed) == (answer, cites, status, malformed)


def test_parse_citations_never_evaluates_the_reply(tmp_path):
    marker = tmp_path / "ran"
    text = f"__import__('pathlib').Path({str(marker)!r}).touch() [1]"
    p = G.parse_citations(text, 1)
    assert p.citations == (1,) and not marker.exists()


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), max_size=40),
       st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_parse_citations_reads_back_appended_citations(answer, cites):
    p = G.parse_citations(answer + " " + "".join(f"[{c}]" for c in cites), 5)
    assert p.citations == tuple(dict.fromkeys(cites)) and p.status == "cited"
    assert p.answer == " ".join(answer.split()).strip(" .,;:")


@pytest.mark.parametrize("args, error, match", [
    ((None, 3), TypeError, "text must be a str"),
    (("x", -1), ValueError, "n_passages must be an int >= 0"),
    (("x", True), ValueError, "n_passages must be an int >= 0"),
])
def test_parse_citations_refuses_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        G.parse_citations(*args)


# ---------------------------------------------------------------- scoring

def test_answer_in_matches_whole_normalised_words():
    assert G.answer_in("The `def` keyword.", ["def"]) == 1.0
    assert G.answer_in("Use define here", ["def"]) == 0.0           # a word, not a substring of one
    assert G.answer_in("It is evaluated only once, in place.", ["only evaluated once", "once"]) == 1.0
    assert G.answer_in("__aenter__ is awaited", "__aenter__") == 1.0
    with pytest.raises(TypeError, match="golds must be"):
        G.answer_in("x", [])


def test_score_uses_the_answer_without_its_citation():
    a = G.score("break [2]", ["break"], 3)
    assert (a.exact_match, a.f1, a.contains, a.parsed.citations) == (1.0, 1.0, 1.0, (2,))
    b = G.score("The break statement.", ["break"], 3)
    assert b.exact_match == 0.0 and b.contains == 1.0 and b.f1 == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_answer_goes_through_the_llm_interface_and_scores_a_citation():
    llm = Scripted("break [7]", {"break [1]": -3.0, "break [2]": -1.0, "break [3]": -2.0})
    a = G.answer(llm, "Which statement leaves a loop?", ["x", "the break statement", "z"], ["break"])
    assert a.parsed.status == "malformed" and a.parsed.citations == () and a.contains == 1.0
    assert a.scored_citation == 2
    assert llm.seen[0][-1].content.endswith("Question: Which statement leaves a loop?")
    closed = G.answer(llm, "Which statement leaves a loop?", [], ["break"])
    assert closed.scored_citation is None and len(llm.seen[1]) == 2


def test_scored_citation_breaks_ties_towards_the_first_passage():
    llm = Scripted("x", {"a [1]": -1.0, "a [2]": -1.0})
    assert G.scored_citation(llm, G.build_prompt("q", ["p", "r"]), "a", 2) == 1
    with pytest.raises(ValueError, match="n_passages must be an int >= 1"):
        G.scored_citation(llm, G.build_prompt("q", ["p"]), "a", 0)


def test_citation_precision_counts_by_hand():
    passages = [["the break statement", "nothing"], ["def makes functions", "lambda too"]]
    golds = [["break"], ["def"]]
    answers = [G.score("break [1][2]", golds[0], 2, scored_citation=1),
               G.score("def [9]", golds[1], 2, scored_citation=2)]
    out = G.citation_precision(answers, passages, golds)
    assert out == {"answers": 2, "with_citation": 1, "malformed": 1, "no_citation": 0, "citations": 2,
                   "correct_citations": 1, "precision": 0.5, "scored": 2, "scored_correct": 1,
                   "scored_precision": 0.5}
    with pytest.raises(ValueError, match="same length"):
        G.citation_precision(answers, passages[:1], golds)
    assert G.citation_precision([], [], [])["precision"] is None


# ---------------------------------------------------------------- the saved run

def test_saved_run_rescores_and_one_answer_reproduces_live():
    """Every recorded reply re-parses and re-scores to the recorded numbers; one greedy closed-book answer,
    re-run on SmolLM2 now, equals the recorded text (the notebook re-runs more)."""
    from labkit.course import saved
    from labkit.llm import connect
    from labkit.rag.evalset import load_questions

    rec = saved.load("12-generation").record
    for r in rec["questions"]:
        for name, n in (("closed", 0), ("top", rec["k"]), ("gold", 1)):
            a = r[name]
            if a is not None:
                s = G.score(a["text"], r["answers"], n, a["finish"], a["scored_citation"])
                assert (s.parsed.answer, s.parsed.status, s.exact_match, s.f1, s.contains) == \
                    (a["answer"], a["status"], a["em"], a["f1"], a["contains"]), (r["id"], name)
    summary = G.summarize(rec)
    assert summary["conditions"]["top"]["n"] == len(rec["questions"])
    assert set(summary["lost_middle"]["accuracy"]) == set(rec["lost_middle"]["positions"])
    q = {x.id: x for x in load_questions()}[rec["questions"][0]["id"]]
    live = G.answer(connect(), q.question, (), q.answers)
    assert live.text == rec["questions"][0]["closed"]["text"]
