"""labkit.checks.ngram: the graded checks pass on the references and fail on plausible wrong answers."""
import math
from collections import Counter

import numpy as np
import pytest

from labkit.checks.ngram import check_add_k_prob, check_count_ngrams, check_perplexity
from labkit.ngram import add_k_prob, count_ngrams, perplexity_from_log_probs


# ------------------------------------------------------------------ plausible wrong implementations (mutants)

def count_off_by_one(tokens, n):  # range stops one window early: drops the last n-gram
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n))


def count_lists(tokens, n):  # a list of the n-grams, not their counts
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def count_plain_dict(tokens, n):  # right counts in a dict: the lab's next cells call .most_common and need 0s
    counts = {}
    for i in range(len(tokens) - n + 1):
        counts[tuple(tokens[i:i + n])] = counts.get(tuple(tokens[i:i + n]), 0) + 1
    return counts


def count_strings(tokens, n):  # joined strings as keys instead of tuples
    return Counter(" ".join(map(str, tokens[i:i + n])) for i in range(len(tokens) - n + 1))


def count_n_minus_one(tokens, n):  # counts (n-1)-grams
    return Counter(zip(*(tokens[i:] for i in range(n - 1))))


def add_k_unnormalised(ngram_count, context_count, vocab_size, k):  # forgot k * V in the denominator
    return (ngram_count + k) / context_count


def add_k_denominator_only(ngram_count, context_count, vocab_size, k):  # k added only to the denominator
    return ngram_count / (context_count + k * vocab_size)


def add_k_plain_k(ngram_count, context_count, vocab_size, k):  # + k instead of + k V below
    return (ngram_count + k) / (context_count + k)


def perplexity_exp_sum(log_probs):  # exp of the sum instead of the mean
    return math.exp(-sum(log_probs))


def perplexity_product(log_probs):  # the definition as a product: underflows to 0 on a long text
    product = 1.0
    for lp in log_probs:
        product *= math.exp(lp)
    return product ** (-1 / len(log_probs))


def perplexity_root_of_exp_sum(log_probs):  # exp(-sum) ** (1/N): overflows on a long text
    return math.exp(-sum(log_probs)) ** (1 / len(log_probs))


def perplexity_no_minus(log_probs):  # forgot the minus sign
    return math.exp(sum(log_probs) / len(log_probs))


def perplexity_base_two(log_probs):  # treats natural logs as log2
    return 2 ** (-sum(log_probs) / len(log_probs))


def stub(*args):
    raise NotImplementedError("your code here")


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("check, reference, name, checks", [
    (check_count_ngrams, count_ngrams, "count_ngrams", 7),
    (check_add_k_prob, add_k_prob, "add_k_prob", 8),
    (check_perplexity, perplexity_from_log_probs, "perplexity", 8),
])
def test_checks_pass_on_the_references(check, reference, name, checks, capsys):
    check(reference)
    assert capsys.readouterr().out == f"✓ {name} passes {checks} checks\n"


def test_checks_accept_other_correct_answers(capsys):
    check_count_ngrams(lambda t, n: Counter(zip(*(t[i:] for i in range(n)))))
    check_add_k_prob(lambda c, total, v, k: float(np.float64(c + k) / (total + k * v)))
    check_perplexity(lambda lp: float(np.exp(-np.mean(lp))))
    assert capsys.readouterr().out.count("✓") == 3


@pytest.mark.parametrize("check, mutant, message", [
    (check_count_ngrams, count_off_by_one, r"sum to 3 \(off by one"),
    (check_count_ngrams, count_lists, "should return a collections.Counter .* got a list"),
    (check_count_ngrams, count_plain_dict, r"got a dict: .* they call .most_common\(\)"),
    (check_count_ngrams, count_strings, "keys must be tuples of n=2 tokens"),
    (check_count_ngrams, count_n_minus_one, "keys must be tuples of n=2 tokens"),
    (check_add_k_prob, add_k_unnormalised, r"expected .* = 0\.2, got 0\.3"),
    (check_add_k_prob, add_k_denominator_only, r"expected .* = 0\.2, got 0\.133333"),
    (check_add_k_prob, add_k_plain_k, r"expected .* = 0\.2, got 0\.272727"),
    (check_perplexity, perplexity_exp_sum, "exp of the sum"),
    (check_perplexity, perplexity_no_minus, "minus sign"),
    (check_perplexity, perplexity_base_two, "not 2"),
    (check_perplexity, perplexity_product,
     r"held-out set\] raised ZeroDivisionError.* product of the probabilities is e\^-20951"),
    (check_perplexity, perplexity_root_of_exp_sum, r"raised OverflowError.*the length is what breaks it"),
])
def test_checks_fail_on_plausible_wrong_answers(check, mutant, message, capsys):
    with pytest.raises(AssertionError, match=message):
        check(mutant)
    assert "✓" not in capsys.readouterr().out


@pytest.mark.parametrize("check", [check_count_ngrams, check_add_k_prob, check_perplexity])
def test_blank_lab_raises_not_implemented(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def test_other_errors_name_the_input():
    def crashes(tokens, n):
        return tokens[n + 100]

    with pytest.raises(AssertionError, match=r"count_ngrams\(\['a', 'b', 'c', 'a', 'b'\], n=2\) raised IndexError"):
        check_count_ngrams(crashes)
    with pytest.raises(AssertionError, match="should return a number"):
        check_add_k_prob(lambda *args: "0.2")


def test_count_ngrams_edge_cases_are_checked():
    # right on ordinary inputs, wrong when n > len(tokens) (negative range gives a bogus n-gram)
    def no_empty_case(tokens, n):
        if n > len(tokens):
            return Counter({tuple(tokens): 1})
        return count_ngrams(tokens, n)

    with pytest.raises(AssertionError, match=r"n=3"):
        check_count_ngrams(no_empty_case)


def test_add_k_sum_to_one_property_is_checked():
    # right on every fixed case, but not normalised for V=6 (hard-coded V=5)
    def hard_coded_v(c, total, vocab_size, k):
        return add_k_prob(c, total, vocab_size, k) if vocab_size != 6 else (c + k) / (total + 5 * k)

    with pytest.raises(AssertionError, match="must sum to 1"):
        check_add_k_prob(hard_coded_v)


def test_perplexity_infinite_case_is_checked():
    def clips(log_probs):
        return perplexity_from_log_probs(np.maximum(np.asarray(log_probs, float), -50.0))

    with pytest.raises(AssertionError, match="infinite"):
        check_perplexity(clips)
