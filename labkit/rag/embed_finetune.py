"""Fine-tuning an embedding model on its own corpus: triplets mined from the documents, in-batch negatives.

all-MiniLM-L6-v2 was trained on a billion general sentence pairs; it has never seen this corpus's way of
speaking (pydoc's grammar productions, this course's lesson prose). Fine-tuning shows it examples of "this
query belongs with this passage, not that one", the (query, positive, negative) triplets of the seed article.
We have no labelled queries to train on — the evaluation questions must stay unseen — so the triplets are
**mined from the corpus alone**:

- a pseudo-query is either a section's heading (prefixed by its document's title when the two differ, so that
  "Exercises" says whose exercises) or one sentence of the section, cut out of its chunk (the inverse cloze
  task of Lee, Chang and Toutanova, "Latent Retrieval for Weakly Supervised Open Domain Question Answering",
  ACL 2019: the query is a sentence, its positive the passage around it with the sentence removed, so the
  model cannot match by copying words);
- the positive is that section's chunk (for a heading query, the section's first chunk without its heading
  line, for the same reason);
- the hard negative is the best BM25 hit for the pseudo-query that lies in **another section** and does not
  contain the query's text: it shares the query's words but is, by construction, the wrong section — the
  confusion section-level retrieval must learn to resolve.

The loss is the multiple-negatives ranking loss (InfoNCE, van den Oord et al. 2018; sentence-transformers'
`MultipleNegativesRankingLoss`, scale 20): for a batch of b triplets, each query's candidates are all b
positives and all b hard negatives of the batch, and the loss is the cross-entropy of picking its own positive,

    loss = -1/b * sum_i log( exp(s * cos(q_i, p_i)) / sum_j [exp(s * cos(q_i, p_j)) + exp(s * cos(q_i, n_j))] ).

The other triplets' positives are free negatives ("in-batch negatives") — which is only right if they are
not also relevant: `no_duplicate_batches` never puts two triplets of the same anchor or the same positive
section in one batch, nor a triplet whose hard negative comes from another triplet's positive section.
Embeddings are labkit's own (`labkit.rag.dense.mean_pool` + `l2_normalize`), with gradients.
"""
from __future__ import annotations

import bisect
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labkit.models import load_minilm
from labkit.rag.bm25 import BM25
from labkit.rag.chunking import Chunk, chunk_documents, sentence_spans
from labkit.rag.dense import DIM, MAX_LENGTH, l2_normalize, mean_pool
from labkit.rag.documents import Document
from labkit.rag.index import Index, tokenize
from labkit.rag.metrics import mean, mrr, ndcg_at_k, recall_at_k

SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default: scale = 1 / temperature = 1 / 0.05
_UNDERLINE = re.compile(r"\s*([*=\-^~\"#+])\1{2,}\s*")


@dataclass(frozen=True)
class Triplet:
    """A mined training example: `anchor` (pseudo-query) should be closer to `positive` than to `negative`.

    `section` is the positive's section id, `negative_section` the negative's; `kind` is "heading" or
    "sentence" (how the anchor was made)."""
    anchor: str
    positive: str
    negative: str
    section: str
    negative_section: str
    kind: str


# ---------------------------------------------------------------- mining

def chunk_sections(docs: Sequence[Document], chunks: Sequence[Chunk]) -> list[str]:
    """The section id of each chunk: the section its first character lies in (heading chunks never cross a
    section boundary, so for them this is the one section the chunk belongs to)."""
    by_id = {d.id: d for d in docs}
    out = []
    for c in chunks:
        if c.doc_id not in by_id:
            raise ValueError(f"chunk {c.id!r} belongs to document {c.doc_id!r}, which is not among the docs")
        sections = by_id[c.doc_id].sections
        i = bisect.bisect_right([s.start for s in sections], c.start) - 1
        out.append(sections[max(i, 0)].id)
    return out


def _squash(text: str) -> str:
    return " ".join(text.split())


