"""Agent memory: what the model sees (a main context held within a token budget) and where the rest goes.

A model reads only its context window. An agent that talks and calls tools for long fills it, and something must
go. This module teaches two answers, both deterministic so that every eviction can be tested:

1. **A short-term window** (`fit_to_budget`, `TokenWindow`). The context is a system prompt and turns. When the
   turns outgrow the budget, the OLDEST non-system messages are evicted first, one by one, until the rest fits.
   Two messages are never evicted: the system prompt (it says who the agent is and which tools exist) and the
   newest message (the question being answered now). If those two alone exceed the budget we raise a
   ValueError rather than truncate: cutting the newest message would silently change the user's question, and
   cutting it to a token count needs the tokenizer's decoder, which a counter does not have.

2. **MemGPT-style paging** (`PagedMemory`; Packer et al. 2023, "MemGPT: Towards LLMs as Operating Systems",
   arXiv:2310.08560). Like an operating system paging memory to disk, the agent has a small *main context* and
   large external storage it reaches through function calls:

       main context (within the budget)            external storage (unbounded, not in the prompt)
       ┌────────────────────────────────────┐
       │ system prompt                      │
       │ core memory: <persona>, <human>    │ ← core_memory_append / core_memory_replace (size-limited)
       │ FIFO queue of recent messages      │ ──evicted oldest-first──▶ recall log + archival store
       └────────────────────────────────────┘                             ▲ archival_insert / archival_search
                                                                          (chapter 12's BM25)

   Nothing evicted is lost: each evicted message is kept verbatim in `recall` and indexed in the archival store,
   where `archival_search` finds it by its words. MemGPT keeps two stores (recall, searched by
   conversation_search, and archival); we index both kinds in one BM25 store and tag each entry with its
   source ("evicted" or "inserted"), one search instead of two. MemGPT also writes a recursive summary of evicted
   messages with the model; we write none, so that no test needs a model.

The memory functions are tools: `PagedMemory.tools()` wraps `core_memory_append`, `core_memory_replace`,
`archival_insert` and `archival_search` (typed, with "Args:" docstrings) as `labkit.agents.tools.Tool`s, so a
`ToolBox` validates the model's calls and turns a bad one (a block that does not exist, an edit over the limit)
into an "error:" observation.

Tokens are counted by a callable `count(text) -> int`: pass the model's tokenizer
(`lambda s: len(tokenizer.encode(s))`) for real budgets; the default, `count_words`, counts whitespace-separated
words, which is predictable in tests. `per_message` adds a fixed cost per message (a chat template's role
markers, a few tokens each). The tests here use the default counter; measured numbers with the real model's
tokenizer belong to the chapter's notebook.

    window = TokenWindow(budget=12, system="You are terse.")
    window.add("user", "one two three four")        # 3 + 4 = 7 tokens: nothing evicted
    window.add("assistant", "five six seven")       # 10
    window.add("user", "eight nine ten")             # 13 > 12: the oldest turn ("one two ...") is evicted
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from labkit.agents.tools import Tool
from labkit.llm.base import ROLES, Message, check_messages
from labkit.rag.bm25 import BM25
from labkit.rag.index import tokenize

TokenCounter = Callable[[str], int]

CORE_BLOCK_LIMIT = 2000  # characters per core-memory block: MemGPT's default, small enough to stay in context
MAX_SEARCH_K = 20
SOURCES = ("inserted", "evicted")  # an archival entry was saved by the agent, or paged out of its context


def count_words(text: str) -> int:
    """The default token counter: whitespace-separated words (a stand-in for a tokenizer in tests)."""
    return len(text.split())


# ------------------------------------------------------------------------------------------------------------
# counting and the eviction policy

def _check_budget(budget: object) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int number of tokens, got {type(budget).__name__}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1 token, got {budget}")
    return budget


def _check_counter(count: object, per_message: object) -> None:
    if not callable(count):
        raise TypeError(f"count must be a function text -> number of tokens, got {type(count).__name__}")
    if isinstance(per_message, bool) or not isinstance(per_message, int) or per_message < 0:
        raise ValueError(f"per_message must be an int >= 0 (tokens added per message), got {per_message!r}")


def message_tokens(message: Message, count: TokenCounter = count_words, per_message: int = 0) -> int:
    """Tokens one message takes in the context: its content's count plus the fixed per-message cost."""
    n = count(message.content)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"count must return an int, got {type(n).__name__} for {message.content[:40]!r}")
    if n < 0:
        raise ValueError(f"count must return a number >= 0, got {n} for {message.content[:40]!r}")
    return n + per_message


