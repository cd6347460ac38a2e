"""labkit.prompting.icl: the committed classification set, contextual calibration (hand cases, properties and
its errors), the few-shot prompt and demonstration draws; SmolLM2's label scores (slow)."""
import json
import runpy
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.course.manifest import ROOT
from labkit.prompting.icl import (CONTENT_FREE, INSTRUCTION, LABELS, balanced_counts, bias_summary,
                                  contextual_calibrate, draw_demos, eval_queries, evaluate, few_shot_prompt,
                                  format_example, label_probs, label_shares, load_classification)

# ---- the data set -------------------------------------------------------------------------------------------------


def test_data_file_is_what_build_writes():
    build = runpy.run_path(str(ROOT / "data" / "classification" / "build.py"))["build"]
    expected = "".join(json.dumps(r) + "\n" for r in build())
    assert (ROOT / "data" / "classification" / "data.jsonl").read_text() == expected


def test_splits_are_balanced_and_disjoint():
    rows = load_classification()
    assert len(rows) == 256 and len({r["id"] for r in rows}) == 256
    assert {r["label"] for r in rows} == set(LABELS)
    counts = Counter((r["split"], r["label"]) for r in rows)
    for label in LABELS:
        assert (counts["train", label], counts["dev", label], counts["test", label]) == (32, 12, 20)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts)  # no sentence twice, so no split shares one with another
    assert [r["id"] for r in load_classification("test")] == [r["id"] for r in rows if r["split"] == "test"]


def test_load_classification_rejects_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        load_classification("validation")


# ---- contextual calibration ---------------------------------------------------------------------------------------


def test_calibration_hand_case():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.25, 0.25]])
    p_cf = torch.tensor([0.5, 0.25, 0.25])
    q = contextual_calibrate(p, p_cf)
    # row 1: [1.2, 1.2, 0.4] / 2.8; row 2 equals p_cf, so it becomes uniform
    torch.testing.assert_close(q[0], torch.tensor([1.2, 1.2, 0.4]) / 2.8)
    torch.testing.assert_close(q[1], torch.full((3,), 1 / 3))


