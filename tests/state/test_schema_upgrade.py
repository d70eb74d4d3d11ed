"""State written by an older rossflow is upgraded in place when a newer one opens it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from rossflow.ingest.state import IngestState
from rossflow.ledger import SCHEMA as LEDGER_V1
from rossflow.ledger import Ledger
from rossflow.state import Database, migrate
from tests.fixtures.postgres import StateBackend

# The ledger and ingest tables exactly as rossflow created them before schema versions existed
# (one SQLite file, no schema_version table).
PRE_VERSIONING = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '', target TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, result TEXT, created_at REAL NOT NULL,
    updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS effects_subject ON effects(kind, subject);
CREATE TABLE IF NOT EXISTS sequences (
    name TEXT NOT NULL, owner TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (name, owner));
CREATE TABLE IF NOT EXISTS sequence_heads (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_runs (
    run_id TEXT PRIMARY KEY, owner TEXT NOT NULL, started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL, finished_at REAL);
CREATE TABLE IF NOT EXISTS ingest_leases (
    key TEXT PRIMARY KEY, token TEXT NOT NULL, run_id TEXT NOT NULL, acquired_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_locks (
    name TEXT PRIMARY KEY, run_id TEXT NOT NULL, acquired_at REAL NOT NULL);
"""


def versions(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT component, version FROM schema_version")}


def test_sqlite_file_from_before_versioning_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "ingest.db"
    old = sqlite3.connect(path)
    old.executescript(PRE_VERSIONING)
    now = time.time()
    old.execute(
        "INSERT INTO effects VALUES ('done-key', 'upload', '1:abc', 'upload', 'a.pdf', 'done', 1,"
        " '{\"document\": 5}', ?, ?)",
        (now, now),
    )
    old.execute(
        "INSERT INTO effects VALUES ('started-key', 'delivery', '9', 'erp', 't', 'started', 1,"
        " NULL, ?, ?)",
        (now, now),
    )
    old.execute("INSERT INTO sequence_heads VALUES ('files', 41)")
    old.commit()
    old.close()

    ledger = Ledger(path)
    state = IngestState(path)
    assert versions(ledger.db) == {"ledger": 3, "ingest": 1}
    done = ledger.get("done-key")
    assert done is not None and done.state == "done" and done.result == {"document": 5}
    # A step left 'started' by the old version has no holder: a new claim takes it over.
    assert ledger.claim("started-key", kind="delivery", subject="9") is None
    assert ledger.get("started-key").attempts == 2  # type: ignore[union-attr]
    assert ledger.sequence("files", "new-owner") == 42
    assert state.stats() == {"runs": 0, "leases": 0}
    # Opening again changes nothing.
    assert migrate(ledger.db, "ledger", Ledger.migrations) == 3


def test_postgresql_schema_upgraded_from_version_1(pg_state: StateBackend) -> None:
    db = Database(url=pg_state.url)
    assert migrate(db, "ledger", (LEDGER_V1,)) == 0  # as a first release would have left it
    now = time.time()
    with db.tx() as conn:
        conn.execute(
            "INSERT INTO effects(key, kind, subject, state, attempts, created_at, updated_at)"
            " VALUES ('k', 'delivery', '3', 'started', 1, ?, ?)",
            (now, now),
        )
    assert versions(db) == {"ledger": 1}
    ledger = Ledger(url=pg_state.url)
    assert versions(db) == {"ledger": 3}
    assert ledger.claim("k", kind="delivery", subject="3") is None
    effect = ledger.get("k")
    assert effect is not None and effect.attempts == 2 and effect.created_at == now
