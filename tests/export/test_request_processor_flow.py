"""A Request Processor hook through the Prefect export flow: every stage is a task run."""

from __future__ import annotations

import json
import uuid

import pytest

from blocks import PipelineSecrets, RossumCredentials
from tests.export.conftest import stored_artifacts
from tests.export.test_request_processor import STATUS_HANDLER, bearer_auth

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def test_flow_runs_each_stage_as_a_task_with_secrets_from_the_block(
    sandbox, erp_server, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.export import export_confirmed

    suffix = uuid.uuid4().hex[:8]
    await RossumCredentials(
        base_url=sandbox.api_url,
        username=sandbox.username,
        password=sandbox.password,
        rate_limit_per_s=None,
    ).asave(f"rossum-{suffix}", overwrite=True)
    await PipelineSecrets(values={"client_secret": "secret"}).asave(
        f"secrets-{suffix}", overwrite=True
    )
    erp_server.configure({"require_auth": {"type": "oauth2"}}, merge=True)
    hook = {
        "name": "RP",
        "type": "function",
        "events": ["annotation_content.export"],
        "settings": {
            "stages": [
                {
                    "call_api": [
                        {
                            "name": "create",
                            "auth": bearer_auth(erp_server.url),
                            "request": {
                                "url": erp_server.url + "/api/invoices",
                                "method": "POST",
                                "content_type": "json",
                                "content": {"number": "{field.invoice_id.value}"},
                                "headers": {"Authorization": "Bearer {token}"},
                            },
                            "response_handlers": [STATUS_HANDLER],
                        }
                    ]
                },
                {
                    "evaluate": [
                        {"name": "failed", "condition": {"field.api1_status_code": {"$ne": "201"}}}
                    ],
                    "call_api": [
                        {
                            "name": "alert",
                            "request": {"url": erp_server.url + "/api/alert", "method": "POST"},
                        }
                    ],
                },
            ]
        },
    }
    pipeline = tmp_path / "hooks.json"
    pipeline.write_text(json.dumps([hook]))
    ids = sandbox.seed(queue=1, count=3, status="confirmed")
    state = await export_confirmed(
        queues=[1],
        pipeline=str(pipeline),
        rossum=f"rossum-{suffix}",
        secrets_block=f"secrets-{suffix}",
        state_dir=str(tmp_path / "state"),
        return_state=True,
    )
    counts = await state.result()
    assert counts == {"exported": 3}
    from tests.export.test_flow import _statuses

    assert set((await _statuses(sandbox, ids)).values()) == {"exported"}
    assert erp_server.stats()["token_requests"] == 1
    assert [r["path"] for r in erp_server.received()] == ["/api/invoices"] * 3
    report = next((tmp_path / "state" / "reports").glob("export-*.csv")).read_text()
    assert report.count("stage 2 skipped by condition 'failed'") == 3
    stored = stored_artifacts(tmp_path / "state" / "artifacts")
    assert stored
    assert "secret" not in b"".join(stored.values()).decode(errors="replace").replace(
        "client_secret=***", ""
    )
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["export-summary"])),
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
        )
    assert arts and "stage 2 skipped by condition 'failed'" in str(arts[0].data)
    names = {r.name.rsplit(" q", 1)[0] for r in runs}
    # one task per stage: a call with the local steps (evaluate) just before it; the last
    # stage with finalize
    assert {
        "RP/stage-1/call_api:create",
        "RP/stage-2/evaluate+RP/stage-2/call_api:alert+finalize",
    } <= names
    assert not any(name.endswith("/evaluate") for name in names)
