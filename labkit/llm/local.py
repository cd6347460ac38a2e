"""The local backend: labkit's own Llama (chapter 4) with chapter 5's KV-cache, behind `labkit.llm.base.LLM`.

Two things make it fast enough for chapters 10-13's experiments on a CPU:

* Prefix caching. A few-shot evaluation sends the same long prefix again and again, with a different query or
  label at the end; scoring three labels sends the same prompt three times. The model's keys and values for a
  token depend only on the tokens before it, so a cache that holds a sequence's first L tokens serves any
  sequence that starts with the same L tokens. The backend keeps a few caches (least recently used goes first)
  together with the token ids they hold; each new sequence reuses the longest common *token* prefix and runs
  only the rest. A cache sharing at least half of its tokens with the new sequence is reused in place (its
  old contents beyond the common prefix are simply overwritten); otherwise a fresh one starts from a copy of
  the common prefix. Within one `logprobs` call the prompt runs once for all continuations.
  `usage.prompt_tokens` counts only the tokens actually run.
* Batched sampling. n samples of one prompt are one batch: the prompt is run once (batch 1), its cache copied
  to n rows, and every decode step (`labkit.kvcache.DecodeStep`) advances all unfinished rows at once. At
  batch 1 decode is memory-bound -- each step reads every weight once for ~2 FLOPs -- so a batch, which reads
  the weights once for all its rows, gets more tokens per second until its arithmetic catches up
  (benchmarks/llm.py measures the gain at n = 16). Rows that finish (end-of-sequence, a stop string) leave
  the batch.

Tokenization: a string prompt is encoded as it is (no special tokens added); chat messages are formatted by
the tokenizer's own chat template, ending with the assistant's turn (`add_generation_prompt=True`), then
encoded. For `logprobs`, the prompt and each continuation are tokenized *separately* and their ids
concatenated, so a continuation such as " positive" is always the same tokens whatever prompt precedes it
(tokenizing prompt + continuation together could merge tokens across the boundary).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..kvcache import DecodeStep, KVCache
from ..llama import Llama
from ..sampling import greedy, probabilities
from .base import LLM, Completion, Constraint, Message, Prompt, check_prompt, cut_at_stop

_LOADED: dict[str, tuple[Llama, object]] = {}  # folder -> (model, tokenizer): load once per process


@dataclass
class _Slot:
    """One prefix cache: a batch-1 KVCache and the token ids whose keys and values it holds (ids[:cache.seen])."""
    cache: KVCache
    ids: list[int]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class LocalLLM(LLM):
    """A labkit Llama and its Hugging Face tokenizer as an `LLM`. `LocalLLM.smollm2()` is the course's default.

    model: labkit.llama.Llama (eval mode, float32); tokenizer: a transformers tokenizer with a chat template.
    cache_slots: how many prefix caches to keep (0 turns prefix caching off: every sequence runs in full).
    """

    name = "local"

    def __init__(self, model: Llama, tokenizer, *, name: str = "local", cache_slots: int = 4) -> None:
        super().__init__()
        if not isinstance(model, Llama):
            raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
        if not callable(getattr(tokenizer, "encode", None)) or not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        if isinstance(cache_slots, bool) or not isinstance(cache_slots, int) or cache_slots < 0:
            raise ValueError(f"cache_slots must be an int >= 0, got {cache_slots!r}")
        self.model, self.tokenizer, self.name, self.cache_slots = model, tokenizer, name, cache_slots
        self.eos_id: int = tokenizer.eos_token_id
        # a plain-text prompt may also end with <|endoftext|>: either token ends a sample
        end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else None
        self.end_ids = frozenset(i for i in (self.eos_id, end_of_text) if i is not None)
        self.step = DecodeStep(model)
        self._slots: list[_Slot] = []  # most recently used first

    @classmethod
    def smollm2(cls, cache_slots: int = 4) -> LocalLLM:
        """SmolLM2-135M-Instruct (`labkit.models.smollm2_dir()`). The weights load once per process; each call
        returns a new backend (its own usage counts and prefix caches) over the same model."""
        from transformers import AutoTokenizer

        from ..models import _quiet_transformers, smollm2_dir

        folder = str(smollm2_dir())
        if folder not in _LOADED:
            _quiet_transformers()
            _LOADED[folder] = (Llama.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
        model, tokenizer = _LOADED[folder]
        return cls(model, tokenizer, name="smollm2-135m-instruct", cache_slots=cache_slots)

    # ------------------------------------------------------------------------------------------------------
    # text <-> ids

    def encode(self, text: str) -> list[int]:
        """Token ids of text, as it is (no special tokens added)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def format(self, prompt: Prompt) -> str:
        """The text the model reads: a string as it is; chat messages through the model's chat template,
        ending with the start of the assistant's turn."""
        prompt = check_prompt(prompt)
        if isinstance(prompt, str):
            return prompt
        messages = [{"role": m.role, "content": m.content} for m in prompt]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, prompt: str | list[Message]) -> list[int]:
        return self.encode(self.format(prompt))

    # ------------------------------------------------------------------------------------------------------
    # prefix caching

    def _run(self, ids: list[int], need_from: int) -> tuple[_Slot, torch.Tensor]:
        """Run ids through the model, reusing the cached slot with the longest common prefix; return the slot
        (now holding ids) and the logits [len(ids) - need_from, vocab] of positions need_from.. (at least the
        tokens from need_from on run, since a cache holds keys and values, not logits)."""
        if len(ids) > self.model.cfg.max_seq_len:
            raise ValueError(f"{len(ids)} tokens exceed the model's context of {self.model.cfg.max_seq_len}")
        best, common = None, 0
        for slot in self._slots:
            c = _common_prefix(slot.ids, ids)
            if c > common:
                best, common = slot, c
        start = min(common, need_from)  # the logits at need_from must be computed, so run from there at least
        if best is not None and common >= len(best.ids) // 2:
            slot = best  # overwrite in place: its contents beyond `start` are replaced
            self._slots.remove(slot)
        else:  # a new slot (the least recently used one goes), starting from a copy of the best prefix
            slot = _Slot(self._new_cache(len(ids)), [])
            if best is not None and start > 0:
                slot.cache.k[:, :, :, :start] = best.cache.k[:, :, :, :start]
                slot.cache.v[:, :, :, :start] = best.cache.v[:, :, :, :start]
            else:
                start = 0
        slot.cache = self._fit(slot.cache, len(ids))
        slot.cache.seen = start
        with torch.no_grad():
            logits = self.model(torch.tensor([ids[start:]]), cache=slot.cache)[0]
        slot.ids = list(ids)
        self.usage.prompt_tokens += len(ids) - start
        if self.cache_slots > 0:
            self._slots.insert(0, slot)
            del self._slots[self.cache_slots:]
        return slot, logits[need_from - start:]

    def _new_cache(self, length: int, batch: int = 1) -> KVCache:
        # allocate in steps of 256 tokens, so that the next, slightly longer sequence fits too
        size = min(-(-length // 256) * 256, self.model.cfg.max_seq_len)
        return KVCache(self.model.cfg, batch=batch, max_len=size)

    def _fit(self, cache: KVCache, length: int) -> KVCache:
        """cache, or a bigger copy of it when length tokens do not fit."""
        if length <= cache.max_len:
            return cache
        bigger = self._new_cache(length)
        bigger.k[:, :, :, :cache.max_len] = cache.k
        bigger.v[:, :, :, :cache.max_len] = cache.v
        bigger.seen = cache.seen
        return bigger

    # ------------------------------------------------------------------------------------------------------
    # the interface

    def _logprobs(self, prompt: str | list[Message], continuations: list[str]) -> list[float]:
        """Prompt and continuation are tokenized separately and concatenated (see the module docstring); the
        score is sum_i log softmax(logits)[token_i] over the continuation's tokens (temperature 1, unmasked).

        With prefix caching, the prompt runs once (only the part no cache holds), its last position scores
        every continuation's first token, and the continuations' other tokens run as one batch over copies of
        the prompt's cache (right-padded: causal attention never lets a position see the padding after it;
        the padding is not counted in usage). Without (cache_slots=0), each prompt + continuation runs in full,
        one after the other: the baseline prefix caching is measured against."""
        prompt_ids, conts = self.prompt_ids(prompt), [self.encode(text) for text in continuations]
        if self.cache_slots == 0:
            logits = [self._run(prompt_ids + c, need_from=len(prompt_ids) - 1)[1] for c in conts]
        else:
            slot, last = self._run(prompt_ids, need_from=len(prompt_ids) - 1)
            longest = max(len(c) for c in conts)
            tails = torch.zeros(len(conts), max(longest - 1, 1), dtype=torch.long)
            for i, c in enumerate(conts):
                tails[i, :len(c) - 1] = torch.tensor(c[:-1])  # token j of c is scored at position j - 1
            rest = None
            if longest > 1:
                cache = self._copy_rows(slot, len(conts), extra=longest - 1)
                with torch.no_grad():
                    rest = self.model(tails, cache=cache)
                self.usage.prompt_tokens += sum(len(c) - 1 for c in conts)
            logits = [torch.cat([last, rest[i, :len(c) - 1]]) if rest is not None else last
                      for i, c in enumerate(conts)]
        scores = []
        for c, lg in zip(conts, logits):
            logp = torch.log_softmax(lg[:len(c)].double(), dim=-1)
            scores.append(float(logp[torch.arange(len(c)), torch.tensor(c)].sum()))
        return scores

    def _copy_rows(self, slot: _Slot, rows: int, extra: int) -> KVCache:
        """A new cache of `rows` rows, each holding a copy of the slot's sequence, with room for `extra` more."""
        seen = slot.cache.seen
        cache = KVCache(self.model.cfg, batch=rows, max_len=seen + extra)
        cache.k[:, :, :, :seen] = slot.cache.k[:, :, :, :seen]  # broadcast: batch 1 -> rows
        cache.v[:, :, :, :seen] = slot.cache.v[:, :, :, :seen]
        cache.seen = seen
        return cache

    def _generate(self, prompt: str | list[Message], *, max_tokens: int, temperature: float, top_k: int | None,
                  top_p: float | None, stop: tuple[str, ...], n: int, seed: int,
                  constraint: Callable[[], Constraint] | None) -> list[Completion]:
        """n samples decoded as one batch. Completion.logprob is the sum of the chosen tokens' log-probabilities
        under the distribution sampled from (after the constraint's mask, the temperature, top-k and top-p);
        for greedy decoding (temperature 0), under the masked distribution at temperature 1. Completion.tokens
        counts every generated token, an end-of-sequence token included; the text excludes it and anything from
        a stop string on. Greedy decoding (temperature 0) decodes one row and returns n copies of it (usage
        counts its tokens once). Sampled rows share one seeded generator, so a row's sample depends on n and on
        when other rows finish: the same call with the same seed repeats exactly."""
        ids = self.prompt_ids(prompt)
        if len(ids) + max_tokens > self.model.cfg.max_seq_len:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceed the model's context "
                             f"of {self.model.cfg.max_seq_len} tokens")
        rows = 1 if temperature == 0 else n  # greedy: every sample is the same, decode it once
        slot, logits = self._run(ids, need_from=len(ids) - 1)
        # the prompt's cache, copied to `rows` rows (prefill ran once, at batch 1)
        cache = self._copy_rows(slot, rows, extra=max_tokens)
        logits = logits[-1:].expand(rows, -1)
        generator = torch.Generator().manual_seed(seed)
        constraints = [constraint() for _ in range(rows)] if constraint is not None else None

        out: list[list[int]] = [[] for _ in range(rows)]
        logprob = [0.0] * rows
        done: dict[int, str] = {}   # row -> finish_reason
        active = list(range(rows))  # the rows still in the batch, in batch order
        for t in range(max_tokens):
            if constraints is not None:
                mask = torch.stack([torch.as_tensor(constraints[r].allowed(), dtype=torch.bool) for r in active])
                if not mask.any(dim=-1).all():
                    raise RuntimeError("the constraint allows no token at all: it cannot finish its document")
                logits = logits.masked_fill(~mask, float("-inf"))
            if temperature > 0:  # the distribution sample_next draws from, computed once for the draw and its logprob
                dist = probabilities(logits, temperature, top_k, top_p)
                token = torch.multinomial(dist, 1, generator=generator)[:, 0]
            else:
                dist, token = torch.softmax(logits, dim=-1), greedy(logits)
            chosen = dist.gather(1, token[:, None])[:, 0].double().log()
            keep = []
            for i, r in enumerate(active):
                tok = int(token[i])
                out[r].append(tok)
                logprob[r] += float(chosen[i])
                if constraints is not None and tok not in self.end_ids:
                    constraints[r].advance(tok)
                if tok in self.end_ids:
                    done[r] = "stop"
                elif stop and cut_at_stop(self.decode(out[r]), stop)[1]:
                    done[r] = "stop"
                elif t == max_tokens - 1:
                    done[r] = "length"
                else:
                    keep.append(i)
            self.usage.completion_tokens += len(active)
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch (and its cache)
                index = torch.tensor(keep)
                cache.k, cache.v = cache.k.index_select(1, index), cache.v.index_select(1, index)
                token = token[index]
                active = [active[i] for i in keep]
            logits = self.step(token, cache)

        completions = []
        for r in range(rows):
            toks = out[r][:-1] if out[r] and out[r][-1] in self.end_ids else out[r]
            text, _ = cut_at_stop(self.decode(toks), stop)
            completions.append(Completion(text=text, tokens=len(out[r]), finish_reason=done[r],
                                          logprob=logprob[r]))
        return [replace(completions[0]) for _ in range(n)] if rows == 1 else completions