def _strip_heading(text: str, heading: str) -> str:
    """The chunk text without its leading heading line (and reST underline, markdown #s, blank lines)."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < min(len(lines), 3) and (not lines[i].strip() or _UNDERLINE.fullmatch(lines[i])
                                      or lines[i].strip().lstrip("#").strip() == heading.strip()):
        i += 1
    return "".join(lines[i:])


def _sentence_example(chunk: Chunk, rng: np.random.Generator, min_words: int = 6, max_words: int = 40
                      ) -> tuple[str, str] | None:
    """(a sentence of the chunk, the chunk without it), the inverse cloze task; None if no sentence fits."""
    spans = [(a, b) for a, b in sentence_spans(chunk.text)
             if min_words <= len(chunk.text[a:b].split()) <= max_words
             and not _UNDERLINE.fullmatch(chunk.text[a:b].splitlines()[-1] if chunk.text[a:b].strip() else "")]
    squashed = _squash(chunk.text)
    # not the heading line, and not a sentence the passage repeats (cutting one copy would leave the answer in)
    spans = [(a, b) for a, b in spans if chunk.heading.strip() not in chunk.text[a:b]
             and squashed.count(_squash(chunk.text[a:b])) == 1]
    if not spans:
        return None
    a, b = spans[int(rng.integers(len(spans)))]
    rest = chunk.text[:a] + chunk.text[b:]
    if len(rest.split()) < 20:  # too little context left to be a passage
        return None
    return _squash(chunk.text[a:b]), rest


def mine_triplets(docs: Sequence[Document], chunks: Sequence[Chunk] | None = None, seed: int = 0,
                  candidates: int = 30, strip_all_headings: bool = False) -> list[Triplet]:
    """Mine (pseudo-query, positive, hard negative) triplets from the corpus: per section, one heading query
    and one sentence query (see the module docstring). `chunks` defaults to the heading-aware chunks.

    `strip_all_headings=False` is the first design: only a heading query's positive loses its heading line, so
    most hard negatives (whole chunks) start with a heading line and the positives of heading queries never
    do — a formatting cue that tells them apart without reading them. `strip_all_headings=True` cuts every
    passage the same way (every positive and every negative loses its leading heading line), which removes
    the cue (it also skips negatives that are no passage once cut: heading-only stubs under 20 words).

    Anchors that occur for two different sections are dropped (ambiguous). Deterministic for a given seed."""
    if not docs or not all(isinstance(d, Document) for d in docs):
        raise TypeError("docs must be a non-empty list of Documents (from labkit.rag.documents.load_documents)")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
    if not isinstance(strip_all_headings, bool):
        raise TypeError(f"strip_all_headings must be a bool, got {type(strip_all_headings).__name__}")
    chunks = list(chunks) if chunks is not None else chunk_documents(docs, "heading")
    sections = chunk_sections(docs, chunks)
    bm25 = BM25("lucene").index([tokenize(c.text) for c in chunks])
    rng = np.random.default_rng(seed)
    titles = {d.id: d.title for d in docs}

    by_section: dict[str, list[int]] = {}
    for i, s in enumerate(sections):
        by_section.setdefault(s, []).append(i)
    raw: list[tuple[str, str, str, int]] = []  # (anchor, positive text, kind, positive chunk index)
    for sec, idx in by_section.items():
        first = chunks[idx[0]]
        heading = first.heading
        title = titles[first.doc_id]
        anchor = heading if heading.strip() == title.strip() else f"{title}: {heading}"
        body = _strip_heading(first.text, heading)
        if len(body.split()) >= 20:
            raw.append((_squash(anchor), body, "heading", idx[0]))
        pick = idx[int(rng.integers(len(idx)))]
        example = _sentence_example(chunks[pick], rng)
        if example is not None:
            rest = _strip_heading(example[1], chunks[pick].heading) if strip_all_headings else example[1]
            raw.append((example[0], rest, "sentence", pick))

    owners: dict[str, set[str]] = {}
    for anchor, _, _, ci in raw:
        owners.setdefault(anchor.lower(), set()).add(sections[ci])
    # what a negative's text is: the whole chunk, or (fixed) the chunk cut exactly as the positives are cut;
    # a chunk that is little more than its heading (a heading-only stub) is then no passage, as for positives
    passages = [_strip_heading(c.text, c.heading) if strip_all_headings else c.text for c in chunks]
    min_words = 20 if strip_all_headings else 0
    triplets = []
    for anchor, positive, kind, ci in raw:
        if len(owners[anchor.lower()]) > 1:
            continue
        top = bm25.top_k(tokenize(anchor), k=min(candidates, len(chunks)))
        negative = next((j for j in top.indices
                         if sections[j] != sections[ci] and anchor.lower() not in _squash(chunks[j].text).lower()
                         and len(passages[j].split()) >= min_words),
                        None)
        if negative is None:
            continue
        triplets.append(Triplet(anchor, positive, passages[negative], sections[ci], sections[negative], kind))
    return triplets


# ---------------------------------------------------------------- batching without false negatives

def no_duplicate_batches(triplets: Sequence[Triplet], batch_size: int, seed: int = 0) -> list[list[int]]:
    """Shuffle the triplets (seeded) and pack them into full batches of `batch_size` indices such that no batch
    holds two triplets with the same anchor or the same positive section, nor a triplet whose negative lies in
    another triplet's positive section — each would make one query's right answer a "negative" of its loss.

    Greedy: each batch takes, in shuffled order, the first waiting triplets compatible with it. Triplets that
    cannot complete a batch are left out (every batch then has the same size)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not all(isinstance(t, Triplet) for t in triplets):
        raise TypeError("triplets must be Triplets (from mine_triplets)")
    waiting = [int(i) for i in np.random.default_rng(seed).permutation(len(triplets))]
    batches = []
    while True:
        batch, anchors, positives, negatives, rest = [], set(), set(), set(), []
        for i in waiting:
            t = triplets[i]
            ok = (len(batch) < batch_size and t.anchor.lower() not in anchors and t.section not in positives
                  and t.section not in negatives and t.negative_section not in positives
                  and t.negative_section != t.section)
            if ok:
                batch.append(i)
                anchors.add(t.anchor.lower())
                positives.add(t.section)
                negatives.add(t.negative_section)
            else:
                rest.append(i)
        if len(batch) < batch_size:
            return batches
        batches.append(batch)
        waiting = rest


