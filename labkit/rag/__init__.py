"""Chapter 12: retrieval-augmented generation — every stage from scratch.

- evalset: the evaluation set (questions, gold sections, short answers, a held-out split) as Questions and qrels.
- index: one chunking strategy's chunks searchable by BM25, dense cosine or both fused (RRF), mapped to sections;
  `corpus_index()` loads the course corpus with its saved embeddings; `evaluate` gives Recall@k, MRR, nDCG@10.
- store: an index saved to / loaded from one SQLite file (chunks, embeddings, BM25 statistics, corpus
  fingerprint), so a restarted notebook reloads instead of re-embedding; a changed corpus invalidates it.
- hnsw: approximate nearest-neighbour search on a layered graph (HNSW), compared with hnswlib.
- advanced: multi-query retrieval (RAG-fusion of LLM rewrites) and reranking by the LLM's Yes/No log-probability.
- long_docs: whole long documents vs chunks mapped to documents (max / sum), and what truncation at 256 word
  pieces hides from a whole-document embedding.
- generate: grounded answers from numbered passages, citations parsed (never evaluated) or read from
  log-probabilities, answer EM / F1 / contains with vs without retrieval, citation precision.
- lost_middle: the gold passage at each position among distractors (Liu et al.'s lost-in-the-middle sweep).
- compress: extractive context compression, the question's best sentences within a word budget, order kept.
- embed_finetune: fine-tuning MiniLM on (query, positive, hard negative) triplets mined from the corpus, with
  the in-batch negatives loss and batches free of false negatives; before/after retrieval measured.
- memory: short-term memory (everything in the context: KV-cache bytes, prefill time) against long-term memory
  (top-k from the index), per query, with answer accuracy.
"""
