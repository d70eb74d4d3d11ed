"""Runs Request Processor steps (``rp_evaluate``, ``rp_get_content``, ``rp_call``) for one
annotation at a time; the export engine calls :meth:`RequestProcessor.run`.

Per-document state (properties, fields written by handlers, failed stage gates, relation
lists) lives for the run, as in Rossum where one hook invocation runs every stage. Tokens are
cached per run (Rossum persists them in hook secrets; rossflow never writes secrets back).

Deliberate differences from Rossum, each with a switch in the pipeline's ``compat`` block
(:class:`~rossflow.export.config.RpCompat`): a non-2xx reply fails the document (after its
handlers ran); an unresolvable placeholder in ``auth``/``request`` fails it naming the
placeholder; each failure has its own message. Unknown operators/keys never reach this module:
they are refused at load time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from rossflow.export.config import (
    RpCallStep,
    RpCompat,
    RpEvaluateStep,
    RpGetContentStep,
)
from rossflow.export.context import build_writeback_operations
from rossflow.export.errors import DeliveryError, PlaceholderError, StepError, redact
from rossflow.export.rp.filters import evaluate_filter
from rossflow.export.rp.handlers import extract
from rossflow.export.rp.http import (
    EncodedRequest,
    encode_request,
    jwt_assertion,
    oauth1_header,
    response_object,
    token_from_reply,
)
from rossflow.export.rp.templates import (
    Column,
    FieldTree,
    Scope,
    Unresolved,
    fill,
    resolve_path,
    same_origin,
)
from rossflow.export.rp_spec import GENERIC_MESSAGE
from rossflow.rossum import RossumClient, RossumError, id_from_url

__all__ = ["DIRECT_EXPORT_PATH", "RequestProcessor", "RpDoc"]

log = logging.getLogger("rossflow.export.rp")

DEFAULT_TIMEOUT_S = 10.0
AUTH_TIMEOUT_S = 10.0
DIRECT_EXPORT_PATH = "/svc/file-storage-export/api/v1/direct_export"


class DocLike(Protocol):
    """What the runner needs of the engine's per-document state."""

    annotation_id: int
    queue_id: int
    ctx: Any
    warnings: list[str]
    deliveries: list[dict[str, Any]]
    last_target: str | None
    last_http_status: int | None
    dry_stopped: bool


Store = Callable[[DocLike, str, list[tuple[str, bytes]], list[str]], Awaitable[None]]
FileUpload = Callable[[str, Any, str, bytes, str, str], Awaitable[str]]


