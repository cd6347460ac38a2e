"""labkit.prompting.optimize: UCB1 against uniform allocation on a synthetic bandit, the edit grammar, the
minibatch evaluator, and the OPRO/APO loops on a fake model whose accuracy depends on the prompt (no SmolLM2
except the one slow test)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.llm.base import LLM, Completion
from labkit.prompting.icl import LABELS
from labkit.prompting.optimize import (EDITS, SYNTHETIC_MEANS, TOPIC_TASK, BanditRun, Evaluator, ModelProposer,
                                       Prompt, apo, bernoulli_bandit, initial_prompt, label_section,
                                       minibatch_c, neighbours, opro, paired_delta, regret, render, select,
                                       synthetic_study, ucb1, ucb_index, uniform, usable_instruction)

# ---- the bandit --------------------------------------------------------------------------------------------------


def test_ucb_finds_the_best_arm_more_often_than_uniform_allocation():
    # 200 fixed seeds: a deterministic count, so the margin cannot flake
    study = synthetic_study(SYNTHETIC_MEANS, budget=40, minibatch=8, seeds=200)
    assert study["ucb"]["found_best"] >= study["uniform"]["found_best"] + 20, study
    # and it spends its pulls where they pay: less regret at the end, most pulls on the best arm
    assert study["ucb"]["mean_regret"][-1] < 0.8 * study["uniform"]["mean_regret"][-1]
    best = max(range(8), key=lambda a: SYNTHETIC_MEANS[a])
    assert max(range(8), key=lambda a: study["ucb"]["mean_pulls"][a]) == best
    assert study["uniform"]["mean_pulls"] == [5.0] * 8


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(0, 20), st.integers(0, 10**6))
def test_ucb_explores_every_arm_in_the_first_round(n_arms, extra, seed):
    means = [((seed >> a) % 7) / 7 for a in range(n_arms)]
    run = ucb1(n_arms, bernoulli_bandit(means, 4, seed), n_arms + extra)
    assert run.choices[:n_arms] == list(range(n_arms))
    assert sum(run.pulls) == n_arms + extra and min(run.pulls) >= 1


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(0, 30))
def test_uniform_allocation_is_balanced(n_arms, extra):
    run = uniform(n_arms, lambda a, j: 0.5, n_arms + extra)
    assert max(run.pulls) - min(run.pulls) <= 1


def test_ucb_index_is_aueurs_bound_and_c_zero_is_greedy():
    assert ucb_index(0.5, 4, 10, 1.0) == pytest.approx(0.5 + math.sqrt(2 * math.log(10) / 4))
    assert minibatch_c(16) == 0.25
    # c = 0: after the first round it always pulls the arm with the best mean so far (arm 1 here)
    run = ucb1(3, lambda a, j: [0.2, 0.9, 0.5][a], 10, c=0)
    assert run.choices == [0, 1, 2] + [1] * 7
    # a large c keeps exploring: the same deterministic rewards, pulls spread over all arms
    assert min(ucb1(3, lambda a, j: [0.2, 0.9, 0.5][a], 30, c=10).pulls) > 3


def test_bandit_run_tallies_and_regret():
    run = BanditRun(3, choices=[0, 1, 2, 1, 1], rewards=[0.0, 1.0, 0.5, 0.5, 1.0])
    assert run.pulls == [1, 3, 1]
    assert run.means == pytest.approx([0.0, 2.5 / 3, 0.5])
    assert run.ranking() == [1, 2, 0] and run.best == 1
    assert regret(run, [0.1, 0.9, 0.5]) == pytest.approx([0.8, 0.8, 1.2, 1.2, 1.2])
    # arms 1 and 2 share pull 0 (the same minibatch): 1.0 - 0.5
    assert paired_delta(run, 1, 2) == pytest.approx(0.5)
    assert paired_delta(BanditRun(2, [0], [1.0]), 1, 0) is None


def test_the_bernoulli_bandit_is_a_pure_function_of_seed_arm_and_pull():
    a, b = bernoulli_bandit([0.3, 0.7], 8, seed=5), bernoulli_bandit([0.3, 0.7], 8, seed=5)
    assert [a(1, j) for j in range(5)] == [b(1, j) for j in range(5)]
    assert all(r * 8 == int(r * 8) for r in (a(0, j) for j in range(20)))  # accuracies on 8 examples


def test_bandit_errors():
    with pytest.raises(ValueError, match="budget must be an int >= n_arms"):
        ucb1(3, lambda a, j: 0.5, 2)
    with pytest.raises(ValueError, match="n_arms must be an int >= 1"):
        uniform(0, lambda a, j: 0.5, 4)
    with pytest.raises(ValueError, match="reward must lie in"):
        ucb1(2, lambda a, j: 1.5, 4)
    with pytest.raises(ValueError, match="exploration constant"):
        ucb1(2, lambda a, j: 0.5, 4, c=-1)
    with pytest.raises(ValueError, match="probabilities in"):
        bernoulli_bandit([0.5, 1.2], 4, 0)
    with pytest.raises(ValueError, match="minibatch must be an int"):
        minibatch_c(0)


# ---- prompts and the edit grammar ----------------------------------------------------------------------------------


def test_prompt_sections_and_their_errors():
    p = initial_prompt().with_section("constraint", "One label.").with_section("role", "You sort texts.")
    assert [k for k, _ in p.sections] == ["role", "task", "constraint"]
    assert p.text == "You sort texts.\nClassify the topic of each sentence.\nOne label."
    with pytest.raises(ValueError, match="needs a 'task' section"):
        Prompt((("role", "x"),))
    with pytest.raises(ValueError, match="distinct kinds"):
        Prompt((("task", "x"), ("tone", "y")))
    with pytest.raises(ValueError, match="must come in the order"):
        Prompt((("task", "x"), ("role", "y")))
    with pytest.raises(ValueError, match="shots must be an int"):
        Prompt((("task", "x"),), shots=-1)
    with pytest.raises(ValueError, match="style must be"):
        label_section(LABELS, "table")


def test_the_grammar_from_the_initial_prompt():
    names = [name for name, _ in neighbours(initial_prompt(), TOPIC_TASK)]
    assert names == ["add role", "add label list", "add definitions", "add output constraint", "few-shot"]
    p = dict(neighbours(initial_prompt(), TOPIC_TASK))["add label list"]
    assert p.get("labels") == "Labels: sports, food, science, music."
    q = EDITS["reverse label order"](EDITS["restyle label list"](p, TOPIC_TASK), TOPIC_TASK)
    assert q.get("labels") == "Labels:\n- music\n- science\n- food\n- sports"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 100), max_size=12))
def test_every_edit_sequence_gives_a_valid_prompt_and_edits_undo(path):
    p = initial_prompt()
    for step in path:
        options = neighbours(p, TOPIC_TASK)
        assert options, "every prompt has a neighbour"
        name, q = options[step % len(options)]
        assert q != p
        # every edit has an inverse one step away (add/remove, restyle twice, reverse twice, zero/few-shot);
        # only "remove label list" forgets the list's style and order: adding it back gives the plain list
        back = [r for _, r in neighbours(q, TOPIC_TASK)]
        if name == "remove label list":
            assert q.with_section("labels", label_section(LABELS)) in back
        else:
            assert p in back, name
        p = q
    assert p.get("task") == initial_prompt().get("task")


def test_usable_instruction():
    assert usable_instruction(' "Decide which topic the sentence is about."\nmore') == \
        "Decide which topic the sentence is about."
    assert usable_instruction("Instruction: Name the topic of the sentence.") == "Name the topic of the sentence."
    assert usable_instruction(" ") is None
    assert usable_instruction("Sports.") is None  # too short to be an instruction
    assert usable_instruction("Text: the match\nLabel: sports") is None  # the query format, not an instruction
    assert usable_instruction("Sentence: the band played all night long") is None
    assert usable_instruction("1 2 3 4 5 6 7 8 == ++ ** !!") is None
    # SmolLM2's proposals in the saved run: fluent, but no instruction for this task
    assert usable_instruction("The best way to learn is to enjoy it, not to control it.") is None
    assert usable_instruction("Sort these news lines by category.") == "Sort these news lines by category."


# ---- the evaluator and the loops, on a fake model ----------------------------------------------------------------


class FakeLLM(LLM):
    """Right on every sentence whose topic word appears in the query's sentence; otherwise leans to "sports",
    unless the prompt defines the labels (then it leans to the right one) -- so definitions help, measurably.
    generate() returns fixed text: `replies` in turn (a 135M-like proposer when they are junk)."""
    name = "fake"

    def __init__(self, replies=("Sports.",)):
        super().__init__()
        self.replies = list(replies)

    def _logprobs(self, prompt, continuations):
        sentence = prompt.rsplit("Sentence: ", 1)[1]
        gold = sentence.split()[1]  # the fake sentences are "about <label> #i"
        defined = "Definitions:" in prompt
        return [(2.0 if c.strip() == gold and (defined or "#0" in sentence or "#1" in sentence) else 0.0)
                + (1.0 if c == " sports" else 0.0) for c in continuations]

    def _generate(self, prompt, *, n, **settings):
        out = []
        for _ in range(n):
            text = self.replies[(self.usage.calls - 1 + len(out)) % len(self.replies)]  # calls counts this one
            out.append(Completion(text, len(text.split()), "stop"))
        return out


ROWS = [{"text": f"about {label} #{i}", "label": label} for i in range(6) for label in LABELS]


def test_render_and_the_evaluator_memo():
    demos = ROWS[:4]
    p = initial_prompt()
    assert render(p, demos[:1], "x") == ("Classify the topic of each sentence.\n\n"
                                         "Sentence: about sports #0\nAnswer: sports\n\nSentence: x\nAnswer:")
    llm = FakeLLM()
    ev = Evaluator(llm, ROWS, demos)
    assert ev.accuracy(p, range(len(ROWS))) == 0.5  # the 8 sentences #0, #1, and the other 4 about sports
    calls = llm.usage.calls
    ev.accuracy(p, range(len(ROWS)))
    assert llm.usage.calls == calls  # remembered: no new model calls
    assert ev.accuracy(p.with_section("definitions", "Definitions: x"), range(24)) == 1.0
    assert ev.minibatch(3, 5, seed=1) == ev.minibatch(3, 5, seed=1) != ev.minibatch(4, 5, seed=1)
    with pytest.raises(ValueError, match="list of"):
        Evaluator(llm, [{"text": "x", "label": "weather"}])
    with pytest.raises(ValueError, match="worked examples"):
        ev.predict(Prompt(p.sections, shots=5), 0)
    with pytest.raises(ValueError, match="minibatch size"):
        ev.minibatch(0, 25, 0)


def test_select_compares_arms_on_the_same_minibatches():
    ev = Evaluator(FakeLLM(), ROWS, ROWS[:4])
    arms = [initial_prompt(), initial_prompt().with_section("definitions", "Definitions: x")]
    run = select(ev, arms, 6, minibatch=6, seed=0)
    assert run.best == 1 and run.means[1] == 1.0


def test_opro_falls_back_to_the_grammar_when_the_model_writes_junk_and_finds_the_better_prompt():
    ev = Evaluator(FakeLLM(), ROWS, ROWS[:4])
    proposer = ModelProposer(FakeLLM(("Sports.", "")), TOPIC_TASK)
    run = opro(ev, initial_prompt(), proposer, TOPIC_TASK, rounds=2, k=5, budget=12, minibatch=6)
    assert proposer.log and not any(e["usable"] for e in proposer.log)
    assert {r["origin"] for r in run.rows} - {"initial", "kept"} <= {f"grammar: {n}" for n in EDITS}
    assert run.best.get("definitions") is not None  # the one edit the fake model rewards


def test_opro_uses_the_models_usable_proposals():
    ev = Evaluator(FakeLLM(), ROWS, ROWS[:4])
    line = "Decide which of the four topics the sentence is about."
    proposer = ModelProposer(FakeLLM((line, "junk")), TOPIC_TASK)
    run = opro(ev, initial_prompt(), proposer, TOPIC_TASK, rounds=1, k=2, budget=4, minibatch=6)
    llm_rows = [r for r in run.rows if r["origin"] == "llm"]
    assert [r["text"] for r in llm_rows] == [line]
    assert sum(e["usable"] for e in proposer.log) == 1 and len(proposer.log) == 2


def test_apo_critiques_errors_and_keeps_a_beam():
    critic = FakeLLM(("The prompt does not say what the topics mean.", "Sports."))
    ev = Evaluator(FakeLLM(), ROWS, ROWS[:4])
    run = apo(ev, initial_prompt(), ModelProposer(critic, TOPIC_TASK), critic, rounds=2, beam=2, expand=3,
              budget=12, minibatch=8)
    assert run.critiques and run.critiques[0].startswith("The prompt")
    assert run.best.get("definitions") is not None
    assert {r["round"] for r in run.rows} == {0, 1}


@pytest.mark.slow
def test_smollm2_evaluator_equals_direct_label_scoring():
    from labkit.llm.local import LocalLLM
    from labkit.prompting.icl import label_probs, load_classification

    llm = LocalLLM.smollm2()
    rows = load_classification("test")[:3]
    ev = Evaluator(llm, rows)
    p = initial_prompt()
    for i, r in enumerate(rows):
        assert ev.predict(p, i) == LABELS[int(label_probs(llm, render(p, [], r["text"])).argmax())]


def test_the_loop_runs_through_the_http_backend_on_a_loopback_server():
    """A stdlib OpenAI-compatible server on 127.0.0.1 plays a bigger model: its chat answers are a usable
    instruction (the proposer), its completions name the topic word of the query (a scorer without
    log-probabilities, so the evaluator reads the label from a short greedy answer)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from labkit.llm.http import HttpLLM

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.endswith("/chat/completions"):
                choice = {"message": {"role": "assistant", "content": "Name the topic of the sentence."},
                          "finish_reason": "stop", "index": 0}
            else:
                query = body["prompt"].rsplit("Sentence: ", 1)[1]
                choice = {"text": " " + query.split()[1], "finish_reason": "stop", "index": 0}
            raw = json.dumps({"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        scorer, optimizer = HttpLLM(url, "big"), HttpLLM(url, "big")
        assert not scorer.supports_logprobs
        ev = Evaluator(scorer, ROWS[:8], ROWS[:4])
        proposer = ModelProposer(optimizer, TOPIC_TASK)
        run = opro(ev, initial_prompt(), proposer, TOPIC_TASK, rounds=1, k=2, budget=4, minibatch=4)
        origins = [r["origin"] for r in run.rows]  # the server said the same twice: the grammar fills the slot
        assert origins[:2] == ["initial", "llm"] and origins[2].startswith("grammar: ") and len(origins) == 3
        assert run.rows[1]["text"] == "Name the topic of the sentence." and run.rows[0]["mean"] == 1.0
        assert proposer.log[0]["usable"] and not proposer.log[1]["usable"]  # a repeat is not a new candidate
        # one scorer call per (prompt, sentence) scored, none repeated: at most 3 prompts x 8 sentences
        assert optimizer.usage.calls >= 1 and 4 <= scorer.usage.calls <= 24 and scorer.usage.calls == len(ev._memo)
    finally:
        server.shutdown()
