"""End to end (without Prefect) from a real SFTP server into the sandbox."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from rossflow.ingest import (
    DEFERRED,
    DUPLICATE,
    FAILED,
    SKIPPED,
    UPLOADED,
    IngestRuntime,
    RunOwner,
    claim,
    discover,
    finalize,
    run_ingest,
    upload,
    validate,
    wait,
)
from rossflow.ingest import errors as ingest_errors
from rossflow.ingest.sources import OWNER_FILE
from rossflow.ingest.uploads import KIND
from rossflow.ledger import Ledger
from sandbox.server import SandboxServer
from tests.fixtures.servers import SftpServerInfo
from tests.ingest.helpers import (
    PNG_HEAD,
    client_factory,
    file_meta,
    options,
    pdf,
    put,
    sandbox_annotations,
    sftp_source,
    sha,
    tree,
    uploads_by_sha,
)

TODAY = datetime.now(UTC).strftime("%Y/%m/%d")


def by_file(report) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    return {row["file"]: row for row in report.table()}


def test_routing_metadata_values_and_archive(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    inbox = sftp_server.root / "inbox"
    put(inbox, "invoices/a.pdf", pdf("a"))
    put(inbox, "invoices/faktura č. 2 🎁.pdf", pdf("b"))
    put(inbox, "receipts/2024/r.png", PNG_HEAD + b"receipt")
    put(inbox, "notes/readme.md", b"# not routed")
    rules = [
        {
            "name": "invoices",
            "pattern": "invoices/*.pdf",
            "queue_id": 1,
            "metadata": {"channel": "sftp"},
            "values": {"upload:organization_unit": "Sales"},
        },
        {"name": "receipts", "pattern": "receipts/**", "queue_id": 2},
    ]
    report = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert report.counts[UPLOADED] == 3 and report.unrouted == 1
    assert tree(sftp_server.root) == sorted(
        [
            f"inbox/archive/{TODAY}/invoices/a.pdf",
            f"inbox/archive/{TODAY}/invoices/faktura č. 2 🎁.pdf",
            f"inbox/archive/{TODAY}/receipts/2024/r.png",
            "inbox/notes/readme.md",
        ]
    )
    anns = {a["id"]: a for a in sandbox_annotations(sandbox_client)}
    rows = by_file(report)
    invoice = anns[int(rows["invoices/faktura č. 2 🎁.pdf"]["annotation"])]
    assert invoice["queue"].endswith("/queues/1")
    assert invoice["metadata"]["channel"] == "sftp"
    meta = file_meta(sandbox_client, invoice)
    assert meta["sha256"] == sha(pdf("b")) and meta["size"] == len(pdf("b"))
    assert meta["original_file_name"] == "faktura č. 2 🎁.pdf"
    assert meta["source_uri"].endswith("/inbox/invoices/faktura č. 2 🎁.pdf")
    assert meta["source_uri"].startswith("sftp://rossflow@127.0.0.1:")
    doc = sandbox_client.get(invoice["document"]).json()
    assert doc["original_file_name"] == "faktura č. 2 🎁.pdf"
    receipt = anns[int(rows["receipts/2024/r.png"]["annotation"])]
    assert receipt["queue"].endswith("/queues/2")
    # Nothing left claimed.
    assert not list((inbox / "processing").glob("*"))


def test_rossum_import_rules_verbatim(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    root = sftp_server.root
    put(root, "inbox/invoices/a.pdf", pdf("a"))
    put(root, "inbox/invoices/bad.pdf", PNG_HEAD)
    put(root, "inbox/invoices/a.txt", b"no match")
    put(root, "inbox/invoices/old/x.pdf", pdf("x"))  # sub-folder: Rossum rules do not recurse
    put(root, "inbox/receipts/rcpt-1.png", PNG_HEAD + b"1")
    put(root, "elsewhere/z.pdf", pdf("z"))
    config = {
        "import_rules": [
            {
                "path": "/inbox/invoices",
                "queue_id": 1,
                "file_match_regex": ".*\\.pdf",
                "result_actions": {
                    "success": [{"type": "move", "path": "/inbox/done"}],
                    "failure": [{"type": "move", "path": "/inbox/error"}],
                },
            },
            {"path": "/inbox/receipts", "queue_id": 2, "file_match_regex": "^rcpt-.*\\.png$"},
        ]
    }
    report = run_ingest(
        sftp_source(sftp_server),
        config,
        client_factory(sandbox),
        options(tmp_path, accepted_types=["pdf", "png"]),
    )
    assert report.counts[UPLOADED] == 2 and report.counts[FAILED] == 1
    assert tree(root) == sorted(
        [
            "elsewhere/z.pdf",
            f"inbox/archive/{TODAY}/receipts/rcpt-1.png",
            f"inbox/done/{TODAY}/a.pdf",
            "inbox/error/bad.pdf",
            "inbox/error/bad.pdf.error.json",
            "inbox/invoices/a.txt",
            "inbox/invoices/old/x.pdf",
        ]
    )
    assert len(sandbox_annotations(sandbox_client)) == 2


def test_dedupe_same_content_other_name_and_rerun(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    inbox = sftp_server.root / "inbox"
    put(inbox, "a.pdf", pdf("same"))
    put(inbox, "copy of a.pdf", pdf("same"))
    put(inbox, "b.pdf", pdf("other"))
    rules = [{"pattern": "*.pdf", "queue_id": 1}]
    source = sftp_source(sftp_server)
    first = run_ingest(source, rules, client_factory(sandbox), options(tmp_path))
    assert (first.counts[UPLOADED], first.counts[DUPLICATE]) == (2, 1)
    assert uploads_by_sha(sandbox_client) == {sha(pdf("same")): 1, sha(pdf("other")): 1}
    # The same content dropped again later, under yet another name: not sent again.
    put(inbox, "again.pdf", pdf("same"))
    second = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert second.counts[DUPLICATE] == 1 and second.uploads_sent == 0
    row = by_file(second)["again.pdf"]
    assert row["reason"] == "duplicate_content" and row["annotation"]
    # Another queue is another destination: uploaded there once.
    put(inbox, "third.pdf", pdf("same"))
    third = run_ingest(
        sftp_source(sftp_server),
        [{"pattern": "*.pdf", "queue_id": 2}],
        client_factory(sandbox),
        options(tmp_path),
    )
    assert third.counts[UPLOADED] == 1
    assert uploads_by_sha(sandbox_client)[sha(pdf("same"))] == 2
    assert len(list((inbox / "archive").rglob("*.pdf"))) == 5


def test_every_bad_input_ends_in_failed_with_reason(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    root = sftp_server.root
    inbox = root / "inbox"
    put(inbox, "good.pdf", pdf("good"))
    put(inbox, "zero.pdf", b"")
    put(inbox, "big.pdf", pdf("big", size=5000))
    put(inbox, "notes.txt", b"plain text")
    put(inbox, "lies.pdf", PNG_HEAD + b"a png pretending")
    put(inbox, "program.pdf", b"MZ\x90\x00\x03 an exe renamed")
    put(inbox, "in\\..\\..\\escape.pdf", pdf("escape"))  # a Windows-style traversal name
    put(inbox, "with space ünïcödé.pdf", pdf("unicode"))
    (root / "secret").mkdir()
    put(root / "secret", "hidden.pdf", pdf("secret"))
    os.symlink(root / "secret" / "hidden.pdf", inbox / "link-outside.pdf")  # unreadable
    os.symlink("loop.pdf", inbox / "loop.pdf")  # a link to itself: cannot be read
    os.symlink("/etc/hostname", inbox / "link-host.pdf")  # outside the root: cannot be moved
    report = run_ingest(
        sftp_source(sftp_server),
        [{"pattern": "*", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path, max_file_bytes=4000),
    )
    rows = by_file(report)
    expected = {
        "zero.pdf": ingest_errors.EMPTY,
        "big.pdf": ingest_errors.TOO_LARGE,
        "notes.txt": ingest_errors.UNSUPPORTED_TYPE,
        "lies.pdf": ingest_errors.TYPE_MISMATCH,
        "program.pdf": ingest_errors.UNSUPPORTED_TYPE,
        "in\\..\\..\\escape.pdf": ingest_errors.UNSAFE_NAME,
        "loop.pdf": ingest_errors.UNREADABLE,
    }
    for name, reason in expected.items():
        assert rows[name]["outcome"] == FAILED, (name, rows[name])
        assert rows[name]["reason"] == reason, (name, rows[name])
        target = root / rows[name]["moved_to"].lstrip("/")
        sidecar = json.loads(Path(f"{target}.error.json").read_text())
        assert sidecar["reason"] == reason and sidecar["file"] == name
        assert sidecar["failed_at"].endswith("Z")
        assert sidecar["step"] == ("upload" if name == "loop.pdf" else "validate")
        assert target.parent == inbox / "failed"
    # Not even movable: reported with a sidecar, left in place, not reported again.
    assert (rows["link-host.pdf"]["outcome"], rows["link-host.pdf"]["reason"]) == (
        FAILED,
        ingest_errors.UNREADABLE,
    )
    assert (inbox / "failed/link-host.pdf.error.json").exists()
    assert rows["good.pdf"]["outcome"] == UPLOADED
    assert rows["with space ünïcödé.pdf"]["outcome"] == UPLOADED
    # The symlink inside the root is an ordinary (readable) file.
    assert rows["link-outside.pdf"]["outcome"] == UPLOADED
    assert report.counts[UPLOADED] == 3 and report.counts[FAILED] == 8
    assert len(sandbox_annotations(sandbox_client)) == 3
    assert [p.name for p in inbox.iterdir() if p.is_file() or p.is_symlink()] == ["link-host.pdf"]
    assert "Files that need attention" in report.markdown()
    again = run_ingest(
        sftp_source(sftp_server),
        [{"pattern": "*", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path, max_file_bytes=4000),
    )
    assert again.counts[SKIPPED] == 1 and again.counts[FAILED] == 0


def test_file_disappearing_mid_run(
    sftp_server: SftpServerInfo, sandbox: SandboxServer, tmp_path: Path
) -> None:
    inbox = sftp_server.root / "inbox"
    for name in ("stays.pdf", "gone-before-claim.pdf", "gone-after-claim.pdf"):
        put(inbox, name, pdf(name))
    source = sftp_source(sftp_server)
    with IngestRuntime(
        source, [{"pattern": "*.pdf", "queue_id": 1}], client_factory(sandbox), options(tmp_path)
    ) as runtime:
        items = list(discover(runtime))
        assert len(items) == 3
        (inbox / "gone-before-claim.pdf").unlink()
        items = claim(runtime, items)
        after = next(i for i in items if i.rel == "gone-after-claim.pdf")
        (sftp_server.root / after.path.lstrip("/")).unlink()
        items = finalize(runtime, wait(runtime, upload(runtime, validate(runtime, items))))
    outcome = {i.rel: (i.outcome, i.reason) for i in items}
    assert outcome["stays.pdf"] == (UPLOADED, None)
    assert outcome["gone-before-claim.pdf"] == (SKIPPED, "claimed_elsewhere")
    assert outcome["gone-after-claim.pdf"] == (FAILED, ingest_errors.VANISHED)
    sidecar = json.loads((inbox / "failed/gone-after-claim.pdf.error.json").read_text())
    assert sidecar["reason"] == ingest_errors.VANISHED
    assert not (inbox / "failed/gone-after-claim.pdf").exists()


@pytest.mark.parametrize("files_per_upload", [1, 20])
def test_rossum_4xx_fails_only_that_file(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
    files_per_upload: int,
) -> None:
    inbox = sftp_server.root / "inbox"
    for i in range(4):
        put(inbox, f"doc{i}.pdf", pdf(i))
    # Grouped: Rossum refuses the 4-file upload (1st 400); each file is then sent alone and
    # the first of those is refused too (2nd 400). Alone: the first file's upload is refused.
    refusals = 1 if files_per_upload == 1 else 2
    sandbox.set_faults(
        [
            {
                "method": "POST",
                "path": "/api/v1/uploads",
                "kind": "error",
                "status": 400,
                "times": refusals,
            }
        ]
    )
    report = run_ingest(
        sftp_source(sftp_server),
        [{"pattern": "*.pdf", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path, upload_concurrency=1, files_per_upload=files_per_upload),
    )
    assert report.counts[UPLOADED] == 3 and report.counts[FAILED] == 1
    assert sandbox.stats()["requests"]["POST /api/v1/uploads"] == 4 + refusals
    failed = next(r for r in report.table() if r["outcome"] == FAILED)
    assert failed["reason"] == ingest_errors.REJECTED and failed["step"] == "upload"
    sidecar = json.loads(
        (sftp_server.root / (failed["moved_to"].lstrip("/") + ".error.json")).read_text()
    )
    assert sidecar["rossum"]["status"] == 400 and sidecar["rossum"]["error"] == "BadRequestError"
    assert sidecar["rossum"]["detail"]
    assert len(sandbox_annotations(sandbox_client)) == 3


def test_rossum_import_task_failure(
    sftp_server: SftpServerInfo, sandbox: SandboxServer, tmp_path: Path
) -> None:
    put(sftp_server.root / "inbox", "SANDBOX_FAIL_UPLOAD.pdf", pdf("f"))
    report = run_ingest(
        sftp_source(sftp_server),
        [{"pattern": "*.pdf", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path),
    )
    row = report.table()[0]
    assert (row["outcome"], row["reason"], row["step"]) == (
        FAILED,
        ingest_errors.IMPORT_FAILED,
        "wait",
    )


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "error", "status": 503},  # Rossum answered 5xx: nothing created
        {"kind": "drop_after"},  # created, then the answer was lost
        {"kind": "drop_before"},  # connection dropped before Rossum saw it
        {"kind": "rate_limit", "retry_after": 0},
    ],
    ids=lambda f: f["kind"],
)
def test_transient_rossum_errors_never_duplicate(
    fault: dict,
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,  # type: ignore[type-arg]
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    inbox = sftp_server.root / "inbox"
    for i in range(3):
        put(inbox, f"doc{i}.pdf", pdf(i))
    sandbox.set_faults([{"method": "POST", "path": "/api/v1/uploads", "times": 2, **fault}])
    report = run_ingest(
        sftp_source(sftp_server),
        [{"pattern": "*.pdf", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path, upload_concurrency=1),
    )
    assert report.counts[UPLOADED] == 3, report.table()
    assert uploads_by_sha(sandbox_client) == {sha(pdf(i)): 1 for i in range(3)}
    if fault["kind"] == "drop_after":
        assert report.reconciled >= 1  # found in Rossum instead of sent again
    assert len(list((inbox / "archive").rglob("*.pdf"))) == 3


def test_sftp_disconnect_between_steps(
    sftp_server: SftpServerInfo, sandbox: SandboxServer, tmp_path: Path
) -> None:
    inbox = sftp_server.root / "inbox"
    for i in range(6):
        put(inbox, f"doc{i}.pdf", pdf(i))
    server = sftp_server.server

    def drop_all() -> None:
        for conn in list(server._connections):
            server._loop.call_soon_threadsafe(conn.abort)
        time.sleep(0.2)

    with IngestRuntime(
        sftp_source(sftp_server),
        [{"pattern": "*.pdf", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path, io_concurrency=2),
    ) as runtime:
        items = claim(runtime, list(discover(runtime)))
        drop_all()
        items = upload(runtime, validate(runtime, items))
        drop_all()
        items = finalize(runtime, wait(runtime, items))
    assert [i.outcome for i in items] == [UPLOADED] * 6
    assert len(list((inbox / "archive").rglob("*.pdf"))) == 6


def test_deadline_defers_and_next_run_resumes_without_reupload(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    inbox = sftp_server.root / "inbox"
    put(inbox, "slow.pdf", pdf("slow"))
    sandbox.settings(upload_task_delay_s=1.5)
    rules = [{"pattern": "*.pdf", "queue_id": 1}]
    first = run_ingest(
        sftp_source(sftp_server),
        rules,
        client_factory(sandbox),
        options(tmp_path, task_deadline_s=0.3),
    )
    assert first.counts[DEFERRED] == 1 and first.problems[0]["reason"] == "task_deadline"
    claimed = [p for p in (inbox / "processing").rglob("*.pdf")]
    assert len(claimed) == 1  # still claimed by the (finished) first run
    time.sleep(1.3)
    second = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    # Sent by the first run: this one only saw the import through, so it is no "upload".
    assert second.recovered == 1 and second.counts[DUPLICATE] == 1
    assert second.counts[UPLOADED] == 0 and second.uploads_sent == 0
    row = by_file(second)["slow.pdf"]
    assert row["reason"] == "uploaded_earlier" and row["annotation"], row
    assert f"annotation {row['annotation']}" in row["message"]
    assert len(sandbox_annotations(sandbox_client)) == 1
    assert (inbox / f"archive/{TODAY}/slow.pdf").exists()
    assert not list((inbox / "processing").rglob("*"))


class _Crash(Exception):
    pass


def test_crash_after_upload_before_ledger_is_reconciled(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upload reached Rossum but the run died before recording it: the rerun finds the
    document by name + sha256 instead of uploading it again."""
    inbox = sftp_server.root / "inbox"
    put(inbox, "a.pdf", pdf("a"))
    rules = [{"pattern": "*.pdf", "queue_id": 1}]
    real_finish = Ledger.finish

    def crashing_finish(self, key, *, ok, result=None):  # type: ignore[no-untyped-def]
        if (result or {}).get("phase") == "sent":
            raise _Crash("killed between the upload and the ledger write")
        return real_finish(self, key, ok=ok, result=result)

    monkeypatch.setattr(Ledger, "finish", crashing_finish)
    first = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert first.counts[DEFERRED] == 1
    assert len(sandbox_annotations(sandbox_client)) == 1
    ledger = Ledger(tmp_path / "ingest.db")
    assert [e.state for e in ledger.in_state(KIND, "started")] == ["started"]
    monkeypatch.setattr(Ledger, "finish", real_finish)
    second = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert second.counts[DUPLICATE] == 1 and second.uploads_sent == 0 and second.reconciled == 1
    assert second.counts[UPLOADED] == 0
    assert len(sandbox_annotations(sandbox_client)) == 1
    assert ledger.in_state(KIND, "started") == []
    ledger.close()


