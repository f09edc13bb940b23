"""Hosts for the several-hosts tests: network namespaces joined by veth pairs, made (and
removed) by the test itself, as root. Traffic goes only between the addresses made here.

    with Hosts("a", "b", "c") as net:
        net.link("a", "b")          # a 10.Y.N.1 <-> b 10.Y.N.2, one /24 per link
        net.run("b", ["tacored", ...])
        net.down("b")               # every link of b goes down: a partition
        net.up("b")

Daemons in different namespaces still see each other's ipc socket files (namespaces do not
separate the filesystem), so the test reads every daemon's status over its control socket;
only tcp crosses the "network".
"""

from __future__ import annotations

import os
import shutil
import subprocess

PREFIX = f"tc{os.getpid() % 100000}"
SUBNET = 10 + os.getpid() % 200  # 10.SUBNET.N.0/24 per link: unlikely to meet the host's own


def unavailable() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = f"{PREFIX}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Hosts:
    def __init__(self, *names: str):
        self.names = names
        self.links: list[tuple[str, str, str, str]] = []  # (host, its device, peer, address)
        self.processes: list[subprocess.Popen] = []

    def ns(self, host: str) -> str:
        return f"{PREFIX}{host}"

    def __enter__(self) -> "Hosts":
        for host in self.names:
            _ip("netns", "add", self.ns(host))
            _ip("-n", self.ns(host), "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for host in self.names:
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True)

    def link(self, left: str, right: str) -> tuple[str, str]:
        """A veth pair between two hosts; returns (left's address, right's address)."""
        n = len(self.links) // 2 + 1
        lname, rname = f"v{left}{right}", f"v{right}{left}"  # each end named in its host
        tmp_l, tmp_r = f"{PREFIX}{n}l", f"{PREFIX}{n}r"
        _ip("link", "add", tmp_l, "type", "veth", "peer", "name", tmp_r)
        addresses = (f"10.{SUBNET}.{n}.1", f"10.{SUBNET}.{n}.2")
        for tmp, host, dev, address in ((tmp_l, left, lname, addresses[0]),
                                        (tmp_r, right, rname, addresses[1])):
            _ip("link", "set", tmp, "netns", self.ns(host))
            _ip("-n", self.ns(host), "link", "set", tmp, "name", dev)
            _ip("-n", self.ns(host), "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", self.ns(host), "link", "set", dev, "up")
        self.links += [(left, lname, right, addresses[0]), (right, rname, left, addresses[1])]
        return addresses

    def down(self, host: str) -> None:
        """Cut every link of ``host`` (its own ends: the peers see no carrier either)."""
        for owner, dev, _, _ in self.links:
            if owner == host:
                _ip("-n", self.ns(host), "link", "set", dev, "down")

    def up(self, host: str) -> None:
        for owner, dev, _, _ in self.links:
            if owner == host:
                _ip("-n", self.ns(host), "link", "set", dev, "up")

    def delay(self, host: str, ms: int) -> str | None:
        """Add latency to every link of ``host``; why not, if the kernel has no netem."""
        for owner, dev, _, _ in self.links:
            if owner == host:
                done = subprocess.run(["ip", "netns", "exec", self.ns(host), "tc", "qdisc", "add",
                                       "dev", dev, "root", "netem", "delay", f"{ms}ms"],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    return f"tc netem is not available here: {done.stderr.strip()}"
        return None

    def command(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(self, host: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start ``argv`` inside ``host``; it is killed when the hosts are removed."""
        proc = subprocess.Popen(self.command(host, argv), **popen)
        self.processes.append(proc)
        return proc
