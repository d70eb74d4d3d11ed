"""Example code step: what a "Handle ERP Responses" serverless hook does, as plain Python.

Rossum chains often end with a serverless function that reads the replies the REST export
hooks stored and turns the ERP's errors into messages on the document. In rossflow the
function is mapped in the pipeline file::

    {"code_steps": {"Handle ERP Responses": "examples.erp_responses:handle"}, "hooks": [...]}

It receives the payload a Rossum serverless hook gets (plus ``payload["rossflow"]`` with the
stored replies and values) and answers like one: ``messages`` and ``operations``.
"""

from __future__ import annotations

import json
from typing import Any


def _errors(reply: Any) -> list[str]:
    """ERP error texts from a stored reply body (``{"errors": {"field": ["text"]}}`` style)."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    if isinstance(reply, str):
        try:
            reply = json.loads(reply)
        except ValueError:
            return []
    errors = reply.get("errors") if isinstance(reply, dict) else None
    if isinstance(errors, dict):
        return [f"<b>{key}</b>: {'; '.join(map(str, texts))}" for key, texts in errors.items()]
    if isinstance(errors, list):
        return [str(e) for e in errors]
    return []


def handle(payload: dict[str, Any]) -> dict[str, Any]:
    """Error messages for failed ERP calls; a warning naming the ERP document otherwise."""
    settings = payload.get("settings") or {}
    replies = payload["rossflow"]["references"]
    values = payload["rossflow"]["values"]
    messages = []
    for key in settings.get("reply_keys", ["create_draft_reply_payload"]):
        for text in _errors(replies.get(key)):
            messages.append({"type": "error", "content": text})
    status = str(values.get(settings.get("status_field", "api1_status_code")) or "")
    if not messages and status and not status.startswith("2"):
        messages.append({"type": "error", "content": f"ERP answered HTTP {status}"})
    if not messages:
        erp_id = values.get(settings.get("id_field", "erp_document_id")) or "?"
        messages.append({"type": "info", "content": f"ERP document {erp_id} created"})
    return {"messages": messages, "operations": []}
