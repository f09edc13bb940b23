"""Load and validate the TOML configuration, strictly and before anything starts.

Every problem is reported as one line naming the file, the section, the key and the fix; all
problems are collected, so an operator fixes a file in one pass. Nothing falls back silently:
the only values not written in the file are the documented defaults below, and the directory
defaults come from the documented environment variables ($RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR,
$STATE_DIRECTORY), never from guesses.
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import ipaddress
import json
import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tacore.errors import ConfigError

# The longest path a Unix socket address can hold on Linux (sun_path is 108 bytes with its NUL).
MAX_IPC_PATH = 107
SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


# --- value checkers: each returns the clean value or raises _Invalid(problem, fix) ---------

class _Invalid(Exception):
    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix


def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def duration(value):
    """Seconds, an int or a float, greater than zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"must be a number of seconds, got {_type_name(value)} ({value!r})",
                       "write a number such as 5 or 0.5")
    if not math.isfinite(value) or value <= 0:
        raise _Invalid(f"must be greater than 0 seconds, got {value!r}", "use a positive number")
    return float(value)


def seconds_or_zero(value):
    """Seconds, an int or a float, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"must be a number of seconds, got {_type_name(value)} ({value!r})",
                       "write a number such as 10 or 0")
    if not math.isfinite(value) or value < 0:
        raise _Invalid(f"must be 0 or more seconds, got {value!r}", "use 0 or a positive number")
    return float(value)


def _integer(minimum: int) -> Callable:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_type_name(value)} ({value!r})",
                           f"write a whole number >= {minimum}")
        if value < minimum:
            raise _Invalid(f"must be >= {minimum}, got {value}", f"use a value >= {minimum}")
        return value
    check.__doc__ = f"An integer >= {minimum}."
    return check


def _choice(choices: tuple[str, ...]) -> Callable:
    def check(value):
        if value not in choices:
            raise _Invalid(f"must be one of {', '.join(map(repr, choices))}, got {value!r}",
                           _suggest(str(value), choices) or f"use one of {', '.join(choices)}")
        return value
    return check


def boolean(value):
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_type_name(value)} ({value!r})")
    return value


def string(value):
    if not isinstance(value, str) or not value:
        raise _Invalid(f"must be a non-empty string, got {_type_name(value)} ({value!r})")
    return value


def existing_group(value):
    """A group name that exists on this machine."""
    try:
        grp.getgrnam(string(value))
    except KeyError:
        raise _Invalid(f"no group named {value!r} on this machine",
                       "create it (groupadd) or name an existing group") from None
    return value


def string_list(value):
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid(f"must be a list of strings, got {value!r}", 'write e.g. ["a", "b"]')
    return tuple(value)


def zmq_endpoint(value):
    """A ZeroMQ endpoint tacore may bind: ipc:// with an absolute path, or tcp://HOST:PORT
    (a host that is not loopback needs CURVE, checked per section)."""
    value = string(value)
    if value.startswith("ipc://"):
        path = value[len("ipc://"):]
        if not path.startswith("/"):
            raise _Invalid(f"ipc endpoint {value!r} must name an absolute path",
                           "write ipc:///absolute/path.sock")
        if len(path.encode()) > MAX_IPC_PATH:
            raise _Invalid(f"ipc path is {len(path.encode())} bytes, the limit is {MAX_IPC_PATH}",
                           "use a shorter directory")
        return value
    if value.startswith("tcp://") and value.rpartition(":")[2].isdigit():
        return value
    raise _Invalid(f"unsupported endpoint {value!r}", "use ipc:///path.sock or tcp://127.0.0.1:PORT")


def is_loopback(endpoint: str) -> bool:
    """True for ipc:// and for tcp:// on 127.0.0.0/8, ::1 or localhost."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: reachable from elsewhere


def secret_key_file(value):
    """A zmq.auth secret key file (``tacorectl keygen`` writes NAME.key_secret)."""
    import zmq.auth  # here, not above: every part imports config, not all of them ZeroMQ

    path = Path(string(value)).expanduser()
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise _Invalid(f"cannot load a CURVE key from {str(path)!r}: {e}",
                       "create one with: tacorectl keygen DIR NAME") from None
    if not secret:
        raise _Invalid(f"{str(path)!r} holds no secret key", "name the NAME.key_secret file")
    return str(path)


