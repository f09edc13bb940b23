"""A broker's bookkeeping: a service's route, a worker's link, and the checks and limits the
broker applies to peers (admission, status labels, rate-limited complaints). Plain objects."""

from __future__ import annotations

from collections import deque

from tacore.brokering.protocol import ClientRequest
from tacore.config import ServiceConfig
from tacore.histogram import Histogram

OTHER_STATUS = b"other"  # the one label for replies whose status frame is not a 3-digit code
GONE, FULL = "gone", "full"  # why to_worker could not send a message to a worker


def status_label(status: bytes) -> bytes:
    """A reply's status frame as a metric label: a 3-digit code, or ``other`` (bounded)."""
    return status if len(status) == 3 and status.isdigit() else OTHER_STATUS


class Route:
    """One service: its settings, its queue and its workers with free credit."""

    __slots__ = ("name", "queue", "idle", "spare", "workers", "configured", "queue_limit",
                 "queue_timeout", "request_timeout", "retry_on_failure", "prefetch",
                 "external", "keys", "checked", "linger_until", "requests", "by_status",
                 "latency", "fatal")

    def __init__(self, name: bytes, service: ServiceConfig, configured: bool):
        self.name = name
        self.queue: deque[ClientRequest] = deque()
        self.idle: deque[WorkerLink] = deque()  # no request: first choice
        self.spare: deque[WorkerLink] = deque()  # some requests, room for more
        self.workers = 0  # registered workers, idle or busy
        self.linger_until = 0.0  # when an unconfigured route without workers may be deleted
        self.requests = 0  # accepted (queued or dispatched)
        self.by_status: dict[bytes, int] = {}  # replies sent, by status label (bounded)
        self.latency = Histogram()  # arrival to reply, in seconds
        self.fatal = False  # every slot FATAL (the supervisor says): "503" at once
        self.apply(service, configured)

    def apply(self, service: ServiceConfig, configured: bool) -> None:
        self.configured = configured
        self.queue_limit, self.queue_timeout = service.queue_limit, service.queue_timeout
        self.request_timeout, self.retry_on_failure = (service.request_timeout,
                                                       service.retry_on_failure)
        self.prefetch, self.external = service.prefetch, service.external
        # The CURVE keys (z85) that may serve it as external workers; None: any allowed key.
        self.keys = frozenset(service.external_keys) or None
        self.checked = configured and service.handler is not None  # tacore's body convention
        # (a command worker's replies pass as they are, like an external worker's)

    def answered(self, label: bytes, seconds: float) -> None:
        self.by_status[label] = self.by_status.get(label, 0) + 1
        self.latency.observe(seconds)

    def take(self) -> "WorkerLink | None":
        """The worker to give the next request to, if any has free credit."""
        if self.idle:
            link = self.idle.popleft()
        elif self.spare:
            link = self.spare.popleft()
        else:
            return None
        link.offered = None
        return link

    def offer(self, link: "WorkerLink") -> None:
        """``link`` has free credit (and is in no deque)."""
        link.offered = self.spare if link.inflight else self.idle
        link.offered.append(link)

    def withdraw(self, link: "WorkerLink") -> None:
        if link.offered is not None:
            link.offered.remove(link)
            link.offered = None


class WorkerLink:
    """What the broker knows of one registered worker."""

    __slots__ = ("identity", "route", "version", "framing", "external", "last_seen",
                 "registered", "inflight", "capacity", "offered", "requests", "retiring",
                 "request_limit", "key")

    def __init__(self, identity: bytes, route: Route, version: int, external: bool, now: float,
                 request_limit: int | None = None, credit: int | None = None):
        self.identity, self.route, self.version, self.external = identity, route, version, external
        self.framing = version  # of its requests and replies: a version, or COMPACT
        self.last_seen = self.registered = now
        self.inflight: deque[ClientRequest] = deque()  # in order; the first is running
        self.capacity = 1 if external else credit or route.prefetch
        self.offered: deque | None = None  # the route deque it waits in
        self.requests = 0
        self.retiring = False
        self.request_limit = request_limit  # ours: recycle after this many replies
        self.key: str | None = None  # the CURVE key (z85) it connected with, if any

    @property
    def current(self) -> ClientRequest | None:
        """The request the worker is running now."""
        return self.inflight[0] if self.inflight else None


class Expected:
    """One of our workers, forked but maybe not READY yet (``Expect``)."""

    __slots__ = ("service", "request_limit", "credit", "retiring")

    def __init__(self, service: bytes, request_limit: int | None, credit: int | None = None):
        self.service, self.request_limit, self.credit = service, request_limit, credit
        self.retiring = False


def admission(service: bytes, route: "Route | None", key: str | None, broker) -> str:
    """Why an external worker may not serve ``service`` ("" if it may)."""
    name = service.decode(errors="replace")
    if service[:4] == b"mmi.":
        return "mmi.* services belong to the broker"
    if route is not None and route.configured:
        if not route.external:
            return (f"service {name!r} does not take external workers "
                    f"([services.{name}] external = false)")
        if route.keys is not None and key not in route.keys:
            return (f"this worker's CURVE key may not serve {name!r} "
                    f"([services.{name}] external_keys)")
        return ""
    if route is None:
        if not broker.external_services:
            return (f"service {name!r} is not configured and [broker] external_services "
                    "is false")
        unconfigured = sum(not r.configured for r in broker.routes.values())
        if unconfigured >= broker.max_external_services:
            return (f"{unconfigured} services are not configured already "
                    "([broker] max_external_services)")
    return ""


class RateLimit:
    """At most ``per_second`` admitted a second; the rest are counted and reported once."""

    def __init__(self, per_second: int):
        self.per_second = per_second
        self.window, self.count, self.suppressed, self.allowed = 0.0, 0, 0, True

    def admit(self, now: float) -> int:
        """Count one; ``allowed`` says whether it may be logged. Returns how many were
        suppressed in the window that just ended (0 if none ended)."""
        ended = 0
        if now - self.window >= 1.0:
            ended = self.suppressed
            self.window, self.count, self.suppressed = now, 0, 0
        self.count += 1
        self.allowed = self.count <= self.per_second
        if not self.allowed:
            self.suppressed += 1
        return ended
