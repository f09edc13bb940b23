"""The runtime directory, the one-daemon-per-directory lock, and binding endpoints safely.

Exit codes: 73 when a directory or socket file cannot be created, 69 when an endpoint is in
use or another daemon holds the runtime directory, 78 when the directory is unsafe or a group
cannot be used. Every error names the setting that leads to the resource ("[broker] frontend"),
and the daemon adds the file, so the operator knows what to change.

Who may connect: a socket file is 0600, or 0660 and owned by the group its section names
(``[broker] group`` for the frontend, ``[control] group`` for the control socket; the backend
stays private). The runtime directory is 0700; 0750 and owned by the group when one group is
named; 0711 when two different groups are, because a directory has only one group: then anyone
may pass through it to a socket whose name they know, nobody but the daemon may list it, and
each socket file admits only its own group.
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

RUNTIME_DIR = "[daemon] runtime_dir"
# The setting that names each socket's endpoint, and the one that opens it to a group.
ENDPOINT_SETTING = {"frontend": "[broker] frontend", "backend": "[broker] backend",
                    "control": "[control] endpoint", "http": "[http] listen",
                    "remote": "[remote] frontend"}
GROUP_SETTING = {"frontend": "[broker] group", "control": "[control] group"}


def prepare_runtime_dir(path: Path, groups: dict[str, str | None] | None = None) -> None:
    """Create the directory 0700, or check an existing one is ours and not writable by others;
    then open it to the groups that may use a socket in it.

    ``groups`` maps a setting ("[broker] group") to the group it names, or None.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as e:
        raise StartupError(RUNTIME_DIR, f"cannot create {path}: {e.strerror}; create it, or "
                           "choose another runtime_dir", EX_CANTCREAT) from None
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(RUNTIME_DIR, f"{path} is not a directory; choose another "
                           "runtime_dir", EX_CANTCREAT)
    if info.st_uid != os.getuid():
        raise StartupError(RUNTIME_DIR, f"{path} belongs to uid {info.st_uid}, not to this "
                           f"user (uid {os.getuid()}); choose another runtime_dir", EX_CONFIG)
    if info.st_mode & 0o022:
        raise StartupError(RUNTIME_DIR, f"{path} is writable by others (mode "
                           f"{stat.S_IMODE(info.st_mode):o}); run: chmod 700 {path}", EX_CONFIG)
    named = {setting: name for setting, name in (groups or {}).items() if name is not None}
    if len(set(named.values())) == 1:
        setting, name = next(iter(named.items()))
        _give_to_group(path, setting, name)
        _chmod(path, 0o750, setting)
    elif named:
        _chmod(path, 0o711, RUNTIME_DIR)


class DaemonLock:
    """An flock on runtime_dir/tacored.pid: released by the kernel however the daemon dies."""

    def __init__(self, runtime_dir: Path):
        self.path = runtime_dir / "tacored.pid"
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StartupError(RUNTIME_DIR, f"cannot create {self.path}: {e.strerror}",
                               EX_CANTCREAT) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise StartupError(RUNTIME_DIR, f"another tacored (pid {other}) already runs on "
                               f"{runtime_dir}; stop it, or choose another runtime_dir",
                               EX_UNAVAILABLE) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)


def bind(sock: zmq.Socket, endpoint: str, what: str, group: str | None = None) -> None:
    """Bind one endpoint; an ipc socket file is made 0600 (0660 for ``group``) and a live one
    is never stolen."""
    setting = ENDPOINT_SETTING[what]
    if not endpoint.startswith("ipc://"):
        _bind(sock, endpoint, setting)
        return
    path = endpoint[len("ipc://"):]
    _check_ipc_path(endpoint, path, setting)
    old_umask = os.umask(0o177)  # the socket file is created 0600, with no window before chmod
    try:
        _bind(sock, endpoint, setting)
    finally:
        os.umask(old_umask)
    if group is None:
        return
    try:
        _give_to_group(Path(path), GROUP_SETTING[what], group)
        _chmod(Path(path), 0o660, GROUP_SETTING[what])
    except StartupError:
        sock.unbind(endpoint)
        unlink_ipc(endpoint)  # not yet in the daemon's list of files to remove
        raise


def _give_to_group(path: Path, setting: str, name: str) -> None:
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(setting, f"no group named {name!r} on this machine; create it "
                           "(groupadd), or name an existing group", EX_CONFIG) from None
    if os.stat(path).st_gid == gid:
        return  # the daemon's own group (the unit's Group=): no chown, which seccomp may forbid
    try:
        os.chown(path, -1, gid)
    except OSError as e:
        if gid == os.getegid() or gid in os.getgroups():
            fix = (f"the daemon's user is in {name}, so a system call filter forbids chown "
                   "(under systemd: SystemCallFilter=@chown)")
        else:
            fix = (f"the daemon's user (uid {os.getuid()}) must be a member of {name} (under "
                   f"systemd: Group={name} in the unit, as in systemd/tacore.service)")
        raise StartupError(setting, f"cannot give {path} to group {name}: {e.strerror}; {fix}",
                           EX_CONFIG) from None


def _chmod(path: Path, mode: int, setting: str) -> None:
    try:
        os.chmod(path, mode)
    except OSError as e:
        raise StartupError(setting, f"cannot make {path} mode {mode:04o}: {e.strerror}",
                           EX_CANTCREAT) from None


def _bind(sock: zmq.Socket, endpoint: str, setting: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        if e.errno == errno.EADDRINUSE:
            raise StartupError(setting, f"cannot bind {endpoint}: {e.strerror}; stop the "
                               "process that holds it, or choose another endpoint",
                               EX_UNAVAILABLE) from None
        raise StartupError(setting, f"cannot bind {endpoint}: {e.strerror}",
                           EX_CANTCREAT) from None


def _check_ipc_path(endpoint: str, path: str, setting: str) -> None:
    """Refuse a socket file another process is listening on; remove a stale one."""
    directory = os.path.dirname(path)
    try:
        problem = None if stat.S_ISDIR(os.stat(directory).st_mode) else "not a directory"
    except OSError as e:
        problem = e.strerror
    if problem:
        raise StartupError(setting, f"cannot bind {endpoint}: directory {directory}: "
                           f"{problem}; create it, or choose another endpoint", EX_CANTCREAT)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(setting, f"cannot bind {endpoint}: {path} exists and is not a "
                           "socket; remove it, or choose another endpoint", EX_CANTCREAT)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        _remove_stale(endpoint, path, setting)  # nobody listens: left by a daemon that died
        return
    except OSError as e:  # e.g. not open to this user: whether it is live cannot be known
        raise StartupError(setting, f"cannot bind {endpoint}: {path} exists and this user "
                           f"cannot tell whether it is in use ({e.strerror}); remove it, or "
                           "choose another endpoint", EX_CANTCREAT) from None
    finally:
        probe.close()
    raise StartupError(setting, f"cannot bind {endpoint}: address in use by another process; "
                       "stop it, or choose another endpoint", EX_UNAVAILABLE)


def _remove_stale(endpoint: str, path: str, setting: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StartupError(setting, f"cannot bind {endpoint}: a stale socket file {path} "
                           f"cannot be removed: {e.strerror}", EX_CANTCREAT) from None


def unlink_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        try:
            os.unlink(endpoint[len("ipc://"):])
        except FileNotFoundError:
            pass
