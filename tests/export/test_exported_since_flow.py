"""The exported-since flow on a real (temporary) Prefect server, with blocks and artifacts."""

from __future__ import annotations

import pytest

from tests.export.test_engine import ERP_PIPELINE
from tests.export.test_exported_since import status_changing_requests
from tests.export.test_flow import _blocks, _statuses

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def test_flow_delivers_exported_annotations_once_and_publishes_a_report(
    sandbox, erp_server, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.export_exported_since import export_exported_since

    rossum, _ = await _blocks(sandbox, erp_server)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(ERP_PIPELINE)
    ids = sandbox.seed(queue=1, count=12, status="exported")
    sandbox.reset_stats()
    run = {"queues": [1], "pipeline": str(pipeline), "rossum": rossum, "batch_size": 5}
    counts = await export_exported_since(**run, state_dir=str(tmp_path / "state"))
    assert counts == {"delivered": 12}
    assert erp_server.stats()["documents"] == 12
    assert set((await _statuses(sandbox, ids)).values()) == {"exported"}
    assert status_changing_requests(sandbox) == 0
    report = sorted((tmp_path / "state" / "reports").glob("exported-since-*.csv"))
    assert report and report[0].read_text().count("\n") == 13
    async with get_client() as client:
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["exported-since-report", "exported-since-summary"])
            ),
        )
    kinds = {a.key: a for a in arts}
    assert {"exported-since-report", "exported-since-summary"} <= set(kinds)
    assert "| delivered | 12 |" in kinds["exported-since-summary"].data

    again = await export_exported_since(**run, state_dir=str(tmp_path / "state"))
    assert again == {} and erp_server.stats()["documents"] == 12
