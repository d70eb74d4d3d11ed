"""Helpers for export tests: run the engine (plain Python) against the real local servers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blocks import RestTarget
from rossflow.artifacts import ArtifactStore
from rossflow.export.batch import DocReport
from rossflow.export.engine import ExportEngine
from rossflow.export.loading import load_pipeline
from rossflow.export.run import engine_steps, export_queue
from rossflow.export.targets import Targets
from rossflow.ledger import Ledger
from rossflow.rossum import RetryPolicy, RossumClient


def datapoint(content: list[dict[str, Any]], schema_id: str) -> dict[str, Any] | None:
    for node in content:
        if node.get("schema_id") == schema_id and node.get("category") == "datapoint":
            return node
        found = datapoint(node.get("children") or [], schema_id)
        if found:
            return found
    return None


def stored_artifacts(root: Path) -> dict[str, bytes]:
    """Every artifact the runs stored under ``root`` (``<state>/artifacts``), by reference."""
    store = ArtifactStore(root)
    try:
        return {info.ref: store.get(info.ref) for info in store.listing()}
    finally:
        store.close()


@dataclass
class ExportRig:
    """The sandbox, the ERP and a state directory, with a one-call engine runner."""

    sandbox: Any
    erp: Any
    state: Path
    sftp: Any = None
    s3_bucket: Any = None

    def client(self) -> RossumClient:
        return RossumClient(
            self.sandbox.api_url,
            username=self.sandbox.username,
            password=self.sandbox.password,
            rate_limit_per_s=None,
            retry=RetryPolicy(backoff_initial_s=0.05, backoff_max_s=0.2),
        )

    def targets(self) -> Targets:
        sftp = {"archive": self.sftp.connection_info()} if self.sftp else {}
        s3 = {"bucket": self.s3_bucket} if self.s3_bucket is not None else {}
        return Targets(
            rest={"erp": RestTarget(base_url=self.erp.url, max_attempts=3)}, sftp=sftp, s3=s3
        )

    async def run(
        self,
        pipeline: str | dict[str, Any] | list[Any],
        ids: list[int],
        *,
        queue: int = 1,
        code_steps: dict[str, Any] | None = None,
        **engine_kw: Any,
    ) -> list[DocReport]:
        config = load_pipeline(pipeline, code_steps=code_steps)
        async with self.client() as client, self.engine(config, client, **engine_kw) as engine:
            # the flow's run loop, driven by the engine's own methods: one batch of ``ids``
            return await export_queue(
                client,
                queue,
                [step.name for step in config.steps_for_queue(queue)],
                engine_steps(engine),
                batch_size=max(1, len(ids)),
                annotation_ids=ids,
            )

    def engine(self, config: Any, client: RossumClient, **engine_kw: Any) -> ExportEngine:
        """An engine on this rig's ledger, artifacts and targets (use it with ``async with``)."""
        return ExportEngine(
            config,
            client,
            ledger=Ledger(self.state / "ledger.db"),
            artifacts=ArtifactStore(self.state / "artifacts"),
            targets=self.targets(),
            **engine_kw,
        )

    async def statuses(self, ids: list[int]) -> dict[int, str]:
        async with self.client() as client:
            return {a["id"]: a["status"] async for a in client.list_annotations(ids=ids)}

    async def annotation(self, ann_id: int) -> dict[str, Any]:
        async with self.client() as client:
            return await client.get_annotation(ann_id)

    async def content(self, ann_id: int) -> list[dict[str, Any]]:
        async with self.client() as client:
            return await client.get_annotation_content(ann_id)


@pytest.fixture
def rig(sandbox, erp_server, tmp_path) -> ExportRig:
    return ExportRig(sandbox=sandbox, erp=erp_server, state=tmp_path / "state")


@pytest.fixture
def full_rig(sandbox, erp_server, sftp_server, s3_bucket, tmp_path) -> ExportRig:
    return ExportRig(
        sandbox=sandbox,
        erp=erp_server,
        state=tmp_path / "state",
        sftp=sftp_server,
        s3_bucket=s3_bucket,
    )
