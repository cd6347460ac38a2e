"""Direct preference optimisation (DPO, Rafailov et al. 2023, arXiv:2305.18290), from scratch.

RLHF fits a reward model to pairs "answer y_c is better than y_r" (the Bradley-Terry model of `reward.py`),
then trains the policy against it with reinforcement learning. Rafailov et al. show that the policy that is
optimal for that objective, under a KL penalty of strength beta to a reference model, defines its own reward:

    r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))       (up to a term that cancels within a pair)

Putting this implicit reward into the Bradley-Terry likelihood gives a plain classification loss on the
policy's log-probabilities, with no reward model and no sampling:

    loss = -log sigmoid(beta * [(log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))])

The module, in the order the chapter uses it:

    check_records          the seed's preference record {instruction, input (optional), chosen, rejected}
    json_preference_records  the chapter's task, built deterministically: JSON answer (chosen) vs prose
    chat_prompt            SmolLM2's chat format for one user turn (no system turn: shorter sequences)
    encode_records         prompt + response token ids and the response mask, per answer
    sequence_logprob       log pi(response | prompt): the sum of the response tokens' log-probabilities
    dpo_loss               the loss above and each pair's implicit rewards
    train_dpo              LoRA on a labkit Llama; the reference is the same model with its adapters off
    wilson_interval        a confidence interval for an accuracy measured on n pairs
    dpo_run                the saved run '09-dpo' (labkit.course.saved)

With LoRA the reference costs no memory: `labkit.finetune.lora.adapters_disabled` runs the frozen base.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FIELDS = ("instruction", "input", "chosen", "rejected")  # the seed's DPO record; "input" may be left out
REQUIRED = ("instruction", "chosen", "rejected")
END = "<|im_end|>"  # SmolLM2's end of turn: every response ends with it, so the model also learns to stop


# ----------------------------------------------------------------------------------------------------------
# preference records

def check_records(records: object) -> list[dict[str, str]]:
    """Validate preference records and return them with "input" filled in ("" when absent).

    Each record is a mapping with string fields instruction, chosen, rejected (required, non-empty) and input
    (optional), the shape of the seed's DPO data. An error names the record's index and the field."""
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a sequence of dicts, got {type(records).__name__}")
    if not records:
        raise ValueError("records is empty: DPO needs at least one preference pair")
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise TypeError(f"record {i} must be a dict with fields {list(FIELDS)}, got {type(rec).__name__}")
        missing = [f for f in REQUIRED if f not in rec]
        if missing:
            raise ValueError(f"record {i} is missing field(s) {missing} (a preference record needs "
                             f"{list(REQUIRED)}, and 'input' optionally)")
        for f in FIELDS:
            if f in rec and not isinstance(rec[f], str):
                raise TypeError(f"record {i}: field {f!r} must be a string, got {type(rec[f]).__name__}")
        for f in REQUIRED:
            if not rec[f].strip():
                raise ValueError(f"record {i}: field {f!r} is empty")
        if rec["chosen"] == rec["rejected"]:
            raise ValueError(f"record {i}: chosen and rejected are the same text, so there is no preference")
        out.append({"instruction": rec["instruction"], "input": rec.get("input", ""),
                    "chosen": rec["chosen"], "rejected": rec["rejected"]})
    return out


def read_jsonl(path: Path | str) -> list[dict[str, str]]:
    """Preference records from a JSON-lines file, checked by `check_records`."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    return check_records([json.loads(line) for line in lines])


def write_jsonl(records: Sequence[Mapping[str, str]], path: Path | str) -> None:
    """One record per line, keys in the seed's order, so that the committed file diffs line by line."""
    checked = check_records(records)
    Path(path).write_text("".join(json.dumps({k: r[k] for k in FIELDS}, ensure_ascii=False) + "\n"
                                  for r in checked))


