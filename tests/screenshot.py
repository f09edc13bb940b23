"""docs/dashboard.png: a daemon under load for a few minutes, one worker killed, one service
stuck in start(), then a screenshot of its dashboard in headless Chromium.

    .venv/bin/python -m tests.screenshot docs/dashboard.png [--seconds 240]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from tests import browser
from tests.conftest import ROOT, STRICT_WARNINGS, RunningDaemon, write_config
from tests.helpers import Load, wait_until
from tests.test_observability import free_port

SERVICES = {"echo": {"handler": "tacore.services.echo:Echo", "workers": 2},
            "ta": {"handler": "tacore.services.ta:TA", "workers": 2},
            "stuck": {"handler": "stuck:Stuck", "start_timeout": 20, "max_restarts": 1}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seconds", type=float, default=240)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tc-shot-", dir="/tmp"))
    port = free_port()
    config = write_config(workdir / "tacore.toml", SERVICES, http={"listen": f"127.0.0.1:{port}"},
                          state={"sample_interval": 2},
                          daemon={"python_path": [str(ROOT), str(ROOT / "examples")]})
    d = RunningDaemon(config, workdir / "daemon.log", env={**os.environ, **STRICT_WARNINGS})
    driver = None
    try:
        wait_until(lambda: (d.runtime / "control.sock").exists(), 10, "the daemon")
        frontend = f"ipc://{d.runtime}/frontend.sock"
        prices = {"prices": [44 + (i % 7) * 0.3 for i in range(200)], "period": 14}
        with Load(frontend, "echo", clients=2, params={"n": 1}), \
                Load(frontend, "ta", clients=1, method="rsi", params=prices):
            time.sleep(args.seconds / 2)  # the plots need minutes of samples
            os.kill(d.workers("echo")[1]["pid"], signal.SIGKILL)
            time.sleep(args.seconds / 2)
            driver = browser.start(workdir / "profile", 1400, 1450)
            driver.get(f"http://127.0.0.1:{port}/")
            time.sleep(2.5)  # two refreshes
            summaries = driver.find_elements("css selector", "#events summary")
            if summaries:
                summaries[0].click()
            driver.save_screenshot(str(args.output))
    finally:
        if driver is not None:
            driver.quit()
        d.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
