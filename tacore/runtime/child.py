"""The entry point of a worker process, and the worker's serving loop.

The child is forked by the spawner (supervision/spawner.py), a process without threads, so it
first cuts every tie to its parent's world: it dies with the spawner (PR_SET_PDEATHSIG), which
dies with the daemon, closes every inherited descriptor but pipes, and resets signal
dispositions. Then it
arms faulthandler on SIGUSR1 so the daemon can read its stack at any moment, even while
start() is blocked in C code, builds the service, and only after start() returns connects to
the broker and says READY (7/MDP).
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import sys
import threading
import time
import traceback

import zmq

from tacore.brokering import protocol as mdp
from tacore.brokering.frames import recv_frames, send_frames
from tacore.errors import BadRequest
from tacore.observability.logging import configure_logging, route_stdlib_logging
from tacore.runtime.loader import load_handler
from tacore.runtime.spec import DUMP_SIGNAL, EXIT_START_FAILED, WorkerSpec

PR_SET_PDEATHSIG = 1


class _Stop(BaseException):
    """Raised from the SIGTERM handler to unwind an idle loop or a blocked start()."""


def run(spec: WorkerSpec) -> None:
    """Worker process entry point (module level, so any start method can call it)."""
    _detach(spec)
    # JSON on stderr, which is a pipe the daemon reads and re-logs in its own format, with
    # the stdlib's logging (the service's and its libraries') in the same lines.
    log = configure_logging(spec.log_level, "json").bind(
        service=spec.service, slot=spec.slot, pid=os.getpid())
    route_stdlib_logging(spec.log_level)
    os.write(spec.stack_fd, f"main-thread 0x{threading.main_thread().ident:016x}\n".encode())
    faulthandler.register(DUMP_SIGNAL, file=spec.stack_fd, all_threads=True)
    stopper = _Stopper()
    service = None
    try:
        service = _start_service(spec, log)
        Worker(spec, service, stopper, log).serve()
    except _Stop:
        pass
    _stop_service(service, log)
    sys.exit(0)


def _detach(spec: WorkerSpec) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != spec.parent_pid:  # the spawner died before prctl took effect
        os._exit(1)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    # Ctrl-C on a terminal reaches the whole process group; stopping workers is the daemon's job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _close_inherited(spec.stack_fd)


def _close_inherited(keep: int) -> None:
    """Close every descriptor the spawner left us but pipes (``keep``, the stack pipe, and
    stdio may be pipes too): its socket to the daemon, other workers' pidfds. The list is
    read in the child, where no other thread runs."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd == keep:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # listdir's own descriptor, already closed
        if not target.startswith("pipe:"):
            os.close(fd)


class _Stopper:
    """SIGTERM: stop at once when idle or starting; after the reply when handling a request."""

    def __init__(self):
        self.busy = False
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame):
        self.requested = True
        if not self.busy:
            raise _Stop()


