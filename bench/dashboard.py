"""The dashboard's cost to the broker, and the size and build time of its figures.

    .venv/bin/python bench/dashboard.py [--workers 4] [--clients 8] [--rounds 6] [--seconds 5]
                                        [--big 64] [--json FILE]

1. Throughput of one daemon (``[http] listen`` set, an echo service) under the load
   generator of bench/broker.py, with and without a poller that fetches /api/dashboard and
   /api/plots every second over one kept-alive connection (what an open dashboard does),
   and, as a control, with a poller fetching /healthz as often (the same HTTP traffic and
   poller process, nothing to build); interleaved rounds, ratios taken within each round.
2. A daemon with ``--big`` workers and a state database holding an hour of their samples:
   the size of /api/dashboard, /api/plots and / and their build time inside the daemon
   (its Server-Timing header), while the plots read the hour (a piece per fetch) and after;
   and what its endpoint answers in each HTTP case of ``http_cases``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import broker  # noqa: E402  (the load generator)
import waiting  # noqa: E402

from tacore.control.client import ControlClient  # noqa: E402
from tacore.persistence.store import Store  # noqa: E402

TACORED = str(Path(sys.executable).with_name("tacored"))
PAGES = ("/api/dashboard", "/api/plots")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """tacored with an echo service and the HTTP endpoint; ``endpoints``/``request`` as
    bench/broker.py's setups."""

    def __init__(self, tmp: Path, workers: int):
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "tacore.toml"
        config.write_text(f'[daemon]\nruntime_dir = "{tmp}/run"\nstate_dir = "{tmp}/state"\n'
                          f'log_level = "warning"\n[http]\nlisten = "127.0.0.1:{self.port}"\n'
                          f'[services.echo]\nhandler = "tacore.services.echo:Echo"\n'
                          f'workers = {workers}\n')
        self.proc = subprocess.Popen([TACORED, "--config", str(config)],
                                     stderr=subprocess.DEVNULL)
        self.broker_pid = self.proc.pid  # bench/broker.py reports its CPU per request
        self.endpoints = [f"ipc://{tmp}/run/frontend.sock"]
        control = ControlClient(f"ipc://{tmp}/run/control.sock", timeout=2)
        waiting.until(lambda: all(w["state"] == "READY" for w in
                                  control.call("status")["services"]["echo"]["workers"]),
                      120, interval=0.1)

    def request(self, body: bytes) -> list[bytes]:
        return [b"MDPC01", b"echo", body]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def fetch(conn: http.client.HTTPConnection, path: str) -> tuple[bytes, float]:
    """(body, build milliseconds from Server-Timing) of one GET."""
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (path, response.status)
    timing = response.getheader("Server-Timing", "build;dur=nan")
    return body, float(timing.partition("dur=")[2])


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, float]:
    """(body bytes, build milliseconds) of one GET."""
    body, ms = fetch(conn, path)
    return len(body), ms


# What a poller fetches every second: an open dashboard, and the control (the same HTTP
# traffic, nothing to build), which tells the cost of the pages from that of the requests.
POLLERS = {"dashboard": PAGES, "healthz": ("/healthz", "/healthz")}


def _poll(port: int, paths, stop, out) -> None:
    """Every second, ``paths`` on one kept-alive connection, as the page's script does."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    builds = []
    while not stop.wait(1.0):
        for path in paths:
            builds.append(get(conn, path)[1])
    conn.close()
    out.send(builds)


def _measure(daemon, args, body, ctx, poll) -> tuple[dict, list]:
    """The load generator's figures with ``poll`` (a key of POLLERS, or None) polling."""
    if poll is None:
        return broker.measure(daemon, args.clients, body, args.seconds), []
    stop, (theirs, ours) = ctx.Event(), ctx.Pipe(duplex=False)
    poller = ctx.Process(target=_poll, args=(daemon.port, POLLERS[poll], stop, ours))
    poller.start()
    figures = broker.measure(daemon, args.clients, body, args.seconds)
    stop.set()
    builds = theirs.recv()
    poller.join()
    return figures, builds


