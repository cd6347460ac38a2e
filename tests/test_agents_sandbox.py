"""labkit.agents.sandbox: a test per limit, per attack of the chapter's safety list (each with the reason it was
stopped), the process group killed with nothing left behind, clear errors for bad arguments — and the reference
row: the same attacks against smolagents' LocalPythonExecutor (tests/agents_reference.py), with what it stops,
and the copy of that row the tools lesson prints (benchmarks/results/agent_attacks.json) kept current."""
import json
import os
import re
import resource
import socket
import sys
import time
from pathlib import Path

import pytest

from labkit.agents.calculator import calculator
from labkit.agents.sandbox import FORBIDDEN_EVENTS, Limits, Result, run_python

sys.path.insert(0, str(Path(__file__).parent))
from agents_reference import ATTACKS, smolagents_outcomes  # noqa: E402

# Small limits keep the file fast; the CPU-bound cases get a generous wall clock so that on a loaded machine the
# CPU limit (1 s of CPU) still fires before the timeout does.
SMALL = Limits(cpu_seconds=1, wall_seconds=20, memory_bytes=128 * 2**20, file_bytes=64 * 2**10, open_files=32)
ROOT = os.geteuid() == 0


def _normal_program_still_runs():
    result = run_python("print(6 * 7)", SMALL)
    assert (result.stopped_by, result.stdout) == (None, "42\n")


