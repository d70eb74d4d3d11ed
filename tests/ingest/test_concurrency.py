"""Two runs at the same time on the same folder/prefix never take the same file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from rossflow.ingest import UPLOADED, IngestReport, S3Source, SourceLayout, run_ingest
from rossflow.localstack.s3_server import S3Server
from sandbox.server import SandboxServer
from tests.fixtures.servers import SftpServerInfo
from tests.ingest.helpers import (
    client_factory,
    options,
    pdf,
    put,
    sftp_source,
    sha,
    tree,
    uploads_by_sha,
)

N = 60


def run_two(make_run: Any) -> list[IngestReport]:
    reports: list[IngestReport] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            reports.append(make_run(index))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return reports


def test_two_concurrent_sftp_runs_split_the_files(
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    inbox = sftp_server.root / "inbox"
    for i in range(N):
        put(inbox, f"doc{i:03d}.pdf", pdf(i))

    def make_run(index: int) -> IngestReport:
        # Separate ledgers on purpose: only the claims keep the runs apart here.
        opts = options(tmp_path / f"run{index}", batch_size=7, io_concurrency=3)
        return run_ingest(
            sftp_source(sftp_server),
            [{"pattern": "*.pdf", "queue_id": 1}],
            client_factory(sandbox),
            opts,
        )

    reports = run_two(make_run)
    uploaded = [r.counts[UPLOADED] for r in reports]
    assert sum(uploaded) == N, [r.summary() for r in reports]
    assert all(r.counts.get("failed", 0) == 0 for r in reports)
    assert uploads_by_sha(sandbox_client) == {sha(pdf(i)): 1 for i in range(N)}
    files = tree(sftp_server.root)
    assert len([f for f in files if "/archive/" in f]) == N
    assert [f for f in files if "/archive/" not in f] == []  # nothing left, nothing claimed


@pytest.mark.parametrize("claims", ["lock-object", "local"])
def test_two_concurrent_s3_runs(
    claims: str,
    s3_server: S3Server,
    s3_bucket: Any,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    s3, name = s3_server.boto3_client(), s3_bucket.bucket_name
    for i in range(N):
        s3.put_object(Bucket=name, Key=f"in/doc{i:03d}.pdf", Body=pdf(i))

    def make_run(index: int) -> IngestReport:
        opts = options(tmp_path, batch_size=7, io_concurrency=3)  # one host, one ledger
        return run_ingest(
            S3Source(s3_bucket, SourceLayout(directory="in"), claims=claims),  # type: ignore[arg-type]
            [{"pattern": "*.pdf", "queue_id": 1}],
            client_factory(sandbox),
            opts,
        )

    reports = run_two(make_run)
    assert sum(r.counts[UPLOADED] for r in reports) == N, [r.summary() for r in reports]
    assert uploads_by_sha(sandbox_client) == {sha(pdf(i)): 1 for i in range(N)}
    left = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name)
        for item in page.get("Contents", [])
    ]
    assert len([k for k in left if "/archive/" in k]) == N
    assert not [k for k in left if "/_locks/" in k or k.startswith("in/doc")]
    if claims == "local":  # no lock objects were ever written
        assert not [k for k in left if "/processing/" in k]
