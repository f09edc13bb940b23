"""Call tacore services from Python: ``Client(endpoint).call(service, method, params)``.

    from tacore.client import Client, CallError

    client = Client("ipc:///run/tacore/frontend.sock", retries=2)
    try:
        print(client.call("ta", "sma", {"prices": [1, 2, 3, 4], "window": 2}, timeout=5))
    except CallError as e:
        print(e.status, e.error, e.message)

An ipc endpoint this process may not connect to (its socket file or directory is not open to
the user) raises ``AccessDenied`` at once, naming the file and the group to join, instead of
waiting out the timeout: ZeroMQ itself would only stay silent.

A Client may be shared by threads: each thread gets its own socket, and ``close()`` (or leaving
a ``with Client(...)`` block) closes them all once the threads are done. With ``retries > 0`` a
call that gets no reply within ``timeout`` is sent again on a fresh socket ("Lazy Pirate"), so
use retries only for idempotent methods.
"""

from __future__ import annotations

import json
import threading

import zmq

from tacore.access import denied
from tacore.brokering.protocol import C_V1

__all__ = ["Client", "CallError", "CallTimeout", "AccessDenied"]


class CallError(Exception):
    """The service answered with an error; ``status`` is the code ("400", "404", "503", ...)."""

    def __init__(self, status: str | None, error: str, message: str):
        self.status, self.error, self.message = status, error, message
        super().__init__(f"{status or 'no reply'} {error}: {message}")


class CallTimeout(CallError):
    """No reply within the timeout, after every retry (``status`` is None)."""


class AccessDenied(CallError):
    """This process may not connect to the ipc endpoint (``status`` is None); ``message`` names
    the socket file, its group, and what to do."""

    def __init__(self, message: str):
        super().__init__(None, "permission_denied", message)


class Client:
    def __init__(self, endpoint: str, retries: int = 0, context: zmq.Context | None = None):
        self.endpoint, self.retries = endpoint, retries
        self.ctx = context or zmq.Context.instance()
        self._local = threading.local()
        self._sockets: set[zmq.Socket] = set()
        self._lock = threading.Lock()

    def call(self, service: str, method: str, params=None, timeout: float = 10.0):
        """Return the result, or raise CallError (CallTimeout if nothing came back)."""
        body = json.dumps({"method": method, "params": params}).encode()
        request = [C_V1, service.encode(), body]
        for _ in range(self.retries + 1):
            sock = self._socket()
            sock.send_multipart(request)
            if sock.poll(timeout * 1000):
                return _result(sock.recv_multipart())
            self._discard()  # a REQ socket that missed its reply cannot be reused
            self._check_access()  # the socket file may have appeared, not open to us
        raise CallTimeout(None, "timeout", f"no reply from {service!r} at {self.endpoint} "
                          f"within {timeout:g}s after {self.retries + 1} attempt(s)")

    def close(self) -> None:
        """Close every thread's socket; call it when no thread uses the client any more."""
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None or sock.closed:
            self._check_access()
            sock = self._local.sock = self.ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            with self._lock:
                self._sockets.add(sock)
        return sock

    def _check_access(self) -> None:
        problem = denied(self.endpoint, "[broker] group")
        if problem:
            raise AccessDenied(problem)

    def _discard(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()
            self._local.sock = None


def _result(frames: list[bytes]):
    if len(frames) != 4 or frames[0] != C_V1:
        raise CallError(None, "bad_reply", f"not a tacore reply: {len(frames)} frames")
    status, payload = frames[2].decode(errors="replace"), frames[3]
    try:
        data = json.loads(payload)
    except ValueError:
        raise CallError(status, "bad_reply", "the reply body is not JSON") from None
    if status == "200":
        return data
    if isinstance(data, dict):
        raise CallError(status, str(data.get("error")), str(data.get("message")))
    raise CallError(status, "error", str(data))
