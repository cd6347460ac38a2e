"""labkit.bpe: byte-level BPE training, encoding and decoding."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import bpe
from labkit.bpe import BPETokenizer, merge_pair, most_frequent_pair, pretokenize, train_bpe, train_bpe_naive

SAMPLE = ("The for statement is used to iterate over the elements of a sequence.\n"
          "    for x in range(10):\n        print(x)   # indented    code\n"
          "Strings such as 'aaa' and \"aaaa\" repeat; 把努力变成一种习惯 🙂🙂 done. ") * 3


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return train_bpe(SAMPLE, 120)


# ------------------------------------------------------------------ the two steps

@pytest.mark.parametrize("ids, pair, expected", [
    ([1, 2, 3, 1, 2], (1, 2), [9, 3, 9]),
    ([1, 1, 1], (1, 1), [9, 1]),                 # non-overlapping, left to right
    ([1, 1, 1, 1], (1, 1), [9, 9]),
    ([2, 1, 1, 1, 2], (1, 1), [2, 9, 1, 2]),
    ([1, 2], (2, 1), [1, 2]),                    # absent pair: unchanged
    ([], (1, 2), []),
    ([1], (1, 2), [1]),
    ([3, 1], (3, 1), [9]),                       # the pair at the very end
])
def test_merge_pair(ids, pair, expected):
    assert merge_pair(ids, pair, 9) == expected


def test_merge_pair_does_not_mutate_its_input():
    ids = [1, 2, 1, 2]
    merge_pair(ids, (1, 2), 5)
    assert ids == [1, 2, 1, 2]


@pytest.mark.parametrize("ids, expected", [
    ([1, 2, 3, 1, 2], (1, 2)),
    ([5, 4, 5, 4, 4, 5], (4, 5)),   # (5,4) and (4,5) both occur twice: the smaller pair wins
    ([7, 7, 7], (7, 7)),            # overlapping occurrences are counted: (7,7) twice
    ([3], None),
    ([], None),
])
def test_most_frequent_pair(ids, expected):
    assert most_frequent_pair(ids) == expected


def test_pair_counts_accumulates_with_weights():
    counts = bpe.pair_counts([1, 2, 3], weight=2)
    bpe.pair_counts([2, 3], counts, weight=5)
    assert counts == {(1, 2): 2, (2, 3): 7}


# ------------------------------------------------------------------ pre-tokenizer

@given(st.text())
def test_pretokenize_covers_the_text(text):
    assert "".join(pretokenize(text)) == text


def test_pretokenize_splits_words_spaces_and_punctuation():
    assert pretokenize("Hello,  world!!  x_1 = 42\n\n") == \
        ["Hello", ",", " ", " world", "!!", " ", " x", "_", "1", " =", " 42", "\n\n"]
    assert pretokenize("    return") == ["   ", " return"]  # the last space stays with the word
    assert pretokenize("把努力 变成") == ["把努力", " 变成"]


# ------------------------------------------------------------------ training

def test_fast_trainer_equals_naive_trainer():
    assert train_bpe(SAMPLE, 150).merges == train_bpe_naive(SAMPLE, 150).merges


@given(st.text(alphabet="ab c\n", max_size=60), st.integers(0, 12))
@settings(max_examples=60, deadline=None)
def test_fast_trainer_equals_naive_trainer_on_random_text(text, num_merges):
    assert train_bpe(text, num_merges).merges == train_bpe_naive(text, num_merges).merges


def test_first_merge_is_the_most_frequent_pair():
    text = "aaab aaab ab"
    tok = train_bpe(text, 1)
    chunks = [list(c.encode()) for c in pretokenize(text)]
    counts = sum((bpe.pair_counts(c) for c in chunks), start=bpe.Counter())
    assert tok.merges[0] == min(counts, key=lambda p: (-counts[p], p))


def test_training_stops_when_no_pair_is_left():
    tok = train_bpe("ab ab", 50)
    # chunks "ab" and " ab": merges a+b, then " "+ab; then nothing is left to merge
    assert len(tok.merges) == 2 and tok.vocab[256] == b"ab" and tok.vocab[257] == b" ab"
    assert train_bpe_naive("ab ab", 50).merges == tok.merges


def test_vocabulary_and_merges_agree(tok):
    assert len(tok) == 256 + len(tok.merges) == len(tok.vocab)
    assert tok.vocab[:256] == tuple(bytes([b]) for b in range(256))
    for k, (a, b) in enumerate(tok.merges):
        assert tok.vocab[256 + k] == tok.vocab[a] + tok.vocab[b]
        assert a < 256 + k and b < 256 + k   # a merge only uses tokens that already exist


def test_merges_never_cross_chunks(tok):
    chunks = set(pretokenize(SAMPLE))
    for piece in tok.vocab[256:]:
        assert any(piece in c.encode() for c in chunks)


# ------------------------------------------------------------------ encoding and decoding

def _encode_by_applying_every_merge_in_order(tok: BPETokenizer, text: str) -> list[int]:
    out = []
    for chunk in pretokenize(text):
        ids = list(chunk.encode("utf-8"))
        for k, pair in enumerate(tok.merges):
            ids = merge_pair(ids, pair, 256 + k)
        out += ids
    return out


@given(st.text(max_size=80))
@settings(max_examples=150, deadline=None)
def test_merges_are_applied_in_learned_order(tok, text):
    assert tok.encode(text) == _encode_by_applying_every_merge_in_order(tok, text)


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_round_trip_any_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", ["", " ", "     ", "\n\n\t  \r\n", "🙂🙂🙂", "👩‍👩‍👧", "把努力变成一种习惯",
                                  "def f(x):\n        return x  ", "é vs é (combining)", "\x00\x7f\U0010ffff"])
def test_round_trip_edge_cases(tok, text):
    assert tok.decode(tok.encode(text)) == text


@given(st.text(alphabet=st.sampled_from(" \t\n"), max_size=40))
@settings(max_examples=100, deadline=None)
def test_round_trip_runs_of_whitespace(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_encoding_compresses_the_training_text(tok):
    ids = tok.encode(SAMPLE)
    assert len(ids) < len(SAMPLE.encode("utf-8")) / 2
    assert all(0 <= i < len(tok) for i in ids)


def test_zero_merges_is_plain_bytes():
    tok = BPETokenizer(())
    assert tok.encode("hé 🙂") == list("hé 🙂".encode())
    assert len(tok) == 256


def test_truncated_is_a_prefix_of_the_merges(tok):
    small = tok.truncated(10)
    assert small.merges == tok.merges[:10] and len(small) == 266
    assert len(small.encode(SAMPLE)) >= len(tok.encode(SAMPLE))
    assert small == train_bpe(SAMPLE, 10)


def test_decode_of_a_cut_character_is_replaced_not_raised():
    tok = BPETokenizer(())
    ids = tok.encode("把")  # three bytes
    assert tok.decode(ids[:2]) == "\ufffd"
    assert tok.decode_bytes(ids[:2]) == "把".encode()[:2]


def test_show_piece():
    assert bpe.show_piece(b" a\n") == "␣a⏎"
    assert bpe.show_piece("把".encode()[:2]) == "<e6><8a>"
    assert bpe.show_piece("习".encode() + b"\xe6") == "习<e6>"


def test_segmentation_html_escapes():
    out = bpe.segmentation_html([b"<b>", b" "], title="a & b")
    assert "&lt;b&gt;" in out and "␣" in out and "a &amp; b" in out


# ------------------------------------------------------------------ errors at the edges

def test_errors():
    tok = BPETokenizer(())
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="expects a str"):
        pretokenize(3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([256])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="must be ints"):
        tok.decode([1.5])
    with pytest.raises(ValueError, match="num_merges must be an int >= 0"):
        train_bpe("abc", -1)
    with pytest.raises(ValueError, match="does not exist yet"):
        BPETokenizer(((300, 1),))
    with pytest.raises(ValueError, match="num_merges must lie in"):
        tok.truncated(1)
    with pytest.raises(TypeError, match="text must be a str"):
        train_bpe(["a"], 3)


def test_explorer_builds():
    tok = train_bpe(SAMPLE, 50)
    w = bpe.bpe_explorer(tok, ["the for statement", "把努力"], [0, 10, 50])
    stack = w.children[1]
    assert len(stack.children) == 2 and len(stack.children[0].children) == 3
    assert "50 merges" in stack.children[0].children[2].value
    with pytest.raises(ValueError, match="merge_steps"):
        bpe.bpe_explorer(tok, ["x"], [0, 60])


def test_hf_pieces_inverts_the_byte_level_alphabet():
    char_of_byte = {b: ch for ch, b in bpe._BYTE_OF_CHAR.items()}
    assert sorted(char_of_byte) == list(range(256)) and len(set(char_of_byte.values())) == 256
    assert char_of_byte[ord("a")] == "a" and char_of_byte[ord(" ")] == "Ġ"  # GPT-2 shows a space as Ġ

    class FakeTokenizer:  # splits the UTF-8 bytes of the text into tokens of two bytes
        def __call__(self, text, add_special_tokens=False):
            data = text.encode("utf-8")
            return type("Enc", (), {"input_ids": [data[i:i + 2] for i in range(0, len(data), 2)]})()

        def convert_ids_to_tokens(self, ids):
            return ["".join(char_of_byte[b] for b in piece) for piece in ids]

    text = "a 把\n🙂"
    pieces = bpe.hf_pieces(FakeTokenizer(), text)
    assert b"".join(pieces).decode("utf-8") == text and all(len(p) <= 2 for p in pieces)
