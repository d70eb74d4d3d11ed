"""One exported-since run in its own process: ``python -m tests.export.exported_since_child '<json>'``.

Used for overlapping runs (two processes = two workers, so ledger claims really compete) and for
a SIGKILL mid-batch. With ``go_file`` it prints ``ready`` once set up and waits for that file, so
that two children start together; then it prints the run's counts as JSON. The state store comes from ``state`` (SQLite files) unless
``ROSSFLOW_STATE_URL`` is set in the environment.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


async def run(config: dict[str, Any]) -> dict[str, Any]:
    from pathlib import Path

    from blocks import RestTarget
    from rossflow.artifacts import ArtifactStore
    from rossflow.export.engine import ExportEngine
    from rossflow.export.exported_since import ExportedSince
    from rossflow.export.loading import load_pipeline
    from rossflow.export.targets import Targets
    from rossflow.ledger import Ledger
    from rossflow.rossum import RetryPolicy, RossumClient
    from rossflow.state.watermarks import WatermarkStore

    state = Path(config["state"])
    pipeline = load_pipeline(config["pipeline"])
    ledger = Ledger(state / "ledger.db")
    watermarks = WatermarkStore(state / "state.db")
    client = RossumClient(
        config["api_url"],
        username=config["username"],
        password=config["password"],
        rate_limit_per_s=None,
        retry=RetryPolicy(backoff_initial_s=0.05, backoff_max_s=0.2),
    )
    targets = Targets(rest={"erp": RestTarget(base_url=config["erp_url"], max_attempts=3)})
    if config.get("go_file"):
        print("ready", flush=True)
        go = Path(config["go_file"])
        while not go.exists():
            time.sleep(0.005)
    async with (
        client,
        ExportEngine(
            pipeline,
            client,
            ledger=ledger,
            artifacts=ArtifactStore(state / "artifacts"),
            targets=targets,
            concurrency=config.get("concurrency", 4),
            move_status=False,
        ) as engine,
    ):
        result = await ExportedSince(
            engine,
            client,
            ledger=ledger,
            watermarks=watermarks,
            queue_id=config.get("queue", 1),
            pipeline=pipeline.name,
            page_size=config.get("page_size", 10),
        ).run()
    return {
        "counts": result.counts(),
        "delivered": [r.annotation_id for r in result.reports if r.outcome == "delivered"],
        "left_to_others": result.left_to_others,
        "already_done": result.already_done,
        "watermark": result.watermark_after,
    }


def main() -> int:
    out = asyncio.run(run(json.loads(sys.argv[1])))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
