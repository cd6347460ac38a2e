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

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from labkit.agents.react import STEP_RULES, STOP, describe_tools, format_error, parse_step
from labkit.agents.tools import Tool, ToolBox
from labkit.llm.base import LLM, ROLES, Message, check_messages
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


# ------------------------------------------------------------------------------------------------------------
# with a real model: its tokenizer as the counter, and what SmolLM2 does with the paging tools (run "13-memory")

def chat_counter(llm: object) -> tuple[TokenCounter, int, int]:
    """(count, per_message, reply_prompt) measured from a tokenizer backend's own chat template (`LocalLLM`).

    count(text) is the number of tokens of the text alone; per_message is the most template tokens a user,
    assistant or tool message adds around its text (SmolLM2: `<|im_start|>`, the role, a newline, `<|im_end|>`, a
    newline: 5 for "user", 6 for "assistant", whose name is two tokens); reply_prompt is what the system
    message and the opening of the model's reply cost beyond that. So for a context that opens with a system
    message (else the template adds its own default one),
    `len(llm.prompt_ids(messages)) <= context_tokens(messages, count, per_message) + reply_prompt`:
    a budget held with this counter holds for the prompt the model really reads.
    """
    if not (callable(getattr(llm, "encode", None)) and callable(getattr(llm, "prompt_ids", None))):
        raise TypeError(f"chat_counter needs a backend with a tokenizer (encode, prompt_ids: LocalLLM), got "
                        f"{type(llm).__name__}")
    encode, ids = llm.encode, llm.prompt_ids  # type: ignore[attr-defined]
    system = Message("system", "x")
    alone = len(ids([system])) - len(encode("x"))  # the system message's wrapping + the reply's opening
    per_message = max(len(ids([system, Message(role, "x")])) - len(ids([system])) - len(encode("x"))
                      for role in ROLES if role != "system")
    return (lambda text: len(encode(text))), per_message, max(0, alone - per_message)


@dataclass(frozen=True)
class Scenario:
    """One recall test: a fact the user states early, the question asked after it was paged out, the answer."""
    id: str
    fact: str
    question: str
    answer: str


# Hand-written: each answer is a word or number the model must copy from the fact (it cannot know it otherwise).
SCENARIOS = tuple(Scenario(*row) for row in (
    ("locker", "My locker code at the gym is 4821.", "What is my locker code at the gym?", "4821"),
    ("sister", "My sister is called Ingrid.", "What is my sister called?", "Ingrid"),
    ("flight", "My flight to Lisbon leaves from gate B17.", "Which gate does my flight to Lisbon leave from?", "B17"),
    ("cat", "My cat is named Pixel.", "What is my cat named?", "Pixel"),
    ("room", "I am staying in room 312 of the hotel.", "Which room of the hotel am I staying in?", "312"),
    ("teacher", "My piano teacher is Mr. Okafor.", "Who is my piano teacher?", "Okafor"),
    ("bike", "My bike lock combination is 7305.", "What is my bike lock combination?", "7305"),
    ("city", "I grew up in Tromso, in Norway.", "Where did I grow up?", "Tromso"),
    ("doctor", "My appointment with the dentist is on Thursday.", "On which day is my appointment with the dentist?",
     "Thursday"),
    ("plant", "The plant on my desk is a fern called Gerald.", "What is the plant on my desk called?", "Gerald"),
    ("wifi", "The wifi password at the cabin is maple88.", "What is the wifi password at the cabin?", "maple88"),
    ("car", "I parked the car on level 6 of the garage.", "On which level of the garage did I park the car?", "6"),
))

# Small talk that pushes the fact out of the window: the same turns, in the same order, for every scenario.
SMALL_TALK = (
    ("Can you suggest a good book for a rainy weekend?",
     "Try a long mystery novel; the slow pace suits a rainy weekend."),
    ("How do I keep basil alive on a windowsill?",
     "Give it plenty of light, water it when the soil feels dry and pinch off the flowers."),
    ("What is a quick breakfast I can make before work?",
     "Oats soaked overnight in milk with some fruit are ready when you wake up."),
    ("Any tips for sleeping better?",
     "Keep a regular bedtime, avoid screens late at night and keep the bedroom cool."),
    ("How long should I boil an egg for a soft yolk?",
     "About six minutes in boiling water, then cool it under the tap."),
    ("Which stretches help after a long walk?",
     "Calf and hamstring stretches, held for half a minute each, help most."),
    ("How can I make my emails shorter?",
     "Put the request in the first line and cut every sentence that does not support it."),
    ("What should I pack for a day of hiking?",
     "Water, a snack, a rain jacket, a map and a charged phone."),
)

