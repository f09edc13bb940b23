"""What happens when a worker's process exits: reap it, record why it ended, and restart it,
back off, or make the slot FATAL by its restart policy. Part of the supervisor
(``Supervisor`` inherits ``Exits``), kept apart so that each file reads in one sitting.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

from tacore import events as ev
from tacore import facts as f
from tacore.events import Event
from tacore.runtime.spec import EXIT_START_FAILED
from tacore.supervision.handles import WorkerProcess
from tacore.supervision.policy import CRASH
from tacore.supervision.slot import Slot
from tacore.supervision.states import State


class Exits:
    def _on_exit(self, slot: Slot, w: WorkerProcess, now: float) -> None:
        """The worker's sentinel fired: reap it, record why it ended, decide what comes next."""
        self._dirty = True
        self.unwatch(w.sentinel)
        code = self.spawner.reap(w)  # None: the spawner died and took it along
        w.stack.read(now)
        self.unwatch(w.stack.fd)
        w.stack.close()
        life = slot.life
        for reader in life.readers:
            reader.drain(now)  # what it printed last, and a partial last line
            self.unwatch(reader.fd)
            reader.close()
        self.by_identity.pop(w.identity, None)
        self.facts.append(f.Gone(w.identity))  # the broker requeues or answers what it held
        slot.worker = None
        if life.dump is not None:
            for reply in life.dump.waiters:
                reply({"service": slot.service.name, "slot": slot.index, "pid": w.pid,
                       "blocked_at": None, "stack": "unavailable: the process exited"})
        reason = life.stop_reason or (
            "spawner_died" if code is None
            else "start_failed" if slot.state is State.STARTING and code == EXIT_START_FAILED
            else "crashed")
        # "by": "tacore" when tacore ended it (a timeout, a drain, a recycle); None when it
        # exited by itself or someone else killed it.
        slot.last_exit = {"code": code if code is not None and code >= 0 else None,
                          "signal": _signal_name(-code) if code is not None and code < 0
                          else None,
                          "reason": reason, "by": "tacore" if life.stop_reason else None,
                          "at": time.time()}
        failure = life.stop_is_failure if life.stop_reason else True
        ready_for = now - slot.ready_at if slot.ready_at is not None else None
        exit_info = {k: v for k, v in slot.last_exit.items() if k != "at"}  # the line has a time
        if failure:
            exit_info["kind"] = slot.policy.kind(ready_for)
        self.emit(Event(ev.WORKER_EXITED, slot.context(
            pid=w.pid, uptime=round(now - w.started, 3),
            ready_for=round(ready_for, 3) if ready_for is not None else None, **exit_info,
            output=slot.ring.tail() if failure else None),
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
            self._remove(slot, now)
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
                     output=slot.ring.tail(),
                     retry_in=slot.service.fatal_retry if slot.retry_at is not None else None,
                     fix=f"fix the service; {retry}tacorectl start {slot.name}", **context)
        if slot.replaces is not None:  # a failed replacement: the old worker keeps serving
            old, slot.replaces = slot.replaces, None
            old.replaced_by = None
            self.emit(Event(ev.WORKER_REPLACE_FAILED, old.context(reason=slot.fatal_reason)))
            entry = self.services[slot.service.name]
            entry.rolling = []
            entry.slots.remove(slot)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
