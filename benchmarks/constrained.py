"""Benchmark: the cost of chapter 10's JSON-Schema mask, against xgrammar 0.2.9 on the same schema and tokenizer.

    python benchmarks/constrained.py          # print the numbers (about 30 s on a quiet 2-core machine)
    python benchmarks/constrained.py --save   # also write benchmarks/results/constrained.json (chapter 10 prints it)

Three results. It reports, never asserts: speed depends on the machine (the load average is recorded).
1. Setup: building the token trie from SmolLM2's 49152 tokens (once per tokenizer) and compiling the schema,
   beside xgrammar's TokenizerInfo and compile_json_schema.
2. Per-token mask cost along the token sequences of the 36 gold records of data/extraction (written the way the
   model writes them, ", " and ": "): labkit's TokenMasks.allowed (a bool tensor over the vocabulary) on a
   cleared cache ("uncached": every state computed from scratch) and on a second pass ("cached"), and
   xgrammar's GrammarMatcher.fill_next_token_bitmask (a packed bitmask; its compiler precomputes most tokens per
   grammar position), each the median over all states. labkit ÷ xgrammar is the ratio printed.
3. Constrained ÷ unconstrained decode time per generated token with labkit.llm.local (greedy, the extraction
   prompts, prefix cache warm so neither side pays the prompt; medians of 3 alternating runs), and the share of
   the constrained run's time spent inside the constraint's calls (allowed + advance): what the mask costs in
   the real loop.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from decode import machine  # noqa: E402  (the machine record every benchmark shares)

from labkit.prompting.constrained import (PERSON_SCHEMA, TokenMasks, Vocabulary, compile_schema, extraction_messages,
                                          json_constraint, load_people)

THREADS = 1
PROMPTS = 3       # extraction prompts decoded each way for result 3
MAX_TOKENS = 32
ROUNDS = 3       # alternating runs of each side; the median per side
RESULTS = Path(__file__).parent / "results" / "constrained.json"


def mask_costs(tok, vocab: Vocabulary, docs: list[str]) -> dict:
    """Median microseconds per state: labkit cold, labkit warm, xgrammar; and the states timed."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab.size)
    t0 = time.perf_counter()
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(PERSON_SCHEMA), any_whitespace=False,
                                                            separators=(", ", ": "))
    xgr_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    masks = TokenMasks(compile_schema(PERSON_SCHEMA, space="always"), vocab)
    ours_compile = time.perf_counter() - t0
    seqs = [tok(d, add_special_tokens=False).input_ids for d in docs]
    cold, warm, theirs, allowed = [], [], [], []
    for times in (cold, warm):
        for ids in seqs:
            state = masks.grammar.start
            for t in ids + [None]:
                if times is cold:
                    masks._cache.clear()  # every state computed from scratch
                t0 = time.perf_counter()
                m = masks.allowed(state)
                times.append(time.perf_counter() - t0)
                if times is cold:
                    allowed.append(int(m.sum()))
                if t is not None:
                    state = masks.grammar.walk(state, vocab.tokens[t])
    bitmask = xgr.allocate_token_bitmask(1, vocab.size)
    for ids in seqs:
        matcher = xgr.GrammarMatcher(compiled)
        for t in ids + [None]:
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            theirs.append(time.perf_counter() - t0)
            if t is not None:
                matcher.accept_token(t)
    us = lambda xs: round(float(np.median(xs)) * 1e6, 1)  # noqa: E731
    return dict(states=len(cold), allowed_median=int(np.median(allowed)), allowed_max=max(allowed),
                labkit_cold_us=us(cold), labkit_warm_us=us(warm), xgrammar_us=us(theirs),
                labkit_cold_mean_us=round(float(np.mean(cold)) * 1e6, 1),
                xgrammar_mean_us=round(float(np.mean(theirs)) * 1e6, 1),
                cold_vs_xgrammar=round(float(np.median(cold) / np.median(theirs)), 1),
                labkit_compile_s=round(ours_compile, 4), xgrammar_compile_s=round(xgr_compile, 4))


