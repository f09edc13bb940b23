"""What the daemon shows: status and metrics, assembled from the supervisor and the broker,
and the dashboard's figures (daemon/web.py serves them over HTTP)."""

from __future__ import annotations

from collections import Counter

from tacore import __version__, health
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


# /api/workers: one object per worker with every field, null where unknown (external workers
# have no slot, pid or sampled figures; ours have no identity or node).
WORKER_FIELDS = ("service", "slot", "state", "pid", "external", "uptime", "state_for",
                 "last_seen", "requests", "request_age", "cpu_percent", "rss_bytes", "threads",
                 "fds", "restarts", "crashes", "last_exit", "backoff_remaining", "fatal_reason",
                 "next_retry_in", "draining", "replacing", "identity", "node", "start_timeout",
                 "starting_late")
EVENT_FIELDS = ("id", "ts", "event", "level", "service", "slot", "pid")
OUTPUT_LINE = 300  # characters of each output line an event carries, on the dashboard


def workers(daemon, current: dict) -> list[dict]:
    """Every worker of a status snapshot, flattened, with the same fields each. A worker
    STARTING for more than half its start_timeout is ``starting_late``."""
    rows = []
    for name, entry in current["services"].items():
        service = daemon.config.services.get(name)
        start_timeout = service.start_timeout if service else None
        for w in entry["workers"]:
            row = {field: w.get(field) for field in WORKER_FIELDS}
            if w["pid"] is None:  # the last process's figures are not this slot's now
                row.update(cpu_percent=None, rss_bytes=None, threads=None, fds=None)
            row.update(service=name, start_timeout=start_timeout,
                       starting_late=w["state"] == "STARTING" and start_timeout is not None
                       and w["state_for"] > start_timeout / 2)
            rows.append(row)
    return rows


def dashboard(daemon, now: float, events: int) -> dict:
    """The dashboard's figures: the status snapshot, each service's health verdict and its
    figures over the last sample interval, and the newest ``events``, newest first."""
    current = status(daemon, now)
    services = []
    for name, entry in current["services"].items():
        route = daemon.broker.routes.get(name.encode())
        recent = daemon.sampler.recent.get(name, {})
        own = [w for w in entry["workers"] if not w["external"]]
        problem = health.service_problem(name, entry)
        services.append({
            "name": name, "ready": entry["ready"], "min_ready": entry["min_ready"],
            "workers": len(own), "external": len(entry["workers"]) - len(own),
            "healthy": problem is None, "problem": problem, "queue": entry["queue"],
            "requests": entry["requests"], "per_second": recent.get("per_second"),
            "p50": recent.get("p50"), "p99": recent.get("p99"),
            "by_status": {k.decode(errors="replace"): v for k, v in route.by_status.items()}
            if route else {},
            "restarts": sum(w["restarts"] for w in own)})
    verdict = health.assess_health(current)
    return {"daemon": current["daemon"], "interval": daemon.config.state.sample_interval,
            "healthy": verdict["healthy"], "problems": verdict["problems"],
            "warnings": verdict["warnings"], "services": services,
            "workers": workers(daemon, current),
            "events": [_event(e) for e in reversed(daemon.store.events(limit=events))]}


def _event(event: dict) -> dict:
    """An event as the dashboard lists it: the common fields, blocked_at, the stack (or a
    traceback), the output tail, and the rest of its context as one line."""
    rest = {k: v for k, v in event.items()
            if k not in EVENT_FIELDS and k not in ("blocked_at", "stack", "exception", "output")}
    output = event.get("output")
    return {**{k: event.get(k) for k in EVENT_FIELDS},
            "blocked_at": event.get("blocked_at"),
            "stack": event.get("stack") or event.get("exception"),
            "output": [str(line)[:OUTPUT_LINE] for line in output] if output else None,
            "context": " ".join(f"{k}={v}" for k, v in rest.items())[:500]}
