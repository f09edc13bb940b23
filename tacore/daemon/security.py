"""CURVE for tcp endpoints, with ZAP answered from the daemon's own loop (no thread).

A section ([broker] for the backend, [control] for the control socket) with
``curve_secret_key`` and ``curve_authorized_keys`` makes its socket a CURVE server: only
clients whose public key is a ``*.key`` file in the authorized directory (read at each
connection, so keys can be added or removed live) get in; the daemon's own workers use the
daemon's key pair. Keys are made by ``tacorectl keygen``. [remote] protects the second
frontend the same way.

A refused key is counted per ZAP domain (``refused``, shown in the metrics) and logged as
``auth.refused`` at most REFUSALS_PER_SECOND times a second, then the number left out: on a
frontend open to other hosts, anyone may try connections as fast as they like.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth
from zmq.auth.base import Authenticator

from tacore import events as ev
from tacore.brokering.routes import RateLimit
from tacore.events import Event

REFUSALS_PER_SECOND = 20  # auth.refused log lines; more are counted, then reported as a number


class KeyDirectory:
    """pyzmq's credentials provider: a key is allowed if it is in the directory (or ours).
    ``names`` remembers each admitted key's file name (``b.key``: "b"), which status shows."""

    def __init__(self, directory: str, own_public: bytes,
                 refuse: Callable[[str, bytes], None], names: dict[str, str]):
        self.directory, self.own_public, self.refuse = directory, own_public, refuse
        self.names = names

    def callback(self, domain: str, key: bytes) -> bool:
        if key == self.own_public:
            return True
        name = _named_keys(self.directory).get(key)
        if name is None:
            self.refuse(domain, key)
            return False
        self.names[key.decode()] = name
        return True


def _named_keys(directory: str) -> dict[bytes, str]:
    """The public keys of the ``*.key`` files in ``directory``, with each file's stem."""
    keys = {}
    for path in sorted(Path(directory).glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError):
            continue  # (as zmq.auth.load_certificates: a broken file admits nobody)
        keys[public] = path.stem
    return keys


class CurveGuard:
    """The ZAP handler for every CURVE socket of the daemon."""

    def __init__(self, ctx: zmq.Context, emit: Callable[[Event], None]):
        self.emit = emit
        self.names: dict[str, str] = {}  # z85 key -> its file's name, once admitted
        self.auth = Authenticator(ctx, log=logging.getLogger("tacore.zap"))
        self.auth.start()
        self.socket = self.auth.zap_socket
        self.refused: dict[str, int] = {}  # ZAP domain -> keys refused since the start
        self.limit = RateLimit(REFUSALS_PER_SECOND)
        self.now = 0.0  # of the ZAP request being answered

    def protect(self, sock: zmq.Socket, domain: str, secret_file: str, authorized: str) -> None:
        """Make ``sock`` (before it binds) a CURVE server for the keys in ``authorized``."""
        public, secret = zmq.auth.load_certificate(secret_file)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        sock.zap_domain = domain.encode()
        self.auth.configure_curve_callback(domain, KeyDirectory(authorized, public, self._refuse,
                                                                self.names))
        self.refused.setdefault(domain, 0)

    def _refuse(self, domain: str, key: bytes) -> None:
        self.refused[domain] += 1
        suppressed = self.limit.admit(self.now)
        if suppressed:
            self.emit(Event(ev.AUTH_REFUSED, {"suppressed": suppressed}))
        if self.limit.allowed:
            self.emit(Event(ev.AUTH_REFUSED, {"domain": domain, "client_key": key.decode()}))

    def on_readable(self, now: float) -> None:
        self.now = now
        while True:
            try:
                msg = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            _run_now(self.auth.handle_zap_message(msg))

    def close(self) -> None:
        self.auth.stop()


def _run_now(coroutine) -> None:
    """pyzmq's ZAP handler is a coroutine that only waits on async providers; ours is not."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("ZAP handling waited on something: a synchronous provider was expected")


def client_keys(secret_file: str) -> dict:
    """Socket options for a client of a CURVE server whose key pair is in ``secret_file``
    (the daemon's own workers)."""
    public, secret = zmq.auth.load_certificate(secret_file)
    return {"curve_serverkey": public, "curve_publickey": public, "curve_secretkey": secret}