def public_key_list(value):
    """A list of public key files (NAME.key, from ``tacorectl keygen``); their z85 keys."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid(f"must be a list of public key files, got {value!r}",
                       'write e.g. ["/etc/tacore/keys/node1.key"]')
    import zmq.auth  # (as in secret_key_file)

    keys = []
    for item in value:
        path = Path(item).expanduser()
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise _Invalid(f"cannot load a CURVE public key from {str(path)!r}: {e}",
                           "name NAME.key files made by tacorectl keygen") from None
        keys.append(public.decode())
    return tuple(keys)


def public_key_file(value):
    """One public key file (NAME.key, from ``tacorectl keygen``); its z85 key."""
    return public_key_list([value] if isinstance(value, str) else value)[0]


def remote_endpoint_list(value):
    """tcp:// endpoints for clients on other hosts; an empty list turns [remote] off."""
    if not isinstance(value, list):
        raise _Invalid(f"must be a list of endpoints, got {_type_name(value)} ({value!r})",
                       'write e.g. ["tcp://0.0.0.0:5555"], or [] for none')
    endpoints = tuple(zmq_endpoint(v) for v in value)
    for endpoint in endpoints:
        if endpoint.startswith("ipc://"):
            raise _Invalid(f"{endpoint!r} is an ipc endpoint: [remote] is for clients on other "
                           "hosts", "put ipc endpoints in [broker] frontend; here write "
                           "tcp://HOST:PORT")
    return endpoints


def key_directory(value):
    path = Path(string(value)).expanduser()
    if not path.is_dir():
        raise _Invalid(f"{str(path)!r} is not a directory",
                       "name a directory of allowed public keys (*.key files)")
    return str(path)


def http_listen(value):
    """HOST:PORT on a loopback address: the endpoint has no authentication."""
    value = string(value)
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise _Invalid(f"must be HOST:PORT, got {value!r}", 'write e.g. "127.0.0.1:9464"')
    if not is_loopback(f"tcp://{value}"):
        raise _Invalid(f"{value!r} is reachable from other hosts and the HTTP endpoint has no "
                       "authentication", "listen on 127.0.0.1 and scrape it locally or "
                       "through a proxy")
    return value


def endpoint_list(value):
    if not isinstance(value, list) or not value:
        raise _Invalid(f"must be a non-empty list of endpoints, got {value!r}",
                       'write e.g. ["ipc:///run/tacore/frontend.sock"]')
    return tuple(zmq_endpoint(v) for v in value)


def handler_path(value):
    """A "module:callable" path; importing it is checked later, once sys.path is final."""
    value = string(value)
    module, _, attr = value.partition(":")
    if not module or not attr:
        raise _Invalid(f"must look like 'module:callable', got {value!r}",
                       'write e.g. "tacore.services.echo:Echo"')
    return value


