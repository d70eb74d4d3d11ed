"""Which hooks an annotation event fires, their payloads, and what their replies change.

:class:`HookEvents` decides what is sent to whom and applies the answers (messages, content
operations); :mod:`sandbox.hooks` delivers one payload to one hook over HTTP (signing,
retries, asynchronous replies).
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import TYPE_CHECKING, Any

from sandbox import content as ct
from sandbox.hooks import HookCallResult
from sandbox.seeding import SCHEMA_ID
from sandbox.util import ApiError, now_iso, public, ref, ref_id, resolve

if TYPE_CHECKING:
    from sandbox.core import Sandbox


class HookEvents:
    """Hook firing for one :class:`sandbox.core.Sandbox` (its store, settings and dispatcher)."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box

    def hooks_for(self, queue_id: int, event: str, action: str) -> list[dict[str, Any]]:
        """Active hooks of the queue subscribed to ``event``/``event.action``, run_after order."""
        queue_url = ref("queues", queue_id)
        wanted = {event, f"{event}.{action}"}
        hooks = [
            h
            for h in self.box.store.all("hooks")
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
        base = self.box.config.public_base_url
        payload: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "timestamp": now_iso(),
            "base_url": base[: -len("/api")] if base.endswith("/api") else base,
        }
        owner = ref_id(hook.get("token_owner"))
        if owner is not None:
            lifetime = hook.get("token_lifetime_s") or 600
            payload["rossum_authorization_token"] = self.box.create_token(owner, float(lifetime))
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
        doc = self.box.store.get_document(ref_id(ann["document"]) or 0) or {}
        payload["document"] = {k: v for k, v in public(doc).items() if k != "annotations"}
        payload.update(extra or {})
        for name in hook.get("sideload") or []:
            payload[name] = self._sideload_for_hook(name, ann)
        return resolve(payload, base)

    def _sideload_for_hook(self, name: str, ann: dict[str, Any]) -> list[Any]:
        if name == "queues":
            q = self.box.store.get("queues", ref_id(ann["queue"]) or 0)
            return [self.box.queue_view(q)] if q else []
        if name == "schemas":
            s = self.box.store.get("schemas", ref_id(ann["schema"]) or 0)
            return [s] if s else []
        if name == "modifiers":
            u = self.box.store.get("users", ref_id(ann.get("modifier")) or 0)
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
        self.box.spawn(self._deliver_status(hooks, snapshot))

    async def _deliver_status(self, hooks: list[dict[str, Any]], snapshot: dict[str, Any]) -> None:
        for hook in hooks:
            payload = self.hook_payload(hook, "annotation_status", "changed", snapshot)
            await self.box.dispatcher.deliver(hook, payload, retry=True)

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
            ann = self.box.store.get_annotation(ann_id)
            if ann is None:
                return False, messages
            tree = self.box.store.get_content(ann_id)
            snap = dict(ann)
            snap["content"] = tree
            payload = self.hook_payload(
                hook,
                "annotation_content",
                action,
                snap,
                {"updated_datapoints": [] if action == "export" else list(updated)},
            )
            result = await self.box.dispatcher.deliver(hook, payload, retry=retry)
            hook_msgs = [self._hook_message(m, hook, payload) for m in result.messages()]
            messages += hook_msgs
            if not result.ok:
                if not any(m.get("type") == "error" for m in hook_msgs):
                    messages.append(self._failure_message(hook, payload, result))
                self._store_messages(ann_id, messages)
                return False, messages
            ops = result.operations()
            if ops:
                ann_now = self.box.store.get_annotation(ann_id)
                if ann_now is not None:
                    tree = self.box.store.get_content(ann_id)
                    try:
                        sindex = self.box.sindex(ref_id(ann_now["schema"]) or SCHEMA_ID)
                        updated += ct.apply_operations(tree, ops, sindex, ann_id, self.box.alloc())
                        self.box.store.save_content(ann_id, tree)
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
        ann = self.box.store.get_annotation(ann_id)
        if ann is not None:
            ann["messages"] = messages
            self.box.store.save_annotation(ann)

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
