"""Request Processor ``call_api``: one entry, its ``iterate_over`` items, their requests.

Each request is rendered (placeholders, auth), recorded, sent once per effect key (the ledger
replays a delivered reply instead of sending it again), and its reply goes through the
response handlers (:mod:`rossflow.export.rp.apply`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import httpx

from rossflow.export.config import RpCallStep
from rossflow.export.errors import DeliveryError, PlaceholderError, StepError, redact
from rossflow.export.rp.apply import ResponseHandlers
from rossflow.export.rp.base import DocLike, RpDoc, SkipCall
from rossflow.export.rp.direct_export import direct_export, is_direct_export
from rossflow.export.rp.http import (
    EncodedRequest,
    encode_request,
    oauth1_header,
    response_object,
    safe_url,
)
from rossflow.export.rp.templates import Column, Scope, Unresolved, fill, resolve_path
from rossflow.http.retry import may_have_arrived

DEFAULT_TIMEOUT_S = 10.0


class CallApi(ResponseHandlers):
    """The ``rp_call`` step."""

    async def _call(self, step: RpCallStep, doc: DocLike, state: RpDoc) -> bool:
        call = step.call
        try:
            auth = await self._fill_strict(call.get("auth"), self._scope(step, state), step, "auth")
            items = await self._items(step, state)
        except SkipCall as skip:
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
                except SkipCall as skip:
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
                raise SkipCall(f"{where}: {exc.reason}") from exc
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
                raise SkipCall(f"{step.key_path}.request.iterate_over: {exc.reason}") from exc
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
            token = await self._tokens.get(step, auth, self._secret_list)
        elif token_auth:
            token = "<token>"  # noqa: S105 - a preview marker, not a credential
        encoded = await self._render(step, state, auth, seq, item, token)
        label = f"{step.name}[{seq}]" if request.get("iterate_over") else step.name
        suffix = f".{seq}" if request.get("iterate_over") else ""
        secrets = self._secret_list(step)
        await self.store(doc, step.name, [(f"request{suffix}.http", _describe(encoded))], secrets)
        doc.last_target = safe_url(encoded.url)
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
                error = StepError(
                    f"HTTP {status} from {request.get('method', '').upper()} request "
                    f"(set compat.non_2xx: record to only record it, as Rossum does){also}",
                    step=step.name,
                    target=doc.last_target,
                    http_status=status,
                    reply=str(response.get("text") or ""),
                    secrets=secrets,
                )
                if delivery_state == "delivered":
                    method = str(request.get("method") or "")
                    uncertain = _may_have_booked(method, status=status)
                    raise _delivery_marked(error, doc, uncertain=uncertain)
                raise error
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
        if is_direct_export(encoded.url, self.base_url):
            try:
                return await direct_export(self.client, self.upload, step.name, doc, state, encoded)
            except StepError as exc:
                self.ledger.finish(key, ok=False, result={"error": exc.reason})
                raise
        token_auth = isinstance(auth, Mapping) and auth.get("type") != "oauth1"
        try:
            started = time.monotonic()
            reply = await self._http.send(encoded.build())
            if reply.status_code == 401 and token_auth:
                # Rossum drops the token, fetches a new one and retries once.
                token = await self._tokens.get(step, auth, self._secret_list, refresh=True)
                encoded = await self._render(step, state, auth, seq, item, token)
                started = time.monotonic()
                reply = await self._http.send(encoded.build())
            elapsed = time.monotonic() - started
        except httpx.TimeoutException as exc:
            uncertain = _may_have_booked(encoded.method, exc)
            result = {"error": type(exc).__name__, "uncertain": uncertain}
            self.ledger.finish(key, ok=False, result=result)
            if request.get("ignore_timeout"):
                doc.warnings.append(
                    f"[{step.name}] request {seq} timed out after {encoded.timeout_s:g} s; "
                    "skipped (ignore_timeout)"
                )
                return None
            raise _delivery_marked(
                DeliveryError(
                    f"request timed out after {encoded.timeout_s:g} s ({type(exc).__name__}); "
                    "raise request.timeout or set ignore_timeout",
                    step=step.name,
                    target=safe_url(encoded.url),
                    retryable=True,
                    secrets=self._secret_list(step),
                ),
                doc,
                uncertain=uncertain,
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            uncertain = _may_have_booked(encoded.method, exc)
            result = {"error": type(exc).__name__, "uncertain": uncertain}
            self.ledger.finish(key, ok=False, result=result)
            raise _delivery_marked(
                DeliveryError(
                    f"request failed: {type(exc).__name__}: {exc}",
                    step=step.name,
                    target=safe_url(encoded.url),
                    retryable=True,
                    secrets=self._secret_list(step),
                ),
                doc,
                uncertain=uncertain,
            ) from exc
        return response_object(reply, elapsed)


def _may_have_booked(method: str, exc: BaseException | None = None, status: int = 0) -> bool:
    """A POST that failed after it may have reached the target (a timeout or dropped
    connection after sending, or a 5xx): the target may have processed it. Like REST steps,
    other methods are taken as safe to repeat."""
    if method.upper() != "POST":
        return False
    return status >= 500 if exc is None else may_have_arrived(exc)


def _delivery_marked(error: StepError, doc: DocLike, *, uncertain: bool) -> StepError:
    """Say whether the call may have been processed ("outcome unknown", what to check) or
    certainly was not ("not delivered"). call_api sends each request once, as Rossum does:
    a rerun sends it again, so the operator must check the target before retrying."""
    if uncertain:
        error.reason += (
            f". Check in the target whether annotation {doc.annotation_id} was processed "
            "before retrying: a retry sends the request again"
        )
    return error.mark_delivery(uncertain=uncertain, attempts=())


def _effect_key(annotation_id: int, step: str, seq: int, encoded: EncodedRequest) -> str:
    """Same request of the same step for the same annotation = same effect (auth excluded)."""
    digest = hashlib.sha256()
    for part in (str(annotation_id), step, str(seq), encoded.method, safe_url(encoded.url)):
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
