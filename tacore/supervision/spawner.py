"""Start worker processes. The one place that chooses the multiprocessing start method.

Method: ``fork``. A restart then costs one fork (a few ms) and the child starts with the
libraries the daemon already imported. It is safe here because the daemon runs no Python
threads of its own, the child never touches the daemon's ZeroMQ context (it closes the
inherited sockets and builds a fresh context),
and glibc resets its allocator locks across fork. ``forkserver`` (about 4x slower per start)
would be the choice if the daemon ever ran threads of its own. See docs/architecture.md.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass

import psutil

from tacore.runtime import child
from tacore.runtime.spec import WorkerSpec
from tacore.supervision.stacks import StackReader

START_METHOD = "fork"
_mp = multiprocessing.get_context(START_METHOD)


@dataclass
class WorkerProcess:
    """One incarnation of a worker slot: its process and what the daemon knows of it."""

    process: multiprocessing.process.BaseProcess
    pid: int
    identity: bytes
    stack: StackReader
    started: float  # monotonic
    spawn_seconds: float
    ps: psutil.Process | None = None  # for CPU and memory figures
    dump: object = None  # a stack dump in progress (the supervisor's Dump)
    frozen: bool = False  # seen stopped (SIGSTOP) when a dump was asked for
    # Set when the daemon decides to stop it:
    stop_reason: str | None = None
    stop_is_failure: bool = False
    kill_deadline: float | None = None
    killed: bool = False

    @property
    def sentinel(self) -> int:
        return self.process.sentinel


def spawn(spec_fields: dict, now: float) -> WorkerProcess:
    """Fork a worker for ``spec_fields`` (a WorkerSpec without its descriptors)."""
    stack_r, stack_w = os.pipe()
    spec = WorkerSpec(**spec_fields, stack_fd=stack_w)
    process = _mp.Process(target=child.run, args=(spec,),
                          name=f"tacore:{spec.service}/{spec.slot}")
    began = time.perf_counter()
    try:
        process.start()
    finally:
        os.close(stack_w)
    spawn_seconds = time.perf_counter() - began
    try:
        ps = psutil.Process(process.pid)
    except psutil.Error:
        ps = None  # already gone: its sentinel will say so
    return WorkerProcess(process=process, pid=process.pid, identity=spec.identity,
                         stack=StackReader(stack_r), started=now,
                         spawn_seconds=spawn_seconds, ps=ps)
