"""Control commands: one small function each, in an explicit table.

A command takes the daemon and its arguments and returns plain data, or a ``Later`` that the
loop resolves (a stack dump takes a few milliseconds to arrive). Mutating commands record
intent; the loop carries it out. Read-only commands: status, health, ping, dump, events,
metrics. Mutating: restart, stop, start, scale, reload, shutdown, log_level.
"""

from __future__ import annotations

import time

from tacore import __version__
from tacore.config import LOG_LEVELS
from tacore.health import assess_health
from tacore.observability.prometheus import exposition


class CommandError(Exception):
    """The command cannot be done as asked (unknown service, bad argument): told, not logged."""


class Later:
    """An answer the loop gives later; the server binds where it goes."""

    def __init__(self):
        self.deliver = None

    def resolve(self, result) -> None:
        if self.deliver is not None:
            self.deliver(result)


def status(daemon, args: dict) -> dict:
    return daemon.status()


def health(daemon, args: dict) -> dict:
    return assess_health(daemon.status())


def ping(daemon, args: dict) -> dict:
    return {"pong": True, "pid": daemon.pid, "version": __version__,
            "frontend": list(daemon.config.broker.frontend)}


def restart(daemon, args: dict) -> dict:
    service, slot = _target(args)
    return _on_slots(daemon.supervisor.restart, service, slot)


def stop(daemon, args: dict) -> dict:
    service, slot = _target(args)
    return _on_slots(daemon.supervisor.stop, service, slot)


def start(daemon, args: dict) -> dict:
    service, slot = _target(args)
    return _on_slots(daemon.supervisor.start_slots, service, slot)


def scale(daemon, args: dict) -> dict:
    service, workers = args.get("service"), args.get("workers")
    if not isinstance(service, str) or isinstance(workers, bool) or not isinstance(workers, int) \
            or workers < 0:
        raise CommandError("scale takes a service name and a number of workers >= 0")
    return _on_slots(daemon.supervisor.scale, service, workers)


def reload(daemon, args: dict) -> dict:
    return daemon.reload()


def dump(daemon, args: dict) -> Later:
    service, slot = _target(args)
    if slot is None:
        raise CommandError("dump takes SERVICE/SLOT")
    later = Later()
    _on_slots(daemon.supervisor.dump, service, slot, reply=later.resolve)
    return later


def events(daemon, args: dict) -> list[dict]:
    since, service, after_id = args.get("since"), args.get("service"), args.get("after_id")
    limit = args.get("limit", 1000)
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))):
        raise CommandError("since must be a Unix time in seconds")
    if service is not None and not isinstance(service, str):
        raise CommandError("service must be a name")
    for name, value in (("after_id", after_id), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise CommandError(f"{name} must be a whole number >= 0")
    return daemon.events(since=since, service=service, after_id=after_id,
                         limit=min(limit, 100_000))


def logs(daemon, args: dict) -> list[dict]:
    """Recent output of every slot (or of SERVICE, or SERVICE/SLOT), oldest first: the last
    ``lines`` lines, or those after ``after`` (a ``seq`` from an earlier answer)."""
    target, lines, after = args.get("target"), args.get("lines", 100), args.get("after")
    for name, value in (("lines", lines), ("after", after)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise CommandError(f"{name} must be a whole number >= 0")
    service, index = _target(args) if target else (None, None)
    return _on_slots(daemon.supervisor.output, service, index, lines=lines, after=after)


def metrics(daemon, args: dict):
    if args.get("format") == "prometheus":
        return exposition(daemon.metrics()).decode()
    return daemon.metrics()


def log_level(daemon, args: dict) -> dict:
    level = args.get("level")
    if level not in LOG_LEVELS:
        raise CommandError(f"level must be one of {', '.join(LOG_LEVELS)}")
    daemon.set_log_level(level)
    return {"log_level": level}


def shutdown(daemon, args: dict) -> dict:
    daemon.shutdown(time.monotonic(), "tacorectl shutdown")
    return {"stopping": True}


COMMANDS = {"status": status, "health": health, "ping": ping, "restart": restart, "stop": stop,
            "start": start, "scale": scale, "reload": reload, "dump": dump,
            "shutdown": shutdown, "events": events, "metrics": metrics,
            "log_level": log_level, "logs": logs}


def _target(args: dict) -> tuple[str, int | None]:
    """"SERVICE" or "SERVICE/SLOT"."""
    target = args.get("target")
    if not isinstance(target, str) or not target:
        raise CommandError("name a SERVICE or SERVICE/SLOT")
    service, _, slot = target.partition("/")
    if slot and not slot.isdigit():
        raise CommandError(f"slot must be a number, got {slot!r}")
    return service, int(slot) if slot else None


def _on_slots(operation, service, arg, **kw):
    try:
        return operation(service, arg, time.monotonic(), **kw)
    except (KeyError, ValueError) as e:
        raise CommandError(e.args[0]) from None
