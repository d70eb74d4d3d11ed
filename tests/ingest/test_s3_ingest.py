"""End to end (without Prefect) from moto's S3 server into the sandbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from rossflow.ingest import (
    DUPLICATE,
    FAILED,
    SKIPPED,
    UPLOADED,
    IngestRuntime,
    S3Source,
    SourceLayout,
    claim,
    discover,
    process_batch,
    run_ingest,
)
from rossflow.ingest import errors as ingest_errors
from rossflow.localstack.s3_server import S3Server
from sandbox.server import SandboxServer
from tests.ingest.helpers import (
    PNG_HEAD,
    client_factory,
    file_meta,
    options,
    pdf,
    sandbox_annotations,
    sha,
    uploads_by_sha,
)

TODAY = datetime.now(UTC).strftime("%Y/%m/%d")


def keys(client: Any, bucket: str) -> list[str]:
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(out)


def put(client: Any, bucket: str, key: str, data: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=data)


def test_s3_routing_bad_input_dedupe_and_archive(
    s3_server: S3Server,
    s3_bucket: Any,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    s3, name = s3_server.boto3_client(), s3_bucket.bucket_name
    put(s3, name, "inbox/invoices/a.pdf", pdf("a"))
    put(s3, name, "inbox/invoices/faktura č 1.pdf", pdf("b"))
    put(s3, name, "inbox/invoices/copy.pdf", pdf("a"))
    put(s3, name, "inbox/receipts/r.png", PNG_HEAD + b"r")
    put(s3, name, "inbox/invoices/zero.pdf", b"")
    put(s3, name, "inbox/invoices/lies.pdf", PNG_HEAD)
    put(s3, name, "inbox/invoices/../../evil.pdf", pdf("evil"))
    put(s3, name, "outside/x.pdf", pdf("x"))
    source = S3Source(s3_bucket, SourceLayout(directory="inbox", recursive=True))
    rules = [
        {"pattern": "invoices/**", "queue_id": 1},
        {"pattern": "receipts/*.png", "queue_id": 2},
    ]
    report = run_ingest(source, rules, client_factory(sandbox), options(tmp_path))
    rows = {r["file"]: r for r in report.table()}
    # Same content twice: whichever got there first is uploaded, the other is a duplicate.
    assert sorted([rows["invoices/a.pdf"]["outcome"], rows["invoices/copy.pdf"]["outcome"]]) == [
        DUPLICATE,
        UPLOADED,
    ]
    assert rows["receipts/r.png"]["outcome"] == UPLOADED
    assert (rows["invoices/zero.pdf"]["outcome"], rows["invoices/zero.pdf"]["reason"]) == (
        FAILED,
        ingest_errors.EMPTY,
    )
    assert rows["invoices/lies.pdf"]["reason"] == ingest_errors.TYPE_MISMATCH
    assert rows["invoices/../../evil.pdf"]["reason"] == ingest_errors.UNSAFE_NAME
    assert keys(s3, name) == sorted(
        [
            f"inbox/archive/{TODAY}/invoices/a.pdf",
            f"inbox/archive/{TODAY}/invoices/copy.pdf",
            f"inbox/archive/{TODAY}/invoices/faktura č 1.pdf",
            f"inbox/archive/{TODAY}/receipts/r.png",
            "inbox/failed/invoices/zero.pdf",
            "inbox/failed/invoices/zero.pdf.error.json",
            "inbox/failed/invoices/lies.pdf",
            "inbox/failed/invoices/lies.pdf.error.json",
            "inbox/failed/invoices/__/__/evil.pdf",  # kept inside failed/, never above it
            "inbox/failed/invoices/__/__/evil.pdf.error.json",
            "outside/x.pdf",
        ]
    )
    sidecar = json.loads(
        s3.get_object(Bucket=name, Key="inbox/failed/invoices/lies.pdf.error.json")["Body"].read()
    )
    assert sidecar["reason"] == ingest_errors.TYPE_MISMATCH and sidecar["source"].startswith(
        "s3://"
    )
    assert uploads_by_sha(sandbox_client) == {
        sha(pdf("a")): 1,
        sha(pdf("b")): 1,
        sha(PNG_HEAD + b"r"): 1,
    }
    meta = next(
        m
        for m in (file_meta(sandbox_client, a) for a in sandbox_annotations(sandbox_client))
        if m.get("sha256") == sha(pdf("b"))
    )
    assert meta["source_uri"] == f"s3://{name}/inbox/invoices/faktura č 1.pdf"


def test_s3_claims_are_exclusive_and_stale_ones_taken_over(
    s3_server: S3Server,
    s3_bucket: Any,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    s3, name = s3_server.boto3_client(), s3_bucket.bucket_name
    for i in range(5):
        put(s3, name, f"drop/doc{i}.pdf", pdf(i))
    rules = [{"pattern": "*.pdf", "queue_id": 1}]

    def source() -> S3Source:
        return S3Source(s3_bucket, SourceLayout(directory="drop"))

    first = IngestRuntime(
        source(), rules, client_factory(sandbox), options(tmp_path), run_id="first"
    )
    mine = claim(first, list(discover(first)))
    assert all(i.claimed for i in mine)
    with IngestRuntime(
        source(), rules, client_factory(sandbox), options(tmp_path), run_id="second"
    ) as second:
        theirs = claim(second, list(discover(second)))
        assert [i.outcome for i in theirs] == [SKIPPED] * 5  # the first run holds them
    # The first run ends without processing them (as if it crashed and then finished):
    # its locks are stale now and the next run takes them over.
    first.close()
    report = run_ingest(source(), rules, client_factory(sandbox), options(tmp_path), run_id="third")
    assert report.counts[UPLOADED] == 5
    assert len(sandbox_annotations(sandbox_client)) == 5
    left = keys(s3, name)
    assert not [k for k in left if "/_locks/" in k]
    # The dead run's record goes once nothing refers to it (at the next run's recovery).
    run_ingest(source(), rules, client_factory(sandbox), options(tmp_path), run_id="fourth")
    assert not [k for k in keys(s3, name) if "/processing/" in k]
    assert len([k for k in left if k.startswith(f"drop/archive/{TODAY}/")]) == 5


def test_s3_bucket_folder_and_lock_of_vanished_file(
    s3_server: S3Server, sandbox: SandboxServer, tmp_path: Path
) -> None:
    bucket = s3_server.s3_bucket("ingest-folder-test", bucket_folder="tenant-a")
    s3 = s3_server.boto3_client()
    put(s3, bucket.bucket_name, "tenant-a/in/a.pdf", pdf("a"))
    put(s3, bucket.bucket_name, "tenant-a/in/b.pdf", pdf("b"))
    put(s3, bucket.bucket_name, "tenant-b/in/c.pdf", pdf("c"))
    rules = [{"pattern": "*.pdf", "queue_id": 1}]
    with IngestRuntime(
        S3Source(bucket, SourceLayout(directory="in")),
        rules,
        client_factory(sandbox),
        options(tmp_path),
    ) as runtime:
        items = claim(runtime, list(discover(runtime)))
        s3.delete_object(Bucket=bucket.bucket_name, Key="tenant-a/in/b.pdf")
        done = process_batch(runtime, items)
    outcome = {i.rel: (i.outcome, i.reason) for i in done}
    # S3 claims leave the file in place: one that vanishes was taken by another run (or
    # deleted) and is skipped, not failed.
    assert outcome == {"a.pdf": (UPLOADED, None), "b.pdf": (SKIPPED, "gone")}
    left = keys(s3, bucket.bucket_name)
    assert f"tenant-a/in/archive/{TODAY}/a.pdf" in left
    assert "tenant-b/in/c.pdf" in left
    assert not [k for k in left if "/_locks/" in k]
