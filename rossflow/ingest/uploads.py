"""Upload with dedupe and crash reconciliation: the same content never reaches a queue twice.

One concept, one module (over 600 lines on purpose): the :class:`Uploader` is the state machine
of one file's upload (ledger intent → send → task → upload object → adopt or reconcile) and its
methods share that state; grouping files into multi-file uploads lives in
:mod:`rossflow.ingest.upload_groups`.

Every upload has a *dedupe key* ``ingest:<rossum host>:<queue id>:<sha256>`` in the durable
:class:`~rossflow.ledger.Ledger` (kind ``ingest-upload``):

* absent → upload. The effect is recorded ``started`` *before* the request is sent and ``done``
  (``phase: sent`` with the task URL) as soon as Rossum answers; once the task has succeeded it
  becomes ``phase: imported`` with the document and annotation ids.
* ``done`` → the content is already in that queue (under any name): nothing is sent; the file is
  archived as a duplicate (or, when it is the very file that was uploaded, as uploaded: that is
  a rerun after a crash between the upload and the archive move). ``phase: sent`` resumes
  waiting for the recorded task.
* ``started`` → a previous run died with the request in flight, or Rossum's answer was lost.
  The document is looked up in Rossum (``GET /v1/documents?original_file_name=…``, then the
  annotations' ``metadata.sha256`` and queue) and adopted when found; only when it is not there
  is the file sent again.

A *lease* on the key (:class:`~rossflow.ingest.state.IngestState`) makes sure only one run, and
one file within a run, uploads a given content at a time; the others wait for its outcome.

Files of the same queue, rule metadata and values go several per request
(:func:`~rossflow.ingest.upload_groups.plan_uploads`, :meth:`Uploader.upload_group`): one task
poll and one upload object per request, each file keeping its own key, lease and outcome; its
``sent`` record names its position in the upload, which maps it to its document. Re-sends
(after a crash or a lost answer) go alone with ``reject_identical``: Rossum's 409 means the
earlier request created the document, which is then adopted.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from rossflow.ingest import errors as ingest_errors
from rossflow.ingest.model import DUPLICATE, UPLOADED, FileItem, IngestOptions
from rossflow.ingest.rules import RoutingRule
from rossflow.ingest.sources import SpooledContent
from rossflow.ingest.state import IngestState
from rossflow.ingest.upload_groups import (
    MAX_METADATA_BYTES,
    build_group_metadata,
    build_metadata,
    file_entry,
    metadata_matches,
    metadata_size,
)
from rossflow.ingest.validation import mime_type
from rossflow.ledger import Effect, Ledger
from rossflow.rossum import (
    ConflictError,
    DeadlineExceededError,
    NotFoundError,
    RateLimitedError,
    RossumAPIError,
    RossumClient,
    RossumError,
    RossumTransportError,
    ServerError,
    TaskFailedError,
    UncertainOutcomeError,
    UploadResult,
    id_from_url,
)

log = logging.getLogger("rossflow.ingest")

KIND = "ingest-upload"


def namespace_for(base_url: str) -> str:
    """``https://acme.rossum.app/api`` → ``acme.rossum.app/api`` (one ledger, many orgs)."""
    parts = urlsplit(base_url)
    return f"{parts.netloc}{parts.path.rstrip('/')}" or base_url


