"""Chapter 10's structured output: the JSON-Schema automaton, its token mask over SmolLM2's vocabulary, and the
failure modes structured-generation libraries are known for (whitespace runaway, cut output reported as valid,
false rejections of valid tokenizations), each a test. Oracles: jsonschema, xgrammar (tests only)."""
from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from labkit.prompting.constrained import (
    PERSON_SCHEMA, JsonConstraint, Number, String, TokenMasks, Vocabulary, check_output, compile_schema, end_ids,
    extraction_messages,
    first_json, json_constraint, load_people, mask_step, schema_errors, score_reply, token_bytes,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "city": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}, "maxItems": 2},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
# any character up to U+3FFFF: the planes above are unassigned, and SmolLM2's vocabulary has no token holding
# their UTF-8 lead bytes F1/F2, so the tokenizer cannot write them (test_token_bytes_cover_every_json_byte)
TEXT = st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs",))
SEPARATORS = {"never": [(",", ":")], "always": [(", ", ": ")], "optional": [(",", ":"), (", ", ": ")]}


# ------------------------------------------------------------------------------------------------ mask_step
def counter(state, ch):
    """A toy automaton: the text is 'a'*k then 'b' at most once; state = (k, seen b)."""
    k, b = state
    if ch == "a" and not b:
        return (k + 1, False)
    if ch == "b" and not b:
        return (k, True)
    return None


def test_mask_step_walks_every_character():
    vocab = ["a", "ab", "ba", "b", "bb", "", "aab", "c"]
    assert mask_step(counter, (0, False), vocab).tolist() == [True, True, False, True, False, False, True, False]
    # a token whose FIRST character is fine but a later one is not ("ba" after nothing, "bb") stays masked
    assert mask_step(counter, (0, True), vocab).tolist() == [False] * 8


def test_mask_step_never_allows_the_empty_token():
    assert not mask_step(lambda s, ch: s, 0, [""])[0]


def test_mask_step_on_the_grammar_multi_symbol_tokens():
    g = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, space="never")
    vocab = ['{"', '{"a":', '{"a":1}', '{"b', '{"a":1,', "{ ", '"}', '{"a":-']
    assert mask_step(g.advance, g.start, vocab).tolist() == [True, True, True, False, False, False, False, True]


# ------------------------------------------------------------------------------------------------ the grammar
@pytest.mark.parametrize("text, ok", [
    ('{"name": "Ann", "age": 3, "city": "Rome"}', True),
    ('{"name":"Ann","age":3,"city":"Rome","tags":["x", "y"],"ok":true}', True),
    ('{"name":"Ann","age":3,"city":"Rome","ok":false}', True),       # an optional property skipped
    ('{"name":"Ann","age":3,"city":"Rome","tags":[]}', True),
    ('{"name":"Ann","age":3,"city":"Rome","tags":["x","y","x"]}', False),  # maxItems
    ('{"name":"Ann","age":3,"city":"Rome","tags":["z"]}', False),    # enum
    ('{"name":"Ann","city":"Rome","age":3}', False),                # schema order
    ('{"name":"Ann","age":3}', False),                               # a required property missing
    ('{"name":"Ann","age":3,"city":"Rome",}', False),                # trailing comma
    ('{"name":"Ann","age":3,"city":"Rome"} ', False),                # nothing after the document
    ('{"name":  "Ann","age":3,"city":"R"}', False),                  # two spaces
    ('{ "name":"Ann","age":3,"city":"R"}', False),                   # no space after '{'
    ('{"name":"Ann","age":03,"city":"R"}', False),                   # leading zero
    ('{"name":"Ann","age":3.0,"city":"R"}', False),                  # an integer has no fraction
    ('{"name":"Ann","age":-0,"city":"R"}', True),
    ('{"name":"' + "x" * 20 + '","age":3,"city":"R"}', True),        # maxLength 20
    ('{"name":"' + "x" * 21 + '","age":3,"city":"R"}', False),
    ('{"name":"' + "é" * 20 + '","age":3,"city":"R"}', True),        # characters, not bytes
    ('{"name":"' + "\\n" * 20 + '","age":3,"city":"R"}', True),       # an escape is one character
    ('{"name":"a\\qb","age":3,"city":"R"}', False),                  # not an escape
    ('{"name":"a\\u00e9","age":3,"city":"R"}', True),
    ('{"name":"a\\u00g9","age":3,"city":"R"}', False),
    ('{"name":"a\tb","age":3,"city":"R"}', False),                   # raw control character
])
def test_grammar_accepts_exactly_the_schema_valid_texts(text, ok):
    assert compile_schema(PERSON).accepts(text) == ok
    if ok:
        assert jsonschema.Draft202012Validator(PERSON).is_valid(json.loads(text))


