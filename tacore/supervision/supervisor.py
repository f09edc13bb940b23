"""The supervisor: worker slots, their deadlines, and what to do when a process exits.

It is driven by the daemon's loop: ``tick(now)`` fires deadlines, the ``on_*`` methods take
what the loop observed (a READY seen by the broker, a sentinel that became readable, a worker
the broker stopped hearing from), and the operator's commands (restart, stop, start, scale,
apply a new configuration) record intent that ticks and events carry out. It signals and forks
processes and emits events, but knows nothing of ZeroMQ: the loop hands it the descriptors to
watch through ``watch``/``unwatch`` and learns through ``forget``/``retire`` what the broker
must stop doing with a worker.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import psutil

from tacore import events as ev, health
from tacore.config import Config, ServiceConfig
from tacore.events import Event
from tacore.runtime.spec import DUMP_SIGNAL, EXIT_START_FAILED
from tacore.supervision import spawner
from tacore.supervision.policy import CRASH
from tacore.supervision.slot import Drain, ServiceSlots, Slot
from tacore.supervision.stacks import annotate
from tacore.supervision.states import SERVING, State, check_transition

DUMP_WAIT = 1.0  # how long to wait for a stack dump before going on without one


@dataclass
class Dump:
    """A stack dump in progress: who waits for it, and what to do once it is in."""

    deadline: float
    waiters: list = field(default_factory=list)  # callables taking {"stack", "blocked_at"}
    kill_event: str | None = None  # log this event with the stack, then stop the worker
    context: dict = field(default_factory=dict)


class Supervisor:
    def __init__(self, config: Config, emit: Callable[[Event], None],
                 watch: Callable[[int, Callable[[float], None]], None],
                 unwatch: Callable[[int], None],
                 forget: Callable[[bytes, float], None], retire: Callable[[bytes], None],
                 spawner: spawner.Spawner, worker_curve: dict | None = None):
        self.config, self.emit, self.watch, self.unwatch = config, emit, watch, unwatch
        self.spawner = spawner  # forks the workers: the daemon never does
        self.worker_curve = worker_curve  # CURVE client options for a protected backend
        self.forget = forget  # tells the broker a worker's process is gone
        self.retire = retire  # tells the broker to give a worker no more requests
        self.services: dict[str, ServiceSlots] = {}
        for name, service in config.services.items():
            self.services[name] = ServiceSlots(service, [Slot(service, i)
                                                         for i in range(service.workers)],
                                               desired=service.workers)
        self.by_identity: dict[bytes, Slot] = {}
        self.generations = itertools.count(1)
        self.shutting_down = False
        self._next_deadline: float | None = None
        self._dirty = True  # deadlines may have moved; READY <-> BUSY never moves one

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
            w = slot.worker
            if w is not None and w.dump is not None and (
                    w.stack.dump_done(now) or now >= w.dump.deadline):
                self._finish_dump(slot, now)
            elif slot.state is State.STARTING:
                if now - w.started >= slot.service.start_timeout:
                    self._begin_stop(slot, now, "start_timeout", failure=True,
                                     dump_event=ev.WORKER_START_TIMEOUT)
            elif slot.state is State.STOPPING:
                if w.dump is None and not w.killed and now >= w.kill_deadline:
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
            w = slot.worker
            if w is not None and w.dump is not None:
                deadlines.append(w.dump.deadline)
                if w.stack.last_data_at is not None:
                    deadlines.append(w.stack.last_data_at + w.stack.QUIET)
            if slot.state is State.STARTING:
                deadlines.append(w.started + slot.service.start_timeout)
            elif slot.state is State.STOPPING and not w.killed and w.kill_deadline:
                deadlines.append(w.kill_deadline)
            elif slot.state is State.BACKOFF:
                deadlines.append(slot.backoff_until)
            elif slot.state is State.FATAL and slot.retry_at is not None:
                deadlines.append(slot.retry_at)
            if slot.drain and slot.drain.deadline is not None:
                deadlines.append(slot.drain.deadline)
        return min(deadlines, default=None)

    def on_ready(self, identity: bytes, service: bytes, now: float) -> bool | None:
        """A READY arrived. None: not one of ours. True: accepted. False: refuse it."""
        slot = self.by_identity.get(identity)
        if slot is None:
            return None
        self._dirty = True
        if service != slot.service.name.encode() or slot.drain is not None:
            return False
        if slot.state in SERVING:
            return True  # it reconnected (it lost the broker for a while): re-register it
        if slot.state is not State.STARTING:
            return False
        slot.ready_at = now
        self._change(slot, State.READY, now, ev.WORKER_READY,
                     startup_seconds=round(now - slot.worker.started, 4))
        if slot.recovering:
            slot.recovering, slot.fatal_reason = False, None
            self.emit(Event(ev.WORKER_RECOVERED, slot.context(
                after_fatal=round(now - slot.fatal_at, 3) if slot.fatal_at else None)))
        if slot.replaces is not None:
            self._take_over(slot, now)
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
        """The broker gave an idle worker a request, or it answered its last one (the hot
        path: no event)."""
        slot = self.by_identity.get(identity)
        if slot is None or slot.state not in SERVING:
            return
        new = State.BUSY if busy else State.READY
        if slot.state is not new:
            self._change(slot, new, now, quiet=True)
        if not busy and slot.drain is not None:
            self._stop_drained(slot, now)

    def replied(self, identity: bytes, now: float) -> None:
        """A worker answered a request: count it, and recycle it at max_requests."""
        slot = self.by_identity.get(identity)
        if slot is None:
            return
        slot.served += 1
        if (slot.request_limit is not None and slot.served >= slot.request_limit
                and slot.drain is None and slot.state in SERVING):
            self._recycle(slot, now, "max_requests", served=slot.served)

    def service_fatal(self, service: str) -> bool:
        """True when every slot of the service is FATAL: nothing will serve it by itself."""
        entry = self.services.get(service)
        return entry is not None and health.service_fatal(slot.state.value for slot in entry.slots)

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
                _signal(slot.worker.pid, signal.SIGKILL)
                slot.worker.killed = True

    def all_stopped(self) -> bool:
        return all(slot.worker is None for slot in self.all_slots())

    def snapshot(self, now: float) -> dict:
        return {name: {"workers": [slot.snapshot(now) for slot in entry.slots],
                       "desired": entry.desired, "config": entry.config,
                       "rolling": len(entry.rolling) + sum(s.replaces is not None
                                                           for s in entry.slots),
                       "removing": entry.removing}
                for name, entry in self.services.items()}

    # --- operator commands: each records intent; ticks and events carry it out ------------

    def slots_of(self, service: str, index: int | None = None) -> list[Slot]:
        """The slots a command names (SERVICE or SERVICE/SLOT); KeyError if there are none."""
        entry = self.services.get(service)
        if entry is None or entry.removing:
            raise KeyError(f"no service {service!r}; known: {', '.join(self.services)}")
        slots = [s for s in entry.slots if index is None or s.index == index]
        if not slots:
            raise KeyError(f"{service} has no slot {index}")
        return slots

    def restart(self, service: str, index: int | None, now: float) -> dict:
        """Rolling restart: each running worker is replaced once its successor is READY."""
        entry = self.services[service]
        running, started = [], []
        for slot in self.slots_of(service, index):
            if slot.state in (State.READY, State.BUSY, State.STARTING) and slot.drain is None:
                if slot not in entry.rolling and slot.replaced_by is None:
                    entry.rolling.append(slot)
                    running.append(slot.index)
            elif slot.state in (State.STOPPED, State.FATAL, State.BACKOFF) and not slot.drain:
                self._start_now(slot, now)
                started.append(slot.index)
        self._advance_roll(entry, now)
        return {"service": service, "rolling": running, "started": started}

    def stop(self, service: str, index: int | None, now: float) -> dict:
        slots = self.slots_of(service, index)
        for slot in slots:
            self._drain(slot, now, "stopped by operator", None, remove=False)
        entry = self.services[service]
        entry.rolling = [s for s in entry.rolling if s not in slots]
        stopped = [slot.index for slot in slots]
        return {"service": service, "stopped": stopped}

    def start_slots(self, service: str, index: int | None, now: float) -> dict:
        started = []
        for slot in self.slots_of(service, index):
            if slot.state in (State.STOPPED, State.FATAL, State.BACKOFF) and slot.drain is None:
                self._start_now(slot, now)
                started.append(slot.index)
        return {"service": service, "started": started}

    def scale(self, service: str, count: int, now: float) -> dict:
        """Add slots, or drain and remove the highest-numbered ones."""
        entry = self.services.get(service)
        if entry is None or entry.removing:
            raise KeyError(f"no service {service!r}; known: {', '.join(self.services)}")
        if count and entry.config.handler is None:
            raise ValueError(f"service {service!r} has no handler: only external workers serve it")
        entry.desired = count
        live = sorted(entry.live(), key=lambda s: s.index)
        added = []
        for _ in range(count - len(live)):
            slot = Slot(entry.config, entry.free_index())
            entry.slots.append(slot)
            self._spawn(slot, now)
            added.append(slot.index)
        retired = []
        for slot in reversed(live[count:]):
            self._retire_slot(entry, slot, now, "scaled down")
            retired.append(slot.index)
        return {"service": service, "workers": count, "added": added, "retired": retired}

    def dump(self, service: str, index: int, now: float, reply: Callable[[dict], None]) -> None:
        """Ask a worker for the stack of every thread; ``reply`` gets it (without stopping it)."""
        slots = self.slots_of(service, index)
        slot = next((s for s in slots if s.worker is not None), None)
        if slot is None:
            raise KeyError(f"{service}/{index} has no process ({slots[0].state})")
        self._start_dump(slot, now).waiters.append(reply)

    def reconfigure(self, config: Config, now: float) -> dict:
        """Apply a new, valid configuration: start new services, drain removed ones, roll
        changed ones; leave unchanged ones (and their runtime scale) alone."""
        old, self.config = self.config, config
        report = {"added": [], "removed": [], "changed": [], "unchanged": []}
        for name, service in config.services.items():
            entry = self.services.get(name)
            if entry is None or entry.removing:
                self._add_service(name, service, now)
                report["added"].append(name)
            elif service != entry.config:
                self._change_service(entry, service, now)
                report["changed"].append(name)
            else:
                report["unchanged"].append(name)
        for name in set(old.services) - set(config.services):
            self._remove_service(self.services[name], now)
            report["removed"].append(name)
        return report

    def _add_service(self, name: str, service: ServiceConfig, now: float) -> None:
        leaving = self.services[name].slots if name in self.services else []  # still draining
        self.services[name] = ServiceSlots(service, list(leaving), desired=service.workers)
        self.scale(name, service.workers, now)

    def _change_service(self, entry: ServiceSlots, service: ServiceConfig, now: float) -> None:
        """New settings for every slot: running workers are rolled, the count follows."""
        entry.config, entry.desired = service, service.workers
        for slot in list(entry.slots):
            if slot.worker is None and not slot.drain:
                entry.slots[entry.slots.index(slot)] = replacement = Slot(service, slot.index, slot)
                if slot.state is not State.STOPPED:  # FATAL or BACKOFF: try the new settings
                    self._spawn(replacement, now)
        self.restart(service.name, None, now)
        self.scale(service.name, service.workers, now)

    def _remove_service(self, entry: ServiceSlots, now: float) -> None:
        entry.removing, entry.rolling = True, []
        for slot in list(entry.slots):
            self._retire_slot(entry, slot, now, "service removed")

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
        broker = self.config.broker
        fields = dict(service=s.name, slot=slot.index, identity=identity, handler=s.handler,
                      config=s.config, backend=broker.backend,
                      heartbeat_interval=broker.heartbeat_interval,
                      heartbeat_liveness=broker.heartbeat_liveness,
                      curve=self.worker_curve,
                      log_level=self.config.daemon.log_level,
                      log_format=self.config.daemon.log_format)
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
        self.watch(w.sentinel, lambda now: self._on_exit(slot, w, now))
        self.watch(w.stack.fd, lambda now: self._on_stack(w, now))
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

    def _on_stack(self, w: spawner.WorkerProcess, now: float) -> None:
        self._dirty = True  # the end of a dump is a deadline
        if not w.stack.read(now):
            self.unwatch(w.stack.fd)  # the worker closed its end: it is exiting

    # --- draining, replacing, retiring --------------------------------------------------------

    def _drain(self, slot: Slot, now: float, reason: str, deadline: float | None,
               remove: bool) -> None:
        """No new requests for this slot's worker; stop it once its current request is done."""
        self._dirty = True
        if slot.worker is None or slot.state is State.STOPPING:
            if slot.state is State.STOPPING:
                slot.drain = Drain(reason, None, remove)  # already on its way out
            elif slot.state in (State.BACKOFF, State.FATAL):
                self._change(slot, State.STOPPED, now, ev.WORKER_STOPPED, reason=reason)
            if remove and slot.worker is None:
                self._remove(slot)
            return
        slot.drain = Drain(reason, deadline, remove)
        self.retire(slot.worker.identity)
        if slot.state is not State.BUSY:
            self._stop_drained(slot, now)

    def _stop_drained(self, slot: Slot, now: float) -> None:
        if slot.state is not State.STOPPING and slot.worker is not None:
            self._begin_stop(slot, now, slot.drain.reason, failure=False)

    def _retire_slot(self, entry: ServiceSlots, slot: Slot, now: float, reason: str) -> None:
        if slot in entry.rolling:
            entry.rolling.remove(slot)
        for other in (slot.replaces, slot.replaced_by):
            if other is not None:  # a replacement in flight goes too
                other.replaces = other.replaced_by = None
                self._drain(other, now, reason, None, remove=True)
        slot.replaces = slot.replaced_by = None
        self._drain(slot, now, reason, None, remove=True)

    def _recycle(self, slot: Slot, now: float, why: str, **context) -> None:
        """Replace a worker that reached a limit, without losing capacity."""
        if slot.replaced_by is not None or slot.drain is not None:
            return
        self.emit(Event(ev.WORKER_RECYCLE, slot.context(reason=why, **context)))
        self._replace(slot, now)

    def _replace(self, old: Slot, now: float) -> None:
        entry = self.services[old.service.name]
        new = Slot(entry.config, old.index, old)
        new.replaces, old.replaced_by = old, new
        entry.slots.insert(entry.slots.index(old) + 1, new)
        self._spawn(new, now)

    def _take_over(self, new: Slot, now: float) -> None:
        """The replacement is READY: the old worker drains and goes."""
        old, new.replaces = new.replaces, None
        old.replaced_by = None
        self._drain(old, now, "replaced", None, remove=True)

    def _advance_roll(self, entry: ServiceSlots, now: float) -> None:
        """A rolling restart replaces one slot at a time, so capacity never drops."""
        if any(s.replaces is not None or (s.drain and s.drain.reason == "replaced")
               for s in entry.slots):
            return
        while entry.rolling:
            old = entry.rolling.pop(0)
            if old in entry.slots and old.worker is not None and old.drain is None:
                self.emit(Event(ev.WORKER_RESTARTING, old.context(reason="restart")))
                self._replace(old, now)
                return

    def _remove(self, slot: Slot) -> None:
        entry = self.services.get(slot.service.name)
        if entry is None or slot not in entry.slots:
            return
        entry.slots.remove(slot)
        self.emit(Event(ev.WORKER_REMOVED, slot.context(reason=slot.drain.reason
                                                        if slot.drain else None)))
        if entry.removing and not entry.slots:
            del self.services[slot.service.name]
        else:
            self._advance_roll(entry, time.monotonic())

    # --- stopping and exits ---------------------------------------------------------------------

    def _begin_stop(self, slot: Slot, now: float, reason: str, failure: bool,
                    dump_event: str | None = None, **context) -> None:
        w = slot.worker
        w.stop_reason, w.stop_is_failure = reason, failure
        self.retire(w.identity)
        if dump_event is None:
            self._change(slot, State.STOPPING, now, ev.WORKER_STOPPING, reason=reason)
            self._terminate(slot, now)
            return
        self._change(slot, State.STOPPING, now, reason=reason)
        dump = self._start_dump(slot, now)
        dump.kill_event, dump.context = dump_event, context

    def _start_dump(self, slot: Slot, now: float) -> Dump:
        w = slot.worker
        if w.dump is None:
            w.dump = Dump(deadline=now + DUMP_WAIT)
            if _is_frozen(w.pid):  # a stopped process runs no signal handler: do not wait
                w.dump.deadline = now
                w.frozen = True
            else:
                w.stack.start_dump()
                _signal(w.pid, DUMP_SIGNAL)
            self._dirty = True
        return w.dump

    def _finish_dump(self, slot: Slot, now: float) -> None:
        """The dump is in (or will not come): answer who asked, log a timeout, stop if due."""
        w, dump = slot.worker, slot.worker.dump
        w.dump = None
        raw = w.stack.buffer.decode(errors="replace")
        stack, blocked_at = annotate(raw, w.stack.main_ident) if raw else (None, None)
        stack = stack or ("unavailable: the process is stopped (SIGSTOP or a tracer)" if w.frozen
                          else "unavailable: no answer to the dump signal")
        for reply in dump.waiters:
            reply({"service": slot.service.name, "slot": slot.index, "pid": w.pid,
                   "blocked_at": blocked_at, "stack": stack})
        if dump.kill_event is None:
            return
        context = dict(dump.context)
        if dump.kill_event == ev.WORKER_START_TIMEOUT:
            context.update(start_timeout=slot.service.start_timeout,
                           elapsed=round(now - w.started, 3))
        if w.frozen:
            context["process_state"] = "stopped (SIGSTOP or a tracer)"
        self.emit(Event(dump.kill_event, slot.context(blocked_at=blocked_at, **context,
                                                      stack=stack)))
        self._terminate(slot, now)

    def _terminate(self, slot: Slot, now: float) -> None:
        w = slot.worker
        _signal(w.pid, signal.SIGTERM)
        if w.frozen or _is_frozen(w.pid):
            _signal(w.pid, signal.SIGCONT)  # let it run its SIGTERM handler
        w.kill_deadline = now + slot.service.stop_timeout

    def _kill(self, slot: Slot, now: float) -> None:
        w = slot.worker
        _signal(w.pid, signal.SIGKILL)
        w.killed = True
        self.emit(Event(ev.WORKER_KILLED, slot.context(
            reason=w.stop_reason, after=round(now - (w.kill_deadline - slot.service.stop_timeout), 3))))

    def _on_exit(self, slot: Slot, w: spawner.WorkerProcess, now: float) -> None:
        """The worker's sentinel fired: reap it, record why it ended, decide what comes next."""
        self._dirty = True
        self.unwatch(w.sentinel)
        code = self.spawner.reap(w)  # None: the spawner died and took it along
        w.stack.read(now)
        self.unwatch(w.stack.fd)
        w.stack.close()
        self.by_identity.pop(w.identity, None)
        self.forget(w.identity, now)
        slot.worker = None
        if w.dump is not None:
            for reply in w.dump.waiters:
                reply({"service": slot.service.name, "slot": slot.index, "pid": w.pid,
                       "blocked_at": None, "stack": "unavailable: the process exited"})
        reason = w.stop_reason or (
            "spawner_died" if code is None
            else "start_failed" if slot.state is State.STARTING and code == EXIT_START_FAILED
            else "crashed")
        # "by": "tacore" when tacore ended it (a timeout, a drain, a recycle); None when it
        # exited by itself or someone else killed it.
        slot.last_exit = {"code": code if code is not None and code >= 0 else None,
                          "signal": _signal_name(-code) if code is not None and code < 0
                          else None,
                          "reason": reason, "by": "tacore" if w.stop_reason else None,
                          "at": time.time()}
        failure = w.stop_is_failure if w.stop_reason else True
        ready_for = now - slot.ready_at if slot.ready_at is not None else None
        exit_info = {k: v for k, v in slot.last_exit.items() if k != "at"}  # the line has a time
        if failure:
            exit_info["kind"] = slot.policy.kind(ready_for)
        self.emit(Event(ev.WORKER_EXITED, slot.context(
            pid=w.pid, uptime=round(now - w.started, 3),
            ready_for=round(ready_for, 3) if ready_for is not None else None, **exit_info),
            severity="warning" if failure else None))
        self._after_exit(slot, now, reason, failure, w.pid, ready_for)

    def _after_exit(self, slot: Slot, now: float, reason: str, failure: bool, pid: int,
                    ready_for: float | None = None) -> None:
        leaving = slot.drain is not None and slot.drain.remove
        if leaving or slot.replaced_by is not None:
            # It was on its way out, or its replacement is coming: no restart.
            self._change(slot, State.STOPPED, now, ev.WORKER_STOPPED, pid=pid)
            if slot.replaced_by is not None:
                slot.replaced_by.replaces = None
                slot.replaced_by = None
            self._remove(slot)
        elif self.shutting_down or slot.drain is not None or not failure:
            self._change(slot, State.STOPPED, now, ev.WORKER_STOPPED, pid=pid)
            slot.drain = None
        else:
            self._fail(slot, now, reason, ready_for, pid=pid)

    def _fail(self, slot: Slot, now: float, reason: str, ready_for: float | None = None,
              **context) -> None:
        """An unwanted exit: a crash of a worker that had been READY min_uptime is replaced
        after backoff_initial; a start failure backs off, or makes the slot FATAL."""
        policy = slot.policy
        kind = policy.kind(ready_for)
        delay = policy.record_exit(now, reason, ready_for)
        if kind == CRASH:
            slot.crashes += 1
        if delay is not None:
            slot.backoff_until = now + delay
            self._change(slot, State.BACKOFF, now, ev.WORKER_BACKOFF, reason=reason, kind=kind,
                         delay=round(delay, 3), failures=len(policy.failures),
                         crashes=slot.crashes, **context)
            return
        failures = policy.recent(now)
        kinds = ", ".join(f"{n} {r}" for r, n in Counter(r for _, r in failures).items())
        slot.fatal_reason = (f"{len(failures)} start failures within "
                             f"{slot.service.restart_window:g}s ({kinds}); last: {reason}")
        slot.fatal_at, slot.retry_at = now, policy.retry_at(now)
        retry = (f"retried by itself in {slot.service.fatal_retry:g}s, or at once with: "
                 if slot.retry_at is not None else "")
        self._change(slot, State.FATAL, now, ev.WORKER_FATAL, reason=slot.fatal_reason,
                     retry_in=slot.service.fatal_retry if slot.retry_at is not None else None,
                     fix=f"fix the service; {retry}tacorectl start {slot.name}", **context)
        if slot.replaces is not None:  # a failed replacement: the old worker keeps serving
            old, slot.replaces = slot.replaces, None
            old.replaced_by = None
            self.emit(Event(ev.WORKER_REPLACE_FAILED, old.context(reason=slot.fatal_reason)))
            entry = self.services[slot.service.name]
            entry.rolling = []
            entry.slots.remove(slot)

    # --- figures -------------------------------------------------------------------------------

    def sample(self, now: float) -> None:
        """Read CPU and memory of every worker; recycle one over max_memory_mb."""
        for slot in self.all_slots():
            w = slot.worker
            if w is None:
                continue
            try:
                with w.ps.oneshot():
                    slot.figures = {"cpu_percent": w.ps.cpu_percent(None),
                                    "rss_bytes": w.ps.memory_info().rss,
                                    "threads": w.ps.num_threads(), "fds": w.ps.num_fds()}
            except psutil.Error:
                continue
            limit = slot.service.max_memory_mb
            if limit and slot.state in SERVING and slot.figures["rss_bytes"] > limit * 2**20:
                self._recycle(slot, now, "max_memory", rss_bytes=slot.figures["rss_bytes"],
                              max_memory_mb=limit)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it exited already; its sentinel will tell the loop


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _is_frozen(pid: int) -> bool:
    """True if the process is stopped (SIGSTOP, or a tracer): it can answer no signal."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False