# The chapter's task: the same fact, once as a JSON object (chosen) and once as a sentence (rejected).
# (question, sentence) templates; each table row fills them with (subject, answer); {an} is the answer after
# its article ("a kitten", "an owlet").
FACTS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "capital": ("What is the capital of {}?", "The capital of {} is {}.", [
        ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
        ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
        ("Greece", "Athens"), ("Russia", "Moscow"), ("China", "Beijing"), ("Austria", "Vienna"),
        ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"),
        ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest"), ("Thailand", "Bangkok"),
        ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("Chile", "Santiago"), ("Cuba", "Havana"),
        ("India", "New Delhi"), ("Australia", "Canberra"), ("Belgium", "Brussels"), ("Turkey", "Ankara")]),
    "opposite": ("What is the opposite of {}?", "The opposite of {} is {}.", [
        ("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("light", "dark"),
        ("open", "closed"), ("happy", "sad"), ("early", "late"), ("full", "empty"), ("old", "young"),
        ("strong", "weak"), ("rich", "poor"), ("hard", "soft"), ("wet", "dry"), ("loud", "quiet"),
        ("high", "low"), ("thick", "thin"), ("heavy", "light"), ("true", "false"), ("win", "lose"),
        ("left", "right"), ("push", "pull"), ("buy", "sell"), ("inside", "outside"), ("first", "last")]),
    "symbol": ("What is the chemical symbol for {}?", "The chemical symbol for {} is {}.", [
        ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"),
        ("sodium", "Na"), ("copper", "Cu"), ("lead", "Pb"), ("helium", "He"), ("nitrogen", "N"),
        ("potassium", "K"), ("calcium", "Ca"), ("zinc", "Zn"), ("tin", "Sn"), ("mercury", "Hg"),
        ("sulfur", "S"), ("neon", "Ne"), ("chlorine", "Cl"), ("uranium", "U")]),
    "plural": ("What is the plural of {}?", "The plural of {} is {}.", [
        ("mouse", "mice"), ("child", "children"), ("tooth", "teeth"), ("foot", "feet"), ("goose", "geese"),
        ("man", "men"), ("woman", "women"), ("person", "people"), ("cactus", "cacti"), ("leaf", "leaves"),
        ("knife", "knives"), ("wolf", "wolves"), ("box", "boxes"), ("city", "cities"), ("ox", "oxen"),
        ("sheep", "sheep"), ("fish", "fish"), ("bus", "buses"), ("wife", "wives"), ("half", "halves")]),
    "young": ("What is a baby {} called?", "A baby {} is called {an}.", [
        ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("horse", "foal"), ("sheep", "lamb"),
        ("goat", "kid"), ("pig", "piglet"), ("duck", "duckling"), ("frog", "tadpole"), ("bear", "cub"),
        ("lion", "cub"), ("deer", "fawn"), ("goose", "gosling"), ("kangaroo", "joey"), ("swan", "cygnet"),
        ("owl", "owlet"), ("eagle", "eaglet"), ("hen", "chick"), ("whale", "calf"), ("seal", "pup")]),
}


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def json_answer(answer: str) -> str:
    """The chosen format: a one-key JSON object, e.g. {"answer": "Paris"}."""
    return json.dumps({"answer": answer})


def parse_json_answer(text: str) -> str | None:
    """The answer if `text` (up to the end-of-turn token) is exactly a JSON object {"answer": <string>}, else
    None. The check the chapter uses to measure whether a model answers in the chosen format."""
    body = text.split(END)[0].strip()
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, dict) and list(value) == ["answer"] and isinstance(value["answer"], str):
        return value["answer"]
    return None


