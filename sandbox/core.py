"""Business logic of the sandbox: seeding, auth, uploads, extraction, status changes, hooks.

All methods run on the server's event-loop thread; the synchronous ones only touch SQLite and
never await, so they are atomic with respect to each other.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import hashlib
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from sandbox import content as ct
from sandbox.config import DEFAULT_PASSWORD, DEFAULT_USERNAME, MAX_TOKEN_LIFETIME_S, SandboxConfig
from sandbox.extraction import (
    apply_upload_values,
    confidence,
    extract_text,
    fill_content,
    parse_text,
)
from sandbox.faults import FaultInjector, RateLimiter, Stats
from sandbox.hooks import HookCallResult, HookDispatcher
from sandbox.lifecycle import COUNT_STATUSES, STAMPS
from sandbox.store import Store
from sandbox.util import PH, ApiError, now_iso, public, ref, ref_id, resolve

log = logging.getLogger("sandbox")

ORG_ID = 1
WORKSPACE_ID = 1
ADMIN_ID = 1
SCHEMA_ID = 1
QUEUE_CONFIRMED_ID = 1
QUEUE_AUTO_EXPORT_ID = 2
MAX_METADATA_BYTES = 4096


def load_invoice_schema() -> dict[str, Any]:
    """The seeded invoice schema (``sandbox/schema_invoice.json``)."""
    text = resources.files("sandbox").joinpath("schema_invoice.json").read_text("utf-8")
    return json.loads(text)


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
        if self.store.get_meta("seeded") is None:
            self.seed_initial()

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
        self.seed_initial()
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

    # -- seeding -----------------------------------------------------------------------------
    def seed_initial(self) -> None:
        """Organization, workspace, admin user, invoice schema and the two queues."""
        now = now_iso()
        admin = ref("users", ADMIN_ID)
        schema_def = load_invoice_schema()
        with self.store.tx():
            for kind in ("organizations", "workspaces", "users", "schemas", "queues"):
                self.store.next_id(kind)
            self.store.next_id("queues")
            self.store.put(
                "organizations",
                {
                    "id": ORG_ID,
                    "url": ref("organizations", ORG_ID),
                    "name": "Rossflow Sandbox",
                    "workspaces": [ref("workspaces", WORKSPACE_ID)],
                    "users": [admin],
                    "organization_group": f"{PH}/v1/organization_groups/1",
                    "ui_settings": {},
                    "metadata": {},
                    "created_at": now,
                    "trial_expires_at": None,
                    "is_trial": False,
                    "oidc_provider": None,
                    "creator": admin,
                    "modified_by": admin,
                    "modified_at": now,
                },
            )
            self.store.put(
                "workspaces",
                {
                    "id": WORKSPACE_ID,
                    "name": "Rossflow",
                    "url": ref("workspaces", WORKSPACE_ID),
                    "autopilot": False,
                    "organization": ref("organizations", ORG_ID),
                    "queues": [
                        ref("queues", QUEUE_CONFIRMED_ID),
                        ref("queues", QUEUE_AUTO_EXPORT_ID),
                    ],
                    "metadata": {},
                },
            )
            self.store.put(
                "users",
                self.new_user(
                    ADMIN_ID,
                    DEFAULT_USERNAME,
                    DEFAULT_PASSWORD,
                    "Sandbox",
                    "Admin",
                    [QUEUE_CONFIRMED_ID, QUEUE_AUTO_EXPORT_ID],
                ),
            )
            self.store.put(
                "schemas",
                {
                    "id": SCHEMA_ID,
                    "name": schema_def["name"],
                    "queues": [
                        ref("queues", QUEUE_CONFIRMED_ID),
                        ref("queues", QUEUE_AUTO_EXPORT_ID),
                    ],
                    "url": ref("schemas", SCHEMA_ID),
                    "content": schema_def["content"],
                    "metadata": {},
                    "modified_by": admin,
                    "modified_at": now,
                },
            )
            self.store.put(
                "queues",
                self.new_queue(
                    QUEUE_CONFIRMED_ID,
                    "Invoices",
                    SCHEMA_ID,
                    WORKSPACE_ID,
                    use_confirmed_state=True,
                ),
            )
            self.store.put(
                "queues",
                self.new_queue(
                    QUEUE_AUTO_EXPORT_ID,
                    "Invoices (auto-export)",
                    SCHEMA_ID,
                    WORKSPACE_ID,
                    use_confirmed_state=False,
                ),
            )
            self.store.set_meta("seeded", now)

    def new_user(
        self,
        uid: int,
        username: str,
        password: str,
        first: str = "",
        last: str = "",
        queues: list[int] | None = None,
    ) -> dict[str, Any]:
        now = now_iso()
        return {
            "id": uid,
            "url": ref("users", uid),
            "first_name": first,
            "last_name": last,
            "email": username,
            "phone_number": None,
            "date_joined": now,
            "username": username,
            "groups": [],
            "organization": ref("organizations", ORG_ID),
            "queues": [ref("queues", q) for q in queues or []],
            "is_active": True,
            "last_login": None,
            "ui_settings": {},
            "metadata": {},
            "oidc_id": None,
            "deleted": False,
            "auth_type": "password",
            "_password_sha256": hashlib.sha256(password.encode()).hexdigest(),
        }

    def new_queue(
        self, qid: int, name: str, schema_id: int, workspace_id: int | None, **fields: Any
    ) -> dict[str, Any]:
        now = now_iso()
        queue: dict[str, Any] = {
            "id": qid,
            "name": name,
            "url": ref("queues", qid),
            "workspace": ref("workspaces", workspace_id),
            "connector": None,
            "webhooks": [],
            "hooks": [],
            "schema": ref("schemas", schema_id),
            "inbox": None,
            "users": [ref("users", ADMIN_ID)],
            "session_timeout": "01:00:00",
            "rir_url": None,
            "rir_params": None,
            "dedicated_engine": None,
            "generic_engine": None,
            "engine": None,
            "counts": {},
            "default_score_threshold": 0.8,
            "automation_enabled": False,
            "automation_level": "never",
            "locale": "en_GB",
            "metadata": {},
            "use_confirmed_state": False,
            "document_lifetime": None,
            "delete_after": None,
            "status": "active",
            "modified_by": ref("users", ADMIN_ID),
            "modified_at": now,
            "settings": {},
            "workflows": [],
        }
        queue.update(fields)
        return queue

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
        hooks = self.hooks_for(ref_id(ann["queue"]) or 0, "annotation_content", "initialize")
        ok = True
        if hooks:
            ok, _messages = await self.run_content_hooks(ann_id, "initialize", hooks, retry=True)
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
            self.fire_status_hooks(ann, previous)
        return previous

    async def start_export(self, ann: dict[str, Any], user_id: int | None, *, sync: bool) -> None:
        """Confirm-style export: no export hooks -> exported; else exporting + hooks."""
        hooks = self.hooks_for(ref_id(ann["queue"]) or 0, "annotation_content", "export")
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
        hooks = self.hooks_for(ref_id(ann["queue"]) or 0, "annotation_content", "export")
        ok, messages = await self.run_content_hooks(ann_id, "export", hooks, retry=True)
        ann = self.store.get_annotation(ann_id)
        if ann is None or ann["status"] != "exporting":
            return
        if ok:
            self.set_status(ann, "exported", user_id, messages=messages or ann.get("messages"))
        else:
            self.set_status(ann, "failed_export", user_id, messages=messages)

    # -- hooks -------------------------------------------------------------------------------
    def hooks_for(self, queue_id: int, event: str, action: str) -> list[dict[str, Any]]:
        """Active hooks of the queue subscribed to ``event``/``event.action``, run_after order."""
        queue_url = ref("queues", queue_id)
        wanted = {event, f"{event}.{action}"}
        hooks = [
            h
            for h in self.store.all("hooks")
            if h.get("active", True)
            and queue_url in (h.get("queues") or [])
            and wanted & set(h.get("events") or [])
        ]
        return order_by_run_after(hooks)

    def hook_payload(
        self,
        hook: dict[str, Any],
        event: str,
        action: str,
        ann: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Rossum's hook request body (spec §9.2), URLs resolved against the public base."""
        base = self.config.public_base_url
        payload: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "timestamp": now_iso(),
            "base_url": base[: -len("/api")] if base.endswith("/api") else base,
        }
        owner = ref_id(hook.get("token_owner"))
        if owner is not None:
            lifetime = hook.get("token_lifetime_s") or 600
            payload["rossum_authorization_token"] = self.create_token(owner, float(lifetime))
        payload.update(
            {
                "hook": hook["url"],
                "settings": hook.get("settings") or {},
                "secrets": hook.get("_secrets") or {},
                "action": action,
                "event": event,
            }
        )
        payload["annotation"] = public(ann)
        doc = self.store.get_document(ref_id(ann["document"]) or 0) or {}
        payload["document"] = {k: v for k, v in public(doc).items() if k != "annotations"}
        payload.update(extra or {})
        for name in hook.get("sideload") or []:
            payload[name] = self._sideload_for_hook(name, ann)
        return resolve(payload, base)

    def _sideload_for_hook(self, name: str, ann: dict[str, Any]) -> list[Any]:
        if name == "queues":
            q = self.store.get("queues", ref_id(ann["queue"]) or 0)
            return [self.queue_view(q)] if q else []
        if name == "schemas":
            s = self.store.get("schemas", ref_id(ann["schema"]) or 0)
            return [s] if s else []
        if name == "modifiers":
            u = self.store.get("users", ref_id(ann.get("modifier")) or 0)
            return [public(u)] if u else []
        return []

    def fire_status_hooks(self, ann: dict[str, Any], previous: str) -> None:
        """Schedule ``annotation_status.changed`` deliveries (never blocks the caller)."""
        hooks = self.hooks_for(ref_id(ann["queue"]) or 0, "annotation_status", "changed")
        if not hooks:
            return
        snapshot = copy.deepcopy(ann)
        snapshot["previous_status"] = previous
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.spawn(self._deliver_status(hooks, snapshot))

    async def _deliver_status(self, hooks: list[dict[str, Any]], snapshot: dict[str, Any]) -> None:
        for hook in hooks:
            payload = self.hook_payload(hook, "annotation_status", "changed", snapshot)
            await self.dispatcher.deliver(hook, payload, retry=True)

    async def run_content_hooks(
        self, ann_id: int, action: str, hooks: list[dict[str, Any]], *, retry: bool
    ) -> tuple[bool, list[dict[str, Any]]]:
        """Call ``annotation_content.<action>`` hooks in order, applying their operations.

        Returns (ok, messages): not ok when a hook fails (after retries) or answers an ``error``
        message; the chain stops at the first failure.
        """
        messages: list[dict[str, Any]] = []
        updated: list[int] = []
        for hook in hooks:
            ann = self.store.get_annotation(ann_id)
            if ann is None:
                return False, messages
            tree = self.store.get_content(ann_id)
            snap = dict(ann)
            snap["content"] = tree
            payload = self.hook_payload(
                hook,
                "annotation_content",
                action,
                snap,
                {"updated_datapoints": [] if action == "export" else list(updated)},
            )
            result = await self.dispatcher.deliver(hook, payload, retry=retry)
            hook_msgs = [self._hook_message(m, hook, payload) for m in result.messages()]
            messages += hook_msgs
            if not result.ok:
                if not any(m.get("type") == "error" for m in hook_msgs):
                    messages.append(self._failure_message(hook, payload, result))
                self._store_messages(ann_id, messages)
                return False, messages
            ops = result.operations()
            if ops:
                ann_now = self.store.get_annotation(ann_id)
                if ann_now is not None:
                    tree = self.store.get_content(ann_id)
                    try:
                        sindex = self.sindex(ref_id(ann_now["schema"]) or SCHEMA_ID)
                        updated += ct.apply_operations(tree, ops, sindex, ann_id, self.alloc())
                        self.store.save_content(ann_id, tree)
                    except ApiError as exc:
                        messages.append(
                            {
                                "type": "error",
                                "id": "all",
                                "content": f"Invalid operations from hook: {exc.message}",
                            }
                        )
            if any(m.get("type") == "error" for m in hook_msgs) or any(
                m.get("type") == "error" for m in messages
            ):
                self._store_messages(ann_id, messages)
                return False, messages
        if messages:
            self._store_messages(ann_id, messages)
        return True, messages

    def _store_messages(self, ann_id: int, messages: list[dict[str, Any]]) -> None:
        ann = self.store.get_annotation(ann_id)
        if ann is not None:
            ann["messages"] = messages
            self.store.save_annotation(ann)

    @staticmethod
    def _hook_message(
        msg: dict[str, Any], hook: dict[str, Any], payload: dict[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {k: msg[k] for k in ("id", "type", "content") if k in msg}
        out["content"] = str(out.get("content", ""))[:4096]
        out.setdefault("id", "all")
        out["detail"] = msg.get("detail") or {
            "hook_id": hook["id"],
            "hook_name": hook.get("name"),
            "request_id": payload["request_id"],
            "is_exception": False,
            "timestamp": payload["timestamp"],
        }
        return out

    @staticmethod
    def _failure_message(
        hook: dict[str, Any], payload: dict[str, Any], result: HookCallResult
    ) -> dict[str, Any]:
        what = f"HTTP {result.status_code}" if result.status_code else (result.error or "error")
        return {
            "id": "all",
            "type": "error",
            "content": f"Hook '{hook.get('name')}' failed: {what}",
            "detail": {
                "hook_id": hook["id"],
                "hook_name": hook.get("name"),
                "request_id": payload["request_id"],
                "is_exception": True,
                "timestamp": payload["timestamp"],
            },
        }

    # -- bulk seeding (admin) ----------------------------------------------------------------
    def seed_annotations(self, queue_id: int, count: int, status: str) -> list[int]:
        """Create ``count`` annotations with documents and varied content in one transaction.

        Content trees are rendered from per-shape JSON templates (see ``TreeTemplate``) and
        inserted with ``executemany``, so 10,000 annotations take a few seconds.
        """
        queue = self.get_or_404("queues", queue_id)
        schema_id = ref_id(queue["schema"]) or SCHEMA_ID
        schema = self.store.get("schemas", schema_id) or {"content": []}
        now = now_iso()
        user = ref("users", ADMIN_ID)
        rng = random.Random(count * 7919 + queue_id)
        templates: dict[tuple[Any, ...], ct.TreeTemplate] = {}
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with self.store.tx():
                first_doc = self.store.next_id("documents", count)
                first_ann = self.store.next_id("annotations", count)
                samples = []
                nodes_needed = 0
                for i in range(count):
                    text, header, rows = sample_invoice(first_ann + i, rng)
                    key = (tuple(header), len(rows), tuple(rows[0]) if rows else ())
                    tpl = templates.get(key)
                    if tpl is None:
                        tpl = templates[key] = ct.TreeTemplate(
                            schema["content"], list(header), len(rows), list(key[2])
                        )
                    samples.append((text, header, rows, tpl))
                    nodes_needed += tpl.node_count
                node = self.store.next_id("nodes", max(1, nodes_needed))
                docs: list[tuple[dict[str, Any], bytes, str]] = []
                anns: list[tuple[dict[str, Any], str]] = []
                for i, (text, header, rows, tpl) in enumerate(samples):
                    doc_id, ann_id = first_doc + i, first_ann + i
                    body = text.encode()
                    doc = self.new_document(
                        doc_id, f"invoice_{ann_id}.txt", "text/plain", ADMIN_ID, now, [ann_id]
                    )
                    docs.append((doc, body, hashlib.sha256(body).hexdigest()))
                    tree_json = tpl.render(ann_id, node, header, rows)
                    node += tpl.node_count
                    ann = self.new_annotation(ann_id, doc, queue, schema_id, ADMIN_ID, now, status)
                    if status not in ("importing", "to_review", "failed_import"):
                        ann["modified_at"] = now
                        ann["modifier"] = ann["modified_by"] = user
                    if status in ("confirmed", "exported", "exporting", "failed_export"):
                        ann["confirmed_at"], ann["confirmed_by"] = now, user
                    stamp = STAMPS.get(status)
                    if stamp is not None:
                        ann[stamp[0]] = now
                        if stamp[1] is not None:
                            ann[stamp[1]] = user
                    anns.append((ann, tree_json))
                self.store.insert_documents(docs)
                self.store.insert_annotations(anns)
        finally:
            if gc_was_enabled:
                gc.enable()
        ids = [first_ann + i for i in range(count)]
        if status == "importing" and self._extract_queue is not None:
            for ann_id in ids:
                self._extract_queue.put_nowait((ann_id, time.monotonic()))
        return ids


def order_by_run_after(hooks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Topological order over ``run_after`` (predecessors first), ties by id."""
    by_url = {h["url"]: h for h in hooks}
    done: set[str] = set()
    out: list[dict[str, Any]] = []

    def visit(hook: dict[str, Any], stack: set[str]) -> None:
        if hook["url"] in done or hook["url"] in stack:
            return
        stack.add(hook["url"])
        for dep in hook.get("run_after") or []:
            if dep in by_url:
                visit(by_url[dep], stack)
        done.add(hook["url"])
        out.append(hook)

    for hook in sorted(hooks, key=lambda h: h["id"]):
        visit(hook, set())
    return out


VENDORS = (
    ("ACME s.r.o.", "CZ12345678"),
    ("Globex GmbH", "DE811234567"),
    ("Initech Ltd", "GB123456789"),
    ("Umbrella Corp", "US-98-7654321"),
    ("Stark Industries", "US-12-3456789"),
    ("Wayne Enterprises", "US-55-1234567"),
    ("Hooli Europe B.V.", "NL123456789B01"),
    ("Soylent a.s.", "CZ87654321"),
    ("Vandelay Industries", "US-77-1112223"),
    ("Tyrell SARL", "FR12345678901"),
)
ITEMS = (
    "Consulting services",
    "Software licence",
    "Support hours",
    "Hardware",
    "Travel expenses",
    "Training",
    "Cloud hosting",
    "Office supplies",
    "Maintenance",
    "Design work",
)
CURRENCIES = ("EUR", "USD", "CZK", "GBP")


Cell = tuple[str, str, float]


def sample_invoice(
    n: int, rng: random.Random | None = None
) -> tuple[str, dict[str, Cell], list[dict[str, Cell]]]:
    """Deterministic, varied invoice number ``n``: its text (extraction convention) and the
    values extraction would produce, as (value, normalized_value, rir_confidence) per schema id.
    Used by bulk seeding, which skips parsing for speed."""
    rng = rng or random.Random(n)
    vendor, vat = VENDORS[rng.randrange(len(VENDORS))]
    issued = datetime(2024, 1, 1) + timedelta(days=rng.randrange(365))
    rows: list[dict[str, Cell]] = []
    lines = []
    net = 0
    for _ in range(rng.randint(1, 5)):
        qty = rng.randint(1, 20)
        price = rng.randint(500, 50000)  # cents
        total = qty * price
        net += total
        desc = ITEMS[rng.randrange(len(ITEMS))]
        cells = {
            "item_description": desc,
            "item_quantity": str(qty),
            "item_amount_base": f"{price / 100:.2f}",
            "item_amount_total": f"{total / 100:.2f}",
        }
        lines.append("Item: " + " | ".join(cells.values()))
        rows.append({k: (v, v, confidence(k, v)) for k, v in cells.items()})
    tax = net * 21 // 100
    currency = CURRENCIES[rng.randrange(len(CURRENCIES))]
    values = {
        "invoice_id": f"INV-{issued.year}-{n:06d}",
        "date_issue": issued.date().isoformat(),
        "date_due": (issued + timedelta(days=30)).date().isoformat(),
        "order_id": f"PO-{rng.randint(1000, 9999)}",
        "document_type": "tax_invoice",
        "sender_name": vendor,
        "sender_vat_id": vat,
        "recipient_name": "Rossum Ltd",
        "currency": currency,
        "amount_total": f"{(net + tax) / 100:.2f}",
        "amount_total_tax": f"{tax / 100:.2f}",
    }
    labels = {
        "invoice_id": "Invoice number",
        "date_issue": "Issue date",
        "date_due": "Due date",
        "order_id": "PO number",
        "document_type": "Document type",
        "sender_name": "Vendor name",
        "sender_vat_id": "Vendor VAT",
        "recipient_name": "Customer name",
        "currency": "Currency",
        "amount_total": "Total amount",
        "amount_total_tax": "Tax amount",
    }
    text = "\n".join([f"{labels[k]}: {v}" for k, v in values.items()] + lines) + "\n"
    header = {
        k: (
            v.lower() if k == "currency" else v,
            v.lower() if k == "currency" else v,
            confidence(k, v),
        )
        for k, v in values.items()
    }
    return text, header, rows
