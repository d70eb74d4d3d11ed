"""SFTP delivery against a real (asyncssh) SFTP server."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from rossflow.delivery.sftp import (
    TEMP_NAME_RE,
    RemoteFileExistsError,
    SftpAuthError,
    SftpConnectionError,
    SftpConnectionInfo,
    SftpHostKeyError,
    SftpSession,
    is_temp_name,
)
from rossflow.localstack.sftp_server import LocalSftpServer
from tests.fixtures.servers import SftpServerInfo


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_atomic_creates_directories_and_leaves_only_the_final_file(
    sftp_server: SftpServerInfo,
) -> None:
    with SftpSession(sftp_server.connection_info()) as session:
        result = session.put_atomic("/exports/2024/06/inv-1.xml", b"<invoice/>")
    assert result.path == "/exports/2024/06/inv-1.xml"
    assert not result.skipped and not result.renamed and result.bytes_written == 10
    assert files(sftp_server.root) == ["exports/2024/06/inv-1.xml"]
    assert (sftp_server.root / "exports/2024/06/inv-1.xml").read_bytes() == b"<invoice/>"


class _ObservingReader(io.RawIOBase):
    """A source stream that looks at the server's directory while the upload is in progress."""

    def __init__(self, data: bytes, directory: Path) -> None:
        self._data = io.BytesIO(data)
        self._directory = directory
        self.seen_during_upload: list[str] | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        if self.seen_during_upload is None and self._data.tell() > 0:
            self.seen_during_upload = sorted(p.name for p in self._directory.iterdir())
        return chunk


def test_no_partial_file_is_visible_under_the_final_name(sftp_server: SftpServerInfo) -> None:
    outbox = sftp_server.root / "outbox"
    outbox.mkdir()
    source = _ObservingReader(b"x" * 300_000, outbox)
    with SftpSession(sftp_server.connection_info()) as session:
        result = session.put_atomic("/outbox/big.pdf", source)  # type: ignore[arg-type]
    assert source.seen_during_upload is not None
    [temp] = source.seen_during_upload  # only the temp file existed mid-upload
    assert temp != "big.pdf" and TEMP_NAME_RE.match(temp) and temp.startswith(".big.pdf.tmp-")
    assert is_temp_name(temp)
    assert result.bytes_written == 300_000
    assert sorted(p.name for p in outbox.iterdir()) == ["big.pdf"]


def test_collision_replace_is_atomic_with_posix_rename(sftp_server: SftpServerInfo) -> None:
    (sftp_server.root / "a.txt").write_bytes(b"old")
    with SftpSession(sftp_server.connection_info()) as session:
        result = session.put_atomic("/a.txt", b"new", collision="replace")
        assert session._posix_rename is True
    assert result.path == "/a.txt" and not result.renamed
    assert files(sftp_server.root) == ["a.txt"]
    assert (sftp_server.root / "a.txt").read_bytes() == b"new"


def test_collision_replace_without_posix_rename(tmp_path: Path) -> None:
    with LocalSftpServer(tmp_path, posix_rename=False) as server:
        (tmp_path / "a.txt").write_bytes(b"old")
        info = SftpConnectionInfo(
            host=server.host,
            port=server.port,
            username="rossflow",
            password="secret",
            known_hosts=server.known_hosts_line(),
        )
        with SftpSession(info) as session:
            session.put_atomic("/a.txt", b"new")
            session.put_atomic("/a.txt", b"newer")
            assert session._posix_rename is False  # detected once, then not retried
    assert (tmp_path / "a.txt").read_bytes() == b"newer"
    assert files(tmp_path) == ["a.txt"]


def test_collision_skip(sftp_server: SftpServerInfo) -> None:
    (sftp_server.root / "a.txt").write_bytes(b"old")
    with SftpSession(sftp_server.connection_info()) as session:
        result = session.put_atomic("a.txt", b"new", collision="skip")
    assert result.skipped and result.bytes_written == 0
    assert (sftp_server.root / "a.txt").read_bytes() == b"old"
    assert files(sftp_server.root) == ["a.txt"]


