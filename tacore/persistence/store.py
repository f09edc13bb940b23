"""The state database: lifecycle events and metric samples in SQLite, owned by the daemon.

Writes are queued in memory and committed once per loop tick (``flush``), never on the request
path. Nothing here may take the daemon down: any SQLite error puts the store in a *degraded*
state (reported in status and health, logged once) and the daemon goes on supervising and
brokering; the store tries to reopen the file every ``REOPEN_EVERY`` seconds. A corrupt file is
moved aside (``tacore.db.corrupt-<time>``) and a new one started; a file deleted while open is
noticed and recreated.

Schema versions are ``PRAGMA user_version``; ``MIGRATIONS[n]`` takes a database from version n
to n + 1.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections import deque
from pathlib import Path

MIGRATIONS = [
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        event TEXT NOT NULL,
        level TEXT NOT NULL,
        service TEXT,
        slot INTEGER,
        pid INTEGER,
        context TEXT NOT NULL
    );
    CREATE INDEX events_ts ON events (ts);
    CREATE INDEX events_service_ts ON events (service, ts);
    CREATE TABLE worker_samples (
        ts REAL NOT NULL, service TEXT NOT NULL, slot INTEGER NOT NULL, pid INTEGER,
        state TEXT NOT NULL, cpu_percent REAL, rss_bytes INTEGER, threads INTEGER,
        fds INTEGER, requests INTEGER
    );
    CREATE INDEX worker_samples_ts ON worker_samples (ts);
    CREATE TABLE service_samples (
        ts REAL NOT NULL, service TEXT NOT NULL, requests INTEGER, errors INTEGER,
        queue INTEGER, ready INTEGER, p50 REAL, p90 REAL, p99 REAL
    );
    CREATE INDEX service_samples_ts ON service_samples (ts);
    CREATE TABLE daemon_samples (
        ts REAL NOT NULL, cpu_percent REAL, rss_bytes INTEGER, loop_lag REAL
    );
    CREATE INDEX daemon_samples_ts ON daemon_samples (ts);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
REOPEN_EVERY = 30.0
RECENT = 1000  # events kept in memory too: served while the database is unavailable
PRUNE_EVERY = 3600.0
SAMPLE_TABLES = ("worker_samples", "service_samples", "daemon_samples")


class Store:
    def __init__(self, path: Path, retention_days: float, max_db_mb: float, enabled: bool = True):
        self.path, self.retention, self.max_bytes = path, retention_days * 86400, max_db_mb * 2**20
        self.enabled = enabled
        self.db: sqlite3.Connection | None = None
        self.inode: int | None = None
        self.degraded: str | None = None if enabled else "disabled by [state] enabled = false"
        self.pending_events: list[tuple] = []
        self.pending_samples: list[tuple[str, tuple]] = []
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self.retry_at = 0.0
        self.prune_at = 0.0
        self.notices: list[str] = []  # what the daemon should log (the store does no logging)

    # --- opening ------------------------------------------------------------------------

    def open(self, now: float) -> None:
        if not self.enabled:
            return
        try:
            self._open()
            self.degraded = None
        except sqlite3.DatabaseError as e:
            if self._is_corrupt(e) and self.path.exists():
                self._move_aside(e)
                try:
                    self._open()
                    self.degraded = None
                    return
                except (sqlite3.Error, OSError) as again:
                    e = again
            self._degrade(now, e)
        except OSError as e:
            self._degrade(now, e)

    def _open(self) -> None:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: a commit is not an fsync
            db.execute("PRAGMA busy_timeout = 100")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this "
                                            f"tacore ({SCHEMA_VERSION})")
            for target in range(version, SCHEMA_VERSION):
                db.executescript(f"BEGIN; {MIGRATIONS[target]}; PRAGMA user_version = "
                                 f"{target + 1}; COMMIT;")
            db.execute("SELECT max(id) FROM events").fetchone()  # reads a page: finds corruption
        except BaseException:
            db.close()
            raise
        self.db, self.inode = db, os.stat(self.path).st_ino

    @staticmethod
    def _is_corrupt(error: Exception) -> bool:
        text = str(error).lower()
        return "not a database" in text or "malformed" in text or "corrupt" in text

    def _move_aside(self, error: Exception) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(Path(f"{aside}{suffix}"))
        self.notices.append(f"corrupt database moved to {aside} ({error}); a new one was started")

    def _degrade(self, now: float, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        if reason != self.degraded:
            self.notices.append(f"persistence degraded: {reason}; supervising and brokering "
                                f"go on, events are kept in memory only; retrying every "
                                f"{REOPEN_EVERY:g}s")
        self.degraded, self.retry_at = reason, now + REOPEN_EVERY
        self.close()

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
        self.db = None

    # --- writing ------------------------------------------------------------------------

    def add_event(self, ts: float, name: str, level: str, context: dict) -> None:
        ctx = {k: v for k, v in context.items() if k not in ("service", "slot", "pid")}
        row = (ts, name, level, context.get("service"), context.get("slot"),
               context.get("pid"), json.dumps(ctx, default=str))
        self.recent.append(_event_dict((None, *row)))
        if self.enabled:
            self.pending_events.append(row)

    def add_samples(self, table: str, rows: list[tuple]) -> None:
        if self.enabled:
            self.pending_samples += [(table, row) for row in rows]

    def flush(self, now: float) -> None:
        """Commit what is queued, in one transaction; called once per loop tick."""
        if not self.enabled:
            return
        if self.db is None:
            if now >= self.retry_at:
                self.open(now)
            if self.db is None:
                self._drop_backlog()
                return
        if not (self.pending_events or self.pending_samples) and now < self.prune_at:
            return
        try:
            self._check_file()
            with self.db:  # BEGIN ... COMMIT, or ROLLBACK on error
                self.db.executemany("INSERT INTO events (ts, event, level, service, slot, pid,"
                                    " context) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    self.pending_events)
                for table, row in self.pending_samples:
                    marks = ", ".join("?" * len(row))
                    self.db.execute(f"INSERT INTO {table} VALUES ({marks})", row)
            self.pending_events, self.pending_samples = [], []
            if now >= self.prune_at:
                self.prune(time.time())
                self.prune_at = now + PRUNE_EVERY
        except (sqlite3.Error, OSError) as e:
            self._degrade(now, e)
            self._drop_backlog()

    def _check_file(self) -> None:
        """Notice a database file deleted or replaced under us: writing on would lose it all."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if inode != self.inode:
            self.notices.append(f"database file {self.path} was removed or replaced; "
                                "a new one is started")
            self._open()

    def _drop_backlog(self) -> None:
        """Degraded: keep memory bounded (the newest events stay in ``recent``)."""
        self.pending_events = self.pending_events[-RECENT:]
        self.pending_samples = []

    def prune(self, wall_now: float) -> None:
        """Drop rows older than retention_days, then oldest samples and events over max_db_mb."""
        horizon = wall_now - self.retention
        for table in ("events", *SAMPLE_TABLES):
            self.db.execute(f"DELETE FROM {table} WHERE ts < ?", (horizon,))
        for table in (*SAMPLE_TABLES, "events"):
            while self.size() > self.max_bytes:
                oldest = self.db.execute(f"SELECT min(ts), max(ts) FROM {table}").fetchone()
                if oldest[0] is None:
                    break
                cut = oldest[0] + max(60.0, (oldest[1] - oldest[0]) / 10)
                self.db.execute(f"DELETE FROM {table} WHERE ts < ?", (cut,))
                self.db.execute("PRAGMA incremental_vacuum")
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("PRAGMA incremental_vacuum")

    def size(self) -> int:
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    # --- reading ------------------------------------------------------------------------

    def events(self, since: float | None = None, service: str | None = None,
               after_id: int | None = None, limit: int = 1000) -> list[dict]:
        """Events oldest first: from the database (flush first), else from memory, where
        they have no id (degraded)."""
        if self.db is not None:
            try:
                return self._query(since, service, after_id, limit)
            except sqlite3.Error:
                pass
        rows = [e for e in self.recent
                if (since is None or e["ts"] >= since) and (service is None or
                                                             e["service"] == service)]
        return rows[-limit:]

    def _query(self, since, service, after_id, limit) -> list[dict]:
        clauses, args = [], []
        for clause, value in (("ts >= ?", since), ("service = ?", service), ("id > ?", after_id)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.execute(f"SELECT * FROM (SELECT * FROM events {where} ORDER BY id DESC "
                               f"LIMIT ?) ORDER BY id", (*args, limit)).fetchall()
        return [_event_dict(row) for row in rows]

    def service_series(self, since: float, step: float, until: float = math.inf) -> list[tuple]:
        """(service, bucket start, requests/s, p99) per service and ``step`` seconds from
        ``since`` to ``until``: one range scan of the ts index. requests/s is the increase of
        the counter between consecutive samples (a daemon restart, which resets it, leaves a
        gap, not a negative rate)."""
        return self._series("""
            SELECT service, CAST(ts / :step AS INTEGER) * :step AS bucket,
                   avg(CASE WHEN rate >= 0 THEN rate END), max(p99)
            FROM (SELECT service, ts, p99,
                         (requests - lag(requests) OVER w) / (ts - lag(ts) OVER w) AS rate
                  FROM service_samples WHERE ts >= :since AND ts < :until
                  WINDOW w AS (PARTITION BY service ORDER BY ts))
            GROUP BY service, bucket ORDER BY service, bucket""", since, step, until)

    def worker_series(self, since: float, step: float, until: float = math.inf) -> list[tuple]:
        """(service, slot, bucket start, CPU %, RSS bytes), averaged per ``step`` seconds from
        ``since`` to ``until``: one range scan of the ts index."""
        return self._series("""
            SELECT service, slot, CAST(ts / :step AS INTEGER) * :step AS bucket,
                   avg(cpu_percent), avg(rss_bytes)
            FROM worker_samples WHERE ts >= :since AND ts < :until
            GROUP BY service, slot, bucket ORDER BY service, slot, bucket""", since, step, until)

    def _series(self, sql: str, since: float, step: float, until: float) -> list[tuple]:
        if self.db is None:
            return []
        try:
            return self.db.execute(sql, {"since": since, "step": step, "until": until}).fetchall()
        except sqlite3.Error:
            return []  # degraded: the next flush finds out and says so

    def status(self) -> dict:
        info = {"path": str(self.path), "degraded": self.degraded, "enabled": self.enabled}
        if self.db is not None:
            try:
                info["size_bytes"] = os.path.getsize(self.path)
            except OSError:
                info["size_bytes"] = None
        return info


def _event_dict(row: tuple) -> dict:
    event_id, ts, name, level, service, slot, pid, context = row
    return {"id": event_id, "ts": ts, "event": name, "level": level, "service": service,
            "slot": slot, "pid": pid, **json.loads(context)}
