"""labkit.mlp_lm: the Bengio-style MLP language model, its training loop, perplexity and the history helpers."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import mlp_lm
from labkit.mlp_lm import (CHAPTER2_CONFIG, MLPConfig, MLPLanguageModel, log_probs, nearest_neighbours,
                           perplexity, train_mlp_lm)

TINY = MLPConfig(context=3, embed_dim=4, hidden=16, steps=60, batch_size=16, lr=1e-2, eval_every=20,
                 threads=1)
PERIODIC = np.array([0, 1, 2, 3, 1] * 40)  # each token is determined by the 3 before it


@pytest.fixture(scope="module")
def trained():
    return train_mlp_lm(PERIODIC, 5, TINY, heldout_ids=PERIODIC[:50], progress=False)


def test_config_defaults_and_validation():
    assert isinstance(CHAPTER2_CONFIG, MLPConfig)
    assert CHAPTER2_CONFIG.threads == 1 and CHAPTER2_CONFIG.seed == 0
    for bad in ({"context": 0}, {"hidden": 2.5}, {"steps": True}, {"lr": 0}, {"lr": math.inf},
                {"min_lr_ratio": 2}, {"weight_decay": -1}, {"embed_std": 0}):
        with pytest.raises(ValueError, match="MLPConfig"):
            MLPConfig(**bad)


def test_forward_shapes_and_errors():
    torch.manual_seed(0)
    model = MLPLanguageModel(7, TINY)
    assert model(torch.zeros(5, 3, dtype=torch.long)).shape == (5, 7)
    with pytest.raises(ValueError, match=r"shape \[batch, 3\]"):
        model(torch.zeros(5, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        MLPLanguageModel(1, TINY)
    with pytest.raises(TypeError, match="MLPConfig"):
        MLPLanguageModel(5, {"context": 3})


def test_embedding_is_a_one_hot_matrix_product():
    torch.manual_seed(0)
    model = MLPLanguageModel(11, TINY)
    ids = torch.tensor([3, 0, 10, 3])
    one_hot = F.one_hot(ids, 11).float()
    assert torch.equal(one_hot @ model.embed.weight, model.embed(ids))


def test_training_learns_a_deterministic_sequence(trained):
    model, history = trained
    assert history.steps == [20, 40, 60] and len(history.train_loss) == len(history.heldout_loss) == 3
    assert history.train_loss[-1] < history.train_loss[0] and history.heldout_loss[-1] < 0.2
    assert perplexity(model, PERIODIC) < 1.2
    assert not model.training


def test_training_is_reproducible(trained):
    model, history = trained
    again, history2 = train_mlp_lm(PERIODIC, 5, TINY, heldout_ids=PERIODIC[:50], progress=False)
    assert history.train_loss == history2.train_loss and history.heldout_loss == history2.heldout_loss
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_progress_lines_and_thread_count_restored():
    lines = []
    before = torch.get_num_threads()
    _, history = train_mlp_lm(PERIODIC, 5, MLPConfig(context=3, embed_dim=4, hidden=8, steps=10, eval_every=5,
                                                     threads=2), progress=lines.append)
    assert torch.get_num_threads() == before
    assert lines == [f"step     5/10  train loss {history.train_loss[0]:.3f}",
                     f"step    10/10  train loss {history.train_loss[1]:.3f}"]
    assert history.heldout_loss == [] and history.seconds > 0


def test_progress_true_prints(capsys):
    train_mlp_lm(PERIODIC, 5, MLPConfig(context=3, embed_dim=4, hidden=8, steps=4, eval_every=4, threads=1), PERIODIC)
    out = capsys.readouterr().out
    assert out.startswith("step     4/4  train loss ") and "held-out loss" in out and "perplexity" in out


def test_log_probs_match_the_model_and_perplexity(trained):
    model, _ = trained
    ids = np.array([1, 2, 3, 1, 0, 1, 2, 3, 4, 0])
    lp = log_probs(model, ids)
    assert lp.shape == (7,) and lp.dtype == np.float64 and np.all(lp <= 0)
    with torch.no_grad():
        for i in (3, 6, 9):
            logits = model(torch.from_numpy(ids[None, i - 3:i]))[0].double()
            assert lp[i - 3] == pytest.approx(float(torch.log_softmax(logits, -1)[ids[i]]), abs=1e-6)
    assert perplexity(model, ids) == pytest.approx(math.exp(-lp.mean()))
    # A larger context scores fewer, later tokens: the same ones a model with a longer window would score.
    assert np.allclose(log_probs(model, ids, context=5), lp[2:])
    assert log_probs(model, torch.tensor(ids)).tolist() == lp.tolist()


def test_untrained_zero_model_is_uniform():
    model = MLPLanguageModel(9, TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert perplexity(model, np.arange(9)) == pytest.approx(9.0)


def test_id_validation(trained):
    model, _ = trained
    with pytest.raises(ValueError, match=r"context must be an int >= the model's window \(3\)"):
        perplexity(model, PERIODIC, context=2)
    with pytest.raises(ValueError, match="need more than context"):
        perplexity(model, [1, 2, 3])
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\)"):
        perplexity(model, [1, 2, 3, 7])
    with pytest.raises(TypeError, match="integer token ids"):
        perplexity(model, [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, [[1, 2, 3, 4]])
    with pytest.raises(TypeError, match="MLPLanguageModel"):
        perplexity(torch.nn.Linear(2, 2), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="need more than context"):
        train_mlp_lm([1, 2], 5, TINY)
    with pytest.raises(ValueError, match=r"heldout_ids must lie in \[0, 5\)"):
        train_mlp_lm(PERIODIC, 5, TINY, heldout_ids=[9] * 10)
    with pytest.raises(TypeError, match="config must be an MLPConfig"):
        train_mlp_lm(PERIODIC, 5, None)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        train_mlp_lm(PERIODIC, 5.0, TINY)


def test_sample_is_seeded_and_follows_the_pattern(trained):
    model, _ = trained
    prompt = [0, 1, 2]
    a = mlp_lm.sample(model, prompt, 10, temperature=0.5, seed=1)
    assert a == mlp_lm.sample(model, prompt, 10, temperature=0.5, seed=1)
    assert a == [3, 1, 0, 1, 2, 3, 1, 0, 1, 2]  # the periodic pattern, learned
    with pytest.raises(ValueError, match="at least context = 3"):
        mlp_lm.sample(model, [0], 5)
    with pytest.raises(ValueError, match="temperature"):
        mlp_lm.sample(model, prompt, 5, temperature=0)


def test_nearest_neighbours():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [2.0, 0.0]])
    assert [i for i, _ in nearest_neighbours(emb, 0, k=3)] == [4, 1, 2]  # 4 ties with 0 exactly: scale-free
    assert nearest_neighbours(emb, 0, k=1)[0][1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="query must be a row index"):
        nearest_neighbours(emb, 5)
    with pytest.raises(ValueError, match="k must be an int"):
        nearest_neighbours(emb, 0, k=5)
    with pytest.raises(ValueError, match="2-D"):
        nearest_neighbours(emb[0], 0)


def test_rnn_gradients_vanish_with_length():
    norms = mlp_lm.tanh_rnn_gradient_norms([1, 5, 20, 50], hidden=16, trials=3)
    assert norms[0] > norms[1] > norms[2] > norms[3] and norms[3] < 1e-3 * norms[0]
    with pytest.raises(ValueError, match="lengths"):
        mlp_lm.tanh_rnn_gradient_norms([])


def test_learning_rate_schedule_is_cosine():
    cfg = MLPConfig(steps=101, lr=1.0, min_lr_ratio=0.1)
    assert mlp_lm._lr_at(0, cfg) == pytest.approx(1.0)
    assert mlp_lm._lr_at(50, cfg) == pytest.approx(0.55)
    assert mlp_lm._lr_at(100, cfg) == pytest.approx(0.1)
