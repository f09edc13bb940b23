"""What every tacorectl command shares: the control connection, exit codes, error messages."""

from __future__ import annotations

import sys

import click

from tacore import config as configuration
from tacore.control.client import AccessDenied, CommandFailed, ControlClient, Unreachable
from tacore.errors import EX_CONFIG, ConfigError

EXIT_UNHEALTHY = 1
EXIT_NOT_RUNNING = 3
EXIT_NO_PERMISSION = 4


class Context:
    def __init__(self, endpoint: str, timeout: float, curve: dict | None,
                 config_path: str | None, control_given: bool):
        self.endpoint, self.timeout, self.curve = endpoint, timeout, curve
        self.config_path, self.control_given = config_path, control_given

    def call(self, command: str, **args):
        try:
            return self._client().call(command, **args)
        except (AccessDenied, Unreachable, CommandFailed) as e:
            explain(e, command)

    def frontend(self) -> str:
        """The daemon's first frontend endpoint, as the daemon reports it; when the control
        socket is not open to this user (a client in [broker] group, not an operator), as the
        configuration file (or the default) names it."""
        try:
            return self._client().call("ping")["frontend"][0]
        except AccessDenied as e:
            if self.control_given:
                fail(f"{e}; or name the frontend with --frontend ENDPOINT", EXIT_NO_PERMISSION)
            return endpoint_from(self.config_path, configuration.read_frontend_endpoint,
                                  configuration.default_frontend_endpoint, "--frontend")
        except (Unreachable, CommandFailed) as e:
            explain(e, "ping")

    def _client(self) -> ControlClient:
        return ControlClient(self.endpoint, self.timeout, self.curve)


def explain(error: Exception, command: str):
    if isinstance(error, AccessDenied):
        fail(str(error), EXIT_NO_PERMISSION)
    if isinstance(error, Unreachable):
        fail(f"tacored is not running or not answering: {error}", EXIT_NOT_RUNNING)
    fail(f"{command} failed: {error}", 1)


def fail(message: str, code: int):
    click.echo(f"tacorectl: {message}", err=True)
    sys.exit(code)


def endpoint_from(config_path: str | None, read, default, option: str) -> str:
    """An endpoint as the configuration file names it, or the default without a file."""
    try:
        return read(config_path) if config_path else default(configuration.default_runtime_dir())
    except ConfigError as e:
        click.echo("\n".join(f"tacorectl: {line}" for line in e.errors), err=True)
        fail(f"name the socket with {option} ENDPOINT instead", EX_CONFIG)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


