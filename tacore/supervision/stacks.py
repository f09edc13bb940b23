"""Read the stack a worker's faulthandler writes, and make it point at source lines.

faulthandler (armed on SIGUSR1 in every worker) dumps all threads from inside its C signal
handler, so it works even when start() is blocked in C code with no Python bytecode running.
It prints file and line only; the daemon, on the same file system, adds each source line.
The worker writes "main-thread 0x..." first, so the dump can say which frame blocks start().
"""

from __future__ import annotations

import linecache
import os
import re

import tacore
from tacore.runtime.loader import INSTALLED
from tacore.runtime.spec import ENTRY_FILE

_FRAME = re.compile(r'^\s*File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>.*)$')
_THREAD = re.compile(r"^(?P<current>Current thread|Thread) (?P<ident>0x[0-9a-f]+)")
_MAIN = re.compile(rb"^main-thread (0x[0-9a-f]+)\n")


class StackReader:
    """Collects one worker's stack-pipe output; the dump is complete once the pipe goes quiet."""

    QUIET = 0.05  # faulthandler writes a whole dump within microseconds; 50 ms of silence ends it

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.main_ident: str | None = None
        self.buffer = bytearray()
        self.last_data_at: float | None = None

    def read(self, now: float) -> bool:
        """Drain the pipe; False once the writer side is closed (the worker exited)."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            self.buffer += chunk
            match = _MAIN.match(self.buffer)
            if match:
                self.main_ident = match.group(1).decode()
                del self.buffer[:match.end()]
            if self.buffer:
                self.last_data_at = now

    def start_dump(self):
        self.buffer.clear()
        self.last_data_at = None

    def dump_done(self, now: float) -> bool:
        return self.last_data_at is not None and now - self.last_data_at >= self.QUIET

    def close(self):
        os.close(self.fd)


def annotate(raw: str, main_ident: str | None) -> tuple[str, str | None]:
    """Add source lines to a faulthandler dump; return it and where the main thread is.

    ``blocked_at`` is the innermost main-thread frame of the operator's own code (not the
    standard library, site-packages or tacore: the service's line, not socket.py's), else the
    innermost main-thread frame; e.g. 'app/db.py:12 in start: conn.connect()'.
    Frames below the worker's entry point are the daemon's, copied by fork: they are cut.
    """
    out, own, innermost, in_main, cut, seen_main_frame = [], None, None, False, False, False
    for line in raw.splitlines():
        thread = _THREAD.match(line)
        if thread:
            in_main = _same_ident(thread.group("ident"), main_ident)
            cut = False
            out.append(line + ("  [main thread]" if in_main else ""))
            continue
        frame = _FRAME.match(line)
        if frame is None:
            out.append(line)
            continue
        if cut:
            continue
        path, number, func = frame.group("file"), frame.group("line"), frame.group("func")
        linecache.checkcache(path)  # the file may have changed since the daemon last read it
        source = linecache.getline(path, int(number)).strip()
        out.append(line + (f"\n    {source}" if source else ""))
        here = f"{path}:{number} in {func}" + (f": {source}" if source else "")
        if in_main and not seen_main_frame:
            innermost, seen_main_frame = here, True
        if in_main and own is None and _is_own_code(path):
            own = here
        if path == ENTRY_FILE and func == "run":
            out.append("  (frames below are the daemon's, from before the fork)")
            cut = True
    return "\n".join(out), own or innermost


_TACORE = os.path.join(os.path.dirname(tacore.__file__), "")


def _is_own_code(path: str) -> bool:
    return not path.startswith(INSTALLED) and not path.startswith(_TACORE)


def _same_ident(a: str, b: str | None) -> bool:
    return b is not None and int(a, 16) == int(b, 16)
