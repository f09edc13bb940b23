"""``tacorectl``: the operator's view of a running daemon. Presentation only.

Exit codes: 0 success, 1 the answer is bad news (e.g. unhealthy), 2 usage error,
3 the daemon is not running or did not answer (LSB "not running"), 4 this user may not use the
socket (LSB "insufficient privilege"; the message names the file and the group to join),
78 unusable config file.
"""

from __future__ import annotations

import json
import os
import sys
import time

import zmq.auth

import click

from tacore import __version__, config as configuration
from tacore.cli import render
from tacore.client import AccessDenied as FrontendDenied, CallError, CallTimeout, Client
from tacore.control.client import curve_options
from tacore.cli.context import (EXIT_NO_PERMISSION, EXIT_NOT_RUNNING, EXIT_UNHEALTHY, Context,
                                endpoint_from, fail, json_option)
from tacore.cli.observe import events, logs, metrics, top


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="TACORE_CONFIG", metavar="PATH",
              help="The daemon's configuration file: only [daemon], [control] and (for call) "
                   "[broker] frontend are read (env: TACORE_CONFIG).")
@click.option("--control", "endpoint", envvar="TACORE_CONTROL", metavar="ENDPOINT",
              help="Control endpoint, e.g. ipc:///run/tacore/control.sock "
                   "(env: TACORE_CONTROL; overrides --config).")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds to wait for the daemon's answer.")
@click.option("--curve-key", envvar="TACORE_CURVE_KEY", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="For a CURVE-protected tcp control endpoint: your NAME.key_secret file "
                   "(env: TACORE_CURVE_KEY).")
@click.option("--curve-server-key", envvar="TACORE_CURVE_SERVER_KEY", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="The daemon's public NAME.key file (env: TACORE_CURVE_SERVER_KEY).")
@click.version_option(__version__, prog_name="tacorectl")
@click.pass_context
def main(ctx, config_path, endpoint, timeout, curve_key, curve_server_key):
    """Inspect and control a running tacored.

    Without --config or --control, the daemon's default control socket is used
    ($RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/tacore, else /tmp/tacore-UID). Exit 4 when
    this user may not use the socket: the message names the file and the group to join.

    \b
    Examples:
      tacorectl --config /etc/tacore/tacore.toml status
      TACORE_CONFIG=/etc/tacore/tacore.toml tacorectl call echo hello '"hi"'
    """
    control_given = bool(endpoint)
    if not endpoint:
        endpoint = endpoint_from(config_path, configuration.read_control_endpoint,
                                  configuration.default_control_endpoint, "--control")
    if bool(curve_key) != bool(curve_server_key):
        raise click.UsageError("--curve-key and --curve-server-key go together")
    curve = curve_options(curve_key, curve_server_key) if curve_key else None
    ctx.obj = Context(endpoint, timeout, curve, config_path, control_given)


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
@click.option("--frontend", envvar="TACORE_FRONTEND", metavar="ENDPOINT", multiple=True,
              help="Frontend endpoint; several, in failover order (env: TACORE_FRONTEND, "
                   "space-separated); default: the daemon's first.")
@click.option("--call-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds to wait for the reply, per attempt.")
@click.option("--retries", default=0, show_default=True, type=click.IntRange(min=0),
              help="Further attempts after a timeout or a 503, at the next --frontend: only "
                   "for methods that may run twice.")
@click.option("--client-key", envvar="TACORE_CLIENT_KEY", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="For a daemon's [remote] frontend (CURVE): your NAME.key_secret file "
                   "(env: TACORE_CLIENT_KEY).")
@click.option("--server-key", envvar="TACORE_SERVER_KEY", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="The daemon's public NAME.key file for its [remote] frontend "
                   "(env: TACORE_SERVER_KEY).")