def _gone(pid: int, within: float = 5.0) -> bool:
    """True once the process is dead: no /proc entry, or a zombie (killed, waiting for init to reap it)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------- normal programs

def test_a_normal_program_runs_and_reports_how_it_ended():
    code = ("import os, json, re, collections, pathlib\n"
            "open('a.txt', 'w').write('hi')\nos.mkdir('d')\nos.rename('a.txt', 'd/b.txt')\n"
            "pathlib.Path('d/c.txt').write_text('ok')\nos.remove('d/c.txt')\n"
            "print(open('d/b.txt').read(), os.listdir('d'), collections.Counter('aab')['a'])")
    result = run_python(code, SMALL)
    assert isinstance(result, Result) and result.ok
    assert (result.stopped_by, result.exit_code, result.stdout, result.stderr) == (None, 0, "hi ['b.txt'] 2\n", "")
    assert 0 < result.cpu_seconds < 1 and 0 < result.seconds < 20 and not result.truncated


def test_isolated_interpreter_scrubbed_environment_and_a_fresh_folder_deleted_afterwards(monkeypatch):
    monkeypatch.setenv("LABKIT_TEST_SECRET", "hunter2")
    code = ("import os, sys\nprint(sorted(os.environ), sys.flags.isolated, sys.flags.no_site, os.listdir('.'))\n"
            "print(os.getcwd())")
    result = run_python(code, SMALL)
    first, folder = result.stdout.splitlines()
    assert first == "['HOME', 'LC_ALL', 'PATH', 'TMPDIR'] 1 1 []"
    assert "labkit-sandbox-" in folder and not Path(folder).exists()


def test_an_uncaught_exception_exit_code_and_crash_are_reported():
    error = run_python("1 / 0", SMALL)
    assert error.stopped_by == "error: ZeroDivisionError" and error.exit_code == 1
    assert error.stderr.startswith('Traceback (most recent call last):\n  File "main.py", line 1')
    assert run_python("import sys; sys.exit(3)", SMALL).stopped_by == "exit: 3"
    crash = run_python("import faulthandler; faulthandler._sigsegv()", SMALL)  # the child dies, not the caller
    assert (crash.stopped_by, crash.exit_code) == ("signal: SIGSEGV", -11)
    _normal_program_still_runs()


def test_output_is_cut_to_the_bound_and_the_program_is_not_blocked():
    result = run_python("import sys\nprint('x' * 10**6)\nprint('e' * 10**6, file=sys.stderr)\nprint('done')",
                        Limits(output_bytes=1000))
    assert result.ok and result.truncated
    assert result.stdout == "x" * 1000 and result.stderr == "e" * 1000


# ---------------------------------------------------------------------------------------------- a test per limit

def test_timeout_a_sleeping_program_uses_no_cpu_and_is_killed_at_the_deadline():
    result = run_python("import time\ntime.sleep(60)", Limits(wall_seconds=1.0))
    assert (result.stopped_by, result.exit_code) == ("timeout", -9)
    assert 1.0 <= result.seconds < 10 and result.cpu_seconds < 0.5


def test_timeout_kills_the_whole_process_group_nothing_is_left():
    code = ("import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(60)\n    os._exit(0)\n"
            "print(os.getpid(), pid, flush=True)\ntime.sleep(60)")
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]  # a user's processes all count: leave room for one
    limits = Limits(wall_seconds=1.5, processes=4096 if nproc == resource.RLIM_INFINITY else min(nproc, 4096))
    result = run_python(code, limits, allow={"os.fork"})  # only here: a child for the group kill to find
    assert result.stopped_by == "timeout"
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 2 and all(_gone(p) for p in pids), pids


def test_cpu_limit_stops_an_infinite_loop():
    result = run_python("while True:\n    pass", SMALL)
    assert (result.stopped_by, result.exit_code) == ("cpu", -24)  # SIGXCPU at the soft limit
    assert result.cpu_seconds > 0.5  # (rusage samples CPU time at clock ticks: it reads a little under 1 s)


def test_cpu_limit_holds_when_the_program_ignores_sigxcpu():
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    result = run_python(code, SMALL)
    assert (result.stopped_by, result.exit_code) == ("cpu", -9)  # SIGKILL at the hard limit, a second later
    assert result.cpu_seconds > 1.0  # it ran past the soft limit


def test_memory_limit():
    result = run_python("x = bytearray(512 * 2**20)\nprint('allocated')", SMALL)
    assert result.stopped_by == "memory" and result.stdout == ""
    assert result.stderr.rstrip().endswith("MemoryError")
    assert run_python("x = bytearray(32 * 2**20)\nprint(len(x))", SMALL).stdout == f"{32 * 2**20}\n"


def test_file_size_limit():
    result = run_python("open('big', 'wb').write(b'x' * (1 << 20))", SMALL)
    assert result.stopped_by == "file_size" and "File too large" in result.stderr
    assert run_python("open('small', 'wb').write(b'x' * 1000)", SMALL).ok


def test_open_files_limit():
    result = run_python("files = [open(f'f{i}', 'w') for i in range(100)]", SMALL)
    assert result.stopped_by == "open_files" and "Too many open files" in result.stderr


def test_process_limit_is_enforced_by_the_kernel_too():
    """With the hook's os.fork rule switched off, RLIMIT_NPROC alone stops a fork loop. The limit counts a
    user's processes and does not bind root, so as root the program first becomes `nobody` (a user with no
    other processes here); the loop is bounded (20) in case the limit did not hold."""
    code = ("import os, time\n"
            "if os.geteuid() == 0:\n    os.setgid(65534)\n    os.setuid(65534)\n"
            "for _ in range(20):\n    pid = os.fork()\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
            "    print(pid, flush=True)")
    result = run_python(code, Limits(processes=3, wall_seconds=10), allow={"os.fork"})
    assert result.stopped_by == "processes", result
    assert "BlockingIOError" in result.stderr
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) <= 3 if ROOT else len(pids) < 20
    assert all(_gone(p) for p in pids)  # the children it made die with the group


# ------------------------------------------------------------------------------------ the attack list, each stopped

EXPECTED = {  # attack -> the reason the sandbox gives (a regex), and why
    "__import__('os')": r"forbidden: os\.system \(b'echo pwned',\)",  # import os is allowed, its side effects not
    "import from concatenated strings": r"forbidden: os\.system",  # the name does not matter, the event does
    "getattr chain to globals": r"forbidden: os\.system",
    "ctypes": r"forbidden: import ctypes",  # the module itself is refused: it reaches any C function
    "decorator trick": r"forbidden: os\.system",
    "exec of hidden text": r"forbidden: os\.system",
    # subprocess can never be imported in the sandbox, so Popen is not among object's subclasses to find
    "dunder walk to subprocess.Popen": r"error: IndexError",
    "dunder walk to os.system": r"forbidden: os\.system",
    "9**9**9": r"cpu|timeout",  # the big power is computed: the CPU limit stops it (the timeout on a loaded machine)
    "'+0' * 200000": r"error: RecursionError",  # Python's compiler refuses the 200000-deep tree
    "deep recursion": r"error: RecursionError",  # Python's own recursion limit
    "path traversal ../../": r"forbidden: open '\.\./\.\./escape\.txt' for writing: not a file in the working folder",
    "symlink out of the folder": r"forbidden: os\.symlink",
    "fork bomb": r"forbidden: os\.fork",
    "memory hog": r"memory",
    "infinite loop": r"cpu|timeout",
    "socket to 127.0.0.1": r"forbidden: socket\.__new__",
}


def test_every_attack_has_an_expected_reason():
    assert sorted(name for name, _ in ATTACKS) == sorted(EXPECTED) == sorted(SMOLAGENTS)


@pytest.fixture
def listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


@pytest.mark.parametrize("name, code", ATTACKS, ids=[name for name, _ in ATTACKS])
def test_attack_is_stopped_and_the_sandbox_still_runs_afterwards(name, code, listener):
    program = code.replace("{port}", str(listener.getsockname()[1]))
    result = run_python(program, SMALL)
    assert result.stopped_by is not None and re.match(EXPECTED[name], result.stopped_by), result
    assert "pwned" not in result.stdout.split()  # the payload (echo pwned) never ran
    with pytest.raises(BlockingIOError):  # no connection ever reached the listener
        listener.accept()
    _normal_program_still_runs()


FORGE = "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, {text!r})\n    except OSError:\n        pass\n"


@pytest.mark.parametrize("text, then, reason", [
    (b"memory\n", "print('done')", None),  # a clean exit is never reported as stopped
    (b"forbidden: nothing\n", "", None),
    (b"memory\n", "import os\nos.system('echo pwned')", "forbidden: os.system (b'echo pwned',)"),  # the hook's line is last
    (b"x" * 10_000 + b"\n", "import os\nos.system('echo pwned')", "forbidden: os.system"),  # more than the 4096 kept
    (b"cpu\n", "raise KeyError(1)", "error: KeyError"),
    (b"forbidden: fake\n", "import sys\nsys.exit(1)", "exit: 1"),  # a line that does not go with the exit code
])
def test_the_program_cannot_forge_the_reason(text, then, reason):
    """The status pipe is inherited by the program (it can find it by trying descriptors): once the reason was its
    first line, so a program could report a clean run as 'memory' or hide the hook's refusal behind its own line."""
    result = run_python(FORGE.format(text=text) + then, SMALL)
    if reason is None:
        assert result.stopped_by is None and result.exit_code == 0, result
    else:
        assert result.stopped_by is not None and result.stopped_by.startswith(reason), result
    assert "pwned" not in result.stdout.split()


