"""S3 source: a claim is a lock object written with ``If-None-Match: *``.

S3 has no rename, so the file stays where it is and the lock
``processing/_locks/<hash>.json`` can be created by only one writer; a stale lock is taken over
with ``If-Match: <its ETag>``, so only one run wins that too. Stores without conditional writes
fall back to a lock in the local state database (one host). One boto3 client (thread-safe).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from rossflow.ingest import errors as ingest_errors
from rossflow.ingest.model import FileItem
from rossflow.ingest.sources.base import (
    SIDECAR_SUFFIX,
    Source,
    SourceLayout,
    SpooledContent,
    StaleCheck,
    numbered,
)
from rossflow.ingest.state import IngestState, RunOwner
from rossflow.ingest.validation import safe_rel

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

log = logging.getLogger("rossflow.ingest")


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
            if not ingest_errors.is_missing(exc):
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
            if ingest_errors.is_missing(exc):  # released meanwhile: try once more from scratch
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
            if ingest_errors.is_missing(exc) or self._status(exc) == 404:
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
            if ingest_errors.is_missing(exc):
                raise FileNotFoundError(self.uri(path)) from exc
            raise
        if int(resp.get("ContentLength") or 0) > limit:
            resp["Body"].close()
            raise ingest_errors.FileRejected(
                ingest_errors.TOO_LARGE,
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
                if ingest_errors.is_missing(exc) or code == "NoSuchKey":
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
        raise ingest_errors.FileRejected("no_free_name", f"no free key for {dest}", step="finalize")

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
        raise ingest_errors.FileRejected(
            "no_free_name", f"no free key for {target}", step="finalize"
        )


class _NoConditionalWrites(Exception):
    pass