def context_tokens(messages: Sequence[Message | Mapping[str, str]], count: TokenCounter = count_words,
                   per_message: int = 0) -> int:
    """Tokens a list of messages takes: the sum over its messages."""
    _check_counter(count, per_message)
    return sum(message_tokens(m, count, per_message) for m in _as_messages(messages))


def _as_messages(messages: object) -> list[Message]:
    if isinstance(messages, (list, tuple)) and len(messages) == 0:
        return []
    return check_messages(messages)


def fit_to_budget(messages: Sequence[Message | Mapping[str, str]], budget: int, count: TokenCounter = count_words,
                  per_message: int = 0) -> tuple[list[Message], list[Message]]:
    """(kept, evicted): the messages split so that `kept` fits in `budget` tokens, both in their original order.

    The policy: every "system" message and the newest message are kept; the others are evicted oldest first,
    and only as many as needed (eviction stops as soon as the rest fits). Raises ValueError if the system
    messages and the newest message alone exceed the budget (see the module docstring: no truncation).
    """
    budget = _check_budget(budget)
    _check_counter(count, per_message)
    msgs = _as_messages(messages)
    sizes = [message_tokens(m, count, per_message) for m in msgs]
    # the protected set: the system prompt says who the agent is, the newest message is what it must answer now
    protected = {i for i, m in enumerate(msgs) if m.role == "system"} | ({len(msgs) - 1} if msgs else set())
    floor = sum(sizes[i] for i in protected)
    if floor > budget:
        raise ValueError(f"the system prompt and the newest message alone take {floor} tokens, over the budget "
                         f"of {budget}: shorten them or raise the budget (they are never evicted or truncated)")
    total, evicted = sum(sizes), set()
    for i in range(len(msgs)):  # oldest first: the turn least likely to matter to the next answer
        if total <= budget:
            break
        if i not in protected:
            evicted.add(i)
            total -= sizes[i]
    return ([m for i, m in enumerate(msgs) if i not in evicted], [m for i, m in enumerate(msgs) if i in evicted])


def _new_message(role: object, content: object) -> Message:
    if role not in ROLES or role == "system":
        raise ValueError(f"role must be one of {[r for r in ROLES if r != 'system']} (the system prompt is set "
                         f"once, when the memory is made), got {role!r}")
    if not isinstance(content, str):
        raise TypeError(f"content must be a str, got {type(content).__name__}")
    return Message(role, content)


class TokenWindow:
    """The short-term window: a system prompt and the most recent turns that fit in `budget` tokens.

    `add` appends a turn and evicts the oldest turns that no longer fit (returning them); after every call
    `tokens() <= budget`. A turn that cannot fit even alone beside the system prompt is refused with a
    ValueError and the window is left unchanged.
    """

    def __init__(self, budget: int, system: str | None = None, count: TokenCounter = count_words,
                 per_message: int = 0):
        self.budget = _check_budget(budget)
        _check_counter(count, per_message)
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be a str or None, got {type(system).__name__}")
        self.count, self.per_message = count, per_message
        self.messages: list[Message] = [] if system is None else [Message("system", system)]
        self.evicted: list[Message] = []  # every evicted turn, oldest first
        fit_to_budget(self.messages, budget, count, per_message)  # a system prompt over the budget fails here

    def add(self, role: str, content: str) -> list[Message]:
        """Append a turn; return the turns this evicted (oldest first)."""
        kept, out = fit_to_budget([*self.messages, _new_message(role, content)], self.budget, self.count,
                                  self.per_message)  # raises before anything changes
        self.messages = kept
        self.evicted.extend(out)
        return out

    def tokens(self) -> int:
        return context_tokens(self.messages, self.count, self.per_message)


# ------------------------------------------------------------------------------------------------------------
# MemGPT: core memory, the archival store, and the paged main context

