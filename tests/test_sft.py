"""labkit.finetune.sft: rendering equals SmolLM2's chat template (one <|im_start|>/<|im_end|> per turn), the loss
mask covers exactly the assistant's tokens and its <|im_end|>, the shared-prefix loss equals the plain one (values
and LoRA gradients), batched greedy decoding equals labkit.kvcache.generate, and the metrics."""
import math

import pytest
import torch

from labkit.finetune import sft
from labkit.finetune.lora import add_lora, lora_layers
from labkit.finetune.sft import (Rendered, SFTConfig, batch_loss, common_prefix, greedy_replies, hidden_states,
                                 prefill, prompt_ids, record_messages, render, score_call, shared_prefix_length,
                                 summarise, train, wilson_interval)
from labkit.finetune.tool_data import build_dataset
from labkit.kvcache import generate
from labkit.llama import Llama
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TRAIN, HELDOUT = build_dataset()
MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"},
         {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
         {"role": "tool", "content": '{"temp": 3}'}, {"role": "assistant", "content": "It is 3 degrees."},
         {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]
NO_SYSTEM = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]


@pytest.fixture(scope="module")
def tok():
    return sft.smollm2_tokenizer()


def _template_ids(tok, messages, **kw):
    return list(tok.apply_chat_template(messages, tokenize=True, **kw)["input_ids"])


@pytest.mark.parametrize("messages", [record_messages(TRAIN[0]), record_messages(HELDOUT[-1]), MULTI, NO_SYSTEM])
def test_render_equals_the_chat_template(tok, messages):
    assert render(tok, messages).ids == _template_ids(tok, messages)
    assert prompt_ids(tok, messages[:-1]) == _template_ids(tok, messages[:-1], add_generation_prompt=True)


@pytest.mark.parametrize("messages", [record_messages(TRAIN[3]), MULTI, NO_SYSTEM])
def test_one_begin_and_one_end_token_per_turn(tok, messages):
    ids = render(tok, messages).ids
    bot, eot = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    turns = len(messages) + (messages[0]["role"] != "system")  # the template adds a default system turn
    assert ids.count(bot) == turns and ids.count(eot) == turns
    assert tok.convert_tokens_to_ids("<|endoftext|>") not in ids
    assert all(not (a == eot and b == eot) for a, b in zip(ids, ids[1:]))  # no doubled end token
    assert all(ids[i + 1] != bot for i, t in enumerate(ids[:-1]) if t == bot)


