"""Request Processor response handlers: applying them to one reply of a call_api entry.

Handlers set properties, write datapoints (written back to the annotation at the end of the
entry, Rossum's way) or store the reply as a document relation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rossflow.export.config import RpCallStep
from rossflow.export.context import build_writeback_operations
from rossflow.export.errors import StepError
from rossflow.export.rp.base import DocLike, RpBase, RpDoc
from rossflow.export.rp.handlers import extract
from rossflow.rossum import RossumError


class ResponseHandlers(RpBase):
    """``priority_response_handlers`` and ``response_handlers`` of a call_api entry."""

    async def _handle(
        self,
        step: RpCallStep,
        doc: DocLike,
        state: RpDoc,
        response: dict[str, Any],
        seq: int,
        touched: set[str],
    ) -> None:
        call = step.call
        for kind in ("priority_response_handlers", "response_handlers"):
            for i, handler in enumerate(call.get(kind) or []):
                where = f"{step.key_path}.{kind}[{i}]"
                handled = await self._handler(
                    step, doc, state, handler, response, seq, where, touched
                )
                if handled and kind == "priority_response_handlers":
                    break

    async def _handler(
        self,
        step: RpCallStep,
        doc: DocLike,
        state: RpDoc,
        handler: Mapping[str, Any],
        response: dict[str, Any],
        seq: int,
        where: str,
        touched: set[str],
    ) -> bool:
        value = extract(handler["value"], response, where) if handler.get("value") else None
        if handler.get("condition"):
            scope = self._scope(step, state, response=response, found_value=value, sequence=seq)
            if not await self._condition(handler["condition"], scope):
                return False
        target = str(handler["target_type"])
        raw_key = str(handler["target_key"])
        key = raw_key.replace("{sequence}", str(seq))
        if target == "property":
            if key in state.properties:
                doc.warnings.append(f"[{step.name}] property {key!r} overwritten")
            state.properties[key] = value
        elif target == "schema_id":
            if not state.fields.set_value(key, _field_text(value)):
                raise StepError(
                    f"{where}: target_key {key!r} is not a datapoint of the annotation "
                    "(add it to the schema, e.g. as a hidden 'data' field)"
                )
            state.writes.setdefault(key, []).append(value)
            touched.add(key)
        else:
            await self._document_relation(step, doc, raw_key, key, response)
        return True

    async def _write_back(
        self, step: RpCallStep, doc: DocLike, state: RpDoc, keys: set[str]
    ) -> None:
        """Write handler results into the annotation (several writes: Rossum's list repr)."""
        values: dict[str, Any] = {}
        for key in sorted(keys):
            writes = state.writes[key]
            if len(writes) == 1:
                values[key] = writes[0]
            else:
                values[key] = str(writes)
                doc.warnings.append(
                    f"[{step.name}] {len(writes)} writes to {key!r} in this run were stored "
                    "as one list text, as Rossum does; use target_key '..._{sequence}' to "
                    "keep them apart"
                )
        # Later stages read the last value written (set by the handler); the annotation gets
        # Rossum's end-of-run value: the one write, or the list text of several.
        values = {k: _field_text(v) for k, v in values.items()}
        doc.ctx = doc.ctx.with_values(values)
        if self.dry_run:
            return
        try:
            content = await self.client.get_annotation_content(doc.annotation_id)
            ops = build_writeback_operations(content, values, step=step.name)
            await self.client.content_operations(doc.annotation_id, ops)
        except RossumError as exc:
            raise StepError(
                f"writing {sorted(values)} back to Rossum failed: {exc.detail or exc}",
                step=step.name,
                target="rossum",
                http_status=exc.status,
            ) from exc

    async def _document_relation(
        self,
        step: RpCallStep,
        doc: DocLike,
        relation_key: str,
        key: str,
        response: Mapping[str, Any],
    ) -> None:
        """Store the reply as a document ``<key>_response`` in relation ``relation_key``."""
        body = response.get("content") or str(response.get("text") or "").encode()
        ann_url = f"{self.client.base_url}/v1/annotations/{doc.annotation_id}"
        try:
            created = (
                await self.client.request(
                    "POST",
                    "/v1/documents",
                    files={"content": (f"{key}_response", bytes(body), "text/plain")},
                )
            ).json()
            existing = [
                r
                async for r in self.client.paginate(
                    "/v1/document_relations", {"annotation": doc.annotation_id, "key": relation_key}
                )
            ]
            if existing:
                await self.client.request(
                    "PATCH",
                    str(existing[0]["url"]),
                    json={"documents": [created["url"]]},
                )
            else:
                await self.client.request(
                    "POST",
                    "/v1/document_relations",
                    json={
                        "type": "export",
                        "key": relation_key,
                        "annotation": ann_url,
                        "documents": [created["url"]],
                    },
                )
        except RossumError as exc:
            raise StepError(
                f"storing the reply as document relation {relation_key!r} failed: {exc}",
                step=step.name,
                target="rossum",
                http_status=exc.status,
            ) from exc


def _field_text(value: Any) -> str:
    """What a datapoint holds after Rossum's handler wrote ``value`` (dicts as JSON)."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
