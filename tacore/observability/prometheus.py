"""The Prometheus text exposition of a metrics snapshot, written by prometheus_client.

Metric names (documented in the README):
  tacore_requests_total{service,status}          counter
  tacore_request_duration_seconds{service}       histogram
  tacore_queue_length{service}                   gauge
  tacore_workers{service,state}                  gauge
  tacore_worker_restarts_total{service}          counter
  tacore_worker_cpu_percent{service,slot}        gauge
  tacore_worker_rss_bytes{service,slot}          gauge
  tacore_worker_threads{service,slot}            gauge
  tacore_worker_open_fds{service,slot}           gauge
  tacore_auth_refused_total{domain}              counter
  tacore_daemon_cpu_percent, tacore_daemon_rss_bytes, tacore_loop_lag_seconds,
  tacore_persistence_degraded                    gauges
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)


def exposition(metrics: dict) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)


class _Snapshot:
    def __init__(self, metrics: dict):
        self.metrics = metrics

    def collect(self):
        services, workers, daemon = (self.metrics["services"], self.metrics["workers"],
                                     self.metrics["daemon"])
        requests = CounterMetricFamily("tacore_requests", "Replies sent to clients, by status.",
                                       labels=["service", "status"])
        duration = HistogramMetricFamily("tacore_request_duration_seconds",
                                         "Time from a request's arrival to its reply.",
                                         labels=["service"])
        queue = GaugeMetricFamily("tacore_queue_length", "Requests waiting for a free worker.",
                                  labels=["service"])
        states = GaugeMetricFamily("tacore_workers", "Workers by state.",
                                   labels=["service", "state"])
        restarts = CounterMetricFamily("tacore_worker_restarts", "Worker restarts.",
                                       labels=["service"])
        for name, s in services.items():
            for status, count in s["by_status"].items():
                requests.add_metric([name, status], count)
            latency = s["latency"]
            duration.add_metric([name], [(_le(b), c) for b, c in latency["buckets"]],
                                latency["sum"])
            queue.add_metric([name], s["queue"])
            for state, count in s["workers_by_state"].items():  # every state, zeros too
                states.add_metric([name, state], count)
            restarts.add_metric([name], s["restarts"])
        yield from (requests, duration, queue, states, restarts)
        yield from self._workers(workers)
        refused = CounterMetricFamily("tacore_auth_refused",
                                      "CURVE clients refused (key not authorized), by ZAP domain.",
                                      labels=["domain"])
        for domain, count in daemon["auth_refused"].items():
            refused.add_metric([domain], count)
        yield refused
        for name, key, text in (
                ("tacore_daemon_cpu_percent", "cpu_percent",
                 "CPU of the daemon process, percent of one core."),
                ("tacore_daemon_rss_bytes", "rss_bytes", "Resident memory of the daemon process."),
                ("tacore_loop_lag_seconds", "loop_lag_seconds",
                 "Largest lateness of the daemon's loop over the last sample interval."),
                ("tacore_persistence_degraded", "persistence_degraded",
                 "1 while the state database is unusable.")):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], float(daemon[key] or 0))
            yield gauge

    @staticmethod
    def _workers(workers):
        families = {key: GaugeMetricFamily(f"tacore_worker_{name}", text, labels=["service", "slot"])
                    for key, name, text in (
                        ("cpu_percent", "cpu_percent", "Worker CPU, percent of one core."),
                        ("rss_bytes", "rss_bytes", "Worker resident memory."),
                        ("threads", "threads", "Worker threads."),
                        ("fds", "open_fds", "Worker open file descriptors."))}
        for w in workers:
            for key, family in families.items():
                if w.get(key) is not None:
                    family.add_metric([w["service"], str(w["slot"])], w[key])
        yield from families.values()


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
