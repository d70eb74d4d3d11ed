"""Who is running, and who holds what: run owners, liveness, and content leases.

* :class:`RunOwner` identifies one ingest run: run id, host, process id and that process's start
  time (so a recycled pid is not mistaken for the run), plus heartbeat and finish times. It is
  written next to the run's claims on the source (``processing/<run>/.owner.json`` on SFTP,
  ``processing/_runs/<run>.json`` on S3), so any run on any host can tell whether a claim is
  stale.
* :class:`IngestState` is a small store kept next to the side-effect
  :class:`~rossflow.ledger.Ledger` (the same SQLite file, or the shared PostgreSQL schema when
  ``ROSSFLOW_STATE_URL`` is set): the runs, and *leases* on dedupe keys (queue + content hash)
  so that two runs (or two files with identical content in one run), on one host or on several
  sharing PostgreSQL, never upload the same content concurrently. A lease whose owner is dead
  is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from rossflow.state.database import Conn
from rossflow.state.store import StateStore

HOST = socket.gethostname()


def _process_started(pid: int) -> float | None:
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


@dataclass(frozen=True)
class RunOwner:
    run_id: str
    host: str
    pid: int
    proc_started: float | None
    started_at: float
    heartbeat_at: float
    finished_at: float | None = None

    @classmethod
    def current(cls, run_id: str) -> RunOwner:
        now = time.time()
        pid = os.getpid()
        return cls(run_id, HOST, pid, _process_started(pid), now, now)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> RunOwner | None:
        try:
            data = json.loads(text)
            return cls(
                run_id=str(data["run_id"]),
                host=str(data.get("host", "")),
                pid=int(data.get("pid", 0)),
                proc_started=data.get("proc_started"),
                started_at=float(data.get("started_at", 0)),
                heartbeat_at=float(data.get("heartbeat_at", data.get("started_at", 0))),
                finished_at=data.get("finished_at"),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def beat(self) -> RunOwner:
        return replace(self, heartbeat_at=time.time())

    def finished(self) -> RunOwner:
        now = time.time()
        return replace(self, heartbeat_at=now, finished_at=now)

    def process_gone(self) -> bool:
        """True when this owner ran on this host and its process no longer exists."""
        if self.host != HOST or not self.pid:
            return False
        if not psutil.pid_exists(self.pid):
            return True
        started = _process_started(self.pid)
        return (
            started is not None
            and self.proc_started is not None
            and abs(started - self.proc_started) > 1.0
        )


def owner_is_stale(
    owner: RunOwner | None,
    *,
    me: str,
    stale_after_s: float,
    fallback_age_s: float | None = None,
    finished_here: bool = False,
) -> bool:
    """May another run take over what ``owner`` claimed?

    Yes when the owner finished, its process is gone (same host), or it has not beaten its
    heartbeat for ``stale_after_s``. Without an owner record, ``fallback_age_s`` (the age of the
    claim itself) decides."""
    if owner is None:
        return fallback_age_s is not None and fallback_age_s > stale_after_s
    if owner.run_id == me:
        return False
    if owner.finished_at is not None or finished_here:
        return True
    if owner.process_gone():
        return True
    return time.time() - owner.heartbeat_at > stale_after_s


SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_runs (
    run_id       TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    started_at   {real} NOT NULL,
    heartbeat_at {real} NOT NULL,
    finished_at  {real}
);
CREATE TABLE IF NOT EXISTS ingest_leases (
    key          TEXT PRIMARY KEY,
    token        TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    acquired_at  {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_locks (
    name         TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    acquired_at  {real} NOT NULL
);
"""


