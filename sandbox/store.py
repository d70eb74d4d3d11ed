"""SQLite persistence of the sandbox.

One connection, used only from the server's event-loop thread (no locking needed; every call is
short). Objects are JSON blobs; the columns that queries filter or sort on are duplicated next to
the blob and indexed. Annotation content is one JSON blob per annotation so that export pages of
100-1000 annotations are a single indexed ``LIMIT/OFFSET`` query.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sandbox.util import ref_id

ANN_TIME_COLUMNS = (
    "created_at",
    "modified_at",
    "assigned_at",
    "confirmed_at",
    "deleted_at",
    "exported_at",
    "export_failed_at",
    "purged_at",
    "rejected_at",
    "arrived_at",
)
ANN_USER_COLUMNS = (
    "creator",
    "modifier",
    "confirmed_by",
    "deleted_by",
    "exported_by",
    "purged_by",
    "rejected_by",
)
ANN_COLUMNS = (
    "queue",
    "document",
    "status",
    *ANN_TIME_COLUMNS,
    "file_name",
    *ANN_USER_COLUMNS,
    "automated",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS counters (kind TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS tokens (key TEXT PRIMARY KEY, user_id INTEGER, expires_at REAL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY, file_name TEXT, sha256 TEXT, mime_type TEXT, created_at TEXT,
    data TEXT NOT NULL, body BLOB);
CREATE INDEX IF NOT EXISTS documents_sha ON documents (sha256);
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY, queue INTEGER, document INTEGER, status TEXT,
    created_at TEXT, modified_at TEXT, assigned_at TEXT, confirmed_at TEXT, deleted_at TEXT,
    exported_at TEXT, export_failed_at TEXT, purged_at TEXT, rejected_at TEXT, arrived_at TEXT,
    file_name TEXT, creator INTEGER, modifier INTEGER, confirmed_by INTEGER, deleted_by INTEGER,
    exported_by INTEGER, purged_by INTEGER, rejected_by INTEGER, automated INTEGER,
    data TEXT NOT NULL, content TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS annotations_queue_status ON annotations (queue, status, id);
CREATE INDEX IF NOT EXISTS annotations_status ON annotations (status, id);
CREATE INDEX IF NOT EXISTS annotations_document ON annotations (document);
"""


def ann_columns(data: dict[str, Any]) -> tuple[Any, ...]:
    """Indexed column values of an annotation blob (order of ANN_COLUMNS)."""
    values: list[Any] = [ref_id(data.get("queue")), ref_id(data.get("document")), data["status"]]
    for col in ANN_TIME_COLUMNS:
        values.append(data.get("_arrived_at") if col == "arrived_at" else data.get(col))
    values.append(data.get("_file_name"))
    for col in ANN_USER_COLUMNS:
        values.append(ref_id(data.get(col)))
    values.append(1 if data.get("automated") else 0)
    return tuple(values)


