"""labkit.finetune.adapters: the continent task, its scoring, the shared training loop, and the saved run."""
import math

import pytest
import torch

from labkit.course import saved
from labkit.finetune import adapters as A
from labkit.finetune.lora import add_lora, load_lora_state_dict
from tiny_llama import SMALL, random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_task_is_balanced_and_disjoint():
    names = [c for cs in A.COUNTRIES.values() for c in cs]
    assert len(names) == len(set(names)) == 144
    train, test = A.continent_task(0)
    assert len(train) == len(test) == 72
    assert not {c for c, _ in train} & {c for c, _ in test}
    for label in A.LABELS:
        assert sum(lab == label for _, lab in test) == sum(lab == label for _, lab in train) == 18
    assert A.continent_task(0) == (train, test) and A.continent_task(1)[1] != test
    with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\)"):
        A.continent_task(0, 1.0)


def test_labels_are_single_tokens_and_prompts_end_at_the_answer():
    tok = A.tokenizer()
    ids = A.label_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == [" Africa", " Europe", " Asia", " America"]
    (x, label), = A.encode(tok, [("Kenya", "Africa")])
    assert tok.decode(x) == "Country: Kenya\nContinent:" and label == 0


def test_wilson_interval():
    z2 = 1.96 ** 2
    lo, hi = A.wilson_interval(0, 10)
    assert lo == pytest.approx(0, abs=1e-12) and hi == pytest.approx(z2 / (10 + z2))  # the k = 0 closed form
    lo, hi = A.wilson_interval(10, 10)
    assert lo == pytest.approx(10 / (10 + z2)) and hi == pytest.approx(1)
    lo, hi = A.wilson_interval(7, 20)
    lo2, hi2 = A.wilson_interval(13, 20)
    assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2)) and lo < 7 / 20 < hi
    assert hi - lo < 2 * 1.96 * math.sqrt(0.35 * 0.65 / 20) + 0.01
    with pytest.raises(ValueError, match="0 <= k <= n, n > 0"):
        A.wilson_interval(3, 2)


def test_batches_are_seeded_epochs():
    plan = A.batches(10, steps=4, batch_size=4, seed=0)
    assert plan == A.batches(10, steps=4, batch_size=4, seed=0) != A.batches(10, 4, 4, seed=1)
    flat = [i for b in plan for i in b]
    assert sorted(flat[:10]) == list(range(10)) and len(flat) == 16


def test_training_learns_a_tiny_task():
    torch.manual_seed(0)
    model = random_llama(SMALL, std=0.2)
    add_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    g = torch.Generator().manual_seed(0)
    examples = [(torch.randint(0, SMALL.vocab_size, (int(n),), generator=g), i % 2)
                for i, n in enumerate(torch.randint(3, 6, (16,), generator=g))]
    label_ids = [7, 11]
    before = A.accuracy(A.label_log_probs(model, examples, label_ids), examples)
    losses = A.train(model, [p for p in model.parameters() if p.requires_grad], examples, label_ids, steps=50,
                     batch_size=8, lr=3e-2)
    assert losses[-1] < losses[0] - 0.8   # cross entropy over all 97 tokens: the two labels share the mass
    after = A.accuracy(A.label_log_probs(model, examples, label_ids), examples)
    assert after >= 15 > 12 > before
    with pytest.raises(ValueError, match="non-empty list of trainable"):
        A.train(model, [], examples, label_ids, steps=1)


def test_saved_run_live_slice():
    """The first steps of the saved LoRA run re-run here, and its saved adapter scores what the record says."""
    run = saved.load("09-adapters")
    rec = run.record
    tok = A.tokenizer()
    label_ids = A.label_token_ids(tok)
    train_raw, test_raw = A.continent_task(rec["seed"])
    train_set, test_set = A.encode(tok, train_raw), A.encode(tok, test_raw)
    model, _ = A.build("LoRA", tok, seed=rec["seed"])
    lora = rec["methods"]["LoRA"]
    live = A.train(model, [p for p in model.parameters() if p.requires_grad], train_set, label_ids, steps=2,
                   batch_size=rec["batch_size"], lr=lora["lr"], seed=rec["seed"])
    assert max(abs(a - b) for a, b in zip(live, lora["losses"])) < 1e-3
    load_lora_state_dict(model, run.state_dict("lora"))
    predictions = A.label_log_probs(model, test_set[:24], label_ids).argmax(dim=1).tolist()
    assert predictions == lora["predictions"][:24]
