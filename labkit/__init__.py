"""labkit: the code behind the course. One module per idea, in course order.

Chapter 1  n-gram language models          corpus (the offline corpus), ngram, ngram_explorer, checks.ngram
Chapter 2  tokenization, neural LMs        bpe (byte-level BPE + its explorer), mlp_lm, grokking (modular arithmetic,
                                           weight decay), checks.bpe
Chapter 3  attention and the transformer   attention, rope, transformer, long_context (position interpolation, YaRN,
                                           LongRoPE, CoPE), checks.attention
Chapter 4  SmolLM2-135M from scratch       llama, sampling (+ the next-token explorer), checks.llama
Chapter 5  the KV-cache                    kvcache, streaming (attention sinks), paged (PagedAttention), checks.kvcache
Chapter 6  MHA, MQA, GQA, MLA              gqa (head sharing, MQA conversion), mla (low-rank latent cache), checks.gqa
Chapter 7  FlashAttention                  flash (tiled attention, online softmax, IO counts), checks.flash
Chapter 8  GPU programming, Triton         gpu_sim (numba CUDA simulator), kernels.backend, kernels.basics,
                                           kernels.flash (FlashAttention-2 in Triton), checks.kernels
Chapter 9  compressing and adapting        compress/ (quantize, gguf_blocks, awq, gptq, int8_decode, prune,
                                           sparse_training, distill, moe, evaluate), finetune/ (lora, qlora,
                                           prompt_tuning, lofit, chat_formats, tool_data, sft, dpo, reward),
                                           checks.compress
Chapter 10 prompting patterns              llm/ (base: the one LLM interface; local: SmolLM2 with prefix caching and
                                           batched samples; http: an OpenAI-compatible server), prompting/ (anatomy,
                                           icl, scaling, cot, constrained, optimize), checks.prompting
Chapter 11 reasoning as search             reasoning/ (game24, tot, mcts, got, prompts24, explorer), checks.reasoning
Chapter 12 retrieval-augmented generation  rag/ (documents, chunking, bm25, dense, fusion, metrics, evalset, index,
                                           store: SQLite, hnsw, advanced: multi-query and reranking, long_docs,
                                           embed_finetune, generate: grounded answers with citations, lost_middle,
                                           compress, memory), checks.rag
Chapter 13 tools and agents                agents/ (calculator: exact and bounded, never eval; sandbox: a limited
                                           child process with an audit hook; tools: schemas from typed functions;
                                           mcp_server, mcp_client; selection: BFCL categories; tasks; react,
                                           react_format: the ReAct loop and its automaton; react_eval; step_tags;
                                           agency: router, state machine, loop; memory: windows, paging;
                                           reflection; defences: tags, approval gate; injection), checks.agents
Shared     the real models, offline        models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)
           small helpers                   scoring (log P of text), timing (best-of and median wall clock), viz (HTML bars)
           the course pipeline             course.manifest (book.yml), course.labs, course.execute, course.book,
                                           course.cpu (which CPU kernels compute the floats)

A module never imports a later chapter's module.
"""
from labkit.course.cpu import check_settings as _check_settings

__version__ = "0.1.0"
# Fail here, naming the variable, if the environment asks for CPU kernels this machine cannot run: torch
# would otherwise stop with "Illegal instruction" deep inside a kernel (see labkit/course/cpu.py).
_check_settings()
