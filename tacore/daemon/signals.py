"""Signals reach the loop as bytes on a socket: the handlers themselves do nothing.

``signal.set_wakeup_fd`` makes the C-level handler write the signal number to a socket the
loop polls, so a signal is handled at once (pyzmq retries poll after EINTR, so a flag alone
would be seen late) and no logging, lock or I/O ever runs inside a handler.
"""

from __future__ import annotations

import signal
import socket

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _ignore(signum, frame):
    pass  # the wake-up byte already carries the signal to the loop


class SignalPipe:
    def __init__(self):
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, _ignore)

    def fileno(self) -> int:
        return self.reader.fileno()

    def drain(self) -> list[signal.Signals]:
        received = []
        while True:
            try:
                data = self.reader.recv(64)
            except BlockingIOError:
                return received
            if not data:
                return received
            received += [signal.Signals(b) for b in data if b in set(HANDLED)]

    def close(self):
        signal.set_wakeup_fd(-1)
        self.reader.close()
        self.writer.close()
