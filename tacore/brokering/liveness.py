"""The broker's clock: heartbeats (to idle workers and to busy external ones), probes that
find a vanished connection, expiry of silent workers, request and queue deadlines, and the
collection of lingering routes. Part of the router (``Broker`` inherits ``Liveness``), kept
apart for size; see broker.py for the invariant these keep.
"""

from __future__ import annotations

from tacore import events as ev
from tacore import facts as f
from tacore.brokering import protocol as mdp
from tacore.brokering.routes import GONE, WorkerLink
from tacore.events import Event


class Liveness:
    def _probe(self, link: WorkerLink, now: float) -> None:
        """HEARTBEAT the worker; a connection that is gone drops it at once."""
        if self.to_worker(mdp.worker_command(link.identity, link.version,
                                             mdp.HEARTBEAT)) == GONE:
            self._lost(link, now)

    def _lost(self, link: WorkerLink, now: float) -> None:
        """A send found the worker's connection gone (or full): unregister it."""
        self.emit(Event(ev.WORKER_LOST, {
            "service": link.route.name.decode(errors="replace"), "worker": link.identity.hex(),
            "external": link.external, "requests": len(link.inflight)}, severity="warning"))
        self._drop_link(link, now)  # (one of ours reconnects and says READY again)

    def tick(self, now: float) -> None:
        """Expire queued and running requests past their deadline; heartbeat workers."""
        if now >= self.next_expiry:
            self._expire(now)
        if now < self.next_heartbeat:
            return
        if now - self.next_heartbeat > self.expiry / 2:
            # The daemon itself did not run (stopped, suspended, starved): the workers' silence
            # is not theirs. Start counting again instead of killing every one of them.
            self.emit(Event(ev.DAEMON_STALLED,
                                  {"seconds": round(now - self.next_heartbeat, 3)},
                                  severity="warning"))
            for link in self.workers.values():
                link.last_seen = max(link.last_seen, now)
        for link in [w for w in self.workers.values()
                     if not w.inflight and now - w.last_seen > self.expiry]:
            self._drop_link(link, now)
            if link.external:
                self.to_worker(mdp.worker_command(link.identity, link.version, mdp.DISCONNECT))
            else:
                self.facts.append(f.HeartbeatTimeout(link.identity, now - link.last_seen))
        for link in [w for w in self.workers.values() if w.external or not w.inflight]:
            if link.identity in self.workers:
                self._probe(link, now)
        self._collect(now)
        self.next_heartbeat = now + self.interval

    def _collect(self, now: float) -> None:
        """Delete the routes of services that are not configured, have had no worker for
        queue_timeout and hold no request (a queued one is answered at its deadline)."""
        for route in [r for r in self.routes.values() if not r.configured and r.workers == 0
                      and not r.queue and now >= r.linger_until]:
            del self.routes[route.name]

    def _expire(self, now: float) -> None:
        earliest = self.next_expiry = float("inf")  # what moves below lowers it again
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
            if req is None or link.identity not in self.workers:
                continue
            if req.deadline > now:
                earliest = min(earliest, req.deadline)
                continue
            link.inflight.popleft()  # answered here: a late reply finds no request
            req.worker = None
            self._error(req, b"504", "timeout", f"the request exceeded request_timeout "
                        f"({link.route.request_timeout:g}s)", now)
            self._drop_link(link, now, started=False)  # the ones behind it go to others
            if link.external:
                self.to_worker(mdp.worker_command(link.identity, link.version, mdp.DISCONNECT))
            else:
                self.facts.append(f.TimedOut(link.identity, now - req.arrived))
        self.next_expiry = min(self.next_expiry, earliest)

