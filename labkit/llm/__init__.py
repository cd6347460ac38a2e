"""One LLM interface for chapters 10-13 (`base`), with two backends: `local` (labkit's Llama and chapter 5's
KV-cache; the default) and `http` (an OpenAI-compatible server for a bigger model)."""
from __future__ import annotations

import os

from .base import LLM, Completion, Constraint, Message, Usage


def connect(url: str | None = None, model: str | None = None) -> LLM:
    """The model every chapter-10-13 experiment runs on: the local SmolLM2 unless a server is named, here or in
    the environment (LABKIT_LLM_URL, e.g. http://127.0.0.1:8000/v1, and LABKIT_LLM_MODEL, the model's name)."""
    url = url or os.environ.get("LABKIT_LLM_URL")
    if url:
        from .http import HttpLLM
        return HttpLLM(url, model=model or os.environ.get("LABKIT_LLM_MODEL", ""))
    from .local import LocalLLM
    return LocalLLM.smollm2()


__all__ = ["LLM", "Completion", "Constraint", "Message", "Usage", "connect"]
