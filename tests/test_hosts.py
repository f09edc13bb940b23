"""Several hosts: daemon A's broker, node B's supervised workers serving it over CURVE, a
client on host C — three network namespaces joined by veth pairs, made by the test (root).

    C 10.S.2.2 --- 10.S.2.1 A 10.S.1.1 --- 10.S.1.2 B

Every figure the closing note of this work quotes is printed by these tests (pytest -s).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import zmq.auth

from tests import hosts
from tests.conftest import ROOT, STRICT_WARNINGS, RunningDaemon, write_config
from tests.helpers import wait_until

WHY_NOT = hosts.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"several hosts: {WHY_NOT}")

CALL = [str(Path(sys.executable).with_name("tacorectl")), "call"]
INTERVAL = 0.5  # heartbeats (the partition test's expiry is 1.5 s)


class Net:
    """Hosts a, b, c; keys; and the daemons started on them."""

    def __init__(self, net: hosts.Hosts, root: Path):
        self.hosts, self.root = net, root
        self.b_side, self.b_addr = net.link("a", "b")
        self.c_side, self.c_addr = net.link("a", "c")
        self.keys = root / "keys"  # as etc/several-hosts/ lays them out in /etc/tacore/keys
        for sub in ("nodes", "clients"):
            (self.keys / sub).mkdir(parents=True)
        for name, authorized in (("a", None), ("b", "nodes"), ("c", "clients"), ("x", None)):
            zmq.auth.create_certificates(self.keys, name)
            if authorized:
                shutil.copy(self.keys / f"{name}.key", self.keys / authorized)
        self.daemons: list[RunningDaemon] = []

    def key(self, path: str) -> str:
        return str(self.keys / path)

    def start(self, host: str, services: dict, wait: bool = True, **sections) -> RunningDaemon:
        directory = self.root / f"{host}{len(self.daemons)}"
        directory.mkdir()
        config = write_config(directory / "tacore.toml", services, **sections)
        d = RunningDaemon(config, directory / "daemon.log",
                          env={**os.environ, **STRICT_WARNINGS},
                          prefix=self.hosts.command(host, []))
        self.daemons.append(d)
        wait_until(lambda: (d.runtime / "control.sock").exists() or d.proc.poll() is not None,
                   10, f"{host}'s daemon")
        assert d.proc.poll() is None, d.log_path.read_text()
        if wait:
            d.wait_ready()
        return d

    def start_a(self, services=None, **broker) -> RunningDaemon:
        services = services or {"echo": {"workers": 0, "external": True, "queue_timeout": 3,
                                         "external_keys": [self.key("nodes/b.key")]}}
        return self.start("a", services, broker={
            "backend": f"tcp://{self.b_side}:5556", "heartbeat_interval": INTERVAL,
            "curve_secret_key": self.key("a.key_secret"),
            "curve_authorized_keys": self.key("nodes"), **broker},
            remote={"frontend": [f"tcp://{self.c_side}:5555"],
                    "curve_secret_key": self.key("a.key_secret"),
                    "curve_authorized_keys": self.key("clients")})

    def start_b(self, secret="b.key_secret", services=None, wait=True, port=5556,
                **broker) -> RunningDaemon:
        upstream = {"broker": f"tcp://{self.b_side}:{port}", "broker_key": self.key("a.key")}
        services = services or {"echo": {"handler": "tacore.services.echo:Echo", "workers": 2}}
        return self.start("b", {name: {**keys, **upstream} for name, keys in services.items()},
                          wait=wait, node={"curve_secret_key": self.key(secret)},
                          broker={"heartbeat_interval": INTERVAL, **broker})

    def load(self, service: str, clients: int = 4, retry: float = 0.0) -> "Load":
        return Load(self, service, clients, retry)


class Load:
    """tests/netload.py on host C, through A's remote frontend."""

    def __init__(self, net: Net, service: str, clients: int, retry: float):
        argv = [sys.executable, "-m", "tests.netload", f"tcp://{net.c_side}:5555", service,
                "--clients", str(clients), "--grace", str(4 * INTERVAL), "--retry", str(retry),
                "--secret-key", net.key("c.key_secret"), "--server-key", net.key("a.key")]
        self.proc = net.hosts.run("c", argv, cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "started"
        self.started = time.monotonic()

    def finish(self) -> list[dict]:
        """Stop the load (its stdin closes) and read what it recorded."""
        out, _ = self.proc.communicate("", timeout=60)
        return json.loads(out)


@pytest.fixture
def net(workdir):
    with hosts.Hosts("a", "b", "c") as made:
        n = Net(made, workdir)
        yield n
        for d in n.daemons:
            d.kill()


def count_statuses(records: list[dict]) -> dict[str, int]:
    """How many of the load's requests got each status."""
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return statuses


def echo_workers(d: RunningDaemon, service: str = "echo") -> list[dict]:
    return d.status()["services"].get(service, {"workers": []})["workers"]


def registered(b: RunningDaemon, count: int = 2) -> bool:
    return sum(w["state"] in ("READY", "BUSY") for w in echo_workers(b)) == count


def test_node_workers_serve_a_client_on_a_third_host(net):
    a = net.start_a(services={
        "echo": {"workers": 0, "external": True, "external_keys": [net.key("nodes/b.key")]},
        "local": {"handler": "tacore.services.echo:Echo", "workers": 2}})
    b = net.start_b()
    wait_until(lambda: registered(b), 10, "B's workers registered with A")
    upstream = [w["upstream"] for w in echo_workers(b)]
    assert all(u["registered"] and u["broker"] == f"tcp://{net.b_side}:5556" for u in upstream)
    wait_until(lambda: len(echo_workers(a)) == 2, 5, "A to see B's two workers")
    assert [(w["external"], w["node"]) for w in echo_workers(a)] == [(True, "b")] * 2
    rates = {}
    for service in ("echo", "local"):
        load = net.load(service)
        wait_until(lambda: time.monotonic() - load.started > 2.0, 5, "two seconds of load")
        records = load.finish()
        answered = [r for r in records if r["status"] == "200"]
        assert answered and all(r["replies"] == 1 for r in records)
        rates[service] = len(answered) / (max(r["answered"] for r in answered) - load.started)
    served_by_b = sum(w["requests"] for w in echo_workers(b))
    assert served_by_b >= rates["echo"]  # B's workers served C's calls to echo, not A's
    print(f"from C: {rates['echo']:.0f} calls/s served by B's workers through A, "
          f"{rates['local']:.0f} calls/s by the same workers local to A "
          f"(ratio {rates['echo'] / rates['local']:.2f})")
    assert a.call("status")["services"]["echo"]["ready"] == 2


def test_a_partition_of_the_node_under_load_answers_every_request_once_and_heals(net):
    a = net.start_a()
    b = net.start_b()
    wait_until(lambda: registered(b), 10, "B's workers registered with A")
    load = net.load("echo")
    wait_until(lambda: a.status()["services"]["echo"]["requests"] > 100, 10, "load through B")
    down = time.monotonic()
    net.hosts.down("b")
    cut = time.monotonic()
    wait_until(lambda: not echo_workers(a), 10, "A to expire B's workers")
    expired = time.monotonic() - down
    wait_until(lambda: all(w["state"] == "CONNECTING" for w in echo_workers(b)), 10,
               "B to see it is not registered")
    wait_until(lambda: time.monotonic() - down > 4.0, 5, "the partition to last 4 s")
    up = time.monotonic()
    net.hosts.up("b")
    wait_until(lambda: registered(b) and len(echo_workers(a)) == 2, 15,
               "B's workers to register again")
    wait_until(lambda: sum(w["requests"] for w in echo_workers(a)) > 10, 10,
               "B's workers to serve again")
    records = load.finish()

    assert records and all(r["replies"] == 1 for r in records), \
        [r for r in records if r["replies"] != 1][:5]  # none lost, none duplicated
    statuses = count_statuses(records)
    assert set(statuses) <= {"200", "502", "503", "504"}, statuses
    by_status = a.call("metrics")["services"]["echo"]["by_status"]
    assert by_status == statuses, (by_status, statuses)  # A answered each request once
    # In flight at link-down: sent before the link was down (the command returned), answered
    # after it was cut; A answers B's "502" at the expiry and its queue's "503" at queue_timeout.
    in_flight = [r for r in records if r["sent"] < cut < r["answered"]]
    last_answer = max(r["answered"] for r in in_flight) - down
    assert {r["status"] for r in in_flight} <= {"200", "502", "503"}, in_flight
    assert last_answer < 3 + 3 * INTERVAL + 2.0, last_answer  # queue_timeout, expiry, slack
    serving = min(r["answered"] for r in records if r["sent"] > up and r["status"] == "200") - up
    assert serving < 5 * INTERVAL + 1.0, serving
    print(f"partition: {len(records)} requests sent, answered by status {statuses} (A's "
          f"metrics agree); A expired B's workers {expired:.2f}s after link-down; the last "
          f"request in flight at link-down was answered {last_answer:.2f}s after it; "
          f"B served again {serving:.2f}s after link-up")


def test_a_blocked_start_on_the_node_is_caught_there_and_never_registers_upstream(net):
    a = net.start_a(services={"stuck": {"workers": 0, "external": True}})
    b = net.start_b(services={"stuck": {"handler": "tests.workers:BlocksInStart", "workers": 1,
                                        "start_timeout": 1, "max_restarts": 1,
                                        "fatal_retry": 0}}, wait=False)
    timeout = b.wait_event("worker.start_timeout", service="stuck")[0]
    assert "BLOCKS-HERE" in json.dumps(timeout)  # the blocking line, logged on B
    b.wait_event("worker.fatal", service="stuck", timeout=15)
    names = [e["event"] for e in b.events() if e.get("service") == "stuck"]
    assert names.index("worker.spawned") < names.index("worker.start_timeout") < \
        names.index("worker.fatal"), names  # STARTING → start timeout → ... → FATAL
    assert [w["state"] for w in echo_workers(b, "stuck")] == ["FATAL"]
    assert echo_workers(a, "stuck") == []  # A never saw a READY
    assert not b.events("uplink.registered")


def test_a_wrong_node_key_is_refused_by_the_upstream_broker(net):
    a = net.start_a()
    b = net.start_b(secret="x.key_secret", wait=False)
    a.wait_event("auth.refused", domain="tacore.backend")
    refused = b.wait_event("uplink.refused", service="echo")[0]
    assert "curve_authorized_keys" in refused["reason"]
    wait_until(lambda: [w["state"] for w in echo_workers(b)] == ["CONNECTING"] * 2, 10,
               "B's workers up, not registered")
    assert echo_workers(a) == []


def fds(d: RunningDaemon) -> int:
    return psutil.Process(d.proc.pid).num_fds()


def tcp_connections(d: RunningDaemon, address: str, port: int, local: bool) -> int:
    """The daemon's established tcp connections whose local (or remote) end is address:port,
    as its own network namespace sees them (/proc/PID/net/tcp, matched to the socket inodes
    in /proc/PID/fd: psutil would read the test's namespace)."""
    pid = d.proc.pid
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    end = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"  # little-endian x86
    with open(f"/proc/{pid}/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(row[1 if local else 2] == end and row[3] == "01" and row[9] in inodes
               for row in rows)  # 01: ESTABLISHED


def one_connection_per_registration(net: Net, a: RunningDaemon, b: RunningDaemon) -> bool:
    """A holds one link and one backend connection per READY worker of B, B one uplink
    connection per READY worker: nothing left over from before a restart."""
    ready = sum(w["state"] == "READY" for w in echo_workers(b))
    return ready == 2 and len(echo_workers(a)) == ready and \
        tcp_connections(a, net.b_side, 5556, local=True) == ready and \
        tcp_connections(b, net.b_side, 5556, local=False) == ready


# Descriptors of a daemon at two quiet moments with the same workers and registrations: its
# pidfds, pipes, sockets and database files are the same ones, so the count must come back to
# exactly where it was. What is briefly open is waited out by polling: libzmq closes a
# socket's descriptors on its reaper thread a little after the close (an uplink replaced by a
# restart), and the sampler may hold a worker's /proc file open at the moment we count. (A
# leak of one descriptor per uplink and restart would show as 2.)
FD_TOLERANCE = 0


def test_either_daemon_restarts_and_the_registrations_come_back_without_leaks(net):
    """B SIGKILLed and started again, then A stopped and started again: each time every worker
    of B registers again, with one link on A and one connection each side per READY worker and
    no descriptor left over; B's workers keep their pids across A's restart."""
    a = net.start_a()
    b = net.start_b()
    wait_until(lambda: one_connection_per_registration(net, a, b), 10,
               "B's workers registered with A")
    a_fds = fds(a)
    b.proc.kill()  # B dies at once: A expires its workers
    b.kill()
    wait_until(lambda: not echo_workers(a), 10, "A to drop the workers of a dead node")
    wait_until(lambda: tcp_connections(a, net.b_side, 5556, local=True) == 0, 10,
               "A to close the dead node's connections")
    b = net.start_b()
    wait_until(lambda: one_connection_per_registration(net, a, b), 10, "B registered again")
    wait_until(lambda: fds(a) <= a_fds + FD_TOLERANCE, 5,
               f"A's descriptors back to {a_fds} after B's restart")
    a_after = fds(a)
    pids = {w["slot"]: w["pid"] for w in echo_workers(b)}
    restarts = sum(w["restarts"] for w in echo_workers(b))
    b_fds = fds(b)
    a.proc.send_signal(15)
    assert a.proc.wait(10) == 0
    wait_until(lambda: [w["state"] for w in echo_workers(b)] == ["CONNECTING"] * 2, 10,
               "B to see A gone")
    assert tcp_connections(b, net.b_side, 5556, local=False) == 0
    a = net.start_a()
    wait_until(lambda: one_connection_per_registration(net, a, b), 10,
               "B registered with the new A")
    # Supervision on B is independent of A: the same processes, never restarted, registered
    # again (each uplink opened a second socket), and shown on A as B's.
    assert {w["slot"]: w["pid"] for w in echo_workers(b)} == pids
    assert sum(w["restarts"] for w in echo_workers(b)) == restarts
    assert all(w["upstream"]["joins"] >= 2 for w in echo_workers(b))
    assert [(w["external"], w["node"]) for w in echo_workers(a)] == [(True, "b")] * 2
    wait_until(lambda: fds(b) <= b_fds + FD_TOLERANCE, 5,
               f"B's descriptors back to {b_fds} after A's restart")
    print(f"descriptors: A {a_fds} -> {a_after} across B's restart, "
          f"B {b_fds} -> {fds(b)} across A's restart")


def test_a_restart_of_the_broker_under_load_answers_every_request_once(net):
    """A is stopped (SIGTERM) and started again while C calls through it with MDP's client
    strategy: every request gets exactly one answer, "200" or a documented error, and only
    ones sent while A was stopping or down needed the client's retry."""
    a = net.start_a()
    b = net.start_b()
    wait_until(lambda: registered(b) and len(echo_workers(a)) == 2, 10,
               "B's workers registered with A")
    # A stopping answers what it has read ("503", or the reply of a request B was running);
    # a request that reaches it after its last read is lost with its socket, which MDP leaves
    # to the client: resend on a new socket after a timeout. 2 s: longer than any answer
    # from a running A here; a retry of one the new A still queues only drops that reply.
    load = net.load("echo", retry=4 * INTERVAL)
    wait_until(lambda: a.status()["services"]["echo"]["requests"] > 100, 10, "load through B")
    stopped = time.monotonic()
    a.proc.send_signal(15)
    assert a.proc.wait(10) == 0
    a = net.start_a()
    wait_until(lambda: registered(b) and len(echo_workers(a)) == 2, 10,
               "B registered with the new A")
    back = time.monotonic()
    wait_until(lambda: a.status()["services"]["echo"]["requests"] > 100, 15,
               "load through the new A")
    records = load.finish()

    assert records and all(r["replies"] == 1 for r in records), \
        [r for r in records if r["replies"] != 1][:5]  # none lost, none duplicated
    statuses = count_statuses(records)
    assert set(statuses) <= {"200", "502", "503", "504"}, statuses
    retried = [r for r in records if r["attempts"] > 1]
    # (a request sent just after the new A was up may still be slow on a busy machine: one
    # retry period of slack)
    assert all(stopped < r["sent"] < back + 4 * INTERVAL for r in retried), retried
    assert any(r["sent"] > back and r["status"] == "200" for r in records)
    served_again = min(r["answered"] for r in records
                       if r["sent"] > stopped and r["status"] == "200") - stopped
    print(f"restart of A under load: {len(records)} requests sent, answered by status "
          f"{statuses}, {len(retried)} after a client retry; B served the new A "
          f"{served_again:.2f}s after the SIGTERM")


def test_added_latency_does_not_break_heartbeats_at_the_default_interval(net):
    """200 ms each way between B and A: with netem where the kernel has it, else through a
    relay on A that holds every byte 200 ms in each direction (tests/delay_proxy.py)."""
    port = 5556
    if net.hosts.delay("b", 200) is not None:
        port = 5557
        relay = net.hosts.run("a", [sys.executable, "-m", "tests.delay_proxy",
                                    f"{net.b_side}:{port}", f"{net.b_side}:5556", "0.2"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert relay.stdout.readline().strip() == "relaying"
        relay.stdout.close()
    a = net.start_a(heartbeat_interval=2.5)
    b = net.start_b(heartbeat_interval=2.5, port=port)
    wait_until(lambda: registered(b), 15, "B's workers registered with A")
    t0 = time.monotonic()
    assert subprocess.run(net.hosts.command("b", CALL + [
        "--frontend", f"ipc://{a.runtime}/frontend.sock", "echo", "echo", "1"]),
        capture_output=True, text=True, timeout=20, cwd=ROOT).stdout.strip() == "1"
    assert time.monotonic() - t0 > 0.4  # the round trip A -> B -> A took the delay twice
    load = net.load("echo", clients=2)
    wait_until(lambda: time.monotonic() - load.started > 8, 15, "beyond the expiry (7.5 s)")
    records = load.finish()
    assert records and all(r["status"] == "200" and r["replies"] == 1 for r in records)
    assert not b.events("uplink.lost") and not a.events("worker.lost")
    print(f"latency: {len(records)} calls through 200 ms each way in 8 s, all answered once")


def test_the_example_configurations_serve_a_client_across_hosts(net):
    """etc/several-hosts/a.toml and b.toml as they are, but for this test's addresses, keys
    and directories; a client on C calls through A, served by A's and B's workers."""

    def example(name: str, host: str) -> RunningDaemon:
        directory = net.root / f"example-{host}"
        directory.mkdir()
        text = (ROOT / "etc" / "several-hosts" / name).read_text()
        for old, new in (("/etc/tacore/keys", str(net.keys)), ("10.0.0.1", net.b_side),
                         ("10.0.1.1", net.c_side), ("/run/tacore", str(directory / "run")),
                         ("/var/lib/tacore", str(directory / "state"))):
            text = text.replace(old, new)
        (directory / "tacore.toml").write_text(text)
        d = RunningDaemon(directory / "tacore.toml", directory / "daemon.log",
                          env={**os.environ, **STRICT_WARNINGS},
                          prefix=net.hosts.command(host, []))
        net.daemons.append(d)
        wait_until(lambda: (d.runtime / "control.sock").exists() or d.proc.poll() is not None,
                   10, f"{host}'s daemon")
        assert d.proc.poll() is None, d.log_path.read_text()
        return d

    a, b = example("a.toml", "a"), example("b.toml", "b")
    wait_until(lambda: registered(b) and len(echo_workers(a)) == 3, 15,
               "A's worker and B's two registered")
    healthz = net.hosts.command("b", [sys.executable, "-c", "import urllib.request; print("
                                      "urllib.request.urlopen('http://127.0.0.1:9464/healthz')"
                                      ".read().decode())"])
    assert subprocess.run(healthz, capture_output=True, text=True, timeout=20).stdout.strip() == \
        "healthy"  # B's own loopback, inside its namespace
    call = net.hosts.command("c", CALL + ["--frontend", f"tcp://{net.c_side}:5555",
                                          "--client-key", net.key("c.key_secret"),
                                          "--server-key", net.key("a.key"),
                                          "echo", "echo", '"from c"'])
    for _ in range(6):  # A's LRU gives calls to every worker in turn
        done = subprocess.run(call, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert done.returncode == 0 and done.stdout.strip() == '"from c"', done.stderr
    assert sum(w["requests"] for w in echo_workers(b)) > 0
