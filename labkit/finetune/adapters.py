"""Chapter 9's adapter comparison: one small task, one training budget, five ways to adapt SmolLM2.

The task is classification as generation: "Country: Kenya\\nContinent:" -> " Africa", one of four labels
(Africa, Europe, Asia, America), each a single token. The model's answer is the label whose token it gives the
highest log-probability after the prompt; accuracy is counted on held-out countries (a stratified half split),
with a 95% Wilson interval. The untuned model already knows many countries but rarely says " America", so
tuning has something to fix; what it cannot do is teach the continent of a country the model never knew.

Every method trains on the same batches (same seed, steps, batch size) with Adam, minimising the cross
entropy of the label token over the whole vocabulary; only the parameters each method adds are trained.

    COUNTRIES, LABELS, PROMPT   the task's data
    continent_task              (train, test) lists of (country, continent), split with a seed
    encode                      token ids of each prompt and the index of its label
    label_log_probs             log P(label token | prompt) for the four labels, per example
    train                       Adam on the label's cross entropy: the same batches for every method
    wilson_interval             95% interval of an accuracy k / n
    adapters_run                the saved run '09-adapters': every method trained and scored, and the memory table
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

COUNTRIES: dict[str, tuple[str, ...]] = {
    "Africa": ("Nigeria", "Kenya", "Egypt", "Ethiopia", "Ghana", "Morocco", "Algeria", "Tunisia", "Libya", "Sudan",
               "Uganda", "Tanzania", "Rwanda", "Somalia", "Senegal", "Mali", "Niger", "Chad", "Cameroon", "Angola",
               "Zambia", "Zimbabwe", "Mozambique", "Madagascar", "Namibia", "Botswana", "Malawi", "Gabon",
               "Liberia", "Guinea", "Benin", "Togo", "Burundi", "Eritrea", "Mauritania", "Lesotho"),
    "Europe": ("France", "Germany", "Italy", "Spain", "Portugal", "Poland", "Sweden", "Norway", "Finland",
               "Denmark", "Ireland", "Belgium", "Netherlands", "Austria", "Switzerland", "Greece", "Hungary",
               "Romania", "Bulgaria", "Croatia", "Serbia", "Slovakia", "Slovenia", "Czechia", "Ukraine", "Belarus",
               "Estonia", "Latvia", "Lithuania", "Iceland", "Albania", "Moldova", "Luxembourg", "Malta",
               "Montenegro", "Monaco"),
    "Asia": ("China", "Japan", "India", "Pakistan", "Bangladesh", "Vietnam", "Thailand", "Indonesia", "Malaysia",
             "Philippines", "Korea", "Mongolia", "Nepal", "Bhutan", "Myanmar", "Cambodia", "Laos", "Singapore",
             "Iran", "Iraq", "Syria", "Jordan", "Lebanon", "Israel", "Yemen", "Oman", "Qatar", "Kuwait",
             "Afghanistan", "Kazakhstan", "Uzbekistan", "Turkmenistan", "Kyrgyzstan", "Tajikistan", "Taiwan",
             "Bahrain"),
    # North, Central and South America and the Caribbean: "America" is one token, "North America" is not
    "America": ("Canada", "Mexico", "Brazil", "Argentina", "Chile", "Peru", "Colombia", "Venezuela", "Ecuador",
                "Bolivia", "Paraguay", "Uruguay", "Guyana", "Suriname", "Cuba", "Jamaica", "Haiti", "Panama",
                "Honduras", "Guatemala", "Nicaragua", "Belize", "Bahamas", "Barbados", "Grenada", "Dominica",
                "Trinidad", "El Salvador", "Costa Rica", "Puerto Rico", "Bermuda", "Aruba", "Montserrat",
                "Anguilla", "Martinique", "Guadeloupe"),
}
LABELS: tuple[str, ...] = tuple(COUNTRIES)
PROMPT = "Country: {}\nContinent:"

Example = tuple[torch.Tensor, int]  # (prompt token ids [T], label index)


def continent_task(seed: int = 0, test_fraction: float = 0.5) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test): each continent's countries shuffled with `seed` and split, so both halves are balanced."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label, countries in COUNTRIES.items():
        order = torch.randperm(len(countries), generator=g).tolist()
        n_test = round(len(countries) * test_fraction)
        test += [(countries[i], label) for i in order[:n_test]]
        train += [(countries[i], label) for i in order[n_test:]]
    return train, test


def label_token_ids(tokenizer) -> list[int]:
    """The token of each label, as the model would write it after "Continent:" (with its leading space)."""
    ids = [tokenizer(" " + label, add_special_tokens=False).input_ids for label in LABELS]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"every label must be a single token for this scoring, got {dict(zip(LABELS, ids))}")
    return [i[0] for i in ids]


def encode(tokenizer, examples: Sequence[tuple[str, str]]) -> list[Example]:
    """Each (country, continent) as (ids of PROMPT.format(country), index of the continent in LABELS)."""
    return [(torch.tensor(tokenizer(PROMPT.format(c), add_special_tokens=False).input_ids), LABELS.index(label))
            for c, label in examples]


def _by_length(examples: Sequence[Example]) -> dict[int, list[int]]:
    """Indices of the examples grouped by prompt length: each group stacks into one batch with no padding."""
    groups: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(examples):
        groups.setdefault(len(ids), []).append(i)
    return groups


def _last_log_probs(model: Callable[[torch.Tensor], torch.Tensor], examples: Sequence[Example]) -> torch.Tensor:
    """log-softmax over the vocabulary at each prompt's last position [N, vocab], in the examples' order."""
    out: list[torch.Tensor | None] = [None] * len(examples)
    for idx in _by_length(examples).values():
        logits = model(torch.stack([examples[i][0] for i in idx]))[:, -1]
        for i, row in zip(idx, F.log_softmax(logits, dim=-1)):
            out[i] = row
    return torch.stack(out)


@torch.no_grad()
def label_log_probs(model: Callable[[torch.Tensor], torch.Tensor], examples: Sequence[Example],
                    label_ids: Sequence[int]) -> torch.Tensor:
    """log P(label token | prompt) [N, len(LABELS)]: the prediction is the argmax of each row."""
    return _last_log_probs(model, examples)[:, list(label_ids)]


def accuracy(log_probs: torch.Tensor, examples: Sequence[Example]) -> int:
    """How many examples' highest-scoring label is the right one (a count, exact on every CPU but for ties)."""
    gold = torch.tensor([label for _, label in examples])
    return int((log_probs.argmax(dim=1) == gold).sum())


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k / n (better than p +- z sqrt(p(1-p)/n) near 0 and 1)."""
    if not (isinstance(k, int) and isinstance(n, int) and 0 <= k <= n and n > 0):
        raise ValueError(f"need integers 0 <= k <= n, n > 0; got k={k!r}, n={n!r}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def batches(n_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Example indices of each step: epochs of a seeded shuffle, cut into batches (the same for every method)."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += torch.randperm(n_examples, generator=g).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def train(model: Callable[[torch.Tensor], torch.Tensor], params: Sequence[nn.Parameter], examples: Sequence[Example],
          label_ids: Sequence[int], steps: int, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
          penalty: Callable[[], torch.Tensor] | None = None, progress: bool = False) -> list[float]:
    """Adam on the mean cross entropy of each example's label token (over the whole vocabulary), plus
    `penalty()` if given. Returns the loss of every step (before its update), without the penalty."""
    params = list(params)
    if not params or not all(p.requires_grad for p in params):
        raise ValueError("params must be a non-empty list of trainable (requires_grad) parameters")
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    plan = batches(len(examples), steps, batch_size, seed)
    if progress:
        from tqdm.auto import tqdm
        plan = tqdm(plan, desc="training", leave=False)
    for idx in plan:
        batch = [examples[i] for i in idx]
        targets = torch.tensor([label_ids[label] for _, label in batch])
        loss = F.nll_loss(_last_log_probs(model, batch), targets)
        total = loss + penalty() if penalty is not None else loss
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---- the saved run '09-adapters' ----------------------------------------------------------------------------------

INIT_TEXT = " Name the continent of each country."  # the soft prompt's and the prefix's starting point
LORA_TARGETS = ("q_proj", "v_proj")                 # the LoRA paper's choice; QLoRA adapts the same layers
METHODS: dict[str, dict] = {
    # lr: Adam's step size, chosen per kind of parameter (a prompt vector lives at the embeddings' scale)
    "LoRA": {"r": 8, "alpha": 16, "lr": 1e-3},
    "QLoRA (int4 base)": {"r": 8, "alpha": 16, "lr": 1e-3, "group_size": 64},
    "prompt tuning": {"lr": 1e-2},
    "prefix tuning": {"lr": 1e-2},
    "LoFiT": {"n_heads": 16, "lr": 1e-2, "select_steps": 10, "l1": 1e-3},
    "LoFiT, random heads": {"n_heads": 16, "lr": 1e-2},
}


def tokenizer():
    """SmolLM2's tokenizer alone (no model weights)."""
    from transformers import AutoTokenizer

    from labkit.models import _quiet_transformers, smollm2_dir

    _quiet_transformers()
    return AutoTokenizer.from_pretrained(smollm2_dir())


