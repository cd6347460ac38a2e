"""From next-token logits to text: greedy decoding, temperature, top-k, top-p (nucleus) sampling, and the
generation loop.

A language model gives logits z over the vocabulary; softmax(z) is its next-token distribution. Decoding
chooses one token from it, appends it, and asks again:

    greedy       argmax z                                   deterministic; loops easily
    temperature  softmax(z / T)                             T < 1 sharpens, T > 1 flattens; T -> 0 is greedy
    top-k        keep the k largest logits, renormalise     cuts the long tail of unlikely tokens
    top-p        keep the fewest most likely tokens whose   a tail cut that adapts to how sure the model is
                 probability adds up to p, renormalise      (Holtzman et al. 2019, "nucleus sampling")

Filters set the logits they remove to -inf, so softmax gives those tokens probability exactly 0. The order
is transformers': temperature first, then top-k, then top-p. `generate` has no KV-cache: every step runs the
model on the whole sequence so far, so step t costs O(t) (chapter 5 removes that). Sampling takes a seeded
`torch.Generator`, so every sampled text in the course is reproducible.

`next_token_explorer` is a widget over precomputed next-token distributions (it works in the static book).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

# ----------------------------------------------------------------------------------------------------------
# argument checks


def _check_logits(logits: object) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor [..., vocab], got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dim, got shape {tuple(logits.shape)}")
    return logits


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    return float(temperature)


def _check_top_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"top_k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"top_k must be >= 1 (keep at least one token), got {k}")
    return k


def _check_top_p(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {p!r}")
    return float(p)


# ----------------------------------------------------------------------------------------------------------
# decoding rules, on logits [..., vocab]

def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token at each position: argmax over the last dim (ties: the lowest id)."""
    return _check_logits(logits).argmax(dim=-1)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z / T. softmax(z / T) is the distribution p_i^(1/T), renormalised."""
    temperature = _check_temperature(temperature)
    if temperature == 0:
        raise ValueError("temperature 0 is greedy decoding, not a distribution: use greedy(logits)")
    return _check_logits(logits) / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf. Ties with the k-th value are kept."""
    logits, k = _check_logits(logits), _check_top_k(k)
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # the k-th largest value of each row
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to >= p; set the rest to -inf.

    Sorted by probability, a token is kept when the mass of the tokens *before* it is still < p, so the top
    token is always kept (p -> 0 is greedy) and p = 1 keeps everything.
    """
    logits, p = _check_logits(logits), _check_top_p(p)
    if p == 1.0:
        return logits  # not even float rounding in the cumulative sum may drop a token
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits.double(), dim=-1)  # float64: cumulative sums of 50k terms
    mass_before = torch.cumsum(probs, dim=-1) - probs
    remove_sorted = mass_before >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def probabilities(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """The distribution a sampler with these settings draws from: softmax of the tempered, filtered logits.
    temperature=0 gives the one-hot distribution of the greedy choice."""
    logits, temperature = _check_logits(logits), _check_temperature(temperature)
    if temperature == 0:
        return torch.nn.functional.one_hot(greedy(logits), logits.shape[-1]).to(logits.dtype)
    z = apply_temperature(logits, temperature)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    return torch.softmax(z, dim=-1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits [..., vocab] -> ids [...]. temperature=0 is greedy (needs no generator);
    otherwise pass a seeded generator, e.g. torch.Generator().manual_seed(0)."""
    logits, temperature = _check_logits(logits), _check_temperature(temperature)
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)
    if temperature == 0:
        return greedy(logits)
    if not isinstance(generator, torch.Generator):
        raise TypeError("sampling needs a seeded torch.Generator (e.g. torch.Generator().manual_seed(0)), so "
                        f"that the result is reproducible; got {type(generator).__name__}")
    probs = probabilities(logits, temperature, top_k, top_p)
    flat = probs.reshape(-1, probs.shape[-1]).float()
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


# ----------------------------------------------------------------------------------------------------------
# the generation loop

