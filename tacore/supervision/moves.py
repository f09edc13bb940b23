"""The operator's moves on slots (restart, stop, start, scale, a new configuration) and the
drain, replace and roll machinery they use: part of the supervisor (``Supervisor`` inherits
``Moves``), kept apart so that each file reads in one sitting. Each move records intent;
ticks, facts and exits carry it out.
"""

from __future__ import annotations

from typing import Callable

from tacore import events as ev
from tacore import facts as f
from tacore.config import Config, ServiceConfig
from tacore.events import Event
from tacore.supervision.slot import Drain, ServiceSlots, Slot
from tacore.supervision.states import State


class Moves:
    def slots_of(self, service: str, index: int | None = None) -> list[Slot]:
        """The slots a command names (SERVICE or SERVICE/SLOT); KeyError if there are none."""
        entry = self.services.get(service)
        if entry is None or entry.removing:
            raise KeyError(f"no service {service!r}; known: {', '.join(self.services)}")
        slots = [s for s in entry.slots if index is None or s.index == index]
        if not slots:
            raise KeyError(f"{service} has no slot {index}")
        return slots

    def output(self, service: str | None, index: int | None, now: float, lines: int = 100,
               after: int | None = None) -> list[dict]:
        """Recent output lines of the named slots (all if ``service`` is None)."""
        slots = self.slots_of(service, index) if service else self.all_slots()
        rings = {}
        for slot in slots:  # a slot and its replacement share one ring
            rings.setdefault(id(slot.ring), (slot, slot.ring))
        found = [{"seq": seq, "ts": ts, "service": slot.service.name, "slot": slot.index,
                  "pid": pid, "stream": stream, "line": line}
                 for slot, ring in rings.values() for seq, ts, pid, stream, line in ring.lines
                 if after is None or seq > after]
        found.sort(key=lambda entry: entry["seq"])
        return found[-lines:] if lines else found

    def restart(self, service: str, index: int | None, now: float) -> dict:
        """Rolling restart: each running worker is replaced once its successor is READY."""
        entry = self.services[service]
        running, started = [], []
        for slot in self.slots_of(service, index):
            if slot.state in (State.READY, State.STARTING) and slot.drain is None:
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
        if count and entry.config.handler is None and entry.config.command is None:
            raise ValueError(f"service {service!r} has no handler or command: only external "
                             "workers serve it")
        entry.desired = count
        live = sorted(entry.live(), key=lambda s: s.index)
        added = []
        for _ in range(count - len(live)):
            slot = Slot(entry.config, entry.free_index(), now)
            entry.slots.append(slot)
            self._spawn(slot, now)
            added.append(slot.index)
        retired = []
        for slot in reversed(live[count:]):
            self._drain_and_remove(entry, slot, now, "scaled down")
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
                replacement = Slot(service, slot.index, now, slot)
                entry.slots[entry.slots.index(slot)] = replacement
                if slot.state is not State.STOPPED:  # FATAL or BACKOFF: try the new settings
                    self._spawn(replacement, now)
        self.restart(service.name, None, now)
        self.scale(service.name, service.workers, now)

    def _remove_service(self, entry: ServiceSlots, now: float) -> None:
        entry.removing, entry.rolling = True, []
        for slot in list(entry.slots):
            self._drain_and_remove(entry, slot, now, "service removed")

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
                self._remove(slot, now)
            return
        slot.drain = Drain(reason, deadline, remove)
        self.facts.append(f.Retire(slot.worker.identity))  # the broker says when it is Drained

    def _stop_drained(self, slot: Slot, now: float) -> None:
        if slot.state is not State.STOPPING and slot.worker is not None:
            self._begin_stop(slot, now, slot.drain.reason, failure=False)

    def _drain_and_remove(self, entry: ServiceSlots, slot: Slot, now: float, reason: str) -> None:
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
        new = Slot(entry.config, old.index, now, old)
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

    def _remove(self, slot: Slot, now: float) -> None:
        entry = self.services.get(slot.service.name)
        if entry is None or slot not in entry.slots:
            return
        entry.slots.remove(slot)
        self.emit(Event(ev.WORKER_REMOVED, slot.context(reason=slot.drain.reason
                                                        if slot.drain else None)))
        if entry.removing and not entry.slots:
            del self.services[slot.service.name]
        else:
            self._advance_roll(entry, now)

