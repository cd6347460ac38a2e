"""labkit.finetune.dpo: the DPO loss against the paper's formula, masked sequence log-probs against a per-token
loop, the preference records and their committed file, training with LoRA's reference, and the clear errors."""
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.course.manifest import ROOT
from labkit.finetune import dpo
from labkit.finetune.lora import adapters_disabled, add_lora
from tiny_llama import SMALL, random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
DATA = ROOT / "data" / "preferences"


def paper_loss(pc, pr, rc, rr, beta):
    """Rafailov et al. 2023, eq. 7, written out in float64 from the sigmoid's definition."""
    losses = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        h = beta * ((a - c) - (b - d))
        losses.append(-math.log(1.0 / (1.0 + math.exp(-h))))
    return sum(losses) / len(losses)


def logps(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    return [-30 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_matches_the_papers_formula(beta):
    pc, pr, rc, rr = logps(0)
    loss, chosen, rejected = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    assert loss.item() == pytest.approx(paper_loss(pc, pr, rc, rr, beta), rel=1e-12)
    torch.testing.assert_close(chosen, beta * (pc - rc))
    torch.testing.assert_close(rejected, beta * (pr - rr))


@given(st.lists(st.floats(-50, 0), min_size=4, max_size=4), st.floats(0.01, 5))
@settings(max_examples=50, deadline=None)
def test_dpo_loss_property(values, beta):
    pc, pr, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in values)
    loss, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    assert loss.item() == pytest.approx(paper_loss(pc, pr, rc, rr, beta), rel=1e-9, abs=1e-12)


def test_policy_equal_to_reference_gives_log_2_and_zero_rewards():
    pc, pr, _, _ = logps(1)
    loss, chosen, rejected = dpo.dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert torch.equal(chosen, torch.zeros_like(chosen)) and torch.equal(rejected, torch.zeros_like(rejected))


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr, rc, rr = (x.clone().requires_grad_(True) for x in logps(2))
    loss, chosen, rejected = dpo.dpo_loss(pc, pr, rc, rr, beta=0.1)
    loss.backward()
    assert (pc.grad < 0).all()   # descending the loss raises log pi(chosen)
    assert (pr.grad > 0).all()   # ... and lowers log pi(rejected)
    assert rc.grad is None and rr.grad is None  # the reference is a constant
    assert not chosen.requires_grad and not rejected.requires_grad


def test_logsigmoid_is_stable_at_large_margins():
    one = torch.ones(1)
    # margin beta * 2000 = +200: the naive log(sigmoid(.)) is log(1) = 0 too, fine; at -200 it would be -inf
    good, _, _ = dpo.dpo_loss(1000 * one, -1000 * one, 0 * one, 0 * one, beta=0.1)
    bad, _, _ = dpo.dpo_loss(-1000 * one, 1000 * one, 0 * one, 0 * one, beta=0.1)
    assert good.item() == 0.0
    assert bad.item() == pytest.approx(200.0)  # -log sigmoid(-200) = 200 + log(1 + e^-200)
    assert torch.isinf(-torch.log(torch.sigmoid(torch.tensor(-200.0))))  # what the naive formula would give
    pc = torch.tensor([-1000.0], requires_grad=True)
    dpo.dpo_loss(pc, 1000 * one, 0 * one, 0 * one, beta=0.1)[0].backward()
    assert pc.grad.item() == pytest.approx(-0.1)  # saturated but finite: d/dpc = -beta * sigmoid(-h) -> -beta


def test_dpo_loss_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"same length.*policy_rejected_logps \(2,\)"):
        dpo.dpo_loss(x, torch.zeros(2), x, x)
    with pytest.raises(ValueError, match="1-D"):
        dpo.dpo_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="empty"):
        dpo.dpo_loss(*(torch.zeros(0),) * 4)
    with pytest.raises(TypeError, match="ref_chosen_logps must be a float tensor"):
        dpo.dpo_loss(x, x, torch.zeros(3, dtype=torch.long), x)
    for beta in (0, -0.1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            dpo.dpo_loss(x, x, x, x, beta=beta)


# ---- sequence log-probabilities ------------------------------------------------------------------------

MODEL = random_llama(SMALL, seed=3, std=0.2)
IDS = torch.randint(0, SMALL.vocab_size, (3, 9), generator=torch.Generator().manual_seed(4))
MASK = torch.zeros(3, 9, dtype=torch.bool)
MASK[0, 4:] = True
MASK[1, 2:6] = True   # a response followed by padding
MASK[2, 8] = True     # one token


def test_sequence_logprob_equals_a_per_token_loop():
    got = dpo.sequence_logprob(MODEL, IDS, MASK)
    with torch.no_grad():
        expected = []
        for b in range(3):
            total = 0.0
            for t in range(1, 9):
                if MASK[b, t]:  # log p(ids[t] | ids[:t]) from the model run on the prefix alone
                    total += torch.log_softmax(MODEL(IDS[b:b + 1, :t])[0, -1].double(), -1)[IDS[b, t]].item()
            expected.append(total)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=0)
    assert got.dtype == torch.float32 and got.shape == (3,)
    # 0/1 masks work like bool ones
    torch.testing.assert_close(dpo.sequence_logprob(MODEL, IDS, MASK.long()), got)


