"""The configuration schema: every key once, as a field of the dataclass its section is read
into, and the ``Config`` they make up.

A field's default is the key's default; its ``Key`` says how a value is checked
(``checks.py``), whether a running daemon can apply a change, and what the README's
configuration reference says (that table is generated from here: ``python -m tacore.config
--markdown``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tacore.config.checks import (boolean, choice, command_list, duration, endpoint_list,
                                  existing_group, handler_path, http_listen, integer,
                                  key_directory, public_key_file, public_key_list,
                                  remote_endpoint_list, seconds_or_zero, secret_key_file, string,
                                  string_list, string_table, table, zmq_endpoint)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
COMPUTED = dataclasses.MISSING  # no fixed default: load() derives it (environment, runtime_dir)


@dataclass(frozen=True)
class Key:
    """What a configuration key is besides its name, type and default."""

    check: Callable  # the clean value, or raises Invalid(problem, fix)
    doc: str  # its meaning, one line of the reference table
    restart: bool = False  # bound at start (a socket, a directory): a reload cannot apply it
    shown: str | None = None  # the default as documented, when it is not a plain value
    note: str | None = None  # said after the default, e.g. "off"


def key(default, check: Callable, doc: str, *, restart: bool = False, shown: str | None = None,
        note: str | None = None):
    """A dataclass field that is a configuration key."""
    metadata = {"key": Key(check, doc, restart, shown, note)}
    if isinstance(default, dict):  # mutable: every object gets its own
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DaemonConfig:
    runtime_dir: Path = key(
        COMPUTED, string,
        "socket files and the pid lock; created 0700 (opened by `[broker] group` and "
        "`[control] group`, below), refused (78) if writable by others or owned by another user",
        restart=True,
        shown="`$RUNTIME_DIRECTORY`, else `$XDG_RUNTIME_DIR/tacore`, else `/tmp/tacore-<uid>`")
    state_dir: Path = key(COMPUTED, string, "persistent state", restart=True,
                          shown="`$STATE_DIRECTORY`, else `~/.local/state/tacore`")
    log_level: str = key("info", choice(LOG_LEVELS), "`debug`, `info`, `warning`, `error`")
    log_format: str = key(
        "auto", choice(LOG_FORMATS),
        "`json` (one JSON object per line), `console`, or `auto`: JSON unless stderr is a "
        "terminal", restart=True)
    python_path: tuple[str, ...] = key(
        (), string_list, "directories prepended to `sys.path` before handlers are imported "
        "(the spawner takes `sys.path` when it starts)", restart=True)
    stop_timeout: float = key(
        30.0, duration,
        "on shutdown, how long running requests may take to finish before their workers are "
        "stopped")


@dataclass(frozen=True)
class BrokerConfig:
    frontend: tuple[str, ...] = key(COMPUTED, endpoint_list, "endpoints clients connect to",
                                    restart=True, shown='`["ipc://<runtime_dir>/frontend.sock"]`')
    backend: str = key(COMPUTED, zmq_endpoint, "endpoint workers connect to", restart=True,
                       shown='`"ipc://<runtime_dir>/backend.sock"`')
    heartbeat_interval: float = key(
        2.5, duration,
        "seconds between heartbeats to and from idle workers, and to busy external workers (the "
        "Majordomo reference value); a busy external worker whose connection is gone is found "
        "at the next one, so its client gets `\"502\"` within one interval")
    heartbeat_liveness: int = key(
        3, integer(1),
        "a READY worker silent for `interval × liveness` is frozen: its stack is dumped, it is "
        "killed and replaced")
    group: str | None = key(
        None, existing_group,
        "a group whose members may connect to the frontend's ipc sockets: each becomes 0660, "
        "owned by that group, and `runtime_dir` 0750 with that group (0711 if `[control] group` "
        "names another: passable, not listable); the backend socket stays 0600. The daemon's "
        "user must be in the group (under systemd the unit's `Group=`). `make install` sets "
        "`\"tacore-clients\"`", restart=True)
    max_message_size: int = key(
        16 * 2**20, integer(1024),
        "bytes; a peer sending a larger message is disconnected by the socket (no reply is "
        "possible)", restart=True)
    external_services: bool = key(
        True, boolean,
        "whether external workers may register services that are not configured (each such "
        "service uses the `[services.NAME]` defaults below, with `workers = 0`); `false` "
        "refuses them with DISCONNECT")
    max_external_services: int = key(
        64, integer(0),
        "at most this many services that are not configured at a time; more are refused (this "
        "bounds the metric label sets)")
    curve_secret_key: str | None = key(
        None, secret_key_file,
        "CURVE for the backend: the daemon's `NAME.key_secret` file (`tacorectl keygen`); with "
        "`curve_authorized_keys`, required for a backend reachable from other hosts",
        restart=True)
    curve_authorized_keys: str | None = key(
        None, key_directory,
        "the directory of the public `*.key` files of the workers allowed on a CURVE backend; "
        "set together with `curve_secret_key`", restart=True)


@dataclass(frozen=True)
class ControlConfig:
    endpoint: str = key(COMPUTED, zmq_endpoint,
                        "the control socket `tacorectl` uses; file mode 0600", restart=True,
                        shown='`"ipc://<runtime_dir>/control.sock"`')
    group: str | None = key(
        None, existing_group,
        "a group whose members may use the control socket: `control.sock` becomes 0660, owned "
        "by that group, and `runtime_dir` 0750 with that group (0711 if `[broker] group` names "
        "another)", restart=True)
    curve_secret_key: str | None = key(
        None, secret_key_file,
        "CURVE for a tcp control endpoint, as for the backend: the daemon's `NAME.key_secret` "
        "file; with `curve_authorized_keys`, required if it is reachable from other hosts",
        restart=True)
    curve_authorized_keys: str | None = key(
        None, key_directory,
        "the directory of the public `*.key` files of the operators allowed on a CURVE control "
        "endpoint; set together with `curve_secret_key`", restart=True)


@dataclass(frozen=True)
class NodeConfig:
    curve_secret_key: str | None = key(
        None, secret_key_file,
        "the key pair (`NAME.key_secret`) this daemon's workers present to the upstream "
        "brokers of services with `broker` (below); the upstream daemon authorizes the public "
        "`NAME.key` and shows its workers with node `NAME`", restart=True)


@dataclass(frozen=True)
class RemoteConfig:
    frontend: tuple[str, ...] = key(
        (), remote_endpoint_list,
        "tcp endpoints for clients on other hosts, served like `[broker] frontend` on a second "
        "socket that admits only CURVE clients whose key is authorized (no ipc)",
        restart=True, note="off")
    curve_secret_key: str | None = key(
        None, secret_key_file,
        "the daemon's `NAME.key_secret` file for the remote frontend (`tacorectl keygen`); "
        "required with `frontend`", restart=True)
    curve_authorized_keys: str | None = key(
        None, key_directory,
        "the directory of the public `*.key` files of the clients allowed on the remote "
        "frontend (read at each connection); required with `frontend`", restart=True)


@dataclass(frozen=True)
class StateConfig:
    enabled: bool = key(True, boolean,
                        "keep events and samples in `state_dir/tacore.db` (SQLite)", restart=True)
    sample_interval: float = key(
        5.0, duration,
        "seconds between samples of each worker's CPU, memory, threads and descriptors "
        "(psutil), of each service's figures and of the daemon's own; each sample is a row in "
        "the database")
    retention_days: float = key(14.0, duration,
                                "older events and samples are deleted (checked hourly)")
    max_db_mb: float = key(100.0, duration,
                           "above this, the oldest samples (then events) are deleted first")


@dataclass(frozen=True)
class HttpConfig:
    listen: str | None = key(
        None, http_listen,
        "`HOST:PORT` on loopback for the dashboard (`/`), `/api/dashboard`, `/api/workers`, "
        "`/metrics`, `/healthz` and `/status` (read-only, no authentication, so loopback only)",
        restart=True, note="off")


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    handler: str | None = key(None, handler_path,
                              '`"module:callable"` returning the service object',
                              shown="`handler` or `command` if `workers > 0`")
    command: tuple[str, ...] | None = key(
        None, command_list,
        "instead of `handler`: a program run as each worker (`[\"prog\", \"arg\"]`, looked "
        "up on `PATH`); it speaks Majordomo on the backend with the identity it is given (see "
        "Workers in any language)", shown="none")
    cwd: str | None = key(None, string, "a `command` worker's working directory (relative to "
                          "the configuration file)", shown="the daemon's")
    env: dict = key({}, string_table, "variables added to a `command` worker's environment",
                    shown="none")
    broker: str | None = key(
        None, zmq_endpoint,
        "node mode: the workers, supervised here as usual, serve this upstream daemon's "
        "backend (`tcp://HOST:PORT`) instead of this daemon's clients: each READY worker gets "
        "one registration there (see Several hosts)", note="off")
    broker_key: str | None = key(
        None, public_key_file,
        "the upstream daemon's public key file (`NAME.key`), for CURVE with `[node] "
        "curve_secret_key`; required unless `broker` is on loopback")
    workers: int = key(
        1, integer(0),
        "worker processes (slots numbered from 0); `0`: a service only external workers serve, "
        "with the settings of this section")
    external: bool | None = key(  # None: resolved to workers == 0 by __post_init__
        None, boolean,
        "whether external workers (ones tacore did not fork) may register this service; a "
        "refused one gets DISCONNECT and a `worker.refused` log line (rate-limited)",
        shown="`false` (`true` if `workers = 0`)")
    external_keys: tuple[str, ...] = key(  # z85 public keys
        (), public_key_list,
        "with CURVE on the backend: the public key files (`NAME.key`) whose holders may serve "
        "this service as external workers; other authorized keys are refused for it",
        note="any authorized key")
    start_timeout: float = key(30.0, duration, "READY must arrive this long after the fork")
    request_timeout: float = key(
        30.0, duration,
        "longest a request may run: then `\"504\"`, the worker's stack is logged "
        "(`request.timeout`) and the worker replaced")
    queue_limit: int = key(
        100, integer(0),
        "requests that may wait for a free worker; beyond it `\"503\"` at once")
    queue_timeout: float = key(
        10.0, duration,
        "longest a request waits for a free worker before `\"503\"`; also how long a service "
        "whose last external worker left keeps its queue, so a worker that reconnects takes "
        "what waits")
    retry_on_failure: bool = key(
        False, boolean,
        "when the worker dies mid-request, give the request once to another worker instead of "
        "answering `\"502\"` (only for idempotent methods)")
    stop_timeout: float = key(10.0, duration, "SIGTERM, then SIGKILL after this long")
    max_restarts: int = key(
        5, integer(0),
        "more start failures than this within `restart_window`: FATAL (see the restart policy)")
    min_uptime: float = key(
        10.0, seconds_or_zero,
        "a worker that dies after being READY this long crashed (replaced after "
        "`backoff_initial`, never FATAL by itself); one that dies sooner failed to start")
    fatal_retry: float = key(
        300.0, seconds_or_zero,
        "a FATAL slot is tried again after this long; `0`: never (only `tacorectl start`)")
    restart_window: float = key(60.0, duration, "seconds over which failures are counted")
    min_ready: int = key(1, integer(0), "READY or BUSY workers needed to be healthy",
                         note="`0` if `workers = 0`")
    backoff_initial: float = key(
        0.1, duration,
        "delay before the first restart, and after every crash; doubles per start failure in "
        "the window")
    backoff_max: float = key(30.0, duration, "longest restart delay")
    prefetch: int = key(
        4, integer(1),
        "requests one of tacore's own workers may hold: it runs one and the next ones wait in "
        "it, so it never idles between requests (external workers always hold one). A waiting "
        "request has not started: its `request_timeout` starts when it does, and if its worker "
        "dies it goes to another worker instead of failing. `1` for services whose requests "
        "take long or vary a lot (a request may wait behind a slow one)")
    max_requests: int = key(
        0, integer(0),
        "replace a worker (rolling, no capacity lost) after it served this many requests",
        note="off")
    max_requests_jitter: int = key(
        0, integer(0),
        "add 0..N to each worker's `max_requests`, so workers are not all replaced at once")
    max_memory_mb: int = key(
        0, integer(0),
        "replace a worker whose RSS (sampled every `sample_interval`) exceeds this", note="off")
    config: dict = key({}, table, "passed to the service's `start(config)`")  # a table

    def __post_init__(self):
        if self.external is None:
            object.__setattr__(self, "external", self.workers == 0)


def keys_of(section: type) -> dict[str, Key]:
    """The configuration keys of a section's dataclass, in their documented order."""
    return {f.name: f.metadata["key"] for f in dataclasses.fields(section) if "key" in f.metadata}


