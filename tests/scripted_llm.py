"""A scripted fake LLM for the agent tests (a real `labkit.llm.base.LLM` subclass): it checks the wiring of the
agent loops; success rates come from the real model, never from this."""
from __future__ import annotations

from labkit.llm.base import LLM, Completion, cut_at_stop


class ScriptedLLM(LLM):
    """chat() returns `replies` in turn, cycling (so a script without a Final Answer never answers). Like a real
    backend it cuts each reply at the stop strings it is given, unless `honor_stop=False` (a backend that ignores
    them, or text injected past them). Counts words as tokens; records every prompt and stop list."""
    name = "scripted"

    def __init__(self, replies, honor_stop: bool = True, finish_reason: str = "stop"):
        super().__init__()
        self.replies, self.honor_stop, self.finish_reason = list(replies), honor_stop, finish_reason
        self.prompts, self.stops = [], []

    def _generate(self, prompt, *, stop, **settings):
        self.prompts.append(prompt)
        self.stops.append(stop)
        text = self.replies[(len(self.prompts) - 1) % len(self.replies)]
        if self.honor_stop:
            text, _ = cut_at_stop(text, stop)
        tokens = len(text.split())
        self.usage.prompt_tokens += sum(len(m.content.split()) for m in prompt)
        self.usage.completion_tokens += tokens
        return [Completion(text, tokens, self.finish_reason)]

    def _logprobs(self, prompt, continuations):
        raise NotImplementedError
