"""Who may connect: [broker] group opens the frontend to a group; anyone else is told why not.

The tests that act as another user run the real tacorectl or client library in a process that
drops from root to ``nobody`` (tests/as_user.py), with or without the daemon's group.
"""

import grp
import json
import os
import pwd
import socket
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ECHO = {"echo": {"handler": "tests.workers:Echo"}}
IS_ROOT = os.getuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="acting as another user (os.setuid) and "
                                                    "giving files to other groups need root")


def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def spare_groups(count: int) -> list[str]:
    """Existing groups that ``nobody`` is not in (skip the test if there are too few)."""
    found = []
    for name in ("users", "daemon", "adm", "staff", "sys", "operator"):
        try:
            g = grp.getgrnam(name)
        except KeyError:
            continue
        if g.gr_gid != nobody().pw_gid and "nobody" not in g.gr_mem:
            found.append(name)
    if len(found) < count:
        pytest.skip(f"needs {count} groups that nobody is not in; found {found}")
    return found[:count]


def as_nobody(*args, groups=(), timeout=20) -> subprocess.CompletedProcess:
    """tacorectl, tacored or the client (tests/as_user.py) as nobody, also in ``groups``."""
    gids = [nobody().pw_gid] + [grp.getgrnam(g).gr_gid for g in groups]
    return subprocess.run([sys.executable, "-m", "tests.as_user", str(nobody().pw_uid),
                           ",".join(map(str, gids)), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def mode_and_group(path) -> tuple[int, str]:
    info = os.stat(path)
    return stat.S_IMODE(info.st_mode), grp.getgrgid(info.st_gid).gr_name


@pytest.fixture
def open_workdir(workdir):
    """The work directory, passable by other users (the daemon's own directories are not)."""
    os.chmod(workdir, 0o755)
    return workdir


@needs_root
def test_broker_group_opens_the_frontend_only(start_daemon):
    """[broker] group: runtime_dir 0750 and frontend.sock 0660 with that group; the control
    and backend sockets stay 0600."""
    [group] = spare_groups(1)
    d = start_daemon(ECHO, broker={"group": group})
    assert mode_and_group(d.runtime) == (0o750, group)
    assert mode_and_group(d.runtime / "frontend.sock") == (0o660, group)
    for private in ("control.sock", "backend.sock", "tacored.pid"):
        assert stat.S_IMODE(os.stat(d.runtime / private).st_mode) == 0o600, private


@needs_root
def test_two_groups_make_the_runtime_dir_passable_but_not_listable(start_daemon):
    """Different [broker] and [control] groups: runtime_dir 0711, each socket with its group."""
    clients, operators = spare_groups(2)
    d = start_daemon(ECHO, broker={"group": clients}, control={"group": operators})
    assert stat.S_IMODE(os.stat(d.runtime).st_mode) == 0o711
    assert mode_and_group(d.runtime / "frontend.sock") == (0o660, clients)
    assert mode_and_group(d.runtime / "control.sock") == (0o660, operators)
    assert stat.S_IMODE(os.stat(d.runtime / "backend.sock").st_mode) == 0o600


@needs_root
def test_a_member_calls_echo_without_the_control_socket(start_daemon, open_workdir):
    """A member of [broker] group calls through the frontend, with tacorectl (which falls back
    to the file's frontend when the control socket is not open to it) and with the library;
    the control socket still refuses it, naming [control] group."""
    [group] = spare_groups(1)
    d = start_daemon(ECHO, broker={"group": group})
    os.chmod(d.config, 0o644)
    called = as_nobody("tacorectl", "--config", str(d.config), "call", "echo", "hi",
                       '{"from": "nobody"}', groups=[group])
    assert (called.returncode, called.stdout.strip()) == (0, '{"from": "nobody"}'), called.stderr
    library = as_nobody("client", f"ipc://{d.runtime}/frontend.sock", "echo", "hi", "[1, 2]",
                        groups=[group])
    assert (library.returncode, json.loads(library.stdout)) == (0, [1, 2]), library.stderr
    status = as_nobody("tacorectl", "--config", str(d.config), "status", groups=[group])
    assert status.returncode == 4
    assert f"permission denied: {d.runtime}/control.sock (mode 0600" in status.stderr
    assert "only its owner may connect to it" in status.stderr
    assert "[control] group" in status.stderr


@needs_root
def test_an_outsider_is_told_which_group_to_join(start_daemon, open_workdir):
    """Someone outside [broker] group gets exit 4 and a message naming the socket, the
    directory in the way and the group to join, at once (not after a timeout)."""
    [group] = spare_groups(1)
    d = start_daemon(ECHO, broker={"group": group})
    os.chmod(d.config, 0o644)
    refused = as_nobody("tacorectl", "--config", str(d.config), "call", "echo", "hi")
    assert refused.returncode == 4, refused.stderr
    assert (f"tacorectl: permission denied: {d.runtime}/frontend.sock: its directory "
            f"{d.runtime} (mode 0750, group {group}): user nobody is not in group {group}"
            in refused.stderr)
    assert f"usermod -aG {group} nobody" in refused.stderr
    library = as_nobody("client", f"ipc://{d.runtime}/frontend.sock", "echo", "hi", "1")
    assert library.returncode == 1
    assert library.stderr.startswith("AccessDenied after 0.0"), library.stderr
    assert f"not in group {group}" in library.stderr


@needs_root
def test_a_private_socket_names_its_mode_and_owner_only(open_workdir):
    """A root-owned 0600 socket in a passable directory: exit 4 naming the file and its mode,
    from tacorectl and from the library, never a timeout."""
    path = open_workdir / "private.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    os.chmod(path, 0o600)
    try:
        ctl = as_nobody("tacorectl", "--control", f"ipc://{path}", "--timeout", "30", "status")
        library = as_nobody("client", f"ipc://{path}", "echo", "hi", "1")
    finally:
        listener.close()
    assert ctl.returncode == 4
    assert f"permission denied: {path} (mode 0600, group root): only its owner may connect " \
           "to it; the daemon opens it to a group with [control] group" in ctl.stderr
    assert library.returncode == 1
    assert library.stderr.startswith("AccessDenied after 0.0"), library.stderr
    assert "[broker] group" in library.stderr


@needs_root
def test_a_daemon_whose_user_is_not_in_the_group_exits_78(open_workdir):
    """tacored run by a user outside [broker] group cannot give the socket to it: exit 78
    naming the file, [broker] group and what the daemon's user needs."""
    from tests.conftest import write_config
    home = open_workdir / "nobody"
    home.mkdir()
    os.chown(home, nobody().pw_uid, nobody().pw_gid)
    [group] = spare_groups(1)
    config = write_config(home / "t.toml", ECHO, broker={"group": group})
    os.chmod(config, 0o644)
    result = as_nobody("tacored", "--config", str(config))
    assert result.returncode == 78, result.stderr
    assert (f"tacored: {config}: [broker] group: cannot give {home}/run to group {group}: "
            "Operation not permitted; the daemon's user (uid 65534) must be a member of "
            f"{group}") in result.stderr
    assert not list((home / "run").glob("*.sock"))


@needs_root
def test_an_unreadable_config_is_a_configuration_error(open_workdir):
    """A --config this user may not read: exit 78 saying so, for tacored and tacorectl."""
    config = open_workdir / "secret.toml"
    config.write_text("[daemon]\n")
    os.chmod(config, 0o600)
    for program in ("tacored", "tacorectl"):
        result = as_nobody(program, "--config", str(config), *(["status"] if program ==
                                                                "tacorectl" else []))
        assert result.returncode == 78, (program, result.stderr)
        assert f"{config}: cannot read the configuration file: Permission denied" \
            in result.stderr


@needs_root
def test_a_socket_file_the_daemon_may_not_probe_exits_73(open_workdir):
    """A frontend path holding someone else's socket file, not open to the daemon's user: it
    cannot tell a live socket from a stale one, so exit 73 naming [broker] frontend (no crash,
    nothing removed)."""
    from tests.conftest import write_config
    home = open_workdir / "nobody"
    home.mkdir()
    os.chown(home, nobody().pw_uid, nobody().pw_gid)
    theirs = open_workdir / "theirs.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(theirs))
    stale.close()
    os.chmod(theirs, 0o600)
    config = write_config(home / "t.toml", ECHO, broker={"frontend": [f"ipc://{theirs}"]})
    os.chmod(config, 0o644)
    result = as_nobody("tacored", "--config", str(config))
    assert result.returncode == 73, result.stderr
    assert (f"tacored: {config}: [broker] frontend: cannot bind ipc://{theirs}: {theirs} exists "
            "and this user cannot tell whether it is in use (Permission denied)") in result.stderr
    assert theirs.exists()
