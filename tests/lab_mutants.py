"""Plausible wrong implementations, per solution notebook, and the checks each one must fail.

tests/test_labs.py swaps each mutant in for the solution cell that defines the same function, executes
the notebook, and asserts that the named check cells fail. Every check cell must be caught by at least one
mutant: a check that no wrong answer can fail checks nothing.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    why: str
    function: str  # the solution cell that defines this function is replaced
    source: str
    fails: frozenset[str]


MUTANTS: dict[str, list[Mutant]] = {
    "solutions/01-ngrams.ipynb": [
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
    ],
}
