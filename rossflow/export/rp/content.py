"""Request Processor ``get_content``: explicit queries and Rossum relation sources.

Relation lists are read once per document and run (kept in :attr:`RpDoc.relations`); the
``*_content`` sources add the related annotations and documents, fetched in batches.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from rossflow.export.config import RpGetContentStep
from rossflow.export.errors import StepError
from rossflow.export.rp.base import DocLike, RpBase, RpDoc
from rossflow.export.rp.filters import evaluate_filter
from rossflow.export.rp.templates import fill
from rossflow.rossum import RossumError, id_from_url


class ContentSources(RpBase):
    """The ``rp_get_content`` step."""

    async def _list(self, state: RpDoc, doc: DocLike, source: str) -> list[dict[str, Any]]:
        kind = source.removesuffix("_content")
        if kind not in state.relations:
            ann = doc.annotation_id
            params: dict[str, Any]
            if kind == "document_relation":
                path, params = "/v1/document_relations", {"annotation": ann}
            elif kind == "relation":
                path, params = "/v1/relations", {"annotation": ann}
            else:
                path, params = "/v1/relations", {"parent": ann, "type": "attachment"}
            try:
                found = [r async for r in self.client.paginate(path, params)]
            except RossumError as exc:
                raise StepError(
                    f"listing {path} failed: {exc}", target="rossum", http_status=exc.status
                ) from exc
            if kind == "parent_relation":
                own = {ann}
                for rel in found:
                    rel["annotations"] = [
                        a for a in rel.get("annotations") or [] if id_from_url(a) not in own
                    ]
            state.relations[kind] = found
        return [dict(r) for r in state.relations[kind]]

    async def _many(self, path: str, urls: Sequence[str]) -> dict[int, dict[str, Any]]:
        ids = sorted({id_from_url(u) for u in urls if u})
        if not ids:
            return {}
        found: dict[int, dict[str, Any]] = {}
        async for obj in self.client.paginate(path, {"id": ",".join(map(str, ids))}):
            found[int(obj["id"])] = obj
        return found

    async def _get_content(self, step: RpGetContentStep, doc: DocLike, state: RpDoc) -> bool:
        for rule in step.rules:
            name, source = str(rule["name"]), str(rule["source"])
            scope = self._scope(step, state)
            results: list[Any]
            if source == "explicit":
                queries = rule.get("query")
                queries = [queries] if isinstance(queries, str) else list(queries or [])
                results = [await fill(q, scope, fetch=self._fetch, strict=False) for q in queries]
            else:
                query = await fill(rule.get("query") or {}, scope, fetch=None, strict=False)
                matched = [
                    rel
                    for rel in await self._list(state, doc, source)
                    if evaluate_filter(query, functools.partial(_dotted, rel))
                ]
                results = await self._enrich(source, matched)
            if name in state.properties:
                doc.warnings.append(f"[{step.name}] property {name!r} overwritten")
            state.properties[name] = results[0] if len(results) == 1 else results
        return True

    async def _enrich(self, source: str, matched: list[dict[str, Any]]) -> list[Any]:
        try:
            if source == "document_relation_content":
                urls = [u for rel in matched for u in rel.get("documents") or []]
                docs = await self._many("/v1/documents", urls)
                return [docs[id_from_url(u)] for u in urls if id_from_url(u) in docs]
            if source in ("relation_content", "parent_relation_content"):
                pairs = [(rel, u) for rel in matched for u in rel.get("annotations") or []]
                anns = await self._many("/v1/annotations", [u for _, u in pairs])
                doc_urls = [str(a.get("document")) for a in anns.values() if a.get("document")]
                docs = await self._many("/v1/documents", doc_urls)
                out = []
                for rel, url in pairs:
                    ann = anns.get(id_from_url(url))
                    if ann is None:
                        continue
                    document = docs.get(id_from_url(str(ann.get("document")))) or {}
                    out.append(
                        {
                            **rel,
                            "annotation": ann,
                            "document": document,
                            "content": document.get("content"),
                        }
                    )
                return out
        except RossumError as exc:
            raise StepError(
                f"reading related objects failed: {exc}", target="rossum", http_status=exc.status
            ) from exc
        return matched


def _dotted(obj: Any, path: str) -> Any:
    value = obj
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value
