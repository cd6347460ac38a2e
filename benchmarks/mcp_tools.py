"""Benchmark: what serving the course tools over MCP costs — start-up, and a call's latency against in-process.

    python benchmarks/mcp_tools.py

Three numbers, one run each side (it reports, never asserts: times depend on the machine and its load):
* start-up: seconds from MCPToolBox() (spawn `python -m labkit.agents.mcp_server`, initialize, list tools) to the
  first calculator answer, for labkit's server and for the SDK's decorator API (`MCPServer` + `add_tool` on the
  same functions: the reference most tutorials show);
* a calculator call's median latency (REPEATS alternating rounds): over MCP (labkit's server, the reference
  server) ÷ in-process `ToolBox.call` — the price of a process boundary and JSON-RPC;
* search_docs: the first call over MCP (the server loads chapter 12's index and the query encoder) and a warm one.
"""
from __future__ import annotations

import sys
import time

from labkit.agents.mcp_client import MCPToolBox
from labkit.agents.tools import default_toolbox
from labkit.timing import interleaved_medians

REPEATS = 20
REFERENCE = """
from mcp.server.mcpserver import MCPServer
from labkit.agents.tools import COURSE_TOOLS
app = MCPServer("reference")
for fn in COURSE_TOOLS:
    app.add_tool(fn, structured_output=False)
app.run("stdio")
"""
ARGS = {"expression": "(12 + 7) * 3 / 2"}


def started(command: list[str] | None) -> tuple[MCPToolBox, float]:
    t = time.perf_counter()
    box = MCPToolBox(command)
    assert box.call("calculator", ARGS) == "57/2 (≈ 28.5)"
    return box, time.perf_counter() - t


def main() -> None:
    local = default_toolbox()
    ours, ours_start = started(None)
    ref, ref_start = started([sys.executable, "-c", REFERENCE])
    try:
        med = interleaved_medians({"in-process": lambda: local.call("calculator", ARGS),
                                   "labkit MCP": lambda: ours.call("calculator", ARGS),
                                   "SDK MCPServer": lambda: ref.call("calculator", ARGS)}, repeat=REPEATS)
        t = time.perf_counter()
        ours.call("search_docs", {"query": "LoRA adapter rank"})
        first = time.perf_counter() - t
        t = time.perf_counter()
        ours.call("search_docs", {"query": "KV cache size per token"})
        warm = time.perf_counter() - t
    finally:
        ours.close()
        ref.close()
    print(f"start-up to first answer: labkit {ours_start:.2f} s, SDK MCPServer {ref_start:.2f} s "
          f"(ratio {ours_start / ref_start:.2f})")
    print(f"calculator call, median of {REPEATS}: in-process {med['in-process'] * 1e6:.0f} us, "
          f"labkit MCP {med['labkit MCP'] * 1e3:.2f} ms, SDK MCPServer {med['SDK MCPServer'] * 1e3:.2f} ms")
    print(f"  labkit MCP / in-process {med['labkit MCP'] / med['in-process']:.0f}x, "
          f"labkit MCP / SDK MCPServer {med['labkit MCP'] / med['SDK MCPServer']:.2f}")
    print(f"search_docs over MCP: first call {first:.2f} s (loads the index), warm {warm:.3f} s")


if __name__ == "__main__":
    main()
