"""The ingest pipeline in plain Python: list → claim → validate → upload → wait → finalize.

Each step takes and returns a batch (list) of :class:`FileItem`; items that reach a final
outcome early (rejected, skipped) ride along untouched to :func:`finalize`. The Prefect tasks in
``tasks/ingest.py`` are one-line wrappers around these functions, and :func:`run_ingest` chains
them without Prefect.

An :class:`IngestRuntime` holds what a run shares: the source (one SFTP session per I/O thread),
a bounded I/O thread pool, a few event-loop "lanes" each with its own Rossum client(s), the
ledger and the state store. It is thread-safe, so several batches can be in different steps at
once. Uploads are streamed from the source into one bounded buffer per upload in flight; the
wait for Rossum's task starts as soon as a file is sent (the wait step collects it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from rossflow.ingest import errors as E
from rossflow.ingest.model import (
    DEFERRED,
    DUPLICATE,
    FAILED,
    SKIPPED,
    UPLOADED,
    FileItem,
    IngestOptions,
)
from rossflow.ingest.report import IngestReport
from rossflow.ingest.rules import RoutingRule, RuleSet
from rossflow.ingest.sources import Source, SpooledContent
from rossflow.ingest.state import IngestState, RunOwner, owner_is_stale
from rossflow.ingest.uploads import Uploader
from rossflow.ingest.validation import check_content, check_name, check_size
from rossflow.ledger import Ledger
from rossflow.rossum import RossumClient

log = logging.getLogger("rossflow.ingest")

#: Requests in flight per Rossum client (uploads + task polls are spread over several clients).
CONNECTIONS_PER_CLIENT = 4
#: Uploads in flight per event-loop lane.
LANE_WIDTH = 4

T = TypeVar("T")
R = TypeVar("R")


class Lane:
    """One event-loop thread with its own Rossum client(s) and concurrency slots.

    A run has a few lanes instead of one loop: with 8+ paramiko transport threads in the process,
    a single loop thread gets too small a share of the GIL and every HTTP request waits for it.
    Each file is uploaded and awaited in one lane."""

    def __init__(self, rt: IngestRuntime, index: int, width: int) -> None:
        self.index = index
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"ingest-loop-{index}", daemon=True
        )
        self.thread.start()
        shards = max(1, -(-2 * width // CONNECTIONS_PER_CLIENT))
        factory = rt._client_factory
        self.clients: list[RossumClient] = [self.run(_make(factory)) for _ in range(shards)]
        self.uploader = Uploader(
            self.clients, rt.ledger, rt.state, run_id=rt.owner.run_id, options=rt.options
        )
        self.upload_slots = asyncio.Semaphore(width)
        self.wait_slots = asyncio.Semaphore(width)
        self.pending_waits: dict[str, asyncio.Future[None]] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def start_wait(self, rt: IngestRuntime, item: FileItem) -> None:
        """Begin resolving ``item``'s upload task in the background (on this lane's loop);
        :func:`wait` awaits it."""
        self.pending_waits[item.path] = asyncio.ensure_future(_wait_one(rt, self, item))

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                self.run(client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _make(factory: Callable[[], RossumClient]) -> RossumClient:
    return factory()


class IngestRuntime:
    """Shared resources of one ingest run. Use as a context manager (``close`` marks the run
    finished, so whatever it still holds is taken over by the next run at once)."""

    def __init__(
        self,
        source: Source,
        rules: RuleSet | Iterable[RoutingRule] | dict[str, Any] | list[Any],
        client_factory: Callable[[], RossumClient],
        options: IngestOptions | None = None,
        *,
        run_id: str | None = None,
        alive_check: Callable[[str], bool | None] | None = None,
    ) -> None:
        self.options = options or IngestOptions()
        self.alive_check = alive_check
        self._alive_cache: dict[str, bool | None] = {}
        self.source = source
        self.rules = RuleSet.load(rules)
        if not len(self.rules):
            raise ValueError("no routing rules: nothing would be ingested")
        self.owner = RunOwner.current(run_id or uuid.uuid4().hex)
        self.ledger = Ledger(self.options.ledger_path)
        self.state = IngestState(
            self.options.ledger_path, stale_after_s=self.options.stale_claim_after_s
        )
        if getattr(source, "state", "absent") is None:
            source.state = self.state  # type: ignore[attr-defined]
        self.io = ThreadPoolExecutor(self.options.io_concurrency, thread_name_prefix="ingest-io")
        self._client_factory = client_factory
        width = min(LANE_WIDTH, self.options.upload_concurrency)
        count = max(1, -(-self.options.upload_concurrency // width))
        self.lanes = [Lane(self, i, width) for i in range(count)]
        self.lane_of: dict[str, int] = {}
        self._next_lane = itertools.count()
        self.client = self.lanes[0].clients[0]
        self.report = IngestReport(
            self.owner.run_id, source.uri(source.root), max_ok_rows=self.options.report_max_rows
        )
        self._beat_lock = threading.Lock()
        self._last_beat = 0.0
        self._closed = False
        self.state.register_run(self.owner)
        self.heartbeat(force=True)

    @property
    def run_id(self) -> str:
        return self.owner.run_id

    def __enter__(self) -> IngestRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.owner = self.owner.finished()
        try:
            self.source.finish(self.owner)
        except Exception as exc:
            log.warning("could not mark the run finished on the source: %s", exc)
        self.state.finish_run(self.owner)
        for lane in self.lanes:
            lane.close()
        self.io.shutdown(wait=True)
        self.source.close()
        self.ledger.close()
        self.state.close()

    # -- helpers -----------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the first lane's event loop (from any thread) and wait for it."""
        return self.lanes[0].run(coro)

    @property
    def uploads_sent(self) -> int:
        return sum(lane.uploader.sent for lane in self.lanes)

    @property
    def reconciled(self) -> int:
        return sum(lane.uploader.reconciled for lane in self.lanes)

    def assign_lanes(self, items: list[FileItem]) -> dict[int, list[FileItem]]:
        """Spread items over the lanes (an item keeps its lane for the wait step)."""
        groups: dict[int, list[FileItem]] = {}
        for item in items:
            index = self.lane_of.get(item.path)
            if index is None:
                index = next(self._next_lane) % len(self.lanes)
                self.lane_of[item.path] = index
            groups.setdefault(index, []).append(item)
        return groups

    def map_io(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return list(self.io.map(fn, items))

    def heartbeat(self, *, force: bool = False) -> None:
        now = time.time()
        with self._beat_lock:
            if not force and now - self._last_beat < min(
                60.0, self.options.stale_claim_after_s / 4
            ):
                return
            self._last_beat = now
            self.owner = self.owner.beat()
        self.state.heartbeat(self.owner)
        try:
            self.source.heartbeat(self.owner)
        except Exception as exc:
            log.warning("heartbeat on the source failed: %s", exc)

    def is_stale(self, owner: RunOwner | None, age: float | None) -> bool:
        """May this run take over a claim held by ``owner`` (claim age ``age`` seconds)?"""
        finished_here = False
        if owner is not None:
            _known, finished_here = self.state.get_run(owner.run_id)
        stale = owner_is_stale(
            owner,
            me=self.run_id,
            stale_after_s=self.options.stale_claim_after_s,
            fallback_age_s=age,
            finished_here=finished_here,
        )
        if stale or owner is None or owner.run_id == self.run_id or self.alive_check is None:
            return stale
        # e.g. the orchestrator knows the owner's flow run crashed on another host.
        if owner.run_id not in self._alive_cache:
            try:
                self._alive_cache[owner.run_id] = self.alive_check(owner.run_id)
            except Exception as exc:
                log.debug("liveness check of run %s failed: %s", owner.run_id, exc)
                self._alive_cache[owner.run_id] = None
        return self._alive_cache[owner.run_id] is False

    def rule_of(self, item: FileItem) -> RoutingRule | None:
        return self.rules.rules[item.rule_index] if item.rule_index is not None else None

    def route(self, item: FileItem) -> bool:
        found = self.rules.route(item.rel, item.origin)
        if found is None:
            return False
        item.rule_index, rule = found
        item.rule = rule.label
        item.queue_id = rule.queue_id
        return True


# ====================================================================================== steps
def recover(rt: IngestRuntime) -> list[FileItem]:
    """Adopt the claims of dead or finished runs (they continue in this run)."""
    adopted = rt.source.recover(rt.owner, rt.is_stale)
    out: list[FileItem] = []
    for item in adopted:
        if not rt.route(item):
            # The rules changed since it was claimed: give it back rather than hold it forever.
            try:
                rt.source.unclaim(item)
                note = "recovered file matches no routing rule; returned to the inbox"
            except Exception as exc:
                note = f"recovered file matches no routing rule; could not return it: {exc}"
            item.skip("unrouted", note, step="recover")
        out.append(item)
    rt.report.recovered += len(out)
    return out


def listing_roots(rt: IngestRuntime) -> list[tuple[str, bool]]:
    """(folder, recursive) to list: the rules' own folders when every rule names one,
    otherwise the source directory."""
    source, layout = rt.source, rt.source.layout
    roots: dict[str, bool] = {}
    if all(rule.path is not None for rule in rt.rules):
        for rule in rt.rules:
            assert rule.path is not None
            folder = source.area(rule.path) if rule.path.strip("/") else source.root
            recursive = rule.recursive or layout.recursive
            roots[folder] = roots.get(folder, False) or recursive
    else:
        recursive = layout.recursive or any(
            rule.recursive
            or (rule.pattern is not None and ("/" in rule.pattern or "**" in rule.pattern))
            for rule in rt.rules
        )
        roots[source.root] = recursive
    return list(roots.items())


def excluded_folders(rt: IngestRuntime) -> list[str]:
    folders = rt.source.areas()
    for rule in rt.rules:
        for path in (rule.success_path(), rule.failure_path()):
            if path:
                folders.append(rt.source.area(path))
    return folders


def _hidden(rel: str) -> bool:
    """A dot-file or a file in a dot-folder ('.' and '..' segments are not hidden: they are
    rejected loudly as unsafe names instead)."""
    return any(seg.startswith(".") and seg not in (".", "..") for seg in rel.split("/"))


def discover(rt: IngestRuntime, *, skip_paths: Iterable[str] = ()) -> Iterator[FileItem]:
    """List candidate files (routed, old enough, not hidden), lazily, at most ``max_files``."""
    opts, source = rt.options, rt.source
    include = source.layout.include_matcher()
    exclude = excluded_folders(rt)
    skip = set(skip_paths)
    now = time.time()
    taken = 0
    for folder, recursive in listing_roots(rt):
        for item in source.walk(folder, recursive, exclude):
            if item.path in skip:
                continue
            rt.report.listed += 1
            if not opts.include_hidden and _hidden(item.rel):
                continue
            if not include(item.rel):
                continue
            if opts.min_age_s and item.mtime is not None and now - item.mtime < opts.min_age_s:
                rt.report.too_new += 1
                continue
            if not rt.route(item):
                rt.report.unrouted += 1
                continue
            skip.add(item.path)
            yield item
            taken += 1
            if opts.max_files is not None and taken >= opts.max_files:
                return


def claim(rt: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    rt.heartbeat()

    def one(item: FileItem) -> FileItem:
        if item.final or item.claimed:
            return item
        try:
            if not rt.source.claim(item, rt.owner, rt.is_stale):
                item.skip(
                    "claimed_elsewhere",
                    "another run claimed the file, or it was removed",
                    step="claim",
                )
        except PermissionError as exc:
            # The server will not let us move it (e.g. a link pointing outside the root): it
            # cannot be taken, so report it once with a sidecar and leave it where it is.
            item.fail(E.UNREADABLE, f"cannot take the file: {E.describe(exc)}", step="claim")
        except Exception as exc:
            if not E.is_transient(exc):
                log.exception("claim of %s failed", item.origin)
            item.skip("claim_failed", E.describe(exc), step="claim")
        return item

    items[:] = rt.map_io(one, items)  # in place: every step hands on the same list
    return items


def validate(rt: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    """Name (unsafe paths, extension of an accepted type) and size checks. The content check
    (magic bytes must agree with the extension) runs on the first bytes while the file is
    streamed for the upload, before anything is sent, so each file is read only once."""
    limits = rt.options.limits()
    for item in items:
        if item.final:
            continue
        try:
            item.file_type = check_name(item.rel, limits)
            check_size(item.size, limits)
        except E.FileRejected as rej:
            item.fail(rej.reason, rej.message, step=rej.step)
    return items


def upload(rt: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    rt.heartbeat()
    todo = [item for item in items if not item.final]
    futures = [
        rt.lanes[index].submit(_upload_all(rt, rt.lanes[index], group))
        for index, group in rt.assign_lanes(todo).items()
    ]
    for future in futures:
        future.result()
    return items


async def _upload_all(rt: IngestRuntime, lane: Lane, items: list[FileItem]) -> None:
    await asyncio.gather(*(_upload_one(rt, lane, item) for item in items))


async def _upload_one(rt: IngestRuntime, lane: Lane, item: FileItem) -> None:
    opts = rt.options
    loop = asyncio.get_running_loop()
    async with lane.upload_slots:
        content: SpooledContent | None = None
        try:
            try:
                content = await loop.run_in_executor(
                    rt.io,
                    rt.source.spool,
                    item.path,
                    opts.max_file_bytes,
                    opts.spool_memory_bytes,
                    item.size,
                )
            except FileNotFoundError as exc:
                raise E.FileRejected(
                    E.VANISHED, "the file disappeared after it was claimed", step="upload"
                ) from exc
            except OSError as exc:
                if E.is_missing(exc):
                    raise E.FileRejected(
                        E.VANISHED, "the file disappeared after it was claimed", step="upload"
                    ) from exc
                if E.is_transient(exc):
                    raise
                raise E.FileRejected(
                    E.UNREADABLE, f"cannot read the file: {E.describe(exc)}", step="upload"
                ) from exc
            item.size = content.size
            check_size(content.size, opts.limits())
            assert item.file_type is not None
            check_content(item.rel, item.file_type, content.head)
            item.size, item.sha256 = content.size, content.sha256
            await lane.uploader.upload(item, content, rt.rule_of(item), rt.source.uri(item.origin))
            if item.task_url is not None and not item.final:
                # Start waiting for Rossum's task right away (the wait step collects it), so
                # this batch's waits overlap with its remaining uploads.
                lane.start_wait(rt, item)
        except E.FileRejected as rej:
            if rej.reason == E.VANISHED and rt.source.vanished_means_gone:
                item.skip("gone", "the file was taken by another run or deleted", step="upload")
            else:
                item.fail(rej.reason, rej.message, step=rej.step, rossum=rej.rossum)
        except Exception as exc:
            if E.is_transient(exc):
                item.defer("source_unavailable", E.describe(exc), step="upload")
            else:
                log.exception("upload of %s failed", item.origin)
                item.defer("unexpected_error", E.describe(exc), step="upload")
        finally:
            if content is not None:
                content.close()
            if item.final and item.outcome not in (UPLOADED, DUPLICATE):
                lane.uploader.release(item)


def wait(rt: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    rt.heartbeat()
    futures = [
        rt.lanes[index].submit(_wait_all(rt, rt.lanes[index], group))
        for index, group in rt.assign_lanes(items).items()
    ]
    for future in futures:
        future.result()
    return items


async def _wait_one(rt: IngestRuntime, lane: Lane, item: FileItem) -> None:
    async with lane.wait_slots:
        try:
            await lane.uploader.wait(item, rt.source.uri(item.origin))
        except Exception as exc:
            log.exception("waiting for %s failed", item.origin)
            item.defer("unexpected_error", E.describe(exc), step="wait")


async def _wait_all(rt: IngestRuntime, lane: Lane, items: list[FileItem]) -> None:
    async def one(item: FileItem) -> None:
        started = lane.pending_waits.pop(item.path, None)
        if started is not None:
            await started
        if item.final and item.lease is None:
            return
        await _wait_one(rt, lane, item)  # not started in the background
        if not item.final:
            item.defer(
                "not_uploaded",
                f"no upload outcome (internal: task={item.task_url!r} "
                f"waiting_on={item.waiting_on!r} background={started is not None})",
                step="wait",
            )

    await asyncio.gather(*(one(item) for item in items))
    for item in items:
        rt.lane_of.pop(item.path, None)


def _date_folder(rt: IngestRuntime) -> str:
    layout = rt.source.layout.archive_layout
    return datetime.now(UTC).strftime(layout) if layout else ""


def sidecar(rt: IngestRuntime, item: FileItem) -> bytes:
    body = {
        "file": item.rel,
        "source": rt.source.uri(item.origin),
        "failed_at": E.now_iso(),
        "step": item.step,
        "reason": item.reason,
        "message": item.message,
        "rossum": item.rossum,
        "queue_id": item.queue_id,
        "rule": item.rule,
        "size": item.size,
        "sha256": item.sha256,
        "declared_type": item.file_type,
        "run_id": rt.run_id,
    }
    return json.dumps(body, indent=2, ensure_ascii=False).encode()


def finalize(rt: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    """Archive uploaded/duplicate files, move failed ones to failed/ with a sidecar; deferred
    files stay claimed for the next run."""
    rt.heartbeat()
    date = _date_folder(rt)
    source = rt.source

    def one(item: FileItem) -> FileItem:
        rule = rt.rule_of(item)
        rel = rule.relative_in_rule(item.rel) if rule and rule.result_actions else item.rel
        try:
            if item.outcome in (UPLOADED, DUPLICATE):
                base = rule.success_path() if rule else None
                folder = source.area(base or source.layout.archive_dir)
                if date:
                    folder = source.join(folder, date)
                item.moved_to = source.archive(item, folder, rel)
            elif item.outcome == FAILED:
                base = rule.failure_path() if rule else None
                folder = source.area(base or source.layout.failed_dir)
                if not item.claimed and source.has_sidecar(folder, rel):
                    item.skip("already_reported", item.message or "", step=item.step or "claim")
                    return item
                item.moved_to = source.reject(item, folder, rel, sidecar(rt, item))
            elif item.outcome == SKIPPED and item.claimed and item.reason != "unrouted":
                source.release(item)
        except Exception as exc:
            # The file stays claimed; the next run recovers it and, thanks to the ledger,
            # only repeats the move.
            log.warning("moving %s after %s failed: %s", item.path, item.outcome, exc)
            item.note = f"not moved yet ({E.describe(exc)}); the next run finishes it"
        return item

    done = rt.map_io(one, items)
    try:
        source.flush()
    except Exception as exc:  # leftover locks are stale once the run ends; nothing is lost
        log.warning("bulk lock release failed: %s", exc)
    rt.report.add(done)
    rt.report.uploads_sent = rt.uploads_sent
    rt.report.reconciled = rt.reconciled
    return done


def process_batch(rt: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    """All steps for one batch, without Prefect."""
    return finalize(rt, wait(rt, upload(rt, validate(rt, claim(rt, items)))))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_ingest(
    source: Source,
    rules: Any,
    client_factory: Callable[[], RossumClient],
    options: IngestOptions | None = None,
    *,
    run_id: str | None = None,
) -> IngestReport:
    """One complete run without Prefect: ``batches_in_flight`` batches at a time, each going
    through all the steps (the Prefect flow does the same with one task per step)."""
    with IngestRuntime(source, rules, client_factory, options, run_id=run_id) as rt:
        recovered = recover(rt)
        pending = [i for i in recovered if not i.final]
        rt.report.add([i for i in recovered if i.final])
        skip = [i.origin for i in pending]
        candidates = itertools.chain(pending, discover(rt, skip_paths=skip))
        window = rt.options.batches_in_flight
        with ThreadPoolExecutor(window, thread_name_prefix="ingest-batch") as batches:
            in_flight: deque[Future[list[FileItem]]] = deque()
            for batch in batched(candidates, rt.options.batch_size):
                while len(in_flight) >= window:
                    in_flight.popleft().result()
                in_flight.append(batches.submit(process_batch, rt, batch))
            for future in in_flight:
                future.result()
        rt.report.finished = time.time()
        return rt.report


__all__ = [
    "DEFERRED",
    "IngestRuntime",
    "batched",
    "claim",
    "discover",
    "finalize",
    "listing_roots",
    "process_batch",
    "recover",
    "run_ingest",
    "upload",
    "validate",
    "wait",
]
