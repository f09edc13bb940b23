"""tacorectl against a real daemon, and tacored's start-up refusals (exit 69, 73, 78), each
naming the file and the [section] key to change."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


from tests.conftest import ROOT, run_tacored, write_config

TACORECTL = str(Path(sys.executable).with_name("tacorectl"))
ECHO = {"echo": {"handler": "tests.workers:Echo", "workers": 2}}


def ctl(*args, env=None, timeout=20) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    return subprocess.run([TACORECTL, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def test_status_table_and_json(start_daemon):
    """status prints a row per worker; --json has the documented fields for each."""
    d = start_daemon(ECHO)
    table = ctl("--config", str(d.config), "status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split()[:3] == ["SERVICE", "SLOT", "STATE"]
    assert [line.split()[:3] for line in lines[2:]] == [["echo", "0", "READY"],
                                                        ["echo", "1", "READY"]]
    data = json.loads(ctl("--control", d.control, "status", "--json").stdout)
    for w in data["services"]["echo"]["workers"]:
        assert {"pid", "state", "restarts", "last_seen", "uptime", "last_exit", "slot"} <= set(w)


def test_health_exit_codes(start_daemon, workdir):
    """health: 0 healthy, 1 unhealthy naming the service, 3 when no daemon answers."""
    d = start_daemon({**ECHO, "stuck": {"handler": "tests.workers:BlocksInStart",
                                        "start_timeout": 0.3, "max_restarts": 0}},
                     wait_ready=False)
    d.wait_event("worker.fatal", service="stuck")
    result = ctl("--config", str(d.config), "health")
    assert result.returncode == 1
    assert "stuck: 0/1 ready (min_ready 1); slot 0 FATAL" in result.stdout
    assert "echo" not in result.stdout
    d.kill()
    gone = ctl("--config", str(d.config), "health")
    assert gone.returncode == 3 and "not running" in gone.stderr


def test_healthy_daemon_exits_zero(start_daemon):
    """A daemon whose services all have min_ready workers is healthy."""
    d = start_daemon(ECHO)
    result = ctl("--control", d.control, "health")
    assert (result.returncode, result.stdout.strip()) == (0, "healthy")


def test_unreachable_daemon_is_exit_3_not_a_hang(workdir):
    """A socket file nobody answers on: exit 3 after --timeout, never a hang."""
    path = workdir / "dead.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))  # exists, but speaks no ZeroMQ and never answers
    listener.listen()
    try:
        result = ctl("--control", f"ipc://{path}", "--timeout", "0.5", "status", timeout=10)
    finally:
        listener.close()
    assert result.returncode == 3 and "within 0.5s" in result.stderr
    missing = ctl("--control", f"ipc://{workdir}/none.sock", "status")
    assert missing.returncode == 3 and "does not exist" in missing.stderr


def test_control_socket_is_private(start_daemon):
    """The runtime directory is 0700 and every socket file in it 0600."""
    d = start_daemon(ECHO)
    assert os.stat(d.runtime).st_mode & 0o777 == 0o700
    for sock in d.runtime.glob("*.sock"):
        assert os.stat(sock).st_mode & 0o777 == 0o600, sock


def test_second_daemon_on_the_same_runtime_dir_exits_69(start_daemon):
    """One daemon per runtime_dir: the second exits 69 and steals nothing."""
    d = start_daemon(ECHO)
    result = run_tacored("--config", str(d.config))
    assert result.returncode == 69
    assert (f"tacored: {d.config}: [daemon] runtime_dir: another tacored (pid {d.proc.pid}) "
            f"already runs on {d.runtime}") in result.stderr
    assert d.call("ping")["pid"] == d.proc.pid


def test_stale_sockets_after_a_killed_daemon_are_replaced(start_daemon):
    """After SIGKILL, a new daemon starts on the same runtime_dir despite the old socket files."""
    first = start_daemon(ECHO)
    first.kill()
    assert (first.runtime / "control.sock").exists()
    second = start_daemon(ECHO)
    assert second.call("ping")["pid"] == second.proc.pid


def test_endpoint_in_use_exits_69(workdir):
    """A tcp endpoint another process holds: exit 69 naming it."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        config = write_config(workdir / "t.toml", ECHO, broker={"backend": f"tcp://127.0.0.1:{port}"})
        result = run_tacored("--config", str(config))
    finally:
        holder.close()
    assert result.returncode == 69
    assert (f"tacored: {config}: [broker] backend: cannot bind tcp://127.0.0.1:{port}: "
            "Address already in use") in result.stderr
    assert not list((workdir / "run").glob("*.sock"))  # the frontend bound first: removed


def test_ipc_frontend_in_use_exits_69(workdir):
    """Another process listening on the frontend's socket file: exit 69, nothing stolen."""
    path = workdir / "taken.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(path))
    holder.listen()
    try:
        config = write_config(workdir / "t.toml", ECHO, broker={"frontend": [f"ipc://{path}"]})
        result = run_tacored("--config", str(config))
        assert path.exists()
    finally:
        holder.close()
    assert result.returncode == 69
    assert (f"tacored: {config}: [broker] frontend: cannot bind ipc://{path}: address in use "
            "by another process") in result.stderr