def _next_logits(model: Callable, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    logits = getattr(out, "logits", out)  # transformers models return an object with .logits
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise ValueError(f"model(ids) must return logits [B, T, vocab] for ids {tuple(ids.shape)}, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    return logits[:, -1].float()


def _check_generate_args(ids: object, max_new_tokens: object, temperature: object, generator: object) -> None:
    """The checks every generation loop makes (this one and chapter 5's cached `labkit.kvcache.generate`)."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] == 0 or ids.is_floating_point():
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids must be an integer tensor [batch, time] with time >= 1, got {shape}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if _check_temperature(temperature) > 0 and not isinstance(generator, torch.Generator):
        raise TypeError("sampling (temperature > 0) needs a seeded torch.Generator, "
                        "e.g. generator=torch.Generator().manual_seed(0)")


@torch.no_grad()
def generate(model: Callable, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             eos_id: int | None = None) -> torch.Tensor:
    """Append up to max_new_tokens tokens to each row of ids [B, T]; returns [B, T + new].

    temperature=0 (the default) decodes greedily; otherwise each token is sampled with `sample_next`.
    No KV-cache: every step runs the model on the whole sequence. A row that emits eos_id is finished and
    is padded with eos_id; the loop stops early once every row is finished (as transformers' generate does
    when its pad token is the eos token).
    """
    _check_generate_args(ids, max_new_tokens, temperature, generator)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = _next_logits(model, ids)  # the whole prefix, every step: chapter 5's motivation
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        ids = torch.cat([ids, token[:, None].to(ids.dtype)], dim=1)
        if eos_id is not None and finished.all():
            break
    return ids


# ----------------------------------------------------------------------------------------------------------
# the explorer widget

def _setting(temperature: float, top_k: int | None, top_p: float | None) -> str:
    return f"T={temperature:g}, top-k={'all' if top_k is None else top_k}, top-p={1.0 if top_p is None else top_p:g}"


def _chart(logits: torch.Tensor, decode: Callable[[int], str], title: str, temperature: float,
           top_k: int | None, top_p: float | None, top: int) -> str:
    from .viz import html_bar_chart

    probs = probabilities(logits.double(), temperature, top_k, top_p)
    kept = int((probs > 0).sum())
    order = torch.sort(probs, descending=True, stable=True).indices[:min(top, kept)]  # stable: reproducible
    entropy = float(-(probs[probs > 0] * probs[probs > 0].log()).sum()) / math.log(2)
    heading = (f"{title}   [{_setting(temperature, top_k, top_p)}]: {kept:,} of {probs.numel():,} tokens "
               f"can be drawn, entropy {entropy:.2f} bits")
    return html_bar_chart([decode(int(i)) for i in order], probs[order].tolist(), title=heading, max_value=1.0)


def next_token_explorer(next_logits: Mapping[str, torch.Tensor], decode: Callable[[int], str],
                        temperatures: Sequence[float] = (0.5, 1.0, 1.5),
                        top_ks: Sequence[int | None] = (None, 50, 5),
                        top_ps: Sequence[float] = (1.0, 0.9, 0.5), top: int = 10):
    """A widget: pick a prompt, a temperature, top-k and top-p, and see the distribution sampling draws from.

    `next_logits` maps each prompt (its label) to the model's next-token logits [vocab] after it; `decode`
    turns a token id into its text. Every chart is precomputed HTML in nested `Stack`s (prompt x T x k x p)
    switched by `jslink`, so the published book responds without a kernel.
    Layout: VBox([HBox(prompt Dropdown, T slider), HBox(top-k slider, top-p slider), charts Stack]).
    """
    import ipywidgets as widgets

    if not isinstance(next_logits, Mapping) or not next_logits:
        raise ValueError("next_logits must be a non-empty mapping prompt -> logits [vocab]")
    for prompt, z in next_logits.items():
        if _check_logits(z).ndim != 1:
            raise ValueError(f"the logits for {prompt!r} must be 1-D [vocab], got shape {tuple(z.shape)}")
    temperatures = [_check_temperature(t) for t in temperatures]
    if not temperatures or 0.0 in temperatures:
        raise ValueError(f"temperatures must be a non-empty list of numbers > 0, got {temperatures}")
    top_ks = [None if k is None else _check_top_k(k) for k in top_ks]
    top_ps = [_check_top_p(p) for p in top_ps]
    if not top_ks or not top_ps:
        raise ValueError("top_ks and top_ps must not be empty (use None / 1.0 for 'no filter')")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")

    t0 = temperatures.index(1.0) if 1.0 in temperatures else 0
    prompt_box = widgets.Dropdown(options=[(p, i) for i, p in enumerate(next_logits)], index=0, description="prompt")
    t_slider = widgets.SelectionSlider(options=[f"{t:g}" for t in temperatures], index=t0, description="T")
    k_slider = widgets.SelectionSlider(options=["all" if k is None else str(k) for k in top_ks], index=0,
                                       description="top-k")
    p_slider = widgets.SelectionSlider(options=[f"{p:g}" for p in top_ps], index=0, description="top-p")

    # charts.children[prompt].children[T].children[k].children[p]
    per_prompt = []
    for prompt, z in next_logits.items():
        title = f"P(next | {prompt!r})"
        per_t = [widgets.Stack([widgets.Stack([widgets.HTML(_chart(z, decode, title, t, k, p, top)) for p in top_ps],
                                              selected_index=0) for k in top_ks], selected_index=0)
                 for t in temperatures]
        per_prompt.append(widgets.Stack(per_t, selected_index=t0))
    charts = widgets.Stack(per_prompt, selected_index=0)
    # jslink runs in the browser: the static page switches charts without Python
    widgets.jslink((prompt_box, "index"), (charts, "selected_index"))
    for by_t in per_prompt:
        widgets.jslink((t_slider, "index"), (by_t, "selected_index"))
        for by_k in by_t.children:
            widgets.jslink((k_slider, "index"), (by_k, "selected_index"))
            for by_p in by_k.children:
                widgets.jslink((p_slider, "index"), (by_p, "selected_index"))
    return widgets.VBox([widgets.HBox([prompt_box, t_slider]), widgets.HBox([k_slider, p_slider]), charts])