@click.pass_obj
def call(obj: Context, service, method, params, frontend, call_timeout, retries, client_key,
         server_key):
    """Call SERVICE's METHOD with PARAMS (JSON) and print the result as JSON.

    Exit 0 with the result; 1 with the error (status, error, message) on stderr; 3 if the
    daemon is not running or no attempt got a reply; 4 if this user may not use the frontend
    socket. The daemon names its frontend; a user who may not use the control socket (a
    member of [broker] group only) gets the one named by --config instead. A daemon's
    [remote] frontend on another host needs --client-key and --server-key (used for tcp
    endpoints only).

    \b
    Examples:
      tacorectl call echo hello '{"a": 1}'
      tacorectl call ta sma '{"prices": [1, 2, 3, 4, 5, 6], "window": 3}'
      tacorectl call --frontend tcp://a:5555 --frontend tcp://b:5555 --retries 1 \\
          --client-key me.key_secret --server-key tacored.key ta sma '{"prices": [1, 2], "window": 2}'
    """
    try:
        params = json.loads(params)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="PARAMS") from None
    if bool(client_key) != bool(server_key):
        raise click.UsageError("--client-key and --server-key go together")
    endpoints = list(frontend) or [obj.frontend()]
    try:
        with Client(endpoints, retries, curve_secret_key=client_key,
                    curve_server_key=server_key) as client:
            result = client.call(service, method, params, timeout=call_timeout)
    except FrontendDenied as e:
        fail(e.message, EXIT_NO_PERMISSION)
    except CallTimeout as e:
        click.echo(f"tacorectl: {e.message}", err=True)
        sys.exit(EXIT_NOT_RUNNING)
    except CallError as e:
        tried = "".join(f"\n  attempt: {a}" for a in e.attempts) if len(e.attempts) > 1 else ""
        click.echo(f"tacorectl: {service}.{method} failed: {e.status} {e.error}: {e.message}"
                   + tried, err=True)
        sys.exit(1)
    click.echo(json.dumps(result))



def _show(result, as_json: bool, text: str) -> None:
    click.echo(json.dumps(result, indent=2) if as_json else text)


@main.command()
@click.argument("target", metavar="SERVICE[/SLOT]")
@click.option("--wait", is_flag=True, help="Block until every replaced worker is READY.")
@click.option("--wait-timeout", default=300.0, show_default=True, type=float,
              help="Seconds --wait may take; then exit 1.")
@json_option
@click.pass_obj
def restart(obj: Context, target, wait, wait_timeout, as_json):
    """Rolling restart: each worker is replaced once its successor is READY.

    A service with N >= 2 workers never has fewer than N-1 ready, and no running request is
    lost. Stopped and FATAL slots are simply started.

    \b
    Examples:
      tacorectl restart ta          # every worker of ta, one at a time
      tacorectl restart ta/1 --wait # slot 1, and wait for its replacement
    """
    result = obj.call("restart", target=target)
    if wait:
        _wait_rolled(obj, target.partition("/")[0], wait_timeout)
    _show(result, as_json, f"restarting {result['service']}: rolling slots "
          f"{result['rolling'] or '-'}, started slots {result['started'] or '-'}"
          + (" — done" if wait else ""))


