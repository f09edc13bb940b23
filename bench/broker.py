"""Broker throughput and latency: tacore next to zmq.proxy and to no broker, in one run.

    .venv/bin/python bench/broker.py [--workers 4] [--clients 1,8,32] [--big-clients 8]
                                     [--body 64] [--big-body 65536] [--seconds 3] [--rounds 5]
                                     [--setups proxy,direct,tacore] [--json out.json]

Setups, each with N echo workers doing the same work per request (tacore's body convention:
decode the JSON request, call the handler, encode the JSON reply):

- ``proxy``:  zmq.proxy(ROUTER, DEALER) in its own process (C, the ceiling for a broker) with
  REP workers;
- ``direct``: the clients' REQ sockets connected straight to the REP workers (no broker: the
  floor for latency);
- ``tacore``: tacored with an ``echo`` service of N workers (Majordomo, supervision,
  heartbeats, metrics and all); ``tacore-nostate``: the same with ``[state] enabled = false``;
  ``tacore-mdp``: the same daemon with N command workers speaking plain 7/MDP
  (bench/mdp_echo.py), the path every external worker takes; ``tacore@DIR`` (or
  ``tacore-mdp@DIR``): tacored with the tacore package of another checkout, for a before/after
  comparison in the same run (``git worktree add /tmp/old COMMIT``).

Besides throughput and latency, each run reports the broker's own CPU per request (µs of the
proxy's or the daemon's CPU time, all threads, divided by the requests answered): far less
noisy than throughput on a shared machine.

The load generator runs the client sockets in two processes, each multiplexing its REQ sockets
on one poller; its CPU use is reported so that a saturated generator shows. Rounds interleave
the setups; figures are medians over rounds, and ratios to the first setup are computed within
each round (the machine is shared and noisy: only same-round ratios mean anything).
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

import psutil
import zmq

from tacore.runtime.child import _decode_request

TACORED = str(Path(sys.executable).with_name("tacored"))
LOAD_PROCESSES = 2


def _answer(body: bytes) -> list[bytes]:
    """What tacore's worker runtime does for the echo service."""
    method, params = _decode_request([body])
    return [b"200", json.dumps(params).encode()]


def _rep_worker(endpoint: str, bind: bool) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(endpoint) if bind else sock.connect(endpoint)
    while True:
        (body,) = sock.recv_multipart()
        sock.send_multipart(_answer(body))


def _proxy(front: str, back: str) -> None:
    ctx = zmq.Context()
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    frontend.bind(front)
    backend.bind(back)
    zmq.proxy(frontend, backend)


class Processes:
    """Helper processes of a reference setup, killed at the end."""

    broker_pid = None  # the process whose CPU per request is reported

    def __init__(self, targets):
        ctx = multiprocessing.get_context("fork")
        self.procs = [ctx.Process(target=t, args=a, daemon=True) for t, a in targets]
        for p in self.procs:
            p.start()
        time.sleep(0.3)  # let them bind and connect before the load starts

    def stop(self):
        for p in self.procs:
            p.kill()
            p.join()


class ProxySetup(Processes):
    def __init__(self, tmp: Path, workers: int):
        self.endpoints = [f"ipc://{tmp}/proxy-front.sock"]
        back = f"ipc://{tmp}/proxy-back.sock"
        super().__init__([(_proxy, (self.endpoints[0], back))] +
                         [(_rep_worker, (back, False))] * workers)
        self.broker_pid = self.procs[0].pid

    def request(self, body: bytes) -> list[bytes]:
        return [body]


class DirectSetup(Processes):
    def __init__(self, tmp: Path, workers: int):
        self.endpoints = [f"ipc://{tmp}/direct-{i}.sock" for i in range(workers)]
        super().__init__([(_rep_worker, (e, True)) for e in self.endpoints])

    def request(self, body: bytes) -> list[bytes]:
        return [body]


