"""The supervisor core with a fake clock, a fake spawner and fake signals: no process, no socket.

The daemon's integration tests prove the shell; these walk the lifecycle's edge cases step by
step: start timeout → dump → kill → backoff → FATAL → retry, drain, rolling restart,
recycling, frozen workers, crashes, shutdown, and the facts told to the broker.
"""

import itertools
import os
import signal
from pathlib import Path

import pytest

from tacore import events as ev
from tacore import facts as f
from tacore.config import (BrokerConfig, Config, ControlConfig, DaemonConfig, HttpConfig,
                           ServiceConfig, StateConfig)
from tacore.supervision.handles import WorkerProcess
from tacore.supervision.stacks import StackReader
from tacore.supervision.supervisor import Supervisor

DUMP = (b"main-thread 0x00007f0000000001\n"
        b"Current thread 0x00007f0000000001 (most recent call first):\n"
        b'  File "/srv/app/service.py", line 7 in start\n')


def config(**service) -> Config:
    s = ServiceConfig(**{"name": "svc", "handler": "m:C", "workers": 1, "start_timeout": 1.0,
                         "stop_timeout": 1.0, "max_restarts": 1, "backoff_initial": 0.1,
                         "backoff_max": 0.1, "min_uptime": 5.0, "fatal_retry": 30.0, **service})
    return Config(Path("/t.toml"), DaemonConfig(Path("/run"), Path("/state")),
                  BrokerConfig(("ipc:///f",), "ipc:///b"), ControlConfig("ipc:///c"),
                  StateConfig(), HttpConfig(), {"svc": s})


class FakeSpawner:
    def __init__(self):
        self.pids = itertools.count(1000)
        self.exit_codes: dict[int, int] = {}
        self.pipes: dict[int, int] = {}  # pid -> the stack pipe's write end

    def spawn(self, fields, now):
        pid = next(self.pids)
        r, w = os.pipe()
        self.pipes[pid] = w
        return WorkerProcess(pid=pid, identity=fields["identity"], sentinel=-pid,
                             stack=StackReader(r), started=now, spawn_seconds=0.001)

    def reap(self, w):
        os.close(self.pipes.pop(w.pid))
        return self.exit_codes.pop(w.pid, -signal.SIGKILL)


class FakeSystem:
    def __init__(self):
        self.signals: list[tuple[int, int]] = []
        self.frozen: set[int] = set()

    def kill(self, pid, sig):
        self.signals.append((pid, sig))

    def signal(self, w, sig):
        self.kill(w.pid, sig)

    def catches(self, pid, sig):
        return True

    def proc_view(self, pid):
        return f"/proc view of pid {pid}", "wchan do_wait, syscall 61"

    def is_frozen(self, pid):
        return pid in self.frozen

    def figures(self, w):
        return {"cpu_percent": 1.0, "rss_bytes": 10 * 2**20, "threads": 1, "fds": 5}


class Harness:
    def __init__(self, **service):
        self.events, self.watched = [], {}
        self.spawner, self.system = FakeSpawner(), FakeSystem()
        self.sup = Supervisor(config(**service), self.events.append, self.watch, self.unwatch,
                              spawner=self.spawner, system=self.system, now=0.0)
        self.now = 0.0
        self.facts: list = []

    def watch(self, fd, handler):
        self.watched[fd] = handler

    def unwatch(self, fd):
        self.watched.pop(fd, None)

    def at(self, now):
        self.now = now
        self.sup.tick(now)
        return self.take()

    def take(self):
        facts, self.sup.facts = self.sup.facts, []
        self.facts += facts
        return facts

    def tell(self, fact):
        self.sup.apply(fact, self.now)
        return self.take()

    def slot(self, index=0):
        return next(s for s in self.sup.services["svc"].slots if s.index == index
                    and s.replaces is None)

    def worker(self, index=0):
        return self.slot(index).worker

    def exit(self, w, code=None):
        if code is not None:
            self.spawner.exit_codes[w.pid] = code
        self.watched[w.sentinel](self.now)
        return self.take()

    def ready(self, index=0):
        return self.tell(f.Ready(self.worker(index).identity))

    def named(self, name):
        return [e for e in self.events if e.name == name]

    def sent(self, sig):
        return [pid for pid, s in self.system.signals if s == sig]


def started(**service) -> Harness:
    h = Harness(**service)
    h.sup.start(0.0)
    h.take()
    return h


def test_spawn_tells_the_broker_to_expect_the_worker():
    h = Harness(max_requests=10)
    h.sup.start(0.0)
    (expect,) = h.take()
    assert expect == f.Expect(h.worker().identity, b"svc", 10, 4)  # prefetch 4
    h.ready()
    assert str(h.slot().state) == "READY" and h.named(ev.WORKER_READY)


