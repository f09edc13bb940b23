"""The dashboard page, rendered on the server from the dashboard's figures.

The page is complete without JavaScript: every table and plot is in the HTML as served (and a
browser without scripts reloads it every 10 s). ``static/dashboard.js``, served by the
daemon itself, then refreshes the tables in place from ``/api/dashboard`` every second and
the plots from ``/api/plots`` when a new sample exists. It formats values the way the
functions here do: the two are kept side by side on purpose (``fmt_*`` here, ``fmt.*``
there). Nothing is loaded from anywhere else; the Content-Security-Policy says so to the
browser too.

Plots are inline SVG drawn here from the state database's samples of the last hour: a few
polylines per chart, no library.
"""

from __future__ import annotations

import html
import json
import time
from functools import cache
from importlib import resources

from tacore.readable import duration

# Nothing but the daemon itself: scripts, styles, fetches and images from this origin only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
ASSETS = {"/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
          "/favicon.svg": ("favicon.svg", "image/svg+xml")}
SPAN = 3600.0  # the plots show the last hour...
STEP = 30.0  # ...in buckets of this many seconds
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


@cache
def asset(name: str) -> bytes:
    """A file of static/ (package data), read once."""
    return (resources.files(__package__) / "static" / name).read_bytes()


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


# --- formatting: the rules of fmt.* in static/dashboard.js (durations: tacore/readable.py) --

def fmt_bytes(value) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def fmt_ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def fmt_number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_exit(info, now: float) -> str:
    if not info:
        return "-"
    how = f"signal {info['signal']}" if info["signal"] else f"code {info['code']}"
    by = f", by {info['by']}" if info.get("by") else ""
    return f"{info['reason']} ({how}{by}) {duration(max(0.0, now - info['at']))} ago"


def fmt_statuses(by_status: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(by_status.items())) or "-"


def fmt_clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


# --- the page -------------------------------------------------------------------------------

def page(view: dict, plots: str, now: float) -> bytes:
    """The whole page for ``view`` (what /api/dashboard returns) at wall time ``now``."""
    d = view["daemon"]
    title = f"tacore {d['pid']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/dashboard.css">