@dataclass
class RpDoc:
    """One annotation's Request Processor state for the run."""

    payload: dict[str, Any]
    fields: FieldTree
    properties: dict[str, Any] = field(default_factory=dict)
    writes: dict[str, list[Any]] = field(default_factory=dict)
    gates: dict[str, str] = field(default_factory=dict)  # failed evaluate step -> condition
    relations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _SkipCall(Exception):
    """``compat.unresolved_placeholder: skip_call``: abandon this call_api entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestProcessor:
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
        self._tokens: dict[str, str] = {}
        self._token_lock = asyncio.Lock()
        self._run_id = uuid.uuid4().hex
        self._http = httpx.AsyncClient(
            follow_redirects=True,
            limits=httpx.Limits(max_connections=concurrency),
        )
        origin = urlsplit(client.base_url)
        self.base_url = f"{origin.scheme}://{origin.netloc}"

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- per-document state ------------------------------------------------------------

    def _plain_secrets(self, step: Any) -> dict[str, Any]:
        return {
            k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
            for k, v in self._secrets(step).items()
        }

    def _secret_list(self, step: Any) -> list[str]:
        """Values to redact: secrets, tokens, and their base64 forms (``base64(...)``)."""
        values = [str(v) for v in self._plain_secrets(step).values() if v]
        values += list(self._tokens.values())
        rossum_token = self._rossum_token()
        if rossum_token:
            values.append(rossum_token)
        values += [base64.b64encode(v.encode()).decode() for v in values if len(v) >= 4]
        return values

    def _rossum_token(self) -> str | None:
        current = getattr(self.client, "_current_token", None)
        return current() if callable(current) else None

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

    def _scope(self, step: Any, state: RpDoc, **extra: Any) -> Scope:
        secrets = self._plain_secrets(step)
        payload = {**state.payload, "secrets": secrets}
        return Scope(
            payload=payload,
            fields=state.fields,
            properties=state.properties,
            secrets=secrets,
            extra=extra,
            base_url=self.base_url,
        )

    async def _fetch(self, url: str) -> Any:
        try:
            reply = await self.client.request("GET", url)
        except RossumError as exc:
            raise StepError(f"fetching {url} failed: {exc}", target="rossum") from exc
        if "json" in reply.headers.get("content-type", "").lower():
            try:
                return reply.json()
            except ValueError:
                return reply.content
        return reply.content

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

    async def _condition(self, condition: Mapping[str, Any], scope: Scope) -> bool:
        filled = await fill(condition, scope, fetch=None, strict=False)
        paths: dict[str, Any] = {}

        async def collect(cond: Mapping[str, Any]) -> None:
            for key, value in cond.items():
                if key in ("$and", "$or"):
                    for sub in value:
                        await collect(sub)
                elif key not in paths:
                    paths[key] = await resolve_path(key, scope, fetch=None, strict=False)

        await collect(filled)
        return evaluate_filter(filled, paths.get)

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

    # -- get_content -------------------------------------------------------------------

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

    # -- call_api ----------------------------------------------------------------------

    async def _call(self, step: RpCallStep, doc: DocLike, state: RpDoc) -> bool:
        call = step.call
        try:
            auth = await self._fill_strict(call.get("auth"), self._scope(step, state), step, "auth")
            items = await self._items(step, state)
        except _SkipCall as skip:
            doc.warnings.append(f"[{step.name}] call abandoned (compat skip_call): {skip.reason}")
            return False
        if items is None:
            doc.warnings.append(
                f"[{step.name}] iterate_over {call['request'].get('iterate_over')!r} is empty; "
                "no request sent"
            )
            return False
        touched: set[str] = set()
        try:
            for seq, item in enumerate(items):
                try:
                    await self._one_request(step, doc, state, auth, seq, item, touched)
                except _SkipCall as skip:
                    doc.warnings.append(
                        f"[{step.name}] call abandoned (compat skip_call): {skip.reason}"
                    )
                    break
        finally:
            # Values handled before a failure are written too (the operator sees them).
            if touched:
                await self._write_back(step, doc, state, touched)
        return True

    async def _fill_strict(self, template: Any, scope: Scope, step: RpCallStep, part: str) -> Any:
        if template is None:
            return None
        try:
            return await fill(template, scope, fetch=self._fetch, strict=True)
        except Unresolved as exc:
            where = f"{step.key_path}.{part}"
            if self.compat.unresolved_placeholder == "skip_call":
                raise _SkipCall(f"{where}: {exc.reason}") from exc
            raise PlaceholderError(
                f"{where}: {exc.reason} (fix the placeholder, or set "
                "compat.unresolved_placeholder: skip_call to abandon the call as Rossum does)"
            ) from exc

    async def _items(self, step: RpCallStep, state: RpDoc) -> list[Any] | None:
        request = step.call["request"]
        path = request.get("iterate_over")
        if not path:
            return [None]
        scope = self._scope(step, state)
        try:
            value = await resolve_path(
                str(path), scope, fetch=self._fetch, strict=True, typed=False
            )
        except Unresolved as exc:
            if self.compat.unresolved_placeholder == "skip_call":
                raise _SkipCall(f"{step.key_path}.request.iterate_over: {exc.reason}") from exc
            raise PlaceholderError(f"{step.key_path}.request.iterate_over: {exc.reason}") from exc
        if isinstance(value, Column):
            raise StepError(
                f"{step.key_path}.request.iterate_over: {path!r} is a column of a multivalue; "
                f"use {path}.all_values"
            )
        if value is None or value == [] or value == "":
            return None
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value]

    async def _token(
        self, step: RpCallStep, auth: Mapping[str, Any], *, refresh: bool = False
    ) -> str:
        kind = auth.get("type") or "bearer"
        key = hashlib.sha256(json.dumps(auth, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]
        async with self._token_lock:
            if refresh:
                self._tokens.pop(key, None)
            if key in self._tokens:
                return self._tokens[key]
            if kind == "oauth2_private_certificate":
                url, method = str(auth["url"]), "POST"
                body = {
                    "grant_type": auth.get("grant_type") or "client_credentials",
                    "client_assertion_type": auth.get("client_assertion_type")
                    or "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": jwt_assertion(auth),
                    **(auth.get("additional_token_params") or {}),
                }
                encoded = encode_request(
                    method=method,
                    url=url,
                    content=body,
                    content_type="form",
                    headers={},
                    params=None,
                    timeout_s=AUTH_TIMEOUT_S,
                    step=step.name,
                )
                credential_key = str(auth.get("credential_key") or "access_token")
            else:
                encoded = encode_request(
                    method=str(auth.get("method") or "POST"),
                    url=str(auth["url"]),
                    content=auth.get("content"),
                    content_type="json" if auth.get("content_type") == "json" else "form",
                    headers=auth.get("headers"),
                    params=auth.get("params"),
                    timeout_s=AUTH_TIMEOUT_S,
                    step=step.name,
                )
                credential_key = str(auth["credential_key"])
            try:
                reply = await self._http.send(encoded.build())
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise DeliveryError(
                    f"token request failed: {type(exc).__name__}: {exc}",
                    step=step.name,
                    target=_safe_url(encoded.url),
                    retryable=True,
                    secrets=self._secret_list(step),
                ) from exc
            token = token_from_reply(reply, credential_key, step.name, self._secret_list(step))
            self._tokens[key] = token
            return token

    async def _render(
        self, step: RpCallStep, state: RpDoc, auth: Any, seq: int, item: Any, token: str | None
    ) -> EncodedRequest:
        request = step.call["request"]
        extra: dict[str, Any] = {"sequence": seq}
        if token is not None:
            extra["token"] = token
        if item is not None:
            extra[str(request.get("iteration_item_name") or "item")] = item
        scope = self._scope(step, state, **extra)
        template = {k: request.get(k) for k in ("url", "method", "headers", "params", "content")}
        filled = await self._fill_strict(template, scope, step, "request")
        encoded = encode_request(
            method=str(filled["method"]),
            url=str(filled["url"]),
            content=filled.get("content"),
            content_type=request.get("content_type"),
            headers=filled.get("headers"),
            params=filled.get("params"),
            timeout_s=float(request.get("timeout") or DEFAULT_TIMEOUT_S),
            step=step.name,
        )
        encoded.meta["content"] = filled.get("content")
        if isinstance(auth, Mapping) and auth.get("type") == "oauth1":
            encoded.headers["Authorization"] = oauth1_header(auth, encoded.method, encoded.url)
        return encoded

    async def _one_request(
        self,
        step: RpCallStep,
        doc: DocLike,
        state: RpDoc,
        auth: Any,
        seq: int,
        item: Any,
        touched: set[str],
    ) -> None:
        request = step.call["request"]
        token_auth = isinstance(auth, Mapping) and auth.get("type") != "oauth1"
        token = None
        if token_auth and not self.dry_run:
            token = await self._token(step, auth)
        elif token_auth:
            token = "<token>"  # noqa: S105 - a preview marker, not a credential
        encoded = await self._render(step, state, auth, seq, item, token)
        label = f"{step.name}[{seq}]" if request.get("iterate_over") else step.name
        suffix = f".{seq}" if request.get("iterate_over") else ""
        secrets = self._secret_list(step)
        await self.store(doc, step.name, [(f"request{suffix}.http", _describe(encoded))], secrets)
        doc.last_target = _safe_url(encoded.url)
        if self.dry_run:
            doc.deliveries.append({"step": label, "target": doc.last_target, "state": "dry_run"})
            doc.dry_stopped = True
            return
        key = _effect_key(doc.annotation_id, step.name, seq, encoded)
        done = self.ledger.begin(
            key,
            kind="delivery",
            subject=str(doc.annotation_id),
            step=step.name,
            target=doc.last_target,
        )
        if done is not None and "response" in done.result:
            response = _response_from_ledger(done.result["response"])
            delivery_state = "already_delivered"
        else:
            sent = await self._send(step, doc, state, auth, seq, item, encoded, key)
            if sent is None:
                return
            response, delivery_state = sent, "delivered"
        doc.last_http_status = int(response["status_code"])
        await self.store(
            doc,
            step.name,
            [(f"response{suffix}.body", _body_bytes(response))],
            secrets,
        )
        if delivery_state == "delivered":
            self.ledger.finish(
                key,
                ok=bool(response["ok"]) or self.compat.non_2xx == "record",
                result={"response": _response_for_ledger(response, secrets)},
            )
        doc.deliveries.append(
            {
                "step": label,
                "target": doc.last_target,
                "state": delivery_state,
                "http_status": response["status_code"],
            }
        )
        handler_error: StepError | None = None
        try:
            await self._handle(step, doc, state, response, seq, touched)
        except StepError as exc:
            handler_error = exc
        status = int(response["status_code"])
        if not 200 <= status < 300:
            if self.compat.non_2xx == "record":
                doc.warnings.append(f"[{label}] HTTP {status} recorded (compat non_2xx: record)")
            else:
                also = (
                    f"; a response handler failed too: {handler_error.reason}"
                    if handler_error
                    else ""
                )
                raise StepError(
                    f"HTTP {status} from {request.get('method', '').upper()} request "
                    f"(set compat.non_2xx: record to only record it, as Rossum does){also}",
                    step=step.name,
                    target=doc.last_target,
                    http_status=status,
                    reply=str(response.get("text") or ""),
                    secrets=secrets,
                )
        if handler_error is not None:
            raise handler_error

    async def _send(
        self,
        step: RpCallStep,
        doc: DocLike,
        state: RpDoc,
        auth: Any,
        seq: int,
        item: Any,
        encoded: EncodedRequest,
        key: str,
    ) -> dict[str, Any] | None:
        request = step.call["request"]
        if _is_direct_export(encoded.url, self.base_url):
            try:
                return await self._direct_export(step, doc, state, encoded)
            except StepError as exc:
                self.ledger.finish(key, ok=False, result={"error": exc.reason})
                raise
        token_auth = isinstance(auth, Mapping) and auth.get("type") != "oauth1"
        try:
            started = time.monotonic()
            reply = await self._http.send(encoded.build())
            if reply.status_code == 401 and token_auth:
                # Rossum drops the token, fetches a new one and retries once.
                token = await self._token(step, auth, refresh=True)
                encoded = await self._render(step, state, auth, seq, item, token)
                started = time.monotonic()
                reply = await self._http.send(encoded.build())
            elapsed = time.monotonic() - started
        except httpx.TimeoutException as exc:
            self.ledger.finish(key, ok=False, result={"error": type(exc).__name__})
            if request.get("ignore_timeout"):
                doc.warnings.append(
                    f"[{step.name}] request {seq} timed out after {encoded.timeout_s:g} s; "
                    "skipped (ignore_timeout)"
                )
                return None
            raise DeliveryError(
                f"request timed out after {encoded.timeout_s:g} s ({type(exc).__name__}); "
                "raise request.timeout or set ignore_timeout",
                step=step.name,
                target=_safe_url(encoded.url),
                retryable=True,
                secrets=self._secret_list(step),
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            self.ledger.finish(key, ok=False, result={"error": type(exc).__name__})
            raise DeliveryError(
                f"request failed: {type(exc).__name__}: {exc}",
                step=step.name,
                target=_safe_url(encoded.url),
                retryable=True,
                secrets=self._secret_list(step),
            ) from exc
        return response_object(reply, elapsed)

    # -- response handlers ---------------------------------------------------------------

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

    # -- direct_export (file-storage) ------------------------------------------------------

    async def _direct_export(
        self, step: RpCallStep, doc: DocLike, state: RpDoc, encoded: EncodedRequest
    ) -> dict[str, Any]:
        """Rossum's file-storage ``direct_export``, done locally with rossflow's SFTP/S3 code.

        Writes the annotation's original document as ``<filename><extension of the original>``
        into ``settings.export_rule.path_to_directory``.
        """
        content = encoded.meta.get("content")
        if not isinstance(content, Mapping):
            raise StepError("direct_export needs a JSON object as content", step=step.name)
        settings = content.get("settings") or {}
        creds = dict(settings.get("credentials") or {})
        rule = settings.get("export_rule") or {}
        secrets = {k: v for k, v in (content.get("secrets") or {}).items() if v}
        kind = str(creds.get("type") or secrets.get("type") or "sftp").lower()
        collision = rule.get("filename_collision")
        if isinstance(collision, Mapping):
            collision = "replace" if collision.get("replace") else "error"
        collision = str(collision or "replace")
        document = state.payload.get("document") or {}
        original = str(document.get("original_file_name") or "")
        extension = original[original.rfind(".") :] if "." in original else ""
        name = str(content.get("filename") or original.rsplit(".", 1)[0] or doc.annotation_id)
        directory = str(rule.get("path_to_directory") or "/").rstrip("/") or ""
        path = f"{directory}/{name}{extension}"
        if "payload" in content and content["payload"] is not None:
            try:
                base64.b64decode(str(content["payload"]), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise StepError(
                    "direct_export: 'payload' is not base64 (use {base64(payload)})",
                    step=step.name,
                ) from exc
        data = await self.client.download_document(str(document.get("url") or ""))
        mime = str(document.get("mime_type") or "application/octet-stream")
        started = time.monotonic()
        target = _file_target(kind, creds, secrets, step.name)
        try:
            final = await self.upload(kind, target, path, data, mime, collision)
        except StepError:
            raise
        except Exception as exc:
            raise StepError(
                f"direct_export upload of {path} failed: {exc}", step=step.name, target=kind
            ) from exc
        reply = httpx.Response(
            200,
            json={"status": "ok", "path": final, "type": kind},
            request=httpx.Request("POST", encoded.url),
        )
        return response_object(reply, time.monotonic() - started)


# ------------------------------------------------------------------------------ helpers


def _field_text(value: Any) -> str:
    """What a datapoint holds after Rossum's handler wrote ``value`` (dicts as JSON)."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def _is_direct_export(url: str, base_url: str) -> bool:
    return urlsplit(url).path.rstrip("/").endswith(DIRECT_EXPORT_PATH) and same_origin(
        url, base_url
    )


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