def test_calibration_divides_by_the_content_free_probs_not_the_batch_mean():
    # the batch's own mean prediction is [0.55, 0.45]; p_cf is [0.8, 0.2]: different answers
    p = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    q = contextual_calibrate(p, torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(q[0], torch.tensor([0.7 / 0.8, 0.3 / 0.2]) / (0.7 / 0.8 + 0.3 / 0.2))
    assert q[0].argmax() == 1  # the prompt's lean towards label 0 was divided out


probs = st.integers(2, 5).flatmap(lambda L: st.tuples(
    st.lists(st.lists(st.floats(1e-3, 1.0), min_size=L, max_size=L), min_size=1, max_size=6),
    st.lists(st.floats(1e-3, 1.0), min_size=L, max_size=L)))


@settings(max_examples=200, deadline=None)
@given(probs)
def test_calibration_properties(case):
    rows, cf = case
    p = torch.tensor(rows, dtype=torch.float64)
    p = p / p.sum(1, keepdim=True)
    p_cf = torch.tensor(cf, dtype=torch.float64)
    q = contextual_calibrate(p, p_cf)
    torch.testing.assert_close(q.sum(1), torch.ones(len(rows), dtype=torch.float64))  # rows are distributions
    assert (q > 0).all()
    # a uniform p_cf changes nothing; scaling p_cf changes nothing (only its shape matters)
    uniform = torch.full_like(p_cf, 1 / len(cf))
    torch.testing.assert_close(contextual_calibrate(p, uniform), p)
    torch.testing.assert_close(contextual_calibrate(p, 3 * p_cf), q)
    # the content-free input itself comes out uniform
    torch.testing.assert_close(contextual_calibrate((p_cf / p_cf.sum())[None], p_cf)[0], uniform)
    # the ratio of two labels' calibrated probabilities is the raw ratio divided by the prior ratio
    torch.testing.assert_close(q[:, 0] / q[:, 1], (p[:, 0] / p_cf[0]) / (p[:, 1] / p_cf[1]))


def test_calibration_errors():
    p, p_cf = torch.full((2, 3), 1 / 3), torch.full((3,), 1 / 3)
    with pytest.raises(TypeError, match="label_probs must be a torch.Tensor"):
        contextual_calibrate([[0.5, 0.5]], p_cf)
    with pytest.raises(ValueError, match=r"label_probs must have 2 dimension\(s\) \(\[N, L\]\), got shape \(3,\)"):
        contextual_calibrate(p_cf, p_cf)
    with pytest.raises(ValueError, match=r"content_free_probs must have 1 dimension"):
        contextual_calibrate(p, p)
    with pytest.raises(TypeError, match="floating-point"):
        contextual_calibrate(torch.ones(2, 3, dtype=torch.long), p_cf)
    with pytest.raises(ValueError, match="has 3 labels per row but content_free_probs has 4"):
        contextual_calibrate(p, torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="finite and non-negative"):
        contextual_calibrate(torch.tensor([[0.5, -0.1, 0.6]]), p_cf)
    with pytest.raises(ValueError, match="finite and non-negative"):
        contextual_calibrate(p, torch.tensor([0.5, float("nan"), 0.5]))
    with pytest.raises(ValueError, match="zero: W = diag"):
        contextual_calibrate(p, torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="all zeros"):
        contextual_calibrate(torch.tensor([[0.0, 0.0, 0.0]]), p_cf)


# ---- prompts and demonstrations -----------------------------------------------------------------------------------


def test_few_shot_prompt_layout():
    demos = [{"text": "A goal.", "label": "sports"}, {"text": "A cake.", "label": "food"}]
    prompt = few_shot_prompt(demos, "A song.")
    assert prompt == (INSTRUCTION + "Sentence: A goal.\nTopic: sports\n\nSentence: A cake.\nTopic: food\n\n"
                      "Sentence: A song.\nTopic:")
    assert few_shot_prompt([], "x") == INSTRUCTION + format_example("x")
    with pytest.raises(TypeError, match="text must be a string"):
        format_example(None)


@settings(max_examples=50, deadline=None)
@given(k=st.integers(0, 16), seed=st.integers(0, 10**6))
def test_balanced_draws(k, seed):
    counts = balanced_counts(k, seed)
    assert sum(counts.values()) == k and max(counts.values()) - min(counts.values()) <= 1
    pool = load_classification("train")
    demos = draw_demos(pool, counts, seed)
    assert Counter(d["label"] for d in demos) == Counter({lab: c for lab, c in counts.items() if c})
    assert len({d["id"] for d in demos}) == k and all(d["split"] == "train" for d in demos)
    assert draw_demos(pool, counts, seed) == demos  # seeded


def test_draw_errors():
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        balanced_counts(-1, 0)
    with pytest.raises(ValueError, match="asked for 40 'food' demonstrations; the pool has 32"):
        draw_demos(load_classification("train"), {"food": 40}, 0)


def test_content_free_inputs_are_the_papers():
    assert CONTENT_FREE == ("N/A", "", "[MASK]")


def test_eval_queries_are_balanced_and_from_test():
    q = eval_queries(10)
    assert len(q) == 40 and Counter(r["label"] for r in q) == Counter({label: 10 for label in LABELS})
    assert all(r["split"] == "test" for r in q)
    assert eval_queries(3) == [r for r in q if sum(s["label"] == r["label"] for s in q[:q.index(r) + 1]) <= 3]
    with pytest.raises(ValueError, match="per_label must be an int in 1..20"):
        eval_queries(21)


def test_label_shares_and_bias_summary():
    assert label_shares([0, 0, 1, 3]) == [0.5, 0.25, 0.0, 0.25]
    with pytest.raises(ValueError, match="preds is empty"):
        label_shares([])
    # two labels; predictions follow the majority label fully, and the last label half the time
    record = {"labels": ["a", "b"],
              "majority": [{"majority": "a", "preds": [0, 0], "calibrated_preds": [0, 1]},
                           {"majority": "b", "preds": [1, 1], "calibrated_preds": [0, 1]}],
              "recency": [{"last": "a", "preds": [0, 1], "calibrated_preds": [0, 1]},
                          {"last": "b", "preds": [0, 1], "calibrated_preds": [0, 1]}]}
    out = bias_summary(record)
    assert out["majority_preds"] == {"when_favoured": 1.0, "otherwise": 0.0}
    assert out["majority_calibrated_preds"] == {"when_favoured": 0.5, "otherwise": 0.5}
    assert out["recency_preds"] == {"when_favoured": 0.5, "otherwise": 0.5}


class _FakeLLM:
    """Scores labels by a fixed lean plus one point for the right topic word in the query (no model)."""
    name = "fake"

    def logprobs(self, prompt, continuations):
        query = prompt.rsplit("Sentence: ", 1)[1]
        return [(1.5 if c == " sports" else 0.0) + (1.0 if c.strip() in query else 0.0) for c in continuations]


def test_evaluate_calibration_removes_a_constant_lean():
    queries = [{"text": f"about {label}", "label": label} for label in LABELS]
    r = evaluate(_FakeLLM(), [], queries)
    assert r["accuracy"] == 0.25  # the lean towards "sports" outweighs the evidence
    assert r["calibrated_accuracy"] == 1.0  # the content-free inputs measure the lean; dividing it out fixes all
    torch.testing.assert_close(r["probs"].sum(1), torch.ones(4, dtype=torch.float64))


@pytest.mark.slow
def test_smollm2_label_probs_are_its_logprobs_renormalised():
    from labkit.llm.local import LocalLLM

    llm = LocalLLM.smollm2()
    prompt = few_shot_prompt([], "The orchestra tuned up before the symphony began.")
    p = label_probs(llm, prompt)
    raw = torch.tensor(llm.logprobs(prompt, [" " + label for label in LABELS]), dtype=torch.float64)
    # the second call runs from the prefix cache the first left: equal up to float32 rounding
    torch.testing.assert_close(p, raw.exp() / raw.exp().sum(), rtol=0, atol=1e-5)
    assert float(p.sum()) == pytest.approx(1.0)


# ---- the saved run 10-icl -------------------------------------------------------------------------------------------


def test_saved_record_matches_the_data_and_the_draws():
    from labkit.course import saved
    from labkit.prompting.icl import sweep_demos

    rec = saved.load("10-icl").record
    queries = eval_queries(len(rec["query_ids"]) // len(LABELS))
    assert rec["query_ids"] == [q["id"] for q in queries]
    assert rec["gold"] == [LABELS.index(q["label"]) for q in queries]
    pool = load_classification("train")
    for c in rec["sweep"]:
        assert c["demo_ids"] == [d["id"] for d in sweep_demos(pool, c["k"], c["draw"], rec["seed"])]
        assert c["accuracy"] == pytest.approx(sum(p == g for p, g in zip(c["preds"], rec["gold"])) / len(rec["gold"]))
        assert c["calibrated_accuracy"] == pytest.approx(
            sum(p == g for p, g in zip(c["calibrated_preds"], rec["gold"])) / len(rec["gold"]))
    for c in rec["majority"]:
        assert Counter(c["demo_labels"])[c["majority"]] == 5 and len(c["demo_labels"]) == 8
    for c in rec["recency"]:
        assert c["demo_labels"][-1] == c["last"] and sorted(c["demo_labels"]) == sorted(LABELS)


@pytest.mark.slow
def test_saved_record_slice_reproduces():
    from labkit.course import saved
    from labkit.llm.local import LocalLLM
    from labkit.prompting.icl import sweep_demos

    rec = saved.load("10-icl").record
    sl = rec["slice"]
    demos = sweep_demos(load_classification("train"), sl["k"], sl["draw"], rec["seed"])
    text = {r["id"]: r["text"] for r in load_classification("test")}
    llm = LocalLLM.smollm2()
    live = torch.stack([label_probs(llm, few_shot_prompt(demos, text[i])) for i in sl["query_ids"][:3]])
    torch.testing.assert_close(live, torch.tensor(sl["probs"][:3], dtype=torch.float64), rtol=0, atol=1e-3)
