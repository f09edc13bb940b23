"""The supervisor: worker slots, their deadlines, and the facts the router tells it.

It is driven by the daemon's loop: ``tick(now)`` fires deadlines, ``apply(fact, now)`` takes
what the router found out (a READY, a drained worker, a missed heartbeat, a request timeout),
the descriptors it watches report exits, stacks and output, and the operator's commands
(restart, stop, start, scale, apply a new configuration) record intent that ticks and events
carry out. It signals and forks processes (through the spawner) and emits events, but knows
nothing of ZeroMQ: what the router must learn goes to ``facts``. Its parts: ``moves.py`` (the
operator's moves), ``stopping.py`` (dump, SIGTERM, SIGKILL) and ``exits.py`` (what follows an
exit).
"""

from __future__ import annotations

import itertools
import signal
import time
from typing import Callable

from tacore import events as ev, health
from tacore import facts as f
from tacore.config import Config
from tacore.events import Event
from tacore.supervision.exits import Exits
from tacore.supervision.handles import Spawner, WorkerProcess
from tacore.supervision.moves import Moves
from tacore.supervision.output import LINES_PER_SECOND, OutputReader
from tacore.supervision.slot import ServiceSlots, Slot
from tacore.supervision.states import State, check_transition
from tacore.supervision.stopping import Stopping
from tacore.supervision.system import System

LEVELS = ("debug", "info", "warning", "error", "critical")


