"""REST steps: endpoint resolution, auth tokens, sending through the ledger, reply records.

Exactly once: each call gets a key derived from (annotation, step, URL, payload). The ledger
records intent before and the reply after; a rerun reuses a recorded reply instead of sending
again. A call whose outcome is unknown (timeout, 5xx, dropped connection, or in flight when a
previous run died) is resolved by the step's ``idempotency``: ``header`` repeats it with the
same ``Idempotency-Key``; ``reconcile`` first asks the target (``lookup``) and adopts a record
it finds; ``none`` never repeats it and fails the document with "outcome unknown".
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import httpx
import jmespath

from rossflow.delivery import rest as rest_delivery
from rossflow.delivery.rest import (
    RestEndpoint,
    RestRetryPolicy,
)
from rossflow.delivery.rest_bodies import (
    FormBody,
    JsonBody,
    MultipartBody,
    RawBody,
    RequestBody,
)
from rossflow.delivery.rest_result import DeliveryError as RestDeliveryError
from rossflow.delivery.rest_result import DeliveryResult
from rossflow.http import Timeouts, join_url
from rossflow.ledger import EffectBusy, Ledger
from rossflow.redaction import Redactor

from .batch import DocState
from .config import AuthConfig, Idempotency, PipelineConfig, RestRequest, RestStep, SoapStep
from .context import ExportContext
from .errors import DeliveryError
from .extract import build_response_record
from .ledger_writes import LedgerWrites
from .reconcile import (
    add_unknown_hint,
    outcome_unknown,
    record_from_ledger,
    result_from_record,
    small_record,
)
from .rest_request import (
    PreparedRequest,
    apply_response,
    prepare_auth_request,
    prepare_request,
    rest_gate,
    token_from_auth_response,
)
from .soap import soap_fault
from .targets import Targets

LOOKUP_FOUND = "reconcile lookup: found the record, adopted it"
LOOKUP_NOT_FOUND = "reconcile lookup: no record; the ERP did not book it"

Store = Callable[[DocState, str, list[tuple[str, bytes]]], Awaitable[None]]


class RestSender:
    """Runs REST steps for one export run: one pooled HTTP client per TLS/timeout setting,
    cached auth tokens, and every credential it uses handed to the run's redactor."""

    def __init__(
        self,
        pipeline: PipelineConfig,
        *,
        targets: Targets,
        ledger: Ledger,
        redactor: Redactor,
        store: Store,
        stack: AsyncExitStack,
        concurrency: int,
        dry_run: bool,
    ) -> None:
        self.pipeline = pipeline
        self.targets = targets
        self.ledger = ledger
        self.writes = LedgerWrites(ledger)  # claims and finishes of concurrent docs, grouped
        self.redactor = redactor
        self.store = store
        self.concurrency = concurrency
        self.dry_run = dry_run
        self._stack = stack
        self._http: dict[tuple[Any, ...], httpx.AsyncClient] = {}
        self._endpoints: dict[tuple[Any, ...], RestEndpoint] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._token_lock = asyncio.Lock()
        self._redacted: dict[int, Any] = {}
        # (annotation id, step) -> ledger key of the call this run claimed
        self._claimed: dict[tuple[int, str], str] = {}

    async def _http_client(self, endpoint: RestEndpoint) -> httpx.AsyncClient:
        key = (
            endpoint.tls.verify,
            endpoint.tls.client_cert,
            endpoint.tls.client_key,
            endpoint.timeouts,
        )
        client = self._http.get(key)
        if client is None:
            client = await self._stack.enter_async_context(
                rest_delivery.open_rest_client(
                    endpoint,
                    max_connections=self.concurrency,
                    max_keepalive_connections=self.concurrency,
                )
            )
            self._http[key] = client
        return client

    def _endpoint(self, step: RestStep, req: PreparedRequest) -> RestEndpoint:
        # Resolved once per step, method and URL (a pydantic copy and URL parsing per document
        # were ~2 % of the export's CPU); the URL may differ per document, so it is in the key.
        cache_key = (id(step), step.name, req.method, req.url, tuple(sorted(req.params.items())))
        endpoint = self._endpoints.get(cache_key)
        if endpoint is None:
            if len(self._endpoints) >= 4096:
                self._endpoints.clear()
            endpoint = self._endpoints[cache_key] = self._endpoint_for(step, req)
        return endpoint

    def _endpoint_for(self, step: RestStep, req: PreparedRequest) -> RestEndpoint:
        endpoint = self._resolve_endpoint(step, req)
        if isinstance(step, SoapStep) and 500 in endpoint.retry.retry_statuses:
            # SOAP 1.1 servers answer a Fault with 500: a processed, definite answer, not a
            # transient error, so it is not sent again (gateway errors 502-504 still are).
            retry = endpoint.retry.model_copy(
                update={"retry_statuses": endpoint.retry.retry_statuses - {500}}
            )
            endpoint = endpoint.model_copy(update={"retry": retry})
        # its credentials are its target block's (added once, below) or none; a password in
        # the URL itself is the one secret left
        self.redactor.add_url(endpoint.url)
        return endpoint

    def _add_secrets_of(self, obj: Any) -> None:
        """Hand ``obj``'s secrets to the redactor once per object (walking a block per
        document was ~5 % of the export's CPU)."""
        if id(obj) not in self._redacted:
            self.redactor.add_from(obj)
            self._redacted[id(obj)] = obj  # kept alive, so its id is never reused

    def _resolve_endpoint(self, step: RestStep, req: PreparedRequest) -> RestEndpoint:
        url = _with_params(req.url, req.params)
        if step.target:
            target = self.targets.get("rest", step.target)
            self._add_secrets_of(target)
            # The block's name is the name the step used for it.
            if isinstance(target, RestEndpoint):
                return target.model_copy(
                    update={
                        "url": join_url(target.url, url),
                        "method": req.method,
                        "name": step.target,
                    }
                )
            endpoint: RestEndpoint = target.endpoint(url=url, method=req.method)
            return endpoint.model_copy(update={"name": step.target})
        retries = step.retries if step.retries is not None else self.pipeline.defaults.retries
        if (step.mode or self.pipeline.defaults.mode) == "wait" and step.retries is None:
            retries = max(retries, 2)
        timeout = float(step.timeout_s or self.pipeline.defaults.timeout_s)
        return RestEndpoint(
            url=url,
            method=req.method,  # type: ignore[arg-type]
            timeouts=Timeouts(read=timeout, write=timeout),
            retry=RestRetryPolicy(max_attempts=retries + 1),
        )

    async def _auth_token(
        self,
        auth: AuthConfig,
        step: RestStep,
        secrets: dict[str, Any],
        *,
        refresh: bool,
        ctx: ExportContext | None = None,
    ) -> None:
        """Rossum v1 ``auth``: fetch a token, cache it, expose it as ``{secret.<cache_as>}``."""
        req = prepare_auth_request(auth, secrets=secrets, step=step.name, ctx=ctx)
        cache_key = _sha(_request_bytes(req) + json.dumps(req.headers, sort_keys=True).encode())
        async with self._token_lock:
            cached = self._tokens.get(cache_key)
            if refresh or cached is None or cached[1] <= time.monotonic():
                endpoint = RestEndpoint(
                    url=req.url,
                    method=req.method,  # type: ignore[arg-type]
                    timeouts=Timeouts(read=req.timeout_s, write=req.timeout_s),
                )
                client = await self._http_client(endpoint)
                try:
                    result = await rest_delivery.deliver(
                        client,
                        endpoint,
                        _body_for(req),
                        idempotency_key=_sha(_request_bytes(req) + str(time.time()).encode()),
                        headers=req.headers,
                        redactor=self.redactor,
                    )
                except RestDeliveryError as exc:
                    raise DeliveryError(
                        f"authentication request failed: {exc}",
                        step=step.name,
                        target=exc.url,
                        secrets=self.redactor,
                    ) from exc
                record = build_response_record(
                    result.status_code, result.headers, result.body, url=result.url
                )
                token, lifetime = token_from_auth_response(
                    auth, record, step=step.name, secrets=self.redactor
                )
                expires = time.monotonic() + (max(30.0, lifetime - 30) if lifetime else 600.0)
                cached = self._tokens[cache_key] = (token, expires)
                self.redactor.add(token)
        secrets[auth.cache_as] = cached[0]

    async def run(self, step: RestStep, doc: DocState, secrets: dict[str, Any]) -> bool:
        """Send the step's request for one document (or reuse the recorded reply)."""
        if not rest_gate(step, doc.ctx, secrets=secrets):
            return False
        auth = step.auth
        if isinstance(auth, str):
            auth = self.pipeline.auths[auth]
        if auth is not None and not self.dry_run:
            await self._auth_token(auth, step, secrets, refresh=False, ctx=doc.ctx)
        elif auth is not None:
            secrets.setdefault(auth.cache_as, "<token from auth>")
        req = prepare_request(step, doc.ctx, secrets=secrets, auth=auth)
        endpoint = self._endpoint(step, req)
        doc.last_target = endpoint.display_name
        payload = _request_bytes(req)
        scope = f"{step.name}|{endpoint.url}"
        if doc.generation:  # a forced re-send: new keys, so the target takes it again
            scope += f"|attempt {doc.generation}"
        key = rest_delivery.idempotency_key(doc.annotation_id, scope, payload)
        await self.store(doc, step.name, [("request.body", _preview(req))])
        if self.dry_run:
            doc.deliveries.append(
                {"step": step.name, "target": endpoint.display_name, "state": "dry_run"}
            )
            doc.dry_stopped = True
            return True
        mode = self.idempotency(step)
        try:
            # What an earlier run left is what the claim found under its row lock: a read
            # before the claim could miss a call another run made and finished meanwhile.
            done, prior = await self.writes.claim_over(
                key,
                kind="delivery",
                subject=str(doc.annotation_id),
                step=step.name,
                target=endpoint.display_name,
            )
        except EffectBusy as exc:
            return doc.leave_to_holder(exc)
        self._claimed[(doc.annotation_id, step.name)] = key
        history: tuple[str, ...] = ()
        maybe_processed = False
        found: dict[str, Any] | None = None
        if done is not None and "record" in done.result:
            record = record_from_ledger(done.result["record"])
            state = "already_delivered"
        else:
            unknown = outcome_unknown(prior)
            if unknown and mode == "reconcile":
                found = await self._reconcile(step, doc, endpoint, key, auth, secrets, (unknown,))
            elif unknown and mode == "none" and endpoint.method == "POST":
                await self._refuse_resend(step, doc, endpoint, key, (unknown,))
            if found is not None:
                record, state = found, "reconciled"
                history = (unknown or "", "lookup found the record")
            else:
                record, history, maybe_processed, adopted = await self._send(
                    step, doc, endpoint, req, key, auth, secrets, mode
                )
                state = "reconciled" if adopted else "delivered"
        doc.last_http_status = int(record["status_code"])
        meta = {k: record.get(k) for k in ("status_code", "raw", "url", "elapsed_s")}
        await self.store(
            doc,
            step.name,
            [
                ("response.json", json.dumps(meta, default=str).encode()),
                ("response.body", str(record.get("text") or "").encode()),
            ],
        )
        doc.ctx, outcome = apply_response(
            step, doc.ctx, record, secrets=self.redactor, target=endpoint.display_name
        )
        # a reconciled record exists at the target even if its reply is judged an error:
        # a rerun must look it up again, never resend it blind
        # A SOAP Fault is the server's processed, definite refusal: not an unknown outcome.
        definite = isinstance(step, SoapStep) and soap_fault(record.get("text")) is not None
        uncertain = (
            outcome.status == "error"
            and endpoint.method == "POST"
            and not definite
            and ((maybe_processed and bool(history)) or state == "reconciled")
        )
        if state != "already_delivered":
            result: dict[str, Any] = {
                "record": small_record(record, self.redactor),
                "http_status": outcome.http_status,
            }
            if outcome.status == "error":
                # a rerun tries a failed step again; "uncertain" tells it to reconcile first
                result["uncertain"] = uncertain
                result["attempts"] = [self.redactor(a) for a in history]
            elif state == "reconciled":
                result["reconciled"] = True
            await self.writes.finish(key, ok=outcome.status != "error", result=result)
        doc.deliveries.append(
            {
                "step": step.name,
                "target": endpoint.display_name,
                "state": state,
                "http_status": outcome.http_status,
            }
        )
        if outcome.status == "warning" and outcome.message:
            doc.warnings.append(outcome.message)
        if outcome.status == "error" and outcome.error is not None and history:
            # A POST whose failed attempts may have been processed may have created the
            # document: say so, or an operator's retry may book it twice.
            if uncertain:
                add_unknown_hint(outcome.error, step, doc, mode)
                outcome.error.mark_delivery(uncertain=True, attempts=history)
            elif int(record["status_code"]) >= 400:
                outcome.error.mark_delivery(uncertain=False, attempts=history)
        outcome.raise_for_status()
        return True

    def delivered_by_another_run(self, docs: list[DocState]) -> set[int]:
        """Annotations whose REST step failed in this run but is ``done`` in the ledger now: an
        overlapping run took the failed call over and delivered it. Marking them
        ``failed_export`` would overwrite that run's result with a stale failure."""
        keys: dict[str, int] = {}
        for doc in docs:
            step = doc.error.step if doc.error is not None else None
            key = self._claimed.get((doc.annotation_id, step or ""))
            if key is not None:
                keys[key] = doc.annotation_id
        if not keys:
            return set()
        return {keys[k] for k, e in self.ledger.get_many(keys).items() if e.state == "done"}

    def idempotency(self, step: RestStep) -> Idempotency:
        """The step's ``idempotency``, else the pipeline default, else the target block's
        (``honours_idempotency_key``), else ``header``."""
        if step.idempotency is not None:
            return step.idempotency
        if self.pipeline.defaults.idempotency is not None:
            return self.pipeline.defaults.idempotency
        if step.target:
            target = self.targets.get("rest", step.target)
            if getattr(target, "honours_idempotency_key", True) is False:
                return "none"
        return "header"

    async def _send(
        self,
        step: RestStep,
        doc: DocState,
        endpoint: RestEndpoint,
        req: PreparedRequest,
        key: str,
        auth: AuthConfig | None,
        secrets: dict[str, Any],
        mode: Idempotency = "header",
    ) -> tuple[dict[str, Any], tuple[str, ...], bool, bool]:
        """The reply record, what each attempt ended in, whether a failed attempt may have
        been processed by the target, and whether the record was adopted from a lookup."""
        client = await self._http_client(endpoint)
        history: tuple[str, ...] = ()
        maybe_processed = False
        headers = {k: v for k, v in req.headers.items() if k.lower() != "content-type"}
        body = _body_for(req)
        adopted: list[dict[str, Any]] = []

        async def before_resend(attempts: tuple[str, ...]) -> DeliveryResult | None:
            found = await self._reconcile(
                step, doc, endpoint, key, auth, secrets, history + attempts
            )
            if found is None:
                return None
            adopted.append(found)
            return result_from_record(found)

        guard: dict[str, Any] = {}
        if mode == "reconcile":
            guard["before_resend"] = before_resend
        elif mode == "none" and endpoint.method == "POST":
            guard["resend_uncertain"] = False
        try:
            result = await rest_delivery.deliver(
                client,
                endpoint,
                body,
                idempotency_key=key,
                headers=headers,
                redactor=self.redactor,
                **guard,
            )
            if result.status_code == 401 and auth is not None and not adopted:
                # Rossum's REST export re-authenticates on any 401 and tries once more.
                history, maybe_processed = result.history, result.maybe_processed
                await self._auth_token(auth, step, secrets, refresh=True, ctx=doc.ctx)
                req = prepare_request(step, doc.ctx, secrets=secrets, auth=auth)
                headers = {k: v for k, v in req.headers.items() if k.lower() != "content-type"}
                result = await rest_delivery.deliver(
                    client,
                    endpoint,
                    body,
                    idempotency_key=key,
                    headers=headers,
                    redactor=self.redactor,
                    **guard,
                )
        except RestDeliveryError as exc:
            history += exc.history
            maybe_processed = maybe_processed or exc.maybe_processed
            uncertain = endpoint.method == "POST" and maybe_processed
            if uncertain and mode == "reconcile":
                # no attempt left: the lookup settles the last one, as before any resend
                found = await self._reconcile(step, doc, endpoint, key, auth, secrets, history)
                if found is not None:
                    return found, (*history, LOOKUP_FOUND), maybe_processed, True
                # no answer came back: the target may still be booking it
                history += ("reconcile lookup: no record yet; the call may still be processed",)
            await self.writes.finish(
                key,
                ok=False,
                result={
                    "error": self.redactor(str(exc)),
                    "attempts": list(history),
                    "uncertain": uncertain,
                },
            )
            error = DeliveryError(
                f"could not deliver after {exc.attempts} attempt(s): {exc}",
                step=step.name,
                target=endpoint.display_name,
                secrets=self.redactor,
                retryable=True,
            )
            if uncertain:
                add_unknown_hint(error, step, doc, mode)
            error.mark_delivery(
                uncertain=uncertain,
                attempts=[self.redactor(a) for a in history],
            )
            raise error from exc
        if adopted:
            return adopted[0], history + result.history, maybe_processed, True
        history += result.history
        maybe_processed = maybe_processed or result.maybe_processed
        record = build_response_record(
            result.status_code,
            result.headers,
            result.body,
            url=result.url,
            elapsed_s=result.elapsed_s,
        )
        if (
            mode == "reconcile"
            and endpoint.method == "POST"
            and maybe_processed
            and result.status_code >= 500
        ):
            # The last attempt failed with a 5xx and none is left. Without a lookup the
            # document would fail with "outcome unknown" although the ERP may have booked it
            # (and a retry by hand could book it twice): the lookup settles it either way.
            found = await self._reconcile(step, doc, endpoint, key, auth, secrets, history)
            if found is not None:
                return found, (*history, LOOKUP_FOUND), maybe_processed, True
            # It answered every attempt and has no record of it (each earlier attempt was
            # looked up before its resend): not booked, so "not delivered".
            return record, (*history, LOOKUP_NOT_FOUND), False, False
        return record, history, maybe_processed, False

    async def _reconcile(
        self,
        step: RestStep,
        doc: DocState,
        endpoint: RestEndpoint,
        key: str,
        auth: AuthConfig | None,
        secrets: dict[str, Any],
        attempts: tuple[str, ...],
    ) -> dict[str, Any] | None:
        """Ask the target whether an attempt it may have processed created the record: the
        record found (as the step's reply record), or None (not there: send it). A lookup that
        fails fails the step with "outcome unknown": resending blind could book it twice."""
        lookup = step.lookup
        assert lookup is not None  # validated with idempotency: reconcile
        probe = RestStep(
            name=step.name,
            target=step.target,
            auth=step.auth,
            request=RestRequest(
                url=lookup.url,
                method=lookup.method,
                headers={
                    **{
                        k: v for k, v in step.request.headers.items() if k.lower() != "content-type"
                    },
                    **lookup.headers,
                },
                params=lookup.params,
                body="none",
            ),
        )
        preq = prepare_request(probe, doc.ctx, secrets=secrets, auth=auth)
        # resolved as a POST only to reuse the target's URL, auth and TLS; sent as lookup.method
        where = self._endpoint(probe, dataclasses.replace(preq, method="POST"))
        client = await self._http_client(endpoint)
        headers = {k: v for k, v in preq.headers.items() if k.lower() != "content-type"}
        problem: str | None = None
        try:
            reply = await rest_delivery.fetch(
                client,
                where,
                url=where.url,
                method=lookup.method,
                headers=headers,
                redactor=self.redactor,
            )
        except RestDeliveryError as exc:
            problem = f"the reconcile lookup failed: {exc}"
        else:
            if not reply.ok:
                shown = where.display_name
                problem = f"the reconcile lookup {shown} answered HTTP {reply.status_code}"
            else:
                try:
                    value = jmespath.search(lookup.found, reply.json())
                except ValueError:
                    problem = f"the reconcile lookup {where.display_name} did not answer JSON"
                else:
                    if value in (None, "", [], {}):
                        return None
                    return build_response_record(
                        reply.status_code,
                        [("content-type", "application/json")],
                        json.dumps(value).encode(),
                        url=reply.url,
                        elapsed_s=reply.elapsed_s,
                    )
        await self.writes.finish(
            key,
            ok=False,
            result={"error": self.redactor(problem), "attempts": list(attempts), "uncertain": True},
        )
        error = DeliveryError(
            problem, step=step.name, target=endpoint.display_name, secrets=self.redactor
        )
        add_unknown_hint(error, step, doc, "reconcile")
        error.mark_delivery(uncertain=True, attempts=[self.redactor(a) for a in attempts])
        raise error

    async def _refuse_resend(
        self,
        step: RestStep,
        doc: DocState,
        endpoint: RestEndpoint,
        key: str,
        attempts: tuple[str, ...],
    ) -> None:
        """``idempotency: none`` and an earlier call's outcome is unknown: never resend."""
        await self.writes.finish(
            key, ok=False, result={"attempts": list(attempts), "uncertain": True}
        )
        error = DeliveryError(
            "not resent automatically",
            step=step.name,
            target=endpoint.display_name,
            secrets=self.redactor,
        )
        add_unknown_hint(error, step, doc, "none")
        error.mark_delivery(uncertain=True, attempts=attempts)
        raise error


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _request_bytes(req: PreparedRequest) -> bytes:
    """Canonical bytes of what is sent (hashing input for the idempotency key)."""
    parts: list[bytes] = [req.method.encode(), req.url.encode(), json.dumps(req.params).encode()]
    if req.content is not None:
        parts.append(req.content)
    if req.json is not None:
        parts.append(json.dumps(req.json, sort_keys=True, ensure_ascii=False).encode())
    if req.data:
        parts.append(json.dumps(req.data, sort_keys=True).encode())
    for key, (name, data, ctype) in sorted((req.files or {}).items()):
        parts += [key.encode(), name.encode(), ctype.encode(), data]
    return b"\0".join(parts)


def _body_for(req: PreparedRequest) -> RequestBody:
    if req.files:
        field_name, (filename, data, ctype) = next(iter(req.files.items()))
        return MultipartBody(
            content=data,
            filename=filename,
            content_type=ctype,
            field_name=field_name,
            fields=dict(req.data or {}),
        )
    if req.json is not None:
        return JsonBody(req.json)
    if req.data is not None:
        return FormBody(req.data)
    declared = next((v for k, v in req.headers.items() if k.lower() == "content-type"), None)
    return RawBody(req.content or b"", declared or "application/octet-stream")


def _with_params(url: str, params: Mapping[str, str]) -> str:
    if not params:
        return url
    return str(httpx.URL(url).copy_merge_params(dict(params)))


def _preview(req: PreparedRequest) -> bytes:
    if req.content is not None:
        return req.content
    if req.json is not None:
        return json.dumps(req.json, ensure_ascii=False, indent=2).encode()
    if req.files:
        names = {k: (v[0], v[2], len(v[1])) for k, v in req.files.items()}
        return json.dumps({"files": names, "fields": req.data or {}}, indent=2).encode()
    return json.dumps(req.data or {}, indent=2).encode()