def test_space_policies():
    s = {"type": "array", "items": {"type": "integer"}}
    policies = ("never", "optional", "always")
    assert [compile_schema(s, space=p).accepts("[1, 2]") for p in policies] == [False, True, True]
    assert [compile_schema(s, space=p).accepts("[1,2]") for p in policies] == [True, True, False]


def test_numbers_and_literals():
    g = compile_schema({"type": "number"})
    for text in ["0", "-1.5", "1e+16", "2.5E-3", "1.0000000000000002", "0.00012345678901234567"]:
        assert g.accepts(text), text
    for text in ["01", "1.", ".5", "+1", "1e", "--1", "NaN", "Infinity", "1" * 17]:
        assert not g.accepts(text), text
    e = compile_schema({"enum": [1, 12, "a", None, True]})
    assert all(e.accepts(t) for t in ["1", "12", '"a"', "null", "true"]) and not e.accepts("123")


def test_utf8_is_checked_byte_by_byte():
    g = compile_schema({"type": "string"})
    s = g.walk(g.start, b'"\xc3')           # half of 'é': allowed, the character is not finished
    assert s is not None and g.walk(s, b'\xa9"') is not None
    assert g.walk(s, b'"') is None           # a quote cannot finish half a character
    for bad in [b'"\xc0\x80', b'"\xed\xa0\x80', b'"\xf5', b'"\x80', b'"\xe0\x80']:  # overlong, surrogate, ...
        assert g.walk(g.start, bad) is None, bad


def test_states_are_hashable_and_immutable():
    g = compile_schema(PERSON)
    s1 = g.walk(g.start, b'{"name": "A')
    s2 = g.walk(g.start, b'{"name": "A')
    assert s1 == s2 and hash(s1) == hash(s2) and isinstance(s1, tuple)
    assert g.walk(s1, b'b') != s1                                    # advancing makes a new state


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "patternProperties": {}}, "unsupported JSON-Schema keyword 'patternProperties'"),
    ({"type": "string", "pattern": "a+"}, "unsupported JSON-Schema keyword 'pattern'"),
    ({"anyOf": [{"type": "string"}]}, "unsupported JSON-Schema keyword 'anyOf'"),
    ({"type": "object", "properties": {"a": {"$ref": "#"}}},
     r"unsupported JSON-Schema keyword '\$ref' at #/properties/a"),
    ({"type": ["string", "null"]}, "unsupported JSON-Schema 'type' list"),
    ({"type": "integer", "maxLength": 3}, "'maxLength' does not apply to type 'integer'"),
    ({"type": "date"}, "unknown JSON-Schema type 'date'"),
    ({"type": "array"}, "needs 'items'"),
    ({"type": "string", "minLength": 3, "maxLength": 2}, "minLength 3 > maxLength 2"),
    ({"type": "string", "maxLength": -1}, "maxLength must be an int >= 0"),
    ({"type": "object", "properties": {}, "required": ["a"]}, "required must list names from properties"),
    ({"type": "object", "additionalProperties": True}, "'additionalProperties' \\(other than false\\)"),
    ({"type": "string", "enum": [1]}, "enum/const value 1 is not of type 'string'"),
    ({"enum": [[1]]}, "must be strings, numbers, booleans or null"),
    ({"description": "no type"}, "needs a 'type'"),
])
def test_bad_schemas_name_the_keyword(schema, message):
    with pytest.raises(ValueError, match=message):
        compile_schema(schema)


