"""labkit.finetune.reward: the Bradley-Terry loss against its formula (and as DPO's loss with beta = 1 and a zero
reference), last-token features against the model's own logits, the head's training, best-of-n, the probes."""
import math

import pytest
import torch
import torch.nn.functional as F

from labkit.finetune import dpo, reward
from tiny_llama import SMALL, random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
MODEL = random_llama(SMALL, seed=7, std=0.2)


def test_bradley_terry_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    expected = sum(math.log(1 + math.exp(-(a - b))) for a, b in zip(rc.tolist(), rr.tolist())) / 6
    assert reward.bradley_terry_loss(rc, rr).item() == pytest.approx(expected, rel=1e-12)
    # DPO is this loss on the implicit reward: with beta = 1 and a zero reference they coincide
    zero = torch.zeros(6, dtype=torch.float64)
    assert reward.bradley_terry_loss(rc, rr).item() == pytest.approx(dpo.dpo_loss(rc, rr, zero, zero, 1.0)[0].item())
    # only differences count: a constant added to every reward changes nothing
    assert reward.bradley_terry_loss(rc + 5, rr + 5).item() == pytest.approx(expected, rel=1e-12)
    # stable where log(sigmoid(.)) would give inf
    assert reward.bradley_terry_loss(torch.tensor([-500.0]), torch.tensor([0.0])).item() == pytest.approx(500.0)


def test_bradley_terry_loss_errors():
    with pytest.raises(ValueError, match=r"same length \(one reward per pair\), got \(3,\) and \(2,\)"):
        reward.bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        reward.bradley_terry_loss(torch.zeros(0), torch.zeros(0))
    with pytest.raises(TypeError, match="rejected_rewards must be a float tensor"):
        reward.bradley_terry_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))


def test_last_token_features_are_what_the_output_head_reads():
    ids = torch.randint(0, SMALL.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    lengths = [7, 4, 1]
    feats = reward.last_token_features(MODEL, ids, lengths)
    assert feats.shape == (3, SMALL.dim)
    with torch.no_grad():
        for b, n in enumerate(lengths):
            alone = MODEL(ids[b:b + 1, :n])[0, -1]  # the row without its padding
            torch.testing.assert_close(F.linear(feats[b], MODEL.embed_tokens.weight), alone, atol=1e-5, rtol=0)


def test_last_token_features_errors():
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"one length in \[1, 5\] per row \(2 rows\), got \[5, 6\]"):
        reward.last_token_features(MODEL, ids, [5, 6])
    with pytest.raises(ValueError, match="per row"):
        reward.last_token_features(MODEL, ids, [5])
    with pytest.raises(TypeError, match="labkit's Llama"):
        reward.last_token_features(lambda x: x, ids, [5, 5])
    assert not MODEL.norm._forward_hooks  # the capturing hook is removed again


def test_train_reward_head_separates_held_out_pairs():
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(16, generator=g)
    base = torch.randn(80, 16, generator=g) * 3
    chosen, rejected = base + 0.5 * direction, base - 0.5 * direction + 0.2 * torch.randn(80, 16, generator=g)
    head, history = reward.train_reward_head(chosen[:60], rejected[:60], reward.RewardConfig(steps=100, lr=0.05))
    assert history["loss"][0] == pytest.approx(math.log(2))  # a zero head: every reward 0
    assert history["loss"][-1] < 0.2 and history["accuracy"][-1] == 1.0
    with torch.no_grad():
        assert (head(chosen[60:]) > head(rejected[60:])).all()
    loaded = reward.load_head({"weight": head.weight.detach(), "scale": head.scale})
    torch.testing.assert_close(loaded(chosen), head(chosen))
    with pytest.raises(ValueError, match="both be \\[pairs, dim\\]"):
        reward.train_reward_head(chosen, rejected[:5])
    with pytest.raises(ValueError, match="features must end in dim 16"):
        head(torch.zeros(2, 8))


def test_best_of_n_takes_the_top_of_the_first_n():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9], [2.0, -1.0, 2.0, 0.0]])
    assert best(scores, 1) == [0, 0]
    assert best(scores, 2) == [1, 0]
    assert best(scores, 4) == [3, 0]  # a tie goes to the first
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 4\]"):
        reward.best_of_n(scores, 5)
    with pytest.raises(ValueError, match="prompts, candidates"):
        reward.best_of_n(scores[0], 1)


def best(scores, n):
    return reward.best_of_n(scores, n).tolist()


def test_wrong_answer_records_keep_the_format_and_kind_but_change_the_fact():
    heldout = dpo.json_preference_records()["heldout"]
    wrong = reward.wrong_answer_records(heldout)
    for rec, bad in zip(heldout, wrong):
        assert bad["instruction"] == rec["instruction"] and bad["rejected"] == rec["rejected"]
        assert dpo.parse_json_answer(bad["chosen"]) is not None
        assert reward.kind_of(bad["instruction"]) == reward.kind_of(rec["instruction"])
    changed = sum(dpo.answer_of(b) != dpo.answer_of(r) for r, b in zip(heldout, wrong))
    assert changed >= len(heldout) - 2  # a fact table may repeat an answer ("calf", "cub")
    with pytest.raises(ValueError, match="not a question of this chapter's task"):
        reward.kind_of("Why is the sky blue?")


def test_mentions_matches_whole_words():
    assert reward.mentions("The chemical symbol for gold is Au.", "Au")
    assert not reward.mentions("The capital of Australia", "Au")
    assert reward.mentions("paris, of course", "Paris")
    assert reward.mentions("It is New Delhi.", "New Delhi")


@pytest.mark.slow  # loads SmolLM2
def test_saved_run_09_reward_heads_reproduce_their_held_out_scores():
    from labkit.course import saved
    from labkit.llama import Llama
    from labkit.models import load_smollm2

    run = saved.load("09-reward")
    tokenizer, _ = load_smollm2()
    model = Llama.from_pretrained()
    heldout = dpo.json_preference_records()["heldout"][:2]
    for w in ("chosen", "rejected"):
        feats = reward.encoded_features(model, dpo.encode_records(tokenizer, heldout, w))
        for name in ("format", "both"):
            with torch.no_grad():
                got = reward.load_head(run.state_dict(name))(feats)
            expected = torch.tensor(run.record["scores"][f"{name}/heldout_{w}"][:2])
            torch.testing.assert_close(got, expected, atol=1e-2, rtol=0)
