"""Why this process may not connect to an ipc socket, in words the caller can act on.

ZeroMQ connects ipc endpoints in the background and retries quietly, so a socket file the
caller may not use shows up as silence (a timeout), never as an error. The clients ask here
before connecting, and again after a timeout, and report the answer instead: the file, its mode
and group, and what to do (join the group, or log in again after joining it). Connecting to a
Unix socket needs write permission on the file and search permission on every directory above.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

# Ask with the effective ids, as the kernel does on connect(), where the platform can.
_EFFECTIVE = os.access in os.supports_effective_ids


def denied(endpoint: str, opened_by: str) -> str | None:
    """Why this process may not connect to ``endpoint``; None if it may, if the endpoint is not
    ipc, or if the file does not exist (yet). ``opened_by`` names the daemon's setting that
    opens the socket to a group, e.g. "[broker] group"."""
    if not endpoint.startswith("ipc://"):
        return None
    path = Path(endpoint[len("ipc://"):])
    if _may(path, os.W_OK):
        return None
    for directory in reversed(path.parents):  # from / down: the first one we cannot enter
        try:
            info = os.stat(directory)
        except OSError:
            return None  # a directory that does not exist: nothing is refused, nothing is there
        if not _may(directory, os.X_OK):
            return _explain(path, directory, info, 0o010, "enter", opened_by)
    try:
        info = os.stat(path)
    except OSError:
        return None
    return _explain(path, path, info, 0o020, "connect to", opened_by)


def _may(path: Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=_EFFECTIVE)


def _explain(socket_path: Path, where: Path, info: os.stat_result, group_bit: int, verb: str,
             opened_by: str) -> str:
    mode, gid = stat.S_IMODE(info.st_mode), info.st_gid
    group, user = _group_name(gid), _user_name()
    head = f"permission denied: {socket_path}"
    if where != socket_path:
        head += f": its directory {where}"
    head += f" (mode {mode:04o}, group {group})"
    if not mode & group_bit:
        return f"{head}: only its owner may {verb} it; the daemon opens it to a group with " \
               f"{opened_by}"
    if gid == os.getegid() or gid in os.getgroups():
        return f"{head}: this process is in group {group} and still may not {verb} it"
    if user in _members(gid):
        return f"{head}: user {user} was added to group {group} after this login session " \
               f"started; log in again (or run: newgrp {group})"
    return f"{head}: user {user} is not in group {group}, the only group that may {verb} " \
           f"it; ask an administrator to add you (usermod -aG {group} {user}), then log in again"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _members(gid: int) -> list[str]:
    try:
        return grp.getgrgid(gid).gr_mem
    except KeyError:
        return []
