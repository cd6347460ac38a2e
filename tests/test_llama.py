"""labkit.llama: config, weight loading, parameter counts, and logits equal to transformers' Llama."""
import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from labkit.attention import scaled_dot_product_attention
from labkit.llama import Llama, LlamaConfig, count_params
from labkit.models import load_smollm2, smollm2_dir
from labkit.rope import rope_cos_sin, rope_inv_freq

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return",
           "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n",
           "Once upon a time, " * 12]


@pytest.fixture(scope="module")
def smollm2():
    tokenizer, hf = load_smollm2()
    return tokenizer, hf, Llama.from_pretrained()


def tiny_hf(n_heads=4, n_kv_heads=2, tie=True, seed=0, **extra):
    """A small random transformers Llama (eager attention, so the comparison is exact up to float32)."""
    torch.manual_seed(seed)
    cfg = HFLlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=64,
                        rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=tie, **extra)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # RMSNorm gains start at 1: perturb them, or a wrong norm could hide
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def labkit_from(hf_model) -> Llama:
    model = Llama(LlamaConfig.from_dict(hf_model.config.to_dict()))
    model.load_hf_state_dict(hf_model.state_dict())
    return model.eval()


# ------------------------------------------------------------------------------------------------ the real model

def test_config_is_smollm2s():
    cfg = LlamaConfig.from_json(smollm2_dir())
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim) == \
        (49152, 576, 30, 9, 3, 64, 1536)
    assert cfg.rope_theta == 1e5 and cfg.tie_embeddings and cfg.n_rep == 3
    assert cfg.norm_eps == pytest.approx(1e-5)
    assert LlamaConfig.from_json(smollm2_dir() / "config.json") == cfg


@pytest.mark.slow  # loads SmolLM2
@torch.no_grad()
def test_logits_equal_transformers(smollm2):
    tokenizer, hf, model = smollm2
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        ours, theirs = model(ids), hf(ids).logits
        assert ours.dtype == torch.float32 and ours.shape == theirs.shape == (1, ids.shape[1], 49152)
        assert (ours - theirs).abs().max() <= 1e-4, prompt


@pytest.mark.slow  # loads SmolLM2
@torch.no_grad()
def test_batched_rows_equal_single_rows(smollm2):
    tokenizer, _, model = smollm2
    ids = torch.stack([tokenizer(p, return_tensors="pt").input_ids[0, :5] for p in PROMPTS[:3]])
    batched = model(ids)
    for row in range(3):
        assert torch.allclose(batched[row], model(ids[row:row + 1])[0], atol=1e-4)


@pytest.mark.slow  # loads SmolLM2
def test_parameter_counts(smollm2):
    _, hf, model = smollm2
    counts = count_params(model)
    assert counts == model.cfg.param_counts()
    assert sum(counts.values()) == sum(p.numel() for p in hf.parameters()) == 134_515_008
    assert counts["output head"] == 0 and counts["embeddings"] == 49152 * 576


# ------------------------------------------------------------------------------------------------ small random models

@pytest.mark.parametrize("n_heads, n_kv_heads, tie", [(4, 2, True), (4, 4, False), (4, 1, True), (2, 2, True)])
@torch.no_grad()
def test_small_random_llamas_match_transformers(n_heads, n_kv_heads, tie):
    hf = tiny_hf(n_heads, n_kv_heads, tie, attn_implementation="eager")
    model = labkit_from(hf)
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5, rtol=0)
    assert count_params(model) == model.cfg.param_counts()
    assert sum(count_params(model).values()) == sum(p.numel() for p in hf.parameters())
    assert (count_params(model)["output head"] == 0) == tie


@torch.no_grad()
def test_gqa_with_as_many_kv_heads_is_plain_multi_head_attention():
    # The model's attention path with n_kv_heads == n_heads, against per-head attention written out with
    # torch's own softmax attention: no head repetition can hide in either.
    model = labkit_from(tiny_hf(4, 4))
    attn = model.layers[0].self_attn
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    cos, sin = rope_cos_sin(torch.arange(7), rope_inv_freq(8, 500.0))
    got = attn(x, cos, sin)
    rot = lambda t: t * cos + torch.cat([-t[..., 4:], t[..., :4]], -1) * sin  # noqa: E731
    heads = []
    for h in range(4):
        sl = slice(8 * h, 8 * h + 8)
        q, k, v = (x @ w.weight[sl].T for w in (attn.q_proj, attn.k_proj, attn.v_proj))
        heads.append(torch.nn.functional.scaled_dot_product_attention(rot(q), rot(k), v, is_causal=True))
    want = attn.o_proj(torch.cat(heads, -1))
    assert torch.allclose(got, want, atol=1e-6)


