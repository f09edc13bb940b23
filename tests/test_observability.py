"""The state database, metrics, Prometheus and the HTTP endpoint, against real daemons."""

import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import closing

from prometheus_client.parser import text_string_to_metric_families

from tacore.persistence.store import Store
from tests.helpers import wait_until
from tests.mdp import call
from tests.test_cli import TACORECTL, ctl

TOOL = {"handler": "tests.workers:Tool", "workers": 2}


def frontend(d) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_events_survive_a_daemon_restart(start_daemon):
    """A start-timeout stack recorded by one daemon is shown by the next one."""
    stuck = {"stuck": {"handler": "tests.workers:BlocksInStart", "start_timeout": 0.3,
                       "max_restarts": 0}}
    first = start_daemon(stuck, wait_ready=False)
    first.wait_event("worker.fatal")
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(10) == 0
    second = start_daemon({"tool": TOOL})
    events = second.call("events", since=time.time() - 3600)
    timeouts = [e for e in events if e["event"] == "worker.start_timeout"]
    assert len(timeouts) == 1 and "BLOCKS-HERE" in timeouts[0]["stack"]
    assert timeouts[0]["service"] == "stuck" and timeouts[0]["pid"] is not None
    names = [e["event"] for e in events]
    assert names.index("daemon.stopped") < len(names) - names[::-1].index("daemon.started") - 1
    text = ctl("--control", second.control, "events", "--since", "1h", "--service", "stuck")
    assert text.returncode == 0 and "worker.start_timeout" in text.stdout
    assert "BLOCKS-HERE" in text.stdout


def test_killed_worker_events_are_in_order(start_daemon):
    """A SIGKILLed worker: exited, backoff, spawned, ready; timestamps in order; --json fields."""
    d = start_daemon({"tool": {**TOOL, "workers": 1}})
    pid = d.workers("tool")[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (w := d.workers("tool")[0])["state"] == "READY" and w["pid"] != pid,
               10, "a replacement")  # (one status: READY and the new pid of the same worker)
    result = ctl("--control", d.control, "events", "--json", "--service", "tool")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    names = [e["event"] for e in events]
    tail = names[names.index("worker.exited"):]
    assert tail[:4] == ["worker.exited", "worker.backoff", "worker.spawned", "worker.ready"]
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)
    exited = events[names.index("worker.exited")]
    assert {"ts", "event", "service", "slot", "pid"} <= set(exited)
    assert exited["pid"] == pid and exited["signal"] == "SIGKILL"


