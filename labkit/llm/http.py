"""The HTTP backend: a bigger model on an OpenAI-compatible server (vLLM, llama.cpp's server, Ollama,
`transformers serve`), behind the same `labkit.llm.base.LLM` interface as the local model.

What a server must offer: `POST /v1/completions` (a text prompt) and `POST /v1/chat/completions` (chat
messages, formatted by the server with the model's own template). What servers differ in, and how this client
copes:

* `n` samples: some servers return fewer choices than asked (`transformers serve` always returns one); the
  client asks again, with seed + 1, seed + 2, ..., until it has n.
* log-probabilities: scoring continuations needs the completions endpoint to return the prompt's token
  log-probabilities (`echo` + `logprobs`, as vLLM does). Most servers do not (`transformers serve` ignores the
  fields), so `supports_logprobs` is False unless the caller says the server has them.
* constraints: the client never sees the logits, so token-level constraints are a local-model feature.

Failures are reported as `LLMServerError`, saying which: no server at the URL, too slow (timeout), an HTTP
error status (with the start of the body), a body that is not JSON, or JSON without the fields expected.
Timeouts and 5xx answers are retried a bounded number of times with exponential backoff (the server may be
overloaded or restarting); 4xx answers never are (the request itself is wrong: sending it again cannot help).
Only the standard library is used (urllib), so labkit does not depend on an SDK.
"""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from .base import LLM, Completion, Constraint, Message, cut_at_stop


class LLMServerError(RuntimeError):
    """The server could not be reached, was too slow, or answered something other than what the API promises."""


