"""One way to refuse a hook call: count it, log it once, answer ``{"status": "rejected"}``.

Shared by the event receiver (``app``) and the export-event calls (``export_calls``), so neither
imports the other.
"""

from __future__ import annotations

import logging
from collections import Counter

from starlette.responses import JSONResponse

logger = logging.getLogger("rossflow.webhook")


def reject(
    counters: Counter[str], status: int, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    counters[f"rejected_{status}"] += 1
    logger.warning("rejected hook call (%s): %s", status, reason)
    return JSONResponse(
        {"status": "rejected", "reason": reason}, status_code=status, headers=headers
    )