# ---------------------------------------------------------------- the loss

def in_batch_negatives_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                            scale: float = SCALE) -> torch.Tensor:
    """Multiple-negatives ranking loss: cross-entropy of each query's own positive among the batch's positives
    (and hard negatives, if given), with cosine similarities multiplied by `scale`. Inputs are [b, d]."""
    if queries.ndim != 2 or positives.shape != queries.shape:
        raise ValueError(f"queries and positives must both be [b, d], got {tuple(queries.shape)} and "
                         f"{tuple(positives.shape)}")
    if negatives is not None and negatives.shape != queries.shape:
        raise ValueError(f"negatives must be [b, d] like the queries {tuple(queries.shape)}, "
                         f"got {tuple(negatives.shape)}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    candidates = positives if negatives is None else torch.cat([positives, negatives])  # [b or 2b, d]
    logits = scale * l2_normalize(queries) @ l2_normalize(candidates).T  # cosines, [b, b or 2b]
    # query i's right answer is candidate i (its own positive); every other column is a negative
    return F.cross_entropy(logits, torch.arange(len(queries)))


# ---------------------------------------------------------------- encoding with a given model

def encode(tokenizer, model, texts: Sequence[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Unit-length embeddings [len(texts), 384] of `texts` by `model`, keeping gradients (one batch)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return l2_normalize(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]))


@torch.no_grad()
def embed_with(tokenizer, model, texts: Sequence[str], batch_size: int = 32, progress: bool = False
               ) -> torch.Tensor:
    """`labkit.rag.dense.embed` for a model of our own (the tuned one): batched, longest texts first, no grad."""
    out = torch.empty(len(texts), DIM)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="embedding", unit="batch")
    for start in starts:
        idx = order[start:start + batch_size]
        out[idx] = encode(tokenizer, model, [texts[i] for i in idx]).float()
    return out


# ---------------------------------------------------------------- training

