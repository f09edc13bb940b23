"""A read-only HTTP/1.1 endpoint served from the daemon's loop.

Two halves, so the protocol is tested without sockets or clocks:

- ``HttpServer`` is sans-IO: it takes "a connection opened", "these bytes arrived", "it
  closed" and "it is now T", and returns what to send, as ``(connection, bytes)`` pairs where
  ``b""`` means close it (the ZeroMQ STREAM convention). h11 parses and frames each connection;
  the server adds the policy: which methods, the routes, and the limits below.
- ``HttpEndpoint`` is the shell: a ZeroMQ STREAM socket (raw TCP) that the loop polls like any
  other, so libzmq does the accepting and non-blocking I/O and the broker is never blocked.

Limits, each a defence of the loop rather than of the data (the endpoint is loopback only):
a request line and headers over ``MAX_HEAD`` bytes get 431 (400 when the request line alone
is that long), a body over ``MAX_BODY`` 413; a request not complete ``REQUEST_TIMEOUT`` after
its first byte gets 408 and is dropped (a slow client cannot hold a connection slot); a
kept-alive connection idle for ``IDLE_TIMEOUT`` is closed; beyond ``MAX_CONNECTIONS`` a new
connection gets 503 and is closed. Connections are kept alive (HTTP/1.1, pipelining too);
GET and HEAD are served, other methods get 405.
"""

from __future__ import annotations

import email.utils
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable
from urllib.parse import parse_qsl

import h11
import zmq

from tacore import events as ev
from tacore.events import Event

MAX_HEAD = 8192
MAX_BODY = 65536
REQUEST_TIMEOUT = 5.0
IDLE_TIMEOUT = 15.0
MAX_CONNECTIONS = 64
METHODS = (b"GET", b"HEAD")
TEXT = "text/plain; charset=utf-8"
# Every answer is computed from live state: a cache must not keep it.
COMMON = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]

CLOSE = b""  # sent on a STREAM socket: close this connection


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: tuple = ()  # more (name, value) pairs


# A route takes the query string's parameters (the first value of each) and answers. A plain
# (status, content type, body) tuple is a Reply too.
Route = Callable[[dict], "Reply | tuple[int, str, bytes]"]


class _Client:
    """One connection: its parser and framer, and when it must have done something."""

    __slots__ = ("h11", "started", "deadline", "request", "body")

    def __init__(self, now: float):
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.started: float | None = None  # the first byte of the current request
        self.deadline = now + IDLE_TIMEOUT
        self.request: tuple[bytes, str, dict] = (b"", "", {})  # method, path, query
        self.body = 0  # bytes of the current request's body


