"""What a rerun knows about an earlier call of a REST step, so it never resends blind.

The reply record kept in the ledger (reused instead of sending again), whether an earlier
attempt's outcome is unknown, the hint telling the user how to settle it in the ERP, and a
record found by a reconcile ``lookup`` as the delivery result it stands in for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rossflow.delivery.rest_result import DeliveryResult
from rossflow.redaction import Redactor

from .batch import DocState
from .config import RestStep
from .errors import StepError
from .extract import build_response_record

__all__ = [
    "MAX_RECORDED_REPLY",
    "add_unknown_hint",
    "outcome_unknown",
    "record_from_ledger",
    "result_from_record",
    "small_record",
]

# Largest reply body kept in the ledger for reuse on a rerun (larger ones are truncated).
MAX_RECORDED_REPLY = 256 * 1024


def outcome_unknown(prior: Any) -> str | None:
    """Why an earlier call of this effect may have been processed, or None if it was not."""
    if prior is None:
        return None
    if prior.state == "started":
        return "an earlier run stopped while the call was in flight"
    if prior.state == "failed" and prior.result.get("uncertain"):
        return "an earlier attempt may have been processed"
    return None


def add_unknown_hint(error: StepError, step: RestStep, doc: DocState, mode: str) -> None:
    """What to check in the ERP and how to tell rossflow the answer."""
    if "rossflow ledger mark" in error.reason:
        return
    what = f"annotation {doc.annotation_id}"
    where = f" (lookup: {step.lookup.url})" if step.lookup is not None else ""
    error.reason = (
        f"{error.reason}; idempotency: {mode}. Check in the ERP whether {what} was booked"
        f"{where}, then run `rossflow ledger mark --annotation {doc.annotation_id} --step "
        f"{step.name} delivered` (or `not-delivered`) and replay the annotation"
    )


def result_from_record(record: Mapping[str, Any]) -> DeliveryResult:
    """A record a lookup found, as the delivery result ``deliver`` returns instead."""
    return DeliveryResult(
        status_code=int(record["status_code"]),
        headers=[tuple(h) for h in record.get("raw") or []],  # type: ignore[misc]
        body=str(record.get("text") or "").encode(),
        elapsed_s=float(record.get("elapsed_s") or 0.0),
        attempts=1,
        url=str(record.get("url") or ""),
    )


def small_record(record: Mapping[str, Any], redactor: Redactor) -> dict[str, Any]:
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


def record_from_ledger(stored: Mapping[str, Any]) -> dict[str, Any]:
    return build_response_record(
        int(stored["status_code"]),
        [tuple(h) for h in stored.get("raw") or []],
        str(stored.get("text") or "").encode(),
        url=stored.get("url"),
        elapsed_s=stored.get("elapsed_s"),
    )
