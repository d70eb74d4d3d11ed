"""Two runs over the same annotation at once: one fails a delivery, the other (which read the
annotation as ``confirmed`` before) then delivers it. The annotation must end ``exported``, not
``failed_export`` with the first run's stale "not delivered" (found by the two-host scale test,
tests/scaleout/test_two_hosts_chaos.py: the ERP had booked the invoice). Real sandbox and ERP."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from rossflow.ledger import Ledger
from tests.export.test_reconcile import (
    booked_numbers,
    erp_ids_written_back,
    invoice_numbers,
    pipeline,
    use_target,
)


async def _until(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_failure_is_not_marked_when_another_run_delivered_it_meanwhile(rig):
    a, b = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    numbers = await invoice_numbers(rig, [a, b])
    slow = {numbers[b]: {"status": 201, "latency_s": 3.0}}  # keeps run X's batch open
    rig.erp.configure(
        {
            "ignore_idempotency_key": True,
            "fail_when_body_contains": {numbers[a]: {"status": 503}, **slow},
        }
    )
    use_target(rig, max_attempts=1)
    x = asyncio.create_task(rig.run(pipeline("reconcile"), [a, b]))
    ledger = Ledger(rig.state / "ledger.db")
    await _until(lambda: [e.state for e in ledger.for_subject("delivery", str(a))] == ["failed"])

    # run Y: the ERP takes it now
    rig.erp.configure({"ignore_idempotency_key": True, "fail_when_body_contains": slow})
    y = await rig.run(pipeline("reconcile"), [a])
    assert y[0].outcome == "exported", y[0].message
    assert not x.done()  # X's batch is still waiting for b

    reports = {r.annotation_id: r for r in await x}
    assert reports[b].outcome == "exported"
    assert reports[a].outcome == "not_moved", reports[a].message
    assert "another run delivered it" in reports[a].message
    assert await rig.statuses([a, b]) == {a: "exported", b: "exported"}
    assert booked_numbers(rig) == Counter(numbers.values())
    booked = {d["json"]["number"]: d["id"] for d in rig.erp.booked()}
    assert (await erp_ids_written_back(rig, [a]))[a] == booked[numbers[a]]


async def test_a_run_that_delivered_moves_it_although_another_run_marked_it_failed(rig):
    a, c = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    numbers = await invoice_numbers(rig, [a, c])
    rig.erp.configure(
        {
            "ignore_idempotency_key": True,
            "fail_when_body_contains": {numbers[c]: {"status": 201, "latency_s": 2.0}},
        }
    )
    use_target(rig)
    y = asyncio.create_task(rig.run(pipeline("reconcile"), [a, c]))
    ledger = Ledger(rig.state / "ledger.db")
    await _until(lambda: [e.state for e in ledger.for_subject("delivery", str(a))] == ["done"])
    # meanwhile an overlapping run, which failed its own attempt, marks it failed_export
    async with rig.client() as client:
        await client.mark_failed_export(a, "[post_invoice] not delivered: HTTP 503")
    assert not y.done()

    reports = {r.annotation_id: r for r in await y}
    assert reports[a].outcome == "exported", reports[a].message
    assert await rig.statuses([a, c]) == {a: "exported", c: "exported"}
    assert booked_numbers(rig) == Counter(numbers.values())
