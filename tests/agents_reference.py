"""The chapter-13 attack list, and the reference row: what smolagents' `LocalPythonExecutor` does with each attack.

Free of labkit.agents on purpose: the reference is measured on its own. `LocalPythonExecutor` is an *interpreter*
written in Python (it walks the program's AST itself, with an allow-list of imports and builtins, an iteration
cap and a thread-based timeout) running inside the caller's process. Each attack here runs it in a fresh child
process with a 4 GiB address-space limit and a wall-clock kill, so that an attack it does not stop cannot take
the test machine down; the payloads are harmless (`echo pwned`, a file in a temporary folder, a connection to a
listener the caller owns, a fork bomb bounded to 2**6 processes).

    python tests/agents_reference.py      prints the table: attack, labkit's sandbox, smolagents (and the times)
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAYLOAD = "echo pwned"
HIDDEN = f"__import__('os').system({PAYLOAD!r})"  # the text the exec attack hides in hex
# (name, program). {port} is the caller's listener on 127.0.0.1.
ATTACKS = [
    ("__import__('os')", f"__import__('os').system({PAYLOAD!r})"),
    ("import from concatenated strings", f"import importlib\nimportlib.import_module('o' + 's').system({PAYLOAD!r})"),
    ("getattr chain to globals",
     "b = getattr(lambda: 0, '__glob' + 'als__')['__builtins__']\n"
     "imp = b['__import__'] if isinstance(b, dict) else getattr(b, '__import__')\n"
     f"getattr(imp('os'), 'sys' + 'tem')({PAYLOAD!r})"),
    ("ctypes", f"import ctypes\nctypes.CDLL(None).system({PAYLOAD.encode()!r})"),
    ("decorator trick", f"@exec\n@lambda _: \"__import__('os').system({PAYLOAD!r})\"\nclass X:\n    pass"),
    ("exec of hidden text", f"exec(bytes.fromhex({HIDDEN.encode().hex()!r}).decode())"),
    ("dunder walk to subprocess.Popen",
     "[c for c in ().__class__.__bases__[0].__subclasses__() if c.__name__ == 'Popen'][0]"
     f"({PAYLOAD.split()!r})"),
    ("dunder walk to os.system",
     "[c for c in ().__class__.__bases__[0].__subclasses__() if c.__name__ == '_wrap_close'][0]"
     f".__init__.__globals__['system']({PAYLOAD!r})"),
    ("9**9**9", "x = 9**9**9"),
    ("'+0' * 200000", "x = eval('+0' * 200000)"),
    ("deep recursion", "def f(n):\n    return f(n + 1)\nf(0)"),
    ("path traversal ../../", "open('../../escape.txt', 'w').write('pwned')"),
    ("symlink out of the folder", "import os\nos.symlink('../..', 'up')\nopen('up/escape.txt', 'w').write('pwned')"),
    ("fork bomb", "import os\nfor _ in range(6):\n    os.fork()"),
    ("memory hog", "x = bytearray(2**36)"),
    ("socket to 127.0.0.1",
     "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'pwned')"),
    # last: under smolagents a timed-out program keeps running in an abandoned thread of the same process
    ("infinite loop", "while True:\n    pass"),
]

DRIVER = r"""
import json, sys, time
from smolagents.local_python_executor import LocalPythonExecutor
for code in json.loads(sys.stdin.read()):
    executor = LocalPythonExecutor(additional_authorized_imports=[], timeout_seconds=int(sys.argv[1]))
    executor.send_tools({})
    start = time.monotonic()
    try:
        output = executor(code)
        result = {"outcome": "ran", "detail": repr(output.output)[:200]}
    except BaseException as e:
        message = str(e)  # "Code execution failed at line ... due to: InterpreterError: ..." or a bare message
        detail = message.split("due to: ")[-1] if "due to: " in message else type(e).__name__ + ": " + message
        result = {"outcome": "refused", "detail": detail[:300]}
    result["seconds"] = time.monotonic() - start
    print("\nRESULT " + json.dumps(result), flush=True)
