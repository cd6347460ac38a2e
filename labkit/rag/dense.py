"""Dense retrieval: sentence embeddings from all-MiniLM-L6-v2, and exact cosine top-k search.

A BERT encoder gives one vector per word piece; a sentence embedding is their **mean over the real tokens**.
Padding positions must not count: a batch pads every text to its longest member, and averaging the padding
vectors in would make a short text's embedding depend on which texts it was batched with. The mean is then
L2-normalised, so that a dot product *is* the cosine similarity.

This is exactly what sentence-transformers does for this model (its folder's modules.json lists Transformer →
Pooling(mean) → Normalize), and tests/test_rag_dense.py checks that our embeddings equal its embeddings.

Search is exact (brute force): score every stored vector against the query and keep the k best. With a few
thousand chunks that is one matrix-vector product; approximate indexes (HNSW) only pay off far beyond that.
"""
from __future__ import annotations

import functools
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from labkit.models import load_minilm

# sentence-transformers truncates this model's inputs at 256 word pieces (including [CLS] and [SEP]): the
# model folder's sentence_bert_config.json says "max_seq_length": 256, and its README says "By default, input
# text longer than 256 word pieces is truncated." (The tokenizer's own model_max_length is 512, so calling the
# tokenizer without max_length would NOT match sentence-transformers on long chunks.)
MAX_LENGTH = 256
DIM = 384  # the hidden size of all-MiniLM-L6-v2 (config.json "hidden_size")


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average each sequence's token vectors over the positions where attention_mask is 1: [b, t, d] → [b, d]."""
    if token_embeddings.ndim != 3 or attention_mask.shape != token_embeddings.shape[:2]:
        raise ValueError(f"expected token_embeddings [b, t, d] and attention_mask [b, t], got "
                         f"{tuple(token_embeddings.shape)} and {tuple(attention_mask.shape)}")
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # [b, t, 1]: zeros the padding vectors
    summed = (token_embeddings * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # the number of real tokens; clamp only guards an all-padding row
    return summed / counts


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit length (rows of zeros stay zero), so that dot products are cosines."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@functools.lru_cache(maxsize=1)
def _minilm():
    return load_minilm()  # (tokenizer, model), loaded once per process


@torch.no_grad()  # not inference_mode: its tensors would poison a later autograd use of the cached model
def embed(texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Unit-length all-MiniLM-L6-v2 embeddings of `texts`, as a float32 tensor [len(texts), 384].

    Texts are embedded `batch_size` at a time (longest first, so each batch pads little) and returned in the
    order given. progress=True shows a tqdm bar over the batches.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must all be strings; texts[{bad[0]}] is {type(texts[bad[0]]).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    out = torch.empty(len(texts), DIM, dtype=torch.float32)
    if not texts:
        return out
    tokenizer, model = _minilm()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # characters as a cheap length proxy
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm  # only when asked: a bar is a (timing-dependent) output
        starts = tqdm(starts, desc="embedding", unit="batch")
    for start in starts:
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state  # [b, t, 384]
        out[idx] = l2_normalize(mean_pool(hidden, batch["attention_mask"])).float()
    return out


@dataclass(frozen=True)
class Results:
    """A ranked list of (id, score) pairs, best first, and why it is empty when it is (else None).

    It behaves as the list of hits: iterate it, index it, take len() or list() of it.
    """
    hits: list[tuple[Hashable, float]] = field(default_factory=list)
    reason: str | None = None

    def __iter__(self) -> Iterator[tuple[Hashable, float]]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]

    @property
    def ids(self) -> list[Hashable]:
        return [doc for doc, _ in self.hits]


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int >= 1, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")


class DenseIndex:
    """Exact cosine search over stored embeddings, one per document id."""

    def __init__(self, embeddings: torch.Tensor | np.ndarray, ids: Sequence[Hashable]):
        vectors = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if vectors.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D [n_documents, dim] array, got shape {tuple(vectors.shape)}")
        if vectors.shape[0] == 0:
            raise ValueError("cannot build an index over an empty corpus (0 embeddings)")
        if vectors.shape[1] == 0:
            raise ValueError(f"embeddings must have dim >= 1, got shape {tuple(vectors.shape)}")
        if isinstance(ids, str) or len(ids) != vectors.shape[0]:
            raise ValueError(f"need one id per embedding: {vectors.shape[0]} embeddings, "
                             f"{len(ids) if not isinstance(ids, str) else 'a string of'} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique (each document is stored once)")
        if not torch.isfinite(vectors).all():
            raise ValueError("embeddings contain NaN or infinity")
        norms = vectors.norm(dim=1)
        if (norms == 0).any():
            raise ValueError(f"embedding of id {ids[int(torch.nonzero(norms == 0)[0])]!r} is all zeros: "
                             "its cosine with anything is undefined")
        self.vectors = vectors / norms[:, None]  # stored unit-length: a dot product is then the cosine
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(self, query: str | torch.Tensor | np.ndarray, k: int = 10) -> Results:
        """The k stored documents with the highest cosine to `query` (a text, embedded with embed(), or a vector).

        Equal scores keep the order the documents were added in. k larger than the index returns every document.
        An empty or whitespace-only text returns Results([], reason="empty query").
        """
        _check_k(k)
        if isinstance(query, str):
            if not query.strip():
                return Results([], reason="empty query")
            if self.dim != DIM:
                raise ValueError(f"a text query is embedded with all-MiniLM-L6-v2 ({DIM} dims), but this index "
                                 f"stores {self.dim}-dim embeddings")
            q = embed([query])[0]
        else:
            q = torch.as_tensor(np.asarray(query, dtype=np.float32))
            if q.ndim != 1 or q.shape[0] != self.dim:
                raise ValueError(f"query embedding must be a vector of {self.dim} numbers (the index's dim), "
                                 f"got shape {tuple(q.shape)}")
            if not torch.isfinite(q).all():
                raise ValueError("query embedding contains NaN or infinity")
            if q.norm() == 0:
                return Results([], reason="query embedding is all zeros: cosine is undefined")
            q = q / q.norm()
        scores = (self.vectors @ q).numpy()
        top = np.argsort(-scores, kind="stable")[:k]  # stable: ties keep insertion order, on every machine
        return Results([(self.ids[i], float(scores[i])) for i in top])
