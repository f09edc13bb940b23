"""How fast a busy external worker's death reaches its client: SIGKILL to "502".

    .venv/bin/python bench/lost_worker.py [--interval 2.5] [--runs 20] [--json out.json]

A tacored with one external-only service; each run starts a spec-written worker process
(tests/peers/mdp_worker.py, 7/MDP and 18/MDP alternately), gives it a request it never
finishes, SIGKILLs it and times the client's "502". The broker heartbeats busy external
workers every heartbeat_interval, so the figure is at most one interval (about half on average:
each kill comes at a random moment of the beat).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from tacore.control.client import ControlClient
from waiting import until

ROOT = Path(__file__).resolve().parent.parent
TACORED = str(Path(sys.executable).with_name("tacored"))


def wait(predicate, timeout: float = 10.0):
    return until(predicate, timeout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=2.5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tc-lost-", dir="/tmp"))
    (work / "t.toml").write_text(
        f'[daemon]\nruntime_dir = "{work}/run"\nstate_dir = "{work}/state"\n'
        f'[broker]\nheartbeat_interval = {args.interval}\n'
        '[services.outside]\nworkers = 0\nrequest_timeout = 300\n')
    daemon = subprocess.Popen([TACORED, "--config", str(work / "t.toml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    control = ControlClient(f"ipc://{work}/run/control.sock", timeout=2)
    times = []
    try:
        wait(lambda: control.call("status"))
        client = zmq.Context.instance().socket(zmq.DEALER)
        client.connect(f"ipc://{work}/run/frontend.sock")
        for run in range(args.runs):
            version = 1 + run % 2
            peer = subprocess.Popen([sys.executable, "-m", "tests.peers.mdp_worker",
                                     f"ipc://{work}/run/backend.sock", "outside", str(version),
                                     str(args.interval)], cwd=ROOT, stdout=subprocess.PIPE)
            peer.stdout.readline()
            workers = lambda: control.call("status")["services"]["outside"]["workers"]  # noqa
            wait(lambda: len(workers()) == 1)
            client.send_multipart([b"", b"MDPC01", b"outside", b"hang"])
            wait(lambda: workers()[0]["state"] == "BUSY")
            time.sleep(random.uniform(0, args.interval))  # a death at any phase of the beat
            t0 = time.monotonic()
            peer.kill()
            assert client.poll(10 * args.interval * 1000), "no reply"
            reply = client.recv_multipart()
            times.append(time.monotonic() - t0)
            assert reply[3] == b"502", reply
            peer.wait()
            peer.stdout.close()
            wait(lambda: not control.call("status")["services"].get("outside", {}).get("workers"))
        client.close()
    finally:
        daemon.terminate()
        daemon.wait(30)
    result = {"interval": args.interval, "runs": len(times),
              "median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4),
              "min_s": round(min(times), 4), "cpus": os.cpu_count(),
              "load": os.getloadavg()[0]}
    print(f"SIGKILL of a busy external worker to its client's 502, heartbeat_interval "
          f"{args.interval:g}s, {len(times)} runs: median {result['median_s']:.3f}s, "
          f"min {result['min_s']:.3f}s, max {result['max_s']:.3f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
