"""Exported-since mode: deliver what Rossum exported by itself, never touching its status.

For queues without the confirmed state and without export hooks, Rossum moves confirmed
annotations to ``exported`` on its own. This mode reads them back, page by page, with the
filters Rossum documents for the export endpoint::

    GET /v1/queues/{id}/export?format=json&status=exported
        &exported_at_after=<watermark - lookback>&ordering=exported_at&page=…&page_size=…

and runs each one through the pipeline (templating → delivery → extraction → evaluation) with
``move_status=False``: no ``to_status``, no ``failed_export``.

Exactly once, across runs, overlapping runs and crashes:

* **Unit of work** = (queue, pipeline, annotation, ``exported_at``), a ledger claim of kind
  ``exported_since``. ``done`` → skipped; held by a live worker → left to it; held by a dead
  process (same host) or an expired lease → taken over. Deliveries inside the pipeline keep
  their own ledger records and ``Idempotency-Key``, so a call in flight at a crash is repeated
  with the same key and the target deduplicates it.
* **Watermark** (:class:`~rossflow.state.watermarks.WatermarkStore`, per queue and pipeline) =
  the ``exported_at`` below which every annotation read is finished. It moves only forward, by
  compare-and-set, to the ``exported_at`` of the first unfinished annotation (one another worker
  holds, or a failure still to retry), or to the last one read when all are finished.
* **Ties and clocks**: ``exported_at_after`` is inclusive and every query starts ``lookback_s``
  before the watermark, so annotations sharing a timestamp, or committed a little after a later
  timestamp was already visible, are read again and skipped by the ledger, never lost. Pages are
  read keyset-style: the next query starts at the last ``exported_at`` read (``page`` only grows
  while a whole page shares one timestamp), so a tie split over two pages is read in full.
* **Failures**: a failed annotation keeps its status in Rossum; the run report names it, and the
  next runs retry it (the watermark waits for it, later annotations still flow) until
  ``max_attempts`` runs failed. Then it is recorded as given up (ledger state ``failed``), reported
  as ``failed_gave_up`` and the watermark passes it; re-exporting it in Rossum (a new
  ``exported_at``) or :meth:`~rossflow.ledger.Ledger.forget` sends it again.
* **Re-export**: an annotation exported again later (a new ``exported_at``, e.g. after a PATCH)
  is a new unit and runs through the pipeline again, because its content may have changed. A
  delivery whose request is byte-identical to one already made is not repeated (the delivery
  ledger key covers the payload); a changed one is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from rossflow.ledger import Effect, Ledger
from rossflow.rossum import RossumClient, id_from_url
from rossflow.state.watermarks import WatermarkStore

from .batch import DocReport
from .engine import ExportEngine

log = logging.getLogger("rossflow.export.exported_since")

LEDGER_KIND = "exported_since"
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

#: Runs one batch through the pipeline (plain Python by default; the flow passes Prefect tasks).
BatchRunner = Callable[[ExportEngine, int, int, list[dict[str, Any]]], Awaitable[list[DocReport]]]


def normalize_ts(value: str | datetime) -> str:
    """An ISO 8601 timestamp as fixed-width UTC text (so strings sort as times)."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip().replace(" ", "T", 1)
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.strftime(TS_FORMAT)


def shift_ts(value: str, seconds: float) -> str:
    return normalize_ts(
        datetime.strptime(value, TS_FORMAT).replace(tzinfo=UTC) + timedelta(seconds=seconds)
    )


def unit_key(queue_id: int, pipeline: str, annotation_id: int, exported_at: str) -> str:
    return f"exported-since:{queue_id}:{pipeline}:{annotation_id}:{exported_at}"


def advance_watermark(store: WatermarkStore, queue_id: int, pipeline: str, new: str) -> str:
    """Move the watermark forward to ``new`` by compare-and-set; never backwards."""
    for _ in range(50):
        current = store.get(queue_id, pipeline)
        if current is not None and current >= new:
            return current
        if store.advance(queue_id, pipeline, current, new):
            return new
    raise RuntimeError(f"watermark of queue {queue_id} / {pipeline} kept changing; not advanced")


