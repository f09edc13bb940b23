"""A read-only HTTP endpoint served from the daemon's loop: /metrics, /healthz, /status.

The socket is a ZeroMQ STREAM socket (raw TCP), so libzmq does the accepting and non-blocking
I/O and the loop polls it like any other socket: the broker is never blocked. Each connection
gets one answer and is closed; a request that is not complete within ``REQUEST_TIMEOUT`` or
larger than ``MAX_REQUEST`` is dropped.
"""

from __future__ import annotations

import time
from typing import Callable

import zmq

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
MAX_PENDING = 64
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}

# A route returns (status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]


class HttpEndpoint:
    def __init__(self, sock: zmq.Socket, routes: dict[str, Route]):
        self.sock, self.routes = sock, routes
        self.pending: dict[bytes, tuple[float, bytearray]] = {}  # connection -> (since, data)

    def on_readable(self, now: float) -> None:
        while True:
            try:
                connection, data = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except ValueError:
                continue  # not the two frames a STREAM socket delivers
            if not data:  # a connection opened or closed
                self.pending.pop(connection, None)
                continue
            since, buffer = self.pending.setdefault(connection, (now, bytearray()))
            buffer += data
            if b"\r\n\r\n" in buffer or len(buffer) > MAX_REQUEST:
                del self.pending[connection]
                self._answer(connection, bytes(buffer))
        self._expire(now)

    def _expire(self, now: float) -> None:
        stale = [c for c, (since, _) in self.pending.items() if now - since > REQUEST_TIMEOUT]
        for connection in stale + list(self.pending)[MAX_PENDING:]:
            self.pending.pop(connection, None)
            self._close(connection)

    def _answer(self, connection: bytes, request: bytes) -> None:
        line = request.split(b"\r\n", 1)[0].split()
        if len(line) != 3 or len(request) > MAX_REQUEST:
            self._send(connection, 400, "text/plain", b"bad request\n")
        elif line[0] != b"GET":
            self._send(connection, 405, "text/plain", b"only GET\n")
        else:
            route = self.routes.get(line[1].split(b"?")[0].decode(errors="replace"))
            if route is None:
                paths = ", ".join(self.routes)
                self._send(connection, 404, "text/plain", f"try {paths}\n".encode())
            else:
                self._send(connection, *route())

    def _send(self, connection: bytes, status: int, content_type: str, body: bytes) -> None:
        head = (f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {content_type}"
                f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n\r\n")
        try:
            self.sock.send_multipart([connection, head.encode() + body], zmq.NOBLOCK)
        except zmq.ZMQError:
            return  # gone already
        self._close(connection)

    def _close(self, connection: bytes) -> None:
        try:
            self.sock.send_multipart([connection, b""], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