class Supervisor(Moves, Stopping, Exits):
    """The supervision core: slots, their lifecycle and deadlines. Its ports (emit, watch,
    unwatch, the spawner and ``system``'s signals and /proc reads) act on the world and never
    call back into a core; what the broker must learn goes to ``facts``."""

    def __init__(self, config: Config, emit: Callable[[Event], None],
                 watch: Callable[[int, Callable[[float], None]], None],
                 unwatch: Callable[[int], None], spawner: Spawner,
                 system: System | None = None, worker_curve: dict | None = None, *,
                 now: float):
        self.config, self.emit, self.watch, self.unwatch = config, emit, watch, unwatch
        self.spawner = spawner  # forks the workers: the daemon never does
        self.system = system or System()  # signals, /proc: the only OS calls
        self.worker_curve = worker_curve  # CURVE client options for a protected backend
        self.facts: list = []  # for the broker, handed over by the daemon
        self.fatal_services: set[str] = set()  # told to the broker (ServiceFatal)
        self.services: dict[str, ServiceSlots] = {}
        for name, service in config.services.items():
            self.services[name] = ServiceSlots(service, [Slot(service, i, now)
                                                         for i in range(service.workers)],
                                               desired=service.workers)
        self.by_identity: dict[bytes, Slot] = {}
        self.generations = itertools.count(1)
        self.shutting_down = False
        self._next_deadline: float | None = None
        self._dirty = True  # deadlines may have moved

    def all_slots(self) -> list[Slot]:
        return [slot for service in self.services.values() for slot in service.slots]

    # --- what the loop calls --------------------------------------------------------------

    def start(self, now: float) -> None:
        for slot in self.all_slots():
            self._spawn(slot, now)

    def tick(self, now: float) -> None:
        """Fire every deadline that has passed."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return
        self._dirty = True
        for slot in self.all_slots():
            w, life = slot.worker, slot.life
            if w is not None and life.dump is not None and (
                    w.stack.dump_done(now) or now >= life.dump.deadline):
                self._finish_dump(slot, now)
            elif slot.state is State.STARTING:
                if now - w.started >= slot.service.start_timeout:
                    self._begin_stop(slot, now, "start_timeout", failure=True,
                                     dump_event=ev.WORKER_START_TIMEOUT)
            elif slot.state is State.STOPPING:
                if life.dump is None and not life.killed and now >= life.kill_deadline:
                    self._kill(slot, now)
            elif slot.state is State.BACKOFF and now >= slot.backoff_until:
                self._spawn(slot, now)
            elif slot.state is State.FATAL and slot.retry_at is not None and now >= slot.retry_at:
                self._retry_fatal(slot, now)
            elif slot.drain and slot.drain.deadline is not None and now >= slot.drain.deadline:
                self._stop_drained(slot, now)

    def next_deadline(self) -> float | None:
        if self._dirty:
            self._next_deadline, self._dirty = self._compute_next_deadline(), False
        return self._next_deadline

    def _compute_next_deadline(self) -> float | None:
        deadlines = []
        for slot in self.all_slots():
            w, life = slot.worker, slot.life
            if w is not None and life.dump is not None:
                deadlines.append(life.dump.deadline)
                if w.stack.last_data_at is not None:
                    deadlines.append(w.stack.last_data_at + w.stack.QUIET)
            if slot.state is State.STARTING:
                deadlines.append(w.started + slot.service.start_timeout)
            elif slot.state is State.STOPPING and not life.killed and life.kill_deadline:
                deadlines.append(life.kill_deadline)
            elif slot.state is State.BACKOFF:
                deadlines.append(slot.backoff_until)
            elif slot.state is State.FATAL and slot.retry_at is not None:
                deadlines.append(slot.retry_at)
            if slot.drain and slot.drain.deadline is not None:
                deadlines.append(slot.drain.deadline)
        return min(deadlines, default=None)

    # --- facts from the broker -------------------------------------------------------------

    def apply(self, fact, now: float) -> None:
        slot = self.by_identity.get(fact.identity)
        if slot is not None:  # (a fact about a process that has gone since is moot)
            self.on_fact[type(fact)](self, slot, fact, now)

    def _on_ready(self, slot: Slot, fact: f.Ready, now: float) -> None:
        """One of ours said READY (the broker checked its service and that it is not being
        stopped); a second READY is a worker that reconnected."""
        if slot.state is not State.STARTING:
            return
        self._dirty = True
        slot.ready_at = now
        self._change(slot, State.READY, now, ev.WORKER_READY,
                     startup_seconds=round(now - slot.worker.started, 4))
        if slot.recovering:
            slot.recovering, slot.fatal_reason = False, None
            self.emit(Event(ev.WORKER_RECOVERED, slot.context(
                after_fatal=round(now - slot.fatal_at, 3) if slot.fatal_at else None)))
        if slot.replaces is not None:
            self._take_over(slot, now)

    def _on_heartbeat_timeout(self, slot: Slot, fact: f.HeartbeatTimeout, now: float) -> None:
        """The broker stopped hearing from a READY worker: it is frozen; replace it."""
        if slot.state is State.READY:
            self._begin_stop(slot, now, "heartbeat_timeout", failure=True,
                             dump_event=ev.WORKER_HEARTBEAT_TIMEOUT,
                             silent_for=round(fact.silent_for, 3))

    def _on_timed_out(self, slot: Slot, fact: f.TimedOut, now: float) -> None:
        """A request ran past request_timeout: show where the worker is, then replace it."""
        if slot.state is State.READY:
            self._begin_stop(slot, now, "request_timeout", failure=True,
                             dump_event=ev.REQUEST_TIMEOUT, request_age=round(fact.age, 3),
                             request_timeout=slot.service.request_timeout)

    def _on_drained(self, slot: Slot, fact: f.Drained, now: float) -> None:
        """A worker being drained holds no request any more: stop it."""
        if slot.drain is not None:
            self._stop_drained(slot, now)

    def _on_limit(self, slot: Slot, fact: f.LimitReached, now: float) -> None:
        """A worker answered max_requests (with its jitter): replace it."""
        if slot.drain is None and slot.state is State.READY:
            self._recycle(slot, now, "max_requests", served=fact.served)

    on_fact = {f.Ready: _on_ready, f.HeartbeatTimeout: _on_heartbeat_timeout,
               f.TimedOut: _on_timed_out, f.Drained: _on_drained, f.LimitReached: _on_limit}

    def service_fatal(self, service: str) -> bool:
        """True when every slot of the service is FATAL: nothing will serve it by itself."""
        entry = self.services.get(service)
        return entry is not None and health.service_fatal(slot.state.value for slot in entry.slots)

    def _tell_fatal(self, service: str) -> None:
        """After a change to or from FATAL: tell the broker if the service's verdict moved."""
        fatal = self.service_fatal(service)
        if fatal != (service in self.fatal_services):
            (self.fatal_services.add if fatal else self.fatal_services.discard)(service)
            self.facts.append(f.ServiceFatal(service.encode(), fatal))

    def shutdown(self, now: float) -> None:
        """Drain every worker (up to [daemon] stop_timeout), then stop it; no restarts."""
        self.shutting_down = True
        self._dirty = True
        deadline = now + self.config.daemon.stop_timeout
        for slot in self.all_slots():
            self._drain(slot, now, "shutdown", deadline, remove=False)

    def kill_all(self) -> None:
        """Second interrupt during shutdown: SIGKILL every worker now."""
        for slot in self.all_slots():
            if slot.worker is not None:
                self.system.signal(slot.worker, signal.SIGKILL)
                slot.life.killed = True

    def all_stopped(self) -> bool:
        return all(slot.worker is None for slot in self.all_slots())

    def snapshot(self, now: float) -> dict:
        return {name: {"workers": [slot.snapshot(now) for slot in entry.slots],
                       "desired": entry.desired, "config": entry.config,
                       "rolling": len(entry.rolling) + sum(s.replaces is not None
                                                           for s in entry.slots),
                       "removing": entry.removing}
                for name, entry in self.services.items()}

    # --- lifecycle ----------------------------------------------------------------------------

    def _change(self, slot: Slot, new: State, now: float, event: str | None = None,
                **context):
        """The one place a slot changes state; every change emits exactly one event."""
        check_transition(slot.state, new)
        old, slot.state, slot.since = slot.state, new, now
        self._dirty = True
        self.emit(Event(event or ev.WORKER_STATE,
                        slot.context(state=str(new), previous=str(old), **context)))
        if State.FATAL in (old, new):
            self._tell_fatal(slot.service.name)

    def _spawn(self, slot: Slot, now: float) -> None:
        s = slot.service
        identity = f"tacore/{s.name}/{slot.index}/{next(self.generations)}".encode()
        broker = self.config.broker
        fields = dict(service=s.name, slot=slot.index, identity=identity, handler=s.handler,
                      config=s.config, backend=broker.backend,
                      heartbeat_interval=broker.heartbeat_interval,
                      heartbeat_liveness=broker.heartbeat_liveness,
                      curve=self.worker_curve,
                      log_level=self.config.daemon.log_level,
                      log_format=self.config.daemon.log_format,
                      command=list(s.command) if s.command else None, cwd=s.cwd, env=s.env)
        slot.backoff_until = None
        try:
            w = self.spawner.spawn(fields, now)
        except OSError as e:  # fork failed (EAGAIN, ENOMEM): a failure like any other
            slot.last_exit = {"code": None, "signal": None, "reason": f"spawn_failed: {e}",
                              "at": time.time()}
            self._fail(slot, now, "spawn_failed")
            return
        slot.worker, slot.spawns = w, slot.spawns + 1
        slot.new_process()
        self.by_identity[identity] = slot
        # A program speaking plain Majordomo takes one request at a time; ours, prefetch.
        self.facts.append(f.Expect(identity, s.name.encode(), slot.request_limit,
                                   1 if s.command else s.prefetch))
        self.watch(w.sentinel, lambda now: self._on_exit(slot, w, now))
        self.watch(w.stack.fd, lambda now: self._on_stack(w, now))
        slot.life.readers = [OutputReader(fd, stream, w.pid, slot.ring,
                                          self._output_of(slot, w.pid))
                             for stream, fd in w.output.items()]
        for reader in slot.life.readers:
            self.watch(reader.fd, lambda now, r=reader: self._on_output(r, now))
        self._change(slot, State.STARTING, now, ev.WORKER_SPAWNED, pid=w.pid,
                     restarts=slot.spawns - 1, spawn_ms=round(w.spawn_seconds * 1000, 2))

    def _start_now(self, slot: Slot, now: float) -> None:
        """An operator's start: forget past failures (and FATAL), start without backoff."""
        slot.policy.reset()
        slot.recovering, slot.retry_at = slot.state is State.FATAL, None
        if slot.state is State.BACKOFF:
            self._change(slot, State.STOPPED, now)
        self._spawn(slot, now)

    def _retry_fatal(self, slot: Slot, now: float) -> None:
        """fatal_retry has passed: try again, with the policy from the start."""
        slot.policy.reset()
        slot.retry_at, slot.recovering = None, True
        self.emit(Event(ev.WORKER_RETRY, slot.context(reason=slot.fatal_reason,
                                                      fatal_for=round(now - slot.fatal_at, 3))))
        self._spawn(slot, now)

    def _on_output(self, reader: OutputReader, now: float) -> None:
        if not reader.read(now):
            self.unwatch(reader.fd)  # the worker closed its end: it is exiting

    def _output_of(self, slot: Slot, pid: int):
        """What to log for a line of this worker's output (see supervision/output.py)."""
        def emit_line(stream: str, line: str | None, parsed: dict | None) -> None:
            if line is None:
                self.emit(Event(ev.WORKER_OUTPUT_DROPPED, slot.context(
                    pid=pid, stream=stream, dropped=parsed["dropped"],
                    limit=f"{LINES_PER_SECOND} lines a second")))
            elif parsed is not None:  # the worker's own structured log line
                context = {k: v for k, v in parsed.items()
                           if k not in ("event", "level", "timestamp")}
                level = parsed.get("level")
                self.emit(Event(parsed["event"], {**context, **slot.context(pid=pid)},
                                severity=level if level in LEVELS else None, stored=False))
            else:
                self.emit(Event(ev.WORKER_OUTPUT, slot.context(pid=pid, stream=stream,
                                                               line=line), stored=False))
        return emit_line

    def _on_stack(self, w: WorkerProcess, now: float) -> None:
        self._dirty = True  # the end of a dump is a deadline
        if not w.stack.read(now):
            self.unwatch(w.stack.fd)  # the worker closed its end: it is exiting

    # --- figures -------------------------------------------------------------------------------

    def sample(self, now: float) -> None:
        """Read CPU and memory of every worker; recycle one over max_memory_mb."""
        for slot in self.all_slots():
            w = slot.worker
            if w is None:
                continue
            for reader in slot.life.readers:
                reader.report()
            figures = self.system.figures(w)
            if figures is None:
                continue
            slot.figures = figures
            limit = slot.service.max_memory_mb
            if limit and slot.state is State.READY and figures["rss_bytes"] > limit * 2**20:
                self._recycle(slot, now, "max_memory", rss_bytes=slot.figures["rss_bytes"],
                              max_memory_mb=limit)

