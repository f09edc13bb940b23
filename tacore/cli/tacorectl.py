"""``tacorectl``: the operator's view of a running daemon. Presentation only.

Exit codes: 0 success, 1 the answer is bad news (e.g. unhealthy), 2 usage error,
3 the daemon is not running or did not answer (LSB "not running"), 78 unusable config file.
"""

from __future__ import annotations

import json
import sys

import click

from tacore import __version__, config as configuration
from tacore.cli import render
from tacore.client import CallError, CallTimeout, Client
from tacore.control.client import CommandFailed, ControlClient, Unreachable
from tacore.errors import EX_CONFIG, ConfigError

EXIT_UNHEALTHY = 1
EXIT_NOT_RUNNING = 3


class Context:
    def __init__(self, endpoint: str, timeout: float):
        self.endpoint, self.timeout = endpoint, timeout

    def call(self, command: str, **args):
        try:
            return ControlClient(self.endpoint, self.timeout).call(command, **args)
        except Unreachable as e:
            click.echo(f"tacorectl: tacored is not running or not answering: {e}", err=True)
            sys.exit(EXIT_NOT_RUNNING)
        except CommandFailed as e:
            click.echo(f"tacorectl: {command} failed: {e}", err=True)
            sys.exit(1)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="TACORE_CONFIG", metavar="PATH",
              type=click.Path(dir_okay=False),
              help="The daemon's configuration file: only [daemon] and [control] are read "
                   "(env: TACORE_CONFIG).")
@click.option("--control", "endpoint", envvar="TACORE_CONTROL", metavar="ENDPOINT",
              help="Control endpoint, e.g. ipc:///run/tacore/control.sock "
                   "(env: TACORE_CONTROL; overrides --config).")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds to wait for the daemon's answer.")
@click.version_option(__version__, prog_name="tacorectl")
@click.pass_context
def main(ctx, config_path, endpoint, timeout):
    """Inspect and control a running tacored.

    Without --config or --control, the daemon's default control socket is used
    ($RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/tacore, else /tmp/tacore-UID).
    """
    if not endpoint:
        try:
            endpoint = (configuration.read_control_endpoint(config_path) if config_path else
                        configuration.default_control_endpoint(configuration.default_runtime_dir()))
        except ConfigError as e:
            click.echo("\n".join(f"tacorectl: {line}" for line in e.errors), err=True)
            click.echo("tacorectl: name the socket with --control ENDPOINT instead", err=True)
            sys.exit(EX_CONFIG)
    ctx.obj = Context(endpoint, timeout)


@main.command()
@json_option
@click.pass_obj
def status(obj: Context, as_json: bool):
    """Show every worker: state, pid, uptime, last message, restarts, last exit.

    \b
    Examples:
      tacorectl status
      tacorectl --config /etc/tacore/tacore.toml status --json
    """
    result = obj.call("status")
    click.echo(json.dumps(result, indent=2) if as_json else render.status_table(result))


@main.command()
@json_option
@click.pass_obj
def health(obj: Context, as_json: bool):
    """Exit 0 if every service has at least min_ready workers READY or BUSY, else 1.

    Exit 3 if the daemon is not running. Each failing service is named with the reason.

    \b
    Example:
      tacorectl health || echo "tacore is degraded"
    """
    result = obj.call("health")
    click.echo(json.dumps(result, indent=2) if as_json else render.health_text(result))
    sys.exit(0 if result["healthy"] else EXIT_UNHEALTHY)




@main.command()
@click.argument("service")
@click.argument("method")
@click.argument("params", required=False, default="null")
@click.option("--frontend", envvar="TACORE_FRONTEND", metavar="ENDPOINT",
              help="Frontend endpoint (env: TACORE_FRONTEND); default: the daemon's first.")
@click.option("--call-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds to wait for the reply.")
@click.pass_obj
def call(obj: Context, service, method, params, frontend, call_timeout):
    """Call SERVICE's METHOD with PARAMS (JSON) and print the result as JSON.

    Exit 0 with the result; 1 with the error (status, error, message) on stderr; 3 if the
    daemon is not running.

    \b
    Examples:
      tacorectl call echo hello '{"a": 1}'
      tacorectl call ta sma '{"prices": [1, 2, 3, 4, 5, 6], "window": 3}'
    """
    try:
        params = json.loads(params)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="PARAMS") from None
    endpoint = frontend or obj.call("ping")["frontend"][0]
    try:
        with Client(endpoint) as client:
            result = client.call(service, method, params, timeout=call_timeout)
    except CallTimeout as e:
        click.echo(f"tacorectl: {e.message}", err=True)
        sys.exit(EXIT_NOT_RUNNING)
    except CallError as e:
        click.echo(f"tacorectl: {service}.{method} failed: {e.status} {e.error}: {e.message}",
                   err=True)
        sys.exit(1)
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
