"""The restart policy side by side with supervisord and circus, in the same run.

    .venv/bin/python bench/restarts.py --peers /path/to/venv/bin [--kills 10] [--json out.json]

``--peers`` is a bin directory with supervisord/supervisorctl and circusd (``pip install
supervisor circus`` in a venv of their own: they are not tacore's dependencies). Two cases:

1. ten SIGKILLs of a healthy process (each after it has run 1.5 s, longer than tacore's
   ``min_uptime`` and supervisord's ``startsecs`` set to 1 s here): the time from each kill to
   the replacement (tacore: READY, answering; the others: a new process running), and whether
   the program ended up given up (FATAL);
2. a start that fails while a marker file exists (a dependency that is down), the file removed
   after each of ``--outages`` seconds: when the program runs again by itself, if ever within
   the wait.

Each supervisor runs with its defaults except where said (supervisord: ``startsecs = 1``;
tacore: ``min_uptime = 1``, ``fatal_retry = 10``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

ROOT = Path(__file__).resolve().parent.parent
TACORED = str(Path(sys.executable).with_name("tacored"))
PROGRAM = ("import os, sys, time\n"
           "if len(sys.argv) > 1 and os.path.exists(sys.argv[1]): sys.exit(1)\n"
           "time.sleep(3600)\n")
HEAL_WAIT = 40.0  # how long case 2 waits for the program to run again


def poll(predicate, timeout: float):
    return until(predicate, timeout, interval=0.005, fail=False)


class Supervisord:
    name = "supervisord"

    def __init__(self, bin_dir: Path, work: Path, marker: Path | None):
        args = f" {marker}" if marker else ""
        (work / "s.conf").write_text(
            f"[supervisord]\nnodaemon=true\nlogfile={work}/s.log\npidfile={work}/s.pid\n"
            f"[unix_http_server]\nfile={work}/s.sock\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            f"[supervisorctl]\nserverurl=unix://{work}/s.sock\n"
            f"[program:prog]\ncommand={sys.executable} {work}/prog.py{args}\nstartsecs=1\n"
            "autorestart=true\n")
        self.proc = subprocess.Popen([str(bin_dir / "supervisord"), "-c", str(work / "s.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def pid(self) -> int | None:
        kids = psutil.Process(self.proc.pid).children()
        return kids[0].pid if kids and kids[0].status() != psutil.STATUS_ZOMBIE else None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Circus(Supervisord):
    name = "circus"

    def __init__(self, bin_dir: Path, work: Path, marker: Path | None):
        args = f" {marker}" if marker else ""
        (work / "c.ini").write_text(
            f"[circus]\nendpoint = ipc://{work}/c-end\npubsub_endpoint = ipc://{work}/c-pub\n"
            f"statsd = false\n[watcher:prog]\ncmd = {sys.executable} {work}/prog.py{args}\n"
            "numprocesses = 1\n")
        self.proc = subprocess.Popen([str(bin_dir / "circusd"), str(work / "c.ini")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)


class Tacore:
    name = "tacore"

    def __init__(self, bin_dir: Path, work: Path, marker: Path | None):
        service = ('handler = "tests.workers:FailsWhileFileExists"\n'
                   f'config = {{path = "{marker}"}}\n' if marker
                   else 'handler = "tacore.services.echo:Echo"\n')
        (work / "t.toml").write_text(
            f'[daemon]\nruntime_dir = "{work}/run"\nstate_dir = "{work}/state"\n'
            f'python_path = ["{ROOT}"]\n'
            f"[services.prog]\nmin_uptime = 1\nfatal_retry = 10\n{service}")
        self.proc = subprocess.Popen([TACORED, "--config", str(work / "t.toml")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.control = ControlClient(f"ipc://{work}/run/control.sock", timeout=2)

    def pid(self) -> int | None:
        (w,) = self.control.call("status")["services"]["prog"]["workers"]
        return w["pid"] if w["state"] == "READY" else None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def kills(kind, bin_dir: Path, count: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tc-rs-", dir="/tmp"))
    (work / "prog.py").write_text(PROGRAM)
    sup = kind(bin_dir, work, None)
    times, gave_up = [], False
    try:
        pid = poll(sup.pid, 20)
        for _ in range(count):
            time.sleep(1.5)  # healthy for a while
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            new = poll(lambda: (p := sup.pid()) and p != pid and p, 30)
            if not new:
                gave_up = True
                break
            times.append(time.monotonic() - t0)
            pid = new
    finally:
        sup.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"replacement_s": [round(t, 3) for t in times], "gave_up": gave_up,
            "median_s": round(statistics.median(times), 3) if times else None}


def heal(kind, bin_dir: Path, outage: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tc-rs-", dir="/tmp"))
    (work / "prog.py").write_text(PROGRAM)
    marker = work / "dependency-down"
    marker.touch()
    sup = kind(bin_dir, work, marker)
    try:
        time.sleep(outage)  # the dependency is down
        marker.unlink()
        t0 = time.monotonic()
        # Running again: a process that stays up 1.5 s (the others), or READY (tacore).
        def stable():
            pid = sup.pid()
            if pid is None:
                return None
            time.sleep(1.5) if kind is not Tacore else None
            return pid if sup.pid() == pid else None
        pid = poll(stable, HEAL_WAIT)
        took = time.monotonic() - t0 - (1.5 if kind is not Tacore and pid else 0)
    finally:
        sup.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"running_again_after_s": round(took, 3) if pid else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", required=True, type=Path)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--outages", default="3,15", help="seconds the dependency is down")
    parser.add_argument("--json")
    args = parser.parse_args()
    outages = [float(o) for o in args.outages.split(",")]
    results = {}
    for kind in (Tacore, Supervisord, Circus):
        results[kind.name] = {"kills": kills(kind, args.peers, args.kills),
                              "heal": {o: heal(kind, args.peers, o) for o in outages}}
    print(f"{'':12} {f'{args.kills} kills: replacement median / max (s)':38} {'gave up':8} "
          + " ".join(f"{f'down {o:g} s: running again after':32}" for o in outages))
    for name, r in results.items():
        k = r["kills"]
        times = k["replacement_s"]
        healed = [r["heal"][o]["running_again_after_s"] for o in outages]
        print(f"{name:12} {str(k['median_s']) + ' / ' + str(max(times) if times else None):38} "
              f"{str(k['gave_up']):8} " + " ".join(
                  f"{(f'{h:.2f} s' if h is not None else f'never ({HEAL_WAIT:g} s)'):32}"
                  for h in healed))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "cpus": os.cpu_count(),
                                               "load": os.getloadavg()[0]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
