"""labkit.grokking: the modular-arithmetic table and its split, the model's clear errors, a deterministic training
run whose first steps are a prefix of the full run (what the notebook's live slice relies on), a short run that
learns its training set, and the saved run's live slice."""
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from labkit import grokking
from labkit.course import saved


def test_fourier_power_agrees_with_numpy_and_finds_a_pure_frequency():
    p, d = 11, 5
    table = torch.randn(p, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = (np.abs(np.fft.fft(table.numpy(), axis=0)) ** 2).sum(1)  # all p frequencies, numpy as the oracle
    expected = np.concatenate([full[:1], full[1:p // 2 + 1] + full[p - 1:p // 2:-1]]) / full.sum()
    np.testing.assert_allclose(grokking.fourier_power(table).numpy(), expected, rtol=1e-12)
    a = torch.arange(p, dtype=torch.float64)
    wave = torch.stack([torch.cos(2 * math.pi * 3 * a / p), torch.sin(2 * math.pi * 3 * a / p)], 1)
    assert grokking.fourier_power(wave)[3] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="p odd"):
        grokking.fourier_power(torch.zeros(10, 4))


def test_run_key():
    assert grokking.run_key(0.5, 1) == "wd0_5_seed1" and grokking.run_key(1.0, 0) == "wd1_seed0"


SMALL = grokking.GrokConfig(p=23, train_fraction=0.5, embed_dim=32, hidden=64, steps=300, log_every=10)


@pytest.mark.parametrize("op, fn", [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)])
def test_table_holds_every_pair_once_with_its_residue(op, fn):
    p = 7
    pairs, labels = grokking.modular_table(p, op)
    assert pairs.shape == (p * p, 2) and labels.shape == (p * p,)
    assert len({tuple(x) for x in pairs.tolist()}) == p * p
    for (a, b), y in zip(pairs.tolist(), labels.tolist()):
        assert y == fn(a, b) % p  # Python's % is non-negative for a positive modulus
    assert pairs[3 * p + 5].tolist() == [3, 5]  # row a*p + b, as documented


def test_table_rejects_composite_moduli_and_unknown_ops():
    with pytest.raises(ValueError, match="p must be a prime number"):
        grokking.modular_table(9)
    with pytest.raises(ValueError, match="p must be a prime number"):
        grokking.modular_table(1)
    with pytest.raises(ValueError, match="op must be one of"):
        grokking.modular_table(7, "/")


def test_split_partitions_the_examples_deterministically():
    train, held = grokking.split(100, 0.3, seed=4)
    assert len(train) == 30 and len(held) == 70
    assert sorted(torch.cat([train, held]).tolist()) == list(range(100))
    again = grokking.split(100, 0.3, seed=4)
    assert torch.equal(train, again[0]) and torch.equal(held, again[1])
    assert not torch.equal(train, grokking.split(100, 0.3, seed=5)[0])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        grokking.split(100, 1.0, seed=0)
    with pytest.raises(ValueError, match="leaves an empty training or held-out set"):
        grokking.split(10, 0.01, seed=0)


def test_model_and_config_errors_are_clear():
    model = grokking.ModularMLP(7, 4, 8)
    assert model(torch.tensor([[1, 2], [3, 4]])).shape == (2, 7)
    with pytest.raises(ValueError, match=r"pairs must have shape \[batch, 2\]"):
        model(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer operand ids"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="GrokConfig.hidden must be an int >= 1"):
        grokking.GrokConfig(hidden=0)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        grokking.GrokConfig(weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"stop_after must be an int in 1\.\.5"):
        grokking.train(grokking.GrokConfig(p=7, steps=5), stop_after=6)


def test_init_scale_scales_the_initial_weights():
    _, one = grokking.train(SMALL, stop_after=1)
    _, half = grokking.train(grokking.GrokConfig(**{**asdict(SMALL), "init_scale": 0.5}), stop_after=1)
    assert half["weight_norm"][0] == pytest.approx(0.5 * one["weight_norm"][0], rel=1e-6)
    with pytest.raises(ValueError, match="init_scale must be a finite number > 0"):
        grokking.GrokConfig(init_scale=0.0)


def test_first_step_at():
    steps, acc = [0, 10, 20, 30], [0.0, 0.5, 0.96, 0.94]
    assert grokking.first_step_at(steps, acc, 0.95) == 20
    assert grokking.first_step_at(steps, acc, 0.5) == 10
    assert grokking.first_step_at(steps, acc, 0.99) is None
    with pytest.raises(ValueError, match="differ in length"):
        grokking.first_step_at(steps, acc[:2], 0.5)


def test_training_is_deterministic_and_a_slice_is_a_prefix_of_the_full_run():
    _, full = grokking.train(SMALL)
    _, again = grokking.train(SMALL)
    assert full == again
    _, head = grokking.train(SMALL, stop_after=55)
    assert head["step"] == list(range(0, 51, 10))
    assert all(head[k] == full[k][:len(head[k])] for k in head)


def test_a_short_run_learns_the_training_set_and_weight_decay_shrinks_the_weights():
    _, curves = grokking.train(SMALL)
    assert curves["train_acc"][0] < 0.2 and curves["train_acc"][-1] == 1.0
    assert curves["train_loss"][-1] < 0.1 * curves["train_loss"][0]
    _, no_decay = grokking.train(grokking.GrokConfig(**{**asdict(SMALL), "weight_decay": 0.0}))
    assert curves["weight_norm"][-1] < 0.9 * no_decay["weight_norm"][-1]


def test_saved_run_matches_its_config_and_its_live_slice():
    run = saved.load("02-grokking")
    config = grokking.GrokConfig(**{**run.record["config"], "betas": tuple(run.record["config"]["betas"])})
    assert config == grokking.SAVED_CONFIG
    for rec in run.record["runs"][:1] + run.record["runs"][-1:]:  # one run with weight decay, one without
        cfg = grokking.GrokConfig(**{**asdict(config), "weight_decay": rec["weight_decay"], "seed": rec["seed"]})
        _, live = grokking.train(cfg, stop_after=100)
        assert live["step"] == rec["step"][:len(live["step"])]
        for key in grokking.CURVES:
            for a, b in zip(live[key], rec[key]):
                # another CPU rounds differently and training amplifies it: ~2e-3 seen under the portable kernels
                assert abs(a - b) <= 1e-2 * max(1.0, abs(b)), (rec["weight_decay"], key, a, b)
        # the saved final weights are the ones the record's last point measured
        model = grokking.ModularMLP(config.p, config.embed_dim, config.hidden)
        model.load_state_dict(run.state_dict(grokking.run_key(rec["weight_decay"], rec["seed"])))
        pairs, labels = grokking.modular_table(config.p, config.op)
        _, heldout = grokking.split(len(labels), config.train_fraction, rec["seed"])
        with torch.no_grad():
            acc = float((model(pairs[heldout]).argmax(-1) == labels[heldout]).double().mean())
        assert abs(acc - rec["heldout_acc"][-1]) <= 1e-3
        assert abs(grokking.weight_norm(model) - rec["weight_norm"][-1]) <= 1e-3 * rec["weight_norm"][-1]
