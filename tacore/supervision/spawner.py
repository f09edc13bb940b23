"""Start worker processes from a spawner process that runs no thread: the one place that forks.

The daemon runs libzmq's I/O threads, and a process with threads must not fork (a lock another
thread holds stays locked in the child for good; Python 3.12+ warns, 3.14 changes the default).
So the daemon never forks a worker. When it starts, before any ZeroMQ context exists, it runs
a *spawner*: a fork of itself, made while it has no thread, which holds the configured
handlers' libraries (the configuration check imported them) and then only forks workers on
request. A spawner started later (the first one died) is ``python -m
tacore.supervision.spawner``, a fresh interpreter (fork + exec is safe from any process) that
imports them itself. Each worker is the spawner's
child and still imports the operator's own code afresh (``runtime/loader.py``).

    daemon ──socketpair (SOCK_SEQPACKET, JSON)──▶ spawner ──fork──▶ worker, worker, ...

Messages are one JSON object per datagram, descriptors travel as SCM_RIGHTS:

    daemon → spawner   {"preload": [...], "sys_path": [...]}     once, first
                       {"spawn": SEQ, "spec": {...}}             a WorkerSpec's fields
    spawner → daemon   {"ready": PID}                            preloading done
                       {"spawned": SEQ, "pid": PID, "forked_at": MONOTONIC}
                         + [pidfd, the read ends of the stack, stdout and stderr pipes]
                       {"spawned": SEQ, "error": "..."}          the fork failed
                       {"exited": PID, "status": WAITSTATUS}     it reaped a worker

Lifetimes: the spawner dies with the daemon, and each worker with the spawner
(PR_SET_PDEATHSIG = SIGKILL, checked against the parent's pid after it is set), so SIGKILL of
the daemon leaves nothing. The daemon polls each worker's pidfd (readable once the worker has
exited, though it is not the daemon's child) and takes its exit status from the spawner. A
spawner that dies takes its workers with it: their pidfds fire, their exits are "spawner_died"
failures (the restart policy applies), and the daemon starts a new spawner before it starts
anyone again.
"""

from __future__ import annotations

import array
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field

import psutil

from tacore.supervision.stacks import StackReader

MAX_MESSAGE = 1 << 20  # a spec with its service config; larger is refused when sent
REPLY_TIMEOUT = 10.0  # seconds to wait for the spawner's answer (a fork takes milliseconds)
EXIT_STATUS_WAIT = 1.0  # after a pidfd fired, how long the spawner may take to report it
PR_SET_PDEATHSIG = 1


class SpawnerGone(OSError):
    """The spawner process is not there (it died, or did not answer)."""


@dataclass
class WorkerProcess:
    """One incarnation of a worker slot: its process and what the daemon knows of it."""

    pid: int
    identity: bytes
    sentinel: int  # a pidfd: readable once the process has exited
    stack: StackReader
    started: float  # monotonic, at the fork
    spawn_seconds: float
    ps: psutil.Process | None = None  # for CPU and memory figures
    dump: object = None  # a stack dump in progress (the supervisor's Dump)
    frozen: bool = False  # seen stopped (SIGSTOP) when a dump was asked for
    # Set when the daemon decides to stop it:
    stop_reason: str | None = None
    stop_is_failure: bool = False
    kill_deadline: float | None = None
    killed: bool = False
    output: dict = field(default_factory=dict)  # "stdout"/"stderr" -> its pipe's read end
    readers: list = field(default_factory=list)  # the supervisor's OutputReaders of them
    group: bool = False  # a command worker: its own process group, signalled as a whole


