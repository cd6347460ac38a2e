"""Byte-level byte-pair encoding (BPE), trained from scratch (Sennrich et al. 2016; byte-level as in GPT-2).

The base vocabulary is the 256 byte values, so *any* text encodes: UTF-8 turns every character, emoji and
CJK included, into 1-4 bytes. Training then repeats one step: find the most frequent adjacent pair of
tokens and give it a new id (256, 257, ...). Encoding applies the learned merges in the order they were
learned; decoding concatenates each token's bytes and decodes UTF-8, so decode(encode(s)) == s exactly.

Before counting, a regex *pre-tokenizer* cuts the text into chunks (words with their leading space, numbers,
punctuation runs, whitespace runs) and merges never cross a chunk boundary: otherwise BPE would spend its
vocabulary on pairs like "e t" that straddle words (GPT-2 introduced this; our pattern is our own, simpler).

Two trainers give identical merges:
  * `train_bpe_naive`: recount every pair after every merge. Read this one; it is O(merges x text).
  * `train_bpe`: count pairs once, then after each merge update only the counts of the chunks that contained
    the merged pair, and find the best pair with a lazily updated heap. ~1000 merges of chapter 1's
    training text take a few seconds instead of minutes.

The lab asks for the two small steps both trainers are made of: `merge_pair` and `most_frequent_pair`.
"""
from __future__ import annotations

import heapq
import html
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# A chunk is: an optional space + a run of letters; an optional space + a run of digits; an optional space
# + a run of punctuation (the underscore counts as punctuation); or a run of whitespace. A run of spaces
# before a word leaves its last space to the word (the lookahead), so " x" and "    x" end in the same
# chunk " x". The alternatives cover every character, so joining the chunks gives back the text.
PRETOKENIZE_PATTERN = r" ?[^\W\d_]+| ?\d+| ?(?:[^\w\s]|_)+|\s+(?!\S)|\s+"
_PRETOKENIZE_RE = re.compile(PRETOKENIZE_PATTERN)

Pair = tuple[int, int]


def pretokenize(text: str) -> list[str]:
    """Cut text into the chunks BPE merges within. "".join(pretokenize(text)) == text always."""
    if not isinstance(text, str):
        raise TypeError(f"pretokenize expects a str, got {type(text).__name__}")
    return _PRETOKENIZE_RE.findall(text)


# ----------------------------------------------------------------------------------------------------------
# the two steps of BPE (the lab's exercises)

def merge_pair(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right.

    Occurrences never overlap: after a match we skip both tokens, so [a, a, a] with pair (a, a) becomes
    [new, a], not [new, new].
    """
    out: list[int] = []
    i, n = 0, len(ids)
    first, second = pair
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2  # skip past both halves of the pair
        else:
            out.append(ids[i])
            i += 1
    return out


def pair_counts(ids: Sequence[int], counts: Counter | None = None, weight: int = 1) -> Counter:
    """Counts of adjacent pairs in `ids` (added, times `weight`, into `counts` if given)."""
    counts = Counter() if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] += weight
    return counts


def most_frequent_pair(ids: Sequence[int]) -> Pair | None:
    """The adjacent pair that occurs most often in `ids`; ties go to the smallest pair; None if len(ids) < 2.

    "Smallest" compares the pairs as tuples: (97, 98) < (97, 99) < (98, 0). A fixed tie rule makes training
    reproducible (first-seen order would depend on the order of the chunks).
    """
    counts = pair_counts(ids)
    if not counts:
        return None
    return min(counts, key=lambda p: (-counts[p], p))


# ----------------------------------------------------------------------------------------------------------
# the tokenizer

@dataclass(frozen=True)
class BPETokenizer:
    """A trained byte-level BPE: merge k (0-based) made token 256 + k from the pair merges[k]."""
    merges: tuple[Pair, ...]
    pattern: str = PRETOKENIZE_PATTERN
    _vocab: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _rank: dict[Pair, int] = field(init=False, repr=False, compare=False)
    _cache: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        vocab = [bytes([b]) for b in range(256)]
        for k, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise ValueError(f"merge {k} = {(a, b)} uses an id that does not exist yet (< {len(vocab)})")
            vocab.append(vocab[a] + vocab[b])
        object.__setattr__(self, "_vocab", tuple(vocab))
        object.__setattr__(self, "_rank", {pair: k for k, pair in enumerate(self.merges)})
        object.__setattr__(self, "_cache", {})  # chunk -> ids: real text repeats its words a lot

    def __len__(self) -> int:
        return 256 + len(self.merges)

    @property
    def vocab(self) -> tuple[bytes, ...]:
        """vocab[id] is the bytes of token id."""
        return self._vocab

    def truncated(self, num_merges: int) -> BPETokenizer:
        """The tokenizer after only its first `num_merges` merges (a smaller vocabulary)."""
        if not 0 <= num_merges <= len(self.merges):
            raise ValueError(f"num_merges must lie in [0, {len(self.merges)}], got {num_merges}")
        return BPETokenizer(self.merges[:num_merges], self.pattern)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        ids = list(chunk.encode("utf-8"))
        # Apply merges in learned order: repeatedly merge the present pair that was learned first. This equals
        # looping over all merges in order, but only looks at pairs that actually occur in the chunk.
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._rank.get(p, len(self._rank)))
            if pair not in self._rank:
                break
            ids = merge_pair(ids, pair, 256 + self._rank[pair])
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: pre-tokenize, then merge each chunk's UTF-8 bytes in learned order."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        out: list[int] = []
        cache = self._cache
        for chunk in re.findall(self.pattern, text):
            ids = cache.get(chunk)
            if ids is None:
                ids = cache[chunk] = self._encode_chunk(chunk)
            out.extend(ids)
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a token sequence (ValueError on an id outside the vocabulary)."""
        vocab, out = self._vocab, []
        for i in ids:
            if isinstance(i, bool) or not (isinstance(i, int) or hasattr(i, "__index__")):
                raise TypeError(f"token ids must be ints, got {type(i).__name__}")
            if not 0 <= i < len(vocab):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(vocab)})")
            out.append(vocab[i])
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a token sequence. Invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def pieces(self, text: str) -> list[bytes]:
        """The bytes of each token of `text` (to show how it is segmented)."""
        return [self._vocab[i] for i in self.encode(text)]


