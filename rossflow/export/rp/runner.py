"""Runs Request Processor steps (``rp_evaluate``, ``rp_get_content``, ``rp_call``) for one
annotation at a time; the export engine calls :meth:`RequestProcessor.run`.

Per-document state (properties, fields written by handlers, failed stage gates, relation
lists) lives for the run, as in Rossum where one hook invocation runs every stage. Tokens are
cached per run (Rossum persists them in hook secrets; rossflow never writes secrets back).

One job per module beside this one: ``base`` (state, scope, secrets), ``content``
(get_content), ``call`` (one call_api entry), ``apply`` (response handlers), ``auth`` (tokens),
``direct_export``; this module runs ``rp_evaluate`` and dispatches.

Deliberate differences from Rossum, each with a switch in the pipeline's ``compat`` block
(:class:`~rossflow.export.config.RpCompat`): a non-2xx reply fails the document (after its
handlers ran); an unresolvable placeholder in ``auth``/``request`` fails it naming the
placeholder; each failure has its own message. Unknown operators/keys never reach this module:
they are refused at load time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from rossflow.export.config import (
    RpCallStep,
    RpCompat,
    RpEvaluateStep,
    RpGetContentStep,
)
from rossflow.export.errors import StepError
from rossflow.export.rp.auth import TokenCache
from rossflow.export.rp.base import DocLike, FileUpload, RpDoc, Store
from rossflow.export.rp.call import CallApi
from rossflow.export.rp.content import ContentSources
from rossflow.export.rp.direct_export import DIRECT_EXPORT_PATH
from rossflow.export.rp.templates import FieldTree
from rossflow.export.rp_spec import GENERIC_MESSAGE
from rossflow.rossum import RossumClient, RossumError

__all__ = ["DIRECT_EXPORT_PATH", "RequestProcessor", "RpDoc"]

log = logging.getLogger("rossflow.export.rp")


class RequestProcessor(ContentSources, CallApi):
    """Executes RP steps with the engine's Rossum client, ledger and artefact store."""

    def __init__(
        self,
        *,
        client: RossumClient,
        ledger: Any,
        store: Store,
        upload: FileUpload,
        secrets: Callable[[Any], dict[str, Any]],
        compat: RpCompat,
        dry_run: bool,
        concurrency: int = 16,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.store = store
        self.upload = upload
        self._secrets = secrets
        self.compat = compat
        self.dry_run = dry_run
        self.docs: dict[int, RpDoc] = {}
        self._doc_locks: dict[int, asyncio.Lock] = {}
        self._run_id = uuid.uuid4().hex
        self._http = httpx.AsyncClient(
            follow_redirects=True,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self._tokens = TokenCache(self._http)
        origin = urlsplit(client.base_url)
        self.base_url = f"{origin.scheme}://{origin.netloc}"

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- per-document state ------------------------------------------------------------

    async def _doc(self, step: Any, doc: DocLike) -> RpDoc:
        lock = self._doc_locks.setdefault(doc.annotation_id, asyncio.Lock())
        async with lock:
            found = self.docs.get(doc.annotation_id)
            if found is not None:
                return found
            payload = await self._payload(step, doc)
            # The API content has every datapoint (with ids), as the hook sees it; the export
            # item's content carries the schema types of the datapoints it lists.
            types = {
                sid: str(dp.kind) for sid, dp in FieldTree(doc.ctx.content).datapoints().items()
            }
            try:
                content = await self.client.get_annotation_content(doc.annotation_id)
            except RossumError as exc:
                raise StepError(
                    f"cannot read the content of annotation {doc.annotation_id}: {exc}",
                    target="rossum",
                    http_status=exc.status,
                ) from exc
            found = self.docs[doc.annotation_id] = RpDoc(
                payload=payload, fields=FieldTree(content, types)
            )
            return found

    async def _payload(self, step: Any, doc: DocLike) -> dict[str, Any]:
        """A Rossum hook payload (``annotation_content`` event) for this annotation."""
        item = dict(doc.ctx.item)
        annotation = dict(item.get("annotation") or item)
        annotation.setdefault("id", doc.annotation_id)
        doc_ref = annotation.get("document")
        doc_url = doc_ref.get("url") if isinstance(doc_ref, Mapping) else doc_ref
        document: dict[str, Any] = dict(doc_ref) if isinstance(doc_ref, Mapping) else {}
        if doc_url:
            try:
                document = {**document, **await self.client.get_document(str(doc_url))}
            except RossumError as exc:
                raise StepError(
                    f"cannot read the document of annotation {doc.annotation_id}: {exc}",
                    target="rossum",
                    http_status=exc.status,
                ) from exc
        return {
            "request_id": str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"{self._run_id}:{doc.annotation_id}")
            ),
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "base_url": self.base_url,
            "rossum_authorization_token": self._rossum_token(),
            "hook": (getattr(step, "extra", {}).get("hook") or {}).get("url")
            or getattr(step, "hook", None),
            "action": "export",
            "event": "annotation_content",
            "settings": {},
            "secrets": self._plain_secrets(step),
            "annotation": annotation,
            "document": document,
        }

    # -- dispatch ----------------------------------------------------------------------

    async def run(self, step: Any, doc: DocLike) -> bool:
        """Run one RP step for one document; False when it was skipped."""
        state = await self._doc(step, doc)
        if step.gate and step.gate in state.gates:
            return False
        try:
            if isinstance(step, RpEvaluateStep):
                return await self._evaluate(step, doc, state)
            if isinstance(step, RpGetContentStep):
                return await self._get_content(step, doc, state)
            if isinstance(step, RpCallStep):
                return await self._call(step, doc, state)
        except StepError as exc:
            if self.compat.single_generic_message:
                log.warning("[%s] %s", step.name, exc.message())
                raise StepError(GENERIC_MESSAGE) from exc
            raise
        raise StepError(f"unsupported Request Processor step {type(step).__name__}")

    # -- evaluate ----------------------------------------------------------------------
    async def _evaluate(self, step: RpEvaluateStep, doc: DocLike, state: RpDoc) -> bool:
        scope = self._scope(step, state)
        for i, rule in enumerate(step.conditions):
            name = str(rule.get("name") or f"condition {i + 1}")
            if not await self._condition(rule["condition"], scope):
                state.gates[step.name] = name
                doc.warnings.append(
                    f"{step.hook} stage {step.stage + 1} skipped by condition {name!r} "
                    f"({step.key_path}[{i}])"
                )
                return True
        return True
