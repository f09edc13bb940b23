"""Fixtures that run a real tacored on a config in a short temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tacore.control.client import ControlClient
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
# Daemons, spawners and workers under test: a deprecation (e.g. Python 3.12+'s warning about a
# fork from a process with threads) is an error, not a line nobody reads.
STRICT_WARNINGS = {"PYTHONWARNINGS": "error::DeprecationWarning"}
TACORED = [str(Path(sys.executable).with_name("tacored"))]  # the installed console script


@pytest.fixture
def workdir():
    """A short directory (ipc socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, dict) else "{" + ", ".join(
        f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


def write_config(path: Path, services: dict, daemon=None, broker=None, control=None,
                 state=None, http=None, **more) -> Path:
    """Write a config with fast test timings; ``services`` maps name -> keys; ``more``: other
    sections, name -> keys."""
    sections = {"daemon": {"runtime_dir": str(path.parent / "run"), "log_format": "json",
                           "state_dir": str(path.parent / "state"),
                           "python_path": [str(ROOT)], **(daemon or {})},
                "broker": {"heartbeat_interval": 0.2, **(broker or {})},
                "control": control or {}, "state": state or {}, "http": http or {}, **more}
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    for name, keys in services.items():
        keys = {"workers": 1, "start_timeout": 5, "stop_timeout": 1, "backoff_initial": 0.05,
                **keys}
        lines.append(f"[services.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class RunningDaemon:
    """A real tacored process, its JSON log, and a control client."""

    def __init__(self, config: Path, log: Path, env=None, prefix=()):
        self.config, self.log_path = config, log
        self.runtime = config.parent / "run"
        self.control = f"ipc://{self.runtime}/control.sock"
        self.log_file = open(log, "wb")
        self.proc = subprocess.Popen([*prefix, *TACORED, "--config", str(config)], cwd=ROOT,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        self._offset, self._events = 0, []

    def call(self, command: str, **args):
        return ControlClient(self.control, timeout=2).call(command, **args)

    def status(self) -> dict:
        return self.call("status")

    def workers(self, service: str) -> list[dict]:
        return self.status()["services"][service]["workers"]

    def events(self, name: str | None = None, **match) -> list[dict]:
        """Every JSON log line so far (read incrementally), filtered by event name and fields."""
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                self._events.append(json.loads(line))
            except ValueError:
                self._events.append({"event": "(not json)", "text": line.decode(errors="replace")})
        return [e for e in self._events if (name is None or e.get("event") == name)
                and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, name: str, timeout: float = 10, count: int = 1, **match) -> list[dict]:
        wait_until(lambda: len(self.events(name, **match)) >= count, timeout,
                   f"{count} x {name} {match or ''}")
        return self.events(name, **match)

    def wait_ready(self, timeout: float = 10):
        def all_ready():
            try:
                status = self.status()
            except Exception:
                return False
            return all(w["state"] == "READY" for s in status["services"].values()
                       for w in s["workers"])
        wait_until(all_ready, timeout, "every worker READY")

    def children(self) -> list[psutil.Process]:
        """Every process below the daemon: its spawner and the workers it forked."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def worker_processes(self) -> list[psutil.Process]:
        """The workers: the spawner's children (the spawner is the daemon's only child)."""
        workers = []
        for p in self.children():
            try:
                if p.ppid() != self.proc.pid:
                    workers.append(p)
            except psutil.NoSuchProcess:
                pass  # it exited since children() listed it
        return workers

    def kill(self):
        """Tear down: kill the whole process group, daemon and workers alike."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.log_file.close()


@pytest.fixture
def start_daemon(workdir):
    """Start a real daemon: start_daemon(services, daemon=..., broker=...) -> RunningDaemon."""
    started = []

    def start(services: dict, wait_ready: bool = True, control_socket: bool = True,
              env: dict | None = None, **sections) -> RunningDaemon:
        config = write_config(workdir / "tacore.toml", services, **sections)
        d = RunningDaemon(config, workdir / f"daemon{len(started)}.log",
                          env={**os.environ, **STRICT_WARNINGS, **(env or {})})
        started.append(d)
        ready_file = d.runtime / ("control.sock" if control_socket else "frontend.sock")
        wait_until(lambda: os.path.exists(ready_file) or d.proc.poll() is not None,
                   10, "the daemon's sockets")
        if d.proc.poll() is not None:
            pytest.fail(f"tacored exited {d.proc.returncode}: {d.log_path.read_text()}")
        if wait_ready:
            d.wait_ready()
        return d

    yield start
    for d in started:
        d.kill()


def run_tacored(*args, env=None, timeout=20) -> subprocess.CompletedProcess:
    return subprocess.run(TACORED + list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0
