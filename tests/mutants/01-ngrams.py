"""Wrong implementations for labs/01-ngrams.ipynb, and the checks each must fail."""
from mutants import Mutant

MUTANTS = [
    Mutant("off-by-one window range: drops the last n-gram", "count_ngrams",
           "def count_ngrams(tokens, n):\n"
           "    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n))",
           frozenset({"count_ngrams", "bigram_model"})),
    Mutant("counts (n-1)-grams", "count_ngrams",
           "def count_ngrams(tokens, n):\n"
           "    return Counter(tuple(tokens[i:i + n - 1]) for i in range(len(tokens) - n + 1))",
           frozenset({"count_ngrams"})),
    Mutant("unnormalised: k added to the denominator once, not k times V", "add_k_prob",
           "def add_k_prob(ngram_count, context_count, vocab_size, k):\n"
           "    return (ngram_count + k) / (context_count + k)",
           frozenset({"add_k_prob", "bigram_model"})),
    Mutant("perplexity in base 2 from natural-log probabilities", "perplexity",
           "def perplexity(log_probs):\n"
           "    return 2 ** (-sum(log_probs) / len(log_probs))",
           frozenset({"perplexity", "bigram_model"})),
]
