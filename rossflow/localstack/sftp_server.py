"""A real SFTP server (asyncssh) rooted in a local directory, for tests and the demo.

It speaks the actual protocol so that the paramiko-based delivery and ingest code is exercised
end to end: host-key verification, password and public-key auth, atomic renames. The server runs
its own event loop in a daemon thread so synchronous callers (pytest, the CLI) can use it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncssh

DEFAULT_USERS: dict[str, str] = {"rossflow": "secret"}


class RootedSFTPServer(asyncssh.SFTPServer):
    """SFTP subsystem confined to ``root``.

    asyncssh's ``chroot`` already normalises ``..``; on top of that every mapped path is resolved
    (symlinks included) and refused if it lands outside the root, so a stray symlink cannot leak
    the host filesystem.
    """

    def __init__(
        self, chan: asyncssh.SSHServerChannel, root: bytes, *, posix_rename: bool = True
    ) -> None:
        super().__init__(chan, chroot=root)
        self._root = os.path.realpath(root)
        self._posix_rename = posix_rename

    def map_path(self, path: bytes) -> bytes:
        local = super().map_path(path)
        resolved = os.path.realpath(local)
        if resolved != self._root and not resolved.startswith(self._root + b"/"):
            raise asyncssh.SFTPPermissionDenied("path escapes the server root")
        return local

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        if not self._posix_rename:
            raise asyncssh.SFTPOpUnsupported("posix-rename not supported")
        super().posix_rename(oldpath, newpath)


class _AuthServer(asyncssh.SSHServer):
    """Password and public-key auth against the in-memory user table."""

    def __init__(
        self,
        users: Mapping[str, str],
        authorized_keys: Mapping[str, asyncssh.SSHAuthorizedKeys],
        connections: set[asyncssh.SSHServerConnection],
    ) -> None:
        self._users = users
        self._keys = authorized_keys
        self._connections = connections
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        keys = self._keys.get(username)
        if keys is not None and self._conn is not None:
            self._conn.set_authorized_keys(keys)
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        expected = self._users.get(username)
        return expected is not None and password == expected

    def public_key_auth_supported(self) -> bool:
        return bool(self._keys)


def _normalize_keys(
    authorized_keys: Mapping[str, Sequence[str] | str] | None,
) -> dict[str, asyncssh.SSHAuthorizedKeys]:
    out: dict[str, asyncssh.SSHAuthorizedKeys] = {}
    for user, keys in (authorized_keys or {}).items():
        text = keys if isinstance(keys, str) else "\n".join(keys)
        out[user] = asyncssh.import_authorized_keys(text)
    return out


class LocalSftpServer:
    """SFTP server on ``host:port`` (0 = free port) serving ``root``.

    ``users`` maps user name to password; ``authorized_keys`` maps user name to OpenSSH public
    key lines (a user listed only there can log in with the key alone). ``host_key_path`` keeps a
    stable host key across runs (created if missing); otherwise a fresh ed25519 key is generated.
    ``posix_rename=False`` makes the server refuse ``posix-rename@openssh.com``, to exercise
    clients' fallback path.
    """

    def __init__(
        self,
        root: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Mapping[str, str] | None = None,
        authorized_keys: Mapping[str, Sequence[str] | str] | None = None,
        *,
        host_key_path: Path | str | None = None,
        posix_rename: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self._requested_port = port
        self.users = dict(DEFAULT_USERS if users is None else users)
        self._authorized_keys = _normalize_keys(authorized_keys)
        self._posix_rename = posix_rename
        self.host_key = self._load_host_key(Path(host_key_path) if host_key_path else None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self.port: int = port

    @staticmethod
    def _load_host_key(path: Path | None) -> asyncssh.SSHKey:
        if path is not None and path.exists():
            return asyncssh.read_private_key(str(path))
        key = asyncssh.generate_private_key("ssh-ed25519")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            key.write_private_key(str(path))
            path.chmod(0o600)
        return key

    @property
    def username(self) -> str:
        """The first configured user (convenient for tests and the demo)."""
        return next(iter(self.users), next(iter(self._authorized_keys), ""))

    @property
    def password(self) -> str | None:
        return self.users.get(self.username)

    def public_host_key(self) -> str:
        """``ssh-ed25519 AAAA…`` without comment."""
        algorithm, blob = self.host_key.export_public_key("openssh").decode().split()[:2]
        return f"{algorithm} {blob}"

    def known_hosts_line(self) -> str:
        """known_hosts entry for this server, e.g. ``[127.0.0.1]:2222 ssh-ed25519 AAAA…``."""
        host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{host} {self.public_host_key()}"

    async def _start_server(self) -> None:
        root = os.fsencode(self.root)
        posix_rename = self._posix_rename
        users, keys = self.users, self._authorized_keys

        def sftp_factory(chan: asyncssh.SSHServerChannel) -> RootedSFTPServer:
            return RootedSFTPServer(chan, root, posix_rename=posix_rename)

        self._server = await asyncssh.create_server(
            lambda: _AuthServer(users, keys, self._connections),
            self.host,
            self._requested_port,
            server_host_keys=[self.host_key],
            sftp_factory=sftp_factory,
            allow_scp=False,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self, timeout: float = 15.0) -> LocalSftpServer:
        self.root.mkdir(parents=True, exist_ok=True)
        loop = asyncio.new_event_loop()
        started = threading.Event()
        errors: list[BaseException] = []

        def runner() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_server())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=runner, name="sftp-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError(f"SFTP server did not start within {timeout}s")
        if errors:
            exc = errors[0]
            if isinstance(exc, OSError):
                raise OSError(
                    exc.errno, f"cannot listen on {self.host}:{self._requested_port}: {exc}"
                ) from exc
            raise RuntimeError(f"SFTP server failed to start: {exc}") from exc
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            self._server.close()
            await self._server.wait_closed()
            for conn in list(self._connections):
                conn.close()
            for conn in list(self._connections):
                await asyncio.wait_for(conn.wait_closed(), 2)
            current = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
        except Exception:  # noqa: S110 - best effort: the loop is stopped below anyway
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def serve_forever(self) -> None:
        """Start (if needed) and block until interrupted (CLI)."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self) -> LocalSftpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(argv: list[str] | None = None) -> int:
    """CLI: ``rossflow sftp --root ./sftp-root --port 2222 --user rossflow:secret``."""
    parser = argparse.ArgumentParser(prog="rossflow sftp", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2222)
    parser.add_argument("--root", default="./sftp-root", help="directory served as /")
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="user with password (repeatable; default rossflow:secret)",
    )
    parser.add_argument(
        "--authorized-keys",
        action="append",
        default=[],
        metavar="NAME:FILE",
        help="OpenSSH authorized_keys file for a user (repeatable)",
    )
    parser.add_argument("--host-key", help="host key file (created if missing) for a stable key")
    args = parser.parse_args(argv)
    users: dict[str, str] | None = None
    if args.user:
        users = {}
        for item in args.user:
            name, sep, password = item.partition(":")
            if not sep:
                parser.error(f"--user expects NAME:PASSWORD, got {item!r}")
            users[name] = password
    keys = {}
    for item in args.authorized_keys:
        name, sep, path = item.partition(":")
        if not sep:
            parser.error(f"--authorized-keys expects NAME:FILE, got {item!r}")
        keys[name] = Path(path).read_text(encoding="utf-8")
    server = LocalSftpServer(
        args.root,
        args.host,
        args.port,
        users=users,
        authorized_keys=keys,
        host_key_path=args.host_key,
    )
    server.start()
    print(f"SFTP server on {server.host}:{server.port}, root {server.root}")
    print(f"known_hosts: {server.known_hosts_line()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
