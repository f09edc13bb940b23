"""Majordomo peers written from the specs (7/MDP, 18/MDP), for tests: clients and a worker."""

from __future__ import annotations

import json
import threading
import time

import zmq


def body(method: str, params=None) -> bytes:
    return json.dumps({"method": method, "params": params}).encode()


def v1_call(endpoint: str, service: bytes, frames: list[bytes], timeout: float = 5) -> list[bytes]:
    """A 7/MDP client on a REQ socket: [MDPC01][service][body...] -> the reply's frames."""
    with zmq.Context.instance().socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send_multipart([b"MDPC01", service, *frames])
        assert sock.poll(timeout * 1000), f"no reply from {service!r} within {timeout}s"
        return sock.recv_multipart()


def v2_call(endpoint: str, service: bytes, frames: list[bytes],
            timeout: float = 5) -> list[list[bytes]]:
    """An 18/MDP client on a DEALER: every message up to and including the FINAL."""
    with zmq.Context.instance().socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send_multipart([b"MDPC02", b"\x01", service, *frames])
        replies = []
        while not replies or replies[-1][1] != b"\x03":
            assert sock.poll(timeout * 1000), f"no FINAL from {service!r} within {timeout}s"
            replies.append(sock.recv_multipart())
        return replies


def call(endpoint: str, service: str, method: str, params=None, timeout: float = 5):
    """tacore's body convention over 7/MDP: returns (status, decoded payload)."""
    reply = v1_call(endpoint, service.encode(), [body(method, params)], timeout)
    assert reply[:2] == [b"MDPC01", service.encode()], reply
    return reply[2].decode(), json.loads(reply[3])


class ExternalWorker(threading.Thread):
    """A Majordomo worker in another language's shoes: any version, its own identity.

    ``handler(body_frames) -> list of messages``; with version 2 every message but the last
    is sent as PARTIAL. It heartbeats every ``interval`` seconds while idle.
    """

    def __init__(self, endpoint: str, service: bytes, version: int = 1, handler=None,
                 interval: float = 0.2):
        super().__init__(daemon=True)
        self.endpoint, self.service, self.version, self.interval = endpoint, service, version, interval
        self.handler = handler or (lambda frames: [[b"200", *frames]])  # echo
        self.stopped = threading.Event()
        self.mute = threading.Event()  # set: hear and say nothing more, as a hung worker would
        self.disconnects = 0
        self.served = 0
        self.ctx = zmq.Context()

    def header(self) -> list[bytes]:
        return [b"", b"MDPW01"] if self.version == 1 else [b"MDPW02"]

    def code(self, name: str) -> bytes:
        v1 = {"ready": 1, "reply": 3, "heartbeat": 4, "disconnect": 5}
        v2 = {"ready": 1, "partial": 3, "reply": 4, "heartbeat": 5, "disconnect": 6}
        return bytes([(v1 if self.version == 1 else v2)[name]])

    def run(self):
        sock = self._connect()
        beat = time.monotonic() + self.interval
        while not self.stopped.is_set():
            if self.mute.is_set():
                self.stopped.wait(0.02)  # hung: hears and says nothing until stopped
                continue
            if sock.poll(20):
                frames = sock.recv_multipart()[len(self.header()):]
                command = frames[0]
                if command == b"\x02":  # REQUEST in both versions
                    client, payload = frames[1], frames[3:]
                    messages = self.handler(payload)
                    for i, message in enumerate(messages):
                        last = i == len(messages) - 1
                        kind = "reply" if last or self.version == 1 else "partial"
                        sock.send_multipart([*self.header(), self.code(kind), client, b"", *message])
                        if self.version == 1:
                            break
                    self.served += 1
                elif command == self.code("disconnect"):
                    self.disconnects += 1
                    sock.close()
                    sock = self._connect()
            if time.monotonic() >= beat:
                sock.send_multipart([*self.header(), self.code("heartbeat")])
                beat = time.monotonic() + self.interval
        sock.send_multipart([*self.header(), self.code("disconnect")])
        sock.close()
        self.ctx.term()

    def _connect(self):
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 100)
        sock.connect(self.endpoint)
        sock.send_multipart([*self.header(), self.code("ready"), self.service])
        return sock

    def stop(self):
        self.stopped.set()
        self.join(5)