class Spawner:
    """The daemon's side: start the spawner process, ask it for workers, learn their exits."""

    def __init__(self, preload: list[str]):
        self.preload = preload  # handler paths whose modules the spawner imports once
        self.pid: int | None = None
        self.returncode: int | None = None  # once it has exited and been reaped
        self.sock: socket.socket | None = None
        self.sequence = 0
        self.exits: dict[int, int] = {}  # pid -> wait status, reported but not yet taken

    def start(self, fork: bool = False) -> None:
        """Run a new spawner and wait until it has preloaded the handlers' libraries.

        ``fork``: at the daemon's start, while it has no thread yet, the spawner is forked
        (it inherits the libraries the configuration check imported). Later — a spawner that
        died — it is a new interpreter (posix_spawn: fork and exec, safe from a process with
        threads), which imports them itself."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        daemon_pid = os.getpid()
        if fork:
            self.pid = os.fork()
            if self.pid == 0:
                ours.close()
                try:
                    os.closerange(3, theirs.fileno())
                    os.closerange(theirs.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
                    serve(theirs.fileno(), daemon_pid)
                finally:
                    os._exit(1)
        else:
            os.set_inheritable(theirs.fileno(), True)
            try:
                self.pid = os.posix_spawn(sys.executable, [
                    sys.executable, "-m", "tacore.supervision.spawner", str(theirs.fileno()),
                    str(daemon_pid)], os.environ)
            except OSError as e:
                ours.close()
                raise SpawnerGone(f"cannot run {sys.executable}: {e}") from None
            finally:
                theirs.close()
        if fork:
            theirs.close()
        self.sock, self.exits, self.returncode = ours, {}, None
        self._send({"preload": self.preload, "sys_path": sys.path})
        message, _ = self._receive_until(lambda m: "ready" in m)
        if message is None:
            raise SpawnerGone(f"the spawner (pid {self.pid}) did not start")

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, fields: dict, now: float) -> WorkerProcess:
        """Fork a worker for ``fields`` (a WorkerSpec without its descriptors and parent)."""
        self.sequence += 1
        seq = self.sequence
        began = time.perf_counter()
        self._send({"spawn": seq, "spec": _to_json(fields)})
        message, fds = self._receive_until(lambda m: m.get("spawned") == seq)
        if message is None:
            raise SpawnerGone("the spawner did not answer")
        if "error" in message:
            raise OSError(message["error"])
        pidfd, stack_r, out_r, err_r = fds
        pid = message["pid"]
        try:
            ps = psutil.Process(pid)
        except psutil.Error:
            ps = None  # already gone: its pidfd will say so
        return WorkerProcess(pid=pid, identity=fields["identity"], sentinel=pidfd,
                             stack=StackReader(stack_r), output={"stdout": out_r, "stderr": err_r},
                             group=bool(fields.get("command")),
                             started=min(message["forked_at"], now),
                             spawn_seconds=time.perf_counter() - began, ps=ps)

    def on_readable(self) -> bool:
        """Take what the spawner reported; False once it has gone (its socket closed)."""
        while True:
            try:
                data, fds = _recv(self.sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._keep(json.loads(data), fds)

    def reap(self, w: WorkerProcess) -> int | None:
        """The exit code of a worker whose pidfd fired, as multiprocessing gives it (negative:
        the signal); None if the spawner died without reporting it."""
        os.close(w.sentinel)
        status = self.exits.pop(w.pid, None)
        if status is None and self.sock is not None:
            message, _ = self._receive_until(lambda m: m.get("exited") == w.pid,
                                             EXIT_STATUS_WAIT)
            status = message["status"] if message else None
        return None if status is None else os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """Stop the spawner: it exits when its socket closes (its workers would die with it)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid is None or self.returncode is not None:
            return
        deadline = time.monotonic() + 2.0
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return
            if time.monotonic() >= deadline:
                os.kill(self.pid, signal.SIGKILL)
                deadline = float("inf")  # (then it is reaped at once)
            time.sleep(0.005)

    def _send(self, message: dict) -> None:
        try:
            self.sock.send(json.dumps(message).encode())
        except OSError as e:
            raise SpawnerGone(f"the spawner is gone: {e}") from None

    def _receive_until(self, wanted, timeout: float = REPLY_TIMEOUT):
        """Read messages (keeping exit reports) until one matches; (None, []) on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, []
            self.sock.settimeout(left)
            try:
                data, fds = _recv(self.sock)
            except (TimeoutError, OSError):
                return None, []
            finally:
                if self.sock is not None:
                    self.sock.setblocking(True)
            if not data:
                return None, []
            message = json.loads(data)
            if wanted(message):
                return message, fds
            self._keep(message, fds)

    def _keep(self, message: dict, fds: list[int]) -> None:
        if "exited" in message:
            self.exits[message["exited"]] = message["status"]
        for fd in fds:  # (only a spawn reply carries descriptors)
            os.close(fd)


def _recv(sock: socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """One datagram and the descriptors it carries (socket.recv_fds ignores ``flags`` before
    Python 3.12)."""
    room = socket.CMSG_LEN(4 * array.array("i").itemsize)  # up to four descriptors
    data, ancillary, _, _ = sock.recvmsg(MAX_MESSAGE, room, flags)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _to_json(fields: dict) -> dict:
    curve = fields.get("curve")
    return {**fields, "identity": fields["identity"].decode("ascii"),
            "curve": {k: v.decode("ascii") for k, v in curve.items()} if curve else None}


def _from_json(fields: dict) -> dict:
    curve = fields.get("curve")
    return {**fields, "identity": fields["identity"].encode("ascii"),
            "curve": {k: v.encode("ascii") for k, v in curve.items()} if curve else None}


# --- the spawner process ------------------------------------------------------------------

def serve(fd: int, daemon_pid: int) -> None:
    """The spawner's loop: fork on request, report every exit, end when the daemon does."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:  # the daemon died before prctl took effect
        os._exit(1)
    for sig in (signal.SIGINT, signal.SIGHUP):  # the terminal's and the operator's: not ours
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    setup = json.loads(sock.recv(MAX_MESSAGE))
    sys.path[:] = setup["sys_path"]
    from tacore.runtime import child  # noqa: F401  (the workers' code: imported once, here)
    from tacore.runtime.loader import load_handler

    for handler in setup["preload"]:
        try:
            load_handler(handler, fresh=False)  # the libraries; each worker imports its own code
        except Exception:
            pass  # the daemon validated them; a worker will report its own failure
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # (the wake-up fd is written for it)
    sock.send(json.dumps({"ready": os.getpid()}).encode())
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                data = sock.recv(MAX_MESSAGE)
                if not data:
                    os._exit(0)  # the daemon closed its end (or died): workers go with us
                request = json.loads(data)
                _fork(sock, request["spawn"], request["spec"], (wake_r, wake_w))
            else:
                os.read(wake_r, 4096)
        _report_exits(sock)