# Each table of the file, and the dataclass it is read into.
TABLES = {"daemon": DaemonConfig, "broker": BrokerConfig, "control": ControlConfig,
          "node": NodeConfig, "remote": RemoteConfig, "state": StateConfig,
          "http": HttpConfig}
SERVICE_KEYS = keys_of(ServiceConfig)
SECTIONS = (*TABLES, "services")
# Settings a running daemon cannot change: its sockets and directories are bound and made.
NEEDS_RESTART = {section: tuple(name for name, k in keys_of(cls).items() if k.restart)
                 for section, cls in TABLES.items()}


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonConfig
    broker: BrokerConfig
    control: ControlConfig
    state: StateConfig
    http: HttpConfig
    services: dict[str, ServiceConfig]
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    node: NodeConfig = field(default_factory=NodeConfig)

    def as_dict(self) -> dict:
        """The effective configuration, as plain data (for ``tacored --check``)."""
        return {
            "path": str(self.path),
            "daemon": _plain(self.daemon),
            "broker": _plain(self.broker),
            "control": _plain(self.control),
            "node": _plain(self.node),
            "remote": _plain(self.remote),
            "state": _plain(self.state),
            "http": _plain(self.http),
            "services": {name: _plain(s) for name, s in self.services.items()},
        }


def _plain(obj) -> dict:
    data = dataclasses.asdict(obj)
    data.pop("name", None)
    return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
            for k, v in data.items()}


def restart_needed(running: Config, new: Config) -> list[str]:
    """What a reload cannot apply, one line each, e.g. "[broker] frontend: restart tacored"."""
    return [f"[{section}] {key} changed: restart tacored to apply it"
            for section, keys in NEEDS_RESTART.items() for key in keys
            if getattr(getattr(running, section), key) != getattr(getattr(new, section), key)]


def kept_as_running(running: Config, new: Config) -> Config:
    """The new configuration, with the settings that need a restart kept as they run now."""
    changes = {section: dataclasses.replace(
        getattr(new, section), **{key: getattr(getattr(running, section), key) for key in keys})
        for section, keys in NEEDS_RESTART.items()}
    return dataclasses.replace(new, **changes)