def _effect_key(annotation_id: int, step: str, seq: int, encoded: EncodedRequest) -> str:
    """Same request of the same step for the same annotation = same effect (auth excluded)."""
    digest = hashlib.sha256()
    for part in (str(annotation_id), step, str(seq), encoded.method, _safe_url(encoded.url)):
        digest.update(part.encode() + b"\n")
    body = encoded.body or b""
    ctype = next((v for k, v in encoded.headers.items() if k.lower() == "content-type"), "")
    boundary = ctype.partition("boundary=")[2]
    if boundary:  # multipart: the random boundary is not part of the identity
        body = body.replace(boundary.encode(), b"")
    digest.update(body)
    return "rp:" + digest.hexdigest()


def _describe(encoded: EncodedRequest) -> bytes:
    head = [f"{encoded.method} {encoded.url}"]
    head += [f"{k}: {v}" for k, v in encoded.headers.items()]
    return ("\n".join(head) + "\n\n").encode() + encoded.preview()


def _body_bytes(response: Mapping[str, Any]) -> bytes:
    content = response.get("content")
    if isinstance(content, bytes):
        return content
    return str(response.get("text") or "").encode()


MAX_RECORDED = 256 * 1024


def _response_for_ledger(response: Mapping[str, Any], secrets: list[str]) -> dict[str, Any]:
    return {
        "status_code": response["status_code"],
        "headers_raw": response.get("headers_raw") or [],
        "text": redact(str(response.get("text") or "")[:MAX_RECORDED], secrets),
        "url": response.get("url"),
    }