class CoreMemory:
    """Small labelled text blocks that live in the main context and that the agent edits itself.

    MemGPT starts with two: "persona" (who the agent is) and "human" (what it knows about the user). Each block
    has a character limit, so that core memory cannot crowd the conversation out of the context: an edit that
    would exceed it is refused with a ValueError saying how far over it is.
    """

    def __init__(self, blocks: Mapping[str, str] | None = None, limit: int = CORE_BLOCK_LIMIT):
        blocks = {"persona": "", "human": ""} if blocks is None else dict(blocks)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1 (characters per block), got {limit!r}")
        self.limit = limit
        for label, text in blocks.items():
            if not isinstance(label, str) or not label.isidentifier():
                raise ValueError(f"a block label must be a word (letters, digits, _), got {label!r}")
            if not isinstance(text, str):
                raise TypeError(f"block {label!r} must hold a str, got {type(text).__name__}")
            self._check_size(label, text)
        self.blocks: dict[str, str] = blocks

    def _check_size(self, label: str, text: str) -> None:
        if len(text) > self.limit:
            raise ValueError(f"core memory block {label!r} would hold {len(text)} characters, over its limit of "
                             f"{self.limit}; replace or remove something first")

    def _block(self, label: object) -> str:
        if label not in self.blocks:
            raise ValueError(f"no core memory block {label!r}; the blocks are {', '.join(self.blocks)}")
        return self.blocks[label]  # type: ignore[index]

    def append(self, label: str, content: str) -> None:
        """Add `content` as a new line at the end of block `label`."""
        old = self._block(label)
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"content must be a non-empty str, got {content!r:.60}")
        new = f"{old}\n{content}" if old else content
        self._check_size(label, new)
        self.blocks[label] = new

    def replace(self, label: str, old_content: str, new_content: str) -> None:
        """Replace the one occurrence of `old_content` in block `label` by `new_content` ("" deletes it)."""
        text = self._block(label)
        if not isinstance(old_content, str) or not old_content:
            raise ValueError(f"old_content must be a non-empty str, got {old_content!r:.60}")
        if not isinstance(new_content, str):
            raise TypeError(f"new_content must be a str, got {type(new_content).__name__}")
        found = text.count(old_content)
        if found != 1:  # zero: nothing to replace; several: which one is meant is a guess we refuse to make
            raise ValueError(f"old_content must occur exactly once in block {label!r}, it occurs {found} times: "
                             f"{old_content!r:.60}")
        new = text.replace(old_content, new_content)
        self._check_size(label, new)
        self.blocks[label] = new

    def render(self) -> str:
        """The blocks as the model reads them, each between tags named by its label."""
        return "\n".join(f"<{label}>\n{text}\n</{label}>" for label, text in self.blocks.items())


@dataclass(frozen=True)
class Entry:
    """One archival record: its number, its text, and where it came from ("evicted" or "inserted")."""
    id: int
    text: str
    source: str


class Archive:
    """Long-term memory: texts searched by BM25 (chapter 12's `BM25` over `labkit.rag.index.tokenize` tokens).

    The BM25 index is rebuilt at the first search after an insert: linear in the store's size, which is
    milliseconds for the thousands of entries one conversation produces (an incremental index would be faster
    and longer to read).
    """

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._bm25: BM25 | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def insert(self, text: str, source: str = "inserted") -> Entry:
        """Store `text` (searchable from now on); `source` says who put it there: "inserted" or "evicted"."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if not isinstance(text, str) or not tokenize(text):
            raise ValueError(f"an archival entry must be a str with at least one word, got {text!r:.60}")
        entry = Entry(len(self.entries), text, source)
        self.entries.append(entry)
        self._bm25 = None
        return entry

    def search(self, query: str, k: int = 3) -> list[Entry]:
        """The k entries BM25 ranks best for `query`, best first; [] when no word of the query is stored."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SEARCH_K:
            raise ValueError(f"k must be an int from 1 to {MAX_SEARCH_K}, got {k!r}")
        words = tokenize(query)
        if not words:
            raise ValueError(f"the query has no words to search for: {query!r:.60}")
        if not self.entries:
            return []
        if self._bm25 is None:
            self._bm25 = BM25().index([tokenize(e.text) for e in self.entries])
        return [self.entries[i] for i in self._bm25.top_k(words, k).indices]


SYSTEM_TEMPLATE = """{system}

## Core memory (yours to edit with core_memory_append and core_memory_replace)
{core}

## Archival memory
Messages that no longer fit here are moved to archival memory, not lost: archival_search finds them by their
words, and archival_insert saves anything you want to keep."""


