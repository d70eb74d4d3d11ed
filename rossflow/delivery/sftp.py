"""SFTP delivery (and the listing/reading/moving helpers the ingest side reuses), with paramiko.

Safety defaults:

* Host keys are verified against the ``known_hosts`` lines given in :class:`SftpConnectionInfo`;
  an unknown or changed key is refused with an error naming the host. Skipping verification is
  an explicit ``verify_host_key=False``.
* Uploads are atomic: the bytes go to ``.<name>.tmp-<random>`` in the target directory and are
  renamed onto the final name only once complete, so a consumer polling the directory never
  sees a partial file under the final name. Consumers should ignore names matching
  :data:`TEMP_NAME_RE` (:meth:`SftpSession.listdir` does by default).

Threading: paramiko's ``SFTPClient`` is not thread-safe. A :class:`SftpSession` serializes its
operations with a lock, so sharing one between threads is *safe but serial*; for parallel
transfers open one session per worker thread (each is one SSH connection).
"""

from __future__ import annotations

import errno
import io
import logging
import posixpath
import re
import secrets
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Literal, TypeVar

import paramiko
from paramiko.hostkeys import HostKeyEntry
from pydantic import BaseModel, ConfigDict, SecretStr

logger = logging.getLogger(__name__)

Collision = Literal["replace", "skip", "error", "rename"]
TEMP_NAME_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")
# paramiko drops the SFTP status code; the server's message is all there is to go by.
_UNSUPPORTED_RE = re.compile(r"unsupported|not supported|not implemented", re.IGNORECASE)

T = TypeVar("T")


def is_temp_name(name: str) -> bool:
    """True for the temporary names :meth:`SftpSession.put_atomic` writes to."""
    return bool(TEMP_NAME_RE.match(posixpath.basename(name)))


class SftpConnectionInfo(BaseModel):
    """Where and how to connect. Secrets stay ``SecretStr`` until handed to paramiko."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    port: int = 22
    username: str
    password: SecretStr | None = None
    private_key: SecretStr | None = None  # PEM or OpenSSH private key text
    passphrase: SecretStr | None = None
    known_hosts: str = ""  # OpenSSH known_hosts lines; "[host]:port" form for port != 22
    verify_host_key: bool = True
    connect_timeout_s: float = 15.0

    @property
    def display(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    @property
    def host_key_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class SftpError(Exception):
    """Base class for SFTP delivery failures (messages never contain secrets)."""


class SftpHostKeyError(SftpError):
    """The server's host key is unknown or does not match known_hosts."""


class SftpAuthError(SftpError):
    """Login refused or the private key is unusable."""


class SftpConnectionError(SftpError):
    """Could not connect, or the connection dropped and reconnecting did not help."""


class RemoteFileExistsError(SftpError, FileExistsError):
    """The target exists and the collision mode is ``error``."""


@dataclass(frozen=True)
class PutResult:
    """Outcome of :meth:`SftpSession.put_atomic` (also used by the S3 adapter)."""

    path: str
    requested_path: str
    skipped: bool = False
    renamed: bool = False
    bytes_written: int = 0


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    path: str
    size: int
    mtime: float | None
    is_dir: bool
    is_file: bool


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """Parse an OpenSSH or PEM private key (ed25519, ECDSA, RSA) given as text."""
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException as exc:
            raise SftpAuthError("the private key is encrypted and no passphrase was given") from exc
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    raise SftpAuthError("unsupported or invalid private key (expected ed25519, ECDSA or RSA)")


def _host_keys(known_hosts: str) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for raw in known_hosts.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "@")):
            continue
        try:
            entry = HostKeyEntry.from_line(line)
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            logger.warning("ignoring unparsable known_hosts line: %s", exc)
            continue
        if entry is None or entry.key is None:
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return keys


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise SftpHostKeyError(
            f"host key of {hostname} is not in known_hosts (server offered {key.get_name()} "
            f"{key.fingerprint}); add the server's known_hosts line (for a port other than 22 "
            f"the host is written [host]:port) or, only if you accept the risk, set "
            f"verify_host_key=False"
        )


