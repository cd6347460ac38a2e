"""GGUF's block formats, decoded and encoded from scratch: how the shipped SmolLM2 file stores its weights.

The course's SmolLM2 ships as one GGUF file (llama.cpp's format). Its matrices are cut into blocks of 32
consecutive weights along a row, and each block is stored on its own (little-endian, fp16 floats):

    Q4_1   20 bytes = fp16 d (scale) | fp16 m (minimum) | 16 bytes of 4-bit codes     4 + 1 bits/weight + 4 overhead
           weight = d * q + m, q in 0..15;  byte j holds q_j in its low nibble and q_(j+16) in its high nibble
    Q8_0   34 bytes = fp16 d | 32 int8 codes                                          8 + 0.5 bits/weight
           weight = d * q, q in -127..127

Q4_1 is group-wise zero-point int4 with group 32 whose "zero" is a float minimum; Q8_0 is group-wise absmax
int8 (compare `labkit.compress.quantize`). The encoders reproduce ggml's reference rounding exactly: Q8_0 rounds
x / d half away from zero (C's roundf) using d before it is rounded to fp16; Q4_1 computes q = trunc((x - m) / d
+ 0.5) and clips to 0..15. So the bytes equal llama.cpp's, not only the values.

    read_gguf          parse a GGUF file's header: metadata and each tensor's name, shape, type and raw bytes
    decode_q4_1, encode_q4_1, decode_q8_0, encode_q8_0     the blocks <-> float32 rows
    decode_tensor      any tensor of the file (F32, Q4_1, Q8_0) as a float32 torch tensor, [rows, row length]
    smollm2_state_dict every weight of the shipped file, decoded here, under transformers' names
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BLOCK = 32                                            # weights per block, both formats
BLOCK_BYTES = {"Q4_1": 2 + 2 + BLOCK // 2, "Q8_0": 2 + BLOCK}
GGML_TYPES = {0: "F32", 1: "F16", 3: "Q4_1", 8: "Q8_0"}   # the ones this module reads (ggml.h numbering)
_ELEMENT_BYTES = {"F32": 4, "F16": 2}


# ----------------------------------------------------------------------------------------------------------
# the blocks

def _check_rows(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """raw bytes [..., n_blocks * block_bytes] as [..., n_blocks, block_bytes]."""
    if not isinstance(raw, torch.Tensor) or raw.dtype != torch.uint8:
        raise TypeError(f"{kind} blocks must be a uint8 tensor of raw bytes, got "
                        f"{raw.dtype if isinstance(raw, torch.Tensor) else type(raw).__name__}")
    size = BLOCK_BYTES[kind]
    if raw.ndim == 0 or raw.shape[-1] % size:
        raise ValueError(f"a row of {kind} blocks is a multiple of {size} bytes, got shape {tuple(raw.shape)}")
    return raw.reshape(*raw.shape[:-1], raw.shape[-1] // size, size)


def _fp16(two_bytes: torch.Tensor) -> torch.Tensor:
    """[..., 2] little-endian bytes -> float32 [...]. (.view reinterprets bytes; it needs a contiguous tensor.)"""
    return two_bytes.contiguous().view(torch.float16).squeeze(-1).float()


def decode_q4_1(raw: torch.Tensor) -> torch.Tensor:
    """Q4_1 bytes [..., n_blocks * 20] -> float32 weights [..., n_blocks * 32]."""
    blocks = _check_rows(raw, "Q4_1")
    d, m = _fp16(blocks[..., 0:2]), _fp16(blocks[..., 2:4])
    qs = blocks[..., 4:]                                         # [..., n_blocks, 16]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).float()         # low nibbles are weights 0..15, high 16..31
    # two roundings, d * q then + m, as ggml does (a fused multiply-add would differ in the last bit)
    w = d.unsqueeze(-1) * q
    return (w + m.unsqueeze(-1)).flatten(-2)


def decode_q8_0(raw: torch.Tensor) -> torch.Tensor:
    """Q8_0 bytes [..., n_blocks * 34] -> float32 weights [..., n_blocks * 32]."""
    blocks = _check_rows(raw, "Q8_0")
    d = _fp16(blocks[..., 0:2])
    q = blocks[..., 2:].contiguous().view(torch.int8).float()
    return (d.unsqueeze(-1) * q).flatten(-2)


def _check_weights(w: torch.Tensor) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.dtype != torch.float32:
        raise TypeError(f"weights to encode must be a float32 tensor, got "
                        f"{w.dtype if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.ndim == 0 or w.shape[-1] % BLOCK:
        raise ValueError(f"a row must be a whole number of {BLOCK}-weight blocks, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("weights contain NaN or infinity")
    return w.reshape(*w.shape[:-1], w.shape[-1] // BLOCK, BLOCK)


def _fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).unsqueeze(-1).view(torch.uint8)   # [..., 2], little-endian on every torch CPU


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: to nearest, halves away from zero (torch.round sends halves to even). Written without
    floor(|x| + 0.5), which rounds 0.49999997 up because the sum itself rounds to 1.0 in float32."""
    a = x.abs()
    whole = a.floor()
    return torch.sign(x) * (whole + (2 * (a - whole)).floor())


def encode_q8_0(w: torch.Tensor) -> torch.Tensor:
    """float32 weights [..., k * 32] -> Q8_0 bytes [..., k * 34], byte for byte ggml's quantize_row_q8_0."""
    blocks = _check_weights(w)
    d = blocks.abs().amax(-1) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = _roundf(blocks * inv.unsqueeze(-1)).to(torch.int8).view(torch.uint8)
    return torch.cat([_fp16_bytes(d), q], dim=-1).flatten(-2)


