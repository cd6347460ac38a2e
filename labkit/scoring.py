"""Score text with a real causal language model: log P(text), and the chain rule word by word.

The chain rule P(w1..wn) = P(w1) P(w2|w1) ... P(wn|w1..wn-1) holds for any model. A model over subword
tokens gives log P(s) for a string s as the sum of its tokens' log-probabilities (scoring the tokenizer's
own segmentation of s). The conditional of a whole word is then a difference of two such sums,
log P(w_i | w_<i) = log P(w_1..w_i) - log P(w_1..w_{i-1}), so the factors multiply back to P(sentence) exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _start_id(tokenizer) -> int:
    """The token a document starts after: the document separator <|endoftext|> where the vocabulary has
    one (SmolLM2's BOS is the chat marker <|im_start|>, which expects a role to follow), else BOS, else EOS."""
    for tid in (tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else None,
                tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition the first token on")


@torch.no_grad()
def text_log_prob(tokenizer, model, text: str) -> float:
    """Natural-log probability of `text` at the start of a document (its tokens' log-probs, summed)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty str, got {text!r}")
    ids = [_start_id(tokenizer), *tokenizer(text, add_special_tokens=False).input_ids]
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(x).logits[0, :-1].double(), dim=-1)
    return float(logp.gather(1, x[0, 1:, None]).sum())


def chain_rule(tokenizer, model, words: Sequence[str], sep: str = "") -> list[float]:
    """log P(w_i | w_1..w_{i-1}) for each word, words joined by `sep` ("" for Chinese, " " for English)."""
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"words must be a non-empty list of non-empty strings, got {words!r}")
    prefix_logp = [text_log_prob(tokenizer, model, sep.join(words[: i + 1])) for i in range(len(words))]
    return [prefix_logp[0]] + [b - a for a, b in zip(prefix_logp, prefix_logp[1:])]
