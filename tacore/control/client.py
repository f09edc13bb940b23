"""Talk to a running daemon's control socket, with a deadline: never a hang."""

from __future__ import annotations

import json
import os

import zmq
import zmq.auth

from tacore.access import denied
from tacore.control import protocol


class Unreachable(Exception):
    """No daemon answered at the endpoint within the timeout."""


class CommandFailed(Exception):
    """The daemon answered with an error."""


class AccessDenied(Exception):
    """This process may not connect to the ipc control socket; the message says why."""


class ControlClient:
    """``curve``: socket options for a CURVE-protected endpoint (see ``curve_options``)."""

    def __init__(self, endpoint: str, timeout: float = 5.0, curve: dict | None = None):
        self.endpoint, self.timeout, self.curve = endpoint, timeout, curve or {}

    def call(self, command: str, **args):
        if self.endpoint.startswith("ipc://"):
            self._check_access()
            path = self.endpoint[len("ipc://"):]
            if not os.path.exists(path):
                raise Unreachable(f"no daemon at {self.endpoint}: {path} does not exist")
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in self.curve.items():
            setattr(sock, option, value)
        try:
            sock.connect(self.endpoint)
            sock.send(protocol.encode_request(command, args))
            if not sock.poll(self.timeout * 1000):
                self._check_access()  # the file may have been replaced meanwhile
                raise Unreachable(f"no answer from {self.endpoint} within {self.timeout:g}s")
            reply = json.loads(sock.recv())
        finally:
            sock.close()
        if not reply.get("ok"):
            raise CommandFailed(reply.get("error", "unknown error"))
        return reply["result"]

    def _check_access(self) -> None:
        problem = denied(self.endpoint, "[control] group")
        if problem:
            raise AccessDenied(problem)


def curve_options(secret_key_file: str, server_key_file: str) -> dict:
    """Client socket options from our key pair file and the server's public key file."""
    public, secret = zmq.auth.load_certificate(secret_key_file)
    server, _ = zmq.auth.load_certificate(server_key_file)
    return {"curve_serverkey": server, "curve_publickey": public, "curve_secretkey": secret}
