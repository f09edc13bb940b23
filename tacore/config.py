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
import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import zmq.auth

from tacore.errors import ConfigError
from tacore.runtime.loader import load_handler

# The longest path a Unix socket address can hold on Linux (sun_path is 108 bytes with its NUL).
MAX_IPC_PATH = 107
SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    handler: str | None = None  # required when workers > 0
    workers: int = 1
    start_timeout: float = 30.0
    request_timeout: float = 30.0
    stop_timeout: float = 10.0
    max_restarts: int = 5
    restart_window: float = 60.0
    min_uptime: float = 10.0  # READY at least this long: its death is a crash, not a start failure
    fatal_retry: float = 300.0  # a FATAL slot is tried again after this long (0: never)
    min_ready: int = 1
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    queue_limit: int = 100
    queue_timeout: float = 10.0
    retry_on_failure: bool = False
    prefetch: int = 4
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_memory_mb: int = 0
    external: bool | None = None  # may external workers join? None: only if workers == 0
    external_keys: tuple[str, ...] = ()  # CURVE keys (z85) that may serve it; (): any
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.external is None:
            object.__setattr__(self, "external", self.workers == 0)


@dataclass(frozen=True)
class DaemonConfig:
    runtime_dir: Path
    state_dir: Path
    log_level: str = "info"
    log_format: str = "auto"
    python_path: tuple[str, ...] = ()
    stop_timeout: float = 30.0


@dataclass(frozen=True)
class BrokerConfig:
    frontend: tuple[str, ...]
    backend: str
    heartbeat_interval: float = 2.5
    heartbeat_liveness: int = 3
    max_message_size: int = 16 * 2**20
    curve_secret_key: str | None = None
    curve_authorized_keys: str | None = None
    external_services: bool = True  # may external workers register unconfigured services?
    max_external_services: int = 64  # at most this many at a time (bounds metric labels)
    group: str | None = None  # may connect to the frontend's ipc sockets


@dataclass(frozen=True)
class ControlConfig:
    endpoint: str
    curve_secret_key: str | None = None
    curve_authorized_keys: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class StateConfig:
    enabled: bool = True
    sample_interval: float = 5.0
    retention_days: float = 14.0
    max_db_mb: float = 100.0


@dataclass(frozen=True)
class HttpConfig:
    listen: str | None = None  # "127.0.0.1:9464"; off when None


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonConfig
    broker: BrokerConfig
    control: ControlConfig
    state: StateConfig
    http: HttpConfig
    services: dict[str, ServiceConfig]

    def as_dict(self) -> dict:
        """The effective configuration, as plain data (for ``tacored --check``)."""
        return {
            "path": str(self.path),
            "daemon": _plain(self.daemon),
            "broker": _plain(self.broker),
            "control": _plain(self.control),
            "state": _plain(self.state),
            "http": _plain(self.http),
            "services": {name: _plain(s) for name, s in self.services.items()},
        }


def _plain(obj) -> dict:
    data = dataclasses.asdict(obj)
    data.pop("name", None)
    return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
            for k, v in data.items()}


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


def group(value):
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


def endpoint(value):
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
    return tuple(endpoint(v) for v in value)


def handler(value):
    """A "module:callable" path; importing it is checked later, once sys.path is final."""
    value = string(value)
    module, _, attr = value.partition(":")
    if not module or not attr:
        raise _Invalid(f"must look like 'module:callable', got {value!r}",
                       'write e.g. "tacore.services.echo:Echo"')
    return value


def table(value):
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table, got {_type_name(value)}", "write [services.NAME.config]")
    return value


# --- the schema: section -> key -> checker; defaults come from the dataclasses ---------------

DAEMON_KEYS = {"runtime_dir": string, "state_dir": string, "log_level": _choice(LOG_LEVELS),
               "log_format": _choice(LOG_FORMATS), "python_path": string_list,
               "stop_timeout": duration}
CURVE_KEYS = {"curve_secret_key": secret_key_file, "curve_authorized_keys": key_directory}
BROKER_KEYS = {"frontend": endpoint_list, "backend": endpoint, "heartbeat_interval": duration,
               "heartbeat_liveness": _integer(1), "max_message_size": _integer(1024),
               "external_services": boolean, "max_external_services": _integer(0),
               "group": group, **CURVE_KEYS}
CONTROL_KEYS = {"endpoint": endpoint, "group": group, **CURVE_KEYS}
STATE_KEYS = {"enabled": boolean, "sample_interval": duration, "retention_days": duration,
              "max_db_mb": duration}
HTTP_KEYS = {"listen": http_listen}
SERVICE_KEYS = {"handler": handler, "workers": _integer(0), "start_timeout": duration,
                "request_timeout": duration, "stop_timeout": duration,
                "max_restarts": _integer(0), "restart_window": duration,
                "min_uptime": seconds_or_zero, "fatal_retry": seconds_or_zero,
                "min_ready": _integer(0), "backoff_initial": duration,
                "backoff_max": duration, "queue_limit": _integer(0), "queue_timeout": duration,
                "retry_on_failure": boolean, "prefetch": _integer(1), "max_requests": _integer(0),
                "max_requests_jitter": _integer(0), "max_memory_mb": _integer(0),
                "external": boolean, "external_keys": public_key_list, "config": table}
