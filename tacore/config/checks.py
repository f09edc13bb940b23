"""The value checkers of the configuration schema: each takes a value as TOML gave it and
returns the clean value, or raises ``Invalid(problem, fix)``, which the loader reports as one
line naming the section and the key.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import math
from pathlib import Path
from typing import Callable

# The longest path a Unix socket address can hold on Linux (sun_path is 108 bytes with its NUL).
MAX_IPC_PATH = 107


class Invalid(Exception):
    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix


def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def duration(value):
    """Seconds, an int or a float, greater than zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"must be a number of seconds, got {_type_name(value)} ({value!r})",
                      "write a number such as 5 or 0.5")
    if not math.isfinite(value) or value <= 0:
        raise Invalid(f"must be greater than 0 seconds, got {value!r}", "use a positive number")
    return float(value)


def seconds_or_zero(value):
    """Seconds, an int or a float, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"must be a number of seconds, got {_type_name(value)} ({value!r})",
                      "write a number such as 10 or 0")
    if not math.isfinite(value) or value < 0:
        raise Invalid(f"must be 0 or more seconds, got {value!r}", "use 0 or a positive number")
    return float(value)


def integer(minimum: int) -> Callable:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, got {_type_name(value)} ({value!r})",
                          f"write a whole number >= {minimum}")
        if value < minimum:
            raise Invalid(f"must be >= {minimum}, got {value}", f"use a value >= {minimum}")
        return value
    check.__doc__ = f"An integer >= {minimum}."
    return check


def choice(choices: tuple[str, ...]) -> Callable:
    def check(value):
        if value not in choices:
            raise Invalid(f"must be one of {', '.join(map(repr, choices))}, got {value!r}",
                          suggest(str(value), choices) or f"use one of {', '.join(choices)}")
        return value
    return check


def boolean(value):
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {_type_name(value)} ({value!r})")
    return value


def string(value):
    if not isinstance(value, str) or not value:
        raise Invalid(f"must be a non-empty string, got {_type_name(value)} ({value!r})")
    return value


def existing_group(value):
    """A group name that exists on this machine."""
    try:
        grp.getgrnam(string(value))
    except KeyError:
        raise Invalid(f"no group named {value!r} on this machine",
                      "create it (groupadd) or name an existing group") from None
    return value


def string_list(value):
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Invalid(f"must be a list of strings, got {value!r}", 'write e.g. ["a", "b"]')
    return tuple(value)


def zmq_endpoint(value):
    """A ZeroMQ endpoint tacore may bind: ipc:// with an absolute path, or tcp://HOST:PORT
    (a host that is not loopback needs CURVE, checked per section)."""
    value = string(value)
    if value.startswith("ipc://"):
        path = value[len("ipc://"):]
        if not path.startswith("/"):
            raise Invalid(f"ipc endpoint {value!r} must name an absolute path",
                          "write ipc:///absolute/path.sock")
        if len(path.encode()) > MAX_IPC_PATH:
            raise Invalid(f"ipc path is {len(path.encode())} bytes, the limit is {MAX_IPC_PATH}",
                          "use a shorter directory")
        return value
    if value.startswith("tcp://") and value.rpartition(":")[2].isdigit():
        return value
    raise Invalid(f"unsupported endpoint {value!r}", "use ipc:///path.sock or tcp://127.0.0.1:PORT")


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
        raise Invalid(f"cannot load a CURVE key from {str(path)!r}: {e}",
                      "create one with: tacorectl keygen DIR NAME") from None
    if not secret:
        raise Invalid(f"{str(path)!r} holds no secret key", "name the NAME.key_secret file")
    return str(path)


def public_key_list(value):
    """A list of public key files (NAME.key, from ``tacorectl keygen``); their z85 keys."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Invalid(f"must be a list of public key files, got {value!r}",
                      'write e.g. ["/etc/tacore/keys/node1.key"]')
    import zmq.auth  # (as in secret_key_file)

    keys = []
    for item in value:
        path = Path(item).expanduser()
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise Invalid(f"cannot load a CURVE public key from {str(path)!r}: {e}",
                          "name NAME.key files made by tacorectl keygen") from None
        keys.append(public.decode())
    return tuple(keys)


def public_key_file(value):
    """One public key file (NAME.key, from ``tacorectl keygen``); its z85 key."""
    return public_key_list([value] if isinstance(value, str) else value)[0]


def remote_endpoint_list(value):
    """tcp:// endpoints for clients on other hosts; an empty list turns [remote] off."""
    if not isinstance(value, list):
        raise Invalid(f"must be a list of endpoints, got {_type_name(value)} ({value!r})",
                      'write e.g. ["tcp://0.0.0.0:5555"], or [] for none')
    endpoints = tuple(zmq_endpoint(v) for v in value)
    for endpoint in endpoints:
        if endpoint.startswith("ipc://"):
            raise Invalid(f"{endpoint!r} is an ipc endpoint: [remote] is for clients on other "
                          "hosts", "put ipc endpoints in [broker] frontend; here write "
                          "tcp://HOST:PORT")
    return endpoints


def key_directory(value):
    path = Path(string(value)).expanduser()
    if not path.is_dir():
        raise Invalid(f"{str(path)!r} is not a directory",
                      "name a directory of allowed public keys (*.key files)")
    return str(path)


def http_listen(value):
    """HOST:PORT on a loopback address: the endpoint has no authentication."""
    value = string(value)
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise Invalid(f"must be HOST:PORT, got {value!r}", 'write e.g. "127.0.0.1:9464"')
    if not is_loopback(f"tcp://{value}"):
        raise Invalid(f"{value!r} is reachable from other hosts and the HTTP endpoint has no "
                      "authentication", "listen on 127.0.0.1 and scrape it locally or "
                      "through a proxy")
    return value


def endpoint_list(value):
    if not isinstance(value, list) or not value:
        raise Invalid(f"must be a non-empty list of endpoints, got {value!r}",
                      'write e.g. ["ipc:///run/tacore/frontend.sock"]')
    return tuple(zmq_endpoint(v) for v in value)


def handler_path(value):
    """A "module:callable" path; importing it is checked later, once sys.path is final."""
    value = string(value)
    module, _, attr = value.partition(":")
    if not module or not attr:
        raise Invalid(f"must look like 'module:callable', got {value!r}",
                      'write e.g. "tacore.services.echo:Echo"')
    return value


def command_list(value):
    """A program and its arguments: a non-empty list of non-empty strings."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v
                                                            for v in value):
        raise Invalid(f"must be a program and its arguments, got {value!r}",
                      'write e.g. ["/usr/local/bin/worker", "--fast"]')
    return tuple(value)


def string_table(value):
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Invalid(f"must be a table of strings, got {value!r}",
                      'write e.g. {RUST_LOG = "info"}')
    return dict(value)


def table(value):
    if not isinstance(value, dict):
        raise Invalid(f"must be a table, got {_type_name(value)}", "write [services.NAME.config]")
    return value


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""
