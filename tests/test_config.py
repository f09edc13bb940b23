"""Strict configuration: every problem names the file, the section, the key and the fix."""

import dataclasses
import itertools
import json
import os
import tomllib
from pathlib import Path

import pytest

from tacore import config
from tacore.errors import ConfigError
from tacore.runtime.loader import load_handler
from tests.conftest import ROOT, run_tacored

GOOD_SERVICE = '[services.echo]\nhandler = "tacore.services.echo:Echo"\n'


def load_text(tmp_path: Path, text: str, **kw):
    path = tmp_path / "t.toml"
    path.write_text(text)
    return config.load(path, env={}, load_handler=load_handler, **kw)


def errors_of(tmp_path, text) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value.errors


def test_defaults(tmp_path):
    """A file with one service gets every documented default, directories from the env."""
    path = tmp_path / "t.toml"
    path.write_text(GOOD_SERVICE)
    c = config.load(path, env={"RUNTIME_DIRECTORY": "/run/tacore", "STATE_DIRECTORY": "/var/x"})
    assert c.daemon.runtime_dir == Path("/run/tacore") and c.daemon.state_dir == Path("/var/x")
    assert c.broker.frontend == ("ipc:///run/tacore/frontend.sock",)
    assert c.broker.backend == "ipc:///run/tacore/backend.sock"
    assert c.control.endpoint == "ipc:///run/tacore/control.sock"
    assert (c.broker.heartbeat_interval, c.broker.heartbeat_liveness) == (2.5, 3)
    echo = c.services["echo"]
    assert (echo.workers, echo.min_ready, echo.start_timeout, echo.max_restarts) == (1, 1, 30, 5)


def test_runtime_dir_fallbacks():
    """$RUNTIME_DIRECTORY, then $XDG_RUNTIME_DIR/tacore, then /tmp/tacore-<uid>."""
    assert config.default_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/5"}) == Path(
        "/run/user/5/tacore")
    assert config.default_runtime_dir({}) == Path(f"/tmp/tacore-{os.getuid()}")


def test_shipped_config_is_valid():
    """etc/tacore.toml validates, importing its handlers."""
    c = config.load(ROOT / "etc" / "tacore.toml", env={}, load_handler=load_handler)
    assert set(c.services) == {"echo", "ta"}