class Store:
    """Thin typed wrapper around the SQLite file (or ``:memory:``)."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        self._in_tx = False

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One transaction (nested calls join the outer one)."""
        if self._in_tx:
            yield
            return
        self.conn.execute("BEGIN")
        self._in_tx = True
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._in_tx = False

    # -- meta and counters ---------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def next_id(self, kind: str, n: int = 1) -> int:
        """Reserve ``n`` consecutive ids of ``kind``; returns the first."""
        row = self.conn.execute(
            "INSERT INTO counters (kind, value) VALUES (?, ?) "
            "ON CONFLICT(kind) DO UPDATE SET value = value + excluded.value RETURNING value",
            (kind, n),
        ).fetchone()
        return int(row[0]) - n + 1

    # -- generic objects ------------------------------------------------------------------
    def put(self, kind: str, obj: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO objects (kind, id, data) VALUES (?, ?, ?)",
            (kind, obj["id"], json.dumps(obj)),
        )

    def get(self, kind: str, obj_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT data FROM objects WHERE kind=? AND id=?", (kind, obj_id)
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def all(self, kind: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT data FROM objects WHERE kind=? ORDER BY id", (kind,))
        return [json.loads(r[0]) for r in rows]

    def delete(self, kind: str, obj_id: int) -> None:
        self.conn.execute("DELETE FROM objects WHERE kind=? AND id=?", (kind, obj_id))

    # -- tokens -----------------------------------------------------------------------------
    def add_token(self, key: str, user_id: int, expires_at: float) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO tokens (key, user_id, expires_at) VALUES (?, ?, ?)",
            (key, user_id, expires_at),
        )

    def token_user(self, key: str, now: float) -> int | None:
        row = self.conn.execute(
            "SELECT user_id, expires_at FROM tokens WHERE key=?", (key,)
        ).fetchone()
        if row is None or row[1] <= now:
            return None
        return int(row[0])

    def delete_token(self, key: str) -> None:
        self.conn.execute("DELETE FROM tokens WHERE key=?", (key,))

    # -- documents --------------------------------------------------------------------------
    def insert_document(self, doc: dict[str, Any], body: bytes, sha256: str) -> None:
        self.conn.execute(
            "INSERT INTO documents (id, file_name, sha256, mime_type, created_at, data, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                doc["id"],
                doc["original_file_name"],
                sha256,
                doc["mime_type"],
                doc["created_at"],
                json.dumps(doc),
                body,
            ),
        )

    def insert_documents(self, rows: Iterable[tuple[dict[str, Any], bytes, str]]) -> None:
        self.conn.executemany(
            "INSERT INTO documents (id, file_name, sha256, mime_type, created_at, data, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    d["id"],
                    d["original_file_name"],
                    sha,
                    d["mime_type"],
                    d["created_at"],
                    json.dumps(d),
                    body,
                )
                for d, body, sha in rows
            ),
        )

    def get_document(self, doc_id: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT data FROM documents WHERE id=?", (doc_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_documents(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(f"SELECT id, data FROM documents WHERE id IN ({marks})", ids)
        return {int(r[0]): json.loads(r[1]) for r in rows}

    def get_document_body(self, doc_id: int) -> tuple[bytes, str] | None:
        row = self.conn.execute(
            "SELECT body, mime_type FROM documents WHERE id=?", (doc_id,)
        ).fetchone()
        return None if row is None else (bytes(row[0] or b""), str(row[1]))

    def save_document(self, doc: dict[str, Any]) -> None:
        self.conn.execute("UPDATE documents SET data=? WHERE id=?", (json.dumps(doc), doc["id"]))

    def delete_document(self, doc_id: int) -> None:
        self.conn.execute("DELETE FROM documents WHERE id=?", (doc_id,))

    def has_identical(self, file_name: str, sha256: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM documents WHERE sha256=? AND file_name=? LIMIT 1", (sha256, file_name)
        ).fetchone()
        return row is not None

    def query_documents(
        self, where: list[str], params: list[Any], limit: int, offset: int
    ) -> tuple[int, list[dict[str, Any]]]:
        sql_where = (" WHERE " + " AND ".join(where)) if where else ""
        total = self.conn.execute(f"SELECT COUNT(*) FROM documents{sql_where}", params).fetchone()
        rows = self.conn.execute(
            f"SELECT data FROM documents{sql_where} ORDER BY id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return int(total[0]), [json.loads(r[0]) for r in rows]

    # -- annotations ------------------------------------------------------------------------
    _INSERT_ANN = (
        f"INSERT INTO annotations (id, {', '.join(ANN_COLUMNS)}, data, content) "
        f"VALUES ({', '.join('?' * (len(ANN_COLUMNS) + 3))})"
    )
    _UPDATE_ANN = (
        f"UPDATE annotations SET {', '.join(c + '=?' for c in ANN_COLUMNS)}, data=? WHERE id=?"
    )

    def insert_annotation(self, data: dict[str, Any], content: list[dict[str, Any]]) -> None:
        self.insert_annotations([(data, content)])

    def insert_annotations(self, rows: Iterable[tuple[dict[str, Any], Any]]) -> None:
        """Bulk insert; content may be a list or already-serialised JSON text."""
        self.conn.executemany(
            self._INSERT_ANN,
            (
                (
                    d["id"],
                    *ann_columns(d),
                    json.dumps(d),
                    c if isinstance(c, str) else json.dumps(c),
                )
                for d, c in rows
            ),
        )

    def get_annotation(self, ann_id: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT data FROM annotations WHERE id=?", (ann_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def save_annotation(self, data: dict[str, Any]) -> None:
        self.conn.execute(self._UPDATE_ANN, (*ann_columns(data), json.dumps(data), data["id"]))

    def get_content(self, ann_id: int) -> list[dict[str, Any]]:
        row = self.conn.execute("SELECT content FROM annotations WHERE id=?", (ann_id,)).fetchone()
        return [] if row is None else json.loads(row[0])

    def get_content_text(self, ann_id: int) -> str | None:
        row = self.conn.execute("SELECT content FROM annotations WHERE id=?", (ann_id,)).fetchone()
        return None if row is None else str(row[0])

    def save_content(self, ann_id: int, content: list[dict[str, Any]]) -> None:
        self.conn.execute(
            "UPDATE annotations SET content=? WHERE id=?", (json.dumps(content), ann_id)
        )

    def delete_annotation(self, ann_id: int) -> None:
        self.conn.execute("DELETE FROM annotations WHERE id=?", (ann_id,))

    def query_annotations(
        self,
        where: list[str],
        params: list[Any],
        order: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        with_content: bool = False,
        count: bool = True,
    ) -> tuple[int, list[tuple[dict[str, Any], list[dict[str, Any]] | None]]]:
        """Filtered page of annotations (and optionally their content) plus the total count."""
        sql_where = (" WHERE " + " AND ".join(where)) if where else ""
        total = -1
        if count:
            row = self.conn.execute(f"SELECT COUNT(*) FROM annotations{sql_where}", params)
            total = int(row.fetchone()[0])
        cols = "data, content" if with_content else "data"
        sql = f"SELECT {cols} FROM annotations{sql_where} ORDER BY {', '.join(order or ['id'])}"
        args = list(params)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        out: list[tuple[dict[str, Any], list[dict[str, Any]] | None]] = []
        for row in self.conn.execute(sql, args):
            out.append((json.loads(row[0]), json.loads(row[1]) if with_content else None))
        return total, out

    def annotation_ids(self, where: list[str], params: list[Any]) -> list[int]:
        sql_where = (" WHERE " + " AND ".join(where)) if where else ""
        return [
            int(r[0])
            for r in self.conn.execute(f"SELECT id FROM annotations{sql_where} ORDER BY id", params)
        ]

    def status_counts(self, queue_id: int) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT status, COUNT(*) FROM annotations WHERE queue=? GROUP BY status", (queue_id,)
        )
        return {str(r[0]): int(r[1]) for r in rows}