def throughput(args, tmp: Path) -> dict:
    """Interleaved rounds without a poller, with the dashboard polled, and with /healthz
    polled (the order rotates each round); ratios to "without" within each round."""
    daemon = Daemon(tmp / "a", args.workers)
    body = broker.body_of(64)
    ctx = multiprocessing.get_context("fork")
    modes = [None, "dashboard", "healthz"]
    rounds, builds = [], []
    try:
        for r in range(args.rounds):
            figures = {}
            for mode in modes[r % 3:] + modes[:r % 3]:
                figures[mode], built = _measure(daemon, args, body, ctx, mode)
                if mode == "dashboard":
                    builds += built
            base = figures[None]["rps"]
            rounds.append({"rps": {str(m): f["rps"] for m, f in figures.items()},
                           "cpu_us": {str(m): f.get("cpu_us") for m, f in figures.items()},
                           "ratio": round(figures["dashboard"]["rps"] / base, 3),
                           "control": round(figures["healthz"]["rps"] / base, 3)})
            cpu = rounds[-1]["cpu_us"]
            print(f"round {r + 1}: {base} req/s without, {figures['dashboard']['rps']} with the "
                  f"dashboard polled (ratio {rounds[-1]['ratio']}), "
                  f"{figures['healthz']['rps']} with /healthz polled "
                  f"(ratio {rounds[-1]['control']}); daemon CPU per request "
                  f"{cpu['None']} / {cpu['dashboard']} / {cpu['healthz']} µs", flush=True)
    finally:
        daemon.stop()
    cpu = {mode: statistics.median(r["cpu_us"][mode] for r in rounds)
           if all(r["cpu_us"][mode] is not None for r in rounds) else None
           for mode in ("None", "dashboard", "healthz")}
    return {"rounds": rounds, "ratio": statistics.median(r["ratio"] for r in rounds),
            "control": statistics.median(r["control"] for r in rounds), "cpu_us": cpu,
            "polls": len(builds) // len(PAGES),
            "build_ms_median": round(statistics.median(builds), 3) if builds else None,
            "build_ms_max": round(max(builds), 3) if builds else None}


