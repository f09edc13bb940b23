"""The daemon's handles on processes it did not fork itself: ``Spawner`` on the spawner
process (start it, ask it for a worker, learn the workers' exits) and ``WorkerProcess`` on
each worker it forked (what the spawner reported: pid, pidfd, pipes). How the spawner works,
and the messages between the two, is said in ``spawner.py``; what the supervisor decides about
a process lives on its ``Slot``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import psutil

from tacore.supervision.spawner import receive, serve, spec_to_json
from tacore.supervision.stacks import StackReader

REPLY_TIMEOUT = 10.0  # seconds to wait for the spawner's answer (a fork takes milliseconds)
EXIT_STATUS_WAIT = 1.0  # after a pidfd fired, how long the spawner may take to report it


class SpawnerGone(OSError):
    """The spawner process is not there (it died, or did not answer)."""


@dataclass
class WorkerProcess:
    """One incarnation of a worker slot: its process, as the spawner reported it."""

    pid: int
    identity: bytes
    sentinel: int  # a pidfd: readable once the process has exited
    stack: StackReader
    started: float  # monotonic, at the fork
    spawn_seconds: float
    ps: psutil.Process | None = None  # for CPU and memory figures
    output: dict = field(default_factory=dict)  # "stdout"/"stderr" -> its pipe's read end
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
        self._send({"spawn": seq, "spec": spec_to_json(fields)})
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
                data, fds = receive(self.sock, socket.MSG_DONTWAIT)
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
                data, fds = receive(self.sock)
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
