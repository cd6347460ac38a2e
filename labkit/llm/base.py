"""One interface to a language model, whichever program runs it (chapters 10-13 use nothing else).

A chapter-10 experiment asks a model for three things, and every backend answers the same three calls:

    generate(prompt, ...)            text: greedy or sampled (temperature, top-k, top-p), stop strings,
                                     a token limit, n samples, a seed; optionally constrained token by token
    logprobs(prompt, continuations)  sum of log p(continuation tokens | prompt), natural log, one per continuation
    chat(messages, ...)              generate() on a list of chat messages, formatted by the model's own template

A prompt is either a plain string (fed to the model as it is) or a list of chat messages ({"role", "content"}
dicts or `Message`s), which the backend formats with the model's chat template and ends with the assistant's
turn. Every backend counts what it spends in `usage` (calls, prompt and generated tokens), so a search
(chapter 11) or an agent (chapter 13) can report its cost.

Backends: `labkit.llm.local.LocalLLM` (labkit's Llama with chapter 5's KV-cache, the default, no server) and
`labkit.llm.http.HttpLLM` (an OpenAI-compatible server: vLLM, llama.cpp's server, Ollama, `transformers serve`).
`labkit.llm.connect()` picks one (the local model unless LABKIT_LLM_URL names a server).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence, Union

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


Prompt = Union[str, Sequence[Union[Message, Mapping[str, str]]]]


@dataclass
class Completion:
    """One generated sample. finish_reason: "stop" (a stop string, end-of-sequence, or a constraint that is
    complete) or "length" (max_tokens reached first: the text may be cut mid-answer)."""
    text: str
    tokens: int
    finish_reason: str
    logprob: float | None = None  # sum of the chosen tokens' log-probabilities, where the backend knows them


@dataclass
class Usage:
    """What a backend has spent since it was made (or since reset())."""
    calls: int = 0              # requests: one generate/chat/logprobs call is one, whatever n is
    prompt_tokens: int = 0      # tokens the model had to read (a prefix served from a cache is not counted)
    completion_tokens: int = 0  # tokens the model generated, over all samples

    def reset(self) -> None:
        self.calls = self.prompt_tokens = self.completion_tokens = 0


class Constraint(Protocol):
    """Token-by-token constraint for generate() (chapter 10's JSON-Schema automaton is one).

    allowed() -> bool tensor [vocab]: the tokens that may come next (end-of-sequence included when the text so
    far is complete); advance(token_id) records the token chosen; is_complete() says the text is a finished
    document. generate() takes a zero-argument factory and makes a fresh Constraint per sample."""

    def allowed(self): ...

    def advance(self, token_id: int) -> None: ...

    def is_complete(self) -> bool: ...


def check_messages(messages: object) -> list[Message]:
    """The messages as `Message`s; a clear error for anything that is not a non-empty list of known roles."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Mapping):
            if set(m) - {"role", "content"} or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must have exactly the keys 'role' and 'content', got {sorted(m)}")
            m = Message(m["role"], m["content"])
        if not isinstance(m, Message):
            raise TypeError(f"message {i} must be a dict or a Message, got {type(m).__name__}")
        if m.role not in ROLES:
            raise ValueError(f"message {i} has unknown role {m.role!r}; known roles: {', '.join(ROLES)}")
        if not isinstance(m.content, str):
            raise TypeError(f"message {i}'s content must be a string, got {type(m.content).__name__}")
        out.append(m)
    return out


def check_prompt(prompt: object) -> str | list[Message]:
    """A non-empty string, or a list of valid messages."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("the prompt is empty")
        return prompt
    return check_messages(prompt)


def check_sampling(max_tokens: object, temperature: object, top_k: object, top_p: object, stop: object,
                   n: object, seed: object) -> tuple[str, ...]:
    """Validate generate()'s settings; returns the stop strings as a tuple."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise TypeError(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    return tuple(stop)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """(text up to the earliest stop string, whether one was found). The stop string itself is not kept."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


class LLM(ABC):
    """The interface. Backends implement _generate and _logprobs; validation and chat live here, once."""

    name: str = "llm"
    supports_logprobs: bool = True     # can score continuations (an HTTP server may not return logprobs)
    supports_constraints: bool = True  # can mask logits token by token (only a local model can)

    def __init__(self) -> None:
        self.usage = Usage()

    def generate(self, prompt: Prompt, *, max_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, stop: str | Sequence[str] = (),
                 n: int = 1, seed: int = 0,
                 constraint: Callable[[], Constraint] | None = None) -> list[Completion]:
        """n completions of the prompt (a string, or chat messages formatted by the model's template).
        temperature 0 is greedy (then all n samples are equal); seed makes sampling repeatable."""
        prompt = check_prompt(prompt)
        stop = check_sampling(max_tokens, temperature, top_k, top_p, stop, n, seed)
        if constraint is not None and not callable(constraint):
            raise TypeError("constraint must be a zero-argument factory that returns a fresh Constraint")
        if constraint is not None and not self.supports_constraints:
            raise NotImplementedError(f"{self.name} cannot constrain decoding token by token (it never sees the "
                                      "logits); use the local backend, or a server's own structured-output option")
        self.usage.calls += 1
        return self._generate(prompt, max_tokens=max_tokens, temperature=float(temperature), top_k=top_k,
                              top_p=top_p, stop=stop, n=n, seed=seed, constraint=constraint)

    def chat(self, messages: Sequence[Message | Mapping[str, str]], **settings) -> list[Completion]:
        """generate() on chat messages (formatted with the model's own chat template)."""
        return self.generate(check_messages(messages), **settings)

    def logprobs(self, prompt: Prompt, continuations: Sequence[str]) -> list[float]:
        """For each continuation, the sum of log p(its tokens | prompt and the tokens before them), in nats.
        With chat messages, the continuation is scored as the start of the assistant's reply."""
        prompt = check_prompt(prompt)
        if isinstance(continuations, str) or not isinstance(continuations, Sequence) or not continuations:
            raise ValueError(f"continuations must be a non-empty list of strings, got {continuations!r:.80}")
        if not all(isinstance(c, str) and c for c in continuations):
            raise ValueError("every continuation must be a non-empty string")
        if not self.supports_logprobs:
            raise NotImplementedError(f"{self.name}: this server does not return log-probabilities, so it cannot "
                                      "score continuations (vLLM does; transformers serve does not)")
        self.usage.calls += 1
        return self._logprobs(prompt, list(continuations))

    @abstractmethod
    def _generate(self, prompt: str | list[Message], *, max_tokens: int, temperature: float, top_k: int | None,
                  top_p: float | None, stop: tuple[str, ...], n: int, seed: int,
                  constraint: Callable[[], Constraint] | None) -> list[Completion]: ...

    @abstractmethod
    def _logprobs(self, prompt: str | list[Message], continuations: list[str]) -> list[float]: ...