async def run_batch_plain(
    engine: ExportEngine, queue_id: int, batch_no: int, items: list[dict[str, Any]]
) -> list[DocReport]:
    """The pipeline over one batch, without Prefect."""
    batch = await engine.new_batch(queue_id, items)
    await engine.run_steps(batch, [step.name for step in engine.pipeline.topological_order()])
    return await engine.finalize(batch)


@dataclass
class ExportedSinceResult:
    """What one run over one queue did."""

    queue_id: int
    watermark_before: str | None
    watermark_after: str | None
    reports: list[DocReport] = field(default_factory=list)
    already_done: int = 0
    left_to_others: list[int] = field(default_factory=list)
    read: int = 0
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.reports:
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out


@dataclass
class _Unit:
    annotation_id: int
    exported_at: str
    key: str
    item: dict[str, Any]
    attempts_before: int = 0


class ExportedSince:
    """One exported-since run over one queue (create one per run and queue)."""

    def __init__(
        self,
        engine: ExportEngine,
        client: RossumClient,
        *,
        ledger: Ledger,
        watermarks: WatermarkStore,
        queue_id: int,
        pipeline: str,
        page_size: int = 100,
        lookback_s: float = 120.0,
        max_attempts: int = 3,
        start_at: str | datetime | None = None,
        run_batch: BatchRunner = run_batch_plain,
    ) -> None:
        if engine.move_status:
            raise ValueError("the exported-since mode needs an ExportEngine(move_status=False)")
        self.engine = engine
        self.client = client
        self.ledger = ledger
        self.watermarks = watermarks
        self.queue_id = queue_id
        self.pipeline = pipeline
        self.page_size = max(1, min(page_size, 100))
        self.lookback_s = max(0.0, lookback_s)
        self.max_attempts = max(1, max_attempts)
        self.start_at = normalize_ts(start_at) if start_at is not None else None
        self.run_batch = run_batch

    async def run(self) -> ExportedSinceResult:
        before = self.watermarks.get(self.queue_id, self.pipeline)
        since = before if before is not None else self.start_at
        result = ExportedSinceResult(self.queue_id, before, before)
        queue = await self.client.get_queue(self.queue_id)
        if queue.get("use_confirmed_state"):
            result.warnings.append(
                f"queue {self.queue_id} uses the confirmed state: its annotations reach"
                " 'exported' through a confirmed-state export (rossflow's export flow or"
                " another system), which may have delivered them already; exported-since"
                " delivers them (again) through this pipeline"
            )
        # Look back only behind a watermark this mode set (late commits); a first run's
        # ``start_at`` is taken literally.
        cursor = shift_ts(before, -self.lookback_s) if before is not None else since
        page, batch_no = 1, 0
        seen: set[str] = set()
        first_unfinished: str | None = None
        last_read: str | None = None
        while True:
            items, has_next = await self.client.export_exported_page(
                self.queue_id, exported_at_after=cursor, page=page, page_size=self.page_size
            )
            units = self._units(items, seen)
            result.read += len(units)
            if units:
                batch_no += 1
                unfinished = await self._process(units, batch_no, result)
                if unfinished is not None and (
                    first_unfinished is None or unfinished < first_unfinished
                ):
                    first_unfinished = unfinished
            stamps = [normalize_ts(i["exported_at"]) for i in items if i.get("exported_at")]
            if stamps:
                last_read = max(stamps) if last_read is None else max(last_read, *stamps)
            # After every page, so a crash later in the run keeps the progress made so far.
            target = first_unfinished if first_unfinished is not None else last_read
            if target is not None and (since is None or target > since):
                since = result.watermark_after = advance_watermark(
                    self.watermarks, self.queue_id, self.pipeline, target
                )
            if not has_next or not stamps:
                break
            if cursor == max(stamps):
                page += 1  # the whole page shares one exported_at: page through the tie
            else:
                cursor, page = max(stamps), 1
        if before is None and self.start_at is not None and result.watermark_after is None:
            # A first run with start_at that found nothing still records where it starts.
            advance_watermark(self.watermarks, self.queue_id, self.pipeline, self.start_at)
        result.watermark_after = self.watermarks.get(self.queue_id, self.pipeline)
        return result

    def _units(self, items: Sequence[Mapping[str, Any]], seen: set[str]) -> list[_Unit]:
        units = []
        for item in items:
            stamp = item.get("exported_at")
            if item.get("status", "exported") != "exported" or not stamp:
                continue
            ann_id = id_from_url(str(item["url"]))
            exported_at = normalize_ts(str(stamp))
            key = unit_key(self.queue_id, self.pipeline, ann_id, exported_at)
            if key in seen:
                continue
            seen.add(key)
            units.append(_Unit(ann_id, exported_at, key, dict(item)))
        units.sort(key=lambda u: (u.exported_at, u.annotation_id))
        return units

    async def _process(
        self, units: list[_Unit], batch_no: int, result: ExportedSinceResult
    ) -> str | None:
        """Claim, run and record one page; returns the earliest ``exported_at`` left unfinished."""
        known: dict[str, Effect] = self.ledger.get_many(u.key for u in units)
        todo: list[_Unit] = []
        for unit in units:
            effect = known.get(unit.key)
            if effect is not None and (
                effect.state == "done"
                or (effect.state == "failed" and effect.result.get("gave_up"))
            ):
                result.already_done += 1
                continue
            unit.attempts_before = effect.attempts if effect is not None else 0
            todo.append(unit)
        claims = self.ledger.claim_many(
            (u.key, LEDGER_KIND, str(u.annotation_id), self.pipeline, f"queue {self.queue_id}")
            for u in todo
        )
        unfinished: list[str] = []
        mine: list[_Unit] = []
        for unit in todo:
            if unit.key in claims.done:
                result.already_done += 1
            elif unit.key in claims.busy:
                result.left_to_others.append(unit.annotation_id)
                unfinished.append(unit.exported_at)
            else:
                mine.append(unit)
        if mine:
            try:
                reports = await self.run_batch(
                    self.engine, self.queue_id, batch_no, [u.item for u in mine]
                )
            except BaseException as exc:
                self.ledger.finish_many(
                    (u.key, False, {"message": f"run failed: {exc}"}) for u in mine
                )
                raise
            by_id = {r.annotation_id: r for r in reports}
            finished: list[tuple[str, bool, dict[str, Any]]] = []
            for unit in mine:
                report = by_id.get(unit.annotation_id)
                if report is not None and report.outcome == "delivered":
                    finished.append((unit.key, True, {"exported_at": unit.exported_at}))
                    result.reports.append(report)
                    continue
                message = report.message if report is not None else "no report from the pipeline"
                attempts = unit.attempts_before + 1
                gave_up = attempts >= self.max_attempts
                finished.append(
                    (
                        unit.key,
                        False,
                        {"message": message, "attempts": attempts, "gave_up": gave_up},
                    )
                )
                if not gave_up:
                    unfinished.append(unit.exported_at)
                    message += f" (attempt {attempts} of {self.max_attempts}; next run retries)"
                else:
                    message += f" (gave up after {attempts} attempts; re-export it to retry)"
                result.reports.append(
                    DocReport(
                        annotation_id=unit.annotation_id,
                        queue_id=self.queue_id,
                        file_name=report.file_name if report else "",
                        outcome="failed_gave_up" if gave_up else "failed",
                        target=report.target if report else "",
                        http_status=report.http_status if report else None,
                        message=message,
                        warnings=report.warnings if report else "",
                    )
                )
            self.ledger.finish_many(finished)
        return min(unfinished) if unfinished else None


__all__ = [
    "LEDGER_KIND",
    "BatchRunner",
    "ExportedSince",
    "ExportedSinceResult",
    "advance_watermark",
    "normalize_ts",
    "run_batch_plain",
    "unit_key",
]
