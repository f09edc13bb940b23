"""Stopping a worker: SIGTERM then SIGKILL at stop_timeout, and, when the stop is a failure
(a start timeout, missed heartbeats, a request timeout), its stack first — dumped on SIGUSR1
by faulthandler into the stack pipe, annotated with source lines, logged with the event. Part
of the supervisor (``Supervisor`` inherits ``Stopping``), kept apart for size.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from tacore import events as ev
from tacore import facts as f
from tacore.events import Event
from tacore.runtime.spec import DUMP_SIGNAL
from tacore.supervision.slot import Slot
from tacore.supervision.stacks import annotate
from tacore.supervision.states import State

DUMP_WAIT = 1.0  # how long to wait for a stack dump before going on without one


@dataclass
class Dump:
    """A stack dump in progress: who waits for it, and what to do once it is in."""

    deadline: float
    waiters: list = field(default_factory=list)  # callables taking {"stack", "blocked_at"}
    kill_event: str | None = None  # log this event with the stack, then stop the worker
    context: dict = field(default_factory=dict)


class Stopping:
    def _begin_stop(self, slot: Slot, now: float, reason: str, failure: bool,
                    dump_event: str | None = None, **context) -> None:
        slot.life.stop_reason, slot.life.stop_is_failure = reason, failure
        self.facts.append(f.Retire(slot.worker.identity))
        if dump_event is None:
            self._change(slot, State.STOPPING, now, ev.WORKER_STOPPING, reason=reason)
            self._terminate(slot, now)
            return
        self._change(slot, State.STOPPING, now, reason=reason)
        dump = self._start_dump(slot, now)
        dump.kill_event, dump.context = dump_event, context

    def _start_dump(self, slot: Slot, now: float) -> Dump:
        w, life = slot.worker, slot.life
        if life.dump is None:
            life.dump = Dump(deadline=now + DUMP_WAIT)
            if self.system.is_frozen(w.pid):  # a stopped process runs no handler: do not wait
                life.dump.deadline = now
                life.frozen = True
            elif w.group and not self.system.catches(w.pid, DUMP_SIGNAL):
                life.dump.deadline = now  # a program that did not ask for it: /proc only
            else:
                w.stack.start_dump()
                self.system.kill(w.pid, DUMP_SIGNAL)
            self._dirty = True
        return life.dump

    def _finish_dump(self, slot: Slot, now: float) -> None:
        """The dump is in (or will not come): answer who asked, log a timeout, stop if due."""
        w, life, dump = slot.worker, slot.life, slot.life.dump
        life.dump = None
        raw = w.stack.buffer.decode(errors="replace")
        stack, blocked_at = annotate(raw, w.stack.main_ident) if raw else (None, None)
        if w.group:  # a command worker: what /proc shows, and its own stack if it wrote one
            view, where = self.system.proc_view(w.pid)
            stack, blocked_at = (f"{stack}\n\n{view}" if stack else view), blocked_at or where
        stack = stack or ("unavailable: the process is stopped (SIGSTOP or a tracer)"
                          if life.frozen else "unavailable: no answer to the dump signal")
        for reply in dump.waiters:
            reply({"service": slot.service.name, "slot": slot.index, "pid": w.pid,
                   "blocked_at": blocked_at, "stack": stack})
        if dump.kill_event is None:
            return
        context = dict(dump.context)
        if dump.kill_event == ev.WORKER_START_TIMEOUT:
            context.update(start_timeout=slot.service.start_timeout,
                           elapsed=round(now - w.started, 3))
        if life.frozen:
            context["process_state"] = "stopped (SIGSTOP or a tracer)"
        self.emit(Event(dump.kill_event, slot.context(blocked_at=blocked_at, **context,
                                                      stack=stack, output=slot.ring.tail())))
        self._terminate(slot, now)

    def _terminate(self, slot: Slot, now: float) -> None:
        w = slot.worker
        self.system.signal(w, signal.SIGTERM)
        if slot.life.frozen or self.system.is_frozen(w.pid):
            self.system.signal(w, signal.SIGCONT)  # let it run its SIGTERM handler
        slot.life.kill_deadline = now + slot.service.stop_timeout

    def _kill(self, slot: Slot, now: float) -> None:
        life = slot.life
        self.system.signal(slot.worker, signal.SIGKILL)
        life.killed = True
        self.emit(Event(ev.WORKER_KILLED, slot.context(
            reason=life.stop_reason,
            after=round(now - (life.kill_deadline - slot.service.stop_timeout), 3))))

