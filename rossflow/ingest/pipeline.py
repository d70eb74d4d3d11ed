"""The ingest pipeline in plain Python: list → claim → validate → upload → wait → finalize.

Each step takes and returns a batch (list) of :class:`FileItem`; items that reach a final
outcome early (rejected, skipped) ride along untouched to :func:`finalize`. The Prefect tasks in
``tasks/ingest.py`` are one-line wrappers around these functions, and :func:`run_ingest` chains
them without Prefect.

An :class:`~rossflow.ingest.runtime.IngestRuntime` holds what a run shares: the source, two bounded
thread pools (one for claims and moves; one for uploads, each of its threads with its own SFTP
session, Rossum client and event loop), the ledger and the state store. It is thread-safe, so
several batches can be in different steps at once. Each file is read, uploaded and awaited in one
upload thread, like a plain script would: the content is streamed from the source into one bounded
buffer, sent with blocking sockets, and the wait for Rossum's task follows at once (the wait step
collects it).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from rossflow.ingest import errors as ingest_errors
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
from rossflow.ingest.runtime import IngestRuntime, RossumThread
from rossflow.ingest.sources import Source, SpooledContent
from rossflow.ingest.upload_groups import build_group_metadata, plan_uploads
from rossflow.ingest.validation import check_content, check_name, check_size
from rossflow.rossum import RossumClient

log = logging.getLogger("rossflow.ingest")

T = TypeVar("T")


def recover(runtime: IngestRuntime) -> list[FileItem]:
    """Adopt the claims of dead or finished runs (they continue in this run)."""
    adopted = runtime.source.recover(runtime.owner, runtime.is_stale)
    out: list[FileItem] = []
    for item in adopted:
        if not runtime.route(item):
            # The rules changed since it was claimed: give it back rather than hold it forever.
            try:
                runtime.source.unclaim(item)
                note = "recovered file matches no routing rule; returned to the inbox"
            except Exception as exc:
                note = f"recovered file matches no routing rule; could not return it: {exc}"
            item.skip("unrouted", note, step="recover")
        out.append(item)
    runtime.report.recovered += len(out)
    return out


def listing_roots(runtime: IngestRuntime) -> list[tuple[str, bool]]:
    """(folder, recursive) to list: the rules' own folders when every rule names one,
    otherwise the source directory."""
    source, layout = runtime.source, runtime.source.layout
    roots: dict[str, bool] = {}
    if all(rule.path is not None for rule in runtime.rules):
        for rule in runtime.rules:
            assert rule.path is not None
            folder = source.area(rule.path) if rule.path.strip("/") else source.root
            recursive = rule.recursive or layout.recursive
            roots[folder] = roots.get(folder, False) or recursive
    else:
        recursive = layout.recursive or any(
            rule.recursive
            or (rule.pattern is not None and ("/" in rule.pattern or "**" in rule.pattern))
            for rule in runtime.rules
        )
        roots[source.root] = recursive
    return list(roots.items())


def excluded_folders(runtime: IngestRuntime) -> list[str]:
    folders = runtime.source.areas()
    for rule in runtime.rules:
        for path in (rule.success_path(), rule.failure_path()):
            if path:
                folders.append(runtime.source.area(path))
    return folders


def _hidden(rel: str) -> bool:
    """A dot-file or a file in a dot-folder ('.' and '..' segments are not hidden: they are
    rejected loudly as unsafe names instead)."""
    return any(seg.startswith(".") and seg not in (".", "..") for seg in rel.split("/"))


def discover(runtime: IngestRuntime, *, skip_paths: Iterable[str] = ()) -> Iterator[FileItem]:
    """List candidate files (routed, old enough, not hidden), lazily, at most ``max_files``."""
    opts, source = runtime.options, runtime.source
    include = source.layout.include_matcher()
    exclude = excluded_folders(runtime)
    skip = set(skip_paths)
    now = time.time()
    taken = 0
    for folder, recursive in listing_roots(runtime):
        for item in source.walk(folder, recursive, exclude):
            if item.path in skip:
                continue
            runtime.report.listed += 1
            if not opts.include_hidden and _hidden(item.rel):
                continue
            if not include(item.rel):
                continue
            if opts.min_age_s and item.mtime is not None and now - item.mtime < opts.min_age_s:
                runtime.report.too_new += 1
                continue
            if not runtime.route(item):
                runtime.report.unrouted += 1
                continue
            skip.add(item.path)
            yield item
            taken += 1
            if opts.max_files is not None and taken >= opts.max_files:
                return


def claim(runtime: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    runtime.heartbeat()

    def one(item: FileItem) -> FileItem:
        if item.final or item.claimed:
            return item
        try:
            if not runtime.source.claim(item, runtime.owner, runtime.is_stale):
                item.skip(
                    "claimed_elsewhere",
                    "another run claimed the file, or it was removed",
                    step="claim",
                )
        except PermissionError as exc:
            # The server will not let us move it (e.g. a link pointing outside the root): it
            # cannot be taken, so report it once with a sidecar and leave it where it is.
            item.fail(
                ingest_errors.UNREADABLE,
                f"cannot take the file: {ingest_errors.describe(exc)}",
                step="claim",
            )
        except Exception as exc:
            if not ingest_errors.is_transient(exc):
                log.exception("claim of %s failed", item.origin)
            item.skip("claim_failed", ingest_errors.describe(exc), step="claim")
        return item

    items[:] = runtime.map_io(one, items)  # in place: every step hands on the same list
    return items


def validate(runtime: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    """Name (unsafe paths, extension of an accepted type) and size checks. The content check
    (magic bytes must agree with the extension) runs on the first bytes while the file is
    streamed for the upload, before anything is sent, so each file is read only once."""
    limits = runtime.options.limits()
    for item in items:
        if item.final:
            continue
        try:
            item.file_type = check_name(item.rel, limits)
            check_size(item.size, limits)
        except ingest_errors.FileRejected as rej:
            item.fail(rej.reason, rej.message, step=rej.step)
    return items


def upload(runtime: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    """Read each file once (checks on the way) in the I/O threads, pack the files that go to
    the same queue with the same rule metadata into multi-file uploads, and send each upload
    from an I/O thread, whose wait for Rossum's task follows at once (the wait step collects
    it). Returns once every file of the batch has been sent (or settled otherwise)."""
    runtime.heartbeat()
    todo = [item for item in items if not item.final]
    if runtime.options.files_per_upload <= 1:
        sent: list[threading.Event] = []
        for item in todo:
            event = threading.Event()
            runtime.transfers[item.path] = runtime.uploads.submit(_transfer, runtime, item, event)
            sent.append(event)
        for event in sent:
            event.wait()
        return items
    contents: dict[str, SpooledContent] = {}
    for item, content in zip(
        todo, runtime.uploads.map(lambda i: _read(runtime, i), todo), strict=True
    ):
        if content is not None:
            contents[item.path] = content
    groups = plan_uploads(
        [
            (i, contents[i.path].size, runtime.source.uri(i.origin))
            for i in todo
            if i.path in contents
        ],
        key_of=runtime.upload_key_of,
        metadata_of=lambda item, entries: build_group_metadata(
            runtime.rule_of(item), entries, run_id=runtime.run_id
        ),
        max_files=runtime.options.files_per_upload,
        max_bytes=runtime.options.upload_bytes,
    )
    events: list[threading.Event] = []
    for group in groups:
        event = threading.Event()
        future = runtime.uploads.submit(_transfer_group, runtime, group, contents, event)
        for item in group:
            runtime.transfers[item.path] = future
        events.append(event)
    for event in events:
        event.wait()
    return items


def _transfer(runtime: IngestRuntime, item: FileItem, sent: threading.Event) -> None:
    rossum = runtime.rossum()
    try:
        rossum.run(_send(runtime, rossum, item))
    finally:
        sent.set()
    if item.task_url is not None and not item.final:
        # Wait for Rossum's task right away, in this thread: the batch's waits overlap with
        # its remaining uploads, and the wait step only collects the outcome.
        rossum.run(_wait_one(rossum, item, runtime.source.uri(item.origin)))


def _transfer_group(
    runtime: IngestRuntime,
    group: list[FileItem],
    contents: dict[str, SpooledContent],
    sent: threading.Event,
) -> None:
    """Send one planned upload, then wait for its task (once per task, not per file)."""
    rossum = runtime.rossum()
    try:
        rossum.run(_send_group(runtime, rossum, group, contents))
    finally:
        sent.set()
    by_task: dict[str, list[FileItem]] = {}
    for item in group:
        if item.task_url is not None and not item.final:
            by_task.setdefault(item.task_url, []).append(item)
    for members in by_task.values():
        if len(members) == 1 or any(i.upload_index is None for i in members):
            for item in members:
                rossum.run(_wait_one(rossum, item, runtime.source.uri(item.origin)))
            continue
        rossum.run(rossum.uploader.wait_group([(i, runtime.source.uri(i.origin)) for i in members]))


def _read(runtime: IngestRuntime, item: FileItem) -> SpooledContent | None:
    """Read the file once (sha256, size, first bytes) and check it; None when it cannot be
    uploaded (the item then has its outcome)."""
    opts = runtime.options
    content: SpooledContent | None = None
    try:
        try:
            content = runtime.source.spool(
                item.path, opts.max_file_bytes, opts.spool_memory_bytes, item.size
            )
        except FileNotFoundError as exc:
            raise ingest_errors.FileRejected(
                ingest_errors.VANISHED, "the file disappeared after it was claimed", step="upload"
            ) from exc
        except OSError as exc:
            if ingest_errors.is_missing(exc):
                raise ingest_errors.FileRejected(
                    ingest_errors.VANISHED,
                    "the file disappeared after it was claimed",
                    step="upload",
                ) from exc
            if ingest_errors.is_transient(exc):
                raise
            raise ingest_errors.FileRejected(
                ingest_errors.UNREADABLE,
                f"cannot read the file: {ingest_errors.describe(exc)}",
                step="upload",
            ) from exc
        item.size = content.size
        check_size(content.size, opts.limits())
        assert item.file_type is not None
        check_content(item.rel, item.file_type, content.head)
        item.size, item.sha256 = content.size, content.sha256
        return content
    except ingest_errors.FileRejected as rej:
        if rej.reason == ingest_errors.VANISHED and runtime.source.vanished_means_gone:
            item.skip("gone", "the file was taken by another run or deleted", step="upload")
        else:
            item.fail(rej.reason, rej.message, step=rej.step, rossum=rej.rossum)
    except Exception as exc:
        if ingest_errors.is_transient(exc):
            item.defer("source_unavailable", ingest_errors.describe(exc), step="upload")
        else:
            log.exception("reading %s failed", item.origin)
            item.defer("unexpected_error", ingest_errors.describe(exc), step="upload")
    if content is not None:
        content.close()
    return None


async def _send_group(
    runtime: IngestRuntime,
    rossum: RossumThread,
    group: list[FileItem],
    contents: dict[str, SpooledContent],
) -> None:
    members = [(item, contents[item.path], runtime.source.uri(item.origin)) for item in group]
    try:
        await rossum.uploader.upload_group(members, runtime.rule_of(group[0]))
    except ingest_errors.FileRejected as rej:  # e.g. a rule's metadata too large for Rossum
        for item in group:
            if not item.final and item.task_url is None and item.waiting_on is None:
                item.fail(rej.reason, rej.message, step=rej.step, rossum=rej.rossum)
    except Exception as exc:
        log.exception("upload of %d files failed", len(group))
        for item in group:
            if not item.final and item.task_url is None and item.waiting_on is None:
                item.defer("unexpected_error", ingest_errors.describe(exc), step="upload")
    finally:
        for item in group:
            contents.pop(item.path).close()
            if item.final and item.outcome not in (UPLOADED, DUPLICATE):
                rossum.uploader.release(item)


async def _send(runtime: IngestRuntime, rossum: RossumThread, item: FileItem) -> None:
    content = _read(runtime, item)
    if content is None:
        if item.final and item.outcome not in (UPLOADED, DUPLICATE):
            rossum.uploader.release(item)
        return
    try:
        await rossum.uploader.upload(
            item, content, runtime.rule_of(item), runtime.source.uri(item.origin)
        )
    except ingest_errors.FileRejected as rej:
        item.fail(rej.reason, rej.message, step=rej.step, rossum=rej.rossum)
    except Exception as exc:
        if ingest_errors.is_transient(exc):
            item.defer("source_unavailable", ingest_errors.describe(exc), step="upload")
        else:
            log.exception("upload of %s failed", item.origin)
            item.defer("unexpected_error", ingest_errors.describe(exc), step="upload")
    finally:
        content.close()
        if item.final and item.outcome not in (UPLOADED, DUPLICATE):
            rossum.uploader.release(item)


async def _wait_one(rossum: RossumThread, item: FileItem, source_uri: str) -> None:
    try:
        await rossum.uploader.wait(item, source_uri)
    except Exception as exc:
        log.exception("waiting for %s failed", source_uri)
        item.defer("unexpected_error", ingest_errors.describe(exc), step="wait")


def wait(runtime: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    """Collect the transfers started by :func:`upload`; then wait for what is still open
    (identical content held by another file or run, a task recorded by an earlier run)."""
    runtime.heartbeat()
    for item in items:
        transfer = runtime.transfers.pop(item.path, None)
        if transfer is None:
            continue
        try:
            transfer.result()
        except Exception as exc:  # _transfer settles every item itself; this is a bug guard
            log.exception("transfer of %s failed", item.origin)
            item.defer("unexpected_error", ingest_errors.describe(exc), step="wait")

    def rest(item: FileItem) -> FileItem:
        rossum = runtime.rossum()
        rossum.run(_wait_one(rossum, item, runtime.source.uri(item.origin)))
        if not item.final:
            item.defer(
                "not_uploaded",
                f"no upload outcome (internal: task={item.task_url!r} "
                f"waiting_on={item.waiting_on!r})",
                step="wait",
            )
        return item

    todo = [item for item in items if not (item.final and item.lease is None)]
    list(runtime.uploads.map(rest, todo))
    return items


def _date_folder(runtime: IngestRuntime) -> str:
    layout = runtime.source.layout.archive_layout
    return datetime.now(UTC).strftime(layout) if layout else ""


def sidecar(runtime: IngestRuntime, item: FileItem) -> bytes:
    body = {
        "file": item.rel,
        "source": runtime.source.uri(item.origin),
        "failed_at": ingest_errors.now_iso(),
        "step": item.step,
        "reason": item.reason,
        "message": item.message,
        "rossum": item.rossum,
        "queue_id": item.queue_id,
        "rule": item.rule,
        "size": item.size,
        "sha256": item.sha256,
        "declared_type": item.file_type,
        "run_id": runtime.run_id,
    }
    return json.dumps(body, indent=2, ensure_ascii=False).encode()


def finalize(runtime: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    """Archive uploaded/duplicate files, move failed ones to failed/ with a sidecar; deferred
    files stay claimed for the next run."""
    runtime.heartbeat()
    date = _date_folder(runtime)
    source = runtime.source

    def one(item: FileItem) -> FileItem:
        rule = runtime.rule_of(item)
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
                item.moved_to = source.reject(item, folder, rel, sidecar(runtime, item))
            elif item.outcome == SKIPPED and item.claimed and item.reason != "unrouted":
                source.release(item)
        except Exception as exc:
            # The file stays claimed; the next run recovers it and, thanks to the ledger,
            # only repeats the move.
            log.warning("moving %s after %s failed: %s", item.path, item.outcome, exc)
            item.note = f"not moved yet ({ingest_errors.describe(exc)}); the next run finishes it"
        return item

    done = runtime.map_io(one, items)
    try:
        source.flush()
    except Exception as exc:  # leftover locks are stale once the run ends; nothing is lost
        log.warning("bulk lock release failed: %s", exc)
    runtime.report.add(done)
    runtime.report.uploads_sent = runtime.uploads_sent
    runtime.report.reconciled = runtime.reconciled
    return done


def process_batch(runtime: IngestRuntime, items: list[FileItem]) -> list[FileItem]:
    """All steps for one batch, without Prefect."""
    return finalize(
        runtime, wait(runtime, upload(runtime, validate(runtime, claim(runtime, items))))
    )


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
    through all the steps (the Prefect flow does the same with three tasks per batch)."""
    with IngestRuntime(source, rules, client_factory, options, run_id=run_id) as runtime:
        recovered = recover(runtime)
        pending = [i for i in recovered if not i.final]
        runtime.report.add([i for i in recovered if i.final])
        skip = [i.origin for i in pending]
        candidates = itertools.chain(pending, discover(runtime, skip_paths=skip))
        window = runtime.options.batches_in_flight
        with ThreadPoolExecutor(window, thread_name_prefix="ingest-batch") as batches:
            in_flight: deque[Future[list[FileItem]]] = deque()
            for batch in batched(candidates, runtime.options.batch_size):
                while len(in_flight) >= window:
                    in_flight.popleft().result()
                in_flight.append(batches.submit(process_batch, runtime, batch))
            for future in in_flight:
                future.result()
        runtime.report.finished = time.time()
        return runtime.report


__all__ = [
    "DEFERRED",
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
