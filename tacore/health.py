"""Health: whether each service can answer a request now, decided from plain data.

One place for what `tacorectl health` and /healthz say (``assess_health``), what systemd's
STATUS= line and readiness say (``pool_summary``), and when the broker answers a request
"503" service_fatal (``service_fatal``). The inputs are the status snapshot the daemon shows
(workers as dicts with a "state" name), or state names alone, so this module imports nothing
of tacore's and is tested without a daemon.
"""

from __future__ import annotations

from typing import Iterable

# The states status shows for a worker able to serve: READY, and BUSY (a READY worker that
# holds a request: the router's to know, not a lifecycle state).
SERVING = ("READY", "BUSY")
FATAL = "FATAL"
# Node mode: a worker READY here whose registration with the upstream broker is not (yet, or
# any more) acknowledged. Not serving; but start-up is over for systemd's readiness.
CONNECTING = "CONNECTING"


def ready(workers: Iterable[dict]) -> int:
    """How many of these workers (status dicts) are READY or BUSY."""
    return sum(w["state"] in SERVING for w in workers)


def service_fatal(states: Iterable[str]) -> bool:
    """True when a service has slots and every one is FATAL: nothing will serve it by itself."""
    states = list(states)
    return bool(states) and all(state == FATAL for state in states)


def assess_health(status: dict) -> dict:
    """Healthy when every service with workers has at least min_ready READY or BUSY workers.

    Each failing service gets one line saying why, e.g.
    "ta: 0/2 ready (min_ready 1); slot 0 FATAL: 6 failures within 60s (6 start_timeout)".
    """
    problems, warnings = [], []
    if status["daemon"]["stopping"]:
        problems.append("daemon: shutting down")
    persistence = status["daemon"]["persistence"]
    if persistence["enabled"] and persistence["degraded"]:
        warnings.append(f"persistence degraded ({persistence['degraded']}): events are kept "
                        "in memory only")
    for name, service in status["services"].items():
        problem = service_problem(name, service)
        if problem:
            problems.append(problem)
    return {"healthy": not problems, "problems": problems, "warnings": warnings}


def service_problem(name: str, service: dict) -> str | None:
    """Why this service (a status entry) cannot answer now, or None when it can or is not
    counted (no workers of tacore's own, or being removed)."""
    own = _own(service)
    if not own or service["removing"]:
        return None
    count = ready(own)
    if count >= service["min_ready"]:
        return None
    why = [f"slot {w['slot']} {w['state']}" + _detail(w) for w in own if w["state"] not in SERVING]
    return (f"{name}: {count}/{len(own)} ready (min_ready {service['min_ready']})"
            + (f"; {'; '.join(why)}" if why else ""))


def pool_summary(services: dict) -> tuple[str, bool]:
    """"echo 2/2, ta 2/2 ready" (with FATAL slots named), and whether every service has
    reached min_ready or has a FATAL slot (start-up is over either way)."""
    parts, fatal, settled = [], [], True
    for name, service in services.items():
        own = _own(service)
        count = ready(own)
        parts.append(f"{name} {count}/{len(own)}")
        dead = [f"{name}/{w['slot']}" + (f" (retry in {w['next_retry_in']:.0f}s)"
                                           if w["next_retry_in"] is not None else "")
                for w in own if w["state"] == FATAL]
        fatal += dead
        started = sum(w["state"] in (*SERVING, CONNECTING) for w in own)
        settled &= started >= service["min_ready"] or bool(dead)
    text = ", ".join(parts) + " ready" + (f"; FATAL: {', '.join(fatal)}" if fatal else "")
    return text, settled


def _own(service: dict) -> list[dict]:
    """The workers tacore forked: health counts these, not external ones."""
    return [w for w in service["workers"] if not w["external"]]


def _detail(worker: dict) -> str:
    if worker["state"] == FATAL:
        retry = worker.get("next_retry_in")
        return f": {worker['fatal_reason']}" + (
            f"; retried by itself in {retry:.0f}s" if retry is not None else "")
    if worker["state"] == CONNECTING and worker.get("upstream"):
        up = worker["upstream"]
        why = f" ({up['refused']})" if up.get("refused") else ""
        return f": not registered with {up['broker']} for {up['for']:.0f}s{why}"
    if worker["last_exit"]:
        return f" after {worker['last_exit']['reason']}"
    return ""
