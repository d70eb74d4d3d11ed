"""A durable ledger of side effects, so that a rerun after a crash repeats none of them.

Every side effect (a delivery to a target, an upload to a queue, a sequence number handed out
for a file name) is written here *before* it happens (``started``) and again when its outcome
is known (``done``/``failed``). A rerun reads the ledger first:

* ``done``    → skip the side effect and reuse the recorded outcome;
* ``started`` → the previous run died mid-flight: repeat it *with the same idempotency key*
  (the ERP deduplicates) or reconcile (the ingest side looks the upload up in Rossum);
* absent      → do it.

Two workers may *claim* a side effect (:meth:`Ledger.claim`): exactly one of them gets it while
the other's claim is alive (its process runs, its lease has not expired), whatever the machines.

The store is a SQLite file (WAL; threads and processes of one machine) unless
``ROSSFLOW_STATE_URL`` names a PostgreSQL database shared by several machines
(:mod:`rossflow.state`). Writes are short transactions; the batch helpers group a whole batch
into one transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rossflow.state.owner import current_owner, describe_owner, owner_gone
from rossflow.state.store import StateStore

#: Seconds a claim holds against workers on other machines (a worker on the same machine whose
#: process is gone loses its claims at once).
DEFAULT_LEASE_S = 900.0

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
    created_at   {real} NOT NULL,
    updated_at   {real} NOT NULL
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

#: Version 2: who holds a ``started`` effect, and until when (claims between workers).
CLAIMS = """
ALTER TABLE effects ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE effects ADD COLUMN lease_until {real} NOT NULL DEFAULT 0
"""

#: Version 3: attempt generations. A forced re-send of an annotation starts a new generation, so
#: its deliveries get new idempotency keys (an ERP that lost the record books it again).
GENERATIONS = """
CREATE TABLE IF NOT EXISTS attempt_generations (
    subject     TEXT PRIMARY KEY,
    generation  INTEGER NOT NULL,
    updated_at  {real} NOT NULL
)
"""

COLUMNS = "key, kind, subject, step, target, state, attempts, result, created_at, updated_at"


class EffectBusy(RuntimeError):
    """Another live worker holds the claim on a side effect."""

    def __init__(self, key: str, owner: str, subject: str = "", step: str = "") -> None:
        self.key, self.owner, self.subject, self.step = key, owner, subject, step
        what = f"step {step!r} of {subject}" if step else subject or key
        super().__init__(f"{what} is being done by {describe_owner(owner)}; left to it")


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


@dataclass
class Claims:
    """Outcome of :meth:`Ledger.claim_many`: keys already done, keys held by others, and the
    keys this claim took over, with the effect as it was (read under the row lock): what an
    earlier holder left is decided on that, not on a read made before the claim."""

    done: dict[str, Effect]
    busy: dict[str, str]  # key → owner
    taken: dict[str, Effect] = field(default_factory=dict)


class Ledger(StateStore):
    """Durable record of side effects keyed by an idempotency key."""

    component = "ledger"
    migrations = (SCHEMA, CLAIMS, GENERATIONS)

    def __init__(
        self,
        path: str | Path | None = ".rossflow/ledger.db",
        *,
        url: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        super().__init__(path, url=url)
        self.lease_s = lease_s
        self.owner = current_owner()

    # -- effects ---------------------------------------------------------------------------

    def get(self, key: str) -> Effect | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {COLUMNS} FROM effects WHERE key = ?", (key,)).fetchone()
        return _effect(row) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, Effect]:
        keys = list(keys)
        found: dict[str, Effect] = {}
        with self._read() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {COLUMNS} FROM effects WHERE key IN ({marks})", chunk
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
        lease = now + self.lease_s
        with self._tx() as conn:
            for key, kind, subject, step, target in items:
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM effects WHERE key = ?{self.db.for_update}", (key,)
                ).fetchone()
                if row and row[5] == "done":
                    done[key] = _effect(row)
                    continue
                conn.execute(
                    "INSERT INTO effects(key, kind, subject, step, target, state, attempts,"
                    " created_at, updated_at, owner, lease_until)"
                    " VALUES (?, ?, ?, ?, ?, 'started', 1, ?, ?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET state='started',"
                    " attempts=effects.attempts+1, updated_at=excluded.updated_at,"
                    " owner=excluded.owner, lease_until=excluded.lease_until",
                    (key, kind, subject, step, target, now, now, self.owner, lease),
                )
        return done

    def claim(
        self, key: str, *, kind: str, subject: str, step: str = "", target: str = ""
    ) -> Effect | None:
        """Like :meth:`begin`, but exclusive between workers: returns the effect if it is done
        (skip it), None if this worker now holds it (do it), and raises :class:`EffectBusy` if
        another live worker holds it (leave it)."""
        claims = self.claim_many([(key, kind, subject, step, target)])
        if key in claims.busy:
            raise EffectBusy(key, claims.busy[key], subject, step)
        return claims.done.get(key)

    def claim_many(self, items: Iterable[tuple[str, str, str, str, str]]) -> Claims:
        """Claim many effects in one transaction.

        A new key is claimed by inserting it (the primary key lets one insert win); an existing
        one is read under a row lock and taken over only when it is not done and its holder is
        this process, a process of this machine that is gone, or a lease that expired."""
        now = time.time()
        lease = now + self.lease_s
        claims = Claims({}, {})
        with self._tx() as conn:
            for key, kind, subject, step, target in items:
                inserted = conn.execute(
                    "INSERT INTO effects(key, kind, subject, step, target, state, attempts,"
                    " created_at, updated_at, owner, lease_until)"
                    " VALUES (?, ?, ?, ?, ?, 'started', 1, ?, ?, ?, ?)"
                    " ON CONFLICT(key) DO NOTHING",
                    (key, kind, subject, step, target, now, now, self.owner, lease),
                ).rowcount
                if inserted == 1:
                    continue
                row = conn.execute(
                    f"SELECT {COLUMNS}, owner, lease_until FROM effects WHERE key = ?"
                    f"{self.db.for_update}",
                    (key,),
                ).fetchone()
                if row[5] == "done":
                    claims.done[key] = _effect(row)
                    continue
                holder, until = str(row[10] or ""), float(row[11] or 0)
                if (
                    row[5] == "started"
                    and holder
                    and holder != self.owner
                    and until > now
                    and not owner_gone(holder)
                ):
                    claims.busy[key] = holder
                    continue
                claims.taken[key] = _effect(row)
                conn.execute(
                    "UPDATE effects SET state='started', attempts=attempts+1, updated_at=?,"
                    " owner=?, lease_until=? WHERE key = ?",
                    (now, self.owner, lease, key),
                )
        return claims

    def finish(self, key: str, *, ok: bool, result: dict[str, Any] | None = None) -> None:
        self.finish_many([(key, ok, result or {})])

    def finish_many(self, items: Iterable[tuple[str, bool, dict[str, Any]]]) -> None:
        now = time.time()
        with self._tx() as conn:
            for key, ok, result in items:
                conn.execute(
                    "UPDATE effects SET state = ?, result = ?, updated_at = ?, lease_until = 0"
                    " WHERE key = ?",
                    ("done" if ok else "failed", json.dumps(result, default=str), now, key),
                )

    def for_subject(self, kind: str, subject: str) -> list[Effect]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM effects WHERE kind = ? AND subject = ? ORDER BY created_at",
                (kind, subject),
            ).fetchall()
        return [_effect(r) for r in rows]

    def in_state(self, kind: str, state: str, *, older_than_s: float = 0.0) -> list[Effect]:
        """Effects stuck in ``state`` (e.g. ``started`` after a crash) for ``older_than_s``+."""
        cutoff = time.time() - older_than_s
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM effects WHERE kind = ? AND state = ? AND updated_at <= ?",
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

    # -- attempt generations ---------------------------------------------------------------

    def generations(self, subjects: Iterable[str]) -> dict[str, int]:
        """The current attempt generation of each subject (0 unless re-sent by force)."""
        subjects = list(subjects)
        found = dict.fromkeys(subjects, 0)
        with self._read() as conn:
            for start in range(0, len(subjects), 500):
                chunk = subjects[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for subject, generation in conn.execute(
                    "SELECT subject, generation FROM attempt_generations"
                    f" WHERE subject IN ({marks})",
                    chunk,
                ):
                    found[subject] = int(generation)
        return found

    def next_generation(self, subject: str) -> int:
        """Start a new attempt generation for ``subject`` (a forced re-send); returns it."""
        with self._tx() as conn:
            return int(
                conn.execute(
                    "INSERT INTO attempt_generations(subject, generation, updated_at)"
                    " VALUES (?, 1, ?) ON CONFLICT(subject) DO UPDATE SET"
                    " generation = attempt_generations.generation + 1,"
                    " updated_at = excluded.updated_at RETURNING generation",
                    (subject, time.time()),
                ).fetchone()[0]
            )

    # -- sequences -------------------------------------------------------------------------

    def sequence(self, name: str, owner: str, *, start: int = 0, step: int = 1) -> int:
        """A sequence number for ``owner``, allocated once: a rerun gets the same number."""
        with self._tx() as conn:
            # Serialised per sequence (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE),
            # so two owners never get one number and one owner never gets two.
            self.db.advisory_lock(conn, f"rossflow-seq:{name}")
            row = conn.execute(
                "SELECT value FROM sequences WHERE name = ? AND owner = ?", (name, owner)
            ).fetchone()
            if row:
                return int(row[0])
            value = int(
                conn.execute(
                    "INSERT INTO sequence_heads(name, value) VALUES (?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = sequence_heads.value + ?"
                    " RETURNING value",
                    (name, start, step),
                ).fetchone()[0]
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
