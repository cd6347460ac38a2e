"""Supervised fine-tuning (SFT) for tool calls: chat rendering, the assistant-only loss, LoRA training, evaluation.

SFT trains a chat model on conversations whose assistant turns show the wanted behaviour, here a JSON tool call.
Three details decide whether it works:

1. **Render exactly as the chat template does.** The model was tuned on ChatML turns
   `<|im_start|>role\\ncontent<|im_end|>\\n` (SmolLM2's template; with no system turn it inserts a default one).
   `render` builds the same token ids as `tokenizer.apply_chat_template`, one `<|im_start|>` and one
   `<|im_end|>` per turn: adding the tokenizer's BOS/EOS on top would teach the model doubled end tokens.
2. **Learn only what the assistant says.** The loss is the next-token cross-entropy on the assistant's tokens
   (its content and the `<|im_end|>` that ends its turn: the model must learn to stop), averaged over those
   tokens; system, user and the `<|im_start|>assistant\\n` header (the prompt supplies it) are masked out.
3. **Train the few parameters LoRA adds** (`labkit.finetune.lora`), with the base frozen.

Every training example here starts with the same system turn (the instruction and the tool schemas, ~550
tokens), longer than the rest of the example (~50). `batch_loss` runs that shared prefix once per batch and
lets every example attend to its keys and values: chapter 5's KV-cache, used during training. Gradients flow
through the shared keys and values into the prefix's computation, so the loss and gradients equal those of
running every example in full (the tests check it), for about 7x fewer tokens here.

    render / prompt_ids      messages -> (ids, loss mask) / the ids a reply is generated from
    batch_loss               mean assistant-token cross-entropy of a batch, its shared prefix run once
    train                    LoRA SFT: AdamW over shuffled batches, seeded, with a tqdm bar
    greedy_replies           batched greedy decoding with a KV-cache until <|im_end|>, with top-1 margins
    evaluate / score_call    tool-call accuracy, argument exact match, schema validity, Wilson intervals
    run                      the saved run '09-sft-tools': baseline, training, evaluation, the adapter
    load_tool_adapter        puts the saved adapter into a labkit Llama (chapter 9's result, reusable)
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from labkit.finetune.chat_formats import sharegpt_to_messages
from labkit.finetune.lora import add_lora, load_lora_state_dict, lora_layers, lora_state_dict, trainable_parameters
from labkit.finetune.tool_data import TOOLS, check_call, expected_call, load_split, parse_call
from labkit.kvcache import KVCache
from labkit.llama import Llama
from labkit.rope import rope_cos_sin, rope_inv_freq

RUN_NAME = "09-sft-tools"
BOT, EOT = "<|im_start|>", "<|im_end|>"  # ChatML's begin and end of a turn


# ---- rendering ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rendered:
    """A conversation as token ids, and the loss mask: True where the model is trained to produce the token."""
    ids: list[int]
    mask: list[bool]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.mask):
            raise ValueError(f"ids and mask must have the same length, got {len(self.ids)} and {len(self.mask)}")


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer alone (the one `labkit.models.load_smollm2()` returns, without
    loading the transformers model too)."""
    from transformers import AutoTokenizer

    from labkit.models import _quiet_transformers, smollm2_dir

    _quiet_transformers()
    return AutoTokenizer.from_pretrained(smollm2_dir())


def _chatml(tokenizer) -> tuple[int, int, str]:
    """(<|im_start|> id, <|im_end|> id, default system prompt) of a ChatML tokenizer, read from its template."""
    vocab = tokenizer.get_vocab()
    template = getattr(tokenizer, "chat_template", None) or ""
    if BOT not in vocab or EOT not in vocab or BOT not in template:
        raise ValueError(f"render builds ChatML turns ({BOT}role\\ncontent{EOT}); this tokenizer's chat template "
                         "is not ChatML")
    # SmolLM2's template inserts a default system turn when the conversation has none: the text between
    # `<|im_start|>system\n` and the next `<|im_end|>` inside the template
    start = template.find(BOT + "system\n")
    default = template[start + len(BOT + "system\n"):template.find(EOT, start)] if start >= 0 else ""
    return vocab[BOT], vocab[EOT], default


