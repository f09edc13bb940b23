"""The configuration: its schema, strict loading, lenient reading, and the README's reference.

    checks.py     the value checkers (type, range, the message and the fix)
    schema.py     every key once, as a field of its section's dataclass; ``Config``
    loading.py    ``load``: read, validate and resolve a file, every problem on one line
    lenient.py    the endpoints ``tacorectl`` reads from a file that may be half-edited
    reference.py  the README's table, generated from the schema (``python -m tacore.config``)

A leaf: every part of tacore may import it, and it imports no other part (``load`` imports
handlers only through the ``load_handler`` it is given).
"""

from tacore.config.checks import (MAX_IPC_PATH, Invalid, boolean, command_list, duration,
                                  endpoint_list, existing_group, handler_path, http_listen,
                                  is_loopback, key_directory, public_key_file, public_key_list,
                                  remote_endpoint_list, seconds_or_zero, secret_key_file, string,
                                  string_list, string_table, table, zmq_endpoint)
from tacore.config.lenient import read_control_endpoint, read_frontend_endpoint
from tacore.config.loading import (SERVICE_NAME, default_control_endpoint,
                                   default_frontend_endpoint, default_runtime_dir,
                                   default_state_dir, load, read_toml)
from tacore.config.reference import reference_table
from tacore.config.schema import (COMPUTED, LOG_FORMATS, LOG_LEVELS, NEEDS_RESTART, SECTIONS,
                                  SERVICE_KEYS, TABLES, BrokerConfig, Config, ControlConfig,
                                  DaemonConfig, HttpConfig, Key, NodeConfig, RemoteConfig,
                                  ServiceConfig, StateConfig, kept_as_running, key, keys_of,
                                  restart_needed)

__all__ = [
    "MAX_IPC_PATH", "Invalid", "boolean", "command_list", "duration", "endpoint_list",
    "existing_group", "handler_path", "http_listen", "is_loopback", "key_directory",
    "public_key_file", "public_key_list", "remote_endpoint_list", "seconds_or_zero",
    "secret_key_file", "string", "string_list", "string_table", "table", "zmq_endpoint",
    "read_control_endpoint", "read_frontend_endpoint",
    "SERVICE_NAME", "default_control_endpoint", "default_frontend_endpoint",
    "default_runtime_dir", "default_state_dir", "load", "read_toml",
    "reference_table",
    "COMPUTED", "LOG_FORMATS", "LOG_LEVELS", "NEEDS_RESTART", "SECTIONS", "SERVICE_KEYS",
    "TABLES", "BrokerConfig", "Config", "ControlConfig", "DaemonConfig", "HttpConfig", "Key",
    "NodeConfig", "RemoteConfig", "ServiceConfig", "StateConfig", "kept_as_running", "key",
    "keys_of", "restart_needed",
]
