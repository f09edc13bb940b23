"""Talk to a running daemon's control socket, with a deadline: never a hang."""

from __future__ import annotations

import json
import os

import zmq

from tacore.control import protocol


class Unreachable(Exception):
    """No daemon answered at the endpoint within the timeout."""


class CommandFailed(Exception):
    """The daemon answered with an error."""


class ControlClient:
    def __init__(self, endpoint: str, timeout: float = 5.0):
        self.endpoint, self.timeout = endpoint, timeout

    def call(self, command: str, **args):
        if self.endpoint.startswith("ipc://"):
            path = self.endpoint[len("ipc://"):]
            if not os.path.exists(path):
                raise Unreachable(f"no daemon at {self.endpoint}: {path} does not exist")
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.endpoint)
            sock.send(protocol.encode_request(command, args))
            if not sock.poll(self.timeout * 1000):
                raise Unreachable(f"no answer from {self.endpoint} within {self.timeout:g}s")
            reply = json.loads(sock.recv())
        finally:
            sock.close()
        if not reply.get("ok"):
            raise CommandFailed(reply.get("error", "unknown error"))
        return reply["result"]