def test_collision_error(sftp_server: SftpServerInfo) -> None:
    (sftp_server.root / "a.txt").write_bytes(b"old")
    with (
        SftpSession(sftp_server.connection_info()) as session,
        pytest.raises(RemoteFileExistsError, match=r"a\.txt already exists"),
    ):
        session.put_atomic("/a.txt", b"new", collision="error")
    assert (sftp_server.root / "a.txt").read_bytes() == b"old"
    assert files(sftp_server.root) == ["a.txt"]


def test_collision_rename(sftp_server: SftpServerInfo) -> None:
    (sftp_server.root / "inv.xml").write_bytes(b"0")
    with SftpSession(sftp_server.connection_info()) as session:
        first = session.put_atomic("/inv.xml", b"1", collision="rename")
        second = session.put_atomic("/inv.xml", b"2", collision="rename")
    assert (first.path, first.renamed, first.requested_path) == ("/inv-1.xml", True, "/inv.xml")
    assert second.path == "/inv-2.xml"
    assert files(sftp_server.root) == ["inv-1.xml", "inv-2.xml", "inv.xml"]
    assert (sftp_server.root / "inv-2.xml").read_bytes() == b"2"


def test_helpers_list_read_rename_remove(sftp_server: SftpServerInfo) -> None:
    root = sftp_server.root
    (root / "in").mkdir()
    (root / "in" / "b.pdf").write_bytes(b"B")
    (root / "in" / "a.pdf").write_bytes(b"AA")
    (root / "in" / ".a.pdf.tmp-0123abcd").write_bytes(b"partial")
    (root / "in" / "sub").mkdir()
    with SftpSession(sftp_server.connection_info()) as session:
        entries = session.listdir("/in")
        assert [e.name for e in entries] == ["a.pdf", "b.pdf", "sub"]
        assert entries[0].size == 2 and entries[0].is_file and entries[2].is_dir
        assert entries[0].path == "/in/a.pdf" and entries[0].mtime
        assert len(session.listdir("/in", include_temp=True)) == 4
        assert session.read_bytes("/in/a.pdf") == b"AA"
        with session.open_read("/in/b.pdf") as fh:
            assert fh.read() == b"B"
        session.makedirs("/done/2024")
        session.rename("/in/a.pdf", "/done/2024/a.pdf")
        with pytest.raises(RemoteFileExistsError):
            session.rename("/in/b.pdf", "/done/2024/a.pdf")
        session.rename("/in/b.pdf", "/done/2024/a.pdf", overwrite=True)
        assert session.read_bytes("/done/2024/a.pdf") == b"B"
        session.remove("/in/.a.pdf.tmp-0123abcd")
        session.remove("/in/missing", missing_ok=True)
        with pytest.raises(FileNotFoundError):
            session.remove("/in/missing")
        session.rmdir("/in/sub")
        assert session.listdir("/in") == []
        assert session.exists("/done/2024/a.pdf") and not session.exists("/in/a.pdf")


def test_reconnects_after_a_dropped_connection(sftp_server: SftpServerInfo) -> None:
    (sftp_server.root / "a.txt").write_bytes(b"A")
    with SftpSession(sftp_server.connection_info(), reconnect_delay_s=0.01) as session:
        assert session.read_bytes("/a.txt") == b"A"
        session._client.get_transport().close()  # type: ignore[union-attr]  # link drops
        assert session.read_bytes("/a.txt") == b"A"
        session._client.get_transport().close()  # type: ignore[union-attr]
        assert session.put_atomic("/b.txt", b"B").path == "/b.txt"
        assert session.connects == 3


def test_connection_refused_is_a_clear_error(sftp_server: SftpServerInfo) -> None:
    sftp_server.server.stop()
    info = sftp_server.connection_info(connect_timeout_s=2)
    with (
        pytest.raises(SftpConnectionError, match=f"rossflow@127.0.0.1:{sftp_server.port}"),
        SftpSession(info, max_reconnects=1, reconnect_delay_s=0.01),
    ):
        pass


