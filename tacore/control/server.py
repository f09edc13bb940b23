"""Serve the control socket from the daemon's loop; garbage gets an error, never a crash."""

from __future__ import annotations

import traceback
from typing import Callable

import zmq

from tacore import events as ev
from tacore.control import protocol
from tacore.control.commands import COMMANDS, CommandError, Later
from tacore.events import Event


class ControlServer:
    def __init__(self, sock: zmq.Socket, daemon, emit: Callable[[Event], None]):
        self.sock, self.daemon, self.emit = sock, daemon, emit

    def on_readable(self, now: float) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3 or frames[1] != b"":
                self.emit(Event(ev.CONTROL_ERROR, {"error": f"malformed envelope of "
                                                   f"{len(frames)} frames, dropped"}))
                continue
            self._answer(frames[0], frames[2])

    def _answer(self, identity: bytes, payload: bytes) -> None:
        try:
            command, args = protocol.decode_request(payload)
        except protocol.BadEnvelope as e:
            self._reply(identity, protocol.error(str(e)))
            return
        handler = COMMANDS.get(command)
        if handler is None:
            self._reply(identity, protocol.error(
                f"unknown command {command!r}; known: {', '.join(COMMANDS)}"))
            return
        try:
            result = handler(self.daemon, args)
        except CommandError as e:
            self._reply(identity, protocol.error(str(e)))
            return
        except Exception as e:  # a bug in one command must not take the daemon down
            self.emit(Event(ev.CONTROL_ERROR, {"command": command, "error": repr(e),
                                               "exception": traceback.format_exc()}))
            self._reply(identity, protocol.error(f"{command} failed inside the daemon: {e!r}"))
            return
        if isinstance(result, Later):
            result.deliver = lambda value: self._reply(identity, protocol.ok(value))
        else:
            self._reply(identity, protocol.ok(result))

    def _reply(self, identity: bytes, payload: bytes) -> None:
        try:
            self.sock.send_multipart([identity, b"", payload], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away
