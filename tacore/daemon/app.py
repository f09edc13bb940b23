"""The daemon: one loop that owns all state.

    run():  bind → start workers → loop { wait, dispatch, fire deadlines, flush } → close

The loop polls the frontend, backend and control sockets (and the remote frontend, the HTTP
endpoint and the ZAP socket when configured), the signal wake-up socket and every worker's
sentinel and stack pipe. Nothing else runs: no threads, no callbacks from elsewhere. Events go
to the log at once and to the state database at the end of the tick (one transaction), never
on the request path. What it binds and builds at the start, and closes at the end, is
``wiring.py``; what status, metrics and the HTTP endpoint show, ``views.py``.

Tagged return addresses. The broker answers a client through one port, ``to_client(frames)``,
whose first frame is the address it was given. A ROUTER makes up 5-byte identities starting
with a zero byte, and the frontend drops messages from peers that chose an identity starting
with a zero byte of another length; so such an address cannot be a frontend client's, and
means ``b"\x00" + TAG + identity``: ``return_paths[TAG]`` sends the reply on (``_bind`` in
``wiring.py`` fills it; REMOTE_TAG: the [remote] frontend). The broker never knows where a
client is (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import zmq

from tacore import __version__
from tacore import config as configuration
from tacore import events as ev
from tacore import facts as f
from tacore.brokering.frames import drain, send_or_drop
from tacore.brokering.routes import RateLimit
from tacore.config import Config, kept_as_running, restart_needed
from tacore.daemon import sampling, views
from tacore.daemon.notify import Notifier
from tacore.daemon.sampling import Sampler
from tacore.daemon.signals import SignalPipe
from tacore.daemon.watcher import Watcher
from tacore.daemon.wiring import REMOTE_PREFIX, Wiring
from tacore.errors import EX_UNAVAILABLE, ConfigError, StartupError
from tacore.events import Event
from tacore.health import pool_summary
from tacore.observability.logging import configure_logging, log_event
from tacore.persistence.store import Store
from tacore.runtime.loader import load_handler
from tacore.supervision.handles import Spawner

# The loop wakes and fires deadlines at least this often, as a guard against a lost deadline.
MAX_POLL = 1.0
SPOOFS_PER_SECOND = 20  # log lines about clients posing as tagged addresses


class Daemon(Wiring):
    def __init__(self, config: Config, log):
        self.config, self.log = config, log
        self.pid = os.getpid()
        self.started, self.started_wall = time.monotonic(), time.time()
        self.stopping = False
        self.watcher = Watcher()
        self.ctx = None  # made in run(), after the spawner: no thread exists before it
        self.lock = None
        self.bound: list[str] = []
        self.next_sample = 0.0
        self.guard = None
        self.http = None
        self.remote = None  # the [remote] frontend's socket
        self.return_paths: dict = {}  # tag byte -> callable(frames): where tagged replies go
        self.spoofs = RateLimit(SPOOFS_PER_SECOND)
        state = config.state
        self.store = Store(config.daemon.state_dir / "tacore.db", state.retention_days,
                           state.max_db_mb, enabled=state.enabled)
        self.sampler = Sampler()
        self.loop_lag = 0.0  # the largest lateness since the last sample
        self.notifier = Notifier()  # before the spawner: workers must not inherit NOTIFY_SOCKET
        self.spawner = Spawner([s.handler for s in config.services.values() if s.handler])
        self.spawner_retry: float | None = None  # when to try again to start a lost spawner
        self.ready_sent = False
        self.next_status = 0.0

    # --- the whole life -----------------------------------------------------------------

    def run(self) -> int:
        """Bind, serve until a stop signal and every worker has exited, then clean up."""
        try:
            self._start_spawner()
            self.ctx = zmq.Context()  # libzmq's I/O threads start here, after the spawner
            self.store.open(time.monotonic())
            self._bind()
            self.signals = SignalPipe()
            self._watch(self.signals.fileno(), self._on_signal)
            self.broker.start(time.monotonic())
            self.supervisor.start(time.monotonic())
            self._settle(time.monotonic())
            self.emit(Event(ev.DAEMON_STARTED, {
                "pid": self.pid, "version": __version__, "config": str(self.config.path),
                "services": {n: s.workers for n, s in self.config.services.items()},
                "frontend": list(self.config.broker.frontend), "backend": self.config.broker.backend,
                "remote_frontend": list(self.config.remote.frontend),
                "control": self.config.control.endpoint,
                "dashboard": f"http://{listen}/" if (listen := self.config.http.listen) else None}))
            while not self._stopped(time.monotonic()):
                due = self._wait_and_dispatch()
                now = time.monotonic()
                if now >= due:  # (one that a handler made due now is fired next time round)
                    self._fire_deadlines(now)
                self._flush(now)
                self._notify(now)
            self._answer_last_requests(time.monotonic())
            self.emit(Event(ev.DAEMON_STOPPED, {"pid": self.pid}))
            self._flush(time.monotonic())
            return 0
        finally:
            self._close()

    # --- clients: the frontend, the remote frontend, and where replies go ----------------

    def _from_frontend(self, frames: list, now: float) -> None:
        address = frames[0]
        if address[:1] == b"\x00" and len(address) != 5:  # tagged: see the module's docstring
            self._spoofed(address, "frontend", now)  # a peer-chosen identity posing as one
        else:
            self.broker.from_client(frames, now)

    def _from_remote(self, frames: list, now: float) -> None:
        identity = frames[0]
        if len(identity) == 3:  # tagged, it would be 5 bytes: read as a frontend client's
            self._spoofed(identity, "remote", now)
            return
        frames[0] = REMOTE_PREFIX + identity
        self.broker.from_client(frames, now)

    def _to_client(self, frames: list) -> None:
        """The broker's port to every client: a tagged address goes to its return path."""
        address = frames[0]
        if address[:1] == b"\x00" and len(address) != 5:
            path = self.return_paths.get(address[1])
            if path is not None:  # (none: the path is gone, the reply with it)
                path(frames)
        else:
            send_or_drop(self.frontend, frames)

    def _to_remote(self, frames: list) -> None:
        frames[0] = frames[0][2:]  # (client_reply made the list: it is ours to change)
        send_or_drop(self.remote, frames)

    def _spoofed(self, identity: bytes, socket: str, now: float) -> None:
        """Drop a message whose sender's identity cannot be told from a tagged address (at
        most SPOOFS_PER_SECOND log lines a second; a flood is counted)."""
        suppressed = self.spoofs.admit(now)
        if suppressed:
            self.emit(Event(ev.PROTOCOL_ERROR, {"suppressed": suppressed}))
        if self.spoofs.allowed:
            self.emit(Event(ev.PROTOCOL_ERROR, {
                "socket": socket, "peer": identity.hex()[:64], "action": "dropped",
                "error": "a client identity starting with a zero byte must be 5 bytes long, "
                         "and one of 3 bytes is not served on the remote frontend"}))

    # --- the loop -----------------------------------------------------------------------

    def _wait_and_dispatch(self) -> float:
        """Wait for a message, a descriptor or the next deadline; handle what is ready.
        Returns the earliest deadline as it was before the wait (MAX_POLL from now at most)."""
        now = time.monotonic()
        due = min(d for d in (self.supervisor.next_deadline(), self.broker.next_deadline(),
                              self.uplinks.next_deadline(), self.spawner_retry,
                              self.next_sample, self.notifier.next_watchdog or None,
                              self.http and self.http.due, now + MAX_POLL)
                  if d is not None)
        watcher = self.watcher
        ready = watcher.wait(max(0.0, due - now))
        if not ready:  # woke for a deadline: how late?
            self.loop_lag = max(self.loop_lag, time.monotonic() - due)
        for source, seen in ready:
            handler = watcher.handler(source, seen)  # (None: unwatched by an earlier one)
            if handler is not None:
                now = time.monotonic()
                handler(now)
                self._settle(now)
        return due

    # --- the spawner: the process that forks the workers --------------------------------

    def _start_spawner(self) -> None:
        try:
            self.spawner.start(fork=True)  # the daemon has no thread yet
        except OSError as e:
            raise StartupError("[daemon] python_path", f"cannot start the worker spawner "
                               f"({sys.executable} -m tacore.supervision.spawner): {e}",
                               EX_UNAVAILABLE) from None
        self._watch(self.spawner.fileno(), self._on_spawner)

    def _on_spawner(self, now: float) -> None:
        """The spawner reported exits, or died: then its workers died with it (their pidfds
        say so) and a new spawner is started before anything else is."""
        if self.spawner.on_readable():
            return
        self._unwatch(self.spawner.fileno())
        self.spawner.close()
        self.emit(Event(ev.SPAWNER_EXITED, {"pid": self.spawner.pid,
                                            "returncode": self.spawner.returncode,
                                            "action": "none: shutting down" if self.stopping
                                            else "starting a new spawner"},
                        severity="error"))
        if not self.stopping:
            self.spawner_retry = now

    def _restart_spawner(self, now: float) -> None:
        try:
            self.spawner.start()
        except OSError as e:
            self.emit(Event(ev.SPAWNER_EXITED, {"error": str(e), "action": "retrying in 1s"},
                            severity="error"))
            self.spawner_retry = now + 1.0
            return
        self.spawner_retry = None
        self._watch(self.spawner.fileno(), self._on_spawner)
        self.emit(Event(ev.SPAWNER_STARTED, {"pid": self.spawner.pid}))

    def _settle(self, now: float) -> None:
        """Hand each core what the other one found out, until neither has anything to say.
        Each fact is applied after the call that produced it has returned: one way at a time,
        no core entered twice."""
        broker, supervisor = self.broker, self.supervisor
        while broker.facts or supervisor.facts:
            facts, broker.facts = broker.facts, []
            for fact in facts:
                supervisor.apply(fact, now)
                if type(fact) is f.Ready:
                    self._joined(fact.identity, now)
            facts, supervisor.facts = supervisor.facts, []
            for fact in facts:
                broker.apply(fact, now)
                if type(fact) is f.Retire or type(fact) is f.Gone:
                    self.uplinks.leave(fact.identity, now)

    def _joined(self, identity: bytes, now: float) -> None:
        """Node mode: a READY worker of a service with ``broker`` registers upstream."""
        link = self.broker.link(identity)
        if link is not None:
            service = link.route.name.decode()
            if self.uplinks.serves_upstream(service):
                self.uplinks.join(identity, service, now)

    def _fire_deadlines(self, now: float) -> None:
        if self.spawner_retry is not None and now >= self.spawner_retry:
            self._restart_spawner(now)
        self.broker.tick(now)
        self._settle(now)
        self.uplinks.tick(now)
        self._settle(now)
        self.supervisor.tick(now)
        self._settle(now)
        if self.http is not None and self.http.due is not None and now >= self.http.due:
            self.http.tick(now)  # slow and idle HTTP clients
        if now >= self.next_sample:
            self._sample(now)
            self.next_sample = now + self.config.state.sample_interval

    def _sample(self, now: float) -> None:
        """Every sample_interval: worker and daemon figures, latency over the interval, and a
        row of each into the state database."""
        self.supervisor.sample(now)
        self.sampler.daemon(self.loop_lag)
        self.loop_lag = 0.0
        self.sampler.latency(self.broker.routes, now)
        for table, rows in sampling.rows(self.metrics(), time.time()).items():
            self.store.add_samples(table, rows)

    def _notify(self, now: float) -> None:
        """systemd: READY once every service is up (or FATAL), a STATUS line, the watchdog."""
        if not self.notifier.active:
            return
        self.notifier.watchdog(now)
        if self.stopping or (self.ready_sent and now < self.next_status):
            return
        summary, settled = pool_summary(self.status()["services"])
        if not self.ready_sent and settled:
            self.notifier.ready(summary)
            self.ready_sent = True
        elif self.ready_sent:
            self.notifier.set_status(summary)
        self.next_status = now + 1.0

    def _flush(self, now: float) -> None:
        """The end of a tick: commit queued events and samples; report what the store says."""
        self.store.flush(now)
        while self.store.notices:
            notice = self.store.notices.pop(0)
            log_event(self.log, Event(ev.STATE_NOTICE, {"message": notice,
                                                        "database": str(self.store.path)},
                                      severity="warning"))

    def _watch(self, source, handler) -> None:
        self.watcher.watch(source, handler)

    def _unwatch(self, source) -> None:
        self.watcher.unwatch(source)

    def emit(self, event: Event) -> None:
        log_event(self.log, event)
        if event.stored:
            self.store.add_event(event.ts, event.name, event.level, event.context)

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

    def _stopped(self, now: float) -> bool:
        """Shutdown is done: every worker has exited, and no external worker (another node's
        worker among them) holds a request the broker must answer."""
        if not self.stopping:
            return False
        drained = self.broker.drained(now)  # asked every turn: at its deadline it answers
        return drained and self.supervisor.all_stopped()

    def _answer_last_requests(self, now: float) -> None:
        """Requests that reached the frontends since the loop last read them get their "503"
        before the sockets close. (One that arrives after this read is lost with the socket:
        MDP leaves that to the client's timeout and retry.)"""
        drain(self.frontend, self._from_frontend, now)
        if self.remote is not None:
            drain(self.remote, self._from_remote, now)

    def shutdown(self, now: float, why: str) -> None:
        """Refuse new requests ("503"), let running ones finish, then stop every worker."""
        if self.stopping:
            return
        self.stopping = True
        self.notifier.stopping()
        self.emit(Event(ev.DAEMON_STOPPING, {"signal": why,
                                             "drain_timeout": self.config.daemon.stop_timeout}))
        self.broker.stop_accepting(now, now + self.config.daemon.stop_timeout)
        self.supervisor.shutdown(now)

    def reload(self) -> dict:
        """Re-read and validate the file; keep running on the old one if it is invalid."""
        self.notifier.reloading()
        try:
            config = configuration.load(self.config.path, load_handler=load_handler)
        except ConfigError as e:
            self.notifier.ready(self.notifier.status or "running")
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
        self.broker.configure(config.broker, config.services, now)
        self.uplinks.configure(config, now)
        self.config = config
        result = {"ok": True, **report, "not_applied": not_applied}
        self.emit(Event(ev.DAEMON_RELOAD, {"config": str(config.path), **result}))
        self.notifier.ready(pool_summary(self.status()["services"])[0])
        return result

    # --- what the control commands and the HTTP endpoint read ---------------------------

    def status(self) -> dict:
        return views.status(self, time.monotonic())

    def metrics(self) -> dict:
        return views.metrics(self, time.monotonic())

    def events(self, **query) -> list[dict]:
        self.store.flush(time.monotonic())  # what happened this tick is included
        return self.store.events(**query)

    def set_log_level(self, level: str) -> None:
        """From now on, for the daemon and for every worker started from now on."""
        self.log = configure_logging(level, self.config.daemon.log_format)
        daemon = dataclasses.replace(self.config.daemon, log_level=level)
        self.config = dataclasses.replace(self.config, daemon=daemon)
        self.supervisor.config = self.config