<script src="/dashboard.js" defer></script>
<noscript><meta http-equiv="refresh" content="10"></noscript>
</head><body>
<header><h1>tacore</h1><p id="daemon">{esc(daemon_line(view))}</p>
<p id="verdict" class="{'ok' if view['healthy'] else 'bad'}">{esc(verdict(view))}</p>
<p id="updated" data-version="{esc(view['plots_version'])}">as of {fmt_clock(now)}</p></header>
<main>
<section><h2>Services</h2>{services_table(view)}</section>
<section><h2>Workers</h2>{workers_table(view, now)}</section>
<section><h2>Last hour</h2><div id="plots">{plots}</div></section>
<section><h2>Events</h2>{events_list(view)}</section>
</main></body></html>
""".encode()


def daemon_line(view: dict) -> str:
    d = view["daemon"]
    line = (f"pid {d['pid']}, up {duration(d['uptime'])}, version {d['version']}, "
            f"config {d['config']}, CPU {fmt_number(d['cpu_percent'])}%, "
            f"RSS {fmt_bytes(d['rss_bytes'])}")
    return line + (" — STOPPING" if d["stopping"] else "")


def verdict(view: dict) -> str:
    if view["healthy"]:
        return "healthy" + "".join(f"; {w}" for w in view["warnings"])
    return "unhealthy: " + "; ".join(view["problems"] + view["warnings"])


SERVICE_COLUMNS = ("service", "ready", "health", "queue", "requests/s", "p50", "p99",
                   "replies by status", "restarts")


def services_table(view: dict) -> str:
    head = "".join(f"<th>{c}</th>" for c in SERVICE_COLUMNS)
    rows = "".join(service_row(s) for s in view["services"])
    caption = (f"requests/s, p50 and p99 over the last sample interval "
               f"({view['interval']:g} s); replies and restarts since the daemon started")
    return (f'<table id="services"><caption>{esc(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")


def service_row(s: dict) -> str:
    cells = [s["name"], f"{s['ready']}/{s['workers']} (min {s['min_ready']})"
             + (f" (+{s['external']} external)" if s["external"] else ""),
             "ok" if s["healthy"] else s["problem"], s["queue"],
             fmt_number(s["per_second"]), fmt_ms(s["p50"]), fmt_ms(s["p99"]),
             fmt_statuses(s["by_status"]), s["restarts"]]
    tds = "".join(f'<td class="c{i}">{esc(c)}</td>' for i, c in enumerate(cells))
    return (f'<tr data-service="{esc(s["name"])}" class="{"ok" if s["healthy"] else "failing"}">'
            f"{tds}</tr>")


WORKER_COLUMNS = ("service", "slot", "state", "pid", "uptime", "last seen", "requests", "CPU %",
                  "RSS", "restarts", "last exit")


def workers_table(view: dict, now: float) -> str:
    head = "".join(f"<th>{c}</th>" for c in WORKER_COLUMNS)
    rows = "".join(worker_row(w, now) for w in view["workers"])
    return (f'<table id="workers"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def worker_state(w: dict) -> str:
    """The state as text (colour is the class): FATAL with its reason, a late start with its
    time against the timeout, an external worker said so."""
    text = w["state"]
    if w["state"] == "FATAL":
        text += f": {w['fatal_reason']}"
    elif w["starting_late"]:
        text += f" for {duration(w['state_for'])} of {duration(w['start_timeout'])}"
    elif w["state"] == "BACKOFF" and w["backoff_remaining"] is not None:
        text += f", retry in {duration(w['backoff_remaining'])}"
    if w["draining"]:
        text += f" (draining: {w['draining']})"
    return text + (" (external)" if w["external"] else "")


def worker_row(w: dict, now: float) -> str:
    cells = [w["service"], "-" if w["slot"] is None else w["slot"], worker_state(w),
             w["pid"] or "-", duration(w["uptime"]), duration(w["last_seen"]),
             w["requests"], fmt_number(w["cpu_percent"]), fmt_bytes(w["rss_bytes"]),
             w["restarts"], fmt_exit(w["last_exit"], now)]
    tds = "".join(f'<td class="c{i}">{esc(c)}</td>' for i, c in enumerate(cells))
    return (f'<tr data-worker="{esc(worker_key(w))}" class="{row_class(w)}">{tds}</tr>')


def worker_key(w: dict) -> str:
    return f"{w['service']}/{w['slot'] if w['slot'] is not None else w['identity']}" + (
        "/new" if w["replacing"] else "")


def row_class(w: dict) -> str:
    return f"state-{w['state']}" + (" late" if w["starting_late"] else "")


def events_list(view: dict) -> str:
    items = "".join(event_item(e) for e in view["events"])
    return f'<ol id="events">{items}</ol>'


def event_item(e: dict) -> str:
    where = "/".join(str(x) for x in (e["service"], e["slot"]) if x is not None)
    head = (f'<span class="ts">{fmt_clock(e["ts"])}</span> '
            f'<span class="name">{esc(e["event"])}</span> <span class="where">{esc(where)}'
            f'{" pid " + esc(e["pid"]) if e["pid"] else ""}</span> '
            f'<span class="context">{esc(e["context"])}</span>')
    body = ""
    if e["stack"] or e["output"]:
        summary = f"blocked at {e['blocked_at']}" if e["blocked_at"] else "details"
        text = (e["stack"] or "") + ("\n--- output ---\n" + "\n".join(e["output"])
                                     if e["output"] else "")
        body = f"<details><summary>{esc(summary)}</summary><pre>{esc(text)}</pre></details>"
    return (f'<li data-event="{esc(event_key(e))}" class="level-{esc(e["level"])}">'
            f"{head}{body}</li>")


def event_key(e: dict) -> str:
    return str(e["id"]) if e["id"] is not None else f"{e['ts']}:{e['event']}:{e['pid']}"


def to_json(view: dict) -> bytes:
    return json.dumps(view, separators=(",", ":")).encode()


# --- plots ----------------------------------------------------------------------------------

def plots(services: dict, workers: dict, end: float) -> str:
    """Four charts per service over [end - SPAN, end]: requests/s and p99 (``services``:
    name -> {"rate": points, "p99": points}), CPU and RSS with a line per slot (``workers``:
    name -> {slot: {"cpu": points, "rss": points}}); points are (bucket start, value)."""
    names = sorted(set(services) | set(workers))
    if not names:
        return '<p class="empty">No samples in the last hour yet.</p>'
    out = []
    for name in names:
        s, w = services.get(name, {}), workers.get(name, {})
        charts = [chart(f"{name} requests/s", [("", s.get("rate", []))], end, fmt_number),
                  chart(f"{name} p99", [("", s.get("p99", []))], end, fmt_ms),
                  chart(f"{name} CPU % by worker",
                        [(f"slot {k}", v["cpu"]) for k, v in sorted(w.items())], end,
                        fmt_number),
                  chart(f"{name} RSS by worker",
                        [(f"slot {k}", v["rss"]) for k, v in sorted(w.items())], end,
                        fmt_bytes)]
        out.append(f'<div class="plots" data-service="{esc(name)}">{"".join(charts)}</div>')
    return "".join(out)


WIDTH, HEIGHT, TOP, BOTTOM = 300, 90, 16, 14


def chart(title: str, lines: list, end: float, fmt) -> str:
    """One small chart: a line per (label, points), y from 0 to the largest value."""
    values = [y for _, points in lines for _, y in points if y is not None]
    top = max(values, default=0) or 1.0
    start, inner, base = end - SPAN, HEIGHT - TOP - BOTTOM, HEIGHT - BOTTOM
    sx, sy = WIDTH / SPAN, inner / top
    paths = []
    for i, (label, points) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        tip = f"<title>{esc(label or title)}</title>"
        for segment in _segments(points):
            if len(segment) == 1:  # one bucket alone: a dot, as a line needs two
                (x, y), = segment
                paths.append(f'<circle cx="{(x - start) * sx:.1f}" cy="{base - y * sy:.1f}" '
                             f'r="2" fill="{colour}">{tip}</circle>')
                continue
            xy = " ".join([f"{(x - start) * sx:.1f},{base - y * sy:.1f}" for x, y in segment])
            paths.append(f'<polyline points="{xy}" fill="none" stroke="{colour}" '
                         f'stroke-width="1.5">{tip}</polyline>')
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" role="img" aria-label="{esc(title)}">'
            f"<title>{esc(title)}</title>"
            f'<text x="0" y="11" font-size="11" fill="#333">{esc(title)}</text>'
            f'<text x="{WIDTH}" y="11" font-size="10" fill="#666" text-anchor="end">'
            f"max {esc(fmt(max(values)) if values else '-')}</text>"
            f'<line x1="0" y1="{base}" x2="{WIDTH}" y2="{base}" stroke="#bbb"/>'
            f'<text x="0" y="{HEIGHT - 2}" font-size="9" fill="#666">-1h</text>'
            f'<text x="{WIDTH}" y="{HEIGHT - 2}" font-size="9" fill="#666" '
            f'text-anchor="end">now</text>{"".join(paths)}</svg>')


def _segments(points: list) -> list[list]:
    """Split a series where a value is missing or buckets are missing (the daemon was down,
    or the worker slot did not exist): a gap, not a straight line across it."""
    segments, current, last = [], [], None
    for x, y in points:
        if y is None or (last is not None and x - last > 2 * STEP):
            if current:
                segments.append(current)
            current = []
        if y is not None:
            current.append((x, y))
        last = x
    if current:
        segments.append(current)
    return segments
