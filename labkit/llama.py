"""A Llama-architecture decoder in one readable file: labkit's own SmolLM2-135M.

    LlamaConfig            the numbers that define the network, read from a transformers config.json
    LlamaAttention         grouped-query attention: 9 query heads read 3 key/value heads, RoPE on q and k
    LlamaBlock             pre-norm block: h = x + attn(RMSNorm(x)), out = h + SwiGLU(RMSNorm(h))
    Llama                  token embedding -> n_layers blocks -> final RMSNorm -> tied output head
    Llama.from_pretrained  SmolLM2-135M-Instruct's weights from `labkit.models.smollm2_dir()`
    count_params           parameters per component, to check against LlamaConfig.param_counts()

The parts are chapter 3's: `labkit.attention` (scaled_dot_product_attention, repeat_kv and the projections of
MultiHeadAttention), `labkit.rope` (Llama's rotate-half RoPE) and `labkit.transformer` (RMSNorm, SwiGLU). This
module wires them the way Llama does, with transformers' parameter names, so its logits equal transformers'
`LlamaForCausalLM` for the same weights. Attention is spelled out here on purpose, along the readable path
(rotate, repeat the key/value heads, attend): it is where chapter 5 inserts its KV-cache, and where the lab
plugs in a student's `repeat_kv`. Without a cache `forward` recomputes every position. Its `cache` argument is
the seam chapter 5 uses: any object with `update(layer, k, v)`, `advance(n)` and `seen` (this module imports no
cache: `labkit.kvcache` builds on this one, not the other way round).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .attention import MultiHeadAttention, repeat_kv, scaled_dot_product_attention
from .rope import apply_rope, rope_cos_sin, rope_inv_freq
from .transformer import RMSNorm, SwiGLU


# ----------------------------------------------------------------------------------------------------------
# configuration

@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama model. The defaults are SmolLM2-135M's."""
    vocab_size: int = 49152
    dim: int = 576               # width of the residual stream (transformers: hidden_size)
    n_layers: int = 30
    n_heads: int = 9             # query heads
    n_kv_heads: int = 3          # key/value heads; n_heads // n_kv_heads query heads share each one
    hidden_dim: int = 1536       # the MLP's inner width (transformers: intermediate_size)
    rope_theta: float = 100_000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 8192      # positions seen in training (transformers: max_position_embeddings)
    tie_embeddings: bool = True  # the output head reuses the token embedding matrix

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be an int >= 1, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}): "
                             "each key/value head serves the same number of query heads")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim ({self.dim}) must split into n_heads ({self.n_heads}) heads of even size "
                             "(RoPE rotates pairs of dimensions)")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise ValueError(f"rope_theta and norm_eps must be > 0, got {self.rope_theta} and {self.norm_eps}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: the heads split the model width."""
        return self.dim // self.n_heads

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_dict(cls, hf: Mapping) -> LlamaConfig:
        """From a transformers Llama config (the dict in config.json). Refuses variants this file doesn't build."""
        if hf.get("model_type", "llama") != "llama":
            raise ValueError(f"expected a Llama config (model_type 'llama'), got model_type={hf.get('model_type')!r}")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"labkit's Llama uses SwiGLU with SiLU, the config asks for {hf['hidden_act']!r}")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ValueError("labkit's Llama has no biases, but the config sets attention_bias or mlp_bias")
        # transformers 5 keeps RoPE settings in `rope_parameters`; 4.x had `rope_theta` and `rope_scaling`.
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"labkit implements plain RoPE; this config uses rope_type={rope.get('rope_type')!r}")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
        try:
            dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
            if hf.get("head_dim") not in (None, dim // n_heads):
                raise ValueError(f"labkit's attention uses head_dim = hidden_size // num_attention_heads = "
                                 f"{dim // n_heads}; this config has head_dim={hf['head_dim']}")
            return cls(vocab_size=hf["vocab_size"], dim=dim, n_layers=hf["num_hidden_layers"],
                       n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                       hidden_dim=hf["intermediate_size"], rope_theta=float(theta),
                       norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                       max_seq_len=hf.get("max_position_embeddings", 2048),
                       tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
        except KeyError as e:
            raise ValueError(f"the config has no {e.args[0]!r} entry, which a Llama config needs") from None

    @classmethod
    def from_json(cls, path: Path | str) -> LlamaConfig:
        """From a config.json file, or a folder that contains one."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        return cls.from_dict(json.loads(path.read_text()))

    def param_counts(self) -> dict[str, int]:
        """Parameters per component, from the formula. A tied output head costs nothing extra."""
        d, L, hd = self.dim, self.n_layers, self.head_dim
        return {
            "embeddings": self.vocab_size * d,
            "attention q": L * d * self.n_heads * hd,
            "attention k": L * d * self.n_kv_heads * hd,
            "attention v": L * d * self.n_kv_heads * hd,
            "attention o": L * self.n_heads * hd * d,
            "mlp": L * 3 * d * self.hidden_dim,  # gate, up: d -> hidden; down: hidden -> d
            "norms": (2 * L + 1) * d,            # two per block, one at the end
            "output head": 0 if self.tie_embeddings else self.vocab_size * d,
        }


# ----------------------------------------------------------------------------------------------------------
# the network

class LlamaAttention(MultiHeadAttention):
    """Chapter 3's attention module (its projections q_proj, k_proj, v_proj, o_proj and their checks), with
    the forward pass written out: causal, grouped-query, RoPE on queries and keys.

    `cache` (chapter 5) is any object with `update(layer, k, v) -> (k_all, v_all)`: it stores this step's
    rotated keys and values and hands back every key and value the new queries may read, oldest first.
    `mask` (bool [Tq, Tk], True = may attend) replaces the causal mask, e.g. for a sliding window."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        # [B, T, heads * head_dim] -> [B, heads, T, head_dim]: 9 query heads, but only 3 key/value heads
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # position enters through q and k only
        if cache is not None:  # chapter 5: store the new k, v; attend over the past ones too
            k, v = cache.update(layer, k, v)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # query head h reads key/value head h // n_rep
        # the new queries are the last T positions of the keys: causal_mask offsets the diagonal by Tk - T
        y = scaled_dot_product_attention(q, k, v, causal=mask is None, mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class LlamaBlock(nn.Module):
    """One pre-norm block, named as transformers names Llama's layers."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg.dim, cfg.n_heads, cfg.n_kv_heads)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, mask)  # tokens exchange information
        return h + self.mlp(self.post_attention_layernorm(h))       # each token on its own


class Llama(nn.Module):
    """A Llama decoder: ids [B, T] -> next-token logits [B, T, vocab_size] (float32)."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"cfg must be a LlamaConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Tied: the head is embed_tokens.weight itself (used in forward), so it is one parameter, counted once.
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position. `positions` [T] are the absolute positions of the T tokens, for RoPE:
        by default 0..T-1, or, with a `cache`, the T positions after the `cache.seen` tokens it has already
        seen. `cache` (chapter 5, e.g. `labkit.kvcache.KVCache`) keeps the keys and values of earlier calls,
        so a call can feed only the new tokens; `cache.advance(T)` is called once every layer has stored them.
        `mask` (bool [T, T_keys], True = may attend) replaces the causal mask."""
        ids = self._check_ids(ids)
        T = ids.shape[1]
        if positions is None:
            start = cache.seen if cache is not None else 0
            positions = torch.arange(start, start + T, device=ids.device)
        positions = self._check_positions(positions, T)
        cos, sin = rope_cos_sin(positions, rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta))
        x = self.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, mask)
        if cache is not None:
            cache.advance(T)
        x = self.norm(x)
        logits = F.linear(x, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(x)
        return logits.float()

    def _check_ids(self, ids: object) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be a torch.Tensor of token ids [B, T], got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must hold integer token ids (int64), got dtype {ids.dtype}")
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"ids must have shape [batch, time] with time >= 1, got shape {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}), "
                             f"got values in [{int(ids.min())}, {int(ids.max())}]")
        return ids

    def _check_positions(self, positions: object, T: int) -> torch.Tensor:
        if not isinstance(positions, torch.Tensor) or positions.dtype not in (torch.int64, torch.int32):
            raise TypeError("positions must be an integer torch.Tensor [T]")
        if positions.shape != (T,):
            raise ValueError(f"positions must have shape [T] = [{T}], got {tuple(positions.shape)}")
        if positions.min() < 0 or positions.max() >= self.cfg.max_seq_len:
            raise ValueError(f"positions must lie in [0, {self.cfg.max_seq_len}) (the trained context), "
                             f"got values in [{int(positions.min())}, {int(positions.max())}]")
        return positions

    # ------------------------------------------------------------------------------------------------------
    # weights

    def load_hf_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Load weights named the transformers way. Every tensor must be used and every parameter filled,
        with matching shapes; otherwise ValueError lists what is wrong. Values are stored as float32."""
        own = self.state_dict()
        renamed, unused, wrong_shape = {}, [], {}
        for hf_name, tensor in tensors.items():
            name = hf_name.removeprefix("model.")  # transformers wraps the decoder in a `model` submodule
            if name == "lm_head.weight" and self.lm_head is None:
                # a tied checkpoint may store the head anyway: then it must be the embedding matrix
                embed = tensors.get("model.embed_tokens.weight")
                if embed is None or not torch.equal(tensor, embed):
                    raise ValueError("the config ties the output head to the embedding, but the checkpoint's "
                                     "lm_head.weight differs from model.embed_tokens.weight")
                continue
            if name not in own:
                unused.append(hf_name)
            elif tuple(tensor.shape) != tuple(own[name].shape):
                wrong_shape[name] = f"{hf_name}: checkpoint {tuple(tensor.shape)}, model {tuple(own[name].shape)}"
            else:
                renamed[name] = tensor
        missing = sorted(set(own) - set(renamed) - set(wrong_shape))
        problems = []
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} shape mismatch(es), e.g. " + "; ".join(list(wrong_shape.values())[:3]))
        if unused:
            problems.append(f"{len(unused)} checkpoint tensor(s) the model has no place for, e.g. {unused[:3]}")
        if missing:
            problems.append(f"{len(missing)} model parameter(s) missing from the checkpoint, e.g. {missing[:3]}")
        if problems:
            raise ValueError("cannot load these weights: " + "; ".join(problems))
        # A model built on the meta device has no storage yet: adopt the tensors. Otherwise copy into it.
        on_meta = any(p.is_meta for p in self.parameters())
        self.load_state_dict({k: v.to(torch.float32) for k, v in renamed.items()}, strict=True, assign=on_meta)

    @classmethod
    def from_pretrained(cls, folder: Path | str | None = None) -> Llama:
        """The model in a transformers folder (config.json + model.safetensors), in eval mode.
        Default: SmolLM2-135M-Instruct from `labkit.models.smollm2_dir()`."""
        from safetensors.torch import load_file

        from .models import smollm2_dir

        folder = Path(folder) if folder is not None else smollm2_dir()
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"no model.safetensors in {folder}")
        cfg = LlamaConfig.from_json(folder / "config.json")
        with torch.device("meta"):  # no memory, no random init: load_hf_state_dict assigns every tensor
            model = cls(cfg)
        model.load_hf_state_dict(load_file(weights))
        return model.eval()


# ----------------------------------------------------------------------------------------------------------
# counting parameters

_COMPONENTS = {"embed_tokens": "embeddings", "q_proj": "attention q", "k_proj": "attention k",
               "v_proj": "attention v", "o_proj": "attention o", "mlp": "mlp", "input_layernorm": "norms",
               "post_attention_layernorm": "norms", "norm": "norms", "lm_head": "output head"}


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters of a labkit Llama per component (same keys as `LlamaConfig.param_counts`).

    A tied output head is embed_tokens.weight itself, not a parameter of its own, so it is counted once."""
    counts = dict.fromkeys(LlamaConfig().param_counts(), 0)
    for name, p in model.named_parameters():
        part = next((_COMPONENTS[x] for x in name.split(".") if x in _COMPONENTS), None)
        if part is None:
            raise ValueError(f"parameter {name!r} belongs to no known component")
        counts[part] += p.numel()
    return counts
