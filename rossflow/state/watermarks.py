"""Exported-since watermarks: per (queue, pipeline), how far the exported-since mode has read.

``advance`` is a compare-and-set: it moves the watermark only if it still has the value the
caller read, so two workers racing over the same queue never move it backwards or skip a gap
that the other has not exported yet."""

from __future__ import annotations

import time
from pathlib import Path

from rossflow.state.store import StateStore

MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS export_watermarks (
        queue       TEXT NOT NULL,
        pipeline    TEXT NOT NULL,
        value       TEXT NOT NULL,
        updated_at  {real} NOT NULL,
        PRIMARY KEY (queue, pipeline)
    )
    """,
)


class WatermarkStore(StateStore):
    """``get``/``advance`` a watermark (an opaque string, e.g. an ISO timestamp)."""

    component = "watermarks"
    migrations = MIGRATIONS

    def __init__(
        self, path: str | Path | None = ".rossflow/state.db", *, url: str | None = None
    ) -> None:
        super().__init__(path, url=url)

    def get(self, queue: str | int, pipeline: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT value FROM export_watermarks WHERE queue = ? AND pipeline = ?",
                (str(queue), pipeline),
            ).fetchone()
        return str(row[0]) if row else None

    def advance(self, queue: str | int, pipeline: str, expected: str | None, new: str) -> bool:
        """Set the watermark to ``new`` if it is still ``expected`` (None: not set yet)."""
        now = time.time()
        with self._tx() as conn:
            if expected is None:
                cur = conn.execute(
                    "INSERT INTO export_watermarks(queue, pipeline, value, updated_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT(queue, pipeline) DO NOTHING",
                    (str(queue), pipeline, new, now),
                )
            else:
                cur = conn.execute(
                    "UPDATE export_watermarks SET value = ?, updated_at = ?"
                    " WHERE queue = ? AND pipeline = ? AND value = ?",
                    (new, now, str(queue), pipeline, expected),
                )
            return cur.rowcount == 1
