"""The endpoints ``tacorectl`` needs, read leniently from a file an operator may be editing."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from tacore.config.loading import (default_control_endpoint, default_frontend_endpoint,
                                   default_runtime_dir, read_toml)
from tacore.errors import ConfigError


def read_control_endpoint(path, env=os.environ) -> str:
    """The control endpoint named by a configuration file, read leniently.

    ``tacorectl`` must keep working while an operator is half-way through editing the file, so
    only the [daemon] and [control] tables are read, each on its own if the whole file does
    not parse.
    """
    path = Path(path).absolute()
    data = _read_leniently(path, "control")
    control = data.get("control", {})
    if isinstance(control, dict) and isinstance(control.get("endpoint"), str):
        return control["endpoint"]
    return default_control_endpoint(_lenient_runtime_dir(path, data, env))


def read_frontend_endpoint(path, env=os.environ) -> str:
    """The first frontend endpoint named by a configuration file, read as leniently as
    ``read_control_endpoint`` (only [daemon] and [broker]): ``tacorectl call`` uses it when
    the control socket is not open to the caller."""
    path = Path(path).absolute()
    data = _read_leniently(path, "broker")
    broker = data.get("broker", {})
    frontend = broker.get("frontend") if isinstance(broker, dict) else None
    if isinstance(frontend, list) and frontend and isinstance(frontend[0], str):
        return frontend[0]
    return default_frontend_endpoint(_lenient_runtime_dir(path, data, env))


def _read_leniently(path: Path, section: str) -> dict:
    """Every table if the whole file parses, else [daemon] and ``section``, each on its own."""
    try:
        return read_toml(path)
    except ConfigError as whole_file:
        return _read_sections(path, ("daemon", section), whole_file)


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
