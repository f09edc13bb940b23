"""What each path of the HTTP endpoint answers, read from the daemon's state in its loop.

Every page is built when it is asked for, from what the loop already holds (the status
snapshot, the broker's counters, the sampler's figures), except the plots: those come from
the state database, read incrementally (``Plots``), so an open dashboard costs the broker
next to nothing (bench/dashboard.py measures it).
"""

from __future__ import annotations

import json
import math
import time

from tacore.daemon import views
from tacore.health import assess_health
from tacore.observability import dashboard
from tacore.observability.http import TEXT, Reply
from tacore.observability.prometheus import exposition

JSON = "application/json"
HTML = "text/html; charset=utf-8"
EVENTS = 25  # events the dashboard lists, unless ?events=N (at most MAX_EVENTS)
MAX_EVENTS = 200


def routes(daemon) -> dict:
    """Path -> route (a callable taking the query's parameters and returning a Reply)."""
    plots = Plots(daemon.store)

    def view(query: dict) -> dict:
        events = _count(query.get("events"), EVENTS, MAX_EVENTS)
        figures = views.dashboard(daemon, time.monotonic(), events)
        now = time.time()
        # The script fetches the plots again after a new sample, and while the hour is
        # still being read (a piece per fetch: see Plots).
        figures.update(now=now, plots_version=daemon.sampler.count,
                       plots_complete=plots.complete(now))
        return figures

    def page(query: dict) -> Reply:
        figures = view(query)
        svg = plots.render(figures["plots_version"], figures["now"])
        return Reply(200, HTML, dashboard.page(figures, svg, figures["now"]),
                     (("Content-Security-Policy", dashboard.CSP),))

    def workers(query: dict) -> Reply:
        rows = views.workers(daemon, daemon.status())
        if "service" in query:
            rows = [w for w in rows if w["service"] == query["service"]]
        return Reply(200, JSON, json.dumps(rows).encode())

    table = {
        "/": page,
        "/api/dashboard": lambda query: Reply(200, JSON, dashboard.to_json(view(query))),
        "/api/plots": lambda query: Reply(200, HTML, plots.render(
            daemon.sampler.count, time.time()).encode()),
        "/api/workers": workers,
        "/metrics": lambda query: Reply(200, "text/plain; version=0.0.4; charset=utf-8",
                                        exposition(daemon.metrics())),
        "/healthz": lambda query: _health(daemon.status()),
        "/status": lambda query: Reply(200, JSON, json.dumps(daemon.status()).encode()),
        **{path: _asset(name, kind) for path, (name, kind) in dashboard.ASSETS.items()},
    }
    return {path: _timed(route) for path, route in table.items()}


class BadQuery(ValueError):
    pass


def _count(text: str | None, default: int, most: int) -> int:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()):  # ("²".isdigit() is true)
        raise BadQuery(f"expected a number, got {text!r}")
    return min(int(text), most)


def _health(status: dict) -> Reply:
    health = assess_health(status)
    body = "healthy\n" if health["healthy"] else "\n".join(health["problems"]) + "\n"
    return Reply(200 if health["healthy"] else 503, TEXT, body.encode())


def _asset(name: str, kind: str):
    return lambda query: Reply(200, kind, dashboard.asset(name))


def _timed(route):
    """Say how long the page took to build (Server-Timing: a browser's developer tools show
    it, and bench/dashboard.py reads it); a bad query string is a 400."""
    def timed(query: dict) -> Reply:
        t0 = time.perf_counter()
        try:
            reply = route(query)
        except BadQuery as e:
            return Reply(400, TEXT, f"{e}\n".encode())
        took = (time.perf_counter() - t0) * 1000
        return Reply(reply.status, reply.content_type, reply.body,
                     (*reply.headers, ("Server-Timing", f"build;dur={took:.2f}")))
    return timed


class Plots:
    """The last hour of samples as the dashboard plots them, in buckets of dashboard.STEP
    seconds, read from the state database in pieces so that no read stalls the loop: a whole
    hour of 64 workers is 46,000 rows, some 40 ms. The first drawing reads the newest
    ``CHUNK`` seconds; each drawing after it reads the buckets that are new since (the newest
    one again: it may have grown) and, until the hour is complete, ``CHUNK`` seconds more of
    the past. Each read is one range query of each samples table's ts index. The SVG is drawn
    again only when it would change: after a new sample, or while the hour is filling."""

    CHUNK = 600.0

    def __init__(self, store):
        self.store = store
        self.services: dict[str, dict[float, tuple]] = {}  # name -> bucket -> (rate, p99)
        self.workers: dict[tuple, dict[float, tuple]] = {}  # (name, slot) -> bucket -> (cpu, rss)
        self.newest: float | None = None  # the newest bucket read
        self.oldest: float | None = None  # the oldest bucket read
        self.samples = None  # the sample count the SVG was drawn at
        self.svg = ""

    def complete(self, now: float) -> bool:
        return self.oldest is not None and self.oldest <= _bucket(now - dashboard.SPAN)

    def render(self, samples: int, now: float) -> str:
        """The charts' SVG; ``samples`` (the count taken so far) says when there is more."""
        if samples != self.samples or not self.complete(now):
            self._read(now)
            self.samples = samples
            self.svg = dashboard.plots(*self._series(), now)
        return self.svg

    def _read(self, now: float) -> None:
        first = _bucket(now - dashboard.SPAN)
        if self.newest is None:  # the first read: the newest CHUNK seconds
            self.newest = self.oldest = max(first, _bucket(now - self.CHUNK))
        elif self.oldest > first:  # then CHUNK seconds more of the past each time
            start = max(first, self.oldest - self.CHUNK)
            self._take(start, self.oldest)
            self.oldest = start
        self._take(self.newest, math.inf)
        for table in (self.services, self.workers):
            for key, buckets in list(table.items()):
                for bucket in [b for b in buckets if b < first]:
                    del buckets[bucket]
                if not buckets:
                    del table[key]

    def _take(self, since: float, until: float) -> None:
        """The buckets from ``since`` to ``until``, over what was read of them before."""
        step, newest = dashboard.STEP, self.newest
        # One bucket before: a rate needs the sample before the first one read.
        for name, bucket, rate, p99 in self.store.service_series(since - step, step, until):
            if bucket >= since:
                self.services.setdefault(name, {})[bucket] = (rate, p99)
                newest = max(newest, bucket)
        for name, slot, bucket, cpu, rss in self.store.worker_series(since, step, until):
            self.workers.setdefault((name, slot), {})[bucket] = (cpu, rss)
            newest = max(newest, bucket)
        self.newest = newest

    def _series(self) -> tuple[dict, dict]:
        services = {name: {"rate": [(b, v[0]) for b, v in sorted(buckets.items())],
                           "p99": [(b, v[1]) for b, v in sorted(buckets.items())]}
                    for name, buckets in self.services.items()}
        workers: dict = {}
        for (name, slot), buckets in self.workers.items():
            workers.setdefault(name, {})[slot] = {
                "cpu": [(b, v[0]) for b, v in sorted(buckets.items())],
                "rss": [(b, v[1]) for b, v in sorted(buckets.items())]}
        return services, workers


def _bucket(ts: float) -> float:
    """The start of the plots' bucket that holds ``ts``."""
    return math.floor(ts / dashboard.STEP) * dashboard.STEP