def test_bad_arguments():
    with pytest.raises(ValueError, match="space must be one of"):
        compile_schema(PERSON, space="some")
    with pytest.raises(TypeError, match="a schema must be a dict"):
        compile_schema([])
    with pytest.raises(TypeError, match="one character"):
        compile_schema(PERSON).advance(compile_schema(PERSON).start, "ab")
    with pytest.raises(ValueError, match="finish_reason must be"):
        check_output("{}", PERSON, "eos")


# ------------------------------------------------------------------------------------------------ check_output
def test_check_output_never_calls_a_cut_text_valid():
    doc = '{"name": "Ann", "age": 3, "city": "Rome"}'
    assert check_output(doc, PERSON, "stop") == "valid"
    assert check_output(doc, PERSON, "length") == "valid"              # closed before the limit: it is whole
    for cut in range(1, len(doc)):
        assert check_output(doc[:cut], PERSON, "length") == "incomplete"
        assert check_output(doc[:cut], PERSON, "stop") == "invalid"
    assert check_output("12", {"type": "integer"}, "length") == "incomplete"  # might have been 123
    assert check_output("12", {"type": "integer"}, "stop") == "valid"
    assert check_output('{"name": "Ann", "age": 3}', PERSON, "stop") == "invalid"  # schema-invalid
    assert check_output(doc + " Hope this helps!", PERSON, "stop") == "invalid"
    assert check_output("NaN", {"type": "number"}, "stop") == "invalid"
    assert first_json("Sure! ```json\n" + doc + "\n```") == json.loads(doc)
    assert first_json("no json {here") is None


# ------------------------------------------------------------------------------------------------ hypothesis
def scalar_schemas():
    string = st.builds(lambda lo, extra, use: {"type": "string",
                                               **({"minLength": lo, "maxLength": lo + extra} if use else {})},
                       st.integers(0, 3), st.integers(0, 8), st.booleans())
    enum = st.lists(st.one_of(st.text(TEXT, max_size=4), st.integers(-50, 50), st.booleans(), st.none()),
                    min_size=1, max_size=4, unique_by=lambda v: json.dumps(v)).map(lambda v: {"enum": v})
    return st.one_of(string, enum, st.sampled_from([{"type": t} for t in ("integer", "number", "boolean", "null")]),
                     st.integers(-5, 5).map(lambda v: {"const": v}),
                     st.lists(st.text("abcé", min_size=1, max_size=3), min_size=1, max_size=3, unique=True)
                     .map(lambda v: {"type": "string", "enum": v}))


def schemas():
    def extend(inner):
        obj = st.dictionaries(st.text("abcdé\"", min_size=1, max_size=4), inner, max_size=4).flatmap(
            lambda props: st.builds(lambda req, addl: {"type": "object", "properties": props,
                                                       "required": [k for k, r in zip(props, req) if r],
                                                       **({"additionalProperties": False} if addl else {})},
                                    st.lists(st.booleans(), min_size=len(props), max_size=len(props)), st.booleans()))
        arr = st.builds(lambda items, lo, extra: {"type": "array", "items": items,
                                                  "minItems": lo, "maxItems": lo + extra},
                        inner, st.integers(0, 2), st.integers(0, 2))
        return st.one_of(obj, arr)
    return st.recursive(scalar_schemas(), extend, max_leaves=6)


