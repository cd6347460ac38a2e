"""labkit.finetune.prompt_tuning: a soft prompt and a prefix, each equal to the model reading real text at init."""
import pytest
import torch

from labkit.finetune.lora import trainable_parameters
from labkit.finetune.prompt_tuning import PrefixCache, PrefixTuning, SoftPrompt, forward_embeddings
from tiny_llama import SMALL, random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
IDS = torch.randint(0, SMALL.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
INIT = torch.tensor([5, 17, 42, 8])


def test_forward_embeddings_is_llama_forward():
    model = random_llama(SMALL, std=0.2)
    with torch.no_grad():
        torch.testing.assert_close(forward_embeddings(model, model.embed_tokens(IDS)), model(IDS), atol=1e-6, rtol=0)
        positions = torch.arange(3, 10)
        torch.testing.assert_close(forward_embeddings(model, model.embed_tokens(IDS), positions),
                                   model(IDS, positions=positions), atol=1e-6, rtol=0)


def reading_init_text(model, ids):
    """What both methods must equal before training: the model reading INIT, then the tokens."""
    full = torch.cat([INIT.expand(ids.shape[0], -1), ids], dim=1)
    return model(full)[:, len(INIT):]


def test_soft_prompt_starts_as_the_init_text():
    model = random_llama(SMALL, std=0.2)
    soft = SoftPrompt(model, INIT)
    with torch.no_grad():
        torch.testing.assert_close(soft(IDS), reading_init_text(model, IDS), atol=1e-5, rtol=0)
    assert trainable_parameters(soft) == len(INIT) * SMALL.dim
    assert [n for n, p in soft.named_parameters() if p.requires_grad] == ["prompt"]


def test_prefix_starts_as_the_cached_init_text():
    """Positions matter: the tokens must sit at n, n+1, ... after the prefix, as after a cached prompt."""
    model = random_llama(SMALL, std=0.2)
    prefix = PrefixTuning(model, INIT)
    with torch.no_grad():
        torch.testing.assert_close(prefix(IDS), reading_init_text(model, IDS), atol=1e-5, rtol=0)
        # the same prefix with the tokens at positions 0.. would be another model: the test can tell
        wrong = model(IDS, positions=torch.arange(IDS.shape[1]), cache=prefix.prefix)
        assert (wrong - prefix(IDS)).abs().max() > 1e-3
    assert trainable_parameters(prefix) == SMALL.n_layers * 2 * SMALL.n_kv_heads * len(INIT) * SMALL.head_dim
    assert sorted(n for n, p in prefix.named_parameters() if p.requires_grad) == ["prefix.k", "prefix.v"]


def test_gradients_reach_every_layer_of_the_prefix_and_only_it():
    model = random_llama(SMALL, std=0.2)
    prefix = PrefixTuning(model, INIT)
    prefix(IDS).logsumexp(-1).sum().backward()
    for p in (prefix.prefix.k, prefix.prefix.v):
        assert all(p.grad[layer].abs().sum() > 0 for layer in range(SMALL.n_layers))
    assert all(p.grad is None for p in model.parameters())
    soft = SoftPrompt(random_llama(SMALL, std=0.2), INIT)
    soft(IDS).sum().backward()
    assert soft.prompt.grad.abs().min(dim=1).values.gt(0).all()


def test_training_changes_the_output():
    model = random_llama(SMALL, std=0.2)
    for method in (SoftPrompt(model, INIT), PrefixTuning(model, INIT)):
        before = method(IDS).detach()
        opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=0.05)
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(method(IDS)[:, -1], torch.tensor([1, 2, 3]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert (method(IDS).detach() - before).abs().max() > 1e-2


def test_bad_input():
    model = random_llama(SMALL)
    with pytest.raises(TypeError, match="model must be a labkit.llama.Llama, got Linear"):
        SoftPrompt(torch.nn.Linear(2, 2), INIT)
    with pytest.raises(ValueError, match=r"init_ids must have shape \[n\] with n >= 1"):
        PrefixTuning(model, torch.tensor([], dtype=torch.long))
    with pytest.raises(TypeError, match="init_ids must be an integer tensor"):
        SoftPrompt(model, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"init_ids must lie in \[0, 97\)"):
        SoftPrompt(model, torch.tensor([97]))
    with pytest.raises(ValueError, match="exceed the model's context of 256"):
        SoftPrompt(model, INIT)(torch.zeros(1, 254, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be input vectors \[B, T, 32\]"):
        forward_embeddings(model, torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match=r"k and v must both be \[layers, kv_heads, n, head_dim\]"):
        PrefixCache(torch.zeros(2, 2, 3, 8), torch.zeros(2, 2, 4, 8))
