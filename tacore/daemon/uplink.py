"""Node mode: this daemon's workers of a service serve another daemon's broker.

For a service with ``broker = "tcp://a:5556"``, every one of its workers that is READY here
has an uplink: a DEALER connected to that broker (CURVE, with ``[node] curve_secret_key`` and
``broker_key``) which registers the service there as a 7/MDP worker. A request the uplink
receives enters this daemon's own broker as a client request, under a tagged return address;
the reply goes back on the uplink that took it. So the local rules hold for every request from
upstream — start timeout, heartbeats, request_timeout with the stack, recycling — whatever the
worker is written in, and the upstream broker keeps its own: it heartbeats the uplink, expires
it on silence and answers its clients "502"/"504" when this side cannot.

    upstream broker  <-MDP worker->  Uplink (one per READY worker)  <-MDP client->  our broker

An uplink is *registered* once the upstream broker has said anything since its READY (tacore
acknowledges a READY with a HEARTBEAT; any MDP broker heartbeats within its interval). Silent
for ``interval × liveness``, or told DISCONNECT, it starts again with a new socket: an upstream
daemon that restarted, or a partition that healed, is joined again with no operator action.
It leaves (DISCONNECT) only when it holds no request, so the upstream broker never loses one it
gave; a reply for a request the upstream broker has given up on is dropped with its socket.
"""

from __future__ import annotations

from typing import Callable

import zmq
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

from tacore import events as ev
from tacore.brokering import protocol as mdp
from tacore.brokering.frames import recv_frames, send_frames
from tacore.events import Event

