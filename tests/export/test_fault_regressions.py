"""Regressions of issue 16 (a fault-injection run): each against the real sandbox, ERP stand-in
and, where the flow is involved, the Prefect test server."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest

from blocks import RestTarget, RossumCredentials
from tests.export.conftest import stored_artifacts
from tests.export.test_engine import ERP_PIPELINE, _export, _value


async def _flow_blocks(sandbox, erp, **target: object) -> str:
    suffix = uuid.uuid4().hex[:8]
    rossum = f"rossum-{suffix}"
    await RossumCredentials(
        base_url=sandbox.api_url,
        username=sandbox.username,
        password=sandbox.password,
        rate_limit_per_s=None,
    ).asave(rossum, overwrite=True)
    await RestTarget(base_url=erp.url, **target).asave("erp", overwrite=True)
    return rossum


async def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in arts}


# -- 1. a failure without an HTTP status must not crash the report ---------------------------


@pytest.mark.usefixtures("prefect_harness")
async def test_flow_with_a_read_timeout_still_writes_report_table_and_summary(
    sandbox, erp_server, tmp_path
):
    from flows.export import export_confirmed

    ids = sandbox.seed(queue=1, count=3, status="confirmed")
    items = await _export_items(sandbox, ids)
    slow = _value(items[1], "invoice_id")
    # the ERP hangs on this invoice for longer than the target's read timeout
    erp_server.configure(
        {"fail_when_body_contains": {slow: {"status": 201, "latency_s": 2.0}}}, merge=True
    )
    rossum = await _flow_blocks(sandbox, erp_server, max_attempts=1, read_timeout_s=0.4)
    state = tmp_path / "state"
    run_state = await export_confirmed(
        queues=[1], pipeline=ERP_PIPELINE, rossum=rossum, state_dir=str(state), return_state=True
    )
    assert run_state.is_completed(), run_state.message
    counts = await run_state.result()
    assert counts == {"exported": 2, "failed_uncertain": 1}
    csvs = sorted((state / "reports").glob("export-*.csv"))
    assert len(csvs) == 1
    frame = pd.read_csv(csvs[0])
    timed_out = frame[frame["message"].fillna("").str.contains("ReadTimeout")]
    assert len(timed_out) == 1 and pd.isna(timed_out.iloc[0]["http_status"])
    arts = await _artifacts(run_state.state_details.flow_run_id)
    assert {"export-report", "export-summary"} <= set(arts)
    table = json.loads(arts["export-report"].data)
    assert len(table) == 3
    assert "| failed_uncertain | 1 |" in arts["export-summary"].data


async def _export_items(sandbox, ids):
    from rossflow.rossum import RossumClient

    async with RossumClient(
        sandbox.api_url, username=sandbox.username, password=sandbox.password, rate_limit_per_s=None
    ) as client:
        items = await client.export(1, ids=ids)
    for item in items:
        item["id"] = int(item["url"].rstrip("/").rsplit("/", 1)[-1])
    return sorted(items, key=lambda i: i["id"])


# -- 5. the run-report CSV: one column set, in the documented order, filled -----------------


async def test_run_report_csv_reads_back_with_the_documented_columns_filled(rig, tmp_path):
    from rossflow.export.report import write_report_csv
    from rossflow.export.tabular import RUN_REPORT_COLUMNS

    ids = rig.sandbox.seed(queue=1, count=3, status="confirmed")
    items = await _export(rig, ids)
    bad = _value(items[2], "invoice_id")
    rig.erp.configure(
        {"fail_when_body_contains": {bad: {"status": 422, "body": {"error": "bad VAT"}}}},
        merge=True,
    )
    reports = await rig.run(ERP_PIPELINE, ids)
    path = write_report_csv(reports, tmp_path / "report.csv")
    frame = pd.read_csv(path, dtype={"http_status": "Int64"}, keep_default_na=False)
    assert list(frame.columns) == RUN_REPORT_COLUMNS
    assert sorted(frame["annotation_id"]) == sorted(ids)
    assert set(frame["queue_id"]) == {1}
    assert all(frame["document"].str.len() > 0)
    by_id = {int(r["annotation_id"]): r for _, r in frame.iterrows()}
    failed = by_id[ids[2]]
    assert failed["outcome"] == "failed_export" and failed["status"] == "failed_export"
    assert failed["step"] == "post_invoice" and failed["http_status"] == 422
    assert "bad VAT" in failed["message"] and failed["target"]
    ok = by_id[ids[0]]
    assert ok["outcome"] == "exported" and ok["status"] == "exported"


# -- 6. failure messages name the block and the URL, never the URL's credentials ---------------


async def test_failures_name_block_and_url_without_credentials(rig):
    from rossflow.export.targets import Targets

    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    items = await _export(rig, ids)
    refused, hung = _value(items[0], "invoice_id"), _value(items[1], "invoice_id")
    rig.erp.configure(
        {
            "fail_when_body_contains": {
                refused: {"status": 422, "body": {"error": "no"}},
                hung: {"status": 201, "latency_s": 2.0},
            }
        },
        merge=True,
    )
    host = rig.erp.url.split("://", 1)[1]
    block = RestTarget(
        base_url=f"http://svc-user:pw-in-url-1234@{host}", max_attempts=1, read_timeout_s=0.4
    )
    rig.targets = lambda: Targets(rest={"erp": block})  # type: ignore[method-assign]
    reports = {r.annotation_id: r for r in await rig.run(ERP_PIPELINE, ids)}
    where = f"erp (http://{host}/api/invoices)"
    for ann_id in ids:
        report = reports[ann_id]
        assert report.outcome.startswith("failed"), report
        assert where in report.message, report.message
        assert report.target == where
        assert "pw-in-url-1234" not in report.message and "svc-user" not in report.message
    assert "HTTP 422" in reports[ids[0]].message
    assert "ReadTimeout" in reports[ids[1]].message


# -- 2. secrets an ERP echoes back are masked wherever a reply is stored or quoted ------------

_AUTH_CASES = {
    "api_key": (
        {"auth": "api_key", "api_key": "erp-api-key-1234"},
        {"type": "api_key", "header": "X-API-Key", "value": "erp-api-key-1234"},
        ["erp-api-key-1234"],
    ),
    "basic": (
        {"auth": "basic", "username": "svc", "password": "basic-pw-5678"},
        {"type": "basic", "username": "svc", "password": "basic-pw-5678"},
        ["basic-pw-5678", "c3ZjOmJhc2ljLXB3LTU2Nzg="],  # base64 of svc:basic-pw-5678
    ),
    "bearer": (
        {"auth": "bearer", "token": "static-bearer-9012"},
        {"type": "bearer", "token": "static-bearer-9012"},
        ["static-bearer-9012"],
    ),
    "oauth2": (
        {"auth": "oauth2", "client_id": "rossflow", "client_secret": "oauth-cs-5566"},
        {"type": "oauth2"},
        ["oauth-cs-5566"],
    ),
}


@pytest.mark.parametrize("kind", sorted(_AUTH_CASES))
async def test_secrets_echoed_by_the_erp_are_masked_everywhere(rig, kind, caplog):
    import logging

    from pydantic import SecretStr

    from rossflow.export.targets import Targets

    block_fields, require_auth, secrets = _AUTH_CASES[kind]
    if kind == "oauth2":
        block_fields = {**block_fields, "token_url": rig.erp.token_url}
    rig.erp.configure(
        {
            "require_auth": require_auth,
            "oauth": {"client_id": "rossflow", "client_secret": "oauth-cs-5566"},
            "echo_errors": True,
        },
        merge=True,
    )
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    items = await _export(rig, ids)
    bad = _value(items[0], "invoice_id")
    rig.erp.configure(
        {"fail_when_body_contains": {bad: {"status": 422, "body": {"error": "rejected"}}}},
        merge=True,
    )
    block = RestTarget(base_url=rig.erp.url, max_attempts=1, **block_fields)
    rig.targets = lambda: Targets(rest={"erp": block})  # type: ignore[method-assign]
    pipeline = ERP_PIPELINE.replace(
        "request: {url: /api/invoices, method: POST,",
        'request: {url: /api/invoices, method: POST, headers: {X-Trace: "{secret.trace}"},',
    )
    caplog.set_level(logging.DEBUG)
    reports = {
        r.annotation_id: r
        for r in await rig.run(pipeline, ids, secrets={"trace": SecretStr("pipe-secret-7788")})
    }
    assert reports[ids[1]].outcome == "exported"
    failed = reports[ids[0]]
    assert failed.outcome == "failed_export" and "rejected" in failed.message
    secrets = [*secrets, "pipe-secret-7788", *rig.erp.state._tokens]
    assert len(secrets) >= (3 if kind == "oauth2" else 2)  # oauth2: the run-time token too
    # the ERP did echo the request: the stored reply quotes it, masked
    stored = stored_artifacts(rig.state / "artifacts")[f"{ids[0]}/post_invoice/response.body"]
    stored = stored.decode()
    assert '"request"' in stored and "***" in stored
    quoted = {
        "report": failed.message,
        "rossum message": json.dumps((await rig.annotation(ids[0]))["messages"]),
        "logs": caplog.text,
    }
    for path in rig.state.rglob("*"):
        if path.is_file():
            quoted[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for where, text in quoted.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {where}"


# -- 3. a POST that may have been processed is reported as an uncertain outcome --------------


async def test_possibly_booked_invoices_are_reported_uncertain_not_as_plain_failures(rig):
    from rossflow.export.errors import UNCERTAIN_NOTE
    from rossflow.export.report import markdown_summary
    from rossflow.export.targets import Targets

    ids = rig.sandbox.seed(queue=1, count=4, status="confirmed")
    items = await _export(rig, ids)
    hung, down, refused = (_value(items[i], "invoice_id") for i in range(3))
    rig.erp.configure(
        {
            "fail_when_body_contains": {
                # no answer within the read timeout, every time (it may be booking them)
                hung: {"status": 503, "latency_s": 1.5},
                # a 5xx may come after the ERP booked the invoice
                down: {"status": 503, "body": {"error": "maintenance"}},
                refused: {"status": 422, "body": {"error": "unknown vendor"}},
            }
        },
        merge=True,
    )
    block = RestTarget(base_url=rig.erp.url, max_attempts=2, read_timeout_s=0.4)
    rig.targets = lambda: Targets(rest={"erp": block})  # type: ignore[method-assign]
    reports = {r.annotation_id: r for r in await rig.run(ERP_PIPELINE, ids, concurrency=4)}
    for ann_id, first, second in (
        (ids[0], "ReadTimeout", "ReadTimeout"),
        (ids[1], "HTTP 503", "HTTP 503"),
    ):
        report = reports[ann_id]
        assert report.outcome == "failed_uncertain", report
        assert report.status == "failed_export"
        assert UNCERTAIN_NOTE in report.message
        assert f"attempts: 1) {first}" in report.message and f"2) {second}" in report.message
        messages = (await rig.annotation(ann_id))["messages"]
        assert UNCERTAIN_NOTE in messages[0]["content"]
    definite = reports[ids[2]]
    assert definite.outcome == "failed_export"
    assert "not delivered" in definite.message and UNCERTAIN_NOTE not in definite.message
    assert reports[ids[3]].outcome == "exported"
    summary = markdown_summary("erp", [1], list(reports.values()))
    assert "| failed_uncertain | 2 |" in summary
    assert "2 annotation(s) with an uncertain outcome" in summary


# -- 4. the answer to the move is lost after Rossum processed it ------------------------------


async def test_lost_answer_to_the_move_reports_the_real_status(rig):
    ids = rig.sandbox.seed(queue=1, count=5, status="confirmed")
    rig.sandbox.set_faults(
        [
            {
                "method": "POST",
                "path": r"/api/v1/queues/\d+/export",
                "kind": "drop_after",
                "times": 1,
            }
        ]
    )
    rig.sandbox.reset_stats()
    reports = await rig.run(ERP_PIPELINE, ids)
    requests = rig.sandbox.stats()["requests"]
    moves = sum(v for k, v in requests.items() if k.startswith("POST /api/v1/queues/"))
    assert moves == 2  # the dropped one and its retry, which found nothing confirmed
    assert requests.get("GET /api/v1/annotations") == 1  # one read-back for the batch
    assert [r.outcome for r in reports] == ["exported"] * 5, [r.message for r in reports]
    assert {r.status for r in reports} == {"exported"}
    assert set((await rig.statuses(ids)).values()) == {"exported"}
