"""What the daemon tells the router besides messages: the configuration, the supervisor's facts
(``Expect``, ``Retire``, ``Gone``, ``ServiceFatal``) and shutdown. Part of the router
(``Broker`` inherits ``Operated``), kept apart for size; see broker.py for the invariant."""

from __future__ import annotations

from tacore import facts as f
from tacore.brokering import protocol as mdp
from tacore.brokering.routes import Expected, Route
from tacore.config import ServiceConfig


class Operated:
    def configure(self, broker, services: dict, now: float) -> None:
        """Apply [broker] and [services.*]: new heartbeat pace, new, changed and removed
        services."""
        self.interval = broker.heartbeat_interval
        self.expiry = broker.heartbeat_interval * broker.heartbeat_liveness
        self.next_heartbeat = min(self.next_heartbeat, now + self.interval)
        self.external_services = broker.external_services
        self.max_external_services = broker.max_external_services
        self.unconfigured = ServiceConfig(name="", workers=0)  # the schema's defaults
        for name, s in services.items():
            route = self.routes.get(name.encode())
            if route is None:
                self.routes[name.encode()] = Route(name.encode(), s, True)
            else:
                route.apply(s, True)
        for route in [r for r in self.routes.values()
                      if r.configured and r.name.decode() not in services]:
            route.apply(self.unconfigured, False)
            route.linger_until = now
            while route.queue:
                self._error(route.queue.popleft(), b"503", "service_removed",
                            f"service {route.name.decode()!r} was removed from the configuration",
                            now)

    def apply(self, fact, now: float) -> None:
        """A fact from the supervisor."""
        self.on_fact[type(fact)](self, fact, now)

    def _expect(self, fact: f.Expect, now: float) -> None:
        self.expected[fact.identity] = Expected(fact.service, fact.request_limit, fact.credit)

    def _retire(self, fact: f.Retire, now: float) -> None:
        """No new request for this worker; a current one may still finish, then Drained."""
        ours = self.expected.get(fact.identity)
        if ours is not None:
            ours.retiring = True
        link = self.workers.get(fact.identity)
        if link is None:
            self.facts.append(f.Drained(fact.identity))  # not READY yet: nothing to finish
            return
        link.retiring = True
        link.route.withdraw(link)
        if not link.inflight:
            self.facts.append(f.Drained(fact.identity))

    def _gone(self, fact: f.Gone, now: float) -> None:
        """Its process has exited: what it held is requeued or answered "502"."""
        self.expected.pop(fact.identity, None)
        link = self.workers.get(fact.identity)
        if link is not None:
            self._drop_link(link, now)

    def _service_fatal(self, fact: f.ServiceFatal, now: float) -> None:
        route = self.routes.get(fact.service)
        if route is not None:
            route.fatal = fact.fatal

    on_fact = {f.Expect: _expect, f.Retire: _retire, f.Gone: _gone,
               f.ServiceFatal: _service_fatal}

    def stop_accepting(self, now: float, drain_until: float = float("inf")) -> None:
        """Shutdown: new requests get "503"; queued ones are answered "503" now; the ones
        external workers hold may finish until ``drain_until`` (see ``drained``)."""
        self.stopping = True
        self.drain_until = drain_until
        for route in self.routes.values():
            while route.queue:
                self._error(route.queue.popleft(), b"503", "shutting_down",
                            "the daemon is shutting down", now)

    def drained(self, now: float) -> bool:
        """Shutdown: whether no external worker holds a request any more. The supervisor
        drains the daemon's own workers; external ones (and other nodes' workers) are drained
        here, as long: at ``drain_until`` each request one still holds is answered "502"
        (it may have run) and the worker is told DISCONNECT."""
        busy = [link for link in self.workers.values() if link.external and link.inflight]
        if not busy or now < self.drain_until:
            return not busy
        for link in busy:
            req = link.inflight.popleft()  # an external worker holds one
            req.worker = None
            self._error(req, b"502", "shutting_down", "the daemon stopped before the worker "
                        "answered ([daemon] stop_timeout)", now)
            self._drop_link(link, now)
            self.to_worker(mdp.worker_command(link.identity, link.version, mdp.DISCONNECT))
        return True