def test_catching_the_refusal_does_not_help():
    code = "import os\ntry:\n    os.system('echo pwned')\nexcept BaseException:\n    pass\nprint('continued')"
    result = run_python(code, SMALL)
    assert result.stopped_by == "forbidden: os.system (b'echo pwned',)" and result.stdout == ""


@pytest.mark.parametrize("code, reason", [
    ("open('/tmp/labkit-escape', 'w')", r"forbidden: open '/tmp/labkit-escape' for writing: not a file in the"),
    ("open('/proc/self/cwd/../labkit-escape', 'a')", r"forbidden: open .* not a file in"),  # a symlink in the path
    ("open('/proc/self/mem', 'wb')", r"forbidden: open '/proc/self/mem'"),  # patching its own memory
    ("import os\nos.open('/tmp/labkit-escape', os.O_WRONLY | os.O_CREAT)", r"forbidden: open .* not a file in"),
    ("import os\nos.open('x', os.O_WRONLY | os.O_CREAT)", r"forbidden: open 'x' for writing: os\.open needs"),
    ("import os\nos.rename('/etc/hostname', 'h')", r"forbidden: os\.rename outside"),
    ("import os\nos.remove('/tmp/labkit-escape')", r"forbidden: os\.remove outside"),
    ("import os\nos.mkdir('../labkit-escape')", r"forbidden: os\.mkdir outside"),
    ("import os\nos.chmod('.', 0o777)", r"forbidden: os\.chmod"),
    ("import os\nos.kill(os.getppid(), 9)", r"forbidden: os\.kill"),  # the caller survives: this test runs on
    ("import os\nos.execv('/bin/sh', ['sh'])", r"forbidden: os\.exec"),
    ("import subprocess", r"forbidden: import subprocess"),
    ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))", r"forbidden: resource\.setrlimit"),
    ("import gc\ngc.get_objects()", r"forbidden: gc\.get_objects"),  # how a program would find the hook
    ("import sys\nsys.settrace(lambda *a: None)", r"forbidden: sys\.settrace"),
    ("(lambda: 0).__code__.replace(co_code=b'')", r"forbidden: code\.__new__"),  # crafted bytecode
    ("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')", r"forbidden: socket\."),
    # calls that create a file with no audit event at all (they once made /tmp/labkit-escape): taken out of os
    ("import os\nos.mkfifo('/tmp/labkit-escape')", r"error: PermissionError"),
    ("import os, stat\nos.mknod('/tmp/labkit-escape', stat.S_IFREG | 0o600)", r"error: PermissionError"),
    ("import posix\nposix.mkfifo('/tmp/labkit-escape')", r"error: PermissionError"),
])
def test_more_escapes_are_refused(code, reason):
    result = run_python(code, SMALL)
    assert result.stopped_by is not None and re.match(reason, result.stopped_by), result
    assert not Path("/tmp/labkit-escape").exists()


