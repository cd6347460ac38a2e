"""Mixture of experts: many feed-forward layers, each token uses k of them, chosen by a learned router.

A dense block runs every token through one SwiGLU (`labkit.transformer.SwiGLU`). A mixture-of-experts block
has E of them ("experts") and a router, a linear map to E scores; each token goes to the k experts with the
highest router probability, and their outputs are mixed by those probabilities renormalised over the k
(Shazeer et al. 2017; GShard, Lepikhin et al. 2020; Switch, Fedus et al. 2021, with k = 1; Mixtral, k = 2):

    p = softmax(x W_router)                        [E] router probabilities
    S = the k largest entries of p;  g_i = p_i / sum_{j in S} p_j
    y = sum_{i in S} g_i * expert_i(x)

The model holds E experts' parameters but each token pays for k: more parameters for the same compute per token.
Nothing in this objective spreads the tokens: a router that favours one expert early trains it more, which makes
it better, which makes the router favour it more. Switch and GShard add an auxiliary loss

    aux = E * sum_i f_i * P_i        f_i: the share of the token-to-expert assignments that went to expert i
                                     P_i: the mean router probability of expert i over the tokens

f is a count (no gradient); P carries the gradient, pushing probability away from overloaded experts.
When the routing is uniform (f_i = P_i = 1/E) it equals 1; when every token goes to one expert with certainty, E.

A real system also gives each expert a fixed `capacity` = capacity_factor * N k / E slots per batch (so every
device does the same work); assignments beyond it are dropped, and the token passes on through the residual.

    MoEFeedForward            router + E SwiGLU experts; batched dispatch (a loop over experts, not tokens)
    moe_reference             the same layer computed token by token (the test's reference)
    load_balancing_loss       E * sum_i f_i P_i
    MoEGPT                    chapter 3's TinyGPT with every feed-forward layer replaced by an MoEFeedForward
    train_moe                 chapter 3's training loop plus aux_weight * (the layers' summed aux losses)
    moe_run                   chapter 9's saved run: dense vs MoE with and without the balancing loss
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..transformer import GPTConfig, SwiGLU, TinyGPT, TrainConfig, _as_ids, make_optimizer, token_log_probs, update


def _check_int(value: object, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def load_balancing_loss(probs: Tensor, chosen: Tensor) -> Tensor:
    """E * sum_i f_i * P_i for router probabilities probs [N, E] and the chosen experts chosen [N, k].

    f_i = (assignments to expert i) / (N k), P_i = mean over tokens of probs[:, i]; a scalar, 1 when uniform."""
    if not isinstance(probs, Tensor) or probs.ndim != 2 or not probs.is_floating_point():
        raise ValueError(f"probs must be a float tensor [tokens, experts], got "
                         f"{tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__}")
    if not isinstance(chosen, Tensor) or chosen.ndim != 2 or chosen.shape[0] != probs.shape[0] \
            or chosen.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"chosen must be integer expert ids [tokens = {probs.shape[0]}, k], got "
                         f"{tuple(chosen.shape) if isinstance(chosen, Tensor) else type(chosen).__name__}")
    n_experts = probs.shape[1]
    f = torch.bincount(chosen.reshape(-1), minlength=n_experts).to(probs.dtype) / chosen.numel()
    return n_experts * (f * probs.mean(0)).sum()


class MoEFeedForward(nn.Module):
    """A top-k gated mixture of `n_experts` SwiGLU feed-forward layers of width `expert_hidden`.

    forward(x [..., dim]) -> [..., dim]. After each call, `aux_loss` (the balancing loss of that batch, with
    gradient), `counts` (assignments per expert, before any drop) and `dropped` (assignments over capacity) hold
    that call's routing: the training loop reads them, as Switch's implementation collects its layers' losses."""

    def __init__(self, dim: int, expert_hidden: int, n_experts: int, k: int = 2, capacity_factor: float | None = None,
                 renormalize: bool = True):
        super().__init__()
        _check_int(dim, "dim")
        _check_int(expert_hidden, "expert_hidden")
        _check_int(n_experts, "n_experts")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_experts:
            raise ValueError(f"k (experts per token) must be an int in 1..n_experts = {n_experts}, got {k!r}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 (or None for no capacity limit), got {capacity_factor!r}")
        self.n_experts, self.k = n_experts, k
        self.capacity_factor, self.renormalize = capacity_factor, renormalize
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, expert_hidden) for _ in range(n_experts))
        self.aux_loss: Tensor | None = None
        self.counts: Tensor | None = None
        self.dropped = 0

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, dim] -> (probs [N, E] float32, gates [N, k], chosen [N, k]): the router's probabilities, the k
        experts of each token (most probable first) and their weights (renormalised to sum to 1 if asked)."""
        probs = F.softmax(self.router(x).float(), dim=-1)  # float32: the router's small differences decide
        top = probs.topk(self.k, dim=-1)
        gates = top.values / top.values.sum(-1, keepdim=True) if self.renormalize else top.values
        return probs, gates.to(x.dtype), top.indices

    def capacity(self, n_tokens: int) -> int | None:
        """Slots per expert for a batch of n_tokens: ceil(capacity_factor * n_tokens * k / E), or None."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.k / self.n_experts)

    def keep_mask(self, chosen: Tensor) -> Tensor:
        """[N, k] bool: which assignments fit their expert's capacity. Queues fill with every token's first
        choice (in token order), then every second choice, ... (GShard's priority: a first choice matters most)."""
        capacity = self.capacity(chosen.shape[0])
        if capacity is None:
            return torch.ones_like(chosen, dtype=torch.bool)
        order = F.one_hot(chosen.T.reshape(-1), self.n_experts)  # [k N, E], slot-major
        position = ((order.cumsum(0) - 1) * order).sum(-1)  # place of each assignment in its expert's queue
        return (position < capacity).reshape(self.k, -1).T

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] != self.router.in_features:
            raise ValueError(f"MoEFeedForward({self.router.in_features}) expects [..., {self.router.in_features}], "
                             f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        flat = x.reshape(-1, x.shape[-1])
        probs, gates, chosen = self.route(flat)
        keep = self.keep_mask(chosen)
        out = torch.zeros_like(flat)
        # Dispatch: each expert gathers its tokens, runs once on all of them, and adds its weighted output back.
        # E matrix products of ~N k / E rows each, instead of N k products of one row.
        for e, expert in enumerate(self.experts):
            token, slot = torch.where((chosen == e) & keep)
            if token.numel():
                out.index_add_(0, token, gates[token, slot, None] * expert(flat[token]))
        self.aux_loss = load_balancing_loss(probs, chosen)
        self.counts = torch.bincount(chosen.reshape(-1), minlength=self.n_experts).detach()
        self.dropped = int((~keep).sum())
        return out.reshape(x.shape)


def moe_reference(layer: MoEFeedForward, x: Tensor) -> Tensor:
    """The layer computed one token at a time, straight from the formula (no capacity): the tests' reference."""
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for token in flat:
        p = F.softmax(layer.router(token).float(), dim=-1)
        ids = sorted(range(layer.n_experts), key=lambda i: -float(p[i]))[:layer.k]
        total = sum(float(p[i]) for i in ids) if layer.renormalize else 1.0
        rows.append(sum(float(p[i]) / total * layer.experts[i](token[None])[0] for i in ids))
    return torch.stack(rows).reshape(x.shape)


class MoEGPT(TinyGPT):
    """TinyGPT (labkit.transformer) whose blocks' `mlp` is an MoEFeedForward: attention, norms, embeddings,
    scoring and generation are chapter 3's, unchanged; initialised by the same rules."""

    def __init__(self, config: GPTConfig, n_experts: int, k: int = 2, expert_hidden: int | None = None,
                 capacity_factor: float | None = None):
        super().__init__(config)
        hidden = expert_hidden or config.ffn_hidden or 4 * config.d_model // (2 * k)
        for layer in self.layers:
            layer.mlp = MoEFeedForward(config.d_model, hidden, n_experts, k, capacity_factor)
            layer.mlp.apply(self._init_weights)
            for expert in layer.mlp.experts:  # GPT-2's scaled init of the residual writes, as TinyGPT does
                nn.init.normal_(expert.down_proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    def moe_layers(self) -> list[MoEFeedForward]:
        return [layer.mlp for layer in self.layers]

    def aux_loss(self) -> Tensor:
        """The balancing losses of the last forward pass, summed over layers."""
        losses = [m.aux_loss for m in self.moe_layers()]
        if any(a is None for a in losses):
            raise RuntimeError("run a forward pass first: the aux loss belongs to a batch")
        return torch.stack(losses).sum()

    def expert_counts(self) -> Tensor:
        """[n_layers, E] assignments per expert in the last forward pass."""
        return torch.stack([m.counts for m in self.moe_layers()])

    def active_parameters(self) -> int:
        """Parameters one token uses: everything but the experts it is not routed to (k of E per layer)."""
        skipped = sum((m.n_experts - m.k) * sum(p.numel() for p in m.experts[0].parameters())
                      for m in self.moe_layers())
        return self.num_parameters() - skipped


def train_moe(model: TinyGPT, train_ids: object, cfg: TrainConfig = TrainConfig(), aux_weight: float = 0.01,
              stop_after: int | None = None, progress: bool = False,
              log: Callable[[str], None] | None = None) -> dict[str, list]:
    """`labkit.transformer.train_gpt`'s loop (same windows, schedule, optimiser) with the loss
    cross_entropy + aux_weight * model.aux_loss() for an MoEGPT (a dense TinyGPT trains exactly as train_gpt).

    Returns {"loss": cross-entropy per step, "aux": summed aux loss per step (0 for dense),
    "counts": [n_layers, E] assignment counts summed over all steps (empty for dense)}."""
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a TinyGPT or MoEGPT, got {type(model).__name__}")
    if not aux_weight >= 0:
        raise ValueError(f"aux_weight must be >= 0, got {aux_weight!r}")
    if stop_after is not None and not (isinstance(stop_after, int) and 1 <= stop_after <= cfg.steps):
        raise ValueError(f"stop_after must be an int in 1..{cfg.steps} (cfg.steps), got {stop_after!r}")
    ids = _as_ids(train_ids, model.config.vocab_size, "train_ids")
    t = model.config.context
    if ids.numel() < t + 2:
        raise ValueError(f"need more than context + 1 = {t + 1} training tokens, got {ids.numel()}")
    moe = isinstance(model, MoEGPT)
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    offsets = torch.arange(t + 1)
    history: dict[str, list] = {"loss": [], "aux": [], "counts": []}
    counts = 0
    steps = range(cfg.steps if stop_after is None else stop_after)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="MoE" if moe else "dense", leave=False)
    model.train()
    for step in steps:
        starts = torch.randint(0, ids.numel() - t - 1, (cfg.batch_size,), generator=generator)
        batch = ids[starts[:, None] + offsets]
        logits = model(batch[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        aux = model.aux_loss() if moe else torch.zeros(())
        loss = ce + aux_weight * aux if aux_weight else ce
        update(model, opt, loss, step, cfg)
        history["loss"].append(ce.item())
        history["aux"].append(aux.item())
        if moe:
            counts = counts + model.expert_counts()
        if log and (step + 1) % 100 == 0:
            log(f"step {step + 1:5d}  loss {np.mean(history['loss'][-100:]):.3f}")
    model.eval()
    history["counts"] = counts.tolist() if moe else []
    return history


@torch.no_grad()
def routing_fractions(model: MoEGPT, ids: object, context: int | None = None) -> Tensor:
    """[n_layers, E]: the share of token-to-expert assignments each expert receives over consecutive windows of
    `ids` (each row sums to 1)."""
    if not isinstance(model, MoEGPT):
        raise TypeError(f"model must be an MoEGPT, got {type(model).__name__}")
    ids = _as_ids(ids, model.config.vocab_size)
    t = context or model.config.context
    n = (ids.numel() // t) * t
    if n == 0:
        raise ValueError(f"need at least {t} ids, got {ids.numel()}")
    model.eval()
    model(ids[:n].reshape(-1, t))
    counts = model.expert_counts().double()
    return counts / counts.sum(-1, keepdim=True)


# ---------------------------------------------------------------------------------------------------------
# chapter 9's saved run

MOE_GPT = dict(context=64, d_model=64, n_layers=2, n_heads=4)
MOE = dict(n_experts=8, k=2, expert_hidden=96)
MOE_TRAIN = dict(steps=400, batch_size=16, lr=3e-3, warmup=30, seed=0)
AUX_WEIGHT = 0.01  # Switch Transformer's alpha (Fedus et al. 2021, section 2.2)


def moe_data():
    """(vocab, train ids, held-out ids): chapter 3's character corpus."""
    from .. import corpus

    text = corpus.load_corpus()
    vocab = corpus.Vocab.build(corpus.char_tokens(text.train))
    return vocab, vocab.encode(corpus.char_tokens(text.train)), vocab.encode(corpus.char_tokens(text.heldout))


def moe_models(vocab_size: int, seed: int = 0) -> dict[str, TinyGPT]:
    """The three models of the run, each built right after torch.manual_seed(seed): dense (a SwiGLU of width
    k * expert_hidden: the same active feed-forward parameters) and two MoEGPTs."""
    cfg = GPTConfig(vocab_size=vocab_size, **MOE_GPT)
    torch.manual_seed(seed)
    dense = TinyGPT(GPTConfig(vocab_size=vocab_size, ffn_hidden=MOE["k"] * MOE["expert_hidden"], **MOE_GPT))
    models: dict[str, TinyGPT] = {"dense": dense}
    for name in ("moe-aux", "moe-no-aux"):
        torch.manual_seed(seed)
        models[name] = MoEGPT(cfg, **MOE)
    return models


def moe_run() -> tuple[dict, dict[str, Tensor]]:
    """Chapter 9's saved run: on chapter 3's characters, a dense tiny GPT and an 8-expert top-2 MoE of equal
    active parameters, trained with and without the balancing loss (aux weight 0.01), same steps and seed;
    held-out perplexity of each on the same characters (chapter 3's scoring: from position 64 on, windows of 64
    sliding by 16) and each MoE's routing fractions on the held-out text. One thread, as the notebook."""
    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vocab, train_ids, heldout_ids = moe_data()
        cfg = TrainConfig(**MOE_TRAIN)
        models = moe_models(len(vocab), cfg.seed)
        histories, seconds, token_losses, fractions = {}, {}, {}, {}
        for name, model in tqdm(models.items(), desc="models"):
            start = time.perf_counter()
            histories[name] = train_moe(model, train_ids, cfg, AUX_WEIGHT if name == "moe-aux" else 0.0,
                                        progress=True)
            seconds[name] = round(time.perf_counter() - start, 1)
            first = MOE_GPT["context"]
            token_losses[name] = -token_log_probs(model, heldout_ids, stride=16)[first - 1:]
            if isinstance(model, MoEGPT):
                fractions[name] = routing_fractions(model, heldout_ids).tolist()
    finally:
        torch.set_num_threads(threads)
    record = {"seed": cfg.seed, "torch_threads": 1, "gpt_config": MOE_GPT, "moe": MOE, "aux_weight": AUX_WEIGHT,
              "train_config": vars(cfg), "seconds": seconds,
              "parameters": {n: m.num_parameters() for n, m in models.items()},
              "active_parameters": {n: (m.active_parameters() if isinstance(m, MoEGPT) else m.num_parameters())
                                    for n, m in models.items()},
              "heldout_ppl": {n: float(np.exp(v.mean())) for n, v in token_losses.items()},
              # the loss of each block of 1024 scored characters: the spread, and paired differences between models
              "heldout_block_losses": {n: [float(b.mean()) for b in np.array_split(v, len(v) // 1024)]
                                       for n, v in token_losses.items()},
              "loss": {n: h["loss"] for n, h in histories.items()},
              "aux": {n: h["aux"] for n, h in histories.items() if n != "dense"},
              "train_counts": {n: h["counts"] for n, h in histories.items() if n != "dense"},
              "heldout_fractions": fractions}
    tensors = {f"{name}.{key}": v for name, m in models.items() for key, v in m.state_dict().items()}
    return record, tensors