def documents(schema):
    """A schema-valid value with the object properties in the schema's order."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    t = schema["type"]
    if t == "string":
        return st.text(TEXT, min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 12))
    if t == "integer":
        return st.integers(-10**15, 10**15)
    if t == "number":
        return st.one_of(st.integers(-10**15, 10**15), st.floats(allow_nan=False, allow_infinity=False))
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    if t == "array":
        return st.lists(documents(schema["items"]), min_size=schema["minItems"], max_size=schema["maxItems"])
    props = schema["properties"]
    parts = [st.tuples(st.just(k), documents(p), st.just(True) if k in schema["required"] else st.booleans())
             for k, p in props.items()]
    return st.tuples(*parts).map(lambda kvs: {k: v for k, v, keep in kvs if keep})


@st.composite
def schema_and_text(draw, policies=("never", "optional", "always")):
    schema = draw(schemas())
    doc = draw(documents(schema))
    space = draw(st.sampled_from(policies))
    sep = draw(st.sampled_from(SEPARATORS[space]))
    return schema, doc, space, json.dumps(doc, ensure_ascii=False, separators=sep)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_and_text())
def test_every_schema_valid_document_is_accepted(case):
    schema, doc, space, text = case
    assert jsonschema.Draft202012Validator(schema).is_valid(doc)
    assert schema_errors(doc, schema) == []
    assert compile_schema(schema, space=space).accepts(text), text


json_values = st.recursive(st.none() | st.booleans() | st.integers(-100, 100)
                           | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text("abcdé\"", max_size=3), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schemas(), json_values)
def test_schema_errors_agrees_with_jsonschema(schema, value):
    assert (schema_errors(value, schema) == []) == jsonschema.Draft202012Validator(schema).is_valid(value)


@settings(max_examples=100, deadline=None)
@given(schema_and_text(), st.integers(0, 10**6))
def test_the_automaton_accepts_only_schema_valid_texts(case, seed):
    """Random walks through the automaton (random allowed bytes) end in documents jsonschema accepts."""
    schema, _, space, _ = case
    g = compile_schema(schema, space=space)
    rng = random.Random(seed)
    alphabet = list(b' {}[]",:-.eE+0123456789truefalsnabcd\\u\xc3\xa9')
    state, out = g.start, bytearray()
    for _ in range(80):
        if g.is_accepting(state) and rng.random() < 0.3:
            value = json.loads(out.decode())
            assert jsonschema.Draft202012Validator(schema).is_valid(value), out
            return
        options = [b for b in alphabet if g.step(state, b) is not None] or \
            [b for b in range(256) if g.step(state, b) is not None]
        if not options:
            assert g.is_accepting(state), out  # no dead ends: an unfinished text can always go on
            return
        b = rng.choice(options)
        state = g.step(state, b)
        out.append(b)


def test_whitespace_runaway_is_bounded():
    """Outside strings at most ONE space can follow any prefix of a document: a model that loves spaces
    cannot pad until max_tokens (libraries that allow JSON's free whitespace see exactly that)."""
    text = '{"name": "Ann", "age": 3, "city": "Rome", "tags": ["x", "y"], "ok": true}'
    g = compile_schema(PERSON)
    inside = False
    for i in range(len(text) + 1):
        state = g.walk(g.start, text[:i].encode())
        spaces = 0
        while spaces < 10 and (nxt := g.step(state, 0x20)) is not None:
            state, spaces = nxt, spaces + 1
        if not inside:
            assert spaces <= 1, text[:i]
        if i < len(text) and text[i] == '"' and (i == 0 or text[i - 1] != "\\"):
            inside = not inside
    # inside a string, maxLength is the bound
    state = g.walk(g.start, b'{"name": "')
    assert g.walk(state, b" " * 20) is not None and g.walk(state, b" " * 21) is None


# ------------------------------------------------------------------------------------------------ the real vocabulary
@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from labkit.models import smollm2_dir
    return AutoTokenizer.from_pretrained(smollm2_dir())


@pytest.fixture(scope="module")
def vocab(tok):
    return token_bytes(tok)


@pytest.fixture(scope="module")
def voc(vocab, tok):
    return Vocabulary(vocab, end_ids(tok))


@pytest.fixture(scope="module")
def masks(voc):
    return {p: TokenMasks(compile_schema(PERSON, space=p), voc) for p in ("never", "optional", "always")}


@pytest.mark.slow
def test_token_bytes_cover_every_json_byte(tok, vocab):
    text = '{"name": "Zoë", "city": "Kraków 東京"}'
    ids = tok(text, add_special_tokens=False).input_ids
    assert b"".join(vocab[i] for i in ids) == text.encode()
    assert len(vocab) == 49152
    missing = {b for b in range(256) if bytes([b]) not in set(vocab)}
    never_in_json = set(range(0x20)) | {0xC0, 0xC1} | set(range(0xF5, 0x100))  # raw controls; invalid UTF-8
    assert missing - never_in_json == {0xF1, 0xF2}  # leads of U+40000..U+BFFFF, unassigned planes
    assert not any(v and (0xF1 in v or 0xF2 in v) for v in vocab)
    assert vocab[tok.eos_token_id] is None  # special tokens never appear inside JSON


@pytest.mark.slow
def test_fast_mask_equals_mask_step(masks, vocab):  # about 1 s per state: a plain loop over 49152 tokens
    """The trie walk (+ the string shortcut, + the cache) equals the plain loop over all 49152 tokens."""
    m = masks["optional"]
    latin = [(v or b"").decode("latin-1") for v in vocab]  # one char per byte, so mask_step walks bytes
    g = m.grammar
    advance = lambda s, ch: g.step(s, ord(ch))  # noqa: E731
    for prefix in [b"", b'{"na', b'{"name": "Zo\xc3', b'{"name": "Ann"', b'{"name":"A","age": 1',
                   b'{"name":"' + b"x" * 18, b'{"name":"A","age":1,"city":"B","tags":["x"']:
        state = g.walk(g.start, prefix)
        for _ in range(2):  # the second call is served from the cache
            assert torch.equal(torch.from_numpy(m.mask(state)), mask_step(advance, state, latin)), prefix


@pytest.mark.slow
def test_tokens_that_span_several_grammar_symbols(masks, tok, vocab):
    m = masks["optional"]
    g = m.grammar
    ids = {t: tok.convert_tokens_to_ids(tok.tokenize(t))[0] for t in ['":', '"},', '",', '{"', ' "']}
    assert all(vocab[i] == t.encode() for t, i in ids.items()), "each of these is one token in SmolLM2"
    allowed = lambda prefix: m.mask(g.walk(g.start, prefix))  # noqa: E731
    assert allowed(b'{"name')[ids['":']]                  # closes the key and writes the colon
    assert allowed(b'{"name": "Ann')[ids['",']]           # closes the string, then the comma
    assert allowed(b"")[ids['{"']]
    assert not allowed(b'{"name": "Ann')[ids['"},']]      # '}' too early: age and city are required
    city = b'{"name": "Ann", "age": 3, "city": "Rome'
    assert not allowed(city)[ids['"},']]                   # the object closes, then ',' has nothing to separate
    nested = TokenMasks(compile_schema({"type": "array", "items": PERSON}), m.vocab)
    assert nested.mask(nested.grammar.walk(nested.grammar.start, b'[' + city))[ids['"},']]


@pytest.mark.slow
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_false_rejections(data, tok, vocab, voc):
    """Every tokenization of a schema-valid document is allowed at every step: the tokenizer's own encoding,
    and random segmentations of the text into vocabulary tokens; EOS is allowed at the end."""
    schema, _, space, text = data.draw(schema_and_text())
    m = TokenMasks(compile_schema(schema, space=space), voc, cache_size=64)
    by_bytes = {v: i for i, v in enumerate(vocab) if v}
    rng = random.Random(data.draw(st.integers(0, 10**6)))
    own = tok(text, add_special_tokens=False).input_ids
    randoms = [segment(text.encode(), by_bytes, rng) for _ in range(2)]
    for ids in [own, *randoms]:
        assert b"".join(vocab[i] for i in ids) == text.encode()
        c = JsonConstraint(m)
        for i in ids:
            assert c.allowed()[i], (text, vocab[i])
            c.advance(i)
        assert c.is_complete() and c.allowed()[tok.eos_token_id]


def segment(data: bytes, by_bytes: dict[bytes, int], rng: random.Random) -> list[int]:
    """A random segmentation of `data` into vocabulary tokens (every single byte is one)."""
    out, i = [], 0
    while i < len(data):
        ends = [j for j in range(i + 1, min(len(data), i + 16) + 1) if data[i:j] in by_bytes]
        j = rng.choice(ends)
        out.append(by_bytes[data[i:j]])
        i = j
    return out


@pytest.mark.slow
def test_random_constrained_walks_are_schema_valid(masks, tok, vocab):
    """A 'model' that picks uniformly among the allowed tokens, and one that loves whitespace: every finished
    output is schema-valid (jsonschema), and the whitespace lover finishes too (bounded whitespace)."""
    rng = np.random.default_rng(0)
    schema = {**PERSON, "properties": {**PERSON["properties"], "city": {"type": "string", "maxLength": 8}}}
    validator = jsonschema.Draft202012Validator(schema)
    voc = masks["optional"].vocab
    spaces = np.array([bool(v) and set(v) == {0x20} for v in vocab])
    for trial in range(4):
        c = JsonConstraint(TokenMasks(compile_schema(schema, space=("never", "optional", "always")[trial % 3]), voc))
        text = b""
        for _ in range(120):
            allowed = c.allowed().numpy()
            ends = allowed[tok.eos_token_id]
            allowed[end_ids(tok)] = False
            if ends and (trial % 2 or rng.random() < 0.5 or not allowed.any()):
                break
            lover = trial % 2 and (allowed & spaces).any()
            pick = np.flatnonzero(allowed & spaces) if lover else np.flatnonzero(allowed)
            t = int(rng.choice(pick))
            c.advance(t)
            text += vocab[t]
        assert c.is_complete(), text  # every string is bounded, so even the whitespace lover finishes
        assert check_output(text.decode(), schema, "stop") == "valid"
        assert validator.is_valid(json.loads(text))


def test_json_constraint_checks_its_grammar():
    with pytest.raises(TypeError, match="grammar must come from compile_schema"):
        json_constraint(PERSON, None)


def xgrammar_allowed(matcher, bitmask) -> np.ndarray:
    matcher.fill_next_token_bitmask(bitmask)
    words = bitmask[0].numpy().view(np.uint32)
    return ((words[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool).reshape(-1)[:49152]


@pytest.mark.slow
@pytest.mark.parametrize("space, separators", [("never", (",", ":")), ("always", (", ", ": "))])
def test_agrees_with_xgrammar(space, separators, tok, voc):
    """xgrammar 0.2.9 (same schema, same tokenizer, no free whitespace) allows the same tokens at every state
    along a few documents, except where the two differ by design, each checked to be exactly that:
    1. special tokens (<|im_start|>, ...): xgrammar lets their literal text into strings; we never emit them;
    2. <|endoftext|> at the end: labkit.llm.local ends a sample on it as well as on <|im_end|>, so both are allowed;
    3. in a string with maxLength, xgrammar allows raw control characters (invalid JSON: json.loads rejects
       them) and no escapes; we allow escapes (one character each) and no raw controls;
    4. "-0": JSON's number grammar allows it (it is the integer 0); xgrammar's integer rule does not."""
    import xgrammar as xgr

    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=49152)).compile_json_schema(
        json.dumps(PERSON), any_whitespace=False, separators=separators)
    m = TokenMasks(compile_schema(PERSON, space=space), voc)
    special = np.array([v is None for v in voc.tokens])
    escapes_or_controls = np.array([bool(v) and (0x5C in v or min(v) < 0x20) for v in voc.tokens])
    docs = [{"name": "Ann Lee", "age": 34, "city": "São Paulo", "tags": ["x"], "ok": True},
            {"name": "Zoë", "age": -7, "city": "東京 \"Tokyo\"", "ok": False},
            {"name": "", "age": 0, "city": "", "tags": []}]
    compared = 0
    for doc in docs:
        text = json.dumps(doc, ensure_ascii=False, separators=separators)
        matcher, bitmask = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, 49152)
        state = m.grammar.start
        for t in tok(text, add_special_tokens=False).input_ids + [None]:
            ours, theirs = m.allowed(state).numpy(), xgrammar_allowed(matcher, bitmask)
            differ = ours != theirs
            if t is None:                                                      # 2: the second end token
                assert m.grammar.is_accepting(state) and set(np.flatnonzero(differ)) <= set(voc.end_ids)
                differ[voc.end_ids] = False
            assert not (differ & ours & special).any()                        # 1: we never allow special tokens
            differ &= ~special
            for i in np.flatnonzero(differ & escapes_or_controls):             # 3: maxLength strings
                token = voc.tokens[i]
                cut = min(j for j, b in enumerate(token) if b == 0x5C or b < 0x20)
                inner = m.grammar.walk(state, token[:cut])
                node = m.grammar.nodes[inner[-1][0]] if inner else None
                assert isinstance(node, String) and node.max_length is not None, token
                differ[i] = False
            node = m.grammar.nodes[state[-1][0]]
            if isinstance(node, Number) and state[-1][1] == 1:                 # 4: after '-', JSON allows 0
                assert all(voc.tokens[i].startswith(b"0") for i in np.flatnonzero(differ))
                differ[:] = False
            assert not differ.any(), (text, t, [voc.tokens[i] for i in np.flatnonzero(differ)[:5]])
            compared += 1
            if t is not None:
                assert matcher.accept_token(t)
                state = m.grammar.walk(state, voc.tokens[t])
    assert compared > 40


