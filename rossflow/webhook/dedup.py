"""Remembered ``request_id`` values: Rossum retries a delivery it thinks failed (timeout, 5xx),
so the same hook call can arrive several times; only the first one may emit an event.

SQLite (one small table, WAL) so that a restart of the receiver does not forget what it already
passed on; ``":memory:"`` keeps it in the process only. Entries expire after ``ttl_s`` (default
one day; Rossum gives up retrying after a few minutes). A request id is remembered only after its
event reached the Prefect server, so a delivery answered with 503 is processed again when Rossum
retries it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

PRUNE_EVERY_S = 60.0


class DedupStore:
    """``request_id`` → when it was passed on; thread-safe, expires after ``ttl_s``."""

    def __init__(self, path: str | Path = ":memory:", ttl_s: float = 86_400.0) -> None:
        self.path = str(path)
        self.ttl_s = ttl_s
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen_requests ("
            " request_id TEXT PRIMARY KEY, seen_at REAL NOT NULL, event_id TEXT)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS seen_at_idx ON seen_requests (seen_at)")
        self._last_prune = 0.0

    def seen(self, request_id: str) -> str | None:
        """The event id emitted for ``request_id`` if it was passed on within the TTL."""
        with self._lock:
            row = self._db.execute(
                "SELECT event_id, seen_at FROM seen_requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None or row[1] < time.time() - self.ttl_s:
            return None
        return str(row[0] or "")

    def remember(self, request_id: str, event_id: str) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO seen_requests (request_id, seen_at, event_id)"
                " VALUES (?, ?, ?)",
                (request_id, now, event_id),
            )
            if now - self._last_prune > PRUNE_EVERY_S:
                self._db.execute("DELETE FROM seen_requests WHERE seen_at < ?", (now - self.ttl_s,))
                self._last_prune = now

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM seen_requests").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