def _wait_rolled(obj: Context, service: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = obj.call("status")["services"].get(service)
        if entry is None:
            break
        if any(w["state"] == "FATAL" for w in entry["workers"]):
            click.echo(f"tacorectl: restart of {service} failed: a worker is FATAL "
                       "(tacorectl status)", err=True)
            sys.exit(1)
        if entry["rolling"] == 0 and all(w["state"] in ("READY", "BUSY") and not w["draining"]
                                         for w in entry["workers"]):
            return
        time.sleep(0.05)  # the daemon's state is polled: nothing to be notified of
    click.echo(f"tacorectl: restart of {service} not done within {timeout:g}s", err=True)
    sys.exit(1)


@main.command()
@click.argument("target", metavar="SERVICE[/SLOT]")
@json_option
@click.pass_obj
def stop(obj: Context, target, as_json):
    """Stop workers (each finishes its current request first); they stay stopped.

    \b
    Example:
      tacorectl stop ta/0
    """
    result = obj.call("stop", target=target)
    _show(result, as_json, f"stopping {result['service']} slots {result['stopped'] or '-'}")


@main.command()
@click.argument("target", metavar="SERVICE[/SLOT]")
@json_option
@click.pass_obj
def start(obj: Context, target, as_json):
    """Start stopped workers; also clears FATAL (past failures are forgotten).

    \b
    Example:
      tacorectl start ta      # after fixing what made it FATAL
    """
    result = obj.call("start", target=target)
    _show(result, as_json, f"starting {result['service']} slots {result['started'] or '-'}")


@main.command()
@click.argument("service")
@click.argument("workers", type=click.IntRange(min=0))
@json_option
@click.pass_obj
def scale(obj: Context, service, workers, as_json):
    """Run WORKERS workers for SERVICE: add some, or drain and retire the highest slots.

    The new count holds until the service's configuration changes or the daemon restarts.

    \b
    Example:
      tacorectl scale ta 4
    """
    result = obj.call("scale", service=service, workers=workers)
    _show(result, as_json, f"{service}: {workers} workers (added {result['added'] or '-'}, "
          f"retiring {result['retired'] or '-'})")


@main.command()
@json_option
@click.pass_obj
def reload(obj: Context, as_json):
    """Re-read the configuration file and apply only what changed (also: SIGHUP).

    An invalid file changes nothing: every error is printed and the exit code is 1. New
    services start, removed ones drain and stop, changed ones are rolled, the rest is left
    alone.

    \b
    Example:
      tacorectl --config /etc/tacore/tacore.toml reload
    """
    result = obj.call("reload")
    if not result["ok"]:
        if as_json:
            click.echo(json.dumps(result, indent=2))
        click.echo("tacorectl: the configuration is invalid; tacored keeps running on the "
                   "previous one:", err=True)
        for line in result["errors"]:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    text = "\n".join(f"{what}: {', '.join(result[what]) or '-'}"
                     for what in ("added", "removed", "changed", "unchanged"))
    text += "".join(f"\nnot applied: {line}" for line in result["not_applied"])
    _show(result, as_json, text)


@main.command()
@click.argument("target", metavar="SERVICE/SLOT")
@json_option
@click.pass_obj
def dump(obj: Context, target, as_json):
    """Print the live Python stack of every thread of one worker, without stopping it.

    \b
    Example:
      tacorectl dump ta/0
    """
    result = obj.call("dump", target=target)
    _show(result, as_json, f"{result['service']}/{result['slot']} pid {result['pid']}"
          + (f", at {result['blocked_at']}" if result["blocked_at"] else "")
          + f"\n{result['stack']}")


@main.command()
@json_option
@click.pass_obj
def shutdown(obj: Context, as_json):
    """Stop the daemon gracefully: refuse new requests, drain, stop the workers, exit.

    \b
    Example:
      tacorectl shutdown
    """
    result = obj.call("shutdown")
    _show(result, as_json, "tacored is stopping")



@main.command("log-level")
@click.argument("level", type=click.Choice(["debug", "info", "warning", "error"]))
@json_option
@click.pass_obj
def log_level(obj: Context, level, as_json):
    """Change the daemon's log level now (and that of workers started from now on).

    \b
    Example:
      tacorectl log-level debug
    """
    result = obj.call("log_level", level=level)
    _show(result, as_json, f"log level: {result['log_level']}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("name")
def keygen(directory, name):
    """Make a CURVE key pair: DIRECTORY/NAME.key (public) and NAME.key_secret (mode 0600).

    \b
    Give the daemon its pair in [broker] or [control] curve_secret_key; put each client's
    public NAME.key in the directory named by curve_authorized_keys.
    \b
    Example:
      tacorectl keygen /etc/tacore/keys tacored
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    os.chmod(public, 0o644)
    click.echo(f"public key: {public}\nsecret key: {secret}")


if __name__ == "__main__":
    main()


for _command in (events, logs, metrics, top):  # (tacore/cli/observe.py)
    main.add_command(_command)
