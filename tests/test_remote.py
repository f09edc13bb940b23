"""Clients on other hosts: the [remote] frontend (CURVE only), and the client's failover."""

import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq
import zmq.auth

from tacore import config
from tacore.client import Attempt, CallError, CallTimeout, Client
from tacore.control.client import curve_options
from tacore.daemon.app import Daemon
from tacore.daemon.wiring import REMOTE_TAG
from tacore.errors import ConfigError
from tests.conftest import STRICT_WARNINGS, RunningDaemon, run_tacored, write_config
from tests.helpers import wait_until
from tests.test_cli import ctl
from tests.test_security import free_port

TOOL = {"tool": {"handler": "tests.workers:Tool"}}
# No worker will ever serve it and nothing may wait: every request is "503" queue_full at once.
NO_ROOM = {"tool": {"workers": 0, "queue_limit": 0}}


@pytest.fixture
def keys(workdir):
    """The daemon's key pair, an authorized client's (in keys/clients), and a stranger's."""
    made = {}
    for name, where in (("tacored", "keys"), ("client", "keys/clients"),
                        ("stranger", "elsewhere")):
        result = ctl("keygen", str(workdir / where), name)
        assert result.returncode == 0, result.stderr
        made[name] = (workdir / where / f"{name}.key", workdir / where / f"{name}.key_secret")
    made["clients"] = workdir / "keys" / "clients"
    return made


def remote_section(keys, port: int) -> dict:
    return {"frontend": [f"tcp://127.0.0.1:{port}"],
            "curve_secret_key": str(keys["tacored"][1]),
            "curve_authorized_keys": str(keys["clients"])}


def start_remote(start_daemon, keys, services=TOOL):
    """A daemon with a remote frontend on loopback; (daemon, its remote endpoint)."""
    port = free_port()
    return start_daemon(services, remote=remote_section(keys, port)), f"tcp://127.0.0.1:{port}"


def remote_client(keys, endpoint, who: str = "client", **kw) -> Client:
    return Client(endpoint, curve_secret_key=str(keys[who][1]),
                  curve_server_key=str(keys["tacored"][0]), **kw)


def refused(d) -> int:
    return d.call("metrics")["daemon"]["auth_refused"]["tacore.remote"]


# --- the [remote] frontend ---------------------------------------------------------------

def test_authorized_client_is_served_beside_the_local_frontend(start_daemon, keys):
    """An authorized key gets "200" on the remote frontend while the ipc frontend serves too,
    and tacorectl call reaches it with --client-key and --server-key (or their environment
    variables); status names it."""
    d, remote = start_remote(start_daemon, keys)
    with remote_client(keys, remote) as far, Client(f"ipc://{d.runtime}/frontend.sock") as near:
        for n in range(20):  # interleaved: each reply finds its own socket
            assert far.call("tool", "echo", ["far", n], timeout=5) == ["far", n]
            assert near.call("tool", "echo", ["near", n], timeout=5) == ["near", n]
        with pytest.raises(CallError) as info:
            far.call("tool", "bad", 1, timeout=5)  # an error reply takes the same way back
        assert info.value.status == "400"
    result = ctl("--control", d.control, "call", "--frontend", remote,
                 "--client-key", str(keys["client"][1]), "--server-key", str(keys["tacored"][0]),
                 "tool", "echo", '{"via": "tacorectl"}')
    assert (result.returncode, result.stdout.strip()) == (0, '{"via": "tacorectl"}'), result.stderr
    result = ctl("--control", d.control, "call", "tool", "echo", "2",
                 env={"TACORE_FRONTEND": remote, "TACORE_CLIENT_KEY": str(keys["client"][1]),
                      "TACORE_SERVER_KEY": str(keys["tacored"][0])})
    assert (result.returncode, result.stdout.strip()) == (0, "2"), result.stderr
    assert d.status()["daemon"]["remote_frontend"] == [remote]
    assert refused(d) == 0


def test_unauthorized_key_gets_no_reply_and_is_counted(start_daemon, keys):
    """A key outside curve_authorized_keys, or no CURVE at all, gets nothing (CallTimeout);
    the refusal is logged and counted, in tacorectl metrics and the Prometheus text."""
    d, remote = start_remote(start_daemon, keys)
    with remote_client(keys, remote, "stranger") as stranger:
        with pytest.raises(CallTimeout) as info:
            stranger.call("tool", "echo", 1, timeout=0.5)
    assert [a.outcome for a in info.value.attempts] == ["timeout"]
    event = d.wait_event("auth.refused", domain="tacore.remote")[0]
    assert event["client_key"] == zmq.auth.load_certificate(keys["stranger"][0])[0].decode()
    with Client(remote) as plain, pytest.raises(CallTimeout):
        plain.call("tool", "echo", 1, timeout=0.3)  # NULL security: no handshake, no ZAP
    assert refused(d) == 1
    text = d.call("metrics", format="prometheus")
    assert 'tacore_auth_refused_total{domain="tacore.remote"} 1.0' in text
    shown = ctl("--control", d.control, "metrics")
    assert "tacore.remote refused 1" in shown.stdout, shown.stdout


