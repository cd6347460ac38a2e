"""Wrong implementations for labs/02-neural-lm.ipynb, and the checks each must fail."""
from mutants import Mutant

MUTANTS = [
    Mutant("forgets to advance past the merged pair (i += 1 after a merge)", "merge_pair",
           "def merge_pair(ids, pair, new_id):\n"
           "    out, i = [], 0\n"
           "    while i < len(ids):\n"
           "        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:\n"
           "            out.append(new_id)\n"
           "        else:\n"
           "            out.append(ids[i])\n"
           "        i += 1\n"
           "    return out",
           frozenset({"merge_pair", "encode", "bpe_training"})),
    Mutant("merges only the first occurrence", "merge_pair",
           "def merge_pair(ids, pair, new_id):\n"
           "    for i in range(len(ids) - 1):\n"
           "        if ids[i] == pair[0] and ids[i + 1] == pair[1]:\n"
           "            return ids[:i] + [new_id] + ids[i + 2:]\n"
           "    return list(ids)",
           frozenset({"merge_pair", "encode", "bpe_training"})),
    Mutant("overlapping pairs merged from the right: [a, a, a] -> [a, X]", "merge_pair",
           "def merge_pair(ids, pair, new_id):\n"
           "    out, i = [], len(ids) - 1\n"
           "    while i >= 0:\n"
           "        if i >= 1 and ids[i - 1] == pair[0] and ids[i] == pair[1]:\n"
           "            out.append(new_id)\n"
           "            i -= 2\n"
           "        else:\n"
           "            out.append(ids[i])\n"
           "            i -= 1\n"
           "    return out[::-1]",
           frozenset({"merge_pair"})),
    Mutant("loop stops one token early and drops an unpaired last token", "merge_pair",
           "def merge_pair(ids, pair, new_id):\n"
           "    out, i = [], 0\n"
           "    while i < len(ids) - 1:\n"
           "        if ids[i] == pair[0] and ids[i + 1] == pair[1]:\n"
           "            out.append(new_id)\n"
           "            i += 2\n"
           "        else:\n"
           "            out.append(ids[i])\n"
           "            i += 1\n"
           "    return out",
           frozenset({"merge_pair", "encode"})),
    Mutant("ties go to the first pair seen (Counter.most_common), not the smallest", "most_frequent_pair",
           "def most_frequent_pair(ids):\n"
           "    counts = Counter(zip(ids, ids[1:]))\n"
           "    return counts.most_common(1)[0][0] if counts else None",
           frozenset({"most_frequent_pair", "bpe_training"})),
    Mutant("counts non-overlapping windows only (steps of two)", "most_frequent_pair",
           "def most_frequent_pair(ids):\n"
           "    counts = Counter(zip(ids[::2], ids[1::2]))\n"
           "    return min(counts, key=lambda p: (-counts[p], p)) if counts else None",
           frozenset({"most_frequent_pair", "bpe_training"})),
    Mutant("applies the merges last-learned first", "encode",
           "def encode(text, merges):\n"
           "    ids = list(text.encode('utf-8'))\n"
           "    for k in reversed(range(len(merges))):\n"
           "        ids = merge_pair(ids, merges[k], 256 + k)\n"
           "    return ids",
           frozenset({"encode"})),
    Mutant("starts from Unicode code points instead of UTF-8 bytes", "encode",
           "def encode(text, merges):\n"
           "    ids = [ord(ch) for ch in text]\n"
           "    for k, pair in enumerate(merges):\n"
           "        ids = merge_pair(ids, pair, 256 + k)\n"
           "    return ids",
           frozenset({"encode"})),
    # Beyond the first ones: a rank-based encode with the wrong priority, an encode that stops early, a tie
    # broken the other way, a merge that edits the caller's list.
    Mutant("rank-based encode that merges the smallest pair present, not the earliest learned", "encode",
           "def encode(text, merges):\n"
           "    ids = list(text.encode('utf-8'))\n"
           "    while True:\n"
           "        present = [p for p in set(zip(ids, ids[1:])) if p in merges]\n"
           "        if not present:\n"
           "            return ids\n"
           "        pair = min(present)\n"
           "        ids = merge_pair(ids, pair, 256 + merges.index(pair))",
           frozenset({"encode"})),
    Mutant("encode that stops at the first merge with no occurrence", "encode",
           "def encode(text, merges):\n"
           "    ids = list(text.encode('utf-8'))\n"
           "    for k, pair in enumerate(merges):\n"
           "        merged = merge_pair(ids, pair, 256 + k)\n"
           "        if merged == ids:\n"
           "            break\n"
           "        ids = merged\n"
           "    return ids",
           frozenset({"encode"})),
    Mutant("ties go to the largest pair: max of (count, pair)", "most_frequent_pair",
           "def most_frequent_pair(ids):\n"
           "    counts = Counter(zip(ids, ids[1:]))\n"
           "    return max(counts, key=lambda pair: (counts[pair], pair)) if counts else None",
           frozenset({"most_frequent_pair", "bpe_training"})),
    Mutant("merges in place with slice assignment: the right result, and the caller's list changed", "merge_pair",
           "def merge_pair(ids, pair, new_id):\n"
           "    i = 0\n"
           "    while i < len(ids) - 1:\n"
           "        if ids[i] == pair[0] and ids[i + 1] == pair[1]:\n"
           "            ids[i:i + 2] = [new_id]\n"
           "        i += 1\n"
           "    return ids",
           frozenset({"merge_pair"})),
]
