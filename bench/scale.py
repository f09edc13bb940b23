"""Scale: throughput and `status` latency with 1, 8 and 64 workers, and 0, 100, 1000 idle
clients connected besides the 8 that send requests (idle clients should cost nothing).

    .venv/bin/python bench/scale.py [--workers 1,8,64] [--idle 0,100,1000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import broker  # noqa: E402  (the load generator)

from tacore.control.client import ControlClient  # noqa: E402

TACORED = str(Path(sys.executable).with_name("tacored"))


def start(tmp: Path, workers: int):
    config = tmp / "t.toml"
    config.write_text(f'[daemon]\nruntime_dir = "{tmp}/run"\nstate_dir = "{tmp}/state"\n'
                      'log_level = "warning"\n[services.echo]\n'
                      f'handler = "tacore.services.echo:Echo"\nworkers = {workers}\n')
    proc = subprocess.Popen([TACORED, "--config", str(config)], stderr=subprocess.DEVNULL)
    control = ControlClient(f"ipc://{tmp}/run/control.sock", timeout=5)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        try:
            if all(w["state"] == "READY" for w in control.call("status")["services"]["echo"]["workers"]):
                return proc, control, time.monotonic() - t0
        except Exception:
            pass
        time.sleep(0.01)
    raise RuntimeError("not ready")


def status_latency(control: ControlClient, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        control.call("status")
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,8,64")
    parser.add_argument("--idle", default="0,100,1000")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    print(f"{'workers':>7} {'idle':>5} {'ready s':>8} {'req/s':>8} {'p99 ms':>7} {'status ms':>9} "
          f"{'daemon fds':>10}")
    with tempfile.TemporaryDirectory(prefix="tcs-") as tmp:
        for workers in (int(w) for w in args.workers.split(",")):
            run = Path(tmp) / f"w{workers}"
            run.mkdir()
            proc, control, ready = start(run, workers)
            ctx = zmq.Context()
            idle = []
            try:
                for count in (int(i) for i in args.idle.split(",")):
                    while len(idle) < count:
                        s = ctx.socket(zmq.REQ)
                        s.setsockopt(zmq.LINGER, 0)
                        s.connect(f"ipc://{run}/run/frontend.sock")
                        idle.append(s)
                    time.sleep(0.5)  # let the connections be accepted
                    setup = type("S", (), {"endpoints": [f"ipc://{run}/run/frontend.sock"],
                                           "request": lambda self, b: [b"MDPC01", b"echo", b]})()
                    result = broker.measure(setup, 8, broker.body_of(64), args.seconds)
                    fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
                    row = {"workers": workers, "idle_clients": count,
                           "ready_seconds": round(ready, 3), **result,
                           "status_ms": round(status_latency(control), 3), "daemon_fds": fds}
                    rows.append(row)
                    print(f"{workers:>7} {count:>5} {ready:>8.3f} {row['rps']:>8} "
                          f"{row['p99_ms']:>7.3f} {row['status_ms']:>9.3f} {fds:>10}")
            finally:
                for s in idle:
                    s.close()
                ctx.term()
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    if args.json:
        args.json.write_text(json.dumps({"machine": {"cpus": os.cpu_count(),
                                                     "loadavg": os.getloadavg()},
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
