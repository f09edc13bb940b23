"""The small, plain description a worker process builds its whole world from."""

from __future__ import annotations

import signal
from dataclasses import dataclass

# Exit status of a worker whose service could not be created or whose start() raised.
EXIT_START_FAILED = 3
# The signal on which a worker's faulthandler writes every thread's stack to its stack pipe.
DUMP_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class WorkerSpec:
    service: str
    slot: int
    identity: bytes
    handler: str
    config: dict
    backend: str
    heartbeat_interval: float
    heartbeat_liveness: int
    parent_pid: int  # the spawner's: the worker must die with it
    stack_fd: int
    log_level: str
    log_format: str
    curve: dict | None = None  # CURVE client options for a protected backend