def test_the_calculator_refuses_the_long_input_before_parsing():
    assert calculator("+0" * 200000) == "error: too long: 400000 characters (at most 1000)"


def test_deep_recursion_with_the_limit_raised_is_stopped_by_a_limit():
    """sys.setrecursionlimit has no audit event; the frames then grow until the memory or CPU limit ends it
    (CPython 3.11 keeps Python frames off the C stack, so there is no stack overflow to wait for)."""
    code = "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)"
    result = run_python(code, Limits(cpu_seconds=2, wall_seconds=20, memory_bytes=64 * 2**20))
    assert result.stopped_by in ("memory", "error: SystemError", "error: MemoryError", "cpu", "timeout"), result
    _normal_program_still_runs()


# ---------------------------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(code=123), TypeError, "code must be a str of Python source, got int"),
    (dict(code="x" * 100_001), ValueError, "code is 100001 bytes; at most 100000"),
    (dict(code="1", limits="fast"), TypeError, "limits must be a sandbox.Limits, got str"),
    (dict(code="1", allow="os.fork"), TypeError, "allow must be a collection of event names, got str"),
    (dict(code="1", allow={"open"}), ValueError, r"allow names events the hook does not refuse: \['open'\]"),
])
def test_bad_arguments_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        run_python(**kwargs)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(cpu_seconds=0), ValueError, "Limits.cpu_seconds must be at least 1, got 0"),
    (dict(cpu_seconds=1.5), TypeError, "Limits.cpu_seconds must be int, got float: 1.5"),
    (dict(wall_seconds=True), TypeError, "Limits.wall_seconds must be int or float, got bool"),
    (dict(memory_bytes=2**20), ValueError, "Limits.memory_bytes must be at least 32 MiB"),
    (dict(open_files=3), ValueError, "Limits.open_files must be at least 8"),
    (dict(processes=-1), ValueError, "Limits.processes must be at least 0, got -1"),
])
def test_bad_limits_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        Limits(**kwargs)