def test_sequence_logprob_is_differentiable():
    model = random_llama(SMALL, seed=5)
    dpo.sequence_logprob(model, IDS, MASK).sum().backward()
    assert model.embed_tokens.weight.grad.abs().sum() > 0


def test_sequence_logprob_accepts_an_object_with_logits():
    class Out:
        def __init__(self, logits):
            self.logits = logits
    got = dpo.sequence_logprob(lambda ids: Out(MODEL(ids)), IDS, MASK)
    torch.testing.assert_close(got, dpo.sequence_logprob(MODEL, IDS, MASK))


def test_sequence_logprob_errors():
    with pytest.raises(ValueError, match=r"response_mask must have the shape of ids \(3, 9\), got \(3, 8\)"):
        dpo.sequence_logprob(MODEL, IDS, MASK[:, :8])
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        dpo.sequence_logprob(MODEL, IDS.float(), MASK)
    first = MASK.clone()
    first[0, 0] = True
    with pytest.raises(ValueError, match="marks position 0"):
        dpo.sequence_logprob(MODEL, IDS, first)
    empty = MASK.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] mark no token"):
        dpo.sequence_logprob(MODEL, IDS, empty)
    with pytest.raises(ValueError, match="only 0/1"):
        dpo.sequence_logprob(MODEL, IDS, MASK.long() * 2)
    with pytest.raises(ValueError, match=r"must return logits \[B, T, vocab\]"):
        dpo.sequence_logprob(lambda ids: MODEL(ids)[:, :-1], IDS, MASK)


# ---- records and tokens --------------------------------------------------------------------------------

class CharTokenizer:
    """One id per character (a stand-in for SmolLM2's tokenizer that needs no model package)."""
    def __call__(self, text):
        return {"input_ids": [ord(c) % SMALL.vocab_size for c in text]}


def test_check_records_fills_input_and_names_the_bad_record():
    good = {"instruction": "Q?", "chosen": "a", "rejected": "b"}
    assert dpo.check_records([good]) == [dict(good, input="")]
    with pytest.raises(ValueError, match=r"record 1 is missing field\(s\) \['rejected'\]"):
        dpo.check_records([good, {"instruction": "Q?", "chosen": "a"}])
    with pytest.raises(TypeError, match="record 0: field 'chosen' must be a string, got int"):
        dpo.check_records([dict(good, chosen=3)])
    with pytest.raises(ValueError, match="record 2: field 'instruction' is empty"):
        dpo.check_records([good, good, dict(good, instruction=" ")])
    with pytest.raises(ValueError, match="record 0: chosen and rejected are the same"):
        dpo.check_records([dict(good, rejected="a")])
    with pytest.raises(TypeError, match="record 0 must be a dict"):
        dpo.check_records([["Q?", "a", "b"]])
    with pytest.raises(TypeError, match="sequence of dicts"):
        dpo.check_records(good)
    with pytest.raises(ValueError, match="empty"):
        dpo.check_records([])


def test_json_preference_records_are_deterministic_and_split_by_fact():
    a, b = dpo.json_preference_records(), dpo.json_preference_records()
    assert a == b
    assert a != dpo.json_preference_records(seed=1)
    n_facts = sum(len(rows) for _, _, rows in dpo.FACTS.values())
    assert len(a["train"]) + len(a["heldout"]) == n_facts
    assert not {r["instruction"] for r in a["train"]} & {r["instruction"] for r in a["heldout"]}
    for rec in a["train"] + a["heldout"]:
        answer = dpo.answer_of(rec)
        assert answer in rec["rejected"] and dpo.parse_json_answer(rec["rejected"]) is None
    with pytest.raises(ValueError, match="heldout_fraction must lie in"):
        dpo.json_preference_records(heldout_fraction=1.0)


