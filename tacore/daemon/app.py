"""The daemon: one loop that owns all state.

    run():  bind → start workers → loop { wait, dispatch, fire deadlines } → close

The loop polls the backend and control sockets, the signal wake-up socket and every worker's
sentinel and stack pipe. Nothing else runs: no threads, no callbacks from elsewhere.
"""

from __future__ import annotations

import os
import signal
import time

import zmq

from tacore import __version__
from tacore import events as ev
from tacore.brokering.broker import Broker
from tacore import config as configuration
from tacore.config import Config, kept_as_running, restart_needed
from tacore.control.server import ControlServer
from tacore.daemon import sockets
from tacore.daemon.security import CurveGuard, client_keys
from tacore.daemon.signals import SignalPipe
from tacore.events import Event
from tacore.errors import ConfigError
from tacore.observability.logging import configure_logging, log_event
from tacore.supervision.supervisor import Supervisor

# The loop wakes at least this often even with nothing due, as a guard against a lost deadline.
MAX_POLL = 1.0


class Daemon:
    def __init__(self, config: Config, log):
        self.config, self.log = config, log
        self.pid = os.getpid()
        self.started, self.started_wall = time.monotonic(), time.time()
        self.stopping = False
        self.handlers = {}  # socket or fd -> (callable(now), when it was registered)
        self.registrations = 0
        self.poller = zmq.Poller()
        self.ctx = zmq.Context()
        self.lock = None
        self.bound: list[str] = []
        self.next_sample = 0.0
        self.guard = None

    # --- the whole life -----------------------------------------------------------------

    def run(self) -> int:
        """Bind, serve until a stop signal and every worker has exited, then clean up."""
        try:
            self._bind()
            self.signals = SignalPipe()
            self._watch(self.signals.fileno(), self._on_signal)
            self.broker.start(time.monotonic())
            self.supervisor.start(time.monotonic())
            self.emit(Event(ev.DAEMON_STARTED, {
                "pid": self.pid, "version": __version__, "config": str(self.config.path),
                "services": {n: s.workers for n, s in self.config.services.items()},
                "frontend": list(self.config.broker.frontend), "backend": self.config.broker.backend,
                "control": self.config.control.endpoint}))
            while not (self.stopping and self.supervisor.all_stopped()):
                self._wait_and_dispatch()
                self._fire_deadlines(time.monotonic())
            self.emit(Event(ev.DAEMON_STOPPED, {"pid": self.pid}))
            return 0
        finally:
            self._close()

    def _bind(self) -> None:
        daemon, broker, control = self.config.daemon, self.config.broker, self.config.control
        sockets.prepare_runtime_dir(daemon.runtime_dir, control.group)
        self.lock = sockets.DaemonLock(daemon.runtime_dir)
        if broker.curve_secret_key or control.curve_secret_key:
            self.guard = CurveGuard(self.ctx, self.emit)
            self._watch(self.guard.socket, self.guard.on_readable)
        self.frontend = self._socket(zmq.ROUTER, broker.frontend, "frontend")
        self.backend = self._socket(zmq.ROUTER, [broker.backend], "backend", broker)
        self.backend.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished worker is an error, not a loss
        self.backend.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting worker replaces itself
        self.control_sock = self._socket(zmq.ROUTER, [control.endpoint], "control", control,
                                         group=control.group)
        self.broker = Broker(self.frontend, self.backend, broker.heartbeat_interval,
                             broker.heartbeat_liveness, self.config.services, hooks=self)
        self.supervisor = Supervisor(
            self.config, self.emit, self._watch, self._unwatch, forget=self.broker.forget,
            retire=self.broker.retire,
            worker_curve=client_keys(broker.curve_secret_key) if broker.curve_secret_key else None)
        self.control = ControlServer(self.control_sock, self, self.emit)
        self._watch(self.frontend, self.broker.on_frontend)
        self._watch(self.backend, self.broker.on_backend)
        self._watch(self.control_sock, self.control.on_readable)

    def _socket(self, kind: int, endpoints, what: str, keys=None, group=None) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if what != "control":  # a larger message disconnects its sender (libzmq enforces it)
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.broker.max_message_size)
        if keys is not None and keys.curve_secret_key:
            self.guard.protect(sock, f"tacore.{what}", keys.curve_secret_key,
                               keys.curve_authorized_keys)
        for endpoint in endpoints:
            sockets.bind(sock, endpoint, what, group)
            self.bound.append(endpoint)
        return sock

    def _close(self) -> None:
        if getattr(self, "supervisor", None) is not None and not self.supervisor.all_stopped():
            self.supervisor.kill_all()  # only on an unexpected error: never leave orphans
        if getattr(self, "signals", None) is not None:
            self.signals.close()
        if getattr(self, "frontend", None) is not None:
            self.frontend.close(linger=1000)  # let the last replies reach their clients
        if self.guard is not None:
            self.guard.close()
        self.ctx.destroy(linger=0)
        for endpoint in self.bound:
            sockets.unlink_ipc(endpoint)
        if self.lock is not None:
            self.lock.release()

    # --- the loop -----------------------------------------------------------------------

    def _wait_and_dispatch(self) -> None:
        now = time.monotonic()
        deadlines = [d for d in (self.supervisor.next_deadline(), self.broker.next_deadline(),
                                 self.next_sample) if d is not None]
        timeout = min([MAX_POLL] + [max(0.0, d - now) for d in deadlines])
        polled_at = self.registrations
        for source, _ in self.poller.poll(timeout * 1000):
            handler, registered = self.handlers.get(source, (None, None))
            # Skip a source an earlier handler in this batch unwatched, or whose descriptor
            # number was reused by a newer registration: the event was for the old one.
            if handler is not None and registered <= polled_at:
                handler(time.monotonic())

    def _fire_deadlines(self, now: float) -> None:
        self.broker.tick(now)
        self.supervisor.tick(now)
        if now >= self.next_sample:
            self.supervisor.sample(now)
            self.next_sample = now + self.config.state.sample_interval

    def _watch(self, source, handler) -> None:
        self.registrations += 1
        self.handlers[source] = (handler, self.registrations)
        self.poller.register(source, zmq.POLLIN)

    def _unwatch(self, source) -> None:
        if self.handlers.pop(source, None) is not None:
            self.poller.unregister(source)

    def emit(self, event: Event) -> None:
        log_event(self.log, event)

    # --- what the parts tell each other -------------------------------------------------

    def _on_signal(self, now: float) -> None:
        for sig in self.signals.drain():
            if sig == signal.SIGHUP:
                self.reload()
            elif self.stopping:
                self.emit(Event(ev.DAEMON_STOPPING, {"signal": sig.name, "action": "kill all"}))
                self.supervisor.kill_all()
            else:
                self.shutdown(now, sig.name)

    def shutdown(self, now: float, why: str) -> None:
        """Refuse new requests ("503"), let running ones finish, then stop every worker."""
        if self.stopping:
            return
        self.stopping = True
        self.emit(Event(ev.DAEMON_STOPPING, {"signal": why,
                                             "drain_timeout": self.config.daemon.stop_timeout}))
        self.broker.stop_accepting(now)
        self.supervisor.shutdown(now)

    def reload(self) -> dict:
        """Re-read and validate the file; keep running on the old one if it is invalid."""
        try:
            config = configuration.load(self.config.path)
        except ConfigError as e:
            self.emit(Event(ev.DAEMON_RELOAD_FAILED, {"config": str(self.config.path),
                                                      "errors": e.errors,
                                                      "action": "still running on the previous configuration"}))
            return {"ok": False, "errors": e.errors}
        now = time.monotonic()
        not_applied = restart_needed(self.config, config)
        if config.daemon.log_level != self.config.daemon.log_level:
            self.log = configure_logging(config.daemon.log_level, self.config.daemon.log_format)
        config = kept_as_running(self.config, config)
        report = self.supervisor.reconfigure(config, now)
        self.broker.configure(config.broker.heartbeat_interval, config.broker.heartbeat_liveness,
                              config.services, now)
        self.config = config
        result = {"ok": True, **report, "not_applied": not_applied}
        self.emit(Event(ev.DAEMON_RELOAD, {"config": str(config.path), **result}))
        return result

    # --- the broker's hooks: what it tells the daemon about workers ----------------------

    def worker_ready(self, identity: bytes, service: bytes, now: float) -> bool | None:
        if self.stopping:
            return False
        return self.supervisor.on_ready(identity, service, now)

    def worker_expired(self, identity: bytes, now: float, silent_for: float) -> None:
        self.supervisor.on_unresponsive(identity, now, silent_for)

    def worker_busy(self, identity: bytes, busy: bool, now: float) -> None:
        self.supervisor.set_busy(identity, busy, now)

    def request_timed_out(self, identity: bytes, now: float, age: float) -> None:
        self.supervisor.on_request_timeout(identity, now, age)

    def service_fatal(self, service: str) -> bool:
        return self.supervisor.service_fatal(service)

    # --- what the control commands read -------------------------------------------------

    def status(self) -> dict:
        now = time.monotonic()
        services = {}
        for name, entry in self.supervisor.snapshot(now).items():
            identities = [s.worker.identity if s.worker else None
                          for s in self.supervisor.services[name].slots]
            for worker, identity in zip(entry["workers"], identities):
                worker.update(_link_view(self.broker.link(identity) if identity else None, now))
            service = entry["config"]
            services[name] = {"workers": entry["workers"], "configured": service.workers,
                              "desired": entry["desired"], "min_ready": service.min_ready,
                              "rolling": entry["rolling"], "removing": entry["removing"]}
        for link in self.broker.external_workers():
            name = link.route.name.decode(errors="replace")
            entry = services.setdefault(name, {"workers": [], "configured": 0, "desired": 0,
                                               "min_ready": 0, "rolling": 0, "removing": False})
            entry["workers"].append({
                "slot": None, "state": "BUSY" if link.current else "READY", "pid": None,
                "restarts": 0, "uptime": round(now - link.registered, 3), "state_for": None,
                "last_exit": None, "backoff_remaining": None, "fatal_reason": None,
                "draining": None, "replacing": False, "cpu_percent": None, "rss_bytes": None,
                "external": True, "identity": link.identity.hex(), **_link_view(link, now)})
        for name, entry in services.items():
            route = self.broker.routes.get(name.encode())
            entry["ready"] = sum(w["state"] in ("READY", "BUSY") for w in entry["workers"])
            entry["queue"] = len(route.queue) if route else 0
            entry["requests"] = route.requests if route else 0
        return {"daemon": {"pid": self.pid, "version": __version__,
                           "config": str(self.config.path),
                           "uptime": round(now - self.started, 3),
                           "started_at": self.started_wall, "stopping": self.stopping,
                           "frontend": list(self.config.broker.frontend)},
                "services": services}


def _link_view(link, now: float) -> dict:
    """What the broker knows of a worker: heard from when, served how many, busy how long."""
    if link is None:
        return {"last_seen": None, "requests": 0, "request_age": None}
    return {"last_seen": round(now - link.last_seen, 3), "requests": link.requests,
            "request_age": round(now - link.current.arrived, 3) if link.current else None}