def test_allowed_events_are_exactly_the_forbidden_ones():
    assert "os.fork" in FORBIDDEN_EVENTS and "open" not in FORBIDDEN_EVENTS


# ------------------------------------------------------------------ the reference row: smolagents' LocalPythonExecutor

SMOLAGENTS = {  # attack -> (what LocalPythonExecutor did, a regex of its message): observed with smolagents 1.26.0
    "__import__('os')": ("refused", r"InterpreterError: Forbidden function evaluation: '__import__'"),
    "import from concatenated strings": ("refused", r"InterpreterError: Import of importlib is not allowed"),
    "getattr chain to globals": ("refused", r"InterpreterError: Forbidden access to dunder attribute: __globals__"),
    "ctypes": ("refused", r"InterpreterError: Import of ctypes is not allowed"),
    # it runs the class statement but never applies the decorators: the payload does not run
    "decorator trick": ("ran", r"<class 'smolagents\.local_python_executor\.X'>"),
    "exec of hidden text": ("refused", r"InterpreterError: Forbidden function evaluation: 'exec'"),
    "dunder walk to subprocess.Popen": ("refused", r"InterpreterError: Forbidden access to dunder attribute"),
    "dunder walk to os.system": ("refused", r"InterpreterError: Forbidden access to dunder attribute"),
    # one C-level multiplication holds the interpreter: its thread-based timeout never fires; the caller kills it
    "9**9**9": ("killed", r"still running after"),
    "'+0' * 200000": ("refused", r"InterpreterError: Forbidden function evaluation: 'eval'"),
    "deep recursion": ("refused", r"RecursionError"),
    "path traversal ../../": ("refused", r"InterpreterError: Forbidden function evaluation: 'open'"),
    "symlink out of the folder": ("refused", r"InterpreterError: Import of os is not allowed"),
    "fork bomb": ("refused", r"InterpreterError: Import of os is not allowed"),
    "memory hog": ("refused", r"InterpreterError: Forbidden function evaluation: 'bytearray'"),
    "socket to 127.0.0.1": ("refused", r"InterpreterError: Import of socket is not allowed"),
    # stopped in-process by its cap of 1,000,000 while-iterations; its 2 s timeout runs the program in a worker
    # thread and, when time is up, still waits for that thread (a Python thread cannot be killed), so the
    # ExecutionTimeoutError comes only once the cap ends the loop — or the cap's own message on a fast machine
    "infinite loop": ("refused", r"ExecutionTimeoutError: Code execution exceeded the maximum execution time|"
                                 r"InterpreterError: Maximum number of 1000000 iterations in While loop exceeded"),
}


@pytest.fixture(scope="module")
def reference():
    """Every attack through LocalPythonExecutor (timeout 2 s), in one child process (smolagents is slow to
    import); 9**9**9 alone in another, since nothing stops it but killing that process."""
    pytest.importorskip("smolagents")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = str(server.getsockname()[1])
        names = [name for name, _ in ATTACKS if name != "9**9**9"]
        codes = {name: code.replace("{port}", port) for name, code in ATTACKS}
        outcomes = dict(zip(names, smolagents_outcomes([codes[n] for n in names], wall_seconds=60)))
        outcomes["9**9**9"] = smolagents_outcomes([codes["9**9**9"]], wall_seconds=4)[0]
        with pytest.raises(BlockingIOError):  # nothing connected to the listener
            server.accept()
    return outcomes


@pytest.mark.parametrize("name", list(SMOLAGENTS))
def test_reference_row_smolagents_local_python_executor(name, reference):
    outcome, detail = SMOLAGENTS[name]
    got = reference[name]
    assert (got["outcome"], bool(re.search(detail, got["detail"]))) == (outcome, True), got
    assert not got["pwned"] and not got["escaped"]  # no attack's payload ran there either
    assert got["outcome"] == COMMITTED[name]["outcome"]  # the row the lesson prints is what smolagents does now