def test_a_flood_of_refused_keys_is_rate_limited_in_the_log(start_daemon, keys):
    """Eighty strangers at once: every one is counted, at most 20 lines a second are logged,
    and the rest are reported as a number."""
    d, remote = start_remote(start_daemon, keys)
    ctx = zmq.Context.instance()
    options = curve_options(str(keys["stranger"][1]), str(keys["tacored"][0]))
    strangers = []

    def stranger():
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            setattr(sock, option, value)
        sock.connect(remote)
        strangers.append(sock)

    started = time.monotonic()
    try:
        for _ in range(80):
            stranger()
        wait_until(lambda: refused(d) >= 80, 10, "80 refusals counted")

        def reported():  # the number comes with the first refusal after its second is over
            stranger()
            return [e for e in d.events("auth.refused") if "suppressed" in e]
        suppressed = wait_until(reported, 10, "the number of refusals not logged", interval=0.1)
    finally:
        for sock in strangers:
            sock.close()
    elapsed = time.monotonic() - started
    logged = [e for e in d.events("auth.refused") if "client_key" in e]
    assert len(logged) <= 20 * (elapsed + 1)  # windows of 1 s from the first refusal
    assert len(logged) < 80 and suppressed[0]["suppressed"] > 0
    assert len(logged) + sum(e["suppressed"] for e in suppressed) <= refused(d)


def test_spoofed_tagged_identities_are_dropped(start_daemon, keys):
    """A local client whose chosen identity reads as a tagged address (zero byte first, not 5
    bytes) cannot have replies sent to a remote client; a remote identity of 3 bytes, tagged,
    would be 5 bytes: both are dropped and logged, and other clients are served."""
    d, remote = start_remote(start_daemon, keys)
    request = [b"", b"MDPC01", b"tool", b'{"method": "echo", "params": 1}']
    ctx = zmq.Context.instance()
    cases = ((f"ipc://{d.runtime}/frontend.sock", b"\x00\x01\x00\x00\x00\x00\x01", {}),
             (remote, b"abc", curve_options(str(keys["client"][1]), str(keys["tacored"][0]))))
    for endpoint, identity, options in cases:
        with ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, identity)
            for option, value in options.items():
                setattr(sock, option, value)
            sock.connect(endpoint)
            sock.send_multipart(request)
            d.wait_event("protocol.error", peer=identity.hex(), action="dropped")
            assert not sock.poll(200)
    with remote_client(keys, remote) as far:
        assert far.call("tool", "echo", 2, timeout=5) == 2


# --- the client's failover ---------------------------------------------------------------

@pytest.fixture
def start_elsewhere():
    """Start a daemon in a directory of its own: another daemon beside start_daemon's."""
    started, places = [], []

    def start(services: dict, **sections) -> RunningDaemon:
        where = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
        places.append(where)
        d = RunningDaemon(write_config(where / "tacore.toml", services, **sections),
                          where / "daemon.log", env={**os.environ, **STRICT_WARNINGS})
        started.append(d)
        d.wait_ready()
        return d

    yield start
    for d in started:
        d.kill()
    for where in places:
        shutil.rmtree(where, ignore_errors=True)


def frontend(d) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


def test_failover_past_a_dead_endpoint(start_daemon):
    """With retries, a call that times out on a dead endpoint is answered by the next one;
    the attempts say so, and the next call starts where the answer came from."""
    d = start_daemon(TOOL)
    dead = f"tcp://127.0.0.1:{free_port()}"
    with Client([dead, frontend(d)], retries=1) as client:
        assert client.call("tool", "echo", "x", timeout=0.5) == "x"
        first, second = client.last_attempts
        assert (first.endpoint, first.outcome) == (dead, "timeout") and first.seconds >= 0.45
        assert (second.endpoint, second.outcome, second.error) == (frontend(d), "200", None)
        assert client.call("tool", "echo", "y", timeout=5, retries=0) == "y"
        assert [a.endpoint for a in client.last_attempts] == [frontend(d)]


