"""The course's agent as an MCP client: tools that live in another process, behind the same `call` as a ToolBox.

An agent loop is synchronous — generate, parse, call a tool, append the observation — while the `mcp` SDK's
client is asynchronous (`ClientSession` over `stdio_client`, both async context managers that must be entered
and left in the same task). `MCPToolBox` bridges the two the plain way: one background thread runs an event
loop whose single task holds the connection open; each `call` submits a coroutine to that loop and waits for its
answer. Closing the toolbox ends that task, which closes the server's stdin; the SDK then waits for the server
to exit (and terminates it if it does not), so no server process outlives the toolbox.

    with MCPToolBox() as box:                     # starts `python -m labkit.agents.mcp_server`
        box.specs()                               # [{"name": "calculator", "description": ..., "parameters": ...}]
        box.call("calculator", {"expression": "12 + 7"})     '19'
        box.run('{"name": "calculator", "arguments": {"expression": "2**10"}}')   '1024'

A result the server marks `isError` reaches the agent as an observation starting "error:", like a ToolBox's.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
from concurrent.futures import Future
from typing import Any, Coroutine, Mapping, Sequence

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from labkit.agents.tools import ToolCallError, _shown, parse_tool_call

SERVER = [sys.executable, "-m", "labkit.agents.mcp_server"]
PASSED_ON = ("HF_", "TRANSFORMERS_", "OMP_", "MKL_", "PYTHONPATH")


class MCPToolBox:
    """A synchronous client of one MCP server process (default: labkit's, on stdio)."""

    def __init__(self, command: Sequence[str] | None = None, timeout: float = 60.0):
        if isinstance(command, str) or (command is not None and not all(isinstance(c, str) for c in command)):
            raise TypeError(f"command must be a non-empty list of str, got {command!r}")
        command = list(SERVER if command is None else command)
        if not command:
            raise TypeError("command must be a non-empty list of str, got an empty one")
        self.timeout = timeout
        # the SDK starts the server with a minimal environment (PATH, HOME, ...); pass on the settings that keep
        # it offline and frugal, as the course runs everything
        env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ON)}
        self._params = StdioServerParameters(command=command[0], args=command[1:], env=env)
        # the server's stderr goes to a file of our own: the SDK hands the process a file descriptor, and in a
        # Jupyter kernel sys.stderr has none (it raised io.UnsupportedOperation: fileno); the file also lets a
        # failed start say what the server printed
        self._errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        self._loop = asyncio.new_event_loop()
        self._ready: Future = Future()
        self._stop: asyncio.Event | None = None
        self._session: ClientSession | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._hold(),),
                                        name="mcp-client", daemon=True)
        self._thread.start()
        try:
            self._tools = self._ready.result(timeout)
        except BaseException as e:  # the server did not start, died, or timed out: say so plainly
            while isinstance(e, BaseExceptionGroup) and e.exceptions:  # anyio wraps errors in task groups
                e = e.exceptions[0]
            self._thread.join(1)
            said = self._stderr_tail()
            self._errlog.close()
            raise RuntimeError(f"the MCP server {' '.join(command)!r} did not start: {type(e).__name__}: {e}"
                               + (f"; its stderr ended with: {said}" if said else "")) from e

    def _stderr_tail(self, chars: int = 500) -> str:
        try:
            self._errlog.flush()
            self._errlog.seek(0)
            return " ".join(self._errlog.read()[-chars:].split())
        except (OSError, ValueError):
            return ""

    async def _hold(self) -> None:
        """The one task that owns the connection: open it, list the tools, wait for close()."""
        try:
            async with stdio_client(self._params, errlog=self._errlog) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                self._session, self._stop = session, asyncio.Event()
                self._ready.set_result(tools)
                await self._stop.wait()
        except BaseException as e:  # noqa: BLE001 — handed to the thread that waits in __init__
            if not self._ready.done():
                self._ready.set_exception(e)
            else:
                raise

    def _session_or_raise(self) -> ClientSession:
        if self._session is None or self._loop.is_closed():
            raise RuntimeError("this MCPToolBox is closed")
        return self._session

    def _submit(self, coro: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._tools]

    def specs(self) -> list[dict]:
        """The server's tools as a model is shown them: {"name", "description", "parameters"}."""
        return [{"name": t.name, "description": t.description or "", "parameters": t.input_schema}
                for t in self._tools]

    def call(self, name: str, arguments: Mapping[str, Any] | None = None) -> str:
        """Call tool `name` on the server; its text answer, or an "error:" observation (never raises for a bad
        call — the server validates it and says what was wrong; a name that is not a string or arguments that are
        not an object cannot even be sent, so they are answered here, in the words ToolBox.call uses)."""
        session = self._session_or_raise()
        if not isinstance(name, str):  # the SDK would raise a pydantic error here, not answer
            return f"error: unknown tool {_shown(name)}; available tools: {', '.join(self.names) or 'none'}"
        arguments = {} if arguments is None else arguments
        if not isinstance(arguments, Mapping):  # dict(["xy"]) would quietly send {"x": "y"}
            return f"error: arguments of '{name}' must be a JSON object, got {_shown(arguments)}"
        result = self._submit(session.call_tool(name, dict(arguments)))
        text = "\n".join(getattr(c, "text", f"[{c.type} content]") for c in result.content)
        return text if not result.is_error or text.startswith("error:") else f"error: {text}"

    def run(self, text: str) -> str:
        """Parse a tool call out of model text and make it over MCP."""
        try:
            call = parse_tool_call(text)
        except ToolCallError as e:
            return f"error: {e}"
        return self.call(call.name, call.arguments)

    def close(self) -> None:
        """End the connection; the server process exits with it. Safe to call twice."""
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(self.timeout)
            self._session = None
            self._loop.close()
            self._errlog.close()

    def __enter__(self) -> "MCPToolBox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