def command_list(value):
    """A program and its arguments: a non-empty list of non-empty strings."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v
                                                            for v in value):
        raise _Invalid(f"must be a program and its arguments, got {value!r}",
                       'write e.g. ["/usr/local/bin/worker", "--fast"]')
    return tuple(value)


def string_table(value):
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Invalid(f"must be a table of strings, got {value!r}",
                       'write e.g. {RUST_LOG = "info"}')
    return dict(value)


def table(value):
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table, got {_type_name(value)}", "write [services.NAME.config]")
    return value


# --- the schema: every key once, as a field of the dataclass its section is read into ----
#
# A field's default is the key's default; its Key says how a value is checked, whether a
# running daemon can apply a change, and what the README's configuration reference says
# (that table is generated from here: python -m tacore.config --markdown).

COMPUTED = dataclasses.MISSING  # no fixed default: load() derives it (environment, runtime_dir)


@dataclass(frozen=True)
class Key:
    """What a configuration key is besides its name, type and default."""

    check: Callable  # the clean value, or raises _Invalid(problem, fix)
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
    log_level: str = key("info", _choice(LOG_LEVELS), "`debug`, `info`, `warning`, `error`")
    log_format: str = key(
        "auto", _choice(LOG_FORMATS),
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
        3, _integer(1),
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
        16 * 2**20, _integer(1024),
        "bytes; a peer sending a larger message is disconnected by the socket (no reply is "
        "possible)", restart=True)
    external_services: bool = key(
        True, boolean,
        "whether external workers may register services that are not configured (each such "
        "service uses the `[services.NAME]` defaults below, with `workers = 0`); `false` "
        "refuses them with DISCONNECT")
    max_external_services: int = key(
        64, _integer(0),
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
        1, _integer(0),
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
        100, _integer(0),
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
        5, _integer(0),
        "more start failures than this within `restart_window`: FATAL (see the restart policy)")
    min_uptime: float = key(
        10.0, seconds_or_zero,
        "a worker that dies after being READY this long crashed (replaced after "
        "`backoff_initial`, never FATAL by itself); one that dies sooner failed to start")
    fatal_retry: float = key(
        300.0, seconds_or_zero,
        "a FATAL slot is tried again after this long; `0`: never (only `tacorectl start`)")
    restart_window: float = key(60.0, duration, "seconds over which failures are counted")
    min_ready: int = key(1, _integer(0), "READY or BUSY workers needed to be healthy",
                         note="`0` if `workers = 0`")
    backoff_initial: float = key(
        0.1, duration,
        "delay before the first restart, and after every crash; doubles per start failure in "
        "the window")
    backoff_max: float = key(30.0, duration, "longest restart delay")
    prefetch: int = key(
        4, _integer(1),
        "requests one of tacore's own workers may hold: it runs one and the next ones wait in "
        "it, so it never idles between requests (external workers always hold one). A waiting "
        "request has not started: its `request_timeout` starts when it does, and if its worker "
        "dies it goes to another worker instead of failing. `1` for services whose requests "
        "take long or vary a lot (a request may wait behind a slow one)")
    max_requests: int = key(
        0, _integer(0),
        "replace a worker (rolling, no capacity lost) after it served this many requests",
        note="off")
    max_requests_jitter: int = key(
        0, _integer(0),
        "add 0..N to each worker's `max_requests`, so workers are not all replaced at once")
    max_memory_mb: int = key(
        0, _integer(0),
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



def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


class _Report:
    """Collects problems as "FILE: [SECTION] KEY: problem; fix" lines."""

    def __init__(self, path: Path):
        self.path, self.lines = path, []

    def add(self, section: str, key: str | None, problem: str, fix: str = ""):
        where = f"[{section}]" + (f" {key}" if key else "")
        self.lines.append(f"{self.path}: {where}: {problem}" + (f"; {fix}" if fix else ""))

    def check_table(self, section: str, data: dict, keys: dict[str, Key]) -> dict:
        """Validate one table against its schema; returns the clean values that passed."""
        clean = {}
        for key, value in data.items():
            if key not in keys:
                hint = _suggest(key, keys) or f"known keys: {', '.join(sorted(keys))}"
                self.add(section, key, "unknown key", hint)
                continue
            try:
                clean[key] = keys[key].check(value)
            except _Invalid as bad:
                self.add(section, key, bad.problem, bad.fix)
        return clean


def default_runtime_dir(env=os.environ) -> Path:
    """$RUNTIME_DIRECTORY (systemd), else $XDG_RUNTIME_DIR/tacore, else /tmp/tacore-<uid>."""
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "tacore"
    return Path(f"/tmp/tacore-{os.getuid()}")


def default_state_dir(env=os.environ) -> Path:
    """$STATE_DIRECTORY (systemd), else ~/.local/state/tacore."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path.home() / ".local" / "state" / "tacore"


def default_control_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir}/control.sock"