def test_start_timeout_dump_kill_backoff_fatal_and_retry():
    h = started()
    w = h.worker()
    assert h.at(1.0) == [f.Retire(w.identity)]  # STOPPING: the broker takes nothing for it
    assert h.sent(signal.SIGUSR1) == [w.pid]  # the stack first
    os.write(h.spawner.pipes[w.pid], DUMP)
    h.watched[w.stack.fd](1.01)
    h.at(1.07)  # the pipe has been quiet for 50 ms: the dump is in
    (timeout,) = h.named(ev.WORKER_START_TIMEOUT)
    assert timeout.context["blocked_at"].startswith("/srv/app/service.py:7")
    assert h.sent(signal.SIGTERM) == [w.pid]
    h.at(2.1)  # stop_timeout: SIGKILL
    assert h.sent(signal.SIGKILL) == [w.pid]
    assert h.exit(w) == [f.Gone(w.identity)]
    assert str(h.slot().state) == "BACKOFF" and h.slot().last_exit["by"] == "tacore"
    h.at(2.3)  # the backoff is over: a new worker
    second = h.worker()
    assert second.pid != w.pid and h.facts[-1] == f.Expect(second.identity, b"svc", None, 4)
    h.at(3.3)  # its start times out too: a frozen worker cannot dump, so no wait
    h.system.frozen.add(second.pid)
    h.exit(second, 0)
    assert str(h.slot().state) == "FATAL" and h.slot().retry_at == pytest.approx(33.3)
    assert f.ServiceFatal(b"svc", True) in h.facts
    h.at(33.3)  # fatal_retry: tried again from the start
    assert str(h.slot().state) == "STARTING" and h.named(ev.WORKER_RETRY)
    assert f.ServiceFatal(b"svc", False) in h.facts
    h.ready()
    assert h.named(ev.WORKER_RECOVERED) and h.slot().fatal_reason is None


def test_a_frozen_worker_is_dumped_without_waiting_and_sent_sigcont():
    h = started()
    h.ready()
    w = h.worker()
    h.system.frozen.add(w.pid)
    h.tell(f.HeartbeatTimeout(w.identity, 7.5))
    h.at(0.5)
    (event,) = h.named(ev.WORKER_HEARTBEAT_TIMEOUT)
    assert "stopped" in event.context["stack"] and event.context["silent_for"] == 7.5
    assert h.sent(signal.SIGUSR1) == [] and h.sent(signal.SIGCONT) == [w.pid]


def test_drain_waits_for_the_broker_to_say_drained():
    h = started()
    h.ready()
    w = h.worker()
    h.sup.stop("svc", None, 1.0)
    assert h.take() == [f.Retire(w.identity)]
    assert h.sent(signal.SIGTERM) == []  # it may still hold a request
    h.tell(f.Drained(w.identity))
    assert h.sent(signal.SIGTERM) == [w.pid]
    h.exit(w, 0)
    assert str(h.slot().state) == "STOPPED" and not h.named(ev.WORKER_BACKOFF)


def test_rolling_restart_replaces_one_slot_at_a_time():
    h = started(workers=2)
    h.ready(0)
    h.ready(1)
    old = [h.worker(0), h.worker(1)]
    h.sup.restart("svc", None, 1.0)
    first = [s for s in h.sup.services["svc"].slots if s.replaces is not None]
    assert len(first) == 1 and h.take()[-1].identity == first[0].worker.identity
    h.tell(f.Ready(first[0].worker.identity))  # the replacement is READY: the old one drains
    assert f.Retire(old[0].identity) in h.facts
    h.tell(f.Drained(old[0].identity))
    h.exit(old[0], 0)  # gone: the next slot's turn
    second = [s for s in h.sup.services["svc"].slots if s.replaces is not None]
    assert len(second) == 1 and second[0].index == 1
    h.tell(f.Ready(second[0].worker.identity))
    h.tell(f.Drained(old[1].identity))
    h.exit(old[1], 0)
    slots = h.sup.services["svc"].slots
    assert len(slots) == 2 and all(str(s.state) == "READY" for s in slots)
    assert {s.worker.pid for s in slots}.isdisjoint({w.pid for w in old})


def test_recycling_at_the_request_limit_keeps_capacity():
    h = started(max_requests=100)
    h.ready()
    old = h.worker()
    h.tell(f.LimitReached(old.identity, 100))
    (recycle,) = h.named(ev.WORKER_RECYCLE)
    assert recycle.context["reason"] == "max_requests"
    new = next(s for s in h.sup.services["svc"].slots if s.replaces is not None)
    assert h.sent(signal.SIGTERM) == []  # the old one serves until the new one is READY
    h.tell(f.Ready(new.worker.identity))
    h.tell(f.Drained(old.identity))
    assert h.sent(signal.SIGTERM) == [old.pid]


def test_a_crash_after_min_uptime_is_replaced_quickly_and_never_fatal():
    h = started(max_restarts=0)
    for i in range(5):
        h.ready()
        h.now += 6.0  # READY longer than min_uptime
        h.exit(h.worker(), -signal.SIGKILL)
        assert str(h.slot().state) == "BACKOFF"
        assert h.slot().backoff_until == pytest.approx(h.now + 0.1)
        h.at(h.now + 0.1)
    assert h.slot().crashes == 5 and not h.named(ev.WORKER_FATAL)


def test_shutdown_drains_everyone_then_all_stopped():
    h = started(workers=2)
    h.ready(0)
    workers = [h.worker(0), h.worker(1)]  # slot 1 never became READY
    h.sup.shutdown(1.0)
    assert set(h.take()) == {f.Retire(w.identity) for w in workers}
    for w in workers:
        h.tell(f.Drained(w.identity))
    assert sorted(h.sent(signal.SIGTERM)) == sorted(w.pid for w in workers)
    for w in workers:
        h.exit(w, 0)
    assert h.sup.all_stopped() and not h.named(ev.WORKER_BACKOFF)