@torch.no_grad()
def test_gqa_shares_each_kv_head_among_consecutive_query_heads():
    # With 4 query heads and 2 kv heads, query heads 0,1 read kv head 0 and heads 2,3 read kv head 1.
    model = labkit_from(tiny_hf(4, 2))
    attn = model.layers[0].self_attn
    with torch.no_grad():
        attn.v_proj.weight[8:].zero_()  # kv head 1 hands over zeros
    x = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    cos, sin = torch.ones(5, 8), torch.zeros(5, 8)  # no rotation
    q = attn.q_proj(x).view(1, 5, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(1, 5, 2, 8).transpose(1, 2)
    v = attn.v_proj(x).view(1, 5, 2, 8).transpose(1, 2)
    out = torch.stack([scaled_dot_product_attention(q[:, h], k[:, h // 2], v[:, h // 2], causal=True)
                       for h in range(4)], 1)
    assert out[:, 2:].abs().max() == 0 and out[:, :2].abs().max() > 0
    got = attn(x, cos, sin)
    assert torch.allclose(got, attn.o_proj(out.transpose(1, 2).reshape(1, 5, 32)), atol=1e-6)


@torch.no_grad()
def test_positions_argument_is_the_default_and_shifts_rope():
    model = labkit_from(tiny_hf())
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(4))
    assert torch.equal(model(ids), model(ids, positions=torch.arange(6)))
    shifted = model(ids, positions=torch.arange(10, 16))
    # RoPE depends only on offsets: shifting every position leaves the logits (nearly) unchanged...
    assert torch.allclose(shifted, model(ids), atol=1e-4)
    # ...while a different spacing changes them
    assert not torch.allclose(model(ids, positions=torch.arange(0, 12, 2)), model(ids), atol=1e-3)


def test_from_pretrained_reads_a_folder(tmp_path):
    hf = tiny_hf(tie=False)
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
    model = Llama.from_pretrained(tmp_path)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.allclose(model(ids), labkit_from(hf)(ids), atol=0)
    assert not any(p.is_meta for p in model.parameters()) and not model.training


# ------------------------------------------------------------------------------------------------ clear errors

def test_loading_reports_missing_unused_and_misshapen_tensors():
    hf = tiny_hf()
    tensors = dict(hf.state_dict())
    model = Llama(LlamaConfig.from_dict(hf.config.to_dict()))
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(ValueError, match=r"1 model parameter\(s\) missing .*layers\.1\.mlp\.up_proj\.weight"):
        model.load_hf_state_dict(missing)
    with pytest.raises(ValueError, match=r"1 checkpoint tensor\(s\) the model has no place for.*rotary"):
        model.load_hf_state_dict({**tensors, "model.rotary_emb.extra": torch.zeros(3)})
    bad = {**tensors, "model.layers.0.self_attn.k_proj.weight": torch.zeros(32, 32)}
    with pytest.raises(ValueError, match=r"shape mismatch.*k_proj.weight: checkpoint \(32, 32\), model \(16, 32\)"):
        model.load_hf_state_dict(bad)
    untied_head = {**tensors, "lm_head.weight": torch.zeros(97, 32)}
    with pytest.raises(ValueError, match="ties the output head"):
        model.load_hf_state_dict(untied_head)


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        LlamaConfig(n_heads=9, n_kv_heads=2)
    with pytest.raises(ValueError, match="heads of even size"):
        LlamaConfig(dim=576, n_heads=5, n_kv_heads=5)
    with pytest.raises(ValueError, match="n_layers must be an int >= 1"):
        LlamaConfig(n_layers=0)
    hf = json.loads((smollm2_dir() / "config.json").read_text())
    with pytest.raises(ValueError, match="plain RoPE"):
        LlamaConfig.from_dict({**hf, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
    with pytest.raises(ValueError, match="model_type 'llama'"):
        LlamaConfig.from_dict({**hf, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="no biases"):
        LlamaConfig.from_dict({**hf, "attention_bias": True})
    with pytest.raises(ValueError, match="head_dim"):
        LlamaConfig.from_dict({**hf, "head_dim": 32})
    with pytest.raises(ValueError, match="'vocab_size' entry"):
        LlamaConfig.from_dict({k: v for k, v in hf.items() if k != "vocab_size"})
    with pytest.raises(FileNotFoundError):
        LlamaConfig.from_json("/nonexistent/config.json")
    # transformers 4.x kept rope_theta at the top level
    legacy = {k: v for k, v in hf.items() if k != "rope_parameters"} | {"rope_theta": 1e5}
    assert LlamaConfig.from_dict(legacy) == LlamaConfig.from_dict(hf)


def test_forward_errors():
    model = labkit_from(tiny_hf())
    with pytest.raises(ValueError, match=r"ids must have shape \[batch, time\]"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 97\), got values in \[0, 97\]"):
        model(torch.tensor([[0, 97]]))
    with pytest.raises(ValueError, match=r"positions must have shape \[T\] = \[2\]"):
        model(torch.tensor([[0, 1]]), positions=torch.arange(3))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 64\)"):
        model(torch.tensor([[0, 1]]), positions=torch.tensor([63, 64]))
    with pytest.raises(TypeError, match="LlamaConfig"):
        Llama({"dim": 3})
