"""labkit.compress.gguf_blocks: the shipped file's Q4_1 and Q8_0 blocks decoded bit for bit as the `gguf`
package decodes them (a test-time oracle), and encoded byte for byte as it (and llama.cpp) encodes them."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf")
from labkit.compress.gguf_blocks import (BLOCK_BYTES, decode_q4_1, decode_q8_0, decode_tensor,  # noqa: E402
                                         encode_q4_1, encode_q8_0, read_gguf, smollm2_state_dict)
from labkit.models import ModelPackageMissing, smollm2_dir, smollm2_gguf  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def shipped():
    try:
        path = smollm2_gguf()
    except ModelPackageMissing as e:
        pytest.skip(str(e))
    return path, read_gguf(path), gguf.GGUFReader(path)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_header_matches_gguf_reader(shipped):
    _, (meta, ours), theirs = shipped
    assert list(ours) == [t.name for t in theirs.tensors]
    kinds = {}
    for t in theirs.tensors:
        mine = ours[t.name]
        assert mine.kind == t.tensor_type.name and mine.shape == tuple(int(n) for n in t.shape)
        assert np.array_equal(mine.raw.numpy().reshape(-1), t.data.reshape(-1).view(np.uint8))
        kinds[mine.kind] = kinds.get(mine.kind, 0) + 1
    assert kinds == {"Q4_1": 210, "Q8_0": 1, "F32": 61}          # 7 matrices x 30 layers; the embedding; norms
    assert meta["general.architecture"] == "llama" and meta["llama.attention.head_count"] == 9
    field = theirs.fields["llama.block_count"]
    assert meta["llama.block_count"] == int(field.parts[field.data[0]][0])


def test_every_tensor_decodes_bit_exactly(shipped):
    _, (_, ours), theirs = shipped
    for t in theirs.tensors:
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        got = decode_tensor(ours[t.name]).numpy()
        assert got.shape == expected.shape, t.name
        assert np.array_equal(bits(got), bits(expected)), f"{t.name} ({t.tensor_type.name}) differs"


def test_state_dict_is_the_course_model(shipped):
    """The fp32 SmolLM2 every chapter uses (dequantised by transformers) is exactly this module's decode."""
    from safetensors.torch import load_file

    path, _, _ = shipped
    ours = smollm2_state_dict(path)
    reference = load_file(smollm2_dir() / "model.safetensors")
    assert sorted(ours) == sorted(reference)
    for name, w in reference.items():
        assert torch.equal(ours[name], w), name


def weights(rows=8, blocks=4, seed=0, scale=0.02) -> torch.Tensor:
    w = torch.randn(rows, blocks * 32, generator=torch.Generator().manual_seed(seed)) * scale
    w[0, :32] = 0.0                 # an all-zero block: d = 0
    w[1, 32:64] = 0.25              # a constant block
    w[2, 5] = 3.0                   # an outlier
    return w


def test_encoders_match_gguf_bytes():
    w = weights()
    for enc, kind in ((encode_q8_0, Q.Q8_0), (encode_q4_1, Q.Q4_1)):
        assert np.array_equal(enc(w).numpy(), gguf.quants.quantize(w.numpy(), kind)), kind.name


def test_q8_0_rounds_halves_away_from_zero():
    w = torch.zeros(1, 32)
    w[0, :6] = torch.tensor([127.0, 2.5, -2.5, 3.5, 0.49999997, -0.5])   # d = 1: codes are the values rounded
    raw = encode_q8_0(w)
    assert raw[0, 2:8].view(torch.int8).tolist() == [127, 3, -3, 4, 0, -1]
    assert np.array_equal(raw.numpy(), gguf.quants.quantize(w.numpy(), Q.Q8_0))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 0.05, 2.0, 300.0]))
def test_roundtrip_against_gguf(seed, scale):
    w = weights(4, 3, seed, scale)
    for enc, dec, kind in ((encode_q8_0, decode_q8_0, Q.Q8_0), (encode_q4_1, decode_q4_1, Q.Q4_1)):
        raw = enc(w)
        assert np.array_equal(raw.numpy(), gguf.quants.quantize(w.numpy(), kind))
        ours = dec(raw)
        assert np.array_equal(bits(ours.numpy()), bits(gguf.quants.dequantize(raw.numpy(), kind)))
        # every weight within about half a step of its block (plus the fp16 rounding of d and m)
        blocks, back = w.reshape(-1, 32), ours.reshape(-1, 32)
        step = (blocks.amax(1) - blocks.amin(1)) / 15 if kind == Q.Q4_1 else blocks.abs().amax(1) / 127
        assert bool(((back - blocks).abs() <= step[:, None] * 0.51 + blocks.abs().amax(1)[:, None] * 2e-3).all())


def test_layouts():
    """Q4_1: [d | m | 16 bytes], byte j = q_j (low nibble) + 16 q_(j+16); Q8_0: [d | 32 int8]."""
    raw = torch.zeros(1, BLOCK_BYTES["Q4_1"], dtype=torch.uint8)
    raw[0, 0:2] = torch.tensor([1.0], dtype=torch.float16).view(torch.uint8)    # d = 1
    raw[0, 2:4] = torch.tensor([-8.0], dtype=torch.float16).view(torch.uint8)   # m = -8
    raw[0, 4] = 0x3A                                                            # q_0 = 10, q_16 = 3
    w = decode_q4_1(raw)[0]
    assert w[0] == 2 and w[16] == -5 and bool((w[1:16] == -8).all()) and bool((w[17:] == -8).all())
    raw8 = torch.zeros(1, BLOCK_BYTES["Q8_0"], dtype=torch.uint8)
    raw8[0, 0:2] = torch.tensor([0.5], dtype=torch.float16).view(torch.uint8)
    raw8[0, 2:4] = torch.tensor([-3, 7], dtype=torch.int8).view(torch.uint8)
    assert decode_q8_0(raw8)[0, :3].tolist() == [-1.5, 3.5, 0.0]


def test_errors(tmp_path):
    with pytest.raises(TypeError, match="uint8 tensor of raw bytes, got torch.float32"):
        decode_q4_1(torch.zeros(1, 20))
    with pytest.raises(ValueError, match="multiple of 34 bytes, got shape"):
        decode_q8_0(torch.zeros(1, 20, dtype=torch.uint8))
    with pytest.raises(TypeError, match="float32 tensor, got torch.float64"):
        encode_q8_0(torch.zeros(1, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="whole number of 32-weight blocks, got shape"):
        encode_q4_1(torch.zeros(2, 48))
    with pytest.raises(ValueError, match="NaN or infinity"):
        encode_q4_1(torch.full((1, 32), float("inf")))
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf(bad)
