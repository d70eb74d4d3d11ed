"""Business logic of the sandbox: auth, uploads, extraction, status changes, export.

Seeding is in :mod:`sandbox.seeding`; which hooks fire and what their replies change is in
:mod:`sandbox.hook_events` (``Sandbox.hook_events``), HTTP delivery in :mod:`sandbox.hooks`.

All methods run on the server's event-loop thread; the synchronous ones only touch SQLite and
never await, so they are atomic with respect to each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox import content as ct
from sandbox import seeding
from sandbox.config import MAX_TOKEN_LIFETIME_S, SandboxConfig
from sandbox.extraction import (
    apply_upload_values,
    extract_text,
    fill_content,
    parse_text,
)
from sandbox.faults import FaultInjector, RateLimiter, Stats
from sandbox.hook_events import HookEvents
from sandbox.hooks import HookDispatcher
from sandbox.lifecycle import COUNT_STATUSES, STAMPS
from sandbox.seeding import ORG_ID, SCHEMA_ID
from sandbox.store import Store
from sandbox.util import PH, ApiError, now_iso, public, ref, ref_id

log = logging.getLogger("sandbox")

MAX_METADATA_BYTES = 4096


def check_metadata(value: Any) -> dict[str, Any]:
    """Validate a metadata object (JSON object, at most 4 kB)."""
    if not isinstance(value, dict):
        raise ApiError(400, "metadata must be a JSON object")
    if len(json.dumps(value).encode()) > MAX_METADATA_BYTES:
        raise ApiError(400, "metadata larger than 4 kB")
    return value


class Sandbox:
    """State and behaviour of one sandbox instance."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.store = Store(config.db)
        self.dispatcher = HookDispatcher(config)
        self.faults = FaultInjector()
        self.limiter = RateLimiter()
        self.stats = Stats()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._extract_queue: asyncio.Queue[tuple[int, float]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._sindex: dict[int, dict[str, ct.Node]] = {}
        self._initial_settings = config.as_dict()
        self.hook_events = HookEvents(self)
        if self.store.get_meta("seeded") is None:
            seeding.seed_initial(self.store)

    # -- lifecycle ---------------------------------------------------------------------------
    async def startup(self) -> None:
        """Start background work (called from the app lifespan, i.e. in the server loop)."""
        await self.dispatcher.start()
        self._extract_queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._extraction_worker(), name="sandbox-extraction")
        now = time.monotonic()
        for aid in self.store.annotation_ids(["status=?"], ["importing"]):
            self._extract_queue.put_nowait((aid, now))
        for aid in self.store.annotation_ids(["status=?"], ["exporting"]):
            self.spawn(self.run_export_flow(aid, None))

    async def reset(self) -> None:
        """Fresh state for an in-memory sandbox: new DB (reseeded), default settings, no faults,
        stats, hook records or background work. Lets tests share one running server."""
        if self.config.db != ":memory:":
            raise ApiError(400, "reset is only available for in-memory sandboxes")
        await self._stop_background()
        self.store.close()
        self.store = Store(self.config.db)
        self._sindex.clear()
        seeding.seed_initial(self.store)
        self.config.update({k: v for k, v in self._initial_settings.items() if k != "db"})
        self.faults.clear()
        self.limiter.reset()
        self.stats.reset()
        self.dispatcher.records.clear()
        self._extract_queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._extraction_worker(), name="sandbox-extraction")

    async def _stop_background(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
        await self.dispatcher.stop()
        self.store.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference and logging failures."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("sandbox background task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until background tasks (hooks, exports) are done (used by tests)."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- lookups -----------------------------------------------------------------------------
    def get_or_404(self, kind: str, obj_id: int) -> dict[str, Any]:
        obj = self.store.get(kind, obj_id)
        if obj is None:
            raise ApiError(404, f"{kind} {obj_id} not found")
        return obj

    def annotation_or_404(self, ann_id: int) -> dict[str, Any]:
        ann = self.store.get_annotation(ann_id)
        if ann is None:
            raise ApiError(404, f"annotation {ann_id} not found")
        return ann

    def queue_view(self, queue: dict[str, Any]) -> dict[str, Any]:
        """Queue with computed ``counts`` and ``hooks``."""
        out = public(queue)
        counts = self.store.status_counts(queue["id"])
        out["counts"] = {s: counts.get(s, 0) for s in COUNT_STATUSES}
        hooks = [h["url"] for h in self.store.all("hooks") if queue["url"] in h.get("queues", [])]
        out["hooks"] = hooks
        out["webhooks"] = hooks
        return out

    def sindex(self, schema_id: int) -> dict[str, ct.Node]:
        cached = self._sindex.get(schema_id)
        if cached is None:
            schema = self.store.get("schemas", schema_id) or {"content": []}
            cached = self._sindex[schema_id] = ct.schema_index(schema["content"])
        return cached

    def invalidate_schema(self, schema_id: int) -> None:
        self._sindex.pop(schema_id, None)

    def alloc(self) -> ct.Alloc:
        """Node-id allocator backed by the global counter."""
        return lambda: self.store.next_id("nodes")

    # -- auth --------------------------------------------------------------------------------
    def check_password(self, username: str, password: str) -> dict[str, Any] | None:
        digest = hashlib.sha256(password.encode()).hexdigest()
        for user in self.store.all("users"):
            if user["username"] == username and user.get("_password_sha256") == digest:
                return user if user.get("is_active", True) else None
        return None

    def create_token(self, user_id: int, lifetime_s: float) -> str:
        key = secrets.token_hex(20)
        self.store.add_token(key, user_id, time.time() + lifetime_s)
        return key

    def login(self, username: str, password: str, max_lifetime: float | None) -> str | None:
        user = self.check_password(username, password)
        if user is None:
            return None
        lifetime = min(self.config.token_lifetime_s, MAX_TOKEN_LIFETIME_S)
        if max_lifetime is not None:
            lifetime = min(lifetime, max_lifetime)
        with self.store.tx():
            user["last_login"] = now_iso()
            self.store.put("users", user)
            return self.create_token(user["id"], lifetime)

    def user_for_token(self, key: str) -> dict[str, Any] | None:
        uid = self.store.token_user(key, time.time())
        return None if uid is None else self.store.get("users", uid)

    # -- uploads -----------------------------------------------------------------------------
    def upload_queue(self, queue_id: int) -> dict[str, Any]:
        queue = self.get_or_404("queues", queue_id)
        if queue.get("status", "active") != "active":
            raise ApiError(400, f"queue {queue_id} is not active")
        return queue

    def create_upload(
        self,
        queue: dict[str, Any],
        files: list[tuple[str, bytes, str]],
        user: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        values: dict[str, str] | None = None,
        reject_identical: bool = False,
    ) -> tuple[dict[str, Any], list[tuple[int, int]], dict[str, Any]]:
        """Documents, importing annotations, upload and task -> (upload, [(doc, ann)], task)."""
        if not files:
            raise ApiError(400, "no file in the request")
        if reject_identical:
            if len(files) != 1:
                raise ApiError(400, "reject_identical allows a single file only")
            name, body, _ = files[0]
            if self.store.has_identical(name, hashlib.sha256(body).hexdigest()):
                raise ApiError(409, f"identical document {name!r} already exists")
        schema_id = ref_id(queue["schema"]) or SCHEMA_ID
        sindex = self.sindex(schema_id)
        schema = self.store.get("schemas", schema_id) or {"content": []}
        now = now_iso()
        created: list[tuple[int, int]] = []
        fail_task = any("SANDBOX_FAIL_UPLOAD" in name for name, _, _ in files)
        with self.store.tx():
            upload_id = self.store.next_id("uploads")
            task_id = self.store.next_id("tasks")
            alloc = self.alloc()
            for name, body, mime in files:
                if fail_task:
                    break
                doc_id = self.store.next_id("documents")
                ann_id = self.store.next_id("annotations")
                doc = self.new_document(doc_id, name, mime, user["id"], now, [ann_id])
                self.store.insert_document(doc, body, hashlib.sha256(body).hexdigest())
                tree = ct.empty_content(schema["content"], ann_id, alloc)
                apply_upload_values(tree, sindex, values or {})
                ann = self.new_annotation(ann_id, doc, queue, schema_id, user["id"], now)
                ann["metadata"] = metadata or {}
                self.store.insert_annotation(ann, tree)
                created.append((doc_id, ann_id))
            upload = {
                "id": upload_id,
                "url": ref("uploads", upload_id),
                "queue": queue["url"],
                "creator": ref("users", user["id"]),
                "created_at": now,
                "email": None,
                "organization": ref("organizations", ORG_ID),
                "documents": [ref("documents", d) for d, _ in created],
                "additional_documents": [],
                "annotations": [ref("annotations", a) for _, a in created],
            }
            self.store.put("uploads", upload)
            expires = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            task = {
                "id": task_id,
                "url": ref("tasks", task_id),
                "type": "upload_created",
                "status": "failed" if fail_task else "running",
                "expires_at": expires,
                "detail": f"Upload failed (error id {uuid.uuid4()})." if fail_task else None,
                "content": {"upload": upload["url"]},
                "result_url": None if fail_task else upload["url"],
                "_ready_at": time.time() + self.config.upload_task_delay_s,
            }
            if fail_task:
                task["code"] = "upload_failed"
            self.store.put("tasks", task)
        if self._extract_queue is not None:
            for _doc, ann_id in created:
                self._extract_queue.put_nowait((ann_id, time.monotonic()))
        return upload, created, task

    def new_document(
        self, doc_id: int, name: str, mime: str, user_id: int, now: str, ann_ids: list[int]
    ) -> dict[str, Any]:
        return {
            "id": doc_id,
            "url": ref("documents", doc_id),
            "s3_name": secrets.token_hex(16),
            "parent": None,
            "email": None,
            "annotations": [ref("annotations", a) for a in ann_ids],
            "mime_type": mime,
            "creator": ref("users", user_id),
            "created_at": now,
            "arrived_at": now,
            "original_file_name": name,
            "content": f"{PH}/v1/documents/{doc_id}/content",
            "attachment_status": None,
            "metadata": {},
        }

    def new_annotation(
        self,
        ann_id: int,
        doc: dict[str, Any],
        queue: dict[str, Any],
        schema_id: int,
        user_id: int,
        now: str,
        status: str = "importing",
    ) -> dict[str, Any]:
        return {
            "document": doc["url"],
            "id": ann_id,
            "queue": queue["url"],
            "schema": ref("schemas", schema_id),
            "relations": [],
            "pages": [ref("pages", ann_id)],
            "creator": ref("users", user_id),
            "modifier": None,
            "modified_by": None,
            "assigned_at": None,
            "created_at": now,
            "confirmed_at": None,
            "deleted_at": None,
            "exported_at": None,
            "export_failed_at": None,
            "modified_at": None,
            "purged_at": None,
            "rejected_at": None,
            "confirmed_by": None,
            "deleted_by": None,
            "exported_by": None,
            "purged_by": None,
            "rejected_by": None,
            "status": status,
            "rir_poll_id": secrets.token_hex(12),
            "messages": None,
            "url": ref("annotations", ann_id),
            "content": f"{PH}/v1/annotations/{ann_id}/content",
            "suggested_edit": None,
            "time_spent": 0,
            "metadata": {},
            "automated": False,
            "related_emails": [],
            "email": None,
            "automation_blocker": None,
            "email_thread": None,
            "has_email_thread_with_replies": False,
            "has_email_thread_with_new_replies": False,
            "organization": ref("organizations", ORG_ID),
            "automatically_rejected": False,
            "prediction": None,
            "assignees": [],
            "labels": [],
            "restricted_access": False,
            "training_enabled": True,
            "einvoice": False,
            "_arrived_at": doc["arrived_at"],
            "_file_name": doc["original_file_name"],
        }

    def task_view(self, task: dict[str, Any]) -> dict[str, Any]:
        out = public(task)
        if out["status"] == "running" and time.time() >= task.get("_ready_at", 0):
            out["status"] = "succeeded"
        return out

    # -- extraction --------------------------------------------------------------------------
    def enqueue_extraction(self, ann_ids: list[int]) -> None:
        """Queue ``importing`` annotations for extraction (no-op before startup)."""
        if self._extract_queue is None:
            return
        for ann_id in ann_ids:
            self._extract_queue.put_nowait((ann_id, time.monotonic()))

    async def _extraction_worker(self) -> None:
        assert self._extract_queue is not None
        while True:
            ann_id, queued_at = await self._extract_queue.get()
            wait = queued_at + self.config.extraction_delay_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            # One task per document, so a slow initialize hook does not hold up the others.
            self.spawn(self.extract(ann_id))

    async def extract(self, ann_id: int) -> None:
        """importing -> to_review (or failed_import, or automation)."""
        ann = self.store.get_annotation(ann_id)
        if ann is None or ann["status"] != "importing":
            return
        doc_id = ref_id(ann["document"]) or 0
        body = self.store.get_document_body(doc_id) or (b"", "application/octet-stream")
        text = await asyncio.to_thread(extract_text, body[0], body[1])
        ann = self.store.get_annotation(ann_id)
        if ann is None or ann["status"] != "importing":
            return
        schema_id = ref_id(ann["schema"]) or SCHEMA_ID
        sindex = self.sindex(schema_id)
        parsed = parse_text(text, sindex)
        if parsed.failed:
            self.set_status(
                ann,
                "failed_import",
                None,
                messages=[
                    {
                        "type": "error",
                        "content": "Import failed: the document could not be processed.",
                        "id": "all",
                    }
                ],
            )
            return
        tree = self.store.get_content(ann_id)
        fill_content(tree, sindex, parsed, ann_id, self.alloc())
        self.store.save_content(ann_id, tree)
        hooks = self.hook_events.hooks_for(
            ref_id(ann["queue"]) or 0, "annotation_content", "initialize"
        )
        ok = True
        if hooks:
            ok, _messages = await self.hook_events.run_content_hooks(
                ann_id, "initialize", hooks, retry=True
            )
            ann = self.store.get_annotation(ann_id)
            if ann is None or ann["status"] != "importing":
                return
        queue = self.store.get("queues", ref_id(ann["queue"]) or 0) or {}
        if ok and self.can_automate(queue, ann_id, sindex):
            ann["automated"] = True
            if queue.get("use_confirmed_state"):
                self.set_status(ann, "confirmed", None)
            else:
                await self.start_export(ann, None, sync=False)
            return
        self.set_status(ann, "to_review", None)

    def can_automate(self, queue: dict[str, Any], ann_id: int, sindex: dict[str, ct.Node]) -> bool:
        """Automation level always/confident and no validation errors (spec §6.3)."""
        level = queue.get("automation_level", "never")
        if level not in ("always", "confident"):
            return False
        ann = self.store.get_annotation(ann_id) or {}
        if any(m.get("type") == "error" for m in ann.get("messages") or []):
            return False
        for node, parent in ct.iter_nodes(self.store.get_content(ann_id)):
            if node.get("category") != "datapoint":
                continue
            snode = sindex.get(node["schema_id"]) or {}
            empty = not (node.get("content") or {}).get("value")
            in_table = parent is not None and parent.get("category") == "tuple"
            required = (snode.get("constraints") or {}).get("required", False)
            if required and empty and not in_table:
                return False
            if level == "confident" and not node.get("validation_sources") and not empty:
                return False
        return True

    # -- status changes ----------------------------------------------------------------------
    def set_status(
        self,
        ann: dict[str, Any],
        status: str,
        user_id: int | None,
        *,
        messages: list[dict[str, Any]] | None = None,
        fire: bool = True,
    ) -> str:
        """Move ``ann`` to ``status``, stamping ``*_at``/``*_by``/``modified_at``; fire hooks."""
        previous = ann["status"]
        now = now_iso()
        ann["status"] = status
        ann["modified_at"] = now
        user = ref("users", user_id)
        if user is not None:
            ann["modifier"] = ann["modified_by"] = user
        stamp = STAMPS.get(status)
        if stamp is not None:
            ann[stamp[0]] = now
            if stamp[1] is not None:
                ann[stamp[1]] = user
        if messages is not None:
            ann["messages"] = messages
        self.store.save_annotation(ann)
        if fire and previous != status:
            self.hook_events.fire_status_hooks(ann, previous)
        return previous

    async def start_export(self, ann: dict[str, Any], user_id: int | None, *, sync: bool) -> None:
        """Confirm-style export: no export hooks -> exported; else exporting + hooks."""
        hooks = self.hook_events.hooks_for(
            ref_id(ann["queue"]) or 0, "annotation_content", "export"
        )
        if not hooks:
            self.set_status(ann, "exported", user_id)
            return
        self.set_status(ann, "exporting", user_id)
        if sync:
            await self.run_export_flow(ann["id"], user_id)
        else:
            self.spawn(self.run_export_flow(ann["id"], user_id))

    async def run_export_flow(self, ann_id: int, user_id: int | None) -> None:
        """exporting -> (annotation_content.export hooks) -> exported | failed_export."""
        ann = self.store.get_annotation(ann_id)
        if ann is None:
            return
        if ann["status"] != "exporting":
            self.set_status(ann, "exporting", user_id)
        hooks = self.hook_events.hooks_for(
            ref_id(ann["queue"]) or 0, "annotation_content", "export"
        )
        ok, messages = await self.hook_events.run_content_hooks(ann_id, "export", hooks, retry=True)
        ann = self.store.get_annotation(ann_id)
        if ann is None or ann["status"] != "exporting":
            return
        if ok:
            self.set_status(ann, "exported", user_id, messages=messages or ann.get("messages"))
        else:
            self.set_status(ann, "failed_export", user_id, messages=messages)