ANSWER_SYSTEM = "You are a helpful assistant. Answer the user's question briefly, from what you know about the user."
ACKNOWLEDGE = "Got it, I will remember that."

# The ReAct loop's own step rules: the paging agent is told exactly the format that react.parse_step reads.
PAGING_SYSTEM = "You are a helpful assistant with a memory. You may use these tools:\n{tools}\n\n" + STEP_RULES + """

Example:
Question: What is my dog called?
Thought: The user told me, but it is no longer in my context. I should search my archival memory.
Action: archival_search
Action Input: {{"query": "dog called"}}
Observation: [3, evicted] user: My dog is called Biscuit.
Thought: The archive says the dog is called Biscuit.
Final Answer: Biscuit"""
# The example's fact (a dog called Biscuit) is in no scenario: a recall must come from the archive, not the prompt.


def conversation(scenario: Scenario, small_talk: int = len(SMALL_TALK)) -> list[Message]:
    """The turns before the question: the fact and its acknowledgement, then `small_talk` pairs of small talk."""
    turns = [Message("user", scenario.fact), Message("assistant", ACKNOWLEDGE)]
    for question, reply in SMALL_TALK[:small_talk]:
        turns += [Message("user", question), Message("assistant", reply)]
    return turns


def recalled(answer: str | None, gold: str) -> bool:
    """The gold word or number occurs as a whole word in the answer (case-insensitive); None is never right."""
    if not answer:
        return False
    return re.search(rf"(?<![\w]){re.escape(gold.lower())}(?![\w])", answer.lower()) is not None


def _usage(llm: object) -> tuple[int, int]:
    usage = getattr(llm, "usage", None)
    return (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)


def _read(llm: object, messages: list[Message], spent: int) -> int:
    """Prompt tokens the model reads for `messages`: the whole templated prompt where the backend can tokenize it
    (a prefix served from its cache still counts: the comparison is of contexts, not of cache luck), else what
    its usage counted."""
    ids = getattr(llm, "prompt_ids", None)
    return len(ids(messages)) if callable(ids) else spent


def _answer(llm: LLM, messages: list[Message], max_tokens: int) -> dict:
    before = _usage(llm)
    reply = llm.chat(messages, max_tokens=max_tokens, temperature=0.0)[0]
    after = _usage(llm)
    return {"answer": reply.text.strip(), "prompt_tokens": _read(llm, messages, after[0] - before[0]),
            "completion_tokens": after[1] - before[1]}


def paged_memory(scenario: Scenario, room: int, count: TokenCounter = count_words, per_message: int = 0,
                 small_talk: int = len(SMALL_TALK)) -> PagedMemory:
    """A PagedMemory (system: PAGING_SYSTEM with the four memory tools) after the scenario's conversation was
    added, whose budget leaves `room` tokens for messages beside its system part: with a small room the early
    fact has been paged out to the archive before the question is asked."""
    core = CoreMemory({"persona": "I am a helpful assistant.", "human": ""})
    system = PAGING_SYSTEM.format(tools=describe_tools(ToolBox(PagedMemory("", budget=10**9).tools())))
    fixed = context_tokens([PagedMemory(system, 10**9, count, per_message, core).system_message()], count,
                           per_message)
    memory = PagedMemory(system, budget=fixed + room, count=count, per_message=per_message, core=core)
    for m in conversation(scenario, small_talk):
        memory.add(m.role, m.content)
    return memory