@dataclass(frozen=True)
class Config:
    steps: int = 40
    batch_size: int = 16
    lr: float = 5e-5          # Hugging Face TrainingArguments' default, which sentence-transformers' trainer uses
    warmup: int = 4           # linear warm-up steps (10%), then linear decay to 0, the trainer's default schedule
    weight_decay: float = 0.01
    max_length: int = 128     # word pieces per training text: half the model's 256, for CPU time
    scale: float = SCALE
    seed: int = 0


def finetune(triplets: Sequence[Triplet], config: Config = Config(), model=None, tokenizer=None,
             progress: bool = False) -> tuple[object, list[float]]:
    """Train MiniLM (a fresh copy unless `model` is given) on the triplets for `config.steps` steps of AdamW;
    returns (model, loss per step). Dropout is off (model.eval()): the run is then a deterministic function of
    the seed, which the notebook's live slice relies on; 40 steps are too few for dropout's regularising to
    matter. Batches come from `no_duplicate_batches`, reshuffled with a new seed whenever they run out."""
    if tokenizer is None or model is None:
        tokenizer, model = load_minilm()
    torch.manual_seed(config.seed)
    model.eval()
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n]
    other = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / config.warmup if s < config.warmup
        else max(0.0, (config.steps - s) / max(1, config.steps - config.warmup)))
    batches, epoch, losses = [], 0, []
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="fine-tuning", unit="step")
    for _ in steps:
        if not batches:
            batches = no_duplicate_batches(triplets, config.batch_size, seed=config.seed + epoch)
            epoch += 1
            if not batches:
                raise ValueError(f"{len(triplets)} triplets cannot fill one batch of {config.batch_size}")
        batch = [triplets[i] for i in batches.pop(0)]
        q = encode(tokenizer, model, [t.anchor for t in batch], config.max_length)
        p = encode(tokenizer, model, [t.positive for t in batch], config.max_length)
        n = encode(tokenizer, model, [t.negative for t in batch], config.max_length)
        loss = in_batch_negatives_loss(q, p, n, config.scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, losses


# ---------------------------------------------------------------- evaluation (section level, dense)

def section_run(index: Index, query_emb: torch.Tensor, qids: Sequence[str], k: int = 10, depth: int = 100
                ) -> dict[str, list[str]]:
    """{qid: the top-k sections} by dense search of `index` with the given query vectors: the `depth` nearest
    chunks, mapped to their sections by `Index.sections` (first appearance) — what `labkit.rag.index.evaluate`
    does for method="dense", with query vectors from any model (the tuned one) instead of the pretrained one."""
    if len(query_emb) != len(qids):
        raise ValueError(f"need one query vector per query id: {len(query_emb)} vectors, {len(qids)} ids")
    return {qid: index.sections(index.dense.search(q, depth), k) for qid, q in zip(qids, query_emb)}


def retrieval_metrics(run: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 10) -> dict:
    """Recall@k, nDCG@10 and MRR (section level), averaged over the judged queries, plus Recall@k per query."""
    per_query = recall_at_k(run, qrels, k)
    return {f"recall@{k}": mean(per_query), "ndcg@10": mean(ndcg_at_k(run, qrels, 10)), "mrr": mean(mrr(run, qrels)),
            "per_query_recall": per_query}


def _train_and_embed(triplets: Sequence[Triplet], config: Config, questions: Sequence[str], probe: Sequence[str],
                     texts: Sequence[str]) -> tuple[list[float], float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fine-tune a fresh pretrained MiniLM on `triplets`; (losses, seconds, question, probe and chunk vectors)."""
    tokenizer, model = load_minilm()
    t0 = time.perf_counter()
    model, losses = finetune(triplets, config, model=model, tokenizer=tokenizer, progress=True)
    seconds = time.perf_counter() - t0
    return (losses, seconds, embed_with(tokenizer, model, questions), embed_with(tokenizer, model, probe),
            embed_with(tokenizer, model, texts, progress=True))


def run(config: Config = Config()) -> tuple[dict, dict[str, torch.Tensor]]:
    """The saved run "12-embed-finetune": mine, train, re-embed the corpus, and measure dense section retrieval
    before and after on the evaluation set's dev and test splits (the questions are never trained on), and on
    a probe of up to 200 fresh sentence pseudo-queries (the kind of query training saw, but not these).

    Two trainings, same seed and steps, from the same pretrained weights: the first design's triplets
    (`strip_all_headings=False`, recorded as "losses"/"metrics"["after"]/"tuned.*") and the fixed ones, cut
    without the heading-line cue (recorded under "fixed" and "fixed.*")."""
    from labkit.rag.documents import corpus_fingerprint
    from labkit.rag.evalset import load_questions, qrels
    from labkit.rag.index import corpus_index

    torch.manual_seed(config.seed)
    base = corpus_index("heading")  # the pretrained model's chunk vectors (saved run 12-embeddings)
    docs, chunks = base.docs, base.chunks
    questions = load_questions()
    question_texts = [q.question for q in questions]
    texts = [c.text for c in chunks]
    t0 = time.perf_counter()
    triplets = mine_triplets(docs, chunks, seed=config.seed)
    fixed_triplets = mine_triplets(docs, chunks, seed=config.seed, strip_all_headings=True)
    # a probe of what training taught: fresh sentence queries (another seed picks other sentences), none of them
    # a training anchor (the anchors are the same with or without the fix), retrieved before and after; their
    # gold is the section they were cut from
    trained = {t.anchor.lower() for t in triplets} | {t.anchor.lower() for t in fixed_triplets}
    probe = [t for t in mine_triplets(docs, chunks, seed=config.seed + 1)
             if t.kind == "sentence" and t.anchor.lower() not in trained][:200]
    probe_ids = [f"p{i:03d}" for i in range(len(probe))]
    probe_qrels = {pid: {t.section: 1} for pid, t in zip(probe_ids, probe)}
    base_tokenizer, base_model = load_minilm()
    base_q = embed_with(base_tokenizer, base_model, question_texts)
    probe_base = embed_with(base_tokenizer, base_model, [t.anchor for t in probe])
    t1 = time.perf_counter()
    losses, seconds, tuned_q, probe_tuned, tuned_c = _train_and_embed(
        triplets, config, question_texts, [t.anchor for t in probe], texts)
    fixed_losses, fixed_seconds, fixed_q, probe_fixed, fixed_c = _train_and_embed(
        fixed_triplets, config, question_texts, [t.anchor for t in probe], texts)

    def measure(index: Index, qe: torch.Tensor, pe: torch.Tensor) -> dict:
        out = {}
        for split in ("dev", "test"):
            rows = [i for i, q in enumerate(questions) if q.split == split]
            qs = [questions[i] for i in rows]
            out[split] = retrieval_metrics(section_run(index, qe[rows], [q.id for q in qs]), qrels(qs))
        out["probe"] = retrieval_metrics(section_run(index, pe, probe_ids), probe_qrels)
        return out

    metrics = {"before": measure(base, base_q, probe_base),
               "after": measure(Index(docs, chunks, tuned_c), tuned_q, probe_tuned)}
    count = lambda ts: {"total": len(ts), "heading": sum(t.kind == "heading" for t in ts),
                        "sentence": sum(t.kind == "sentence" for t in ts)}
    record = {"config": asdict(config), "corpus": corpus_fingerprint(docs), "n_chunks": len(chunks),
              "n_questions": {s: sum(q.split == s for q in questions) for s in ("dev", "test")},
              "triplets": count(triplets),
              "probe": {"seed": config.seed + 1, "queries": len(probe)},
              "losses": losses, "metrics": metrics, "question_ids": [q.id for q in questions],
              "train_seconds": round(seconds, 1), "mine_and_embed_seconds": round(t1 - t0, 1),
              "fixed": {"strip_all_headings": True, "triplets": count(fixed_triplets), "losses": fixed_losses,
                        "metrics": measure(Index(docs, chunks, fixed_c), fixed_q, probe_fixed),
                        "train_seconds": round(fixed_seconds, 1)}}
    # the tuned weights (87 MB each) are not kept: the notebook needs only the vectors they made
    tensors = {"base.questions": base_q, "tuned.questions": tuned_q, "tuned.chunks": tuned_c,
               "base.probe": probe_base, "tuned.probe": probe_tuned,
               "fixed.questions": fixed_q, "fixed.chunks": fixed_c, "fixed.probe": probe_fixed}
    return record, tensors
