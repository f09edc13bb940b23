"""Every sample_interval: the daemon's own figures, each service's latency over the interval,
and the rows the state database keeps of workers, services and the daemon."""

from __future__ import annotations

import psutil


class Sampler:
    def __init__(self):
        self.me = psutil.Process()
        self.figures = {"cpu_percent": None, "rss_bytes": None, "loop_lag_seconds": 0.0}
        self.marks: dict = {}  # service -> its latency histogram at the last sample
        self.marked_at: float | None = None  # when (monotonic) the marks were taken
        self.count = 0  # samples taken: a new one means new rows in the state database
        self.recent: dict = {}  # service name -> quantiles and replies/s over the last interval

    def daemon(self, loop_lag: float) -> None:
        try:
            with self.me.oneshot():
                self.figures = {"cpu_percent": self.me.cpu_percent(None),
                                "rss_bytes": self.me.memory_info().rss,
                                "loop_lag_seconds": round(loop_lag, 6)}
        except psutil.Error:
            pass

    def latency(self, routes: dict, now: float) -> None:
        elapsed = now - self.marked_at if self.marked_at is not None else None
        self.marked_at, self.count = now, self.count + 1
        for name in [n for n in self.marks if n not in routes]:
            del self.marks[name]  # a service that is gone
            self.recent.pop(name.decode(errors="replace"), None)
        for name, route in routes.items():
            mark = self.marks.get(name)
            window = route.latency.since(mark) if mark else route.latency
            self.marks[name] = route.latency.copy()
            summary = window.summary()
            # Replies per second (each reply is one observation), null without an interval.
            summary["per_second"] = round(window.count / elapsed, 3) \
                if mark and elapsed else None
            self.recent[name.decode(errors="replace")] = summary


def rows(metrics: dict, ts: float) -> dict[str, list[tuple]]:
    """The state database's sample rows, by table, from a metrics snapshot."""
    d = metrics["daemon"]
    return {
        "worker_samples": [(ts, w["service"], w["slot"], w["pid"], w["state"], w["cpu_percent"],
                            w["rss_bytes"], w["threads"], w["fds"], w["requests"])
                           for w in metrics["workers"]],
        "service_samples": [(ts, name, s["requests"], s["errors"], s["queue"], s["ready"],
                             *(s["recent"].get(q) for q in ("p50", "p90", "p99")))
                            for name, s in metrics["services"].items()],
        "daemon_samples": [(ts, d["cpu_percent"], d["rss_bytes"], d["loop_lag_seconds"])],
    }