class IngestState(StateStore):
    """Runs and leases (SQLite for one host, PostgreSQL for several; safe for threads and
    processes)."""

    component = "ingest"
    migrations = (SCHEMA,)

    def __init__(
        self, path: str | Path | None, *, stale_after_s: float = 1800.0, url: str | None = None
    ) -> None:
        super().__init__(path, url=url)
        self.stale_after_s = stale_after_s

    # -- runs ------------------------------------------------------------------------------
    def register_run(self, owner: RunOwner) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO ingest_runs(run_id, owner, started_at, heartbeat_at) VALUES"
                " (?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET owner=excluded.owner,"
                " heartbeat_at=excluded.heartbeat_at, finished_at=NULL",
                (owner.run_id, owner.to_json(), owner.started_at, owner.heartbeat_at),
            )

    def heartbeat(self, owner: RunOwner) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE ingest_runs SET heartbeat_at = ?, owner = ? WHERE run_id = ?",
                (owner.heartbeat_at, owner.to_json(), owner.run_id),
            )

    def finish_run(self, owner: RunOwner) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE ingest_runs SET finished_at = ?, heartbeat_at = ?, owner = ?"
                " WHERE run_id = ?",
                (
                    owner.finished_at or time.time(),
                    owner.heartbeat_at,
                    owner.to_json(),
                    owner.run_id,
                ),
            )
            conn.execute("DELETE FROM ingest_leases WHERE run_id = ?", (owner.run_id,))
            conn.execute("DELETE FROM ingest_locks WHERE run_id = ?", (owner.run_id,))

    def get_run(self, run_id: str) -> tuple[RunOwner | None, bool]:
        """(owner, finished) for a run this host knows of."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT owner, finished_at FROM ingest_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        if row is None:
            return None, False
        return RunOwner.from_json(row[0]), row[1] is not None

    def run_is_dead(self, run_id: str, *, me: str) -> bool:
        if run_id == me:
            return False
        owner, finished = self.get_run(run_id)
        if owner is None:
            # Not a run this state store knows of: nothing says it is alive.
            return True
        return owner_is_stale(
            owner, me=me, stale_after_s=self.stale_after_s, finished_here=finished
        )

    # -- leases on dedupe keys ---------------------------------------------------------------
    def acquire_lease(self, key: str, token: str, run_id: str) -> str | None:
        """Take the lease on ``key`` for ``token``; returns None on success, else the token
        of the live holder. A holder whose run is dead loses the lease.

        The insert wins for one caller only (primary key); a held lease is read under a row
        lock before it is taken over, so two hosts never both take it."""
        now = time.time()
        with self._tx() as conn:
            if conn.execute(
                "INSERT INTO ingest_leases(key, token, run_id, acquired_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(key) DO NOTHING",
                (key, token, run_id, now),
            ).rowcount:
                return None
            row = conn.execute(
                f"SELECT token, run_id FROM ingest_leases WHERE key = ?{self.db.for_update}",
                (key,),
            ).fetchone()
            if row is not None and row[0] != token and not self._dead_in_tx(conn, row[1], run_id):
                return str(row[0])
            conn.execute(
                "UPDATE ingest_leases SET token = ?, run_id = ?, acquired_at = ? WHERE key = ?",
                (token, run_id, now, key),
            )
            return None

    def _dead_in_tx(self, conn: Conn, holder_run: str, me: str) -> bool:
        if holder_run == me:
            return False
        row = conn.execute(
            "SELECT owner, finished_at FROM ingest_runs WHERE run_id = ?", (holder_run,)
        ).fetchone()
        if row is None:
            return True
        return owner_is_stale(
            RunOwner.from_json(row[0]),
            me=me,
            stale_after_s=self.stale_after_s,
            finished_here=row[1] is not None,
        )

    def lease_holder(self, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute("SELECT token FROM ingest_leases WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def release_lease(self, key: str, token: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM ingest_leases WHERE key = ? AND token = ?", (key, token))

    # -- local locks (fallback for S3 stores without conditional writes) --------------------
    def try_lock(self, name: str, run_id: str) -> bool:
        now = time.time()
        with self._tx() as conn:
            if conn.execute(
                "INSERT INTO ingest_locks(name, run_id, acquired_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO NOTHING",
                (name, run_id, now),
            ).rowcount:
                return True
            row = conn.execute(
                f"SELECT run_id FROM ingest_locks WHERE name = ?{self.db.for_update}", (name,)
            ).fetchone()
            if row is not None and row[0] != run_id and not self._dead_in_tx(conn, row[0], run_id):
                return False
            conn.execute(
                "UPDATE ingest_locks SET run_id = ?, acquired_at = ? WHERE name = ?",
                (run_id, now, name),
            )
            return True

    def unlock(self, name: str, run_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM ingest_locks WHERE name = ? AND run_id = ?", (name, run_id))

    def stats(self) -> dict[str, Any]:
        with self._read() as conn:
            return {
                "runs": conn.execute("SELECT COUNT(*) FROM ingest_runs").fetchone()[0],
                "leases": conn.execute("SELECT COUNT(*) FROM ingest_leases").fetchone()[0],
            }