def json_preference_records(heldout_fraction: float = 0.4, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """The chapter's preference pairs, {"train": [...], "heldout": [...]}, the same on every machine.

    Every fact of `FACTS` gives one pair: the question as the instruction, the answer as JSON (chosen) and as
    a sentence stating the same fact (rejected). The pair differs only in format, so a preference learned
    from it is a preference for the format. The split is by fact, within each kind (a seeded shuffle), so
    the held-out questions are new to the tuned model but of the kinds it saw."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction!r}")
    rng = random.Random(seed)
    split: dict[str, list[dict[str, str]]] = {"train": [], "heldout": []}
    for kind, (question, sentence, rows) in FACTS.items():
        rows = list(rows)
        rng.shuffle(rows)
        n_held = round(heldout_fraction * len(rows))
        for i, (subject, answer) in enumerate(rows):
            record = {"instruction": question.format(subject), "input": "", "chosen": json_answer(answer),
                      "rejected": sentence.format(subject, answer, an=_with_article(answer))}
            split["heldout" if i < n_held else "train"].append(record)
    for records in split.values():
        rng.shuffle(records)  # mix the kinds, so a batch of consecutive pairs holds several
    return split


def answer_of(record: Mapping[str, str]) -> str:
    """The fact's answer in one of this task's records (the value in its chosen JSON)."""
    answer = parse_json_answer(record["chosen"])
    if answer is None:
        raise ValueError(f"chosen is not a JSON answer: {record['chosen']!r}")
    return answer


# ----------------------------------------------------------------------------------------------------------
# tokens

def chat_prompt(instruction: str, input: str = "") -> str:
    """One user turn in SmolLM2's chat format, ready for the assistant's answer. The input, if any, follows
    the instruction after a blank line (Alpaca's convention). No system turn: SmolLM2's template would add a
    30-token default one, more than doubling the sequences this chapter trains on."""
    message = instruction if not input else f"{instruction}\n\n{input}"
    return f"<|im_start|>user\n{message}{END}\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + response per answer, and how many of them are the prompt."""
    ids: list[list[int]]
    prompt_len: list[int]


def encode_records(tokenizer, records: Sequence[Mapping[str, str]], which: str) -> Encoded:
    """Tokens of chat_prompt(instruction, input) + record[which] + end of turn, for which in chosen/rejected.
    Prompt and response are tokenised apart, so the prompt's tokens are the same in both answers of a pair."""
    if which not in ("chosen", "rejected"):
        raise ValueError(f"which must be 'chosen' or 'rejected', got {which!r}")
    records = check_records(records)
    ids, prompt_len = [], []
    for rec in records:
        prompt = tokenizer(chat_prompt(rec["instruction"], rec["input"]))["input_ids"]
        response = tokenizer(rec[which] + END)["input_ids"]
        ids.append(prompt + response)
        prompt_len.append(len(prompt))
    return Encoded(ids, prompt_len)


def collate(enc: Encoded, index: Sequence[int], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] right-padded with pad_id, and the response mask [B, T] (True on the response's tokens).

    Right padding changes nothing before it: attention is causal, so no real token reads a pad, and the
    pads themselves are outside the mask."""
    rows = [enc.ids[i] for i in index]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, i in enumerate(index):
        n = len(enc.ids[i])
        ids[b, :n] = torch.tensor(enc.ids[i])
        mask[b, enc.prompt_len[i]:n] = True
    return ids, mask


# ----------------------------------------------------------------------------------------------------------
# the loss

def _logits(model: Callable, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    logits = getattr(out, "logits", out)  # transformers models return an object with .logits
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise ValueError(f"model(ids) must return logits [B, T, vocab] for ids {tuple(ids.shape)}, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    return logits


def sequence_logprob(model: Callable, ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log pi(response | prompt) per row: the sum over masked positions t of log p(ids[t] | ids[:t]).

    ids [B, T] integer, response_mask [B, T] bool (or 0/1), True on the tokens whose probability counts (the
    answer, not the prompt, not padding). Position 0 has no prefix to predict it, so it cannot be masked in.
    Returns [B] float32, differentiable through the model."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids must be an integer tensor [batch, time], got {got}")
    if not isinstance(response_mask, torch.Tensor) or response_mask.shape != ids.shape:
        got = tuple(response_mask.shape) if isinstance(response_mask, torch.Tensor) else type(response_mask).__name__
        raise ValueError(f"response_mask must have the shape of ids {tuple(ids.shape)}, got {got}")
    mask = response_mask.bool()
    if mask.ne(response_mask).any():
        raise ValueError("response_mask must hold only 0/1 (or bool) values")
    if mask[:, 0].any():
        raise ValueError("response_mask marks position 0, which has no preceding token to predict it from")
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"response_mask row(s) {empty[:5]} mark no token: each row needs a response")
    logits = _logits(model, ids)[:, :-1].float()       # position t predicts token t + 1
    target = ids[:, 1:]
    # log softmax at the target only: logit - logsumexp, without materialising [B, T, vocab] log-probs
    token_logp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logp * mask[:, 1:]).sum(-1)


def _check_logps(**logps: object) -> torch.Tensor:
    shapes = {}
    for name, x in logps.items():
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{name} must be a float tensor of per-pair log-probabilities, got {got}")
        shapes[name] = tuple(x.shape)
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ValueError(f"the four log-probability tensors must be 1-D of the same length (one per pair), got "
                         + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    if next(iter(shapes.values()))[0] == 0:
        raise ValueError("no pairs: the log-probability tensors are empty")
    return next(iter(logps.values()))


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's loss (Rafailov et al. 2023, eq. 7) over a batch of pairs, and each pair's implicit rewards.

    loss = mean over pairs of -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]), where pi_c = log
    pi(y_c | x) etc. (`sequence_logprob`). chosen_rewards = beta * (pi_c - ref_c) and rejected_rewards =
    beta * (pi_r - ref_r), per pair, detached: they are for watching training, not for the gradient. The
    reference's log-probs are constants (detached too): the reference model does not train."""
    _check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0 (the strength of the pull to the reference), "
                         f"got {beta!r}")
    chosen = policy_chosen_logps - ref_chosen_logps.detach()       # log pi/pi_ref on the chosen answer
    rejected = policy_rejected_logps - ref_rejected_logps.detach()
    # logsigmoid, not log(sigmoid(.)): at a margin of -200 sigmoid underflows to 0 and its log to -inf
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, beta * chosen.detach(), beta * rejected.detach()


# ----------------------------------------------------------------------------------------------------------
# training and measuring

def pair_logprobs(model: Callable, chosen: Encoded, rejected: Encoded, index: Sequence[int],
                  pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(chosen), log pi(rejected)) for the pairs `index`, both answers in one forward pass."""
    c_ids, c_mask = collate(chosen, index, pad_id)
    r_ids, r_mask = collate(rejected, index, pad_id)
    T = max(c_ids.shape[1], r_ids.shape[1])
    ids = torch.cat([F.pad(c_ids, (0, T - c_ids.shape[1]), value=pad_id),
                     F.pad(r_ids, (0, T - r_ids.shape[1]), value=pad_id)])
    mask = torch.cat([F.pad(c_mask, (0, T - c_mask.shape[1])), F.pad(r_mask, (0, T - r_mask.shape[1]))])
    logps = sequence_logprob(model, ids, mask)
    return logps[:len(index)], logps[len(index):]


@torch.no_grad()
def all_pair_logprobs(model: Callable, chosen: Encoded, rejected: Encoded, batch_size: int = 8,
                      pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """pair_logprobs over every pair, in batches, without gradients."""
    out = [pair_logprobs(model, chosen, rejected, range(i, min(i + batch_size, len(chosen.ids))), pad_id)
           for i in range(0, len(chosen.ids), batch_size)]
    return torch.cat([c for c, _ in out]), torch.cat([r for _, r in out])


@dataclass(frozen=True)
class DPOConfig:
    """Training settings. beta 0.1 is the paper's default; lr suits LoRA's few parameters (Adam)."""
    beta: float = 0.1
    lr: float = 2e-3
    batch_size: int = 4       # pairs per step
    steps: int = 24
    seed: int = 0
    nll_weight: float = 0.0   # > 0 adds that times the chosen answers' per-token NLL (Llama 3's DPO does, 0.2)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The pairs each step trains on: seeded shuffles of range(n), one after another, cut into batches."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order += epoch
    return [order[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def train_dpo(model: nn.Module, chosen: Encoded, rejected: Encoded, config: DPOConfig = DPOConfig(),
              ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None, stop_after: int | None = None,
              pad_id: int = 0, progress: bool = False) -> dict[str, list[float]]:
    """Train `model`'s LoRA adapters with `dpo_loss`; the reference is the same model with adapters disabled.

    The reference never changes, so its log-probs are computed once for every training pair (or passed in as
    `ref_logps`). Returns per-step lists: loss, the batch's mean chosen and rejected rewards, their margin,
    and accuracy (the share of the batch's pairs whose chosen reward exceeds the rejected one), each measured
    before that step's update. stop_after=k runs only the first k steps (the notebook's live slice).

    With config.nll_weight > 0 the step's loss is dpo_loss + nll_weight * (the chosen answers' mean negative
    log-likelihood per token), which keeps the chosen answers likely while the margin grows (Dubey et al. 2024,
    the Llama 3 report, sec. 4.1.4); `loss` in the history is dpo_loss alone either way."""
    from .lora import adapters_disabled, lora_layers

    if not lora_layers(model):
        raise ValueError("train_dpo trains LoRA adapters: call labkit.finetune.lora.add_lora(model) first")
    if len(chosen.ids) != len(rejected.ids):
        raise ValueError(f"{len(chosen.ids)} chosen answers but {len(rejected.ids)} rejected ones")
    steps = config.steps if stop_after is None else stop_after
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= config.steps:
        raise ValueError(f"stop_after must be an int in 1..{config.steps}, got {stop_after!r}")
    if ref_logps is None:
        with adapters_disabled(model):
            ref_logps = all_pair_logprobs(model, chosen, rejected, pad_id=pad_id)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(config.seed)
    opt = torch.optim.Adam(params, lr=config.lr)
    history: dict[str, list[float]] = {k: [] for k in ("loss", "chosen_reward", "rejected_reward", "margin",
                                                       "accuracy")}
    batches = batch_order(len(chosen.ids), config.batch_size, config.steps, config.seed)[:steps]
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="DPO steps")
    model.train()
    try:
        for index in batches:
            pc, pr = pair_logprobs(model, chosen, rejected, index, pad_id)
            loss, rc, rr = dpo_loss(pc, pr, ref_logps[0][index], ref_logps[1][index], config.beta)
            total = loss
            if config.nll_weight:
                n_tokens = torch.tensor([len(chosen.ids[i]) - chosen.prompt_len[i] for i in index])
                total = loss + config.nll_weight * (-pc / n_tokens).mean()
            opt.zero_grad()
            total.backward()
            opt.step()
            for key, value in (("loss", loss.item()), ("chosen_reward", rc.mean().item()),
                               ("rejected_reward", rr.mean().item()), ("margin", (rc - rr).mean().item()),
                               ("accuracy", (rc > rr).float().mean().item())):
                history[key].append(value)
    finally:
        model.eval()
    return history


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a proportion successes/n (95% at z = 1.96). Unlike p +/- z*sqrt(p(1-p)/n)
    it stays inside [0, 1] and is not zero-width at 0/n or n/n, which small evaluations hit."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(successes, bool) or not isinstance(successes, int) or not 0 <= successes <= n:
        raise ValueError(f"successes must be an int in [0, n] = [0, {n}], got {successes!r}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ----------------------------------------------------------------------------------------------------------
# the chapter's experiment

def lora_policy(model: nn.Module, seed: int = 0, r: int = 8, alpha: float = 16) -> nn.Module:
    """Add LoRA (queries and values, the paper's default) to `model` in place, with seeded initial A."""
    from .lora import add_lora

    torch.manual_seed(seed)
    add_lora(model, ("q_proj", "v_proj"), r=r, alpha=alpha)
    return model


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer, records: Sequence[Mapping[str, str]],
                   max_new_tokens: int = 16) -> list[str]:
    """Each record's question answered greedily (labkit's KV-cache decoder), as text up to the end of turn.
    Prompts of equal length share a batch: labkit's Llama has no padding mask, and none is then needed."""
    from ..kvcache import generate

    end = tokenizer.convert_tokens_to_ids(END)
    prompts = [tokenizer(chat_prompt(r["instruction"], r.get("input", "")))["input_ids"] for r in records]
    out: list[str] = [""] * len(prompts)
    for length in sorted(set(map(len, prompts))):
        index = [i for i, p in enumerate(prompts) if len(p) == length]
        ids = generate(model, torch.tensor([prompts[i] for i in index]), max_new_tokens, eos_id=end)[:, length:]
        for i, row in zip(index, ids.tolist()):
            out[i] = tokenizer.decode(row[:row.index(end)] if end in row else row)
    return out


VARIANTS = {"dpo": DPOConfig(steps=24, lr=1e-3), "dpo+nll": DPOConfig(steps=24, lr=1e-3, nll_weight=0.2)}


def dpo_run(variants: Mapping[str, DPOConfig] = VARIANTS) -> tuple[dict, dict[str, torch.Tensor]]:
    """Chapter 9's saved run '09-dpo': LoRA-DPO on SmolLM2 with the JSON-vs-prose pairs, once per variant (the
    same seed and LoRA start; by default DPO alone and DPO with Llama 3's NLL term). Measures the held-out
    pairs' log-probs under the reference and each tuned model, and every model's greedy answers to the held-out
    questions. One thread, as the notebook. Returns (record, each adapter's tensors under '<variant>.')."""
    from ..llama import Llama
    from ..models import load_smollm2
    from .lora import adapters_disabled, load_lora_state_dict, lora_state_dict

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = lora_policy(Llama.from_pretrained(), seed=0)
        start = lora_state_dict(model)  # every variant starts from these adapters (B = 0: the reference)
        tokenizer, _ = load_smollm2()
        data = json_preference_records()
        enc = {s: (encode_records(tokenizer, data[s], "chosen"), encode_records(tokenizer, data[s], "rejected"))
               for s in data}
        with adapters_disabled(model):
            ref = {s: all_pair_logprobs(model, *enc[s]) for s in data}
            answers = {"ref": greedy_answers(model, tokenizer, data["heldout"])}
        logps = {f"ref_{s}_{w}": t[j].tolist() for s, t in ref.items() for j, w in enumerate(("chosen", "rejected"))}
        histories, tensors = {}, {}
        for name, config in variants.items():
            load_lora_state_dict(model, start)
            histories[name] = train_dpo(model, *enc["train"], config, ref_logps=ref["train"], progress=True)
            tuned = all_pair_logprobs(model, *enc["heldout"])
            logps.update({f"{name}_heldout_{w}": tuned[j].tolist() for j, w in enumerate(("chosen", "rejected"))})
            answers[name] = greedy_answers(model, tokenizer, data["heldout"])
            tensors.update({f"{name}.{k}": v for k, v in lora_state_dict(model).items()})
    finally:
        torch.set_num_threads(threads)
    record = {"torch_threads": 1, "configs": {k: asdict(v) for k, v in variants.items()},
              "lora": {"targets": ["q_proj", "v_proj"], "r": 8, "alpha": 16, "seed": 0},
              "pairs": {s: len(data[s]) for s in data}, "history": histories, "logps": logps, "answers": answers}
    return record, tensors