def build(name: str, tok, train_set: Sequence[Example] = (), label_ids: Sequence[int] = (), seed: int = 0,
          batch_size: int = 8) -> tuple[nn.Module, dict]:
    """A fresh SmolLM2 adapted by METHODS[name], ready to train: (model to call, facts to record).
    LoFiT's localisation step trains here (on `train_set`), before the heads are chosen."""
    from labkit.finetune import lofit
    from labkit.finetune.lora import add_lora
    from labkit.finetune.prompt_tuning import PrefixTuning, SoftPrompt
    from labkit.finetune.qlora import add_qlora
    from labkit.llama import Llama

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {list(METHODS)}")
    cfg, facts = METHODS[name], {}
    model = Llama.from_pretrained()
    torch.manual_seed(seed)  # LoRA's A, the random heads
    init = torch.tensor(tok(INIT_TEXT, add_special_tokens=False).input_ids)
    if name == "LoRA":
        add_lora(model, LORA_TARGETS, r=cfg["r"], alpha=cfg["alpha"])
    elif name.startswith("QLoRA"):
        add_qlora(model, LORA_TARGETS, r=cfg["r"], alpha=cfg["alpha"], group_size=cfg["group_size"])
    elif name == "prompt tuning":
        model = SoftPrompt(model, init)
    elif name == "prefix tuning":
        model = PrefixTuning(model, init)
    elif name == "LoFiT":
        lofit.add_scalings(model)
        scalings = [p for p in model.parameters() if p.requires_grad]
        facts["select_losses"] = train(model, scalings, train_set, label_ids, cfg["select_steps"], batch_size,
                                       cfg["lr"], seed + 1, penalty=lambda: cfg["l1"] * lofit.l1_penalty(model))
        heads = lofit.select_heads(model, cfg["n_heads"])
        lofit.remove_edits(model)
        lofit.add_offsets(model, heads)
        facts["heads"] = [list(h) for h in heads]
    else:  # LoFiT on heads drawn at random: does the localisation step matter?
        n_heads = model.cfg.n_layers * model.cfg.n_heads
        picks = torch.randperm(n_heads)[:cfg["n_heads"]].tolist()
        heads = sorted((p // model.cfg.n_heads, p % model.cfg.n_heads) for p in picks)
        lofit.add_offsets(model, heads)
        facts["heads"] = [list(h) for h in heads]
    return model, facts


def adapters_run(steps: int = 30, batch_size: int = 8, seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train and score every method of METHODS on the continent task with the same budget; measure the
    memory of full fine-tuning, LoRA and QLoRA. One thread, so that a notebook's live slice can match it."""
    import time

    from labkit.finetune.lora import trainable_parameters
    from labkit.finetune.prompt_tuning import SoftPrompt
    from labkit.llama import Llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = tokenizer()
        label_ids = label_token_ids(tok)
        train_raw, test_raw = continent_task(seed)
        train_set, test_set = encode(tok, train_raw), encode(tok, test_raw)
        record: dict = {"seed": seed, "steps": steps, "batch_size": batch_size, "torch_threads": 1,
                        "n_train": len(train_set), "n_test": len(test_set), "methods": {}, "before": {}}
        base = Llama.from_pretrained()
        init = torch.tensor(tok(INIT_TEXT, add_special_tokens=False).input_ids)
        for label, model in (("plain prompt", base), ("reading the instruction", SoftPrompt(base, init))):
            scores = label_log_probs(model, test_set, label_ids)
            record["before"][label] = {"correct": accuracy(scores, test_set),
                                       "predictions": scores.argmax(dim=1).tolist()}
        tensors: dict[str, torch.Tensor] = {}
        for name, cfg in METHODS.items():
            start = time.perf_counter()
            model, facts = build(name, tok, train_set, label_ids, seed, batch_size)
            params = [p for p in model.parameters() if p.requires_grad]
            losses = train(model, params, train_set, label_ids, steps, batch_size, cfg["lr"], seed, progress=True)
            scores = label_log_probs(model, test_set, label_ids)
            correct = accuracy(scores, test_set)
            record["methods"][name] = {**cfg, **facts, "trainable": trainable_parameters(model), "losses": losses,
                                       "correct": correct, "interval": list(wilson_interval(correct, len(test_set))),
                                       "predictions": scores.argmax(dim=1).tolist(),
                                       "seconds": round(time.perf_counter() - start, 1)}
            if not name.startswith("QLoRA"):  # QLoRA's adapter is as large as LoRA's and not needed later
                key = name.split(",")[0].replace(" ", "_").lower() + ("_random" if "random" in name else "")
                tensors.update({f"{key}.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad})
        record["memory"] = memory_run(train_set[:batch_size], label_ids)
        return record, tensors
    finally:
        torch.set_num_threads(threads)


def memory_run(batch: Sequence[Example], label_ids: Sequence[int]) -> dict[str, dict[str, int]]:
    """Bytes of weights, gradients and Adam state after one real training step of SmolLM2: full fine-tuning
    (fp32), LoRA (fp32 base) and QLoRA (int4 base), adapters on q_proj and v_proj at r = 8."""
    from labkit.finetune.lora import add_lora
    from labkit.finetune.qlora import add_qlora, memory_bytes
    from labkit.llama import Llama

    out = {}
    for name in ("full fine-tuning", "LoRA", "QLoRA"):
        model = Llama.from_pretrained()
        torch.manual_seed(0)
        if name == "LoRA":
            add_lora(model, LORA_TARGETS, r=8, alpha=16)
        elif name == "QLoRA":
            add_qlora(model, LORA_TARGETS, r=8, alpha=16, group_size=64)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-5)
        targets = torch.tensor([label_ids[label] for _, label in batch])
        F.nll_loss(_last_log_probs(model, batch), targets).backward()
        opt.step()
        out[name] = memory_bytes(model, opt)
        del model, opt
    return out