def _exchange(port: int, data: bytes, timeout: float = 15.0) -> tuple:
    """Send ``data`` on a new connection: the status lines read back, whether the daemon
    closed the connection (within 1 s of its last answer, or by the deadline), when, the
    bytes received and the sum of their Content-Length headers."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received, closed = b"", False
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
            sock.settimeout(1.0)  # answered: is the connection kept, or closed?
    lines = [line.decode() for line in re.findall(rb"HTTP/1\.[01] \d{3} [^\r]*\r\n", received)]
    lines = [line.strip() for line in lines]
    lengths = re.findall(rb"(?i)content-length: (\d+)", received)
    return lines, closed, time.monotonic() - t0, len(received), sum(map(int, lengths))


def http_cases(port: int) -> list[tuple]:
    """What the endpoint answers a client that keeps alive, asks HEAD, sends garbage,
    oversized headers, or too slowly."""
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    cases = {
        "keep-alive: GET, GET, GET /api/workers on one connection":
            get + get + b"GET /api/workers HTTP/1.1\r\nHost: x\r\n\r\n",
        "HEAD /api/dashboard": b"HEAD /api/dashboard HTTP/1.1\r\nHost: x\r\n\r\n",
        "garbage": b"\x16\x03\x01\x02\x00 hello\r\n\r\n",
        "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\n\r\n",
        "POST": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "headers of 12 KiB": b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"z" * 112) for i in range(100)) + b"\r\n",
        "a request line of 20 KB": b"GET /" + b"x" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "slow client (half a request, then nothing)": b"GET /healthz HTTP/1.1\r\nHo",
        "HTTP/1.0": b"GET /healthz HTTP/1.0\r\n\r\n",
    }
    return [(name, *_exchange(port, data)) for name, data in cases.items()]


def prefill(state: Path, workers: int, services: int = 8) -> None:
    """An hour of samples every 5 s, as a daemon with ``workers`` workers writes them."""
    store = Store(state / "tacore.db", 14, 1000)
    store.open(0.0)
    now = time.time()
    for i in range(720):
        ts = now - 3600 + i * 5
        store.add_samples("worker_samples", [
            (ts, "echo", w, 1000 + w, "READY", 1.0, 30_000_000, 2, 10, i) for w in range(workers)])
        store.add_samples("service_samples", [(ts, "echo", i * 100, 0, 0, workers,
                                               0.001, 0.002, 0.004)])
    store.flush(1.0)
    store.close()


def big(args, tmp: Path) -> dict:
    prefill(tmp / "b" / "state", args.big)
    daemon = Daemon(tmp / "b", args.big)
    try:
        cases = http_cases(daemon.port)
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        pieces = []  # the plots read the hour a piece per fetch, as the page's script does
        while not pieces or not json.loads(fetch(conn, "/api/dashboard")[0])["plots_complete"]:
            pieces.append(get(conn, "/api/plots"))
        figures = {path: [get(conn, path) for _ in range(args.samples)]
                   for path in ("/api/dashboard", "/api/plots", "/", "/api/workers",
                                "/status")}
        conn.close()
    finally:
        daemon.stop()
    result = {"workers": args.big, "http_cases": cases, "filling_plots": {"bytes": pieces[-1][0],
                                                     "build_ms": [ms for _, ms in pieces]}}
    for path, runs in figures.items():
        ms = [m for _, m in runs]
        result[path] = {"bytes": runs[-1][0], "build_ms_median": round(statistics.median(ms), 3),
                        "build_ms_max": round(max(ms), 3)}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--big", type=int, default=64)
    parser.add_argument("--samples", type=int, default=20, help="fetches of each page")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tc-dash-", dir="/tmp") as tmp:
        load = throughput(args, Path(tmp))
        print(f"\nthroughput with the dashboard polled every second / without "
              f"({args.workers} workers, {args.clients} clients, {args.rounds} interleaved "
              f"rounds of {args.seconds:g} s): median ratio {load['ratio']:.3f} "
              f"(rounds: {', '.join(str(r['ratio']) for r in load['rounds'])}); "
              f"with /healthz polled instead (the control): {load['control']:.3f}; "
              f"{load['polls']} polls, pages built in {load['build_ms_median']} ms median, "
              f"{load['build_ms_max']} ms max; the daemon's CPU per request (median): "
              f"{load['cpu_us']['None']} µs without, {load['cpu_us']['dashboard']} with the "
              f"dashboard, {load['cpu_us']['healthz']} with /healthz")
        sizes = big(args, Path(tmp))
    print(f"\n{sizes['workers']} workers, an hour of their samples in the state database:")
    filling = sizes["filling_plots"]
    print(f"  /api/plots while reading the hour, a piece per fetch: "
          f"{', '.join(f'{ms:.1f}' for ms in filling['build_ms'])} ms "
          f"({filling['bytes']} bytes at the end)")
    print(f"  {'path':16} {'bytes':>8} {'build ms (median)':>18} {'max':>8}")
    for path in ("/api/dashboard", "/api/plots", "/", "/api/workers", "/status"):
        f = sizes[path]
        print(f"  {path:16} {f['bytes']:>8} {f['build_ms_median']:>18.2f} "
              f"{f['build_ms_max']:>8.2f}")
    print("\nHTTP cases (the same daemon):")
    for name, lines, closed, seconds, received, declared in sizes["http_cases"]:
        print(f"  {name}: {' | '.join(lines) or 'no answer'}; "
              f"{'closed' if closed else 'kept open'} after {seconds:.2f} s; {received} bytes "
              f"received, Content-Length {declared}")
    if args.json:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "load": os.getloadavg(),
                                         "throughput": load, "big": sizes}, indent=1) + "\n")


if __name__ == "__main__":
    main()