def paging_episode(llm: LLM, memory: PagedMemory, question: str, max_steps: int = 4, max_tokens: int = 64) -> dict:
    """The model answers `question` from the main context of `memory`, with its four tools (ReAct steps, read by
    `labkit.agents.react.parse_step`, a bad one answered with the format again). As in MemGPT, every step and
    every observation joins the FIFO queue like any message, so they page older turns out too.

    Returns a plain dict: the answer (None without one), each step (kind, tool, arguments, observation), model
    calls, tokens (prompt: the templated prompt of each call, tokenized where the backend can; generated: from
    the backend's usage), and the largest main context the model was shown, in the memory's
    own count (`memory.budget` bounds it: it is recorded so that a reader can check it)."""
    if not isinstance(llm, LLM):
        raise TypeError(f"llm must be a labkit.llm.base.LLM, got {type(llm).__name__}")
    if not isinstance(memory, PagedMemory):
        raise TypeError(f"memory must be a PagedMemory, got {type(memory).__name__}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r:.80}")
    for name, value in (("max_steps", max_steps), ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    box = ToolBox(memory.tools())
    out: dict = {"answer": None, "steps": [], "model_calls": 0, "overflow": None, "prompt_tokens": 0,
                 "completion_tokens": 0}
    memory.add("user", f"Question: {question.strip()}")
    largest = memory.tokens()
    for _ in range(max_steps):  # max_steps model calls at most, whatever the model writes
        before, context = _usage(llm), memory.context()
        reply = llm.chat(context, max_tokens=max_tokens, temperature=0.0, stop=STOP)[0]
        after = _usage(llm)
        out["model_calls"] += 1
        out["prompt_tokens"] += _read(llm, context, after[0] - before[0])
        out["completion_tokens"] += after[1] - before[1]
        step = parse_step(reply.text)
        if step.kind == "answer":
            out["steps"].append({"kind": "answer", "text": step.text.strip()})
            out["answer"] = step.final_answer
            break
        observation = (format_error(step.error or "", reply.finish_reason, max_tokens) if step.malformed
                       else box.call(step.action or "", step.arguments))
        out["steps"].append({"kind": step.kind, "tool": step.action, "arguments": step.arguments,
                             "observation": observation, "text": step.text.strip()})
        try:  # a reply or an observation too big for the main context even alone is refused: the episode ends
            memory.add("assistant", step.text.strip() or "(empty reply)")
            memory.add("user", f"Observation: {observation}")
        except ValueError as e:
            out["overflow"] = str(e)
            break
        largest = max(largest, memory.tokens())
    out.update(largest_context=largest, budget=memory.budget)
    return out


def paging_run(llm: LLM | None = None, *, room: int = 200, max_steps: int = 4, max_tokens: int = 64,
               answer_tokens: int = 24, limit: int | None = None, progress: bool = True) -> dict:
    """Saved run `13-memory`: for every scenario, the model asked the question four ways (all greedy):

    - `full`: the whole conversation in its context (no budget): can it copy the fact when it sees it?
    - `window`: the token window (`fit_to_budget`, `room` tokens beside the system prompt): the fact was evicted;
    - `retrieval`: the same window, plus what `archival_search(question, k=3)` returns, put there by the code;
    - `agent`: MemGPT-style — the paged main context and the four memory tools, the model deciding what to call
      (`paging_episode`).

    Tokens are counted with the model's tokenizer and chat template (`chat_counter`) where the backend has one,
    else in words. Returns a plain dict; `summarize_paging(record)` makes the chapter's table."""
    from labkit.llm import connect

    llm = llm if llm is not None else connect()
    try:
        count, per_message, reply_prompt = chat_counter(llm)
        counter = "tokenizer"
    except TypeError:  # an HTTP backend has no tokenizer here: words stand in for tokens
        count, per_message, reply_prompt, counter = count_words, 0, 0, "words"
    scenarios = SCENARIOS[:limit]
    bar = scenarios
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(scenarios, desc="memory scenarios")
    rows = []
    for sc in bar:
        rows.append(scenario_row(llm, sc, count, per_message, room=room, max_steps=max_steps, max_tokens=max_tokens,
                                 answer_tokens=answer_tokens))
    return {"model": llm.name, "counter": counter, "per_message": per_message, "reply_prompt": reply_prompt,
            "room": room, "max_steps": max_steps, "max_tokens": max_tokens, "answer_tokens": answer_tokens,
            "small_talk": len(SMALL_TALK), "scenarios": rows}


def _windowed(system: str, turns: list[Message], room: int, count: TokenCounter, per_message: int) -> list[Message]:
    head = Message("system", system)
    return fit_to_budget([head, *turns], context_tokens([head], count, per_message) + room, count, per_message)[0]


def scenario_row(llm: LLM, sc: Scenario, count: TokenCounter = count_words, per_message: int = 0, *,
                 room: int = 200, max_steps: int = 4, max_tokens: int = 64, answer_tokens: int = 24,
                 conditions: Sequence[str] = ("full", "window", "retrieval", "agent")) -> dict:
    """One scenario of `paging_run`, for the `conditions` asked (the notebook's live slice re-runs a few)."""
    turns = [*conversation(sc), Message("user", sc.question)]
    row: dict = {"id": sc.id, "gold": sc.answer}
    if "full" in conditions:
        row["full"] = _answer(llm, [Message("system", ANSWER_SYSTEM), *turns], answer_tokens)
    if "window" in conditions:
        kept = _windowed(ANSWER_SYSTEM, turns, room, count, per_message)
        row["window"] = {**_answer(llm, kept, answer_tokens), "messages": len(kept),
                         "fact_in_context": any(sc.fact in m.content for m in kept)}
    memory = paged_memory(sc, room, count, per_message)
    hits = memory.archive.search(sc.question, k=3)
    row["search"] = {"hits": [e.text for e in hits], "found": any(sc.fact in e.text for e in hits),
                     "fact_in_context": any(sc.fact in m.content for m in memory.context()),
                     "evicted": len(memory.recall)}
    if "retrieval" in conditions:  # the hits go before the question, as chapter 12 puts retrieved passages
        found = "From your archival memory:\n" + "\n".join(e.text for e in hits)
        asked = [*turns[:-1], Message("user", f"{found}\n\nQuestion: {sc.question}")]
        row["retrieval"] = _answer(llm, _windowed(ANSWER_SYSTEM, asked, room, count, per_message), answer_tokens)
    if "agent" in conditions:
        row["agent"] = paging_episode(llm, memory, sc.question, max_steps, max_tokens)
    return row


CONDITIONS = ("full", "window", "retrieval", "agent")


def summarize_paging(record: Mapping) -> dict:
    """The chapter's numbers from a `paging_run` record (pure counting: the same on every CPU).

    Per condition: how many answers contain the gold (`recalled`), model calls and tokens. For the agent, what it
    did with the tools: episodes that searched the archive at all / first, searches whose results held the fact,
    malformed steps, calls per tool, episodes that ended with an answer."""
    rows = record["scenarios"]
    if not rows:
        raise ValueError("the record has no scenarios")
    out: dict = {"n": len(rows), "conditions": {}}
    for c in CONDITIONS:
        got = [r[c] for r in rows if c in r]
        out["conditions"][c] = {
            "recalled": sum(recalled(g["answer"], r["gold"]) for g, r in zip(got, rows)),
            "model_calls": sum(g.get("model_calls", 1) for g in got),
            "prompt_tokens": sum(g["prompt_tokens"] for g in got),
            "completion_tokens": sum(g["completion_tokens"] for g in got)}
    agent = [r["agent"] for r in rows]
    actions = [[s for s in a["steps"] if s["kind"] == "action"] for a in agent]
    tools: dict[str, int] = {}
    for steps in actions:
        for s in steps:
            tools[s["tool"]] = tools.get(s["tool"], 0) + 1
    out["agent"] = {
        "answered": sum(a["answer"] is not None for a in agent),
        "searched": sum(any(s["tool"] == "archival_search" for s in steps) for steps in actions),
        "searched_first": sum(bool(a["steps"]) and a["steps"][0].get("tool") == "archival_search" for a in agent),
        "search_found_fact": sum(any(s["tool"] == "archival_search" and _fact_in(s["observation"], r)
                                     for s in steps) for steps, r in zip(actions, rows)),
        "malformed_steps": sum(s["kind"] == "malformed" for a in agent for s in a["steps"]),
        "steps": sum(len(a["steps"]) for a in agent),
        "tool_calls": dict(sorted(tools.items())),
        "within_budget": sum(a["largest_context"] <= a["budget"] for a in agent)}
    out["window_fact_evicted"] = sum(not r["window"]["fact_in_context"] for r in rows)
    out["search_found"] = sum(r["search"]["found"] for r in rows)
    return out


def _fact_in(observation: str, row: Mapping) -> bool:
    fact = next(s.fact for s in SCENARIOS if s.id == row["id"])
    return fact in observation