# ----------------------------------------------------------------------------------------------------------
# training

def _chunk_counts(text: str, pattern: str) -> Counter:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return Counter(re.findall(pattern, text))


def _check_num_merges(num_merges: int) -> int:
    if isinstance(num_merges, bool) or not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges must be an int >= 0, got {num_merges!r}")
    return num_merges


def train_bpe_naive(text: str, num_merges: int, pattern: str = PRETOKENIZE_PATTERN) -> BPETokenizer:
    """The plain algorithm: every step recounts all pairs of all chunks. Stops early if no pair is left."""
    num_merges = _check_num_merges(num_merges)
    chunks = [(list(c.encode("utf-8")), n) for c, n in _chunk_counts(text, pattern).items()]
    merges: list[Pair] = []
    for k in range(num_merges):
        counts: Counter = Counter()
        for ids, n in chunks:
            pair_counts(ids, counts, weight=n)  # a chunk seen n times contributes its pairs n times
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        chunks = [(merge_pair(ids, best, 256 + k), n) for ids, n in chunks]
    return BPETokenizer(tuple(merges), pattern)


def train_bpe(text: str, num_merges: int, pattern: str = PRETOKENIZE_PATTERN) -> BPETokenizer:
    """Learn `num_merges` merges from `text` (fewer if no pair is left). Same merges as `train_bpe_naive`.

    Speed-ups: (1) identical chunks are counted once, with a weight; (2) `where[pair]` remembers which
    chunks contain a pair, so a merge only revisits those chunks; (3) the best pair comes from a heap of
    (-count, pair) entries. Counts change after each merge, so instead of updating entries in place we push
    a fresh entry and skip stale ones when they surface (their count no longer matches).
    """
    num_merges = _check_num_merges(num_merges)
    chunk_count = _chunk_counts(text, pattern)
    words = [list(c.encode("utf-8")) for c in chunk_count]
    weights = list(chunk_count.values())
    counts: Counter = Counter()
    where: dict[Pair, set[int]] = defaultdict(set)
    for w, ids in enumerate(words):
        for pair in zip(ids, ids[1:]):
            counts[pair] += weights[w]
            where[pair].add(w)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    while len(merges) < num_merges and heap:
        neg, best = heapq.heappop(heap)
        if counts.get(best, 0) != -neg or neg == 0:
            continue  # stale entry: this pair's count changed after the entry was pushed
        new_id = 256 + len(merges)
        merges.append(best)
        changed: set[Pair] = set()
        for w in sorted(where.pop(best)):
            ids, n = words[w], weights[w]
            merged = merge_pair(ids, best, new_id)
            if len(merged) == len(ids):
                continue
            for pair in zip(ids, ids[1:]):  # take the chunk's old pairs out ...
                counts[pair] -= n
                changed.add(pair)
            for pair in zip(merged, merged[1:]):  # ... and put its new ones in
                counts[pair] += n
                where[pair].add(w)
                changed.add(pair)
            words[w] = merged
        counts.pop(best, None)
        for pair in changed:
            c = counts.get(pair, 0)
            if c > 0:
                heapq.heappush(heap, (-c, pair))
            else:
                counts.pop(pair, None)
    return BPETokenizer(tuple(merges), pattern)


