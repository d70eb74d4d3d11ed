"""Rossum hooks → Prefect events: the receiver behind ``rossflow webhook``.

Prefect's own webhooks exist only in Prefect Cloud; this receiver verifies Rossum's signature,
de-duplicates retried deliveries and emits ``rossum.annotation.status_changed`` events that a
deployment trigger turns into export runs (see ``deployments/`` and docs/triggers.md).
"""

from rossflow.webhook.app import WebhookSettings, create_app
from rossflow.webhook.events import STATUS_CHANGED, status_changed_event
from rossflow.webhook.signature import signature_headers, verify

__all__ = [
    "STATUS_CHANGED",
    "WebhookSettings",
    "create_app",
    "signature_headers",
    "status_changed_event",
    "verify",
]