class HttpServer:
    """HTTP connections without sockets: bytes in, bytes out, time passed in."""

    def __init__(self, routes: dict[str, Route]):
        self.routes = routes
        self.clients: dict[bytes, _Client] = {}
        self.due: float | None = None  # the earliest deadline of any connection
        self.failures: list[tuple[str, str]] = []  # (path, traceback) of routes that raised

    def opened(self, cid: bytes, now: float, wall: float) -> list[tuple[bytes, bytes]]:
        if len(self.clients) >= MAX_CONNECTIONS:
            return [(cid, _refusal(503, "too many connections\n", wall, [("Retry-After", "1")])),
                    (cid, CLOSE)]
        self.clients[cid] = _Client(now)
        self._schedule()
        return []

    def closed(self, cid: bytes) -> None:
        if self.clients.pop(cid, None) is not None:
            self._schedule()

    def received(self, cid: bytes, data: bytes, now: float,
                 wall: float) -> list[tuple[bytes, bytes]]:
        client = self.clients.get(cid)
        if client is None:
            return []  # closed by us already: what it still sent does not matter
        client.h11.receive_data(data)
        out = self._events(cid, client, wall)
        if cid in self.clients:
            self._arm(client, now)
        self._schedule()
        return out

    def tick(self, now: float, wall: float) -> list[tuple[bytes, bytes]]:
        """Drop connections past their deadline: 408 to one in the middle of a request."""
        out = []
        for cid, client in list(self.clients.items()):
            if now >= client.deadline:
                if client.started is not None:
                    out.append((cid, _refusal(408, "request not complete in time\n", wall)))
                out.append((cid, CLOSE))
                del self.clients[cid]
        self._schedule()
        return out

    # --- one connection's events ----------------------------------------------------------

    def _events(self, cid: bytes, client: _Client, wall: float) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            try:
                event = client.h11.next_event()
            except h11.RemoteProtocolError as e:
                return out + self._bad(cid, client, e, wall)
            kind = type(event)
            if kind is h11.Request:  # its body (if any) and EndOfMessage follow
                too_long = _too_long(event)
                if too_long:  # (h11 bounds only a head that arrives in pieces)
                    return out + self._drop(cid, _refusal(too_long[0], too_long[1], wall))
                client.request, client.body = _parse(event), 0
            elif kind is h11.Data:
                client.body += len(event.data)
                if client.body > MAX_BODY:
                    return out + self._drop(cid, _refusal(413, "a GET needs no body\n", wall))
            elif kind is h11.EndOfMessage:
                out += self._answer(cid, client, wall)
                if cid not in self.clients:
                    return out
            elif kind is h11.ConnectionClosed:
                return out + self._drop(cid, None)
            else:  # NEED_DATA, or PAUSED (which start_next_cycle prevents)
                return out

    def _answer(self, cid: bytes, client: _Client, wall: float) -> list[tuple[bytes, bytes]]:
        conn = client.h11
        method, path, query = client.request
        reply = self._reply(method, path, query)
        headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body))),
                   ("Date", _date(wall)), *COMMON, *reply.headers]
        try:
            data = conn.send(h11.Response(status_code=reply.status, headers=headers,
                                          reason=_reason(reply.status)))
            if method != b"HEAD" and reply.body:
                data += conn.send(h11.Data(data=reply.body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # a route's reply h11 cannot frame (a bad header)
            self.failures.append((path, traceback.format_exc()))
            return self._drop(cid, _refusal(500, "internal error\n", wall))
        if conn.our_state is h11.MUST_CLOSE:  # HTTP/1.0, or the client said close
            return self._drop(cid, data)
        conn.start_next_cycle()
        client.started = None
        return [(cid, data)]

    def _reply(self, method: bytes, path: str, query: dict) -> Reply:
        if method not in METHODS:
            return Reply(405, TEXT, b"only GET and HEAD\n", (("Allow", "GET, HEAD"),))
        route = self.routes.get(path)
        if route is None:
            return Reply(404, TEXT, f"try {', '.join(self.routes)}\n".encode())
        try:
            reply = route(query)
        except Exception:  # a bug in one page must not take the daemon down
            self.failures.append((path, traceback.format_exc()))
            return Reply(500, TEXT, b"internal error: see the daemon's log (http.error)\n")
        return reply if isinstance(reply, Reply) else Reply(*reply)

    def _bad(self, cid: bytes, client: _Client, error: h11.RemoteProtocolError,
             wall: float) -> list[tuple[bytes, bytes]]:
        """A request h11 cannot parse: 400, or 431 for a head over MAX_HEAD; then close."""
        status = error.error_status_hint
        pending = client.h11.trailing_data[0]
        if status == 431 and b"\n" not in pending:
            status, why = 400, f"request line over {MAX_HEAD} bytes"
        elif status == 431:
            why = f"request line and headers over {MAX_HEAD} bytes"
        else:
            why = (str(error) or "bad request")[:200]
        answer = None
        if client.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            answer = _refusal(status, why + "\n", wall)
        return self._drop(cid, answer)

    def _drop(self, cid: bytes, last: bytes | None) -> list[tuple[bytes, bytes]]:
        del self.clients[cid]
        return ([(cid, last)] if last else []) + [(cid, CLOSE)]

    # --- deadlines --------------------------------------------------------------------------

    def _arm(self, client: _Client, now: float) -> None:
        """A request under way (a byte of it, pipelined ones too) must be complete
        REQUEST_TIMEOUT after its first byte; an idle connection may wait IDLE_TIMEOUT."""
        if client.h11.their_state is not h11.IDLE or client.h11.trailing_data[0]:
            if client.started is None:
                client.started = now
            client.deadline = client.started + REQUEST_TIMEOUT
        else:
            client.started = None
            client.deadline = now + IDLE_TIMEOUT

    def _schedule(self) -> None:
        self.due = min((c.deadline for c in self.clients.values()), default=None)


def _too_long(request: h11.Request) -> tuple[int, str] | None:
    """(400, why) for a request line over MAX_HEAD, (431, why) for a head over it."""
    if len(request.target) > MAX_HEAD:
        return 400, f"request line over {MAX_HEAD} bytes\n"
    if len(request.target) + sum(len(k) + len(v) + 4 for k, v in request.headers) > MAX_HEAD:
        return 431, f"request line and headers over {MAX_HEAD} bytes\n"
    return None


def _parse(request: h11.Request) -> tuple[bytes, str, dict]:
    """The method, the path and the query's parameters (the first value of each)."""
    path, _, query = request.target.decode("ascii", "replace").partition("?")
    return request.method, path, dict(reversed(parse_qsl(query)))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _date(wall: float) -> str:
    return email.utils.formatdate(wall, usegmt=True)


def _refusal(status: int, text: str, wall: float, headers=()) -> bytes:
    """A complete error response that closes the connection, framed by h11."""
    conn = h11.Connection(h11.SERVER)
    body = text.encode()
    head = [("Content-Type", TEXT), ("Content-Length", str(len(body))), ("Date", _date(wall)),
            ("Connection", "close"), *COMMON, *headers]
    return (conn.send(h11.Response(status_code=status, headers=head, reason=_reason(status)))
            + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


class HttpEndpoint:
    """The STREAM socket's side: read what arrived, hand it to the server, send its answer.

    A STREAM socket says "opened" and "closed" alike, with an empty frame. Connections the
    server closed are remembered (the last ``FORGOTTEN``), so that a peer's close crossing
    ours is not taken for a new connection that would hold a slot until its idle deadline.
    """

    FORGOTTEN = 1024

    def __init__(self, sock: zmq.Socket, routes: dict[str, Route],
                 emit: Callable[[Event], None]):
        self.sock, self.server, self.emit = sock, HttpServer(routes), emit
        self.forgotten: dict[bytes, None] = {}  # (a dict keeps the order they were closed in)

    @property
    def due(self) -> float | None:
        return self.server.due

    def on_readable(self, now: float) -> None:
        server, wall = self.server, time.time()  # wall: only for the Date header
        while True:
            try:
                cid, data = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except ValueError:
                continue  # not the two frames a STREAM socket delivers
            if data:
                self._send(server.received(cid, data, now, wall))
            elif cid in server.clients:  # an empty frame: a connection opened, or closed
                server.closed(cid)
            elif cid in self.forgotten:  # its close, crossing ours
                del self.forgotten[cid]
            else:
                self._send(server.opened(cid, now, wall))
        self._report()

    def tick(self, now: float) -> None:
        self._send(self.server.tick(now, time.time()))

    def _send(self, out: list[tuple[bytes, bytes]]) -> None:
        for cid, data in out:
            try:
                self.sock.send_multipart([cid, data], zmq.NOBLOCK)
            except zmq.ZMQError:  # gone already, or not reading: forget it, and close it
                self.server.closed(cid)
                if data != CLOSE:
                    try:
                        self.sock.send_multipart([cid, CLOSE], zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass
                data = CLOSE
            if data == CLOSE:
                self._forget(cid)

    def _forget(self, cid: bytes) -> None:
        self.forgotten[cid] = None
        if len(self.forgotten) > self.FORGOTTEN:
            del self.forgotten[next(iter(self.forgotten))]

    def _report(self) -> None:
        while self.server.failures:
            path, trace = self.server.failures.pop(0)
            self.emit(Event(ev.HTTP_ERROR, {"path": path, "exception": trace}))