def test_follow_prints_new_events(start_daemon):
    """events --follow streams an event that happens after it started."""
    d = start_daemon({"tool": {**TOOL, "workers": 1}})
    follower = subprocess.Popen([TACORECTL, "--control", d.control, "events", "-f", "--json",
                                 "--since", "60s"], stdout=subprocess.PIPE, text=True)
    try:
        # The worker's READY is within the minute: once a line is out, the follower follows
        # (on a busy machine tacorectl itself may take seconds to start).
        assert _next_event(follower, 20) is not None, "the follower printed nothing"
        os.kill(d.workers("tool")[0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        seen = []
        while "worker.exited" not in seen and (event := _next_event(follower, deadline -
                                                                    time.monotonic())):
            seen.append(event)
        assert "worker.exited" in seen, seen
    finally:
        follower.kill()
        follower.wait()
        follower.stdout.close()


def _next_event(follower, timeout: float) -> str | None:
    """The next event name the follower prints, or None if it prints nothing in time."""
    ready, _, _ = select.select([follower.stdout], [], [], max(0.0, timeout))
    line = follower.stdout.readline() if ready else ""
    return json.loads(line)["event"] if line else None


def test_metrics_count_what_was_sent(start_daemon):
    """N requests: N in the counters and in the latency histogram, errors by status."""
    d = start_daemon({"tool": TOOL})
    for i in range(20):
        assert call(frontend(d), "tool", "echo", i)[0] == "200"
    for _ in range(3):
        assert call(frontend(d), "tool", "bad")[0] == "400"
    assert call(frontend(d), "nope", "x")[0] == "404"
    metrics = d.call("metrics")
    tool = metrics["services"]["tool"]
    assert tool["by_status"] == {"200": 20, "400": 3} and tool["errors"] == 3
    assert tool["requests"] == 23 and tool["latency"]["count"] == 23
    assert 0 < tool["latency"]["p50"] <= tool["latency"]["p99"] < 1
    assert metrics["daemon"]["unknown_service_requests"] == 1
    served = sum(w["requests"] for w in metrics["workers"])
    assert served == 23


def test_http_metrics_healthz_status(start_daemon):
    """/metrics parses as Prometheus text with the documented names; /healthz flips to 503
    when a service goes FATAL; /status is status --json."""
    port = free_port()
    d = start_daemon({"tool": TOOL}, http={"listen": f"127.0.0.1:{port}"},
                     state={"sample_interval": 0.2})
    base = f"http://127.0.0.1:{port}"
    for i in range(5):
        call(frontend(d), "tool", "echo", i)
    wait_until(lambda: all(w["rss_bytes"] for w in d.workers("tool")), 5, "a sample")
    status, text = get(f"{base}/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("tacore_requests", "tacore_request_duration_seconds", "tacore_workers",
                 "tacore_worker_restarts", "tacore_worker_cpu_percent", "tacore_worker_rss_bytes",
                 "tacore_queue_length", "tacore_daemon_rss_bytes", "tacore_loop_lag_seconds"):
        assert name in families, name
    ok = [s for s in families["tacore_requests"].samples
          if s.labels == {"service": "tool", "status": "200"}]
    assert ok[0].value == 5
    ready = [s for s in families["tacore_workers"].samples
             if s.labels == {"service": "tool", "state": "READY"}]
    assert ready[0].value == 2
    assert get(f"{base}/healthz") == (200, "healthy\n")
    status, body = get(f"{base}/status")
    assert status == 200 and set(json.loads(body)["services"]) == {"tool"}
    assert get(f"{base}/nope")[0] == 404


def test_healthz_turns_503_when_fatal(start_daemon):
    """The HTTP health check fails, naming the service, once a service is FATAL."""
    port = free_port()
    d = start_daemon({"stuck": {"handler": "tests.workers:BlocksInStart", "start_timeout": 0.3,
                                "max_restarts": 0}}, http={"listen": f"127.0.0.1:{port}"},
                     wait_ready=False)
    d.wait_event("worker.fatal")
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 503 and body.startswith("stuck: 0/1 ready") and "FATAL" in body


def test_http_garbage_and_slow_clients(start_daemon):
    """A request that never completes, a huge one, and a bad one do not stop the endpoint."""
    port = free_port()
    d = start_daemon({"tool": TOOL}, http={"listen": f"127.0.0.1:{port}"})
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /metr")  # and nothing more
    with socket.create_connection(("127.0.0.1", port)) as bad:
        bad.sendall(b"BREW /coffee HTTP/1.1\r\nHost: x\r\n\r\n")  # (no Host: 400)
        assert bad.recv(1024).startswith(b"HTTP/1.1 405")
    with socket.create_connection(("127.0.0.1", port)) as big:
        big.sendall(b"GET /" + b"x" * 20000 + b" HTTP/1.1\r\n\r\n")
        assert big.recv(1024).startswith(b"HTTP/1.1 400")
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    slow.close()
    assert call(frontend(d), "tool", "echo", 1)[0] == "200"


def test_deleted_database_is_recreated_and_serving_goes_on(start_daemon):
    """Removing the database file while running: requests are served, a new file is made."""
    d = start_daemon({"tool": {**TOOL, "workers": 1}})
    db = d.config.parent / "state" / "tacore.db"
    wait_until(db.exists, 5, "the database")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.unlink(f"{db}{suffix}")
    pid = d.workers("tool")[0]["pid"]
    os.kill(pid, signal.SIGKILL)  # events to write
    wait_until(lambda: db.exists(), 10, "a new database")
    d.wait_event("state.notice")
    wait_until(lambda: (w := d.workers("tool")[0])["state"] == "READY" and w["pid"] != pid, 10,
               "a replacement")
    assert call(frontend(d), "tool", "echo", 1)[0] == "200"
    wait_until(lambda: any(e["event"] == "worker.exited" for e in d.call("events")), 5,
               "the event in the new database")


def test_corrupt_database_degrades_but_never_stops_serving(start_daemon):
    """Garbage written over the database: persistence degraded in status and health, the
    daemon keeps brokering; events are still listed from memory."""
    d = start_daemon({"tool": {**TOOL, "workers": 1}})
    db = d.config.parent / "state" / "tacore.db"
    wait_until(db.exists, 5, "the database")
    with open(db, "r+b") as f:
        f.write(b"\xde\xad" * 4096)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            with open(f"{db}{suffix}", "r+b") as f:
                f.write(b"\xde\xad" * 2048)
    pid = d.workers("tool")[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (w := d.workers("tool")[0])["state"] == "READY" and w["pid"] != pid, 10,
               "a replacement")
    assert call(frontend(d), "tool", "echo", 1)[0] == "200"
    health = d.call("health")
    assert health["healthy"]
    events = d.call("events")
    assert any(e["event"] == "worker.exited" for e in events)


def test_corrupt_database_at_start_is_moved_aside(start_daemon, workdir):
    """A daemon finding a corrupt file keeps it (renamed) and starts a new one."""
    (workdir / "state").mkdir()
    (workdir / "state" / "tacore.db").write_bytes(b"this is not sqlite" * 100)
    d = start_daemon({"tool": {**TOOL, "workers": 1}})
    assert list((workdir / "state").glob("tacore.db.corrupt-*"))
    assert d.status()["daemon"]["persistence"]["degraded"] is None
    d.wait_event("state.notice")


def test_unusable_state_dir_degrades(start_daemon, workdir):
    """A state_dir that cannot exist: the daemon runs, says so in status and health."""
    (workdir / "file").write_text("")
    d = start_daemon({"tool": {**TOOL, "workers": 1}},
                     daemon={"state_dir": str(workdir / "file" / "state")})
    persistence = d.status()["daemon"]["persistence"]
    assert persistence["degraded"] and "NotADirectoryError" in persistence["degraded"]
    health = d.call("health")
    assert health["healthy"] and "persistence degraded" in health["warnings"][0]
    assert call(frontend(d), "tool", "echo", 1)[0] == "200"
    assert d.call("events")  # from memory


def test_retention_prunes_old_rows_and_size(tmp_path):
    """Rows older than retention_days go; over max_db_mb, the oldest samples go first."""
    store = Store(tmp_path / "t.db", retention_days=1, max_db_mb=0.5)
    store.open(0.0)
    now = time.time()
    for age_days in (3, 2, 0.5, 0):
        store.add_event(now - age_days * 86400, "worker.exited", "info", {"service": "s"})
    store.add_samples("daemon_samples", [(now - 2 * 86400, 1.0, 1, 0.0), (now, 1.0, 1, 0.0)])
    store.flush(1.0)
    assert len(store.events()) == 2
    assert store.db.execute("SELECT count(*) FROM daemon_samples").fetchone()[0] == 1
    rows = [(now - i, "s", 0, 1, "READY", 1.0, 1000, 2, 10, 5) for i in range(20000)]
    store.add_samples("worker_samples", rows)
    store.prune_at = 0
    store.flush(2.0)
    assert store.size() <= 0.5 * 2**20
    assert store.db.execute("SELECT count(*) FROM worker_samples").fetchone()[0] < 20000
    assert len(store.events()) == 2  # samples went first
    store.close()


def test_schema_version_and_migration(tmp_path):
    """A new database gets the current schema version; a newer one is refused, not broken."""
    store = Store(tmp_path / "t.db", 14, 100)
    store.open(0.0)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == 1
    store.close()
    with closing(sqlite3.connect(tmp_path / "t.db")) as db, db:
        db.execute("PRAGMA user_version = 99")
    store.open(0.0)
    assert store.degraded and "newer than this tacore" in store.degraded