def encode_q4_1(w: torch.Tensor) -> torch.Tensor:
    """float32 weights [..., k * 32] -> Q4_1 bytes [..., k * 20], byte for byte gguf's Q4_1 quantizer."""
    blocks = _check_weights(w)
    lo, hi = blocks.amin(-1), blocks.amax(-1)
    d = (hi - lo) / 15
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.trunc((blocks - lo.unsqueeze(-1)) * inv.unsqueeze(-1) + 0.5).clamp(0, 15).to(torch.uint8)
    packed = q[..., :BLOCK // 2] | (q[..., BLOCK // 2:] << 4)
    return torch.cat([_fp16_bytes(d), _fp16_bytes(lo), packed], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------------------------------------
# the file

@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]   # ggml order: shape[0] is the row length (a torch [out, in] weight is (in, out))
    kind: str                # "F32", "F16", "Q4_1", "Q8_0"
    raw: torch.Tensor        # uint8 bytes [rows, bytes per row]

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class _Reader:
    def __init__(self, data: memoryview):
        self.data, self.pos = data, 0

    def scalar(self, fmt: str):
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos]).decode("utf-8")

    def value(self, kind: int):
        if kind == 8:
            return self.string()
        if kind == 9:                                   # array: element type, count, elements
            elem, n = self.scalar("<I"), self.scalar("<Q")
            return [self.value(elem) for _ in range(n)]
        return self.scalar(_SCALARS[kind])


def read_gguf(path: Path | str) -> tuple[dict, dict[str, GGUFTensor]]:
    """(metadata, tensors by name) of a GGUF v2/v3 file. Tensor bytes are memory-mapped, not copied.

    Layout: b"GGUF", version (u32), tensor count (u64), metadata count (u64); metadata as (key, type, value);
    per tensor its name, number of dims, dims (u64 each, ggml order), type (u32) and offset (u64); then, at the
    next multiple of `general.alignment` (32 by default), the tensors' data."""
    path = Path(path)
    array = np.memmap(path, dtype=np.uint8, mode="c")   # copy-on-write: writable for torch, file untouched
    r = _Reader(memoryview(array))
    if bytes(r.data[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (it starts with {bytes(r.data[:4])!r}, not b'GGUF')")
    r.pos = 4
    version, n_tensors, n_kv = r.scalar("<I"), r.scalar("<Q"), r.scalar("<Q")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        shape = tuple(r.scalar("<Q") for _ in range(r.scalar("<I")))
        infos.append((name, shape, r.scalar("<I"), r.scalar("<Q")))
    align = meta.get("general.alignment", 32)
    start = -(-r.pos // align) * align
    tensors = {}
    for name, shape, kind_id, offset in infos:
        if kind_id not in GGML_TYPES:
            raise ValueError(f"tensor {name!r} has ggml type {kind_id}, which this module does not read "
                             f"(it reads {sorted(GGML_TYPES.values())})")
        kind = GGML_TYPES[kind_id]
        row = shape[0] // BLOCK * BLOCK_BYTES[kind] if kind in BLOCK_BYTES else shape[0] * _ELEMENT_BYTES[kind]
        n_rows = int(np.prod(shape[1:], dtype=np.int64))
        raw = torch.from_numpy(np.asarray(array[start + offset:start + offset + row * n_rows])).reshape(n_rows, row)
        tensors[name] = GGUFTensor(name, shape, kind, raw)
    return meta, tensors


def decode_tensor(t: GGUFTensor) -> torch.Tensor:
    """A file tensor as float32 [rows, row length] (a 1-D tensor stays 1-D), as the file stores it."""
    if t.kind == "Q4_1":
        w = decode_q4_1(t.raw)
    elif t.kind == "Q8_0":
        w = decode_q8_0(t.raw)
    else:
        w = t.raw.contiguous().view(torch.float32 if t.kind == "F32" else torch.float16).float()
    return w.reshape(-1) if len(t.shape) == 1 else w


# GGUF's names -> transformers' (blk.N.<gguf> -> model.layers.N.<hf>)
_LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k rows: within each head it stores the rotary pairs as (even, odd)
    halves interleaved, where transformers' rotate-half RoPE wants the two halves of the head apart."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def smollm2_state_dict(path: Path | str | None = None) -> dict[str, torch.Tensor]:
    """Every weight of the shipped SmolLM2 GGUF, decoded by this module, under transformers' names (the state
    dict `labkit.llama.Llama.load_hf_state_dict` takes). Default path: `labkit.models.smollm2_gguf()`."""
    from ..models import smollm2_gguf

    meta, tensors = read_gguf(path if path is not None else smollm2_gguf())
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    out = {}
    for name, t in tensors.items():
        w = decode_tensor(t)
        base = name.removesuffix(".weight")
        if base == "token_embd":
            out["model.embed_tokens.weight"] = w
        elif base == "output_norm":
            out["model.norm.weight"] = w
        elif base == "output":
            out["lm_head.weight"] = w
        else:
            _, layer, part = base.split(".")
            if part in ("attn_q", "attn_k"):
                w = _unpermute(w, heads if part == "attn_q" else kv_heads)
            out[f"model.layers.{layer}.{_LAYER_NAMES[part]}.weight"] = w
    return out
