"""Wrong implementations for labs/12-rag.ipynb, and the checks each must fail."""
from mutants import Mutant

_BM25 = '''def bm25_scores(query, docs, k1=1.5, b=0.75):
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = {df}
    scores = []
    for d in docs:
        tf = Counter(d)
        norm = k1 * (1 - b + b * len(d) / avgdl)
        scores.append(sum(lucene_idf(df[t], n) * tf[t] / (tf[t] + norm) for t in {terms} if tf[t] > 0))
    return scores'''

_POOL = '''def mean_pool(token_embeddings, attention_mask):
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return {body}'''

_RRF = '''def reciprocal_rank_fusion(rankings, k=60):
    scores = {{}}
    every = {{d for r in rankings for d in r}}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start={start}):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
        {missing}
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))'''

_NDCG = '''def ndcg_at_k(ranking, relevance, k=10):
    def dcg(gains):
        return sum(g {discount} for rank, g in enumerate(gains, start=1))

    top = list(dict.fromkeys(ranking))[:k]
    ideal = dcg(sorted((g for g in {pool} if g > 0), reverse=True)[:k])
    return dcg([relevance.get(d, 0) for d in top]) / ideal if ideal > 0 else 0.0'''

MUTANTS = [
    # BM25
    Mutant("IDF without the 1 + (Robertson's unclipped IDF: negative above df = N/2)", "lucene_idf",
           "def lucene_idf(df, n_docs):\n    return math.log((n_docs - df + 0.5) / (df + 0.5))",
           frozenset({"lucene_idf", "bm25_scores"})),
    Mutant("IDF without the 0.5 terms", "lucene_idf",
           "def lucene_idf(df, n_docs):\n    return math.log(1 + (n_docs - df) / df)",
           frozenset({"lucene_idf", "bm25_scores"})),
    Mutant("df counts the term's occurrences in the corpus, not the documents holding it", "bm25_scores",
           _BM25.format(df="Counter(t for d in docs for t in d)", terms="query"), frozenset({"bm25_scores"})),
    Mutant("a repeated query token counts once (a sum over set(query))", "bm25_scores",
           _BM25.format(df="Counter(t for d in docs for t in set(d))", terms="set(query)"),
           frozenset({"bm25_scores"})),
    # pooling
    Mutant("pooling that counts the padding (a plain mean over every position)", "mean_pool",
           _POOL.format(body="token_embeddings.mean(dim=1)"), frozenset({"mean_pool"})),
    Mutant("pooling that zeroes the padding but divides by the padded length", "mean_pool",
           _POOL.format(body="(token_embeddings * mask).sum(dim=1) / token_embeddings.shape[1]"),
           frozenset({"mean_pool"})),
    # fusion
    Mutant("0-based ranks in RRF", "reciprocal_rank_fusion", _RRF.format(start=0, missing="pass"),
           frozenset({"reciprocal_rank_fusion"})),
    Mutant("RRF gives a document missing from a list a synthetic rank just below the list's end",
           "reciprocal_rank_fusion",
           _RRF.format(start=1, missing="for doc in every - set(ranking):\n"
                                       "            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + len(ranking) + 1)"),
           frozenset({"reciprocal_rank_fusion"})),
    # metrics
    Mutant("Recall@k counting duplicates (no dedupe before the cut)", "recall_at_k",
           "def recall_at_k(ranking, relevance, k):\n"
           "    relevant = {d for d, grade in relevance.items() if grade > 0}\n"
           "    return sum(d in relevant for d in ranking[:k]) / len(relevant) if relevant else 0.0",
           frozenset({"recall_at_k"})),
    Mutant("reciprocal rank of the first relevant position before the repeats are removed", "reciprocal_rank",
           "def reciprocal_rank(ranking, relevance):\n"
           "    for rank, d in enumerate(ranking, start=1):\n"
           "        if relevance.get(d, 0) > 0:\n"
           "            return 1.0 / rank\n"
           "    return 0.0",
           frozenset({"reciprocal_rank"})),
    Mutant("nDCG without the log2(rank + 1) discount", "ndcg_at_k",
           _NDCG.format(discount="", pool="relevance.values()"), frozenset({"ndcg_at_k"})),
    Mutant("nDCG whose ideal ranking holds only the retrieved documents", "ndcg_at_k",
           _NDCG.format(discount="/ math.log2(rank + 1)", pool="(relevance.get(d, 0) for d in top)"),
           frozenset({"ndcg_at_k"})),
]