def test_extraction_data():
    people = load_people()
    assert len(people) == 36 and len({p["text"] for p in people}) == 36
    for p in people:
        rec = p["record"]
        assert rec["name"] in p["text"] and rec["city"] in p["text"] and str(rec["age"]) in p["text"], p
        assert jsonschema.Draft202012Validator(PERSON_SCHEMA).is_valid(rec)
        assert compile_schema(PERSON_SCHEMA).accepts(json.dumps(rec))


def test_score_reply():
    gold = {"name": "Ann", "age": 3, "city": "Rome"}
    s = score_reply('Sure:\n```json\n{"name": "Ann", "age": "3", "city": "Rome"}\n```', "stop", gold)
    assert s == {"status": "invalid", "found_json": True, "found_schema_valid": False,
                 "correct": {"name": True, "age": False, "city": True}}  # "3" is not 3
    assert score_reply('{"name": "Ann", "age": 3, "city": "Rome"}', "stop", gold)["status"] == "valid"
    assert score_reply('{"name": "Ann", "age": 3, "ci', "length", gold) == {
        "status": "incomplete", "found_json": False, "found_schema_valid": False,
        "correct": {"name": False, "age": False, "city": False}}


@pytest.mark.slow
def test_sampled_smollm2_outputs_are_schema_valid(voc):
    """SmolLM2 itself, sampled at temperature 1 (4 samples as one batch), under the mask: every reply that
    finished is a schema-valid document (jsonschema); one cut by max_tokens is reported incomplete, never valid."""
    from labkit.llm.local import LocalLLM

    llm = LocalLLM.smollm2()
    factory = json_constraint(compile_schema(PERSON_SCHEMA), voc)
    replies = llm.generate(extraction_messages("Olaf Hansen (45) runs a bakery in Oslo."), max_tokens=40,
                           temperature=1.0, n=4, seed=0, constraint=factory)
    validator = jsonschema.Draft202012Validator(PERSON_SCHEMA)
    for r in replies:
        status = check_output(r.text, PERSON_SCHEMA, r.finish_reason)
        if r.finish_reason == "stop":
            assert status == "valid" and validator.is_valid(json.loads(r.text)), r.text
        else:
            assert status == "incomplete", r.text
    assert any(r.finish_reason == "stop" for r in replies)
