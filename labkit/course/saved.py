"""Saved runs: an expensive experiment run once and saved, a cheap slice of it re-run live (shared/DESIGN.md).

A trained model's last digits depend on the CPU that trained it (torch picks kernels by instruction set, and
training amplifies a last-bit difference step by step), and training takes longer than a notebook's budget.
So a notebook loads the full run from `results/NAME.json` (+ `results/NAME.safetensors` for weights), prints
from it, and re-runs a short deterministic slice live, asserting it matches the record within a tolerance
that holds on every CPU. A stale or hand-edited record then fails nbval.

    python -m labkit.course save NAME     # run the full experiment and write results/NAME.*

Each run is a function in RUNS returning (record, tensors): plain JSON-able numbers (its seed among them)
and named tensors. The metadata says where, when and from which revision it ran, and how long it took.
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from labkit.course.cpu import describe
from labkit.course.manifest import ROOT

RESULTS = ROOT / "results"


@dataclass(frozen=True)
class SavedRun:
    name: str
    record: dict          # the experiment's own numbers
    meta: dict            # machine, revision, wall time
    tensors: dict[str, torch.Tensor]

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors saved under `prefix.` (one model's weights), with the prefix removed."""
        out = {k[len(prefix) + 1:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}
        if not out:
            raise KeyError(f"saved run {self.name!r} has no tensors under {prefix!r}; it has "
                           f"{sorted({k.split('.')[0] for k in self.tensors})}")
        return out


def _revision(code: tuple[str, ...]) -> str:
    """HEAD's commit, marked if the measured code has uncommitted changes (then no commit describes it)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *code], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+uncommitted changes to the measured code" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(name: str, results: Path = RESULTS) -> Path:
    """Run RUNS[name] in full and write results/NAME.json (and .safetensors if it returns tensors)."""
    if name not in RUNS:
        raise KeyError(f"no saved run named {name!r}; known: {', '.join(sorted(RUNS))}")
    start = time.perf_counter()
    record, tensors = RUNS[name]()
    meta = {"cpu": describe(), "torch": torch.__version__, "python": platform.python_version(),
            "revision": _revision(MEASURES.get(name, ("labkit",))),
            "seconds": round(time.perf_counter() - start, 1),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps({"meta": meta, "record": record}, indent=1) + "\n")
    if tensors:
        save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, results / f"{name}.safetensors")
    return path


def load(name: str, results: Path = RESULTS) -> SavedRun:
    path = results / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m labkit.course save {name}` to make it")
    data = json.loads(path.read_text())
    weights = results / f"{name}.safetensors"
    return SavedRun(name, data["record"], data["meta"], load_file(weights) if weights.is_file() else {})


# ---- the runs: name -> (the function that runs it, the code whose change makes the saved record stale) ----------

def _tiny_gpt() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.transformer import chapter3_run

    return chapter3_run()


def _kv_heads() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.mla import chapter6_run

    return chapter6_run()


def _grokking() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.grokking import grokking_run

    return grokking_run()


def _long_context() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.long_context import run

    return run()


def _pruning() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.compress.prune import chapter9_pruning_run

    return chapter9_pruning_run()


def _sparse_training() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.compress.sparse_training import chapter9_sparse_training_run

    return chapter9_sparse_training_run()


def _distill() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.compress.distill import distill_run

    return distill_run()


def _moe() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.compress.moe import moe_run

    return moe_run()


RUNS: dict[str, Callable[[], tuple[dict, dict[str, torch.Tensor]]]] = {"02-grokking": _grokking,
                                                                       "03-tiny-gpt": _tiny_gpt,
                                                                       "03-long-context": _long_context,
                                                                       "06-kv-heads": _kv_heads}
RUNS["09-pruning"] = _pruning
RUNS["09-sparse-training"] = _sparse_training
MEASURES: dict[str, tuple[str, ...]] = {
    "02-grokking": ("labkit/grokking.py",),
    "03-tiny-gpt": ("labkit/transformer.py", "labkit/attention.py", "labkit/rope.py", "labkit/mlp_lm.py",
                    "labkit/corpus.py"),
    "03-long-context": ("labkit/long_context.py", "labkit/transformer.py", "labkit/attention.py", "labkit/rope.py",
                        "labkit/corpus.py"),
    # the model code under it (llama, rope, attention) is checked by the notebook's live slice, which re-scores
    # four variants and asserts the saved losses: other chapters' edits there need no re-run unless they change them
    "06-kv-heads": ("labkit/mla.py", "labkit/gqa.py"),
}
# the SmolLM2 and tiny-GPT code under them is checked by the notebook's live slices (they assert the saved losses)
MEASURES["09-pruning"] = ("labkit/compress/prune.py",)
MEASURES["09-sparse-training"] = ("labkit/compress/sparse_training.py",)
RUNS["09-distill"] = _distill
RUNS["09-moe"] = _moe
# the teacher (labkit.llama) and the tiny GPT (labkit.transformer) under them are checked by the notebook's live
# slices, which re-run the first steps and re-score the saved weights against the record
MEASURES["09-distill"] = ("labkit/compress/distill.py",)
MEASURES["09-moe"] = ("labkit/compress/moe.py",)


def _quantization() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.compress.quant_sweep import run

    return run()


RUNS["09-quantization"] = _quantization
# SmolLM2 (labkit.llama) under it is checked by the notebook's live slice (one variant re-scored on one window)
MEASURES["09-quantization"] = ("labkit/compress/quant_sweep.py", "labkit/compress/quantize.py",
                               "labkit/compress/awq.py", "labkit/compress/gptq.py", "labkit/compress/evaluate.py",
                               "labkit/compress/gguf_blocks.py")


def _adapters() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.finetune.adapters import adapters_run

    return adapters_run()


RUNS["09-adapters"] = _adapters
# SmolLM2 (labkit.llama) under it is checked by the notebook's live slice (first LoRA steps, saved adapter's answers)
MEASURES["09-adapters"] = ("labkit/finetune/adapters.py", "labkit/finetune/lora.py", "labkit/finetune/qlora.py",
                           "labkit/finetune/prompt_tuning.py", "labkit/finetune/lofit.py")


def _sft_tools() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.finetune.sft import run

    return run()


RUNS["09-sft-tools"] = _sft_tools
# SmolLM2 (labkit.llama, kvcache) and LoRA (labkit.finetune.lora) under it are checked by the notebook's live
# slice, which loads the saved adapter and asserts its greedy replies to held-out requests
MEASURES["09-sft-tools"] = ("labkit/finetune/sft.py", "labkit/finetune/tool_data.py",
                            "labkit/finetune/chat_formats.py", "data/tool-calls")


def _dpo() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.finetune.dpo import dpo_run

    return dpo_run()


def _reward() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.finetune.reward import reward_run

    return reward_run()


RUNS["09-dpo"] = _dpo
RUNS["09-reward"] = _reward
# the SmolLM2 and LoRA code under them is checked by the notebook's live slices (they assert the saved numbers)
MEASURES["09-dpo"] = ("labkit/finetune/dpo.py",)
MEASURES["09-reward"] = ("labkit/finetune/reward.py", "labkit/finetune/dpo.py")


def _cot() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.prompting.cot import cot_run

    return cot_run(), {}


RUNS["10-cot"] = _cot
# the notebook's live slice re-scores recorded direct answers and re-decodes a few greedy ones on SmolLM2
MEASURES["10-cot"] = ("labkit/prompting/cot.py", "data/word-problems/problems.jsonl")


def _icl() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.prompting.icl import chapter10_icl_run

    return chapter10_icl_run()


RUNS["10-icl"] = _icl
# SmolLM2 under it (labkit.llm.local) is checked by the notebook's live slice (one k = 2 prompt re-scored)
MEASURES["10-icl"] = ("labkit/prompting/icl.py", "data/classification/data.jsonl")


def _search() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.reasoning.prompts24 import search_run

    return search_run()


RUNS["11-search"] = _search
# SmolLM2 under it (labkit.llm.local) is checked by the notebook's live slice (a recorded greedy proposal and two
# value scores re-run); game24's solver and checker, the judge of every answer, by tests/test_game24.py
MEASURES["11-search"] = ("labkit/reasoning/prompts24.py", "labkit/reasoning/tot.py", "labkit/reasoning/mcts.py",
                         "labkit/reasoning/got.py")


def _prompt_opt() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.prompting.optimize import prompt_opt_run

    return prompt_opt_run()


RUNS["10-prompt-opt"] = _prompt_opt
# SmolLM2 and the label scoring under it (labkit.llm.local, icl.label_probs) are checked by the notebook's live
# slice (the initial prompt re-scored on ten held-out sentences; the synthetic bandit study re-run in full)
MEASURES["10-prompt-opt"] = ("labkit/prompting/optimize.py", "data/classification/data.jsonl")


def _structured() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.llm.local import LocalLLM
    from labkit.prompting.constrained import extraction_run, load_people

    return extraction_run(LocalLLM.smollm2(), load_people()), {}


RUNS["10-structured"] = _structured
# greedy SmolLM2 replies; the notebook re-runs a few live and asserts they equal the record
MEASURES["10-structured"] = ("labkit/prompting/constrained.py", "data/extraction/people.jsonl")


def _rag_embeddings() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.rag.index import embeddings_run

    return embeddings_run()


RUNS["12-embeddings"] = _rag_embeddings
# MiniLM vectors of every chunk of the three chunking strategies; labkit.rag.index.corpus_index refuses them when
# the corpus fingerprint or a chunk count changed, and the retrieval notebook re-embeds a few chunks live
MEASURES["12-embeddings"] = ("labkit/rag/dense.py", "labkit/rag/chunking.py", "labkit/rag/documents.py")


def _rag_advanced() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.rag.advanced import advanced_run

    return advanced_run()


RUNS["12-advanced"] = _rag_advanced
# SmolLM2's rewrites and relevance scores over the hybrid index; the notebook re-searches recorded rewrites and
# re-scores a few (question, chunk) pairs live, asserting the record
MEASURES["12-advanced"] = ("labkit/rag/advanced.py", "labkit/rag/long_docs.py")


def _rag_generation() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.rag.generate import generation_run

    return generation_run(), {}


RUNS["12-generation"] = _rag_generation
# greedy SmolLM2 answers over stored passages; the notebook re-runs a few live and asserts they equal the record
MEASURES["12-generation"] = ("labkit/rag/generate.py", "labkit/rag/lost_middle.py", "labkit/rag/compress.py",
                             "data/rag-questions/questions.jsonl")


def _rag_memory() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.rag.memory import memory_run

    return memory_run(), {}


RUNS["12-memory"] = _rag_memory
# greedy SmolLM2 answers with stuffed vs retrieved contexts, prompt tokens, KV bytes and prefill times; the
# notebook re-asks a few (question, context) pairs live and asserts the record's prompt tokens and answers
MEASURES["12-memory"] = ("labkit/rag/memory.py", "labkit/rag/evalset.py", "data/rag-questions/questions.jsonl")


def _embed_finetune() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.rag.embed_finetune import run

    return run()


RUNS["12-embed-finetune"] = _embed_finetune
# MiniLM and its pooling (labkit.rag.dense) are checked by the notebook's live slice (the first training steps
# re-run and asserted against the record); the pretrained chunk vectors come from the saved run 12-embeddings
MEASURES["12-embed-finetune"] = ("labkit/rag/embed_finetune.py", "data/rag-questions/questions.jsonl")


def _tool_selection() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.agents.selection import run

    return run()


RUNS["13-tool-selection"] = _tool_selection
# greedy replies of SmolLM2 (prompted, constrained by chapter 10's automaton) and of chapter 9's tuned model; the
# notebook re-runs a few cases of each way live and asserts they equal the record
MEASURES["13-tool-selection"] = ("labkit/agents/selection.py", "data/tool-calls/heldout.jsonl",
                                 "results/09-sft-tools.safetensors")


def _injection() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.agents.injection import injection_run

    return injection_run(), {}


RUNS["13-injection"] = _injection
# greedy SmolLM2 replies in every episode of the injection benchmark; the notebook replays all of them through the
# harness (verdicts asserted) and re-runs a few episodes live, asserting the recorded replies
MEASURES["13-injection"] = ("labkit/agents/injection.py", "labkit/agents/defences.py")


def _agent_memory() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.agents.memory import paging_run

    return paging_run(), {}


RUNS["13-memory"] = _agent_memory
# greedy SmolLM2 answers and paging-tool episodes; the notebook re-runs a few scenarios live and asserts the record
MEASURES["13-memory"] = ("labkit/agents/memory.py",)


def _step_tags() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.agents.step_tags import step_tags_run

    return step_tags_run(), {}


RUNS["13-step-tags"] = _step_tags
# greedy SmolLM2 chains (plain, tagged, tagged with the gold facts given) on the arithmetic and multihop tasks;
# the notebook re-scores recorded chains live (log-probabilities) and re-generates one, asserting the record
MEASURES["13-step-tags"] = ("labkit/agents/step_tags.py", "data/agent-tasks/tasks.jsonl")


def _react() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.agents.react_eval import react_run

    return react_run(), {}


RUNS["13-react"] = _react
# greedy SmolLM2 ReAct episodes (no tools / prompted / format automaton) and chapter 4's sums; the notebook re-runs
# 12 + 7 before and after live and asserts the record
MEASURES["13-react"] = ("labkit/agents/react_eval.py", "labkit/agents/react_format.py", "labkit/agents/react.py",
                        "labkit/agents/tools.py", "data/agent-tasks/tasks.jsonl")


def _reflection() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.agents.reflection import reflection_run

    return reflection_run(), {}


RUNS["13-reflection"] = _reflection
# greedy SmolLM2 code, reflections and tests, judged in the sandbox; the notebook re-judges every recorded program
# and re-generates a first attempt and a set of model-written tests live, asserting the record
MEASURES["13-reflection"] = ("labkit/agents/reflection.py", "data/code-tasks/tasks.jsonl")


def _agency() -> tuple[dict, dict[str, torch.Tensor]]:
    from labkit.agents.agency import agency_run

    return agency_run(), {}


RUNS["13-agency"] = _agency
# greedy SmolLM2 at the three levels of agency on the task set; the notebook re-runs a few episodes live and
# asserts the record
MEASURES["13-agency"] = ("labkit/agents/agency.py", "labkit/agents/tasks.py", "labkit/agents/react.py",
                         "labkit/agents/tools.py", "data/agent-tasks/tasks.jsonl")
