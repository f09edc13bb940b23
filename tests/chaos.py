"""Chaos under load: clients call continuously while workers are killed, frozen, hung, made to
raise, restarted, reloaded and rescaled. Every request must get exactly one reply.

Used by tests/test_chaos.py (about 40 s) and by `make soak DURATION=30m`:

    .venv/bin/python -m tests.chaos --duration 30m
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import zmq

from tacore.control.client import ControlClient

ROOT = Path(__file__).resolve().parent.parent
TACORED = str(Path(sys.executable).with_name("tacored"))
DOCUMENTED = {"200", "400", "404", "500", "502", "503", "504"}
WORKERS = 4


def config_text(tmp: Path, queue_limit: int) -> str:
    return f"""
[daemon]
runtime_dir = "{tmp}/run"
state_dir = "{tmp}/state"
log_format = "json"
log_level = "warning"
python_path = ["{ROOT}"]
[broker]
heartbeat_interval = 0.2
[services.chaos]
handler = "tests.workers:Tool"
workers = {WORKERS}
request_timeout = 1
start_timeout = 5
stop_timeout = 0.5
max_restarts = 1000000
restart_window = 1
backoff_initial = 0.01
backoff_max = 0.1
queue_limit = {queue_limit}
queue_timeout = 20
"""


class Client(threading.Thread):
    """A DEALER speaking 7/MDP: one request at a time, every reply checked against it."""

    def __init__(self, endpoint: str, n: int, stop: threading.Event, rng: random.Random):
        super().__init__(daemon=True)
        self.endpoint, self.n, self.stop, self.rng = endpoint, n, stop, rng
        self.sent = self.answered = 0
        self.statuses: Counter = Counter()
        self.problems: list[str] = []

    def run(self):
        ctx = zmq.Context.instance()
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)
        while not self.stop.is_set():
            self.one()

    def one(self):
        request_id = f"{self.n}-{self.sent}"
        method = self.rng.choices(["echo", "raise", "sleep"], [90, 7, 3])[0]
        params = {"echo": request_id, "raise": request_id, "sleep": 5}[method]
        self.sock.send_multipart([b"", b"MDPC01", b"chaos",
                                  json.dumps({"method": method, "params": params}).encode()])
        self.sent += 1
        if not self.sock.poll(60_000):
            self.problems.append(f"{request_id}: no reply within 60 s")
            return
        frames = self.sock.recv_multipart()
        self.answered += 1
        status = frames[3].decode(errors="replace") if len(frames) > 3 else "?"
        self.statuses[status] += 1
        if status not in DOCUMENTED:
            self.problems.append(f"{request_id}: undocumented status {status!r}")
        elif status == "200" and method == "echo" and json.loads(frames[4]) != request_id:
            self.problems.append(f"{request_id}: got the reply to {frames[4]!r}")

    def leftovers(self) -> int:
        """Replies nobody asked for (a duplicate would show here)."""
        extra = 0
        while self.sock.poll(300):
            self.sock.recv_multipart()
            extra += 1
        self.sock.close()
        return extra


class Chaos(threading.Thread):
    def __init__(self, tmp: Path, control: ControlClient, daemon_pid: int,
                 stop: threading.Event, rng: random.Random):
        super().__init__(daemon=True)
        self.tmp, self.control, self.daemon_pid, self.stop, self.rng = (
            tmp, control, daemon_pid, stop, rng)
        self.actions: Counter = Counter()
        self.errors: list[str] = []
        self.queue_limit = 1000

    def pids(self) -> list[int]:
        workers = self.control.call("status")["services"]["chaos"]["workers"]
        return [w["pid"] for w in workers if w["pid"] and w["state"] in ("READY", "BUSY")]

    def run(self):
        actions = [self.kill, self.freeze, self.restart, self.reload, self.scale]
        weights = [30, 20, 15, 15, 20]
        while not self.stop.wait(self.rng.uniform(0.2, 0.6)):
            action = self.rng.choices(actions, weights)[0]
            try:
                action()
            except Exception as e:  # the daemon must answer; a failed call is a finding
                self.errors.append(f"{action.__name__}: {e!r}")

    def kill(self):
        pids = self.pids()
        if pids:
            os.kill(self.rng.choice(pids), signal.SIGKILL)
            self.actions["sigkill"] += 1

    def freeze(self):
        pids = self.pids()
        if not pids:
            return
        pid = self.rng.choice(pids)
        os.kill(pid, signal.SIGSTOP)
        self.actions["sigstop"] += 1
        if self.rng.random() < 0.5:
            self.stop.wait(0.3)
            try:
                os.kill(pid, signal.SIGCONT)
                self.actions["sigcont"] += 1
            except ProcessLookupError:
                pass

    def restart(self):
        self.control.call("restart", target="chaos")
        self.actions["rolling restart"] += 1

    def reload(self):
        self.queue_limit = 2000 if self.queue_limit == 1000 else 1000  # a change: a roll
        (self.tmp / "t.toml").write_text(config_text(self.tmp, self.queue_limit))
        result = self.control.call("reload")
        if not result["ok"]:
            self.errors.append(f"reload: {result}")
        self.actions["reload"] += 1

    def scale(self):
        self.control.call("scale", service="chaos", workers=self.rng.randint(2, 6))
        self.actions["scale"] += 1


def daemon_figures(pid: int) -> dict:
    """Descriptors, threads and RSS, read once the descriptor count holds still (a control
    connection that just closed is torn down by libzmq a moment later)."""
    p = psutil.Process(pid)
    previous = None
    for _ in range(50):
        fds = p.num_fds()
        if fds == previous:
            break
        previous = fds
        time.sleep(0.3)  # the interval the count must hold still for
    return {"fds": fds, "threads": p.num_threads(), "rss": p.memory_info().rss}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run(duration: float, clients: int = 6, seed: int | None = None) -> dict:
    """Run the chaos for ``duration`` seconds; return the figures (and every problem seen)."""
    seed = seed if seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="tcc-") as name:
        tmp = Path(name)
        (tmp / "t.toml").write_text(config_text(tmp, 1000))
        log = open(tmp / "log", "wb")
        proc = subprocess.Popen([TACORED, "--config", str(tmp / "t.toml")], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        control = ControlClient(f"ipc://{tmp}/run/control.sock", timeout=10)
        try:
            return _run(tmp, proc, control, duration, clients, rng, seed)
        except BaseException:
            if proc.poll() is None:  # still there: ask it where its loop is (faulthandler)
                os.kill(proc.pid, signal.SIGUSR1)
                time.sleep(0.5)  # the dump is written from a signal handler
            log.flush()
            text = (tmp / "log").read_bytes().decode(errors="replace")
            (Path(tempfile.gettempdir()) / "tacore-chaos-failed.log").write_text(text)
            tail = text.splitlines()[-40:]
            print(f"chaos failed (seed {seed}); daemon exit {proc.poll()}; its log ends:",
                  *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            log.close()


def _all_ready(control: ControlClient, count: int) -> bool:
    workers = control.call("status")["services"]["chaos"]["workers"]
    return len(workers) == count and all(w["state"] in ("READY", "BUSY") and not w["draining"]
                                         for w in workers)


def _run(tmp, proc, control, duration, clients, rng, seed) -> dict:
    wait_for(lambda: _all_ready(control, WORKERS), 30, "the workers")
    stop_load, stop_chaos = threading.Event(), threading.Event()
    endpoint = f"ipc://{tmp}/run/frontend.sock"
    load = [Client(endpoint, n, stop_load, random.Random(rng.random())) for n in range(clients)]
    for c in load:
        c.start()
    wait_for(lambda: sum(c.answered for c in load) > 200, 30, "warm-up traffic")
    warm = daemon_figures(proc.pid)
    spawned_before = control.call("metrics")["services"]["chaos"]["restarts"]
    chaos = Chaos(tmp, control, proc.pid, stop_chaos, rng)
    chaos.start()
    time.sleep(duration)  # the chaos runs for this long
    stop_chaos.set()
    chaos.join(30)
    for pid in psutil.Process(proc.pid).children(recursive=True):  # frozen workers go on
        try:
            pid.send_signal(signal.SIGCONT)
        except psutil.Error:
            pass
    control.call("scale", service="chaos", workers=WORKERS)
    wait_for(lambda: _all_ready(control, WORKERS), 60, "the configured workers READY")
    stop_load.set()
    for c in load:
        c.join(70)
    wait_for(lambda: not [c for c in psutil.Process(proc.pid).children(recursive=True)
                          if c.status() == psutil.STATUS_ZOMBIE], 10, "no zombies")
    end = daemon_figures(proc.pid)  # with the same clients connected as at warm-up
    extra = sum(c.leftovers() for c in load)
    statuses = sum((c.statuses for c in load), Counter())
    return {
        "seed": seed, "seconds": duration,
        "sent": sum(c.sent for c in load), "answered": sum(c.answered for c in load),
        "statuses": dict(statuses), "unasked_replies": extra,
        "problems": [p for c in load for p in c.problems] + chaos.errors,
        "actions": dict(chaos.actions),
        "worker_replacements": control.call("metrics")["services"]["chaos"]["restarts"]
        - spawned_before,
        "workers_ready": len(control.call("status")["services"]["chaos"]["workers"]),
        "zombies": 0, "warm": warm, "end": end,
    }


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="30m")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    result = run(parse_duration(args.duration), args.clients, args.seed)
    print(json.dumps(result, indent=2))
    ok = (result["sent"] == result["answered"] and not result["problems"]
          and result["unasked_replies"] == 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