def test_committed_preference_files_are_the_generators_output():
    records = dpo.json_preference_records()
    for split in ("train", "heldout"):
        path = DATA / f"json-answers-{split}.jsonl"
        assert dpo.read_jsonl(path) == records[split], f"{path} differs: regenerate it (data/preferences/README.md)"
        assert list(json.loads(path.read_text().splitlines()[0])) == list(dpo.FIELDS)


def test_write_and_read_jsonl_round_trip(tmp_path):
    records = dpo.json_preference_records()["heldout"][:3]
    dpo.write_jsonl(records, tmp_path / "p.jsonl")
    assert dpo.read_jsonl(tmp_path / "p.jsonl") == records
    (tmp_path / "bad.jsonl").write_text('{"instruction": "Q", "chosen": "a"}\n')
    with pytest.raises(ValueError, match="record 0 is missing"):
        dpo.read_jsonl(tmp_path / "bad.jsonl")


def test_parse_json_answer():
    assert dpo.parse_json_answer('{"answer": "Paris"}<|im_end|>') == "Paris"
    assert dpo.parse_json_answer(' {"answer":"Au"} ') == "Au"
    for text in ("The capital is Paris.", '{"answer": 3}', '{"answer": "a", "why": "b"}', '{"answer": "Par',
                 '["Paris"]'):
        assert dpo.parse_json_answer(text) is None


def test_encode_and_collate_mark_the_response_only():
    recs = [{"instruction": "Hi?", "chosen": "yes", "rejected": "no way"},
            {"instruction": "Longer question?", "input": "ctx", "chosen": "a", "rejected": "b"}]
    tok = CharTokenizer()
    enc = dpo.encode_records(tok, recs, "rejected")
    assert enc.prompt_len == [len(dpo.chat_prompt("Hi?")), len(dpo.chat_prompt("Longer question?", "ctx"))]
    assert dpo.chat_prompt("Q", "ctx") == "<|im_start|>user\nQ\n\nctx<|im_end|>\n<|im_start|>assistant\n"
    ids, mask = dpo.collate(enc, [0, 1], pad_id=0)
    assert ids.shape == mask.shape == (2, max(map(len, enc.ids)))
    assert mask.sum(1).tolist() == [len("no way" + dpo.END), len("b" + dpo.END)]
    assert ids[0, mask[0]].tolist() == tok("no way" + dpo.END)["input_ids"]
    with pytest.raises(ValueError, match="which must be 'chosen' or 'rejected'"):
        dpo.encode_records(tok, recs, "prompt")