def test_503_moves_to_the_next_daemon(start_daemon, start_elsewhere):
    """A "503" (queue_full) from the first daemon sends the call to the second; without
    retries the "503" is raised, with its attempt."""
    full = start_daemon(NO_ROOM)
    serving = start_elsewhere(TOOL)
    with Client([frontend(full), frontend(serving)], retries=1) as client:
        assert client.call("tool", "echo", 7, timeout=5) == 7
        assert [(a.endpoint, a.outcome, a.error) for a in client.last_attempts] == [
            (frontend(full), "503", "queue_full"), (frontend(serving), "200", None)]
    with Client([frontend(full), frontend(serving)]) as client:
        with pytest.raises(CallError) as info:
            client.call("tool", "echo", 7, timeout=5)
    assert (info.value.status, info.value.error) == ("503", "queue_full")
    assert [a.endpoint for a in info.value.attempts] == [frontend(full)]


def test_503_from_the_last_attempt_is_raised_with_every_attempt(start_daemon, start_elsewhere):
    """Both daemons say "503": the call ends with the last one's, listing all three tries."""
    first, second = start_daemon(NO_ROOM), start_elsewhere(NO_ROOM)
    endpoints = [frontend(first), frontend(second)]
    with Client(endpoints, retries=2) as client, pytest.raises(CallError) as info:
        client.call("tool", "echo", 1, timeout=5)
    assert info.value.status == "503" and not isinstance(info.value, CallTimeout)
    assert [a.endpoint for a in info.value.attempts] == endpoints + endpoints[:1]
    assert all(a.outcome == "503" for a in info.value.attempts)
    assert "attempts:" in str(info.value)


def test_other_statuses_are_not_retried(start_daemon, start_elsewhere):
    """A "400" (or "500", "502", "504": the request may have run) is the answer at once."""
    d, other = start_daemon(TOOL), start_elsewhere(TOOL)
    with Client([frontend(d), frontend(other)], retries=3) as client:
        with pytest.raises(CallError) as info:
            client.call("tool", "raise", "boom", timeout=5)
    assert info.value.status == "500"
    assert [a.endpoint for a in info.value.attempts] == [frontend(d)]


def test_call_timeout_lists_every_attempt():
    """Nobody answers: CallTimeout after retries + 1 attempts round the list, each named in
    the exception and its message."""
    dead = [f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"]
    with Client(dead, retries=2) as client, pytest.raises(CallTimeout) as info:
        client.call("tool", "echo", 1, timeout=0.2)
    attempts = info.value.attempts
    assert [a.endpoint for a in attempts] == dead + dead[:1]
    assert all(a.outcome == "timeout" and 0.2 <= a.seconds < 2 for a in attempts)
    assert info.value.status is None and "3 attempt(s)" in info.value.message
    assert all(endpoint in info.value.message for endpoint in dead)


def test_tacorectl_call_fails_over(start_daemon, start_elsewhere):
    """tacorectl call --frontend A --frontend B --retries 1: A's "503" is followed by B's
    answer; without --retries, exit 1 with the status."""
    full, serving = start_daemon(NO_ROOM), start_elsewhere(TOOL)
    both = ["--frontend", frontend(full), "--frontend", frontend(serving)]
    result = ctl("--control", full.control, "call", *both, "--retries", "1", "tool", "echo", "3")
    assert (result.returncode, result.stdout.strip()) == (0, "3"), result.stderr
    once = ctl("--control", full.control, "call", *both, "tool", "echo", "3")
    assert once.returncode == 1 and "503 queue_full" in once.stderr


def test_client_needs_both_keys_and_an_endpoint():
    """Half a key pair, no endpoint, or negative retries: refused before any I/O."""
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", curve_secret_key="x.key_secret")
    with pytest.raises(ValueError):
        Client([])
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1").call("tool", "echo", retries=-1)


def test_attempt_reads_well():
    """An attempt's text names the endpoint, the outcome and the time."""
    assert str(Attempt("tcp://a:1", "503", 0.0123, "queue_full")) == \
        "tcp://a:1: 503 queue_full after 0.0123s"
    assert str(Attempt("tcp://a:1", "timeout", 1.0)) == "tcp://a:1: timeout after 1s"


# --- the tagged return path, without a daemon ---------------------------------------------

def test_replies_follow_their_address_tag():
    """_to_client: a tagged address goes to its return path, a ROUTER-made (5 bytes, zero
    first) or chosen identity to the frontend, an unknown tag nowhere; the remote path
    tags on the way in and strips on the way out."""
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.PAIR) as out, ctx.socket(zmq.PAIR) as seen:
        seen.bind("inproc://test-replies")
        out.connect("inproc://test-replies")
        tagged, received = [], []
        shell = SimpleNamespace(frontend=out, remote=out, return_paths={REMOTE_TAG: tagged.append},
                                broker=SimpleNamespace(from_client=lambda f, now: received.append(f)))
        for frames in ([b"\x00\x01abcd", b"r"], [b"\x00\x01\x00\x12\x34\x56\x78", b"r"]):
            Daemon._to_client(shell, frames)
        assert [f[0] for f in tagged] == [b"\x00\x01abcd", b"\x00\x01\x00\x12\x34\x56\x78"]
        for address in (b"\x00\x12\x34\x56\x78", b"chosen"):
            Daemon._to_client(shell, [address, b"local"])
            assert seen.recv_multipart() == [address, b"local"]
        Daemon._to_client(shell, [b"\x00\x09abcd", b"lost"])  # no path 9: dropped
        assert not seen.poll(50) and len(tagged) == 2
        Daemon._from_remote(shell, [b"\x00\x12\x34\x56\x78", b"req"], 0.0)
        assert received == [[b"\x00\x01\x00\x12\x34\x56\x78", b"req"]]
        Daemon._to_remote(shell, [received[0][0], b"reply"])
        assert seen.recv_multipart() == [b"\x00\x12\x34\x56\x78", b"reply"]


