"""Reward models and rejection sampling: learning a score from preference pairs, then using it to pick answers.

A reward model maps (prompt, answer) to one number r. Human (here: generated) preference pairs say which of
two answers is better, not how good either is, so the model is fitted with the Bradley-Terry model (1952):

    P(y_c preferred to y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)),     loss = -log sigmoid(r_c - r_r)

Only differences of rewards enter, so a constant added to every reward changes nothing: the head has no bias.
Our reward model is SmolLM2 with its body frozen and a linear head on the last layer's (normed) hidden state
at the answer's final token, the usual construction (Ouyang et al. 2022 put a scalar head on a GPT-3 body).
With the body frozen, the features are computed once and only the head (576 numbers) trains.

Rejection sampling (best-of-n), as Llama 2's post-training uses it (Touvron et al. 2023): sample n answers
from the policy, score each with the reward model, keep the best; the kept answers become fine-tuning data.

    last_token_features   the frozen body's final hidden state at each row's last real token
    bradley_terry_loss    the loss above, mean over pairs
    RewardHead            the linear head (features scaled by their training-set spread)
    train_reward_head     full-batch Adam on the Bradley-Terry loss
    sample_answers        n sampled answers per prompt, with labkit's KV-cache generator
    best_of_n             which of the first n candidates the reward model ranks highest
    wrong_answer_records  the right format with the wrong fact: a probe of what a reward model learned
    reward_run            the saved run '09-reward' (labkit.course.saved)
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..llama import Llama
from .dpo import END, Encoded, chat_prompt, collate


def last_token_features(model: Llama, ids: torch.Tensor, lengths: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """[B, dim]: the output of the model's final RMSNorm (what the output head reads) at position lengths[b] - 1
    of row b, for right-padded ids [B, T]. Attention is causal, so that position has read the whole prompt
    and answer and none of the padding. No gradients: the body is frozen."""
    if not isinstance(model, Llama):
        raise TypeError(f"model must be labkit's Llama (its final norm is read), got {type(model).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise ValueError(f"ids must be a tensor [batch, time], got {getattr(ids, 'shape', type(ids).__name__)}")
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if lengths.shape != (ids.shape[0],) or lengths.min() < 1 or lengths.max() > ids.shape[1]:
        raise ValueError(f"lengths must hold one length in [1, {ids.shape[1]}] per row ({ids.shape[0]} rows), "
                         f"got {lengths.tolist()}")
    captured = {}
    hook = model.norm.register_forward_hook(lambda module, inputs, output: captured.update(h=output))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        hook.remove()
    return captured["h"][torch.arange(ids.shape[0]), lengths - 1].float()


def encoded_features(model: Llama, enc: Encoded, batch_size: int = 8, pad_id: int = 0,
                     progress: str | None = None) -> torch.Tensor:
    """last_token_features of every sequence of `enc` (prompt + answer + end of turn), in batches."""
    starts = range(0, len(enc.ids), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=progress)
    out = []
    for i in starts:
        index = range(i, min(i + batch_size, len(enc.ids)))
        ids, _ = collate(enc, index, pad_id)
        out.append(last_token_features(model, ids, [len(enc.ids[j]) for j in index]))
    return torch.cat(out)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """mean over pairs of -log sigmoid(r_c - r_r): the negative log-likelihood of the observed preferences."""
    for name, x in (("chosen_rewards", chosen_rewards), ("rejected_rewards", rejected_rewards)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if chosen_rewards.ndim != 1 or chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.numel() == 0:
        raise ValueError(f"chosen_rewards and rejected_rewards must be non-empty 1-D tensors of the same length "
                         f"(one reward per pair), got {tuple(chosen_rewards.shape)} and "
                         f"{tuple(rejected_rewards.shape)}")
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


class RewardHead(nn.Module):
    """r = w . (h / s): a linear map from a hidden state h [.., dim] to one reward, no bias (it would cancel
    in r_c - r_r). s, the features' spread on the training answers, puts every dimension on the same scale
    so that one learning rate suits them all (a few of SmolLM2's hidden dimensions are far larger)."""

    def __init__(self, dim: int, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))  # zero: every answer starts with reward 0
        self.register_buffer("scale", torch.ones(dim) if scale is None else scale.detach().float().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"features must end in dim {self.weight.shape[0]}, got shape {tuple(features.shape)}")
        return (features / self.scale) @ self.weight


