"""State database growth: samples written for 8 workers, extrapolated to one hour.

    .venv/bin/python bench/state_size.py [--samples 300]

Runs tacored with 8 echo workers and a short sample_interval until ``--samples`` samples
were taken, then divides the database's size by the samples taken and multiplies by the
samples of an hour at the default interval (5 s: 720 samples).
"""

from __future__ import annotations
from contextlib import closing

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TACORED = str(Path(sys.executable).with_name("tacored"))
DEFAULT_INTERVAL = 5.0


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tcs-") as tmp:
        config = Path(tmp) / "t.toml"
        config.write_text(f'[daemon]\nruntime_dir = "{tmp}/run"\nstate_dir = "{tmp}/state"\n'
                          f'log_level = "warning"\n[state]\nsample_interval = {args.interval}\n'
                          '[services.echo]\nhandler = "tacore.services.echo:Echo"\nworkers = 8\n')
        proc = subprocess.Popen([TACORED, "--config", str(config)], stderr=subprocess.DEVNULL)
        db_path = Path(tmp) / "state" / "tacore.db"
        try:
            deadline = time.monotonic() + args.samples * args.interval * 4 + 30
            while time.monotonic() < deadline:
                try:
                    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db, db:
                        taken = db.execute("SELECT count(*) FROM daemon_samples").fetchone()[0]
                except sqlite3.Error:
                    taken = 0
                if taken >= args.samples:
                    break
                time.sleep(0.2)  # the daemon samples on its own clock
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        with closing(sqlite3.connect(db_path)) as db, db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            taken = db.execute("SELECT count(*) FROM daemon_samples").fetchone()[0]
            rows = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("events", "worker_samples", "service_samples", "daemon_samples")}
        size = os.path.getsize(db_path)
    per_hour = size / taken * (3600 / DEFAULT_INTERVAL)
    print(f"samples taken: {taken} (8 workers), rows: {rows}")
    print(f"database size: {size / 1024:.0f} KiB -> {per_hour / 2**20:.2f} MiB per hour at "
          f"sample_interval = {DEFAULT_INTERVAL:g}s (extrapolated)")


if __name__ == "__main__":
    main()