def _response_from_ledger(stored: Mapping[str, Any]) -> dict[str, Any]:
    reply = httpx.Response(
        int(stored["status_code"]),
        headers=[(str(k), str(v)) for k, v in stored.get("headers_raw") or []],
        content=str(stored.get("text") or "").encode(),
        request=httpx.Request("GET", str(stored.get("url") or "http://recorded.invalid/")),
    )
    return response_object(reply, 0.0)


def _file_target(kind: str, creds: Mapping[str, Any], secrets: Mapping[str, Any], step: str) -> Any:
    """Connection objects of rossflow's delivery code from direct_export credentials."""
    if kind == "s3":
        from prefect_aws import AwsCredentials, S3Bucket
        from prefect_aws.client_parameters import AwsClientParameters

        if not creds.get("bucket_name"):
            raise StepError("direct_export to S3 needs settings.credentials.bucket_name", step=step)
        params = (
            AwsClientParameters(endpoint_url=creds["endpoint_url"])
            if creds.get("endpoint_url")
            else AwsClientParameters()
        )
        aws = AwsCredentials(
            aws_access_key_id=secrets.get("access_key_id"),
            aws_secret_access_key=secrets.get("secret_access_key"),
            region_name=creds.get("region") or "us-east-1",
            aws_client_parameters=params,
        )
        return S3Bucket(bucket_name=str(creds["bucket_name"]), credentials=aws)
    if kind != "sftp":
        raise StepError(
            f"direct_export: unknown credentials.type {kind!r} (use sftp or s3)", step=step
        )
    from rossflow.delivery.sftp import SftpConnectionInfo

    if not creds.get("host"):
        raise StepError("direct_export to SFTP needs settings.credentials.host", step=step)
    key = secrets.get("ssh_key")
    return SftpConnectionInfo(
        host=str(creds["host"]),
        port=int(creds.get("port") or 22),
        username=str(creds.get("username") or ""),
        password=SecretStr(str(secrets["password"])) if secrets.get("password") else None,
        private_key=SecretStr(str(key).replace("\\n", "\n")) if key else None,
        known_hosts=str(creds.get("known_hosts") or ""),
        verify_host_key=bool(creds.get("verify_host_key", True)),
    )
