"""The run loop keeps the target busy between batches: the next batch starts delivering as soon
as the last documents of the batch before it hold their slots, while that batch finishes its
calls and moves its annotations; the target never sees more than the in-flight limit.
Real sandbox and ERP stand-in; the engine's own batch steps, timed from outside."""

from __future__ import annotations

import time

from rossflow.export.loading import load_pipeline
from rossflow.export.run import BatchSteps, engine_steps, export_queue

PIPELINE = """
name: overlap
steps:
  - name: render
    type: template
    outputs:
      - key: invoice_json
        format: json
        template: '{"number": {{ field.invoice_id | tojson }}}'
  - name: post_invoice
    type: rest
    after: [render]
    target: erp
    export_reference_key: invoice_json
    request: {url: /api/invoices, method: POST, content: "#{file_content}"}
"""


async def test_next_batch_delivers_while_the_one_before_finishes(rig):
    ids = rig.sandbox.seed(queue=1, count=30, status="confirmed")
    rig.erp.configure({"latency_s": 0.15})
    config = load_pipeline(PIPELINE)
    events: list[tuple[str, int, float]] = []
    async with (
        rig.client() as client,
        rig.engine(config, client, concurrency=4, in_flight=4) as engine,
    ):
        base = engine_steps(engine)

        async def run_stage(batch, names, queue_id, no):
            events.append(("stage", no, time.monotonic()))
            return await base.run_stage(batch, names, queue_id, no)

        async def finalize(batch, local, queue_id, no):
            done = await base.finalize(batch, local, queue_id, no)
            events.append(("finalized", no, time.monotonic()))
            return done

        reports = await export_queue(
            client,
            1,
            [s.name for s in config.steps],
            BatchSteps(base.prepare, run_stage, finalize, base.is_local),
            batch_size=10,
            batches_in_flight=1,
        )

    assert sorted(r.annotation_id for r in reports if r.outcome == "exported") == sorted(ids)
    assert await rig.statuses(ids) == dict.fromkeys(ids, "exported")
    started = {no: t for kind, no, t in events if kind == "stage"}
    finalized = {no: t for kind, no, t in events if kind == "finalized"}
    assert sorted(started) == sorted(finalized) == [1, 2, 3], events
    # one batch delivering at a time, yet batch n + 1 started before batch n had finished its
    # tail of calls and moved its annotations: the ERP was not left idle in between
    for no in (2, 3):
        assert started[no - 1] < started[no] < finalized[no - 1], events
    stats = rig.erp.stats()
    assert stats["documents"] == 30 and stats["duplicates"] == 0
    # the limit holds across the overlapping batches, and the overlap used it fully
    assert stats["max_in_flight"] == 4, stats
