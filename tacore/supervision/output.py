"""A worker's stdout and stderr: read from pipes by the daemon's loop, split into lines,
attributed, rate-limited, kept in a ring per slot for ``tacorectl logs``.

Each worker's stdout and stderr are pipes the spawner makes at the fork; the daemon polls the
read ends like any other descriptor (no thread). A readable pipe is read once (at most
READ_SIZE bytes), so a chatty worker never holds the loop; lines longer than MAX_LINE are cut.
A line that is a JSON object with an "event" key is the worker's own structured log (the
worker runtime writes JSON, stdlib ``logging`` included): it is logged as that event. Any
other line is a ``worker.output`` event. Beyond LINES_PER_SECOND a second, lines are counted,
not kept, and one ``worker.output_dropped`` says how many.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque

READ_SIZE = 65536
MAX_LINE = 8192  # bytes; the rest of a longer line is dropped (the line says so)
LINES_PER_SECOND = 1000  # per worker; more are dropped and counted
RING = 500  # lines kept per slot, across its restarts...
RING_BYTES = 256 * 1024  # ...and at most this much text (64 slots: 16 MiB at worst)
TAIL = 20  # lines attached to worker.exited, worker.start_timeout and worker.fatal


class Ring:
    """A slot's recent output: (seq, wall time, pid, stream, line), oldest first; at most
    RING lines and RING_BYTES of text."""

    sequence = 0  # one counter for all rings, so `logs -f` can ask for "after N"

    def __init__(self):
        self.lines: deque = deque()
        self.size = 0

    def add(self, pid: int, stream: str, line: str) -> None:
        Ring.sequence += 1
        self.lines.append((Ring.sequence, time.time(), pid, stream, line))
        self.size += len(line)
        while len(self.lines) > RING or self.size > RING_BYTES:
            self.size -= len(self.lines.popleft()[4])

    def tail(self, count: int = TAIL) -> list[str]:
        return [entry[4] for entry in list(self.lines)[-count:]]


class OutputReader:
    """One pipe (stdout or stderr) of one worker."""

    def __init__(self, fd: int, stream: str, pid: int, ring: Ring, emit_line):
        self.fd, self.stream, self.pid, self.ring = fd, stream, pid, ring
        self.emit_line = emit_line  # (stream, line, parsed event or None)
        os.set_blocking(fd, False)
        self.partial = bytearray()
        self.cut = False  # dropping the rest of a line longer than MAX_LINE
        self.window, self.count, self.dropped = 0.0, 0, 0

    def read(self, now: float) -> bool:
        """Read what is there (once); False when the worker's end is closed."""
        try:
            chunk = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            self.flush(now)
            return False
        self._split(chunk, now)
        return True

    def drain(self, now: float, limit: int = 16) -> None:
        """At exit: what is still in the pipe (bounded), then the partial last line."""
        for _ in range(limit):
            if not self.read(now):
                return
        self.flush(now)

    def flush(self, now: float) -> None:
        if self.partial:
            self._line(bytes(self.partial), now)
            self.partial.clear()
        self.report()

    def report(self) -> None:
        """Say how many lines were dropped since the last report (at a window's end, at exit,
        and every sample_interval, so a flood that stopped is reported too)."""
        if self.dropped:
            self.emit_line(self.stream, None, {"dropped": self.dropped})
            self.dropped = 0

    def close(self) -> None:
        os.close(self.fd)

    def _split(self, chunk: bytes, now: float) -> None:
        if self.count >= LINES_PER_SECOND and now - self.window < 1.0:
            # Over the limit for this second: count whole lines at C speed and drop them, so
            # a flood costs the loop one read and one count per 64 KiB, not a line each.
            lines = chunk.count(b"\n")
            if lines:
                self.dropped += lines
                self.partial.clear()
                tail = chunk[chunk.rfind(b"\n") + 1:]
                self.cut = len(tail) > MAX_LINE  # (then the rest of that line goes too)
                if not self.cut:
                    self.partial += tail
                return
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                rest = chunk[start:]
                if not self.cut:
                    room = MAX_LINE - len(self.partial)
                    self.partial += rest[:room]
                    if len(rest) > room:
                        self._line(bytes(self.partial) + b" [cut]", now)
                        self.partial.clear()
                        self.cut = True
                return
            if self.cut:
                self.cut = False
            else:
                piece = bytes(self.partial) + chunk[start:end]
                self.partial.clear()
                if len(piece) > MAX_LINE:
                    piece = piece[:MAX_LINE] + b" [cut]"
                self._line(piece, now)
            start = end + 1

    def _line(self, raw: bytes, now: float) -> None:
        if now - self.window >= 1.0:
            self.report()
            self.window, self.count = now, 0
        self.count += 1
        if self.count > LINES_PER_SECOND:
            self.dropped += 1
            return
        line = raw.decode(errors="replace").rstrip("\r")
        parsed = None
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("event"), str):
                parsed = None
        self.ring.add(self.pid, self.stream, line)
        self.emit_line(self.stream, line, parsed)