def decode_costs(vocab: Vocabulary, people: list[dict]) -> dict:
    """ms per generated token, greedy, unconstrained and constrained, on the same prompts (cache warm)."""
    from labkit.llm.local import LocalLLM

    llm = LocalLLM.smollm2()
    factory = json_constraint(compile_schema(PERSON_SCHEMA), vocab)
    msgs = [extraction_messages(p["text"]) for p in people[:PROMPTS]]
    for m in msgs:  # the prompt's cache, so that neither timed side pays the prefill
        llm.generate(m, max_tokens=1)
    spent = [0.0]

    def timed():  # the same constraint, with the time spent in its calls counted
        c = factory()
        for name in ("allowed", "advance"):
            def call(*a, _f=getattr(c, name)):
                t0 = time.perf_counter()
                r = _f(*a)
                spent[0] += time.perf_counter() - t0
                return r
            setattr(c, name, call)
        return c

    runs = {"unconstrained": [], "constrained": []}
    tokens = {"unconstrained": 0, "constrained": 0}
    total, inside = 0.0, 0.0
    for r in range(ROUNDS):  # alternate, so that a change in the machine's load hits both sides
        for name, constraint in (("unconstrained", None), ("constrained", timed))[::1 if r % 2 == 0 else -1]:
            seconds, n, spent[0] = 0.0, 0, 0.0
            for m in msgs:
                t0 = time.perf_counter()
                c = llm.generate(m, max_tokens=MAX_TOKENS, constraint=constraint)[0]
                seconds += time.perf_counter() - t0
                n += c.tokens
            runs[name].append(seconds / n * 1e3)
            tokens[name] = n
            if constraint is not None:
                total, inside = total + seconds, inside + spent[0]
    out = {name: dict(tokens=tokens[name], ms_per_token=round(float(np.median(v)), 2)) for name, v in runs.items()}
    out["constrained_vs_unconstrained"] = round(out["constrained"]["ms_per_token"]
                                                / out["unconstrained"]["ms_per_token"], 2)
    out["mask_share_of_constrained_time"] = round(inside / total, 3)
    return out


def main() -> dict:
    torch.set_num_threads(THREADS)
    from transformers import AutoTokenizer

    from labkit.models import smollm2_dir
    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    t0 = time.perf_counter()
    vocab = Vocabulary.from_tokenizer(tok)
    trie_s = time.perf_counter() - t0
    people = load_people()
    docs = [json.dumps(p["record"], ensure_ascii=False) for p in people]
    results = dict(machine=machine(xgrammar=version("xgrammar")), vocabulary_s=round(trie_s, 2), trie_nodes=len(vocab.trie.children),
                   plain_tokens=len(vocab.plain_ids), mask=mask_costs(tok, vocab, docs),
                   decode=decode_costs(vocab, people))
    m, d = results["mask"], results["decode"]
    print(f"setup: labkit vocabulary trie {results['vocabulary_s']} s ({results['trie_nodes']} nodes, "
          f"{results['plain_tokens']} plain-ASCII tokens), schema {m['labkit_compile_s']} s; "
          f"xgrammar compile {m['xgrammar_compile_s']} s")
    print(f"mask per token over {m['states']} states (median of allowed tokens {m['allowed_median']} of 49152): "
          f"labkit uncached {m['labkit_cold_us']} us (mean {m['labkit_cold_mean_us']}), cached "
          f"{m['labkit_warm_us']} us; xgrammar {m['xgrammar_us']} us (mean {m['xgrammar_mean_us']}) "
          f"-> labkit uncached / xgrammar = {m['cold_vs_xgrammar']}x (medians)")
    print(f"decode: unconstrained {d['unconstrained']['ms_per_token']} ms/token, constrained "
          f"{d['constrained']['ms_per_token']} ms/token -> constrained / unconstrained = "
          f"{d['constrained_vs_unconstrained']}x; the mask's share of constrained time "
          f"{d['mask_share_of_constrained_time']:.1%}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/constrained.json")
    args = parser.parse_args()
    results = main()
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {RESULTS}")