# ----------------------------------------------------------------------------------------------------------
# showing tokens

# Whitespace would be invisible: show it as symbols (as labkit.viz does for characters).
_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def show_piece(piece: bytes) -> str:
    """A token's bytes as readable text: whitespace made visible, bytes that are not whole UTF-8 characters
    (a piece of a multi-byte character) written as <e6>."""
    out, i = [], 0
    while i < len(piece):
        for size in (1, 2, 3, 4):  # the shortest prefix that is a complete character
            try:
                ch = piece[i:i + size].decode("utf-8")
            except UnicodeDecodeError:
                continue
            out.append(_VISIBLE.get(ch, ch))
            i += size
            break
        else:
            out.append(f"<{piece[i]:02x}>")
            i += 1
    return "".join(out)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2-style byte-level tokenizers store each byte as a printable character: bytes that print (and are
    not space) stand for themselves, the other 68 are shifted to 256, 257, ... in order. Inverse map."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF_CHAR = _byte_level_alphabet()


def hf_pieces(tokenizer, text: str) -> list[bytes]:
    """The bytes of each token a Hugging Face byte-level BPE tokenizer (e.g. SmolLM2's) makes of `text`."""
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False).input_ids)
    try:
        return [bytes(_BYTE_OF_CHAR[ch] for ch in tok) for tok in tokens]
    except KeyError as e:
        raise ValueError(f"{type(tokenizer).__name__} is not a byte-level BPE tokenizer: token char {e}") from None


_COLOURS = ("#dbe9f6", "#fbe3c8", "#d9f0d3", "#f6d5e5", "#e6e0f3", "#fff3bf")


def segmentation_html(pieces: Sequence[bytes], title: str = "") -> str:
    """Tokens as coloured boxes in plain HTML (no JavaScript), whitespace made visible."""
    boxes = "".join(
        f'<span style="background:{_COLOURS[i % len(_COLOURS)]};border:1px solid #bbb;border-radius:3px;'
        f'padding:0 2px;margin:1px;font-family:monospace;white-space:pre;display:inline-block">'
        f"{html.escape(show_piece(p))}</span>" for i, p in enumerate(pieces))
    head = f'<div style="font-weight:bold;margin-bottom:4px">{html.escape(title)}</div>' if title else ""
    return f'<div style="max-width:48em;font-size:13px;line-height:1.9">{head}{boxes}</div>'


def bpe_explorer(tokenizer: BPETokenizer, presets: Sequence[str], merge_steps: Sequence[int]):
    """An ipywidgets explorer: how each preset text is segmented after 0, ..., max(merge_steps) merges.

    Every view is precomputed HTML in a Stack (text) of Stacks (merges), switched by `jslink`, so it also
    works in the static book. Each view lists the merges learned just before that step.
    """
    import ipywidgets as widgets  # only the widget needs it

    presets, steps = list(presets), [int(s) for s in merge_steps]
    if not presets or not all(isinstance(p, str) and p for p in presets):
        raise ValueError("presets must be a non-empty list of non-empty strings")
    if not steps or sorted(set(steps)) != steps or steps[0] < 0 or steps[-1] > len(tokenizer.merges):
        raise ValueError(f"merge_steps must be increasing ints in [0, {len(tokenizer.merges)}], got {steps}")
    tokenizers = [tokenizer.truncated(s) for s in steps]

    def view(text: str, j: int) -> str:
        tok = tokenizers[j]
        pieces = tok.pieces(text)
        recent = tok.merges[max(len(tok.merges) - 5, 0):]
        learned = ", ".join(f"{show_piece(tok.vocab[a])}+{show_piece(tok.vocab[b])}" for a, b in recent)
        title = (f"{steps[j]} merges (vocabulary {len(tok)}): {len(pieces)} tokens for "
                 f"{len(text.encode('utf-8'))} bytes")
        note = (f'<div style="font-size:12px;color:#555;margin-top:4px">latest merges: '
                f"{html.escape(learned)}</div>") if recent else ""
        return segmentation_html(pieces, title) + note

    text_box = widgets.Dropdown(options=[(p[:40] + ("…" if len(p) > 40 else ""), i) for i, p in enumerate(presets)],
                                index=0, description="text")
    slider = widgets.SelectionSlider(options=[(str(s), j) for j, s in enumerate(steps)], index=0,
                                     description="merges")
    per_text = [widgets.Stack([widgets.HTML(view(p, j)) for j in range(len(steps))], selected_index=0)
                for p in presets]
    views = widgets.Stack(per_text, selected_index=0)
    widgets.jslink((text_box, "index"), (views, "selected_index"))
    for by_step in per_text:
        widgets.jslink((slider, "index"), (by_step, "selected_index"))
    return widgets.VBox([widgets.HBox([text_box, slider]), views])
