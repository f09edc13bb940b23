"""The supervisor: worker slots, their deadlines, and what to do when a process exits.

It is driven by the daemon's loop: ``tick(now)`` fires deadlines, the ``on_*`` methods take
what the loop observed (a READY seen by the broker, a sentinel that became readable, a worker
the broker stopped hearing from). It signals and forks processes, and emits events, but knows
nothing of ZeroMQ: the loop hands it the descriptors to watch through ``watch``/``unwatch``.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter
from typing import Callable

import psutil

from tacore import events as ev
from tacore.config import Config, ServiceConfig
from tacore.events import Event
from tacore.runtime.child import DUMP_SIGNAL
from tacore.runtime.spec import EXIT_START_FAILED
from tacore.supervision import spawner
from tacore.supervision.policy import RestartPolicy
from tacore.supervision.stacks import annotate
from tacore.supervision.states import RUNNING, SERVING, State, check_transition

# How long to wait for a stack dump before killing without one.
DUMP_WAIT = 1.0


class Slot:
    """A numbered place for one worker of a service; it outlives the processes that fill it."""

    def __init__(self, service: ServiceConfig, index: int):
        self.service, self.index = service, index
        self.state, self.since = State.STOPPED, time.monotonic()
        self.worker: spawner.WorkerProcess | None = None
        self.spawns = 0
        self.last_exit: dict | None = None
        self.backoff_until: float | None = None
        self.fatal_reason: str | None = None
        self.policy = RestartPolicy(service.max_restarts, service.restart_window,
                                    service.backoff_initial, service.backoff_max)

    @property
    def name(self) -> str:
        return f"{self.service.name}/{self.index}"

    def context(self, **extra) -> dict:
        return {"service": self.service.name, "slot": self.index,
                "pid": self.worker.pid if self.worker else None, **extra}

    def snapshot(self, now: float) -> dict:
        w = self.worker
        return {
            "slot": self.index,
            "state": str(self.state),
            "pid": w.pid if w else None,
            "restarts": max(0, self.spawns - 1),
            "uptime": round(now - w.started, 3) if w else None,
            "state_for": round(now - self.since, 3),
            "last_exit": self.last_exit,
            "backoff_remaining": round(max(0.0, self.backoff_until - now), 3)
            if self.state is State.BACKOFF else None,
            "fatal_reason": self.fatal_reason,
            "external": False,
        }


class Supervisor:
    def __init__(self, config: Config, emit: Callable[[Event], None],
                 watch: Callable[[int, Callable[[float], None]], None], unwatch: Callable[[int], None],
                 forget: Callable[[bytes, float], None], retire: Callable[[bytes], None]):
        self.config, self.emit, self.watch, self.unwatch = config, emit, watch, unwatch
        self.forget = forget  # tells the broker a worker's process is gone
        self.retire = retire  # tells the broker to give a worker no more requests
        self.slots = {name: [Slot(s, i) for i in range(s.workers)]
                      for name, s in config.services.items()}
        self.by_identity: dict[bytes, Slot] = {}
        self.generations = itertools.count(1)
        self.shutting_down = False
        self._next_deadline: float | None = None
        self._dirty = True  # deadlines may have moved; READY <-> BUSY never moves one

    def all_slots(self):
        for slots in self.slots.values():
            yield from slots

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
            if slot.state is State.STARTING:
                if now - slot.worker.started >= slot.service.start_timeout:
                    self._begin_stop(slot, now, "start_timeout", failure=True,
                                     dump_event=ev.WORKER_START_TIMEOUT)
            elif slot.state is State.STOPPING:
                self._advance_stop(slot, now)
            elif slot.state is State.BACKOFF and now >= slot.backoff_until:
                self._spawn(slot, now)

    def next_deadline(self) -> float | None:
        if self._dirty:
            self._next_deadline, self._dirty = self._compute_next_deadline(), False
        return self._next_deadline

    def _compute_next_deadline(self) -> float | None:
        deadlines = []
        for slot in self.all_slots():
            w = slot.worker
            if slot.state is State.STARTING:
                deadlines.append(w.started + slot.service.start_timeout)
            elif slot.state is State.STOPPING:
                if w.dump_deadline is not None:
                    deadlines.append(w.dump_deadline)
                    if w.stack.last_data_at is not None:
                        deadlines.append(w.stack.last_data_at + w.stack.QUIET)
                elif w.kill_deadline is not None and not w.killed:
                    deadlines.append(w.kill_deadline)
            elif slot.state is State.BACKOFF:
                deadlines.append(slot.backoff_until)
        return min(deadlines, default=None)

    def on_ready(self, identity: bytes, service: bytes, now: float) -> bool | None:
        """A READY arrived. None: not one of ours. True: accepted. False: refuse it."""
        slot = self.by_identity.get(identity)
        if slot is None:
            return None
        self._dirty = True
        if service != slot.service.name.encode():
            return False
        if slot.state in SERVING:
            return True  # it reconnected (it lost the broker for a while): re-register it
        if slot.state is not State.STARTING:
            return False
        slot.worker.ready_at = now
        self._change(slot, State.READY, now, ev.WORKER_READY,
                     startup_seconds=round(now - slot.worker.started, 4))
        return True

    def on_unresponsive(self, identity: bytes, now: float, silent_for: float) -> None:
        """The broker stopped hearing from a READY worker: it is frozen; replace it."""
        slot = self.by_identity.get(identity)
        if slot is not None and slot.state in SERVING:
            self._begin_stop(slot, now, "heartbeat_timeout", failure=True,
                             dump_event=ev.WORKER_UNRESPONSIVE, silent_for=round(silent_for, 3))

    def on_request_timeout(self, identity: bytes, now: float, age: float) -> None:
        """A request ran past request_timeout: show where the worker is, then replace it."""
        slot = self.by_identity.get(identity)
        if slot is not None and slot.state in SERVING:
            self._begin_stop(slot, now, "request_timeout", failure=True,
                             dump_event=ev.REQUEST_TIMEOUT, request_age=round(age, 3),
                             request_timeout=slot.service.request_timeout)

    def set_busy(self, identity: bytes, busy: bool, now: float) -> None:
        """The broker gave a worker a request, or got its reply (the hot path: no event)."""
        slot = self.by_identity.get(identity)
        if slot is not None and slot.state in SERVING:
            new = State.BUSY if busy else State.READY
            if slot.state is not new:
                self._change(slot, new, now, quiet=True)

    def service_fatal(self, service: str) -> bool:
        """True when every slot of the service is FATAL: nothing will serve it by itself."""
        slots = self.slots.get(service)
        return bool(slots) and all(slot.state is State.FATAL for slot in slots)

    def shutdown(self, now: float) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after its stop_timeout); no restarts."""
        self.shutting_down = True
        self._dirty = True
        for slot in self.all_slots():
            if slot.state in (State.STARTING, State.READY, State.BUSY):
                self._begin_stop(slot, now, "shutdown", failure=False)
            elif slot.state is State.BACKOFF:
                self._change(slot, State.STOPPED, now)

    def kill_all(self) -> None:
        """Second interrupt during shutdown: SIGKILL every worker now."""
        for slot in self.all_slots():
            if slot.worker is not None:
                _signal(slot.worker.pid, signal.SIGKILL)
                slot.worker.killed = True

    def all_stopped(self) -> bool:
        return all(slot.worker is None for slot in self.all_slots())

    def snapshot(self, now: float) -> dict:
        return {name: [slot.snapshot(now) for slot in slots] for name, slots in self.slots.items()}

    # --- lifecycle ----------------------------------------------------------------------------

    def _change(self, slot: Slot, new: State, now: float, event: str | None = None,
                quiet: bool = False, **context):
        """The one place a slot changes state; every change but READY <-> BUSY (one per
        request, counted rather than logged) emits exactly one event."""
        check_transition(slot.state, new)
        old, slot.state, slot.since = slot.state, new, now
        if quiet:
            return
        self._dirty = True
        self.emit(Event(event or ev.WORKER_STATE,
                        slot.context(state=str(new), previous=str(old), **context)))

    def _spawn(self, slot: Slot, now: float) -> None:
        s = slot.service
        identity = f"tacore/{s.name}/{slot.index}/{next(self.generations)}".encode()
        fields = dict(service=s.name, slot=slot.index, identity=identity, handler=s.handler,
                      config=s.config, backend=self.config.broker.backend,
                      heartbeat_interval=self.config.broker.heartbeat_interval,
                      heartbeat_liveness=self.config.broker.heartbeat_liveness,
                      daemon_pid=os.getpid(), log_level=self.config.daemon.log_level,
                      log_format=self.config.daemon.log_format)
        slot.backoff_until = None
        try:
            w = spawner.spawn(fields, now)
        except OSError as e:  # fork failed (EAGAIN, ENOMEM): a failure like any other
            slot.last_exit = {"code": None, "signal": None, "reason": f"spawn_failed: {e}",
                              "at": time.time()}
            self._fail(slot, now, "spawn_failed")
            return
        slot.worker, slot.spawns = w, slot.spawns + 1
        self.by_identity[identity] = slot
        self.watch(w.sentinel, lambda now: self._on_exit(slot, w, now))
        self.watch(w.stack.fd, lambda now: self._on_stack(w, now))
        self._change(slot, State.STARTING, now, ev.WORKER_SPAWNED, pid=w.pid,
                     restarts=slot.spawns - 1, spawn_ms=round(w.spawn_seconds * 1000, 2))

    def _on_stack(self, w: spawner.WorkerProcess, now: float) -> None:
        self._dirty = True  # the end of a dump is a deadline
        if not w.stack.read(now):
            self.unwatch(w.stack.fd)  # the worker closed its end: it is exiting

    def _begin_stop(self, slot: Slot, now: float, reason: str, failure: bool,
                    dump_event: str | None = None, **context) -> None:
        w = slot.worker
        w.stop_reason, w.stop_is_failure = reason, failure
        self.retire(w.identity)
        frozen = _is_frozen(w.pid)
        if dump_event is None:
            self._change(slot, State.STOPPING, now, ev.WORKER_STOPPING, reason=reason)
            self._terminate(slot, now, frozen)
            return
        self._change(slot, State.STOPPING, now, reason=reason)
        w.extra = {"event": dump_event, "frozen": frozen, **context}
        if frozen:  # a stopped process runs no signal handler: no stack to wait for
            self._report_stuck(slot, now)
        else:
            w.stack.start_dump()
            _signal(w.pid, DUMP_SIGNAL)
            w.dump_deadline = now + DUMP_WAIT

    def _advance_stop(self, slot: Slot, now: float) -> None:
        w = slot.worker
        if w.dump_deadline is not None:
            if w.stack.dump_done(now) or now >= w.dump_deadline:
                self._report_stuck(slot, now)
        elif not w.killed and now >= w.kill_deadline:
            _signal(w.pid, signal.SIGKILL)
            w.killed = True
            self.emit(Event(ev.WORKER_KILLED, slot.context(
                reason=w.stop_reason, after=round(now - (w.kill_deadline - slot.service.stop_timeout), 3))))

    def _report_stuck(self, slot: Slot, now: float) -> None:
        """Log the timeout event with the worker's stack, then ask it to stop."""
        w = slot.worker
        w.dump_deadline = None
        extra = dict(w.extra)
        name, frozen = extra.pop("event"), extra.pop("frozen")
        raw = w.stack.buffer.decode(errors="replace")
        stack, blocked_at = annotate(raw, w.stack.main_ident) if raw else (None, None)
        if name == ev.WORKER_START_TIMEOUT:
            extra.update(start_timeout=slot.service.start_timeout,
                         elapsed=round(now - w.started, 3))
        if frozen:
            extra["process_state"] = "stopped (SIGSTOP or a tracer)"
        self.emit(Event(name, slot.context(
            blocked_at=blocked_at, **extra,
            stack=stack or ("unavailable: the process is stopped" if frozen
                            else "unavailable: no answer to the dump signal"))))
        self._terminate(slot, now, frozen)

    def _terminate(self, slot: Slot, now: float, frozen: bool) -> None:
        w = slot.worker
        _signal(w.pid, signal.SIGTERM)
        if frozen:
            _signal(w.pid, signal.SIGCONT)  # let it run its SIGTERM handler
        w.kill_deadline = now + slot.service.stop_timeout

    def _on_exit(self, slot: Slot, w: spawner.WorkerProcess, now: float) -> None:
        """The worker's sentinel fired: reap it, record why it ended, decide what comes next."""
        self._dirty = True
        self.unwatch(w.sentinel)
        w.process.join()  # the sentinel closed, so this returns at once
        code = w.process.exitcode
        w.process.close()
        w.stack.read(now)
        self.unwatch(w.stack.fd)
        w.stack.close()
        self.by_identity.pop(w.identity, None)
        self.forget(w.identity, now)
        slot.worker = None
        reason = w.stop_reason or (
            "start_failed" if slot.state is State.STARTING and code == EXIT_START_FAILED
            else "crashed")
        slot.last_exit = {"code": code if code >= 0 else None,
                          "signal": signal.Signals(-code).name if code < 0 else None,
                          "reason": reason, "at": time.time()}
        failure = w.stop_is_failure if w.stop_reason else True
        exit_info = {k: v for k, v in slot.last_exit.items() if k != "at"}  # the line has a time
        self.emit(Event(ev.WORKER_EXITED, slot.context(pid=w.pid, uptime=round(now - w.started, 3),
                                                       **exit_info),
                        severity="warning" if failure else None))
        if self.shutting_down or not failure:
            self._change(slot, State.STOPPED, now, ev.WORKER_STOPPED, pid=w.pid)
        else:
            self._fail(slot, now, reason, pid=w.pid)

    def _fail(self, slot: Slot, now: float, reason: str, **context) -> None:
        delay = slot.policy.record_failure(now, reason)
        if delay is not None:
            slot.backoff_until = now + delay
            self._change(slot, State.BACKOFF, now, ev.WORKER_BACKOFF, reason=reason,
                         delay=round(delay, 3), failures=len(slot.policy.failures), **context)
            return
        failures = slot.policy.recent(now)
        kinds = ", ".join(f"{n} {r}" for r, n in Counter(r for _, r in failures).items())
        slot.fatal_reason = (f"{len(failures)} failures within {slot.service.restart_window:g}s"
                             f" ({kinds}); last: {reason}")
        self._change(slot, State.FATAL, now, ev.WORKER_FATAL, reason=slot.fatal_reason,
                     fix="fix the service, then restart tacored", **context)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it exited already; its sentinel will tell the loop


def _is_frozen(pid: int) -> bool:
    """True if the process is stopped (SIGSTOP, or a tracer): it can answer no signal."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False
