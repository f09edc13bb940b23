"""Several hosts: daemon A's broker, node B's supervised workers serving it over CURVE, a
client on host C — three network namespaces joined by veth pairs, made by the test (root).

    C 10.S.2.2 --- 10.S.2.1 A 10.S.1.1 --- 10.S.1.2 B

Every figure the closing note of this work quotes is printed by these tests (pytest -s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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

    def load(self, service: str, clients: int = 4) -> "Load":
        return Load(self, service, clients)


class Load:
    """tests/netload.py on host C, through A's remote frontend."""

    def __init__(self, net: Net, service: str, clients: int):
        argv = [sys.executable, "-m", "tests.netload", f"tcp://{net.c_side}:5555", service,
                "--clients", str(clients), "--grace", str(4 * INTERVAL),
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
    statuses = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
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


def test_either_daemon_restarts_and_the_registrations_come_back_without_leaks(net):
    a = net.start_a()
    b = net.start_b()
    wait_until(lambda: registered(b), 10, "B's workers registered with A")
    b.proc.kill()  # B dies at once: A expires its workers
    b.kill()
    wait_until(lambda: not echo_workers(a), 10, "A to drop the workers of a dead node")
    b = net.start_b()
    wait_until(lambda: registered(b) and len(echo_workers(a)) == 2, 10, "B again")
    a.proc.send_signal(15)
    a.proc.wait(10)
    wait_until(lambda: [w["state"] for w in echo_workers(b)] == ["CONNECTING"] * 2, 10,
               "B to see A gone")
    a = net.start_a()
    wait_until(lambda: registered(b) and len(echo_workers(a)) == 2, 10, "B registered again")
    assert [w["pid"] for w in echo_workers(b)] == [w["pid"] for w in echo_workers(b)]


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
