"""Durable store of what was sent and received, per annotation and step.

Rossum's hosted pipeline keeps rendered files and API replies as document relations
(``export_reference_key``, ``response_*_reference_key``). We keep them locally, with secrets
redacted before they are written, so an operator can see exactly what happened
(``rossflow artifacts``).

Storage: one SQLite file, ``<root>/artifacts.db``, a row per (annotation, step, name). The
export engine writes a step's artifacts for a whole batch in one transaction. One small file
per artifact (the layout before) cost ~0.6 ms of kernel time per file on an ext4 VM disk: four
files per document were the largest single cost of the export flow (``bench/``).
``rossflow artifacts export`` writes the old layout, ``<dir>/<annotation_id>/<step>/<name>``,
for browsing.

Artifacts are audit copies. Exactly-once rests on the ledger, never on them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rossflow.sqlite import SqliteStore

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

# (annotation_id, step, name, data)
Row = tuple[int, str, str, bytes]


def redact_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    """Replace every occurrence of each secret (≥ 4 chars) with ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            data = data.replace(secret.encode(), b"***")
    return data


def _safe(part: str) -> str:
    return _SAFE.sub("_", part) or "_"


@dataclass(frozen=True)
class ArtifactInfo:
    annotation_id: int
    step: str
    name: str
    size: int
    stored_at: float

    @property
    def ref(self) -> str:
        return f"{self.annotation_id}/{self.step}/{self.name}"


class ArtifactStore(SqliteStore):
    """Thread-safe: the export engine writes from a small thread pool, off its event loop."""

    schema = """
    CREATE TABLE IF NOT EXISTS artifacts (
        annotation_id INTEGER NOT NULL,
        step TEXT NOT NULL,
        name TEXT NOT NULL,
        data BLOB NOT NULL,
        stored_at REAL NOT NULL,
        PRIMARY KEY (annotation_id, step, name)
    );
    """

    def __init__(self, root: str | Path = ".rossflow/artifacts") -> None:
        self.root = Path(root)
        super().__init__(self.root / "artifacts.db")

    def put(
        self,
        annotation_id: int,
        step: str,
        name: str,
        data: bytes,
        *,
        secrets: Iterable[str] = (),
    ) -> str:
        """Store one artifact; returns its reference (``<annotation>/<step>/<name>``)."""
        return self.put_many(annotation_id, step, [(name, data)], secrets=secrets)[0]

    def put_many(
        self,
        annotation_id: int,
        step: str,
        files: Sequence[tuple[str, bytes]],
        *,
        secrets: Iterable[str] = (),
    ) -> list[str]:
        """Store several artifacts of one step in one transaction."""
        secrets = list(secrets)
        rows = [(annotation_id, step, name, redact_bytes(data, secrets)) for name, data in files]
        return self.put_rows(rows)

    def put_rows(self, rows: Sequence[Row]) -> list[str]:
        """Store artifacts of any annotations and steps in one transaction (a rerun's copy
        replaces the earlier one)."""
        now = time.time()
        clean = [(int(a), _safe(s), _safe(n), bytes(d), now) for a, s, n, d in rows]
        if clean:
            with self._tx() as conn:
                conn.executemany(
                    "INSERT INTO artifacts (annotation_id, step, name, data, stored_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (annotation_id, step, name) "
                    "DO UPDATE SET data = excluded.data, stored_at = excluded.stored_at",
                    clean,
                )
        return [f"{a}/{s}/{n}" for a, s, n, _, _ in clean]

    def read(self, annotation_id: int, step: str, name: str) -> bytes:
        with self._lock:
            row = self._conn.execute(
                "SELECT data FROM artifacts WHERE annotation_id = ? AND step = ? AND name = ?",
                (int(annotation_id), _safe(step), _safe(name)),
            ).fetchone()
        if row is None:
            raise KeyError(f"no artifact {annotation_id}/{step}/{name} in {self.path}")
        return bytes(row[0])

    def get(self, ref: str) -> bytes:
        """The artifact a reference (``<annotation>/<step>/<name>``) names."""
        parts = ref.split("/")
        if len(parts) != 3 or not parts[0].isdigit():
            raise ValueError(f"not an artifact reference: {ref!r}")
        return self.read(int(parts[0]), parts[1], parts[2])

    def listing(self, annotation_id: int | None = None) -> list[ArtifactInfo]:
        where, args = (
            ("WHERE annotation_id = ?", (int(annotation_id),)) if annotation_id else ("", ())
        )
        with self._lock:
            rows = self._conn.execute(
                "SELECT annotation_id, step, name, length(data), stored_at FROM artifacts "
                f"{where} ORDER BY annotation_id, stored_at, step, name",
                args,
            ).fetchall()
        return [ArtifactInfo(int(a), s, n, int(size), float(at)) for a, s, n, size, at in rows]

    def export(self, dest: str | Path, annotation_id: int | None = None) -> list[Path]:
        """Write artifacts as files, ``<dest>/<annotation_id>/<step>/<name>``."""
        written = []
        for info in self.listing(annotation_id):
            path = Path(dest) / str(info.annotation_id) / info.step / info.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.read(info.annotation_id, info.step, info.name))
            written.append(path)
        return written

    def purge(self, annotation_id: int) -> int:
        """Delete everything stored for one annotation (pipeline cleaning)."""
        with self._tx() as conn:
            return conn.execute(
                "DELETE FROM artifacts WHERE annotation_id = ?", (int(annotation_id),)
            ).rowcount
