"""Where rossflow's state lives: a SQLite file (one machine) or a PostgreSQL schema (several).

The choice is configuration, not code: ``ROSSFLOW_STATE_URL`` (or an explicit ``url=``) names a
SQLAlchemy URL; without one, every store keeps its own SQLite file, as before. A PostgreSQL URL
may name any driver (``postgresql+asyncpg://`` as in ``PREFECT_API_DATABASE_CONNECTION_URL``,
``postgresql+psycopg://``, ``postgresql://``): the stores are synchronous, so it is always opened
with psycopg. A URL without a password takes it from ``ROSSFLOW_STATE_PASSWORD`` (in the Docker
image, ``ROSSFLOW_STATE_PASSWORD_FILE`` names a secret file). The tables live in their own
schema (``ROSSFLOW_STATE_SCHEMA``, default ``rossflow``), so the database Prefect uses can hold
them without touching Prefect's tables.

SQL is written once for both dialects (``?`` placeholders, ``INSERT … ON CONFLICT``,
``RETURNING``); :class:`Conn` translates placeholders, :attr:`Database.for_update` adds row locks
where the database has them (SQLite's ``BEGIN IMMEDIATE`` already serialises writers).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

URL_ENV = "ROSSFLOW_STATE_URL"
PASSWORD_ENV = "ROSSFLOW_STATE_PASSWORD"  # noqa: S105 (a variable name)
SCHEMA_ENV = "ROSSFLOW_STATE_SCHEMA"
DEFAULT_SCHEMA = "rossflow"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class StateConfigError(ValueError):
    """The state store configuration is unusable (bad URL, bad schema name)."""


def configured_url() -> str | None:
    """``ROSSFLOW_STATE_URL`` if set and not blank."""
    value = os.environ.get(URL_ENV, "").strip()
    return value or None


def _pg_url(url: URL) -> URL:
    """psycopg, whatever driver the URL named; the password from ``ROSSFLOW_STATE_PASSWORD``
    when the URL has none (so that it can come from a secret file, not the URL)."""
    url = url.set(drivername="postgresql+psycopg")
    password = os.environ.get(PASSWORD_ENV)
    if not url.password and password:
        url = url.set(password=password.strip())
    return url


def describe(url: str | URL) -> str:
    """The URL without its password (for logs and error messages)."""
    return make_url(url).render_as_string(hide_password=True)


class Conn:
    """A DB-API connection inside a transaction: ``execute(sql, params)`` with ``?``
    placeholders returns a new cursor (``fetchone``, ``fetchall``, ``rowcount``, iteration).

    The stores run on the driver's connection from SQLAlchemy's pool, not on SQLAlchemy's
    ``Connection``: their statements are short and many, and that layer tripled their cost."""

    def __init__(self, raw: Any, *, pg: bool) -> None:
        self._raw = raw
        self._pg = pg

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._pg:
            sql = sql.replace("?", "%s")
        cursor = self._raw.cursor()
        cursor.execute(sql, tuple(params))
        return cursor


_PG_ENGINES: dict[tuple[int, str, str], Engine] = {}
_PG_LOCK = threading.Lock()


class Database:
    """A SQLite file or a PostgreSQL schema, with short transactions.

    SQLite: one connection per store, shared by its threads under a lock, WAL, 30 s busy
    timeout, ``BEGIN IMMEDIATE`` for writes (the behaviour of the stores before PostgreSQL).
    PostgreSQL: one connection pool per process, URL and schema; READ COMMITTED transactions;
    claims lock their rows (``SELECT … FOR UPDATE``) or rely on unique keys."""

    def __init__(self, path: str | Path | None = None, *, url: str | None = None) -> None:
        url = url or configured_url()
        if url is None and path is None:
            raise StateConfigError("a state store needs a file path or ROSSFLOW_STATE_URL")
        self.path = str(path) if path is not None else None
        self.memory = self.path == ":memory:"
        if url is not None and not self.memory:
            try:
                parsed = make_url(url)
            except Exception as exc:
                raise StateConfigError(f"{URL_ENV} is not a database URL: {exc}") from None
        else:
            parsed = None
        self.pg = parsed is not None and parsed.get_backend_name() == "postgresql"
        if parsed is not None and not self.pg and parsed.get_backend_name() != "sqlite":
            raise StateConfigError(
                f"{URL_ENV}: unsupported database {parsed.get_backend_name()!r}"
                " (use postgresql://… or sqlite:///…)"
            )
        self.schema = ""
        if self.pg:
            assert parsed is not None
            self.schema = os.environ.get(SCHEMA_ENV, "").strip() or DEFAULT_SCHEMA
            if not _SCHEMA_NAME.match(self.schema):
                raise StateConfigError(
                    f"{SCHEMA_ENV}={self.schema!r}: use lower-case letters, digits and _"
                )
            self.url = describe(parsed)
            self._parsed = parsed
            self.engine = self._pg_engine(parsed, self.schema)
            self._lock: Any = None
        else:
            if parsed is not None:
                self.path = parsed.database or ":memory:"
                self.memory = self.path == ":memory:"
            assert self.path is not None
            if not self.memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.url = f"sqlite:///{self.path}"
            self.engine = self._sqlite_engine(self.path)
            self._lock = threading.RLock()
        self._raw: Any = None
        self._pid = os.getpid()

    # -- engines ---------------------------------------------------------------------------

    @staticmethod
    def _pg_engine(url: URL, schema: str) -> Engine:
        key = (os.getpid(), _pg_url(url).render_as_string(hide_password=False), schema)
        with _PG_LOCK:
            engine = _PG_ENGINES.get(key)
            if engine is None:
                engine = create_engine(
                    _pg_url(url),
                    pool_size=8,
                    max_overflow=24,
                    pool_pre_ping=True,
                    pool_recycle=1800,
                    connect_args={"options": f"-c search_path={schema}"},
                )
                with engine.begin() as conn:
                    # Serialise schema creation between processes (CREATE SCHEMA IF NOT EXISTS
                    # is not safe against a concurrent one).
                    conn.exec_driver_sql(
                        "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"rossflow:{schema}",)
                    )
                    conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                _PG_ENGINES[key] = engine
        return engine

    @staticmethod
    def _sqlite_engine(path: str) -> Engine:
        engine = create_engine(
            "sqlite://" if path == ":memory:" else f"sqlite:///{path}",
            poolclass=StaticPool,
            connect_args={"timeout": 30, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # We emit BEGIN ourselves (below); the driver must not open transactions.
            dbapi_conn.isolation_level = None
            # Two processes opening a new file at once: switching it to WAL can answer
            # "database is locked" at once instead of waiting on the busy timeout.
            for attempt in range(50):
                try:
                    if path != ":memory:":
                        dbapi_conn.execute("PRAGMA journal_mode=WAL")
                    dbapi_conn.execute("PRAGMA synchronous=NORMAL")
                    return
                except Exception as exc:
                    if "locked" not in str(exc) or attempt == 49:
                        raise
                    time.sleep(0.1)

        return engine

    # -- use -------------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return "postgresql" if self.pg else "sqlite"

    @property
    def real(self) -> str:
        """Column type for epoch seconds (PostgreSQL's REAL is only 4 bytes)."""
        return "DOUBLE PRECISION" if self.pg else "REAL"

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.pg else ""

    @contextmanager
    def tx(self, *, write: bool = True) -> Iterator[Conn]:
        """One transaction, committed on success and rolled back on any exception."""
        if self.pg:
            yield from self._pg_tx()
            return
        with self._lock:
            if self._raw is None:
                self._raw = self.engine.raw_connection()  # the one connection (StaticPool)
            cursor = self._raw.cursor()
            # SQLite: BEGIN IMMEDIATE takes the write lock up front (waiting on the busy
            # timeout), so a transaction never fails half-way on a lock; reads take none.
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Conn(self._raw, pg=False)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def _pg_tx(self) -> Iterator[Conn]:
        if self._pid != os.getpid():
            # A forked child never uses its parent's pooled connections (one pool per process).
            self.engine = self._pg_engine(self._parsed, self.schema)
            self._pid = os.getpid()
        raw = self.engine.raw_connection()
        try:
            try:
                yield Conn(raw, pg=True)
            except BaseException:
                raw.rollback()
                raise
            raw.commit()
        except Exception as exc:
            if getattr(raw, "closed", False) or _connection_lost(exc):
                raw.invalidate()  # the pool opens a fresh connection next time
            raise
        finally:
            raw.close()  # back to the pool

    def read(self) -> Any:
        """A read-only transaction (SQLite: deferred, takes no write lock)."""
        return self.tx(write=False)

    def advisory_lock(self, conn: Conn, name: str) -> None:
        """Serialise ``name`` between processes until the transaction ends (PostgreSQL);
        SQLite's ``BEGIN IMMEDIATE`` already does."""
        if self.pg:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def close(self) -> None:
        if not self.pg:
            with self._lock:
                if self._raw is not None:
                    self._raw.close()
                    self._raw = None
                self.engine.dispose()


def _connection_lost(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError)
