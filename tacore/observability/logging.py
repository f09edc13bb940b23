"""structlog set-up: JSON lines when stderr is not a terminal, readable lines when it is.

Every line is written with a single write() so the daemon's and the workers' lines, which share
one stderr, never interleave mid-line.
"""

from __future__ import annotations

import logging
import sys
import traceback

import structlog

from tacore.events import Event


def _stack_as_exception(logger, method, event_dict):
    """On a console, print a captured stack as a block under the line, like a traceback."""
    stack = event_dict.pop("stack", None)
    if stack:
        event_dict["exception"] = stack
    return event_dict


def configure_logging(level: str, fmt: str, stream=None):
    """Configure structlog for this process; returns a logger."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [structlog.processors.dict_tracebacks,
                       structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        processors += [_stack_as_exception, structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger()


class _ToStructlog(logging.Handler):
    """The stdlib's log records as structlog ``worker.log`` events (message, logger, level)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {"message": record.getMessage(), "logger": record.name}
            if record.exc_info:
                fields["exception"] = "".join(traceback.format_exception(*record.exc_info))
            structlog.get_logger().log(record.levelno, "worker.log", **fields)
        except Exception:
            self.handleError(record)


def route_stdlib_logging(level: str) -> None:
    """Send the root logger (and so every library's) through structlog, at ``level``."""
    logging.basicConfig(handlers=[_ToStructlog()], level=level.upper(), force=True)


def log_event(log, event: Event) -> None:
    """Write one lifecycle event as one line, at its level."""
    getattr(log, event.level)(event.name, **event.context)
