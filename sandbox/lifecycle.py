"""Annotation statuses and the transitions the sandbox allows (spec §6).

Status changed by ``PATCH /v1/annotations/{id}`` ``{"status": …}`` (target <- allowed sources)::

    to_review      <- reviewing, postponed, confirmed, failed_export, failed_import, rejected,
                      deleted, exported, to_review
    reviewing      <- to_review, postponed, confirmed, reviewing
    postponed      <- to_review, reviewing, confirmed, failed_export, rejected, postponed
    confirmed      <- to_review, reviewing, postponed, failed_export, confirmed
    exporting      <- confirmed, failed_export, to_review, reviewing, postponed, exporting
                      (runs the export flow again: annotation_content.export hooks -> exported
                      or failed_export; "PATCH to exporting retries the export")
    exported       <- confirmed, exporting, failed_export, exported
                      (allowed, but S0 recommends POST …/export?to_status=exported instead)
    failed_export  <- confirmed, exporting, exported, failed_export
    rejected       <- to_review, reviewing, postponed, confirmed, failed_export, rejected
    deleted        <- every status except purged and in_workflow

* Same status -> same status is a no-op (200, no hooks).
* Any change of a ``purged`` annotation -> **400** (terminal).
* An unknown status value -> **400**; a known target that PATCH cannot set (importing, split,
  created, purged, in_workflow, failed_import) or a source not listed above -> **409**
  ``conflict_status``.

Action endpoints (``POST /v1/annotations/{id}/<action>``)::

    start     to_review|reviewing|postponed|confirmed (or body "statuses") -> reviewing
              sets modifier/modified_by/assigned_at; else 409
    confirm   reviewing started by the caller -> confirmed (queue.use_confirmed_state)
              else export flow: no export hooks -> exported; with export hooks -> exporting, then
              exported | failed_export (asynchronously unless queue.settings.asynchronous_export
              is false); otherwise 409
    cancel    reviewing -> status before start (to_review, postponed or confirmed); else 409
    postpone  to_review|reviewing|confirmed|failed_export|rejected|postponed -> postponed; else 409
    delete    any except purged (400) / in_workflow (409) -> deleted
    reject    to_review|reviewing|postponed|confirmed|failed_export|in_workflow -> rejected
              else 409

System transitions: importing -> to_review | failed_import (extraction), importing -> confirmed |
exporting | exported (automation), exporting -> exported | failed_export (export hooks),
deleted -> purged (``POST /v1/annotations/purge_deleted``).
"""

from __future__ import annotations

STATUSES = (
    "created",
    "importing",
    "split",
    "failed_import",
    "to_review",
    "reviewing",
    "in_workflow",
    "confirmed",
    "rejected",
    "exporting",
    "exported",
    "failed_export",
    "postponed",
    "deleted",
    "purged",
)
#: The 13 statuses reported in ``queue.counts`` (spec §5.4).
COUNT_STATUSES = (
    "importing",
    "split",
    "failed_import",
    "to_review",
    "reviewing",
    "confirmed",
    "exporting",
    "postponed",
    "failed_export",
    "exported",
    "deleted",
    "purged",
    "rejected",
)

_ALL_BUT_TERMINAL = frozenset(STATUSES) - {"purged", "in_workflow"}

PATCH_TRANSITIONS: dict[str, frozenset[str]] = {
    "to_review": frozenset(
        {
            "reviewing",
            "postponed",
            "confirmed",
            "failed_export",
            "failed_import",
            "rejected",
            "deleted",
            "exported",
            "to_review",
        }
    ),
    "reviewing": frozenset({"to_review", "postponed", "confirmed", "reviewing"}),
    "postponed": frozenset(
        {
            "to_review",
            "reviewing",
            "confirmed",
            "failed_export",
            "rejected",
            "postponed",
        }
    ),
    "confirmed": frozenset({"to_review", "reviewing", "postponed", "failed_export", "confirmed"}),
    "exporting": frozenset(
        {
            "confirmed",
            "failed_export",
            "to_review",
            "reviewing",
            "postponed",
            "exporting",
        }
    ),
    "exported": frozenset({"confirmed", "exporting", "failed_export", "exported"}),
    "failed_export": frozenset({"confirmed", "exporting", "exported", "failed_export"}),
    "rejected": frozenset(
        {
            "to_review",
            "reviewing",
            "postponed",
            "confirmed",
            "failed_export",
            "rejected",
        }
    ),
    "deleted": _ALL_BUT_TERMINAL,
}

START_DEFAULT = ("to_review", "reviewing", "postponed", "confirmed")
POSTPONE_FROM = frozenset(
    {
        "to_review",
        "reviewing",
        "confirmed",
        "failed_export",
        "rejected",
        "postponed",
    }
)
REJECT_FROM = frozenset(
    {
        "to_review",
        "reviewing",
        "postponed",
        "confirmed",
        "failed_export",
        "in_workflow",
    }
)
CANCEL_RESTORES = frozenset({"to_review", "postponed", "confirmed"})

#: status -> (timestamp field, user field) stamped when entering it.
STAMPS: dict[str, tuple[str, str | None]] = {
    "confirmed": ("confirmed_at", "confirmed_by"),
    "exported": ("exported_at", "exported_by"),
    "failed_export": ("export_failed_at", None),
    "deleted": ("deleted_at", "deleted_by"),
    "purged": ("purged_at", "purged_by"),
    "rejected": ("rejected_at", "rejected_by"),
    "reviewing": ("assigned_at", None),
}


def patch_allowed(source: str, target: str) -> bool:
    """Whether ``PATCH {"status": target}`` may move an annotation out of ``source``."""
    return source in PATCH_TRANSITIONS.get(target, frozenset())
