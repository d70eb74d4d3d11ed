"""SFTP source: a claim is an atomic ``rename`` into ``processing/<run-id>/``.

A second run renaming the same file gets "no such file" and skips it.
``processing/<run-id>/.owner.json`` says which run (host, pid, heartbeat) holds the folder; when
that run is dead or finished, the next run adopts the whole folder with one more atomic rename
and finishes its files. One SFTP session per worker thread (paramiko channels are not
thread-safe).
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import stat as stat_module
import threading
import time
from collections.abc import Iterator
from typing import Any

from rossflow.delivery.sftp import (
    RemoteFileExistsError,
    SftpConnectionError,
    SftpConnectionInfo,
    SftpSession,
    is_temp_name,
)
from rossflow.ingest import errors as ingest_errors
from rossflow.ingest.model import FileItem
from rossflow.ingest.sources.base import (
    OWNER_FILE,
    PREFETCH_FROM,
    SIDECAR_SUFFIX,
    Source,
    SourceLayout,
    SpooledContent,
    StaleCheck,
    numbered,
)
from rossflow.ingest.state import RunOwner
from rossflow.ingest.validation import safe_rel

log = logging.getLogger("rossflow.ingest")


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
                if ingest_errors.is_missing(exc):
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
                if ingest_errors.is_missing(exc):
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
                if not (
                    ingest_errors.is_missing(exc) and folder in self._dirs
                ) or not self._lexists(src):
                    if ingest_errors.is_missing(exc):
                        raise FileNotFoundError(src) from exc
                    raise
                with self._lock:  # the folder went away (another run tidied it): recreate
                    self._dirs.discard(folder)
                self._ensure_dir(folder)
            retries += 1
            if retries > 2:
                raise SftpConnectionError(f"could not move {src} to {candidate}")
        raise ingest_errors.FileRejected(
            "no_free_name", f"no free name for {dest}", step="finalize"
        )

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
            if ingest_errors.is_missing(exc):
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
            if ingest_errors.is_missing(exc):
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
        raise ingest_errors.FileRejected(
            "no_free_name", f"no free name for {target}", step="finalize"
        )

    def release(self, item: FileItem) -> None:
        return None
