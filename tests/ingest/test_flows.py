"""The Prefect flows (on the session's test Prefect server): ingest, report artifacts, status."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from blocks.rossum import RossumCredentials
from blocks.sftp import SftpServer as SftpBlock
from blocks.sources import IngestSource
from rossflow.ingest import IngestOptions
from rossflow.localstack.s3_server import S3Server
from sandbox.server import SandboxServer
from tests.fixtures.servers import SftpServerInfo
from tests.ingest.helpers import PNG_HEAD, pdf, put, sandbox_annotations

TODAY = datetime.now(UTC).strftime("%Y/%m/%d")


def sftp_block(server: SftpServerInfo) -> SftpBlock:
    return SftpBlock(
        host=server.host,
        port=server.port,
        username=server.username,
        password=server.password,
        known_hosts=server.known_hosts,
    )


def rossum_block(sandbox: SandboxServer) -> RossumCredentials:
    return RossumCredentials(
        base_url=sandbox.api_url,
        username=sandbox.username,
        password=sandbox.password,
        rate_limit_per_s=None,
    )


def artifacts(flow_run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, FlowRunFilterId

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                artifact_filter=ArtifactFilter(),
            )

    return {a.key: a for a in asyncio.run(read())}


def task_names(flow_run_id: str) -> dict[str, int]:
    """How many task runs of each task the flow run had (task run names are ``<task>-<n>``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    counts: dict[str, int] = {}
    for run in asyncio.run(read()):
        name = run.name.rsplit("-", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_flow_parameters_make_a_usable_form() -> None:
    from flows.ingest import ingest, ingest_status

    schema = ingest.parameters.model_dump()
    props = schema["properties"]
    assert set(props) == {"source", "rossum", "rules", "options"}
    assert all(props[name].get("description") for name in props)
    rule = schema["definitions"]["RoutingRule"]["properties"]
    assert {
        "queue_id",
        "pattern",
        "path",
        "file_match_regex",
        "result_actions",
        "metadata",
        "values",
    } <= set(rule)
    options = schema["definitions"]["IngestOptions"]["properties"]
    assert options["max_file_bytes"]["description"] and options["ledger_path"]["default"]
    assert "importing_stuck_after_min" in ingest_status.parameters.model_dump()["properties"]


def test_ingest_flow_sftp_with_saved_blocks_and_artifacts(
    prefect_harness: None,
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    from flows.ingest import ingest

    inbox = sftp_server.root / "inbox"
    for i in range(7):
        put(inbox, f"invoices/inv {i}.pdf", pdf(i))
    put(inbox, "invoices/broken.pdf", PNG_HEAD)
    put(inbox, "invoices/zero.pdf", b"")
    IngestSource(sftp_server=sftp_block(sftp_server), directory="/inbox").save(
        "test-ingest-sftp", overwrite=True
    )
    rossum_block(sandbox).save("test-rossum", overwrite=True)
    # Rossum's own import_rules, pasted as the flow parameter.
    rules = [{"path": "invoices", "queue_id": 1, "file_match_regex": "\\.pdf$"}]
    state = ingest(
        source="test-ingest-sftp",
        rossum="test-rossum",
        rules=rules,
        options=IngestOptions(ledger_path=str(tmp_path / "ingest.db"), min_age_s=0, batch_size=3),
        return_state=True,
    )
    summary = state.result()
    assert (summary["uploaded"], summary["failed"], summary["processed"]) == (7, 2, 9)
    assert summary["reasons"] == {"failed: type_mismatch": 1, "failed: empty_file": 1}
    assert len(sandbox_annotations(sandbox_client)) == 7
    assert len(list((inbox / f"archive/{TODAY}/invoices").glob("*.pdf"))) == 7
    found = artifacts(str(state.state_details.flow_run_id))
    assert found["ingest-report"].type == "table"
    assert "failed" in str(found["ingest-report"].data)
    assert found["ingest-summary"].type == "markdown"
    assert "| uploaded | 7 |" in str(found["ingest-summary"].data)
    # Three task runs per batch of 3 files (claim, upload, finalize), never one per file.
    assert task_names(str(state.state_details.flow_run_id)) == {
        "ingest-recover-claims": 1,
        "ingest-list-files": 1,
        "ingest-claim": 3,
        "ingest-upload": 3,
        "ingest-finalize": 3,
        "ingest-report": 1,
    }


def test_ingest_flow_s3_then_status_flow_flags_stuck(
    prefect_harness: None,
    s3_server: S3Server,
    s3_bucket: Any,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    from flows.ingest import ingest, ingest_status

    s3 = s3_server.boto3_client()
    for i in range(3):
        s3.put_object(Bucket=s3_bucket.bucket_name, Key=f"drop/doc{i}.pdf", Body=pdf(i))
    sandbox.settings(extraction_delay_s=60)  # documents stay 'importing'
    ledger = str(tmp_path / "ingest.db")
    summary = ingest(
        source=IngestSource(
            s3_bucket=s3_bucket, directory="drop", rules=[{"pattern": "*.pdf", "queue_id": 2}]
        ),
        rossum=rossum_block(sandbox),
        options=IngestOptions(ledger_path=ledger, min_age_s=0),
    )
    assert summary["uploaded"] == 3
    ids = sorted(a["id"] for a in sandbox_annotations(sandbox_client))
    sandbox.force_status(ids[0], "failed_import")
    sandbox.force_status(ids[1], "to_review")
    status = ingest_status(
        rossum=rossum_block(sandbox), ledger_path=ledger, importing_stuck_after_min=0
    )
    assert status["checked"] == 3 and status["requests"] == 1  # one batched look-up
    assert status["statuses"] == {"failed_import": 1, "to_review": 1, "importing": 1}
    stuck = {row["annotation"]: row for row in status["stuck_documents"]}
    assert set(stuck) == {ids[0], ids[2]}
    assert stuck[ids[0]]["why"] == "failed_import"
    assert stuck[ids[2]]["why"].startswith("importing for more than")
    assert stuck[ids[2]]["file"].startswith("doc")


@pytest.mark.parametrize("count", [250])
def test_status_tracking_batches_ids(sandbox: SandboxServer, count: int) -> None:
    """Status look-ups go in chunks of 100 ids, not one request per document."""
    from rossflow.ingest import track_status
    from rossflow.rossum import RossumClient

    ids = sandbox.seed(queue=1, count=count, status="to_review")
    sandbox.force_status(ids[5], "failed_export")

    async def run() -> Any:
        async with RossumClient(
            sandbox.api_url,
            username=sandbox.username,
            password=sandbox.password,
            rate_limit_per_s=None,
        ) as client:
            await client.login()
            return await track_status(client, [*ids, 999_999], importing_stuck_after_s=60)

    report = asyncio.run(run())
    assert report.checked == count + 1 and report.requests == 3
    assert report.counts["to_review"] == count - 1 and report.missing == [999_999]
    assert [row["annotation"] for row in report.stuck] == [ids[5]]
    assert "failed_export" in report.markdown()


def test_empty_ingest_run_creates_no_artifact(
    prefect_harness: None,
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A scheduled run that finds nothing logs one line and leaves no artifact behind."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.ingest import ingest

    async def count(key: str) -> int:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
            return len(found)

    def counts() -> tuple[int, int]:
        return asyncio.run(count("ingest-report")), asyncio.run(count("ingest-summary"))

    (sftp_server.root / "inbox").mkdir(exist_ok=True)
    put(sftp_server.root / "inbox", "readme.md", b"matches no rule")
    source = IngestSource(
        sftp_server=sftp_block(sftp_server),
        directory="/inbox",
        rules=[{"pattern": "*.pdf", "queue_id": 1}],
    )
    before = counts()
    options = IngestOptions(ledger_path=str(tmp_path / "ingest.db"), min_age_s=0)
    with caplog.at_level("INFO", logger="prefect.flow_runs"):
        states = [
            ingest(source=source, rossum=rossum_block(sandbox), options=options, return_state=True)
            for _ in range(2)
        ]
    for state in states:
        assert state.is_completed()
        assert state.result()["processed"] == 0
        assert artifacts(str(state.state_details.flow_run_id)) == {}
    assert counts() == before
    lines = [r.getMessage() for r in caplog.records if "nothing to do" in r.getMessage()]
    assert len(lines) == 2 and "1 matched no rule" in lines[0], lines

    # A run with work still publishes its report.
    put(sftp_server.root / "inbox", "a.pdf", pdf("a"))
    state = ingest(source=source, rossum=rossum_block(sandbox), options=options, return_state=True)
    assert state.result()["uploaded"] == 1
    assert set(artifacts(str(state.state_details.flow_run_id))) == {
        "ingest-report",
        "ingest-summary",
    }
