"""The course's offline corpus: CPython's own documentation, split by topic, plus tokenizers and a vocabulary.

Every CPython ships `pydoc_data.topics.topics`, a dict mapping ~79 help topics ("assert", "class", ...)
to ~465k characters of English technical prose. It needs no download, so chapter 1 trains on it. The text
differs between Python versions, so we fingerprint it: `PYDOC_TOPICS_SHA256` is the fingerprint on the
course's pinned Python (3.11.7), and `load_corpus` warns (or, with strict=True, refuses) when this Python's
copy differs, because then every number in the book will differ too.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

PINNED_PYTHON = "3.11.7"
# fingerprint(pydoc_data.topics.topics) on CPython 3.11.7 (79 topics, 464,970 characters).
PYDOC_TOPICS_SHA256 = "9bdaa5bd1f4a12e151d65acf7f576195c1249d7be55f2ae2f98f51d689353f23"


def fingerprint(topics: dict[str, str]) -> str:
    """SHA-256 (hex) of a topics dict, independent of dict order.

    The hashed bytes are the UTF-8 encoding of
    `json.dumps(sorted(topics.items()), ensure_ascii=True, separators=(",", ":"))`,
    i.e. a JSON list of [name, text] pairs sorted by name. JSON escaping makes the encoding
    unambiguous (no separator can be forged by a topic's text) and ASCII-only output removes
    any dependence on the platform's default encoding.
    """
    if not isinstance(topics, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in topics.items()):
        raise TypeError("fingerprint expects a dict[str, str] mapping topic names to texts")
    blob = json.dumps(sorted(topics.items()), ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CorpusDriftWarning(UserWarning):
    """This Python's bundled docs differ from the course's pinned snapshot, so results will differ."""


@dataclass(frozen=True)
class Corpus:
    """A train / held-out split of the pydoc topics. Whole topics go to one side, never straddle."""
    train: str
    heldout: str
    train_topics: tuple[str, ...]
    heldout_topics: tuple[str, ...]
    sha256: str  # fingerprint of the topics this corpus was built from


def load_corpus(heldout_every: int = 6, strict: bool = False) -> Corpus:
    """Load `pydoc_data.topics` and split it by topic.

    Topics are sorted by name; every `heldout_every`-th one, starting with the first (the 1st, 7th, 13th, ... for the
    default, about 10% of the characters) goes to the
    held-out set, the rest to training. Texts within a split are joined with a blank line ("\\n\\n").
    On a fingerprint mismatch: warn with CorpusDriftWarning, or raise ValueError if `strict`.
    """
    if isinstance(heldout_every, bool) or not isinstance(heldout_every, int):
        raise TypeError(f"heldout_every must be an int, got {type(heldout_every).__name__}")
    if heldout_every < 2:
        raise ValueError(f"heldout_every must be >= 2 (1 would leave no training text), got {heldout_every}")
    from pydoc_data.topics import topics  # imported lazily: it is a 0.5 MB module

    sha = fingerprint(topics)
    if sha != PYDOC_TOPICS_SHA256:
        msg = (f"pydoc_data.topics on this Python ({sys.version.split()[0]}) differs from the course's pinned "
               f"snapshot (Python {PINNED_PYTHON}): fingerprint {sha[:12]}... != {PYDOC_TOPICS_SHA256[:12]}... "
               "The corpus text differs, so counts, perplexities and samples will not match the book.")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, CorpusDriftWarning, stacklevel=2)

    names = sorted(topics)
    heldout = tuple(name for i, name in enumerate(names) if i % heldout_every == 0)
    held = set(heldout)
    train = tuple(name for name in names if name not in held)
    return Corpus(train="\n\n".join(topics[t] for t in train),
                  heldout="\n\n".join(topics[t] for t in heldout),
                  train_topics=train, heldout_topics=heldout, sha256=sha)


def char_tokens(text: str) -> list[str]:
    """Character-level tokens: every character (spaces and newlines included) is one token."""
    if not isinstance(text, str):
        raise TypeError(f"char_tokens expects a str, got {type(text).__name__}")
    return list(text)


# A word is a letter or underscore followed by letters, digits or underscores (so identifiers such as
# `__init__` or `utf8` stay whole); a number is a run of digits; any other non-space character is a
# punctuation token, and a run of the same mark is one token: the docs draw table rules with "-----" and
# "=====", and counting each dash as a word would make the text look far more predictable than it is.
# Whitespace separates tokens and is dropped.
_WORD_RE = re.compile(r"[^\W\d]\w*|\d+|([^\w\s])\1*")


def word_tokens(text: str) -> list[str]:
    """Word-level tokens of the lowercased text: words, numbers, punctuation marks (a run of one mark is one).

    >>> word_tokens("Call f(x, 42) -- don't!")
    ['call', 'f', '(', 'x', ',', '42', ')', '--', 'don', "'", 't', '!']
    """
    if not isinstance(text, str):
        raise TypeError(f"word_tokens expects a str, got {type(text).__name__}")
    return [m.group() for m in _WORD_RE.finditer(text.lower())]


class Vocab:
    """A token <-> id mapping built from training tokens, with id 0 reserved for `<unk>`.

    Ids are deterministic: `<unk>` first, then tokens by descending training count, ties broken by the token.
    Tokens never seen in training (or rarer than `min_count`) encode to `unk_id`.
    """
    UNK = "<unk>"
    unk_id = 0

    def __init__(self, itos: Sequence[str]):
        itos = tuple(itos)
        if not itos or itos[0] != self.UNK:
            raise ValueError(f"itos must start with {self.UNK!r} (the reserved id 0)")
        if not all(isinstance(t, str) for t in itos):
            raise TypeError("every token in itos must be a str")
        if len(set(itos)) != len(itos):
            raise ValueError("itos contains duplicate tokens")
        self.itos: tuple[str, ...] = itos
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(itos)}

    @classmethod
    def build(cls, tokens: Iterable[str], min_count: int = 1) -> Vocab:
        """Vocabulary of the tokens seen at least `min_count` times."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        counts = Counter(tokens)
        counts.pop(cls.UNK, None)  # a literal "<unk>" in the text is the reserved token, not a second one
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls((cls.UNK, *kept))

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, first={list(self.itos[:8])})"

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Token ids (int64, 1-D); unknown tokens map to `unk_id`."""
        if isinstance(tokens, str):
            raise TypeError("encode expects a sequence of tokens, not a str: tokenize it first "
                            "(char_tokens or word_tokens)")
        get, unk = self.stoi.get, self.unk_id
        return np.fromiter((get(t, unk) for t in tokens), dtype=np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        """Tokens for ids; raises ValueError on an id outside [0, len(vocab))."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode expects 1-D ids, got shape {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"decode expects integer ids, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids must lie in [0, {len(self)}), got values in [{ids.min()}, {ids.max()}]")
        return [self.itos[i] for i in ids.tolist()]
