"""Durable export jobs of the export-event mode (``annotation_content.export`` hook calls).

A job is one annotation with one content version: its key is ``<annotation id>:<sha256 of the
content tree>``, so Rossum's retry of the same call (or a second call for unchanged content)
finds the job, and with it the deliveries recorded in the export ledger, instead of starting
over. Every hook call (``request_id``) is linked to its job.

Life of a job::

    pending --claim (flow run, with a lease)--> running --finish--> done (result stored)
       ^                                          |
       +---- lease expired (worker died) ---------+        done (error) --reopen--> pending
                                                            (PATCH exporting = new call)

The result (``{"messages": [...], "operations": [...]}``) is written before the polling URL
reports it, so a restart of the receiver or a crash of the worker loses no answer. A finished
job answers only for the ``generation`` it was claimed in: a reopened job ignores a late result
of its previous run.

The stored payload is the hook payload without ``rossum_authorization_token`` and ``secrets``:
credentials never rest on disk. The API is narrow (create/claim/finish/get) so that the store
can move onto another database later.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rossflow.sqlite import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS export_jobs (
    job_id        TEXT PRIMARY KEY,
    job_key       TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    queue_id      INTEGER NOT NULL,
    payload       TEXT NOT NULL,
    state         TEXT NOT NULL,          -- pending | running | done
    force         INTEGER NOT NULL DEFAULT 0,
    generation    INTEGER NOT NULL DEFAULT 1,
    queued_at     REAL NOT NULL,
    claimed_until REAL,
    ok            INTEGER,
    result        TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS export_jobs_key ON export_jobs(job_key);
CREATE INDEX IF NOT EXISTS export_jobs_queue ON export_jobs(queue_id, state);
CREATE TABLE IF NOT EXISTS export_job_calls (
    request_id TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL,
    at         REAL NOT NULL
);
"""

#: Payload keys never stored (credentials).
STRIPPED = ("rossum_authorization_token", "secrets")


@dataclass(frozen=True)
class Job:
    job_id: str
    job_key: str
    annotation_id: int
    queue_id: int
    payload: dict[str, Any]
    state: str
    force: bool
    generation: int
    queued_at: float
    claimed_until: float | None
    ok: bool | None
    result: dict[str, Any] | None
    created_at: float

    @property
    def done(self) -> bool:
        return self.state == "done"

    def lease_expired(self, now: float | None = None) -> bool:
        """Claimed by a run that stopped renewing its lease (crashed or killed)."""
        return (
            self.state == "running"
            and self.claimed_until is not None
            and self.claimed_until < (now or time.time())
        )