def _fork(sock: socket.socket, seq: int, fields: dict, private: tuple[int, int]) -> None:
    from tacore.runtime.spec import WorkerSpec

    (stack_r, stack_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        for fd in (stack_r, stack_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        sock.send(json.dumps({"spawned": seq, "error": f"fork failed: {e}"}).encode())
        return
    if pid == 0:
        os.dup2(out_w, 1)  # the worker's stdout and stderr: pipes the daemon reads
        os.dup2(err_w, 2)
        spec = WorkerSpec(**_from_json(fields), stack_fd=stack_w, parent_pid=os.getppid())
        if spec.command:
            _exec(spec)
        _child(sock, spec, private, (stack_r, out_r, out_w, err_r, err_w))
    forked_at = time.monotonic()
    for fd in (stack_w, out_w, err_w):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        socket.send_fds(sock, [json.dumps({"spawned": seq, "pid": pid,
                                           "forked_at": forked_at}).encode()],
                        [pidfd, stack_r, out_r, err_r])
    finally:
        for fd in (pidfd, stack_r, out_r, err_r):
            os.close(fd)


def _child(sock, spec, private: tuple[int, int], others: tuple[int, ...]) -> None:
    """In the new worker: drop the spawner's own descriptors and signals, run, never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in (*private, *others):
            os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)  # a print() is a line the daemon sees now
        from tacore.runtime import child

        child.run(spec)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _exec(spec) -> None:
    """In the new worker: become ``spec.command``, in a process group of its own (so a stop
    reaches everything it starts), dying with the spawner (PDEATHSIG survives exec), with
    the backend, service, identity and heartbeat settings in its environment."""
    import ctypes

    try:
        os.setpgid(0, 0)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != spec.parent_pid:
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # (ignored dispositions survive exec)
        os.set_inheritable(spec.stack_fd, True)
        keep = {0, 1, 2, spec.stack_fd}
        for fd in range(3, max(keep) + 1):
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.closerange(max(keep) + 1, os.sysconf("SC_OPEN_MAX"))
        env = {**os.environ, **(spec.env or {}), **command_environment(spec)}
        if spec.cwd:
            os.chdir(spec.cwd)
        os.execvpe(spec.command[0], spec.command, env)
    except BaseException as e:
        os.write(2, f"tacore: cannot run {spec.command!r}: {e}\n".encode(errors="replace"))
    os._exit(127)


def command_environment(spec) -> dict:
    """What a command worker is told (documented in the README, "Workers in any language")."""
    env = {"TACORE_BACKEND": spec.backend, "TACORE_SERVICE": spec.service,
           "TACORE_WORKER_IDENTITY": spec.identity.decode("ascii"),
           "TACORE_HEARTBEAT_INTERVAL": repr(spec.heartbeat_interval),
           "TACORE_HEARTBEAT_LIVENESS": str(spec.heartbeat_liveness),
           "TACORE_STACK_FD": str(spec.stack_fd)}
    for option, value in (spec.curve or {}).items():  # curve_serverkey, _publickey, _secretkey
        env[f"TACORE_{option.upper()}"] = value.decode("ascii")
    return env


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(json.dumps({"exited": pid, "status": status}).encode())


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))


class System:
    """The supervisor's only ways to touch processes besides spawning: signals and /proc.
    A test gives the supervisor a fake one."""

    @staticmethod
    def kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # it exited already; its pidfd will tell the loop

    @classmethod
    def signal(cls, w: WorkerProcess, sig: int) -> None:
        """To the worker, or to its whole process group (a command worker's children too)."""
        cls.kill(-w.pid if w.group else w.pid, sig)

    @staticmethod
    def catches(pid: int, sig: int) -> bool:
        """Whether the process has a handler for ``sig`` (SigCgt in /proc/PID/status)."""
        try:
            with open(f"/proc/{pid}/status") as f:
                mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        except (OSError, StopIteration, ValueError):
            return False
        return bool(mask & (1 << (sig - 1)))

    @staticmethod
    def proc_view(pid: int) -> tuple[str, str | None]:
        """What /proc shows of a process tacore cannot ask for its stack: each thread's state,
        the kernel function it waits in (wchan) and its current system call; and where the
        main thread is, as blocked_at."""
        lines, where = [f"/proc view of pid {pid} (no stack: the program did not register "
                        "one on SIGUSR1)"], None
        try:
            tasks = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
        except OSError as e:
            return f"/proc view unavailable: {e}", None
        for tid in tasks:
            base = f"/proc/{pid}/task/{tid}"
            try:
                stat = open(f"{base}/stat").read()
                name = stat[stat.index("(") + 1:stat.rindex(")")]
                state = stat[stat.rindex(")") + 2]
                wchan = open(f"{base}/wchan").read().strip() or "-"
                call = open(f"{base}/syscall").read().split()
            except OSError:
                continue
            syscall = "running" if call[:1] == ["running"] else f"syscall {call[0]}" if call \
                else "-"
            lines.append(f"thread {tid} ({name}): state {state}, wchan {wchan}, {syscall}")
            if tid == str(pid):
                where = f"wchan {wchan}, {syscall}"
        return "\n".join(lines), where

    @staticmethod
    def is_frozen(pid: int) -> bool:
        """True if the process is stopped (SIGSTOP, or a tracer): it can answer no signal."""
        try:
            return psutil.Process(pid).status() in (psutil.STATUS_STOPPED,
                                                    psutil.STATUS_TRACING_STOP)
        except psutil.Error:
            return False

    @staticmethod
    def figures(w: WorkerProcess) -> dict | None:
        """CPU, memory, threads and descriptors of a worker (None if it cannot be read)."""
        try:
            with w.ps.oneshot():
                return {"cpu_percent": w.ps.cpu_percent(None), "rss_bytes": w.ps.memory_info().rss,
                        "threads": w.ps.num_threads(), "fds": w.ps.num_fds()}
        except (psutil.Error, AttributeError):  # (no ps: it was gone at the fork already)
            return None