def test_crash_between_upload_and_archive_is_not_reuploaded(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rossflow.ingest.sources import SftpSource

    inbox = sftp_server.root / "inbox"
    put(inbox, "a.pdf", pdf("a"))
    rules = [{"pattern": "*.pdf", "queue_id": 1}]

    def broken_archive(self, item, folder, rel):  # type: ignore[no-untyped-def]
        raise OSError("simulated crash during the archive move")

    with monkeypatch.context() as patch:
        patch.setattr(SftpSource, "archive", broken_archive)
        first = run_ingest(
            sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path)
        )
    assert first.counts[UPLOADED] == 1 and "not moved yet" in first.rows[0]["message"]
    second = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert second.recovered == 1 and second.counts[DUPLICATE] == 1 and second.uploads_sent == 0
    assert by_file(second)["a.pdf"]["reason"] == "uploaded_earlier"
    assert len(sandbox_annotations(sandbox_client)) == 1
    assert (inbox / f"archive/{TODAY}/a.pdf").exists()


def test_stale_claims_recovered_live_ones_left_alone(
    sftp_server: SftpServerInfo, sandbox: SandboxServer, tmp_path: Path
) -> None:
    processing = sftp_server.root / "inbox" / "processing"
    dead = replace(RunOwner.current("dead-run"), pid=2**22 + 7, proc_started=1.0)
    live = RunOwner.current("live-run")
    put(processing / "dead-run", OWNER_FILE, dead.to_json().encode())
    put(processing / "dead-run", "sub/a.pdf", pdf("a"))
    put(processing / "live-run", OWNER_FILE, live.to_json().encode())
    put(processing / "live-run", "b.pdf", pdf("b"))
    put(processing / "no-owner", "c.pdf", pdf("c"))  # no owner file and recent: left alone
    report = run_ingest(
        sftp_source(sftp_server, recursive=True),
        [{"pattern": "**/*.pdf", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path),
    )
    assert report.recovered == 1 and report.counts[UPLOADED] == 1
    assert (sftp_server.root / f"inbox/archive/{TODAY}/sub/a.pdf").exists()
    assert sorted(p.name for p in processing.iterdir()) == ["live-run", "no-owner"]


def test_recovered_file_no_rule_matches_goes_back_to_the_inbox(
    sftp_server: SftpServerInfo, sandbox: SandboxServer, tmp_path: Path
) -> None:
    processing = sftp_server.root / "inbox" / "processing"
    dead = RunOwner.current("old-run").finished()
    put(processing / "old-run", OWNER_FILE, dead.to_json().encode())
    put(processing / "old-run", "notes/a.txt", b"claimed under rules that changed since")
    report = run_ingest(
        sftp_source(sftp_server),
        [{"pattern": "*.pdf", "queue_id": 1}],
        client_factory(sandbox),
        options(tmp_path),
    )
    assert report.recovered == 1 and report.counts[SKIPPED] == 1
    assert (sftp_server.root / "inbox/notes/a.txt").exists()
    assert not [p for p in processing.rglob("*") if p.is_file()]


@pytest.mark.parametrize("how", ["delete_action", "hard_delete", "purge"])
def test_ledger_annotation_gone_from_rossum_fails_with_reason(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
    how: str,
) -> None:
    """A file the ledger knows is a duplicate naming its annotation; once that annotation is gone
    from Rossum the report says so and the file goes to failed/, unless reupload_missing."""
    inbox = sftp_server.root / "inbox"
    rules = [{"pattern": "*.pdf", "queue_id": 1}]
    put(inbox, "a.pdf", pdf("a"))
    first = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert first.counts[UPLOADED] == 1 and first.uploads_sent == 1
    (ann_id,) = first.annotation_ids

    # Dropped again while the annotation exists: a duplicate naming it, nothing sent.
    put(inbox, "a.pdf", pdf("a"))
    second = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert (second.counts[UPLOADED], second.counts[DUPLICATE], second.uploads_sent) == (0, 1, 0)
    row = by_file(second)["a.pdf"]
    assert row["annotation"] == str(ann_id) and f"annotation {ann_id}" in row["message"]

    if how == "delete_action":
        sandbox_client.post(f"/v1/annotations/{ann_id}/delete").raise_for_status()
        gone = "is deleted"
    elif how == "hard_delete":
        sandbox_client.delete(f"/v1/annotations/{ann_id}").raise_for_status()
        gone = "answers 404"
    else:
        sandbox_client.post(f"/v1/annotations/{ann_id}/delete").raise_for_status()
        sandbox_client.post("/v1/annotations/purge_deleted", json={}).raise_for_status()
        status = sandbox_client.get(f"/v1/annotations/{ann_id}")
        gone = "answers 404" if status.status_code == 404 else "is purged"

    put(inbox, "a.pdf", pdf("a"))
    third = run_ingest(sftp_source(sftp_server), rules, client_factory(sandbox), options(tmp_path))
    assert (third.counts[UPLOADED], third.counts[FAILED], third.uploads_sent) == (0, 1, 0)
    row = by_file(third)["a.pdf"]
    assert row["reason"] == ingest_errors.ANNOTATION_MISSING, row
    assert f"annotation {ann_id} {gone}" in row["message"] and "reupload_missing" in row["message"]
    failed = list((inbox / "failed").rglob("a.pdf"))
    assert len(failed) == 1
    sidecar = json.loads(next((inbox / "failed").rglob("a.pdf.error.json")).read_text())
    assert sidecar["reason"] == ingest_errors.ANNOTATION_MISSING, sidecar

    # With the documented option the file is sent again.
    put(inbox, "a.pdf", pdf("a"))
    fourth = run_ingest(
        sftp_source(sftp_server),
        rules,
        client_factory(sandbox),
        options(tmp_path, reupload_missing=True),
    )
    assert (fourth.counts[UPLOADED], fourth.uploads_sent) == (1, 1), fourth.table()
    assert fourth.annotation_ids and fourth.annotation_ids != [ann_id]
