"""Runs an export pipeline over a batch of annotations, one step at a time.

The flow calls :meth:`ExportEngine.run_step` once per step per batch (so the Prefect UI shows
one task per step per batch, not one per document) and :meth:`ExportEngine.finalize` once per
batch. Inside a step the documents run concurrently, bounded by ``concurrency``; blocking
transports (paramiko, boto3) run in bounded thread pools.

Exactly once: every side effect (REST delivery, file upload) gets a key derived from
(annotation, step, payload). The :class:`~rossflow.ledger.Ledger` records intent before and the
outcome after; a rerun reuses a recorded outcome instead of repeating the call, and a call
that was in flight when the previous run died is repeated with the same ``Idempotency-Key``.
A failure of one document never stops the others: it ends that document's pipeline with a
message that names the step, the target, the HTTP status and an excerpt of the reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import SecretStr

from rossflow.artifacts import ArtifactStore
from rossflow.delivery import rest as rest_delivery
from rossflow.delivery.rest import (
    FormBody,
    JsonBody,
    MultipartBody,
    RawBody,
    RestEndpoint,
    RestRetryPolicy,
    RestTimeouts,
)
from rossflow.delivery.sftp import SftpConnectionInfo, SftpSession
from rossflow.ledger import Ledger
from rossflow.redaction import Redactor
from rossflow.rossum import RossumClient, RossumError, id_from_url

from .config import (
    AuthConfig,
    CleanStep,
    EvaluateStep,
    ExtractStep,
    FileStorageStep,
    PipelineConfig,
    RestStep,
    S3Step,
    TemplateStep,
)
from .context import ExportContext, build_context, build_writeback_operations
from .errors import DeliveryError, StepError
from .extract import build_response_record
from .steps import (
    PreparedRequest,
    apply_response,
    plan_file_storage,
    prepare_auth_request,
    prepare_request,
    rest_gate,
    run_clean_step,
    run_evaluate_step,
    run_extract_step,
    run_template_step,
    step_enabled,
    token_from_auth_response,
)

log = logging.getLogger("rossflow.export")

Outcome = Literal[
    "exported", "failed_export", "failed_uncertain", "failed_kept_confirmed", "dry_run", "not_moved"
]
OnFailure = Literal["failed_export", "keep_confirmed"]

# Largest reply body kept in the ledger for reuse on a rerun (larger ones are truncated).
MAX_RECORDED_REPLY = 256 * 1024


# ------------------------------------------------------------------------------- targets


class Targets:
    """Resolves the ``target:`` names of steps to connection objects.

    ``rest``/``sftp``/``s3`` hold objects given directly (tests, the demo); ``loader`` is asked
    for anything else, e.g. the flow passes a function that loads Prefect blocks by name.
    """

    def __init__(
        self,
        *,
        rest: Mapping[str, Any] | None = None,
        sftp: Mapping[str, SftpConnectionInfo] | None = None,
        s3: Mapping[str, Any] | None = None,
        loader: Callable[[str, str], Any] | None = None,
    ) -> None:
        self._given: dict[str, dict[str, Any]] = {
            "rest": dict(rest or {}),
            "sftp": dict(sftp or {}),
            "s3": dict(s3 or {}),
        }
        self._loader = loader
        self._lock = threading.Lock()

    def get(self, kind: str, name: str) -> Any:
        with self._lock:
            found = self._given[kind].get(name)
            if found is None and self._loader is not None:
                found = self._loader(kind, name)
                if found is not None:
                    self._given[kind][name] = found
        if found is None:
            raise StepError(f"unknown {kind} target {name!r} (no block or inline config)")
        return found


# --------------------------------------------------------------------------- batch state


@dataclass
class DocState:
    """One annotation's journey through the pipeline within a batch."""

    annotation_id: int
    queue_id: int
    file_name: str
    ctx: ExportContext
    status: str = "confirmed"
    error: StepError | None = None
    dry_stopped: bool = False
    warnings: list[str] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    last_target: str | None = None
    last_http_status: int | None = None
    outcome: Outcome | None = None
    message: str = ""

    @property
    def active(self) -> bool:
        return self.error is None and not self.dry_stopped

    def fail(self, error: StepError) -> None:
        error.annotation_id = None  # the report has its own column
        self.error = error
        self.last_target = error.target or self.last_target
        if error.http_status is not None:
            self.last_http_status = error.http_status