def _start_service(spec: WorkerSpec, log):
    try:
        service = load_handler(spec.handler)()
        start = getattr(service, "start", None)
        if start is not None:
            start(dict(spec.config))
        return service
    except (_Stop, SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:
        log.error("worker.start_failed", error=f"{type(e).__name__}: {e}",
                  exception=traceback.format_exc())
        sys.exit(EXIT_START_FAILED)


def _stop_service(service, log) -> None:
    stop = getattr(service, "stop", None)
    if stop is None:
        return
    try:
        stop()
    except Exception as e:
        log.error("worker.stop_failed", error=f"{type(e).__name__}: {e}",
                  exception=traceback.format_exc())


class Worker:
    """A Majordomo worker (7/MDP) for one service object, heartbeating while idle."""

    def __init__(self, spec: WorkerSpec, service, stopper: _Stopper, log):
        self.spec, self.service, self.stopper, self.log = spec, service, stopper, log
        self.ctx = zmq.Context()
        self.sock = None
        self.expiry = spec.heartbeat_interval * spec.heartbeat_liveness

    def serve(self) -> None:
        try:
            self._connect()
            while not self.stopper.requested:
                self._serve_once()
        finally:
            if self.sock is not None:
                self._send([mdp.W_DISCONNECT])
            self.ctx.destroy(linger=100)

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.spec.identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        for option, value in (self.spec.curve or {}).items():
            setattr(self.sock, option, value)
        self.sock.connect(self.spec.backend)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        # The compact framing is offered: the daemon's broker sends requests in it, which this
        # worker answers in kind (docs/framing.md); any other broker would send 7/MDP.
        self._send([mdp.W_READY, self.spec.service.encode(), mdp.COMPACT_OFFER])
        now = time.monotonic()
        self.heard_at, self.beat_at = now, now + self.spec.heartbeat_interval

    def _send(self, frames) -> None:
        send_frames(self.sock, [b"", mdp.W_V1, *frames], 0)

    def _serve_once(self) -> None:
        timeout = max(0.0, self.beat_at - time.monotonic())
        if self.poller.poll(timeout * 1000):
            while not self.stopper.requested:  # every message waiting, then the clock
                try:
                    frames = recv_frames(self.sock)
                except zmq.Again:
                    break
                self.heard_at = time.monotonic()
                self._on_message(frames)
        now = time.monotonic()
        if now - self.heard_at > self.expiry:
            self.log.warning("worker.broker_lost", silent_for=round(now - self.heard_at, 3))
            self._connect()
        elif now >= self.beat_at:
            self._send([mdp.W_HEARTBEAT])
            self.beat_at = now + self.spec.heartbeat_interval

    def _on_message(self, frames) -> None:
        head = frames[0]
        if head[:1] == mdp.T_REQUEST and len(head) == mdp.TOKEN_END:
            reply = self._handle(frames[1:])
            send_frames(self.sock, [mdp.T_REPLY + head[1:] + reply[0], *reply[1:]], 0)
            self._replied()
            return
        if len(frames) < 3 or head != b"" or frames[1] != mdp.W_V1:
            self.log.warning("worker.protocol_error", frames=len(frames))
            return
        command = frames[2]
        if command == mdp.W_REQUEST and len(frames) >= 5 and frames[4] == b"":
            self._send([mdp.W_REPLY, frames[3], b"", *self._handle(frames[5:])])
            self._replied()
        elif command == mdp.W_DISCONNECT:
            self._connect()
        elif command != mdp.W_HEARTBEAT:
            self.log.warning("worker.protocol_error", command=command.hex())

    def _handle(self, body: list[bytes]) -> list[bytes]:
        self.stopper.busy = True
        try:
            return self._call(body)
        finally:
            self.stopper.busy = False

    def _replied(self) -> None:
        # The broker does not heartbeat a busy worker: silence is measured from the reply.
        self.heard_at = time.monotonic()
        self.beat_at = self.heard_at + self.spec.heartbeat_interval

    def _call(self, body: list[bytes]) -> list[bytes]:
        """Run one request through the service: tacore's JSON body convention (see README)."""
        try:
            method, params = _decode_request(body)
            result = self.service.handle(method, params)
            return [b"200", json.dumps(result).encode()]
        except BadRequest as e:
            return _error(b"400", "bad_request", str(e))
        except Exception as e:
            self.log.error("request.failed", error=f"{type(e).__name__}: {e}",
                           exception=traceback.format_exc())
            return _error(b"500", type(e).__name__, str(e))


def _decode_request(body: list[bytes]):
    if len(body) != 1:
        raise BadRequest(f"the request body must be one frame, got {len(body)}")
    try:
        request = json.loads(body[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request body is not JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        raise BadRequest('the request must be a JSON object {"method": str, "params": any}')
    return request["method"], request.get("params")


def _error(status: bytes, error: str, message: str) -> list[bytes]:
    return [status, json.dumps({"error": error, "message": message}).encode()]
