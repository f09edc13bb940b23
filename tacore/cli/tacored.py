"""``tacored``: validate the configuration, then run the daemon in the foreground."""

from __future__ import annotations

import faulthandler
import json
import resource
import signal
import sys
import traceback

import click

from tacore import __version__, config as configuration
from tacore.daemon.app import Daemon
from tacore.errors import EX_CONFIG, EX_SOFTWARE, ConfigError, StartupError
from tacore.observability.logging import configure_logging
from tacore.runtime.loader import load_handler


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="TACORE_CONFIG", metavar="PATH",
              help="Configuration file (env: TACORE_CONFIG).")
@click.option("--check", is_flag=True,
              help="Validate the file (importing every handler), print the effective "
                   "configuration as JSON, and exit.")
@click.version_option(__version__, prog_name="tacored")
def main(config_path: str | None, check: bool) -> None:
    """Run the tacore supervisor daemon in the foreground.

    Exit codes: 0 clean stop, 78 configuration problem, 73 a directory or socket file cannot
    be created, 69 an endpoint is in use or another daemon runs on the same runtime_dir. Each
    error names the file and the [section] key to change.

    \b
    Examples:
      tacored --config /etc/tacore/tacore.toml
      tacored --check --config etc/tacore.toml
    """
    if not config_path:
        _fail(["no configuration file given: pass --config PATH or set TACORE_CONFIG"], EX_CONFIG)
    try:
        config = configuration.load(config_path, load_handler=load_handler)
    except ConfigError as e:
        _fail(e.errors, EX_CONFIG)
    if check:
        click.echo(json.dumps(config.as_dict(), indent=2))
        click.echo(f"tacored: {config.path}: configuration is valid", err=True)
        return
    log = configure_logging(config.daemon.log_level, config.daemon.log_format)
    _raise_fd_limit()
    # `kill -USR1 <tacored>` writes the daemon's own stack to stderr (the journal): a wedged
    # loop shows where it is. Workers re-register SIGUSR1 for their own dumps.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        code = Daemon(config, log).run()
    except StartupError as e:
        log.error("daemon.startup_failed", config=str(config.path), setting=e.setting,
                  error=str(e), exit_code=e.exit_code)
        _fail([f"{config.path}: {e.setting}: {e}"], e.exit_code)
    except Exception as e:  # a bug: say so loudly; the daemon has already killed its workers
        log.critical("daemon.crashed", error=repr(e), exception=traceback.format_exc())
        sys.exit(EX_SOFTWARE)
    sys.exit(code)


def _raise_fd_limit() -> None:
    """Every connected client holds a descriptor in the daemon: use all the kernel allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass  # forbidden (e.g. a seccomp filter): the soft limit stays


def _fail(lines: list[str], code: int):
    for line in lines:
        click.echo(f"tacored: {line}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
