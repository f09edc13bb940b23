"""The broker's backend: the registry of Majordomo workers and their heartbeats.

Workers (the daemon's own children, and external MDP workers) connect to the backend ROUTER and
say READY. The broker sends HEARTBEAT to idle workers every ``heartbeat_interval`` and counts
any message from a worker as a sign of life; a worker silent for ``interval * liveness`` has
expired. The broker tells the daemon through callbacks and never touches processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import zmq

from tacore import events as ev
from tacore.brokering import protocol as mdp
from tacore.events import Event


@dataclass(slots=True)
class WorkerLink:
    """What the broker knows of one registered worker."""

    identity: bytes
    service: bytes
    version: int
    external: bool
    last_seen: float
    registered: float


class Broker:
    def __init__(self, backend: zmq.Socket, heartbeat_interval: float, liveness: int,
                 on_ready: Callable[[bytes, bytes, float], bool | None],
                 on_expired: Callable[[bytes, float, float], None],
                 emit: Callable[[Event], None]):
        self.backend = backend
        self.interval, self.expiry = heartbeat_interval, heartbeat_interval * liveness
        self.on_ready, self.on_expired, self.emit = on_ready, on_expired, emit
        self.workers: dict[bytes, WorkerLink] = {}
        self.next_heartbeat = 0.0
        self.last_tick = float("inf")  # the first tick is never a stall
        self.dispatch = {mdp.READY: self._ready, mdp.HEARTBEAT: self._heartbeat,
                         mdp.DISCONNECT: self._disconnect, mdp.REPLY: self._reply,
                         mdp.PARTIAL: self._reply}

    # --- what the loop calls --------------------------------------------------------------

    def on_backend(self, now: float) -> None:
        """Handle every message waiting on the backend socket."""
        while True:
            try:
                frames = self.backend.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                msg = mdp.parse_worker(frames)
            except mdp.ProtocolError as e:
                self.emit(Event(ev.PROTOCOL_ERROR, {"socket": "backend", "error": str(e),
                                                    "peer": frames[0].hex()[:64]}))
                continue
            link = self.workers.get(msg.identity)
            if link is not None:
                link.last_seen = now
            self.dispatch[msg.command](msg, link, now)

    def tick(self, now: float) -> None:
        """Expire silent workers, and heartbeat the idle ones once per interval."""
        stalled = now - self.last_tick
        self.last_tick = now
        if stalled > self.expiry / 2:
            # The daemon itself did not run (stopped, suspended, starved): the workers' silence
            # is not theirs. Start counting again instead of killing every one of them.
            self.emit(Event(ev.DAEMON_STALLED, {"seconds": round(stalled, 3)},
                            severity="warning"))
            for link in self.workers.values():
                link.last_seen = max(link.last_seen, now)
        for link in [w for w in self.workers.values() if now - w.last_seen > self.expiry]:
            del self.workers[link.identity]
            if link.external:
                self._send(link.identity, link.version, mdp.DISCONNECT)
            self.on_expired(link.identity, now, now - link.last_seen)
        if now >= self.next_heartbeat:
            for link in list(self.workers.values()):
                self._send(link.identity, link.version, mdp.HEARTBEAT)
            self.next_heartbeat = now + self.interval

    def next_deadline(self) -> float:
        oldest = min((w.last_seen for w in self.workers.values()), default=None)
        expiry = oldest + self.expiry if oldest is not None else self.next_heartbeat
        return min(self.next_heartbeat, expiry)

    def forget(self, identity: bytes) -> None:
        """The daemon says this worker's process is gone: drop it without a word."""
        self.workers.pop(identity, None)

    def last_seen(self, identity: bytes) -> float | None:
        link = self.workers.get(identity)
        return link.last_seen if link else None

    def external_workers(self) -> list[WorkerLink]:
        return [w for w in self.workers.values() if w.external]

    # --- worker commands ------------------------------------------------------------------

    def _ready(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        if link is not None or msg.service.startswith(b"mmi."):
            # A second READY, or a worker claiming a broker-internal service: MDP says
            # answer a valid but unexpected command with DISCONNECT.
            self._refuse(msg, "second READY" if link else "mmi.* services belong to the broker")
            return
        verdict = self.on_ready(msg.identity, msg.service, now)
        if verdict is False:
            self._refuse(msg, "READY not expected from this worker now")
            return
        self.workers[msg.identity] = WorkerLink(msg.identity, msg.service, msg.version,
                                                external=verdict is None, last_seen=now,
                                                registered=now)

    def _heartbeat(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        if link is None:
            # Not registered (e.g. it outlived a daemon restart): make it reconnect and READY.
            self._send(msg.identity, msg.version, mdp.DISCONNECT)

    def _disconnect(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        self.workers.pop(msg.identity, None)

    def _reply(self, msg: mdp.WorkerMessage, link: WorkerLink | None, now: float) -> None:
        if link is None:
            self._send(msg.identity, msg.version, mdp.DISCONNECT)
        # Routing replies to clients arrives with the frontend.

    def _refuse(self, msg: mdp.WorkerMessage, why: str) -> None:
        self.emit(Event(ev.PROTOCOL_ERROR, {"socket": "backend", "error": why,
                                            "service": msg.service.decode(errors="replace"),
                                            "peer": msg.identity.hex()[:64]}))
        self.workers.pop(msg.identity, None)
        self._send(msg.identity, msg.version, mdp.DISCONNECT)

    def _send(self, identity: bytes, version: int, command: str) -> None:
        try:
            self.backend.send_multipart(mdp.worker_command(identity, version, command),
                                        zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone (ROUTER_MANDATORY) or its queue is full: nothing to tell
