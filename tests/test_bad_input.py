"""Garbage on the control and backend sockets gets an error or is dropped; nothing breaks."""

import json

import zmq

from tacore.brokering import protocol as mdp

ECHO = {"echo": {"handler": "tests.workers:Echo", "workers": 1}}


def req(endpoint: str, payload: bytes) -> dict:
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(payload)
        assert sock.poll(3000), "no reply"
        return json.loads(sock.recv())


def test_control_garbage_gets_clear_errors(start_daemon):
    """Not JSON, wrong shape, unknown command: each answered with ok=false and a reason."""
    d = start_daemon(ECHO)
    cases = {b"\xff\xfe": "not JSON", b"[1, 2]": "must be", b'{"command": 5}': "must be",
             b'{"command": "status", "args": 3}': "args must be an object",
             b'{"command": "explode"}': "unknown command 'explode'",
             b"x" * 100_000: "the limit is"}
    for payload, expected in cases.items():
        reply = req(d.control, payload)
        assert reply["ok"] is False and expected in reply["error"], (payload[:20], reply)
    assert d.call("ping")["pong"] is True


def test_malformed_control_envelopes_are_dropped(start_daemon):
    """A DEALER sending frames without the REQ envelope is dropped and logged."""
    d = start_daemon(ECHO)
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(d.control)
        sock.send_multipart([b"no", b"envelope", b"here", b"at all"])
        sock.send(b"")
        d.wait_event("control.error", count=2)
    assert d.call("status")["services"]["echo"]["workers"][0]["state"] == "READY"


def test_backend_garbage_never_hurts_the_workers(start_daemon):
    """Random frames, bad headers and impossible commands on the backend are dropped."""
    d = start_daemon(ECHO, broker={"heartbeat_interval": 0.2})
    backend = f"ipc://{d.runtime}/backend.sock"
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(backend)
        for frames in ([b"garbage"], [b"", b"MDPW01", b"\x77"], [b"MDPW02"],
                       [b"", b"MDPW01", b"\x01", b"mmi.service"],
                       [b"", b"MDPW01", b"\x03", b"client", b"", b"body"],
                       [b"\x00" * 70_000]):
            sock.send_multipart(frames)
        d.wait_event("protocol.error", count=4)
        # A stranger's REPLY without READY, and the mmi registration, are answered DISCONNECT.
        assert sock.poll(3000)
        assert sock.recv_multipart() == [b"", mdp.W_V1, mdp.W_DISCONNECT]
    d.wait_ready()
    assert d.workers("echo")[0]["restarts"] == 0
