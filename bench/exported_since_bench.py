"""Exported-since mode: time and Rossum requests to deliver N exported annotations, and a rerun.

    python -m bench.exported_since_bench            # N = 1,000
    python -m bench.exported_since_bench --n 200

Plain Python (no Prefect): the sandbox and the ERP stand-in run in this process (so the figures
are conservative), pipeline template → REST (no write-back), pages of 100, concurrency 16.
Rossum requests are counted by the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

PIPELINE = """
name: erp-json
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


async def measure(n: int) -> None:
    from blocks import RestTarget
    from rossflow.artifacts import ArtifactStore
    from rossflow.export.engine import ExportEngine
    from rossflow.export.exported_since import ExportedSince
    from rossflow.export.loading import load_pipeline
    from rossflow.export.targets import Targets
    from rossflow.ledger import Ledger
    from rossflow.localstack.erp import ErpServer
    from rossflow.rossum import RossumClient
    from rossflow.state.watermarks import WatermarkStore
    from sandbox.server import SandboxServer

    state = Path(tempfile.mkdtemp(prefix="rossflow-es-bench-"))
    config = load_pipeline(PIPELINE)
    with SandboxServer(db=":memory:") as sandbox, ErpServer() as erp:
        sandbox.seed(queue=1, count=n, status="exported")
        ledger, marks = Ledger(state / "ledger.db"), WatermarkStore(state / "state.db")
        for label in ("first run", "rerun"):
            sandbox.reset_stats()
            started = time.monotonic()
            client = RossumClient(
                sandbox.api_url,
                username=sandbox.username,
                password=sandbox.password,
                rate_limit_per_s=None,
            )
            async with (
                client,
                ExportEngine(
                    config,
                    client,
                    ledger=ledger,
                    artifacts=ArtifactStore(state / "artifacts"),
                    targets=Targets(rest={"erp": RestTarget(base_url=erp.url)}),
                    concurrency=16,
                    move_status=False,
                ) as engine,
            ):
                result = await ExportedSince(
                    engine, client, ledger=ledger, watermarks=marks, queue_id=1, pipeline="erp-json"
                ).run()
            elapsed = time.monotonic() - started
            requests = sum(sandbox.stats()["requests"].values())
            print(
                f"{label}: {result.counts() or 'nothing new'}, {result.already_done} already done;"
                f" {elapsed:.1f} s; {requests} Rossum requests;"
                f" ERP documents {erp.stats()['documents']}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000)
    asyncio.run(measure(parser.parse_args().n))


if __name__ == "__main__":
    main()