# --- configuration -------------------------------------------------------------------------

def test_remote_frontend_needs_both_keys(workdir):
    """tacored exits 78 naming [remote] curve_secret_key and curve_authorized_keys."""
    path = write_config(workdir / "t.toml", TOOL,
                        remote={"frontend": [f"tcp://127.0.0.1:{free_port()}"]})
    result = run_tacored("--config", str(path))
    assert result.returncode == 78, result.stderr
    for key in ("curve_secret_key", "curve_authorized_keys"):
        assert f"{path}: [remote] {key}: is required when frontend is set" in result.stderr
    assert "tacorectl keygen" in result.stderr


def test_remote_frontend_refuses_ipc(workdir, keys):
    """An ipc endpoint in [remote] frontend is refused (it is for other hosts), exit 78."""
    section = {**remote_section(keys, 1), "frontend": [f"ipc://{workdir}/remote.sock"]}
    path = write_config(workdir / "t.toml", TOOL, remote=section)
    result = run_tacored("--config", str(path))
    assert result.returncode == 78, result.stderr
    assert (f"[remote] frontend: 'ipc://{workdir}/remote.sock' is an ipc endpoint: [remote] is "
            "for clients on other hosts; put ipc endpoints in [broker] frontend") in result.stderr


@pytest.mark.parametrize("text,expected", [
    ('[remote]\nfrontend = "tcp://0.0.0.0:5555"\n', "[remote] frontend: must be a list"),
    ('[remote]\nfrontend = ["tcp://0.0.0.0"]\n', "[remote] frontend: unsupported endpoint"),
    ('[remote]\nfrontend = ["tcp://0.0.0.0:5555"]\ncurve_secret_key = "/nonexistent"\n'
     'curve_authorized_keys = "/nonexistent"\n', "[remote] curve_secret_key: cannot load"),
    ('[broker]\nfrontend = ["tcp://127.0.0.1:5555"]\n[remote]\n'
     'frontend = ["tcp://127.0.0.1:5555"]\n', "[remote] frontend: endpoint 'tcp://127.0.0.1:5555' "
     "is listed twice, or used by another socket"),
], ids=["not a list", "no port", "bad key file", "taken"])
def test_bad_remote_sections(tmp_path, text, expected):
    """Each mistake in [remote] is one line naming the key; a bad key file is not also
    reported as missing."""
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert any(expected in line for line in info.value.errors), info.value.errors
    assert not any("is required" in line and "curve_secret_key" in line
                   for line in info.value.errors if "cannot load" in text)


def test_remote_is_off_by_default_and_any_tcp_host_is_allowed(tmp_path, keys):
    """No [remote]: no endpoints. With keys, a non-loopback tcp endpoint is fine there (and
    only there); a change of it needs a restart."""
    path = tmp_path / "t.toml"
    path.write_text("")
    off = config.load(path, env={})
    assert off.remote.frontend == ()
    lines = "".join(f'{k} = "{v}"\n' for k, v in remote_section(keys, 1).items()
                    if k != "frontend")
    path.write_text(f'[remote]\nfrontend = ["tcp://0.0.0.0:5555"]\n{lines}')
    on = config.load(path, env={})
    assert on.remote.frontend == ("tcp://0.0.0.0:5555",)
    assert config.restart_needed(off, on) == [
        f"[remote] {key} changed: restart tacored to apply it"
        for key in ("frontend", "curve_secret_key", "curve_authorized_keys")]
    assert config.kept_as_running(off, on).remote == off.remote
