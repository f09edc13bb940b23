"""The fixed vocabulary of lifecycle events: one name each, with key-value context.

The same Event feeds the log (and, later, the state store). Names are part of the operator's
contract: alerting and log queries match on them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

DAEMON_STARTED = "daemon.started"
DAEMON_STOPPING = "daemon.stopping"
DAEMON_STOPPED = "daemon.stopped"
DAEMON_STALLED = "daemon.stalled"
SPAWNER_STARTED = "spawner.started"  # a new spawner after the last one died
SPAWNER_EXITED = "spawner.exited"  # the process that forks workers died (they died with it)
WORKER_SPAWNED = "worker.spawned"
WORKER_READY = "worker.ready"
WORKER_START_TIMEOUT = "worker.start_timeout"
WORKER_HEARTBEAT_TIMEOUT = "worker.heartbeat_timeout"
WORKER_STOPPING = "worker.stopping"
WORKER_STOPPED = "worker.stopped"
WORKER_KILLED = "worker.killed"
WORKER_EXITED = "worker.exited"
WORKER_BACKOFF = "worker.backoff"
WORKER_FATAL = "worker.fatal"
WORKER_RETRY = "worker.fatal_retry"  # a FATAL slot tried again after fatal_retry
WORKER_RECOVERED = "worker.recovered"  # ...and it became READY
WORKER_STATE = "worker.state"
WORKER_RECYCLE = "worker.recycle"
WORKER_RESTARTING = "worker.restarting"
WORKER_REMOVED = "worker.removed"
WORKER_REPLACE_FAILED = "worker.replace_failed"
DAEMON_RELOAD = "daemon.reload"
DAEMON_RELOAD_FAILED = "daemon.reload_failed"
WORKER_LOST = "worker.lost"  # the broker found its connection gone
WORKER_REFUSED = "worker.refused"  # an external worker not admitted to a service
BAD_REPLY = "worker.bad_reply"  # a reply that breaks tacore's body convention
WORKER_OUTPUT = "worker.output"  # a line a worker wrote to stdout or stderr
WORKER_OUTPUT_DROPPED = "worker.output_dropped"  # lines over the rate limit, counted
UPLINK_REGISTERED = "uplink.registered"  # node mode: the upstream broker heard our READY
UPLINK_LOST = "uplink.lost"  # ...went silent or said DISCONNECT: joining again
UPLINK_LEFT = "uplink.left"  # ...our worker left, so its registration did
UPLINK_REFUSED = "uplink.refused"  # ...refused the handshake (a wrong key)
PROTOCOL_ERROR = "protocol.error"
REQUEST_TIMEOUT = "request.timeout"
CONTROL_ERROR = "control.error"
HTTP_ERROR = "http.error"  # a page of the HTTP endpoint raised: 500, the traceback logged
AUTH_REFUSED = "auth.refused"
STATE_NOTICE = "state.notice"

# Events an operator must see even at log_level = "warning".
WARNING = frozenset({WORKER_START_TIMEOUT, WORKER_HEARTBEAT_TIMEOUT, REQUEST_TIMEOUT, WORKER_KILLED, WORKER_BACKOFF,
                     PROTOCOL_ERROR, CONTROL_ERROR, AUTH_REFUSED, WORKER_LOST, WORKER_REFUSED,
                     WORKER_OUTPUT_DROPPED, UPLINK_LOST,
                     BAD_REPLY})
ERROR = frozenset({WORKER_FATAL, WORKER_REPLACE_FAILED, DAEMON_RELOAD_FAILED, HTTP_ERROR})
DEBUG = frozenset({WORKER_STATE})


@dataclass(frozen=True)
class Event:
    name: str
    context: dict = field(default_factory=dict)
    severity: str | None = None  # overrides the level the name implies
    ts: float = field(default_factory=time.time)  # wall clock: shown and stored, never compared
    stored: bool = True  # False: logged only (workers' output lines; `tacorectl logs` has them)

    @property
    def level(self) -> str:
        if self.severity:
            return self.severity
        if self.name in ERROR:
            return "error"
        if self.name in WARNING:
            return "warning"
        return "debug" if self.name in DEBUG else "info"
