"""Run untrusted Python — code a model wrote — in a separate process held by the operating system.

An agent that can run code is as dangerous as the code a model (or a prompt injected into it) writes: an infinite
loop, `bytearray(10**12)`, a fork bomb, `open("~/.ssh/id_rsa", "w")`, a socket to the internet. Checking the
*text* of a program cannot work (Python is too dynamic: `getattr(__builtins__, "__imp" + "ort__")("os")`), so
this module lets the program run and puts walls around the *process*, in layers, each tested alone:

1. **A separate process** (`subprocess` with `start_new_session=True`: its own session and process group), so a
   crash, a `MemoryError` or a `SIGKILL` ends the program, never the caller. Python starts in isolated mode
   (`-I`: no PYTHON* variables, no user site, the script's folder not on the path), without `site` (`-S`: the
   standard library only) and without writing bytecode (`-B`), with a scrubbed environment (no tokens or keys
   leak in), stdin from /dev/null, and a fresh temporary folder as its working folder, deleted afterwards.
2. **Resource limits enforced by the kernel** (`resource.setrlimit`, set in the child before the program runs;
   once lowered, a limit can only be raised with privileges the hook below also refuses to use):
   CPU seconds (`RLIMIT_CPU`: SIGXCPU, then SIGKILL a second later), address space (`RLIMIT_AS`: allocation
   fails, Python raises MemoryError), file size (`RLIMIT_FSIZE`: a write past it fails with EFBIG), processes
   (`RLIMIT_NPROC`), open files (`RLIMIT_NOFILE`), no core dumps.
3. **A wall-clock timeout** in the parent: `time.sleep(10**6)` uses no CPU, so the CPU limit never fires; at the
   deadline the parent kills the whole process group (`killpg`), children included, and reaps it — no process is
   left behind, and none is abandoned in a thread. The group is also killed when the program ends by itself, so
   nothing it started outlives it.
4. **An audit hook** (`sys.addaudithook`, PEP 578) installed in the child before the program's first line. The
   interpreter calls it on security-relevant events: `open`, `socket.connect`, `os.fork`, `subprocess.Popen`,
   `import`, `os.remove` ... The hook refuses network (any `socket.*` event), writes, renames, deletions and
   directory creation outside the working folder (paths resolved through `..` and symlinks), links, permission
   changes, writes to device nodes, new processes and `exec`, signals to other processes, raising resource
   limits, `ctypes`, native extensions from anywhere but the interpreter's own folder, crafting code objects,
   tracing hooks and the garbage collector's object walks (reading files is not restricted). A refused event
   ends the program at once (`os._exit`), so a `try/except` around the attack does not help it; the result
   names the event. `import os` stays allowed — what is refused is what `os` would be used to *do*.

The result says which wall stopped a program: `timeout`, `cpu`, `memory`, `file_size`, `processes`,
`open_files`, `forbidden: <event> ...`, `error: <exception>` (the program raised), `exit: <code>`,
`signal: <name>`, or None when it ran to the end; with stdout and stderr (each cut to a bound) and the time from
start to the process reaped — the time to stop. The hook and the bootstrap write their reason on a status pipe
just before the process exits (111 after a refusal, 1 after an exception). The program can find that pipe too,
so the parent reads only the *last* line and believes it only with the exit code that goes with it: a program
cannot make a clean exit look stopped, nor write over the reason for a refusal; it can only mislabel a failure
it causes itself.

**What an audit hook cannot do.** PEP 578 (Python runtime audit hooks) is explicit that hooks give visibility
and are *not* a sandbox. The hook runs inside the process it watches, so a program that corrupts the
interpreter's memory (a crafted `marshal` payload, a bug in a C extension) or reaches the hook's data could
switch it off — which is why the hook never runs any of the program's code, and no name or frame points to it;
events CPython does not audit are invisible to it (`os.mkfifo` and `os.mknod` create a file anywhere with
no event: the child replaces both with a refusal, but a fresh copy of the `posix` module, made with
`importlib.util.module_from_spec`, has them back). This module makes those harder (the hook keeps its state in a
closure no name points to, uses only C functions bound before the program starts, and refuses `gc` walks,
`code.__new__`, `sys.settrace`), but the backstop is the OS: the limits above hold whatever happens inside the
process, the timeout and the group kill hold whatever the process does. What the OS layers here do *not* give:
file-system and network isolation (that takes namespaces, seccomp, a container or a VM — gVisor, Firecracker,
nsjail); and `RLIMIT_NPROC` counts all of a user's processes and does not bind root at all, so as root the
process limit is the hook's and the group kill's job. Run agent code in a container or VM in production.

    run_python("print(2 + 2)")                          Result(stopped_by=None, stdout='4\\n', ...)
    run_python("while True: pass").stopped_by            'cpu'
    run_python("import socket; socket.socket()").stopped_by     "forbidden: socket.__new__ (...)"
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields

MAX_CODE_BYTES = 100_000  # the program travels as one argv string; Linux allows 128 KiB per argument

# Events the hook refuses outright, and prefixes of families of events. Exact names from the audit events
# table of the Python docs (https://docs.python.org/3/library/audit_events.html).
FORBIDDEN_EVENTS = frozenset({
    "os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "subprocess.Popen",
    "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.symlink", "os.link", "os.chmod",
    "os.chown", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "resource.setrlimit",
    "resource.prlimit", "sys.settrace", "sys.setprofile", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "code.__new__", "webbrowser.open", "os.startfile",
})
FORBIDDEN_PREFIXES = ("socket.", "ctypes.")  # every socket operation (even creating one), every ctypes call
# Importing these is refused: each reaches the OS behind the hook's back (_posixsubprocess forks and execs
# without an audit event; subprocess and multiprocessing import it; ctypes calls any C function).
FORBIDDEN_MODULES = frozenset({"ctypes", "_ctypes", "cffi", "_posixsubprocess", "subprocess", "multiprocessing",
                               "_multiprocessing", "_xxsubinterpreters"})
UNAUDITED_CALLS = ("mkfifo", "mknod")  # os functions that create a file with no audit event: replaced in the child
# Events that change the file system: allowed only when every path they name is inside the working folder.
# (CPython turns a path-like into a str before raising these, so the hook sees the path the OS will see; shutil
# works through them too.)
PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.truncate", "os.utime"})


@dataclass(frozen=True)
class Limits:
    """What one run may use. Small by default: a program an agent writes to check an answer needs little."""
    cpu_seconds: int = 2
    wall_seconds: float = 5.0
    memory_bytes: int = 256 * 2**20  # address space; Python itself starts in ~15 MiB
    file_bytes: int = 2**20  # the largest file it may write
    processes: int = 1  # RLIMIT_NPROC: counts every process of the user (see the module docstring)
    open_files: int = 64
    output_bytes: int = 32_000  # stdout and stderr are each cut to this many bytes

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = (int, float) if f.name == "wall_seconds" else (int,)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise TypeError(f"Limits.{f.name} must be {' or '.join(k.__name__ for k in kinds)}, "
                                f"got {type(value).__name__}: {value!r}")
            low = 0 if f.name == "processes" else 1
            if not value >= low:
                raise ValueError(f"Limits.{f.name} must be at least {low}, got {value}")
        if self.memory_bytes < 32 * 2**20:
            raise ValueError(f"Limits.memory_bytes must be at least 32 MiB (the interpreter needs ~15), "
                             f"got {self.memory_bytes}")
        if self.open_files < 8:
            raise ValueError(f"Limits.open_files must be at least 8 (stdin, stdout, stderr, the status pipe, "
                             f"imports), got {self.open_files}")


@dataclass(frozen=True)
class Result:
    """How a run ended. `stopped_by` is None when the program ran to its end with exit code 0."""
    stopped_by: str | None
    exit_code: int | None  # negative: killed by that signal
    stdout: str
    stderr: str
    seconds: float  # wall time from start until the process was reaped: the time to stop
    cpu_seconds: float  # user + system CPU of the program's main process
    truncated: bool  # stdout or stderr was longer than Limits.output_bytes

    @property
    def ok(self) -> bool:
        return self.stopped_by is None


# ------------------------------------------------------------------------------------------------------------
# the child: this text runs as `python -I -S -B -c BOOTSTRAP CONFIG` before the program, in the working folder

BOOTSTRAP = r'''
import json, os, resource, sys


def _make_hook(cfg):
    # The hook must not be steerable by the program. Every function it calls is bound here, before the program
    # can patch a module (os.lstat = ..., posixpath.realpath = ...); its state lives in this closure, and once
    # this function returns no frame or name points to that closure (only the interpreter's list of hooks).
    root, status_fd = cfg["root"], cfg["status_fd"]
    # native extensions may load only from the interpreter's own folder of them (where `resource` came from): a
    # program that writes a .so into its folder and imports it would run machine code the hook never sees
    dynload = os.path.dirname(os.path.realpath(resource.__file__))
    forbidden, prefixes = frozenset(cfg["forbidden"]), tuple(cfg["prefixes"])
    modules, path_events = frozenset(cfg["modules"]), frozenset(cfg["path_events"])
    lstat, readlink, getcwd, write, exit_now = os.lstat, os.readlink, os.getcwd, os.write, os._exit
    out, err = sys.stdout, sys.stderr
    writing = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    str_, bytes_, int_ = str, bytes, int

    def stop(what):
        for stream in (out, err):
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            write(status_fd, ("forbidden: " + what)[:500].encode("utf-8", "replace") + b"\n")
        finally:
            exit_now(111)

    def text(path, event):  # an exact str for a path argument, None for a file descriptor
        kind = type(path)
        if kind is int_:
            return None
        if kind is bytes_:
            return bytes_.decode(path, "utf-8", "surrogateescape")
        if kind is not str_:  # CPython passes str (path-likes converted); never run the program's code here
            stop("%s with a %s path" % (event, kind.__name__))
        return path

    def resolve(path, dir_fd):  # absolute, '..' folded, every symlink followed (like os.path.realpath)
        if not path.startswith("/"):
            base = getcwd() if dir_fd is None or dir_fd < 0 else readlink("/proc/self/fd/%d" % dir_fd)
            path = base + "/" + path
        todo, done, hops = path.split("/")[::-1], "", 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                done = done[:done.rfind("/")]
                continue
            here = done + "/" + name
            try:
                mode = lstat(here).st_mode
            except OSError:  # not there yet (a file being created): the name itself
                done = here
                continue
            if mode & 0o170000 == 0o120000:  # a symlink: continue from its target
                hops += 1
                if hops > 40:
                    return None
                target = readlink(here)
                if target.startswith("/"):
                    done = ""
                todo.extend(target.split("/")[::-1])
            else:
                done = here
        return done or "/"

    def inside(path, event, dir_fd=None, folder=None):
        path = text(path, event)
        if path is None:
            return True  # an open descriptor: only the folder's files or stdio can be open for writing
        where, folder = resolve(path, dir_fd), folder or root
        if where is None or not (where == folder or where.startswith(folder + "/")):
            return False
        try:  # a device node (root may mknod one, with no audit event) opened for writing reaches the hardware
            return lstat(where).st_mode & 0o170000 not in (0o020000, 0o060000)
        except OSError:
            return True

    def hook(event, args):
        if event in forbidden or event.startswith(prefixes):
            stop(event + " " + repr(args)[:200])
        elif event == "import":
            if args[0].partition(".")[0] in modules:
                stop("import " + args[0])
            if args[1] is not None and not inside(args[1], event, folder=dynload):  # a native extension's file
                stop("import of native code from %r" % (args[1],))
        elif event == "open":
            path, mode, flags = args
            if (flags or 0) & writing or (mode is not None and any(c in mode for c in "wax+")):
                if mode is None and type(path) is str_ and not path.startswith("/"):
                    # os.open may carry a dir_fd the event does not show: relative writes go through open()
                    stop("open %r for writing: os.open needs an absolute path here" % (path,))
                if not inside(path, "open"):
                    stop("open %r for writing: not a file in the working folder" % (path,))
        elif event in path_events:
            if event in ("os.remove", "os.rmdir", "os.mkdir"):
                ok = inside(args[0], event, args[-1])
            elif event == "os.rename":
                ok = inside(args[0], event, args[2]) and inside(args[1], event, args[3])
            else:  # os.truncate, os.utime: (path or fd, ...)
                ok = inside(args[0], event)
            if not ok:
                stop(event + " outside the working folder: " + repr(args)[:200])

    return hook


def _sandbox():
    cfg = json.loads(sys.argv[1])
    code, status_fd, lim = cfg["code"], cfg["status_fd"], cfg["limits"]
    sys.argv[:] = ["main.py"]
    # 1. kernel limits, before anything of the program runs
    cpu = lim["cpu_seconds"]
    for which, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_CORE, 0, 0),
                              (resource.RLIMIT_AS, lim["memory_bytes"], lim["memory_bytes"]),
                              (resource.RLIMIT_FSIZE, lim["file_bytes"], lim["file_bytes"]),
                              (resource.RLIMIT_NPROC, lim["processes"], lim["processes"]),
                              (resource.RLIMIT_NOFILE, lim["open_files"], lim["open_files"])):
        ceiling = resource.getrlimit(which)[1]  # never above the current hard limit (only root may raise it)
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))
    # 2. the audit hook; and the two calls that create a file with no audit event (a FIFO, or with mknod an empty
    # file or a device node, anywhere): taken out of os, since the hook would never see them
    import posix

    def unaudited(*args, **kwargs):
        raise PermissionError("not allowed in the sandbox: CPython raises no audit event for this call")

    for name in cfg["unaudited"]:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, unaudited)
    sys.addaudithook(_make_hook(cfg))
    write, exit_now, out, err = os.write, os._exit, sys.stdout, sys.stderr
    # 3. the program, as __main__; an uncaught exception is reported with the limit it means
    program = compile(code, "main.py", "exec")
    try:
        exec(program, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit:
        raise
    except BaseException as e:
        reason = "error: " + type(e).__name__
        if isinstance(e, MemoryError):
            reason = "memory"
        elif isinstance(e, OSError) and e.errno == 27:  # EFBIG: RLIMIT_FSIZE (Python ignores SIGXFSZ)
            reason = "file_size"
        elif isinstance(e, OSError) and e.errno in (23, 24):  # ENFILE, EMFILE: RLIMIT_NOFILE
            reason = "open_files"
        elif isinstance(e, OSError) and e.errno == 11 or "can't start new thread" in str(e):
            reason = "processes"  # EAGAIN from fork, or no thread: RLIMIT_NPROC
        try:
            write(status_fd, reason.encode() + b"\n")
            e.__traceback__ = e.__traceback__.tb_next  # start at the program's first line, not here
            sys.__excepthook__(type(e), e, e.__traceback__)
        finally:
            for stream in (out, err):
                try:
                    stream.flush()
                except BaseException:
                    pass
            exit_now(1)


_sandbox()
'''


# ------------------------------------------------------------------------------------------------------------
# the parent

def _check(code: object, limits: object, allow: object) -> tuple[str, Limits, frozenset[str]]:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str of Python source, got {type(code).__name__}: {code!r:.80}")
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_CODE_BYTES:
        raise ValueError(f"code is {size} bytes; at most {MAX_CODE_BYTES}")
    limits = Limits() if limits is None else limits
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a sandbox.Limits, got {type(limits).__name__}")
    if isinstance(allow, str) or not isinstance(allow, Iterable):
        raise TypeError(f"allow must be a collection of event names, got {type(allow).__name__}: {allow!r:.80}")
    allow = frozenset(allow)
    unknown = allow - FORBIDDEN_EVENTS
    if unknown:
        raise ValueError(f"allow names events the hook does not refuse: {sorted(unknown)}; "
                         f"choose from {sorted(FORBIDDEN_EVENTS)}")
    return code, limits, allow


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is already gone
        pass


_LIMIT_ERRORS = ("memory", "file_size", "open_files", "processes")  # what the bootstrap reports with exit code 1


def _reason(timed_out: bool, status: bytes, exit_code: int, cpu: float, limits: Limits) -> str | None:
    if timed_out:
        return "timeout"
    if exit_code == 0:
        return None  # it ended by itself; any status line was the program's own writing
    # the last line: the hook and the bootstrap write theirs just before the process exits, after anything the
    # program wrote there; and only with the exit code that goes with it
    lines = [ln.strip() for ln in status.decode("utf-8", "replace").splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    if exit_code == 111 and line.startswith("forbidden: "):
        return line
    if exit_code == 1 and (line in _LIMIT_ERRORS or line.startswith("error: ")):
        return line
    if exit_code == -signal.SIGXCPU or (exit_code == -signal.SIGKILL and cpu >= limits.cpu_seconds):
        return "cpu"  # SIGXCPU at the soft limit; SIGKILL at the hard one if the program ignored SIGXCPU
    if exit_code < 0:
        return f"signal: {signal.Signals(-exit_code).name}"
    return f"exit: {exit_code}"


def run_python(code: str, limits: Limits | None = None, *, allow: Iterable[str] = ()) -> Result:
    """Run `code` as a Python program in a fresh sandbox (see the module docstring) and say how it ended.

    `allow` names events of FORBIDDEN_EVENTS the hook should let through — only to show, in a test or a lesson,
    that the OS layer stops the same attack on its own (e.g. allow={"os.fork"} for the process limit)."""
    code, limits, allow = _check(code, limits, allow)
    folder = tempfile.mkdtemp(prefix="labkit-sandbox-")
    root = os.path.realpath(folder)
    status_r, status_w = os.pipe()
    config = json.dumps({
        "code": code, "root": root, "status_fd": status_w,
        "limits": {f.name: getattr(limits, f.name) for f in fields(limits)},
        "forbidden": sorted(FORBIDDEN_EVENTS - allow), "prefixes": list(FORBIDDEN_PREFIXES),
        "modules": sorted(FORBIDDEN_MODULES), "path_events": sorted(PATH_EVENTS),
        "unaudited": list(UNAUDITED_CALLS)})
    env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LC_ALL": "C.UTF-8"}
    start, proc = time.monotonic(), None
    try:
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP, config], cwd=root,
                                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(status_w,), start_new_session=True)
        finally:
            os.close(status_w)  # the child holds its copy; ours would keep the status pipe from ever closing
        return _supervise(proc, status_r, limits, start)
    finally:
        if proc is not None:
            _kill_group(proc.pid)  # also when the caller is interrupted (KeyboardInterrupt) mid-run
        os.close(status_r)
        shutil.rmtree(folder, ignore_errors=True)


def _supervise(proc: subprocess.Popen, status_r: int, limits: Limits, start: float) -> Result:
    """Read the pipes (keeping at most output_bytes of each) until the program ends or the deadline passes;
    then kill its process group and reap it."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    keep = {out_fd: bytearray(), err_fd: bytearray(), status_r: bytearray()}
    bounds = {out_fd: limits.output_bytes, err_fd: limits.output_bytes, status_r: 4096}
    truncated, timed_out, reaped = False, False, None
    deadline = start + limits.wall_seconds
    with selectors.DefaultSelector() as sel:
        for fd in keep:
            sel.register(fd, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select(timeout=0.02):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                if key.fd == status_r:  # the last line counts (see _reason): keep the tail, not the head
                    keep[key.fd] = (keep[key.fd] + chunk)[-bounds[key.fd]:]
                    continue
                room = bounds[key.fd] - len(keep[key.fd])
                truncated |= len(chunk) > room
                keep[key.fd] += chunk[:max(room, 0)]  # keep draining past the bound, so the child never blocks
            if reaped is None:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    reaped = (status, usage)
                    _kill_group(proc.pid)  # whatever it started dies with it; pipes they held then close
                    drained_by = time.monotonic() + 1.0
                elif time.monotonic() >= deadline:
                    timed_out = True
                    _kill_group(proc.pid)
                    _, status, usage = os.wait4(proc.pid, 0)
                    reaped = (status, usage)
                    drained_by = time.monotonic() + 1.0
            if reaped is not None and (not sel.get_map() or time.monotonic() >= drained_by):
                break
    status, usage = reaped
    seconds = time.monotonic() - start
    exit_code = os.waitstatus_to_exitcode(status)
    proc.returncode = exit_code  # reaped here with wait4 (for its CPU time); tell Popen
    cpu = usage.ru_utime + usage.ru_stime
    proc.stdout.close()
    proc.stderr.close()
    return Result(stopped_by=_reason(timed_out, bytes(keep[status_r]), exit_code, cpu, limits),
                  exit_code=exit_code, stdout=keep[out_fd].decode("utf-8", "replace"),
                  stderr=keep[err_fd].decode("utf-8", "replace"), seconds=seconds, cpu_seconds=cpu,
                  truncated=truncated)