def test_http_listen_in_use_exits_69(workdir):
    """[http] listen on a port another process holds: exit 69 naming [http] listen."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        config = write_config(workdir / "t.toml", ECHO, http={"listen": f"127.0.0.1:{port}"})
        result = run_tacored("--config", str(config))
    finally:
        holder.close()
    assert result.returncode == 69
    assert f"tacored: {config}: [http] listen: cannot bind tcp://127.0.0.1:{port}" \
        in result.stderr


def test_uncreatable_runtime_dir_exits_73(workdir):
    """A runtime_dir that cannot be created: exit 73 naming the directory."""
    (workdir / "file").write_text("")
    config = write_config(workdir / "t.toml", ECHO, daemon={"runtime_dir": str(workdir / "file" / "run")})
    result = run_tacored("--config", str(config))
    assert result.returncode == 73
    assert (f"tacored: {config}: [daemon] runtime_dir: cannot create {workdir}/file/run: "
            "Not a directory") in result.stderr


def test_frontend_in_an_uncreatable_directory_exits_73(workdir):
    """An ipc frontend whose directory cannot exist (a file is in the way): exit 73 naming the
    file, [broker] frontend and the directory; no socket file is left."""
    (workdir / "file").write_text("")
    endpoint = f"ipc://{workdir}/file/sub/frontend.sock"
    config = write_config(workdir / "t.toml", ECHO, broker={"frontend": [endpoint]})
    result = run_tacored("--config", str(config))
    assert result.returncode == 73
    assert (f"tacored: {config}: [broker] frontend: cannot bind {endpoint}: directory "
            f"{workdir}/file/sub: Not a directory") in result.stderr
    assert not list((workdir / "run").glob("*.sock"))


def test_a_directory_as_config_is_a_configuration_error(workdir):
    """--config naming a directory: exit 78 saying so (not a usage error), for both commands."""
    daemon = run_tacored("--config", str(workdir))
    assert daemon.returncode == 78
    assert f"tacored: {workdir}: is a directory, not a configuration file" in daemon.stderr
    ctl_result = ctl("--config", str(workdir), "status")
    assert ctl_result.returncode == 78
    assert f"tacorectl: {workdir}: is a directory, not a configuration file" \
        in ctl_result.stderr


def test_runtime_dir_writable_by_others_exits_78(workdir):
    """A group- or world-writable runtime_dir is refused: anyone could replace the sockets."""
    (workdir / "run").mkdir(mode=0o700)
    os.chmod(workdir / "run", 0o777)
    config = write_config(workdir / "t.toml", ECHO)
    result = run_tacored("--config", str(config))
    assert result.returncode == 78
    assert (f"tacored: {config}: [daemon] runtime_dir: {workdir}/run is writable by others"
            in result.stderr)


def test_call_prints_the_result_or_the_error(start_daemon):
    """tacorectl call: JSON result and exit 0; the error and exit 1; exit 2 for bad JSON."""
    d = start_daemon({"ta": {"handler": "tacore.services.ta:TA"}})
    ok = ctl("--config", str(d.config), "call", "ta", "sma",
             '{"prices": [1, 2, 3, 4, 5, 6], "window": 3}')
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == [None, None, 2.0, 3.0, 4.0, 5.0]
    bad = ctl("--config", str(d.config), "call", "ta", "sma", '{"prices": [1], "window": 3}')
    assert bad.returncode == 1 and "400 bad_request: sma: needs at least 3 prices" in bad.stderr
    missing = ctl("--config", str(d.config), "call", "nope", "x")
    assert missing.returncode == 1 and "404 no_such_service" in missing.stderr
    garbage = ctl("--config", str(d.config), "call", "ta", "sma", "{not json")
    assert garbage.returncode == 2 and "not JSON" in garbage.stderr


def test_status_shows_requests_and_queue(start_daemon):
    """status --json counts requests per worker and shows each service's queue."""
    d = start_daemon({"ta": {"handler": "tacore.services.ta:TA"}})
    for _ in range(3):
        assert ctl("--control", d.control, "call", "ta", "returns",
                   '{"prices": [1, 2, 4]}').returncode == 0
    data = json.loads(ctl("--control", d.control, "status", "--json").stdout)
    service = data["services"]["ta"]
    assert service["queue"] == 0 and service["requests"] == 3
    assert service["workers"][0]["requests"] == 3 and service["workers"][0]["request_age"] is None


def test_every_command_has_an_example():
    """tacorectl --help and each command's --help show at least one example invocation."""
    from click.testing import CliRunner

    from tacore.cli.tacorectl import main
    runner = CliRunner()
    for args in [[]] + [[name] for name in main.commands]:
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        examples = [line.split() for line in result.output.splitlines()
                    if line.strip().startswith("tacorectl ")]
        assert "Example" in result.output and examples, (args, result.output)
        assert all(any(name in example for example in examples) for name in args), examples
