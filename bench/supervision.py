"""Supervision timings against a real tacored: start-timeout chain, crash recovery, idle CPU.

    .venv/bin/python bench/supervision.py [--idle-seconds 60] [--json out.json]

Figures come from the daemon's own JSON log timestamps and from polling its control socket.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

from tacore.control.client import ControlClient
from waiting import until

ROOT = Path(__file__).resolve().parent.parent
TACORED = str(Path(sys.executable).with_name("tacored"))


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


class Daemon:
    def __init__(self, workdir: Path, services: str):
        self.dir = workdir
        (workdir / "t.toml").write_text(
            f'[daemon]\nruntime_dir = "{workdir}/run"\nstate_dir = "{workdir}/state"\nlog_format = "json"\n'
            f'python_path = ["{ROOT}"]\n' + services)
        self.log = open(workdir / "log", "wb")
        self.proc = subprocess.Popen([TACORED, "--config", str(workdir / "t.toml")],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.client = ControlClient(f"ipc://{workdir}/run/control.sock", timeout=2)

    def events(self, name: str) -> list[dict]:
        lines = (self.dir / "log").read_bytes().splitlines()
        return [e for e in map(json.loads, lines) if e.get("event") == name]

    def wait(self, predicate, timeout: float = 30.0):
        return until(predicate, timeout)

    def workers(self, service: str):
        return self.client.call("status")["services"][service]["workers"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


def start_timeout_chain(workdir: Path, rounds: int = 3) -> dict:
    d = Daemon(workdir, '[services.stuck]\nhandler = "tests.workers:BlocksInStart"\n'
                        'start_timeout = 1\nmax_restarts = 100\n')
    try:
        d.wait(lambda: len(d.events("worker.spawned")) > rounds, timeout=60)
        spawned, dumped, exited = (d.events(n) for n in (
            "worker.spawned", "worker.start_timeout", "worker.exited"))
        rows = []
        for i in range(rounds):
            expiry = ts(spawned[i]) + 1.0
            rows.append({"stack_event_ms": (ts(dumped[i]) - expiry) * 1000,
                         "exited_ms": (ts(exited[i]) - expiry) * 1000,
                         "respawned_ms": (ts(spawned[i + 1]) - expiry) * 1000,
                         "backoff_ms": (ts(spawned[i + 1]) - ts(exited[i])) * 1000})
        return {k: round(sorted(r[k] for r in rows)[len(rows) // 2], 1) for k in rows[0]}
    finally:
        d.stop()


def crash_to_ready(workdir: Path, rounds: int = 5) -> dict:
    d = Daemon(workdir, '[services.echo]\nhandler = "tacore.services.echo:Echo"\nworkers = 1\n'
                        'max_restarts = 100\nrestart_window = 0.1\n')  # each crash is a first one
    try:
        d.wait(lambda: d.workers("echo")[0]["state"] == "READY")
        total = []
        for _ in range(rounds):
            old = d.workers("echo")[0]["pid"]
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            d.wait(lambda: (w := d.workers("echo")[0])["state"] == "READY" and w["pid"] != old)
            total.append((time.monotonic() - t0) * 1000)
        ready = d.events("worker.ready")[1:]
        spawned = d.events("worker.spawned")
        spawn_ms = sorted(e["spawn_ms"] for e in spawned)
        boot_ms = sorted(e["startup_seconds"] * 1000 for e in ready)
        return {"kill_to_ready_ms_median": round(sorted(total)[len(total) // 2], 1),
                "kill_to_ready_ms_min": round(min(total), 1),
                "fork_ms_median": spawn_ms[len(spawn_ms) // 2],
                "spawn_to_ready_ms_median": round(boot_ms[len(boot_ms) // 2], 1)}
    finally:
        d.stop()


def rolling_restart(workdir: Path, clients: int = 8) -> dict:
    """Restart a 4-worker echo service under load: how long, and was every request answered."""
    import threading

    from tacore.client import CallError, Client

    d = Daemon(workdir, '[services.echo]\nhandler = "tacore.services.echo:Echo"\nworkers = 4\n')
    counts = {"sent": 0, "answered": 0, "ok": 0}
    lock, stop = threading.Lock(), threading.Event()
    client = Client(f"ipc://{workdir}/run/frontend.sock")

    def load():
        while not stop.is_set():
            with lock:
                counts["sent"] += 1
            try:
                client.call("echo", "x", 1, timeout=10)
                ok = 1
            except CallError:
                ok = 0
            with lock:
                counts["answered"] += 1
                counts["ok"] += ok

    try:
        d.wait(lambda: all(w["state"] == "READY" for w in d.workers("echo")))
        old = {w["pid"] for w in d.workers("echo")}
        threads = [threading.Thread(target=load) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(1)  # the load runs a while before the restart
        lowest, t0 = 4, time.monotonic()
        d.client.call("restart", target="echo")

        def done():
            nonlocal lowest
            workers = d.workers("echo")
            lowest = min(lowest, sum(w["state"] in ("READY", "BUSY") and not w["draining"]
                                     for w in workers))
            return len(workers) == 4 and not {w["pid"] for w in workers} & old
        d.wait(done)
        took = time.monotonic() - t0
        time.sleep(1)  # and a while after it
        stop.set()
        for t in threads:
            t.join()
        client.close()
        return {"restart_seconds": round(took, 3), "lowest_ready": lowest, **counts}
    finally:
        d.stop()


def status_and_startup(workdir: Path) -> dict:
    """`tacorectl status` wall time (the whole command) with 8 and 64 workers, and the time
    from starting tacored to all 64 workers READY."""
    out = {}
    tacorectl = str(Path(sys.executable).with_name("tacorectl"))
    for workers in (8, 64):
        run = workdir / f"w{workers}"
        run.mkdir()
        t0 = time.monotonic()
        d = Daemon(run, f'[services.echo]\nhandler = "tacore.services.echo:Echo"\n'
                        f'workers = {workers}\n')
        try:
            d.wait(lambda: len(d.workers("echo")) == workers and
                   all(w["state"] == "READY" for w in d.workers("echo")), timeout=120)
            out[f"all_{workers}_ready_seconds"] = round(time.monotonic() - t0, 3)
            walls = []
            for _ in range(5):
                t1 = time.monotonic()
                subprocess.run([tacorectl, "--control", f"ipc://{run}/run/control.sock",
                                "status"], check=True, capture_output=True)
                walls.append(time.monotonic() - t1)
            out[f"tacorectl_status_{workers}_workers_ms"] = round(
                sorted(walls)[len(walls) // 2] * 1000, 1)
        finally:
            d.stop()
    return out


def idle_cpu(workdir: Path, seconds: float) -> dict:
    d = Daemon(workdir, '[services.echo]\nhandler = "tacore.services.echo:Echo"\nworkers = 8\n')
    try:
        d.wait(lambda: all(w["state"] == "READY" for w in d.workers("echo")))
        daemon = psutil.Process(d.proc.pid)
        workers = [psutil.Process(w["pid"]) for w in d.workers("echo")]
        cpu = lambda p: sum(p.cpu_times()[:2])  # noqa: E731
        before, wbefore = cpu(daemon), [cpu(w) for w in workers]
        time.sleep(seconds)  # the measurement itself: an idle period
        after, wafter = cpu(daemon), [cpu(w) for w in workers]
        return {"seconds": seconds, "daemon_cpu_percent": round(100 * (after - before) / seconds, 3),
                "worker_cpu_percent_mean": round(100 * (sum(wafter) - sum(wbefore)) / len(workers)
                                                 / seconds, 3),
                "daemon_rss_mb": round(daemon.memory_info().rss / 2**20, 1),
                "worker_rss_mb": round(workers[0].memory_info().rss / 2**20, 1)}
    finally:
        d.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {"machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="tcb-") as tmp:
        for name, fn in (("start_timeout", start_timeout_chain), ("crash", crash_to_ready),
                         ("rolling_restart", rolling_restart), ("status", status_and_startup)):
            (Path(tmp) / name).mkdir()
            results[name] = fn(Path(tmp) / name)
        (Path(tmp) / "idle").mkdir()
        results["idle_8_workers"] = idle_cpu(Path(tmp) / "idle", args.idle_seconds)
    for section, figures in results.items():
        print(f"{section}:")
        for key, value in figures.items():
            print(f"  {key:28} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
