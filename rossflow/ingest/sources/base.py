"""The source contract (:class:`Source`), its folder layout and spooled file content.

Shared by :mod:`.sftp` and :mod:`.s3`; the claim protocol is described in
:mod:`rossflow.ingest.sources`.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

from rossflow.ingest import errors as ingest_errors
from rossflow.ingest.model import FileItem
from rossflow.ingest.rules import glob_to_regex
from rossflow.ingest.state import RunOwner

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
                raise ingest_errors.FileRejected(
                    ingest_errors.TOO_LARGE,
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