@dataclass
class Batch:
    queue_id: int
    docs: list[DocState]
    started: float = field(default_factory=time.monotonic)
    any_status: bool = False  # replay: the annotations need not be ``confirmed``

    @property
    def ids(self) -> list[int]:
        return [d.annotation_id for d in self.docs]


@dataclass(frozen=True)
class DocReport:
    """One row of the run report (columns: :data:`~rossflow.export.tabular.RUN_REPORT_COLUMNS`)."""

    annotation_id: int
    queue_id: int
    file_name: str
    outcome: str
    target: str
    http_status: int | None
    message: str
    warnings: str = ""
    status: str = ""
    step: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "annotation_id": self.annotation_id,
            "queue_id": self.queue_id,
            "document": self.file_name,
            "outcome": self.outcome,
            "status": self.status,
            "step": self.step,
            "target": self.target,
            "http_status": self.http_status,
            "message": self.message,
            "warnings": self.warnings,
        }


# ------------------------------------------------------------------------------ helpers


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


def _body_for(req: PreparedRequest) -> rest_delivery.RequestBody:
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


def _small_record(record: Mapping[str, Any], redactor: Redactor) -> dict[str, Any]:
    """Reply record as stored in the ledger (what later steps need on a rerun), redacted."""
    text = str(record.get("text") or "")
    if len(text) > MAX_RECORDED_REPLY:
        text = text[:MAX_RECORDED_REPLY]
    return {
        "status_code": record.get("status_code"),
        "raw": redactor.data(list(record.get("raw") or [])),
        "text": redactor(text),
        "url": redactor(str(record.get("url") or "")) or None,
        "elapsed_s": record.get("elapsed_s"),
    }


def _record_from_ledger(stored: Mapping[str, Any]) -> dict[str, Any]:
    return build_response_record(
        int(stored["status_code"]),
        [tuple(h) for h in stored.get("raw") or []],
        str(stored.get("text") or "").encode(),
        url=stored.get("url"),
        elapsed_s=stored.get("elapsed_s"),
    )


def pipeline_needs_original(pipeline: PipelineConfig) -> bool:
    """Whether any step reads the original document (so the batch pre-downloads it)."""
    for step in pipeline.steps:
        dump = json.dumps(step.model_dump(mode="json"), default=str)
        if "original_file" in dump:
            return True
        if isinstance(step, FileStorageStep) and any(
            obj.type == "document"
            for rule in step.export_rules
            for obj in rule.export_object_configurations
        ):
            return True
        if (
            isinstance(step, RestStep)
            and step.request.body_kind == "multipart"
            and not step.export_reference_key
        ):
            return True
    return False


class _SessionPool:
    """A few SFTP sessions, each used by one worker thread at a time."""

    def __init__(self, info: SftpConnectionInfo, size: int) -> None:
        self.info = info
        self.size = size
        self._idle: queue.LifoQueue[SftpSession] = queue.LifoQueue()
        self._all: list[SftpSession] = []
        self._lock = threading.Lock()

    def acquire(self) -> SftpSession:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            session = SftpSession(self.info)
            session.connect()
            with self._lock:
                self._all.append(session)
            return session

    def release(self, session: SftpSession) -> None:
        self._idle.put(session)

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                try:
                    session.close()
                except Exception:
                    log.debug("closing an SFTP session failed", exc_info=True)
            self._all.clear()


# ------------------------------------------------------------------------------- engine


