"""tacorectl's commands that watch a daemon over time: events, logs, metrics, top."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import click

from tacore.cli import render
from tacore.cli.context import Context, json_option


def parse_duration(text: str) -> float:
    """'30s', '5m', '1h', '2d' (or plain seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 5m, 1h or 2d") from None
    if value < 0:
        raise click.BadParameter("a duration cannot be negative")
    return value * units[unit]


@click.command()
@click.argument("target", metavar="[SERVICE[/SLOT]]", required=False)
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(min=1),
              help="How many of the most recent lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C or SIGTERM stops, exit 0).")
@json_option
@click.pass_obj
def logs(obj: Context, target, lines, follow, as_json):
    """What the workers wrote to stdout and stderr (and logged), attributed, oldest first.

    The daemon keeps the last 500 lines of each slot, across its restarts, so the output of
    the attempt that just failed is there.

    \b
    Examples:
      tacorectl logs ta/0 -n 20
      tacorectl logs echo -f
    """
    def after(query, last):
        return {**query, "after": last["seq"], "lines": 0}

    _poll(obj, "logs", {"lines": lines, **({"target": target} if target else {})},
          json.dumps if as_json else render.output_line, follow, after)


@click.command()
@click.option("--service", "-s", help="Only this service's events.")
@click.option("--since", default="1h", show_default=True,
              help="How far back: 30s, 5m, 1h, 2d.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events (Ctrl-C or SIGTERM stops, exit 0).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1))
@json_option
@click.pass_obj
def events(obj: Context, service, since, follow, limit, as_json):
    """Lifecycle events from the state database, including from before the last restart.

    --json prints one object per line with ts, event, level, service, slot, pid and the
    event's own fields (a timeout's stack among them).

    \b
    Examples:
      tacorectl events --since 2d --service ta
      tacorectl events -f
    """
    query = {"since": time.time() - parse_duration(since), "limit": limit}
    if service:
        query["service"] = service
    def after(query, last):
        if last["id"] is not None:
            return {**query, "after_id": last["id"], "since": None}
        return {**query, "since": last["ts"] + 1e-6}  # degraded: from memory, without ids

    _poll(obj, "events", query, json.dumps if as_json else render.event_line, follow, after)


def _poll(obj: Context, command: str, query: dict, show, follow: bool, after) -> None:
    """Print what ``command`` answers; with ``follow``, ask again twice a second for what
    came after the last item (``after(query, last)``) until Ctrl-C or SIGTERM, either of
    which ends it with exit 0 whenever it comes (as `journalctl -f` does), not only while it
    sleeps. The daemon pushes nothing: polling is the protocol."""
    if follow:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does
    try:
        while True:
            batch = obj.call(command, **query)
            for item in batch:
                click.echo(show(item))
            if not follow:
                return
            if batch:
                query = after(query, batch[-1])
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


@click.command()
@click.option("--prometheus", is_flag=True, help="The Prometheus text exposition.")
@json_option
@click.pass_obj
def metrics(obj: Context, prometheus, as_json):
    """Request counts, errors, latency quantiles, queues, and daemon figures.

    \b
    Examples:
      tacorectl metrics
      tacorectl metrics --prometheus
    """
    if prometheus:
        click.echo(obj.call("metrics", format="prometheus"), nl=False)
        return
    result = obj.call("metrics")
    click.echo(json.dumps(result, indent=2) if as_json else render.metrics_table(result))


@click.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--once", is_flag=True, help="Print one screen and exit.")
@click.pass_obj
def top(obj: Context, interval, once):
    """A refreshing view of the workers: state, CPU, memory, requests/s, latency (q quits).

    \b
    Examples:
      tacorectl top --interval 2
      tacorectl top --once > workers.txt
    """
    previous = None
    while True:
        status, metrics = obj.call("status"), obj.call("metrics")
        screen = render.top_screen(status, metrics, previous, time.monotonic())
        previous = (time.monotonic(), status)
        if once:
            click.echo(screen)
            return
        click.clear()
        click.echo(screen)
        click.echo("\n(q or Ctrl-C quits)")
        if _key_pressed(interval) in ("q", "Q"):
            return


def _key_pressed(timeout: float) -> str | None:
    """Wait up to ``timeout`` for a key on a terminal (None otherwise)."""
    import select
    if not sys.stdin.isatty():
        time.sleep(timeout)  # the refresh period itself
        return None
    import termios
    import tty
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if ready else None
    except KeyboardInterrupt:
        return "q"
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