"""


def _limit_child() -> None:  # runs in the child before exec: the machine's safety net, not smolagents'
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def smolagents_outcomes(codes: list[str], timeout_seconds: int = 2, wall_seconds: float = 20.0) -> list[dict]:
    """Run attacks one after another through a fresh LocalPythonExecutor each, in one child process (smolagents
    takes seconds to import), in a folder two levels inside a temporary one so that ../../ stays in it.
    Returns per attack {"outcome": "ran" | "refused" | "killed", "detail", "seconds", "pwned": the payload's
    output appeared}; "killed" = still running when the caller's wall clock ran out. "escaped" (a file appeared
    outside the folder) is reported on every row, since the rows share the process."""
    with tempfile.TemporaryDirectory() as top:
        cwd = Path(top) / "a" / "b"
        cwd.mkdir(parents=True)
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(timeout_seconds)], cwd=cwd, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=_limit_child, start_new_session=True)
        try:
            out, _ = proc.communicate(json.dumps(codes), timeout=wall_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        elapsed = time.monotonic() - start
        escaped = (Path(top) / "escape.txt").exists() or (Path(top) / "a" / "escape.txt").exists()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything it let fork
    except ProcessLookupError:
        pass
    pieces, results = out.split("\nRESULT "), []  # pieces[i + 1] = attack i's result line, then what i + 1 printed
    for i, piece in enumerate(pieces[1:]):
        result = json.loads(piece.partition("\n")[0])
        printed = pieces[0] if i == 0 else pieces[i].partition("\n")[2]
        result["pwned"] = any(line.strip() == "pwned" for line in printed.splitlines())  # `echo pwned` ran
        results.append(result)
    for _ in codes[len(results):]:
        results.append({"outcome": "killed", "detail": f"still running after {wall_seconds:g} s: killed by the "
                        "caller", "seconds": elapsed, "pwned": False})
    for result in results:
        result["escaped"] = escaped
    return results


def table(rows: list[tuple[str, str, float, str, float]]) -> str:
    """rows of (attack, labkit sandbox's reason, its seconds, smolagents' outcome, its seconds) as text."""
    head = (f"{'attack':34s} {'labkit sandbox: stopped by':46s} {'s':>5s}  "
            f"{'smolagents LocalPythonExecutor':60s} {'s':>5s}")
    lines = [head, "-" * len(head)]
    for name, ours, ours_s, ref, ref_s in rows:
        lines.append(f"{name:34.34s} {ours:46.46s} {ours_s:5.2f}  {ref:60.60s} {ref_s:5.2f}")
    return "\n".join(lines)


def main() -> None:
    import socket

    from labkit.agents.sandbox import Limits, run_python  # only the table needs labkit

    limits = Limits(cpu_seconds=1, wall_seconds=10, memory_bytes=256 * 2**20)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        programs = [code.replace("{port}", str(listener.getsockname()[1])) for _, code in ATTACKS]
        ours = [run_python(program, limits) for program in programs]
        slow = [i for i, (name, _) in enumerate(ATTACKS) if name == "9**9**9"]  # never returns: its own process
        fast = [i for i in range(len(ATTACKS)) if i not in slow]
        refs = dict(zip(fast, smolagents_outcomes([programs[i] for i in fast])))
        refs.update(zip(slow, smolagents_outcomes([programs[i] for i in slow], wall_seconds=5)))
    rows = []
    for i, (name, _) in enumerate(ATTACKS):
        ref = refs[i]
        verdict = ref["outcome"] + (" (PAYLOAD RAN)" if ref["pwned"] else "") + (" (ESCAPED)" if ref["escaped"] else "")
        rows.append((name, str(ours[i].stopped_by), ours[i].seconds, f"{verdict}: {ref['detail']}", ref["seconds"]))
    print(table(rows))


if __name__ == "__main__":
    main()
