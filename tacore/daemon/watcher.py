"""What the loop waits on: ZeroMQ sockets on a zmq poller, every plain descriptor behind one epoll.

A daemon with N workers watches 4N descriptors (pidfd, stack pipe, stdout, stderr) besides its
handful of sockets, and ``zmq_poll`` converts every item on every call: with 64 workers that is
most of a wake-up's cost on the broker's path. So the zmq poller holds only the sockets and one
epoll descriptor, which is readable when any plain descriptor is; only then is epoll asked which.

A handler may unwatch a source whose event is in the same batch, or a descriptor number may be
reused by a newer registration meanwhile: each registration has a number, and an event is
delivered only to a registration at least as old as the wait that saw it.
"""

from __future__ import annotations

import select
from typing import Callable

import zmq

Handler = Callable[[float], None]


class Watcher:
    def __init__(self):
        self.handlers: dict = {}  # socket or fd -> (handler(now), registration number)
        self.registrations = 0
        self.poller = zmq.Poller()
        self.epoll = select.epoll()
        self.descriptors = self.epoll.fileno()
        self.poller.register(self.descriptors, zmq.POLLIN)

    def watch(self, source, handler: Handler) -> None:
        """``source``: a zmq.Socket, or a descriptor number (int)."""
        self.registrations += 1
        self.handlers[source] = (handler, self.registrations)
        if isinstance(source, zmq.Socket):
            self.poller.register(source, zmq.POLLIN)
        else:
            try:
                self.epoll.register(source, select.EPOLLIN)
            except FileExistsError:  # the number was closed and reused before its unwatch
                self.epoll.modify(source, select.EPOLLIN)

    def unwatch(self, source) -> None:
        if self.handlers.pop(source, None) is None:
            return
        if isinstance(source, zmq.Socket):
            self.poller.unregister(source)
        else:
            try:
                self.epoll.unregister(source)
            except OSError:
                pass  # closed already: the kernel dropped it from the epoll set

    def wait(self, timeout: float) -> list[tuple[Handler, int]]:
        """Wait up to ``timeout`` seconds; the handlers of what is readable, with the
        registration number a handler must not exceed (see ``ready``)."""
        seen = self.registrations
        events = self.poller.poll(timeout * 1000)
        ready = []
        for source, _ in events:
            if source == self.descriptors:
                ready += [(fd, seen) for fd, _ in self.epoll.poll(0)]
            else:
                ready.append((source, seen))
        return ready

    def handler(self, source, seen: int) -> Handler | None:
        """The handler for an event seen by a wait, if it still stands for that source."""
        handler, registered = self.handlers.get(source, (None, seen + 1))
        return handler if registered <= seen else None

    def close(self) -> None:
        self.epoll.close()
