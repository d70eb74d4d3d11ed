"""Versioned schema: each store (``component``) has an ordered list of migrations.

``schema_version`` records, per component, how many of its migrations were applied. Opening a
store applies the missing ones in one transaction, serialised between processes and hosts
(``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL; both run DDL transactionally),
so two workers starting at once upgrade once. Migration 1 of every component is the schema the
stores created before versioning existed (``CREATE … IF NOT EXISTS``), so files written by older
rossflow versions (no ``schema_version`` table) are upgraded in place.

A migration is a string of ``;``-separated statements; ``{real}`` is replaced by the column type
for epoch seconds of the database.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rossflow.state.database import Conn, Database

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    component   TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    updated_at  {real} NOT NULL
)
"""


class SchemaTooNew(RuntimeError):
    """The database was upgraded by a newer rossflow than this one."""


def statements(migration: str, db: Database) -> list[str]:
    text = migration.replace("{real}", db.real)
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def current_version(conn: Conn, component: str) -> int:
    row = conn.execute(
        "SELECT version FROM schema_version WHERE component = ?", (component,)
    ).fetchone()
    return int(row[0]) if row else 0


def _table_exists(conn: Conn, db: Database) -> bool:
    if db.pg:
        row = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ?"
            " AND table_name = 'schema_version'",
            (db.schema,),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
    return row is not None


def migrate(db: Database, component: str, migrations: Sequence[str]) -> int:
    """Bring ``component`` up to ``len(migrations)``; returns the version it was at."""
    target = len(migrations)
    with db.read() as conn:
        if _table_exists(conn, db):
            found = current_version(conn, component)
            _check(db, component, found, target)
            if found == target:
                return found
    with db.tx() as conn:
        db.advisory_lock(conn, f"rossflow-schema:{db.schema}")
        for sql in statements(VERSION_TABLE, db):
            conn.execute(sql)
        found = current_version(conn, component)
        _check(db, component, found, target)
        for migration in migrations[found:]:
            for sql in statements(migration, db):
                conn.execute(sql)
        if found != target:
            conn.execute(
                "INSERT INTO schema_version(component, version, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(component) DO UPDATE SET version = excluded.version,"
                " updated_at = excluded.updated_at",
                (component, target, time.time()),
            )
        return found


def _check(db: Database, component: str, found: int, target: int) -> None:
    if found > target:
        raise SchemaTooNew(
            f"state store {db.url}: '{component}' tables are at schema version {found}, this"
            f" rossflow knows versions up to {target}; upgrade rossflow on this machine"
        )
