"""Plain-text views of the daemon's answers. Colour only when writing to a terminal."""

from __future__ import annotations

import time

import click

from tacore.readable import duration

STATE_COLOURS = {"READY": "green", "BUSY": "cyan", "STARTING": "yellow", "STOPPING": "yellow",
                 "BACKOFF": "yellow", "FATAL": "red", "STOPPED": None}
COLUMNS = ("SERVICE", "SLOT", "STATE", "PID", "UPTIME", "LAST SEEN", "REQUESTS", "CPU%", "RSS",
           "RESTARTS", "LAST EXIT")


def last_exit(info) -> str:
    if not info:
        return "-"
    how = f"signal {info['signal']}" if info["signal"] else f"code {info['code']}"
    if info.get("by"):
        how = f"ended by {info['by']}, {how}"
    return f"{info['reason']} ({how}) {duration(time.time() - info['at'])} ago"


def status_table(status: dict) -> str:
    d = status["daemon"]
    lines = [f"tacored pid {d['pid']}, up {duration(d['uptime'])}, version {d['version']}, "
             f"config {d['config']}" + (" — STOPPING" if d["stopping"] else "")]
    if d["persistence"]["enabled"] and d["persistence"]["degraded"]:
        lines.append(click.style(f"persistence degraded: {d['persistence']['degraded']}",
                                 fg="yellow"))
    rows = []
    for name, service in status["services"].items():
        for w in service["workers"]:
            state = w["state"] + (" (external)" if w["external"] else "")
            rows.append((name, "-" if w["slot"] is None else str(w["slot"]), state,
                         str(w["pid"] or "-"), duration(w["uptime"]), duration(w["last_seen"]),
                         _requests(w), "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}",
                         _mb(w["rss_bytes"]), str(w["restarts"]), _exit_or_reason(w)))
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(COLUMNS)]
    lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(COLUMNS)).rstrip())
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        cells[2] = click.style(cells[2], fg=STATE_COLOURS.get(row[2].split()[0]),
                               bold=row[2] == "FATAL")
        lines.append("  ".join(cells).rstrip())
    queued = [f"{name} {s['queue']}" for name, s in status["services"].items() if s["queue"]]
    if queued:
        lines.append("waiting requests: " + ", ".join(queued))
    return "\n".join(lines)


def _requests(worker: dict) -> str:
    busy = worker["request_age"]
    return str(worker["requests"]) + (f" (busy {duration(busy)})" if busy is not None else "")


def _exit_or_reason(worker: dict) -> str:
    if worker["state"] == "FATAL":
        retry = worker.get("next_retry_in")
        return f"FATAL: {worker['fatal_reason']}" + (
            f"; retry in {duration(retry)}" if retry is not None else "")
    if worker["state"] == "BACKOFF":
        return f"{last_exit(worker['last_exit'])}; retry in {duration(worker['backoff_remaining'])}"
    return last_exit(worker["last_exit"])


def output_line(entry: dict) -> str:
    """One line of a worker's output, as `tacorectl logs` prints it."""
    when = time.strftime("%H:%M:%S", time.localtime(entry["ts"]))
    where = f"{entry['service']}/{entry['slot']} pid {entry['pid']}"
    mark = " !" if entry["stream"] == "stderr" else ""
    return f"{when} {where}{mark}: {entry['line']}"


def health_text(health: dict) -> str:
    text = "healthy" if health["healthy"] else "unhealthy:\n" + "\n".join(
        f"  {p}" for p in health["problems"])
    return text + "".join(f"\nwarning: {w}" for w in health.get("warnings", []))


def event_line(event: dict) -> str:
    """One event as a line (a stack follows, indented, when the event has one)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["ts"]))
    where = event["service"] or ""
    if event["slot"] is not None:
        where += f"/{event['slot']}"
    skip = {"id", "ts", "event", "level", "service", "slot", "pid", "stack", "exception"}
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip and v is not None)
    name = click.style(event["event"], fg={"warning": "yellow", "error": "red"}.get(
        event["level"]), bold=event["level"] == "error")
    line = f"{when}  {name}  {where}" + (f" pid {event['pid']}" if event["pid"] else "")
    line += f"  {fields}" if fields else ""
    block = event.get("stack") or event.get("exception")
    if block:
        line += "\n" + "\n".join(f"    {row}" for row in str(block).splitlines())
    return line


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}ms"


def _mb(rss) -> str:
    return "-" if rss is None else f"{rss / 2**20:.1f}MB"


def metrics_table(metrics: dict) -> str:
    d = metrics["daemon"]
    lines = [f"daemon: cpu {d['cpu_percent'] if d['cpu_percent'] is not None else '-'}%, "
             f"rss {_mb(d['rss_bytes'])}, loop lag {_ms(d['loop_lag_seconds'])}"
             + (", persistence DEGRADED" if d["persistence_degraded"] else "")
             + "".join(f", {domain} refused {count}" for domain, count
                       in d.get("auth_refused", {}).items())]
    header = ("SERVICE", "REQUESTS", "ERRORS", "QUEUE", "READY", "P50", "P90", "P99")
    rows = [(name, str(s["requests"]), str(s["errors"]), str(s["queue"]), str(s["ready"]),
             _ms(s["latency"]["p50"]), _ms(s["latency"]["p90"]), _ms(s["latency"]["p99"]))
            for name, s in metrics["services"].items()]
    return "\n".join(lines + _table(header, rows))


def _table(header, rows) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
            for row in (header, *rows)]


def top_screen(status: dict, metrics: dict, previous, now: float) -> str:
    """The workers with their figures; requests/s from the change since the last screen."""
    before = {}
    if previous is not None:
        then, old = previous
        before = {(n, w["pid"]): (w["requests"], now - then)
                  for n, s in old["services"].items() for w in s["workers"]}
    header = ("SERVICE", "SLOT", "STATE", "PID", "CPU%", "RSS", "REQ/S", "P99 (last interval)")
    rows = []
    for name, s in status["services"].items():
        p99 = metrics["services"].get(name, {}).get("recent", {}).get("p99")
        for w in s["workers"]:
            served, elapsed = before.get((name, w["pid"]), (None, None))
            rate = f"{(w['requests'] - served) / elapsed:.1f}" if served is not None else "-"
            cpu = "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}"
            rows.append((name, "-" if w["slot"] is None else str(w["slot"]), w["state"],
                         str(w["pid"] or "-"), cpu, _mb(w["rss_bytes"]), rate, _ms(p99)))
    d = status["daemon"]
    head = (f"tacored pid {d['pid']}  up {duration(d['uptime'])}  cpu "
            f"{d['cpu_percent'] if d['cpu_percent'] is not None else '-'}%  "
            f"rss {_mb(d['rss_bytes'])}")
    return "\n".join([head, ""] + _table(header, rows))