class ExportEngine:
    """Pipeline runner for one run (create one per flow run; use as an async context)."""

    def __init__(
        self,
        pipeline: PipelineConfig,
        client: RossumClient,
        *,
        ledger: Ledger,
        artifacts: ArtifactStore,
        targets: Targets | None = None,
        secrets: Mapping[str, Any] | None = None,
        concurrency: int = 16,
        file_concurrency: int = 4,
        dry_run: bool = False,
        on_failure: OnFailure = "failed_export",
    ) -> None:
        self.pipeline = pipeline
        self.client = client
        self.ledger = ledger
        self.artifacts = artifacts
        self.targets = targets or Targets()
        self.secrets: dict[str, Any] = dict(secrets or {})
        self.concurrency = max(1, concurrency)
        self.file_concurrency = max(1, file_concurrency)
        self.dry_run = dry_run
        self.on_failure = on_failure
        self.needs_original = pipeline_needs_original(pipeline)
        # Every secret value of this run, masked wherever a reply is stored or quoted; targets
        # and run-time tokens are added as they are resolved or obtained.
        self.redactor = Redactor()
        self.redactor.add_from(self.secrets)
        for step in pipeline.steps:
            self.redactor.add_from(dict(getattr(step, "secrets", None) or {}))
        self._stack = AsyncExitStack()
        self._http: dict[tuple[Any, ...], httpx.AsyncClient] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._token_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=self.file_concurrency, thread_name_prefix="rossflow-files"
        )
        self._sftp_pools: dict[str, _SessionPool] = {}
        # Stored requests/replies are written off the event loop (file-system calls would
        # otherwise stall every document in flight); two threads keep the order of writes of
        # one document (each awaits its write) and bound the pool.
        self._artifact_pool = ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="rossflow-artifacts"
        )

    async def __aenter__(self) -> ExportEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()
        for pool in self._sftp_pools.values():
            await asyncio.get_running_loop().run_in_executor(self._executor, pool.close)
        self._executor.shutdown(wait=True)
        self._artifact_pool.shutdown(wait=True)

    # -- batches -----------------------------------------------------------------------

    async def new_batch(self, queue_id: int, items: Sequence[Mapping[str, Any]]) -> Batch:
        """Build per-annotation contexts; pre-download originals if a step needs them."""
        originals: dict[int, bytes] = {}
        if self.needs_original:
            originals = await self._download_originals(items)
        docs = []
        for item in items:
            ann_id = id_from_url(item["url"])
            document = item.get("document") or {}
            doc_url = document.get("url") if isinstance(document, Mapping) else None
            doc_id = id_from_url(doc_url) if doc_url else None

            def original(doc_id: int | None = doc_id, ann: int = ann_id) -> bytes:
                if doc_id is None or doc_id not in originals:
                    raise StepError(
                        f"original file of annotation {ann} was not downloaded", step="download"
                    )
                return originals[doc_id]

            try:
                ctx = build_context(item, original_file=original)
            except StepError as exc:
                ctx = build_context({**item, "content": []})
                state = DocState(ann_id, queue_id, document.get("file_name") or "", ctx)
                state.fail(exc.with_step("load"))
                docs.append(state)
                continue
            docs.append(
                DocState(
                    ann_id,
                    queue_id,
                    str(document.get("file_name") or ""),
                    ctx,
                    status=str(item.get("status") or "confirmed"),
                )
            )
        return Batch(queue_id, docs)

    async def _download_originals(self, items: Sequence[Mapping[str, Any]]) -> dict[int, bytes]:
        sem = asyncio.Semaphore(self.concurrency)
        out: dict[int, bytes] = {}

        async def one(doc_url: str) -> None:
            async with sem:
                try:
                    out[id_from_url(doc_url)] = await self.client.download_document(doc_url)
                except RossumError as exc:
                    log.warning("could not download %s: %s", doc_url, exc)

        urls = {
            str(item["document"]["url"])
            for item in items
            if isinstance(item.get("document"), Mapping) and item["document"].get("url")
        }
        await asyncio.gather(*(one(u) for u in urls))
        return out

    # -- steps -------------------------------------------------------------------------

    async def run_step(self, batch: Batch, step_name: str) -> dict[str, int]:
        """Run one step for every still-active document of the batch; returns counts."""
        step = self.pipeline.step(step_name)
        sem = asyncio.Semaphore(self.concurrency)
        counts = {"ran": 0, "skipped": 0, "failed": 0}

        async def one(doc: DocState) -> None:
            if not doc.active:
                return
            async with sem:
                try:
                    if not step_enabled(step, doc.ctx):
                        counts["skipped"] += 1
                        return
                    ran = await self._run_for_doc(step, doc)
                    counts["ran" if ran else "skipped"] += 1
                except StepError as exc:
                    doc.fail(exc.with_step(step.name))
                except Exception as exc:
                    log.error(
                        "step %s crashed for annotation %s: %s",
                        step.name,
                        doc.annotation_id,
                        self.redactor(f"{type(exc).__name__}: {exc}"),
                    )
                    doc.fail(
                        StepError(
                            f"internal error: {type(exc).__name__}: {exc}",
                            step=step.name,
                            secrets=self.redactor,
                        )
                    )
                if doc.error is not None:
                    counts["failed"] += 1
                    log.info(
                        "annotation %s failed at %s: %s",
                        doc.annotation_id,
                        step.name,
                        self.redactor(doc.error.message()),
                    )

        await asyncio.gather(*(one(d) for d in batch.docs))
        return counts

    async def _run_for_doc(self, step: Any, doc: DocState) -> bool:
        if isinstance(step, CleanStep):
            doc.ctx, _ = run_clean_step(step, doc.ctx)
            if not self.dry_run:
                self.artifacts.purge(doc.annotation_id)
            return True
        if isinstance(step, TemplateStep):
            doc.ctx, files = run_template_step(step, doc.ctx)
            if files:
                await self._store(doc, step.name, [(r.key + r.extension, r.content) for r in files])
            return True
        if isinstance(step, RestStep):
            return await self._rest(step, doc)
        if isinstance(step, ExtractStep):
            return await self._extract(step, doc)
        if isinstance(step, EvaluateStep):
            outcome = run_evaluate_step(step, doc.ctx)
            if not outcome.passed and outcome.level == "warning" and outcome.message:
                doc.warnings.append(outcome.message)
            outcome.raise_if_failed(step.name)
            return True
        if isinstance(step, FileStorageStep):
            return await self._files(step, doc)
        raise StepError(f"unsupported step type {type(step).__name__}", step=step.name)

    async def _store(self, doc: DocState, step: str, files: list[tuple[str, bytes]]) -> None:
        """Store rendered files / requests / replies of one document (off the event loop),
        with every secret of the run masked."""

        def put() -> None:
            redacted = [(name, self.redactor.bytes(data)) for name, data in files]
            self.artifacts.put_many(doc.annotation_id, step, redacted)

        await asyncio.get_running_loop().run_in_executor(self._artifact_pool, put)

    def _secrets_for(self, step: Any) -> dict[str, Any]:
        merged = dict(self.secrets)
        merged.update(getattr(step, "secrets", {}) or {})
        return merged

    # -- REST ----------------------------------------------------------------------------

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
        endpoint = self._resolve_endpoint(step, req)
        self.redactor.add_from(endpoint)
        return endpoint

    def _resolve_endpoint(self, step: RestStep, req: PreparedRequest) -> RestEndpoint:
        url = _with_params(req.url, req.params)
        if step.target:
            target = self.targets.get("rest", step.target)
            self.redactor.add_from(target)
            # The block's name is the name the step used for it.
            if isinstance(target, RestEndpoint):
                return target.model_copy(
                    update={
                        "url": _join(target.url, url),
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
            timeouts=RestTimeouts(read=timeout, write=timeout),
            retry=RestRetryPolicy(max_attempts=retries + 1),
        )

    async def _auth_token(
        self, auth: AuthConfig, step: RestStep, secrets: dict[str, Any], *, refresh: bool
    ) -> None:
        """Rossum v1 ``auth``: fetch a token, cache it, expose it as ``{secret.<cache_as>}``."""
        cache_key = auth.url + "|" + json.dumps(auth.data, sort_keys=True, default=str)
        async with self._token_lock:
            cached = self._tokens.get(cache_key)
            if refresh or cached is None or cached[1] <= time.monotonic():
                req = prepare_auth_request(auth, secrets=secrets, step=step.name)
                endpoint = RestEndpoint(
                    url=req.url,
                    method=req.method,  # type: ignore[arg-type]
                    timeouts=RestTimeouts(read=req.timeout_s, write=req.timeout_s),
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
                except rest_delivery.DeliveryError as exc:
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

    async def _rest(self, step: RestStep, doc: DocState) -> bool:
        secrets = self._secrets_for(step)
        if not rest_gate(step, doc.ctx, secrets=secrets):
            return False
        auth = step.auth
        if isinstance(auth, str):
            auth = self.pipeline.auths[auth]
        if auth is not None and not self.dry_run:
            await self._auth_token(auth, step, secrets, refresh=False)
        req = prepare_request(step, doc.ctx, secrets=secrets)
        endpoint = self._endpoint(step, req)
        doc.last_target = endpoint.display_name
        payload = _request_bytes(req)
        key = rest_delivery.idempotency_key(
            doc.annotation_id, f"{step.name}|{endpoint.url}", payload
        )
        await self._store(doc, step.name, [("request.body", _preview(req))])
        if self.dry_run:
            doc.deliveries.append(
                {"step": step.name, "target": endpoint.display_name, "state": "dry_run"}
            )
            doc.dry_stopped = True
            return True
        done = self.ledger.begin(
            key,
            kind="delivery",
            subject=str(doc.annotation_id),
            step=step.name,
            target=endpoint.display_name,
        )
        if done is not None and "record" in done.result:
            record = _record_from_ledger(done.result["record"])
            state = "already_delivered"
            history: tuple[str, ...] = ()
            maybe_processed = False
        else:
            record, history, maybe_processed = await self._send(
                step, doc, endpoint, req, key, auth, secrets
            )
            state = "delivered"
        doc.last_http_status = int(record["status_code"])
        meta = {k: record.get(k) for k in ("status_code", "raw", "url", "elapsed_s")}
        await self._store(
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
        if state == "delivered":
            self.ledger.finish(
                key,
                ok=outcome.status != "error",
                result={
                    "record": _small_record(record, self.redactor),
                    "http_status": outcome.http_status,
                },
            )
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
            if endpoint.method == "POST" and maybe_processed:
                outcome.error.mark_delivery(uncertain=True, attempts=history)
            elif int(record["status_code"]) >= 400:
                outcome.error.mark_delivery(uncertain=False, attempts=history)
        outcome.raise_for_status()
        return True

    async def _send(
        self,
        step: RestStep,
        doc: DocState,
        endpoint: RestEndpoint,
        req: PreparedRequest,
        key: str,
        auth: AuthConfig | None,
        secrets: dict[str, Any],
    ) -> tuple[dict[str, Any], tuple[str, ...], bool]:
        """The reply record, what each attempt ended in, and whether a failed attempt may have
        been processed by the target."""
        client = await self._http_client(endpoint)
        history: tuple[str, ...] = ()
        maybe_processed = False
        headers = {k: v for k, v in req.headers.items() if k.lower() != "content-type"}
        body = _body_for(req)
        try:
            result = await rest_delivery.deliver(
                client, endpoint, body, idempotency_key=key, headers=headers, redactor=self.redactor
            )
            if result.status_code == 401 and auth is not None:
                # Rossum's REST export re-authenticates on any 401 and tries once more.
                history, maybe_processed = result.history, result.maybe_processed
                await self._auth_token(auth, step, secrets, refresh=True)
                req = prepare_request(step, doc.ctx, secrets=secrets)
                headers = {k: v for k, v in req.headers.items() if k.lower() != "content-type"}
                result = await rest_delivery.deliver(
                    client,
                    endpoint,
                    body,
                    idempotency_key=key,
                    headers=headers,
                    redactor=self.redactor,
                )
        except rest_delivery.DeliveryError as exc:
            history += exc.history
            maybe_processed = maybe_processed or exc.maybe_processed
            self.ledger.finish(
                key,
                ok=False,
                result={"error": self.redactor(str(exc)), "attempts": list(history)},
            )
            error = DeliveryError(
                f"could not deliver after {exc.attempts} attempt(s): {exc}",
                step=step.name,
                target=endpoint.display_name,
                secrets=self.redactor,
                retryable=True,
            )
            error.mark_delivery(
                uncertain=endpoint.method == "POST" and maybe_processed,
                attempts=[self.redactor(a) for a in history],
            )
            raise error from exc
        record = build_response_record(
            result.status_code,
            result.headers,
            result.body,
            url=result.url,
            elapsed_s=result.elapsed_s,
        )
        return record, history + result.history, maybe_processed or result.maybe_processed

    # -- extract / write-back ------------------------------------------------------------

    async def _extract(self, step: ExtractStep, doc: DocState) -> bool:
        doc.ctx, result = run_extract_step(step, doc.ctx, secrets=self._secrets_for(step))
        if not (step.writeback and result.values) or self.dry_run:
            return True
        ops = result.operations
        if ops is None:
            content = await self.client.get_annotation_content(doc.annotation_id)
            try:
                ops = build_writeback_operations(content, result.values, step=step.name)
            except StepError as exc:
                raise exc.with_step(step.name) from exc
        if ops:
            try:
                await self.client.content_operations(doc.annotation_id, ops)
            except RossumError as exc:
                raise StepError(
                    f"writing {sorted(result.values)} back to Rossum failed: "
                    + self.redactor(str(exc.detail or exc)),
                    step=step.name,
                    target="rossum",
                    http_status=exc.status,
                ) from exc
        return True

    # -- SFTP / S3 -----------------------------------------------------------------------

    def _file_target(self, step: FileStorageStep) -> tuple[str, Any]:
        secrets = {
            k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
            for k, v in self._secrets_for(step).items()
        }
        creds = dict(step.credentials or {})
        if isinstance(step, S3Step) or creds.get("type") == "s3":
            if step.target:
                target = self.targets.get("s3", step.target)
            else:
                target = _inline_s3(step, creds, secrets)
            self.redactor.add_from(target)
            return "s3", target
        if step.target:
            found = self.targets.get("sftp", step.target)
            info = found.connection_info() if hasattr(found, "connection_info") else found
        else:
            info = _inline_sftp(step, creds, secrets)
        self.redactor.add_from(info)
        return "sftp", info

    async def _files(self, step: FileStorageStep, doc: DocState) -> bool:
        kind, target = self._file_target(step)
        plan_key = f"plan:{doc.annotation_id}:{step.name}"
        if not self.dry_run:
            self.ledger.begin(plan_key, kind="plan", subject=str(doc.annotation_id), step=step.name)
        first = self.ledger.get(plan_key)
        now = datetime.fromtimestamp(first.created_at, UTC) if first else datetime.now(UTC)

        def counter(name: str) -> int:
            return self.ledger.sequence(
                f"{self.pipeline.name}:{step.name}:{name}", f"{doc.annotation_id}:{step.name}"
            )

        planned = plan_file_storage(step, doc.ctx, counter=counter, now=now)
        label = (
            f"s3://{getattr(target, 'bucket_name', '?')}"
            if kind == "s3"
            else f"sftp://{target.display}"
        )
        # Messages name the block (when the step names one) and the location.
        shown = f"{step.target} ({label})" if step.target else label
        doc.last_target = shown
        for item in planned:
            data = item.read()
            key = _sha(f"{doc.annotation_id}\n{step.name}\n{item.path}\n{_sha(data)}".encode())
            if self.dry_run:
                doc.deliveries.append(
                    {"step": step.name, "target": label + item.path, "state": "dry_run"}
                )
                continue
            done = self.ledger.begin(
                key,
                kind="delivery",
                subject=str(doc.annotation_id),
                step=step.name,
                target=label + item.path,
            )
            if done is not None:
                doc.deliveries.append(
                    {
                        "step": step.name,
                        "target": done.result.get("path", item.path),
                        "state": "already_delivered",
                    }
                )
                continue
            # A retry of our own interrupted attempt overwrites our own (identical) file.
            attempts = self.ledger.get(key).attempts if self.ledger.get(key) else 1  # type: ignore[union-attr]
            collision = "replace" if attempts > 1 else item.collision
            try:
                final = await self._put(kind, target, item.path, data, item.content_type, collision)
            except Exception as exc:
                self.ledger.finish(key, ok=False, result={"error": self.redactor(str(exc))})
                raise StepError(
                    f"upload of {item.path} failed: {exc}",
                    step=step.name,
                    target=shown,
                    secrets=self.redactor,
                ) from exc
            self.ledger.finish(key, ok=True, result={"path": final})
            doc.deliveries.append(
                {"step": step.name, "target": label + final, "state": "delivered"}
            )
        return True

    async def _put(
        self, kind: str, target: Any, path: str, data: bytes, content_type: str, collision: str
    ) -> str:
        loop = asyncio.get_running_loop()
        if kind == "s3":
            from rossflow.delivery import s3 as s3_delivery

            result = await loop.run_in_executor(
                self._executor,
                lambda: s3_delivery.put_object(
                    target,
                    path.lstrip("/"),
                    data,
                    content_type,
                    collision,  # type: ignore[arg-type]
                ),
            )
            return str(result.path)
        info: SftpConnectionInfo = target
        pool = self._sftp_pools.get(info.display)
        if pool is None:
            pool = self._sftp_pools[info.display] = _SessionPool(info, self.file_concurrency)

        def put() -> str:
            session = pool.acquire()
            try:
                return session.put_atomic(path, data, collision).path  # type: ignore[arg-type]
            finally:
                pool.release(session)

        return await loop.run_in_executor(self._executor, put)

    # -- finalize ------------------------------------------------------------------------

    async def _move_exported(
        self, queue_id: int, docs: Sequence[DocState]
    ) -> tuple[dict[int, str], RossumError | None]:
        """Move delivered annotations to ``exported``; returns the status each is in.

        When the answer to the move is lost (the connection dropped after Rossum processed
        it, the retry then finds nothing ``confirmed``) the annotations' real status is read
        back with one ``GET`` filtered by their ids, so the report says what is true.
        """
        moved: dict[int, str] = {}
        error: RossumError | None = None
        try:
            # A replayed annotation (e.g. failed_export) goes back to confirmed first, so
            # that the move below is the same batched export call as for any other.
            await gather_limited(
                (
                    self.client.set_status(d.annotation_id, "confirmed")
                    for d in docs
                    if d.status != "confirmed"
                ),
                self.concurrency,
            )
            moved = await self.client.move_to_status(queue_id, [d.annotation_id for d in docs])
        except RossumError as exc:
            error = exc
        missing = [d.annotation_id for d in docs if moved.get(d.annotation_id) != "exported"]
        if missing:
            try:
                async for item in self.client.list_annotations(ids=missing):
                    moved[id_from_url(item["url"])] = str(item.get("status") or "")
            except RossumError as exc:
                log.warning("could not read back the status of %s: %s", missing[:20], exc)
        return moved, error

    async def finalize(self, batch: Batch) -> list[DocReport]:
        """Move successes to ``exported`` in one call; failures to ``failed_export``."""
        ok = [d for d in batch.docs if d.error is None and not d.dry_stopped]
        failed = [d for d in batch.docs if d.error is not None]
        if self.dry_run:
            for doc in batch.docs:
                if doc.error is None:
                    doc.outcome, doc.message = "dry_run", "rendered; nothing delivered"
        elif ok:
            moved, move_error = await self._move_exported(batch.queue_id, ok)
            for doc in ok:
                status = moved.get(doc.annotation_id)
                if status:
                    doc.status = status
                if status == "exported":
                    doc.outcome = "exported"
                    doc.message = _summary(doc)
                elif move_error is not None and status in (None, "confirmed"):
                    doc.outcome = "not_moved"
                    doc.message = f"delivered, but moving to exported failed: {move_error}"
                else:
                    doc.outcome = "not_moved"
                    doc.message = (
                        f"delivered, but Rossum left it {status or 'unchanged'}; "
                        "the next run will move it"
                    )
        sem = asyncio.Semaphore(self.concurrency)

        async def fail(doc: DocState) -> None:
            assert doc.error is not None
            doc.message = self.redactor(doc.error.message())
            # Counted apart: the target may have created the document (check before retrying).
            uncertain: Outcome | None = "failed_uncertain" if doc.error.uncertain else None
            if self.dry_run or self.on_failure == "keep_confirmed":
                doc.outcome = "dry_run" if self.dry_run else uncertain or "failed_kept_confirmed"
                return
            async with sem:
                try:
                    await self.client.mark_failed_export(doc.annotation_id, doc.message)
                    doc.outcome, doc.status = uncertain or "failed_export", "failed_export"
                except RossumError as exc:
                    doc.outcome = uncertain or "failed_kept_confirmed"
                    doc.message += f" (could not set failed_export: {exc})"

        await asyncio.gather(*(fail(d) for d in failed))
        return [
            DocReport(
                annotation_id=d.annotation_id,
                queue_id=d.queue_id,
                file_name=d.file_name,
                outcome=d.outcome or "not_moved",
                target=d.last_target or "",
                http_status=d.last_http_status,
                message=self.redactor(d.message),
                warnings=self.redactor("; ".join(d.warnings)),
                status=d.status,
                step=(d.error.step or "") if d.error is not None else "",
            )
            for d in batch.docs
        ]


def _summary(doc: DocState) -> str:
    if not doc.deliveries:
        return "no delivery step ran"
    parts = []
    for d in doc.deliveries:
        status = f" {d['http_status']}" if d.get("http_status") is not None else ""
        parts.append(
            f"{d['step']}{status}" + (" (reused)" if d["state"] == "already_delivered" else "")
        )
    return ", ".join(parts)


def _preview(req: PreparedRequest) -> bytes:
    if req.content is not None:
        return req.content
    if req.json is not None:
        return json.dumps(req.json, ensure_ascii=False, indent=2).encode()
    if req.files:
        names = {k: (v[0], v[2], len(v[1])) for k, v in req.files.items()}
        return json.dumps({"files": names, "fields": req.data or {}}, indent=2).encode()
    return json.dumps(req.data or {}, indent=2).encode()


def _join(base: str, url: str) -> str:
    if url.startswith(("http://", "https://")):
        return url
    return base.rstrip("/") + "/" + url.lstrip("/")


def _inline_sftp(step: FileStorageStep, creds: dict[str, Any], secrets: dict[str, Any]) -> Any:
    """Rossum file-storage ``credentials`` + hook secrets → connection info."""
    if not creds.get("host"):
        raise StepError("SFTP step has neither target nor credentials.host", step=step.name)
    key = secrets.get("ssh_key")
    return SftpConnectionInfo(
        host=str(creds["host"]),
        port=int(creds.get("port") or 22),
        username=str(creds.get("username") or ""),
        password=SecretStr(secrets["password"]) if secrets.get("password") else None,
        private_key=SecretStr(str(key).replace("\\n", "\n")) if key else None,
        passphrase=SecretStr(secrets["ssh_key_passphrase"])
        if secrets.get("ssh_key_passphrase")
        else None,
        known_hosts=str(creds.get("known_hosts") or ""),
        verify_host_key=bool(creds.get("verify_host_key", True)),
    )


def _inline_s3(step: FileStorageStep, creds: dict[str, Any], secrets: dict[str, Any]) -> Any:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    if not creds.get("bucket_name"):
        raise StepError("S3 step has neither target nor credentials.bucket_name", step=step.name)
    params = (
        AwsClientParameters(endpoint_url=creds["endpoint_url"])
        if creds.get("endpoint_url")
        else None
    )
    aws = AwsCredentials(
        aws_access_key_id=secrets.get("access_key_id"),
        aws_secret_access_key=secrets.get("secret_access_key"),
        region_name=creds.get("region") or "us-east-1",
        aws_client_parameters=params or AwsClientParameters(),
    )
    return S3Bucket(bucket_name=str(creds["bucket_name"]), credentials=aws)


async def gather_limited(coros: Iterable[Awaitable[Any]], limit: int) -> list[Any]:
    """``asyncio.gather`` with at most ``limit`` coroutines running."""
    sem = asyncio.Semaphore(limit)

    async def run(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))
