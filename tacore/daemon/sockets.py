"""The runtime directory, the one-daemon-per-directory lock, and binding endpoints safely.

Exit codes: 73 when a directory or socket file cannot be created, 69 when an endpoint is in
use or another daemon holds the runtime directory, 78 when the directory is unsafe.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import socket
import stat
from pathlib import Path

import zmq

from tacore.errors import EX_CANTCREAT, EX_CONFIG, EX_UNAVAILABLE, StartupError


def prepare_runtime_dir(path: Path, group: str | None = None) -> None:
    """Create the directory 0700 (0750 for ``group``), or check an existing one is ours and
    not writable by others."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if group is not None:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
            os.chmod(path, 0o750)
        info = path.stat()
    except OSError as e:
        raise StartupError(f"cannot create runtime_dir {path}: {e.strerror}; create it or "
                           "choose another [daemon] runtime_dir", EX_CANTCREAT) from None
    except KeyError:
        raise StartupError(f"[control] group {group!r} does not exist", EX_CONFIG) from None
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"runtime_dir {path} is not a directory", EX_CANTCREAT)
    if info.st_uid != os.getuid():
        raise StartupError(f"runtime_dir {path} belongs to uid {info.st_uid}, not to this user "
                           f"(uid {os.getuid()}); choose another [daemon] runtime_dir", EX_CONFIG)
    if info.st_mode & 0o022:
        raise StartupError(f"runtime_dir {path} is writable by others (mode "
                           f"{stat.S_IMODE(info.st_mode):o}); run: chmod 700 {path}", EX_CONFIG)


class DaemonLock:
    """An flock on runtime_dir/tacored.pid: released by the kernel however the daemon dies."""

    def __init__(self, runtime_dir: Path):
        self.path = runtime_dir / "tacored.pid"
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StartupError(f"cannot create {self.path}: {e.strerror}", EX_CANTCREAT) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise StartupError(f"another tacored (pid {other}) already runs on runtime_dir "
                               f"{runtime_dir}; stop it or choose another runtime_dir",
                               EX_UNAVAILABLE) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)


def bind(sock: zmq.Socket, endpoint: str, what: str, group: str | None = None) -> None:
    """Bind one endpoint; an ipc socket file is made 0600 (0660 for ``group``) and a live one
    is never stolen."""
    if not endpoint.startswith("ipc://"):
        _bind(sock, endpoint, what)
        return
    path = endpoint[len("ipc://"):]
    _check_ipc_path(path, what)
    old_umask = os.umask(0o177)  # the socket file is created 0600, with no window before chmod
    try:
        _bind(sock, endpoint, what)
    finally:
        os.umask(old_umask)
    if group is not None:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)


def _bind(sock: zmq.Socket, endpoint: str, what: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        code = EX_UNAVAILABLE if e.errno == errno.EADDRINUSE else EX_CANTCREAT
        raise StartupError(f"cannot bind {what} endpoint {endpoint}: {e.strerror}", code) from None


def _check_ipc_path(path: str, what: str) -> None:
    """Refuse a socket file another process is listening on; remove a stale one."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise StartupError(f"cannot bind {what} endpoint ipc://{path}: directory {directory} "
                           "does not exist", EX_CANTCREAT)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"cannot bind {what} endpoint: {path} exists and is not a socket",
                           EX_CANTCREAT)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left behind by a daemon that died
        return
    finally:
        probe.close()
    raise StartupError(f"{what} endpoint ipc://{path} is in use by another process",
                       EX_UNAVAILABLE)


def unlink_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        try:
            os.unlink(endpoint[len("ipc://"):])
        except FileNotFoundError:
            pass
