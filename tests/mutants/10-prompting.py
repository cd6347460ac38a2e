"""Wrong implementations for labs/10-prompting.ipynb, and the checks each must fail."""
from mutants import Mutant

_MASK = '''def mask_step(advance, state, vocab):
    allowed = torch.zeros(len(vocab), dtype=torch.bool)
    for i, token in enumerate(vocab):
        {body}
    return allowed'''

_CALIBRATE = '''def contextual_calibrate(label_probs, content_free_probs):
    {body}'''

_VOTE = '''def majority_vote(answers):
    {body}'''

MUTANTS = [
    # the mask
    Mutant("allows a token when its first character is allowed (a later one may not be)", "mask_step",
           _MASK.format(body="allowed[i] = len(token) > 0 and advance(state, token[0]) is not None"),
           frozenset({"mask_step"})),
    Mutant("reads every character from the same state instead of carrying it along", "mask_step",
           _MASK.format(body="allowed[i] = len(token) > 0 and all(advance(state, ch) is not None for ch in token)"),
           frozenset({"mask_step"})),
    Mutant("allows the empty token (all() of nothing is True)", "mask_step",
           _MASK.format(body="s = state\n        for ch in token:\n            s = advance(s, ch)\n"
                             "            if s is None:\n                break\n        allowed[i] = s is not None"),
           frozenset({"mask_step"})),
    # calibration
    Mutant("divides by the test inputs' own mean distribution instead of the content-free one",
           "contextual_calibrate",
           _CALIBRATE.format(body="q = label_probs / label_probs.mean(dim=0)\n"
                                  "    return q / q.sum(dim=1, keepdim=True)"),
           frozenset({"contextual_calibrate"})),
    Mutant("divides by the content-free distribution but does not renormalise", "contextual_calibrate",
           _CALIBRATE.format(body="return label_probs / content_free_probs"), frozenset({"contextual_calibrate"})),
    Mutant("renormalises each label over the inputs (dim=0) instead of each input over the labels",
           "contextual_calibrate",
           _CALIBRATE.format(body="q = label_probs / content_free_probs\n"
                                  "    return q / q.sum(dim=0, keepdim=True)"),
           frozenset({"contextual_calibrate"})),
    # the vote
    Mutant("breaks ties by order (Counter.most_common(1))", "majority_vote",
           _VOTE.format(body="votes = Counter(a for a in answers if a is not None)\n"
                             "    return [votes.most_common(1)[0][0]] if votes else []"),
           frozenset({"majority_vote"})),
    Mutant("counts None as an answer", "majority_vote",
           _VOTE.format(body="votes = Counter(answers)\n    if not votes:\n        return []\n"
                             "    top = max(votes.values())\n"
                             "    return sorted((a for a, n in votes.items() if n == top), key=str)"),
           frozenset({"majority_vote"})),
    Mutant("returns the tied winners in the order they first appeared", "majority_vote",
           _VOTE.format(body="votes = Counter(a for a in answers if a is not None)\n    if not votes:\n"
                             "        return []\n    top = max(votes.values())\n"
                             "    return [a for a, n in votes.items() if n == top]"),
           frozenset({"majority_vote"})),
]
