"""Call tacore services from Python: ``Client(endpoint).call(service, method, params)``.

    from tacore.client import Client, CallError

    client = Client("ipc:///run/tacore/frontend.sock")
    try:
        print(client.call("ta", "sma", {"prices": [1, 2, 3, 4], "window": 2}, timeout=5))
    except CallError as e:
        print(e.status, e.error, e.message)

An ipc endpoint this process may not connect to (its socket file or directory is not open to
the user) raises ``AccessDenied`` at once, naming the file and the group to join, instead of
waiting out the timeout: ZeroMQ itself would only stay silent.

A daemon's ``[remote] frontend`` admits CURVE clients only: pass this client's key pair file
and the daemon's public key file (both made by ``tacorectl keygen``),
``Client("tcp://host:5555", curve_secret_key="me.key_secret", curve_server_key="tacored.key")``.
The keys are used for every tcp endpoint of the client, never for ipc ones (no ipc socket of
tacore uses CURVE). A key the daemon does not know gets no answer at all: ``CallTimeout``.

Failover. ``Client([endpoint_a, endpoint_b, ...], retries=N)`` knows several daemons serving
the same services. An attempt that gets no reply within ``timeout`` (each attempt has its
own), or with several endpoints a ``"503"`` (no worker, queue full, service FATAL, shutting
down), is followed by another at the next endpoint, round the list, while attempts remain
(``retries + 1`` in all; ``call(..., retries=...)`` overrides the client's number). An
attempt after a timeout uses a fresh socket ("Lazy Pirate": a REQ socket that missed its
reply cannot be reused, and a late reply must not be taken for the next one's). A call starts
at the endpoint that answered last (at first, the first). Every other status is the answer,
at once: a ``"502"`` or ``"504"`` means the request may have run. The attempts are in
``CallError.attempts`` (and its message), each an ``Attempt(endpoint, outcome, seconds,
error)``; a ``"503"`` from the last attempt is raised with all of them. After a call that
succeeded, ``client.last_attempts`` has them (per thread).

What is guaranteed: each daemon answers each attempt it received exactly once (a result or an
error status). What is not: a retried call is at-least-once — an attempt that timed out may
still have run, or may still be running, on the daemon that did not answer in time (a
``"503"`` did not run, except on a service with ``retry_on_failure``: there a request whose
worker died is queued again, and may end in a ``"503"``) — so pass ``retries`` only for
idempotent methods; a call that must not run twice must not be retried. A reply that arrives
after its attempt's timeout is lost.

A Client may be shared by threads: each thread gets its own sockets, and ``close()`` (or
leaving a ``with Client(...)`` block) closes them all once the threads are done.
"""

from __future__ import annotations

import json
import threading
import time
from typing import NamedTuple, Sequence

import zmq

from tacore.access import denied
from tacore.brokering.protocol import C_V1
from tacore.control.client import curve_options

__all__ = ["Client", "CallError", "CallTimeout", "AccessDenied", "Attempt"]

RETRIED = "503"  # the one status that moves a call on: the request did not run (as a rule)


class Attempt(NamedTuple):
    """One try of a call: where, what came of it ("timeout" or the status), how long it
    took, and the error name of an error reply."""

    endpoint: str
    outcome: str
    seconds: float
    error: str | None = None

    def __str__(self) -> str:
        what = self.outcome if self.error is None else f"{self.outcome} {self.error}"
        return f"{self.endpoint}: {what} after {self.seconds:.3g}s"


class CallError(Exception):
    """The service answered with an error; ``status`` is the code ("400", "404", "503", ...).
    ``attempts``: every attempt the call made, the last one last."""

    def __init__(self, status: str | None, error: str, message: str,
                 attempts: Sequence[Attempt] = ()):
        self.status, self.error, self.message = status, error, message
        self.attempts = list(attempts)
        text = f"{status or 'no reply'} {error}: {message}"
        if len(self.attempts) > 1:
            text += f" (attempts: {'; '.join(map(str, self.attempts))})"
        super().__init__(text)


class CallTimeout(CallError):
    """No reply within the timeout, after every retry (``status`` is None); the message
    lists the attempts."""


class AccessDenied(CallError):
    """This process may not connect to the ipc endpoint (``status`` is None); ``message`` names
    the socket file, its group, and what to do."""

    def __init__(self, message: str):
        super().__init__(None, "permission_denied", message)