def dedupe_key(namespace: str, queue_id: int, sha256: str) -> str:
    return f"ingest:{namespace}:{queue_id}:{sha256}"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Uploader:
    """Upload and wait steps for the items of one upload thread (async, one Rossum client)."""

    def __init__(
        self,
        client: RossumClient,
        ledger: Ledger,
        state: IngestState,
        *,
        run_id: str,
        options: IngestOptions,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.state = state
        self.run_id = run_id
        self.options = options
        self.namespace = namespace_for(client.base_url)
        self.sent = 0
        self.reconciled = 0

    # -- lookups -----------------------------------------------------------------------------
    async def find_existing(
        self, queue_id: int, sha256: str, names: Iterable[str], since: float | None
    ) -> dict[str, Any] | None:
        """The document/annotations already in Rossum for this content and queue, if any."""
        for name in dict.fromkeys(n for n in names if n):
            params: dict[str, Any] = {"original_file_name": name, "page_size": 100}
            if since is not None:
                params["created_at_after"] = iso(since - 600)  # generous for clock skew
            annotation_ids: list[int] = []
            documents: dict[int, int] = {}
            doc_names: dict[int, str] = {}
            async for doc in self.client.paginate("/v1/documents", params):
                for ann in doc.get("annotations") or []:
                    ann_id = id_from_url(ann)
                    annotation_ids.append(ann_id)
                    documents[ann_id] = int(doc["id"])
                    doc_names[ann_id] = doc.get("original_file_name") or name
            if not annotation_ids:
                continue
            async for ann in self.client.list_annotations(ids=annotation_ids):
                meta = ann.get("metadata") or {}
                if (
                    metadata_matches(meta, sha256, doc_names.get(int(ann["id"]), name))
                    and id_from_url(ann["queue"]) == queue_id
                ):
                    return {
                        "document_ids": [documents.get(ann["id"], 0)],
                        "annotation_ids": [int(ann["id"])],
                    }
        return None

    # -- ledger helpers ----------------------------------------------------------------------
    def _record(self, item: FileItem, source_uri: str, **extra: Any) -> dict[str, Any]:
        result = {
            "queue_id": item.queue_id,
            "sha256": item.sha256,
            "size": item.size,
            "file_name": posixpath.basename(item.rel),
            "source_uri": source_uri,
            "run_id": self.run_id,
            "at": iso(time.time()),
        }
        result.update(extra)
        return result

    def _adopt(self, item: FileItem, effect: Effect, source_uri: str) -> None:
        """Take over what the ledger records for this content: an upload in flight (wait for
        its task) or a finished one (a DUPLICATE naming the annotation it became)."""
        result = effect.result
        if result.get("phase") == "sent":
            item.task_url = result.get("task_url")
            item.upload_index = result.get("upload_index")
            if result.get("source_uri") != source_uri:
                item.note = f"identical content is being imported from {result.get('source_uri')}"
            return
        self._apply_ids(item, result)
        self._mark_earlier(item, result.get("source_uri"), result, source_uri)

    @staticmethod
    def _mark_earlier(
        item: FileItem,
        uploaded_from: str | None,
        result: dict[str, Any] | None,
        source_uri: str,
    ) -> None:
        """Outcome of a file whose content this run did not send: DUPLICATE, naming the
        annotation and where (and when) it came from."""
        item.outcome = DUPLICATE
        annotations = ", ".join(str(a) for a in item.annotation_ids) or "?"
        when = f" at {result['at']}" if result and result.get("at") else ""
        if uploaded_from == source_uri:
            item.reason = "uploaded_earlier"
            item.message = (
                f"this file was uploaded to queue {item.queue_id} by an earlier run{when}: "
                f"annotation {annotations}"
            )
        else:
            item.reason = "duplicate_content"
            item.message = (
                f"identical content was already uploaded to queue {item.queue_id} from "
                f"{uploaded_from}{when}: annotation {annotations}"
            )

    async def _missing_annotations(self, annotation_ids: list[int]) -> list[str]:
        """The ledger's annotations that no longer exist in Rossum, each with why."""
        missing = []
        for ann_id in annotation_ids:
            try:
                ann = await self.client.get_annotation(ann_id)
            except NotFoundError:
                missing.append(f"annotation {ann_id} answers 404")
                continue
            if ann.get("status") in ("deleted", "purged"):
                missing.append(f"annotation {ann_id} is {ann['status']}")
        return missing

    @staticmethod
    def _apply_ids(item: FileItem, result: dict[str, Any]) -> None:
        docs = result.get("document_ids") or []
        item.document_id = int(docs[0]) if docs else None
        item.annotation_ids = [int(a) for a in result.get("annotation_ids") or []]

    def release(self, item: FileItem) -> None:
        if item.lease and item.upload_key:
            self.state.release_lease(item.upload_key, item.lease)
            item.lease = None

    # -- upload ------------------------------------------------------------------------------
    async def upload(
        self, item: FileItem, content: SpooledContent, rule: RoutingRule | None, source_uri: str
    ) -> None:
        """Send ``item`` (or adopt what the ledger/Rossum already has). Sets ``task_url``, a
        final outcome, or ``waiting_on``."""
        resend = await self._prepare(item, source_uri)
        if resend is not None:
            await self._send_one(item, content, rule, source_uri, resend=resend)

    async def _prepare(self, item: FileItem, source_uri: str) -> bool | None:
        """Lease and ledger checks before sending: None when ``item`` needs no upload (adopted,
        settled, or waiting on another holder); otherwise whether it is a *re-send* (a crashed
        run may have sent it already: send with ``reject_identical``)."""
        assert item.queue_id is not None and item.sha256 is not None
        key = dedupe_key(self.namespace, item.queue_id, item.sha256)
        item.upload_key = key
        token = f"{self.run_id}/{uuid.uuid4().hex[:12]}"
        holder = self.state.acquire_lease(key, token, self.run_id)
        if holder is not None:
            item.waiting_on = holder
            return None
        item.lease = token
        name = posixpath.basename(item.rel)
        effect = self.ledger.get(key)
        if effect is not None and effect.state == "done":
            ids = [int(a) for a in effect.result.get("annotation_ids") or []]
            missing = await self._missing_annotations(ids) if ids else []
            if not missing:
                self._adopt(item, effect, source_uri)
                return None
            if not self.options.reupload_missing:
                self._apply_ids(item, effect.result)
                item.fail(
                    ingest_errors.ANNOTATION_MISSING,
                    f"identical content was uploaded to queue {item.queue_id} from "
                    f"{effect.result.get('source_uri')} at {effect.result.get('at')}, but "
                    f"{'; '.join(missing)} in Rossum (deleted or purged there); not uploaded "
                    "again. To upload it again, set the ingest option reupload_missing: true "
                    "and drop the file once more.",
                    step="upload",
                )
                return None
            item.note = f"uploaded again: {'; '.join(missing)} (reupload_missing)"
        if effect is not None and effect.state == "started":
            found = await self.find_existing(
                item.queue_id, item.sha256, (effect.target, name), effect.created_at
            )
            if found is not None:
                self.reconciled += 1
                self._found(item, key, found, source_uri, "found in Rossum after a crash")
                return None
            return True
        return False

    async def _send_one(
        self,
        item: FileItem,
        content: SpooledContent,
        rule: RoutingRule | None,
        source_uri: str,
        *,
        resend: bool = False,
    ) -> None:
        """Upload one file alone. A re-send (after a crash or a lost answer) asks Rossum to
        ``reject_identical``: a 409 means the earlier request did create the document, which
        is then looked up and adopted instead of being duplicated."""
        assert item.queue_id is not None and item.sha256 is not None and item.upload_key
        key = item.upload_key
        name = posixpath.basename(item.rel)
        metadata = build_metadata(
            rule,
            source_uri=source_uri,
            sha256=item.sha256,
            size=content.size,
            name=name,
            run_id=self.run_id,
        )
        values = dict(rule.values) if rule and rule.values else None
        content_type = mime_type(item.file_type) if item.file_type else "application/octet-stream"
        attempt = 0
        while attempt < self.options.upload_attempts:
            attempt += 1
            self.ledger.begin(
                key, kind=KIND, subject=f"{item.queue_id}:{item.sha256}", step="upload", target=name
            )
            content.stream.seek(0)
            sent_before = item.sent_here
            try:
                self.sent += 1
                item.sent_here = True
                task_url = await self.client.upload_files(
                    item.queue_id,
                    [(name, content.stream, content_type)],
                    metadata=metadata,
                    values=values,
                    reject_identical=resend,
                )
            except ConflictError as exc:
                # reject_identical: a document with this name and content exists in the
                # organization; ours (the lost answer's) when it is in this queue.
                self.sent -= 1
                item.sent_here = sent_before
                found = await self.find_existing(item.queue_id, item.sha256, (name,), None)
                if found is not None:
                    self.reconciled += 1
                    self._found(
                        item,
                        key,
                        found,
                        source_uri,
                        "re-sent: Rossum answered 409 (identical); "
                        "adopted the document the earlier request created",
                    )
                    return
                log.info("upload of %s: %s; identical document is elsewhere", source_uri, exc)
                resend = False  # not in this queue: upload it here
                attempt -= 1
                continue
            except (UncertainOutcomeError, ServerError) as exc:
                # Rossum may have created the document: look before sending it again.
                log.warning("upload of %s: %s; reconciling", source_uri, exc)
                await asyncio.sleep(self.options.reconcile_delay_s)
                found = await self.find_existing(item.queue_id, item.sha256, (name,), None)
                if found is not None:
                    self.reconciled += 1
                    self._found(item, key, found, source_uri, "answer lost; found in Rossum")
                    return
                if attempt == self.options.upload_attempts:
                    # Leave the effect 'started': the next run reconciles before sending.
                    item.defer("upload_uncertain", ingest_errors.describe(exc), step="upload")
                    item.rossum = ingest_errors.rossum_detail(exc)
                    return
                resend = True
                continue
            except RossumTransportError as exc:  # provably not sent
                self.ledger.finish(
                    key,
                    ok=False,
                    result=self._record(
                        item, source_uri, phase="not_sent", error=ingest_errors.describe(exc)
                    ),
                )
                item.defer("rossum_unreachable", ingest_errors.describe(exc), step="upload")
                return
            except RateLimitedError as exc:
                self.ledger.finish(
                    key,
                    ok=False,
                    result=self._record(
                        item, source_uri, phase="not_sent", error=ingest_errors.describe(exc)
                    ),
                )
                item.defer("rate_limited", ingest_errors.describe(exc), step="upload")
                return
            except RossumAPIError as exc:
                detail = ingest_errors.rossum_detail(exc)
                self.ledger.finish(
                    key,
                    ok=False,
                    result=self._record(item, source_uri, phase="rejected", error=detail),
                )
                if ingest_errors.is_transient(exc):
                    item.defer("rossum_unavailable", ingest_errors.describe(exc), step="upload")
                    return
                item.fail(
                    ingest_errors.REJECTED,
                    f"Rossum refused the upload: HTTP {exc.status}"
                    + (f" {exc.detail}" if exc.detail else ""),
                    step="upload",
                    rossum=detail,
                )
                return
            self.ledger.finish(
                key, ok=True, result=self._record(item, source_uri, phase="sent", task_url=task_url)
            )
            item.task_url = task_url
            return

    # -- multi-file upload -------------------------------------------------------------------
    async def upload_group(
        self,
        members: Sequence[tuple[FileItem, SpooledContent, str]],
        rule: RoutingRule | None,
    ) -> None:
        """Send ``(item, content, source_uri)`` of one queue and rule in one upload request
        (see :func:`plan_uploads`). Every file keeps its own lease, ledger entry (recorded
        ``started`` before the request, ``sent`` with the shared task URL and its position
        once Rossum answers) and outcome; a file alone is sent as by :meth:`upload`."""
        ready: list[tuple[FileItem, SpooledContent, str, bool]] = []
        for item, content, source_uri in members:
            resend = await self._prepare(item, source_uri)
            if resend is not None:
                ready.append((item, content, source_uri, resend))
        fresh = [m for m in ready if not m[3]]
        if len(fresh) < 2:
            fresh = []
        for item, content, source_uri, resend in ready:
            if not fresh or resend:  # a re-send goes alone, with reject_identical
                await self._send_one(item, content, rule, source_uri, resend=resend)
        if fresh:
            await self._send_group([(i, c, u) for i, c, u, _ in fresh], rule)

    async def _send_group(
        self, members: list[tuple[FileItem, SpooledContent, str]], rule: RoutingRule | None
    ) -> None:
        items = [item for item, _, _ in members]
        queue_id = items[0].queue_id
        assert queue_id is not None and all(i.queue_id == queue_id for i in items)
        names = [posixpath.basename(item.rel) for item in items]
        entries = [
            file_entry(name=n, sha256=i.sha256 or "", size=c.size, source_uri=u)
            for n, (i, c, u) in zip(names, members, strict=True)
        ]
        metadata = build_group_metadata(rule, entries, run_id=self.run_id)
        if metadata_size(metadata) > MAX_METADATA_BYTES or len(set(names)) != len(names):
            for item, content, source_uri in members:  # planned elsewhere: send them alone
                await self._send_one(item, content, rule, source_uri)
            return
        values = dict(rule.values) if rule and rule.values else None
        files = [
            (n, c.stream, mime_type(i.file_type) if i.file_type else "application/octet-stream")
            for n, (i, c, _) in zip(names, members, strict=True)
        ]
        for (item, _, _), name in zip(members, names, strict=True):
            assert item.upload_key is not None
            self.ledger.begin(
                item.upload_key,
                kind=KIND,
                subject=f"{item.queue_id}:{item.sha256}",
                step="upload",
                target=name,
            )
        for _, content, _ in members:
            content.stream.seek(0)
        self.sent += len(items)
        for item in items:
            item.sent_here = True
        try:
            task_url = await self.client.upload_files(
                queue_id, files, metadata=metadata, values=values
            )
        except (UncertainOutcomeError, ServerError) as exc:
            # Rossum may have created the documents: look each up; re-send the others alone
            # with reject_identical (a 409 then means it was created after all).
            log.warning("upload of %d files: %s; reconciling", len(items), exc)
            await asyncio.sleep(self.options.reconcile_delay_s)
            for item, content, source_uri in members:
                assert item.upload_key is not None and item.sha256 is not None
                found = await self.find_existing(
                    queue_id, item.sha256, (posixpath.basename(item.rel),), None
                )
                if found is not None:
                    self.reconciled += 1
                    self._found(item, item.upload_key, found, source_uri, "answer lost; found")
                else:
                    await self._send_one(item, content, rule, source_uri, resend=True)
            return
        except (RossumTransportError, RateLimitedError) as exc:  # provably not sent
            reason = "rate_limited" if isinstance(exc, RateLimitedError) else "rossum_unreachable"
            for item, _, source_uri in members:
                assert item.upload_key is not None
                self.ledger.finish(
                    item.upload_key,
                    ok=False,
                    result=self._record(
                        item, source_uri, phase="not_sent", error=ingest_errors.describe(exc)
                    ),
                )
                item.defer(reason, ingest_errors.describe(exc), step="upload")
            return
        except RossumAPIError as exc:
            # Rossum refused the request as a whole; nothing was created. Transient: retry
            # later. Otherwise send each file alone so that only the offending one fails.
            for item, _, source_uri in members:
                assert item.upload_key is not None
                self.ledger.finish(
                    item.upload_key,
                    ok=False,
                    result=self._record(
                        item, source_uri, phase="not_sent", error=ingest_errors.rossum_detail(exc)
                    ),
                )
            self.sent -= len(items)
            for item in items:
                item.sent_here = False
            if ingest_errors.is_transient(exc):
                for item in items:
                    item.defer("rossum_unavailable", ingest_errors.describe(exc), step="upload")
                return
            log.info("upload of %d files refused (%s); sending them one by one", len(items), exc)
            for item, content, source_uri in members:
                await self._send_one(item, content, rule, source_uri)
            return
        count = len(items)
        for index, (item, _, source_uri) in enumerate(members):
            assert item.upload_key is not None
            self.ledger.finish(
                item.upload_key,
                ok=True,
                result=self._record(
                    item,
                    source_uri,
                    phase="sent",
                    task_url=task_url,
                    upload_index=index,
                    upload_count=count,
                ),
            )
            item.task_url = task_url
            item.upload_index = index

    def _found(
        self, item: FileItem, key: str, found: dict[str, Any], source_uri: str, note: str
    ) -> None:
        result = self._record(item, source_uri, phase="imported", reconciled=True, **found)
        self.ledger.finish(key, ok=True, result=result)
        self._apply_ids(item, found)
        if item.sent_here:
            item.outcome = UPLOADED
            item.note = note
        else:  # an earlier (crashed) run sent it
            self._mark_earlier(item, source_uri, result, source_uri)
            item.note = note

    # -- wait --------------------------------------------------------------------------------
    async def wait(self, item: FileItem, source_uri: str) -> None:
        """Resolve ``task_url`` (or the other holder's outcome) within the task deadline."""
        try:
            if item.waiting_on is not None:
                await self._wait_other(item, source_uri)
            elif item.task_url is not None:
                await self._wait_task(item, source_uri)
        finally:
            self.release(item)

    async def _wait_task(self, item: FileItem, source_uri: str) -> None:
        assert item.task_url is not None
        await self._settle(item, source_uri, await self._resolve(item.task_url))

    async def wait_group(self, members: Sequence[tuple[FileItem, str]]) -> None:
        """Files of one multi-file upload (one task): poll the task and read the upload object
        once, then settle each file by its position in the upload."""
        try:
            task_url = members[0][0].task_url
            assert task_url is not None and all(i.task_url == task_url for i, _ in members)
            outcome = await self._resolve(task_url)
            for item, source_uri in members:
                try:
                    await self._settle(item, source_uri, outcome)
                except Exception as exc:  # one file's trouble never takes the others down
                    log.exception("waiting for %s failed", source_uri)
                    item.defer("unexpected_error", ingest_errors.describe(exc), step="wait")
        finally:
            for item, _ in members:
                self.release(item)

    async def _resolve(self, task_url: str) -> UploadResult | RossumError:
        try:
            return await self.client.resolve_upload(
                task_url, timeout_s=self.options.task_deadline_s
            )
        except RossumError as exc:
            return exc

    async def _ids_for(
        self, item: FileItem, result: UploadResult, expected: int | None
    ) -> dict[str, list[int]] | None:
        """The document and annotations of ``item`` in ``result``; None when the upload
        object does not tell for sure (then the file is looked up by name and content)."""
        index = item.upload_index
        docs = result.document_ids
        if index is None:
            return {"document_ids": docs, "annotation_ids": result.annotation_ids}
        if index >= len(docs) or (expected is not None and expected != len(docs)):
            return None
        doc = docs[index]
        anns = result.annotation_ids
        if not result.additional_document_ids and len(anns) == len(docs):
            return {"document_ids": [doc], "annotation_ids": [anns[index]]}
        # Hooks added documents (their annotations are listed too): ask which is whose.
        mine = [
            int(ann["id"])
            async for ann in self.client.list_annotations(ids=anns)
            if id_from_url(ann.get("document") or 0) == doc
        ]
        return {"document_ids": [doc], "annotation_ids": mine} if mine else None

    async def _settle(
        self, item: FileItem, source_uri: str, outcome: UploadResult | RossumError
    ) -> None:
        assert item.upload_key is not None and item.task_url is not None
        key = item.upload_key
        if isinstance(outcome, TaskFailedError):
            detail = ingest_errors.rossum_detail(outcome)
            self.ledger.finish(
                key,
                ok=False,
                result=self._record(item, source_uri, phase="import_failed", error=detail),
            )
            item.fail(
                ingest_errors.IMPORT_FAILED,
                f"Rossum's upload task failed: {outcome.detail or outcome}",
                step="wait",
                rossum=detail,
            )
            return
        if isinstance(outcome, DeadlineExceededError):
            item.defer("task_deadline", ingest_errors.describe(outcome), step="wait")
            return
        effect = self.ledger.get(key)
        ids = None
        if isinstance(outcome, UploadResult):
            expected = effect.result.get("upload_count") if effect else None
            ids = await self._ids_for(item, outcome, expected)
        elif not isinstance(outcome, NotFoundError):
            item.defer("rossum_unavailable", ingest_errors.describe(outcome), step="wait")
            return
        if ids is None:
            # The task expired (they live for a day), or the upload object does not map this
            # file for sure: the document tells.
            assert item.queue_id is not None and item.sha256 is not None
            found = await self.find_existing(
                item.queue_id, item.sha256, (posixpath.basename(item.rel),), None
            )
            if found is None:
                item.defer(
                    "task_expired" if isinstance(outcome, NotFoundError) else "upload_unmapped",
                    "the upload task is gone and no document was found"
                    if isinstance(outcome, NotFoundError)
                    else "the upload object does not list this file and no document was found",
                    step="wait",
                )
                return
            note = (
                "task expired; found in Rossum"
                if isinstance(outcome, NotFoundError)
                else "found in Rossum by name and content"
            )
            self._found(item, key, found, source_uri, note)
            return
        uploaded_from = (effect.result.get("source_uri") if effect else None) or source_uri
        self.ledger.finish(
            key,
            ok=True,
            result=self._record(
                item, uploaded_from, phase="imported", task_url=item.task_url, **ids
            ),
        )
        self._apply_ids(item, ids)
        if uploaded_from == source_uri and item.sent_here:
            item.outcome = UPLOADED
        else:  # sent by an earlier run (deferred, crashed) or from another file
            self._mark_earlier(item, uploaded_from, effect.result if effect else None, source_uri)

    async def _wait_other(self, item: FileItem, source_uri: str) -> None:
        """Another file (this run or another) holds the lease for identical content."""
        assert item.upload_key is not None
        key = item.upload_key
        deadline = time.monotonic() + self.options.task_deadline_s
        delay = 0.1
        while True:
            effect = self.ledger.get(key)
            if (
                effect is not None
                and effect.state == "done"
                and (effect.result.get("phase") == "imported")
            ):
                self._adopt(item, effect, source_uri)
                return
            if (
                effect is not None
                and effect.state == "failed"
                and (effect.result.get("phase") in ("rejected", "import_failed"))
            ):
                error = effect.result.get("error")
                item.fail(
                    ingest_errors.DUPLICATE_OF_REJECTED,
                    f"identical content from {effect.result.get('source_uri')} was refused by "
                    "Rossum",
                    step="upload",
                    rossum=error if isinstance(error, dict) else None,
                )
                return
            holder = self.state.lease_holder(key)
            holder_run = (holder or "").split("/", 1)[0]
            if (
                holder is None
                or holder != item.waiting_on
                or self.state.run_is_dead(holder_run, me=self.run_id)
            ):
                # The holder let go without a final outcome (it deferred, or it died).
                item.defer(
                    "identical_content_pending",
                    "identical content was being uploaded from another file; retry later",
                    step="upload",
                )
                return
            if time.monotonic() >= deadline:
                item.defer(
                    "identical_content_pending",
                    f"identical content is still being uploaded by {holder}",
                    step="wait",
                )
                return
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 1.5)