class TacoreSetup:
    worker = 'handler = "tacore.services.echo:Echo"'
    persist = True
    code = None  # another checkout's tacore to run instead (tacore@DIR)
    prefetch = 4  # set from --prefetch

    def __init__(self, tmp: Path, workers: int):
        config = tmp / "tacore.toml"
        config.write_text(f'[daemon]\nruntime_dir = "{tmp}/run"\nstate_dir = "{tmp}/state"\n'
                          f'log_level = "warning"\n'
                          f'[state]\nenabled = {str(self.persist).lower()}\n'
                          f'[services.echo]\n{self.worker}\n'
                          f'workers = {workers}\nprefetch = {self.prefetch}\n')
        env = {**os.environ, "PYTHONPATH": self.code} if self.code else None
        self.proc = subprocess.Popen([TACORED, "--config", str(config)], env=env,
                                     stderr=subprocess.DEVNULL)
        self.broker_pid = self.proc.pid
        self.endpoints = [f"ipc://{tmp}/run/frontend.sock"]
        from tacore.control.client import ControlClient
        control = ControlClient(f"ipc://{tmp}/run/control.sock", timeout=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if all(w["state"] == "READY" for w in
                       control.call("status")["services"]["echo"]["workers"]):
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


class TacoreMdpSetup(TacoreSetup):
    """tacore whose echo workers are command workers speaking plain 7/MDP (bench/mdp_echo.py)."""

    worker = f'command = {json.dumps([sys.executable, str(Path(__file__).with_name("mdp_echo.py"))])}'


SETUPS = {"proxy": ProxySetup, "direct": DirectSetup, "tacore": TacoreSetup,
          "tacore-nostate": TacoreNoStateSetup, "tacore-mdp": TacoreMdpSetup}


def make_setup(kind: str, tmp: Path, workers: int):
    """A setup by name; ``tacore@DIR`` is tacore run from another checkout (e.g. a ``git
    worktree`` of an older commit), for a before/after comparison in one command."""
    if "@" in kind:
        name, code = kind.split("@", 1)
        return type(name, (SETUPS[name],), {"code": code})(tmp, workers)
    return SETUPS[kind](tmp, workers)


# --- the load generator -------------------------------------------------------------------------

def _load(endpoints, request, sockets: int, seconds: float, out) -> None:
    """Keep ``sockets`` REQ sockets busy for ``seconds``; report latencies (ns) and CPU."""
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks = []
    for _ in range(sockets):
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        for endpoint in endpoints:
            s.connect(endpoint)
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    time.sleep(0.2)  # let the connections finish before the clock starts
    latencies, sent_at = [], {}
    clock = time.perf_counter_ns
    cpu0 = time.process_time()
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
    out.send((latencies, (time.process_time() - cpu0) / seconds))
    ctx.destroy(linger=0)


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure(setup, clients: int, body: bytes, seconds: float) -> dict:
    cpu0 = _cpu(setup.broker_pid)
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(min(LOAD_PROCESSES, clients)):
        share = clients // LOAD_PROCESSES + (1 if i < clients % LOAD_PROCESSES else 0)
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_load, args=(setup.endpoints, setup.request(body), share,
                                            seconds, child))
        p.start()
        pipes.append(parent)
        procs.append(p)
    latencies, cpu = [], []
    for pipe in pipes:
        lat, share = pipe.recv()
        latencies += lat
        cpu.append(share)
    for p in procs:
        p.join()
    broker_cpu = _cpu(setup.broker_pid) - cpu0
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6  # noqa: E731
    return {"rps": round(len(latencies) / seconds), "p50_ms": round(pct(0.50), 3),
            "p99_ms": round(pct(0.99), 3), "loadgen_cpu": round(max(cpu), 2),
            "cpu_us": round(broker_cpu / len(latencies) * 1e6, 1) if setup.broker_pid else None}


def body_of(size: int) -> bytes:
    params = "x" * max(0, size - len(json.dumps({"method": "echo", "params": ""})))
    return json.dumps({"method": "echo", "params": params}).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="4")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--big-clients", default="8", help="client counts for --big-body")
    parser.add_argument("--body", type=int, default=64)
    parser.add_argument("--big-body", type=int, default=65536)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--setups", default="proxy,direct,tacore,tacore-mdp",
                        help=f"comma-separated, from {', '.join(SETUPS)}; the first is the "
                             "reference of the ratios")
    parser.add_argument("--prefetch", type=int, default=4, help="tacore's [services] prefetch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kinds = args.setups.split(",")
    TacoreSetup.prefetch = args.prefetch
    loads = [(int(c), args.body) for c in args.clients.split(",") if c] + \
            [(int(c), args.big_body) for c in args.big_clients.split(",") if c]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="tcb-") as tmp:
        for workers in (int(w) for w in args.workers.split(",")):
            for _ in range(args.rounds):
                for kind in kinds:
                    setup = make_setup(kind, Path(tmp), workers)
                    try:
                        for clients, size in loads:
                            runs.setdefault((workers, clients, size, kind), []).append(
                                measure(setup, clients, body_of(size), args.seconds))
                    finally:
                        setup.stop()
    report(runs, kinds, args)


def _order(kinds: list[str]):
    """Rows by workers, load, then the setups in the order given."""
    return lambda item: (item[0][0], item[0][2], item[0][1], kinds.index(item[0][3]))


def report(runs: dict, kinds: list[str], args) -> None:
    reference = kinds[0]
    results = {"machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
               "rounds": args.rounds, "seconds": args.seconds, "runs": []}
    width = max(14, *map(len, kinds))
    print(f"{'workers':>7} {'clients':>7} {'body':>6}  {'setup':<{width}} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'gen cpu':>7} {'cpu µs/req':>10}  ratio to {reference} (same round)")
    for (workers, clients, size, kind), rounds in sorted(runs.items(), key=_order(kinds)):
        med = {k: statistics.median(r[k] for r in rounds)
               for k in ("rps", "p50_ms", "p99_ms", "loadgen_cpu")}
        cpus = [r["cpu_us"] for r in rounds if r["cpu_us"] is not None]
        med["cpu_us"] = statistics.median(cpus) if cpus else None
        row = {"workers": workers, "clients": clients, "body": size, "setup": kind, **med,
               "rounds": rounds}
        extra = ""
        if kind != reference:
            base = runs[workers, clients, size, reference]
            ratios = [t["rps"] / p["rps"] for t, p in zip(rounds, base)]
            p99 = [t["p99_ms"] / p["p99_ms"] for t, p in zip(rounds, base)]
            row["ratio"], row["p99_ratio"] = statistics.median(ratios), statistics.median(p99)
            extra = (f"  {row['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in ratios)}); "
                     f"p99 x{row['p99_ratio']:.2f}")
        results["runs"].append(row)
        cpu = "" if med["cpu_us"] is None else f"{med['cpu_us']:.1f}"
        print(f"{workers:>7} {clients:>7} {size:>6}  {kind:<{width}} {med['rps']:>8.0f} "
              f"{med['p50_ms']:>8.3f} {med['p99_ms']:>8.3f} {med['loadgen_cpu']:>7.2f} "
              f"{cpu:>10}{extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
