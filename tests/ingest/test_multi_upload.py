"""Several files per Rossum upload: request count, per-file mapping, crash and lost answers."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import httpx
import pytest

from rossflow.ingest import DUPLICATE, UPLOADED, run_ingest
from rossflow.ingest.uploads import KIND
from rossflow.ledger import Ledger
from rossflow.rossum.client import clear_token_cache
from sandbox.server import SandboxServer
from tests.fixtures.servers import SftpServerInfo
from tests.ingest.helpers import (
    client_factory,
    file_meta,
    options,
    pdf,
    put,
    sandbox_annotations,
    sftp_source,
    sha,
    uploads_by_sha,
)


class _Crash(Exception):
    pass


@pytest.fixture(autouse=True)
def _fresh_login() -> None:
    """A token cached from another test's sandbox would cost a 401 + login + re-send."""
    clear_token_cache()


def _rows(report) -> dict[str, dict]:  # type: ignore[no-untyped-def, type-arg]
    return {r["file"]: r for r in report.table()}


def test_grouped_uploads_map_each_file_to_its_annotation(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    inbox = sftp_server.root / "inbox"
    for i in range(23):
        put(inbox / "invoices", f"inv {i:02d}.pdf", pdf(f"i{i}"))
    for i in range(4):
        put(inbox / "receipts", f"r{i}.pdf", pdf(f"r{i}"))
    put(inbox / "invoices" / "again", "inv 00.pdf", pdf("same name, other content"))
    rules = [
        {"pattern": "invoices/**", "queue_id": 1, "metadata": {"channel": "sftp"}},
        {"pattern": "receipts/*", "queue_id": 2},
    ]
    sandbox.reset_stats()
    report = run_ingest(
        sftp_source(sftp_server),
        rules,
        client_factory(sandbox),
        options(tmp_path, files_per_upload=10, report_max_rows=100),
    )
    files = 28
    assert report.counts[UPLOADED] == files, report.table()
    stats = sandbox.stats()["requests"]
    posts = stats["POST /api/v1/uploads"]
    # invoices: 24 files, two named "inv 00.pdf" (never in the same upload) -> 3 uploads;
    # receipts: 4 files in their own queue -> 1 upload.
    assert posts == math.ceil(24 / 10) + 1
    rossum = sum(n for route, n in stats.items() if "/auth/" not in route)
    assert rossum / files <= 1.2, stats
    # Every file maps to its own annotation, whose document has the file's name and whose
    # metadata identifies the file's content and source.
    anns = {a["id"]: a for a in sandbox_annotations(sandbox_client)}
    assert len(anns) == files
    seen = set()
    for rel, row in _rows(report).items():
        ann = anns[int(row["annotation"])]
        seen.add(ann["id"])
        doc = sandbox_client.get(ann["document"]).json()
        assert doc["original_file_name"] == rel.rsplit("/", 1)[1]
        meta = file_meta(sandbox_client, ann)
        assert meta["source_uri"].endswith(f"/inbox/{rel}")
        assert meta["sha256"] == row["sha256"] or meta["sha256"].startswith(row["sha256"])
        expected_queue = "/queues/1" if rel.startswith("invoices/") else "/queues/2"
        assert ann["queue"].endswith(expected_queue)
        if rel.startswith("invoices/"):
            assert ann["metadata"]["channel"] == "sftp"
    assert len(seen) == files


def test_crash_after_a_grouped_upload_is_reconciled_file_by_file(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One request created four documents, then the run died before recording it: the
    rerun finds each file's document (name + the upload's ``files`` metadata), sends nothing."""
    inbox = sftp_server.root / "inbox"
    for i in range(4):
        put(inbox, f"d{i}.pdf", pdf(i))
    rules = [{"pattern": "*.pdf", "queue_id": 1}]
    real_finish = Ledger.finish

    def crashing_finish(self, key, *, ok, result=None):  # type: ignore[no-untyped-def]
        if (result or {}).get("phase") == "sent":
            raise _Crash("killed between the upload and the ledger write")
        return real_finish(self, key, ok=ok, result=result)

    monkeypatch.setattr(Ledger, "finish", crashing_finish)
    sandbox.reset_stats()
    first = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert sandbox.stats()["requests"]["POST /api/v1/uploads"] == 1, (
        first.table(),
        sandbox.stats(),
    )
    assert len(sandbox_annotations(sandbox_client)) == 4
    monkeypatch.setattr(Ledger, "finish", real_finish)
    second = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert second.counts[DUPLICATE] == 4 and second.uploads_sent == 0 and second.reconciled == 4
    assert uploads_by_sha(sandbox_client) == {sha(pdf(i)): 1 for i in range(4)}
    ledger = Ledger(tmp_path / "ingest.db")
    assert ledger.in_state(KIND, "started") == []
    ledger.close()


def test_lost_answer_of_a_grouped_upload_never_duplicates(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    inbox = sftp_server.root / "inbox"
    for i in range(5):
        put(inbox, f"d{i}.pdf", pdf(i))
    sandbox.set_faults(
        [{"method": "POST", "path": "/api/v1/uploads", "kind": "drop_after", "times": 1}]
    )
    report = run_ingest(
        sftp_source(sftp_server),
        [{"pattern": "*.pdf", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path),
    )
    assert report.counts[UPLOADED] == 5 and report.reconciled == 5, report.table()
    assert uploads_by_sha(sandbox_client) == {sha(pdf(i)): 1 for i in range(5)}
    assert sandbox.stats()["requests"]["POST /api/v1/uploads"] == 1


def test_resend_after_a_crash_gets_409_and_adopts_the_document(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The crashed run's document is not found by the time-bounded lookup (the ledger's clock
    is ahead of Rossum's): the re-send asks reject_identical, Rossum answers 409 and the
    existing document is adopted instead of duplicated."""
    inbox = sftp_server.root / "inbox"
    put(inbox, "a.pdf", pdf("a"))
    rules = [{"pattern": "*.pdf", "queue_id": 1}]
    real_finish = Ledger.finish

    def crashing_finish(self, key, *, ok, result=None):  # type: ignore[no-untyped-def]
        if (result or {}).get("phase") == "sent":
            raise _Crash("killed between the upload and the ledger write")
        return real_finish(self, key, ok=ok, result=result)

    monkeypatch.setattr(Ledger, "finish", crashing_finish)
    run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    monkeypatch.setattr(Ledger, "finish", real_finish)
    with sqlite3.connect(tmp_path / "ingest.db") as db:
        db.execute("UPDATE effects SET created_at = created_at + 7200 WHERE state = 'started'")
    sandbox.reset_stats()
    second = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    stats = sandbox.stats()["requests"]
    assert stats["POST /api/v1/uploads"] == 1  # the re-send, refused with 409
    assert second.counts[DUPLICATE] == 1 and second.reconciled == 1, second.table()
    assert sandbox.stats()["statuses"].get("409") == 1
    assert len(sandbox_annotations(sandbox_client)) == 1
