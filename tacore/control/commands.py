"""Control commands: one small function each, in an explicit table.

A command takes the daemon and its arguments and returns plain data. Commands that change
things record intent for the loop to carry out (none yet).
"""

from __future__ import annotations

from tacore import __version__

SERVING = ("READY", "BUSY")


def status(daemon, args: dict) -> dict:
    return daemon.status()


def health(daemon, args: dict) -> dict:
    return assess_health(daemon.status())


def ping(daemon, args: dict) -> dict:
    return {"pong": True, "pid": daemon.pid, "version": __version__,
            "frontend": list(daemon.config.broker.frontend)}


COMMANDS = {"status": status, "health": health, "ping": ping}


def assess_health(status: dict) -> dict:
    """Healthy when every service with workers has at least min_ready READY or BUSY workers.

    Each failing service gets one line saying why, e.g.
    "ta: 0/2 ready (min_ready 1); slot 0 FATAL: 6 failures within 60s (6 start_timeout)".
    """
    problems = []
    if status["daemon"]["stopping"]:
        problems.append("daemon: shutting down")
    for name, service in status["services"].items():
        own = [w for w in service["workers"] if not w["external"]]
        if not own:
            continue
        ready = sum(w["state"] in SERVING for w in own)
        if ready >= service["min_ready"]:
            continue
        why = [f"slot {w['slot']} {w['state']}" + _detail(w)
               for w in own if w["state"] not in SERVING]
        problems.append(f"{name}: {ready}/{len(own)} ready (min_ready {service['min_ready']})"
                        + (f"; {'; '.join(why)}" if why else ""))
    return {"healthy": not problems, "problems": problems}


def _detail(worker: dict) -> str:
    if worker["state"] == "FATAL":
        return f": {worker['fatal_reason']}"
    if worker["last_exit"]:
        return f" after {worker['last_exit']['reason']}"
    return ""
