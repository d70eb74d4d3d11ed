"""Replay of chosen annotations (``annotation_ids``): which ones may be sent again, and how.

* ``confirmed`` and ``failed_export`` annotations are replayed;
* ``exported`` ones only with ``force`` (the ERP lost the record);
* anything else (``to_review``, ``postponed``, ``deleted``, ``exporting``, …) is refused with a
  message naming the annotation and its status: delivering it would move a document nobody
  confirmed.

``force`` starts a new attempt generation for every replayed annotation (recorded in the
ledger), so its deliveries get new idempotency keys and really reach the ERP again instead of
being answered from the ERP's (or the ledger's) record of the first send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rossflow.export.batch import DocReport
from rossflow.ledger import Ledger
from rossflow.rossum import id_from_url

REPLAYABLE = ("confirmed", "failed_export")
FORCE_ONLY = ("exported",)


@dataclass(frozen=True)
class Refusal:
    annotation_id: int
    status: str
    message: str
    file_name: str = ""


@dataclass
class ReplaySelection:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # not in this queue
    generations: dict[int, int] = field(default_factory=dict)  # forced: the new generation


def refusal_message(annotation_id: int, status: str) -> str:
    if status in FORCE_ONLY:
        return (
            f"annotation {annotation_id} is already {status}: not sent again; replay it with"
            " force: true to re-send it (with new idempotency keys)"
        )
    return (
        f"annotation {annotation_id} is {status}: not replayed (only confirmed or failed_export"
        " annotations are, and exported ones with force: true); it was left as it is"
    )


def select_for_replay(
    items: Iterable[Mapping[str, Any]],
    requested: Sequence[int],
    *,
    force: bool = False,
    ledger: Ledger | None = None,
) -> ReplaySelection:
    """Split the queue's export of ``requested`` into replayable items and refusals; with
    ``force`` (and not a dry run: pass ``ledger``), record a new attempt generation for each
    replayed annotation."""
    selection = ReplaySelection()
    seen: set[int] = set()
    allowed = REPLAYABLE + (FORCE_ONLY if force else ())
    for item in items:
        ann_id = id_from_url(str(item.get("url") or "")) if item.get("url") else item.get("id")
        ann_id = int(ann_id)  # type: ignore[arg-type]
        if ann_id in seen:
            continue
        seen.add(ann_id)
        status = str(item.get("status") or "unknown")
        if status in allowed:
            selection.accepted.append(dict(item))
        else:
            document = item.get("document")
            name = str(document.get("file_name") or "") if isinstance(document, Mapping) else ""
            selection.refused.append(Refusal(ann_id, status, refusal_message(ann_id, status), name))
    selection.missing = [i for i in dict.fromkeys(requested) if i not in seen]
    if force and ledger is not None:
        for item in selection.accepted:
            ann_id = id_from_url(str(item["url"]))
            selection.generations[ann_id] = ledger.next_generation(str(ann_id))
    return selection


def refusal_reports(refused: Iterable[Refusal], queue_id: int) -> list[DocReport]:
    """Report rows (outcome ``replay_refused``) for the refused annotations."""
    return [
        DocReport(
            annotation_id=r.annotation_id,
            queue_id=queue_id,
            file_name=r.file_name,
            outcome="replay_refused",
            target="",
            http_status=None,
            message=r.message,
        )
        for r in refused
    ]
