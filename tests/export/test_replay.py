"""Replay of chosen annotations: confirmed and failed_export are sent, exported only with
force, anything else refused with a message naming the annotation and its status; force
re-sends exactly once, with new idempotency keys."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rossflow.export.replay import select_for_replay
from rossflow.ledger import Ledger
from tests.export.test_engine import ERP_PIPELINE
from tests.export.test_flow import _blocks, _statuses


def _item(ann_id: int, status: str) -> dict:
    return {
        "url": f"https://x/api/v1/annotations/{ann_id}",
        "status": status,
        "document": {"file_name": f"f{ann_id}.pdf"},
    }


def test_selection_by_status(tmp_path: Path) -> None:
    items = [_item(1, "confirmed"), _item(2, "failed_export"), _item(3, "exported")]
    items += [_item(4, "to_review"), _item(5, "deleted"), _item(6, "exporting")]
    plain = select_for_replay(items, [1, 2, 3, 4, 5, 6, 7])
    assert [i["status"] for i in plain.accepted] == ["confirmed", "failed_export"]
    refused = {r.annotation_id: r for r in plain.refused}
    assert set(refused) == {3, 4, 5, 6} and plain.missing == [7]
    assert "annotation 3 is already exported" in refused[3].message
    assert "force: true" in refused[3].message
    assert refused[4].message.startswith("annotation 4 is to_review: not replayed")
    assert refused[5].message.startswith("annotation 5 is deleted: not replayed")
    assert refused[4].file_name == "f4.pdf"
    assert plain.generations == {}

    ledger = Ledger(tmp_path / "ledger.db")
    forced = select_for_replay(items, [1, 2, 3], force=True, ledger=ledger)
    assert [i["status"] for i in forced.accepted] == ["confirmed", "failed_export", "exported"]
    assert {r.annotation_id for r in forced.refused} == {4, 5, 6}
    assert forced.generations == {1: 1, 2: 1, 3: 1}
    again = select_for_replay(items[2:3], [3], force=True, ledger=ledger)
    assert again.generations == {3: 2}  # every forced replay is a new generation


def _report_rows(state: Path) -> dict[int, dict[str, str]]:
    """Rows of the newest CSV run report, by annotation id."""
    path = max((state / "reports").glob("export-*.csv"), key=lambda p: p.stat().st_mtime)
    with path.open() as f:
        return {int(row["annotation_id"]): row for row in csv.DictReader(f)}


@pytest.mark.usefixtures("prefect_harness")
async def test_replay_refuses_unconfirmed_statuses(sandbox, erp_server, tmp_path):
    from flows.export import export_confirmed

    rossum, _ = await _blocks(sandbox, erp_server)
    ids = sandbox.seed(queue=1, count=6, status="confirmed")
    wanted = ["confirmed", "failed_export", "to_review", "postponed", "deleted", "exported"]
    for ann_id, status in zip(ids, wanted, strict=True):
        if status != "confirmed":
            sandbox.force_status(ann_id, status)
    counts = await export_confirmed(
        queues=[1],
        pipeline=ERP_PIPELINE,
        rossum=rossum,
        annotation_ids=ids,
        state_dir=str(tmp_path),
    )
    assert counts == {"exported": 2, "replay_refused": 4}
    assert erp_server.stats()["requests"] == 2
    statuses = await _statuses(sandbox, ids)
    assert [statuses[i] for i in ids] == [
        "exported",
        "exported",
        "to_review",
        "postponed",
        "deleted",
        "exported",
    ]
    rows = _report_rows(tmp_path)
    for ann_id, status in zip(ids[2:], wanted[2:], strict=True):
        assert rows[ann_id]["outcome"] == "replay_refused"
        assert f"annotation {ann_id} is " in rows[ann_id]["message"]
        assert status in rows[ann_id]["message"]


@pytest.mark.usefixtures("prefect_harness")
async def test_force_resends_exactly_once_with_new_keys(sandbox, erp_server, tmp_path):
    from flows.export import export_confirmed

    rossum, _ = await _blocks(sandbox, erp_server)
    ids = sandbox.seed(queue=1, count=2, status="confirmed")
    run = {"queues": [1], "pipeline": ERP_PIPELINE, "rossum": rossum, "state_dir": str(tmp_path)}
    assert await export_confirmed(**run) == {"exported": 2}
    first_keys = {r["idempotency_key"] for r in erp_server.received()}
    target = ids[0]

    # Without force an exported annotation is not sent again.
    assert await export_confirmed(**run, annotation_ids=[target]) == {"replay_refused": 1}
    assert erp_server.stats()["requests"] == 2

    forced = await export_confirmed(**run, annotation_ids=[target], force=True)
    assert forced == {"exported": 1}, [r["message"] for r in _report_rows(tmp_path).values()]
    stats = erp_server.stats()
    assert stats["requests"] == 3 and stats["documents"] == 3 and stats["duplicates"] == 0
    resent = erp_server.received()[-1]
    assert resent["idempotency_key"] not in first_keys  # the ERP books it again
    assert (await _statuses(sandbox, [target]))[target] == "exported"
    # A plain rerun over the queue sends nothing more.
    assert await export_confirmed(**run) in ({}, {"exported": 0})
    assert erp_server.stats()["requests"] == 3


def test_the_run_form_explains_replay_and_force() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.export import export_confirmed

    props = parameter_schema(export_confirmed.fn).properties
    assert "exported ones only with force" in props["annotation_ids"]["description"]
    assert "refused" in props["annotation_ids"]["description"]
    assert "new idempotency keys" in props["force"]["description"]
    assert props["force"]["default"] is False
