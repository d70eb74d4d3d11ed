"""Remembered ``request_id`` values: Rossum retries a delivery it thinks failed (timeout, 5xx),
so the same hook call can arrive several times; only the first one may emit an event.

A state store table (SQLite file, WAL; or the shared PostgreSQL schema when
``ROSSFLOW_STATE_URL`` is set, so that several receivers behind one address share it) so that a
restart of the receiver does not forget what it already passed on; ``":memory:"`` keeps it in the
process only. Entries expire after ``ttl_s`` (default
one day; Rossum gives up retrying after a few minutes). A request id is remembered only after its
event reached the Prefect server, so a delivery answered with 503 is processed again when Rossum
retries it.
"""

from __future__ import annotations

import time
from pathlib import Path

from rossflow.state.store import StateStore

PRUNE_EVERY_S = 60.0

MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS seen_requests (
        request_id TEXT PRIMARY KEY, seen_at {real} NOT NULL, event_id TEXT);
    CREATE INDEX IF NOT EXISTS seen_at_idx ON seen_requests (seen_at)
    """,
)


class DedupStore(StateStore):
    """``request_id`` → when it was passed on; thread-safe, expires after ``ttl_s``."""

    component = "webhook_dedup"
    migrations = MIGRATIONS

    def __init__(
        self, path: str | Path = ":memory:", ttl_s: float = 86_400.0, *, url: str | None = None
    ) -> None:
        super().__init__(path, url=url)
        self.ttl_s = ttl_s
        self._last_prune = 0.0

    def seen(self, request_id: str) -> str | None:
        """The event id emitted for ``request_id`` if it was passed on within the TTL."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT event_id, seen_at FROM seen_requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None or row[1] < time.time() - self.ttl_s:
            return None
        return str(row[0] or "")

    def remember(self, request_id: str, event_id: str) -> None:
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO seen_requests (request_id, seen_at, event_id) VALUES (?, ?, ?)"
                " ON CONFLICT(request_id) DO UPDATE SET seen_at = excluded.seen_at,"
                " event_id = excluded.event_id",
                (request_id, now, event_id),
            )
            if now - self._last_prune > PRUNE_EVERY_S:
                conn.execute("DELETE FROM seen_requests WHERE seen_at < ?", (now - self.ttl_s,))
                self._last_prune = now

    def __len__(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM seen_requests").fetchone()[0])