@dataclass(frozen=True)
class RewardConfig:
    """Full-batch Adam on the head. Weight decay keeps w finite: separable pairs would push it to infinity."""
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0


def train_reward_head(chosen: torch.Tensor, rejected: torch.Tensor,
                      config: RewardConfig = RewardConfig()) -> tuple[RewardHead, dict[str, list[float]]]:
    """Fit a RewardHead to pairs of features (chosen [N, dim], rejected [N, dim]) with `bradley_terry_loss`.
    Returns the head and per-step loss and accuracy (share of pairs with r_c > r_r) on the training pairs."""
    if chosen.ndim != 2 or chosen.shape != rejected.shape:
        raise ValueError(f"chosen and rejected features must both be [pairs, dim], got {tuple(chosen.shape)} "
                         f"and {tuple(rejected.shape)}")
    torch.manual_seed(config.seed)
    spread = torch.cat([chosen, rejected]).std(0).clamp_min(1e-6)
    head = RewardHead(chosen.shape[1], spread)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    for _ in range(config.steps):
        rc, rr = head(chosen), head(rejected)
        loss = bradley_terry_loss(rc, rr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history["loss"].append(loss.item())
        history["accuracy"].append((rc > rr).float().mean().item())
    return head.eval(), history


# ----------------------------------------------------------------------------------------------------------
# rejection sampling

def sample_answers(model: Llama, tokenizer, instruction: str, n: int, max_new_tokens: int = 24,
                   temperature: float = 1.0, seed: int = 0, input: str = "") -> list[list[int]]:
    """n answers to one prompt, sampled at `temperature` (seeded), each cut after its end-of-turn token.
    Returns the answers' token ids (without the prompt)."""
    from ..kvcache import generate

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    end = tokenizer.convert_tokens_to_ids(END)
    prompt = torch.tensor([tokenizer(chat_prompt(instruction, input))["input_ids"]]).repeat(n, 1)
    out = generate(model, prompt, max_new_tokens, temperature=temperature, eos_id=end,
                   generator=torch.Generator().manual_seed(seed))[:, prompt.shape[1]:]
    answers = []
    for row in out.tolist():
        answers.append(row[:row.index(end) + 1] if end in row else row)
    return answers


def best_of_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """For scores [prompts, candidates], the index of the highest-scoring of the first n candidates of each
    prompt (the first on a tie): rejection sampling's choice when n answers were drawn."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise ValueError(f"scores must be a tensor [prompts, candidates], got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= scores.shape[1]:
        raise ValueError(f"n must be an int in [1, {scores.shape[1]}] (the candidates per prompt), got {n!r}")
    return scores[:, :n].argmax(1)


def kind_of(instruction: str) -> str:
    """Which fact table of `dpo.FACTS` a question comes from (its template's text before the subject)."""
    from .dpo import FACTS

    for kind, (question, _, _) in FACTS.items():
        if instruction.startswith(question.split("{}")[0]):
            return kind
    raise ValueError(f"not a question of this chapter's task: {instruction!r}")


def wrong_answer_records(records: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """For each record, a JSON answer of the right format with the wrong fact: the answer of the next record
    of the same kind (cyclically). A probe of what the reward model learned: format, or facts too?"""
    from .dpo import answer_of, json_answer

    by_kind: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_kind.setdefault(kind_of(rec["instruction"]), []).append(i)
    out = [dict(rec) for rec in records]
    for members in by_kind.values():
        for j, i in enumerate(members):
            other = records[members[(j + 1) % len(members)]]
            out[i]["chosen"] = json_answer(answer_of(other))
    return out


@dataclass(frozen=True)
class RejectionConfig:
    prompts: int = 10         # held-out questions
    n: int = 8                # answers sampled per question and condition
    max_new_tokens: int = 24
    temperature: float = 1.0
    hint: str = " Reply in JSON."  # the second condition: the same question with this appended
    seed: int = 0


def mentions(text: str, answer: str) -> bool:
    """Whether `text` states `answer` as a whole word (case-insensitive): "Au" in "is Au." but not in "Australia"."""
    return re.search(rf"(?<![A-Za-z]){re.escape(answer)}(?![A-Za-z])", text, flags=re.IGNORECASE) is not None


def reward_run(reward: RewardConfig = RewardConfig(),
               rejection: RejectionConfig = RejectionConfig()) -> tuple[dict, dict[str, torch.Tensor]]:
    """Chapter 9's saved run '09-reward'. Two reward heads on SmolLM2's frozen body: one trained on the format
    pairs alone, one on those plus fact pairs (right JSON answer preferred to a wrong one), both scored on the
    held-out pairs of each kind; then best-of-n with the second on answers SmolLM2 samples for held-out
    questions. One thread, as the notebook. Returns (record, both heads' tensors under 'format.', 'both.')."""
    from tqdm.auto import tqdm

    from ..models import load_smollm2
    from .dpo import answer_of, encode_records, json_preference_records, parse_json_answer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Llama.from_pretrained()
        tokenizer, _ = load_smollm2()
        end = tokenizer.convert_tokens_to_ids(END)
        data = json_preference_records()
        feats = {}
        for split in ("train", "heldout"):
            for which, records in (("chosen", data[split]), ("rejected", data[split]),
                                   ("wrong", wrong_answer_records(data[split]))):
                enc = encode_records(tokenizer, records, "chosen" if which == "wrong" else which)
                feats[split, which] = encoded_features(model, enc, progress=f"{split} {which}")
        heads, histories = {}, {}
        heads["format"], histories["format"] = train_reward_head(feats["train", "chosen"],
                                                                 feats["train", "rejected"], reward)
        heads["both"], histories["both"] = train_reward_head(
            torch.cat([feats["train", "chosen"], feats["train", "chosen"]]),
            torch.cat([feats["train", "rejected"], feats["train", "wrong"]]), reward)
        with torch.no_grad():
            scores = {f"{h}/{s}_{w}": heads[h](f).tolist() for h in heads for (s, w), f in feats.items()}

        questions = data["heldout"][:rejection.prompts]
        samples: dict[str, list] = {"plain": [], "hint": []}
        sample_scores: dict[str, list] = {"plain": [], "hint": []}
        for q, rec in enumerate(tqdm(questions, desc="best-of-n questions")):
            for cond in ("plain", "hint"):
                instruction = rec["instruction"] + (rejection.hint if cond == "hint" else "")
                answers = sample_answers(model, tokenizer, instruction, rejection.n, rejection.max_new_tokens,
                                         rejection.temperature, seed=rejection.seed + 2 * q + (cond == "hint"))
                # Scored as answers to the plain question (the hint only helps to draw candidates), and an answer
                # cut off at max_new_tokens as if it ended there: the head was trained on finished answers.
                prompt = tokenizer(chat_prompt(rec["instruction"]))["input_ids"]
                enc = Encoded([prompt + (a if a[-1:] == [end] else a + [end]) for a in answers],
                              [len(prompt)] * len(answers))
                with torch.no_grad():
                    sample_scores[cond].append(heads["both"](encoded_features(model, enc)).tolist())
                samples[cond].append([tokenizer.decode(a) for a in answers])
    finally:
        torch.set_num_threads(threads)
    answers = [answer_of(r) for r in questions]
    record = {"torch_threads": 1, "reward_config": asdict(reward), "rejection_config": asdict(rejection),
              "pairs": {s: len(data[s]) for s in data}, "history": histories, "scores": scores,
              "questions": [r["instruction"] for r in questions], "answers": answers, "samples": samples,
              "sample_scores": sample_scores,
              "json": {c: [[parse_json_answer(t) is not None for t in row] for row in samples[c]] for c in samples},
              "correct_json": {c: [[parse_json_answer(t) == a for t in row] for row, a in zip(samples[c], answers)]
                               for c in samples},
              "mentions": {c: [[mentions(t, a) for t in row] for row, a in zip(samples[c], answers)]
                           for c in samples}}
    tensors = {f"{h}.{k}": v.detach() for h, head in heads.items() for k, v in head.state_dict().items()}
    return record, tensors


def load_head(tensors: Mapping[str, torch.Tensor]) -> RewardHead:
    """A RewardHead from the tensors reward_run saved under one prefix (prefix removed: weight, scale)."""
    head = RewardHead(tensors["weight"].shape[0], tensors["scale"])
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
    return head.eval()

