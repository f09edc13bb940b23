"""sd_notify: tell systemd (Type=notify) when the daemon is ready, reloading, stopping, alive.

The datagram protocol on $NOTIFY_SOCKET, a few lines of stdlib; without the variable every call
is a no-op. The variables are removed from the environment once read, so workers never inherit
them. ``WATCHDOG=1`` is sent from the main loop every half ``$WATCHDOG_USEC``: if the loop
wedges, systemd kills and restarts the daemon.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ=os.environ):
        address = environ.pop("NOTIFY_SOCKET", None)
        usec = environ.pop("WATCHDOG_USEC", None)
        watchdog_pid = environ.pop("WATCHDOG_PID", None)
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if address else None
        mine = watchdog_pid is None or watchdog_pid == str(os.getpid())
        self.watchdog_every = int(usec) / 2e6 if usec and usec.isdigit() and mine else None
        self.next_watchdog = 0.0
        self.status = None

    @property
    def active(self) -> bool:
        return self.sock is not None

    def send(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            pass  # systemd went away or the socket is full: nothing useful to do about it

    def ready(self, status: str) -> None:
        self.status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining requests, then stopping workers")

    def set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self.send(f"STATUS={status}")

    def watchdog(self, now: float) -> float | None:
        """Pet the watchdog if due; returns when it is next due (None: no watchdog)."""
        if self.watchdog_every is None or self.sock is None:
            return None
        if now >= self.next_watchdog:
            self.send("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog_every
        return self.next_watchdog

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