class HttpLLM(LLM):
    """A model behind an OpenAI-compatible server.

    base_url: e.g. "http://127.0.0.1:8000/v1" (a URL without the /v1 gets it appended). model: the name the
    server knows the model by ("" sends no name: fine for a server that serves one model). timeout: seconds per
    request. retries: extra attempts after a timeout or a 5xx answer. logprobs: True when the server returns
    prompt log-probabilities on /v1/completions with echo (vLLM), enabling `logprobs()` for text prompts.
    """

    name = "http"
    supports_constraints = False

    def __init__(self, base_url: str, model: str = "", *, timeout: float = 60.0, retries: int = 2,
                 backoff: float = 0.5, logprobs: bool = False) -> None:
        super().__init__()
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if not isinstance(model, str):
            raise TypeError(f"model must be a string (the server's name for it), got {type(model).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.model, self.timeout, self.retries, self.backoff = model, float(timeout), retries, float(backoff)
        self.supports_logprobs = bool(logprobs)
        self.name = f"http:{model or self.base_url}"

    # ------------------------------------------------------------------------------------------------------
    # one request, with its failure modes

    def post(self, path: str, body: dict) -> dict:
        """POST body as JSON to base_url + path; the answer's JSON object. Retries timeouts and 5xx answers."""
        url = self.base_url + path
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as e:  # the server answered with an error status
                excerpt = e.read()[:300].decode(errors="replace")
                if e.code < 500 or last:  # 4xx: the request is wrong, sending it again cannot help
                    raise LLMServerError(f"{url} answered HTTP {e.code}: {excerpt}") from None
            except (TimeoutError, socket.timeout) as e:
                if last:
                    raise LLMServerError(f"{url} did not answer within {self.timeout:g} s "
                                         f"({self.retries + 1} attempts): the server is too slow or stuck") from e
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    if last:
                        raise LLMServerError(f"{url} did not answer within {self.timeout:g} s "
                                             f"({self.retries + 1} attempts): the server is too slow or stuck") from e
                else:  # connection refused, unknown host: nothing is listening, retrying will not change that
                    raise LLMServerError(f"no server at {self.base_url} — is it running? ({e.reason})") from None
            except (ConnectionError, http.client.HTTPException) as e:  # dropped, or an answer that is not HTTP
                raise LLMServerError(f"{url}: the connection broke or the answer was not HTTP ({e!r})") from None
            time.sleep(self.backoff * 2 ** attempt)  # exponential backoff before the next attempt
        try:
            answer = json.loads(raw)
        except ValueError:
            raise LLMServerError(f"{url} answered something that is not JSON: {raw[:200]!r}") from None
        if not isinstance(answer, dict):
            raise LLMServerError(f"{url} answered JSON that is not an object: {raw[:200]!r}")
        return answer

    @staticmethod
    def _field(answer: dict, path: str, *keys):
        """answer[keys[0]][keys[1]]...; LLMServerError naming what is missing."""
        value = answer
        for key in keys:
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                raise LLMServerError(f"{path}: the answer has no {'.'.join(map(str, keys))} "
                                     f"(got {json.dumps(answer)[:200]})") from None
        return value

    def _count(self, answer: dict) -> int:
        """Add the answer's usage to self.usage; return its completion tokens (0 when not reported)."""
        usage = answer.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        self.usage.prompt_tokens += prompt if isinstance(prompt, int) else 0
        completion = completion if isinstance(completion, int) else 0
        self.usage.completion_tokens += completion
        return completion

    # ------------------------------------------------------------------------------------------------------
    # the interface

    def _generate(self, prompt: str | list[Message], *, max_tokens: int, temperature: float, top_k: int | None,
                  top_p: float | None, stop: tuple[str, ...], n: int, seed: int,
                  constraint: Callable[[], Constraint] | None) -> list[Completion]:
        """A string prompt goes to /v1/completions, chat messages to /v1/chat/completions. Completion.tokens is
        the server's completion-token count (the mean over the choices when one answer holds several);
        Completion.logprob is None (servers differ in whether they return it)."""
        chat = not isinstance(prompt, str)
        path = "/chat/completions" if chat else "/completions"
        body: dict = {"max_tokens": max_tokens, "temperature": temperature}
        body.update({"messages": [{"role": m.role, "content": m.content} for m in prompt]} if chat
                    else {"prompt": prompt})
        if self.model:
            body["model"] = self.model
        if top_p is not None:
            body["top_p"] = top_p
        if top_k is not None:
            body["top_k"] = top_k  # not in OpenAI's API; vLLM, llama.cpp and Ollama accept it
        if stop:
            body["stop"] = list(stop)
        out: list[Completion] = []
        while len(out) < n:  # a server may return fewer choices than asked for: ask again, with a new seed
            answer = self.post(path, {**body, "n": n - len(out), "seed": seed + len(out)})
            choices = self._field(answer, path, "choices")
            if not isinstance(choices, list) or not choices:
                raise LLMServerError(f"{path}: the answer's choices are not a non-empty list: {json.dumps(answer)[:200]}")
            tokens = self._count(answer) // len(choices)
            for i in range(len(choices)):
                text = self._field(answer, path, "choices", i, "message", "content") if chat else \
                    self._field(answer, path, "choices", i, "text")
                if not isinstance(text, str):
                    raise LLMServerError(f"{path}: choice {i}'s text is not a string: {text!r:.80}")
                text, cut = cut_at_stop(text, stop)  # in case the server kept the stop string
                reason = "length" if choices[i].get("finish_reason") == "length" and not cut else "stop"
                out.append(Completion(text=text, tokens=tokens, finish_reason=reason))
        return out[:n]

    def _logprobs(self, prompt: str | list[Message], continuations: list[str]) -> list[float]:
        """Text prompts only: /v1/completions with echo returns the log-probability of every token of
        prompt + continuation (the server tokenizes the concatenated text); the continuation's score sums the
        tokens that start at or after the prompt's last character."""
        if not isinstance(prompt, str):
            raise NotImplementedError(f"{self.name}: scoring continuations of chat messages needs the server's chat "
                                      "template; format the messages into a text prompt and score that")
        scores = []
        for cont in continuations:
            body = {"prompt": prompt + cont, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0}
            if self.model:
                body["model"] = self.model
            answer = self.post("/completions", body)
            self._count(answer)
            logprobs = self._field(answer, "/completions", "choices", 0, "logprobs")
            offsets = self._field(logprobs, "/completions logprobs", "text_offset")
            values = self._field(logprobs, "/completions logprobs", "token_logprobs")
            end = len(prompt) + len(cont)  # the echo is followed by the one generated token: leave it out
            scores.append(float(sum(v for o, v in zip(offsets, values) if len(prompt) <= o < end and v is not None)))
        return scores