TAG = 2  # the return-address tag of requests from upstream (see the daemon's _to_client)
PREFIX = bytes([0, TAG])
READY_AGAIN_AFTER_DISCONNECT = 1.0  # seconds: a broker that refuses us is not hammered
# The upstream broker refused the handshake: a wrong key (ours, or theirs in broker_key).
HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication refused (is this "
                    "node's public key in the upstream daemon's curve_authorized_keys?)",
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the CURVE handshake failed (is "
                    "broker_key the upstream daemon's public key?)",
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed"}

_READY = (b"", mdp.W_V1, mdp.W_READY)
_HEARTBEAT = [b"", mdp.W_V1, mdp.W_HEARTBEAT]
_DISCONNECT = [b"", mdp.W_V1, mdp.W_DISCONNECT]


class Uplink:
    """One registration with an upstream broker, on behalf of one of our READY workers."""

    __slots__ = ("number", "identity", "service", "endpoint", "sock", "monitor", "registered",
                 "since", "last_heard", "next_heartbeat", "pending", "leaving", "retry_at",
                 "joins", "refused")

    def __init__(self, number: int, identity: bytes, service: str, endpoint: str):
        self.number, self.identity, self.service, self.endpoint = number, identity, service, endpoint
        self.sock: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None  # handshake failures of sock
        self.registered = False
        self.refused: str | None = None  # why the last handshake failed, until registered
        self.since = self.last_heard = self.next_heartbeat = 0.0
        self.pending = 0  # requests from upstream not answered yet
        self.leaving = False  # DISCONNECT and close once pending is 0
        self.retry_at: float | None = None  # told DISCONNECT: READY again at this time
        self.joins = 0  # sockets opened (1 + times it joined again)


class Uplinks:
    """Every uplink of the daemon. Ports: ``to_broker(frames, now)`` (our broker's frontend
    entry), ``emit``, ``watch(sock, handler)``/``unwatch(sock)`` (the daemon's poller)."""

    def __init__(self, ctx: zmq.Context, to_broker: Callable, emit: Callable[[Event], None],
                 watch: Callable, unwatch: Callable):
        self.ctx, self.to_broker, self.emit = ctx, to_broker, emit
        self.watch, self.unwatch = watch, unwatch
        self.links: dict[bytes, Uplink] = {}  # by our worker's identity
        self.pending: dict[bytes, tuple[Uplink, zmq.Socket, bytes]] = {}  # tagged address ->
        self.numbers = 0  # (uplink, the socket the request came on, upstream's client frame)
        self.sequence = 0
        self.services: dict = {}
        self.node = None
        self.interval = self.expiry = 0.0
        self.max_message_size = 0

    def configure(self, config, now: float) -> None:
        """Apply [node], [broker] heartbeats and each service's ``broker``. An uplink whose
        service names another broker now moves there at once (the old one answers what it
        still held, "502"); one whose service serves no broker any more leaves."""
        self.node, self.services = config.node, config.services
        self.interval = config.broker.heartbeat_interval
        self.expiry = self.interval * config.broker.heartbeat_liveness
        self.max_message_size = config.broker.max_message_size
        for link in list(self.links.values()):
            service = self.services.get(link.service)
            if service is None or service.broker is None:
                self.leave(link.identity, now)
            elif service.broker != link.endpoint:
                self._drop_socket(link, say_disconnect=True)
                link.pending, link.endpoint, link.leaving = 0, service.broker, False
                self._open(link, now)

    def serves_upstream(self, service: str) -> bool:
        s = self.services.get(service)
        return s is not None and s.broker is not None

    # --- what the daemon calls, from the two cores' facts ----------------------------------

    def join(self, identity: bytes, service: str, now: float) -> None:
        """Our worker ``identity`` is READY: register it upstream (once)."""
        link = self.links.get(identity)
        if link is not None and not link.leaving:
            return
        if link is not None:  # it was leaving with requests: it goes on as it is
            link.leaving = False
            return
        self.numbers += 1
        link = self.links[identity] = Uplink(self.numbers, identity, service,
                                             self.services[service].broker)
        self._open(link, now)

    def leave(self, identity: bytes, now: float) -> None:
        """Our worker retires or is gone: leave upstream once no request is held."""
        link = self.links.get(identity)
        if link is None:
            return
        link.leaving = True
        if link.pending == 0:
            self._close(link, now, "the worker left")

    # --- the sockets ----------------------------------------------------------------------

    def _open(self, link: Uplink, now: float) -> None:
        service = self.services[link.service]
        sock = link.sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        interval_ms = int(self.interval * 1000)  # a vanished host is noticed by ZMTP too
        sock.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(self.expiry * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, interval_ms)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, interval_ms)  # a link that heals is found at once
        if service.broker_key is not None:
            public, secret = zmq.auth.load_certificate(self.node.curve_secret_key)
            sock.curve_serverkey = service.broker_key.encode()
            sock.curve_publickey, sock.curve_secretkey = public, secret
        monitor = link.monitor = sock.get_monitor_socket(sum(HANDSHAKE_FAILED))
        sock.connect(link.endpoint)
        send_frames(sock, [*_READY, link.service.encode()])  # queued until connected
        link.registered, link.retry_at = False, None
        link.since = link.last_heard = now
        link.next_heartbeat = now + self.interval
        link.joins += 1
        self.watch(sock, lambda t, link=link, sock=sock: self._on_readable(link, sock, t))
        self.watch(monitor, lambda t, link=link, m=monitor: self._on_monitor(link, m, t))

    def _close(self, link: Uplink, now: float, why: str) -> None:
        """Leave for good (DISCONNECT, so upstream need not wait out our silence)."""
        self._drop_socket(link, say_disconnect=True)
        del self.links[link.identity]
        self.emit(Event(ev.UPLINK_LEFT, {"service": link.service, "broker": link.endpoint,
                                         "worker": link.identity.hex(), "reason": why}))

    def _drop_socket(self, link: Uplink, say_disconnect: bool) -> None:
        sock, link.sock = link.sock, None
        if sock is None:
            return
        if say_disconnect and link.registered:
            try:
                send_frames(sock, _DISCONNECT)
            except zmq.ZMQError:
                pass
        self.unwatch(sock)
        self.unwatch(link.monitor)
        sock.disable_monitor()
        link.monitor.close()
        link.monitor = None
        sock.close(linger=100 if say_disconnect else 0)
        link.registered = False

    def _rejoin(self, link: Uplink, now: float, why: str) -> None:
        """Start again on a new socket; requests held on the old one are upstream's to answer.
        Said once when a registration is lost, not at every try while upstream is away."""
        if link.registered:
            self.emit(Event(ev.UPLINK_LOST, {"service": link.service, "broker": link.endpoint,
                                             "worker": link.identity.hex(), "reason": why,
                                             "pending": link.pending}, severity="warning"))
        self._drop_socket(link, say_disconnect=False)
        link.pending = 0  # their replies find no socket and are dropped
        if link.leaving:
            del self.links[link.identity]
        else:
            self._open(link, now)

    def _on_readable(self, link: Uplink, sock: zmq.Socket, now: float) -> None:
        while link.sock is sock:
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            link.last_heard = now
            if not link.registered:
                link.registered, link.refused = True, None
                self.emit(Event(ev.UPLINK_REGISTERED, {
                    "service": link.service, "broker": link.endpoint,
                    "worker": link.identity.hex(), "after": round(now - link.since, 3)}))
                link.since = now
            if len(frames) < 3 or frames[0] != b"" or frames[1] != mdp.W_V1:
                self.emit(Event(ev.PROTOCOL_ERROR, {"socket": "uplink", "broker": link.endpoint,
                                                    "error": "not a 7/MDP broker message"}))
            elif frames[2] == mdp.W_REQUEST and len(frames) >= 5 and frames[4] == b"":
                self._request(link, sock, frames[3], frames[5:], now)
            elif frames[2] == mdp.W_DISCONNECT:
                self._told_to_disconnect(link, now)
            # HEARTBEAT: being heard is all it says

    def _on_monitor(self, link: Uplink, monitor: zmq.Socket, now: float) -> None:
        """Say once (until it registers) why the upstream broker refused this node."""
        while link.monitor is monitor:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            why = HANDSHAKE_FAILED.get(event["event"])
            if why is not None and link.refused != why:
                link.refused = why
                self.emit(Event(ev.UPLINK_REFUSED, {"service": link.service,
                                                    "broker": link.endpoint, "reason": why,
                                                    "action": "trying again"},
                                severity="error"))

    def _request(self, link: Uplink, sock, client: bytes, body: list, now: float) -> None:
        self.sequence += 1
        address = PREFIX + link.number.to_bytes(4, "big") + self.sequence.to_bytes(8, "big")
        self.pending[address] = (link, sock, client)
        link.pending += 1
        self.to_broker([address, b"", mdp.C_V1, link.service.encode(), *body], now)

    def reply(self, frames: list) -> None:
        """Our broker's reply to a request from upstream (the return path of TAG)."""
        entry = self.pending.pop(frames[0], None)
        if entry is None:
            return
        link, sock, client = entry
        if link.sock is not sock:
            return  # that socket is gone, and upstream has answered its client already
        link.pending -= 1
        try:
            send_frames(sock, [b"", mdp.W_V1, mdp.W_REPLY, client, b"", *frames[4:]])
        except zmq.ZMQError:
            pass  # upstream's liveness answers its client
        if link.leaving and link.pending == 0:
            self._close(link, link.last_heard, "the worker left")

    def _told_to_disconnect(self, link: Uplink, now: float) -> None:
        self.emit(Event(ev.UPLINK_LOST, {"service": link.service, "broker": link.endpoint,
                                         "worker": link.identity.hex(),
                                         "reason": "the upstream broker sent DISCONNECT",
                                         "pending": link.pending}, severity="warning"))
        self._drop_socket(link, say_disconnect=False)
        link.pending = 0
        if link.leaving:
            del self.links[link.identity]
        else:
            link.retry_at = now + READY_AGAIN_AFTER_DISCONNECT

    # --- the clock ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for link in list(self.links.values()):
            if link.sock is None:
                if link.retry_at is not None and now >= link.retry_at:
                    self._open(link, now)
                continue
            if link.pending == 0 and now - link.last_heard > self.expiry:
                # (while it holds a request our broker answers it in time, and a broker that
                # heartbeats only idle workers, like MDP's reference one, may be silent)
                self._rejoin(link, now, f"the upstream broker was silent for "
                                        f"{now - link.last_heard:.1f}s")
            elif now >= link.next_heartbeat:
                try:
                    send_frames(link.sock, _HEARTBEAT)
                except zmq.ZMQError:
                    pass  # not connected yet: the READY waits in the queue
                link.next_heartbeat = now + self.interval

    def next_deadline(self) -> float | None:
        if not self.links:
            return None
        times = [link.retry_at if link.sock is None else
                 min(link.next_heartbeat, link.last_heard + self.expiry)
                 for link in self.links.values()]
        return min((t for t in times if t is not None), default=None)

    def close(self) -> None:
        for link in self.links.values():
            self._drop_socket(link, say_disconnect=True)
        self.links.clear()

    # --- what status reads ----------------------------------------------------------------

    def view(self, identity: bytes, now: float) -> dict | None:
        link = self.links.get(identity)
        if link is None:
            return None
        return {"broker": link.endpoint, "registered": link.registered, "refused": link.refused,
                "for": round(now - link.since, 3), "joins": link.joins, "pending": link.pending}
