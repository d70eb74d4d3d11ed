"""A durable ledger of side effects, so that a rerun after a crash repeats none of them.

Every side effect (a delivery to a target, an upload to a queue, a sequence number handed out
for a file name) is written here *before* it happens (``started``) and again when its outcome
is known (``done``/``failed``). A rerun reads the ledger first:

* ``done``    → skip the side effect and reuse the recorded outcome;
* ``started`` → the previous run died mid-flight: repeat it *with the same idempotency key*
  (the ERP deduplicates) or reconcile (the ingest side looks the upload up in Rossum);
* absent      → do it.

SQLite in WAL mode: several threads and processes on one machine may share one file. Writes are
short transactions; the batch helpers group a whole batch into one transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rossflow.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    key          TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,          -- 'delivery' | 'upload' | ...
    subject      TEXT NOT NULL,          -- e.g. annotation id, or queue:sha256
    step         TEXT NOT NULL DEFAULT '',
    target       TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL,          -- 'started' | 'done' | 'failed'
    attempts     INTEGER NOT NULL DEFAULT 0,
    result       TEXT,                   -- JSON: http status, refs, ids …
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS effects_subject ON effects(kind, subject);
CREATE TABLE IF NOT EXISTS sequences (
    name   TEXT NOT NULL,
    owner  TEXT NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (name, owner)
);
CREATE TABLE IF NOT EXISTS sequence_heads (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Effect:
    key: str
    kind: str
    subject: str
    step: str
    target: str
    state: str
    attempts: int
    result: dict[str, Any]
    created_at: float
    updated_at: float


class Ledger(SqliteStore):
    """Durable record of side effects keyed by an idempotency key."""

    schema = SCHEMA

    def __init__(self, path: str | Path = ".rossflow/ledger.db") -> None:
        super().__init__(path)

    # -- effects ---------------------------------------------------------------------------

    def get(self, key: str) -> Effect | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT key, kind, subject, step, target, state, attempts, result, created_at,"
                " updated_at FROM effects WHERE key = ?",
                (key,),
            ).fetchone()
        return _effect(row) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, Effect]:
        keys = list(keys)
        found: dict[str, Effect] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                    "SELECT key, kind, subject, step, target, state, attempts, result, created_at,"
                    f" updated_at FROM effects WHERE key IN ({marks})",
                    chunk,
                ):
                    found[row[0]] = _effect(row)
        return found

    def begin(
        self, key: str, *, kind: str, subject: str, step: str = "", target: str = ""
    ) -> Effect | None:
        """Record intent; returns the existing effect if it is already ``done`` (then skip)."""
        return self.begin_many([(key, kind, subject, step, target)]).get(key)

    def begin_many(self, items: Iterable[tuple[str, str, str, str, str]]) -> dict[str, Effect]:
        """Record intent for many effects in one transaction; returns those already done."""
        now = time.time()
        done: dict[str, Effect] = {}
        with self._tx() as conn:
            for key, kind, subject, step, target in items:
                row = conn.execute(
                    "SELECT key, kind, subject, step, target, state, attempts, result, created_at,"
                    " updated_at FROM effects WHERE key = ?",
                    (key,),
                ).fetchone()
                if row and row[5] == "done":
                    done[key] = _effect(row)
                    continue
                conn.execute(
                    "INSERT INTO effects(key, kind, subject, step, target, state, attempts,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'started', 1, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET state='started', attempts=attempts+1,"
                    " updated_at=excluded.updated_at",
                    (key, kind, subject, step, target, now, now),
                )
        return done

    def finish(self, key: str, *, ok: bool, result: dict[str, Any] | None = None) -> None:
        self.finish_many([(key, ok, result or {})])

    def finish_many(self, items: Iterable[tuple[str, bool, dict[str, Any]]]) -> None:
        now = time.time()
        with self._tx() as conn:
            for key, ok, result in items:
                conn.execute(
                    "UPDATE effects SET state = ?, result = ?, updated_at = ? WHERE key = ?",
                    ("done" if ok else "failed", json.dumps(result, default=str), now, key),
                )

    def for_subject(self, kind: str, subject: str) -> list[Effect]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, kind, subject, step, target, state, attempts, result, created_at,"
                " updated_at FROM effects WHERE kind = ? AND subject = ? ORDER BY created_at",
                (kind, subject),
            ).fetchall()
        return [_effect(r) for r in rows]

    def in_state(self, kind: str, state: str, *, older_than_s: float = 0.0) -> list[Effect]:
        """Effects stuck in ``state`` (e.g. ``started`` after a crash) for ``older_than_s``+."""
        cutoff = time.time() - older_than_s
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, kind, subject, step, target, state, attempts, result, created_at,"
                " updated_at FROM effects WHERE kind = ? AND state = ? AND updated_at <= ?",
                (kind, state, cutoff),
            ).fetchall()
        return [_effect(r) for r in rows]

    def forget(self, kind: str, subject: str) -> int:
        """Drop every effect of a subject (explicit re-export of one annotation)."""
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM effects WHERE kind = ? AND subject = ?", (kind, subject)
            )
            conn.execute("DELETE FROM sequences WHERE owner LIKE ?", (f"{subject}:%",))
            return cur.rowcount

    # -- sequences -------------------------------------------------------------------------

    def sequence(self, name: str, owner: str, *, start: int = 0, step: int = 1) -> int:
        """A sequence number for ``owner``, allocated once: a rerun gets the same number."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT value FROM sequences WHERE name = ? AND owner = ?", (name, owner)
            ).fetchone()
            if row:
                return int(row[0])
            head = conn.execute(
                "SELECT value FROM sequence_heads WHERE name = ?", (name,)
            ).fetchone()
            value = start if head is None else int(head[0]) + step
            conn.execute(
                "INSERT INTO sequence_heads(name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
            conn.execute(
                "INSERT INTO sequences(name, owner, value) VALUES (?, ?, ?)", (name, owner, value)
            )
            return value


def _effect(row: tuple[Any, ...]) -> Effect:
    return Effect(
        key=row[0],
        kind=row[1],
        subject=row[2],
        step=row[3],
        target=row[4],
        state=row[5],
        attempts=int(row[6]),
        result=json.loads(row[7]) if row[7] else {},
        created_at=float(row[8]),
        updated_at=float(row[9]),
    )