def test_session_is_safe_to_share_between_threads(sftp_server: SftpServerInfo) -> None:
    with SftpSession(sftp_server.connection_info()) as session:
        errors: list[BaseException] = []

        def upload(n: int) -> None:
            try:
                for i in range(5):
                    session.put_atomic(f"/t{n}/f{i}.txt", f"{n}-{i}".encode())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(files(sftp_server.root)) == 20


# -- host keys and auth ----------------------------------------------------------------------
def test_host_key_mismatch_is_rejected(sftp_server: SftpServerInfo) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    line = f"[127.0.0.1]:{sftp_server.port} {' '.join(other.split()[:2])}"
    with pytest.raises(SftpHostKeyError) as info:
        SftpSession(sftp_server.connection_info(known_hosts=line)).connect()
    message = str(info.value)
    assert f"[127.0.0.1]:{sftp_server.port}" in message and "does not match" in message
    assert not files(sftp_server.root)


def test_unknown_host_is_rejected(sftp_server: SftpServerInfo) -> None:
    with pytest.raises(SftpHostKeyError, match=r"\[127.0.0.1\]:\d+ is not in known_hosts"):
        SftpSession(sftp_server.connection_info(known_hosts="")).connect()


def test_known_hosts_for_another_port_does_not_match(sftp_server: SftpServerInfo) -> None:
    line = sftp_server.known_hosts.replace(f"]:{sftp_server.port}", "]:1")
    with pytest.raises(SftpHostKeyError):
        SftpSession(sftp_server.connection_info(known_hosts=line)).connect()


def test_host_key_verification_opt_out(sftp_server: SftpServerInfo) -> None:
    info = sftp_server.connection_info(known_hosts="", verify_host_key=False)
    with SftpSession(info) as session:
        assert session.listdir("/") == []


def test_wrong_password(sftp_server: SftpServerInfo) -> None:
    info = sftp_server.connection_info(password="wrong-password")
    with pytest.raises(SftpAuthError) as info_exc:
        SftpSession(info).connect()
    assert "rossflow@127.0.0.1" in str(info_exc.value)
    assert "wrong-password" not in str(info_exc.value)


def _openssh_private(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey, fmt, enc) -> str:  # type: ignore[no-untyped-def]
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc).decode()


def _public_line(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


@pytest.mark.parametrize("kind", ["ed25519-openssh", "ed25519-encrypted", "rsa-pem"])
def test_key_based_auth(tmp_path: Path, kind: str) -> None:
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    passphrase = None
    if kind == "rsa-pem":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        text = _openssh_private(
            key, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        enc: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if kind == "ed25519-encrypted":
            passphrase = "correct horse"
            enc = serialization.BestAvailableEncryption(passphrase.encode())
        text = _openssh_private(key, serialization.PrivateFormat.OpenSSH, enc)
    with LocalSftpServer(
        tmp_path, users={}, authorized_keys={"deploy": [_public_line(key)]}
    ) as server:
        info = SftpConnectionInfo(
            host=server.host,
            port=server.port,
            username="deploy",
            private_key=text,
            passphrase=passphrase,
            known_hosts=server.known_hosts_line(),
        )
        with SftpSession(info) as session:
            session.put_atomic("/k.txt", b"key auth")
        assert (tmp_path / "k.txt").read_bytes() == b"key auth"
        # A key the server does not know is refused.
        stranger = ed25519.Ed25519PrivateKey.generate()
        bad = SftpConnectionInfo.model_validate(
            {
                **info.model_dump(),
                "private_key": _openssh_private(
                    stranger, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
                ),
                "passphrase": None,
            }
        )
        with pytest.raises(SftpAuthError):
            SftpSession(bad).connect()


def test_encrypted_key_without_passphrase_is_a_clear_error() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    text = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    info = SftpConnectionInfo(host="127.0.0.1", port=1, username="x", private_key=text)
    with pytest.raises(SftpAuthError, match="passphrase"):
        SftpSession(info).connect()


def test_secrets_are_not_in_the_repr(sftp_server: SftpServerInfo) -> None:
    info = sftp_server.connection_info()
    assert "secret" not in repr(info).replace("SecretStr", "")
