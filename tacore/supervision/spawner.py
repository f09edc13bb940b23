"""The spawner: a process that runs no thread and starts the workers, the one place that forks.

The daemon runs libzmq's I/O threads, and a process with threads must not fork (a lock another
thread holds stays locked in the child for good; Python 3.12+ warns, 3.14 changes the default).
So the daemon never forks a worker. When it starts, before any ZeroMQ context exists, it runs
a *spawner*: a fork of itself, made while it has no thread, which holds the configured
handlers' libraries (the configuration check imported them) and then only forks workers on
request. A spawner started later (the first one died) is ``python -m
tacore.supervision.spawner``, a fresh interpreter (fork + exec is safe from any process) that
imports them itself. Each worker is the spawner's child and still imports the operator's own
code afresh (``runtime/loader.py``). This module is the spawner's own side and the messages
both sides speak; the daemon's side (``Spawner``, ``WorkerProcess``) is ``handles.py``.

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

MAX_MESSAGE = 1 << 20  # a spec with its service config; larger is refused when sent
PR_SET_PDEATHSIG = 1


def receive(sock: socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """One datagram and the descriptors it carries (socket.recv_fds ignores ``flags`` before
    Python 3.12)."""
    room = socket.CMSG_LEN(4 * array.array("i").itemsize)  # up to four descriptors
    data, ancillary, _, _ = sock.recvmsg(MAX_MESSAGE, room, flags)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def spec_to_json(fields: dict) -> dict:
    """A worker's spec fields as JSON can carry them: its bytes as ASCII text."""
    curve = fields.get("curve")
    return {**fields, "identity": fields["identity"].decode("ascii"),
            "curve": {k: v.decode("ascii") for k, v in curve.items()} if curve else None}


def spec_from_json(fields: dict) -> dict:
    """The spec fields ``spec_to_json`` made, with their bytes back."""
    curve = fields.get("curve")
    return {**fields, "identity": fields["identity"].encode("ascii"),
            "curve": {k: v.encode("ascii") for k, v in curve.items()} if curve else None}


# --- in the spawner process ---------------------------------------------------------------

def serve(fd: int, daemon_pid: int) -> None:
    """The spawner's loop: fork on request, report every exit, end when the daemon does."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:  # the daemon died before prctl took effect
        os._exit(1)
    # The terminal's, the operator's, and a SIGTERM sent to the whole process group (as
    # `timeout` and `kill -TERM -PGID` do) are not ours: the spawner ends when the daemon
    # closes its socket, or dies with it.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
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
        spec = WorkerSpec(**spec_from_json(fields), stack_fd=stack_w, parent_pid=os.getppid())
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
