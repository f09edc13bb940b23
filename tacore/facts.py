"""What the two cores tell each other, as plain values the daemon routes between them.

The router (brokering/broker.py) and the supervisor (supervision/supervisor.py) never call
each other. Each collects, in its ``facts`` list, what the other must learn; after every call
into a core the daemon hands those facts to the other core, one at a time, until both lists
are empty. So every chain runs one way at a time and no core is entered while it is busy.
"""

from __future__ import annotations

from typing import NamedTuple

# --- supervisor → router --------------------------------------------------------------


class Expect(NamedTuple):
    """A worker was forked for ``service``: its READY is ours, not an external worker's.
    ``request_limit``: after this many replies it is to be recycled (None: never);
    ``credit``: how many requests it may hold (None: the service's prefetch)."""

    identity: bytes
    service: bytes
    request_limit: int | None
    credit: int | None = None


class Retire(NamedTuple):
    """Give this worker no new request (it is drained or being stopped)."""

    identity: bytes


class Gone(NamedTuple):
    """This worker's process has exited."""

    identity: bytes


class ServiceFatal(NamedTuple):
    """Every slot of ``service`` is FATAL (or no longer): answer "503" service_fatal."""

    service: bytes
    fatal: bool


# --- router → supervisor --------------------------------------------------------------


class Ready(NamedTuple):
    """One of our workers said READY (first time, or again after it reconnected)."""

    identity: bytes


class Drained(NamedTuple):
    """A retired worker holds no request any more."""

    identity: bytes


class HeartbeatTimeout(NamedTuple):
    """An idle worker sent nothing for ``interval × liveness``: it is frozen."""

    identity: bytes
    silent_for: float


class TimedOut(NamedTuple):
    """A worker's running request passed request_timeout (it was answered "504")."""

    identity: bytes
    age: float


class LimitReached(NamedTuple):
    """A worker has answered its ``request_limit`` (max_requests with jitter)."""

    identity: bytes
    served: int
