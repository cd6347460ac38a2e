"""Chapter 13: tools and agents — the tools an agent calls, and the walls around them.

- calculator: exact arithmetic on untrusted text (ast walk, Fractions, sizes bounded before work), never `eval`.
- sandbox: untrusted Python in a separate process, held by OS resource limits (CPU, memory, file size,
  processes, open files), a wall-clock timeout that kills the whole process group, and an audit hook that
  refuses network, writes outside its folder and new processes — with an honest account of what it cannot stop.
- tools: a tool's JSON Schema from a typed function and its docstring, a validator for that schema, a registry with
  an allow-list whose `call` answers every bad call with an observation naming the field, and a parser for the
  model's JSON tool call (json, never eval); `default_toolbox()` holds calculator, search_docs, run_python.
- selection: tool-selection accuracy in the Berkeley function-calling leaderboard's categories (simple, multiple,
  relevance) on chapter 9's held-out requests, prompted, constrained (a union of chapter 10's automata, one per
  offered tool, plus a "none" call) and with chapter 9's LoRA adapter, scored with Wilson intervals.
- mcp_server: the same tools over the Model Context Protocol (official `mcp` SDK, stdio), every call through the
  same ToolBox validator, and a JSON-RPC error for a line that is not a message (`python -m labkit.agents.mcp_server`).
- mcp_client: `MCPToolBox`, a synchronous client of that server with ToolBox's `call`/`run`, for the agent.
- react: the ReAct loop (Yao et al., ICLR 2023): a step parser that reads labels only at line starts and cuts
  everything from "Observation:", a step limit, malformed output and tool errors as observations, and the
  trajectory rendered as text and escaped HTML.
- react_format: the ReAct step format as a byte automaton (a one-line thought, then an offered tool name and JSON
  arguments valid for it through chapter 10's schema automaton, or a final answer; no forged "Observation:"), run
  through chapter 10's token masks so a small model can only write well-formed steps.
- react_eval: the 13-react study — the task set with no tools, ReAct (demonstration turns) and ReAct + the format
  mask (success, calls, tokens, malformed replies per kind), and chapter 4's failed sums handed to the calculator.
- memory: a token-budget window (oldest non-system turns evicted first, never the system prompt or the newest
  turn) and MemGPT-style paging (Packer et al. 2023): core-memory blocks, a FIFO queue whose evicted messages go
  to a BM25 archival store, and archival_insert/archival_search as tools; the model's tokenizer as the counter,
  and the study of SmolLM2 recalling a paged-out fact (saved run 13-memory).
- agency: the levels of agency, by who decides the control flow — a router (the model picks one route, the code
  runs it; a malformed choice falls back to a stated default), a state machine (edges in code, the model picks
  among the allowed ones, an illegal one is refused) and the autonomous ReAct loop — with one result type, and
  the three measured on the task set (saved run 13-agency).
- defences: against prompt injection, as wrappers run_react takes unchanged — ToolBox's allow-list, tool results
  tagged as untrusted data with their source (a document cannot close the tag or forge a step), and an approval
  gate that runs a side-effecting tool only when `approve(name, arguments)` says True (default: deny).
- tasks: the course's agent task set (`data/agent-tasks/`: arithmetic, lookup, multihop; gold steps tagged memory
  or reason) and `is_correct`, which scores a free-text answer (the last number stated, or the gold as whole words).
- step_tags: ⟨memory⟩/⟨reason⟩ tagged steps (Jin et al. 2024): parse them, check each against the task's gold steps
  (facts by value, arithmetic by the calculator), and bin a wrong answer by the tag of its first failing step.
- injection: a small AgentDojo-style prompt-injection benchmark (Debenedetti et al. 2024): an in-memory environment
  (documents, outbox, files), user and injection tasks judged on its final state, forged ReAct steps in documents,
  utility / utility under attack / attack success rate with and without the defences, and the attack table.
- reflection: Reflexion (Shinn et al. 2023) on small code tasks — the model's code run on unit tests in the sandbox,
  retries on the failures with the model's own reflection, and the false positives of model-written tests.
"""