# The tools lesson (chapters/13-agents/tools.ipynb) may not import smolagents: it prints this file, written by
# `python benchmarks/agent_attacks.py --save`, and runs the attacks it lists through labkit's sandbox live.
SAVED = json.loads((Path(__file__).parents[1] / "benchmarks/results/agent_attacks.json").read_text())
COMMITTED = {a["name"]: a for a in SAVED["attacks"]}


def test_the_committed_reference_row_is_current():
    assert [(a["name"], a["code"]) for a in SAVED["attacks"]] == ATTACKS  # the same programs, in the same order
    try:
        from importlib.metadata import version
        assert SAVED["machine"]["smolagents"] == version("smolagents"), "re-run benchmarks/agent_attacks.py --save"
    except ImportError:
        pass
    for name, (outcome, detail) in SMOLAGENTS.items():
        got = COMMITTED[name]
        assert (got["outcome"], bool(re.search(detail, got["detail"]))) == (outcome, True), got
        assert not got["pwned"] and not got["escaped"] and got["seconds"] >= 0
    assert SAVED["connected"] is False


def test_native_code_and_device_nodes_are_refused():
    """Two classic ways past an audit hook: load machine code the hook never sees (a .so written into the
    folder), and write to hardware through a device node (root may mknod one; mknod has no audit event)."""
    import _bisect  # a small extension module of the standard library, copied into the sandbox's folder

    name = Path(_bisect.__file__).name  # e.g. _bisect.cpython-311-x86_64-linux-gnu.so
    code = (f"import sys\nopen({name!r}, 'wb').write(open({_bisect.__file__!r}, 'rb').read())\n"
            "sys.path.insert(0, '.')\nimport _bisect")
    result = run_python(code, Limits(file_bytes=2**20))
    assert re.match(r"forbidden: import of native code from '.*_bisect", result.stopped_by), result
    assert run_python("import _bisect, math\nprint(math.sqrt(4))", SMALL).stdout == "2.0\n"  # the stdlib's own
    code = "import os, stat\nos.mknod('null', stat.S_IFCHR | 0o600, os.makedev(1, 3))"
    assert run_python(code, SMALL).stopped_by == "error: PermissionError"  # os.mknod is taken out of os
    if ROOT:  # a fresh copy of the posix module has mknod back (the docstring's known gap): the open rule holds
        code = ("import importlib.util, os, stat\n"
                "posix = importlib.util.module_from_spec(importlib.util.find_spec('posix'))\n"
                "posix.mknod('null', stat.S_IFCHR | 0o600, os.makedev(1, 3))\nopen('null', 'w')")
        result = run_python(code, SMALL)
        assert result.stopped_by == "forbidden: open 'null' for writing: not a file in the working folder", result


def test_deleting_a_folder_outside_is_refused_and_it_survives(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    result = run_python(f"import shutil\nshutil.rmtree({str(victim)!r})", SMALL)  # unlinks by dir_fd + name
    assert re.match(r"forbidden: os\.(remove|rmdir) outside the working folder", result.stopped_by), result
    assert (victim / "keep.txt").read_text() == "precious"


def test_the_hook_is_out_of_the_programs_reach():
    """No frame below the program and no module attribute holds the hook or the closure it reads (the folder,
    the refused events): the program can only see the bootstrap's plain settings."""
    code = ("import sys\nframe = sys._getframe().f_back\nprint(sorted(frame.f_locals))\n"
            "print(sorted(k for k in vars(sys.modules['__main__']) if not k.startswith('__')))")
    frame_names, module_names = run_python(code, SMALL).stdout.splitlines()
    for name in ("hook", "stop", "inside", "resolve", "root", "forbidden"):
        assert f"'{name}'" not in frame_names + module_names
    assert module_names == "['_make_hook', '_sandbox', 'json', 'os', 'resource', 'sys']"
