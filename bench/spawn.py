"""Starting workers: fork → READY, SIGKILL → READY again, 64 workers from start, memory.

    .venv/bin/python bench/spawn.py [--kills 50] [--json out.json]

1. ``echo`` with one worker, SIGKILLed ``--kills`` times (each after 0.2 s of READY, with
   ``min_uptime = 0.1`` so every death is a crash): the worker's own fork → READY
   (``startup_seconds`` of ``worker.ready``) and the kill → READY-again time seen by a client of
   the control socket;
2. a daemon with 64 ``echo`` workers: start of ``tacored`` → every worker READY;
3. RSS of the daemon and of its spawner process (if there is one), with 64 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tacore.control.client import ControlClient
from waiting import until

TACORED = str(Path(sys.executable).with_name("tacored"))


class Daemon:
    def __init__(self, workers: int):
        self.dir = Path(tempfile.mkdtemp(prefix="tc-sp-", dir="/tmp"))
        (self.dir / "t.toml").write_text(
            f'[daemon]\nruntime_dir = "{self.dir}/run"\nstate_dir = "{self.dir}/state"\n'
            'log_format = "json"\n[state]\nenabled = false\n'
            f'[services.echo]\nhandler = "tacore.services.echo:Echo"\nworkers = {workers}\n'
            'min_uptime = 0.1\nbackoff_initial = 0.01\n')
        self.started = time.monotonic()
        self.log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen([TACORED, "--config", str(self.dir / "t.toml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.control = ControlClient(f"ipc://{self.dir}/run/control.sock", timeout=5)

    def workers(self):
        return self.control.call("status")["services"]["echo"]["workers"]

    def events(self, name):
        return [e for e in map(json.loads, (self.dir / "log").read_bytes().splitlines())
                if e.get("event") == name]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def wait(predicate, timeout=60.0):
    return until(predicate, timeout)


def kills(count: int) -> dict:
    d = Daemon(1)
    times = []
    try:
        wait(lambda: d.workers()[0]["state"] == "READY")
        for _ in range(count):
            wait(lambda: (w := d.workers()[0])["state"] == "READY" and w["state_for"] > 0.2)
            pid = d.workers()[0]["pid"]
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait(lambda: (w := d.workers()[0])["state"] == "READY" and w["pid"] != pid)
            times.append(time.monotonic() - t0)
        fork_to_ready = [e["startup_seconds"] for e in d.events("worker.ready")]
    finally:
        d.stop()
    return {"fork_to_ready_median_ms": round(statistics.median(fork_to_ready) * 1000, 2),
            "kill_to_ready_median_ms": round(statistics.median(times) * 1000, 2),
            "kill_to_ready_max_ms": round(max(times) * 1000, 2), "runs": len(times)}


def many(workers: int) -> dict:
    d = Daemon(workers)
    try:
        wait(lambda: sum(w["state"] == "READY" for w in d.workers()) == workers, 120)
        all_ready = time.monotonic() - d.started
        worker_pids = {w["pid"] for w in d.workers()}
        daemon = psutil.Process(d.proc.pid)
        others = [p for p in daemon.children() if p.pid not in worker_pids]
        spawner_rss = sum(p.memory_info().rss for p in others) if others else None
        result = {"workers": workers, "all_ready_s": round(all_ready, 3),
                  "daemon_rss_mb": round(daemon.memory_info().rss / 2**20, 1),
                  "spawner_rss_mb": round(spawner_rss / 2**20, 1) if spawner_rss else None,
                  "worker_rss_mb_median": round(statistics.median(
                      psutil.Process(p).memory_info().rss for p in worker_pids) / 2**20, 1)}
    finally:
        d.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"python": sys.version.split()[0], "kills": kills(args.kills),
              "many": many(args.workers), "cpus": os.cpu_count(), "load": os.getloadavg()[0]}
    for section in ("kills", "many"):
        print(f"{section}: " + ", ".join(f"{k} {v}" for k, v in result[section].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
