"""The course's tools served over the Model Context Protocol (MCP), with the official `mcp` SDK, on stdio.

`labkit.agents.tools` wires tools into one program. MCP is the convention practitioners use to share tools
*between* programs: a server process offers tools, any client (an IDE, a chat app, our agent) lists them and
calls them, speaking JSON-RPC 2.0 — here one JSON message per line on the server's stdin and stdout:

    client -> {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {...}}
    server <- {"jsonrpc": "2.0", "id": 1, "result": {"serverInfo": {...}, "capabilities": {"tools": ...}}}
    client -> {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}           the names, descriptions, schemas
    client -> {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "calculator",
                                                                     "arguments": {"expression": "12 + 7"}}}
    server <- {"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "19"}],
                                                     "isError": false}}

Two kinds of failure are kept apart, as the protocol asks: a *tool* that fails or is called with wrong
arguments answers a normal result with `isError: true` and a message the model can read (so the agent can try
again); a *message* that is not valid JSON-RPC gets a JSON-RPC error (code -32700, parse error) — and in both
cases the server goes on serving.

We build the server on the SDK's low-level `Server` rather than its decorator API (`MCPServer`, `@app.tool()`),
for one reason: the decorator API validates arguments with its own pydantic model, which quietly drops an
argument the tool does not have and turns "10" into 10. Here every call goes through the same
`labkit.agents.tools.ToolBox` as in-process calls — the same schemas (with "additionalProperties": false), the
same validator, the same "error: argument 'k' must be an integer, got 'ten'" — so a tool behaves the same
whether an agent calls it directly or over MCP.

    python -m labkit.agents.mcp_server                            all three tools
    python -m labkit.agents.mcp_server --tools calculator         an allow-list: only these are listed and callable

`search_docs` loads chapter 12's index on its first call (seconds), not at start, so the server answers
`initialize` quickly. Its stdout is the protocol channel: nothing else may print there.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from labkit.agents.tools import ToolBox, default_toolbox

NAME = "labkit-tools"


def build_server(box: ToolBox | None = None) -> Server:
    """An MCP server that lists `box`'s allowed tools (default: the course's three) and answers tools/call
    through `box.call`: a result whose text starts with "error:" is sent with isError true."""
    box = default_toolbox() if box is None else box
    if not isinstance(box, ToolBox):
        raise TypeError(f"box must be a ToolBox, got {type(box).__name__}")

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=s["name"], description=s["description"], input_schema=s["parameters"])
            for s in box.specs()])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        # the tools block (a sandboxed process, a search): run them in a worker thread so the server's event
        # loop keeps reading messages meanwhile
        text = await anyio.to_thread.run_sync(box.call, params.name, params.arguments or {})
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                    is_error=text.startswith("error:"))

    return Server(NAME, instructions="Tools from the labkit course: exact arithmetic, search over the course "
                                     "documents, and a Python sandbox.",
                  on_list_tools=list_tools, on_call_tool=call_tool)


def _protocol_error(exc: Exception) -> SessionMessage:
    """The JSON-RPC answer to a line that is not a message: -32700 if it is not JSON at all, else -32600."""
    not_json = isinstance(exc, ValidationError) and any(e["type"] == "json_invalid" for e in exc.errors())
    code, what = (types.PARSE_ERROR, "Parse error") if not_json else (types.INVALID_REQUEST, "Invalid Request")
    detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) and exc.errors() else str(exc)
    error = types.ErrorData(code=code, message=f"{what}: {detail[:200]}")
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=None, error=error))


async def serve_stdio(server: Server) -> None:
    """Serve one client on this process's stdin and stdout until stdin closes.

    The SDK's stdio transport hands a line it cannot read to the session as an exception, and the session only
    logs it: the client would wait for an answer that never comes. JSON-RPC 2.0 asks for an error response with
    id null, so a relay between the transport and the server answers such lines itself and passes the rest on.
    """
    async with stdio_server() as (read_stream, write_stream):
        relay_in, relay_out = anyio.create_memory_object_stream[SessionMessage](0)

        async def relay() -> None:
            async with relay_in:
                async for item in read_stream:
                    if isinstance(item, Exception):
                        await write_stream.send(_protocol_error(item))
                    else:
                        await relay_in.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            await server.run(relay_out, write_stream, server.create_initialization_options())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.agents.mcp_server",
                                     description="Serve labkit's tools over MCP on stdio.")
    parser.add_argument("--tools", help="comma-separated allow-list of tools to serve (default: all)")
    args = parser.parse_args(argv)
    allow = None if args.tools is None else [t for t in args.tools.split(",") if t]
    box = default_toolbox(allow=allow)
    unknown = sorted(set(allow or ()) - set(box.tools))
    if unknown:
        parser.error(f"unknown tools {unknown}; known: {', '.join(box.tools)}")
    anyio.run(serve_stdio, build_server(box))


if __name__ == "__main__":
    main()