BAD = [
    ("[daemon]\nlog_levle = 'info'\n", "[daemon] log_levle: unknown key; did you mean 'log_level'?"),
    ("[deamon]\n", "[deamon]: unknown section; did you mean 'daemon'?"),
    ("[daemon]\nlog_level = 'loud'\n", "[daemon] log_level: must be one of"),
    ("[daemon]\nlog_format = 3\n", "[daemon] log_format: must be one of"),
    ("[broker]\nheartbeat_interval = '2s'\n", "[broker] heartbeat_interval: must be a number of seconds"),
    ("[broker]\nheartbeat_interval = -1\n", "[broker] heartbeat_interval: must be greater than 0"),
    ("[broker]\nheartbeat_liveness = 0\n", "[broker] heartbeat_liveness: must be >= 1"),
    ("[broker]\nbackend = 'tcp://0.0.0.0:5555'\n", "[broker] backend: 'tcp://0.0.0.0:5555' is reachable from other hosts without CURVE; bind it to 127.0.0.1, or set curve_secret_key"),
    ("[broker]\nfrontend = ['tcp://*:5555']\n", "[broker] frontend: 'tcp://*:5555' is reachable from other hosts without CURVE"),
    ("[control]\nendpoint = 'tcp://10.1.2.3:5555'\n", "[control] endpoint: 'tcp://10.1.2.3:5555' is reachable from other hosts without CURVE"),
    ("[control]\ncurve_secret_key = '/nonexistent.key_secret'\n", "[control] curve_secret_key: cannot load a CURVE key"),
    ("[control]\ncurve_authorized_keys = '/nonexistent'\n", "[control] curve_authorized_keys: '/nonexistent' is not a directory"),
    ("[control]\ngroup = 'no-such-group-x'\n", "[control] group: no group named 'no-such-group-x'"),
    ("[broker]\ngroup = 'no-such-group-x'\n", "[broker] group: no group named 'no-such-group-x' on this machine; create it (groupadd)"),
    ("[broker]\nbackend = 'tcp://127.0.0.1'\n", "[broker] backend: unsupported endpoint"),
    ("[broker]\nbackend = 'ipc://relative.sock'\n", "[broker] backend: ipc endpoint 'ipc://relative.sock' must name an absolute path"),
    ("[broker]\nfrontend = 'ipc:///x.sock'\n", "[broker] frontend: must be a non-empty list"),
    ("[broker]\nbackend = 'ipc:///a.sock'\n[control]\nendpoint = 'ipc:///a.sock'\n", "[control] endpoint: endpoint 'ipc:///a.sock' is also used by broker.backend"),
    ("[control]\nendpoint = 'ipc:///" + "x" * 120 + "'\n", "[control] endpoint: ipc path is 121 bytes, the limit is 107"),
    ("[services.echo]\nworkers = 1\n", "[services.echo] handler: is required"),
    ("[services.echo]\nhandler = 'nope'\n", "[services.echo] handler: must look like 'module:callable'"),
    ("[services.echo]\nhandler = 'no_such_module_x:Echo'\n", "[services.echo] handler: cannot load 'no_such_module_x:Echo': ModuleNotFoundError"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Nope'\n", "[services.echo] handler: cannot load 'tacore.services.echo:Nope': AttributeError"),
    ("[services.echo]\nhandler = 'tacore.services.echo:__doc__'\n", "is not callable"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nworkers = -1\n", "[services.echo] workers: must be >= 0"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nworkers = 1.5\n", "[services.echo] workers: must be an integer"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nworkers = true\n", "[services.echo] workers: must be an integer, got a boolean"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nstart_timeout = 0\n", "[services.echo] start_timeout: must be greater than 0"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nstop_timeout = -5\n", "[services.echo] stop_timeout: must be greater than 0"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nstart_timout = 5\n", "[services.echo] start_timout: unknown key; did you mean 'start_timeout'?"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nworkers = 0\nmin_ready = 1\n", "[services.echo] min_ready: is 1 but the service has only 0 workers"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nworkers = 2\nmin_ready = 3\n", "[services.echo] min_ready: is 3 but the service has only 2 workers"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nconfig = 5\n", "[services.echo] config: must be a table"),
    ("[services.echo]\nhandler = 'tacore.services.echo:Echo'\nbackoff_initial = 10\nbackoff_max = 1\n", "[services.echo] backoff_max: (1.0) is below backoff_initial"),
    ("[services.'mmi.x']\nhandler = 'tacore.services.echo:Echo'\n", "[services.mmi.x]: invalid service name"),
    ("[services.'a b']\nhandler = 'tacore.services.echo:Echo'\n", "[services.a b]: invalid service name"),
    ("services = 3\n", "[services]: must be a table of services"),
    ("[daemon\n", "TOML syntax error"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_config_is_named_precisely(tmp_path, text, expected):
    """Each broken file gives one line naming the file and the problem."""
    errors = errors_of(tmp_path, text)
    assert any(expected in e for e in errors), errors
    assert all(e.startswith(str(tmp_path / "t.toml") + ": ") for e in errors)


def test_every_problem_is_reported_at_once(tmp_path):
    """Three mistakes, three lines."""
    errors = errors_of(tmp_path, "[daemon]\nlog_levle = 1\n[broker]\nheartbeat_interval = 0\n"
                                 "[services.x]\nhandler = 'tacore.services.echo:Echo'\nworkrs = 2\n")
    assert len(errors) == 3


def test_unreadable_file(tmp_path):
    """A missing file is a configuration error naming the path and the fix."""
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "missing.toml", env={})
    assert "cannot read the configuration file" in info.value.errors[0]
    assert "--config" in info.value.errors[0]


def test_relative_paths_are_relative_to_the_file(tmp_path):
    """runtime_dir and python_path are resolved against the config file's directory."""
    c = load_text(tmp_path, '[daemon]\nruntime_dir = "run"\npython_path = ["lib"]\n')
    assert c.daemon.runtime_dir == tmp_path / "run"
    assert c.daemon.python_path == (str(tmp_path / "lib"),)


def test_python_path_makes_local_handlers_importable(tmp_path):
    """A handler module next to the config is found through [daemon] python_path."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "svc_for_config_test.py").write_text(
        "class S:\n    def handle(self, m, p):\n        return p\n")
    c = load_text(tmp_path, '[daemon]\npython_path = ["mine"]\n'
                            '[services.s]\nhandler = "svc_for_config_test:S"\n')
    assert c.services["s"].handler == "svc_for_config_test:S"


def test_tacored_exits_78_naming_the_key(tmp_path):
    """The real daemon refuses a bad file with exit code 78 and starts nothing."""
    path = tmp_path / "t.toml"
    path.write_text(f'[daemon]\nruntime_dir = "{tmp_path}/run"\n' + GOOD_SERVICE +
                    "start_timout = 5\n")
    result = run_tacored("--config", str(path))
    assert result.returncode == 78
    assert f"{path}: [services.echo] start_timout: unknown key; did you mean 'start_timeout'?" \
        in result.stderr
    assert not (tmp_path / "run").exists()


def test_tacored_without_a_config_exits_78():
    """No --config and no TACORE_CONFIG is a configuration error, not a silent default."""
    env = {k: v for k, v in os.environ.items() if k != "TACORE_CONFIG"}
    result = run_tacored(env=env)
    assert result.returncode == 78 and "--config" in result.stderr


def test_check_prints_the_effective_configuration(tmp_path):
    """tacored --check validates, imports handlers and prints every value as JSON."""
    path = tmp_path / "t.toml"
    path.write_text(f'[daemon]\nruntime_dir = "{tmp_path}/run"\n' + GOOD_SERVICE)
    result = run_tacored("--check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["services"]["echo"]["start_timeout"] == 30.0
    assert effective["control"]["endpoint"] == f"ipc://{tmp_path}/run/control.sock"
    assert not (tmp_path / "run").exists()  # --check starts nothing


def test_control_endpoint_is_read_from_a_half_edited_file(tmp_path):
    """tacorectl still finds the control socket while a service table is broken."""
    path = tmp_path / "t.toml"
    path.write_text('[control]\nendpoint = "ipc:///tmp/x/control.sock"\n'
                    "[services.echo]\nhandler = \n")
    assert config.read_control_endpoint(path) == "ipc:///tmp/x/control.sock"
    path.write_text('[daemon]\nruntime_dir = "run"\n[services.echo\n')
    assert config.read_control_endpoint(path) == f"ipc://{tmp_path}/run/control.sock"


def test_frontend_endpoint_is_read_from_a_half_edited_file(tmp_path):
    """tacorectl call finds the frontend in the file too: [broker] frontend, else runtime_dir."""
    path = tmp_path / "t.toml"
    path.write_text('[broker]\nfrontend = ["ipc:///tmp/x/f.sock", "tcp://127.0.0.1:5"]\n'
                    "[services.echo]\nhandler = \n")
    assert config.read_frontend_endpoint(path) == "ipc:///tmp/x/f.sock"
    path.write_text('[daemon]\nruntime_dir = "run"\n[broker]\ngroup = "x"\n[services.echo\n')
    assert config.read_frontend_endpoint(path) == f"ipc://{tmp_path}/run/frontend.sock"


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1][:40] for b in BAD])
def test_real_daemon_refuses_each_bad_config(tmp_path, text, expected):
    """The same corpus through the real tacored: exit 78, the message, nothing started, no
    directory or socket file left behind."""
    path = tmp_path / "t.toml"
    path.write_text(text)
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path / "run"),
           "STATE_DIRECTORY": str(tmp_path / "state")}
    result = run_tacored("--config", str(path), env=env)
    assert result.returncode == 78, result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "state").exists()


def reference_rows(readme: str) -> list[str]:
    """The table under "## Configuration reference" in README.md."""
    lines = readme.split("\n## Configuration reference\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    return list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))


def defaults_by_key(rows: list[str]) -> dict[str, str]:
    return {row.split(" | ")[0].strip("| `"): row.split(" | ")[1] for row in rows[2:]}


def test_readme_reference_is_the_schema():
    """Every key has a row with its default, every row names a key, and the table is the one
    the schema generates."""
    documented = reference_rows((ROOT / "README.md").read_text())
    generated = config.reference_table().splitlines()
    fix = "regenerate README.md's table with: python -m tacore.config --markdown"
    rows, keys = defaults_by_key(documented), defaults_by_key(generated)
    assert sorted(rows.keys() - keys.keys()) == [], f"rows naming no key; {fix}"
    assert sorted(keys.keys() - rows.keys()) == [], f"keys without a row; {fix}"
    assert rows == keys, f"defaults differ; {fix}"
    assert documented == generated, fix


def test_example_file_shows_every_key():
    """etc/tacore.toml has a line for every key (a service's under [services.echo]); a
    commented-out one shows the default, wherever the default is a plain value."""
    sections, current = {}, None
    for line in (ROOT / "etc" / "tacore.toml").read_text().splitlines():
        text = line.lstrip("# ")
        if text.startswith("["):
            current = sections.setdefault(text.split("]")[0] + "]", {})
            continue
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            continue  # prose
        if values:
            current.update({k: (v, line.startswith("#")) for k, v in values.items()})
    for section, cls in [*config.TABLES.items(), ("services.echo", config.ServiceConfig)]:
        for name, key in config.keys_of(cls).items():
            if key.check is config.table:
                assert f"[{section}.{name}]" in sections, f"[{section}.{name}]"
                continue
            assert name in sections[f"[{section}]"], f"[{section}] {name}"
            value, commented = sections[f"[{section}]"][name]
            default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
            if commented and key.shown is None and default is not None:
                assert key.check(value) == default, f"[{section}] {name} = {value!r}"


def test_reload_keeps_what_needs_a_restart(tmp_path):
    """A changed endpoint is reported and kept as it runs; the log level, a heartbeat setting
    and a service's workers are applied."""
    running = load_text(tmp_path, GOOD_SERVICE)
    new = load_text(tmp_path, '[daemon]\nlog_level = "debug"\n'
                              '[broker]\nheartbeat_liveness = 5\nfrontend = ["ipc:///x/f.sock"]\n'
                              + GOOD_SERVICE + "workers = 3\n")
    assert config.restart_needed(running, new) == [
        "[broker] frontend changed: restart tacored to apply it"]
    kept = config.kept_as_running(running, new)
    assert kept.broker.frontend == running.broker.frontend
    assert (kept.daemon.log_level, kept.broker.heartbeat_liveness) == ("debug", 5)
    assert kept.services["echo"].workers == 3


def test_handlers_are_imported_only_when_asked(tmp_path):
    """Without a load_handler, load() checks a handler's form but imports nothing."""
    path = tmp_path / "t.toml"
    path.write_text("[services.x]\nhandler = 'no_such_module_x:X'\n")
    assert config.load(path, env={}).services["x"].handler == "no_such_module_x:X"