def _check_messages(messages: object) -> list[Mapping]:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise TypeError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r:.80}")
    return list(messages)


def render(tokenizer, messages: Sequence[Mapping]) -> Rendered:
    """The ids `tokenizer.apply_chat_template(messages)` gives (ChatML), with the loss mask on every assistant
    turn's content and its closing <|im_end|>; never on the role header, the newline after <|im_end|>, or any
    system/user/tool token."""
    messages = _check_messages(messages)
    bot, eot, default_system = _chatml(tokenizer)
    if messages[0]["role"] != "system" and default_system:
        messages = [{"role": "system", "content": default_system}, *messages]
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731  (no BOS/EOS of its own)
    newline = encode("\n")
    ids: list[int] = []
    mask: list[bool] = []
    for i, m in enumerate(messages):
        header = encode(m["role"] + "\n")
        # header and content are one piece of text between two special tokens, so tokenize them together
        # (that is what the template does); then the content's tokens are the ones after the header's
        body = encode(m["role"] + "\n" + m["content"])
        learn = m["role"] == "assistant"
        if learn and body[:len(header)] != header:
            raise ValueError(f"messages[{i}]: the assistant content {m['content'][:20]!r} merges with the role "
                             "header into one token (it starts with whitespace?), so no token boundary separates "
                             "prompt from reply")
        ids += [bot, *body, eot, *newline]
        mask += [False] * (1 + len(header)) + [learn] * (len(body) - len(header) + 1) + [False] * len(newline)
    return Rendered(ids, mask)


def prompt_ids(tokenizer, messages: Sequence[Mapping]) -> list[int]:
    """The ids a reply is generated from: the conversation (ending with a non-assistant turn) and the header
    `<|im_start|>assistant\\n`, as apply_chat_template(..., add_generation_prompt=True) gives them."""
    messages = _check_messages(messages)
    if messages[-1]["role"] == "assistant":
        raise ValueError("the prompt must end with a user (or tool) turn: the model writes the assistant's")
    bot, _, _ = _chatml(tokenizer)
    return render(tokenizer, messages).ids + [bot, *tokenizer.encode("assistant\n", add_special_tokens=False)]


def record_messages(record: Mapping) -> list[dict[str, str]]:
    """A ShareGPT record of the tool-call data set as messages (system with tools, user, assistant call)."""
    return sharegpt_to_messages(record)


# ---- the loss, with the shared prefix run once -------------------------------------------------------------

