"""What the daemon binds and builds when it starts, and closes when it stops: its sockets
(with their options, CURVE and file modes), the two cores and the parts around them, and what
the loop watches. Part of the daemon (``Daemon`` inherits ``Wiring``), kept apart so that
``app.py`` reads as the loop.
"""

from __future__ import annotations

import time

import zmq

from tacore.brokering.broker import Broker
from tacore.brokering.frames import drain, send_or_say
from tacore.control.server import ControlServer
from tacore.daemon import sockets, uplink, web
from tacore.daemon.security import CurveGuard, client_keys
from tacore.daemon.uplink import Uplinks
from tacore.observability.http import HttpEndpoint
from tacore.supervision.supervisor import Supervisor

REMOTE_TAG = 0x01  # the return path of the [remote] frontend
REMOTE_PREFIX = bytes((0, REMOTE_TAG))


class Wiring:
    def _bind(self) -> None:
        """Bind every socket, build the cores and the parts around them, and watch what the
        loop serves."""
        daemon, broker, control = self.config.daemon, self.config.broker, self.config.control
        sockets.prepare_runtime_dir(daemon.runtime_dir, {"[broker] group": broker.group,
                                                         "[control] group": control.group})
        self.lock = sockets.DaemonLock(daemon.runtime_dir)
        remote = self.config.remote
        if broker.curve_secret_key or control.curve_secret_key or remote.frontend:
            self.guard = CurveGuard(self.ctx, self.emit)
            self._watch(self.guard.socket, self.guard.on_readable)
        self.frontend = self._socket(zmq.ROUTER, broker.frontend, "frontend", group=broker.group)
        # A host that vanishes (power, partition) closes no connection: ZMTP heartbeats notice
        # it, so the next send to its workers fails and their requests get "502". (Options a
        # connection takes are set before bind: a listener copies them when it is made.)
        interval_ms = int(broker.heartbeat_interval * 1000)
        zmtp = {zmq.HEARTBEAT_IVL: interval_ms,
                zmq.HEARTBEAT_TIMEOUT: interval_ms * broker.heartbeat_liveness}
        self.backend = self._socket(
            zmq.ROUTER, [broker.backend], "backend", broker,
            options={zmq.ROUTER_MANDATORY: 1,  # a vanished worker is an error, not a loss
                     zmq.ROUTER_HANDOVER: 1,  # a reconnecting worker replaces itself
                     **(zmtp if broker.backend.startswith("tcp://") else {})})
        self.control_sock = self._socket(zmq.ROUTER, [control.endpoint], "control", control,
                                         group=control.group)
        if remote.frontend:
            self.remote = self._socket(zmq.ROUTER, remote.frontend, "remote", remote,
                                       options=zmtp)  # clients on hosts that vanish, too
            self.return_paths[REMOTE_TAG] = self._to_remote
        self.return_paths[uplink.TAG] = lambda frames: self.uplinks.reply(frames)
        self.broker = Broker(self._to_client, lambda frames: send_or_say(self.backend, frames),
                             self.emit, broker, self.config.services)
        self.uplinks = Uplinks(self.ctx, self.broker.from_client, self.emit, self._watch,
                               self._unwatch)
        self.uplinks.configure(self.config, time.monotonic())
        self.supervisor = Supervisor(
            self.config, self.emit, self._watch, self._unwatch, spawner=self.spawner,
            worker_curve=client_keys(broker.curve_secret_key) if broker.curve_secret_key else None,
            now=time.monotonic())
        self.control = ControlServer(self.control_sock, self, self.emit)
        keyed = broker.curve_secret_key is not None  # each READY comes with its CURVE key
        self._watch(self.frontend, lambda now: drain(self.frontend, self._from_frontend, now))
        if self.remote is not None:
            self._watch(self.remote, lambda now: drain(self.remote, self._from_remote, now))
        self._watch(self.backend,
                    lambda now: drain(self.backend, self.broker.from_worker, now, keyed))
        self._watch(self.control_sock, self.control.on_readable)
        if self.config.http.listen:
            sock = self._socket(zmq.STREAM, [f"tcp://{self.config.http.listen}"], "http")
            self.http = HttpEndpoint(sock, web.routes(self), self.emit)
            self._watch(sock, self.http.on_readable)

    def _socket(self, kind: int, endpoints, what: str, keys=None, group=None,
                options=None) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if what in ("frontend", "remote", "backend"):  # a larger message disconnects its sender
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.broker.max_message_size)
        if keys is not None and keys.curve_secret_key:
            self.guard.protect(sock, f"tacore.{what}", keys.curve_secret_key,
                               keys.curve_authorized_keys)
        for endpoint in endpoints:
            sockets.bind(sock, endpoint, what, group)
            self.bound.append(endpoint)
        return sock

    def _close(self) -> None:
        """Whatever ``run`` got as far as making, closed; no worker left behind."""
        if getattr(self, "supervisor", None) is not None and not self.supervisor.all_stopped():
            self.supervisor.kill_all()  # only on an unexpected error: never leave orphans
        if getattr(self, "signals", None) is not None:
            self.signals.close()
        for sock in (getattr(self, "frontend", None), self.remote):
            if sock is not None:
                sock.close(linger=1000)  # let the last replies reach their clients
        if getattr(self, "uplinks", None) is not None:
            self.uplinks.close()  # DISCONNECT upstream, if a worker outlived the stop
        if self.guard is not None:
            self.guard.close()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
        self.spawner.close()
        self.watcher.close()
        self.store.close()
        self.notifier.close()
        for endpoint in self.bound:
            sockets.unlink_ipc(endpoint)
        if self.lock is not None:
            self.lock.release()
