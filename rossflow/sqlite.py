"""One SQLite file shared by threads and processes: WAL, busy timeout, short transactions.

For stores that only ever live on one machine. The ledger, ingest state, webhook dedupe and
watermarks are :class:`rossflow.state.StateStore` stores instead (SQLite by default, PostgreSQL when
``ROSSFLOW_STATE_URL`` is set); a store that must be shared between machines belongs there.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SqliteStore:
    """A connection usable from any thread (serialised by a lock) with ``schema`` applied."""

    schema = ""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.RLock()
        # Two processes or threads opening a new file at once: switching it to WAL can answer
        # "database is locked" at once instead of waiting on the busy timeout. Retry briefly.
        for attempt in range(50):
            try:
                with self._lock:
                    if self.path != ":memory:":
                        self._conn.execute("PRAGMA journal_mode=WAL")
                    self._conn.execute("PRAGMA synchronous=NORMAL")
                    self._conn.executescript(self.schema)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