class _Prefix:
    """The cache protocol of `Llama.forward` (update, advance, seen) without in-place writes, so autograd sees
    through it. Recording (first pass): store each layer's k, v. Replaying: hand every layer its stored
    prefix k, v (broadcast to the batch) in front of the new tokens' own."""

    def __init__(self) -> None:
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.seen = 0
        self.recording = True

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.recording:
            self.k.append(k)
            self.v.append(v)
            return k, v
        B = k.shape[0]
        pk, pv = self.k[layer].expand(B, -1, -1, -1), self.v[layer].expand(B, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def advance(self, n: int) -> None:
        self.seen += n
        self.recording = False


def hidden_states(model: Llama, ids: torch.Tensor, cache=None) -> torch.Tensor:
    """`Llama.forward` without its output head: the final normalised hidden states [B, T, dim]. The loss needs
    logits only where the assistant speaks, and the head (576 x 49,152) at every position costs ~20% of the model."""
    start = cache.seen if cache is not None else 0
    positions = model._check_positions(torch.arange(start, start + ids.shape[1]), ids.shape[1])
    cos, sin = rope_cos_sin(positions, rope_inv_freq(model.cfg.head_dim, model.cfg.rope_theta))
    x = model.embed_tokens(model._check_ids(ids))
    for i, layer in enumerate(model.layers):
        x = layer(x, cos, sin, cache, i)
    if cache is not None:
        cache.advance(ids.shape[1])
    return model.norm(x)


def _head(model: Llama, h: torch.Tensor) -> torch.Tensor:
    return F.linear(h, model.embed_tokens.weight) if model.lm_head is None else model.lm_head(h)


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading ids all the sequences share, leaving each at least one id of its own."""
    shortest = min(len(s) for s in seqs)
    n = 0
    while n < shortest - 1 and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


def shared_prefix_length(batch: Sequence[Rendered]) -> int:
    """How many leading tokens every example of the batch shares and may run once: the common prefix, stopped
    one token before the first trained token (whose prediction must come from an example's own pass)."""
    first_trained = min(r.mask.index(True) if True in r.mask else len(r.mask) for r in batch)
    return max(0, min(common_prefix([r.ids for r in batch]), first_trained - 1))


def batch_loss(model: Llama, batch: Sequence[Rendered], share_prefix: bool = True) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the batch's trained tokens, their number). With share_prefix the tokens every
    example starts with run once (batch 1) and the rest (right-padded) attend to their keys and values."""
    if not batch or not all(isinstance(r, Rendered) for r in batch):
        raise TypeError("batch must be a non-empty sequence of Rendered examples")
    n_trained = sum(sum(r.mask[1:]) for r in batch)
    if n_trained == 0:
        raise ValueError("no trained token in the batch: every mask is False (no assistant turn?)")
    P = shared_prefix_length(batch) if share_prefix else 0
    cache = None
    if P:
        cache = _Prefix()
        hidden_states(model, torch.tensor([batch[0].ids[:P]]), cache)  # recorded: keys and values of the prefix
    S = max(len(r.ids) for r in batch) - P
    # right padding: a causal model never lets a real token see the pads after it, and pads are not trained
    ids = torch.tensor([r.ids[P:] + [0] * (S - len(r.ids) + P) for r in batch])
    targets = torch.full((len(batch), S), -100)
    for b, r in enumerate(batch):
        for t in range(P + 1, len(r.ids)):  # token t is predicted at position t - 1, inside the suffix
            if r.mask[t]:
                targets[b, t - P - 1] = r.ids[t]
    h = hidden_states(model, ids, cache)
    keep = targets != -100
    logits = _head(model, h[keep])  # only where a token is trained
    return F.cross_entropy(logits, targets[keep]), int(keep.sum())


# ---- training ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SFTConfig:
    """LoRA SFT settings. The defaults are the saved run's."""
    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: int = 1
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SFTConfig.{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"SFTConfig.lr must be > 0, got {self.lr!r}")


def batches(n: int, cfg: SFTConfig) -> list[list[int]]:
    """Example indices per step: each epoch a fresh seeded shuffle, cut into batches (the last may be short)."""
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g).tolist()
        out += [order[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    return out


def train(model: Llama, data: Sequence[Rendered], cfg: SFTConfig = SFTConfig(), progress: bool = True,
          stop_after: int | None = None) -> list[float]:
    """Train the model's LoRA parameters (add_lora first) on `data`; the loss of every step. AdamW with the
    learning rate decaying linearly to zero. `stop_after` runs only the first steps (a live slice)."""
    from tqdm.auto import tqdm

    if not lora_layers(model):
        raise ValueError("the model has no LoRA layers: call labkit.finetune.lora.add_lora(model, ...) first")
    params = [p for p in model.parameters() if p.requires_grad]
    plan = batches(len(data), cfg)
    if stop_after is not None and not 1 <= stop_after <= len(plan):
        raise ValueError(f"stop_after must be an int in 1..{len(plan)}, got {stop_after!r}")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / len(plan))
    model.train()
    losses = []
    for step, idx in enumerate(tqdm(plan[:stop_after], desc="SFT", disable=not progress)):
        loss, _ = batch_loss(model, [data[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ---- generation and evaluation -----------------------------------------------------------------------------

@torch.no_grad()
def prefill(model: Llama, ids: Sequence[int], max_len: int) -> KVCache:
    """A KV-cache holding `ids` (e.g. the system turn every request shares), room for max_len tokens."""
    cache = KVCache(model.cfg, batch=1, max_len=max_len)
    model(torch.tensor([list(ids)]), cache=cache)
    return cache


@torch.no_grad()
def greedy_replies(model: Llama, prompts: Sequence[Sequence[int]], eos_id: int, max_new_tokens: int = 48,
                   prefix: KVCache | None = None) -> list[tuple[list[int], float]]:
    """Greedy decoding with a KV-cache (labkit.kvcache's loop) for prompts of one length, decoded together as
    a batch (a decode step reads the weights once for every row), each stopping after `eos_id`. Per prompt:
    (new ids, the smallest gap between its top two logits over its steps: how far greedy was from flipping).

    `prefix`, a batch-1 cache holding the prompts' shared first tokens, is copied instead of recomputed."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    if not prompts or len({len(p) for p in prompts}) != 1:
        raise ValueError(f"prompts must be a non-empty list of equally long id lists, got lengths "
                         f"{sorted({len(p) for p in prompts})}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    B, T = len(prompts), len(prompts[0])
    cache = KVCache(model.cfg, batch=B, max_len=T + max_new_tokens)
    P = 0
    if prefix is not None:
        P = prefix.seen
        if P >= T or any(list(p[:P]) != list(prompts[0][:P]) for p in prompts):
            raise ValueError(f"the prefix cache's {P} tokens must be a proper prefix shared by every prompt")
        cache.k[:, :, :, :P] = prefix.k[:, :1, :, :P]  # broadcast over the batch
        cache.v[:, :, :, :P] = prefix.v[:, :1, :, :P]
        cache.seen = P
    logits = model(torch.tensor([list(p[P:]) for p in prompts]), cache=cache)[:, -1]
    new: list[list[int]] = [[] for _ in range(B)]
    margin = [math.inf] * B
    done = [False] * B
    for _ in range(max_new_tokens):
        top = logits.topk(2, dim=-1).values
        token = logits.argmax(-1)
        for b in range(B):
            if not done[b]:
                margin[b] = min(margin[b], float(top[b, 0] - top[b, 1]))
                new[b].append(int(token[b]))
                done[b] = int(token[b]) == eos_id
        if all(done):
            break
        logits = model(token[:, None], cache=cache)[:, -1]  # finished rows run on, their tokens unused
    return list(zip(new, margin))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion k/n (95% for z = 1.96): unlike p ± z·sqrt(p(1-p)/n) it stays
    inside [0, 1] and is not empty when k is 0 or n."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"need integers 0 <= k <= n with n >= 1, got k={k!r}, n={n!r}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score_call(text: str, expected: Mapping, tools: Sequence[Mapping] = TOOLS) -> dict[str, bool]:
    """One reply against the expected call: json (parses as a call), tool (and names the right tool),
    args (and its arguments equal the expected ones exactly), valid (and fits the tool's schema)."""
    call, _ = parse_call(text)
    json_ok = call is not None
    tool_ok = json_ok and call["name"] == expected["name"]
    return {"json": json_ok, "tool": tool_ok, "args": tool_ok and call["arguments"] == expected["arguments"],
            "valid": json_ok and not check_call(call, tools)}


METRICS = ("json", "tool", "args", "valid")


def summarise(scores: Sequence[Mapping[str, bool]]) -> dict[str, dict]:
    """Each metric's count, rate and 95% Wilson interval over the scored replies."""
    n = len(scores)
    out = {}
    for m in METRICS:
        k = sum(bool(s[m]) for s in scores)
        lo, hi = wilson_interval(k, n)
        out[m] = {"k": k, "n": n, "rate": k / n, "ci95": [lo, hi]}
    return out


def evaluate(model: Llama, tokenizer, records: Sequence[Mapping], max_new_tokens: int = 48,
             progress: bool = True, desc: str = "eval") -> list[dict]:
    """Greedy replies to every record's request, in the records' order: [{id, reply, stopped, margin, scores}].
    The system turn the records share is prefilled once; requests of equal length decode as one batch."""
    from tqdm.auto import tqdm

    _, eot, _ = _chatml(tokenizer)
    prompts = [prompt_ids(tokenizer, record_messages(r)[:-1]) for r in records]
    P = common_prefix(prompts) if prompts else 0
    prefix = prefill(model, prompts[0][:P], P) if P else None
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    replies: dict[int, tuple[list[int], float]] = {}
    bar = tqdm(total=len(records), desc=desc, disable=not progress)
    for length in sorted(by_length):
        rows = by_length[length]
        for i, out in zip(rows, greedy_replies(model, [prompts[i] for i in rows], eot, max_new_tokens, prefix)):
            replies[i] = out
        bar.update(len(rows))
    bar.close()
    out = []
    for i, r in enumerate(records):
        new, margin = replies[i]
        stopped = bool(new) and new[-1] == eot
        reply = tokenizer.decode(new[:-1] if stopped else new)
        out.append({"id": r["id"], "reply": reply, "stopped": stopped, "margin": round(margin, 3),
                    "scores": score_call(reply, expected_call(r))})
    return out


# ---- the saved run and the adapter -------------------------------------------------------------------------

def run(cfg: SFTConfig = SFTConfig(), threads: int = 1) -> tuple[dict, dict[str, torch.Tensor]]:
    """The saved run '09-sft-tools': the base model's held-out replies, LoRA SFT on the train split, the
    adapted model's held-out replies. Returns (record, {"adapter.<name>": tensor})."""
    torch.set_num_threads(threads)
    tokenizer = smollm2_tokenizer()
    model = Llama.from_pretrained()
    train_records, heldout = load_split("train"), load_split("heldout")
    data = [render(tokenizer, record_messages(r)) for r in train_records]

    t0 = time.perf_counter()
    before = evaluate(model, tokenizer, heldout, desc="base model")
    t_eval = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    add_lora(model, cfg.targets, cfg.r, cfg.alpha)
    t0 = time.perf_counter()
    losses = train(model, data, cfg)
    t_train = time.perf_counter() - t0
    after = evaluate(model, tokenizer, heldout, desc="after SFT")

    record = {
        "seed": cfg.seed, "config": {**asdict(cfg), "targets": list(cfg.targets)}, "torch_threads": threads,
        "n_train": len(train_records), "n_heldout": len(heldout),
        "trained_tokens": sum(sum(r.mask) for r in data), "tokens": sum(len(r.ids) for r in data),
        "trainable_parameters": trainable_parameters(model), "steps": len(losses),
        "loss": [round(x, 4) for x in losses],
        "train_seconds": round(t_train, 1), "eval_seconds_base": round(t_eval, 1),
        "before": _report(before, heldout), "after": _report(after, heldout),
    }
    return record, {f"adapter.{k}": v for k, v in lora_state_dict(model).items()}


def _report(replies: list[dict], records: Sequence[Mapping]) -> dict:
    """Metrics over all held-out replies, and apart for seen and unseen phrasing templates."""
    unseen = {r["id"] for r in records if r.get("unseen_template")}
    part = lambda keep: summarise([e["scores"] for e in replies if keep(e["id"] in unseen)])  # noqa: E731
    return {"metrics": part(lambda u: True), "metrics_seen_template": part(lambda u: not u),
            "metrics_unseen_template": part(lambda u: u), "replies": replies}


def load_tool_adapter(model: Llama, merge: bool = False) -> Llama:
    """Add the saved tool-call adapter (results/09-sft-tools.safetensors) to a labkit Llama, in place, and
    return it. merge=True folds it into the weights (plain Linear layers again: nothing to switch off, the
    fast decode path of labkit.kvcache applies). FileNotFoundError names the command that regenerates it."""
    from labkit.course import saved

    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama, got {type(model).__name__}")
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers; load the adapter into a fresh Llama")
    weights = saved.RESULTS / f"{RUN_NAME}.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: regenerate it with `python -m labkit.course save {RUN_NAME}`")
    run_ = saved.load(RUN_NAME)
    cfg = run_.record["config"]
    add_lora(model, tuple(cfg["targets"]), cfg["r"], cfg["alpha"])
    load_lora_state_dict(model, run_.state_dict("adapter"))
    if merge:
        for name, layer in lora_layers(model).items():
            layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer.base)
    return model.eval()