def job_key(annotation_id: int, content: Any) -> str:
    """``<annotation>:<sha256 of the canonical content JSON>``."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{annotation_id}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def stored_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in STRIPPED}


_COLUMNS = (
    "job_id, job_key, annotation_id, queue_id, payload, state, force, generation, queued_at,"
    " claimed_until, ok, result, created_at"
)


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        job_id=row[0],
        job_key=row[1],
        annotation_id=int(row[2]),
        queue_id=int(row[3]),
        payload=json.loads(row[4]),
        state=row[5],
        force=bool(row[6]),
        generation=int(row[7]),
        queued_at=float(row[8]),
        claimed_until=float(row[9]) if row[9] is not None else None,
        ok=None if row[10] is None else bool(row[10]),
        result=json.loads(row[11]) if row[11] else None,
        created_at=float(row[12]),
    )


class JobStore(SqliteStore):
    """Export jobs and the hook calls linked to them (SQLite, shared by receiver and flow)."""

    schema = SCHEMA

    def __init__(self, path: str | Path = ".rossflow/export-jobs.db", ttl_s: float = 7 * 86_400):
        super().__init__(path)
        self.ttl_s = ttl_s
        self._pruned = 0.0

    # -- receiver side ---------------------------------------------------------------------

    def for_call(self, request_id: str) -> Job | None:
        """The job a hook call (``request_id``) was linked to, if any."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM export_jobs WHERE job_id ="
                " (SELECT job_id FROM export_job_calls WHERE request_id = ?)",
                (request_id,),
            ).fetchone()
        return _job(row) if row else None

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM export_jobs WHERE job_id = ? AND created_at >= ?",
                (job_id, time.time() - self.ttl_s),
            ).fetchone()
        return _job(row) if row else None

    def submit(
        self,
        request_id: str,
        payload: dict[str, Any],
        *,
        annotation_id: int,
        queue_id: int,
        key: str,
        force: bool = False,
    ) -> tuple[Job, str]:
        """Link a new hook call to its job; returns (job, what happened).

        ``created``: a new job (pending). ``reopened``: the job had finished with an error and
        this is a new call for it (Rossum's "retry export"): pending again, next generation,
        deliveries that succeeded are reused by the ledger. ``attached``: the job is pending,
        running, or finished successfully; the call gets its answer. A ``force`` call reopens
        a finished job whatever its outcome.
        """
        now = time.time()
        body = json.dumps(stored_payload(payload))
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM export_jobs WHERE job_key = ?"
                " ORDER BY created_at DESC LIMIT 1",
                (key,),
            ).fetchone()
            existing = _job(row) if row else None
            if existing is None:
                job_id = uuid.uuid4().hex
                conn.execute(
                    f"INSERT INTO export_jobs({_COLUMNS}, updated_at) VALUES"
                    " (?, ?, ?, ?, ?, 'pending', ?, 1, ?, NULL, NULL, NULL, ?, ?)",
                    (job_id, key, annotation_id, queue_id, body, int(force), now, now, now),
                )
                what = "created"
            elif existing.done and (force or existing.ok is False):
                job_id = existing.job_id
                conn.execute(
                    "UPDATE export_jobs SET state = 'pending', generation = generation + 1,"
                    " payload = ?, force = ?, queued_at = ?, claimed_until = NULL, ok = NULL,"
                    " result = NULL, updated_at = ? WHERE job_id = ?",
                    (body, int(force), now, now, job_id),
                )
                what = "reopened"
            else:
                job_id = existing.job_id
                what = "attached"
            conn.execute(
                "INSERT OR REPLACE INTO export_job_calls(request_id, job_id, at) VALUES (?, ?, ?)",
                (request_id, job_id, now),
            )
            if now - self._pruned > 3600:
                self._pruned = now
                cutoff = now - self.ttl_s
                conn.execute("DELETE FROM export_jobs WHERE updated_at < ?", (cutoff,))
                conn.execute("DELETE FROM export_job_calls WHERE at < ?", (cutoff,))
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM export_jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        return _job(row), what

    def requeue(self, job_id: str) -> bool:
        """A running job whose lease expired goes back to pending (the worker died)."""
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE export_jobs SET state = 'pending', claimed_until = NULL, queued_at = ?,"
                " updated_at = ? WHERE job_id = ? AND state = 'running' AND claimed_until < ?",
                (now, now, job_id, now),
            )
            return cur.rowcount == 1

    def touch_pending(self, job_id: str) -> None:
        """Restart the unclaimed clock of a pending job (its event was emitted again)."""
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "UPDATE export_jobs SET queued_at = ?, updated_at = ? WHERE job_id = ?"
                " AND state = 'pending'",
                (now, now, job_id),
            )

    # -- flow side -------------------------------------------------------------------------

    def claim(self, queues: list[int], *, lease_s: float, limit: int = 100) -> list[Job]:
        """Take pending jobs (and running ones whose lease expired) of ``queues``."""
        now = time.time()
        marks = ",".join("?" * len(queues))
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM export_jobs WHERE queue_id IN ({marks}) AND"
                " (state = 'pending' OR (state = 'running' AND claimed_until < ?))"
                " ORDER BY queued_at LIMIT ?",
                (*queues, now, limit),
            ).fetchall()
            ids = [r[0] for r in rows]
            for job_id in ids:
                conn.execute(
                    "UPDATE export_jobs SET state = 'running', claimed_until = ?, updated_at = ?"
                    " WHERE job_id = ?",
                    (now + lease_s, now, job_id),
                )
        return [_job((*r[:5], "running", *r[6:9], now + lease_s, *r[10:])) for r in rows]

    def renew(self, claims: list[tuple[str, int]], *, lease_s: float) -> None:
        """Extend the leases of jobs this run still works on."""
        now = time.time()
        with self._tx() as conn:
            for job_id, generation in claims:
                conn.execute(
                    "UPDATE export_jobs SET claimed_until = ? WHERE job_id = ? AND generation = ?"
                    " AND state = 'running'",
                    (now + lease_s, job_id, generation),
                )

    def finish(self, job_id: str, generation: int, *, ok: bool, result: dict[str, Any]) -> bool:
        """Store the result of a claimed job; False when the job moved on (reopened)."""
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE export_jobs SET state = 'done', ok = ?, result = ?, claimed_until = NULL,"
                " updated_at = ? WHERE job_id = ? AND generation = ? AND state != 'done'",
                (int(ok), json.dumps(result, default=str), now, job_id, generation),
            )
            return cur.rowcount == 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT state, COUNT(*) FROM export_jobs GROUP BY state"
            ).fetchall()
        return {str(state): int(n) for state, n in rows}
