"""labkit.compress.distill: the soft loss equals KL at temperature T times T^2 (torch's kl_div as reference), its
top-k form equals it at k = vocab, the T^2 factor gives Hinton's high-temperature gradient, the compact vocabulary
pools probability exactly, and a soft target that is one-hot on the corpus token trains exactly like the hard loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from labkit.compress.distill import (CompactVocab, compact_log_probs, distill_loss, teacher_topk, topk_distill_loss,
                                     train_student, window_nll)
from labkit.llama import Llama, LlamaConfig
from labkit.transformer import GPTConfig, TinyGPT, TrainConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 7.0])
def test_distill_loss_is_t_squared_times_torch_kl_div(temperature):
    student, teacher = rand(3, 5, 11, seed=1) * 3, rand(3, 5, 11, seed=2) * 3
    reference = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                         log_target=True, reduction="sum") / 15 * temperature ** 2
    torch.testing.assert_close(distill_loss(student, teacher, temperature), reference, rtol=1e-5, atol=1e-6)
    assert float(distill_loss(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_topk_loss_with_every_token_equals_the_full_loss_and_drops_the_tail_otherwise():
    student, teacher = rand(4, 9, seed=3) * 2, rand(4, 9, seed=4) * 2
    top = teacher.topk(9, dim=-1)
    torch.testing.assert_close(topk_distill_loss(student, top.values, top.indices, 2.0), distill_loss(student, teacher, 2.0))
    # k < vocab: the teacher renormalised over its top 3 is a distribution whose tail is exactly zero
    top3 = teacher.topk(3, dim=-1)
    truncated = torch.full_like(teacher, -math.inf).scatter(-1, top3.indices, top3.values)
    torch.testing.assert_close(topk_distill_loss(student, top3.values, top3.indices, 1.5),
                               distill_loss(student, truncated, 1.5))


def test_t_squared_keeps_the_gradient_scale_hintons_high_temperature_limit():
    # d/dz [T^2 KL(p_T || q_T)] = T (q_T - p_T) -> (z - v) / N for zero-mean logits as T grows (Hinton et al. eq. 3)
    v, z = rand(1, 6, seed=5), rand(1, 6, seed=6)
    v, z = v - v.mean(), z - z.mean()
    for t in (1.0, 3.0):
        z1 = z.clone().requires_grad_()
        distill_loss(z1, v, t).backward()
        expected = t * (F.softmax(z / t, -1) - F.softmax(v / t, -1))
        torch.testing.assert_close(z1.grad, expected, rtol=1e-5, atol=1e-7)
    z1 = z.clone().requires_grad_()
    distill_loss(z1, v, 1000.0).backward()
    torch.testing.assert_close(z1.grad, (z - v) / 6, rtol=2e-3, atol=1e-5)


def test_compact_log_probs_pool_the_other_ids_exactly():
    logits = rand(2, 3, 20, seed=7) * 2
    vocab = CompactVocab((4, 0, 17, 9), 20)
    out = compact_log_probs(logits, vocab)
    full = F.softmax(logits, -1)
    assert out.shape == (2, 3, 5)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 3))
    for j, i in enumerate(vocab.kept):
        torch.testing.assert_close(out[..., j].exp(), full[..., i])
    rest = [i for i in range(20) if i not in vocab.kept]
    torch.testing.assert_close(out[..., vocab.other].exp(), full[..., rest].sum(-1))
    ids = torch.tensor([[17, 3, 4, 19, 0]])
    assert vocab.encode(ids).tolist() == [[2, 4, 0, 4, 1]]
    assert CompactVocab.from_ids(torch.tensor([5, 2, 5, 9]), 12).kept == (2, 5, 9)


def test_teacher_topk_is_the_top_of_the_compact_distribution_in_any_batch_size():
    torch.manual_seed(0)
    teacher = Llama(LlamaConfig(vocab_size=30, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=24,
                                max_seq_len=32)).eval()
    vocab = CompactVocab(tuple(range(0, 30, 3)), 30)
    windows = torch.randint(0, 30, (5, 9), generator=torch.Generator().manual_seed(1))
    values, ids = teacher_topk(teacher, windows, vocab, k=4, batch_size=2)
    with torch.no_grad():
        top = compact_log_probs(teacher(windows[:, :-1]), vocab).topk(4, dim=-1)
    assert ids.shape == (5, 8, 4) and torch.equal(ids, top.indices)
    torch.testing.assert_close(values, top.values, rtol=1e-5, atol=1e-6)


def tiny_student(vocab_size=12, context=8):
    torch.manual_seed(0)
    return TinyGPT(GPTConfig(vocab_size=vocab_size, context=context, d_model=16, n_layers=1, n_heads=2))


def test_a_one_hot_soft_target_trains_exactly_like_the_hard_loss():
    windows = torch.randint(0, 12, (10, 9), generator=torch.Generator().manual_seed(2))
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup=2)
    hard = train_student(tiny_student(), windows, cfg, alpha=0.0)
    one_hot = (torch.zeros(10, 8, 1), windows[:, 1:, None])  # k = 1: all the teacher's mass on the corpus token
    soft = train_student(tiny_student(), windows, cfg, alpha=1.0, topk=one_hot, temperature=1.0)
    torch.testing.assert_close(torch.tensor(soft["loss"]), torch.tensor(hard["loss"]), rtol=1e-5, atol=1e-6)
    again = train_student(tiny_student(), windows, cfg, alpha=0.0, eval_windows=windows[:3], eval_every=3)
    assert again["loss"] == hard["loss"] and again["eval_step"] == [3, 6]  # seeded: the same run twice
    model = tiny_student()
    train_student(model, windows, cfg)
    assert again["eval_loss"][-1] == pytest.approx(float(window_nll(model, windows[:3]).mean()), rel=1e-6)


def test_clear_errors():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        distill_loss(logits, logits, 0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1.0"):
        topk_distill_loss(logits, logits[:, :2], torch.zeros(2, 2, dtype=torch.long), -1.0)
    with pytest.raises(ValueError, match=r"same shape \[..., vocab\], got \(2, 5\) and \(2, 6\)"):
        distill_loss(logits, torch.zeros(2, 6))
    with pytest.raises(TypeError, match="teacher_logits must be a floating-point tensor"):
        distill_loss(logits, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"topk_logits and topk_ids must be \[..., k\]"):
        topk_distill_loss(logits, torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="k = 6 exceeds the student's vocabulary of 5"):
        topk_distill_loss(logits, torch.zeros(2, 6), torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"topk_ids must lie in \[0, 5\)"):
        topk_distill_loss(logits, torch.zeros(2, 1), torch.full((2, 1), 5))
    with pytest.raises(ValueError, match="logits must have the tokenizer's 20 entries"):
        compact_log_probs(logits, CompactVocab((1,), 20))
    with pytest.raises(ValueError, match=r"kept ids must lie in \[0, 20\)"):
        CompactVocab((20,), 20)
    windows = torch.zeros(4, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha > 0 needs topk"):
        train_student(tiny_student(), windows, TrainConfig(steps=1, batch_size=2), alpha=0.5)
    with pytest.raises(ValueError, match=r"alpha \(the soft loss's weight\) must lie in \[0, 1\]"):
        train_student(tiny_student(), windows, TrainConfig(steps=1, batch_size=2), alpha=1.5)
    with pytest.raises(ValueError, match=r"windows must be \[N, context \+ 1 = 9\]"):
        train_student(tiny_student(), windows[:, :5], TrainConfig(steps=1, batch_size=2))


def test_saved_run_live_slice_reproduces_the_record():
    from labkit.compress.distill import DISTILL_STUDENT, distill_data
    from labkit.course import saved

    run = saved.load("09-distill")
    rec = run.record
    _, vocab, train, _, _, _ = distill_data(rec["n_train"], rec["n_eval"])
    assert len(vocab) == rec["compact_vocab"] and rec["student_config"] == DISTILL_STUDENT
    cache = (run.tensors["topk.values"].float(), run.tensors["topk.ids"].long())
    cfg = TrainConfig(**rec["train_config"])
    for name, alpha, t in rec["students"]:
        torch.manual_seed(cfg.seed)
        model = TinyGPT(GPTConfig(vocab_size=len(vocab), **rec["student_config"]))
        live = train_student(model, train, cfg, alpha, cache, t, stop_after=3)
        assert max(abs(a - b) for a, b in zip(live["loss"], rec["train_loss"][name])) < 1e-3, name
