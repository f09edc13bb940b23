"""The worker-slot lifecycle: states, the allowed moves, and the one function that moves.

    STOPPED ──spawn──▶ STARTING ──READY──▶ READY
       ▲                  │                  │
       │                  └──────────────────┴───────┐
       │                      kill (timeout, stop)   │ exited on its own
       │                                 ▼           ▼
       └──── exited, stop wanted ─── STOPPING ──▶ BACKOFF ──delay──▶ STARTING
                                         │           │
                                         └─────────▶ FATAL ──fatal_retry/operator──▶ STARTING

Busy or idle is not a lifecycle state: the broker owns it (a READY worker holding a request
is shown as BUSY in status). A slot leaves STOPPING when its process has exited: for STOPPED if the stop was wanted (an
operator or shutdown), for BACKOFF or FATAL if the kill was a failure (start timeout, missed
heartbeats, request timeout). A process that dies by itself goes to BACKOFF or FATAL, or
straight to STOPPED when no restart is wanted any more (the daemon is shutting down, the slot
is being drained, replaced or removed). Drawn in docs/architecture.md.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    READY = "READY"
    STOPPING = "STOPPING"
    BACKOFF = "BACKOFF"
    FATAL = "FATAL"

    def __str__(self):
        return self.value


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.READY, S.STOPPING, S.BACKOFF, S.FATAL, S.STOPPED}),
    S.READY: frozenset({S.STOPPING, S.BACKOFF, S.FATAL, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED, S.BACKOFF, S.FATAL}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
}

# States in which the slot has a live process.
RUNNING = frozenset({S.STARTING, S.READY, S.STOPPING})


class TransitionError(Exception):
    """A move the lifecycle does not allow: a bug in the caller, never silently ignored."""


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"worker state cannot go from {old} to {new}")
