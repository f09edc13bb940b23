"""The HTTP endpoint: h11-framed HTTP/1.1 without sockets (a fake clock), then what a real
daemon's endpoint does for real clients (http.client and raw sockets)."""

import http.client
import json
import socket
import time

import h11
import pytest
import zmq

from tacore.observability import http as web
from tacore.observability.http import HttpEndpoint, HttpServer, Reply
from tests.helpers import wait_until
from tests.test_observability import free_port

HOST = b"Host: t\r\n"


def get(path: bytes = b"/a", extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\n" + HOST + extra + b"\r\n"


def answers(out: list, cid: bytes = b"c") -> list:
    """Parse what the server sent one connection: responses (status, headers by lower-case
    name, body), and 'closed' where it closed it."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
    client.send(h11.EndOfMessage())
    parsed, body = [], b""
    for who, data in out:
        assert who == cid
        if data == web.CLOSE:
            parsed.append("closed")
            continue
        client.receive_data(data)
        while (event := client.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
            if type(event) is h11.Response:
                head = (event.status_code, {k.decode(): v.decode() for k, v in event.headers})
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                parsed.append((*head, body))
                body = b""
                if client.our_state is h11.DONE and client.their_state is h11.DONE:
                    client.start_next_cycle()
                    client.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
                    client.send(h11.EndOfMessage())
    return parsed


def server(**routes) -> HttpServer:
    table = {"/a": lambda query: Reply(200, "text/plain", b"alpha"),
             "/q": lambda query: Reply(200, "application/json", json.dumps(query).encode()),
             **routes}
    s = HttpServer(table)
    assert s.opened(b"c", 0.0, 0.0) == []
    return s


def test_keep_alive_answers_several_requests_on_one_connection():
    """Two requests, one after the other, then two pipelined: four answers, still open."""
    s = server()
    first = answers(s.received(b"c", get(), 1.0, 0.0))
    second = answers(s.received(b"c", get() + get(b"/q?x=1"), 2.0, 0.0))
    assert [a[0] for a in first + second] == [200, 200, 200]
    assert first[0][2] == b"alpha" and json.loads(second[1][2]) == {"x": "1"}
    assert "closed" not in first + second and b"c" in s.clients
    assert "date" in first[0][1] and first[0][1]["cache-control"] == "no-store"


def test_head_has_the_headers_of_get_and_no_body():
    """HEAD answers with GET's Content-Length and no body bytes."""
    s = server()
    out = s.received(b"c", get(method=b"HEAD"), 1.0, 0.0)
    raw = b"".join(data for _, data in out)
    assert raw.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 5\r\n" in raw
    assert raw.endswith(b"\r\n\r\n") and b"alpha" not in raw
    assert answers(s.received(b"c", get(), 2.0, 0.0))[0][2] == b"alpha"  # still in step


def test_query_string_takes_the_first_value_and_routes_by_path():
    """The path routes without its query; each parameter's first value reaches the route."""
    s = server()
    (status, _, body), = answers(s.received(b"c", get(b"/q?b=2&a=1&a=3&e=%2Fx"), 1.0, 0.0))
    assert status == 200 and json.loads(body) == {"a": "1", "b": "2", "e": "/x"}


@pytest.mark.parametrize("request_bytes, status", [
    (b"\x00\x01garbage\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400),
    (b"GET /" + b"x" * (web.MAX_HEAD + 10), 400),  # the request line alone is too long
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: y\r\n" * 1000, 431),  # in pieces
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: y\r\n" * 1000 + b"\r\n", 431),  # at once
    (b"GET /" + b"x" * (web.MAX_HEAD + 10) + b" HTTP/1.1\r\nHost: t\r\n\r\n", 400),
])
def test_bad_requests_get_their_status_and_the_connection_closes(request_bytes, status):
    """Garbage is 400, headers over MAX_HEAD 431; either way the connection is closed."""
    s = server()
    parsed = answers(s.received(b"c", request_bytes, 1.0, 0.0))
    assert parsed[0][0] == status and parsed[0][1]["connection"] == "close"
    assert parsed[-1] == "closed" and b"c" not in s.clients


def test_other_methods_get_405_and_a_large_body_413():
    """POST is 405 with Allow; a body over MAX_BODY is refused with 413 and closed."""
    s = server()
    (status, headers, _), = answers(s.received(b"c", get(method=b"POST"), 1.0, 0.0))
    assert status == 405 and headers["allow"] == "GET, HEAD"
    big = get(extra=f"Content-Length: {web.MAX_BODY + 1}\r\n".encode()) + b"x" * (web.MAX_BODY + 1)
    assert [p if p == "closed" else p[0] for p in answers(s.received(b"c", big, 2.0, 0.0))] \
        == [413, "closed"]


def test_http_1_0_gets_its_answer_then_the_connection_closes():
    """An HTTP/1.0 client (no keep-alive) is answered and closed."""
    s = server()
    parsed = answers(s.received(b"c", b"GET /a HTTP/1.0\r\n\r\n", 1.0, 0.0))
    assert parsed[0][0] == 200 and parsed[-1] == "closed" and not s.clients


def test_a_slow_request_gets_408_at_its_deadline_however_it_dribbles():
    """A request incomplete REQUEST_TIMEOUT after its first byte is dropped with 408, even
    when bytes keep arriving; not one moment before."""
    s = server()
    assert s.received(b"c", b"GET /a HT", 10.0, 0.0) == []
    assert s.due == 10.0 + web.REQUEST_TIMEOUT
    assert s.received(b"c", b"T", 14.0, 0.0) == [] and s.due == 10.0 + web.REQUEST_TIMEOUT
    assert s.tick(10.0 + web.REQUEST_TIMEOUT - 0.01, 0.0) == []
    parsed = answers(s.tick(10.0 + web.REQUEST_TIMEOUT, 0.0))
    assert parsed[0][0] == 408 and parsed[-1] == "closed" and s.due is None


def test_an_idle_connection_is_closed_after_the_idle_deadline():
    """A kept-alive connection waits IDLE_TIMEOUT from its last answer, then is closed
    without a word."""
    s = server()
    s.received(b"c", get(), 3.0, 0.0)
    assert s.due == 3.0 + web.IDLE_TIMEOUT
    assert s.tick(3.0 + web.IDLE_TIMEOUT - 0.01, 0.0) == []
    assert s.tick(3.0 + web.IDLE_TIMEOUT, 0.0) == [(b"c", web.CLOSE)] and not s.clients


def test_connections_over_the_bound_get_503_until_one_closes():
    """MAX_CONNECTIONS are served; the next one gets 503 and is closed; after one leaves,
    a new one is accepted."""
    s = HttpServer({})
    for i in range(web.MAX_CONNECTIONS):
        assert s.opened(b"%d" % i, 0.0, 0.0) == []
    refused = answers(s.opened(b"x", 0.0, 0.0), b"x")
    assert refused[0][0] == 503 and refused[0][1]["retry-after"] == "1"
    assert refused[-1] == "closed" and b"x" not in s.clients
    s.closed(b"0")
    assert s.opened(b"y", 0.0, 0.0) == [] and b"y" in s.clients


def test_a_route_that_raises_is_a_500_and_reported():
    """A bug in one page answers 500, keeps the connection and records the traceback."""
    def broken(query):
        raise KeyError("oops")
    s = server(**{"/broken": broken})
    parsed = answers(s.received(b"c", get(b"/broken") + get(), 1.0, 0.0))
    assert [p[0] for p in parsed] == [500, 200]
    assert s.failures[0][0] == "/broken" and "KeyError: 'oops'" in s.failures[0][1]
    s = server(**{"/header": lambda query: Reply(200, "text/plain", b"x", (("X", "a\nb"),))})
    parsed = answers(s.received(b"c", get(b"/header"), 1.0, 0.0))
    assert parsed[0][0] == 500 and parsed[-1] == "closed" and s.failures[0][0] == "/header"


def test_unknown_paths_are_404_and_data_after_close_is_ignored():
    """404 names the paths there are; bytes for a connection already dropped are ignored."""
    s = server()
    (status, _, body), = answers(s.received(b"c", get(b"/nope"), 1.0, 0.0))
    assert status == 404 and b"/a" in body
    s.closed(b"c")
    assert s.received(b"c", get(), 2.0, 0.0) == []


class FakeStream:
    """A STREAM socket's two calls: what the test put in its inbox, what was sent."""

    def __init__(self):
        self.inbox, self.sent = [], []

    def recv_multipart(self, flags):
        if not self.inbox:
            raise zmq.Again()
        return self.inbox.pop(0)

    def send_multipart(self, frames, flags):
        self.sent.append(frames)


def test_a_client_that_cannot_take_its_answer_is_closed_and_forgotten():
    """A send that fails (the peer stopped reading) forgets the connection and still closes
    it, so the peer does not wait for an answer that will never come."""
    sock = FakeStream()
    refused = []

    def send_multipart(frames, flags):
        if frames[1] != web.CLOSE and not refused:
            refused.append(frames)
            raise zmq.Again()
        sock.sent.append(frames)

    sock.send_multipart = send_multipart
    endpoint = HttpEndpoint(sock, {}, lambda event: None)
    sock.inbox += [[b"a", b""], [b"a", b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"]]
    endpoint.on_readable(1.0)
    assert refused and sock.sent == [[b"a", web.CLOSE]]
    assert not endpoint.server.clients and b"a" in endpoint.forgotten


def test_a_close_crossing_ours_is_not_taken_for_a_new_connection():
    """An empty frame for a connection the server closed ends it; one for a new identity
    opens a connection."""
    sock = FakeStream()
    endpoint = HttpEndpoint(sock, {}, lambda event: None)
    sock.inbox += [[b"a", b""], [b"a", b"garbage\r\n\r\n"], [b"a", b""], [b"b", b""]]
    endpoint.on_readable(1.0)
    assert sock.sent[0][1].startswith(b"HTTP/1.1 400 ") and sock.sent[1] == [b"a", web.CLOSE]
    assert set(endpoint.server.clients) == {b"b"} and not endpoint.forgotten


# --- a real daemon's endpoint --------------------------------------------------------------

TOOL = {"tool": {"handler": "tests.workers:Tool", "workers": 2}}


@pytest.fixture
def endpoint(start_daemon):
    port = free_port()
    d = start_daemon(TOOL, http={"listen": f"127.0.0.1:{port}"})
    return d, port


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``; everything the daemon sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_to_close(sock)


def read_to_close(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_keep_alive_and_head_with_http_client(endpoint):
    """http.client sends GET, HEAD and GET on one connection: one socket, three answers."""
    d, port = endpoint
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/healthz")
    first = conn.getresponse()
    assert (first.status, first.read()) == (200, b"healthy\n")
    sock = conn.sock
    conn.request("HEAD", "/api/workers")
    head = conn.getresponse()
    assert head.status == 200 and int(head.getheader("Content-Length")) > 100
    assert head.read() == b"" and head.getheader("Connection") is None
    conn.request("GET", "/api/workers?service=tool")
    workers = conn.getresponse()
    assert len(json.loads(workers.read())) == 2
    assert conn.sock is sock  # never reconnected
    conn.close()


def test_garbage_and_oversized_headers_on_a_real_socket(endpoint):
    """Garbage gets 400, headers over the limit 431, and the daemon closes both."""
    d, port = endpoint
    assert raw(port, b"\x16\x03\x01 not http\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\nHost: t\r\n" \
        + b"".join(b"X-%d: %s\r\n" % (i, b"z" * 100) for i in range(100)) + b"\r\n"
    assert raw(port, huge).startswith(b"HTTP/1.1 431 ")
    assert raw(port, b"GET /healthz HTTP/1.0\r\n\r\n").endswith(b"healthy\n")


def test_a_slow_client_is_dropped_at_the_deadline_while_others_are_served(endpoint):
    """A request that never completes gets 408 and a close about REQUEST_TIMEOUT after its
    first byte; another client is served meanwhile."""
    d, port = endpoint
    with socket.create_connection(("127.0.0.1", port), timeout=web.REQUEST_TIMEOUT + 10) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        assert raw(port, get(b"/healthz", b"Connection: close\r\n")).endswith(b"healthy\n")
        received = read_to_close(slow)
        elapsed = time.monotonic() - t0
    assert received.startswith(b"HTTP/1.1 408 ")
    assert web.REQUEST_TIMEOUT - 0.5 <= elapsed <= web.REQUEST_TIMEOUT + 3


def test_the_connection_bound_on_a_real_daemon(endpoint):
    """With MAX_CONNECTIONS kept alive, one more is refused with 503; once one closes, a new
    connection is served."""
    d, port = endpoint
    held = []
    try:
        for _ in range(web.MAX_CONNECTIONS):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b"healthy\n"  # (so the daemon has it)
            held.append(conn)
        assert raw(port, get(b"/healthz")).startswith(b"HTTP/1.1 503 ")
        held.pop().close()

        def served():
            reply = raw(port, get(b"/healthz", b"Connection: close\r\n"))
            return reply.startswith(b"HTTP/1.1 200 ")
        wait_until(served, 5, "a connection served after one closed", interval=0.05)
    finally:
        for conn in held:
            conn.close()


def test_api_workers_lists_every_field_of_every_worker(endpoint):
    """/api/workers: one object per worker, the same fields for each, null where unknown;
    ?service= filters; a bad query value is 400."""
    d, port = endpoint
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/api/workers")
    response = conn.getresponse()
    assert response.getheader("Content-Type") == "application/json"
    rows = json.loads(response.read())
    assert [(w["service"], w["slot"]) for w in rows] == [("tool", 0), ("tool", 1)]
    from tacore.daemon.views import WORKER_FIELDS
    pids = {w["pid"] for w in d.workers("tool")}
    for w in rows:
        assert tuple(w) == WORKER_FIELDS
        assert w["state"] == "READY" and w["pid"] in pids and w["identity"] is None
        assert w["last_exit"] is None and w["start_timeout"] == 5 and not w["starting_late"]
    conn.request("GET", "/api/workers?service=nope")
    assert json.loads(conn.getresponse().read()) == []
    for value in ("many", "%C2%B2"):  # ("²" is a digit to str.isdigit, not to int)
        conn.request("GET", f"/api/dashboard?events={value}")
        bad = conn.getresponse()
        assert bad.status == 400, (value, bad.read())
        bad.read()
    conn.close()
