"""labkit.llm.local: the local backend. Prefix caching gives the scores of an uncached run (and counts only the
tokens it runs), n samples decode as one batch whose rows stay consistent when finished rows leave, stop
strings, end-of-sequence and constraints end samples as documented. Most tests use a tiny random Llama and a
byte-level tokenizer (fast); the `slow` ones load SmolLM2."""
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.llama import Llama, LlamaConfig
from labkit.llm import Completion, connect
from labkit.llm.local import LocalLLM

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SPECIAL = {256: "<|endoftext|>", 257: "<|im_end|>", 258: "<|im_start|>"}
CFG = LlamaConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=512)


def tok(char: str) -> int:
    return ord(char)


class CharTokenizer:
    """The parts of a Hugging Face tokenizer LocalLLM uses: one token per character (ids 0-255 are the
    characters chr(0)..chr(255), so encode(decode(ids)) == ids), and three special tokens."""
    eos_token_id = 257

    def get_vocab(self):
        return {name: i for i, name in SPECIAL.items()}

    def convert_tokens_to_ids(self, token):
        return self.get_vocab()[token]

    def encode(self, text, add_special_tokens=False):
        pieces = re.split("(" + "|".join(re.escape(name) for name in SPECIAL.values()) + ")", text)
        ids = {name: i for i, name in SPECIAL.items()}
        return [i for p in pieces for i in ([ids[p]] if p in ids else [tok(c) for c in p])]

    def decode(self, ids):
        return "".join(SPECIAL[i] if i in SPECIAL else chr(i) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"


def tiny_model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(CFG).eval()
    with torch.no_grad():  # scale up nn.Linear's small init: logits far from ties
        for p in model.parameters():
            p.mul_(3.0) if p.ndim == 2 else p.add_(0.1 * torch.randn_like(p))
    return model


MODEL = tiny_model()
torch.manual_seed(1)
FLAT = Llama(CFG).eval()  # with small embeddings (the head is tied to them): varied samples
with torch.no_grad():
    FLAT.embed_tokens.weight.mul_(0.2)


def tiny(cache_slots: int = 4) -> LocalLLM:
    return LocalLLM(MODEL, CharTokenizer(), cache_slots=cache_slots)


class OnlyLetters:
    """A constraint: k lowercase letters, then end-of-sequence."""

    def __init__(self, k: int):
        self.k, self.seen = k, 0

    def allowed(self):
        mask = torch.zeros(CFG.vocab_size, dtype=torch.bool)
        if self.seen < self.k:
            mask[tok("a"):tok("z") + 1] = True
        else:
            mask[257] = True
        return mask

    def advance(self, token_id):
        assert tok("a") <= token_id <= tok("z"), token_id
        self.seen += 1

    def is_complete(self):
        return self.seen == self.k


# ------------------------------------------------------------------------------------------ prefix caching

texts = st.text(alphabet="abcde ", min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(prefix=texts, queries=st.lists(texts, min_size=1, max_size=4), labels=st.lists(texts, min_size=1, max_size=3))
def test_cached_scores_equal_uncached(prefix, queries, labels):
    cached, uncached = tiny(), tiny(cache_slots=0)
    for q in queries:
        a, b = cached.logprobs(prefix + q, labels), uncached.logprobs(prefix + q, labels)
        assert a == pytest.approx(b, abs=1e-4)
    assert cached.usage.prompt_tokens <= uncached.usage.prompt_tokens


def test_usage_counts_only_the_tokens_run():
    llm = tiny()
    prompt = "a shared few-shot prefix: "
    llm.logprobs(prompt, [" yes", " no", " maybe"])
    # the prompt runs once, and scores every continuation's first token; the continuations' other tokens
    # run as one batch (the padding is not counted)
    assert llm.usage.prompt_tokens == len(prompt) + 3 + 2 + 5
    assert llm.usage.calls == 1 and llm.usage.completion_tokens == 0
    uncached = tiny(cache_slots=0)
    uncached.logprobs(prompt, [" yes", " no", " maybe"])
    assert uncached.usage.prompt_tokens == 3 * len(prompt) + 4 + 3 + 6  # every sequence in full
    llm.usage.reset()
    llm.logprobs(prompt + "x", [" yes"])  # a new query after the shared prefix: only "x" and "yes" run
    assert llm.usage.prompt_tokens == 1 + 3
    llm.usage.reset()
    llm.logprobs(prompt + "x", ["!"])  # the same prompt again: its last token reruns (its logits score "!")
    assert llm.usage.prompt_tokens == 1


def test_lru_keeps_unrelated_prompts_apart():
    llm = tiny(cache_slots=2)
    first, second = "the first family of prompts, long enough ", "another family entirely, also long "
    llm.logprobs(first + "1", ["x"])
    llm.logprobs(second + "1", ["x"])  # shares nothing with the first: a second slot, the first one kept
    llm.usage.reset()
    llm.logprobs(first + "2", ["x"])
    # the first family's slot survived: only "2" runs (its logits score the one-token continuation "x")
    assert llm.usage.prompt_tokens == 1
    uncached = tiny(cache_slots=0)
    assert llm.logprobs(first + "2", ["x"]) == pytest.approx(uncached.logprobs(first + "2", ["x"]), abs=1e-4)


@settings(max_examples=20, deadline=None)
@given(calls=st.lists(st.tuples(st.sampled_from(["few-shot A: ", "few-shot B, longer: ", "C"]), texts,
                                st.booleans()), min_size=1, max_size=8))
def test_interleaved_calls_through_a_small_lru_score_as_uncached(calls):
    # generate and logprobs calls on prompts from three families, through 2 slots: whatever the slots hold
    # (overwritten, evicted, copied from a partial match), the scores are those of an uncached run
    cached, uncached = tiny(cache_slots=2), tiny(cache_slots=0)
    for family, query, generate_first in calls:
        prompt = family + query
        if generate_first:
            assert cached.generate(prompt, max_tokens=2)[0].text == uncached.generate(prompt, max_tokens=2)[0].text
        assert cached.logprobs(prompt, ["ab", "c"]) == pytest.approx(uncached.logprobs(prompt, ["ab", "c"]), abs=1e-4)


def test_generate_reuses_the_prompt_cache():
    llm = tiny()
    llm.generate("the same prompt", max_tokens=3)
    assert llm.usage.prompt_tokens == len("the same prompt")
    llm.generate("the same prompt", max_tokens=3, n=4, temperature=1.0)
    assert llm.usage.prompt_tokens == len("the same prompt") + 1  # only the last token, for its logits
    llm.logprobs("the same prompt", ["!"])
    assert llm.usage.prompt_tokens == len("the same prompt") + 2


def test_scores_are_log_probabilities_of_the_separately_tokenized_continuation():
    llm = tiny(cache_slots=0)
    prompt, cont = "abc", "de"
    ids = torch.tensor([llm.encode(prompt) + llm.encode(cont)])
    with torch.no_grad():
        logp = torch.log_softmax(MODEL(ids)[0].double(), -1)
    expected = float(logp[2, tok("d")] + logp[3, tok("e")])
    assert llm.logprobs(prompt, [cont])[0] == pytest.approx(expected, abs=1e-5)
    assert llm.logprobs(prompt, [cont, cont + "e"])[1] < llm.logprobs(prompt, [cont])[0]


# ---------------------------------------------------------------------------------------------- generation

def test_greedy_matches_the_kv_cache_generate_loop_and_all_n_are_equal():
    from labkit.kvcache import generate

    llm = tiny()
    out = llm.generate("hello", max_tokens=8, n=3)
    ids = generate(MODEL, torch.tensor([llm.encode("hello")]), 8)[0, 5:].tolist()
    expected = [i for i in ids]
    if any(i in llm.end_ids for i in expected):
        expected = expected[:next(k for k, i in enumerate(expected) if i in llm.end_ids)]
    assert [c.text for c in out] == [llm.decode(expected)] * 3
    assert out[0] is not out[1] and all(c.tokens <= 8 for c in out)
    assert llm.usage.calls == 1 and llm.usage.prompt_tokens == 5 and llm.usage.completion_tokens == out[0].tokens


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logprob_of_a_sample_equals_its_score(temperature):
    # a greedy answer's logprob is taken at temperature 1; a sample's at its own temperature (1 here). With the
    # flat model's varied samples, rows stop at different steps: each row's logprob checks that it kept its
    # own cache row while finished rows left the batch
    llm = LocalLLM(FLAT, CharTokenizer())
    free = llm.generate("q: ", max_tokens=10, temperature=temperature, n=6, seed=3)
    stop = [free[0].text[4]] if temperature == 0 else [free[0].text[1], free[3].text[6]]
    outs = llm.generate("q: ", max_tokens=10, temperature=temperature, n=6, seed=3, stop=stop)
    assert outs[0].finish_reason == "stop"
    if temperature > 0:
        assert len({c.text for c in outs}) == 6 and any(c.finish_reason == "length" for c in outs)
    for c in outs:  # a stopped row generated its text, then a stop character or an end-of-sequence token
        ends = [""] if c.finish_reason == "length" else stop + [SPECIAL[i] for i in llm.end_ids]
        scores = [llm.logprobs("q: ", [c.text + end])[0] for end in ends]
        assert min(abs(c.logprob - s) for s in scores) < 1e-4, (c, scores)


def test_sampling_is_seeded():
    llm = tiny()
    a = llm.generate("xy", max_tokens=12, temperature=1.0, n=4, seed=7)
    b = llm.generate("xy", max_tokens=12, temperature=1.0, n=4, seed=7)
    c = llm.generate("xy", max_tokens=12, temperature=1.0, n=4, seed=8)
    assert [x.text for x in a] == [x.text for x in b] and [x.text for x in a] != [x.text for x in c]
    assert len({x.text for x in a}) > 1  # the n rows are different samples
    assert llm.usage.completion_tokens == 3 * 4 * 12 - sum(12 - x.tokens for x in a + b + c)


def test_max_tokens_gives_length_and_stop_strings_cut_the_text():
    llm = tiny()
    [full] = llm.generate("hello", max_tokens=12)
    assert full.finish_reason == "length" and full.tokens == 12
    cut_at = full.text[3]
    [short] = llm.generate("hello", max_tokens=12, stop=[cut_at, "\x00never"])
    assert short.finish_reason == "stop" and short.text == full.text[:full.text.index(cut_at)]
    assert short.tokens == full.text.index(cut_at) + 1  # the token that completed the stop string counts


def test_constraint_masks_every_row_and_ends_with_eos():
    llm = tiny()
    outs = llm.generate("word: ", max_tokens=10, temperature=1.0, n=5, seed=0, constraint=lambda: OnlyLetters(4))
    for c in outs:
        assert c.finish_reason == "stop" and len(c.text) == 4 and c.text.isalpha() and c.tokens == 5
    [cut] = llm.generate("word: ", max_tokens=3, constraint=lambda: OnlyLetters(4))
    assert cut.finish_reason == "length" and len(cut.text) == 3


def test_constraint_that_allows_nothing_is_an_error():
    class Nothing(OnlyLetters):
        def allowed(self):
            return torch.zeros(CFG.vocab_size, dtype=torch.bool)

    with pytest.raises(RuntimeError, match="allows no token"):
        tiny().generate("x", constraint=lambda: Nothing(1))


def test_chat_goes_through_the_template():
    llm = tiny()
    text = llm.format([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert llm.chat([{"role": "user", "content": "hi"}], max_tokens=3)[0].text == llm.generate(text, max_tokens=3)[0].text


def test_bad_input():
    llm = tiny()
    with pytest.raises(ValueError, match="empty"):
        llm.generate("")
    with pytest.raises(ValueError, match="unknown role"):
        llm.chat([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="n must be"):
        llm.generate("x", n=0)
    with pytest.raises(ValueError, match="temperature"):
        llm.generate("x", temperature=-1)
    with pytest.raises(TypeError, match="stop"):
        llm.generate("x", stop=[3])
    with pytest.raises(ValueError, match="exceed the model's context"):
        llm.generate("x" * 500, max_tokens=20)
    with pytest.raises(TypeError, match="labkit's Llama"):
        LocalLLM(object(), CharTokenizer())
    with pytest.raises(ValueError, match="cache_slots"):
        LocalLLM(MODEL, CharTokenizer(), cache_slots=-1)


# ------------------------------------------------------------------------------------------------ SmolLM2

@pytest.fixture(scope="module")
def smollm2():
    return LocalLLM.smollm2()


@pytest.mark.slow
def test_smollm2_loads_once_and_answers(smollm2):
    again = LocalLLM.smollm2()
    assert again.model is smollm2.model and again.usage is not smollm2.usage
    assert isinstance(connect(), LocalLLM)
    [answer] = smollm2.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12)
    assert isinstance(answer, Completion) and "Paris" in answer.text
    assert smollm2.eos_id == smollm2.tokenizer.eos_token_id == 2
    assert smollm2.decode(smollm2.encode("hello world")) == "hello world"


@pytest.mark.slow
def test_smollm2_scores_match_transformers(smollm2):
    from labkit.models import load_smollm2

    _, reference = load_smollm2()
    prompt, labels = "Review: a wonderful film.\nSentiment:", [" positive", " negative"]
    scores = smollm2.logprobs(prompt, labels)
    for label, score in zip(labels, scores):
        p, c = smollm2.encode(prompt), smollm2.encode(label)
        with torch.no_grad():
            logp = torch.log_softmax(reference(torch.tensor([p + c])).logits[0].double(), -1)
        assert score == pytest.approx(sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c)), abs=1e-3)
    assert scores[0] > scores[1]