def _is_missing(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOENT


class SftpSession:
    """One SSH connection + SFTP channel reused for a batch; reconnects on a dropped link.

    Idempotent operations (listing, stat, reads, ``makedirs``, ``remove``, ``put_atomic`` with
    ``replace``/``skip``) are retried after reconnecting up to ``max_reconnects`` times; others
    (``rename``, ``put_atomic`` with ``error``/``rename``) are not, since a repeat could be
    misreported or duplicate a file.
    """

    def __init__(
        self,
        info: SftpConnectionInfo,
        *,
        max_reconnects: int = 2,
        reconnect_delay_s: float = 0.5,
        keepalive_s: int = 30,
    ) -> None:
        self.info = info
        self.max_reconnects = max_reconnects
        self.reconnect_delay_s = reconnect_delay_s
        self.keepalive_s = keepalive_s
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._posix_rename: bool | None = None  # None = not tried yet
        self.connects = 0

    # -- connection --------------------------------------------------------------------------
    def __enter__(self) -> SftpSession:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is not None and self._alive():
                return self._sftp
            self._drop()
            last: SftpConnectionError | None = None
            for attempt in range(self.max_reconnects + 1):
                try:
                    return self._open()
                except SftpConnectionError as exc:
                    last = exc
                    if attempt < self.max_reconnects:
                        time.sleep(self.reconnect_delay_s * (2**attempt))
            assert last is not None
            raise last

    def _open(self) -> paramiko.SFTPClient:
        info = self.info
        client = paramiko.SSHClient()
        if info.verify_host_key:
            known = _host_keys(info.known_hosts)
            for name in known.keys():  # noqa: SIM118 - HostKeys is a MutableMapping
                for key_type, key in known[name].items():
                    client.get_host_keys().add(name, key_type, key)
            client.set_missing_host_key_policy(_RejectUnknownHost())
        else:
            logger.warning("SFTP host key verification disabled for %s", info.display)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507
        pkey = None
        if info.private_key is not None:
            passphrase = info.passphrase.get_secret_value() if info.passphrase else None
            pkey = load_private_key(info.private_key.get_secret_value(), passphrase)
        try:
            client.connect(
                info.host,
                info.port,
                username=info.username,
                password=info.password.get_secret_value() if info.password else None,
                pkey=pkey,
                timeout=info.connect_timeout_s,
                banner_timeout=info.connect_timeout_s,
                auth_timeout=info.connect_timeout_s,
                allow_agent=False,
                look_for_keys=False,
            )
            sftp = client.open_sftp()
        except SftpError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise SftpHostKeyError(
                f"host key of {info.host_key_name} does not match known_hosts: got "
                f"{exc.key.get_name()} {exc.key.fingerprint}, expected "
                f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint}; refusing to "
                f"connect (possible man-in-the-middle, or the server key changed)"
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SftpAuthError(f"authentication failed for {info.display}: {exc}") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            raise SftpConnectionError(
                f"cannot connect to {info.display}: {type(exc).__name__}: {exc}"
            ) from exc
        transport = client.get_transport()
        if transport is not None and self.keepalive_s:
            transport.set_keepalive(self.keepalive_s)
        self._client, self._sftp = client, sftp
        self.connects += 1
        return sftp

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: S110 - already broken; closing is best effort
                pass
        self._client = self._sftp = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _run(self, what: str, fn: Callable[[paramiko.SFTPClient], T], *, retry: bool = True) -> T:
        with self._lock:
            attempts = self.max_reconnects + 1 if retry else 1
            for attempt in range(attempts):
                sftp = self.connect()
                try:
                    return fn(sftp)
                except SftpError:
                    raise
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    if self._alive():
                        raise  # a genuine SFTP error (no such file, permission, ...)
                    self._drop()
                    if attempt + 1 < attempts:
                        logger.warning(
                            "SFTP connection to %s lost during %s; reconnecting",
                            self.info.display,
                            what,
                        )
                        time.sleep(self.reconnect_delay_s)
                        continue
                    raise SftpConnectionError(
                        f"connection to {self.info.display} lost during {what}"
                        f"{' (not retried: not idempotent)' if not retry else ''}"
                    ) from exc
            raise AssertionError("unreachable")

    # -- reading and listing ---------------------------------------------------------------
    def stat(self, path: str) -> paramiko.SFTPAttributes | None:
        """Attributes of ``path``, or None when it does not exist."""
        return self._run(f"stat {path}", lambda sftp: self._stat(sftp, path))

    @staticmethod
    def _stat(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
        try:
            return sftp.stat(path)
        except OSError as exc:
            if _is_missing(exc):
                return None
            raise

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def listdir(self, path: str = ".", *, include_temp: bool = False) -> list[RemoteEntry]:
        """Entries of ``path`` sorted by name; upload temp files are hidden unless asked for."""

        def op(sftp: paramiko.SFTPClient) -> list[RemoteEntry]:
            entries = []
            for attr in sftp.listdir_attr(path):
                name = attr.filename
                if not include_temp and is_temp_name(name):
                    continue
                mode = attr.st_mode or 0
                entries.append(
                    RemoteEntry(
                        name=name,
                        path=posixpath.join(path, name),
                        size=int(attr.st_size or 0),
                        mtime=float(attr.st_mtime) if attr.st_mtime is not None else None,
                        is_dir=stat_module.S_ISDIR(mode),
                        is_file=stat_module.S_ISREG(mode),
                    )
                )
            return sorted(entries, key=lambda e: e.name)

        return self._run(f"listdir {path}", op)

    def read_bytes(self, path: str) -> bytes:
        def op(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(path, "rb") as fh:
                fh.prefetch()
                return fh.read()

        return self._run(f"read {path}", op)

    @contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        """Stream a remote file; the session is held (other threads wait) until closed."""
        with self._lock:
            sftp = self.connect()
            fh = sftp.open(path, "rb")
            try:
                fh.prefetch()
                yield fh
            finally:
                fh.close()

    # -- writing -----------------------------------------------------------------------------
    def makedirs(self, path: str) -> None:
        """``mkdir -p``; tolerates a concurrent creator."""
        self._run(f"makedirs {path}", lambda sftp: self._makedirs(sftp, path))

    def _makedirs(self, sftp: paramiko.SFTPClient, path: str) -> None:
        path = posixpath.normpath(path)
        if path in ("", ".", "/"):
            return
        attrs = self._stat(sftp, path)
        if attrs is not None:
            if not stat_module.S_ISDIR(attrs.st_mode or 0):
                raise SftpError(f"{path} exists on {self.info.display} and is not a directory")
            return
        self._makedirs(sftp, posixpath.dirname(path))
        try:
            sftp.mkdir(path)
        except OSError:
            attrs = self._stat(sftp, path)
            if attrs is None or not stat_module.S_ISDIR(attrs.st_mode or 0):
                raise

    def remove(self, path: str, *, missing_ok: bool = False) -> None:
        def op(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(path)
            except OSError as exc:
                if not (missing_ok and _is_missing(exc)):
                    raise

        self._run(f"remove {path}", op)

    def rmdir(self, path: str) -> None:
        self._run(f"rmdir {path}", lambda sftp: sftp.rmdir(path))

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        """Move ``src`` to ``dst``; without ``overwrite`` an existing ``dst`` raises
        :class:`RemoteFileExistsError`. Not retried after a disconnect (not idempotent)."""

        def op(sftp: paramiko.SFTPClient) -> None:
            if overwrite:
                self._replace(sftp, src, dst)
                return
            try:
                sftp.rename(src, dst)
            except OSError as exc:
                if not _is_missing(exc) and self._stat(sftp, dst) is not None:
                    raise RemoteFileExistsError(
                        f"{dst} already exists on {self.info.display}"
                    ) from exc
                raise

        self._run(f"rename {src} -> {dst}", op, retry=False)

    def _replace(self, sftp: paramiko.SFTPClient, src: str, dst: str) -> None:
        """Rename with overwrite: ``posix-rename@openssh.com`` when the server has it (atomic),
        otherwise remove + rename (a short window without ``dst``)."""
        if self._posix_rename is not False:
            try:
                sftp.posix_rename(src, dst)
                self._posix_rename = True
                return
            except OSError as exc:
                if exc.errno is not None:
                    raise  # ENOENT/EACCES: a real error, not a missing extension
                if _UNSUPPORTED_RE.search(str(exc)):
                    self._posix_rename = False
                logger.debug("posix-rename failed on %s (%s); falling back", self.info.display, exc)
        try:
            sftp.rename(src, dst)
        except OSError:
            if self._stat(sftp, dst) is None:
                raise
            sftp.remove(dst)
            sftp.rename(src, dst)

    @staticmethod
    def _numbered(path: str, n: int) -> str:
        stem, ext = posixpath.splitext(path)
        return f"{stem}-{n}{ext}"

    def put_atomic(
        self,
        remote_path: str,
        data: bytes | IO[bytes],
        collision: Collision = "replace",
        *,
        make_dirs: bool = True,
    ) -> PutResult:
        """Upload to a temp name in the target directory, then rename onto ``remote_path``.

        ``collision`` decides what happens when the final name exists: ``replace`` it
        (atomically when the server supports posix-rename), ``skip`` the upload, raise
        (``error``) or write ``name-1.ext``, ``name-2.ext``, ... (``rename``). The non-replace
        modes use plain SFTP rename, which refuses to overwrite, so a file created concurrently
        is not clobbered either.
        """
        if collision not in ("replace", "skip", "error", "rename"):
            raise ValueError(f"unknown collision mode {collision!r}")
        requested = posixpath.normpath(remote_path)
        directory, name = posixpath.split(requested)
        if not name or name in (".", ".."):
            raise ValueError(f"not a file path: {remote_path!r}")
        stream: IO[bytes] = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        seekable = stream.seekable() if hasattr(stream, "seekable") else False
        start = stream.tell() if seekable else 0

        def op(sftp: paramiko.SFTPClient) -> PutResult:
            if make_dirs and directory:
                self._makedirs(sftp, directory)
            final = requested
            number = 0
            if collision != "replace" and self._stat(sftp, final) is not None:
                if collision == "skip":
                    return PutResult(final, requested, skipped=True)
                if collision == "error":
                    raise RemoteFileExistsError(f"{final} already exists on {self.info.display}")
                number, final = self._next_free(sftp, requested, 1)
            tmp = posixpath.join(directory, f".{name}.tmp-{secrets.token_hex(4)}")
            if seekable:
                stream.seek(start)
            try:
                written = int(sftp.putfo(stream, tmp, confirm=True).st_size or 0)
                while True:
                    if collision == "replace":
                        self._replace(sftp, tmp, final)
                        break
                    try:
                        sftp.rename(tmp, final)
                        break
                    except OSError:
                        if self._stat(sftp, final) is None:
                            raise
                    # Someone created ``final`` between our check and the rename.
                    if collision == "skip":
                        sftp.remove(tmp)
                        return PutResult(final, requested, skipped=True)
                    if collision == "error":
                        sftp.remove(tmp)
                        raise RemoteFileExistsError(
                            f"{final} already exists on {self.info.display}"
                        )
                    number, final = self._next_free(sftp, requested, number + 1)
            except BaseException:
                self._discard(sftp, tmp)
                raise
            return PutResult(final, requested, renamed=final != requested, bytes_written=written)

        retry = collision in ("replace", "skip") and seekable
        return self._run(f"upload {requested}", op, retry=retry)

    def _next_free(self, sftp: paramiko.SFTPClient, path: str, first: int) -> tuple[int, str]:
        for n in range(first, first + 1000):
            candidate = self._numbered(path, n)
            if self._stat(sftp, candidate) is None:
                return n, candidate
        raise SftpError(f"no free name for {path} on {self.info.display} after 1000 tries")

    def _discard(self, sftp: paramiko.SFTPClient, tmp: str) -> None:
        if not self._alive():
            return
        try:
            sftp.remove(tmp)
        except (OSError, EOFError, paramiko.SSHException):
            pass
