"""The chapter-13 attack list against labkit's sandbox and against smolagents' LocalPythonExecutor (the reference).

    python benchmarks/agent_attacks.py          # print the table: attack, how each stopped it, time to stop
    python benchmarks/agent_attacks.py --save   # also write benchmarks/results/agent_attacks.json

smolagents is a test-time dependency: no notebook and no labkit module imports it. So the reference row reaches
chapter 13's tools lesson as data: this script runs the attack list (tests/agents_reference.py, where the test
suite runs it too) through a fresh LocalPythonExecutor per attack, in a child process it can kill, and saves the
attack list and what smolagents did with each. The lesson runs the same programs live through labkit's sandbox
and prints the saved reference beside them. tests/test_agents_sandbox.py keeps the file honest: its attack list
must equal ATTACKS, its smolagents version the installed one, and each saved outcome what a fresh run of
smolagents gives (outcome and message).

It reports, never asserts: times depend on the machine and its load (recorded).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from agents_reference import ATTACKS, smolagents_outcomes, table  # noqa: E402
from decode import machine  # noqa: E402  (the machine record every benchmark shares)

from labkit.agents.sandbox import Limits, run_python  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "agent_attacks.json"
TIMEOUT_SECONDS = 2  # LocalPythonExecutor's own timeout (its default is 30 s)
LIMITS = Limits(cpu_seconds=1, wall_seconds=20, memory_bytes=128 * 2**20, file_bytes=64 * 2**10, open_files=32)


def reference(programs: list[str]) -> list[dict]:
    """smolagents' outcome for each program: all in one child process, except 9**9**9 — one C-level power that
    holds its interpreter until the process is killed — alone in another, killed after 5 s."""
    slow = [i for i, (name, _) in enumerate(ATTACKS) if name == "9**9**9"]
    fast = [i for i in range(len(ATTACKS)) if i not in slow]
    out = dict(zip(fast, smolagents_outcomes([programs[i] for i in fast], TIMEOUT_SECONDS, wall_seconds=60)))
    out.update(zip(slow, smolagents_outcomes([programs[i] for i in slow], TIMEOUT_SECONDS, wall_seconds=5)))
    return [out[i] for i in range(len(ATTACKS))]


def main() -> dict:
    with socket.socket() as listener:  # the socket attack's target: a listener this script owns
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        programs = [code.replace("{port}", str(listener.getsockname()[1])) for _, code in ATTACKS]
        ours = [run_python(p, LIMITS) for p in programs]
        refs = reference(programs)
        try:
            listener.accept()
            connected = True
        except BlockingIOError:
            connected = False
    rows = []
    for (name, _), mine, ref in zip(ATTACKS, ours, refs):
        verdict = ref["outcome"] + (" (PAYLOAD RAN)" if ref["pwned"] else "") + (" (ESCAPED)" if ref["escaped"] else "")
        rows.append((name, str(mine.stopped_by), mine.seconds, f"{verdict}: {ref['detail']}", ref["seconds"]))
    print(table(rows))
    print(f"\nanything connected to the listener: {connected}")
    print(f"total time to stop: labkit sandbox {sum(r.seconds for r in ours):.2f} s, smolagents "
          f"{sum(r['seconds'] for r in refs):.2f} s (its 9**9**9 row: killed by this script)")
    return {"machine": machine(smolagents=version("smolagents")),
            "executor": f"smolagents.local_python_executor.LocalPythonExecutor(additional_authorized_imports=[], "
                        f"timeout_seconds={TIMEOUT_SECONDS}), a fresh one per attack",
            "connected": connected,
            "attacks": [{"name": name, "code": code, **{k: ref[k] for k in ("outcome", "detail", "pwned", "escaped")},
                         "seconds": round(ref["seconds"], 3)}
                        for (name, code), ref in zip(ATTACKS, refs)]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help=f"write benchmarks/results/{RESULTS.name}")
    args = parser.parse_args()
    results = main()
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
