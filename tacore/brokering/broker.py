"""The Majordomo broker: clients on the frontend, workers on the backend, one reply per request.

Routing: per service, a FIFO queue of waiting requests and least-recently-used deques of
workers with free credit: idle ones first, then ones that could take one more. An external
worker holds one request at a time (as MDP assumes); the daemon's own workers may hold
``prefetch`` requests, so they never wait for the broker between two requests. A worker
handles its requests in order: only the first is running, and its request_timeout starts when
the one before it is answered; the others have not started, so if the worker dies or times
out they are given to another worker, not failed. Every request ends in exactly one reply to
its client: the worker's answer, or an error the broker makes itself ("404" unknown service,
"503" unavailable, "502" worker died, "504" request timeout). The broker never parses bodies.

Workers (the daemon's children and external MDP workers) say READY on the backend; idle ones
are heartbeated every ``heartbeat_interval`` and expire after ``interval * liveness`` of
silence. A busy worker is judged by the deadline armed when its request was dispatched.

The broker knows nothing of processes: what it learns about workers it tells its ``hooks``
(the daemon), which may answer by calling ``forget`` or ``retire``.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Protocol

import zmq

from tacore import events as ev
from tacore.brokering import protocol as mdp
from tacore.brokering.frames import recv_frames, send_frames
from tacore.brokering.protocol import ClientRequest
from tacore.events import Event
from tacore.observability.metrics import Histogram

MMI_SERVICE = b"mmi.service"
PROTOCOL_ERRORS_PER_SECOND = 20  # more than this are counted, not logged one by one
# Settings of a service that only external workers serve: queue_limit, queue_timeout,
# request_timeout, retry_on_failure (the defaults of a configured service).
EXTERNAL_SERVICE = (100, 10.0, 30.0, False)


class Hooks(Protocol):
    """What the broker tells the daemon."""

    def worker_ready(self, identity: bytes, service: bytes, now: float) -> bool | None:
        """True: one of ours, accepted; False: refuse it; None: an external worker."""

    def worker_expired(self, identity: bytes, now: float, silent_for: float) -> None: ...
    def worker_busy(self, identity: bytes, busy: bool, now: float) -> None: ...
    def worker_replied(self, identity: bytes, now: float) -> None: ...
    def request_timed_out(self, identity: bytes, now: float, age: float) -> None: ...
    def service_fatal(self, service: str) -> bool: ...
    def emit(self, event: Event) -> None: ...


class Route:
    """One service's queue and idle workers."""

    __slots__ = ("name", "queue", "idle", "spare", "workers", "configured", "queue_limit",
                 "queue_timeout", "request_timeout", "retry_on_failure", "prefetch",
                 "requests", "by_status", "latency")

    def __init__(self, name: bytes, configured: bool, queue_limit: int, queue_timeout: float,
                 request_timeout: float, retry_on_failure: bool, prefetch: int = 1):
        self.name, self.configured = name, configured
        self.queue: deque[ClientRequest] = deque()
        self.idle: deque[WorkerLink] = deque()  # no request: first choice
        self.spare: deque[WorkerLink] = deque()  # some requests, room for more
        self.workers = 0  # registered workers, idle or busy
        self.prefetch = prefetch
        self.queue_limit, self.queue_timeout = queue_limit, queue_timeout
        self.request_timeout, self.retry_on_failure = request_timeout, retry_on_failure
        self.requests = 0  # accepted (queued or dispatched)
        self.by_status: dict[bytes, int] = {}  # replies sent, by status code
        self.latency = Histogram()  # arrival to reply, in seconds

    def answered(self, status: bytes, seconds: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
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

    __slots__ = ("identity", "route", "version", "external", "last_seen", "registered",
                 "inflight", "capacity", "offered", "requests", "retiring")

    def __init__(self, identity: bytes, route: Route, version: int, external: bool, now: float):
        self.identity, self.route, self.version, self.external = identity, route, version, external
        self.last_seen = self.registered = now
        self.inflight: deque[ClientRequest] = deque()  # in order; the first is running
        self.capacity = 1 if external else route.prefetch
        self.offered: deque | None = None  # the route deque it waits in
        self.requests = 0
        self.retiring = False

    @property
    def current(self) -> ClientRequest | None:
        """The request the worker is running now."""
        return self.inflight[0] if self.inflight else None


class Broker:
    def __init__(self, frontend: zmq.Socket, backend: zmq.Socket, heartbeat_interval: float,
                 liveness: int, services: dict, hooks: Hooks):
        self.frontend, self.backend, self.hooks = frontend, backend, hooks
        self.interval, self.expiry = heartbeat_interval, heartbeat_interval * liveness
        self.routes: dict[bytes, Route] = {
            name.encode(): Route(name.encode(), True, s.queue_limit, s.queue_timeout,
                                 s.request_timeout, s.retry_on_failure, s.prefetch)
            for name, s in services.items()}
        self.workers: dict[bytes, WorkerLink] = {}
        self.stopping = False
        self.unknown_service = 0  # requests answered "404"
        self.sequence = 0
        self.next_heartbeat = float("inf")  # set by start()
        self.next_expiry = float("inf")  # earliest queue or request deadline, maybe early
        self.errors_window, self.errors_in_window, self.errors_suppressed = 0.0, 0, 0
        self.commands = {mdp.READY: self._ready, mdp.HEARTBEAT: self._heartbeat,
                         mdp.DISCONNECT: self._disconnect, mdp.REPLY: self._reply,
                         mdp.PARTIAL: self._partial}

    # --- clients ------------------------------------------------------------------------

    def on_frontend(self, now: float) -> None:
        """Route every request waiting on the frontend socket."""
        frontend = self.frontend
        while True:
            try:
                frames = recv_frames(frontend)
            except zmq.Again:
                return
            try:
                request = mdp.parse_client(frames, now)
            except mdp.ProtocolError as e:
                self._bad_client(frames, str(e), now)
                continue
            self._route(request, now)

    def _route(self, req: ClientRequest, now: float) -> None:
        if req.service[:4] == b"mmi.":
            self._mmi(req)
            return
        route = self.routes.get(req.service)
        if route is None:
            self._error(req, b"404", "no_such_service",
                        f"no service named {req.service.decode(errors='replace')!r}")
        elif self.stopping:
            self._error(req, b"503", "shutting_down", "the daemon is shutting down")
        elif route.idle or route.spare:
            route.requests += 1
            self._dispatch(route.take(), req, now)
        elif route.workers == 0 and self.hooks.service_fatal(route.name.decode()):
            self._error(req, b"503", "service_fatal",
                        f"service {route.name.decode()!r} is FATAL: no worker will start until "
                        "an operator acts")
        elif len(route.queue) >= route.queue_limit:
            self._error(req, b"503", "queue_full",
                        f"{len(route.queue)} requests already wait for {route.name.decode()!r} "
                        f"(queue_limit {route.queue_limit})")
        else:
            route.requests += 1
            req.deadline = now + route.queue_timeout
            route.queue.append(req)
            if req.deadline < self.next_expiry:
                self.next_expiry = req.deadline

    def _dispatch(self, link: WorkerLink, req: ClientRequest, now: float) -> None:
        """Give ``req`` to ``link`` (taken from the route's deques); on a vanished peer, put
        it back at the front of the queue."""
        self.sequence += 1
        req.token = self.sequence.to_bytes(8, "big")
        try:
            send_frames(self.backend,
                        mdp.worker_request(link.identity, link.version, req.token, req.body))
        except zmq.ZMQError:  # its connection is gone (ROUTER_MANDATORY) or it is flooded
            self._drop_link(link, now)
            self._requeue(link.route, req, now)
            return
        req.worker = link
        link.inflight.append(req)
        if len(link.inflight) == 1:
            self._started(req, link, now)
            if not link.external:
                self.hooks.worker_busy(link.identity, True, now)
        else:
            req.deadline = None  # waiting in the worker: its clock starts with it
        if len(link.inflight) < link.capacity and not link.retiring:
            link.route.offer(link)

    def _started(self, req: ClientRequest, link: WorkerLink, now: float) -> None:
        req.deadline = now + link.route.request_timeout
        if req.deadline < self.next_expiry:
            self.next_expiry = req.deadline

    def _requeue(self, route: Route, req: ClientRequest, now: float) -> None:
        """A request that has not been answered goes first in line again."""
        req.worker = None
        if self.stopping:
            self._error(req, b"503", "shutting_down", "the daemon is shutting down", now)
            return
        link = route.take()
        if link is not None:
            self._dispatch(link, req, now)
        else:
            req.deadline = now + route.queue_timeout
            route.queue.appendleft(req)
            self.next_expiry = min(self.next_expiry, req.deadline)

    def _mmi(self, req: ClientRequest) -> None:
        """8/MMI: the body is replaced by a status code, the service frame kept."""
        if req.service == MMI_SERVICE:
            route = self.routes.get(req.body[0]) if len(req.body) == 1 else None
            code = b"200" if route is not None and route.workers > 0 else b"404"
        else:
            code = b"501"
        self._send_client(mdp.client_reply(req.client, req.version, req.service, [code]))

    def _error(self, req: ClientRequest, status: bytes, error: str, message: str,
               now: float | None = None) -> None:
        body = [status, json.dumps({"error": error, "message": message}).encode()]
        self._send_client(mdp.client_reply(req.client, req.version, req.service, body))
        route = self.routes.get(req.service)
        if route is not None:
            route.answered(status, (now if now is not None else req.arrived) - req.arrived)
        else:
            self.unknown_service += 1

    def _bad_client(self, frames: list[bytes], problem: str, now: float) -> None:
        self._protocol_error("frontend", problem, frames[0] if frames else b"", now)
        version = mdp.replyable_version(frames)
        if version is not None:
            body = [b"400", json.dumps({"error": "bad_request", "message": problem}).encode()]
            self._send_client(mdp.client_reply(frames[0], version, b"", body))

    def _send_client(self, frames: list) -> None:
        try:
            send_frames(self.frontend, frames)
        except zmq.ZMQError:
            pass  # the client went away or stopped reading: its reply is dropped, nothing kept

    # --- workers ------------------------------------------------------------------------

    def on_backend(self, now: float) -> None:
        """Handle every message waiting on the backend socket."""
        backend, workers = self.backend, self.workers
        while True:
            try:
                frames = recv_frames(backend)
            except zmq.Again:
                return
            try:
                msg = mdp.parse_worker(frames)
            except mdp.ProtocolError as e:
                self._protocol_error("backend", str(e), frames[0], now)
                continue
            link = workers.get(msg.identity)
            if link is not None:
                link.last_seen = now
            self.commands[msg.command](msg, link, now)

    def _ready(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        if link is not None or msg.service[:4] == b"mmi.":
            # A second READY, or a worker claiming a broker-internal service: MDP says
            # answer a valid but unexpected command with DISCONNECT.
            self._refuse(msg, "second READY" if link else "mmi.* services belong to the broker",
                         now)
            return
        verdict = self.hooks.worker_ready(msg.identity, msg.service, now)
        if verdict is False:
            self._refuse(msg, "READY not expected from this worker now", now)
            return
        route = self.routes.get(msg.service)
        if route is None:
            route = self.routes[msg.service] = Route(msg.service, False, *EXTERNAL_SERVICE)
        link = WorkerLink(msg.identity, route, msg.version, verdict is None, now)
        self.workers[msg.identity] = link
        route.workers += 1
        self._release(link, now)

    def _release(self, link: WorkerLink, now: float) -> None:
        """The worker has free credit: fill it from the queue, or offer it to the route."""
        route = link.route
        if link.retiring:  # being stopped: it takes nothing new, and the daemon must know
            if not link.inflight:
                self.hooks.worker_busy(link.identity, False, now)
            return
        route.withdraw(link)
        while route.queue and len(link.inflight) < link.capacity:
            self._dispatch(link, route.queue.popleft(), now)
            if link.identity not in self.workers:
                return  # the send failed: the link is gone, the request requeued
            route.withdraw(link)
        if len(link.inflight) < link.capacity:
            route.offer(link)
        if not link.inflight and not link.external:
            self.hooks.worker_busy(link.identity, False, now)

    def _reply(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        req = self._current_for(msg, link, now)
        if req is None:
            return
        self._send_client(mdp.client_reply(req.client, req.version, req.service, msg.body))
        link.route.answered(msg.body[0] if msg.body else b"", now - req.arrived)
        link.inflight.popleft()
        req.worker = None
        link.requests += 1
        if not link.external:
            self.hooks.worker_replied(link.identity, now)
        if link.inflight:
            self._started(link.inflight[0], link, now)  # the worker goes on with the next one
        if link.identity in self.workers:  # (the daemon may have dropped it meanwhile)
            self._release(link, now)

    def _partial(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        req = self._current_for(msg, link, now)
        if req is not None and req.version == 2:  # a 0.1 client takes exactly one message
            self._send_client(mdp.client_reply(req.client, 2, req.service, msg.body, final=False))

    def _current_for(self, msg, link, now) -> ClientRequest | None:
        """The request a reply answers; a reply nobody asked for is refused or dropped."""
        if link is None or not link.inflight:
            self._refuse(msg, "a reply without a request", now)
            return None
        if msg.client != link.inflight[0].token:
            self._protocol_error("backend", "a reply for another request", msg.identity, now)
            return None
        return link.inflight[0]

    def _heartbeat(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        if link is None:
            # Not registered (e.g. it outlived a daemon restart): make it reconnect and READY.
            self._send_worker(msg.identity, msg.version, mdp.DISCONNECT)

    def _disconnect(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        if link is not None:
            self._drop_link(link, now)

    def _refuse(self, msg: mdp.WorkerMessage, why: str, now: float) -> None:
        self._protocol_error("backend", why, msg.identity, now)
        link = self.workers.get(msg.identity)
        if link is not None:
            self._drop_link(link, now)
        self._send_worker(msg.identity, msg.version, mdp.DISCONNECT)

    def _send_worker(self, identity: bytes, version: int, command: str) -> None:
        try:
            send_frames(self.backend, mdp.worker_command(identity, version, command))
        except zmq.ZMQError:
            pass  # the peer is gone (ROUTER_MANDATORY) or its queue is full: nothing to tell

    def _drop_link(self, link: WorkerLink, now: float) -> None:
        """Unregister a worker. Its running request is retried once or answered "502"; the
        ones waiting behind it never started, so they go back to the front of the queue."""
        if self.workers.pop(link.identity, None) is None:
            return
        route = link.route
        route.workers -= 1
        route.withdraw(link)
        inflight, link.inflight = link.inflight, deque()
        if inflight:
            running = inflight.popleft()
            for req in reversed(inflight):
                self._requeue(route, req, now)
            if route.retry_on_failure and not running.retried:
                running.retried = True
                self._requeue(route, running, now)
            else:
                self._error(running, b"502", "worker_died",
                            "the worker died while handling the request", now)
        if not route.configured and route.workers == 0 and not route.queue:
            del self.routes[route.name]  # an external-only service is gone with its workers

    # --- what the daemon calls ----------------------------------------------------------

    def start(self, now: float) -> None:
        self.next_heartbeat = now + self.interval

    def configure(self, heartbeat_interval: float, liveness: int, services: dict,
                  now: float) -> None:
        """A reloaded configuration: new heartbeat pace, new, changed and removed services."""
        self.interval, self.expiry = heartbeat_interval, heartbeat_interval * liveness
        self.next_heartbeat = min(self.next_heartbeat, now + self.interval)
        for name, s in services.items():
            settings = (s.queue_limit, s.queue_timeout, s.request_timeout, s.retry_on_failure,
                        s.prefetch)
            route = self.routes.get(name.encode())
            if route is None:
                self.routes[name.encode()] = Route(name.encode(), True, *settings)
            else:
                route.configured = True
                (route.queue_limit, route.queue_timeout, route.request_timeout,
                 route.retry_on_failure, route.prefetch) = settings
        for route in [r for r in self.routes.values()
                      if r.configured and r.name.decode() not in services]:
            route.configured = False
            while route.queue:
                self._error(route.queue.popleft(), b"503", "service_removed",
                            f"service {route.name.decode()!r} was removed from the configuration",
                            now)
            if route.workers == 0:
                del self.routes[route.name]

    def forget(self, identity: bytes, now: float) -> None:
        """This worker's process is gone."""
        link = self.workers.get(identity)
        if link is not None:
            self._drop_link(link, now)

    def retire(self, identity: bytes) -> None:
        """This worker is being stopped: no new request; a current one may still finish."""
        link = self.workers.get(identity)
        if link is not None:
            link.retiring = True
            link.route.withdraw(link)

    def stop_accepting(self, now: float) -> None:
        """Shutdown: new requests get "503"; queued ones are answered "503" now."""
        self.stopping = True
        for route in self.routes.values():
            while route.queue:
                self._error(route.queue.popleft(), b"503", "shutting_down",
                            "the daemon is shutting down", now)

    def tick(self, now: float) -> None:
        """Expire queued and running requests past their deadline; heartbeat idle workers."""
        if now >= self.next_expiry:
            self._expire(now)
        if now < self.next_heartbeat:
            return
        if now - self.next_heartbeat > self.expiry / 2:
            # The daemon itself did not run (stopped, suspended, starved): the workers' silence
            # is not theirs. Start counting again instead of killing every one of them.
            self.hooks.emit(Event(ev.DAEMON_STALLED, {"seconds": round(now - self.next_heartbeat, 3)},
                                  severity="warning"))
            for link in self.workers.values():
                link.last_seen = max(link.last_seen, now)
        for link in [w for w in self.workers.values()
                     if not w.inflight and now - w.last_seen > self.expiry]:
            self._drop_link(link, now)
            if link.external:
                self._send_worker(link.identity, link.version, mdp.DISCONNECT)
            self.hooks.worker_expired(link.identity, now, now - link.last_seen)
        for link in list(self.workers.values()):
            if not link.inflight:
                self._send_worker(link.identity, link.version, mdp.HEARTBEAT)
        self.next_heartbeat = now + self.interval

    def _expire(self, now: float) -> None:
        earliest = float("inf")
        for route in self.routes.values():
            queue = route.queue
            while queue and queue[0].deadline <= now:
                self._error(queue.popleft(), b"503", "no_worker",
                            f"no worker of {route.name.decode()!r} became available within "
                            f"queue_timeout ({route.queue_timeout:g}s)", now)
            if queue:
                earliest = min(earliest, queue[0].deadline)
        for link in list(self.workers.values()):
            req = link.current
            if req is None:
                continue
            if req.deadline > now:
                earliest = min(earliest, req.deadline)
                continue
            link.inflight.popleft()  # answered here: a late reply finds no request
            waiting, link.inflight = link.inflight, deque()
            self._error(req, b"504", "timeout", f"the request exceeded request_timeout "
                        f"({link.route.request_timeout:g}s)", now)
            self._drop_link(link, now)
            for later in reversed(waiting):  # never started: other workers take them
                self._requeue(link.route, later, now)
            if link.external:
                self._send_worker(link.identity, link.version, mdp.DISCONNECT)
            else:
                self.hooks.request_timed_out(link.identity, now, now - req.arrived)
        self.next_expiry = earliest

    def next_deadline(self) -> float:
        return min(self.next_heartbeat, self.next_expiry)

    def _protocol_error(self, socket: str, problem: str, peer: bytes, now: float) -> None:
        """Log garbage, at most PROTOCOL_ERRORS_PER_SECOND lines a second (a flood is counted)."""
        if now - self.errors_window >= 1.0:
            if self.errors_suppressed:
                self.hooks.emit(Event(ev.PROTOCOL_ERROR, {"suppressed": self.errors_suppressed}))
            self.errors_window, self.errors_in_window, self.errors_suppressed = now, 0, 0
        self.errors_in_window += 1
        if self.errors_in_window > PROTOCOL_ERRORS_PER_SECOND:
            self.errors_suppressed += 1
            return
        self.hooks.emit(Event(ev.PROTOCOL_ERROR, {"socket": socket, "error": problem,
                                                  "peer": peer.hex()[:64]}))

    # --- what status reads --------------------------------------------------------------

    def link(self, identity: bytes) -> WorkerLink | None:
        return self.workers.get(identity)

    def external_workers(self) -> list[WorkerLink]:
        return [w for w in self.workers.values() if w.external]
