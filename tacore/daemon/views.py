"""What the daemon shows: status and metrics, assembled from the supervisor and the broker,
and the HTTP endpoint's pages of them."""

from __future__ import annotations

import json
from collections import Counter

from tacore import __version__, health
from tacore.observability.prometheus import exposition
from tacore.supervision.states import State

NO_FIGURES = {"cpu_percent": None, "rss_bytes": None}


def status(daemon, now: float) -> dict:
    services = {}
    uplinks = daemon.uplinks
    for name, entry in daemon.supervisor.snapshot(now).items():
        identities = [s.worker.identity if s.worker else None
                      for s in daemon.supervisor.services[name].slots]
        upstream = uplinks.serves_upstream(name)
        for worker, identity in zip(entry["workers"], identities):
            link = daemon.broker.link(identity) if identity else None
            worker.update(_link_view(link, now))
            if worker["state"] == "READY" and link is not None and link.inflight:
                worker["state"] = "BUSY"  # busy is the broker's to know
            if upstream:  # node mode: serving means registered upstream
                worker["upstream"] = uplinks.view(identity, now) if identity else None
                if worker["state"] in health.SERVING and not (
                        worker["upstream"] and worker["upstream"]["registered"]):
                    worker["state"] = health.CONNECTING
        service = entry["config"]
        services[name] = {"workers": entry["workers"], "configured": service.workers,
                          "desired": entry["desired"], "min_ready": service.min_ready,
                          "rolling": entry["rolling"], "removing": entry["removing"]}
    names = daemon.guard.names if daemon.guard is not None else {}
    for link in daemon.broker.external_workers():
        name = link.route.name.decode(errors="replace")
        entry = services.setdefault(name, {"workers": [], "configured": 0, "desired": 0,
                                           "min_ready": 0, "rolling": 0, "removing": False})
        entry["workers"].append({
            "slot": None, "state": "BUSY" if link.current else "READY", "pid": None,
            "restarts": 0, "crashes": 0, "uptime": round(now - link.registered, 3),
            "state_for": None, "last_exit": None, "backoff_remaining": None,
            "fatal_reason": None, "next_retry_in": None,
            "draining": None, "replacing": False, **NO_FIGURES, "external": True,
            "identity": link.identity.hex(), "node": names.get(link.key),
            **_link_view(link, now)})
    for name, entry in services.items():
        route = daemon.broker.routes.get(name.encode())
        entry["ready"] = health.ready(entry["workers"])
        entry["queue"] = len(route.queue) if route else 0
        entry["requests"] = route.requests if route else 0
    return {"daemon": {"pid": daemon.pid, "spawner_pid": daemon.spawner.pid,
                       "version": __version__,
                       "config": str(daemon.config.path),
                       "uptime": round(now - daemon.started, 3),
                       "started_at": daemon.started_wall, "stopping": daemon.stopping,
                       "frontend": list(daemon.config.broker.frontend),
                       "remote_frontend": list(daemon.config.remote.frontend),
                       "persistence": daemon.store.status(), **daemon.sampler.figures},
            "services": services}


def _link_view(link, now: float) -> dict:
    """What the broker knows of a worker: heard from when, served how many, busy how long."""
    if link is None:
        return {"last_seen": None, "requests": 0, "request_age": None}
    return {"last_seen": round(now - link.last_seen, 3), "requests": link.requests,
            "request_age": round(now - link.current.arrived, 3) if link.current else None}


def metrics(daemon, now: float) -> dict:
    """Counters, latency histograms (cumulative, and quantiles over the last sample interval)
    and sampled figures: what `tacorectl metrics`, /metrics and the state database show."""
    current = status(daemon, now)
    services = {}
    for name, entry in current["services"].items():
        route = daemon.broker.routes.get(name.encode())
        by_status = {k.decode(errors="replace"): v for k, v in route.by_status.items()} \
            if route else {}
        latency = route.latency if route else None
        services[name] = {
            "requests": entry["requests"], "by_status": by_status,
            "errors": sum(v for k, v in by_status.items() if k != "200"),
            "queue": entry["queue"], "ready": entry["ready"],
            "workers_by_state": {**dict.fromkeys(map(str, State), 0),  # every state, zeros too
                                 **Counter(w["state"] for w in entry["workers"])},
            "restarts": sum(w["restarts"] for w in entry["workers"]),
            "latency": {"buckets": latency.cumulative() if latency else [],
                        **(latency.summary() if latency else {"count": 0, "sum": 0.0})},
            "recent": daemon.sampler.recent.get(name, {}),
        }
    workers = [{"service": name, "slot": w["slot"], "pid": w["pid"], "state": w["state"],
                "requests": w["requests"], "cpu_percent": w["cpu_percent"],
                "rss_bytes": w["rss_bytes"], "threads": w.get("threads"), "fds": w.get("fds")}
               for name, entry in current["services"].items() for w in entry["workers"]
               if not w["external"]]
    d = current["daemon"]
    return {"daemon": {"uptime": d["uptime"], "cpu_percent": d["cpu_percent"],
                       "rss_bytes": d["rss_bytes"], "loop_lag_seconds": d["loop_lag_seconds"],
                       "persistence_degraded": int(d["persistence"]["degraded"] is not None
                                                   and d["persistence"]["enabled"]),
                       "unknown_service_requests": daemon.broker.unknown_service,
                       "auth_refused": dict(daemon.guard.refused) if daemon.guard else {}},
            "services": services, "workers": workers}


def http_pages(daemon) -> dict:
    """The HTTP endpoint's pages: path -> a callable giving (status, content type, body)."""
    def metrics_page():
        return 200, "text/plain; version=0.0.4; charset=utf-8", exposition(daemon.metrics())

    def health_page():
        verdict = health.assess_health(daemon.status())
        body = "healthy\n" if verdict["healthy"] else "\n".join(verdict["problems"]) + "\n"
        return (200 if verdict["healthy"] else 503), "text/plain; charset=utf-8", body.encode()

    def status_page():
        return 200, "application/json", json.dumps(daemon.status()).encode()

    return {"/metrics": metrics_page, "/healthz": health_page, "/status": status_page}
