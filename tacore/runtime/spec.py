"""The small, plain description a worker process builds its whole world from, and the few
facts about a worker that the daemon needs without importing the worker's code (and ZeroMQ
with it): its exit status, its dump signal, its entry point."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

# Exit status of a worker whose service could not be created or whose start() raised.
EXIT_START_FAILED = 3
# A worker writes the stack of every thread to its stack pipe on this signal (faulthandler).
DUMP_SIGNAL = signal.SIGUSR1
# The file of the worker's entry point, run() in runtime/child.py: frames below it in a
# worker's stack are the daemon's, copied by fork.
ENTRY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")


@dataclass(frozen=True)
class WorkerSpec:
    service: str
    slot: int
    identity: bytes
    handler: str | None  # a Python service, or
    config: dict
    backend: str
    heartbeat_interval: float
    heartbeat_liveness: int
    parent_pid: int  # the spawner's: the worker must die with it
    stack_fd: int
    log_level: str
    log_format: str
    curve: dict | None = None  # CURVE client options for a protected backend
    command: list | None = None  # any program, exec'd (handler is None then)
    cwd: str | None = None
    env: dict | None = None
