"""Plain-text views of the daemon's answers. Colour only when writing to a terminal."""

from __future__ import annotations

import time

import click

STATE_COLOURS = {"READY": "green", "BUSY": "cyan", "STARTING": "yellow", "STOPPING": "yellow",
                 "BACKOFF": "yellow", "FATAL": "red", "STOPPED": None}
COLUMNS = ("SERVICE", "SLOT", "STATE", "PID", "UPTIME", "LAST SEEN", "REQUESTS", "RESTARTS",
           "LAST EXIT")


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def last_exit(info) -> str:
    if not info:
        return "-"
    how = f"signal {info['signal']}" if info["signal"] else f"code {info['code']}"
    return f"{info['reason']} ({how}) {duration(time.time() - info['at'])} ago"


def status_table(status: dict) -> str:
    d = status["daemon"]
    lines = [f"tacored pid {d['pid']}, up {duration(d['uptime'])}, version {d['version']}, "
             f"config {d['config']}" + (" — STOPPING" if d["stopping"] else "")]
    rows = []
    for name, service in status["services"].items():
        for w in service["workers"]:
            state = w["state"] + (" (external)" if w["external"] else "")
            rows.append((name, "-" if w["slot"] is None else str(w["slot"]), state,
                         str(w["pid"] or "-"), duration(w["uptime"]), duration(w["last_seen"]),
                         _requests(w), str(w["restarts"]), _exit_or_reason(w)))
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
        return f"FATAL: {worker['fatal_reason']}"
    if worker["state"] == "BACKOFF":
        return f"{last_exit(worker['last_exit'])}; retry in {duration(worker['backoff_remaining'])}"
    return last_exit(worker["last_exit"])


def health_text(health: dict) -> str:
    if health["healthy"]:
        return "healthy"
    return "unhealthy:\n" + "\n".join(f"  {p}" for p in health["problems"])
