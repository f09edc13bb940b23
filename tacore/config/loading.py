"""Load and validate the TOML configuration, strictly and before anything starts.

Every problem is reported as one line naming the file, the section, the key and the fix; all
problems are collected, so an operator fixes a file in one pass. Nothing falls back silently:
the only values not written in the file are the schema's documented defaults, and the
directory defaults come from the documented environment variables ($RUNTIME_DIRECTORY,
$XDG_RUNTIME_DIR, $STATE_DIRECTORY), never from guesses.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Callable

from tacore.config.checks import Invalid, is_loopback, suggest, zmq_endpoint
from tacore.config.schema import (SECTIONS, SERVICE_KEYS, TABLES, BrokerConfig, Config,
                                  ControlConfig, DaemonConfig, HttpConfig, Key, NodeConfig,
                                  RemoteConfig, ServiceConfig, StateConfig, keys_of)
from tacore.errors import ConfigError

SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


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
                hint = suggest(key, keys) or f"known keys: {', '.join(sorted(keys))}"
                self.add(section, key, "unknown key", hint)
                continue
            try:
                clean[key] = keys[key].check(value)
            except Invalid as bad:
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


def default_frontend_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir}/frontend.sock"


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
                       suggest(section, SECTIONS) or f"known sections: {', '.join(SECTIONS)}")
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
            except Invalid as bad:
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

