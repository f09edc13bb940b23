"""A slot: a numbered place for one worker of a service, outliving the processes that fill it.

During a rolling restart two slots share an index for a moment: the replacement (STARTING,
then READY) and the slot it replaces (then drained and removed). Status shows both, truthfully.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tacore.config import ServiceConfig
from tacore.supervision.handles import WorkerProcess
from tacore.supervision.output import Ring
from tacore.supervision.policy import RestartPolicy
from tacore.supervision.states import State


@dataclass
class Drain:
    """Stop this slot's worker once it has no request (or at ``deadline``), for ``reason``."""

    reason: str
    deadline: float | None
    remove: bool  # forget the slot once its worker has exited (scale down, replaced, removed)


@dataclass
class Lifecycle:
    """What the supervisor decides about one process of a slot, besides its state: how it
    reads its output, a stack dump in progress, and how it is being stopped. A new one with
    each process, so nothing of an earlier one is left over."""

    readers: list = field(default_factory=list)  # OutputReaders of its stdout and stderr
    dump: object = None  # a stack dump in progress (stopping.Dump)
    frozen: bool = False  # seen stopped (SIGSTOP) when a dump was asked for
    # Set when the supervisor decides to stop it:
    stop_reason: str | None = None
    stop_is_failure: bool = False
    kill_deadline: float | None = None
    killed: bool = False


class Slot:
    def __init__(self, service: ServiceConfig, index: int, now: float,
                 previous: "Slot | None" = None):
        self.service, self.index = service, index
        self.state, self.since = State.STOPPED, now
        self.worker: WorkerProcess | None = None
        self.life = Lifecycle()  # of the current process (its decisions, not its handle)
        self.spawns = previous.spawns if previous else 0
        self.crashes = previous.crashes if previous else 0  # deaths after min_uptime of READY
        self.ring = previous.ring if previous else Ring()  # recent output, across restarts
        self.last_exit: dict | None = previous.last_exit if previous else None
        self.backoff_until: float | None = None
        self.fatal_reason: str | None = None
        self.retry_at: float | None = None  # FATAL: when it is tried again by itself
        self.fatal_at: float | None = None
        self.recovering = False  # started again from FATAL: READY means it recovered
        self.ready_at: float | None = None  # when the current process became READY
        self.policy = RestartPolicy.of(service)
        self.drain: Drain | None = None
        self.replaces: Slot | None = None  # the slot this one takes over once READY
        self.replaced_by: Slot | None = None
        self.request_limit: int | None = None  # max_requests with its jitter, per process
        self.figures: dict = {}  # sampled: cpu_percent, rss_bytes, threads, fds

    @property
    def name(self) -> str:
        return f"{self.service.name}/{self.index}"

    def context(self, **extra) -> dict:
        return {"service": self.service.name, "slot": self.index,
                "pid": self.worker.pid if self.worker else None, **extra}

    def new_process(self) -> None:
        """Per-process counters start again; the recycling limit gets its own jitter."""
        s = self.service
        self.life = Lifecycle()
        self.figures = {}
        self.ready_at = None
        self.request_limit = (s.max_requests + random.randint(0, s.max_requests_jitter)
                              if s.max_requests else None)

    def snapshot(self, now: float) -> dict:
        w = self.worker
        return {
            "slot": self.index,
            "state": str(self.state),
            "pid": w.pid if w else None,
            "restarts": max(0, self.spawns - 1),
            "crashes": self.crashes,
            "uptime": round(now - w.started, 3) if w else None,
            "state_for": round(now - self.since, 3),
            "last_exit": self.last_exit,
            "backoff_remaining": round(max(0.0, self.backoff_until - now), 3)
            if self.state is State.BACKOFF else None,
            "fatal_reason": self.fatal_reason if self.state is State.FATAL else None,
            "next_retry_in": round(max(0.0, self.retry_at - now), 3)
            if self.state is State.FATAL and self.retry_at is not None else None,
            "draining": self.drain.reason if self.drain else None,
            "replacing": self.replaces is not None,
            "cpu_percent": self.figures.get("cpu_percent"),
            "rss_bytes": self.figures.get("rss_bytes"),
            "threads": self.figures.get("threads"),
            "fds": self.figures.get("fds"),
            "external": False,
        }


@dataclass
class ServiceSlots:
    """One service's slots, the count an operator asked for, and a rolling restart's queue."""

    config: ServiceConfig
    slots: list[Slot] = field(default_factory=list)
    desired: int = 0
    rolling: list[Slot] = field(default_factory=list)  # old slots still to be replaced
    removing: bool = False  # dropped from the configuration: forget it once all have exited

    def live(self) -> list[Slot]:
        """Slots that count towards ``desired``: not leaving, not a surge replacement."""
        return [s for s in self.slots
                if s.replaces is None and not (s.drain and s.drain.remove)]

    def free_index(self) -> int:
        used = {s.index for s in self.slots}
        return next(i for i in range(len(used) + 1) if i not in used)
