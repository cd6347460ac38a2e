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
    # Beyond the first ones: a dict the next cells cannot use, and the definition of perplexity taken literally.
    Mutant("counts in a plain dict: right numbers, but the next cells call .most_common and look up unseen "
           "bigrams", "count_ngrams",
           "def count_ngrams(tokens, n):\n"
           "    counts = {}\n"
           "    for i in range(len(tokens) - n + 1):\n"
           "        counts[tuple(tokens[i:i + n])] = counts.get(tuple(tokens[i:i + n]), 0) + 1\n"
           "    return counts",
           frozenset({"count_ngrams", "bigram_model"})),
    Mutant("perplexity as the product of the probabilities to the power -1/N: underflows on a long text",
           "perplexity",
           "def perplexity(log_probs):\n"
           "    product = 1.0\n"
           "    for lp in log_probs:\n"
           "        product *= math.exp(lp)\n"
           "    return product ** (-1 / len(log_probs))",
           frozenset({"perplexity", "bigram_model"})),
    Mutant("perplexity as the N-th root of exp(-sum): overflows on a long text", "perplexity",
           "def perplexity(log_probs):\n"
           "    return math.exp(-sum(log_probs)) ** (1 / len(log_probs))",
           frozenset({"perplexity", "bigram_model"})),
    Mutant("add-k with V + 1 in the denominator (a slot for an unknown token the vocabulary does not have)",
           "add_k_prob",
           "def add_k_prob(ngram_count, context_count, vocab_size, k):\n"
           "    return (ngram_count + k) / (context_count + k * (vocab_size + 1))",
           frozenset({"add_k_prob", "bigram_model"})),
]
