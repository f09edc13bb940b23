"""The Majordomo broker: clients on the frontend, workers on the backend, one reply per request.

The broker owns no socket. The daemon hands it each received message (``from_client``,
``from_worker``) and gives it two ways out: ``to_client(frames)``, and ``to_worker(frames)``,
which says whether the worker's connection took the message (``None``), is gone (``GONE``) or is
full (``FULL``). That keeps the routing core a plain object a model test can drive.

**The invariant.** Every accepted request is at every moment in exactly one place: its
service's queue, one registered worker's in-flight list, or answered. It leaves a place only by
being answered or moved to another place, and the places are never thrown away with requests in
them: a route (a service's queue and workers) is deleted only by ``_collect`` in ``tick``, when
no worker is registered for it, its queue is empty and it has lingered ``queue_timeout``; a
worker's link is unregistered only by ``_drop_link``, which first moves its requests back to the
queue (or answers them).

Routing: per service, a FIFO queue of waiting requests and least-recently-used deques of
workers with free credit: idle ones first, then ones that could take one more. An external
worker holds one request at a time (as MDP assumes); the daemon's own workers may hold
``prefetch`` requests, so they never wait for the broker between two requests. A worker
handles its requests in order: only the first is running, and its request_timeout starts when
the one before it is answered; the others have not started, so if the worker dies or times
out they are given to another worker, not failed. The broker's own answers: "404" unknown
service, "503" unavailable, "502" the worker died (or sent a reply that is not tacore's body
convention, for a service that uses it), "504" request timeout. Bodies are never parsed.

Liveness: every ``heartbeat_interval`` the broker sends HEARTBEAT to idle workers and to busy
external workers (MDP: HEARTBEAT is valid at any time after READY; a busy worker reads it when
it next reads). The backend is ROUTER_MANDATORY, so a send to a worker whose connection is
gone fails at once: its request is answered "502" (or retried) within one interval. Idle
workers that stay silent ``interval * liveness`` expire. The daemon's own busy workers are
judged by their request deadline and by their process sentinel.

The broker knows nothing of processes. Which identities are the daemon's own workers it learns
from the supervisor's facts (``Expect``, ``Retire``, ``Gone``, ``ServiceFatal``: see
tacore/facts.py); what the supervisor must learn (``Ready``, ``Drained``,
``HeartbeatTimeout``, ``TimedOut``, ``LimitReached``) it appends to ``facts``, which the daemon
hands over once the call into the broker has returned. It owns "busy": a worker is busy while it holds a request.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Callable

from tacore import events as ev
from tacore import facts as f
from tacore.brokering import protocol as mdp
from tacore.brokering.liveness import Liveness
from tacore.brokering.operated import Operated
from tacore.brokering.protocol import ClientRequest
from tacore.brokering.routes import (OTHER_STATUS, Expected, RateLimit, Route, WorkerLink,
                                     admission, status_label)
from tacore.events import Event

MMI_SERVICE = b"mmi.service"
COMPLAINTS_PER_SECOND = 20  # log lines about bad peers; more are counted, not logged


class Broker(Liveness, Operated):
    """The routing core. Its ports — ``to_client(frames)``, ``to_worker(frames)`` (None, GONE
    or FULL) and ``emit(event)`` — act on the world and never call back into a core."""

    def __init__(self, to_client: Callable[[list], None], to_worker: Callable[[list], str | None],
                 emit: Callable[[Event], None], broker, services: dict):
        self.to_client, self.to_worker, self.emit = to_client, to_worker, emit
        self.facts: list = []  # for the supervisor, handed over by the daemon
        self.routes: dict[bytes, Route] = {}
        self.workers: dict[bytes, WorkerLink] = {}
        self.expected: dict[bytes, Expected] = {}  # our workers, by identity
        self.stopping = False
        self.drain_until = float("inf")  # shutdown: external workers' requests may finish
        self.unknown_service = 0  # requests answered "404"
        self.sequence = 0
        self.next_heartbeat = float("inf")  # set by start()
        self.next_expiry = float("inf")  # earliest queue or request deadline, maybe early
        self.complaints = RateLimit(COMPLAINTS_PER_SECOND)
        self.commands = {mdp.HEARTBEAT: self._heartbeat,  # (READY: _ready, with the key)
                         mdp.DISCONNECT: self._disconnect, mdp.REPLY: self._reply,
                         mdp.PARTIAL: self._partial}
        self.configure(broker, services, 0.0)

    # --- clients ------------------------------------------------------------------------

    def from_client(self, frames: list, now: float) -> None:
        """One message received on the frontend."""
        if len(frames) < 5 and type(frames[-1]) is not bytes:
            frames[-1] = frames[-1].bytes  # a large frame where the header is: parse it as bytes
        try:
            request = mdp.parse_client(frames, now)
        except mdp.ProtocolError as e:
            self._bad_client(frames, str(e), now)
            return
        if request.service[:4] == b"mmi.":
            self._mmi(request, now)
        else:
            self._route(request, now)

    def _route(self, req: ClientRequest, now: float) -> None:
        route = self.routes.get(req.service)
        if (route is not None and not route.configured and not route.workers
                and not route.queue and now >= route.linger_until):
            del self.routes[req.service]  # it has lingered long enough: it is gone
            route = None
        if route is None:
            self._error(req, b"404", "no_such_service",
                        f"no service named {req.service.decode(errors='replace')!r}", now)
        elif self.stopping:
            self._error(req, b"503", "shutting_down", "the daemon is shutting down", now)
        elif route.workers == 0 and route.fatal:
            self._error(req, b"503", "service_fatal",
                        f"service {route.name.decode()!r} is FATAL: no worker will start until "
                        "an operator acts", now)
        elif not (route.idle or route.spare) and len(route.queue) >= route.queue_limit:
            self._error(req, b"503", "queue_full",
                        f"{len(route.queue)} requests already wait for {route.name.decode()!r} "
                        f"(queue_limit {route.queue_limit})", now)
        else:
            route.requests += 1
            self._place(route, req, now, first=False)

    def _place(self, route: Route, req: ClientRequest, now: float, first: bool) -> None:
        """Give ``req`` to a worker with free credit, or queue it (at the front if ``first``:
        it was in line before the ones waiting now)."""
        req.worker = None
        while (link := route.take()) is not None:
            if self._dispatch(link, req, now):
                return
        req.deadline = now + route.queue_timeout
        if first:
            route.queue.appendleft(req)
        else:
            route.queue.append(req)
        if req.deadline < self.next_expiry:
            self.next_expiry = req.deadline

    def _dispatch(self, link: WorkerLink, req: ClientRequest, now: float) -> bool:
        """Send ``req`` to ``link`` (taken from its route's deques). False: the worker's
        connection is gone or full; the link has been dropped and ``req`` is still the
        caller's to place."""
        self.sequence += 1
        req.token = self.sequence.to_bytes(8, "big")
        if self.to_worker(mdp.worker_request(link.identity, link.framing, req.token, req.body)):
            self._lost(link, now)
            return False
        req.worker = link
        link.inflight.append(req)
        if len(link.inflight) == 1:
            self._started(req, link, now)
        else:
            req.deadline = None  # waiting in the worker: its clock starts with it
        if len(link.inflight) < link.capacity and not link.retiring:
            link.route.offer(link)
        return True

    def _started(self, req: ClientRequest, link: WorkerLink, now: float) -> None:
        req.deadline = now + link.route.request_timeout
        if req.deadline < self.next_expiry:
            self.next_expiry = req.deadline

    def _mmi(self, req: ClientRequest, now: float) -> None:
        """8/MMI: the body is replaced by a status code, the service frame kept. mmi.service
        says "200" only while a worker that can take requests is registered: external ones
        are probed first, so one whose connection is gone does not count."""
        if req.service == MMI_SERVICE:
            name = req.body[0] if len(req.body) == 1 else None
            route = self.routes.get(name) if type(name) is bytes else None
            if route is not None and route.workers:
                for link in [w for w in self.workers.values() if w.route is route and w.external]:
                    self._probe(link, now)
            live = route is not None and any(w.route is route and not w.retiring
                                             for w in self.workers.values())
            code = b"200" if live else b"404"
        else:
            code = b"501"
        self.to_client(mdp.client_reply(req.client, req.version, req.service, [code]))

    def _error(self, req: ClientRequest, status: bytes, error: str, message: str,
               now: float) -> None:
        body = [status, json.dumps({"error": error, "message": message}).encode()]
        self.to_client(mdp.client_reply(req.client, req.version, req.service, body))
        route = self.routes.get(req.service)
        if route is not None:
            route.answered(status, now - req.arrived)
        else:
            self.unknown_service += 1

    def _bad_client(self, frames: list, problem: str, now: float) -> None:
        self._complain(ev.PROTOCOL_ERROR, now, socket="frontend", error=problem,
                       peer=frames[0].hex()[:64] if frames else "")
        version = mdp.replyable_version(frames)
        if version is not None:
            body = [b"400", json.dumps({"error": "bad_request", "message": problem}).encode()]
            self.to_client(mdp.client_reply(frames[0], version, b"", body))

    # --- workers ------------------------------------------------------------------------

    def from_worker(self, frames: list, now: float, key: str | None = None) -> None:
        """One message received on the backend; ``key``: the sender's CURVE key, if any."""
        link = self.workers.get(frames[0])
        if link is not None:
            link.last_seen = now
            if (link.framing == mdp.COMPACT and len(frames) > 1 and type(frames[1]) is bytes
                    and frames[1][:1] == mdp.T_REPLY):
                self._compact_reply(link, frames, now)  # (a body of any size passes as it is)
                return
        if len(frames) < 6 and type(frames[-1]) is not bytes:
            # A large frame where a Majordomo header is (a body starts at index 5 or 6).
            frames[-1] = frames[-1].bytes
        try:
            msg = mdp.parse_worker(frames)
        except mdp.ProtocolError as e:
            self._complain(ev.PROTOCOL_ERROR, now, socket="backend", error=str(e),
                           peer=frames[0].hex()[:64])
            return
        if msg.command == mdp.READY:
            self._ready(msg, link, now, key)
        else:
            self.commands[msg.command](msg, link, now)

    def _ready(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float,
               key: str | None = None) -> None:
        if link is not None:
            self._refuse(msg, "second READY", now)  # MDP: an unexpected command → DISCONNECT
            return
        if self.stopping:
            self._refuse(msg, "the daemon is shutting down", now)
            return
        route = self.routes.get(msg.service)
        ours = self.expected.get(msg.identity)
        if ours is not None:
            if ours.service != msg.service or ours.retiring or route is None:
                self._refuse(msg, "READY not expected from this worker now", now)
                return
        else:
            why = admission(msg.service, route, key, self)
            if why:
                self._refuse(msg, why, now, event=ev.WORKER_REFUSED)
                return
            if route is None:
                route = self.routes[msg.service] = Route(msg.service, self.unconfigured, False)
        link = WorkerLink(msg.identity, route, msg.version, ours is None, now,
                          ours.request_limit if ours else None, ours.credit if ours else None)
        link.key = key
        if ours is not None and msg.compact:
            link.framing = mdp.COMPACT  # one of ours offers it: its requests use it
        self.workers[msg.identity] = link
        route.workers += 1
        if ours is not None:
            self.facts.append(f.Ready(msg.identity))
        else:  # MDP has no acknowledgement: a HEARTBEAT at once tells it it is registered
            self._probe(link, now)
            if msg.identity not in self.workers:
                return
        self._release(link, now)

    def _release(self, link: WorkerLink, now: float) -> None:
        """The worker has free credit: fill it from the queue, or offer it to the route."""
        route = link.route
        if link.retiring:  # being stopped: it takes nothing new, and the supervisor must know
            if not link.inflight and not link.external:
                self.facts.append(f.Drained(link.identity))
            return
        route.withdraw(link)
        while route.queue and len(link.inflight) < link.capacity:
            req = route.queue.popleft()
            if not self._dispatch(link, req, now):
                self._place(route, req, now, first=True)  # the link is gone: others may take it
                return
            route.withdraw(link)
        if len(link.inflight) < link.capacity:
            route.offer(link)

    def _reply(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        req = self._current_for(msg, link, now)
        if req is not None:
            self._answer(link, req, msg.body, now)

    def _compact_reply(self, link: WorkerLink, frames: list, now: float) -> None:
        """A reply in the compact framing: [0xA2 token status][body...]."""
        head = frames[1]
        if not link.inflight:  # as for a Majordomo reply nobody asked for
            self._refuse(mdp.WorkerMessage(link.identity, 1, mdp.REPLY),
                         "a reply without a request", now)
            return
        req = link.inflight[0]
        if head[1:mdp.TOKEN_END] != req.token:
            self._complain(ev.PROTOCOL_ERROR, now, socket="backend",
                           error="a reply for another request", peer=link.identity.hex()[:64])
            return
        frames[1] = head[mdp.TOKEN_END:]  # the status frame, then the body as the worker sent it
        self._answer(link, req, frames[1:], now)

    def _answer(self, link: WorkerLink, req: ClientRequest, body: list, now: float) -> None:
        """The worker's reply to its running request goes to the client; its credit is free."""
        route = link.route
        label = status_label(body[0])
        if label is OTHER_STATUS and route.checked:
            self._complain(ev.BAD_REPLY, now, service=route.name.decode(errors="replace"),
                           worker=link.identity.hex(), status=memoryview(body[0])[:32].hex(),
                           action='answered "502" bad_reply')
            self._error(req, b"502", "bad_reply", "the worker's reply does not follow tacore's "
                        "body convention ([status][body])", now)
        else:
            self.to_client(mdp.client_reply(req.client, req.version, req.service, body))
            route.answered(label, now - req.arrived)
        link.inflight.popleft()
        req.worker = None
        link.requests += 1
        if link.requests == link.request_limit:
            self.facts.append(f.LimitReached(link.identity, link.requests))
        if link.inflight:
            self._started(link.inflight[0], link, now)  # the worker goes on with the next one
        self._release(link, now)

    def _partial(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        req = self._current_for(msg, link, now)
        if req is not None and req.version == 2:  # a 0.1 client takes exactly one message
            self.to_client(mdp.client_reply(req.client, 2, req.service, msg.body, final=False))

    def _current_for(self, msg, link, now) -> ClientRequest | None:
        """The request a reply answers; a reply nobody asked for is refused or dropped."""
        if link is None or not link.inflight:
            self._refuse(msg, "a reply without a request", now)
            return None
        if msg.client != link.inflight[0].token:
            self._complain(ev.PROTOCOL_ERROR, now, socket="backend",
                           error="a reply for another request", peer=msg.identity.hex()[:64])
            return None
        return link.inflight[0]

    def _heartbeat(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        if link is None:
            # Not registered (e.g. it outlived a daemon restart): make it reconnect and READY.
            self.to_worker(mdp.worker_command(msg.identity, msg.version, mdp.DISCONNECT))

    def _disconnect(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        """A worker leaves. One leaves when it holds no request, so a request it holds was
        sent while it was leaving and never started: it goes to another worker."""
        if link is not None:
            self._drop_link(link, now, started=False)

    def _refuse(self, msg: mdp.WorkerMessage, why: str, now: float,
                event: str = ev.PROTOCOL_ERROR) -> None:
        fields = {"socket": "backend", "error": why} if event == ev.PROTOCOL_ERROR else {
            "service": msg.service.decode(errors="replace"), "reason": why}
        self._complain(event, now, peer=msg.identity.hex()[:64], **fields)
        link = self.workers.get(msg.identity)
        if link is not None:
            self._drop_link(link, now)
        self.to_worker(mdp.worker_command(msg.identity, msg.version, mdp.DISCONNECT))

    def _drop_link(self, link: WorkerLink, now: float, started: bool = True) -> None:
        """Unregister a worker. Its running request (if ``started``) is retried once or
        answered "502"; the ones waiting behind it never started, so they go back to the
        front of the queue. A route whose last external worker left keeps its queue for
        queue_timeout: a worker that reconnects picks the requests up."""
        if self.workers.pop(link.identity, None) is None:
            return
        route = link.route
        route.workers -= 1
        route.withdraw(link)
        if route.workers == 0:
            route.linger_until = now + (route.queue_timeout if link.external else 0.0)
        inflight, link.inflight = link.inflight, deque()
        running = inflight.popleft() if inflight and started else None
        for req in reversed(inflight):
            self._requeue(route, req, now)
        if running is None:
            return
        if route.retry_on_failure and not running.retried:
            running.retried = True
            self._requeue(route, running, now)
        else:
            running.worker = None
            self._error(running, b"502", "worker_died",
                        "the worker died while handling the request", now)

    def _requeue(self, route: Route, req: ClientRequest, now: float) -> None:
        """A request that has not been answered goes first in line again."""
        if self.stopping:
            req.worker = None
            self._error(req, b"503", "shutting_down", "the daemon is shutting down", now)
        else:
            self._place(route, req, now, first=True)

    # --- what the daemon calls ----------------------------------------------------------

    def start(self, now: float) -> None:
        self.next_heartbeat = now + self.interval

    def next_deadline(self) -> float:
        deadline = min(self.next_heartbeat, self.next_expiry)
        if self.stopping and any(w.external and w.inflight for w in self.workers.values()):
            deadline = min(deadline, self.drain_until)  # (once passed, drained() empties them)
        return deadline

    def _complain(self, event: str, now: float, **fields) -> None:
        """Log a bad peer, at most COMPLAINTS_PER_SECOND lines a second (a flood is counted)."""
        suppressed = self.complaints.admit(now)
        if suppressed:
            self.emit(Event(ev.PROTOCOL_ERROR, {"suppressed": suppressed}))
        if self.complaints.allowed:
            self.emit(Event(event, fields))

    # --- what status reads --------------------------------------------------------------

    def link(self, identity: bytes) -> WorkerLink | None:
        return self.workers.get(identity)

    def external_workers(self) -> list[WorkerLink]:
        return [w for w in self.workers.values() if w.external]
