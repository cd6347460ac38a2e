"""labkit.agents.mcp_server and mcp_client, end to end with a real server process on stdio: the tools it lists,
calls good and bad, a malformed JSON-RPC line, the allow-list, and no process left after the client closes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from labkit.agents.mcp_client import MCPToolBox
from labkit.agents.mcp_server import build_server
from labkit.agents.tools import default_toolbox, function_schema


def _servers() -> list[int]:
    """Pids of this test process's children that run the MCP server."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        if ppid == os.getpid() and b"labkit.agents.mcp_server" in cmdline:
            out.append(int(stat.parent.name))
    return out


@pytest.fixture(scope="module")
def box():
    with MCPToolBox() as b:
        yield b


def test_lists_the_course_tools_with_labkits_schemas(box):
    assert box.names == ["calculator", "search_docs", "run_python"]
    local = {t.name: t for t in default_toolbox().tools.values()}
    for spec in box.specs():
        assert spec["parameters"] == function_schema(local[spec["name"]].fn)
        assert spec["description"] == local[spec["name"]].description
        jsonschema.Draft202012Validator.check_schema(spec["parameters"])


def test_calls_and_bad_calls_over_mcp(box):
    assert box.call("calculator", {"expression": "12 + 7"}) == "19"
    assert box.call("calculator", {"expression": 12}) == "error: argument 'expression' must be a string, got 12"
    assert box.call("calculator", {"expression": "1", "precision": 3}) == \
        "error: unexpected argument 'precision' (expected expression)"
    assert box.call("shell", {"cmd": "ls"}).startswith("error: unknown tool 'shell'")
    assert box.call("calculator", {"expression": "2**10"}) == "1024"  # the server kept serving
    assert box.run('Let me compute.\n```json\n{"name": "calculator", "arguments": {"expression": "3/4"}}\n```') \
        == "3/4 (≈ 0.75)"
    assert box.run("no call here").startswith("error: no tool call found")


@pytest.mark.parametrize("name, arguments", [(123, {}), (None, None), ("calculator", ["xy"]),
                                             ("calculator", "12 + 7"), ("search_docs", 3)])
def test_calls_that_cannot_be_sent_are_observations_as_in_process(box, name, arguments):
    """A name that is not a string (the SDK raised a pydantic error) or arguments that are not an object (a list
    of pairs was turned into a dict) are answered with ToolBox.call's words, and nothing is sent."""
    assert box.call(name, arguments) == default_toolbox().call(name, arguments)
    assert box.call(name, arguments).startswith("error: ")


def test_sandbox_and_search_over_mcp(box):
    assert box.call("run_python", {"code": "print(sum(range(10)))"}) == "stdout:\n45\n\nfinished"
    assert box.call("search_docs", {"query": "LoRA adapter rank", "k": 0}) == \
        "error: tool 'search_docs' failed: ValueError: k must be between 1 and 10, got 0"
    hits = box.call("search_docs", {"query": "LoRA adapter rank", "k": 2})
    assert hits.count("\n\n[") == 1 and hits.startswith("[") and "LoRA" in hits


def _raw_server(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labkit.agents.mcp_server", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _exchange(proc: subprocess.Popen, line: bytes, answer: bool = True) -> dict | None:
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline()) if answer else None


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}}


def test_malformed_json_rpc_gets_a_protocol_error_and_the_server_keeps_serving():
    proc = _raw_server()
    try:
        assert _exchange(proc, json.dumps(INIT).encode())["result"]["serverInfo"]["name"] == "labkit-tools"
        _exchange(proc, b'{"jsonrpc": "2.0", "method": "notifications/initialized"}', answer=False)
        bad = _exchange(proc, b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list"')  # cut short: not JSON
        assert bad["id"] is None and bad["error"]["code"] == -32700 and bad["error"]["message"].startswith("Parse")
        bad = _exchange(proc, b'{"hello": "world"}')  # JSON, but not a JSON-RPC message
        assert bad["id"] is None and bad["error"]["code"] == -32600
        bad = _exchange(proc, b'\xff\xfe garbage')
        assert bad["error"]["code"] == -32700
        unknown = _exchange(proc, b'{"jsonrpc": "2.0", "id": 3, "method": "tools/destroy"}')
        assert unknown["id"] == 3 and unknown["error"]["code"] == -32601  # method not found
        wrong = _exchange(proc, json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": "search_docs", "arguments": {"query": "LoRA", "k": "ten"}}}).encode())
        assert wrong["id"] == 5 and wrong["result"] == {"isError": True, "content": [
            {"type": "text", "text": "error: argument 'k' must be an integer, got 'ten'"}]}
        good = _exchange(proc, json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "calculator", "arguments": {"expression": "6 * 7"}}}).encode())
        assert good["id"] == 4 and good["result"] == {"content": [{"type": "text", "text": "42"}], "isError": False}
        proc.stdin.close()
        assert proc.wait(10) == 0  # stdin closed: the server ends by itself
    finally:
        proc.kill()
        proc.wait()


def test_allow_list_on_the_command_line():
    with MCPToolBox([sys.executable, "-m", "labkit.agents.mcp_server", "--tools", "calculator"]) as box:
        assert box.names == ["calculator"]
        assert box.call("run_python", {"code": "print(1)"}) == \
            "error: tool 'run_python' is not allowed here; allowed tools: calculator"
    proc = subprocess.run([sys.executable, "-m", "labkit.agents.mcp_server", "--tools", "shell"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown tools ['shell']" in proc.stderr


def test_no_server_process_is_left_after_close():
    before = set(_servers())  # the module's shared server may be running
    box = MCPToolBox()
    ours = set(_servers()) - before
    assert len(ours) == 1 and box.call("calculator", {"expression": "1+1"}) == "2"
    box.close()
    deadline = time.monotonic() + 5
    while ours & set(_servers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ours & set(_servers()) == set()
    assert not Path(f"/proc/{ours.pop()}").exists()  # reaped, not a zombie
    with pytest.raises(RuntimeError, match="closed"):
        box.call("calculator", {"expression": "1+1"})
    box.close()  # twice is fine


def test_works_where_stderr_has_no_file_descriptor(monkeypatch):
    """In a Jupyter kernel sys.stderr is a stream object without fileno(), and the SDK's stdio_client, by
    default, hands sys.stderr (as bound at import) to the server process: that failed with
    io.UnsupportedOperation. MCPToolBox gives the server a file of its own."""
    import mcp.client.stdio

    monkeypatch.setattr(mcp.client.stdio.stdio_client.__wrapped__, "__defaults__", (io.StringIO(),))
    with MCPToolBox([sys.executable, "-m", "labkit.agents.mcp_server", "--tools", "calculator"]) as box:
        assert box.call("calculator", {"expression": "12 + 7"}) == "19"


def test_a_server_that_fails_to_start_says_what_it_printed():
    with pytest.raises(RuntimeError, match=r"did not start: .*its stderr ended with: .*unknown tools \['shell'\]"):
        MCPToolBox([sys.executable, "-m", "labkit.agents.mcp_server", "--tools", "shell"])


def test_public_edges():
    with pytest.raises(TypeError, match="command must be a non-empty list of str"):
        MCPToolBox("python -m labkit.agents.mcp_server")
    with pytest.raises(RuntimeError, match="did not start: MCPError: Connection closed"):
        MCPToolBox([sys.executable, "-c", "pass"])  # exits at once: no server there
    with pytest.raises(RuntimeError, match="did not start: FileNotFoundError"):
        MCPToolBox(["/nonexistent/server"])
    with pytest.raises(TypeError, match="box must be a ToolBox, got dict"):
        build_server({})