def test_right_padding_does_not_change_a_rows_log_prob():
    recs = [{"instruction": "Q?", "chosen": "a long answer here", "rejected": "b"},
            {"instruction": "Another?", "chosen": "c", "rejected": "d"}]
    c = dpo.encode_records(CharTokenizer(), recs, "chosen")
    r = dpo.encode_records(CharTokenizer(), recs, "rejected")
    with torch.no_grad():
        both = dpo.pair_logprobs(MODEL, c, r, [0, 1])
        alone = [dpo.pair_logprobs(MODEL, c, r, [i]) for i in (0, 1)]
    for i in (0, 1):
        torch.testing.assert_close(both[0][i], alone[i][0][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(both[1][i], alone[i][1][0], atol=1e-5, rtol=0)


# ---- training ------------------------------------------------------------------------------------------

RECS = [{"instruction": f"Q{i}?", "chosen": "{x}", "rejected": f"prose {i}."} for i in range(6)]


def tiny_policy(seed=0):
    model = random_llama(SMALL, seed=seed, std=0.1)
    torch.manual_seed(seed)
    add_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    return model


def test_train_dpo_learns_the_preference_and_starts_at_log_2():
    model = tiny_policy()
    c, r = (dpo.encode_records(CharTokenizer(), RECS, w) for w in ("chosen", "rejected"))
    cfg = dpo.DPOConfig(beta=1.0, lr=3e-2, batch_size=3, steps=24)
    hist = dpo.train_dpo(model, c, r, cfg)
    assert hist["loss"][0] == pytest.approx(math.log(2), abs=1e-6)  # B = 0: the policy is the reference
    assert hist["margin"][0] == 0.0
    assert hist["loss"][-1] < 0.6 * hist["loss"][0] and hist["margin"][-1] > 0.5
    pc, pr = dpo.all_pair_logprobs(model, c, r)
    with adapters_disabled(model):
        rc, rr = dpo.all_pair_logprobs(model, c, r)
    assert ((pc - rc) > (pr - rr)).all()  # every pair's implicit reward now prefers chosen
    # stop_after runs the same first steps
    again = dpo.train_dpo(tiny_policy(), c, r, cfg, stop_after=3)
    assert again["loss"] == pytest.approx(hist["loss"][:3], abs=1e-6)


def test_train_dpo_errors():
    c, r = (dpo.encode_records(CharTokenizer(), RECS, w) for w in ("chosen", "rejected"))
    with pytest.raises(ValueError, match="call labkit.finetune.lora.add_lora"):
        dpo.train_dpo(random_llama(SMALL), c, r)
    with pytest.raises(ValueError, match="6 chosen answers but 5 rejected"):
        dpo.train_dpo(tiny_policy(), c, dpo.Encoded(r.ids[:5], r.prompt_len[:5]))
    with pytest.raises(ValueError, match="stop_after must be an int in 1..2"):
        dpo.train_dpo(tiny_policy(), c, r, dpo.DPOConfig(steps=2), stop_after=3)


def test_batch_order_covers_every_pair_once_per_epoch():
    batches = dpo.batch_order(10, 4, 5, seed=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and len(flat) == 20
    assert batches == dpo.batch_order(10, 4, 5, seed=0)


def test_wilson_interval():
    lo, hi = dpo.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook example, z = 1.96
    lo, hi = dpo.wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)     # not zero-width at 0/n
    assert dpo.wilson_interval(20, 20)[1] == 1.0
    with pytest.raises(ValueError, match="successes must be an int in"):
        dpo.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        dpo.wilson_interval(0, 0)


def test_nll_term_keeps_the_chosen_answers_likely():
    c, r = (dpo.encode_records(CharTokenizer(), RECS, w) for w in ("chosen", "rejected"))
    cfg = dpo.DPOConfig(beta=1.0, lr=3e-2, batch_size=3, steps=8)
    plain, with_nll = tiny_policy(), tiny_policy()
    h0 = dpo.train_dpo(plain, c, r, cfg)
    h1 = dpo.train_dpo(with_nll, c, r, dpo.DPOConfig(**{**cfg.__dict__, "nll_weight": 1.0}))
    assert h1["loss"][0] == h0["loss"][0] == pytest.approx(math.log(2), abs=1e-6)  # history: DPO's loss alone
    assert h1["loss"][1] != h0["loss"][1]                                           # but the step differed
    assert dpo.all_pair_logprobs(with_nll, c, r)[0].mean() > dpo.all_pair_logprobs(plain, c, r)[0].mean()


@pytest.mark.slow  # loads SmolLM2
def test_saved_run_09_dpo_adapters_reproduce_their_held_out_log_probs():
    from labkit.course import saved
    from labkit.finetune.lora import load_lora_state_dict
    from labkit.llama import Llama
    from labkit.models import load_smollm2

    run = saved.load("09-dpo")
    tokenizer, _ = load_smollm2()
    heldout = dpo.json_preference_records()["heldout"][:2]
    c, r = (dpo.encode_records(tokenizer, heldout, w) for w in ("chosen", "rejected"))
    model = dpo.lora_policy(Llama.from_pretrained(), seed=run.record["lora"]["seed"])
    for name in ["ref", *run.record["configs"]]:
        if name == "ref":
            with adapters_disabled(model):
                got = dpo.all_pair_logprobs(model, c, r)
        else:
            load_lora_state_dict(model, run.state_dict(name))
            got = dpo.all_pair_logprobs(model, c, r)
        for j, w in enumerate(("chosen", "rejected")):
            expected = torch.tensor(run.record["logps"][f"{name}_heldout_{w}"][:2])
            torch.testing.assert_close(got[j], expected, atol=1e-2, rtol=0)