class Client:
    """``endpoint``: one endpoint, or several in failover order (see the module's docstring).
    ``retries``: further attempts a call may make; only for idempotent calls."""

    def __init__(self, endpoint: str | Sequence[str], retries: int = 0,
                 context: zmq.Context | None = None, *, curve_secret_key: str | None = None,
                 curve_server_key: str | None = None):
        self.endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)
        if not self.endpoints:
            raise ValueError("a Client needs at least one endpoint")
        if (curve_secret_key is None) != (curve_server_key is None):
            raise ValueError("curve_secret_key and curve_server_key go together")
        self.endpoint, self.retries = self.endpoints[0], retries
        self.curve = curve_options(curve_secret_key, curve_server_key) \
            if curve_secret_key else {}
        self.ctx = context or zmq.Context.instance()
        self._local = threading.local()
        self._sockets: set[zmq.Socket] = set()
        self._lock = threading.Lock()
        self._current = 0  # the endpoint that answered last: where calls start

    def call(self, service: str, method: str, params=None, timeout: float = 10.0,
             retries: int | None = None):
        """Return the result, or raise CallError (CallTimeout if nothing came back)."""
        body = json.dumps({"method": method, "params": params}).encode()
        request = [C_V1, service.encode(), body]
        retries = self.retries if retries is None else retries
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        attempts: list[Attempt] = []
        self._local.attempts = attempts
        first = self._current
        for n in range(retries + 1):
            index = (first + n) % len(self.endpoints)
            endpoint = self.endpoints[index]
            sock = self._socket(endpoint)
            started = time.monotonic()
            sock.send_multipart(request)
            if not sock.poll(timeout * 1000):
                attempts.append(Attempt(endpoint, "timeout", time.monotonic() - started))
                self._discard(endpoint)  # a REQ socket that missed its reply cannot be reused
                self._check_access(endpoint)  # the socket file may have appeared, not open to us
                continue
            frames = sock.recv_multipart()
            status = frames[2].decode(errors="replace") if len(frames) == 4 else None
            error = None if status == "200" else _error_name(frames)
            attempts.append(Attempt(endpoint, status or "bad_reply",
                                    time.monotonic() - started, error))
            if status != RETRIED:
                self._current = index
                return _result(frames, attempts)
            if len(self.endpoints) == 1:
                break  # "503" from the only daemon: asking it again at once would say the same
        if attempts[-1].outcome == RETRIED:
            return _result(frames, attempts)  # raises: the last "503", with every attempt
        raise CallTimeout(None, "timeout", f"no reply from {service!r} within {timeout:g}s "
                          f"after {len(attempts)} attempt(s): "
                          + "; ".join(map(str, attempts)), attempts)

    @property
    def last_attempts(self) -> list[Attempt]:
        """The attempts of this thread's last call, also when it succeeded (after a failover)."""
        return getattr(self._local, "attempts", [])

    def close(self) -> None:
        """Close every thread's sockets; call it when no thread uses the client any more."""
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _socket(self, endpoint: str) -> zmq.Socket:
        mine = self._mine()
        sock = mine.get(endpoint)
        if sock is None or sock.closed:
            self._check_access(endpoint)
            sock = mine[endpoint] = self.ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            if not endpoint.startswith("ipc://"):
                for option, value in self.curve.items():
                    setattr(sock, option, value)
            sock.connect(endpoint)
            with self._lock:
                self._sockets.add(sock)
        return sock

    def _mine(self) -> dict[str, zmq.Socket]:
        """This thread's sockets, by endpoint."""
        mine = getattr(self._local, "sockets", None)
        if mine is None:
            mine = self._local.sockets = {}
        return mine

    def _check_access(self, endpoint: str) -> None:
        problem = denied(endpoint, "[broker] group")
        if problem:
            raise AccessDenied(problem)

    def _discard(self, endpoint: str) -> None:
        sock = self._mine().pop(endpoint, None)
        if sock is not None:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()


def _error_name(frames: list[bytes]) -> str | None:
    """The ``error`` of an error reply's payload, for the attempt's record."""
    try:
        data = json.loads(frames[3])
    except (ValueError, IndexError):
        return None
    return str(data.get("error")) if isinstance(data, dict) else None


def _result(frames: list[bytes], attempts: list[Attempt]):
    if len(frames) != 4 or frames[0] != C_V1:
        raise CallError(None, "bad_reply", f"not a tacore reply: {len(frames)} frames", attempts)
    status, payload = frames[2].decode(errors="replace"), frames[3]
    try:
        data = json.loads(payload)
    except ValueError:
        raise CallError(status, "bad_reply", "the reply body is not JSON", attempts) from None
    if status == "200":
        return data
    if isinstance(data, dict):
        raise CallError(status, str(data.get("error")), str(data.get("message")), attempts)
    raise CallError(status, "error", str(data), attempts)