SECTIONS = ("daemon", "broker", "control", "state", "http", "services")
TABLES = {"daemon": DAEMON_KEYS, "broker": BROKER_KEYS, "control": CONTROL_KEYS,
          "state": STATE_KEYS, "http": HTTP_KEYS}


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

    def check_table(self, section: str, data: dict, keys: dict) -> dict:
        """Validate one table against its schema; returns the clean values that passed."""
        clean = {}
        for key, value in data.items():
            if key not in keys:
                hint = _suggest(key, keys) or f"known keys: {', '.join(sorted(keys))}"
                self.add(section, key, "unknown key", hint)
                continue
            try:
                clean[key] = keys[key](value)
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


def load(path, env=os.environ, import_handlers: bool = True) -> Config:
    """Read, validate and resolve a configuration file; raise ConfigError listing every problem."""
    path = Path(path).absolute()
    data = read_toml(path)
    report = _Report(path)
    for section in data:
        if section not in SECTIONS:
            report.add(section, None, "unknown section",
                       _suggest(section, SECTIONS) or f"known sections: {', '.join(SECTIONS)}")
    tables = {}
    for section, keys in TABLES.items():
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            report.add(section, None, "must be a table", f"write [{section}]")
            raw = {}
        tables[section] = report.check_table(section, raw, keys)

    daemon = _daemon(path, tables["daemon"], env)
    runtime = daemon.runtime_dir
    broker = BrokerConfig(**{"frontend": (f"ipc://{runtime}/frontend.sock",),
                             "backend": f"ipc://{runtime}/backend.sock", **tables["broker"]})
    control = ControlConfig(**{"endpoint": default_control_endpoint(runtime), **tables["control"]})
    _check_default_endpoints(report, tables, broker, control)
    _check_duplicates(report, broker, control)
    _check_exposure(report, broker, control)
    daemon_ok = not any(line.startswith(f"{path}: [daemon] python_path") for line in report.lines)
    services = _services(report, data.get("services", {}), broker)
    if import_handlers and daemon_ok:  # every handler is tried, so one pass finds every problem
        _extend_sys_path(daemon.python_path)
        for service in services.values():
            _check_import(report, service)
    if report.lines:
        raise ConfigError(report.lines)
    return Config(path, daemon, broker, control, StateConfig(**tables["state"]),
                  HttpConfig(**tables["http"]), services)


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
                endpoint(value)
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
            fix = ("bind it to 127.0.0.1 or use ipc://" if key == "frontend" else
                   f"bind it to 127.0.0.1, or set curve_secret_key and curve_authorized_keys "
                   f"in [{section}] (tacorectl keygen)")
            report.add(section, key, f"{value!r} is reachable from other hosts without CURVE", fix)


def _check_duplicates(report, broker, control):
    seen = {}
    for where, value in [("broker.frontend", e) for e in broker.frontend] + [
            ("broker.backend", broker.backend), ("control.endpoint", control.endpoint)]:
        if value in seen:
            section, key = where.split(".")
            report.add(section, key, f"endpoint {value!r} is also used by {seen[value]}",
                       "give every socket its own endpoint")
        seen.setdefault(value, where)


def _services(report: _Report, raw, broker: BrokerConfig) -> dict[str, ServiceConfig]:
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
        if "handler" not in body and not external_only:
            report.add(section, "handler", "is required when workers > 0",
                       'name the service object, e.g. handler = "tacore.services.echo:Echo", '
                       "or set workers = 0 for a service only external workers serve")
            continue
        if "handler" in body and "handler" not in values:
            continue
        if "min_ready" not in values and external_only:
            values["min_ready"] = 0  # a service served only by external workers
        service = ServiceConfig(name=name, **values)
        if service.external_keys and broker.curve_secret_key is None:
            report.add(section, "external_keys", "needs CURVE on the backend",
                       "set curve_secret_key and curve_authorized_keys in [broker]")
        if service.external_keys and not service.external:
            report.add(section, "external_keys", "is set but external is false",
                       "set external = true, or remove external_keys")
        if service.min_ready > service.workers:
            report.add(section, "min_ready",
                       f"is {service.min_ready} but the service has only {service.workers} workers",
                       "lower min_ready or raise workers")
        if service.backoff_max < service.backoff_initial:
            report.add(section, "backoff_max", f"({service.backoff_max}) is below backoff_initial "
                       f"({service.backoff_initial})", "raise backoff_max")
        services[name] = service
    return services


def _extend_sys_path(paths):
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)


def _check_import(report: _Report, service: ServiceConfig):
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


# Settings a running daemon cannot change: its sockets and directories are bound and made.
NEEDS_RESTART = {"daemon": ("runtime_dir", "state_dir", "log_format"),
                 "state": ("enabled",), "http": ("listen",),
                 "broker": ("frontend", "backend", "max_message_size", "curve_secret_key",
                            "curve_authorized_keys", "group"),
                 "control": ("endpoint", "group", "curve_secret_key", "curve_authorized_keys")}


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
