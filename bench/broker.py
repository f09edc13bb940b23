"""Broker throughput and latency: tacore next to a plain zmq.proxy, measured in one run.

    .venv/bin/python bench/broker.py [--workers 4] [--clients 8,32] [--seconds 3] [--rounds 3]
                                     [--body 64] [--json out.json]

For each round and each client count, the same load generator drives, one after the other:

- ``proxy``:  zmq.proxy(ROUTER, DEALER) in its own process (C) with N plain REP echo workers;
- ``tacore``: tacored with an ``echo`` service of N workers (Majordomo, JSON body convention).

The load generator runs the client sockets in two processes, each multiplexing its REQ sockets
on one poller, so it is not the bottleneck it would be with one socket per process. Figures are
medians over the rounds; the ratio tacore/proxy is computed within each round (the machine is
shared and noisy: only same-round ratios mean anything).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

TACORED = str(Path(sys.executable).with_name("tacored"))
LOAD_PROCESSES = 2


# --- the reference: zmq.proxy with plain echo workers ----------------------------------------

def _proxy(front: str, back: str) -> None:
    ctx = zmq.Context()
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    frontend.bind(front)
    backend.bind(back)
    zmq.proxy(frontend, backend)


def _echo_worker(back: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.connect(back)
    while True:
        sock.send_multipart(sock.recv_multipart())


class ProxySetup:
    def __init__(self, tmp: Path, workers: int):
        self.endpoint = f"ipc://{tmp}/proxy-front.sock"
        back = f"ipc://{tmp}/proxy-back.sock"
        ctx = multiprocessing.get_context("fork")
        self.procs = [ctx.Process(target=_proxy, args=(self.endpoint, back), daemon=True)]
        self.procs += [ctx.Process(target=_echo_worker, args=(back,), daemon=True)
                       for _ in range(workers)]
        for p in self.procs:
            p.start()

    def request(self, body: bytes) -> list[bytes]:
        return [body]

    def stop(self):
        for p in self.procs:
            p.kill()
            p.join()


# --- tacore ----------------------------------------------------------------------------------

class TacoreSetup:
    persist = True

    def __init__(self, tmp: Path, workers: int):
        config = tmp / "tacore.toml"
        config.write_text(f'[daemon]\nruntime_dir = "{tmp}/run"\nstate_dir = "{tmp}/state"\n'
                          f'log_level = "warning"\n'
                          f'[state]\nenabled = {str(self.persist).lower()}\n'
                          f'[services.echo]\nhandler = "tacore.services.echo:Echo"\n'
                          f'workers = {workers}\n')
        self.proc = subprocess.Popen([TACORED, "--config", str(config)], stderr=subprocess.DEVNULL)
        self.endpoint = f"ipc://{tmp}/run/frontend.sock"
        from tacore.control.client import ControlClient
        control = ControlClient(f"ipc://{tmp}/run/control.sock", timeout=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                workers_ = control.call("status")["services"]["echo"]["workers"]
                if all(w["state"] == "READY" for w in workers_):
                    return
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError("tacored did not become ready")

    def request(self, body: bytes) -> list[bytes]:
        return [b"MDPC01", b"echo", body]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class TacoreNoStateSetup(TacoreSetup):
    """tacore with [state] enabled = false: the cost of persistence, by difference."""

    persist = False


SETUPS = {"proxy": ProxySetup, "tacore": TacoreSetup, "tacore-nostate": TacoreNoStateSetup}


# --- the load generator -------------------------------------------------------------------------

def _load(endpoint: str, request: list[bytes], sockets: int, seconds: float, out) -> None:
    """Keep ``sockets`` REQ sockets busy for ``seconds``; report every latency (ns)."""
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks = []
    for _ in range(sockets):
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    time.sleep(0.2)  # let the connections finish before the clock starts
    latencies, sent_at = [], {}
    clock = time.perf_counter_ns
    end = time.monotonic() + seconds
    for s in socks:
        sent_at[s] = clock()
        s.send_multipart(request)
    while time.monotonic() < end:
        for s, _ in poller.poll(100):
            s.recv_multipart()
            now = clock()
            latencies.append(now - sent_at[s])
            sent_at[s] = now
            s.send_multipart(request)
    out.send(latencies)
    ctx.destroy(linger=0)


def measure(setup, clients: int, body: bytes, seconds: float) -> dict:
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(LOAD_PROCESSES):
        share = clients // LOAD_PROCESSES + (1 if i < clients % LOAD_PROCESSES else 0)
        if share == 0:
            continue
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_load, args=(setup.endpoint, setup.request(body), share, seconds,
                                            child))
        p.start()
        pipes.append(parent)
        procs.append(p)
    latencies = []
    for pipe in pipes:
        latencies += pipe.recv()
    for p in procs:
        p.join()
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6  # noqa: E731
    return {"rps": round(len(latencies) / seconds), "p50_ms": round(pct(0.50), 3),
            "p99_ms": round(pct(0.99), 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--body", type=int, default=64, help="request body size in bytes")
    parser.add_argument("--setups", default="proxy,tacore",
                        help=f"comma-separated, from {', '.join(SETUPS)}; the first is the "
                             "reference for the ratios")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kinds = args.setups.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    params = "x" * max(0, args.body - len(json.dumps({"method": "echo", "params": ""})))
    body = json.dumps({"method": "echo", "params": params}).encode()
    runs = {(kind, c): [] for kind in kinds for c in clients}
    with tempfile.TemporaryDirectory(prefix="tcb-") as tmp:
        for _ in range(args.rounds):
            for kind in kinds:
                setup = SETUPS[kind](Path(tmp), args.workers)
                try:
                    for c in clients:
                        runs[kind, c].append(measure(setup, c, body, args.seconds))
                finally:
                    setup.stop()
    results = {"machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
               "workers": args.workers, "body_bytes": len(body), "rounds": args.rounds,
               "seconds": args.seconds, "runs": {}}
    reference = kinds[0]
    print(f"{'clients':>7}  {'setup':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  "
          f"ratio to {reference} (same round)")
    for c in clients:
        for kind in kinds:
            med = {k: statistics.median(r[k] for r in runs[kind, c]) for k in ("rps", "p50_ms", "p99_ms")}
            results["runs"][f"{kind}/{c}"] = {**med, "all": runs[kind, c]}
            extra = ""
            if kind != reference:
                ratios = [t["rps"] / p["rps"] for t, p in zip(runs[kind, c], runs[reference, c])]
                results["runs"][f"ratio/{kind}/{c}"] = statistics.median(ratios)
                extra = f"  {statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})"
            print(f"{c:>7}  {kind:<14} {med['rps']:>8.0f} {med['p50_ms']:>8.3f} "
                  f"{med['p99_ms']:>8.3f}{extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
