"""Saved runs (labkit.course.saved): save/load round trip, clear errors, and every committed record is fresh —
its live slice still reproduces it, and no commit since it was saved has touched the code it measures."""
import subprocess

import pytest
import torch

from labkit import corpus, transformer
from labkit.course import saved
from labkit.course.manifest import ROOT


def test_save_and_load_round_trip(tmp_path, monkeypatch):
    monkeypatch.setitem(saved.RUNS, "toy", lambda: ({"seed": 0, "loss": [1.5, 1.25]},
                                                    {"model.weight": torch.arange(6.0).reshape(2, 3)}))
    saved.save("toy", results=tmp_path)
    run = saved.load("toy", results=tmp_path)
    assert run.record == {"seed": 0, "loss": [1.5, 1.25]}
    assert torch.equal(run.state_dict("model")["weight"], torch.arange(6.0).reshape(2, 3))
    assert {"cpu", "revision", "seconds", "date", "torch"} <= set(run.meta)
    with pytest.raises(KeyError, match="has no tensors under 'other'; it has \\['model'\\]"):
        run.state_dict("other")


def test_missing_and_unknown_runs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m labkit.course save 03-tiny-gpt"):
        saved.load("03-tiny-gpt", results=tmp_path)
    with pytest.raises(KeyError, match="no saved run named 'nope'"):
        saved.save("nope", results=tmp_path)


@pytest.mark.parametrize("name", sorted(saved.RUNS))
def test_saved_record_is_not_older_than_the_code_it_measures(name):
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    if shallow != "false":
        pytest.skip(f"needs the git history (a full clone); this checkout says is-shallow={shallow!r}")
    run = saved.load(name)
    revision = run.meta["revision"]
    assert "+" not in revision, f"{name} was saved from uncommitted code ({revision}): save it again after committing"
    files = saved.MEASURES[name]
    last = subprocess.run(["git", "log", "-1", "--format=%H", "--", *files], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    fresh = subprocess.run(["git", "merge-base", "--is-ancestor", last, revision], cwd=ROOT).returncode == 0
    assert fresh, (f"{name} was saved at {revision}, before commit {last[:7]} changed {', '.join(files)}: "
                   f"run `python -m labkit.course save {name}` again")


def test_tiny_gpt_live_slice_reproduces_the_saved_losses():
    run = saved.load("03-tiny-gpt")
    text = corpus.load_corpus()
    vocab = corpus.Vocab.build(corpus.char_tokens(text.train))
    train_ids = vocab.encode(corpus.char_tokens(text.train))
    torch.manual_seed(run.record["seed"])
    gpt = transformer.TinyGPT(transformer.GPTConfig(vocab_size=len(vocab), **run.record["gpt_config"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(run.record["torch_threads"])
    try:
        live = transformer.train_gpt(gpt, train_ids, transformer.TrainConfig(**run.record["train_config"]),
                                     stop_after=10)
    finally:
        torch.set_num_threads(threads)
    assert max(abs(a - b) for a, b in zip(live["loss"], run.record["loss"])) < 1e-3
    gpt.load_state_dict(run.state_dict("gpt"))  # the saved weights fit the model the record describes


def test_stop_after_is_checked():
    gpt = transformer.TinyGPT(transformer.GPTConfig(vocab_size=5, context=4, d_model=8, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match="stop_after must be an int in 1..3"):
        transformer.train_gpt(gpt, list(range(5)) * 4, transformer.TrainConfig(steps=3, batch_size=2), stop_after=4)