@pytest.mark.parametrize("messages", [record_messages(TRAIN[5]), MULTI, NO_SYSTEM])
def test_mask_covers_exactly_each_assistant_reply_and_its_end_token(tok, messages):
    r = render(tok, messages)
    spans, start = [], None  # maximal runs of masked positions
    for i, m in enumerate(r.mask + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [tok.decode(r.ids[a:b]) for a, b in spans] == [c + "<|im_end|>" for c in replies]
    assert sum(r.mask) == sum(len(tok.encode(c, add_special_tokens=False)) + 1 for c in replies)
    # each span follows its header `<|im_start|>assistant\n` and is followed by the template's newline
    for a, b in spans:
        assert tok.decode(r.ids[:a]).endswith("<|im_start|>assistant\n") and tok.decode(r.ids[b]) == "\n"
    # nothing of system, user or tool turns: unmasked text holds every one of them
    unmasked = tok.decode([t for t, m in zip(r.ids, r.mask) if not m])
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in unmasked


def test_render_errors(tok):
    with pytest.raises(ValueError, match="merges with the role header"):
        render(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  indented"}])
    with pytest.raises(ValueError, match=r"messages\[1\] must be a dict with string 'role' and 'content'"):
        render(tok, [{"role": "user", "content": "a"}, {"role": "assistant"}])
    with pytest.raises(TypeError, match="messages must be a non-empty list"):
        render(tok, "hello")
    with pytest.raises(ValueError, match="must end with a user"):
        prompt_ids(tok, NO_SYSTEM)

    class NotChatML:
        chat_template = "{{ messages }}"

        def get_vocab(self):
            return {"<s>": 1}

    with pytest.raises(ValueError, match="is not ChatML"):
        render(NotChatML(), NO_SYSTEM)


# ---- the loss --------------------------------------------------------------------------------------------

def _lora_tiny(seed=0):
    model = random_llama(seed=seed)
    torch.manual_seed(seed)
    add_lora(model)
    for layer in lora_layers(model).values():  # nonzero B: the adapter changes the output, gradients reach A
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    return model


PREFIX = [5, 6, 7, 8, 9, 10]
BATCH = [Rendered(PREFIX + [11, 12, 13], [False] * 7 + [True, True]),
         Rendered(PREFIX + [20, 21, 22, 23, 24], [False] * 8 + [True, True, True]),
         Rendered(PREFIX + [30, 31], [False] * 7 + [True])]


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_shared_prefix_loss_and_gradients_equal_the_plain_per_example_ones():
    model = _lora_tiny()
    assert shared_prefix_length(BATCH) == 6
    shared, n = batch_loss(model, BATCH)
    plain, n_plain = batch_loss(model, BATCH, share_prefix=False)
    terms = []  # the reference: every example on its own, the full forward, token by token
    for r in BATCH:
        logp = torch.log_softmax(model(torch.tensor([r.ids]))[0], -1)
        terms += [-logp[t - 1, r.ids[t]] for t in range(1, len(r.ids)) if r.mask[t]]
    reference = torch.stack(terms).mean()
    assert n == n_plain == len(terms) == 6
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=0)
    g_ref = _grads(model, reference)
    for g_shared, g_plain, g in zip(_grads(model, batch_loss(model, BATCH)[0]),
                                    _grads(model, batch_loss(model, BATCH, share_prefix=False)[0]), g_ref):
        torch.testing.assert_close(g_shared, g, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(g_plain, g, atol=1e-5, rtol=1e-4)


def test_shared_prefix_stops_before_the_first_trained_token():
    early = [Rendered([1, 2, 3, 4], [False, False, True, True]), Rendered([1, 2, 3, 5], [False, False, False, True])]
    assert common_prefix([r.ids for r in early]) == 3 and shared_prefix_length(early) == 1
    assert common_prefix([[1, 2], [1, 2]]) == 1  # each sequence keeps a token of its own
    with pytest.raises(ValueError, match="no trained token"):
        batch_loss(random_llama(), [Rendered([1, 2], [False, False])])
    with pytest.raises(ValueError, match="ids and mask must have the same length"):
        Rendered([1, 2], [True])


def test_hidden_states_then_head_is_llama_forward():
    model = random_llama()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sft._head(model, hidden_states(model, ids)), model(ids), atol=1e-5, rtol=0)


def test_train_is_seeded_learns_and_needs_lora():
    data = [Rendered([1, 2, 3, 4, 5, 6], [False] * 3 + [True] * 3), Rendered([1, 2, 3, 7, 8], [False] * 3 + [True] * 2)]
    cfg = SFTConfig(epochs=20, batch_size=2, lr=1e-2)
    first, second = _lora_tiny(), _lora_tiny()
    losses = train(first, data, cfg, progress=False)
    assert losses == train(second, data, cfg, progress=False)
    assert losses[-1] < 0.5 * losses[0]
    assert len(train(_lora_tiny(), data, cfg, progress=False, stop_after=3)) == 3
    with pytest.raises(ValueError, match="call labkit.finetune.lora.add_lora"):
        train(random_llama(), data, cfg, progress=False)
    with pytest.raises(ValueError, match="stop_after must be an int in 1..20"):
        train(_lora_tiny(), data, cfg, progress=False, stop_after=21)
    with pytest.raises(ValueError, match="SFTConfig.batch_size must be an int >= 1"):
        SFTConfig(batch_size=0)


# ---- decoding and metrics --------------------------------------------------------------------------------

def test_batched_greedy_with_a_prefix_equals_kvcache_generate():
    model = random_llama(std=0.3)
    prompts = [[5, 6, 7, 8, 9, 40], [5, 6, 7, 8, 9, 41], [5, 6, 7, 8, 9, 42]]
    eos = 3
    out = greedy_replies(model, prompts, eos, max_new_tokens=8, prefix=prefill(model, prompts[0][:5], 5))
    for prompt, (new, margin) in zip(prompts, out):
        ids = generate(model, torch.tensor([prompt]), 8, eos_id=eos)[0, len(prompt):].tolist()
        if eos in ids:
            ids = ids[:ids.index(eos) + 1]
        assert new == ids and margin > 0
        alone, alone_margin = greedy_replies(model, [prompt], eos, max_new_tokens=8)[0]  # no prefix, batch 1
        assert alone == new and math.isclose(alone_margin, margin, abs_tol=1e-4)
    with pytest.raises(ValueError, match="equally long"):
        greedy_replies(model, [[1, 2], [1, 2, 3]], eos)
    with pytest.raises(ValueError, match="proper prefix shared by every prompt"):
        greedy_replies(model, [[1, 2, 3], [4, 5, 6]], eos, prefix=prefill(model, [1, 2], 2))


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and math.isclose(hi, 0.2775, abs_tol=1e-4)  # the textbook value for 0 of 10
    lo, hi = wilson_interval(500, 1000)  # for large n it approaches p +- z sqrt(p (1 - p) / n)
    assert math.isclose(lo, 0.5 - 1.96 * math.sqrt(0.25 / 1000), abs_tol=1e-4) and math.isclose(hi, 1 - lo)
    lo, hi = wilson_interval(7, 10)
    lo2, hi2 = wilson_interval(3, 10)
    assert math.isclose(lo, 1 - hi2) and math.isclose(hi, 1 - lo2)  # symmetric in success and failure
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(11, 10)


def test_score_call_and_summarise():
    want = {"name": "get_time", "arguments": {"city": "Lima"}}
    assert score_call('{"name": "get_time", "arguments": {"city": "Lima"}}', want) == \
        {"json": True, "tool": True, "args": True, "valid": True}
    assert score_call('{"name": "get_time", "arguments": {"city": "Lyon"}}', want) == \
        {"json": True, "tool": True, "args": False, "valid": True}
    assert score_call('{"name": "get_weather", "arguments": {"city": "Lima"}}', want)["tool"] is False
    assert score_call('{"name": "get_time", "arguments": {"town": "Lima"}}', want) == \
        {"json": True, "tool": True, "args": False, "valid": False}
    assert score_call("The time in Lima is noon.", want) == dict.fromkeys(("json", "tool", "args", "valid"), False)
    summary = summarise([{"json": True, "tool": True, "args": False, "valid": True}] * 3
                        + [dict.fromkeys(("json", "tool", "args", "valid"), False)])
    assert summary["tool"]["k"] == 3 and summary["args"]["k"] == 0 and summary["json"]["n"] == 4
    assert summary["tool"]["ci95"] == list(wilson_interval(3, 4))


def test_load_tool_adapter_errors(monkeypatch, tmp_path):
    from labkit.course import saved

    monkeypatch.setattr(saved, "RESULTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m labkit.course save 09-sft-tools"):
        sft.load_tool_adapter(random_llama())
    with pytest.raises(TypeError, match="model must be labkit's Llama"):
        sft.load_tool_adapter(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already has LoRA layers"):
        sft.load_tool_adapter(_lora_tiny())
    assert isinstance(random_llama(), Llama)


@pytest.mark.slow
def test_saved_adapter_reproduces_a_recorded_reply_merged_or_not(tok):
    from labkit.course import saved

    record = saved.load(sft.RUN_NAME).record
    assert record["n_train"] == len(TRAIN) and record["n_heldout"] == len(HELDOUT)
    best = max((e for e in record["after"]["replies"] if e["scores"]["args"]), key=lambda e: e["margin"])
    request = [r for r in HELDOUT if r["id"] == best["id"]]
    for merge in (False, True):
        model = sft.load_tool_adapter(Llama.from_pretrained(), merge=merge)
        assert bool(lora_layers(model)) != merge  # merged: plain Linear layers again
        live = sft.evaluate(model, tok, request, progress=False)[0]
        assert live["reply"] == best["reply"] and abs(live["margin"] - best["margin"]) < 0.05
