"""Where files come from: SFTP folders and S3 prefixes, with claims that survive crashes.

Layout below the source directory (every area can be set to another folder/prefix)::

    <directory>/                    files to ingest (optionally in sub-folders)
    <directory>/processing/         claims (see below)
    <directory>/archive/YYYY/MM/DD/ uploaded files (folders below the directory are kept)
    <directory>/failed/             rejected files, each with <name>.error.json

Claims, so that two runs never take the same file:

* **SFTP**: a claim is an atomic ``rename`` of the file into ``processing/<run-id>/``; a second
  run renaming the same file gets "no such file" and skips it. ``processing/<run-id>/.owner.json``
  says which run (host, pid, heartbeat) holds the folder; when that run is dead or finished, the
  next run adopts the whole folder with one more atomic rename and finishes its files.
* **S3** has no rename, so the file stays where it is and a claim is a lock object
  ``processing/_locks/<hash>.json`` written with ``If-None-Match: *`` (only one writer can create
  it); a stale lock is taken over with ``If-Match: <its ETag>``, so only one run wins that too.
  Stores without conditional writes fall back to a lock in the local state database (one host).

One SFTP session per worker thread (paramiko channels are not thread-safe); one boto3 client
(thread-safe) for S3.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import posixpath
import re
import stat as stat_module
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rossflow.delivery.sftp import (
    RemoteFileExistsError,
    SftpConnectionError,
    SftpConnectionInfo,
    SftpSession,
    is_temp_name,
)
from rossflow.ingest import errors as E
from rossflow.ingest.model import FileItem
from rossflow.ingest.rules import glob_to_regex
from rossflow.ingest.state import IngestState, RunOwner
from rossflow.ingest.validation import safe_rel

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

log = logging.getLogger("rossflow.ingest")

OWNER_FILE = ".owner.json"
SIDECAR_SUFFIX = ".error.json"
CHUNK = 256 * 1024
PREFETCH_FROM = 1024 * 1024

StaleCheck = Callable[[RunOwner | None, float | None], bool]


class SourceLayout(BaseModel):
    """Folders (SFTP) or key prefixes (S3) of one source."""

    model_config = ConfigDict(extra="forbid")

    directory: str = Field(
        default="",
        description="SFTP folder to ingest from (empty: the login folder) or S3 key prefix "
        "(below the bucket block's bucket_folder).",
    )
    include: str | None = Field(
        default=None, description="Only files whose relative path matches this glob."
    )
    include_regex: str | None = Field(
        default=None, description="Only files whose name matches this regex (re.search)."
    )
    recursive: bool = Field(default=False, description="Also take files in sub-folders.")
    processing_dir: str = Field(
        default="processing", description="Claims area (relative to directory, or absolute)."
    )
    archive_dir: str = Field(
        default="archive", description="Where uploaded files go (relative or absolute)."
    )
    failed_dir: str = Field(
        default="failed", description="Where rejected files and their .error.json go."
    )
    archive_layout: str = Field(
        default="%Y/%m/%d",
        description="strftime sub-folders below the archive (UTC date); empty for none.",
    )

    def include_matcher(self) -> Callable[[str], bool]:
        glob = glob_to_regex(self.include) if self.include else None
        regex = re.compile(self.include_regex) if self.include_regex else None

        def accept(rel: str) -> bool:
            if glob is not None and not glob.match(rel):
                return False
            return not (regex is not None and not regex.search(posixpath.basename(rel)))

        return accept


def numbered(path: str, n: int) -> str:
    if n == 0:
        return path
    stem, ext = posixpath.splitext(path)
    if stem.endswith(".") or not stem or stem.endswith("/"):
        return f"{path}-{n}"
    return f"{stem}-{n}{ext}"


class SpooledContent:
    """A file's content read once: sha256, size, first bytes and a rewindable stream.

    Up to ``memory_bytes`` the content is held in memory; beyond that it goes to an anonymous
    temporary file, so a 40 MB upload costs 40 MB of disk, not of RAM. (Not a
    ``SpooledTemporaryFile``: httpx asks for ``fileno()`` to size the upload, which would make
    every spooled file roll over to disk.)"""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self.stream: IO[bytes] = io.BytesIO()
        self.sha256 = ""
        self.size = 0
        self.head = b""

    def fill(self, reader: IO[bytes], limit: int, head_bytes: int = 8192) -> SpooledContent:
        digest = hashlib.sha256()
        self.stream.close()
        self.stream = io.BytesIO()
        size = 0
        head = bytearray()
        while True:
            chunk = reader.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise E.FileRejected(
                    E.TOO_LARGE,
                    f"the file has more than {limit} bytes (the limit)",
                    step="validate",
                )
            if len(head) < head_bytes:
                head += chunk[: head_bytes - len(head)]
            digest.update(chunk)
            if isinstance(self.stream, io.BytesIO) and size > self.memory_bytes:
                spill = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
                spill.write(self.stream.getbuffer())
                self.stream.close()
                self.stream = spill
            self.stream.write(chunk)
        self.sha256, self.size, self.head = digest.hexdigest(), size, bytes(head)
        self.stream.seek(0)
        return self

    @property
    def in_memory(self) -> bool:
        return isinstance(self.stream, io.BytesIO)

    def close(self) -> None:
        self.stream.close()


class Source(ABC):
    """What the pipeline needs from a place files are dropped into."""

    kind = "source"
    #: True when a claimed file that disappears was most likely finished by another run (S3
    #: locks leave the file in place); False when the claim moved it into our own area (SFTP).
    vanished_means_gone = False

    def __init__(self, layout: SourceLayout) -> None:
        self.layout = layout

    # -- naming ------------------------------------------------------------------------------
    @abstractmethod
    def uri(self, path: str) -> str: ...

    @property
    @abstractmethod
    def root(self) -> str:
        """The source directory / prefix, normalized."""

    @abstractmethod
    def area(self, name: str) -> str:
        """Full path/prefix of an area folder given relative to the directory or absolute."""

    @abstractmethod
    def rel_of(self, path: str) -> str: ...

    @abstractmethod
    def join(self, folder: str, rel: str) -> str: ...

    def areas(self) -> list[str]:
        lay = self.layout
        return [
            self.area(lay.processing_dir),
            self.area(lay.archive_dir),
            self.area(lay.failed_dir),
        ]

    # -- listing -----------------------------------------------------------------------------
    @abstractmethod
    def walk(self, folder: str, recursive: bool, exclude: list[str]) -> Iterator[FileItem]:
        """Files below ``folder`` (not inside ``exclude`` folders), as unclaimed items."""

    # -- claims ------------------------------------------------------------------------------
    @abstractmethod
    def claim(self, item: FileItem, owner: RunOwner, is_stale: StaleCheck) -> bool:
        """Take ``item`` for this run; False when another run has it or it is gone."""

    @abstractmethod
    def recover(self, owner: RunOwner, is_stale: StaleCheck) -> list[FileItem]:
        """Adopt the claims of dead runs; returns the adopted files (already claimed)."""

    @abstractmethod
    def heartbeat(self, owner: RunOwner) -> None: ...

    @abstractmethod
    def finish(self, owner: RunOwner) -> None:
        """End of run: tidy this run's claim area (what is left stays claimed as 'finished')."""

    # -- content -----------------------------------------------------------------------------
    @abstractmethod
    def spool(
        self, path: str, limit: int, memory_bytes: int, size_hint: int | None = None
    ) -> SpooledContent:
        """Read the file once: sha256, size and first bytes computed on the way; content kept
        in memory up to ``memory_bytes``, beyond that in a temporary file."""

    @abstractmethod
    def size_of(self, path: str) -> int | None:
        """Current size, or None when the file does not exist."""

    # -- moves -------------------------------------------------------------------------------
    @abstractmethod
    def archive(self, item: FileItem, folder: str, rel: str) -> str:
        """Move the claimed file to ``folder/rel`` (numbered if taken); returns the new path."""

    @abstractmethod
    def reject(self, item: FileItem, folder: str, rel: str, sidecar: bytes) -> str:
        """Write ``<target>.error.json`` and move the file (if it still exists) to
        ``folder/rel`` (numbered if taken); returns the target path."""

    @abstractmethod
    def unclaim(self, item: FileItem) -> None:
        """Give a claimed file back: it goes back to where it was found."""

    @abstractmethod
    def has_sidecar(self, folder: str, rel: str) -> bool:
        """Is there already a ``<rel>.error.json`` in ``folder``?"""

    @abstractmethod
    def release(self, item: FileItem) -> None:
        """Give up the claim of a file that stays where it is (S3 lock)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Finish deferred bookkeeping of a batch (S3: release locks in bulk)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


# ==================================================================================== SFTP
class SftpSource(Source):
    """An SFTP folder. Thread-safe: each thread gets its own :class:`SftpSession`."""

    kind = "sftp"

    def __init__(self, info: SftpConnectionInfo, layout: SourceLayout) -> None:
        super().__init__(layout)
        self.info = info
        self._local = threading.local()
        self._sessions: list[SftpSession] = []
        self._lock = threading.Lock()
        self._dirs: set[str] = set()
        self._my_dirs: list[str] = []
        directory = layout.directory.strip()
        self._root = posixpath.normpath(directory) if directory else "."

    # -- sessions ----------------------------------------------------------------------------
    def session(self) -> SftpSession:
        session = getattr(self._local, "session", None)
        if session is None:
            session = SftpSession(self.info)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    # -- naming ------------------------------------------------------------------------------
    def uri(self, path: str) -> str:
        shown = path if path.startswith("/") else "/" + posixpath.normpath(path).lstrip("./")
        return f"sftp://{self.info.username}@{self.info.host}:{self.info.port}{shown}"

    @property
    def root(self) -> str:
        return self._root

    def area(self, name: str) -> str:
        if name.startswith("/"):
            return posixpath.normpath(name)
        return posixpath.normpath(posixpath.join(self._root, name))

    def join(self, folder: str, rel: str) -> str:
        return posixpath.normpath(posixpath.join(folder, rel))

    def rel_of(self, path: str) -> str:
        path = posixpath.normpath(path)
        if self._root == ".":
            return path.lstrip("/") if path.startswith("/") else path
        if path.startswith(self._root.rstrip("/") + "/"):
            return path[len(self._root.rstrip("/")) + 1 :]
        return path.lstrip("/")

    # -- listing -----------------------------------------------------------------------------
    def walk(self, folder: str, recursive: bool, exclude: list[str]) -> Iterator[FileItem]:
        session = self.session()
        folder = posixpath.normpath(folder)
        excluded = {posixpath.normpath(x) for x in exclude}
        pending = [folder]
        while pending:
            current = pending.pop(0)
            try:
                entries = session.listdir(current)
            except OSError as exc:
                if E.is_missing(exc):
                    continue
                raise
            for entry in entries:
                path = posixpath.normpath(entry.path)
                if entry.is_dir:
                    if recursive and path not in excluded:
                        pending.append(path)
                    continue
                if is_temp_name(entry.name):
                    continue
                if not entry.is_file:
                    # A symlink or special file: only follow what is a regular file behind it.
                    try:
                        attrs = session.stat(path)
                    except OSError:
                        attrs = None  # e.g. a link the server refuses to follow: unreadable
                    if attrs is not None and stat_module.S_ISDIR(attrs.st_mode or 0):
                        continue
                yield FileItem(
                    rel=self.rel_of(path),
                    origin=path,
                    path=path,
                    size=entry.size if entry.is_file else None,
                    mtime=entry.mtime,
                )

    # -- helpers -----------------------------------------------------------------------------
    def _ensure_dir(self, folder: str) -> None:
        if folder in self._dirs or folder in ("", ".", "/"):
            return
        self.session().makedirs(folder)
        with self._lock:
            self._dirs.add(folder)

    def _exists(self, path: str) -> bool:
        return self.session().stat(path) is not None

    def _lexists(self, path: str) -> bool:
        """Like ``_exists`` but a (broken or looping) symlink counts as existing."""

        def op(sftp: Any) -> bool:
            try:
                sftp.lstat(path)
                return True
            except OSError as exc:
                if E.is_missing(exc):
                    return False
                raise

        return self.session()._run(f"lstat {path}", op)

    def _rename_free(self, src: str, dest: str) -> str:
        """Rename ``src`` to ``dest`` or ``dest-1``, ``dest-2``…; never overwrites. A rename
        whose answer was lost (dropped connection) is verified, then retried once."""
        session = self.session()
        folder = posixpath.dirname(dest)
        self._ensure_dir(folder)
        n, retries = 0, 0
        while n < 1000:
            candidate = numbered(dest, n)
            try:
                session.rename(src, candidate)
                return candidate
            except RemoteFileExistsError:
                n += 1
                continue
            except SftpConnectionError:
                # The rename may or may not have happened: look.
                if not self._lexists(src):
                    if self._lexists(candidate):
                        return candidate
                    raise FileNotFoundError(src) from None
            except OSError as exc:
                if not (E.is_missing(exc) and folder in self._dirs) or not self._lexists(src):
                    if E.is_missing(exc):
                        raise FileNotFoundError(src) from exc
                    raise
                with self._lock:  # the folder went away (another run tidied it): recreate
                    self._dirs.discard(folder)
                self._ensure_dir(folder)
            retries += 1
            if retries > 2:
                raise SftpConnectionError(f"could not move {src} to {candidate}")
        raise E.FileRejected("no_free_name", f"no free name for {dest}", step="finalize")

    def _write(self, path: str, data: bytes) -> None:
        self._ensure_dir(posixpath.dirname(path))
        self.session().put_atomic(path, data, collision="replace", make_dirs=False)

    def _run_dir(self, owner: RunOwner) -> str:
        return posixpath.join(self.area(self.layout.processing_dir), owner.run_id)

    def _write_owner(self, folder: str, owner: RunOwner) -> None:
        self._write(posixpath.join(folder, OWNER_FILE), owner.to_json().encode())

    # -- claims ------------------------------------------------------------------------------
    def claim(self, item: FileItem, owner: RunOwner, is_stale: StaleCheck) -> bool:
        run_dir = self._run_dir(owner)
        if run_dir not in self._my_dirs:
            with self._lock:
                first = run_dir not in self._my_dirs
                if first:
                    self._my_dirs.append(run_dir)
            if first:
                self._write_owner(run_dir, owner)  # before any file goes in
        try:
            item.path = self._rename_free(item.path, posixpath.join(run_dir, safe_rel(item.rel)))
        except FileNotFoundError:
            return False
        except OSError as exc:
            if E.is_missing(exc):
                return False
            raise
        item.claimed = True
        return True

    def recover(self, owner: RunOwner, is_stale: StaleCheck) -> list[FileItem]:
        processing = self.area(self.layout.processing_dir)
        session = self.session()
        try:
            entries = session.listdir(processing)
        except OSError as exc:
            if E.is_missing(exc):
                return []
            raise
        adopted: list[FileItem] = []
        for entry in entries:
            if (
                not entry.is_dir
                or entry.name == owner.run_id
                or entry.name.startswith(owner.run_id + "~")
            ):
                continue
            other: RunOwner | None = None
            try:
                other = RunOwner.from_json(
                    session.read_bytes(posixpath.join(entry.path, OWNER_FILE))
                )
            except OSError:
                other = None
            age = time.time() - entry.mtime if entry.mtime else None
            if not is_stale(other, age):
                continue
            target = posixpath.join(processing, f"{owner.run_id}~{len(self._my_dirs)}")
            try:
                session.rename(entry.path, target)
            except (OSError, SftpConnectionError) as exc:
                log.info("could not adopt %s (another run was faster?): %s", entry.path, exc)
                continue
            with self._lock:
                self._my_dirs.append(target)
            self._write_owner(target, owner)
            log.warning(
                "adopted stale claims of run %s from %s",
                other.run_id if other else "?",
                entry.path,
            )
            for item in self._walk_claimed(target):
                item.recovered = True
                adopted.append(item)
        return adopted

    def _walk_claimed(self, folder: str) -> Iterator[FileItem]:
        session = self.session()
        pending = [folder]
        while pending:
            current = pending.pop(0)
            for entry in session.listdir(current):
                if entry.is_dir:
                    pending.append(entry.path)
                    continue
                if current == folder and entry.name == OWNER_FILE:
                    continue
                rel = posixpath.relpath(entry.path, folder)
                yield FileItem(
                    rel=rel,
                    origin=self.join(self._root, rel),
                    path=entry.path,
                    size=entry.size if entry.is_file else None,
                    mtime=entry.mtime,
                    claimed=True,
                )

    def heartbeat(self, owner: RunOwner) -> None:
        for folder in list(self._my_dirs):
            with contextlib.suppress(OSError, SftpConnectionError):
                self._write_owner(folder, owner)

    def finish(self, owner: RunOwner) -> None:
        for folder in list(self._my_dirs):
            try:
                if any(True for _ in self._walk_claimed(folder)):
                    self._write_owner(folder, owner)  # finished: the next run adopts what's left
                    continue
                self._remove_tree(folder)
            except (OSError, SftpConnectionError) as exc:
                log.warning("could not tidy %s: %s", folder, exc)
        with self._lock:
            self._my_dirs.clear()

    def _remove_tree(self, folder: str) -> None:
        session = self.session()
        for entry in session.listdir(folder, include_temp=True):
            if entry.is_dir:
                self._remove_tree(entry.path)
            else:
                session.remove(entry.path, missing_ok=True)
        session.rmdir(folder)
        with self._lock:
            self._dirs = {d for d in self._dirs if not (d == folder or d.startswith(folder + "/"))}

    # -- content -----------------------------------------------------------------------------
    def spool(
        self, path: str, limit: int, memory_bytes: int, size_hint: int | None = None
    ) -> SpooledContent:
        content = SpooledContent(memory_bytes)

        def op(sftp: Any) -> SpooledContent:
            with sftp.open(path, "rb") as fh:
                if size_hint and size_hint > PREFETCH_FROM:
                    fh.prefetch(size_hint)  # parallel read requests for big files
                return content.fill(fh, limit)

        try:
            return self.session()._run(f"read {path}", op)
        except BaseException:
            content.close()
            raise

    def size_of(self, path: str) -> int | None:
        attrs = self.session().stat(path)
        return None if attrs is None else int(attrs.st_size or 0)

    # -- moves -------------------------------------------------------------------------------
    def archive(self, item: FileItem, folder: str, rel: str) -> str:
        return self._rename_free(item.path, self.join(folder, safe_rel(rel)))

    def unclaim(self, item: FileItem) -> None:
        item.path = self._rename_free(item.path, item.origin)
        item.claimed = False

    def has_sidecar(self, folder: str, rel: str) -> bool:
        return self._exists(self.join(folder, safe_rel(rel)) + SIDECAR_SUFFIX)

    def reject(self, item: FileItem, folder: str, rel: str, sidecar: bytes) -> str:
        target = self.join(folder, safe_rel(rel))
        self._ensure_dir(posixpath.dirname(target))
        exists = item.claimed and self._lexists(item.path)
        for n in range(1000):
            candidate = numbered(target, n)
            if self._lexists(candidate) or self._lexists(candidate + SIDECAR_SUFFIX):
                continue
            self._write(candidate + SIDECAR_SUFFIX, sidecar)
            if not exists:
                return candidate
            try:
                self.session().rename(item.path, candidate)
                return candidate
            except RemoteFileExistsError:
                self.session().remove(candidate + SIDECAR_SUFFIX, missing_ok=True)
                continue
        raise E.FileRejected("no_free_name", f"no free name for {target}", step="finalize")

    def release(self, item: FileItem) -> None:
        return None


# ====================================================================================== S3
class S3Source(Source):
    """An S3 prefix through a prefect-aws ``S3Bucket`` block (any S3-compatible endpoint)."""

    kind = "s3"
    vanished_means_gone = True

    def __init__(
        self,
        bucket: S3Bucket,
        layout: SourceLayout,
        state: IngestState | None = None,
        *,
        claims: Literal["lock-object", "local"] = "lock-object",
    ):
        super().__init__(layout)
        from rossflow.delivery.s3 import resolve_key, s3_client

        self.bucket = bucket
        self.bucket_name = bucket.bucket_name
        self.client = s3_client(bucket)
        self._resolve = lambda key: resolve_key(bucket, key)
        directory = layout.directory.strip().strip("/")
        folder = (bucket.bucket_folder or "").strip("/")
        if directory:
            self._root = self._resolve(directory).rstrip("/")
        else:
            self._root = folder
        self.state = state
        self._conditional: bool | None = None  # None: not known yet
        self._owners: dict[str, RunOwner | None] = {}
        self._fallback_run: str | None = None
        self._held = 0  # locks this run holds right now
        self._release_queue: list[tuple[str, str]] = []  # (lock key, ETag) to delete in bulk
        if claims == "local":
            # Locks in the local state database instead of lock objects: two requests fewer per
            # file, but only runs sharing that database (one host) are kept apart.
            self._conditional = False
        self._conditional_copy: bool | None = None
        self._lock = threading.Lock()

    # -- naming ------------------------------------------------------------------------------
    def uri(self, path: str) -> str:
        return f"s3://{self.bucket_name}/{path}"

    @property
    def root(self) -> str:
        return self._root

    def area(self, name: str) -> str:
        if name.startswith("/"):
            return self._resolve(name.strip("/")).rstrip("/")
        return posixpath.join(self._root, name.strip("/")) if self._root else name.strip("/")

    def join(self, folder: str, rel: str) -> str:
        return f"{folder.rstrip('/')}/{rel}" if folder else rel

    def rel_of(self, path: str) -> str:
        if self._root and path.startswith(self._root + "/"):
            return path[len(self._root) + 1 :]
        return path

    def _lock_key(self, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        return posixpath.join(self.area(self.layout.processing_dir), "_locks", f"{digest}.json")

    def _run_key(self, run_id: str) -> str:
        return posixpath.join(self.area(self.layout.processing_dir), "_runs", f"{run_id}.json")

    @staticmethod
    def _code(exc: Any) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    @staticmethod
    def _status(exc: Any) -> int:
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)

    # -- listing -----------------------------------------------------------------------------
    def walk(self, folder: str, recursive: bool, exclude: list[str]) -> Iterator[FileItem]:
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        excluded = [f"{x.rstrip('/')}/" for x in exclude]
        params: dict[str, Any] = {"Bucket": self.bucket_name, "Prefix": prefix}
        if not recursive:
            params["Delimiter"] = "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(**params):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") or any(key.startswith(x) for x in excluded):
                    continue
                modified = obj.get("LastModified")
                yield FileItem(
                    rel=self.rel_of(key),
                    origin=key,
                    path=key,
                    size=int(obj.get("Size", 0)),
                    mtime=modified.timestamp() if isinstance(modified, datetime) else None,
                    etag=obj.get("ETag"),
                )

    # -- owners ------------------------------------------------------------------------------
    def _owner(self, run_id: str) -> RunOwner | None:
        with self._lock:
            if run_id in self._owners:
                return self._owners[run_id]
        try:
            body = self.client.get_object(Bucket=self.bucket_name, Key=self._run_key(run_id))
            owner = RunOwner.from_json(body["Body"].read())
        except Exception as exc:
            if not E.is_missing(exc):
                raise
            owner = None
        with self._lock:
            self._owners[run_id] = owner
        return owner

    def heartbeat(self, owner: RunOwner) -> None:
        self.client.put_object(
            Bucket=self.bucket_name,
            Key=self._run_key(owner.run_id),
            Body=owner.to_json().encode(),
            ContentType="application/json",
        )

    def finish(self, owner: RunOwner) -> None:
        self.flush()
        if self._held:
            self.heartbeat(owner)  # finished_at set: locks left behind are stale at once
        else:
            self.client.delete_object(Bucket=self.bucket_name, Key=self._run_key(owner.run_id))

    # -- claims ------------------------------------------------------------------------------
    def _put_lock(self, key: str, body: bytes, **cond: str) -> str | None:
        """Conditional PUT; the new ETag, or None when the condition failed."""
        from botocore.exceptions import ClientError

        try:
            resp = self.client.put_object(
                Bucket=self.bucket_name,
                Key=key,
                Body=body,
                ContentType="application/json",
                **cond,
            )
        except ClientError as exc:
            code, status = self._code(exc), self._status(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                409,
                412,
            ):
                return None
            if code in ("NotImplemented", "InvalidArgument", "InvalidRequest") or status == 501:
                self._conditional = False
                raise _NoConditionalWrites() from exc
            raise
        self._conditional = True
        return str(resp.get("ETag"))

    def claim(self, item: FileItem, owner: RunOwner, is_stale: StaleCheck) -> bool:
        if item.claimed:
            return True
        lock_key = self._lock_key(item.path)
        body = json.dumps({"run_id": owner.run_id, "key": item.path, "at": time.time()}).encode()
        etag: str | None = None
        if self._conditional is not False:
            try:
                etag = self._put_lock(lock_key, body, IfNoneMatch="*")
                if etag is None:
                    etag = self._take_over(lock_key, body, owner, is_stale)
                    if etag is None:
                        return False
            except _NoConditionalWrites:
                etag = None
        if self._conditional is False:
            self._fallback_run = owner.run_id
            if self.state is None or not self.state.try_lock(
                f"{self.bucket_name}/{item.path}", owner.run_id
            ):
                return False
            etag = ""
        with self._lock:
            self._held += 1
        # No HEAD here: if the object is gone (another run archived it between our listing and
        # our lock), reading it says so and the file is skipped (``vanished_means_gone``).
        item.lock = etag
        item.claimed = True
        return True

    def _take_over(
        self, lock_key: str, body: bytes, owner: RunOwner, is_stale: StaleCheck
    ) -> str | None:
        try:
            current = self.client.get_object(Bucket=self.bucket_name, Key=lock_key)
        except Exception as exc:
            if E.is_missing(exc):  # released meanwhile: try once more from scratch
                return self._put_lock(lock_key, body, IfNoneMatch="*")
            raise
        data = json.loads(current["Body"].read() or b"{}")
        holder = str(data.get("run_id", ""))
        if holder == owner.run_id:
            return str(current.get("ETag"))
        modified = current.get("LastModified")
        age = time.time() - modified.timestamp() if isinstance(modified, datetime) else None
        if not is_stale(self._owner(holder) if holder else None, age):
            return None
        log.warning("taking over the stale claim of run %s on %s", holder, data.get("key"))
        return self._put_lock(lock_key, body, IfMatch=str(current.get("ETag")))

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return dict(self.client.head_object(Bucket=self.bucket_name, Key=key))
        except ClientError as exc:
            if E.is_missing(exc) or self._status(exc) == 404:
                return None
            raise

    def release(self, item: FileItem) -> None:
        from botocore.exceptions import ClientError

        if item.lock is None:
            return
        with self._lock:
            self._held -= 1
        if item.lock == "":
            if self.state is not None and self._fallback_run:
                self.state.unlock(f"{self.bucket_name}/{item.path}", self._fallback_run)
            item.lock = None
            return
        lock_key = self._lock_key(item.path)
        try:
            params: dict[str, Any] = {"Bucket": self.bucket_name, "Key": lock_key}
            if item.lock:
                params["IfMatch"] = item.lock
            self.client.delete_object(**params)
        except ClientError as exc:
            if self._code(exc) not in ("PreconditionFailed", "NoSuchKey", "NotImplemented"):
                raise
        item.lock = None

    def recover(self, owner: RunOwner, is_stale: StaleCheck) -> list[FileItem]:
        """Stale locks on files that still exist are taken over when listing finds the file
        again; here only locks whose file is gone, and finished runs' records, are removed."""
        prefix = posixpath.join(self.area(self.layout.processing_dir), "_locks") + "/"
        from botocore.exceptions import ClientError

        holders: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket_name, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                try:
                    current = self.client.get_object(Bucket=self.bucket_name, Key=obj["Key"])
                    data = json.loads(current["Body"].read() or b"{}")
                except (ClientError, ValueError):
                    continue
                holder = str(data.get("run_id", ""))
                holders.add(holder)
                age = time.time() - obj["LastModified"].timestamp()
                if holder == owner.run_id or not is_stale(
                    self._owner(holder) if holder else None, age
                ):
                    continue
                if self._head(str(data.get("key", ""))) is None:
                    with contextlib.suppress(ClientError):
                        self.client.delete_object(
                            Bucket=self.bucket_name, Key=obj["Key"], IfMatch=current["ETag"]
                        )
        # Records of runs that hold nothing any more and will not come back.
        runs = self._run_key("x").rsplit("/", 1)[0] + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket_name, Prefix=runs
        ):
            for obj in page.get("Contents", []):
                run_id = obj["Key"][len(runs) :].removesuffix(".json")
                if run_id == owner.run_id or run_id in holders:
                    continue
                age = time.time() - obj["LastModified"].timestamp()
                if is_stale(self._owner(run_id), age):
                    with contextlib.suppress(ClientError):
                        self.client.delete_object(Bucket=self.bucket_name, Key=obj["Key"])
        return []

    # -- content -----------------------------------------------------------------------------
    def spool(
        self, path: str, limit: int, memory_bytes: int, size_hint: int | None = None
    ) -> SpooledContent:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket_name, Key=path)
        except ClientError as exc:
            if E.is_missing(exc):
                raise FileNotFoundError(self.uri(path)) from exc
            raise
        if int(resp.get("ContentLength") or 0) > limit:
            resp["Body"].close()
            raise E.FileRejected(
                E.TOO_LARGE,
                f"the file has {resp.get('ContentLength')} bytes; the limit is {limit} bytes",
                step="validate",
            )
        content = SpooledContent(memory_bytes)
        try:
            return content.fill(resp["Body"], limit)
        except BaseException:
            content.close()
            raise
        finally:
            resp["Body"].close()

    def size_of(self, path: str) -> int | None:
        head = self._head(path)
        return None if head is None else int(head.get("ContentLength", 0))

    # -- moves -------------------------------------------------------------------------------
    def _copy_free(self, src: str, dest: str, etag: str | None) -> str:
        """Server-side copy to ``dest`` (or ``dest-1``…) without overwriting anything: a
        conditional copy (``If-None-Match: *``) where the store has it, else HEAD first."""
        from botocore.exceptions import ClientError

        for n in range(1000):
            candidate = numbered(dest, n)
            if self._conditional_copy is False:
                existing = self._head(candidate)
                if existing is not None:
                    if etag and existing.get("ETag") == etag:
                        return candidate  # a previous attempt already copied it
                    continue
            params: dict[str, Any] = {
                "Bucket": self.bucket_name,
                "Key": candidate,
                "CopySource": {"Bucket": self.bucket_name, "Key": src},
            }
            if self._conditional_copy is not False:
                params["IfNoneMatch"] = "*"
            try:
                self.client.copy_object(**params)
            except ClientError as exc:
                code, status = self._code(exc), self._status(exc)
                if E.is_missing(exc) or code == "NoSuchKey":
                    raise FileNotFoundError(self.uri(src)) from exc
                if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                    409,
                    412,
                ):
                    existing = self._head(candidate)
                    if existing is not None and etag and existing.get("ETag") == etag:
                        return candidate  # a previous attempt already copied it
                    continue
                if code in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                    self._conditional_copy = False
                    return self._copy_free(src, dest, etag)
                raise
            return candidate
        raise E.FileRejected("no_free_name", f"no free key for {dest}", step="finalize")

    def archive(self, item: FileItem, folder: str, rel: str) -> str:
        target = self._copy_free(item.path, self.join(folder, safe_rel(rel)), item.etag)
        self.client.delete_object(Bucket=self.bucket_name, Key=item.path)
        self._release_later(item)
        return target

    def _release_later(self, item: FileItem) -> None:
        """The file is gone from the inbox: its lock can go with the batch's other locks (one
        DeleteObjects request). Until then it only guards a key that no longer exists."""
        if not item.lock:
            self.release(item)
            return
        with self._lock:
            self._release_queue.append((self._lock_key(item.path), item.lock))
        item.lock = None

    def flush(self) -> None:
        from botocore.exceptions import ClientError

        with self._lock:
            pending, self._release_queue = self._release_queue, []
        for start in range(0, len(pending), 1000):
            chunk = pending[start : start + 1000]
            objects = [{"Key": key, "ETag": etag} for key, etag in chunk]
            try:
                self.client.delete_objects(
                    Bucket=self.bucket_name, Delete={"Objects": objects, "Quiet": True}
                )
            except ClientError as exc:
                if self._code(exc) not in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                    raise
                self.client.delete_objects(
                    Bucket=self.bucket_name,
                    Delete={"Objects": [{"Key": key} for key, _ in chunk], "Quiet": True},
                )
        with self._lock:
            self._held -= len(pending)

    def unclaim(self, item: FileItem) -> None:
        self.release(item)
        item.claimed = False

    def has_sidecar(self, folder: str, rel: str) -> bool:
        return self._head(self.join(folder, safe_rel(rel)) + SIDECAR_SUFFIX) is not None

    def reject(self, item: FileItem, folder: str, rel: str, sidecar: bytes) -> str:
        target = self.join(folder, safe_rel(rel))
        exists = item.claimed and self._head(item.path) is not None
        for n in range(1000):
            candidate = numbered(target, n)
            if self._head(candidate) is not None or self._head(candidate + SIDECAR_SUFFIX):
                continue
            self.client.put_object(
                Bucket=self.bucket_name,
                Key=candidate + SIDECAR_SUFFIX,
                Body=sidecar,
                ContentType="application/json",
            )
            if exists:
                self._copy_free(item.path, candidate, item.etag)
                self.client.delete_object(Bucket=self.bucket_name, Key=item.path)
                self._release_later(item)
            else:
                self.release(item)
            return candidate
        raise E.FileRejected("no_free_name", f"no free key for {target}", step="finalize")


class _NoConditionalWrites(Exception):
    pass