class PagedMemory:
    """MemGPT's main context: system prompt + core memory + a FIFO queue of messages, within `budget` tokens.

    Invariant, after every public call: `tokens() <= budget`. `add` appends a message and evicts the oldest
    queued messages that no longer fit into `recall` (verbatim) and the archival store (searchable); a core-memory
    edit that grows the system part evicts the same way. The system part and the newest message are never evicted:
    a message or an edit that cannot fit beside them raises ValueError and changes nothing.
    """

    def __init__(self, system: str, budget: int, count: TokenCounter = count_words, per_message: int = 0,
                 core: CoreMemory | None = None):
        if not isinstance(system, str):
            raise TypeError(f"system must be a str, got {type(system).__name__}")
        self.budget = _check_budget(budget)
        _check_counter(count, per_message)
        self.system, self.count, self.per_message = system, count, per_message
        self.core = CoreMemory() if core is None else core
        self.queue: list[Message] = []
        self.recall: list[Message] = []  # every evicted message, oldest first (MemGPT's recall storage)
        self.archive = Archive()
        self._settle()  # a system prompt + core memory over the budget fails here

    def system_message(self) -> Message:
        return Message("system", SYSTEM_TEMPLATE.format(system=self.system, core=self.core.render()))

    def context(self) -> list[Message]:
        """What the model is shown: the system part, then the queued messages."""
        return [self.system_message(), *self.queue]

    def tokens(self) -> int:
        return context_tokens(self.context(), self.count, self.per_message)

    def _settle(self, queue: list[Message] | None = None) -> list[Message]:
        """Evict from `queue` (default: the current one) until the context fits; commit; return the evicted."""
        kept, out = fit_to_budget([self.system_message(), *(self.queue if queue is None else queue)],
                                  self.budget, self.count, self.per_message)  # raises before anything changes
        self.queue = kept[1:]
        for m in out:
            self.recall.append(m)
            self.archive.insert(f"{m.role}: {m.content}", source="evicted")
        return out

    def add(self, role: str, content: str) -> list[Message]:
        """Append a message to the queue; return the messages this evicted to archival storage (oldest first)."""
        return self._settle([*self.queue, _new_message(role, content)])

    def _edit_core(self, edit: Callable[[], None]) -> None:
        before = dict(self.core.blocks)
        edit()  # raises on an unknown block or a block over its limit
        try:
            self._settle()  # a bigger core memory may push the oldest messages out
        except ValueError:
            self.core.blocks = before  # it cannot fit even beside the newest message alone: undo the edit
            raise

    # -- the tools the agent calls (typed, with "Args:" docstrings, for labkit.agents.tools.Tool) --------------

    def core_memory_append(self, label: str, content: str) -> str:
        """Append a line to a block of your core memory (always in your context; keep it short).

        Args:
            label: the block to edit, e.g. "human" (facts about the user) or "persona" (about yourself).
            content: the line to add.
        """
        self._edit_core(lambda: self.core.append(label, content))
        return f"appended to core memory block '{label}' ({len(self.core.blocks[label])}/{self.core.limit} characters)"

    def core_memory_replace(self, label: str, old_content: str, new_content: str) -> str:
        """Replace text in a block of your core memory; an empty new_content deletes the old text.

        Args:
            label: the block to edit, e.g. "human" or "persona".
            old_content: the exact text to replace; it must occur once in the block.
            new_content: the text to put in its place.
        """
        self._edit_core(lambda: self.core.replace(label, old_content, new_content))
        return f"replaced in core memory block '{label}' ({len(self.core.blocks[label])}/{self.core.limit} characters)"

    def archival_insert(self, content: str) -> str:
        """Save a text to archival memory (unlimited, outside your context; find it again with archival_search).

        Args:
            content: the text to save, in words you will search for later.
        """
        entry = self.archive.insert(content)
        return f"saved to archival memory as entry {entry.id}"

    def archival_search(self, query: str, k: int = 3) -> str:
        """Search archival memory (saved texts and messages evicted from your context) by words.

        Args:
            query: the words to look for.
            k: how many entries to return (1 to 20).
        """
        hits = self.archive.search(query, k)
        if not hits:
            return f"no archival entry contains any word of {query!r}"
        return "\n".join(f"[{e.id}, {e.source}] {e.text}" for e in hits)

    def tools(self) -> list[Tool]:
        """The four memory functions as tools, for a `ToolBox`."""
        return [Tool.from_function(f) for f in (self.core_memory_append, self.core_memory_replace,
                                                self.archival_insert, self.archival_search)]