def read_toml(path: Path) -> dict:
    """Parse a TOML file; unreadable files and syntax errors become a ConfigError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a configuration file; pass the file "
                           f"itself with --config, e.g. {path / 'tacore.toml'}"]) from None
    except PermissionError as e:
        raise ConfigError([f"{path}: cannot read the configuration file: {e.strerror}; run "
                           "as a user who may read it, or change its mode or group"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the configuration file: {e.strerror}; "
                           "pass an existing, readable file with --config"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: TOML syntax error: {e}; fix the file's syntax"]) from None


def load(path, env=os.environ, load_handler: Callable[[str], Callable] | None = None) -> Config:
    """Read, validate and resolve a configuration file; raise ConfigError listing every problem.

    With ``load_handler`` (``tacore.runtime.loader.load_handler``), every service's handler is
    imported too, so a typo is found before anything starts. It is passed in rather than
    imported here: importing a handler runs the operator's code, and this module is a leaf
    that every part of tacore may import.
    """
    path = Path(path).absolute()
    data = read_toml(path)
    report = _Report(path)
    for section in data:
        if section not in SECTIONS:
            report.add(section, None, "unknown section",
                       _suggest(section, SECTIONS) or f"known sections: {', '.join(SECTIONS)}")
    tables = {}
    for section, cls in TABLES.items():
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            report.add(section, None, "must be a table", f"write [{section}]")
            raw = {}
        tables[section] = report.check_table(section, raw, keys_of(cls))

    daemon = _daemon(path, tables["daemon"], env)
    runtime = daemon.runtime_dir
    broker = BrokerConfig(**{"frontend": (f"ipc://{runtime}/frontend.sock",),
                             "backend": f"ipc://{runtime}/backend.sock", **tables["broker"]})
    control = ControlConfig(**{"endpoint": default_control_endpoint(runtime), **tables["control"]})
    _check_default_endpoints(report, tables, broker, control)
    _check_duplicates(report, broker, control)
    _check_exposure(report, broker, control)
    remote = RemoteConfig(**tables["remote"])
    _check_remote(report, data.get("remote"), remote, broker, control)
    daemon_ok = not any(line.startswith(f"{path}: [daemon] python_path") for line in report.lines)
    services = _services(report, data.get("services", {}), broker, tables["node"])
    if load_handler is not None and daemon_ok:  # every handler is tried: one pass finds all
        _extend_sys_path(daemon.python_path)
        for service in services.values():
            _check_import(report, service, load_handler)
    if report.lines:
        raise ConfigError(report.lines)
    return Config(path, daemon, broker, control, StateConfig(**tables["state"]),
                  HttpConfig(**tables["http"]), services, remote, NodeConfig(**tables["node"]))


def _daemon(path: Path, values: dict, env) -> DaemonConfig:
    base = path.parent
    resolve = lambda p: (base / os.path.expanduser(p)).resolve()  # noqa: E731
    return DaemonConfig(
        runtime_dir=resolve(values.pop("runtime_dir")) if "runtime_dir" in values
        else default_runtime_dir(env),
        state_dir=resolve(values.pop("state_dir")) if "state_dir" in values
        else default_state_dir(env),
        python_path=tuple(str(resolve(p)) for p in values.pop("python_path", ())),
        **values)


def _check_default_endpoints(report, tables, broker, control):
    """Defaults derived from runtime_dir must still fit in a Unix socket address."""
    for section, key, value in (("broker", "backend", broker.backend),
                                ("control", "endpoint", control.endpoint)):
        if key not in tables[section]:
            try:
                zmq_endpoint(value)
            except _Invalid as bad:
                report.add("daemon", "runtime_dir", f"default {section}.{key}: {bad.problem}",
                           bad.fix)


def _check_exposure(report, broker, control):
    """Keys come in pairs, and an endpoint reachable from other hosts needs CURVE."""
    for section, values in (("broker", broker), ("control", control)):
        if (values.curve_secret_key is None) != (values.curve_authorized_keys is None):
            report.add(section, "curve_secret_key", "curve_secret_key and curve_authorized_keys "
                       "go together", "set both, or neither")
    for section, key, value, curve in (
            [("broker", "frontend", e, False) for e in broker.frontend]
            + [("broker", "backend", broker.backend, broker.curve_secret_key is not None),
               ("control", "endpoint", control.endpoint, control.curve_secret_key is not None)]):
        if not is_loopback(value) and not curve:
            fix = ("bind it to 127.0.0.1 or use ipc://; for clients on other hosts, list it "
                   "in [remote] frontend (CURVE)" if key == "frontend" else
                   f"bind it to 127.0.0.1, or set curve_secret_key and curve_authorized_keys "
                   f"in [{section}] (tacorectl keygen)")
            report.add(section, key, f"{value!r} is reachable from other hosts without CURVE", fix)


def _check_remote(report, raw, remote, broker, control):
    """The remote frontend admits only CURVE clients, so both keys are required, and its
    endpoints are its own."""
    if not remote.frontend:
        return
    for name in ("curve_secret_key", "curve_authorized_keys"):
        if getattr(remote, name) is None and name not in raw:  # (else: reported as invalid)
            report.add("remote", name, "is required when frontend is set: clients on other "
                       "hosts are admitted only with CURVE", "make the daemon's key pair "
                       "with tacorectl keygen DIR NAME; set curve_secret_key to "
                       "DIR/NAME.key_secret and curve_authorized_keys to a directory of the "
                       "clients' public NAME.key files")
    others = {*broker.frontend, broker.backend, control.endpoint}
    for i, endpoint in enumerate(remote.frontend):
        if endpoint in others or endpoint in remote.frontend[:i]:
            report.add("remote", "frontend", f"endpoint {endpoint!r} is listed twice, or used "
                       "by another socket", "give every socket its own endpoint")


def _check_duplicates(report, broker, control):
    seen = {}
    for where, value in [("broker.frontend", e) for e in broker.frontend] + [
            ("broker.backend", broker.backend), ("control.endpoint", control.endpoint)]:
        if value in seen:
            section, key = where.split(".")
            report.add(section, key, f"endpoint {value!r} is also used by {seen[value]}",
                       "give every socket its own endpoint")
        seen.setdefault(value, where)


def _services(report: _Report, raw, broker: BrokerConfig,
              node: dict) -> dict[str, ServiceConfig]:
    if not isinstance(raw, dict):
        report.add("services", None, "must be a table of services", "write [services.NAME]")
        return {}
    services = {}
    for name, body in raw.items():
        section = f"services.{name}"
        if not SERVICE_NAME.fullmatch(name) or name.startswith("mmi."):
            report.add(section, None, f"invalid service name {name!r}",
                       "use letters, digits, '_', '.', '-' (at most 128), not starting with 'mmi.'")
            continue
        if not isinstance(body, dict):
            report.add(section, None, "must be a table", f"write [{section}]")
            continue
        values = report.check_table(section, body, SERVICE_KEYS)
        external_only = values.get("workers", 1) == 0
        if "handler" in body and "command" in body:
            report.add(section, "command", "handler and command exclude each other",
                       "a Python service has a handler, any other program a command")
            continue
        if "handler" not in body and "command" not in body and not external_only:
            report.add(section, "handler", "is required when workers > 0",
                       'name the service object, e.g. handler = "tacore.services.echo:Echo", '
                       'or the program to run, command = ["prog"], or set workers = 0 for a '
                       "service only external workers serve")
            continue
        if ("handler" in body and "handler" not in values) or (
                "command" in body and "command" not in values):
            continue
        if "cwd" in values:
            values["cwd"] = str((report.path.parent / values["cwd"]).resolve())
        if "min_ready" not in values and external_only:
            values["min_ready"] = 0  # a service served only by external workers
        service = ServiceConfig(name=name, **values)
        if service.external_keys and broker.curve_secret_key is None:
            report.add(section, "external_keys", "needs CURVE on the backend",
                       "set curve_secret_key and curve_authorized_keys in [broker]")
        if service.external_keys and not service.external:
            report.add(section, "external_keys", "is set but external is false",
                       "set external = true, or remove external_keys")
        _check_node(report, section, service, node)
        if service.min_ready > service.workers:
            report.add(section, "min_ready",
                       f"is {service.min_ready} but the service has only {service.workers} workers",
                       "lower min_ready or raise workers")
        if service.backoff_max < service.backoff_initial:
            report.add(section, "backoff_max", f"({service.backoff_max}) is below backoff_initial "
                       f"({service.backoff_initial})", "raise backoff_max")
        services[name] = service
    return services


def _check_node(report: _Report, section: str, service: ServiceConfig, node: dict) -> None:
    """A service that serves an upstream broker: its own workers, and CURVE off loopback."""
    if service.broker is None:
        if service.broker_key is not None:
            report.add(section, "broker_key", "is set but broker is not", "set broker, or "
                       "remove broker_key")
        return
    if service.workers == 0:
        report.add(section, "workers", "is 0 but broker is set: a node serves an upstream "
                   "broker with workers of its own", "set workers > 0")
    if (service.broker_key is None) != (node.get("curve_secret_key") is None):
        report.add(section, "broker_key", "broker_key and [node] curve_secret_key go together",
                   "set both (tacorectl keygen), or neither for a loopback broker")
    elif service.broker_key is None and not is_loopback(service.broker):
        report.add(section, "broker", f"{service.broker!r} is on another host: CURVE is needed",
                   "set broker_key and [node] curve_secret_key (tacorectl keygen)")


def _extend_sys_path(paths):
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)


def _check_import(report: _Report, service: ServiceConfig, load_handler: Callable):
    if service.handler is None:
        return
    try:
        load_handler(service.handler)
    except Exception as e:  # an import runs arbitrary code: any failure is a config problem
        report.add(f"services.{service.name}", "handler", f"cannot load {service.handler!r}: "
                   f"{type(e).__name__}: {e}", "check the module path, [daemon] python_path "
                   "or PYTHONPATH, and the module's own imports")


def read_control_endpoint(path, env=os.environ) -> str:
    """The control endpoint named by a configuration file, read leniently.

    ``tacorectl`` must keep working while an operator is half-way through editing the file, so
    only the [daemon] and [control] tables are read, each on its own if the whole file does
    not parse.
    """
    path = Path(path).absolute()
    try:
        data = read_toml(path)
    except ConfigError as whole_file:
        data = _read_sections(path, ("daemon", "control"), whole_file)
    control = data.get("control", {})
    if isinstance(control, dict) and isinstance(control.get("endpoint"), str):
        return control["endpoint"]
    return default_control_endpoint(_lenient_runtime_dir(path, data, env))


def read_frontend_endpoint(path, env=os.environ) -> str:
    """The first frontend endpoint named by a configuration file, read as leniently as
    ``read_control_endpoint`` (only [daemon] and [broker]): ``tacorectl call`` uses it when
    the control socket is not open to the caller."""
    path = Path(path).absolute()
    try:
        data = read_toml(path)
    except ConfigError as whole_file:
        data = _read_sections(path, ("daemon", "broker"), whole_file)
    broker = data.get("broker", {})
    frontend = broker.get("frontend") if isinstance(broker, dict) else None
    if isinstance(frontend, list) and frontend and isinstance(frontend[0], str):
        return frontend[0]
    return default_frontend_endpoint(_lenient_runtime_dir(path, data, env))


def default_frontend_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir}/frontend.sock"


def _lenient_runtime_dir(path: Path, data: dict, env) -> Path:
    daemon = data.get("daemon", {})
    if isinstance(daemon, dict) and isinstance(daemon.get("runtime_dir"), str):
        return (path.parent / os.path.expanduser(daemon["runtime_dir"])).resolve()
    return default_runtime_dir(env)


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")


def _read_sections(path: Path, wanted, error: ConfigError) -> dict:
    try:
        text = path.read_text()
    except OSError:
        raise error from None
    chunks, current = {}, None
    for line in text.splitlines():
        if line.lstrip().startswith("["):  # a table header, perhaps a half-written one
            header = _HEADER.match(line)
            current = header.group(1) if header else None
        if current in wanted:
            chunks.setdefault(current, []).append(line)
    data = {}
    for name, lines in chunks.items():
        try:
            data.update(tomllib.loads("\n".join(lines)))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([f"{path}: [{name}]: TOML syntax error: {e}"]) from None
    return data


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


# --- the README's configuration reference, generated from the schema -------------------------

def reference_table() -> str:
    """The table of README.md's "Configuration reference": one row per key, in schema order."""
    rows = ["| section / key | default | on reload | meaning |", "| --- | --- | --- | --- |"]
    for section, cls in (*TABLES.items(), ("services.NAME", ServiceConfig)):
        for f in dataclasses.fields(cls):
            k = f.metadata.get("key")
            if k is None:
                continue  # not read from the file (a service's name is its table's)
            name = f"[{section}.{f.name}]" if k.check is table else f"[{section}] {f.name}"
            rows.append(f"| `{name}` | {_documented_default(f, k)} | "
                        f"{'restart' if k.restart else 'applied'} | {k.doc} |")
    return "\n".join(rows) + "\n"


def _documented_default(f: dataclasses.Field, k: Key) -> str:
    if k.shown is not None:
        return k.shown
    if f.default is COMPUTED and f.default_factory is dataclasses.MISSING:
        raise ValueError(f"{f.name}: a computed default needs shown=, how it is computed")
    value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    text = "none" if value is None else f"`{_as_toml(value)}`"
    return text + (f" ({k.note})" if k.note else "")


def _as_toml(value) -> str:
    """A default as it would be written in the file: 30 for 30.0, true, "info", []."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def main(argv: list[str] | None = None) -> int:
    """``python -m tacore.config --markdown`` prints the reference table for README.md."""
    if (sys.argv[1:] if argv is None else argv) != ["--markdown"]:
        print("usage: python -m tacore.config --markdown", file=sys.stderr)
        return 2
    print(reference_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
